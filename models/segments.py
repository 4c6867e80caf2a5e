"""Customer segmentation rules: value-potential quadrants, tiers, pyramid, ABC, lifecycle, relationship.

Pure functions on pandas/numpy data; every rule is configured by the small frozen dataclasses
below (the pipeline builds them from ``params.segment``). Money is in the currency of the
transactions; "value" is a margin (profit), never revenue.

Ranking convention used by every rank-based rule (pyramid, ABC, tiers, margin terciles,
top-share capture): customers are ordered by the ranked quantity descending, ties broken by
``customer_id`` ascending, so the same input always gives the same labels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from features.errors import DataError

QUADRANTS = ("I", "II", "III", "IV")
TIERS = ("platinum", "gold", "iron", "lead")
PYRAMID_LEVELS = ("vip", "major", "ordinary", "small")
ABC_CLASSES = ("A", "B", "C")
LIFECYCLE_STATES = ("new", "active", "drowsy", "half_asleep", "dormant")
RELATIONSHIP_LEVELS = ("basic", "reactive", "accountable", "proactive", "partnership")
CUSTOMER_COUNT_LEVELS = ("many", "moderate", "few")
MARGIN_LEVELS = ("high", "medium", "low")

# Value-potential matrix: quadrant -> (resource allocation, retention strategy).
QUADRANT_STRATEGY: dict[str, tuple[str, str]] = {
    "I": ("no investment", "let the relationship go (minimise cost to serve)"),
    "II": ("moderate investment", "rebuild / develop the relationship"),
    "III": ("key investment", "keep the relationship at a high level"),
    "IV": ("top priority", "spare no effort to keep and grow the relationship"),
}

# Relationship level by (customers in the segment, margin per customer). The table's
# "basic or reactive" cell (many customers, low margin) resolves to the cheaper "basic".
RELATIONSHIP_TABLE: dict[tuple[str, str], str] = {
    ("many", "high"): "accountable",
    ("many", "medium"): "reactive",
    ("many", "low"): "basic",
    ("moderate", "high"): "proactive",
    ("moderate", "medium"): "accountable",
    ("moderate", "low"): "reactive",
    ("few", "high"): "partnership",
    ("few", "medium"): "proactive",
    ("few", "low"): "accountable",
}

# Smallest P(>= 1 purchase in the horizon) divided by in the combined growth potential.
MIN_PURCHASE_PROBABILITY = 1e-6
# Relative tolerance of cumulative-share comparisons (80% of value must mean 80%, not 79.999...%).
SHARE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class CutRule:
    """Low/high boundary of each quadrant axis: a quantile of the axis or a fixed amount."""

    method: str = "quantile"  # quantile | fixed
    current_value: float = 0.5
    growth_potential: float = 0.5


@dataclass(frozen=True)
class TierRule:
    """Tiers by value rank plus growth (see :func:`assign_tier`)."""

    top_share: float = 0.20  # share of customers (by value rank) in platinum + gold
    lead_share: float = 0.20  # bottom share of customers (by value rank) in lead
    lead_max_value: float = 0.0  # value at or below this amount is lead whatever its rank
    growing_ratio: float = 1.0  # platinum if growth_potential >= growing_ratio * current_value


@dataclass(frozen=True)
class LifecycleRule:
    """Sleep thresholds as multiples of the customer's own mean inter-purchase interval."""

    drowsy: float = 1.5
    half_asleep: float = 2.5
    dormant: float = 4.0
    new_days: int = 90
    one_time_buyer_interval_days: float | None = None  # None = population median interval


@dataclass(frozen=True)
class RelationshipRule:
    """Segment-size bands: a quadrant x tier cell holding >= many_share of the base is "many"."""

    many_share: float = 0.10
    few_share: float = 0.02


@dataclass(frozen=True)
class SegmentRules:
    growth_potential: str = "combined"  # combined | clv
    value_basis: str = "total"  # total (current + growth) | current | growth
    margin: float = 0.30  # margin rate applied to spend when there is no cost column
    cut: CutRule = field(default_factory=CutRule)
    pyramid: tuple[tuple[str, float], ...] = (("vip", 0.01), ("major", 0.04), ("ordinary", 0.15), ("small", 0.80))
    abc: tuple[float, float] = (0.80, 0.95)
    tier: TierRule = field(default_factory=TierRule)
    lifecycle: LifecycleRule = field(default_factory=LifecycleRule)
    relationship: RelationshipRule = field(default_factory=RelationshipRule)


