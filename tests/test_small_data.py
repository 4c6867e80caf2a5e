"""Small customer bases: every stage completes, or stops with one line naming what is too small
and which param changes it.

- Every dvc.yaml stage command, in order (tests/inprocess.py: `cvp <stage>` in this process, as
  `dvc repro` would run them), in a copy of the project on seeded `cvp generate` bases of 100, 300
  and 1,000 customers (~8 rows each over two years): exit 0, finite scores in range for every
  customer of features_t0, a churn probability that is not one constant.
- The segment and export stages in process on tiny hand-made inputs: 1, 2 and 5 customers, a
  base where nobody bought in the last horizon, every customer a one-time buyer, no customer.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from features.errors import DataError
from pipelines import export, files, segment
from pipelines.catalog import Catalog
from pipelines.config import load_params
from tests.inprocess import Done, cvp, stage_commands
from tests.inprocess import repro as repro_in_process
from tests.test_export_fixture import (
    HORIZON_DAYS,
    churn_metrics,
    churn_predictions,
    clv_metrics,
    clv_predictions,
    features_frame,
    ingest_metrics,
    mlflow_store,  # noqa: F401  (fixture: one MLflow store for the session)
    project_env,
    write_params,
    write_png,
)
from tests.test_pipeline_e2e import _copy_project

# One worker runs the whole module (make test: --dist loadgroup), so each base is built once.
pytestmark = pytest.mark.xdist_group("small_data")

ROWS_PER_CUSTOMER = 8
SEED = 7
ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- every stage


def small_project(root: Path, customers: int) -> tuple[Path, Done]:
    """A project copy reading a seeded synthetic base of ``customers``; returns it and the run of
    its dvc.yaml stage commands (in this process: the stages' work, not a `cvp` start-up each)."""
    project = root / f"c{customers}"
    project.mkdir()
    _copy_project(project)
    (project / "tracking").mkdir()
    made = cvp(project, "generate", "--rows", str(customers * ROWS_PER_CUSTOMER), "--customers", str(customers),
               "--out", "data/raw/tx.csv", "--seed", str(SEED))  # fmt: skip
    assert made.returncode == 0, made.stderr
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"].update(json.loads((project / "data/raw/tx.csv.json").read_text())["data"])
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    checked = cvp(project, "check-params")
    assert checked.returncode == 0, checked.stderr
    return project, repro_in_process(project)


@pytest.fixture(
    scope="module",
    params=[100, pytest.param(300, marks=pytest.mark.slow), pytest.param(1000, marks=pytest.mark.slow)],
    ids=lambda n: f"{n}_customers",
)
def repro(request, tmp_path_factory):
    return small_project(tmp_path_factory.mktemp("small"), request.param)


def _failure(result: Done) -> str:
    errors = [line for line in (result.stdout + result.stderr).splitlines() if "error" in line.lower()]
    return "\n".join(errors[-5:]) or result.stderr[-3000:]


def test_repro_completes(repro):
    project, result = repro
    assert result.returncode == 0, _failure(result)
    assert result.ran == list(stage_commands(project)) and "Traceback" not in result.stderr


def test_every_customer_of_features_t0_is_exported_once(repro):
    project, result = repro
    assert result.returncode == 0, _failure(result)
    paths = Catalog(project)
    features = pd.read_parquet(paths.features_at(0), columns=["customer_id"])
    scores = pd.read_parquet(paths.SCORES_PARQUET)
    assert len(scores) == scores["customer_id"].nunique() == len(features)
    assert sorted(scores["customer_id"]) == sorted(features["customer_id"])


def test_exported_scores_are_finite_and_in_range(repro):
    project, result = repro
    assert result.returncode == 0, _failure(result)
    scores = pd.read_parquet(Catalog(project).SCORES_PARQUET)
    for column in ("clv", "p_alive", "churn_probability"):
        assert np.isfinite(scores[column]).all(), column
    assert (scores["clv"] >= 0).all()
    assert scores["p_alive"].between(0, 1).all() and scores["churn_probability"].between(0, 1).all()


def test_churn_probability_is_not_one_constant(repro):
    project, result = repro
    assert result.returncode == 0, _failure(result)
    churn = pd.read_parquet(Catalog(project).SCORES_PARQUET)["churn_probability"]
    assert churn.nunique() > 1, f"every customer has churn probability {churn.iloc[0]}"


# --------------------------------------------------------------------------- tiny inputs, in process


def one_time_buyers(features: pd.DataFrame) -> pd.DataFrame:
    """Every customer bought on one day only (frequency 0, no purchase interval)."""
    out = features.copy()
    out["frequency"], out["recency"] = out["frequency"] * 0, 0.0  # the contract's dtypes: int64, float64
    out[["ipi_mean", "ipi_std", "days_since_last_ratio"]] = np.nan
    out["last_purchase"] = out["first_purchase"]
    out["days_since_last"] = out["days_since_first"]
    out["spend_trailing"] = np.where(out["days_since_last"] < HORIZON_DAYS, out["avg_spend"], 0.0)
    return out


def nobody_bought_last_horizon(features: pd.DataFrame) -> pd.DataFrame:
    """No purchase in the last horizon: current value 0 for everyone."""
    out = features.copy()
    out["days_since_last"] = np.maximum(out["days_since_last"], HORIZON_DAYS)
    out["spend_trailing"] = 0.0
    return out


def write_upstream(root: Path, features: pd.DataFrame, seed: int = 3) -> None:
    """features_t0, CLV and churn predictions, upstream metrics and plots (no t1 holdout files)."""
    paths = Catalog(root)
    clv = clv_predictions(features, seed)
    files.write_parquet(features, paths.features_at(0))
    files.write_parquet(clv, paths.clv_predictions_at(0))
    files.write_parquet(churn_predictions(clv, seed), paths.churn_predictions_at(0))
    n = len(features)
    for stage, metrics in (("ingest", ingest_metrics()), ("clv", clv_metrics(n)), ("churn", churn_metrics(n))):
        files.write_json(metrics, paths.metrics_file(stage))
    for stage, names in (("clv", ("tracking", "calibration_holdout")), ("churn", ("roc", "calibration"))):
        for name in names:
            write_png(f"{stage} {name}", paths.plots_dir(stage) / f"{name}.png")


@pytest.fixture
def tiny(tmp_path, mlflow_store):
    """A project directory for the segment and export stages (scoring model not logged: no
    model files here), with the session's MLflow store."""
    params_path = write_params(tmp_path, mlflow_store)
    raw = yaml.safe_load(params_path.read_text())
    raw["segment"]["log_model"] = False
    params_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    with project_env(tmp_path):
        yield tmp_path, raw


def run_segment_and_export(root: Path, raw: dict) -> pd.DataFrame:
    """The segment and export stages on the project at ``root`` with the params ``raw``."""
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    paths = Catalog(root, root / "params.yaml")
    params = load_params(paths.params_file)
    segment.run(params, paths)
    export.run(params, paths)
    return pd.read_parquet(paths.SCORES_PARQUET)


@pytest.mark.parametrize(
    ("n", "change"),
    [(1, None), (5, None), (40, nobody_bought_last_horizon)],
)
def test_segment_and_export_complete_on_tiny_bases(tiny, n, change):
    root, raw = tiny
    features = features_frame(n, seed=3)
    features = change(features) if change else features
    write_upstream(root, features)
    scores = run_segment_and_export(root, raw)
    assert scores["customer_id"].tolist() == features["customer_id"].tolist()
    assert np.isfinite(scores[["clv", "p_alive", "churn_probability", "current_value", "growth_potential"]]).all().all()
    metrics = files.read_json(Catalog(root).metrics_file("segment"))
    assert metrics["customers"] == n and sum(metrics["counts"]["quadrant"].values()) == n
    if change is nobody_bought_last_horizon:
        assert (scores["current_value"] == 0).all()
        # Everyone at the cut counts as low current value (equal to the cut = low).
        assert set(scores["quadrant"]) <= {"I", "II"}


def test_one_time_buyers_stop_with_the_param_to_set_then_complete_with_it(tiny):
    root, raw = tiny
    features = one_time_buyers(features_frame(30, seed=3))
    write_upstream(root, features)
    with pytest.raises(DataError) as stopped:
        run_segment_and_export(root, raw)
    message = str(stopped.value)
    assert "\n" not in message and "segment.lifecycle.one_time_buyer_interval_days" in message
    raw["segment"]["lifecycle"]["one_time_buyer_interval_days"] = 60
    scores = run_segment_and_export(root, raw)
    assert len(scores) == 30
    # Interval 60 days: drowsy from 1.5 x 60 = 90 days without a purchase, dormant from 240.
    since_last = features.set_index("customer_id")["days_since_last"]
    states = scores.set_index("customer_id")["lifecycle_state"]
    assert (since_last >= 240).any() and (states[since_last >= 240] == "dormant").all()


def test_no_customer_at_as_of_stops_segment_with_the_param_to_change(tiny):
    root, raw = tiny
    write_upstream(root, features_frame(5, seed=3).iloc[:0])
    with pytest.raises(DataError) as stopped:
        run_segment_and_export(root, raw)
    assert str(stopped.value) == (
        f"{root}/data/features/features_t0.parquet: no customers to segment (nobody bought on or before data.as_of); "
        "set data.as_of on or after the first purchase, or null for the last one"
    )


# --------------------------------------------------------------------------- served models


def _registered(paths: Catalog, key: str) -> str:
    registration = files.read_json(paths.path(key))
    return f"models:/{registration['name']}/{registration['version']}"


def test_every_registered_model_serves_the_batch_scores_where_the_project_is_not_installed(repro, tmp_path):
    """The three registered models (cvp-clv, cvp-churn, cvp-scores) load in an interpreter that
    cannot import this project, from the code logged with them, without pandera, ibis,
    matplotlib, shap, duckdb or the pipelines; each answers exactly what the batch wrote."""
    from models.churn import prepare_features
    from tests.portable import serve_outside_project

    project, result = repro
    assert result.returncode == 0, _failure(result)
    paths = Catalog(project)
    store = f"sqlite:///{project / 'tracking' / 'mlflow.db'}"
    features, clv = pd.read_parquet(paths.features_at(0)), pd.read_parquet(paths.clv_predictions_at(0))
    churn = pd.read_parquet(paths.churn_predictions_at(0))
    batch_scores = pd.read_parquet(paths.SCORES_PARQUET)
    clv_columns = ["p_alive", "expected_purchases", "p_no_purchase", "expected_avg_spend", "clv"]
    cases = {
        "clv_registration": (features[["customer_id", "frequency", "recency", "T", "monetary_value", "cutoff"]],
                             lambda served: np.testing.assert_array_equal(served[clv_columns].to_numpy(float),
                                                                          clv[clv_columns].to_numpy(float))),
        "churn_registration": (prepare_features(features, clv).reset_index(drop=True),
                               lambda served: np.testing.assert_array_equal(served["churn_probability"].to_numpy(),
                                                                            churn["churn_probability"].to_numpy())),
        "segment_registration": (features,
                                 lambda served: pd.testing.assert_frame_equal(served, batch_scores, check_dtype=False,
                                                                              check_exact=True)),
    }  # fmt: skip
    for key, (inputs, same_as_batch) in cases.items():
        served, loaded = serve_outside_project(store, _registered(paths, key), inputs, tmp_path / key)
        assert loaded["imported"] == [], (key, loaded["imported"])
        assert all("code" in Path(p).parts and not p.startswith(str(ROOT)) for p in loaded["models_from"]), loaded
        same_as_batch(served)


@pytest.mark.slow
def test_the_served_chain_carries_the_value_model_when_growth_potential_uses_it(repro, tmp_path):
    """With growth potential from the value model, cvp-scores loads its pickle and answers the
    export's rows exactly (outside the project, as above)."""
    import shutil

    from tests.inprocess import store_env
    from tests.portable import serve_outside_project

    project, result = repro
    assert result.returncode == 0, _failure(result)
    copy = tmp_path / "project"
    shutil.copytree(project, copy, symlinks=True)
    raw = yaml.safe_load((copy / "params.yaml").read_text())
    raw["value"].update({"min_train_customers": 50, "min_train_buyers": 5})
    raw["segment"]["growth_potential"] = "value"
    (copy / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    for stage in ("value", "segment", "export"):
        done = cvp(copy, stage, env=store_env(copy))
        assert done.returncode == 0, _failure(done)
    paths = Catalog(copy)
    assert files.read_json(paths.metrics_file("value"))["final_model"]["fitted"]
    predicted = pd.read_parquet(paths.path("value_predictions_t0"))
    assert (predicted["source"] == "value_model").all()
    batch_scores = pd.read_parquet(paths.SCORES_PARQUET)
    np.testing.assert_array_equal(batch_scores["growth_potential"].to_numpy(), predicted["predicted_value"].to_numpy())
    store = f"sqlite:///{copy / 'tracking' / 'mlflow.db'}"
    served, _ = serve_outside_project(store, _registered(paths, "segment_registration"), pd.read_parquet(paths.features_at(0)),
                                      tmp_path / "served")  # fmt: skip
    pd.testing.assert_frame_equal(served, batch_scores, check_dtype=False, check_exact=True)
