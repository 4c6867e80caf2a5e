"""Where every stage reads and writes, relative to the project root (dvc.yaml uses the same)."""

from __future__ import annotations

from pathlib import Path

DATA = Path("data")
TRANSACTIONS = DATA / "interim" / "transactions.parquet"
QUARANTINE = DATA / "quarantine" / "rejected.parquet"

FEATURES_DIR = DATA / "features"


def features_at(k: int) -> Path:
    """Customer features at cutoff t_k = as_of - k * horizon (k = 0 scores, 1 trains, 2 backtests)."""
    return FEATURES_DIR / f"features_t{k}.parquet"


def labels_at(k: int) -> Path:
    """Labels for the window (t_k, t_k + horizon] of the customers in features_at(k); k >= 1."""
    return FEATURES_DIR / f"labels_t{k}.parquet"


CUTOFF_OFFSETS = (0, 1, 2)

CLV_DIR = DATA / "clv"


def clv_predictions_at(k: int) -> Path:
    """CLV-model predictions at t_k from a model fitted on data up to t_k."""
    return CLV_DIR / f"predictions_t{k}.parquet"


CHURN_DIR = DATA / "churn"


def churn_predictions_at(k: int) -> Path:
    """Churn probabilities at t_k: k=0 from the model trained at t_1 (scores), k=1 out-of-time
    from the evaluation model trained at t_2 (used to evaluate the combined forecast)."""
    return CHURN_DIR / f"predictions_t{k}.parquet"


SEGMENTS_DIR = DATA / "segments"
SEGMENTS = SEGMENTS_DIR / "segments.parquet"
SEGMENT_SUMMARY = SEGMENTS_DIR / "summary.parquet"

MODELS = Path("models") / "artifacts"
CLV_MODEL_DIR = MODELS / "clv"
CHURN_MODEL_DIR = MODELS / "churn"
SEGMENT_MODEL_DIR = MODELS / "segment"
SEGMENT_REFERENCE = SEGMENT_MODEL_DIR / "reference.json"


def registration_file(model_dir: Path) -> Path:
    """JSON {"name": ..., "version": ...} of the MLflow registered model a stage produced."""
    return model_dir / "registration.json"

METRICS = Path("metrics")
PLOTS = Path("plots")
EXPORTS = Path("exports")
SCORES_PARQUET = EXPORTS / "scores.parquet"
SCORES_CSV = EXPORTS / "scores.csv"
DEFAULT_DATABASE = EXPORTS / "scores.db"
REPORTS = Path("reports")
REPORT_HTML = REPORTS / "segments.html"
MODELS_HTML = REPORTS / "models.html"  # the model evaluation, linked from segments.html
SEGMENT_LISTS = REPORTS / "segments"  # one CSV per quadrant and tier, linked as segments/<file>
EXPLORE_HTML = REPORTS / "explore.html"  # notebooks/explore.ipynb, executed


def metrics_file(stage: str) -> Path:
    return METRICS / f"{stage}.json"


def plots_dir(stage: str) -> Path:
    return PLOTS / stage
