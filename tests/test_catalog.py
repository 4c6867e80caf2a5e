"""The catalog (pipelines/catalog.py) and dvc.yaml describe the same graph, and reads/writes
through it check the producer's contract."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from features.errors import DataError
from pipelines import catalog, code_fingerprint, contracts
from pipelines.catalog import ARTIFACTS, Catalog

ROOT = Path(__file__).resolve().parents[1]
DATA_PREFIXES = ("data/", "models/artifacts/", "metrics/", "plots/", "exports/", "reports/")


def _entries(items: list) -> set[str]:
    return {item if isinstance(item, str) else next(iter(item)) for item in items or []}


@pytest.fixture(scope="module")
def dvc_stages() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def test_every_dvc_output_is_what_the_catalog_says_the_stage_produces(dvc_stages):
    for stage, spec in dvc_stages.items():
        declared = _entries(spec.get("outs")) | _entries(spec.get("metrics")) | _entries(spec.get("plots"))
        assert declared == {a.dvc_out for a in catalog.produced_by(stage)}, stage


def test_every_dvc_data_dependency_is_what_the_catalog_says_the_stage_reads(dvc_stages):
    for stage, spec in dvc_stages.items():
        data_deps = {d for d in _entries(spec.get("deps")) if d.startswith(DATA_PREFIXES)}
        assert data_deps == {a.dvc_out for a in catalog.read_by(stage)}, stage


def test_producers_and_readers_are_dvc_stages_and_keys_and_paths_are_unique(dvc_stages):
    assert len({a.key for a in ARTIFACTS}) == len(ARTIFACTS)
    assert len({a.path for a in ARTIFACTS}) == len(ARTIFACTS)
    for a in ARTIFACTS:
        assert a.producer in dvc_stages, a.key
        assert set(a.readers) <= set(dvc_stages), a.key
        assert a.producer not in a.readers, a.key
        assert a.contract is None or a.contract in contracts.NAMES, a.key
        assert a.path == a.dvc_out or a.path.startswith(a.dvc_out + "/"), a.key


def test_stage_code_dependencies_exist(dvc_stages):
    for stage, spec in dvc_stages.items():
        for dep in _entries(spec.get("deps")):
            if not dep.startswith(DATA_PREFIXES):
                assert (ROOT / dep).exists(), f"{stage}: {dep}"


def _predictions(cutoff: str = "2020-01-01") -> pd.DataFrame:
    return pd.DataFrame({
        "customer_id": ["a", "b"],
        "cutoff": pd.to_datetime([cutoff, cutoff]).astype("datetime64[us]"),
        "churn_probability": [0.25, 0.75],
    })


def test_write_then_read_round_trips_under_the_root(tmp_path):
    paths = Catalog(tmp_path)
    written = paths.write("churn_predictions_t0", _predictions())
    assert written == tmp_path / "data" / "churn" / "predictions_t0.parquet"
    pd.testing.assert_frame_equal(paths.read("churn_predictions_t0"), _predictions())
    assert paths.churn_predictions_at(0) == written and paths.TRANSACTIONS == tmp_path / "data/interim/transactions.parquet"


def test_a_frame_breaking_the_contract_is_not_written(tmp_path):
    paths = Catalog(tmp_path)
    bad = _predictions().assign(churn_probability=[0.5, 1.5])
    with pytest.raises(DataError, match=r"predictions_t0.parquet: does not match the churn predictions contract"):
        paths.write("churn_predictions_t0", bad)
    assert not paths.churn_predictions_at(0).exists()


def test_a_missing_or_broken_input_names_the_file_and_the_stage_to_run(tmp_path):
    paths = Catalog(tmp_path)
    with pytest.raises(DataError, match=r"predictions_t1.parquet: not found; run `cvp churn` first"):
        paths.read("churn_predictions_t1")
    target = paths.churn_predictions_at(1)
    target.parent.mkdir(parents=True)
    _predictions().iloc[::-1].to_parquet(target, index=False)
    with pytest.raises(DataError, match=r"sorted by customer_id.*re-run `cvp churn`"):
        paths.read("churn_predictions_t1")


def test_reading_some_columns_checks_only_those(tmp_path):
    paths = Catalog(tmp_path)
    paths.write("churn_predictions_t0", _predictions())
    frame = paths.read("churn_predictions_t0", columns=["customer_id", "churn_probability"])
    assert list(frame.columns) == ["customer_id", "churn_probability"]
    with pytest.raises(KeyError, match="not in the churn predictions contract"):
        paths.read("churn_predictions_t0", columns=["customer_id", "nope"])


def test_unknown_names_fail_loudly(tmp_path):
    with pytest.raises(KeyError, match="no artifact 'nope'"):
        Catalog(tmp_path).path("nope")
    with pytest.raises(AttributeError):
        Catalog(tmp_path).NOT_A_PATH


def project_imports(module_file: Path) -> set[str]:
    """Every project source file ``module_file`` imports, directly or not (static, including
    imports inside functions), as paths relative to the project root."""
    import ast

    seen: set[str] = set()
    todo = [module_file]
    while todo:
        path = todo.pop()
        rel = path.relative_to(ROOT).as_posix()
        if rel in seen:
            continue
        seen.add(rel)
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            for name in names:
                if name.split(".")[0] not in ("pipelines", "models", "features"):
                    continue
                candidate = ROOT / (name.replace(".", "/") + ".py")
                if candidate.exists():
                    todo.append(candidate)
    return seen - {"pipelines/cli.py"}


def test_each_stage_depends_on_its_code_fingerprint_and_it_covers_every_module_the_stage_imports(dvc_stages):
    """A change to any project module a stage imports re-runs that stage under `dvc repro`: the
    stage depends on data/interim/code/<stage>.json, which lists each of those modules' SHA-256
    (checked here against this file's own import walk)."""
    assert set(code_fingerprint.STAGES) == set(dvc_stages) - {"fingerprint"}
    texts = code_fingerprint.stage_code_texts(ROOT)
    for stage in code_fingerprint.STAGES:
        deps = _entries(dvc_stages[stage].get("deps"))
        assert f"data/interim/code/{stage}.json" in deps, stage
        assert not [d for d in deps if d.endswith(".py")], f"{stage}: its code is in its fingerprint, not in dvc.yaml"
        listed = json.loads(texts[stage])["modules"]
        assert project_imports(ROOT / "pipelines" / f"{stage}.py") <= set(listed), stage
        assert all(digest == hashlib.sha256((ROOT / rel).read_bytes()).hexdigest() for rel, digest in listed.items())
    notebook_code = set(json.loads(texts["notebook"])["modules"])
    assert "pipelines/tracking.py" in notebook_code  # imported by the notebook's cells only


def test_a_module_edit_changes_the_fingerprints_of_the_stages_that_import_it_only(tmp_path):
    for name in ("features", "models", "pipelines", "notebooks"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "artifacts", "plots"))
    before = code_fingerprint.stage_code_texts(tmp_path)
    with (tmp_path / "models" / "value.py").open("a") as fh:
        fh.write("\n# an edit\n")
    after = code_fingerprint.stage_code_texts(tmp_path)
    changed = {stage for stage in before if before[stage] != after[stage]}
    importers = {stage for stage in before if "models/value.py" in json.loads(before[stage])["modules"]}
    assert changed == importers and "value" in changed and "ingest" not in changed
    assert code_fingerprint.stage_code_texts(tmp_path) == after  # the same code gives the same bytes


def test_contracts_check_in_place_so_none_may_coerce():
    """contracts.check validates without copying the frame (pandera's inplace=True); that is only
    safe while no contract coerces a column: a coercing contract would change the caller's frame."""
    from pipelines import contracts

    for name in contracts._SCHEMAS:
        contract = contracts.schema(name)
        assert not contract.coerce and not any(column.coerce for column in contract.columns.values()), name
    frame = pd.DataFrame({"customer_id": ["a", "b"], "n_purchase_days": [0, 2], "spend": [0.0, 3.5]})
    before = frame.copy()
    labels = contracts.subset(contracts.schema("labels"), list(frame.columns))
    assert contracts.check(labels, frame, "labels", "fix") is frame
    pd.testing.assert_frame_equal(frame, before)
