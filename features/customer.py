"""Customer features and window labels at a cutoff, written once as portable ibis expressions.

Every function takes an ibis table of accepted transactions (the ingest contract: customer_id,
timestamp, amount, and optionally order_id, quantity, cost) and returns an ibis expression; the
caller picks the backend (embedded DuckDB, or Spark through ibis' PySpark backend) and executes
it. Only portable ibis operations are used: no backend SQL.

Semantics (the same as ``lifetimes.utils.summary_data_from_transaction_data`` with freq='D'):

- a *day* is a calendar day of the timestamp; the cutoff day is included (day <= cutoff);
- rows after the cutoff are filtered out before any aggregation, so they cannot leak in;
- a *purchase day* is a day with at least one row with amount >= 0 (zero-amount rows count);
  its value is the net sum of all that day's amounts (returns netted against the purchases);
  return-only days are not purchase days but count in returns and in the net spend.

Money (amount, cost) and quantities are summed exactly, in integer units of 0.0001: as float64
holding whole numbers (float64 adds whole numbers below 2**53 without rounding, so no partial
sum is ever rounded and the result does not depend on how a parallel engine orders the
additions), or as DECIMAL(18, 4) when the data's total could reach 2**53 units (``decimal_sums``;
slower). Reruns are byte-identical either way.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import ibis
import ibis.expr.datatypes as idt
import pandas as pd
import pandera.pandas as pa
import pyarrow
from ibis import _

EPOCH = dt.date(1970, 1, 1)
UNITS = 10_000  # sums run on whole units of 1 / UNITS (amounts are rounded to 0.0001)
FLOAT_EXACT_LIMIT = 2**53 / UNITS  # ~9.0e11: below it every float64 sum of units is exact
DECIMAL_UNITS = idt.Decimal(18, 4)
MAX_ABS_VALUE = 1e9  # largest accepted |amount|, |quantity|, |cost| of one row
EXACT_COLUMNS = ("amount", "quantity", "cost")
DEFAULT_WINDOWS_DAYS = (30, 90, 180, 365)  # = features.windows_days' default (tests/test_defaults.py)
NO_RETURN_DAYS = 99_999  # days_since_last_return of a customer without returns (~274 years: beyond any history)
SEASON_YEARS = (1, 2)  # season_*_{n}y: the label window shifted back n years of 365 days

TRANSACTION_COLUMNS = {  # column -> (required, ibis type family)
    "customer_id": (True, "string"),
    "timestamp": (True, "timestamp"),
    "amount": (True, "floating"),
    "order_id": (False, "string"),
    "quantity": (False, "floating"),
    "cost": (False, "floating"),
}


@dataclass(frozen=True)
class FeatureSpec:
    """What to compute: horizon and windows in days; which optional columns carry data.

    Built from params by pipelines.domain.feature_spec (the settings have no defaults here)."""

    horizon_days: int
    days_per_unit: float  # model time unit for recency and T: 7 = weeks, 1 = days
    windows_days: tuple[int, ...]
    trend_days: int
    trend_purchases: int  # K: the last purchase days read by the gap, basket and quantity trends
    # Facts about the data, not settings: False = the optional column is absent or empty.
    has_order_id: bool = False
    has_quantity: bool = False
    has_cost: bool = False
    decimal_sums: bool = False  # True when totals may reach FLOAT_EXACT_LIMIT (see needs_decimal_sums)


# --------------------------------------------------------------------------- inputs


def transaction_problems(schema: ibis.Schema) -> list[str]:
    """Contract violations of a transactions table's schema (missing columns, wrong types)."""
    problems = []
    for name, (required, family) in TRANSACTION_COLUMNS.items():
        if name not in schema:
            if required:
                problems.append(f"missing column '{name}'")
            continue
        dtype = schema[name]
        ok = {"string": dtype.is_string(), "timestamp": dtype.is_timestamp(), "floating": dtype.is_floating()}
        if not ok[family]:
            problems.append(f"column '{name}' has type {dtype}, expected {family}")
    return problems


def transactions_summary(tx: ibis.Table) -> ibis.Table:
    """One-row summary used to check a transactions table and derive as_of and the spec flags."""
    amount = tx.amount
    bad_amount = amount.isnull() | amount.isnan() | amount.isinf()
    summary = {
        "n_rows": tx.count(),
        "first_timestamp": tx.timestamp.min(),
        "last_timestamp": tx.timestamp.max(),
        "null_customer_id": tx.count(where=tx.customer_id.isnull()),
        "null_timestamp": tx.count(where=tx.timestamp.isnull()),
        "bad_amount": tx.count(where=bad_amount),
    }
    if "order_id" in tx.columns:
        summary["n_order_id"] = tx.order_id.count()
    for name in EXACT_COLUMNS:
        if name in tx.columns:
            size = _nan_to_null(tx[name]).abs()
            summary[f"n_{name}"] = size.count()
            summary[f"max_abs_{name}"] = size.max()
            # exact, so the choice of summation below is deterministic too
            summary[f"abs_total_{name}"] = _to_units(ibis.ifelse(size < MAX_ABS_VALUE, size, 0.0), True).sum()
    return tx.aggregate(**summary)


