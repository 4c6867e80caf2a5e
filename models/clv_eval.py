"""Holdout evaluation of the CLV models: pure functions, arrays and frames in, numbers and frames out.

Conventions: "purchases" are purchase days (a calendar day with at least one non-negative
row), as in the features contract; a holdout window is (cutoff, cutoff + horizon]; spend is
net money in that window. Every function takes plain arrays so it can be checked on tiny
hand-made examples.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from models.clv import FitError
from models.clv_columns import CANDIDATE_ORDER

log = logging.getLogger(__name__)

#: Calibration-period frequencies at or above this share the last bin ("7+").
TOP_FREQUENCY_BIN = 7
#: Share of customers whose captured holdout spend is reported (the 80/20 view).
TOP_SHARE = 0.2


def _as_float(values) -> np.ndarray:
    return np.asarray(values, dtype=float)


def prediction_errors(predicted, actual) -> dict[str, float]:
    """Per-customer and aggregate error of predicted vs actual values (same units as the inputs).

    ``aggregate_error`` = (sum predicted - sum actual) / sum actual: the relative bias of the
    total, the number a planner sees first.
    """
    predicted, actual = _as_float(predicted), _as_float(actual)
    if predicted.shape != actual.shape:
        raise ValueError(f"predicted and actual differ in length ({predicted.size} vs {actual.size})")
    diff = predicted - actual
    total_pred, total_actual = float(predicted.sum()), float(actual.sum())
    return {
        "n_customers": int(actual.size),
        "mae": float(np.abs(diff).mean()) if diff.size else math.nan,
        "rmse": float(np.sqrt((diff**2).mean())) if diff.size else math.nan,
        "total_predicted": total_pred,
        "total_actual": total_actual,
        "aggregate_error": (total_pred - total_actual) / total_actual if total_actual else math.nan,
    }


def frequency_bin_labels(top: int = TOP_FREQUENCY_BIN) -> list[str]:
    """Labels '0', '1', ..., 'top-1', 'top+'."""
    return [str(i) for i in range(top)] + [f"{top}+"]


def calibration_holdout_table(frequency, predicted, actual, top: int = TOP_FREQUENCY_BIN) -> pd.DataFrame:
    """Mean actual vs mean predicted holdout purchases by calibration-period frequency.

    Bins are frequency 0, 1, ..., top-1 and top+ (every bin listed, empty ones with NaN means).
    Columns: frequency_bin, n_customers, actual_mean, predicted_mean.
    """
    frequency = _as_float(frequency)
    codes = np.minimum(np.floor(frequency), top).astype(int)
    frame = pd.DataFrame({"code": codes, "actual": _as_float(actual), "predicted": _as_float(predicted)})
    grouped = frame.groupby("code").agg(
        n_customers=("actual", "size"), actual_mean=("actual", "mean"), predicted_mean=("predicted", "mean")
    )
    grouped = grouped.reindex(range(top + 1))
    grouped["n_customers"] = grouped["n_customers"].fillna(0).astype("int64")
    grouped.insert(0, "frequency_bin", frequency_bin_labels(top))
    return grouped.reset_index(drop=True)


def baseline_interval_days(ipi_mean, one_time_interval_days: float | None = None) -> np.ndarray:
    """Purchase cycle t (days) of the quick estimate, with the fallback for one-time buyers.

    A customer with one purchase day has no interval (ipi_mean NaN); they get
    ``one_time_interval_days`` or, when None, the median interval of the repeat customers.
    With no repeat customer at all and no explicit fallback, the interval is NaN.
    """
    ipi = _as_float(ipi_mean)
    known = ipi[np.isfinite(ipi) & (ipi > 0)]
    if one_time_interval_days is None:
        one_time_interval_days = float(np.median(known)) if known.size else math.nan
    return np.where(np.isfinite(ipi) & (ipi > 0), ipi, one_time_interval_days)


def baseline_purchases(ipi_mean, horizon_days: float, one_time_interval_days: float | None = None) -> np.ndarray:
    """Quick-estimate purchases over the horizon: T / t with T = horizon_days, t = purchase cycle."""
    return horizon_days / baseline_interval_days(ipi_mean, one_time_interval_days)


def baseline_value(
    ipi_mean,
    avg_spend,
    horizon_days: float,
    margin: float = 1.0,
    one_time_interval_days: float | None = None,
) -> np.ndarray:
    """Textbook quick estimate CLV = (T / t) * s * margin over the horizon (no dropout, no discount).

    T = horizon_days, t = the customer's mean inter-purchase interval (days), s = mean spend per
    purchase day. margin=1 gives the predicted revenue.
    """
    return baseline_purchases(ipi_mean, horizon_days, one_time_interval_days) * _as_float(avg_spend) * margin


def spearman_rho(score, actual) -> float:
    """Spearman rank correlation (ties get average ranks); NaN when either side is constant."""
    score, actual = _as_float(score), _as_float(actual)
    if score.size < 2 or np.ptp(score) == 0 or np.ptp(actual) == 0:
        return math.nan
    return float(stats.spearmanr(score, actual).statistic)


def _rank_order(score) -> np.ndarray:
    """Indices from the highest score down; equal scores keep input order (stable)."""
    return np.argsort(-_as_float(score), kind="stable")


def top_share_capture(score, actual, share: float = TOP_SHARE) -> float:
    """Share of total actual value held by the top ``share`` of customers ranked by ``score``.

    The top group has ceil(share * n) customers; equal scores keep input order. NaN when the
    actual total is zero.
    """
    actual = _as_float(actual)
    total = actual.sum()
    if actual.size == 0 or total == 0:
        return math.nan
    n_top = math.ceil(share * actual.size)
    return float(actual[_rank_order(score)[:n_top]].sum() / total)


def gains_curve(scores: Mapping[str, Sequence[float]], actual, n_points: int = 20) -> pd.DataFrame:
    """Cumulative share of actual value captured by the top x% of customers, for each score.

    Columns: customer_share (1/n_points .. 1), one column per score, and ``oracle`` (ranking
    by the actual value itself, the best any score can do).
    """
    actual = _as_float(actual)
    shares = np.arange(1, n_points + 1) / n_points
    out = {"customer_share": shares}
    total = actual.sum()
    for name, score in {**scores, "oracle": actual}.items():
        if actual.size == 0 or total == 0:
            out[name] = [math.nan] * n_points
            continue
        ranked = actual[_rank_order(score)]  # one sort per score; each point is top_share_capture's sum
        out[name] = [float(ranked[: math.ceil(s * actual.size)].sum() / total) for s in shares]
    return pd.DataFrame(out)


def ranking_comparison(scores: Mapping[str, Sequence[float]], actual, share: float = TOP_SHARE) -> dict:
    """Spearman rho and top-share capture of each score against the actual holdout value."""
    top = f"top{round(share * 100)}_capture"
    out: dict = {
        name: {"spearman_rho": spearman_rho(score, actual), top: top_share_capture(score, actual, share)}
        for name, score in scores.items()
    }
    out["oracle"] = {top: top_share_capture(actual, actual, share)}
    return out


def select_candidate(errors: Mapping[str, float | None], order: Sequence[str] = CANDIDATE_ORDER) -> str:
    """Name of the candidate with the lowest holdout error.

    ``None``/NaN errors (a candidate that failed) are skipped. Errors equal to 9 significant
    digits are a tie, won by the candidate earliest in ``order`` (then by name).
    """
    rank = {name: i for i, name in enumerate(order)}
    usable = {k: float(v) for k, v in errors.items() if v is not None and math.isfinite(float(v))}
    if not usable:
        raise ValueError("no candidate model has a holdout error")
    return min(usable, key=lambda k: (float(f"{usable[k]:.9g}"), rank.get(k, len(rank)), k))


def repeat_purchase_days(transactions: pd.DataFrame, first_purchase: pd.Series, end) -> pd.Series:
    """Dates of the repeat purchase days, up to ``end`` (inclusive), of the customers in ``first_purchase``.

    ``transactions``: customer_id, timestamp, amount. A purchase day is a calendar day with a
    row of amount >= 0; a repeat one is after the customer's ``first_purchase`` (a Series
    indexed by customer_id).
    """
    end = pd.Timestamp(end)
    buys = transactions.loc[transactions["amount"] >= 0, ["customer_id", "timestamp"]]
    day = buys["timestamp"].dt.floor("D").to_numpy()
    days = pd.DataFrame({"customer_id": buys["customer_id"].to_numpy(), "day": day})
    days = days.drop_duplicates()
    first = days["customer_id"].map(first_purchase)
    keep = first.notna() & (days["day"] > first) & (days["day"] <= end)
    return days.loc[keep, "day"].sort_values().reset_index(drop=True)


def repeat_day_counts(transactions, customers, end):
    """:func:`repeat_purchase_days` as a portable ibis expression, counted by day: columns day
    (timestamp), count (repeat purchase days of the ``customers`` on that day), sorted by day.

    ``transactions``: ibis table customer_id, timestamp, amount; ``customers``: ibis table
    customer_id, first_purchase (one row per customer). Runs on the features engine, so only one
    row per calendar day reaches Python instead of every transaction."""
    import ibis

    days = transactions.filter(transactions.amount >= 0)
    days = days.select(customer_id=days.customer_id, day=days.timestamp.truncate("D")).distinct()
    joined = days.join(customers, "customer_id")
    end = ibis.literal(pd.Timestamp(end).to_pydatetime())
    joined = joined.filter((joined.day > joined.first_purchase) & (joined.day <= end))
    return joined.group_by("day").aggregate(count=joined.count()).order_by("day")


def tracking_curve(
    birth_days: pd.Series,
    repeat_days: pd.Series,
    expected_unconditional: Callable[[np.ndarray], np.ndarray],
    days_per_unit: float,
    end,
    step_days: int = 7,
    repeat_counts=None,
) -> pd.DataFrame:
    """Cumulative repeat purchases over calendar time, actual vs model, sampled every ``step_days``.

    Model: sum over customers of E[X(age)], the unconditional expected repeat purchases of a
    customer ``age`` = (day - birth day) old (``expected_unconditional`` takes model units).
    Day 0 is the earliest birth day; samples are taken at days step, 2*step, ... and ``end``.
    ``repeat_counts``: how many repeat purchase days each of ``repeat_days`` stands for (None: one
    each; :func:`repeat_day_counts` gives days with their counts).
    Columns: date, week, actual_cumulative, expected_cumulative, actual_incremental,
    expected_incremental (incremental = change since the previous sample).
    """
    births = pd.to_datetime(birth_days).dt.floor("D")
    start, end = births.min(), pd.Timestamp(end).floor("D")
    n_days = int((end - start).days) + 1
    birth_count = np.bincount((births - start).dt.days.to_numpy(), minlength=n_days)[:n_days]
    lags = np.arange(n_days, dtype=float)
    per_customer = np.asarray(expected_unconditional(lags / days_per_unit), dtype=float)
    expected_daily = np.convolve(birth_count.astype(float), per_customer)[:n_days]
    repeat_offsets = (pd.to_datetime(pd.Series(repeat_days)) - start).dt.days.to_numpy()
    inside = (repeat_offsets >= 0) & (repeat_offsets < n_days)
    weights = None if repeat_counts is None else np.asarray(repeat_counts, dtype=float)[inside]
    # whole counts: float64 sums of them are exact, so counted days give the same curve as listed days
    actual_daily = np.cumsum(np.bincount(repeat_offsets[inside], weights=weights, minlength=n_days))
    samples = np.unique(np.append(np.arange(step_days, n_days, step_days), n_days - 1))
    table = pd.DataFrame(
        {
            "date": start + pd.to_timedelta(samples, unit="D"),
            "week": samples / 7.0,
            "actual_cumulative": actual_daily[samples].astype(float),
            "expected_cumulative": expected_daily[samples],
        }
    )
    table["actual_incremental"] = table["actual_cumulative"].diff().fillna(table["actual_cumulative"])
    table["expected_incremental"] = table["expected_cumulative"].diff().fillna(table["expected_cumulative"])
    return table


def expectation_matrix(
    value: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray],
    frequencies: Sequence[float],
    recencies: Sequence[float],
    T: float,
) -> pd.DataFrame:
    """``value(frequency, recency, T)`` on a frequency x recency grid at a fixed age T.

    Rows: frequency; columns: recency (model units). Cells where recency > T are NaN.
    """
    f_grid, r_grid = np.meshgrid(_as_float(frequencies), _as_float(recencies), indexing="ij")
    values = np.asarray(value(f_grid.ravel(), r_grid.ravel(), np.full(f_grid.size, float(T))), dtype=float)
    values = np.where(r_grid.ravel() <= T, values, np.nan).reshape(f_grid.shape)
    index, columns = pd.Index(frequencies, name="frequency"), pd.Index(recencies, name="recency")
    return pd.DataFrame(values, index=index, columns=columns)


def matrix_axes(frequency, T, max_columns: int = 80, quantile: float = 0.99) -> tuple[np.ndarray, np.ndarray, float]:
    """Grid for the frequency/recency matrices: frequencies 0..q99 (at least 1), recencies 0..max T.

    Returns (frequencies, recencies, T_max); recency steps are whole model units, widened so
    there are at most ``max_columns`` columns.
    """
    frequency, T = _as_float(frequency), _as_float(T)
    max_f = max(int(np.ceil(np.quantile(frequency, quantile))), 1) if frequency.size else 1
    t_max = float(T.max()) if T.size else 1.0
    step = max(1, math.ceil(t_max / (max_columns - 1)))
    recencies = np.arange(0, math.floor(t_max) + 1, step, dtype=float)
    return np.arange(0, max_f + 1, dtype=float), recencies, t_max


def baseline_frame(
    ipi_mean, avg_spend, horizon_days: float, margin: float, one_time_interval_days: float | None = None
) -> pd.DataFrame:
    """Quick-estimate predictions per customer: interval_days, purchases, spend (revenue), clv (margin)."""
    interval = baseline_interval_days(ipi_mean, one_time_interval_days)
    purchases = horizon_days / interval
    spend = purchases * _as_float(avg_spend)
    return pd.DataFrame({"interval_days": interval, "purchases": purchases, "spend": spend, "clv": spend * margin})


def holdout_summary(
    frame: pd.DataFrame,
    horizon_days: float,
    margin: float,
    share: float = TOP_SHARE,
    one_time_interval_days: float | None = None,
) -> dict:
    """Every holdout number of the model and of the quick-estimate baseline, as one nested dict.

    ``frame`` (one row per customer at the calibration cutoff): frequency, ipi_mean, avg_spend
    (features); expected_purchases, expected_avg_spend, clv (model); actual_purchases,
    actual_spend (the holdout window). Purchases are compared in purchase days, spend in
    money (model spend = expected purchases x expected spend per purchase, undiscounted, no
    margin; baseline spend = (horizon / interval) x avg_spend). Rankings compare the model's
    clv and the baseline's clv with the actual spend.
    """
    baseline = baseline_frame(frame["ipi_mean"], frame["avg_spend"], horizon_days, margin, one_time_interval_days)
    one_time = ~np.isfinite(_as_float(frame["ipi_mean"]))
    model_spend = _as_float(frame["expected_purchases"]) * _as_float(frame["expected_avg_spend"])
    fallback = float(baseline["interval_days"][one_time].iloc[0]) if one_time.any() else None
    return {
        "n_customers": int(len(frame)),
        "n_one_time_buyers": int(one_time.sum()),
        "baseline_one_time_interval_days": fallback,
        "purchases": {
            "model": prediction_errors(frame["expected_purchases"], frame["actual_purchases"]),
            "baseline": prediction_errors(baseline["purchases"], frame["actual_purchases"]),
        },
        "spend": {
            "model": prediction_errors(model_spend, frame["actual_spend"]),
            "baseline": prediction_errors(baseline["spend"], frame["actual_spend"]),
        },
        "ranking": ranking_comparison(
            {"model": frame["clv"], "baseline": baseline["clv"]}, frame["actual_spend"], share
        ),
    }


def holdout_frame(features: pd.DataFrame, predictions: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """One row per t_1 customer: features, the model's t_1 predictions and the actual holdout.
    Frames holding the same customers in the same order (the stage's: each sorted by customer_id,
    checked here) are put side by side, the same table as the merges without their hashing."""
    predicted = predictions[["customer_id", "expected_purchases", "expected_avg_spend", "clv"]]
    actual = labels.rename(columns={"n_purchase_days": "actual_purchases", "spend": "actual_spend"})
    frame = features[["customer_id", "frequency", "ipi_mean", "avg_spend"]]
    actual = actual[["customer_id", "actual_purchases", "actual_spend"]]
    ids = frame["customer_id"]
    if ids.is_unique and all(ids.reset_index(drop=True).equals(f["customer_id"].reset_index(drop=True))
                             for f in (predicted, actual)):  # fmt: skip
        parts = [f.reset_index(drop=True) for f in (frame, predicted.drop(columns="customer_id"),
                                                    actual.drop(columns="customer_id"))]  # fmt: skip
        return pd.concat(parts, axis=1)
    frame = frame.merge(predicted, on="customer_id", validate="one_to_one")
    return frame.merge(actual, on="customer_id", validate="one_to_one")


def evaluate(frame: pd.DataFrame, horizon_days: float, margin: float) -> dict:
    """Holdout numbers of a :func:`holdout_frame` (model and baseline, with the calibration table as
    records under ``summary``), the calibration table and the gains curve."""
    summary = holdout_summary(frame, horizon_days, margin)
    calibration = calibration_holdout_table(frame["frequency"], frame["expected_purchases"], frame["actual_purchases"])
    baseline = baseline_frame(frame["ipi_mean"], frame["avg_spend"], horizon_days, margin)
    gains = gains_curve({"model": frame["clv"], "baseline": baseline["clv"]}, frame["actual_spend"])
    log.info(
        "holdout (%d customers): purchases MAE model %.4f vs baseline %.4f; spend Spearman model %.3f vs baseline %.3f",
        summary["n_customers"], summary["purchases"]["model"]["mae"], summary["purchases"]["baseline"]["mae"],
        summary["ranking"]["model"]["spearman_rho"], summary["ranking"]["baseline"]["spearman_rho"],
    )  # fmt: skip
    return {
        "summary": {**summary, "calibration": calibration.to_dict(orient="records")},
        "calibration": calibration,
        "gains": gains,
    }


def tracking_table(features: pd.DataFrame, transactions: pd.DataFrame | None, purchase_model, end,
                   days_per_unit: float, repeat_counts: pd.DataFrame | None = None) -> pd.DataFrame:  # fmt: skip
    """Weekly cumulative repeat purchases of the ``features`` customers (customer_id, first_purchase)
    up to ``end``, actual vs ``purchase_model`` (fitted at their cutoff). Actual: from
    ``transactions`` (customer_id, timestamp, amount), or from ``repeat_counts`` (day, count: what
    :func:`repeat_day_counts` gives, the same numbers without the transactions in memory)."""
    expected = purchase_model.expected_purchases_unconditional
    if repeat_counts is None:
        first = features.set_index("customer_id")["first_purchase"]
        repeats = repeat_purchase_days(transactions, first, end)
        return tracking_curve(features["first_purchase"], repeats, expected, days_per_unit, end)
    return tracking_curve(features["first_purchase"], repeat_counts["day"], expected, days_per_unit, end,
                          repeat_counts=repeat_counts["count"].to_numpy())  # fmt: skip


def plot_tables(evaluation: dict, tracking: pd.DataFrame, selection: dict) -> dict[str, pd.DataFrame]:
    """The data behind the stage's plots by file stem, floats rounded to 10 decimals (so no
    last-bit noise like 1.0000000000000002 reaches the CSV files)."""
    tables = {"calibration_holdout": evaluation["calibration"], "tracking": tracking,
              "model_vs_baseline": evaluation["gains"], "model_selection": selection_table(selection)}  # fmt: skip
    return {stem: table.round(10) for stem, table in tables.items()}


# --------------------------------------------------------------------------- model selection


@dataclass(frozen=True)
class Candidate:
    """One candidate purchase model fitted on the calibration data, with its holdout errors or failure."""

    name: str
    model: Any | None
    errors: dict[str, float] | None
    failure: str | None = None


def compare_candidates(
    names: Sequence[str],
    features: pd.DataFrame,
    actual_purchases,
    horizon_units: float,
    make_model: Callable[[str], Any],
    patterns: pd.DataFrame | None = None,
) -> list[Candidate]:
    """Fit each candidate on ``features`` (frequency, recency, T) and score its holdout purchases.

    ``make_model(name)`` returns an unfitted purchase model; its predicted purchases over the
    next ``horizon_units`` are compared with ``actual_purchases``. A candidate whose fit fails
    (FitError, including a search over its time budget) or whose predictions are not finite is
    kept with ``failure`` set (and a warning naming the reason), so the others still compete.
    ``patterns``: the same customers as distinct (frequency, recency, T) rows with their
    ``count``; when given, the fits use it (same fit, fewer rows).
    """
    history = [features[c] for c in ("frequency", "recency", "T")]
    fit_on, weighted = history, {}
    if patterns is not None:
        fit_on, weighted = [patterns[c] for c in ("frequency", "recency", "T")], {"weights": patterns["count"]}
    out = []
    for name in names:
        log.info("fitting candidate %s on %d customers", name, len(features))
        try:
            model = make_model(name).fit(*fit_on, **weighted)
            predicted = np.asarray(model.expected_purchases(horizon_units, *history), dtype=float)
            if not np.isfinite(predicted).all():
                raise FitError(f"{int((~np.isfinite(predicted)).sum())} expected purchases are not finite")
        except (FitError, ArithmeticError, ValueError, np.linalg.LinAlgError) as exc:
            log.warning("candidate %s skipped: %s", name, exc)
            out.append(Candidate(name, None, None, " ".join(str(exc).split()) or type(exc).__name__))
            continue
        out.append(Candidate(name, model, prediction_errors(predicted, actual_purchases)))
    return out


def selection_report(candidates: Sequence[Candidate], chosen: str, method: str) -> dict:
    """The model-selection summary: the holdout errors of every candidate, or why it was skipped."""
    table = {}
    for c in candidates:
        if c.errors is None:
            table[c.name] = {"status": "skipped", "reason": c.failure}
        else:
            table[c.name] = {"status": "ok", **{k: c.errors[k] for k in ("mae", "rmse", "aggregate_error")}}
    return {
        "method": method,
        "chosen": chosen,
        "criterion": "per-customer MAE of holdout purchase days",
        "tie_break": "MAEs equal to 9 significant digits: first of " + ", ".join(CANDIDATE_ORDER),
        "candidates": table,
    }


def selection_table(report: dict) -> pd.DataFrame:
    """The candidates of a selection report as rows: candidate, status, mae, rmse, aggregate_error, reason."""
    rows = [{"candidate": name, **values} for name, values in report["candidates"].items()]
    return pd.DataFrame(rows).reindex(columns=["candidate", "status", "mae", "rmse", "aggregate_error", "reason"])


def purchase_matrices(purchase_model, frequency, T, horizon_units: float) -> tuple[pd.DataFrame, pd.DataFrame, float]:
    """Expected purchases over the horizon and P(alive) on the frequency x recency grid at the largest T."""
    f, r, t_max = matrix_axes(frequency, T)
    def expected(ff, rr, tt):
        return purchase_model.expected_purchases(horizon_units, ff, rr, tt)

    return expectation_matrix(expected, f, r, t_max), expectation_matrix(purchase_model.p_alive, f, r, t_max), t_max
