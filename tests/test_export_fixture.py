"""Small, realistic stage outputs for the export, report and notebook tests.

``write_stage_outputs`` writes, into a project directory, what ingest .. segment would have
written for a few hundred customers: features at t0, CLV and churn predictions, segments (built
with the segment stage's own rules), metrics, plots and model registrations. The tests in this
module check that these hand-made inputs honour the upstream contracts, so the export tests
exercise the same shapes as a real run.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from matplotlib.figure import Figure

from features.customer import NO_RETURN_DAYS, feature_dtypes, features_schema
from models import segment_eval
from models import segments as seg
from pipelines import export, files
from pipelines import segment as segment_stage
from pipelines.catalog import Catalog
from pipelines.config import SegmentParams, load_params
from tests.test_segments import RULES

ROOT = Path(__file__).resolve().parents[1]
AS_OF = pd.Timestamp("2000-06-30")
HORIZON_DAYS = 91
WINDOWS = (30, 90, 180, 365)


# --------------------------------------------------------------------------- frames


def features_frame(n: int, seed: int, as_of: pd.Timestamp = AS_OF) -> pd.DataFrame:
    """features_t0 for ``n`` customers: purchase histories drawn per customer, summarised as the
    features stage does (weeks as the model time unit)."""
    rng = np.random.default_rng(seed)
    age_days = rng.integers(0, 540, n)
    n_days = 1 + rng.negative_binomial(1, 0.35, n)
    n_days = np.minimum(n_days, age_days + 1)
    first = as_of - pd.to_timedelta(age_days, unit="D")
    span = np.where(n_days > 1, (rng.uniform(0.2, 1.0, n) * age_days).astype(int), 0)
    span = np.maximum(span, n_days - 1)
    last = first + pd.to_timedelta(span, unit="D")
    frequency = n_days - 1
    avg_spend = np.round(rng.lognormal(3.2, 0.6, n), 2)
    total = np.round(avg_spend * n_days, 2)
    since_last = (as_of - last).days.to_numpy()
    ipi = np.where(frequency > 0, span / np.maximum(frequency, 1), np.nan)
    trailing = np.where(since_last < HORIZON_DAYS, np.round(avg_spend * np.maximum(1, n_days // 3), 2), 0.0)
    frame = pd.DataFrame(
        {
            "customer_id": [f"{i:05d}" for i in range(1, n + 1)],
            "cutoff": as_of,
            "first_purchase": first,
            "last_purchase": last,
            "frequency": frequency,
            "recency": span / 7.0,
            "T": age_days / 7.0,
            "monetary_value": np.where(frequency > 0, avg_spend, 0.0),
            "n_purchase_days": n_days,
            "n_transactions": n_days + rng.integers(0, 2, n),
            "total_spend": total,
            "avg_spend": avg_spend,
            "days_since_first": age_days,
            "days_since_last": since_last,
            "ipi_mean": ipi,
            "ipi_std": np.where(frequency > 1, ipi / 3, np.nan),
            "days_since_last_ratio": since_last / ipi,
        }
    )
    for w in WINDOWS:
        recent = since_last < w
        frame[f"purchases_{w}d"] = np.where(recent, np.minimum(n_days, 1 + w // 90), 0)
        frame[f"spend_{w}d"] = np.where(recent, avg_spend * frame[f"purchases_{w}d"], 0.0)
    frame = frame.assign(
        spend_trend=frame["spend_180d"] - (frame["spend_365d"] - frame["spend_180d"]),
        returns_count=0,
        returns_amount=0.0,
        n_orders=0,
        total_quantity=n_days.astype(float),
        avg_quantity=1.0,
        spend_trailing=trailing,
        margin_trailing=np.nan,
        gap_last_ratio=1.0,
        gap_trend=0.0,
        basket_trend=1.0,
        quantity_trend=1.0,
        return_share_count=0.0,
        return_share_value=0.0,
        days_since_last_return=NO_RETURN_DAYS,
        season_purchases_1y=0,
        season_spend_1y=0.0,
        season_purchases_2y=0,
        season_spend_2y=0.0,
    )
    dtypes = feature_dtypes(WINDOWS)
    return frame[list(dtypes)].astype(dtypes)


def clv_predictions(features: pd.DataFrame, seed: int) -> pd.DataFrame:
    """BG/NBD-like predictions: P(alive) falls with the gap since the last purchase."""
    rng = np.random.default_rng(seed + 1)
    gap = (features["T"] - features["recency"]).to_numpy()
    rate = (features["frequency"].to_numpy() + 0.5) / (features["T"].to_numpy() + 8.0)
    p_alive = np.where(features["frequency"] > 0, np.exp(-gap * rate / 2), 1.0) * rng.uniform(0.7, 1.0, len(features))
    expected = p_alive * rate * (HORIZON_DAYS / 7)
    spend = 0.7 * features["avg_spend"].to_numpy() + 0.3 * 35.0
    return pd.DataFrame(
        {
            "customer_id": features["customer_id"],
            "cutoff": features["cutoff"],
            "model": "bgnbd",
            "p_alive": p_alive,
            "expected_purchases": expected,
            "p_no_purchase": 1 - p_alive * (1 - np.exp(-expected / np.maximum(p_alive, 1e-9))),
            "expected_avg_spend": spend,
            "clv": expected * spend * 0.30 * 0.98,
            "clv_p10": 0.0,
            "clv_p50": expected * spend * 0.30 * 0.5,
            "clv_p90": expected * spend * 0.30 * 3.0,
            "clv_expected_p10": expected * spend * 0.30 * 0.7,
            "clv_expected_p90": expected * spend * 0.30 * 1.4,
        }
    )


def churn_predictions(clv: pd.DataFrame, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed + 2)
    probability = np.clip(clv["p_no_purchase"].to_numpy() * 0.9 + rng.normal(0, 0.05, len(clv)), 0.01, 0.99)
    return pd.DataFrame({"customer_id": clv["customer_id"], "cutoff": clv["cutoff"], "churn_probability": probability})


def segment_outputs(features: pd.DataFrame, clv: pd.DataFrame, churn: pd.DataFrame) -> tuple[seg.SegmentResult, pd.DataFrame, pd.DataFrame]:
    """Segments and summary from the segment stage's own rules and table builders."""
    scoring = segment_eval.scoring_frame(
        ("features", features[list(segment_eval.SCORING_COLUMNS["features"])]),
        ("clv", clv[list(segment_eval.SCORING_COLUMNS["clv"])]),
        ("churn", churn[list(segment_eval.SCORING_COLUMNS["churn"])]),
    )
    result = seg.segment_customers(scoring, RULES)
    segments = segment_eval.segments_table(result.customers, features["cutoff"].iloc[0])
    summary = seg.summarise_segments(result.customers).round(10)
    return result, segments, summary