def needs_decimal_sums(summary: dict) -> bool:
    """True when a column's total |value| reaches FLOAT_EXACT_LIMIT, so float64 unit sums
    might round: then sums run on DECIMAL instead (exact at any size, slower)."""
    totals = [summary.get(f"abs_total_{name}") for name in EXACT_COLUMNS]
    return any(t is not None and pd.notna(t) and float(t) >= FLOAT_EXACT_LIMIT for t in totals)


def transactions_problem(summary: Mapping[str, Any]) -> str | None:
    """What makes a transactions table unusable, from its ``transactions_summary`` row: no rows,
    a missing or non-finite required value, or a value of MAX_ABS_VALUE or more; None if usable."""
    if summary["n_rows"] == 0:
        return "has no rows; check data.path and the quarantine report of `cvp ingest`"
    for column, count in (
        ("customer_id", summary["null_customer_id"]),
        ("timestamp", summary["null_timestamp"]),
        ("amount", summary["bad_amount"]),
    ):
        if count:
            return f"{count} rows with a missing or non-finite '{column}'; re-run `cvp ingest`"
    for column in ("amount", "quantity", "cost"):
        largest = summary.get(f"max_abs_{column}")
        if largest is not None and pd.notna(largest) and largest >= MAX_ABS_VALUE:
            return f"column '{column}' has |value| {largest:g} >= {MAX_ABS_VALUE:g} per row; check the unit of the source column"
    return None


def column_flags(summary: Mapping[str, Any]) -> dict[str, bool]:
    """The data facts of a FeatureSpec from a ``transactions_summary`` row: an optional column
    counts as mapped when it has any non-null value; sums run on DECIMAL only when the data is
    too large for exact float64 unit sums."""
    return {
        "has_order_id": bool(summary.get("n_order_id", 0)),
        "has_quantity": bool(summary.get("n_quantity", 0)),
        "has_cost": bool(summary.get("n_cost", 0)),
        "decimal_sums": needs_decimal_sums(summary),
    }


def cutoff_dates(as_of: dt.date, horizon_days: int, offsets: Sequence[int]) -> dict[int, dt.date]:
    """t_k = as_of - k * horizon_days for every offset k."""
    return {k: as_of - dt.timedelta(days=k * horizon_days) for k in offsets}


# --------------------------------------------------------------------------- building blocks


def day_number(day: dt.date) -> int:
    """Days since 1970-01-01 (the integer day axis every window is computed on)."""
    return (day - EPOCH).days


def _midnight_after(day: dt.date) -> ibis.Value:
    return ibis.timestamp(dt.datetime.combine(day + dt.timedelta(days=1), dt.time()))


def rows_in_days(tx: ibis.Table, after: dt.date | None, until: dt.date) -> ibis.Table:
    """Rows whose calendar day is in (after, until]; ``after=None`` means no lower bound."""
    keep = tx.timestamp < _midnight_after(until)
    if after is not None:
        keep &= tx.timestamp >= _midnight_after(after)
    return tx.filter(keep)


def _nan_to_null(value: ibis.Value) -> ibis.Value:
    """NaN (how pandas marks a missing float) as SQL null, so sums and counts skip it."""
    return ibis.ifelse(value.isnan(), ibis.null(value.type()), value)


def _to_units(value: ibis.Value, decimal_sums: bool) -> ibis.Value:
    """A per-row value in exactly summable form: whole units of 1 / UNITS as float64, or
    DECIMAL(18, 4) when ``decimal_sums``. NaN becomes null."""
    value = _nan_to_null(value)
    if decimal_sums:
        return value.cast(DECIMAL_UNITS)
    return (value * UNITS).round(0).cast("float64")


def _from_units(total: ibis.Value, decimal_sums: bool, default: float | None = 0.0) -> ibis.Value:
    """An exact total (see _to_units) as float64 currency; ``default`` replaces a missing total."""
    out = total.cast("float64") if decimal_sums else total / UNITS
    return out.fill_null(default) if default is not None else out


