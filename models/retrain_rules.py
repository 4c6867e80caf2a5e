"""The rules of a retraining run (`cvp retrain`), pure: frames, versions and metrics in, values out.

- :class:`Versions`: the registered versions of the models a retrain promotes together;
- the holdout numbers of either side (:func:`clv_holdout_metrics`, :func:`churn_holdout_metrics`),
  the champion's from its loaded models (:func:`champion_metrics`: any objects with the pyfunc
  ``predict``, so the caller decides how they are loaded);
- the records of each outcome (:func:`drift_refusal`, :func:`gate_record`), and the exceptions
  a scheduler tells apart by their exit code.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from features.errors import DataError
from features.frames import single_date
from models import clv_eval, drift, gate, metrics
from models.churn import churn_labels, prepare_features
from models.clv import ClvSettings
from models.clv_pyfunc import INPUT_COLUMNS, PARAM_TYPES

ALIAS = "champion"  # the registry alias of the served versions
MAX_TAG_CHARS = 5000  # MLflow's limit on a tag value
EXPORT_STAGES = ("export", "notebook")  # what runs after a promotion (dvc stages, one item each)
METRIC_KEYS = ("churn.roc_auc", "churn.brier", "clv.spend_mae", "clv.purchases_mae", "clv.spearman")


class RetrainStopped(Exception):
    """The retrain stopped on purpose; ``exit_code`` tells the scheduler why (see docs/retrain.md)."""

    exit_code = 1


class DriftDetected(RetrainStopped, DataError):
    exit_code = 2


class ChallengerRefused(RetrainStopped):
    exit_code = 3


class RetrainLocked(RetrainStopped):
    exit_code = 4


class PipelineFailed(RetrainStopped):
    exit_code = 5


@dataclass(frozen=True)
class Versions:
    """Registered model versions by model ("clv", "churn", "scores"); None when a model has none.

    ``scores`` is the whole scoring chain the segment stage registers (what is served online);
    it moves with the CLV and churn models it was built from.
    """

    clv: str | None
    churn: str | None
    scores: str | None

    def as_dict(self, names: Mapping[str, str]) -> dict[str, str | None]:
        """{registered name: version} (``names``: model -> registered name); scores only when set."""
        out = {names["clv"]: self.clv, names["churn"]: self.churn}
        if self.scores is not None:
            out[names["scores"]] = self.scores
        return out

    @property
    def empty(self) -> bool:
        return self.clv is None and self.churn is None


@dataclass(frozen=True)
class Reference:
    """The champion's snapshot: its features at t_0, the profile of its data, and its record."""

    features: pd.DataFrame
    profile: drift.DataProfile
    meta: dict[str, Any]


@dataclass(frozen=True)
class Holdout:
    """The most recent holdout: customers at t_1 and what they did in (t_1, t_0]."""

    features: pd.DataFrame
    labels: pd.DataFrame
    cutoff: pd.Timestamp


def holdout(features: pd.DataFrame, labels: pd.DataFrame, features_source: object, labels_source: object) -> Holdout:
    """The holdout of the features at t_1 and their labels, checked: the same customers in the same
    order, at least one, one cutoff (DataError naming the file otherwise)."""
    if not features["customer_id"].reset_index(drop=True).equals(labels["customer_id"].reset_index(drop=True)):
        raise DataError(f"{labels_source}: customers differ from {features_source}; rerun `cvp features`")
    if features.empty:
        raise DataError(f"{features_source}: no customers at t_1; the gate needs a holdout (check data.as_of)")
    return Holdout(features, labels, single_date(features, features_source))


def holdout_overlap_days(champion_as_of: dt.date | None, cutoff: pd.Timestamp) -> int:
    """Days of the holdout window (t_1, t_0] the champion had already seen when it was trained.

    Positive when the scoring date moved by less than one horizon since the champion's: the
    champion then knows part of the holdout and the comparison leans its way.
    """
    if champion_as_of is None:
        return 0
    return max(0, (pd.Timestamp(champion_as_of) - cutoff).days)


# --------------------------------------------------------------------------- holdout metrics


def clv_holdout_metrics(holdout: Holdout, predictions: pd.DataFrame, settings: ClvSettings) -> dict[str, float]:
    """Spend MAE and Spearman rho (model CLV vs actual holdout spend), as the clv stage reports them."""
    frame = clv_eval.holdout_frame(holdout.features, predictions, holdout.labels)
    summary = clv_eval.holdout_summary(frame, settings.horizon_days, settings.margin)
    return {
        "clv.spend_mae": summary["spend"]["model"]["mae"],
        "clv.purchases_mae": summary["purchases"]["model"]["mae"],
        "clv.spearman": summary["ranking"]["model"]["spearman_rho"],
    }


def churn_holdout_metrics(holdout: Holdout, probability: pd.Series) -> dict[str, float]:
    """ROC-AUC and Brier of P(churn) (a Series by customer_id) against the holdout's churn labels."""
    y = churn_labels(holdout.labels)
    p = probability.reindex(y.index)
    if p.isna().any():
        raise DataError(f"churn probabilities missing for {int(p.isna().sum())} holdout customer(s); rerun `cvp churn`")
    return {"churn.roc_auc": metrics.roc_auc(y, p), "churn.brier": metrics.brier(y, p)}