# --------------------------------------------------------------------------- value axes


def current_value(spend_trailing: pd.Series, margin_trailing: pd.Series, margin: float) -> pd.Series:
    """Realised margin over the trailing horizon: ``margin_trailing`` where a cost column gave it,
    else ``spend_trailing * margin``."""
    estimated = spend_trailing.astype(float) * margin
    return margin_trailing.astype(float).where(margin_trailing.notna(), estimated).rename("current_value")


def growth_potential_combined(
    clv: pd.Series, p_no_purchase: pd.Series, churn_probability: pd.Series
) -> pd.Series:
    """Predicted margin over the horizon with the churn classifier's P(active).

    ``clv`` is the discounted expected margin E[purchases] x spend x margin; dividing by
    P(>= 1 purchase) = 1 - p_no_purchase gives the value given at least one purchase, which is
    then weighted by the classifier's P(active) = 1 - churn_probability. The divisor is floored
    at ``MIN_PURCHASE_PROBABILITY`` so that p_no_purchase -> 1 stays finite.
    """
    p_active_model = (1.0 - p_no_purchase.astype(float)).clip(lower=MIN_PURCHASE_PROBABILITY)
    p_active = 1.0 - churn_probability.astype(float)
    return (p_active * clv.astype(float) / p_active_model).rename("growth_potential")


def growth_potential(
    method: str, clv: pd.Series, p_no_purchase: pd.Series, churn_probability: pd.Series
) -> pd.Series:
    """Growth potential by ``method``: ``combined`` (churn x CLV) or ``clv`` (CLV model alone)."""
    if method == "combined":
        return growth_potential_combined(clv, p_no_purchase, churn_probability)
    if method == "clv":
        return clv.astype(float).rename("growth_potential")
    raise ValueError(f"unknown growth_potential method {method!r}; use 'combined' or 'clv'")


def customer_value(current: pd.Series, growth: pd.Series, basis: str) -> pd.Series:
    """The value that ranks customers for tiers, pyramid, ABC and concentration.

    ``total`` = current + growth (last horizon's realised margin plus the next horizon's
    predicted margin), ``current`` or ``growth`` alone.
    """
    if basis == "total":
        return (current.astype(float) + growth.astype(float)).rename("value")
    if basis == "current":
        return current.astype(float).rename("value")
    if basis == "growth":
        return growth.astype(float).rename("value")
    raise ValueError(f"unknown value_basis {basis!r}; use 'total', 'current' or 'growth'")


# --------------------------------------------------------------------------- ranks


def value_rank(values: pd.Series, customer_id: pd.Series) -> np.ndarray:
    """0-based position of each customer by ``values`` descending, ties by customer_id ascending."""
    order = pd.DataFrame({"v": values.to_numpy(dtype=float), "c": customer_id.to_numpy(), "i": np.arange(len(values))})
    order = order.sort_values(["v", "c"], ascending=[False, True], kind="mergesort")
    rank = np.empty(len(values), dtype=np.int64)
    rank[order["i"].to_numpy()] = np.arange(len(values))
    return rank


def share_count(share: float, n: int) -> int:
    """Number of customers making ``share`` of ``n``, rounded half up (1% of 250 -> 3)."""
    return int(math.floor(share * n + 0.5 + SHARE_TOLERANCE))


def top_positions(rank: np.ndarray, share: float) -> np.ndarray:
    """Boolean mask of the customers in the top ``share`` by rank."""
    return rank < share_count(share, len(rank))


# --------------------------------------------------------------------------- quadrants


