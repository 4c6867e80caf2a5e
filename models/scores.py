"""The export contract: one row of scores per customer at as_of, for CRM systems.

``SCORE_COLUMNS`` describes every column (type, source stage, meaning, allowed values);
:func:`validate_scores` checks a frame against it in plain pandas, because the served scoring
chain (models/scores_pyfunc.py) runs this module and must load without pandera (the pipeline's
pandera contract, built from the same table, is ``SCORES_SCHEMA`` in pipelines/contracts.py).
:func:`assemble_scores` joins the stage outputs into that frame. Pure code: no file I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.errors import DataError
from features.frames import duplicated_mask, same_ids, single_date, sorted_by_id
from models.segments import (
    ABC_CLASSES,
    LIFECYCLE_STATES,
    PYRAMID_LEVELS,
    QUADRANT_STRATEGY,
    QUADRANTS,
    RELATIONSHIP_LEVELS,
    TIERS,
    label_counts,
)

UNREGISTERED = "unregistered"
AS_OF_DTYPE = "datetime64[us]"  # the unit every stage writes dates with


@dataclass(frozen=True)
class ScoreColumn:
    """One column of the export: its pandas dtype, the stage it comes from and its meaning."""

    name: str
    dtype: str  # "str", "datetime64[us]", "int64" or "float64"
    source: str  # features | clv | churn | segment | export
    meaning: str
    allowed: tuple[str, ...] = ()
    unit_interval: bool = False  # a probability: must lie in [0, 1]
    non_negative: bool = False


SCORE_COLUMNS: tuple[ScoreColumn, ...] = (
    ScoreColumn("customer_id", "str", "features", "Customer identifier, as in the source data (kept as text)."),
    ScoreColumn("as_of", AS_OF_DTYPE, "features", "Scoring date: features use data up to and including this day."),
    ScoreColumn("frequency", "int64", "features", "Repeat purchase days (purchase days after the first).", non_negative=True),
    ScoreColumn("recency", "float64", "features", "Time from first to last purchase day, in model time units (data.time_unit).", non_negative=True),
    ScoreColumn("T", "float64", "features", "Time from first purchase day to as_of, in model time units.", non_negative=True),
    ScoreColumn("monetary_value", "float64", "features", "Mean net value of the repeat purchase days (0 when frequency is 0)."),
    ScoreColumn("p_alive", "float64", "clv", "Probability the customer is still active (BG/NBD-family model).", unit_interval=True),
    ScoreColumn("expected_purchases", "float64", "clv", "Expected purchase days in the next horizon (data.horizon_days).", non_negative=True),
    ScoreColumn("expected_avg_spend", "float64", "clv", "Expected spend per purchase day (Gamma-Gamma)."),
    ScoreColumn("clv", "float64", "clv", "Discounted expected margin over the next horizon."),
    ScoreColumn("clv_p10", "float64", "clv", "10% quantile of the discounted margin realised over the next horizon (0 when no purchase is likely).", non_negative=True),
    ScoreColumn("clv_p50", "float64", "clv", "Median of the discounted margin realised over the next horizon.", non_negative=True),
    ScoreColumn("clv_p90", "float64", "clv", "90% quantile of the discounted margin realised over the next horizon.", non_negative=True),
    ScoreColumn("churn_probability", "float64", "churn", "Calibrated probability of no purchase in the next horizon.", unit_interval=True),
    ScoreColumn("current_value", "float64", "segment", "Realised margin over the trailing horizon."),
    ScoreColumn("growth_potential", "float64", "segment", "Predicted margin over the next horizon (segment.growth_potential)."),
    ScoreColumn("quadrant", "str", "segment", "Value-potential quadrant: I low/low, II low current/high growth, III high/low, IV high/high.", QUADRANTS),
    ScoreColumn("resource_allocation", "str", "segment", "Resource allocation of the quadrant.", tuple(s[0] for s in QUADRANT_STRATEGY.values())),
    ScoreColumn("retention_strategy", "str", "segment", "Retention strategy of the quadrant.", tuple(s[1] for s in QUADRANT_STRATEGY.values())),
    ScoreColumn("tier", "str", "segment", "Value tier, most to least attractive.", TIERS),
    ScoreColumn("pyramid_level", "str", "segment", "Customer pyramid level by value rank (segment.pyramid shares).", PYRAMID_LEVELS),
    ScoreColumn("abc_class", "str", "segment", "A: customers making the first 80% of value, B: the next 15%, C: the rest.", ABC_CLASSES),
    ScoreColumn("lifecycle_state", "str", "segment", "Lifecycle state from the gap since the last purchase vs the customer's own cycle.", LIFECYCLE_STATES),
    ScoreColumn("relationship_level", "str", "segment", "Recommended depth of relationship (segment size x margin).", RELATIONSHIP_LEVELS),
    ScoreColumn("quadrant_probability", "float64", "segment", "Probability that the customer belongs to its quadrant given the CLV model's parameter uncertainty (its expected growth potential on the same side of the cut, from the bootstrap parameter draws).", unit_interval=True),
    ScoreColumn("quadrant_uncertain", "int64", "segment", "1 when quadrant_probability is below segment.uncertain_below, else 0.", unit_interval=True),
    ScoreColumn("model_version", "str", "export", "Registered models that produced the scores, e.g. cvp-clv/3;cvp-churn/2."),
)

COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in SCORE_COLUMNS)


def columns_from(source: str) -> tuple[str, ...]:
    """The value columns one stage supplies (the keys customer_id and as_of excluded)."""
    return tuple(c.name for c in SCORE_COLUMNS if c.source == source and c.name not in ("customer_id", "as_of"))


def model_version(registrations: Sequence[Mapping[str, object] | None]) -> str:
    """``name/version`` of each registered model joined by ``;`` (``unregistered`` when None)."""
    return ";".join(f"{r['name']}/{r['version']}" if r else UNREGISTERED for r in registrations)


def _check_customers(frame: pd.DataFrame, expected: pd.Index, label: str, population: str) -> None:
    """Every customer of the population exactly once: no duplicates, none missing, none extra."""
    if "customer_id" not in frame.columns:
        raise DataError(f"{label}: column 'customer_id' is missing; re-run the stage that writes it")
    ids = frame["customer_id"]
    if same_ids(ids, pd.Series(expected)):  # the usual case: the population's rows, in its order
        return
    duplicated = ids[ids.duplicated()]
    if len(duplicated):
        raise DataError(
            f"{label}: {duplicated.nunique()} customer_id(s) appear more than once "
            f"(e.g. '{duplicated.iloc[0]}'); re-run the stage that writes it"
        )
    present = pd.Index(ids)
    missing = expected.difference(present)
    if len(missing):
        raise DataError(
            f"{label}: no row for {len(missing)} of the {len(expected)} customers in {population} "
            f"(e.g. '{missing[0]}'); re-run the stage that writes it"
        )
    extra = present.difference(expected)
    if len(extra):
        raise DataError(
            f"{label}: {len(extra)} customers are not in {population} (e.g. '{extra[0]}'); "
            "it was written for other data, re-run the stage that writes it"
        )


def _pick(frame: pd.DataFrame, columns: Sequence[str], label: str) -> pd.DataFrame:
    """The contract columns one input supplies, cast to their contract dtypes and validated
    (indexed by customer_id); problems are a DataError naming the input."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{label}: missing column(s) {', '.join(missing)}; re-run the stage that writes it")
    picked = coerce_scores(frame.loc[:, ["customer_id", *columns]].reset_index(drop=True), label)
    return validate_scores(picked, label, ["customer_id", *columns]).set_index("customer_id")


