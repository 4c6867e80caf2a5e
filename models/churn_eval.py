"""How the churn stage evaluates and chooses what it exports, as pure functions (frames in, results out).

The honest evaluation is out-of-time when the t2 snapshot is usable (train at t2, test on every
t1 customer), else a customer-grouped split at t1 whose t1 probabilities come from a K-fold
cross-fit; both score the classifier and the CLV model's churn signals on the same test
customers. :func:`choose_exported` guards the output (the classifier, or the best CLV baseline
calibrated on the same labels) and :func:`stage_metrics` assembles metrics/churn.json. Functions
that word a user message take the file it is about as a string (``*_file``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from features.errors import DataError
from features.frames import sorted_by_id
from models import metrics as m
from models.churn import (
    CLASSIFIER_SOURCE,
    MIN_CALIBRATION_CLASS,
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

log = logging.getLogger(__name__)

BOOTSTRAP_RESAMPLES = 200  # paired resamples of the test customers for the comparison intervals
SHAP_SAMPLE = 5000  # customers whose SHAP values are computed (a seeded sample when more); churn.shap_sample
BOOTSTRAP_SAMPLE = 50000  # test customers the bootstrap resamples (a seeded sample when more); churn.bootstrap_sample

Builder = Callable[[], ChurnClassifier]  # a factory of unfitted, identically configured classifiers


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Snapshot:
    """Model inputs at one cutoff: prepared features X (index customer_id) and, for k >= 1, churn labels."""

    k: int
    cutoff: pd.Timestamp
    X: pd.DataFrame
    y: pd.Series | None


def snapshot(k: int, features: pd.DataFrame, clv: pd.DataFrame, labels: pd.DataFrame | None,
             features_file: str, clv_file: str) -> Snapshot:  # fmt: skip
    """The snapshot at t_k from its features, CLV predictions and (k >= 1) labels, checked for
    time honesty; the files are named in the one-line errors."""
    if features.empty:
        raise DataError(f"{features_file}: no customers at this cutoff; use more history or a later data.as_of")
    if clv.empty:
        raise DataError(
            f"{clv_file}: no predictions (the CLV model was not fitted at this cutoff); "
            "lower clv.min_customers or use more history"
        )
    cutoff = check_time_honest(features, features_file, labels=labels, clv=clv)
    X = prepare_features(features, clv)
    y = churn_labels(labels).reindex(X.index) if labels is not None else None
    rate = "" if y is None else f", churn rate {y.mean():.3f}"
    log.info("t%d (%s): %d customers, %d features%s", k, cutoff.date(), len(X), X.shape[1], rate)
    return Snapshot(k, cutoff, X, y)


def class_counts(y: pd.Series) -> tuple[int, int]:
    """(churned, retained) customers of 0/1 churn labels."""
    churned = int(y.sum())
    return churned, len(y) - churned


def too_few_of_a_class(snap: Snapshot, minimum: int, horizon_days: int, labels_file: str) -> str | None:
    """What is too small when the labels at t_k hold fewer than ``minimum`` churned or retained
    customers (a classifier, its calibration and a stratified split need both); None when enough."""
    churned, retained = class_counts(snap.y)
    if min(churned, retained) >= minimum:
        return None
    end = (snap.cutoff + pd.Timedelta(days=horizon_days)).date()
    return (
        f"{labels_file}: {retained:,} retained and {churned:,} churned customers in the window "
        f"({snap.cutoff.date()}, {end}], fewer than churn.min_class_customers={minimum} of each"
    )


def require_both_classes(snap: Snapshot, minimum: int, horizon_days: int, labels_file: str) -> None:
    """Stop with one line when the training labels at t1 are too one-sided to train or check anything."""
    problem = too_few_of_a_class(snap, minimum, horizon_days, labels_file)
    if problem:
        raise DataError(
            f"{problem}; the churn model needs churned and retained customers: check data.as_of "
            "(null = the last transaction date), use a longer data.horizon_days or more history"
        )


def out_of_time_problem(t2: Snapshot, min_train_customers: int, min_class_customers: int, horizon_days: int,
                        labels_file: str) -> str | None:  # fmt: skip
    """Why the t2 snapshot cannot train the out-of-time evaluation (too few customers, or of a
    class); None when it can."""
    if len(t2.X) < min_train_customers:
        return f"{len(t2.X)} customers at t2 < churn.min_train_customers={min_train_customers}"
    return too_few_of_a_class(t2, min_class_customers, horizon_days, labels_file)


# --------------------------------------------------------------------------- evaluation


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
    build: Builder, X_train: pd.DataFrame, y_train: pd.Series, X_test: pd.DataFrame, y_test: pd.Series | None = None
) -> tuple[ChurnClassifier, dict[str, Scored]]:
    """Fit a classifier (and the recency map) on the training customers; score the test customers.
    With ``y_test`` (out of time) the test customers' learning curve chooses the number of trees."""
    model = build().fit(X_train, y_train, eval_set=None if y_test is None else (X_test, y_test))
    raw, calibrated = model.predict_raw_and_calibrated(X_test)
    recency_map = fit_recency_map(X_train["days_since_last"].to_numpy(), y_train.to_numpy())
    scored = {"classifier_raw": Scored(raw, raw), "classifier_calibrated": Scored(calibrated, calibrated)}
    return model, scored | baseline_predictions(X_test, recency_map)