def axis_cut(values: pd.Series, method: str, setting: float) -> float:
    """Cut point of one axis: the ``setting`` quantile (linear interpolation) or the fixed amount."""
    if method == "quantile":
        if not 0.0 <= setting <= 1.0:
            raise ValueError(f"quantile cut must be in [0, 1], got {setting}")
        return float(np.quantile(values.to_numpy(dtype=float), setting)) if len(values) else 0.0
    if method == "fixed":
        return float(setting)
    raise ValueError(f"unknown cut method {method!r}; use 'quantile' or 'fixed'")


def is_high(values: pd.Series, cut: float) -> pd.Series:
    """High = strictly above the cut; a value equal to the cut is low.

    With a quantile cut this keeps customers tied at the cut together: when the median current
    value is 0 (most customers bought nothing in the last horizon), high means any positive
    value, and fewer than half the customers are high.
    """
    return values.astype(float) > cut


def assign_quadrant(high_current: pd.Series, high_growth: pd.Series) -> pd.Series:
    """I low/low, II low current/high growth, III high current/low growth, IV high/high."""
    code = high_current.astype(int).to_numpy() * 2 + high_growth.astype(int).to_numpy()
    return pd.Series(np.asarray(QUADRANTS, dtype=object)[code], index=high_current.index, name="quadrant")


def quadrant_strategies(quadrant: pd.Series) -> pd.DataFrame:
    """Resource allocation and retention strategy text of each customer's quadrant."""
    return pd.DataFrame(
        {
            "resource_allocation": quadrant.map({q: s[0] for q, s in QUADRANT_STRATEGY.items()}),
            "retention_strategy": quadrant.map({q: s[1] for q, s in QUADRANT_STRATEGY.items()}),
        },
        index=quadrant.index,
    )


# --------------------------------------------------------------------------- tiers, pyramid, ABC


def assign_tier(
    value: pd.Series,
    current: pd.Series,
    growth: pd.Series,
    high_current: pd.Series,
    rank: np.ndarray,
    rule: TierRule,
) -> pd.Series:
    """Platinum / gold / iron / lead.

    - lead: value <= ``lead_max_value`` (brings nothing, or costs more than it brings), or in
      the bottom ``lead_share`` by value rank (lowest spend);
    - platinum: in the top ``top_share`` by value rank, high current value on the matrix axis
      (profitable now, not only by forecast) and still growing: predicted value >=
      ``growing_ratio`` x realised current value;
    - gold: the rest of the top ``top_share`` (valuable, but little growth left or not yet
      proven by recent purchases);
    - iron: everyone else (the many customers with limited spend).
    Lead wins over the top group when both apply.
    """
    n = len(value)
    lead = (value.to_numpy(dtype=float) <= rule.lead_max_value) | (rank >= n - share_count(rule.lead_share, n))
    top = top_positions(rank, rule.top_share) & ~lead
    growing = growth.to_numpy(dtype=float) >= rule.growing_ratio * current.to_numpy(dtype=float)
    platinum = top & high_current.to_numpy(dtype=bool) & growing
    tier = np.full(n, "iron", dtype=object)
    tier[top] = "gold"
    tier[platinum] = "platinum"
    tier[lead] = "lead"
    return pd.Series(tier, index=value.index, name="tier")


def assign_pyramid(rank: np.ndarray, shares: tuple[tuple[str, float], ...], index: pd.Index) -> pd.Series:
    """Pyramid level by value rank: the first share of customers gets the first level, and so on.

    Level boundaries are cumulative counts rounded half up (top 1% of 250 customers = 3 VIPs);
    the last level takes everyone left.
    """
    n = len(rank)
    levels = np.full(n, shares[-1][0], dtype=object)
    bounds = np.cumsum([share for _, share in shares])
    for (name, _), cumulative in reversed(list(zip(shares[:-1], bounds[:-1], strict=True))):
        levels[rank < share_count(float(cumulative), n)] = name
    return pd.Series(levels, index=index, name="pyramid_level")


