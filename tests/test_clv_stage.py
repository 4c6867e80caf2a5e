"""The `clv` stage end to end on the CDNOW 1/10 sample, in a temporary project directory.

Inputs follow the features contract and are built here with lifetimes'
summary_data_from_transaction_data (freq='D', freq_multiplier=7: recency and T in weeks).
"""

from __future__ import annotations

import importlib.resources
import os
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from filelock import FileLock

from models import clv_pyfunc, clv_select
from models.clv_select import ClvFitting
from pipelines import clv as stage
from pipelines import contracts, files
from pipelines.catalog import CUTOFF_OFFSETS, Catalog
from pipelines.config import parse_params

REPO = Path(__file__).resolve().parents[1]
AS_OF = pd.Timestamp("1998-06-30")
HORIZON = 91
REQUIRED_PLOTS = (
    "calibration_holdout.png", "calibration_holdout.csv", "tracking.png", "tracking.csv",
    "frequency_recency.png", "p_alive_matrix.png", "model_vs_baseline.png", "model_vs_baseline.csv",
    "model_selection.csv",
)  # fmt: skip


# --------------------------------------------------------------------------- inputs


def cdnow_sample_transactions() -> pd.DataFrame:
    """CDNOW_sample.txt (2,357 customers) in the ingest contract."""
    source = importlib.resources.files("lifetimes.datasets") / "CDNOW_sample.txt"
    raw = pd.read_csv(
        source, sep=r"\s+", header=None, names=["customer_id", "customer_index", "date", "quantity", "amount"],
        dtype={"customer_id": "str", "date": "str"},
    )  # fmt: skip
    return pd.DataFrame(
        {
            "customer_id": raw["customer_id"].astype("str"),
            "timestamp": pd.to_datetime(raw["date"], format="%Y%m%d").astype("datetime64[us]"),
            "amount": raw["amount"].astype("float64"),
            "quantity": raw["quantity"].astype("float64"),
            "order_id": pd.Series([None] * len(raw), dtype="str"),
            "cost": np.nan,
            "source_row": np.arange(len(raw), dtype="int64"),
        }
    ).sort_values(["customer_id", "timestamp", "source_row"], ignore_index=True)