def daily_activity(
    rows: ibis.Table, with_quantity: bool = False, with_cost: bool = False, decimal_sums: bool = False
) -> ibis.Table:
    """One row per customer and calendar day with activity.

    Columns: customer_id, date, day (days since 1970-01-01), n_rows, n_purchase_rows
    (rows with amount >= 0), value (net sum of amounts), returned (sum of -amount over return
    rows), and quantity / cost when asked for; sums in exact units (see _to_units).
    """
    rows = rows.mutate(date=rows.timestamp.date(), money=_to_units(rows.amount, decimal_sums))
    is_return = rows.amount < 0
    metrics = {
        "n_rows": rows.count(),
        "n_purchase_rows": rows.count(where=~is_return),
        "value": rows.money.sum(),
        "returned": (-rows.money).sum(where=is_return),
    }
    if with_quantity:
        metrics["quantity"] = _to_units(rows.quantity, decimal_sums).sum()
    if with_cost:
        metrics["cost"] = _to_units(rows.cost, decimal_sums).sum()
    daily = rows.group_by(["customer_id", "date"]).aggregate(**metrics)
    return daily.mutate(day=daily.date.epoch_days().cast("int64"))


def customer_days(tx: ibis.Table, spec: FeatureSpec) -> ibis.Table:
    """The day table every cutoff and label window is derived from: ``daily_activity`` of all
    rows, plus ``purchase`` (a purchase day), ``gap`` (days since the customer's previous
    purchase day; null on the first purchase day and on return-only days), the ``recent_*``
    sums over the day's last ``spec.trend_purchases`` purchase days (see ``_with_recent_purchases``)
    and, when order_id is mapped, ``new_orders`` (order ids whose first purchase row is on that day).

    Every column of a day depends only on rows of that day or earlier, so filtering this table
    to days <= cutoff gives exactly the day table of the rows <= cutoff: it is computed once
    and shared by all cutoffs (see ``features_from_days``)."""
    daily = daily_activity(tx, spec.has_quantity, spec.has_cost, spec.decimal_sums)
    if spec.has_order_id:
        daily = _with_new_orders(daily, tx)
    return _with_purchase_gaps(daily, spec)


def _with_new_orders(daily: ibis.Table, tx: ibis.Table) -> ibis.Table:
    """Add ``new_orders``: distinct order ids of the customer's purchase rows (amount >= 0)
    first seen on that day. Their sum over days <= cutoff is the distinct count up to it."""
    purchases = tx.filter((tx.amount >= 0) & tx.order_id.notnull())
    orders = purchases.group_by(["customer_id", "order_id"]).aggregate(date=purchases.timestamp.date().min())
    firsts = orders.group_by(["customer_id", "date"]).aggregate(new_orders=orders.count())
    joined = daily.left_join(firsts, [daily.customer_id == firsts.customer_id, daily.date == firsts.date])
    return joined.select(daily, new_orders=firsts.new_orders.fill_null(0))


def _with_purchase_gaps(daily: ibis.Table, spec: FeatureSpec) -> ibis.Table:
    """Mark purchase days and add ``gap``: days since the customer's previous purchase day
    (null on the first purchase day and on return-only days), and the ``recent_*`` columns."""
    daily = daily.mutate(purchase=daily.n_purchase_rows > 0)
    # Partitioned by (customer, purchase), the previous row of a purchase day is the previous
    # purchase day: one window pass gives the gap and the recent_* sums (return-only days get
    # values too, nulled or never read: features read recent_* on the last purchase day only).
    by_kind = ibis.window(group_by=[daily.customer_id, daily.purchase], order_by=daily.day)
    recent = _recent_purchases(daily, by_kind, spec)
    previous = daily.day.lag().over(by_kind)
    return daily.mutate(gap=ibis.ifelse(daily.purchase, daily.day - previous, ibis.null("int64")), **recent)


def _recent_purchases(daily: ibis.Table, by_kind: Any, spec: FeatureSpec) -> dict[str, ibis.Value]:
    """Per purchase day, over the last K = ``spec.trend_purchases`` purchase days up to it
    (the day itself included; fewer when the customer has fewer), never null:

    - ``recent_gap_count``: gaps among them, m = min(K, purchase days so far - 1);
    - ``recent_gap_sum``: the sum of those m gaps = day - the purchase day m back (days);
    - ``recent_gap_oldest``: the oldest of those m gaps (0 when m = 0);
    - ``recent_value``, ``recent_quantity``: the sum of the last min(K, purchase days so far)
      day values / quantities (exact units, see _to_units).

    Only earlier days are read (lags), so the columns of a day do not depend on later rows."""
    k = spec.trend_purchases
    days = [daily.day] + [daily.day.lag(j).over(by_kind) for j in range(1, k + 1)]
    oldest = [days[j - 1] - days[j] for j in range(k, 0, -1)]  # null unless purchase day j back exists
    recent = {
        "recent_gap_count": functools.reduce(lambda a, b: a + b, [d.notnull().cast("int64") for d in days[1:]]),
        "recent_gap_sum": daily.day - ibis.coalesce(*days[:0:-1], daily.day),
        "recent_gap_oldest": ibis.coalesce(*oldest, ibis.literal(0, "int64")),
        "recent_value": _lag_sum(daily.value, by_kind, k),
    }
    if spec.has_quantity:
        recent["recent_quantity"] = _lag_sum(daily.quantity, by_kind, k)
    return recent