# --------------------------------------------------------------------------- metrics and plots


def clv_metrics(n: int) -> dict:
    errors = lambda mae, total: {"n_customers": n, "mae": mae, "rmse": mae * 1.6, "total_predicted": total * 1.04,  # noqa: E731
                                 "total_actual": total, "aggregate_error": 0.04}  # fmt: skip
    return {
        "model": "bgnbd",
        "as_of": AS_OF.date().isoformat(),
        "holdout": {
            "n_customers": n,
            "purchases": {"model": errors(0.61, 410.0), "baseline": errors(0.93, 410.0)},
            "spend": {"model": errors(28.4, 15800.0), "baseline": errors(41.7, 15800.0)},
            "ranking": {
                "model": {"spearman_rho": 0.41, "top20_capture": 0.55},
                "baseline": {"spearman_rho": 0.33, "top20_capture": 0.47},
                "oracle": {"top20_capture": 0.93},
            },
        },
        "model_selection": {
            "chosen": "bgnbd",
            "candidates": {
                "bgnbd": {"status": "ok", "mae": 0.61, "rmse": 0.98, "aggregate_error": 0.04},
                "paretonbd": {"status": "ok", "mae": 0.62, "rmse": 0.99, "aggregate_error": 0.05},
                "mbgnbd": {"status": "failed", "error": "did not converge"},
            },
        },
    }