def features_and_labels(tx: pd.DataFrame, cutoff: pd.Timestamp, horizon_days: int = HORIZON) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The contract columns the clv stage reads, at ``cutoff``, and the labels of the next horizon."""
    from lifetimes.utils import summary_data_from_transaction_data

    before = tx[tx["timestamp"] <= cutoff]
    summary = summary_data_from_transaction_data(
        before, "customer_id", "timestamp", monetary_value_col="amount",
        observation_period_end=cutoff, freq="D", freq_multiplier=7,
    )  # fmt: skip
    days = before.assign(day=before["timestamp"].dt.floor("D")).groupby(["customer_id", "day"])["amount"].sum().reset_index()
    per = days.groupby("customer_id").agg(first_purchase=("day", "min"), last_purchase=("day", "max"), n=("day", "size"), total=("amount", "sum"))
    f = summary.join(per).reset_index().sort_values("customer_id", ignore_index=True)
    frequency = f["frequency"].round().astype("int64")
    features = pd.DataFrame(
        {
            "customer_id": f["customer_id"].astype("str"),
            "cutoff": pd.Series(cutoff, index=f.index).astype("datetime64[us]"),
            "first_purchase": f["first_purchase"].astype("datetime64[us]"),
            "last_purchase": f["last_purchase"].astype("datetime64[us]"),
            "frequency": frequency,
            "recency": f["recency"].astype("float64"),
            "T": f["T"].astype("float64"),
            "monetary_value": f["monetary_value"].astype("float64"),
            "n_purchase_days": f["n"].astype("int64"),
            "avg_spend": (f["total"] / f["n"]).astype("float64"),
            "ipi_mean": ((f["last_purchase"] - f["first_purchase"]).dt.days / frequency.where(frequency > 0)).astype("float64"),
        }
    )
    window = tx[(tx["timestamp"] > cutoff) & (tx["timestamp"] < cutoff + pd.Timedelta(days=horizon_days + 1))]
    wdays = window.assign(day=window["timestamp"].dt.floor("D")).groupby(["customer_id", "day"])["amount"].sum().reset_index()
    agg = wdays.groupby("customer_id").agg(n_purchase_days=("day", "size"), spend=("amount", "sum"))
    agg = agg.reindex(features["customer_id"]).fillna(0)
    labels = pd.DataFrame(
        {
            "customer_id": features["customer_id"],
            "cutoff": features["cutoff"],
            "purchased": (agg["n_purchase_days"].to_numpy() > 0).astype("int8"),
            "n_purchase_days": agg["n_purchase_days"].to_numpy().astype("int64"),
            "spend": agg["spend"].to_numpy().astype("float64"),
        }
    )
    return features, labels


def write_inputs(root: Path, tx: pd.DataFrame, horizon_days: int = HORIZON) -> dict[int, pd.DataFrame]:
    paths = Catalog(root)
    files.write_parquet(tx, paths.TRANSACTIONS)
    features = {}
    for k in CUTOFF_OFFSETS:
        features[k], labels = features_and_labels(tx, AS_OF - pd.Timedelta(days=k * horizon_days), horizon_days)
        files.write_parquet(features[k], paths.features_at(k))
        if k >= 1:
            files.write_parquet(labels, paths.labels_at(k))
    return features


def project_params(root: Path, tracking_root: Path, **clv) -> Path:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"]["as_of"] = AS_OF.date().isoformat()
    raw["data"]["horizon_days"] = HORIZON
    raw["data"]["time_unit"] = "W"
    raw["clv"].update(clv)
    raw["mlflow"]["tracking_dir"] = str(tracking_root / "tracking")
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def run_stage(root: Path, tracking_root: Path | None = None, **clv) -> None:
    """Run the stage on the project at ``root`` (from another working directory), logging to the
    MLflow store under ``tracking_root`` (default: root)."""
    tracking_root = tracking_root or root
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tracking_root / 'tracking' / 'mlflow.db'}")
        mp.delenv("CVP_PIPELINE_RUN_ID", raising=False)
        (tracking_root / "tracking").mkdir(exist_ok=True)
        params_path = project_params(root, tracking_root, **clv)
        stage.run(parse_params(yaml.safe_load(params_path.read_text())), Catalog(root, params_path))


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project directory after one `clv` run with model: auto on the CDNOW sample.

    Built once per test session: pytest-xdist workers share it through a file lock.
    """
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    root = base / "clv_project"
    with FileLock(str(base / "clv_project.lock")):
        if not (root / ".complete").exists():
            root.mkdir(exist_ok=True)
            write_inputs(root, cdnow_sample_transactions())
            run_stage(root)
            (root / ".complete").touch()
    features = {k: read(root, Catalog(root).features_at(k)) for k in CUTOFF_OFFSETS}
    return root, features


def read(root: Path, rel: Path) -> pd.DataFrame:
    """A Parquet file of the project at ``root`` (``rel`` relative to it, or a catalog path)."""
    return pd.read_parquet(root / rel)


# --------------------------------------------------------------------------- end to end


def test_stage_writes_every_output(project):
    root, _ = project
    paths = Catalog(root)
    for k in CUTOFF_OFFSETS:
        assert paths.clv_predictions_at(k).is_file()
    for name in ("purchase_model.pkl", "spend_model.pkl", "model.json", "registration.json"):
        assert (paths.CLV_MODEL_DIR / name).is_file(), name
    for name in REQUIRED_PLOTS:
        assert (paths.plots_dir("clv") / name).stat().st_size > 0, name
    assert paths.metrics_file("clv").is_file()
    summary = files.read_json(paths.path("clv_model_summary"))
    assert summary["files"] == {"purchase_model": "purchase_model.pkl", "spend_model": "spend_model.pkl"}
    assert summary["cutoff"] == AS_OF.date().isoformat() and summary["days_per_unit"] == 7.0