def evaluate_out_of_time(build: Builder, t2: Snapshot, t1: Snapshot, reason: str) -> Evaluation:
    """Train at t2 (labels (t2, t1]), test on every customer at t1 (labels (t1, t0]); the t1
    learning curve chooses the number of trees (up to lightgbm.n_estimators) for this model and
    the final one."""
    log.info("out-of-time evaluation: train t2 (%d customers), test t1 (%d customers)", len(t2.X), len(t1.X))
    model, scored = score_split(build, t2.X, t2.y, t1.X, t1.y)
    probability = pd.Series(scored["classifier_calibrated"].probability, index=t1.X.index)
    return Evaluation("out_of_time", reason, t2.cutoff, t1.cutoff, t2.y, t1.y, scored, model, probability, t2.X, t1.X)


def grouped_folds(test_fraction: float, smallest_class: int | None = None) -> int:
    """Folds of the cross-fit that gives every t1 customer an out-of-sample probability
    (no more than the smaller class has customers, so every fold's test part has both)."""
    folds = max(2, round(1 / test_fraction))
    return folds if smallest_class is None else max(2, min(folds, smallest_class))


def evaluate_grouped_split(build: Builder, t1: Snapshot, test_fraction: float, seed: int, reason: str) -> Evaluation:
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


def out_of_sample_t1(build: Callable, ev: Evaluation, t1: Snapshot) -> pd.Series:
    """Out-of-sample P(churn) of every t1 customer, the way the evaluation made the classifier's:
    trained at t2 (out of time) or cross-fitted over the same folds (grouped split)."""
    if ev.folds is None:
        return pd.Series(build().fit(ev.X_train, ev.y_train).predict_churn_probability(t1.X), index=t1.X.index)
    return cross_fit(build, t1, ev.folds)


def evaluate(build: Builder, t1: Snapshot, t2: Snapshot | None, reason: str, test_fraction: float, seed: int) -> Evaluation:
    """Out-of-time when ``t2`` is usable, else a grouped split at t1 (``reason`` says why); metrics
    of every model on the test customers."""
    if t2 is not None:
        result = evaluate_out_of_time(build, t2, t1, reason)
    else:
        log.warning("no out-of-time evaluation (%s): falling back to a customer-grouped split at t1", reason)
        result = evaluate_grouped_split(build, t1, test_fraction, seed, reason)
    result.results = evaluate_scores(result.y_test.to_numpy(), result.scored)
    return result


def final_builder(build: Builder, ev: Evaluation, t1: Snapshot) -> Builder:
    """Builder of the final model (trained at t1): the evaluation model's number of trees and,
    when churn.calibration is auto, its calibration method, so the final fit repeats neither
    choice (with calibration none it is one LightGBM fit on every t1 customer). A calibrator
    chosen by the evaluation gives way to none when t1 has too few churned or retained
    customers to hold out a calibration set."""
    settings: dict = {"n_estimators": ev.model.n_trees_}
    if build().calibration == "auto":
        method = ev.model.calibration_method_
        if method != "none" and min(class_counts(t1.y)) < MIN_CALIBRATION_CLASS:
            method = "none"
        settings["calibration"] = method

    def build_final() -> ChurnClassifier:
        return build().set_params(**settings)

    return build_final


def trees_summary(model: ChurnClassifier) -> dict:
    """The trees block of metrics/churn.json: the cap, the tolerance, the number chosen and the
    out-of-time learning curve around it (log loss on the test customers; only when
    lightgbm.tree_tolerance is set and the evaluation is out of time)."""
    curve = model.learning_curve_
    summary = {"cap": model.n_estimators, "tolerance": model.tree_tolerance, "chosen": model.n_trees_,
               "chosen_by": "cap" if curve is None or model.tree_tolerance is None else "out_of_time_learning_curve"}  # fmt: skip
    if curve is not None:
        summary |= {
            "log_loss_at_chosen": float(curve[model.n_trees_ - 1]),
            "log_loss_at_cap": float(curve[-1]),
            "best_log_loss": float(curve.min()),
            "best_at": int(curve.argmin()) + 1,
        }
    return summary


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