def assign_abc(value: pd.Series, rank: np.ndarray, a: float, b: float) -> pd.Series:
    """ABC class by cumulative share of (non-negative) value in rank order.

    A customer is A when the value of everyone ranked before them is below ``a`` of the total
    (so A is the smallest set making the first 80%), B when it is below ``b``, else C.
    Negative values count as 0; customers with no value are C; if nobody has value, all are C.
    """
    clipped = value.to_numpy(dtype=float).clip(min=0.0)
    total = clipped.sum()
    labels = np.full(len(clipped), "C", dtype=object)
    if total <= 0:
        return pd.Series(labels, index=value.index, name="abc_class")
    order = np.argsort(rank, kind="stable")
    sorted_values = clipped[order]
    before = (np.cumsum(sorted_values) - sorted_values) / total
    sorted_labels = np.where(
        sorted_values <= 0, "C", np.where(before < a - SHARE_TOLERANCE, "A", np.where(before < b - SHARE_TOLERANCE, "B", "C"))
    )
    labels[order] = sorted_labels
    return pd.Series(labels, index=value.index, name="abc_class")


# --------------------------------------------------------------------------- lifecycle


def one_time_buyer_interval(ipi_mean: pd.Series, configured: float | None) -> float:
    """Interval (days) assumed for customers without one: the configured value, else the median
    ``ipi_mean`` of customers who have one."""
    if configured is not None:
        return float(configured)
    defined = ipi_mean.dropna()
    defined = defined[defined > 0]
    if defined.empty:
        raise DataError(
            "no customer has a repeat purchase, so the median purchase interval is undefined; "
            "set segment.lifecycle.one_time_buyer_interval_days in params.yaml"
        )
    return float(defined.median())


def assign_lifecycle(
    days_since_first: pd.Series, days_since_last: pd.Series, ipi_mean: pd.Series, rule: LifecycleRule
) -> pd.Series:
    """new / active / drowsy / half_asleep / dormant.

    new: first purchase at most ``new_days`` days before the cutoff. Otherwise the gap ratio
    days_since_last / interval (interval = the customer's mean inter-purchase interval, or the
    one-time-buyer interval) is compared with the multiples: ratio >= dormant -> dormant,
    >= half_asleep -> half_asleep, >= drowsy -> drowsy, else active.
    """
    fallback = one_time_buyer_interval(ipi_mean, rule.one_time_buyer_interval_days)
    interval = ipi_mean.astype(float).where(ipi_mean.astype(float) > 0, fallback)
    ratio = days_since_last.to_numpy(dtype=float) / interval.to_numpy(dtype=float)
    state = np.select(
        [ratio >= rule.dormant, ratio >= rule.half_asleep, ratio >= rule.drowsy],
        ["dormant", "half_asleep", "drowsy"],
        default="active",
    ).astype(object)
    state[days_since_first.to_numpy(dtype=float) <= rule.new_days] = "new"
    return pd.Series(state, index=days_since_first.index, name="lifecycle_state")


# --------------------------------------------------------------------------- relationship


def customer_count_level(cell: pd.Series, rule: RelationshipRule) -> pd.Series:
    """many / moderate / few by the share of the base in each customer's cell (e.g. quadrant x tier)."""
    share = cell.map(cell.value_counts(normalize=True)).astype(float)
    level = np.where(share >= rule.many_share, "many", np.where(share < rule.few_share, "few", "moderate"))
    return pd.Series(level.astype(object), index=cell.index, name="customer_count_level")


def margin_level(rank: np.ndarray, index: pd.Index) -> pd.Series:
    """high / medium / low: the customer's value tercile by rank (top third is high)."""
    n = len(rank)
    level = np.where(rank < share_count(1 / 3, n), "high", np.where(rank < share_count(2 / 3, n), "medium", "low"))
    return pd.Series(level.astype(object), index=index, name="margin_level")


def relationship_level(customers: pd.Series, margin: pd.Series) -> pd.Series:
    """Look up the relationship table for (customer count level, margin level)."""
    keys = list(zip(customers, margin, strict=True))
    unknown = {k for k in keys if k not in RELATIONSHIP_TABLE}
    if unknown:
        raise ValueError(f"no relationship level for {sorted(unknown)}")
    return pd.Series([RELATIONSHIP_TABLE[k] for k in keys], index=customers.index, name="relationship_level", dtype=object)


# --------------------------------------------------------------------------- all rules