def test_predictions_follow_the_contract_at_each_cutoff(project):
    root, features = project
    paths = Catalog(root)
    metrics = files.read_json(paths.metrics_file("clv"))
    for k in CUTOFF_OFFSETS:
        pred = contracts.CLV_PREDICTIONS_SCHEMA.validate(read(root, paths.clv_predictions_at(k)))
        assert {c: str(t) for c, t in pred.dtypes.items()} == contracts.CLV_PREDICTION_DTYPES
        assert pred["customer_id"].tolist() == features[k]["customer_id"].tolist()
        assert (pred["cutoff"] == AS_OF - pd.Timedelta(days=k * HORIZON)).all()
        assert (pred["model"] == metrics["model"]).all()
        # no purchase happens for sure if the customer is gone: P(X = 0) >= 1 - P(alive)
        assert (pred["p_no_purchase"] >= 1 - pred["p_alive"] - 1e-9).all()


def test_metrics_hold_the_required_blocks(project):
    root, features = project
    m = files.read_json(Catalog(root).metrics_file("clv"))
    assert all(m["bgnbd"][k] > 0 for k in ("r", "alpha", "a", "b"))
    assert all(m["gamma_gamma"][k] > 0 for k in ("p", "q", "v"))
    assert m[m["model"]]  # block of the chosen model
    f0 = features[0]
    assert m["n_customers"] == len(f0) == 2357
    assert m["n_repeat_customers"] == int((f0["frequency"] > 0).sum())
    assert m["n_excluded_gamma_gamma"] == int(((f0["frequency"] == 0) | (f0["monetary_value"] <= 0)).sum())
    assert -1 <= m["frequency_spend_corr"] <= 1
    selection = m["model_selection"]
    assert set(selection["candidates"]) == {"bgnbd", "paretonbd", "mbgnbd"}
    ok = {name: c["mae"] for name, c in selection["candidates"].items() if c["status"] == "ok"}
    assert selection["chosen"] == m["model"] == min(ok, key=ok.get)
    holdout = m["holdout"]
    for side in ("model", "baseline"):
        assert {"mae", "rmse", "aggregate_error"} <= set(holdout["purchases"][side])
        assert {"mae", "rmse"} <= set(holdout["spend"][side])
        assert {"spearman_rho", "top20_capture"} <= set(holdout["ranking"][side])
    assert len(holdout["calibration"]) == 8


def test_bgnbd_and_gamma_gamma_match_lifetimes_at_as_of(project):
    from lifetimes import BetaGeoFitter, GammaGammaFitter

    root, features = project
    m = files.read_json(Catalog(root).metrics_file("clv"))
    f0 = features[0]
    bg = BetaGeoFitter().fit(f0["frequency"], f0["recency"], f0["T"])
    for k in ("r", "alpha", "a", "b"):
        assert m["bgnbd"][k] == pytest.approx(bg.params_[k], rel=2e-3), k
    repeat = f0[(f0["frequency"] > 0) & (f0["monetary_value"] > 0)]
    gg = GammaGammaFitter().fit(repeat["frequency"], repeat["monetary_value"])
    for k in ("p", "q", "v"):
        assert m["gamma_gamma"][k] == pytest.approx(gg.params_[k], rel=2e-3), k


def test_holdout_numbers_agree_with_the_labels(project):
    root, features = project
    paths = Catalog(root)
    m = files.read_json(paths.metrics_file("clv"))
    labels = read(root, paths.labels_at(1))
    holdout = m["holdout"]
    assert holdout["n_customers"] == len(labels)
    assert holdout["purchases"]["model"]["total_actual"] == labels["n_purchase_days"].sum()
    assert holdout["spend"]["model"]["total_actual"] == pytest.approx(labels["spend"].sum())
    pred_t1 = read(root, paths.clv_predictions_at(1))
    assert holdout["purchases"]["model"]["total_predicted"] == pytest.approx(pred_t1["expected_purchases"].sum())
    calib = pd.read_csv(paths.plots_dir("clv") / "calibration_holdout.csv")
    assert calib["n_customers"].sum() == len(labels)
    zero = labels["n_purchase_days"][features[1]["frequency"] == 0]
    assert calib.loc[0, "actual_mean"] == pytest.approx(zero.mean())
    # the model must beat the quick estimate on purchases per customer and on ranking
    assert holdout["purchases"]["model"]["mae"] < holdout["purchases"]["baseline"]["mae"]
    assert holdout["ranking"]["model"]["spearman_rho"] > holdout["ranking"]["baseline"]["spearman_rho"]