def choose_exported(build: Builder, ev: Evaluation, final: ChurnClassifier, scores_t0: np.ndarray, t1: Snapshot,
                    t0: Snapshot, auc_tolerance: float, clv_file: str) -> Exported:  # fmt: skip
    """Guard the output: the classifier when it is not constant and not worse than the best CLV
    baseline by more than ``auc_tolerance`` (:func:`models.churn.choose_churn_source`), else that
    baseline, Platt-calibrated on the labels the classifier would have been trained on.
    ``clv_file`` (the CLV predictions at t0) is named when the baseline is constant too."""
    comparison = compare_with_baselines(ev.results, auc_tolerance=auc_tolerance)
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

    def build_baseline() -> CalibratedBaseline:
        return CalibratedBaseline(baseline)

    model = build_baseline().fit(t1.X, t1.y)
    probability_t0 = model.predict_churn_probability(t0.X)
    if is_constant(probability_t0):
        raise DataError(
            f"{clv_file}: the churn classifier is not usable ({reason}) and the CLV baseline "
            f"{baseline} gives every customer the same churn probability ({probability_t0[0]:.4f}); "
            "check the clv stage's fit (metrics/clv.json) or use more history"
        )
    test_probability = build_baseline().fit(ev.X_train, ev.y_train).predict_churn_probability(ev.X_test)
    test = m.classification_summary(ev.y_test, test_probability, test_probability)
    log.warning("churn_probability exported from %s, not the classifier: %s", source, reason)
    return Exported(source, reason, model, probability_t0, out_of_sample_t1(build_baseline, ev, t1), test)


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
    """The churn predictions (customer_id, cutoff, churn_probability), sorted by customer_id."""
    return sorted_by_id(pd.DataFrame(
        {
            "customer_id": probability.index.astype("str"),
            "cutoff": pd.Series(cutoff, index=range(len(probability))).astype("datetime64[us]"),
            "churn_probability": probability.to_numpy(dtype="float64"),
        }
    ))


def importance_table(model: ChurnClassifier, X: pd.DataFrame, seed: int,
                     sample: int = SHAP_SAMPLE) -> tuple[pd.DataFrame, pd.DataFrame]:  # fmt: skip
    """(feature, gain, mean_abs_shap) sorted by gain, and the SHAP values behind it.

    TreeSHAP costs O(trees x leaves x depth^2) per customer, so it runs on a seeded sample of
    at most ``sample`` customers (all of them when fewer; churn.shap_sample).
    """
    rows = X.index
    if len(rows) > sample:
        rows = pd.Index(np.sort(np.random.default_rng(seed).choice(rows.to_numpy(), sample, replace=False)))
    log.info("SHAP values of %d customers", len(rows))
    shap = model.shap_values(X.loc[rows])
    mean_abs = shap.drop(columns="bias").abs().mean()
    table = model.feature_importance()
    table["mean_abs_shap"] = table["feature"].map(mean_abs).astype(float)
    return table, shap