def churn_metrics(n: int) -> dict:
    model = lambda auc, brier: {"n": n, "positive_rate": 0.62, "roc_auc": auc, "average_precision": 0.8,  # noqa: E731
                                "brier": brier, "log_loss": 0.5, "top_decile_lift": 1.5, "top_decile_capture": 0.15}  # fmt: skip
    return {
        "evaluation": "out_of_time",
        "test_cutoff": "2000-03-31",
        "n_test": n,
        "models": {"classifier_calibrated": model(0.78, 0.171), "baseline_p_no_purchase": model(0.75, 0.182)},
        "comparison": {
            "classifier_auc": 0.78, "best_baseline_auc": 0.75, "classifier_beats_baseline_brier": True,
            "bootstrap": {"auc_difference_ci95": [0.01, 0.05], "n_resamples": 200},
        },  # fmt: skip
    }


def ingest_metrics() -> dict:
    return {
        "rows_in": 1250, "rows_accepted": 1240, "rows_rejected": 10,
        "rejected_by_reason": {"bad_timestamp": 6, "bad_amount": 4, "missing_customer_id": 0},
        "n_customers": 300, "n_returns": 3, "n_zero_amount": 1, "date_min": "1999-01-02", "date_max": "2000-06-30",
        "input": "transactions.csv", "input_sha256": "c" * 64,
    }  # fmt: skip


def write_png(title: str, target: Path) -> None:
    fig = Figure(figsize=(4, 3))
    ax = fig.subplots()
    ax.plot([0, 1, 2], [0, 1, 4])
    ax.set_title(title)
    files.save_figure(fig, target, dpi=60)


# --------------------------------------------------------------------------- project


def write_params(root: Path, store: Path | None = None, **export: object) -> Path:
    """params.yaml of the repo with the MLflow store in ``store`` (default ``root/tracking``) and
    the given export settings; dvc.yaml marks ``root`` as the project root."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["mlflow"]["tracking_dir"] = str(store or root / "tracking")
    raw["export"].update(export)
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    (root / "dvc.yaml").write_text("stages: {}\n")
    return root / "params.yaml"


def write_stage_outputs(root: Path, n: int = 300, seed: int = 11, registered: bool = True) -> None:
    """Every input of the export stage, as the upstream stages write them, under ``root``."""
    paths = Catalog(root)
    features = features_frame(n, seed)
    clv = clv_predictions(features, seed)
    churn = churn_predictions(clv, seed)
    result, segments, summary = segment_outputs(features, clv, churn)
    for key, frame in (("features_t0", features), ("clv_predictions_t0", clv), ("churn_predictions_t0", churn),
                       ("segments", segments), ("segment_summary", summary)):  # fmt: skip
        paths.write(key, frame)  # checked against the producer's contract
    holdout = {
        "clv": {"spearman": 0.40, "top_share_capture": 0.767}, "combined": {"spearman": 0.41, "top_share_capture": 0.777},
        "oracle": {"top_share_capture": 1.0}, "combined_at_least_as_good": True, "customers": n, "cutoff": "2000-03-31",
    }  # fmt: skip
    segment_metrics = segment_eval.segment_metrics(result, RULES, AS_OF, holdout)
    for stage, metrics in (("ingest", ingest_metrics()), ("clv", clv_metrics(n)), ("churn", churn_metrics(n)),
                           ("segment", segment_metrics), ("features", {"customers": {"t0": n}})):  # fmt: skip
        files.write_json(metrics, paths.metrics_file(stage))
    segment_stage.write_plots(
        result, summary, segment_metrics["concentration"], seed, paths, SegmentParams().scatter_sample_size
    )
    for stage, names in (("clv", ("tracking", "calibration_holdout")), ("churn", ("roc", "calibration"))):
        for name in names:
            write_png(f"{stage} {name}", paths.plots_dir(stage) / f"{name}.png")
    if registered:  # version as text and as a number: both are read
        files.write_json({"name": "cvp-clv", "version": "3", "run_id": "a" * 32}, paths.registration_file(paths.CLV_MODEL_DIR))
        files.write_json({"name": "cvp-churn", "version": 2, "run_id": "b" * 32}, paths.registration_file(paths.CHURN_MODEL_DIR))


@contextlib.contextmanager
def project_env(root: Path):
    """The catalog of the project at ``root``, with no MLflow store or parent run pinned by the
    caller's environment (the project's params name its store)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("CVP_PIPELINE_RUN_ID", raising=False)
        yield Catalog(root, root / "params.yaml")


