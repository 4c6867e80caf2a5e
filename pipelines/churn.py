"""`cvp churn`: LightGBM churn classifier on time-honest labels, compared with the CLV model.

Churned = no purchase day in (cutoff, cutoff + horizon]. The final model trains on the
features at t1 (labels in (t1, t0]) and scores every customer at t0. The honest evaluation is
out-of-time when t2 has enough customers (train at t2, test at t1), else a customer-grouped
split at t1; both compare the classifier with the CLV model's own churn signals on the same
test customers. The exported churn probability is the classifier's unless it is constant or
its ROC-AUC trails the best CLV baseline by more than churn.auc_tolerance; then it is that
baseline's, calibrated on the same training labels (``churn_source`` in metrics/churn.json).
Outputs: data/churn/predictions_t{0,1}.parquet, metrics/churn.json, plots/churn/,
models/artifacts/churn/ and an MLflow run with the registered pyfunc model.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pandera.pandas as pa
from matplotlib.figure import Figure
from mlflow.models import infer_signature

from features.customer import LABELS_SCHEMA, features_schema
from features.errors import DataError
from models import metrics as m
from models.churn import (
    CLASSIFIER_SOURCE,
    CalibratedBaseline,
    ChurnClassifier,
    Scored,
    baseline_predictions,
    check_time_honest,
    choose_churn_source,
    churn_labels,
    compare_with_baselines,
    comparison_intervals,
    customer_folds,
    evaluate_scores,
    fit_recency_map,
    is_constant,
    prepare_features,
    split_customers,
)
from pipelines import io, paths, tracking
from pipelines.config import ChurnParams, Params

log = logging.getLogger(__name__)

STAGE = "churn"
MODEL_FILE = "model.pkl"
BOOSTER_FILE = "model.txt"
FEATURES_FILE = "features.json"
BOOTSTRAP_RESAMPLES = 200  # paired resamples of the test customers for the comparison intervals
SHAP_SAMPLE = 5000  # customers whose SHAP values are computed (a seeded sample when more)

_PROBABILITY = [pa.Check.ge(0), pa.Check.le(1)]
CLV_SCHEMA = pa.DataFrameSchema(
    {
        "customer_id": pa.Column(str, unique=True),
        "cutoff": pa.Column(pa.DateTime),
        "p_alive": pa.Column(float, _PROBABILITY),
        "expected_purchases": pa.Column(float, pa.Check.ge(0)),
        "p_no_purchase": pa.Column(float, _PROBABILITY),
        "clv": pa.Column(float),
    },
    strict=False,
    name="clv predictions",
)
PREDICTIONS_SCHEMA = pa.DataFrameSchema(
    {
        "customer_id": pa.Column("str", unique=True),
        "cutoff": pa.Column("datetime64[us]"),
        "churn_probability": pa.Column("float64", _PROBABILITY),
    },
    strict=True,
    ordered=True,
    checks=[pa.Check(lambda df: df["customer_id"].is_monotonic_increasing, error="rows sorted by customer_id")],
    name="churn predictions",
)


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Snapshot:
    """Model inputs at one cutoff: prepared features X (index customer_id) and, for k >= 1, churn labels."""

    k: int
    cutoff: pd.Timestamp
    X: pd.DataFrame
    y: pd.Series | None


def _read(path: Path, schema: pa.DataFrameSchema, producer: str) -> pd.DataFrame:
    """Read a Parquet input and validate it; every problem is one line naming the file."""
    if not path.exists():
        raise DataError(f"{path}: not found; run `cvp {producer}` first")
    frame = pd.read_parquet(path)
    try:
        return schema.validate(frame)
    except (pa.errors.SchemaError, pa.errors.SchemaErrors) as err:
        raise DataError(f"{path}: {str(err).splitlines()[0]}; re-run `cvp {producer}`") from None


def load_snapshot(k: int, params: Params, with_labels: bool) -> Snapshot:
    """Features + CLV predictions (+ labels) at t_k, checked for time honesty."""
    features = _read(paths.features_at(k), features_schema(params.features.windows_days), "features")
    clv = _read(paths.clv_predictions_at(k), CLV_SCHEMA, "clv")
    if features.empty:
        raise DataError(f"{paths.features_at(k)}: no customers at this cutoff; use more history or a later data.as_of")
    if clv.empty:
        raise DataError(
            f"{paths.clv_predictions_at(k)}: no predictions (the CLV model was not fitted at this cutoff); "
            "lower clv.min_customers or use more history"
        )
    labels = _read(paths.labels_at(k), LABELS_SCHEMA, "features") if with_labels else None
    cutoff = check_time_honest(features, str(paths.features_at(k)), labels=labels, clv=clv)
    X = prepare_features(features, clv)
    y = churn_labels(labels).reindex(X.index) if labels is not None else None
    rate = "" if y is None else f", churn rate {y.mean():.3f}"
    log.info("t%d (%s): %d customers, %d features%s", k, cutoff.date(), len(X), X.shape[1], rate)
    return Snapshot(k, cutoff, X, y)


def class_counts(y: pd.Series) -> tuple[int, int]:
    """(churned, retained) customers of 0/1 churn labels."""
    churned = int(y.sum())
    return churned, len(y) - churned


def too_few_of_a_class(snap: Snapshot, minimum: int, horizon_days: int) -> str | None:
    """What is too small when the labels at t_k hold fewer than ``minimum`` churned or retained
    customers (a classifier, its calibration and a stratified split need both); None when enough."""
    churned, retained = class_counts(snap.y)
    if min(churned, retained) >= minimum:
        return None
    end = (snap.cutoff + pd.Timedelta(days=horizon_days)).date()
    return (
        f"{paths.labels_at(snap.k)}: {retained:,} retained and {churned:,} churned customers in the window "
        f"({snap.cutoff.date()}, {end}], fewer than churn.min_class_customers={minimum} of each"
    )


def require_both_classes(snap: Snapshot, params: Params) -> None:
    """Stop with one line when the training labels at t1 are too one-sided to train or check anything."""
    problem = too_few_of_a_class(snap, params.churn.min_class_customers, params.data.horizon_days)
    if problem:
        raise DataError(
            f"{problem}; the churn model needs churned and retained customers: check data.as_of "
            "(null = the last transaction date), use a longer data.horizon_days or more history"
        )


def out_of_time_snapshot(params: Params) -> tuple[Snapshot | None, str]:
    """The t2 training snapshot when it is usable for an out-of-time evaluation, else (None, reason)."""
    needed = (paths.features_at(2), paths.labels_at(2), paths.clv_predictions_at(2))
    absent = [str(p) for p in needed if not p.exists()]
    if absent:
        return None, f"{absent[0]} not found"
    for path in needed:
        if pd.read_parquet(path, columns=["customer_id"]).empty:
            return None, f"{path} is empty"
    snap = load_snapshot(2, params, with_labels=True)
    minimum = params.churn.min_train_customers
    if len(snap.X) < minimum:
        return None, f"{len(snap.X)} customers at t2 < churn.min_train_customers={minimum}"
    problem = too_few_of_a_class(snap, params.churn.min_class_customers, params.data.horizon_days)
    if problem:
        return None, problem
    return snap, "enough history at t2"


# --------------------------------------------------------------------------- modelling


def make_classifier(params: Params) -> Callable[[], ChurnClassifier]:
    """Factory of unfitted classifiers configured from params.churn and params.seed."""
    cfg: ChurnParams = params.churn

    def build() -> ChurnClassifier:
        return ChurnClassifier(
            **cfg.lightgbm.model_dump(),
            calibration=cfg.calibration,
            calibration_fraction=cfg.calibration_fraction,
            random_state=params.seed,
        )

    return build


@dataclass
class Evaluation:
    """Test-set scores and metrics of the evaluation model and the baselines."""

    mode: str
    reason: str
    train_cutoff: pd.Timestamp
    test_cutoff: pd.Timestamp
    y_train: pd.Series
    y_test: pd.Series
    scored: dict[str, Scored]
    model: ChurnClassifier
    t1_probability: pd.Series  # out-of-sample calibrated P(churn) for every t1 customer
    X_train: pd.DataFrame  # the evaluation model's training customers (t2, or the train share of t1)
    X_test: pd.DataFrame
    folds: list[tuple[pd.Index, pd.Index]] | None = None  # the t1 cross-fit (grouped split); None out of time
    results: dict[str, dict] = field(default_factory=dict)


def score_split(
    build: Callable[[], ChurnClassifier], X_train: pd.DataFrame, y_train: pd.Series, X_test: pd.DataFrame
) -> tuple[ChurnClassifier, dict[str, Scored]]:
    """Fit a classifier (and the recency map) on the training customers; score the test customers."""
    model = build().fit(X_train, y_train)
    raw = model.predict_proba_raw(X_test)
    calibrated = model.predict_churn_probability(X_test)
    recency_map = fit_recency_map(X_train["days_since_last"].to_numpy(), y_train.to_numpy())
    scored = {"classifier_raw": Scored(raw, raw), "classifier_calibrated": Scored(calibrated, calibrated)}
    return model, scored | baseline_predictions(X_test, recency_map)


def evaluate_out_of_time(build: Callable[[], ChurnClassifier], t2: Snapshot, t1: Snapshot, reason: str) -> Evaluation:
    """Train at t2 (labels (t2, t1]), test on every customer at t1 (labels (t1, t0])."""
    log.info("out-of-time evaluation: train t2 (%d customers), test t1 (%d customers)", len(t2.X), len(t1.X))
    model, scored = score_split(build, t2.X, t2.y, t1.X)
    probability = pd.Series(scored["classifier_calibrated"].probability, index=t1.X.index)
    return Evaluation("out_of_time", reason, t2.cutoff, t1.cutoff, t2.y, t1.y, scored, model, probability, t2.X, t1.X)


def grouped_folds(test_fraction: float, smallest_class: int | None = None) -> int:
    """Folds of the cross-fit that gives every t1 customer an out-of-sample probability
    (no more than the smaller class has customers, so every fold's test part has both)."""
    folds = max(2, round(1 / test_fraction))
    return folds if smallest_class is None else max(2, min(folds, smallest_class))


def evaluate_grouped_split(
    build: Callable[[], ChurnClassifier], t1: Snapshot, test_fraction: float, seed: int, reason: str
) -> Evaluation:
    """Customer-grouped split at t1: metrics on the test share; predictions_t1 from a K-fold cross-fit."""
    train_ids, test_ids = split_customers(t1.y, test_fraction, seed)
    log.info("grouped-split evaluation at t1: %d train, %d test customers (%s)", len(train_ids), len(test_ids), reason)
    X_train, X_test = t1.X.loc[train_ids], t1.X.loc[test_ids]
    model, scored = score_split(build, X_train, t1.y.loc[train_ids], X_test)
    folds = customer_folds(t1.y, grouped_folds(test_fraction, min(class_counts(t1.y))), seed)
    probability = cross_fit(build, t1, folds)
    return Evaluation(
        "grouped_split", reason, t1.cutoff, t1.cutoff, t1.y.loc[train_ids], t1.y.loc[test_ids], scored, model, probability,
        X_train, X_test, folds,
    )  # fmt: skip


def cross_fit(build: Callable, t1: Snapshot, folds: list[tuple[pd.Index, pd.Index]]) -> pd.Series:
    """Out-of-fold P(churn) of every t1 customer from models built by ``build`` (one per fold)."""
    probability = pd.Series(np.nan, index=t1.X.index)
    for i, (fold_train, fold_test) in enumerate(folds, 1):
        log.info("cross-fit fold %d/%d for the t1 out-of-sample probabilities", i, len(folds))
        fold_model = build().fit(t1.X.loc[fold_train], t1.y.loc[fold_train])
        probability.loc[fold_test] = fold_model.predict_churn_probability(t1.X.loc[fold_test])
    return probability


def out_of_sample_t1(build: Callable, ev: "Evaluation", t1: Snapshot) -> pd.Series:
    """Out-of-sample P(churn) of every t1 customer, the way the evaluation made the classifier's:
    trained at t2 (out of time) or cross-fitted over the same folds (grouped split)."""
    if ev.folds is None:
        return pd.Series(build().fit(ev.X_train, ev.y_train).predict_churn_probability(t1.X), index=t1.X.index)
    return cross_fit(build, t1, ev.folds)


def evaluate(params: Params, t1: Snapshot) -> Evaluation:
    """Out-of-time when t2 is usable, else a grouped split at t1; metrics and the comparison."""
    require_both_classes(t1, params)
    build = make_classifier(params)
    t2, reason = out_of_time_snapshot(params)
    if t2 is not None:
        result = evaluate_out_of_time(build, t2, t1, reason)
    else:
        log.warning("no out-of-time evaluation (%s): falling back to a customer-grouped split at t1", reason)
        result = evaluate_grouped_split(build, t1, params.churn.test_fraction, params.seed, reason)
    result.results = evaluate_scores(result.y_test.to_numpy(), result.scored)
    return result


# --------------------------------------------------------------------------- churn source


@dataclass(frozen=True)
class Exported:
    """The churn probability written, registered and served: the classifier's, or the best CLV
    baseline's calibrated on the same training customers (``source`` ``baseline:<name>``)."""

    source: str  # "classifier" | "baseline:<name>"
    reason: str
    model: ChurnClassifier | CalibratedBaseline
    t0: np.ndarray  # P(churn) of every t0 customer (the predictions_t0 order: t0.X's index)
    t1: pd.Series  # out-of-sample P(churn) of every t1 customer
    test: dict  # metrics of this source on the evaluation's test customers


def choose_exported(params: Params, ev: Evaluation, final: ChurnClassifier, scores_t0: np.ndarray,
                    t1: Snapshot, t0: Snapshot) -> Exported:  # fmt: skip
    """Guard the output: the classifier when it is not constant and not worse than the best CLV
    baseline by more than churn.auc_tolerance (:func:`models.churn.choose_churn_source`), else that
    baseline, Platt-calibrated on the labels the classifier would have been trained on."""
    comparison = compare_with_baselines(ev.results, auc_tolerance=params.churn.auc_tolerance)
    classifier_probabilities = {
        "at t0": scores_t0,
        "on the test customers": ev.scored["classifier_calibrated"].probability,
        "at t1 (out of sample)": ev.t1_probability.to_numpy(),
    }
    source, reason = choose_churn_source(comparison, classifier_probabilities)
    if source == CLASSIFIER_SOURCE:
        log.info("churn_probability from the classifier: %s", reason)
        return Exported(source, reason, final, scores_t0, ev.t1_probability, ev.results["classifier_calibrated"])
    baseline = source.removeprefix("baseline:")

    def build() -> CalibratedBaseline:
        return CalibratedBaseline(baseline)

    model = build().fit(t1.X, t1.y)
    probability_t0 = model.predict_churn_probability(t0.X)
    if is_constant(probability_t0):
        raise DataError(
            f"{paths.clv_predictions_at(0)}: the churn classifier is not usable ({reason}) and the CLV baseline "
            f"{baseline} gives every customer the same churn probability ({probability_t0[0]:.4f}); "
            "check the clv stage's fit (metrics/clv.json) or use more history"
        )
    test_probability = build().fit(ev.X_train, ev.y_train).predict_churn_probability(ev.X_test)
    test = m.classification_summary(ev.y_test, test_probability, test_probability)
    log.warning("churn_probability exported from %s, not the classifier: %s", source, reason)
    return Exported(source, reason, model, probability_t0, out_of_sample_t1(build, ev, t1), test)


def source_summary(exported: Exported) -> dict:
    """The churn_source block of metrics/churn.json (calibration map when a baseline is exported)."""
    model = exported.model
    calibration = None
    if isinstance(model, CalibratedBaseline):
        calibration = {"method": "sigmoid" if model.calibrated_ else "none", "a": model.a_, "b": model.b_,
                       "n_train": model.n_fit_}  # fmt: skip
    return {
        "churn_source": exported.source,
        "churn_source_reason": exported.reason,
        "exported": {
            "source": exported.source,
            "baseline_calibration": calibration,
            "test": {k: exported.test[k] for k in ("roc_auc", "average_precision", "brier", "log_loss")},
            "mean_churn_probability_t0": float(np.mean(exported.t0)),
        },
    }


# --------------------------------------------------------------------------- outputs


def predictions_frame(probability: pd.Series, cutoff: pd.Timestamp) -> pd.DataFrame:
    """The churn predictions contract, sorted by customer_id and validated."""
    frame = pd.DataFrame(
        {
            "customer_id": probability.index.astype("str"),
            "cutoff": pd.Series(cutoff, index=range(len(probability))).astype("datetime64[us]"),
            "churn_probability": probability.to_numpy(dtype="float64"),
        }
    ).sort_values("customer_id", kind="stable", ignore_index=True)
    return PREDICTIONS_SCHEMA.validate(frame)


def importance_table(model: ChurnClassifier, X: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(feature, gain, mean_abs_shap) sorted by gain, and the SHAP values behind it.

    TreeSHAP costs O(trees x leaves x depth^2) per customer, so it runs on a seeded sample of
    at most SHAP_SAMPLE customers (all of them when fewer).
    """
    rows = X.index
    if len(rows) > SHAP_SAMPLE:
        rows = pd.Index(np.sort(np.random.default_rng(seed).choice(rows.to_numpy(), SHAP_SAMPLE, replace=False)))
    log.info("SHAP values of %d customers", len(rows))
    shap = model.shap_values(X.loc[rows])
    mean_abs = shap.drop(columns="bias").abs().mean()
    table = model.feature_importance()
    table["mean_abs_shap"] = table["feature"].map(mean_abs).astype(float)
    return table, shap


def _date(ts: pd.Timestamp) -> str:
    return ts.date().isoformat()


def p_alive_note(auc: float) -> str:
    """What the P(alive) diagnostic showed, in words."""
    verdict = "worse than chance" if auc < 0.5 else "better than chance"
    return (
        f"1 - P(alive) as a churn score ranks {verdict} (ROC-AUC {auc:.3f}); no Brier/log loss, P(alive) is not "
        "a window probability. Under BG/NBD P(alive) = 1 for one-time buyers, who churn most"
    )


def stage_metrics(
    params: Params,
    ev: Evaluation,
    final: ChurnClassifier,
    t1: Snapshot,
    t0: Snapshot,
    scores_t0: np.ndarray,
    importance: pd.DataFrame,
    exported: Exported,
) -> dict:
    """Everything metrics/churn.json reports (small, JSON-safe); ``scores_t0`` are the classifier's."""
    cfg = params.churn
    models = {}
    for name, summary in ev.results.items():
        entry = dict(summary)
        probability = ev.scored[name].probability
        if probability is not None:
            entry["reliability"] = m.reliability_curve(ev.y_test, probability).to_dict(orient="records")
        models[name] = entry
    comparison = compare_with_baselines(ev.results, auc_tolerance=cfg.auc_tolerance)
    comparison["bootstrap"] = comparison_intervals(
        ev.y_test.to_numpy(), ev.scored, comparison, BOOTSTRAP_RESAMPLES, params.seed
    )
    top = importance.head(cfg.top_features)
    return {
        **source_summary(exported),
        "horizon_days": params.data.horizon_days,
        "evaluation": ev.mode,
        "evaluation_reason": ev.reason,
        "train_cutoff": _date(ev.train_cutoff),
        "test_cutoff": _date(ev.test_cutoff),
        "n_train": len(ev.y_train),
        "n_test": len(ev.y_test),
        "positive_rate_train": float(ev.y_train.mean()),
        "positive_rate_test": float(ev.y_test.mean()),
        "models": models,
        "comparison": comparison,
        "calibration": {
            "setting": cfg.calibration,
            "evaluation_model": {"method": ev.model.calibration_method_, "selection": ev.model.calibration_scores_},
            "final_model": {"method": final.calibration_method_, "selection": final.calibration_scores_},
        },
        "final_model": {
            "train_cutoff": _date(t1.cutoff),
            "score_cutoff": _date(t0.cutoff),
            "n_train": len(t1.y),
            "positive_rate_train": float(t1.y.mean()),
            "n_scored": len(scores_t0),
            "n_features": len(final.feature_names_in_),
            "min_child_samples": final.min_child_samples_,
            "mean_churn_probability": float(scores_t0.mean()),
        },
        "evaluation_model": {"n_fit": ev.model.n_fit_, "min_child_samples": ev.model.min_child_samples_},
        "top_features": top[["feature", "gain", "mean_abs_shap"]].to_dict(orient="records"),
        "notes": {
            "baseline_p_no_purchase": "CLV model's P(no purchase in the window) used as the churn probability",
            "baseline_expected_purchases": "score -expected_purchases; probability exp(-expected_purchases) (Poisson P(0))",
            "baseline_recency": "score days_since_last; probability from an isotonic map fitted on the training customers",
            "diagnostic_p_alive": p_alive_note(ev.results["diagnostic_p_alive"]["roc_auc"]),
        },
    }


def warn_on_failed_claims(comparison: dict) -> None:
    if not comparison["classifier_beats_baseline_brier"]:
        log.warning(
            "calibrated classifier Brier %.4f does not beat the best CLV baseline (%s, %.4f)",
            comparison["classifier_brier"], comparison["best_baseline_by_brier"], comparison["best_baseline_brier"],
        )
    if not comparison["classifier_auc_within_tolerance"]:
        log.warning(
            "classifier ROC-AUC %.4f trails the best CLV baseline (%s, %.4f) by more than %.3f",
            comparison["classifier_auc"], comparison["best_baseline_by_auc"], comparison["best_baseline_auc"],
            comparison["auc_tolerance"],
        )


def write_model_artifacts(exported: Exported, model: ChurnClassifier, train_cutoff: pd.Timestamp) -> Path:
    """Pickle of the exported churn model (the one segment and serving load), the classifier's
    LightGBM text model and feature list in models/artifacts/churn; return the pickle path."""
    out = paths.CHURN_MODEL_DIR
    pickle_path = io.write_bytes(pickle.dumps(exported.model, protocol=5), out / MODEL_FILE)
    io.write_text(model.booster_.booster_.model_to_string(), out / BOOSTER_FILE)
    io.write_json(
        {
            "features": list(model.feature_names_in_),
            "categories": model.categories_,
            "calibration_method": model.calibration_method_,
            "train_cutoff": _date(train_cutoff),
            "output": "churn_probability = calibrated P(no purchase day in the next horizon)",
            "churn_source": exported.source,
        },
        out / FEATURES_FILE,
    )
    return pickle_path


# --------------------------------------------------------------------------- plots and tables

LABELS = {
    "classifier_raw": "LightGBM (raw)",
    "classifier_calibrated": "LightGBM (calibrated)",
    "baseline_p_no_purchase": "CLV: P(no purchase)",
    "baseline_expected_purchases": "CLV: expected purchases",
    "baseline_recency": "recency (days since last)",
    "diagnostic_p_alive": "1 - P(alive) (diagnostic)",
}
STYLES = {
    "classifier_raw": {"color": "tab:blue", "linestyle": "--"},
    "classifier_calibrated": {"color": "tab:blue", "linestyle": "-", "linewidth": 2},
    "baseline_p_no_purchase": {"color": "tab:orange"},
    "baseline_expected_purchases": {"color": "tab:green"},
    "baseline_recency": {"color": "tab:purple"},
    "diagnostic_p_alive": {"color": "tab:gray", "linestyle": ":"},
}
SHAP_SCATTER_MAX = 2000


def _stacked(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    return pd.concat([t.assign(model=name)[["model", *t.columns]] for name, t in tables.items()], ignore_index=True)


def roc_table(y: np.ndarray, scored: dict[str, Scored]) -> pd.DataFrame:
    return _stacked({name: m.roc_on_grid(y, s.score) for name, s in scored.items()})


def pr_table(y: np.ndarray, scored: dict[str, Scored]) -> pd.DataFrame:
    return _stacked({name: m.pr_on_grid(y, s.score) for name, s in scored.items()})


def calibration_table(y: np.ndarray, scored: dict[str, Scored]) -> pd.DataFrame:
    return _stacked({n: m.reliability_curve(y, s.probability) for n, s in scored.items() if s.probability is not None})


def gains_table(y: np.ndarray, scored: dict[str, Scored]) -> pd.DataFrame:
    return _stacked({name: m.cumulative_gains(y, s.score) for name, s in scored.items()})


def write_tables(y: np.ndarray, scored: dict[str, Scored], importance: pd.DataFrame, out: Path) -> dict[str, pd.DataFrame]:
    """Small CSVs behind the plots (ROC, PR, reliability, gains, importance); returns them."""
    tables = {
        "roc": roc_table(y, scored),
        "pr": pr_table(y, scored),
        "calibration": calibration_table(y, scored),
        "lift": gains_table(y, scored),
        "importance": importance,
    }
    for name, table in tables.items():
        io.write_csv(table, out / f"{name}.csv")
    return tables


def _save(fig: Figure, target: Path) -> None:
    with io.atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None})


def plot_roc(roc: pd.DataFrame, results: dict[str, dict], target: Path) -> None:
    fig = Figure(figsize=(6, 5.5), layout="constrained")
    ax = fig.add_subplot()
    for name, curve in roc.groupby("model", sort=False):
        ax.plot(curve["fpr"], curve["tpr"], label=f"{LABELS[name]}  AUC {results[name]['roc_auc']:.3f}", **STYLES[name])
    ax.plot([0, 1], [0, 1], color="black", linewidth=0.7, alpha=0.5)
    ax.set(xlabel="false positive rate (retained flagged as churn)", ylabel="true positive rate (churners found)",
           title="ROC on the test customers")
    ax.legend(fontsize=8, loc="lower right")
    _save(fig, target)


def plot_precision_recall(pr: pd.DataFrame, results: dict[str, dict], base_rate: float, target: Path) -> None:
    fig = Figure(figsize=(6, 5.5), layout="constrained")
    ax = fig.add_subplot()
    for name, curve in pr.groupby("model", sort=False):
        ax.plot(curve["recall"], curve["precision"], label=f"{LABELS[name]}  AP {results[name]['average_precision']:.3f}",
                **STYLES[name])
    ax.axhline(base_rate, color="black", linewidth=0.7, alpha=0.5, label=f"churn rate {base_rate:.3f}")
    ax.set(xlabel="recall (share of churners found)", ylabel="precision (share of flagged who churn)",
           title="Precision-recall (interpolated)", ylim=(max(0.0, base_rate - 0.1), 1.01))
    ax.legend(fontsize=8, loc="lower left")
    _save(fig, target)


def plot_calibration(calibration: pd.DataFrame, results: dict[str, dict], scored: dict[str, Scored], target: Path) -> None:
    fig = Figure(figsize=(6.5, 7.5), layout="constrained")
    ax, hist = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    ax.plot([0, 1], [0, 1], color="black", linewidth=0.7, alpha=0.5, label="perfect calibration")
    for name, curve in calibration.groupby("model", sort=False):
        ax.plot(curve["mean_predicted"], curve["fraction_positive"], marker="o", markersize=3,
                label=f"{LABELS[name]}  Brier {results[name]['brier']:.4f}", **STYLES[name])
    ax.set(ylabel="observed churn rate", title="Reliability (10 equal-width bins) on the test customers")
    ax.legend(fontsize=8, loc="upper left")
    bins = np.linspace(0, 1, 21)
    for name in ("classifier_calibrated", "baseline_p_no_purchase"):
        hist.hist(scored[name].probability, bins=bins, histtype="step", color=STYLES[name]["color"], label=LABELS[name])
    hist.set(xlabel="predicted churn probability", ylabel="customers")
    hist.legend(fontsize=8, loc="upper left")
    _save(fig, target)


def plot_lift(gains: pd.DataFrame, target: Path) -> None:
    fig = Figure(figsize=(11, 4.8), layout="constrained")
    cap, lift = fig.subplots(1, 2)
    for name, curve in gains.groupby("model", sort=False):
        share = np.r_[0.0, curve["share_targeted"]]
        cap.plot(share, np.r_[0.0, curve["capture"]], label=LABELS[name], **STYLES[name])
        lift.plot(curve["share_targeted"], curve["lift"], marker="o", markersize=3, label=LABELS[name], **STYLES[name])
    cap.plot([0, 1], [0, 1], color="black", linewidth=0.7, alpha=0.5)
    cap.set(xlabel="share of customers targeted (highest churn score first)", ylabel="share of churners captured",
            title="Cumulative gains")
    lift.axhline(1.0, color="black", linewidth=0.7, alpha=0.5)
    lift.set(xlabel="share of customers targeted", ylabel="cumulative lift (churn rate / overall)", title="Cumulative lift")
    cap.legend(fontsize=8, loc="lower right")
    _save(fig, target)


def plot_importance(importance: pd.DataFrame, top: int, target: Path) -> None:
    head = importance.head(top).iloc[::-1]
    fig = Figure(figsize=(7, 0.35 * len(head) + 1.5), layout="constrained")
    ax = fig.add_subplot()
    ax.barh(head["feature"], head["gain"] / importance["gain"].sum(), color="tab:blue")
    ax.set(xlabel="share of total gain", title=f"Top {len(head)} features by gain (final model)")
    _save(fig, target)


def plot_shap_summary(
    importance: pd.DataFrame, shap: pd.DataFrame, X: pd.DataFrame, top: int, seed: int, target: Path
) -> None:
    """Mean |SHAP| bars and a beeswarm-like scatter (x = SHAP, colour = feature value rank)."""
    order = importance.sort_values(["mean_abs_shap", "feature"], ascending=[False, True]).head(top)["feature"].tolist()[::-1]
    rows = shap.index  # already a sample of at most SHAP_SAMPLE customers
    if len(rows) > SHAP_SCATTER_MAX:
        rows = pd.Index(np.sort(np.random.default_rng(seed).choice(rows.to_numpy(), SHAP_SCATTER_MAX, replace=False)))
    rng = np.random.default_rng(seed)
    fig = Figure(figsize=(12, 0.4 * len(order) + 1.8), layout="constrained")
    bar, swarm = fig.subplots(1, 2, width_ratios=[1, 1.6], sharey=True)
    bar.barh(order, [shap[f].abs().mean() for f in order], color="tab:blue")
    bar.set(xlabel="mean |SHAP| (log-odds of churn)", title="Feature impact (final model, scored customers)")
    for i, feature in enumerate(order):
        values = shap.loc[rows, feature].to_numpy()
        raw = pd.to_numeric(X.loc[rows, feature], errors="coerce")
        colour = raw.rank(pct=True).fillna(0.5).to_numpy()
        swarm.scatter(values, i + rng.uniform(-0.3, 0.3, len(values)), c=colour, cmap="coolwarm", s=4, alpha=0.6,
                      vmin=0, vmax=1, rasterized=True)
    swarm.axvline(0, color="black", linewidth=0.7)
    swarm.set(xlabel="SHAP value (log-odds; > 0 pushes towards churn)", title="Per-customer SHAP (red = high value)")
    _save(fig, target)


def write_plots(ev: Evaluation, importance: pd.DataFrame, shap: pd.DataFrame, X: pd.DataFrame, top: int, seed: int) -> None:
    """plots/churn: ROC, PR, calibration, lift, importance and SHAP PNGs plus their CSVs."""
    out = paths.plots_dir(STAGE)
    y = ev.y_test.to_numpy()
    tables = write_tables(y, ev.scored, importance, out)
    plot_roc(tables["roc"], ev.results, out / "roc.png")
    plot_precision_recall(tables["pr"], ev.results, float(y.mean()), out / "precision_recall.png")
    plot_calibration(tables["calibration"], ev.results, ev.scored, out / "calibration.png")
    plot_lift(tables["lift"], out / "lift.png")
    plot_importance(importance, top, out / "feature_importance.png")
    plot_shap_summary(importance, shap, X, top, seed, out / "shap_summary.png")


# --------------------------------------------------------------------------- MLflow


# Pinned to the running versions instead of letting MLflow infer them (that loads the model
# in a subprocess); unpickling the classifier also needs this project's `models` package.
PYFUNC_REQUIREMENTS = ("lightgbm", "scikit-learn", "scipy", "numpy", "pandas", "mlflow")


class ChurnPyfuncModel(mlflow.pyfunc.PythonModel):
    """Prepared churn features in (the columns of models/artifacts/churn/features.json), the
    calibrated ``churn_probability`` out. The exported churn model (the classifier, or the
    calibrated CLV baseline when metrics/churn.json says ``churn_source: baseline:<name>``)
    travels as a pickled artifact, so the served probability equals the written one."""

    ARTIFACT = "classifier"

    def load_context(self, context) -> None:
        with open(context.artifacts[self.ARTIFACT], "rb") as fh:
            self.classifier = pickle.load(fh)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        X = pd.DataFrame(model_input)
        return pd.DataFrame({"churn_probability": self.classifier.predict_churn_probability(X)}, index=X.index)


def log_churn_model(
    model: ChurnClassifier | CalibratedBaseline, pickle_path: Path, example: pd.DataFrame, registered_name: str | None
):
    """Log the pyfunc (signature + input example) and register it when ``registered_name`` is set."""
    output = pd.DataFrame({"churn_probability": model.predict_churn_probability(example)}, index=example.index)
    example = example.reset_index(drop=True)
    return mlflow.pyfunc.log_model(
        name="model",
        python_model=ChurnPyfuncModel(),
        artifacts={ChurnPyfuncModel.ARTIFACT: str(pickle_path)},
        signature=infer_signature(example, output.reset_index(drop=True)),
        input_example=example,
        registered_model_name=registered_name,
        pip_requirements=[f"{name}=={metadata.version(name)}" for name in PYFUNC_REQUIREMENTS],
    )


def log_to_mlflow(
    params: Params, params_path: Path, summary: dict, model: ChurnClassifier | CalibratedBaseline, pickle_path: Path,
    example: pd.DataFrame,
) -> dict:
    """Stage run: params, flattened metrics, plots, and the pyfunc model (registered if asked)."""
    cfg = params.churn
    section = {"churn": cfg.model_dump(), "seed": params.seed, "horizon_days": params.data.horizon_days}
    claims = summary["comparison"]
    tags = {
        "cvp.evaluation": summary["evaluation"],
        "cvp.churn_source": summary["churn_source"],
        "cvp.train_cutoff": summary["final_model"]["train_cutoff"],
        "cvp.claim.brier_beats_baseline": str(claims["classifier_beats_baseline_brier"]).lower(),
        "cvp.claim.auc_within_tolerance": str(claims["classifier_auc_within_tolerance"]).lower(),
    }
    with tracking.stage_run(STAGE, params, section=section, tags=tags, params_path=params_path) as run:
        logged = ("models", "comparison", "final_model", "exported", "n_train", "n_test")
        tracking.log_metrics({k: summary[k] for k in logged})
        mlflow.log_artifacts(str(paths.plots_dir(STAGE)), artifact_path="plots")
        mlflow.log_artifact(str(paths.metrics_file(STAGE)))
        mlflow.log_artifact(str(paths.CHURN_MODEL_DIR / FEATURES_FILE), artifact_path="model_files")
        mlflow.log_artifact(str(paths.CHURN_MODEL_DIR / BOOSTER_FILE), artifact_path="model_files")
        info = log_churn_model(model, pickle_path, example, cfg.model_name if cfg.register_model else None)
        version = info.registered_model_version
        log.info("logged the churn pyfunc model%s", f" as {cfg.model_name} version {version}" if version else "")
        return {"name": cfg.model_name if version is not None else None, "version": version, "run_id": run.info.run_id}


def write_registration(registration: dict) -> None:
    """registration.json when the model was registered; a stale one is removed otherwise."""
    target = paths.registration_file(paths.CHURN_MODEL_DIR)
    if registration["version"] is None:
        target.unlink(missing_ok=True)
        return
    record = {"name": registration["name"], "version": int(registration["version"]), "run_id": registration["run_id"]}
    io.write_json(record, target)


def run(params: Params, params_path: Path = Path("params.yaml")) -> None:
    """Evaluate, fit the final model at t1, score t0; write predictions, metrics, plots, model, MLflow run."""
    t1 = load_snapshot(1, params, with_labels=True)
    t0 = load_snapshot(0, params, with_labels=False)
    ev = evaluate(params, t1)
    log.info("fitting the final model on t1 (%d customers) to score t0 (%d customers)", len(t1.X), len(t0.X))
    final = make_classifier(params)().fit(t1.X, t1.y)
    scores_t0 = final.predict_churn_probability(t0.X)
    importance, shap = importance_table(final, t0.X, params.seed)
    exported = choose_exported(params, ev, final, scores_t0, t1, t0)
    summary = stage_metrics(params, ev, final, t1, t0, scores_t0, importance, exported)
    warn_on_failed_claims(summary["comparison"])

    io.write_parquet(predictions_frame(pd.Series(exported.t0, index=t0.X.index), t0.cutoff), paths.churn_predictions_at(0))
    io.write_parquet(predictions_frame(exported.t1, t1.cutoff), paths.churn_predictions_at(1))
    pickle_path = write_model_artifacts(exported, final, t1.cutoff)
    io.write_json(summary, paths.metrics_file(STAGE))
    log.info("drawing plots")
    write_plots(ev, importance, shap, t0.X, params.churn.top_features, params.seed)

    registration = log_to_mlflow(params, params_path, summary, exported.model, pickle_path, t0.X.head(5))
    write_registration(registration)
    c = summary["comparison"]
    log.info(
        "churn (%s): classifier AUC %.4f / Brier %.4f vs best CLV baseline AUC %.4f (%s) / Brier %.4f (%s); "
        "churn_source %s",
        ev.mode, c["classifier_auc"], c["classifier_brier"], c["best_baseline_auc"], c["best_baseline_by_auc"],
        c["best_baseline_brier"], c["best_baseline_by_brier"], exported.source,
    )