def _lag_sum(column: ibis.Value, by_kind: Any, k: int) -> ibis.Value:
    """Sum of ``column`` over the row and its k - 1 predecessors in ``by_kind`` (missing ones = 0)."""
    zero = ibis.literal(0, column.type())
    terms = [column.fill_null(zero)] + [column.lag(j).over(by_kind).fill_null(zero) for j in range(1, k)]
    return functools.reduce(lambda a, b: a + b, terms)


def season_windows(cutoff: dt.date, horizon_days: int) -> dict[int, tuple[int, int]]:
    """Years back n -> the label window (c, c + h] shifted back n * 365 days, as day numbers
    (start, end] with end clipped to the cutoff c (only when h > 365), so it never looks past c."""
    c = day_number(cutoff)
    return {n: (c - 365 * n, min(c - 365 * n + horizon_days, c)) for n in SEASON_YEARS}


def _customer_stats(days: ibis.Table, cutoff: dt.date, spec: FeatureSpec) -> ibis.Table:
    """Per customer with activity, in one aggregation over its days (``customer_days`` already
    filtered to days <= cutoff): purchase-day statistics (first/last purchase, counts, values,
    gap sums) and activity totals (rows, net spend, returns, trailing windows, new orders).
    Customers without a purchase day have n_purchase_days = 0."""
    day, value, purchase = days.day, days.value, days.purchase
    c = day_number(cutoff)
    trailing = day > c - spec.horizon_days
    stats = {
        "first_purchase": days.date.min(where=purchase),
        "last_purchase": days.date.max(where=purchase),
        "n_purchase_days": days.count(where=purchase),
        "purchase_value": value.sum(where=purchase),
        "repeat_value": value.sum(where=days.gap.notnull()),
        "n_gaps": days.gap.count(),
        "gap_sumsq": (days.gap * days.gap).sum(),
        "n_transactions": days.n_rows.sum(),
        "n_purchase_rows": days.n_purchase_rows.sum(),
        "total_spend": value.sum(),
        "returns_amount": days.returned.sum(),
        "spend_recent": value.sum(where=day > c - spec.trend_days),
        "spend_previous": value.sum(where=(day > c - 2 * spec.trend_days) & (day <= c - spec.trend_days)),
        "spend_trailing": value.sum(where=trailing),
        "last_return": day.max(where=days.n_rows > days.n_purchase_rows),
    }
    for w in spec.windows_days:
        stats[f"purchases_{w}d"] = days.count(where=purchase & (day > c - w))
        stats[f"spend_{w}d"] = value.sum(where=day > c - w)
    for years, (start, end) in season_windows(cutoff, spec.horizon_days).items():
        in_season = (day > start) & (day <= end)
        stats[f"season_purchases_{years}y"] = days.count(where=purchase & in_season)
        stats[f"season_spend_{years}y"] = value.sum(where=in_season)
    if spec.has_quantity:
        stats["total_quantity"] = days.quantity.sum()
        stats["purchase_quantity"] = days.quantity.sum(where=purchase)
    if spec.has_cost:
        stats["cost_trailing"] = days.cost.sum(where=trailing)
    if spec.has_order_id:
        stats["n_orders"] = days.new_orders.sum()
    return days.group_by("customer_id").aggregate(**stats)


# --------------------------------------------------------------------------- features and labels


def customer_features(tx: ibis.Table, cutoff: dt.date, spec: FeatureSpec) -> ibis.Table:
    """Features of every customer with >= 1 purchase day on or before ``cutoff``, sorted by id.

    Columns and units: see ``feature_dtypes`` and docs/features.md. Only rows on or before
    the cutoff are read, so nothing after it can influence the result.
    """
    return features_from_days(customer_days(rows_in_days(tx, None, cutoff), spec), cutoff, spec)


