"""Choosing and fitting the CLV models at each cutoff, and summarising the fits (pure: frames and
domain objects in, models, frames and dicts out).

- :func:`choose_purchase_model`: with ``model: auto`` every candidate of the BG/NBD family is
  fitted at t_1 and predicts the purchase days of (t_1, t_0]; the lowest per-customer MAE wins.
- :func:`fit_both`: the chosen purchase model and Gamma-Gamma, fitted on the sufficient
  statistics (:class:`Patterns`) of one cutoff; :func:`predict_at` / :func:`predict_t2` predict
  with them at that cutoff, so downstream stages use them without leakage.
- :func:`clv_metrics` / :func:`model_summary`: the JSON the stage writes.

A message that names a file takes its label (``source``) as a string.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import PurePath
from typing import Any

import numpy as np
import pandas as pd

from features.errors import DataError
from models import clv_eval
from models.clv import ClvSettings, FitError, PurchaseModel, SpendModel, as_predictions, compress

log = logging.getLogger(__name__)

BGNBD_PARAMS = ("r", "alpha", "a", "b")


@dataclass(frozen=True)
class ClvFitting:
    """How the CLV models are fitted and chosen (the fields of the ``clv`` params section of the same
    names, plus the seed): ``model`` is a candidate name or "auto"; penalties and the retry of each
    fit; the search bounds (iterations, seconds); the smallest customer base a fit is reliable on;
    the sample size of the model comparison; the seed of the sample and of the Pareto/NBD start."""

    model: str
    penalizer: float
    retry_penalizer: float
    fit_max_iterations: int
    fit_time_budget_s: float
    spend_penalizer: float
    spend_retry_penalizer: float
    spend_correlation_warn: float
    spend_fallback: str | None
    min_customers: int
    selection_max_customers: int
    seed: int

    @classmethod
    def from_config(cls, section: Mapping[str, Any], seed: int) -> ClvFitting:
        """From the ``clv`` params section as a dict (its other keys are ignored) and the seed."""
        return cls(**{name: section[name] for name in CONFIG_FIELDS}, seed=seed)


#: The ClvFitting fields that come from the ``clv`` params section (all but the seed).
CONFIG_FIELDS = tuple(name for name in ClvFitting.__dataclass_fields__ if name != "seed")


# --------------------------------------------------------------------------- inputs


def check_inputs(features: Mapping[int, pd.DataFrame], labels_t1: pd.DataFrame, feature_sources: Mapping[int, str],
                 labels_source: str) -> None:  # fmt: skip
    """t_0 and t_1 have customers, and labels_t1 holds features_t1's customers in the same order
    (``feature_sources`` / ``labels_source``: the files' labels for the messages)."""
    for k in (0, 1):
        if features[k].empty:
            raise DataError(
                f"{feature_sources[k]}: no customers; the CLV models need purchases on or before t_{k} "
                "(check data.as_of and data.horizon_days)"
            )
    if not labels_t1["customer_id"].equals(features[1]["customer_id"]):
        raise DataError(f"{labels_source}: customers differ from {feature_sources[1]}; rerun `cvp features`")


# --------------------------------------------------------------------------- sufficient statistics


@dataclass(frozen=True)
class Patterns:
    """What the fits need from one features file: distinct (frequency, recency, T) and distinct
    (frequency, monetary_value), each with its customer ``count``."""

    rfm: pd.DataFrame
    spend: pd.DataFrame

    @property
    def n_customers(self) -> int:
        return int(self.rfm["count"].sum())


def patterns_of(features: pd.DataFrame) -> Patterns:
    """The compressed tables of a features frame in memory (the stage gets the same from its engine)."""
    return Patterns(compress(features, ["frequency", "recency", "T"]), compress(features, ["frequency", "monetary_value"]))


# --------------------------------------------------------------------------- fitting


def new_purchase_model(name: str, fitting: ClvFitting) -> PurchaseModel:
    return PurchaseModel(model=name, penalizer=fitting.penalizer, retry_penalizer=fitting.retry_penalizer,
                         random_state=fitting.seed, max_iterations=fitting.fit_max_iterations,
                         time_budget_s=fitting.fit_time_budget_s)  # fmt: skip


def fit_purchase(model: PurchaseModel, patterns: Patterns) -> PurchaseModel:
    rfm = patterns.rfm
    return model.fit(rfm["frequency"], rfm["recency"], rfm["T"], weights=rfm["count"])


def fit_spend(fitting: ClvFitting, patterns: Patterns) -> SpendModel:
    model = SpendModel(penalizer=fitting.spend_penalizer, correlation_warn=fitting.spend_correlation_warn,
                       retry_penalizer=fitting.spend_retry_penalizer, fallback=fitting.spend_fallback)  # fmt: skip
    spend = patterns.spend
    return model.fit(spend["frequency"], spend["monetary_value"], weights=spend["count"])


def fit_both(name: str, patterns: Patterns, k: int, fitting: ClvFitting) -> tuple[PurchaseModel, SpendModel]:
    """The purchase model ``name`` and Gamma-Gamma fitted on the patterns of t_k; FitError if either fails."""
    log.info("fitting %s and Gamma-Gamma at t_%d on %d customers", name, k, patterns.n_customers)
    purchase = fit_purchase(new_purchase_model(name, fitting), patterns)
    return purchase, fit_spend(fitting, patterns)


def too_few_customers(source: str, k: int, n_customers: int, min_customers: int, details: str) -> DataError:
    """The error of a failed fit on a base smaller than clv.min_customers: the size is the cause to name."""
    later = ", which moves t_1 later" if k == 1 else ""
    return DataError(
        f"{source}: {n_customers} customers at t_{k} are too few to fit a purchase model "
        f"(fits are reliable from clv.min_customers={min_customers}); use a larger customer base or a "
        f"shorter data.horizon_days{later} (details: {details})"
    )


def fit_failed(source: str, k: int, n_customers: int, min_customers: int, exc: FitError) -> DataError:
    """A fit at t_k that failed, as one line naming the features file (and the size, on a small base)."""
    if n_customers < min_customers:
        return too_few_customers(source, k, n_customers, min_customers, str(exc))
    return DataError(f"{source}: {exc}")


@contextlib.contextmanager
def failures_named(source: str, k: int, n_customers: int, min_customers: int) -> Iterator[None]:
    """Turn a FitError inside the block into :func:`fit_failed`'s one-line error."""
    try:
        yield
    except FitError as exc:
        raise fit_failed(source, k, n_customers, min_customers, exc) from None


# --------------------------------------------------------------------------- model choice


def choose_purchase_model(
    fitting: ClvFitting,
    features: pd.DataFrame,
    labels: pd.DataFrame,
    horizon_units: float,
    source: str,
    make_model: Callable[[str], Any] | None = None,
    patterns: Patterns | None = None,
) -> tuple[clv_eval.Candidate, dict]:
    """The purchase model fitted at t_1 that the stage uses, and the model_selection report.

    ``features`` and ``labels`` (n_purchase_days) are the t_1 customers in the same order;
    ``horizon_units`` the holdout window in model time units; ``source`` the features file's label.
    ``model: auto`` compares every candidate on the holdout; a named model is the only one. A
    candidate that cannot be fitted (or runs over ``fit_time_budget_s``) is skipped, with the
    reason in the report. With more than ``selection_max_customers`` customers, the candidates
    are compared on a seeded sample of that many and the chosen one is then fitted on everyone
    (``patterns``).
    """
    make_model = make_model or (lambda name: new_purchase_model(name, fitting))
    names = clv_eval.CANDIDATE_ORDER if fitting.model == "auto" else (fitting.model,)
    actual = labels["n_purchase_days"].to_numpy()
    sampled = fitting.model == "auto" and len(features) > fitting.selection_max_customers
    if sampled:
        rows = np.sort(np.random.default_rng(fitting.seed).choice(len(features), fitting.selection_max_customers,
                                                                  replace=False))  # fmt: skip
        log.info("comparing the candidates on %d of the %d customers at t_1 (clv.selection_max_customers)",
                 len(rows), len(features))  # fmt: skip
        sample = features.iloc[rows]
        candidates = clv_eval.compare_candidates(names, sample, actual[rows], horizon_units, make_model,
                                                 patterns_of(sample).rfm)  # fmt: skip
    else:
        rfm = patterns.rfm if patterns is not None else None
        candidates = clv_eval.compare_candidates(names, features, actual, horizon_units, make_model, rfm)
    errors = {c.name: (c.errors["mae"] if c.errors else None) for c in candidates}
    if all(v is None for v in errors.values()):
        reasons = "; ".join(f"{c.name}: {c.failure}" for c in candidates)
        if len(features) < fitting.min_customers:
            raise too_few_customers(source, 1, len(features), fitting.min_customers, reasons)
        raise DataError(
            f"{source}: no purchase model could be fitted ({reasons}); try a larger clv.penalizer or "
            "clv.retry_penalizer (e.g. 0.01), a larger clv.fit_time_budget_s, or another clv.model"
        )
    chosen = clv_eval.select_candidate(errors)
    report = clv_eval.selection_report(candidates, chosen, "auto" if fitting.model == "auto" else "configured")
    table = clv_eval.selection_table(report).to_string(index=False)
    log.info("model selection (%s), holdout (t_1, t_0]:\n%s\nchosen: %s", report["method"], table, chosen)
    winner = next(c for c in candidates if c.name == chosen)
    if sampled:
        report["sample_customers"] = int(fitting.selection_max_customers)
        everyone = patterns if patterns is not None else patterns_of(features)
        winner = replace(winner, model=fit_purchase(make_model(chosen), everyone))
    return winner, report


# --------------------------------------------------------------------------- predictions


def predict_at(purchase: PurchaseModel, spend: SpendModel, features: pd.DataFrame, settings: ClvSettings) -> pd.DataFrame:
    """The predictions file of one cutoff: its customers scored by models fitted up to it."""
    return as_predictions(settings.predict(purchase, spend, features))


def predict_t2(features: pd.DataFrame, patterns: Patterns, name: str, fitting: ClvFitting,
               settings: ClvSettings) -> tuple[pd.DataFrame, str | None]:  # fmt: skip
    """Predictions at t_2 from models fitted up to t_2; no rows (with the reason) when they cannot be fitted."""
    reason = None
    if len(features) < fitting.min_customers:
        reason = f"{len(features)} customers at t_2, fewer than clv.min_customers={fitting.min_customers}"
    else:
        try:
            return predict_at(*fit_both(name, patterns, 2, fitting), features, settings), None
        except FitError as exc:
            reason = str(exc)
    log.warning("t_2 not fitted: %s; writing an empty predictions file", reason)
    return as_predictions(), reason


# --------------------------------------------------------------------------- one run


@dataclass(frozen=True)
class ClvFits:
    """The models of one run: the chosen purchase model fitted at t_1 (``chosen``, with the
    ``selection`` report), both models refitted at t_0, and the predictions at each cutoff
    (``skipped_t2``: why t_2 has none, when it has none); ``spend_t1``: Gamma-Gamma at t_1."""

    chosen: clv_eval.Candidate
    selection: dict
    purchase_t0: PurchaseModel
    spend_t0: SpendModel
    predictions: dict[int, pd.DataFrame]
    skipped_t2: str | None
    spend_t1: SpendModel | None = None

    @property
    def name(self) -> str:
        return self.chosen.name


def fit_cutoffs(features: Mapping[int, pd.DataFrame], labels_t1: pd.DataFrame, patterns: Mapping[int, Patterns],
                fitting: ClvFitting, settings: ClvSettings, sources: Mapping[int, str]) -> ClvFits:  # fmt: skip
    """Choose the purchase model at t_1 (on the holdout ``labels_t1``, over the settings' horizon),
    predict at t_1 with it and Gamma-Gamma, then refit both at t_0 and t_2 on data up to each
    cutoff and predict there.

    ``features``/``patterns``: per cutoff offset k (0, 1, 2); ``sources``: the features files'
    labels, for the messages."""
    f0, f1 = features[0], features[1]
    chosen, selection = choose_purchase_model(fitting, f1, labels_t1, settings.horizon_units, sources[1],
                                              patterns=patterns[1])  # fmt: skip
    with failures_named(sources[1], 1, len(f1), fitting.min_customers):
        spend_t1 = fit_spend(fitting, patterns[1])
    predictions = {1: predict_at(chosen.model, spend_t1, f1, settings)}
    with failures_named(sources[0], 0, len(f0), fitting.min_customers):
        purchase_t0, spend_t0 = fit_both(chosen.name, patterns[0], 0, fitting)
    predictions[0] = predict_at(purchase_t0, spend_t0, f0, settings)
    predictions[2], skipped_t2 = predict_t2(features[2], patterns[2], chosen.name, fitting, settings)
    return ClvFits(chosen, selection, purchase_t0, spend_t0, predictions, skipped_t2, spend_t1)


# --------------------------------------------------------------------------- summaries


def prediction_summary(pred: pd.DataFrame) -> dict:
    return {
        "n_customers": int(len(pred)),
        "total_clv": float(pred["clv"].sum()),
        "total_expected_purchases": float(pred["expected_purchases"].sum()),
        "mean_p_alive": float(pred["p_alive"].mean()),
    }


def purchase_block(model: PurchaseModel) -> dict:
    return {**model.params_, "log_likelihood": model.log_likelihood_, "penalizer": model.penalizer_}


def bgnbd_block(chosen: str, chosen_t0: PurchaseModel, patterns: Patterns, fitting: ClvFitting) -> dict:
    """BG/NBD parameters at t_0: the chosen model's, or a BG/NBD fitted for reference."""
    if chosen == "bgnbd":
        return purchase_block(chosen_t0)
    try:
        return purchase_block(fit_purchase(new_purchase_model("bgnbd", fitting), patterns))
    except FitError as exc:
        log.warning("reference BG/NBD fit at t_0 failed: %s", exc)
        return {**dict.fromkeys(BGNBD_PARAMS), "error": str(exc)}


def spend_block(spend: SpendModel) -> dict:
    failure = {"fit_failure": spend.fit_failure_} if spend.fit_failure_ else {}
    k = getattr(spend, "credibility_k_", None)
    credibility = {"credibility_k": k if k is None or math.isfinite(k) else None} if spend.fit_failure_ else {}
    return {**spend.params_, "population_mean_spend": spend.population_mean_spend_, "penalizer": spend.penalizer_,
            "source": spend.source_, **credibility, **failure}  # fmt: skip


def model_summary(fits: ClvFits, cutoff: pd.Timestamp, time_unit: str, days_per_unit: float, horizon_days: int,
                  files: Mapping[str, str | PurePath]) -> dict:  # fmt: skip
    """model.json: the t_0 models' parameters, their time unit and the file names of their ``files``."""
    purchase, spend = fits.purchase_t0, fits.spend_t0
    return {
        "model": fits.name,
        "cutoff": cutoff.date().isoformat(),
        "time_unit": time_unit,
        "days_per_unit": days_per_unit,
        "horizon_days": horizon_days,
        "purchase_params": purchase.params_,
        "spend_params": spend.params_,
        "penalizer": purchase.penalizer_,
        "time_scale": purchase.time_scale_,
        "n_customers": purchase.n_customers_,
        "n_spend_customers": spend.n_fit_,
        "files": {key: PurePath(path).name for key, path in files.items()},
    }


def clv_metrics(fits: ClvFits, as_of: pd.Timestamp, holdout_cutoff: pd.Timestamp, features_t0: pd.DataFrame,
                bgnbd: dict, holdout: dict, time_unit: str, horizon_days: int) -> dict:  # fmt: skip
    """metrics/clv.json: t_0 parameters, model selection, holdout evaluation, prediction totals."""
    f0, spend_t0 = features_t0, fits.spend_t0
    totals = {f"t{k}": prediction_summary(pred) for k, pred in sorted(fits.predictions.items())}
    if fits.skipped_t2:
        totals["t2"]["skipped"] = fits.skipped_t2
    return {
        "model": fits.name,
        "as_of": as_of.date().isoformat(),
        "holdout_cutoff": holdout_cutoff.date().isoformat(),
        "time_unit": time_unit,
        "horizon_days": horizon_days,
        "bgnbd": bgnbd,
        fits.name: purchase_block(fits.purchase_t0),
        "gamma_gamma": spend_block(spend_t0),
        "n_customers": int(len(f0)),
        "n_repeat_customers": int((f0["frequency"] > 0).sum()),
        "frequency_spend_corr": spend_t0.frequency_spend_corr_,
        "n_excluded_gamma_gamma": int(spend_t0.n_excluded_),
        "model_selection": fits.selection,
        "holdout": holdout,
        "predictions": totals,
    }
