"""`dvc repro` of the whole pipeline on the bundled CDNOW data, in a copy of the project.

This is what `make run` does (`cvp warm dvc repro`: the stages in forks of one warm process;
about a minute, so it stays in the default suite); it checks the stages are wired together
(dvc.yaml, the CLI and the contracts between stages) and that the headline claims hold on the
real data.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines import files
from pipelines.catalog import Catalog
from tests.inprocess import cvp
from tests.test_spark_features import requires_java, requires_pyspark

# One worker runs the whole module (make test: --dist loadgroup), so `dvc repro` runs once.
pytestmark = pytest.mark.xdist_group("pipeline_e2e")

ROOT = Path(__file__).resolve().parents[1]
PROJECT_FILES = ("dvc.yaml", "params.yaml", "pyproject.toml", ".dvcignore")
PROJECT_DIRS = ("features", "models", "pipelines", "notebooks")
CDNOW_CUSTOMERS = 23_570
paths = Catalog(".")  # the outputs relative to a project root


def _copy_project(dest: Path) -> None:
    for name in PROJECT_FILES:
        shutil.copy2(ROOT / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "artifacts")
    for name in PROJECT_DIRS:
        shutil.copytree(ROOT / name, dest / name, ignore=ignore)


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def repro(tmp_path_factory):
    project = tmp_path_factory.mktemp("project")
    _copy_project(project)
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{project / 'tracking' / 'mlflow.db'}"
    env.pop("MLFLOW_REGISTRY_URI", None)
    env.pop("CVP_PIPELINE_RUN_ID", None)
    (project / "tracking").mkdir()
    _run(["dvc", "init", "--no-scm", "-q"], project, env)
    first = _run(["cvp", "warm", "dvc", "repro"], project, env)  # as `make run` does (pipelines/warm.py)
    return project, env, first


def test_repro_runs_every_stage_and_accounts_for_every_customer(repro):
    project, _, result = repro
    if sys.platform.startswith("linux"):  # the figures below are the warm server's forks' (cold: same bytes)
        assert "9 cvp commands ran in forks of this process" in result.stderr
    for stage in ("fingerprint", "ingest", "features", "clv", "churn", "segment", "export", "notebook"):
        assert f"Running stage '{stage}'" in result.stdout
    ingest = files.read_json(project / paths.metrics_file("ingest"))
    assert ingest["rows_in"] == ingest["rows_accepted"] + ingest["rows_rejected"] == 69_659
    scores = pd.read_parquet(project / paths.SCORES_PARQUET)
    assert len(scores) == scores["customer_id"].nunique() == CDNOW_CUSTOMERS
    assert scores["as_of"].nunique() == 1
    csv = pd.read_csv(project / paths.SCORES_CSV, dtype={"customer_id": str})
    assert csv["customer_id"].tolist() == scores["customer_id"].tolist()
    assert (project / paths.REPORT_HTML).stat().st_size > 0
    assert b"data:image/png;base64," in (project / "reports" / "explore.html").read_bytes()


def test_headline_claims_hold_on_cdnow(repro):
    project, _, _ = repro
    clv = files.read_json(project / paths.metrics_file("clv"))
    assert set(clv["bgnbd"]) >= {"r", "alpha", "a", "b"} and set(clv["gamma_gamma"]) >= {"p", "q", "v"}
    churn = files.read_json(project / paths.metrics_file("churn"))
    assert churn["evaluation"] == "out_of_time"
    assert churn["comparison"]["classifier_beats_baseline_brier"]
    assert churn["comparison"]["classifier_auc_within_tolerance"]


# The README's CDNOW figures (quoted to 4 decimals or to the customer), as committed in metrics/*.json.
FOUR_DECIMALS = 5e-5


def test_clv_model_selection_and_parameters_match_the_readme(repro):
    project, _, _ = repro
    clv = files.read_json(project / paths.metrics_file("clv"))
    selection = clv["model_selection"]
    assert clv["model"] == selection["chosen"] == "mbgnbd"
    maes = {name: candidate["mae"] for name, candidate in selection["candidates"].items()}
    assert maes == pytest.approx({"bgnbd": 0.2910, "paretonbd": 0.2897, "mbgnbd": 0.2848}, abs=FOUR_DECIMALS)
    assert clv["holdout"]["purchases"]["model"]["mae"] == pytest.approx(0.2848, abs=FOUR_DECIMALS)
    assert clv["holdout"]["purchases"]["model"]["total_actual"] == 5664
    assert clv["holdout"]["purchases"]["model"]["total_predicted"] == pytest.approx(6093, abs=0.5)
    # The fitted parameters on the full data, to 4 significant digits.
    mbgnbd = {k: clv["mbgnbd"][k] for k in ("r", "alpha", "a", "b")}
    assert mbgnbd == pytest.approx({"r": 0.6894, "alpha": 9.889, "a": 0.4916, "b": 0.8585}, rel=1e-4)
    bgnbd = {k: clv["bgnbd"][k] for k in ("r", "alpha", "a", "b")}
    assert bgnbd == pytest.approx({"r": 0.2671, "alpha": 5.986, "a": 0.4835, "b": 2.112}, rel=2e-4)
    gamma_gamma = {k: clv["gamma_gamma"][k] for k in ("p", "q", "v")}
    assert gamma_gamma == pytest.approx({"p": 5.086, "q": 3.995, "v": 21.25}, rel=2e-4)


def test_churn_auc_and_baselines_match_the_readme(repro):
    project, _, _ = repro
    churn = files.read_json(project / paths.metrics_file("churn"))
    auc = {name: model["roc_auc"] for name, model in churn["models"].items()}
    assert auc["classifier_calibrated"] == pytest.approx(0.8392, abs=FOUR_DECIMALS)
    assert auc["baseline_expected_purchases"] == pytest.approx(0.8359, abs=FOUR_DECIMALS)
    assert auc["baseline_p_no_purchase"] == pytest.approx(0.8335, abs=FOUR_DECIMALS)
    assert churn["churn_source"] == "classifier"
    assert churn["comparison"]["best_baseline_by_auc"] == "baseline_expected_purchases"


def test_segment_counts_and_total_clv_match_the_readme(repro):
    project, _, _ = repro
    segment = files.read_json(project / paths.metrics_file("segment"))
    assert segment["counts"]["quadrant"] == {"I": 11_792, "II": 8_461, "III": 0, "IV": 3_317}
    assert segment["counts"]["tier"] == {"platinum": 702, "gold": 4_012, "iron": 14_142, "lead": 4_714}
    headline = files.read_json(project / paths.metrics_file("export"))["headline"]
    assert headline["customers_by_quadrant"] == segment["counts"]["quadrant"]
    assert headline["customers_by_tier"] == segment["counts"]["tier"]
    assert headline["total_clv"] == pytest.approx(64_554.75, abs=0.005)
    assert segment["totals"]["growth_potential_clv"] == pytest.approx(64_554.75, abs=0.005)
    scores = pd.read_parquet(project / paths.SCORES_PARQUET)
    assert scores["clv"].sum() == pytest.approx(64_554.75, abs=0.005)
    assert scores["quadrant"].value_counts().to_dict() == {"I": 11_792, "II": 8_461, "IV": 3_317}


def test_a_second_repro_changes_nothing(repro):
    project, env, _ = repro
    before = {p: files.file_sha256(project / p) for p in (paths.SCORES_PARQUET, paths.features_at(0), paths.clv_predictions_at(0))}
    # Only the source's fingerprint is taken again (always_changed); it has not changed, so
    # ingest does not re-read the source and nothing downstream runs again.
    second = _run(["dvc", "repro"], project, env)
    assert "Running stage 'fingerprint'" in second.stdout
    for stage in ("ingest", "features", "clv", "churn", "segment", "export", "notebook"):
        assert f"Running stage '{stage}'" not in second.stdout, second.stdout
    assert before == {p: files.file_sha256(project / p) for p in before}


# --------------------------------------------------------------------------- online scoring


@pytest.fixture(scope="module")
def scores_server(repro, tmp_path_factory):
    """`mlflow models serve` of models:/cvp-scores@champion, the chain the segment stage registered."""
    from tests.test_serving import serving

    project, env, _ = repro
    logs = tmp_path_factory.mktemp("scores_server")
    with serving(paths.SEGMENT_MODEL_DIR, project, env["MLFLOW_TRACKING_URI"], logs) as base_url:
        yield base_url


def _served_rows(base_url: str, features: pd.DataFrame) -> pd.DataFrame:
    """POST features rows as a client would send them: JSON numbers at full precision (Python's
    json; pandas' to_json keeps 10 digits, enough to move a customer across a rank boundary),
    dates as ISO text, NaN as null."""
    from tests.test_serving import invoke

    def plain(value):
        if isinstance(value, pd.Timestamp):
            return value.isoformat()
        if isinstance(value, float) and np.isnan(value):
            return None
        return value.item() if isinstance(value, np.generic) else value

    rows = [[plain(v) for v in row] for row in features.astype(object).itertuples(index=False)]
    return invoke(base_url, {"dataframe_split": {"columns": list(features.columns), "data": rows}})


def test_served_champion_answers_each_customer_with_their_export_row(repro, scores_server):
    project, _, _ = repro
    features = pd.read_parquet(project / paths.features_at(0))
    exported = pd.read_parquet(project / paths.SCORES_PARQUET).set_index("customer_id")
    reference = files.read_json(project / paths.SEGMENT_REFERENCE)
    # The customers on every rank boundary (the likeliest to flip), one of each quadrant x tier
    # cell, and a few at random.
    boundary = [customer for _, _, customer in reference["boundaries"]]
    cells = exported.reset_index().groupby(["quadrant", "tier"]).head(1)["customer_id"].tolist()
    picked = sorted({*boundary, *cells, *features["customer_id"].sample(5, random_state=0)})
    rows = features.set_index("customer_id").loc[picked].reset_index()

    together = _served_rows(scores_server, rows)
    alone = pd.concat([_served_rows(scores_server, rows.iloc[[i]]) for i in (0, len(rows) - 1)], ignore_index=True)
    expected = exported.loc[picked].reset_index()
    assert list(together.columns) == list(expected.columns)
    for served, want in ((together, expected), (alone, expected.iloc[[0, -1]].reset_index(drop=True))):
        for column in expected.columns:
            if expected[column].dtype.kind == "f":
                np.testing.assert_allclose(served[column].astype(float), want[column], rtol=1e-9, atol=0, err_msg=column)
            elif column == "as_of":
                assert (pd.to_datetime(served[column]) == want[column]).all()
            else:
                assert served[column].astype(str).tolist() == want[column].astype(str).tolist(), column


# --------------------------------------------------------------------------- batch scoring


def _score(project: Path, env: dict[str, str], engine: str) -> pd.DataFrame:
    """`cvp score`: on pandas in this process (tests/inprocess.py: the command without an
    interpreter start-up), on Spark in its own process (its JVM ends with it)."""
    out = project / f"scored_{engine}.parquet"
    args = ["score", "--engine", engine, "--out", str(out)]
    if engine == "pandas":
        done = cvp(project, *args, env={"MLFLOW_TRACKING_URI": env["MLFLOW_TRACKING_URI"]})
        assert done.returncode == 0, f"cvp {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    else:
        _run(["cvp", *args], project, env)
    return pd.read_parquet(out)


def test_cvp_score_with_the_registered_chain_rewrites_the_export(repro):
    project, env, _ = repro
    exported = pd.read_parquet(project / paths.SCORES_PARQUET)
    pd.testing.assert_frame_equal(_score(project, env, "pandas"), exported, check_exact=True)


@requires_pyspark
@requires_java
def test_cvp_score_on_spark_gives_the_export_bit_for_bit(repro):
    """spark_udf scores the customers in batches of Spark's choosing; the stored population
    reference keeps every label (and every float) as in the batch export."""
    project, env, _ = repro
    exported = pd.read_parquet(project / paths.SCORES_PARQUET)
    pd.testing.assert_frame_equal(_score(project, env, "pyspark"), exported, check_exact=True)