def features_from_days(days: ibis.Table, cutoff: dt.date, spec: FeatureSpec) -> ibis.Table:
    """``customer_features`` at ``cutoff`` from a ``customer_days`` table that may extend past
    it: days after the cutoff are filtered out before any per-customer aggregation, so the
    result equals that of the rows on or before the cutoff (no leakage)."""
    s = _customer_stats(days.filter(days.day <= day_number(cutoff)), cutoff, spec)
    s = _with_last_purchase(s.filter(s.n_purchase_days > 0), days, spec)
    return s.select(**_feature_columns(s, cutoff, spec)).order_by("customer_id")


def _with_last_purchase(s: ibis.Table, days: ibis.Table, spec: FeatureSpec) -> ibis.Table:
    """The customer statistics ``s`` with the gap and the ``recent_*`` columns of each customer's
    last purchase day (on or before the cutoff, as ``s.last_purchase`` is): one row each."""
    recent = ["gap", "recent_gap_count", "recent_gap_sum", "recent_gap_oldest", "recent_value"]
    if spec.has_quantity:
        recent.append("recent_quantity")
    last = days.filter(days.purchase).select(last_id=days.customer_id, last_date=days.date, *recent)
    joined = s.join(last, [s.customer_id == last.last_id, s.last_purchase == last.last_date])
    return joined.drop("last_id", "last_date")


def _feature_columns(s: ibis.Table, cutoff: dt.date, spec: FeatureSpec) -> dict[str, ibis.Value]:
    """The output columns, in file order, from the customer statistics ``s``."""
    c = day_number(cutoff)
    first_day = s.first_purchase.epoch_days().cast("int64")
    last_day = s.last_purchase.epoch_days().cast("int64")
    n_days = s.n_purchase_days.cast("int64")
    frequency = n_days - 1
    span = last_day - first_day  # = sum of the inter-purchase gaps
    n_gaps = s.n_gaps.cast("int64")
    gap_sumsq = s.gap_sumsq.cast("int64")
    ipi_mean = ibis.ifelse(frequency > 0, span.cast("float64") / frequency, ibis.null("float64"))
    # Sample std of the gaps from exact integer sums: var = (n*sum(g^2) - (sum g)^2) / (n(n-1)).
    ipi_var = (n_gaps * gap_sumsq - span * span).cast("float64") / (n_gaps * (n_gaps - 1))
    ipi_std = ibis.ifelse(n_gaps >= 2, ipi_var.sqrt(), ibis.null("float64"))
    days_since_first = c - first_day
    days_since_last = c - last_day
    money = functools.partial(_from_units, decimal_sums=spec.decimal_sums)
    repeat_value = money(s.repeat_value)
    total_quantity = money(s.total_quantity, default=None) if spec.has_quantity else ibis.null("float64")
    spend_trailing = money(s.spend_trailing)
    margin_trailing = spend_trailing - money(s.cost_trailing) if spec.has_cost else ibis.null("float64")

    columns = {
        "customer_id": s.customer_id,
        "cutoff": ibis.literal(cutoff),
        "first_purchase": s.first_purchase,
        "last_purchase": s.last_purchase,
        "frequency": frequency,
        "recency": span.cast("float64") / spec.days_per_unit,
        "T": days_since_first.cast("float64") / spec.days_per_unit,
        "monetary_value": ibis.ifelse(frequency > 0, repeat_value / frequency, 0.0),
        "n_purchase_days": n_days,
        "n_transactions": s.n_transactions.cast("int64"),
        "total_spend": money(s.total_spend),
        "avg_spend": money(s.purchase_value) / n_days,
        "days_since_first": days_since_first,
        "days_since_last": days_since_last,
        "ipi_mean": ipi_mean,
        "ipi_std": ipi_std,
        "days_since_last_ratio": days_since_last.cast("float64") / ipi_mean,
    }
    for w in spec.windows_days:
        columns[f"purchases_{w}d"] = s[f"purchases_{w}d"].cast("int64")
        columns[f"spend_{w}d"] = money(s[f"spend_{w}d"])
    columns |= {
        "spend_trend": money(s.spend_recent) - money(s.spend_previous),
        "returns_count": (s.n_transactions - s.n_purchase_rows).cast("int64"),
        "returns_amount": money(s.returns_amount),
        "n_orders": s.n_orders.cast("int64") if spec.has_order_id else n_days,
        "total_quantity": total_quantity,
        "avg_quantity": total_quantity / n_days,
        "spend_trailing": spend_trailing,
        "margin_trailing": margin_trailing,
    }
    return columns | _behaviour_columns(s, cutoff, spec, ipi_mean)


def _ratio_or_one(numerator: ibis.Value, denominator: ibis.Value) -> ibis.Value:
    """numerator / denominator as float64; 1.0 (no change) when the denominator is not > 0."""
    ok = denominator.fill_null(0) > 0
    return ibis.ifelse(ok, numerator.cast("float64") / denominator.cast("float64"), 1.0)