def _stacked(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    return pd.concat([t.assign(model=name)[["model", *t.columns]] for name, t in tables.items()], ignore_index=True)


def plot_tables(y: np.ndarray, scored: dict[str, Scored], importance: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The small tables behind the plots, by name: ROC and PR on a grid, reliability (models with a
    probability), cumulative gains, and the importance table."""
    return {
        "roc": _stacked({name: m.roc_on_grid(y, s.score) for name, s in scored.items()}),
        "pr": _stacked({name: m.pr_on_grid(y, s.score) for name, s in scored.items()}),
        "calibration": _stacked(
            {name: m.reliability_curve(y, s.probability) for name, s in scored.items() if s.probability is not None}
        ),
        "lift": _stacked({name: m.cumulative_gains(y, s.score) for name, s in scored.items()}),
        "importance": importance,
    }


def _date(ts: pd.Timestamp) -> str:
    return ts.date().isoformat()


def model_description(exported: Exported, model: ChurnClassifier, train_cutoff: pd.Timestamp) -> dict:
    """features.json beside the model files: the classifier's inputs, categories and calibration."""
    return {
        "features": list(model.feature_names_in_),
        "categories": model.categories_,
        "calibration_method": model.calibration_method_,
        "train_cutoff": _date(train_cutoff),
        "output": "churn_probability = calibrated P(no purchase day in the next horizon)",
        "churn_source": exported.source,
    }


def p_alive_note(auc: float) -> str:
    """What the P(alive) diagnostic showed, in words."""
    verdict = "worse than chance" if auc < 0.5 else "better than chance"
    return (
        f"1 - P(alive) as a churn score ranks {verdict} (ROC-AUC {auc:.3f}); no Brier/log loss, P(alive) is not "
        "a window probability. Under BG/NBD P(alive) = 1 for one-time buyers, who churn most"
    )


def stage_metrics(
    ev: Evaluation,
    final: ChurnClassifier,
    t1: Snapshot,
    t0: Snapshot,
    scores_t0: np.ndarray,
    importance: pd.DataFrame,
    exported: Exported,
    *,
    horizon_days: int,
    calibration: str,
    auc_tolerance: float,
    top_features: int,
    seed: int,
    bootstrap_sample: int | None = BOOTSTRAP_SAMPLE,
) -> dict:
    """Everything metrics/churn.json reports (small, JSON-safe); ``scores_t0`` are the classifier's.
    ``calibration`` is the configured setting (churn.calibration), ``seed`` seeds the bootstrap,
    which resamples at most ``bootstrap_sample`` test customers (churn.bootstrap_sample)."""
    models = {}
    for name, summary in ev.results.items():
        entry = dict(summary)
        probability = ev.scored[name].probability
        if probability is not None:
            entry["reliability"] = m.reliability_curve(ev.y_test, probability).to_dict(orient="records")
        models[name] = entry
    comparison = compare_with_baselines(ev.results, auc_tolerance=auc_tolerance)
    comparison["bootstrap"] = comparison_intervals(
        ev.y_test.to_numpy(), ev.scored, comparison, BOOTSTRAP_RESAMPLES, seed, bootstrap_sample
    )
    top = importance.head(top_features)
    return {
        **source_summary(exported),
        "horizon_days": horizon_days,
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
            "setting": calibration,
            "evaluation_model": {"method": ev.model.calibration_method_, "selection": ev.model.calibration_scores_},
            "final_model": {"method": final.calibration_method_, "selection": final.calibration_scores_,
                            "chosen_by": "evaluation" if calibration == "auto" else "setting"},  # fmt: skip
        },
        "trees": trees_summary(ev.model),
        "final_model": {
            "train_cutoff": _date(t1.cutoff),
            "score_cutoff": _date(t0.cutoff),
            "n_train": len(t1.y),
            "positive_rate_train": float(t1.y.mean()),
            "n_scored": len(scores_t0),
            "n_features": len(final.feature_names_in_),
            "min_child_samples": final.min_child_samples_,
            "n_trees": final.n_trees_,
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


def warn_on_failed_claims(comparison: dict) -> list[str]:
    """Log (and return) a warning for each headline claim the classifier misses."""
    warnings = []
    if not comparison["classifier_beats_baseline_brier"]:
        warnings.append(
            f"calibrated classifier Brier {comparison['classifier_brier']:.4f} does not beat the best CLV baseline "
            f"({comparison['best_baseline_by_brier']}, {comparison['best_baseline_brier']:.4f})"
        )
    if not comparison["classifier_auc_within_tolerance"]:
        warnings.append(
            f"classifier ROC-AUC {comparison['classifier_auc']:.4f} trails the best CLV baseline "
            f"({comparison['best_baseline_by_auc']}, {comparison['best_baseline_auc']:.4f}) by more than "
            f"{comparison['auc_tolerance']:.3f}"
        )
    for warning in warnings:
        log.warning("%s", warning)
    return warnings


def run_tags(summary: dict) -> dict[str, str]:
    """MLflow tags of the stage run: the evaluation, the exported source and the two claims."""
    claims = summary["comparison"]
    return {
        "cvp.evaluation": summary["evaluation"],
        "cvp.churn_source": summary["churn_source"],
        "cvp.train_cutoff": summary["final_model"]["train_cutoff"],
        "cvp.claim.brier_beats_baseline": str(claims["classifier_beats_baseline_brier"]).lower(),
        "cvp.claim.auc_within_tolerance": str(claims["classifier_auc_within_tolerance"]).lower(),
    }


def outcome(summary: dict) -> str:
    """One line: the classifier against the best CLV baseline, and the exported source."""
    c = summary["comparison"]
    return (
        f"churn ({summary['evaluation']}): classifier AUC {c['classifier_auc']:.4f} / Brier {c['classifier_brier']:.4f} "
        f"vs best CLV baseline AUC {c['best_baseline_auc']:.4f} ({c['best_baseline_by_auc']}) / Brier "
        f"{c['best_baseline_brier']:.4f} ({c['best_baseline_by_brier']}); churn_source {summary['churn_source']}"
    )
