"""What the segment stage checks and reports around the rules of models/segments.py (pure).

- :func:`join_inputs`: one row per customer from files that must hold the same customers at
  the same cutoff (a customer missing from one is an error naming that file);
- :func:`holdout_comparison`: on the last complete horizon (t1), does the combined growth
  potential rank customers by their actual spend at least as well as the CLV model alone?
- :func:`segment_metrics`: metrics/segment.json (cuts, counts, reactivation targets,
  concentration, totals, the holdout verdict).

Inputs are labelled by a name (the stage passes the file path), so every error names the file.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import pandas as pd

from features.errors import DataError
from features.frames import single_date, sorted_by_id
from models import segments as seg

log = logging.getLogger(__name__)

#: Lifecycle states of customers who stopped buying for longer than their own rhythm.
SLEEPING = ("drowsy", "half_asleep", "dormant")
#: Quadrants with high growth potential: sleeping customers there are worth waking up.
HIGH_GROWTH_QUADRANTS = ("II", "IV")

# The columns each input contributes (customer_id and cutoff first).
SCORING_COLUMNS = {
    "features": ("customer_id", "cutoff", "spend_trailing", "margin_trailing", "days_since_first", "days_since_last", "ipi_mean"),
    "clv": ("customer_id", "cutoff", "clv", "p_no_purchase", "clv_expected_p10", "clv_expected_p90"),
    "churn": ("customer_id", "cutoff", "churn_probability"),
}
VALUE_COLUMNS = ("customer_id", "cutoff", "predicted_value")  # of the value predictions, when growth potential uses them
HOLDOUT_COLUMNS = {"labels": ("customer_id", "cutoff", "spend"), "clv": SCORING_COLUMNS["clv"], "churn": SCORING_COLUMNS["churn"]}
# Whole days in the features file; the rules compute with them as floats.
FLOAT_FEATURES = ("spend_trailing", "margin_trailing", "days_since_first", "days_since_last", "ipi_mean")

SEGMENT_COLUMNS = (
    "customer_id", "as_of", "current_value", "growth_potential", "growth_potential_clv", "quadrant",
    "resource_allocation", "retention_strategy", "tier", "pyramid_level", "abc_class", "lifecycle_state",
    "relationship_level", "quadrant_probability", "quadrant_uncertain",
)  # fmt: skip
#: The text labels of the segments file (cast to str when written).
LABEL_COLUMNS = SEGMENT_COLUMNS[5:13]


# --------------------------------------------------------------------------- inputs


def join_inputs(inputs: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Join frames (by label, e.g. file path) on customer_id, sorted by customer_id.

    The first frame is the reference and keeps its ``cutoff``; every other frame must hold one
    cutoff, the same, and exactly the same customers (else a DataError naming the file a
    customer is missing from) and adds its other columns.
    """
    (ref_label, ref), *others = inputs.items()
    ref_cutoff = single_date(ref, ref_label)
    ref_ids = pd.Index(ref["customer_id"])
    joined = ref.set_index("customer_id")
    for label, frame in others:
        cutoff = single_date(frame, label)
        if cutoff != ref_cutoff:
            raise DataError(f"{label}: cutoff {cutoff.date()} differs from {ref_label} ({ref_cutoff.date()}); re-run the stages")
        check_same_customers(ref_ids, ref_label, pd.Index(frame["customer_id"]), label)
        joined = joined.join(frame.drop(columns="cutoff").set_index("customer_id"), how="left")
    return sorted_by_id(joined.reset_index())


def check_same_customers(ref_ids: pd.Index, ref_label: str, ids: pd.Index, label: str) -> None:
    """A DataError naming the file that lacks a customer the other has (up to 3 examples)."""
    for absent_from, have, lack in ((label, ref_ids, ids), (ref_label, ids, ref_ids)):
        missing = have.difference(lack)
        if len(missing):
            example = ", ".join(map(str, missing[:3]))
            raise DataError(
                f"{absent_from}: {len(missing)} customer(s) missing (e.g. {example}); "
                "every input must cover the same customers, re-run the upstream stages"
            )


def scoring_frame(features: tuple[str, pd.DataFrame], clv: tuple[str, pd.DataFrame], churn: tuple[str, pd.DataFrame],
                  value: tuple[str, pd.DataFrame] | None = None) -> pd.DataFrame:  # fmt: skip
    """Features, CLV and churn predictions (and the value model's, as ``value_prediction``) at t0
    joined, one row per customer (each a (label, frame))."""
    label, frame = features
    if frame.empty:
        raise DataError(
            f"{label}: no customers to segment (nobody bought on or before data.as_of); "
            "set data.as_of on or after the first purchase, or null for the last one"
        )
    frame = frame.astype(dict.fromkeys(FLOAT_FEATURES, "float64"))
    if value is not None:
        value = (value[0], value[1].rename(columns={"predicted_value": seg.VALUE_PREDICTION}))
    return join_inputs(dict([(label, frame), clv, churn, *([value] if value else [])]))


def holdout_frame(labels: tuple[str, pd.DataFrame], clv: tuple[str, pd.DataFrame], churn: tuple[str, pd.DataFrame]) -> pd.DataFrame | None:
    """Labels, CLV and out-of-time churn predictions at t1 joined; None (with a warning) when one is empty."""
    inputs = dict([labels, clv, churn])
    empty = [label for label, frame in inputs.items() if frame.empty]
    if empty:
        log.warning("holdout comparison skipped: %s has no rows", ", ".join(empty))
        return None
    return join_inputs(inputs)


