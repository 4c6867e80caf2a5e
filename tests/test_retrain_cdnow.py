"""Retraining rounds on CDNOW in a copy of the project: the real pipeline, registry and exports.

1. as_of 1998-03-31: no champion yet -> promoted, exported.
2. as_of 1998-06-30, same source: drift passes; the champion (loaded from the registry) and the
   challenger are scored on the same holdout -> promoted.
3. as_of 1998-06-30, a degraded extract (90 % of the 1998 rows lost): drift stops it (exit 2);
   the champion alias, its snapshot and every export file stay byte-identical.
"""

import hashlib
import importlib.resources
import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SKIP_PREFIXES = ("tests/", "docs/", "bench/", "metrics/", "plots/", "models/champion/", "models/artifacts/")

pytestmark = pytest.mark.slow


def _copy_project(dst: Path) -> None:
    """The project's source files (tracked or not ignored), without data, metrics or stores."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split("\n")
    for name in filter(None, listed):
        if name.startswith(SKIP_PREFIXES) or not (ROOT / name).is_file():
            continue
        target = dst / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((ROOT / name).read_bytes())
    subprocess.run(["git", "init", "-q"], cwd=dst, check=True)


def _write_degraded_cdnow(target: Path, seed: int = 7) -> int:
    """CDNOW with 90 % of the rows after 1997-12-31 dropped (an extract that lost most of 1998)."""
    source = importlib.resources.files("lifetimes.datasets") / "CDNOW_master.txt"
    frame = pd.read_csv(source, sep=r"\s+", dtype={"customer_id": str, "date": str})
    recent = pd.to_datetime(frame["date"], format="%Y%m%d") > "1997-12-31"
    drop = recent & (np.random.default_rng(seed).random(len(frame)) < 0.9)
    frame.loc[~drop].to_csv(target, index=False)
    return int((~drop).sum())


def _set_params(project: Path, **data) -> None:
    path = project / "params.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["data"].update(data)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def _retrain(project: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "cvp"), "retrain"], cwd=project, env=env, capture_output=True, text=True, timeout=3000)


def _digests(project: Path) -> dict[str, str]:
    files = [p for d in ("exports", "reports") for p in sorted((project / d).rglob("*")) if p.is_file()]
    return {str(p.relative_to(project)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _aliases(names) -> dict[str, str]:
    client = mlflow.MlflowClient()
    return {n: str(client.get_model_version_by_alias(n, "champion").version) for n in names}


def _report(project: Path) -> dict:
    return json.loads((project / "metrics" / "retrain.json").read_text())


def test_three_retraining_rounds_on_cdnow(tmp_path, monkeypatch):
    project = tmp_path / "project"
    _copy_project(project)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.setenv(var, uri)
    monkeypatch.delenv("CVP_PIPELINE_RUN_ID", raising=False)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    names = ("cvp-clv", "cvp-churn", "cvp-scores")

    # 1. first run: promoted unconditionally, exported
    _set_params(project, as_of="1998-03-31")
    first = _retrain(project, env)
    assert first.returncode == 0, first.stderr[-3000:]
    report = _report(project)
    assert report["decision"] == "promote" and report["exported"] is True
    assert report["reasons"] == ["first model: no champion to compare with"]
    assert _aliases(names) == {"cvp-clv": "1", "cvp-churn": "1", "cvp-scores": "1"}
    scores = pd.read_parquet(project / "exports" / "scores.parquet")
    assert scores["model_version"].unique().tolist() == ["cvp-clv/1;cvp-churn/1"]
    assert (project / "models" / "champion" / "features_t0.parquet").exists()

    # 2. same source a quarter later: the real champion is scored on the new holdout
    _set_params(project, as_of="1998-06-30")
    second = _retrain(project, env)
    assert second.returncode == 0, second.stderr[-3000:]
    report = _report(project)
    assert report["drift"]["passed"] is True
    assert report["holdout"] == {"cutoff": "1998-03-31", "n_customers": 23570, "champion_overlap_days": 0}
    assert report["decision"] == "promote" and not report["forced"]
    for metric, verdict in report["metrics"].items():
        assert np.isfinite(verdict["champion"]) and np.isfinite(verdict["challenger"]), metric
    # The challenger's numbers are the stages' own holdout numbers.
    clv_metrics = json.loads((project / "metrics" / "clv.json").read_text())["holdout"]
    assert report["metrics"]["clv.spend_mae"]["challenger"] == pytest.approx(clv_metrics["spend"]["model"]["mae"])
    assert report["metrics"]["clv.spearman"]["challenger"] == pytest.approx(clv_metrics["ranking"]["model"]["spearman_rho"])
    churn_metrics = json.loads((project / "metrics" / "churn.json").read_text())
    assert churn_metrics["evaluation"] == "out_of_time"
    calibrated = churn_metrics["models"]["classifier_calibrated"]
    assert report["metrics"]["churn.roc_auc"]["challenger"] == pytest.approx(calibrated["roc_auc"])
    assert report["metrics"]["churn.brier"]["challenger"] == pytest.approx(calibrated["brier"])
    assert _aliases(names) == {"cvp-clv": "2", "cvp-churn": "2", "cvp-scores": "2"}
    snapshot = (project / "models" / "champion" / "reference.json").read_bytes()
    exported = _digests(project)
    assert set(exported) >= {"exports/scores.parquet", "exports/scores.csv", "reports/segments.html"}

    # 3. a degraded extract: drift stops the run before the gate; nothing moves
    kept = _write_degraded_cdnow(project / "degraded.csv")
    _set_params(project, path="degraded.csv")
    third = _retrain(project, env)
    assert third.returncode == 2, third.stderr[-3000:]
    last_line = third.stderr.strip().splitlines()[-1]
    assert last_line.startswith("cvp: error: data drift against the champion's data:")
    report = _report(project)
    assert report["decision"] == "refuse" and report["stopped_by"] == "drift" and report["exported"] is False
    checks = report["drift"]["checks"]
    assert {name for name, check in checks.items() if not check["passed"]} == {"rows.drop"}
    assert checks["rows.drop"]["value"] == pytest.approx(1 - kept / 69659)  # 0.165 > 0.10
    assert 0.1 < checks["psi.spend_trailing"]["value"] < 0.25  # a moderate shift, under the limit
    assert report["reasons"] == ["drift: rows.drop = 0.165 > 0.1"]
    assert report["versions"]["challenger"] == {"cvp-clv": "3", "cvp-churn": "3", "cvp-scores": "3"}
    assert _aliases(names) == {"cvp-clv": "2", "cvp-churn": "2", "cvp-scores": "2"}
    assert _digests(project) == exported
    assert (project / "models" / "champion" / "reference.json").read_bytes() == snapshot
    client = mlflow.MlflowClient()
    for name in names:
        tags = client.get_model_version(name, "3").tags
        assert tags["cvp.gate.decision"] == "refuse"
        assert "drift: rows.drop" in tags["cvp.gate.reasons"]
        assert client.get_model_version(name, "2").tags["cvp.gate.decision"] == "promote"
