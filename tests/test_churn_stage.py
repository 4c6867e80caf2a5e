"""`cvp churn` end to end on small simulated inputs in a temporary project directory."""

import datetime as dt
import json
import os
import shutil
from pathlib import Path

import ibis
import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

from features.customer import LABELS_SCHEMA, FeatureSpec, customer_features, features_schema, to_contract, window_labels
from features.errors import DataError
from models import churn_eval
from pipelines import churn, files, tracking
from pipelines.catalog import Catalog
from pipelines.contracts import CHURN_PREDICTIONS_SCHEMA
from pipelines.config import FeaturesParams, load_params
from pipelines.domain import churn_classifier_factory
from tests.test_export_fixture import once_per_session

ROOT = Path(__file__).resolve().parents[1]
AS_OF = dt.date(2021, 2, 24)
HORIZON = 60
N_CUSTOMERS = 500


def simulate_transactions(n: int, seed: int) -> pd.DataFrame:
    """Customers who buy at their own rate until they drop out (a buy-till-you-die process)."""
    rng = np.random.default_rng(seed)
    start, end_day = dt.date(2020, 1, 1), (AS_OF - dt.date(2020, 1, 1)).days
    rows = []
    for i in range(n):
        customer = f"{i:05d}"
        rate = rng.gamma(0.8, 1 / 40)  # purchases per day
        first = int(rng.integers(0, 90))
        end = min(end_day, first + rng.exponential(rng.choice([60, 400])))
        t = float(first)
        while t <= end:
            amount = float(np.round(rng.lognormal(3, 0.5), 2))
            rows.append((customer, start + dt.timedelta(days=int(t)), amount))
            if rng.random() < 0.05:
                rows.append((customer, start + dt.timedelta(days=int(t) + 3), -amount))
            t += rng.exponential(1 / max(rate, 1e-3))
    tx = pd.DataFrame(rows, columns=["customer_id", "day", "amount"])
    tx["timestamp"] = pd.to_datetime(tx["day"]).astype("datetime64[us]")
    return tx[["customer_id", "timestamp", "amount"]]


def stand_in_clv(features: pd.DataFrame) -> pd.DataFrame:
    """CLV-contract predictions from a simple recency/frequency formula (the CLV stage is tested on its own)."""
    rate = (features["frequency"] + 0.5) / (features["days_since_first"] + 30)
    p_alive = np.exp(-features["days_since_last"] / 120.0)
    expected = p_alive * rate * HORIZON
    return pd.DataFrame(
        {
            "customer_id": features["customer_id"],
            "cutoff": features["cutoff"],
            "model": "bgnbd",
            "p_alive": p_alive,
            "expected_purchases": expected,
            "p_no_purchase": 1 - p_alive * (1 - np.exp(-rate * HORIZON)),
            "expected_avg_spend": features["avg_spend"],
            "clv": expected * features["avg_spend"] * 0.3,
            **dict.fromkeys(("clv_p10", "clv_p50", "clv_p90", "clv_expected_p10", "clv_expected_p90"), np.nan),  # no intervals: the churn stage does not read them
        }
    )


def write_inputs(root: Path, tx: pd.DataFrame) -> None:
    """features_t{0,1,2}, labels_t{1,2} (through features.customer) and CLV predictions under root/data."""
    paths = Catalog(root)
    con = ibis.duckdb.connect()
    table = ibis.memtable(tx)
    settings = FeaturesParams()
    spec = FeatureSpec(HORIZON, 7.0, settings.windows_days, settings.trend_days, settings.trend_purchases)
    schema = features_schema(spec.windows_days)
    for k in (0, 1, 2):
        cutoff = AS_OF - dt.timedelta(days=k * HORIZON)
        features = to_contract(con.to_pandas(customer_features(table, cutoff, spec)), schema)
        files.write_parquet(features, paths.features_at(k))
        files.write_parquet(stand_in_clv(features), paths.clv_predictions_at(k))
        if k:
            ids = ibis.memtable(features[["customer_id"]])
            labels = to_contract(con.to_pandas(window_labels(table, ids, cutoff, HORIZON)), LABELS_SCHEMA)
            files.write_parquet(labels, paths.labels_at(k))