def _behaviour_columns(s: ibis.Table, cutoff: dt.date, spec: FeatureSpec, ipi_mean: ibis.Value) -> dict[str, ibis.Value]:
    """Trends over the last K = ``spec.trend_purchases`` purchase days, return shares, the last
    return and last years' season (docs/features.md gives formulas, units and edge values)."""
    k = spec.trend_purchases
    n_days = s.n_purchase_days.cast("int64")
    m_gaps = s.recent_gap_count.cast("int64")
    m_days = ibis.ifelse(n_days < k, n_days, k)
    # mean of the last m gaps / mean of all gaps; 1.0 with no gap yet
    gap_last_ratio = ibis.ifelse(m_gaps > 0, s.recent_gap_sum.cast("float64") / m_gaps / ipi_mean, 1.0)
    # (newest - oldest of the last m gaps) / (m - 1): days per purchase (least squares slope for m <= 3)
    gap_trend = ibis.ifelse(m_gaps >= 2, (s.gap - s.recent_gap_oldest).cast("float64") / (m_gaps - 1), 0.0)
    # mean of the last m day values / mean of all day values = (recent * n) / (all * m), exact unit sums
    basket_trend = _ratio_or_one(s.recent_value.cast("float64") * n_days, s.purchase_value.cast("float64") * m_days)
    if spec.has_quantity:
        quantity = s.purchase_quantity.cast("float64") * m_days
        quantity_trend = _ratio_or_one(s.recent_quantity.cast("float64").fill_null(0.0) * n_days, quantity)
    else:
        quantity_trend = ibis.literal(1.0)
    returns_count = (s.n_transactions - s.n_purchase_rows).cast("int64")
    returned = s.returns_amount.cast("float64").fill_null(0.0)
    bought = s.total_spend.cast("float64").fill_null(0.0) + returned  # gross amount of purchase rows
    c = day_number(cutoff)
    columns = {
        "gap_last_ratio": gap_last_ratio,
        "gap_trend": gap_trend,
        "basket_trend": basket_trend,
        "quantity_trend": quantity_trend,
        "return_share_count": returns_count.cast("float64") / s.n_transactions.cast("float64"),
        "return_share_value": ibis.ifelse(returned > 0, returned / ibis.greatest(bought, returned), 0.0),
        "days_since_last_return": (c - s.last_return.cast("int64")).fill_null(NO_RETURN_DAYS),
    }
    for years in SEASON_YEARS:
        columns[f"season_purchases_{years}y"] = s[f"season_purchases_{years}y"].cast("int64")
        columns[f"season_spend_{years}y"] = _from_units(s[f"season_spend_{years}y"], spec.decimal_sums)
    return columns


def window_labels(
    tx: ibis.Table, customers: ibis.Table, cutoff: dt.date, horizon_days: int, decimal_sums: bool = False
) -> ibis.Table:
    """Labels of ``customers`` (a table with customer_id) for the window (cutoff, cutoff + horizon].

    purchased = 1 when the customer has >= 1 purchase day in the window; n_purchase_days and
    spend (net of returns) count the window only. Only rows inside the window are read.
    """
    rows = rows_in_days(tx, cutoff, cutoff + dt.timedelta(days=horizon_days))
    return labels_from_days(daily_activity(rows, decimal_sums=decimal_sums), customers, cutoff, horizon_days, decimal_sums)