def assemble_scores(
    features: pd.DataFrame,
    clv: pd.DataFrame,
    churn: pd.DataFrame,
    segments: pd.DataFrame,
    version: str,
    labels: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Join the scoring-date outputs into the export frame (``SCORE_COLUMNS``, sorted by customer_id).

    ``features`` (features_t0) defines the population; ``clv`` and ``churn`` are the predictions
    at the same cutoff and ``segments`` the labels at as_of. Each must hold every customer of
    ``features`` exactly once, at the same date, with valid values, else DataError naming the
    input by its entry in ``labels`` (keys features, clv, churn, segments; e.g. the file path).
    """
    names = {"features": "features", "clv": "clv predictions", "churn": "churn predictions", "segments": "segments"}
    names.update(labels or {})
    if features.empty:
        raise DataError(f"{names['features']}: no customers; check the ingest and features stages")
    population = pd.Index(features["customer_id"])
    if duplicated_mask(features["customer_id"]).any():
        raise DataError(
            f"{names['features']}: customer_id '{population[population.duplicated()][0]}' appears more than once; "
            "re-run the features stage"
        )
    as_of = single_date(features, names["features"], "cutoff")
    for key, frame, date_column in (("clv", clv, "cutoff"), ("churn", churn, "cutoff"), ("segments", segments, "as_of")):
        _check_customers(frame, population, names[key], names["features"])
        if date_column not in frame.columns:
            raise DataError(f"{names[key]}: column '{date_column}' is missing; re-run the stage that writes it")
        date = single_date(frame, names[key], date_column)
        if date != as_of:
            raise DataError(
                f"{names[key]}: {date_column} {date.date()} differs from the features cutoff {as_of.date()}; "
                "re-run the stage that writes it"
            )

    joined = pd.concat(
        [
            _pick(features, columns_from("features"), names["features"]),
            _pick(clv, columns_from("clv"), names["clv"]),
            _pick(churn, columns_from("churn"), names["churn"]),
            _pick(segments, columns_from("segment"), names["segments"]),
        ],
        axis=1,
        join="inner",
    )
    scores = joined.rename_axis("customer_id").reset_index()
    scores["as_of"] = pd.Series(as_of, index=scores.index).astype(AS_OF_DTYPE)
    scores["model_version"] = pd.Series(version, index=scores.index, dtype="str")
    return validate_scores(sorted_by_id(scores.loc[:, list(COLUMN_NAMES)]))


def coerce_scores(frame: pd.DataFrame, label: str) -> pd.DataFrame:
    """Cast the contract columns of ``frame`` to their contract dtypes; whole numbers stay exact."""
    out = frame.copy()
    for column in SCORE_COLUMNS:
        if column.name not in out.columns:
            continue
        values = out[column.name]
        if column.dtype == "int64":
            numeric = pd.to_numeric(values, errors="coerce").astype("float64")
            if numeric.isna().any() or (numeric % 1 != 0).any():
                raise DataError(f"{label}: column '{column.name}' must hold whole numbers; re-run the stage that writes it")
            out[column.name] = values.astype("int64") if values.dtype.kind in "iu" else numeric.astype("int64")
        elif column.dtype == "float64":
            out[column.name] = pd.to_numeric(values, errors="coerce").astype("float64")
        elif column.dtype == "str":
            out[column.name] = values.astype("str")
        else:
            out[column.name] = pd.to_datetime(values).astype(column.dtype)
    return out


def value_checks(column: ScoreColumn) -> list[tuple[str, Callable[[pd.Series], pd.Series]]]:
    """The value checks of a column as (name, mask of the failing values), in the order they are
    reported; the names are those of the pandera contract built from the same table."""
    checks: list[tuple[str, Callable[[pd.Series], pd.Series]]] = [("not_nullable", lambda s: s.isna())]
    if column.name == "customer_id":
        checks.append(("field_uniqueness", duplicated_mask))
    if column.allowed:
        checks.append((f"isin({list(column.allowed)})", lambda s: ~s.isin(column.allowed)))
    if column.unit_interval:
        checks.append(("in_range(0.0, 1.0)", lambda s: ~s.between(0.0, 1.0)))
    if column.non_negative:
        checks.append(("greater_than_or_equal_to(0)", lambda s: s < 0))
    if column.dtype == "float64":
        checks.append(("finite", lambda s: ~np.isfinite(s)))
    return checks


def _has_dtype(values: pd.Series, dtype: str) -> bool:
    return pd.api.types.is_string_dtype(values) if dtype == "str" else str(values.dtype) == dtype


def _layout_failures(columns: Sequence[str]) -> list[tuple[str, str, list]]:
    """The whole contract: exactly its columns, in its order."""
    missing = [c for c in COLUMN_NAMES if c not in columns]
    extra = [c for c in columns if c not in COLUMN_NAMES]
    if missing:
        return [(missing[0], "column_in_dataframe", missing)]
    if extra:
        return [(extra[0], "column_in_schema", extra)]
    if list(columns) != list(COLUMN_NAMES):
        return [(next(c for c, e in zip(columns, COLUMN_NAMES) if c != e), "column_ordered", list(columns))]
    return []


def contract_failures(scores: pd.DataFrame, columns: Sequence[str] | None = None) -> list[tuple[str, str, list]]:
    """(column, check, failing values) of each column that fails a check (its first): against the
    whole contract, or only ``columns``."""
    failures = _layout_failures(list(scores.columns)) if columns is None else []
    by_name = {c.name: c for c in SCORE_COLUMNS}
    for name in columns if columns is not None else COLUMN_NAMES:
        if name not in scores.columns:
            continue
        column, values = by_name[name], scores[name]
        if not _has_dtype(values, column.dtype):
            failures.append((name, f"dtype('{column.dtype}')", [str(values.dtype)]))
            continue
        failed = next(((check, mask) for check, test in value_checks(column) if (mask := test(values)).any()), None)
        if failed is not None:
            failures.append((name, failed[0], values[failed[1]].tolist()))
    return failures


def validate_scores(scores: pd.DataFrame, label: str = "export scores", columns: Sequence[str] | None = None) -> pd.DataFrame:
    """``scores`` when it meets the contract (or its ``columns``), else a one-line DataError
    naming the input, the column, the check, an example value and its source stage."""
    failures = contract_failures(scores, columns)
    if not failures:
        return scores
    column, check, values = failures[0]
    count = sum(len(v) for _, _, v in failures)
    source = next((c.source for c in SCORE_COLUMNS if c.name == column), None)
    hint = f"; check the {source} stage output" if source and source != "export" else ""
    more = f" ({count - 1} more failure(s))" if count > 1 else ""
    example = values[0] if values else None
    raise DataError(f"{label}: column '{column}' fails {check} (e.g. {example!r}){more}{hint}")


# --------------------------------------------------------------------------- metrics


def headline(scores: pd.DataFrame) -> dict:
    """The few numbers a reader wants first: totals and means over the scored customers."""
    counts = label_counts(scores)
    return {
        "total_clv": round(float(scores["clv"].sum()), 2),
        "total_current_value": round(float(scores["current_value"].sum()), 2),
        "total_growth_potential": round(float(scores["growth_potential"].sum()), 2),
        "expected_purchases": round(float(scores["expected_purchases"].sum()), 2),
        "mean_p_alive": float(scores["p_alive"].mean()),
        "mean_churn_probability": float(scores["churn_probability"].mean()),
        # every label listed (0 when empty), so metric keys never disappear between runs
        "customers_by_quadrant": counts["quadrant"],
        "customers_by_tier": counts["tier"],
    }


def export_metrics(scores: pd.DataFrame, database: Mapping[str, str], parquet_sha256: str) -> dict:
    """metrics/export.json: deterministic for the same inputs (no timings, no table history);
    ``database`` is {"url" (password masked), "table"}."""
    return {
        "rows": len(scores),
        "as_of": scores["as_of"].iloc[0].date().isoformat(),
        "database": dict(database),
        "scores_sha256": parquet_sha256,
        "model_version": scores["model_version"].iloc[0],
        "headline": headline(scores),
    }