def write_params(root: Path, **churn_overrides) -> Path:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["data"]["horizon_days"] = HORIZON
    raw["churn"]["lightgbm"].update({"n_estimators": 60, "learning_rate": 0.1, "num_leaves": 4, "min_child_samples": 20})
    raw["churn"].update({"min_train_customers": 100, **churn_overrides})
    raw["mlflow"]["tracking_dir"] = str(root / "tracking")
    target = root / "params.yaml"
    target.write_text(yaml.safe_dump(raw, sort_keys=False))
    return target


@pytest.fixture(scope="module")
def inputs_dir(tmp_path_factory) -> Path:
    """The simulated inputs, written once per session (tests/test_churn_source.py uses them too);
    each test copies them."""

    def build() -> Path:
        root = tmp_path_factory.mktemp("churn_inputs")
        write_inputs(root, simulate_transactions(N_CUSTOMERS, seed=0))
        return root

    return once_per_session(tmp_path_factory, "churn_inputs", build)


@pytest.fixture
def project(tmp_path, inputs_dir, monkeypatch) -> Catalog:
    """A project with the simulated inputs; the catalog the stage runs on (params written by each test)."""
    shutil.copytree(inputs_dir / "data", tmp_path / "data")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.delenv("CVP_PIPELINE_RUN_ID", raising=False)
    return Catalog(tmp_path, tmp_path / "params.yaml")


PLOTS = ("roc.png", "precision_recall.png", "calibration.png", "lift.png", "feature_importance.png", "shap_summary.png")
TABLES = ("roc.csv", "pr.csv", "calibration.csv", "lift.csv", "importance.csv")
MODELS = (
    "classifier_raw", "classifier_calibrated", "baseline_p_no_purchase",
    "baseline_expected_purchases", "baseline_recency", "diagnostic_p_alive",
)  # fmt: skip


def test_stage_writes_every_output_and_registers_the_model(project):
    paths = project
    params = load_params(write_params(paths.root))
    churn.run(params, paths)

    features_t0 = pd.read_parquet(paths.features_at(0))
    scores = CHURN_PREDICTIONS_SCHEMA.validate(pd.read_parquet(paths.churn_predictions_at(0)))
    assert scores["customer_id"].tolist() == features_t0["customer_id"].tolist()
    assert (scores["cutoff"] == pd.Timestamp(AS_OF)).all()
    t1 = CHURN_PREDICTIONS_SCHEMA.validate(pd.read_parquet(paths.churn_predictions_at(1)))
    assert t1["customer_id"].tolist() == pd.read_parquet(paths.features_at(1))["customer_id"].tolist()

    summary = files.read_json(paths.metrics_file("churn"))
    assert summary["evaluation"] == "out_of_time"
    assert summary["train_cutoff"] == (AS_OF - dt.timedelta(days=2 * HORIZON)).isoformat()
    assert summary["test_cutoff"] == (AS_OF - dt.timedelta(days=HORIZON)).isoformat()
    labels_t1 = pd.read_parquet(paths.labels_at(1))
    assert summary["n_test"] == len(labels_t1)
    assert summary["positive_rate_test"] == pytest.approx(1 - labels_t1["purchased"].mean())
    assert set(summary["models"]) == set(MODELS)
    assert summary["models"]["diagnostic_p_alive"]["brier"] is None
    assert len(summary["models"]["classifier_calibrated"]["reliability"]) >= 2
    comparison = summary["comparison"]
    beats = comparison["classifier_brier"] < comparison["best_baseline_brier"]
    assert comparison["classifier_beats_baseline_brier"] == beats
    assert comparison["best_baseline_by_brier"] in ("baseline_p_no_purchase", "baseline_expected_purchases")
    low, high = comparison["bootstrap"]["brier_difference_ci95"]
    assert low <= comparison["classifier_brier"] - comparison["best_baseline_brier"] <= high
    assert summary["calibration"]["final_model"]["method"] in ("none", "sigmoid", "isotonic")
    assert len(summary["top_features"]) == params.churn.top_features

    out = paths.plots_dir("churn")
    for name in PLOTS:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    for name in TABLES:
        assert len(pd.read_csv(out / name)) > 0, name
    importance = pd.read_csv(out / "importance.csv")
    assert list(importance.columns) == ["feature", "gain", "mean_abs_shap"]
    calibration = pd.read_csv(out / "calibration.csv")
    assert "diagnostic_p_alive" not in set(calibration["model"])

    features = files.read_json(paths.path("churn_features"))["features"]
    assert set(features) == set(importance["feature"])
    assert "p_no_purchase" in features and "days_since_last" in features and "returns_count" in features
    assert paths.path("churn_booster").read_text().startswith("tree")
    registration = files.read_json(paths.registration_file(paths.CHURN_MODEL_DIR))
    assert registration["name"] == "cvp-churn" and registration["version"] == 1

    # the registered pyfunc reproduces the written scores from the prepared features
    pyfunc = mlflow.pyfunc.load_model(f"models:/cvp-churn/{registration['version']}")
    X0 = churn.load_snapshot(paths, params, 0).X
    served = pyfunc.predict(X0.reset_index(drop=True))
    np.testing.assert_allclose(served["churn_probability"].to_numpy(), scores["churn_probability"].to_numpy())
    run = mlflow.get_run(registration["run_id"])
    assert run.data.tags["cvp.stage"] == "churn"
    assert "models.classifier_calibrated.roc_auc" in run.data.metrics
    assert mlflow.MlflowClient().get_registered_model("cvp-churn").aliases == {}