# --------------------------------------------------------------------------- growth potential source


def growth_potential_source(configured: str, value_metrics: Mapping | None, value_file: str) -> dict:
    """Which growth potential the stage uses and why: ``configured`` (segment.growth_potential), the
    method ``used`` (auto: value when the value stage's metrics say its model won on the holdout,
    else combined) and the value model's holdout comparison when there is one."""
    won = bool(value_metrics and value_metrics.get("use"))
    if configured != "auto":
        reason = f"segment.growth_potential is {configured}"
    elif value_metrics is None:
        reason = f"{value_file} not found: combined"
    else:
        reason = f"value model {'won' if won else 'did not win'}: {value_metrics.get('reason')}"
    used = seg.resolve_growth_potential(configured, won)
    out = {"configured": configured, "used": used, "reason": reason, "value_model_won": won}
    if value_metrics and value_metrics.get("comparison"):
        out["value_holdout"] = {k: value_metrics[k] for k in ("comparison", "evaluation")}
    return out


# --------------------------------------------------------------------------- holdout verdict


def combined_at_least_as_good(ranking: Mapping[str, Mapping[str, float]]) -> bool:
    """The verdict: the combined growth potential ranks holdout spend at least as well as CLV
    alone, on both the Spearman correlation and the top-share capture."""
    combined, clv = ranking["combined"], ranking["clv"]
    return bool(combined["spearman"] >= clv["spearman"] and combined["top_share_capture"] >= clv["top_share_capture"])


def holdout_comparison(holdout: pd.DataFrame | None, top_share: float = seg.TOP_SHARE) -> dict:
    """Rank quality of the combined and CLV-only growth potential against the holdout spend;
    warns when the combined one is worse."""
    if holdout is None:
        return {"skipped": "t1 labels or predictions not found or empty"}
    forecasts = {
        "combined": seg.growth_potential_combined(holdout["clv"], holdout["p_no_purchase"], holdout["churn_probability"]),
        "clv": holdout["clv"],
    }
    result = seg.rank_forecasts(holdout["spend"], forecasts, holdout["customer_id"], top_share)
    holds = combined_at_least_as_good(result)
    if not holds:
        log.warning(
            "combined growth potential ranks holdout spend worse than CLV alone "
            "(Spearman %.4f vs %.4f, top-%.0f%% capture %.4f vs %.4f)",
            result["combined"]["spearman"], result["clv"]["spearman"], 100 * top_share,
            result["combined"]["top_share_capture"], result["clv"]["top_share_capture"],
        )  # fmt: skip
    return {
        **result,
        "cutoff": str(pd.Timestamp(holdout["cutoff"].iloc[0]).date()),
        "customers": len(holdout),
        "top_share": top_share,
        "combined_at_least_as_good": holds,
    }


# --------------------------------------------------------------------------- outputs


def reactivation_targets(labelled: pd.DataFrame) -> int:
    """Customers asleep (drowsy, half asleep or dormant) in a high-growth quadrant (II, IV)."""
    return int((labelled["lifecycle_state"].isin(SLEEPING) & labelled["quadrant"].isin(HIGH_GROWTH_QUADRANTS)).sum())


def segments_table(labelled: pd.DataFrame, as_of: pd.Timestamp) -> pd.DataFrame:
    """The segments file: the contract columns with as_of, labels as text, sorted by customer_id."""
    out = labelled.assign(as_of=pd.Series(as_of, index=labelled.index).astype("datetime64[ns]"))
    out = sorted_by_id(out[list(SEGMENT_COLUMNS)])
    for column in LABEL_COLUMNS:
        out[column] = out[column].astype(str)
    return out


def segment_metrics(
    result: seg.SegmentResult, rules: seg.SegmentRules, as_of: pd.Timestamp, holdout: dict, top_share: float = seg.TOP_SHARE,
    source: dict | None = None,
) -> dict:
    """metrics/segment.json: cuts and the shares above them, label counts, reactivation targets,
    value concentration, totals, the holdout comparison and where growth potential came from
    (:func:`growth_potential_source`)."""
    labelled = result.customers
    return {
        "as_of": str(as_of.date()),
        "customers": len(labelled),
        "growth_potential": rules.growth_potential,
        "growth_potential_source": source,
        "value_basis": rules.value_basis,
        "cuts": {
            "method": rules.cut.method,
            "current_value": result.current_value_cut,
            "growth_potential": result.growth_potential_cut,
            "high_current_value_share": float(seg.is_high(labelled["current_value"], result.current_value_cut).mean()),
            "high_growth_potential_share": float(seg.is_high(labelled["growth_potential"], result.growth_potential_cut).mean()),
        },
        "counts": seg.label_counts(labelled),
        "reactivation_targets": reactivation_targets(labelled),
        "concentration": seg.concentration(labelled["value"], labelled["customer_id"], top_share),
        "totals": {
            "current_value": float(labelled["current_value"].sum()),
            "growth_potential": float(labelled["growth_potential"].sum()),
            "growth_potential_clv": float(labelled["growth_potential_clv"].sum()),
        },
        "holdout": holdout,
    }