# Session fixtures imported into several test modules are set up once per module by pytest;
# this cache makes them once per session (per worker) whatever module asks first.
_SESSION_CACHE: dict[tuple[str, str], Path] = {}


def once_per_session(tmp_path_factory, name: str, build) -> Path:
    key = (str(tmp_path_factory.getbasetemp()), name)
    if key not in _SESSION_CACHE:
        _SESSION_CACHE[key] = build()
    return _SESSION_CACHE[key]


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory) -> Path:
    """One MLflow store for the session's export tests (creating a store's tables takes seconds)."""
    return once_per_session(tmp_path_factory, "mlflow-store", lambda: tmp_path_factory.mktemp("mlflow-store"))


@pytest.fixture(scope="session")
def stage_outputs(tmp_path_factory) -> Path:
    """The export inputs for 120 customers, written once; copy them with ``copy_outputs``."""

    def build() -> Path:
        root = tmp_path_factory.mktemp("stage-outputs")
        write_stage_outputs(root, n=120, seed=5)
        return root

    return once_per_session(tmp_path_factory, "stage-outputs", build)


def copy_outputs(template: Path, root: Path) -> None:
    shutil.copytree(template, root, dirs_exist_ok=True)


@pytest.fixture(scope="session")
def exported_project(tmp_path_factory, mlflow_store) -> Path:
    """A project whose export stage has run once on the hand-made stage outputs (300 customers)."""

    def build() -> Path:
        root = tmp_path_factory.mktemp("exported")
        params_path = write_params(root, mlflow_store)
        write_stage_outputs(root)
        with project_env(root) as paths:
            export.run(load_params(params_path), paths)
        return root

    return once_per_session(tmp_path_factory, "exported", build)


# --------------------------------------------------------------------------- tests of the fixture


def test_hand_made_features_honour_the_features_contract():
    features = features_frame(300, 11)
    features_schema(WINDOWS).validate(features)
    assert features["customer_id"].is_unique and (features["frequency"] == 0).any() and (features["frequency"] > 3).any()


def test_hand_made_predictions_are_probabilities_for_the_same_customers():
    features = features_frame(300, 11)
    clv = clv_predictions(features, 11)
    churn = churn_predictions(clv, 11)
    for frame, column in ((clv, "p_alive"), (clv, "p_no_purchase"), (churn, "churn_probability")):
        assert frame[column].between(0, 1).all(), column
        assert frame["customer_id"].equals(features["customer_id"])
    assert (clv["expected_purchases"] >= 0).all()


def test_hand_made_segments_cover_every_quadrant_and_tier():
    features = features_frame(300, 11)
    clv = clv_predictions(features, 11)
    _, segments, summary = segment_outputs(features, clv, churn_predictions(clv, 11))
    assert set(segments["quadrant"]) == set(seg.QUADRANTS)
    assert set(segments["tier"]) == set(seg.TIERS)
    assert summary.groupby("group_by")["customers"].sum().to_dict() == {"quadrant": 300, "tier": 300}


def test_exported_project_has_every_output(exported_project):
    paths = Catalog(exported_project)
    for path in (paths.SCORES_PARQUET, paths.SCORES_CSV, paths.REPORT_HTML, paths.MODELS_HTML, paths.DEFAULT_DATABASE,
                 paths.metrics_file("export")):  # fmt: skip
        assert path.stat().st_size > 0, path
    metrics = json.loads(paths.metrics_file("export").read_text())
    assert metrics["rows"] == 300
    assert not any(name.endswith(".tmp") for name in os.listdir(paths.EXPORTS))