def _outputs(params, paths: Catalog) -> tuple[bytes, bytes]:
    """Predictions at t0 and t1 exactly as the stage writes them (no plots or MLflow), also
    written to <root>/t0.parquet and t1.parquet."""
    t1, t0 = churn.load_snapshot(paths, params, 1), churn.load_snapshot(paths, params, 0)
    ev = churn.evaluate(params, paths, t1)
    final = churn_classifier_factory(params)().fit(t1.X, t1.y)
    scores = pd.Series(final.predict_churn_probability(t0.X), index=t0.X.index)
    frames = {
        "t0": churn_eval.predictions_frame(scores, t0.cutoff),
        "t1": churn_eval.predictions_frame(ev.t1_probability, t1.cutoff),
    }
    out = []
    for name, frame in frames.items():
        target = paths.root / f"{name}.parquet"
        files.write_parquet(CHURN_PREDICTIONS_SCHEMA.validate(frame), target)
        out.append(target.read_bytes())
    return out[0], out[1]


def _outputs_in_a_new_process(workdir: Path, hash_seed: str) -> tuple[bytes, bytes]:
    """`_outputs` run by a fresh interpreter on the project at workdir (its own imports, hash seed and thread pools)."""
    import subprocess
    import sys

    code = (
        "import sys; from pathlib import Path; from pipelines.catalog import Catalog; "
        "from pipelines.config import load_params; from tests.test_churn_stage import _outputs; "
        "_outputs(load_params(sys.argv[1]), Catalog(Path(sys.argv[1]).parent, sys.argv[1]))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": hash_seed}
    done = subprocess.run([sys.executable, "-c", code, str(workdir / "params.yaml")], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return (workdir / "t0.parquet").read_bytes(), (workdir / "t1.parquet").read_bytes()


def test_same_inputs_give_byte_identical_predictions_in_two_processes(project):
    """This process (after whatever the suite ran in it) and a fresh one with another hash seed."""
    params = load_params(write_params(project.root))
    second = project.root / "second"
    shutil.copytree(project.root / "data", second / "data")
    write_params(second)
    first_out = _outputs(params, project)
    other_seed = "2" if os.environ.get("PYTHONHASHSEED") == "1" else "1"
    second_out = _outputs_in_a_new_process(second, hash_seed=other_seed)
    assert first_out == second_out
    t0 = pd.read_parquet(project.root / "t0.parquet")
    assert len(t0) == len(pd.read_parquet(project.features_at(0))) and t0["churn_probability"].nunique() > 10


def test_window_labels_of_the_test_cutoff_never_change_its_out_of_time_scores(project):
    paths = project
    params = load_params(write_params(paths.root))
    t1 = churn.load_snapshot(paths, params, 1)
    before = churn.evaluate(params, paths, t1)
    labels = pd.read_parquet(paths.labels_at(1))
    flipped = labels.assign(purchased=(1 - labels["purchased"]).astype("int8"))
    flipped["n_purchase_days"] = flipped["purchased"].astype("int64")
    files.write_parquet(flipped, paths.labels_at(1))
    t1_flipped = churn.load_snapshot(paths, params, 1)
    pd.testing.assert_frame_equal(t1.X, t1_flipped.X)
    after = churn.evaluate(params, paths, t1_flipped)
    assert before.mode == after.mode == "out_of_time"
    assert before.t1_probability.to_numpy().tobytes() == after.t1_probability.to_numpy().tobytes()
    auc_before = before.results["classifier_calibrated"]["roc_auc"]
    assert after.results["classifier_calibrated"]["roc_auc"] == pytest.approx(1 - auc_before)


def test_short_history_falls_back_to_a_grouped_split(project):
    paths = project
    params = load_params(write_params(paths.root, min_train_customers=10_000, test_fraction=0.25))
    t1 = churn.load_snapshot(paths, params, 1)
    ev = churn.evaluate(params, paths, t1)
    assert ev.mode == "grouped_split" and "min_train_customers" in ev.reason
    assert ev.train_cutoff == ev.test_cutoff == t1.cutoff
    assert len(ev.y_test) == pytest.approx(0.25 * len(t1.y), abs=1)
    assert ev.y_train.index.intersection(ev.y_test.index).empty
    # every t1 customer gets an out-of-fold probability for the segment stage
    assert ev.t1_probability.index.equals(t1.X.index) and ev.t1_probability.notna().all()
    assert set(ev.results) == set(MODELS)


def test_missing_clv_t2_means_grouped_split(project):
    paths = project
    paths.clv_predictions_at(2).unlink()
    params = load_params(write_params(paths.root))
    ev = churn.evaluate(params, paths, churn.load_snapshot(paths, params, 1))
    assert ev.mode == "grouped_split" and ev.reason == f"{paths.clv_predictions_at(2)} not found"


def test_inputs_problems_are_one_line_data_errors(project):
    paths = project
    params = load_params(write_params(paths.root))
    clv = pd.read_parquet(paths.clv_predictions_at(1))
    other_day = pd.Series(pd.Timestamp("2000-01-01"), index=clv.index).astype("datetime64[us]")
    files.write_parquet(clv.assign(cutoff=other_day), paths.clv_predictions_at(1))
    with pytest.raises(DataError, match="clv predictions cutoff 2000-01-01 differs") as err:
        churn.load_snapshot(paths, params, 1)
    assert "\n" not in str(err.value)
    files.write_parquet(clv.assign(p_alive=1.5), paths.clv_predictions_at(1))
    with pytest.raises(DataError, match="predictions_t1.parquet: .*p_alive") as err:
        churn.load_snapshot(paths, params, 1)
    assert "\n" not in str(err.value) and "re-run `cvp clv`" in str(err.value)
    paths.clv_predictions_at(1).unlink()
    with pytest.raises(DataError, match=r"predictions_t1.parquet: not found; run `cvp clv` first"):
        churn.load_snapshot(paths, params, 1)


def test_an_unregistered_model_removes_a_stale_registration(project):
    """What the stage calls after logging: no version (register_model false) removes the old file."""
    target = project.registration_file(project.CHURN_MODEL_DIR)
    files.write_json({"name": "cvp-churn", "version": 9, "run_id": "old"}, target)
    tracking.write_registration(project.CHURN_MODEL_DIR, "cvp-churn", None, "new")
    assert not target.exists()
    tracking.write_registration(project.CHURN_MODEL_DIR, "cvp-churn", "3", "abc")
    assert json.loads(target.read_text()) == {"name": "cvp-churn", "version": 3, "run_id": "abc"}