def challenger_metrics(holdout: Holdout, clv: pd.DataFrame, churn: pd.DataFrame, settings: ClvSettings) -> dict[str, float]:
    """The challenger's holdout numbers from the stages' t_1 predictions (fitted without the holdout)."""
    probability = churn.set_index("customer_id")["churn_probability"]
    return {**churn_holdout_metrics(holdout, probability), **clv_holdout_metrics(holdout, clv, settings)}


def interval_coverage(clv_metrics: Mapping[str, Any] | None) -> float | None:
    """The P10-P90 interval's holdout coverage the clv stage measured on the same holdout (metrics/clv.json
    ``intervals.holdout.coverage_pit``); None when the stage did not measure it."""
    value = ((clv_metrics or {}).get("intervals") or {}).get("holdout", {}).get("coverage_pit")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def in_model_units(features: pd.DataFrame, days_per_unit: float, model_days_per_unit: float) -> pd.DataFrame:
    """recency and T converted from the pipeline's time unit to the model's."""
    if days_per_unit == model_days_per_unit:
        return features
    scale = days_per_unit / model_days_per_unit
    return features.assign(recency=features["recency"] * scale, T=features["T"] * scale)


def champion_clv_predictions(model: Any, features: pd.DataFrame, settings: ClvSettings) -> pd.DataFrame:
    """A loaded CLV pyfunc's predictions for ``features`` under the current ``settings`` (its own
    time unit: recency and T are converted to it)."""
    model_days = float(getattr(model.unwrap_python_model(), "days_per_unit", settings.days_per_unit))
    inputs = in_model_units(features, settings.days_per_unit, model_days)[[*INPUT_COLUMNS, "cutoff"]]
    inference = {k: v for k, v in dataclasses.asdict(settings).items() if k in PARAM_TYPES}
    return pd.DataFrame(model.predict(inputs, params=inference))


def champion_churn_probability(model: Any, features: pd.DataFrame, clv_predictions: pd.DataFrame) -> pd.Series:
    """A loaded churn pyfunc's P(churn) by customer_id, its CLV inputs from ``clv_predictions``
    (prepared as the churn stage prepares them)."""
    X = prepare_features(features, clv_predictions)
    output = pd.DataFrame(model.predict(X.reset_index(drop=True)))
    return pd.Series(output["churn_probability"].to_numpy(dtype="float64"), index=X.index)


def champion_metrics(
    champion: Versions, holdout: Holdout, settings: ClvSettings, load: Callable[[str], Any]
) -> dict[str, float | None]:
    """The champion's holdout numbers, its models got by ``load("clv")`` / ``load("churn")``; a
    model without a champion version gives None values."""
    out: dict[str, float | None] = dict.fromkeys(METRIC_KEYS)
    if champion.clv is None:
        return out
    clv = champion_clv_predictions(load("clv"), holdout.features, settings)
    out.update(clv_holdout_metrics(holdout, clv, settings))
    if champion.churn is not None:
        out.update(churn_holdout_metrics(holdout, champion_churn_probability(load("churn"), holdout.features, clv)))
    return out


# --------------------------------------------------------------------------- decision records


def outcome(decision: str, stopped_by: str | None, forced: bool, reasons: list[str]) -> dict[str, Any]:
    """The report's decision fields."""
    return {"decision": decision, "stopped_by": stopped_by, "forced": forced, "reasons": reasons}


def keep_record(forced: bool) -> dict[str, Any]:
    """No stage registered a new version (inputs and params unchanged): the champion stays."""
    reason = "no new model versions (inputs and params unchanged since the champion): the champion stays"
    return outcome(gate.PROMOTE, None, forced, [reason])


def drift_refusal(report: drift.DriftReport) -> dict[str, Any]:
    """The record of a run stopped by drift (one reason per failed check)."""
    return outcome(gate.REFUSE, "drift", False, [f"drift: {c.describe()}" for c in report.failures])


def gate_record(decision: gate.GateDecision, drift_report: drift.DriftReport | None) -> dict[str, Any]:
    """The record of the gate's decision, with the drift failures a forced run overrode."""
    reasons = list(decision.reasons)
    if drift_report is not None and not drift_report.passed:
        reasons += [f"drift overridden: {c.describe()}" for c in drift_report.failures]
    record = outcome(decision.decision, None if decision.promoted else "gate", decision.forced, reasons)
    return {**record, "metrics": decision.to_dict()["metrics"]}


def version_tag(decision: gate.GateDecision) -> str:
    """The cvp.gate.decision tag of the challenger versions: promote, promote-forced or refuse."""
    return f"{decision.decision}-forced" if decision.forced else decision.decision


def refusal_message(decision: gate.GateDecision, report_file: object) -> str:
    failed = "; ".join(v.reason for v in decision.verdicts if not v.passed)
    return f"challenger refused by the gate: {failed}; champion and exports unchanged (see {report_file})"