def test_tracking_ends_at_the_repeat_purchases_up_to_as_of(project):
    root, features = project
    table = pd.read_csv(Catalog(root).plots_dir("clv") / "tracking.csv", parse_dates=["date"])
    t1_customers = features[0]["customer_id"].isin(features[1]["customer_id"])
    # frequency at as_of counts the repeat purchase days up to as_of
    assert table["actual_cumulative"].iloc[-1] == features[0].loc[t1_customers, "frequency"].sum()
    assert table["date"].iloc[-1] == AS_OF
    assert table["expected_cumulative"].is_monotonic_increasing
    assert table["actual_cumulative"].iloc[-1] == pytest.approx(table["expected_cumulative"].iloc[-1], rel=0.15)


def test_registration_file_names_the_registered_version(project):
    root, _ = project
    paths = Catalog(root)
    reg = files.read_json(paths.registration_file(paths.CLV_MODEL_DIR))
    assert reg["name"] == "cvp-clv" and reg["version"] == 1 and reg["run_id"]


# --------------------------------------------------------------------------- pyfunc


def _load_pyfunc(root: Path):
    import mlflow

    paths = Catalog(root)
    reg = files.read_json(paths.registration_file(paths.CLV_MODEL_DIR))
    uri = f"sqlite:///{root / 'tracking' / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return mlflow.pyfunc.load_model(f"models:/{reg['name']}/{reg['version']}")


def _pickled_models(root: Path):
    paths = Catalog(root)
    with open(paths.path("clv_purchase_model"), "rb") as fh:
        purchase = pickle.load(fh)
    with open(paths.path("clv_spend_model"), "rb") as fh:
        spend = pickle.load(fh)
    return purchase, spend


def test_pyfunc_round_trip_gives_the_stage_predictions(project):
    from models.clv import predict_customers

    root, features = project
    model = _load_pyfunc(root)
    f0 = features[0]
    inputs = f0[["customer_id", "frequency", "recency", "T", "monetary_value", "cutoff"]]
    served = model.predict(inputs)
    purchase, spend = _pickled_models(root)
    direct = predict_customers(purchase, spend, f0, horizon_days=HORIZON, days_per_unit=7.0, margin=0.3, annual_discount_rate=0.10, period_days=30)
    expected = read(root, Catalog(root).clv_predictions_at(0))
    cols = ["p_alive", "expected_purchases", "p_no_purchase", "expected_avg_spend", "clv"]
    np.testing.assert_allclose(served[cols].to_numpy(float), direct[cols].to_numpy(float), rtol=1e-12)
    np.testing.assert_allclose(served[cols].to_numpy(float), expected[cols].to_numpy(float), rtol=1e-12)
    assert served["customer_id"].tolist() == expected["customer_id"].tolist()


def test_pyfunc_horizon_is_an_inference_param(project):
    from models.clv import predict_customers

    root, features = project
    model = _load_pyfunc(root)
    inputs = features[0][["customer_id", "frequency", "recency", "T", "monetary_value"]].head(50)
    short = model.predict(inputs)
    long = model.predict(inputs, params={"horizon_days": 2 * HORIZON})
    assert (long["expected_purchases"] > short["expected_purchases"]).all()
    purchase, spend = _pickled_models(root)
    direct = predict_customers(purchase, spend, inputs.assign(cutoff=pd.NaT), horizon_days=2 * HORIZON, days_per_unit=7.0,
                               margin=0.3, annual_discount_rate=0.10, period_days=30)  # fmt: skip
    np.testing.assert_allclose(long["clv"].to_numpy(float), direct["clv"].to_numpy(float), rtol=1e-12)
    params = {p.name: p.default for p in model.metadata.get_params_schema().params}
    assert params == {"horizon_days": HORIZON, "discount_rate": 0.10, "margin": 0.3, "discount_period_days": 30}