SEGMENT_INPUT_COLUMNS = (
    "customer_id",
    "spend_trailing",
    "margin_trailing",
    "days_since_first",
    "days_since_last",
    "ipi_mean",
    "clv",
    "p_no_purchase",
    "churn_probability",
)


@dataclass(frozen=True)
class SegmentResult:
    """Per-customer labels plus the cut points used."""

    customers: pd.DataFrame  # customer_id, current_value, growth_potential, ..., value, churn_probability
    current_value_cut: float
    growth_potential_cut: float


def segment_customers(frame: pd.DataFrame, rules: SegmentRules) -> SegmentResult:
    """Apply every rule to one row per customer (columns ``SEGMENT_INPUT_COLUMNS``).

    Returns the labelled customers in input order with the contract columns (without as_of) plus
    ``value`` (the ranking basis) and ``churn_probability`` for the summary.
    """
    missing = [c for c in SEGMENT_INPUT_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"segment input lacks columns {missing}")
    df = frame.reset_index(drop=True)
    ids = df["customer_id"]
    current = current_value(df["spend_trailing"], df["margin_trailing"], rules.margin)
    growth_clv = df["clv"].astype(float).rename("growth_potential_clv")
    growth = growth_potential(rules.growth_potential, df["clv"], df["p_no_purchase"], df["churn_probability"])
    value = customer_value(current, growth, rules.value_basis)
    rank = value_rank(value, ids)

    cv_cut = axis_cut(current, rules.cut.method, rules.cut.current_value)
    gp_cut = axis_cut(growth, rules.cut.method, rules.cut.growth_potential)
    high_current = is_high(current, cv_cut)
    quadrant = assign_quadrant(high_current, is_high(growth, gp_cut))
    tier = assign_tier(value, current, growth, high_current, rank, rules.tier)
    cell = quadrant + "/" + tier
    relationship = relationship_level(
        customer_count_level(cell, rules.relationship), margin_level(rank, df.index)
    )
    out = pd.concat(
        [
            ids.rename("customer_id"),
            current,
            growth,
            growth_clv,
            quadrant,
            quadrant_strategies(quadrant),
            tier,
            assign_pyramid(rank, rules.pyramid, df.index),
            assign_abc(value, rank, *rules.abc),
            assign_lifecycle(df["days_since_first"], df["days_since_last"], df["ipi_mean"], rules.lifecycle),
            relationship,
            value,
            df["churn_probability"].astype(float),
        ],
        axis=1,
    )
    return SegmentResult(out, cv_cut, gp_cut)


# --------------------------------------------------------------------------- concentration


def lorenz_curve(values: pd.Series | np.ndarray, points: int = 101) -> pd.DataFrame:
    """Lorenz curve of non-negative values (negatives count as 0) at ``points`` evenly spaced
    customer shares: share_of_customers (poorest first) -> share_of_value.

    The exact curve is piecewise linear through (k/n, cumulative share of the k smallest);
    it is read off at the grid by linear interpolation. All-zero values give the diagonal.
    """
    x = np.sort(np.asarray(values, dtype=float).clip(min=0.0))
    n = len(x)
    grid = np.linspace(0.0, 1.0, points)
    if n == 0 or x.sum() <= 0:
        return pd.DataFrame({"share_of_customers": grid, "share_of_value": grid})
    knots_x = np.arange(n + 1) / n
    knots_y = np.concatenate([[0.0], np.cumsum(x) / x.sum()])
    return pd.DataFrame({"share_of_customers": grid, "share_of_value": np.interp(grid, knots_x, knots_y)})


def gini(values: pd.Series | np.ndarray) -> float:
    """Gini coefficient of non-negative values (negatives count as 0): mean absolute difference
    over twice the mean. 0 when all are equal, (n - 1) / n when one customer holds everything."""
    x = np.sort(np.asarray(values, dtype=float).clip(min=0.0))
    n = len(x)
    if n == 0 or x.sum() <= 0:
        return 0.0
    i = np.arange(1, n + 1)
    return float(2.0 * np.sum(i * x) / (n * x.sum()) - (n + 1) / n)