def window_period_spend(tx: ibis.Table, cutoff: dt.date, horizon_days: int, period_days: int,
                        decimal_sums: bool = False) -> ibis.Table:
    """Net spend of each customer in each discount period of the window (cutoff, cutoff + horizon]:
    customer_id, period (0 for the days cutoff + 1 .. cutoff + period_days, then 1, ...), spend. The
    periods' sums add up to the labels' spend; customers without activity have no rows."""
    rows = rows_in_days(tx, cutoff, cutoff + dt.timedelta(days=horizon_days))
    days = daily_activity(rows, decimal_sums=decimal_sums)
    days = days.mutate(period=((days.day - day_number(cutoff) - 1) // period_days).cast("int64"))
    out = days.group_by(["customer_id", "period"]).aggregate(spend=days.value.sum())
    return out.mutate(spend=_from_units(out.spend, decimal_sums)).order_by(["customer_id", "period"])


def labels_from_days(
    days: ibis.Table, customers: ibis.Table, cutoff: dt.date, horizon_days: int, decimal_sums: bool = False
) -> ibis.Table:
    """``window_labels`` from a day table (``daily_activity`` or ``customer_days``) of any extent:
    only its days in (cutoff, cutoff + horizon] are aggregated."""
    c = day_number(cutoff)
    days = days.filter((days.day > c) & (days.day <= c + horizon_days))
    window = days.group_by("customer_id").aggregate(
        n_purchase_days=days.count(where=days.n_purchase_rows > 0), spend=days.value.sum()
    )
    ids = customers.select("customer_id")
    joined = ids.left_join(window, ids.customer_id == window.customer_id)
    n_days = window.n_purchase_days.fill_null(0).cast("int64")
    return joined.select(
        customer_id=ids.customer_id,
        cutoff=ibis.literal(cutoff),
        purchased=(n_days > 0).cast("int8"),
        n_purchase_days=n_days,
        spend=_from_units(window.spend, decimal_sums),
    ).order_by("customer_id")


def rows_in_day_table(days: ibis.Table, after: dt.date | None, until: dt.date) -> ibis.Value:
    """Transaction rows whose day is in (after, until], counted on a day table (its n_rows)."""
    keep = days.day <= day_number(until)
    if after is not None:
        keep &= days.day > day_number(after)
    return days.n_rows.sum(where=keep).fill_null(0)


# --------------------------------------------------------------------------- sufficient statistics


def rfm_counts(features: ibis.Table) -> ibis.Table:
    """Distinct (frequency, recency, T) with their customer count: all the BG/NBD-family fits need."""
    keys = ["frequency", "recency", "T"]
    return features.group_by(keys).aggregate(count=_.count()).order_by(keys)


def spend_counts(features: ibis.Table) -> ibis.Table:
    """Distinct (frequency, monetary_value) with their customer count: all a Gamma-Gamma fit needs.

    Every customer is counted (one-time buyers collapse into one row), so the fit can report how
    many it leaves out (frequency 0 or monetary_value <= 0) as it does on per-customer rows.
    """
    keys = ["frequency", "monetary_value"]
    return features.group_by(keys).aggregate(count=_.count()).order_by(keys)


# --------------------------------------------------------------------------- contracts


def feature_dtypes(windows_days: tuple[int, ...] = DEFAULT_WINDOWS_DAYS) -> dict[str, str]:
    """Column -> pandas dtype of a features file, in file order."""
    head = {
        "customer_id": "str", "cutoff": "datetime64[us]", "first_purchase": "datetime64[us]",
        "last_purchase": "datetime64[us]", "frequency": "int64", "recency": "float64", "T": "float64",
        "monetary_value": "float64", "n_purchase_days": "int64", "n_transactions": "int64",
        "total_spend": "float64", "avg_spend": "float64", "days_since_first": "int64",
        "days_since_last": "int64", "ipi_mean": "float64", "ipi_std": "float64",
        "days_since_last_ratio": "float64",
    }  # fmt: skip
    windows = {}
    for w in windows_days:
        windows |= {f"purchases_{w}d": "int64", f"spend_{w}d": "float64"}
    tail = {
        "spend_trend": "float64", "returns_count": "int64", "returns_amount": "float64",
        "n_orders": "int64", "total_quantity": "float64", "avg_quantity": "float64",
        "spend_trailing": "float64", "margin_trailing": "float64",
        "gap_last_ratio": "float64", "gap_trend": "float64", "basket_trend": "float64",
        "quantity_trend": "float64", "return_share_count": "float64", "return_share_value": "float64",
        "days_since_last_return": "int64",
    }  # fmt: skip
    seasons = {}
    for n in SEASON_YEARS:
        seasons |= {f"season_purchases_{n}y": "int64", f"season_spend_{n}y": "float64"}
    return head | windows | tail | seasons


LABEL_DTYPES = {
    "customer_id": "str", "cutoff": "datetime64[us]", "purchased": "int8",
    "n_purchase_days": "int64", "spend": "float64",
}  # fmt: skip

_NULLABLE = {"ipi_mean", "ipi_std", "days_since_last_ratio", "total_quantity", "avg_quantity", "margin_trailing"}
_NON_NEGATIVE = {
    "frequency", "recency", "T", "n_orders", "returns_count", "returns_amount", "days_since_first",
    "days_since_last", "ipi_std", "days_since_last_ratio", "gap_last_ratio", "return_share_count",
    "return_share_value", "days_since_last_return",
}  # fmt: skip
_AT_MOST_ONE = {"return_share_count", "return_share_value"}
_POSITIVE = {"n_purchase_days", "n_transactions", "ipi_mean"}


def _exact_dtypes(dtypes: dict[str, str]) -> pa.Check:
    # pandera treats str/object and datetime units as one type; the files promise exact dtypes.
    return pa.Check(
        lambda df: all(str(df[c].dtype) == t for c, t in dtypes.items()),
        element_wise=False, error=f"dtypes must be exactly {dtypes}",
    )  # fmt: skip


def _sorted_by_id() -> pa.Check:
    return pa.Check(lambda df: df["customer_id"].is_monotonic_increasing, error="rows sorted by customer_id")


def _column(name: str, dtype: str, unique: bool = False) -> pa.Column:
    checks = []
    if name in _NON_NEGATIVE or name.startswith(("purchases_", "season_purchases_")):
        checks.append(pa.Check.ge(0))
    if name in _AT_MOST_ONE:
        checks.append(pa.Check.le(1))
    if name in _POSITIVE:
        checks.append(pa.Check.gt(0))
    return pa.Column(dtype, checks=checks, nullable=name in _NULLABLE, unique=unique)


def features_schema(windows_days: tuple[int, ...] = DEFAULT_WINDOWS_DAYS) -> pa.DataFrameSchema:
    """Contract of features_t{k}.parquet for the given trailing windows."""
    dtypes = feature_dtypes(windows_days)
    columns = {name: _column(name, dtype, unique=name == "customer_id") for name, dtype in dtypes.items()}
    return pa.DataFrameSchema(
        columns,
        strict=True,
        ordered=True,
        checks=[
            _exact_dtypes(dtypes),
            _sorted_by_id(),
            pa.Check(lambda df: (df["frequency"] == df["n_purchase_days"] - 1).all(), error="frequency = n_purchase_days - 1"),
            pa.Check(lambda df: (df["recency"] <= df["T"]).all(), error="recency <= T"),
            pa.Check(lambda df: (df["first_purchase"] <= df["last_purchase"]).all(), error="first <= last purchase"),
            pa.Check(lambda df: (df["last_purchase"] <= df["cutoff"]).all(), error="last purchase <= cutoff"),
        ],
        metadata={"dtypes": dtypes},
        name="features",
    )  # fmt: skip


FEATURES_SCHEMA = features_schema()

LABELS_SCHEMA = pa.DataFrameSchema(
    {
        "customer_id": pa.Column("str", unique=True),
        "cutoff": pa.Column("datetime64[us]"),
        "purchased": pa.Column("int8", pa.Check.isin([0, 1])),
        "n_purchase_days": pa.Column("int64", pa.Check.ge(0)),
        "spend": pa.Column("float64"),
    },
    strict=True,
    ordered=True,
    checks=[
        _exact_dtypes(LABEL_DTYPES),
        _sorted_by_id(),
        pa.Check(lambda df: (df["purchased"] == (df["n_purchase_days"] > 0)).all(), error="purchased = n_purchase_days > 0"),
    ],
    metadata={"dtypes": LABEL_DTYPES},
    name="labels",
)  # fmt: skip


def to_contract(df: pd.DataFrame, schema: pa.DataFrameSchema) -> pd.DataFrame:
    """``df`` with the schema's columns, in order, cast to the exact contract dtypes."""
    dtypes = schema.metadata["dtypes"]
    return df[list(dtypes)].astype(dtypes).reset_index(drop=True)


_ARROW_TYPES = {
    "str": pyarrow.large_string(), "datetime64[us]": pyarrow.timestamp("us"), "int64": pyarrow.int64(),
    "int8": pyarrow.int8(), "float64": pyarrow.float64(),
}  # fmt: skip


def arrow_schema(schema: pa.DataFrameSchema) -> pyarrow.Schema:
    """The Arrow schema that reads back (pandas.read_parquet) as exactly the contract dtypes."""
    return pyarrow.schema([(name, _ARROW_TYPES[dtype]) for name, dtype in schema.metadata["dtypes"].items()])


def chunk_validator(schema: pa.DataFrameSchema) -> Callable[[pyarrow.Table], None]:
    """A check for each row group of a features or labels file before it is written: the pandera
    schema, and ids increasing across row groups (within one, the schema checks order and uniqueness)."""
    last_id: str | None = None

    def check(table: pyarrow.Table) -> None:
        nonlocal last_id
        frame = schema.validate(table.to_pandas())
        if len(frame):
            if last_id is not None and not frame["customer_id"].iloc[0] > last_id:
                raise RuntimeError(f"{schema.name}: rows not sorted by customer_id across row groups")
            last_id = frame["customer_id"].iloc[-1]

    return check


def features_summary(features: ibis.Table) -> ibis.Table:
    """One row: customers and repeat buyers (frequency > 0)."""
    return features.aggregate(
        customers=features.count(),
        repeat_buyers=features.count(where=features.frequency > 0),
    )


def labels_summary(labels: ibis.Table) -> ibis.Table:
    """One row: customers and customers who purchased in the label window."""
    return labels.aggregate(customers=labels.count(), purchasers=labels.purchased.cast("int64").sum())