# --------------------------------------------------------------------------- determinism


def test_rerun_gives_byte_identical_predictions(project, tmp_path):
    root, _ = project
    first, second = Catalog(root), Catalog(tmp_path)
    inputs = ["transactions", *(f"features_t{k}" for k in CUTOFF_OFFSETS), "labels_t1", "labels_t2"]
    for key in inputs:
        second.path(key).parent.mkdir(parents=True, exist_ok=True)
        second.path(key).write_bytes(first.path(key).read_bytes())
    run_stage(tmp_path, tracking_root=root, register_model=False)  # same MLflow store: a second run
    outputs = [*(f"clv_predictions_t{k}" for k in CUTOFF_OFFSETS), "clv_purchase_model", "clv_spend_model",
               "clv_model_summary", "metrics_clv"]  # fmt: skip
    for key in outputs:
        assert files.file_sha256(second.path(key)) == files.file_sha256(first.path(key)), key
    for name in REQUIRED_PLOTS:
        assert (second.plots_dir("clv") / name).read_bytes() == (first.plots_dir("clv") / name).read_bytes(), name
    assert not second.registration_file(second.CLV_MODEL_DIR).exists()


# --------------------------------------------------------------------------- sufficient statistics


def test_the_fits_receive_only_distinct_patterns_from_the_engine(project):
    """The stage asks the features engine for the compressed tables: what reaches Python has one
    row per distinct (frequency, recency, T) / (frequency, monetary_value), with counts that add
    up to the customers, and the fitted t_0 models equal fits on every customer's row."""
    root, features = project
    paths = Catalog(root)
    params = parse_params(yaml.safe_load((root / "params.yaml").read_text()))
    as_of = pd.Timestamp(params.data.as_of)
    patterns, _, _ = stage.engine_tables(params, paths, as_of, as_of - pd.Timedelta(days=params.data.horizon_days))
    for k in CUTOFF_OFFSETS:
        in_pandas = clv_select.patterns_of(features[k])
        pd.testing.assert_frame_equal(patterns[k].rfm, in_pandas.rfm, check_dtype=False)
        pd.testing.assert_frame_equal(patterns[k].spend, in_pandas.spend, check_dtype=False)
        assert patterns[k].rfm["count"].sum() == patterns[k].spend["count"].sum() == len(features[k])
        assert len(patterns[k].rfm) < len(features[k])
    fitted, spend = _pickled_models(root)
    f0 = features[0]
    fitting = ClvFitting.from_config(params.clv.model_dump(), params.seed)
    per_customer = clv_select.new_purchase_model(fitted.model_, fitting).fit(f0["frequency"], f0["recency"], f0["T"])
    assert per_customer.params_ == fitted.params_
    assert clv_select.fit_spend(fitting, clv_select.patterns_of(f0)).params_ == spend.params_
    assert spend.n_excluded_ == int((f0["frequency"] == 0).sum() + ((f0["frequency"] > 0) & (f0["monetary_value"] <= 0)).sum())


# --------------------------------------------------------------------------- portability


def test_the_served_model_pins_what_it_imports_and_leaves_lifetimes_out(project):
    """The logged requirements cover the pyfunc's imports (models.clv_pyfunc.REQUIREMENTS) and leave
    out lifetimes, which predicting never imports (tests/test_small_data.py serves every registered
    model where the project is not installed)."""
    root, _ = project
    reg = files.read_json(Catalog(root).registration_file(Catalog(root).CLV_MODEL_DIR))
    requirements = {line.split("==")[0] for line in _logged_requirements(root, reg).splitlines() if line}
    assert set(clv_pyfunc.REQUIREMENTS) <= requirements and "lifetimes" not in requirements


def _logged_requirements(root: Path, reg: dict) -> str:
    import mlflow

    uri = f"sqlite:///{root / 'tracking' / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    local = mlflow.artifacts.download_artifacts(f"models:/{reg['name']}/{reg['version']}/requirements.txt")
    return Path(local).read_text()