def top_share_of_total(
    score: pd.Series, amount: pd.Series, customer_id: pd.Series, share: float = 0.20
) -> float:
    """Share of the total ``amount`` held by the top ``share`` of customers ranked by ``score``
    (ties by customer_id). NaN when the total is 0."""
    total = float(amount.sum())
    if total == 0:
        return float("nan")
    top = top_positions(value_rank(score, customer_id), share)
    return float(amount.to_numpy(dtype=float)[top].sum() / total)


def concentration(value: pd.Series, customer_id: pd.Series, top_share: float = 0.20) -> dict[str, float]:
    """Share of value from the top ``top_share`` customers and the Gini coefficient, on value
    clipped at 0 (customers whose returns exceed purchases bring nothing, not less)."""
    clipped = value.astype(float).clip(lower=0.0)
    return {
        "top_share": top_share,
        "top_share_of_value": top_share_of_total(clipped, clipped, customer_id, top_share),
        "gini": gini(clipped),
    }


# --------------------------------------------------------------------------- summary


def summarise_segments(segments: pd.DataFrame) -> pd.DataFrame:
    """Per quadrant and per tier: customers and their share, summed current and predicted value,
    summed ranking value and its share, mean churn probability.

    ``segments`` is the output of :func:`segment_customers`. Rows: one per (group_by, segment)
    in the fixed order I..IV then platinum..lead; empty segments appear with zeros.
    """
    n = len(segments)
    total_value = float(segments["value"].sum())
    total_current = float(segments["current_value"].sum())
    total_growth = float(segments["growth_potential"].sum())
    rows = []
    for group_by, labels in (("quadrant", QUADRANTS), ("tier", TIERS)):
        grouped = segments.groupby(group_by, sort=False)
        for label in labels:
            part = grouped.get_group(label) if label in grouped.groups else segments.iloc[0:0]
            rows.append(
                {
                    "group_by": group_by,
                    "segment": label,
                    "customers": len(part),
                    "share_of_customers": len(part) / n if n else float("nan"),
                    "current_value": float(part["current_value"].sum()),
                    "predicted_value": float(part["growth_potential"].sum()),
                    "value": float(part["value"].sum()),
                    "share_of_current_value": _share(part["current_value"].sum(), total_current),
                    "share_of_predicted_value": _share(part["growth_potential"].sum(), total_growth),
                    "share_of_value": _share(part["value"].sum(), total_value),
                    "mean_churn_probability": float(part["churn_probability"].mean()) if len(part) else float("nan"),
                }
            )
    return pd.DataFrame(rows)


def _share(part: float, total: float) -> float:
    return float(part) / total if total != 0 else float("nan")


def label_counts(segments: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Customers per label of each categorical column, every known label present (0 if empty)."""
    known = {
        "quadrant": QUADRANTS,
        "tier": TIERS,
        "pyramid_level": PYRAMID_LEVELS,
        "abc_class": ABC_CLASSES,
        "lifecycle_state": LIFECYCLE_STATES,
        "relationship_level": RELATIONSHIP_LEVELS,
    }
    counts = {}
    for column, labels in known.items():
        observed = segments[column].value_counts()
        counts[column] = {label: int(observed.get(label, 0)) for label in labels}
    return counts


# --------------------------------------------------------------------------- holdout check


def rank_forecasts(
    actual: pd.Series, forecasts: dict[str, pd.Series], customer_id: pd.Series, top_share: float = 0.20
) -> dict[str, dict[str, float]]:
    """How well each forecast ranks customers by the actual holdout amount.

    Per forecast: Spearman rank correlation with ``actual`` and the share of the actual total
    captured by the forecast's top ``top_share`` customers; plus ``oracle`` = the capture of a
    perfect ranking (the ceiling of that number).
    """
    from scipy.stats import spearmanr

    out: dict[str, dict[str, float]] = {}
    for name, forecast in forecasts.items():
        rho = spearmanr(forecast.to_numpy(dtype=float), actual.to_numpy(dtype=float)).statistic
        out[name] = {
            "spearman": float(rho),
            "top_share_capture": top_share_of_total(forecast, actual, customer_id, top_share),
        }
    out["oracle"] = {"top_share_capture": top_share_of_total(actual, actual, customer_id, top_share)}
    return out
