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
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features.errors import DataError
from models.clv_columns import EXPECTED_COLUMNS  # the expected CLV's 10% and 90% quantiles over the parameter draws

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
#: The "top 20%" of the Pareto 80/20 rule: the share of customers whose value (concentration) or
#: holdout spend (forecast ranking) the stage reports.
TOP_SHARE = 0.20


@dataclass(frozen=True)
class CutRule:
    """Low/high boundary of each quadrant axis: a quantile of the axis or a fixed amount."""

    method: str  # quantile | fixed
    current_value: float
    growth_potential: float


@dataclass(frozen=True)
class TierRule:
    """Tiers by value rank plus growth (see :func:`assign_tier`)."""

    top_share: float  # share of customers (by value rank) in platinum + gold
    lead_share: float  # bottom share of customers (by value rank) in lead
    lead_max_value: float  # value at or below this amount is lead whatever its rank
    growing_ratio: float  # platinum if growth_potential >= growing_ratio * current_value


@dataclass(frozen=True)
class LifecycleRule:
    """Sleep thresholds as multiples of the customer's own mean inter-purchase interval."""

    drowsy: float
    half_asleep: float
    dormant: float
    new_days: int
    one_time_buyer_interval_days: float | None  # None = population median interval


@dataclass(frozen=True)
class RelationshipRule:
    """Segment-size bands: a quadrant x tier cell holding >= many_share of the base is "many"."""

    many_share: float
    few_share: float


@dataclass(frozen=True)
class SegmentRules:
    """Every segment rule; built from params.segment by pipelines.domain.segment_rules (no defaults here)."""

    growth_potential: str  # combined | clv | value (the stage resolves params' auto to combined or value)
    value_basis: str  # total (current + growth) | current | growth
    margin: float  # margin rate applied to spend when there is no cost column
    cut: CutRule
    pyramid: tuple[tuple[str, float], ...]  # (level, share of customers), top level first
    abc: tuple[float, float]  # cumulative value shares closing classes A and B
    tier: TierRule
    lifecycle: LifecycleRule
    relationship: RelationshipRule
    uncertain_below: float  # quadrant_uncertain when quadrant_probability is below this


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


#: The input column holding the value model's prediction (growth potential method ``value``).
VALUE_PREDICTION = "value_prediction"


def resolve_growth_potential(configured: str, value_model_won: bool) -> str:
    """segment.growth_potential as a method: ``auto`` is ``value`` when the value model won on the
    holdout (metrics/value.json), else ``combined``; any other setting is itself."""
    if configured != "auto":
        return configured
    return "value" if value_model_won else "combined"


def growth_potential(
    method: str, clv: pd.Series, p_no_purchase: pd.Series, churn_probability: pd.Series,
    value_prediction: pd.Series | None = None,
) -> pd.Series:  # fmt: skip
    """Growth potential by ``method``: ``combined`` (churn x CLV), ``clv`` (CLV model alone) or
    ``value`` (the value model's predicted margin over the next horizon, models/value.py)."""
    if method == "combined":
        return growth_potential_combined(clv, p_no_purchase, churn_probability)
    if method == "clv":
        return clv.astype(float).rename("growth_potential")
    if method == "value":
        if value_prediction is None:
            raise ValueError(f"growth_potential method 'value' needs the column {VALUE_PREDICTION!r}")
        return value_prediction.astype(float).rename("growth_potential")
    raise ValueError(f"unknown growth_potential method {method!r}; use 'combined', 'clv' or 'value'")


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
    """0-based position of each customer by ``values`` descending (NaN last), ties by customer_id
    ascending. One Arrow sort on both keys: the identifiers are compared only between tied values."""
    keys = pa.table({"v": pa.array(values.to_numpy(dtype=float), from_pandas=True), "c": _arrow_ids(customer_id)})
    order = pc.sort_indices(keys, sort_keys=[("v", "descending", "at_end"), ("c", "ascending", "at_end")])
    rank = np.empty(len(values), dtype=np.int64)
    rank[order.to_numpy()] = np.arange(len(values))
    return rank


def _arrow_ids(customer_id: pd.Series) -> pa.Array:
    """The identifiers as one Arrow array (text as text: Arrow orders UTF-8 by code point, as Python does)."""
    ids = customer_id.array
    return pa.array(ids if isinstance(ids, pd.api.extensions.ExtensionArray) else customer_id.to_numpy())


def share_count(share: float, n: int) -> int:
    """Number of customers making ``share`` of ``n``, rounded half up (1% of 250 -> 3)."""
    return int(math.floor(share * n + 0.5 + SHARE_TOLERANCE))


def top_positions(rank: np.ndarray, share: float, n: int | None = None) -> np.ndarray:
    """Boolean mask of the customers in the top ``share`` of ``n`` (default: len(rank)) by rank."""
    return rank < share_count(share, len(rank) if n is None else n)


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
    code = label_codes(quadrant, QUADRANTS)
    return pd.DataFrame(
        {
            "resource_allocation": _lookup([QUADRANT_STRATEGY[q][0] for q in QUADRANTS], code),
            "retention_strategy": _lookup([QUADRANT_STRATEGY[q][1] for q in QUADRANTS], code),
        },
        index=quadrant.index,
    )


def label_codes(labels: pd.Series, known: tuple[str, ...]) -> np.ndarray:
    """Position of each label in ``known`` (-1 when unknown or missing), one hash lookup per column."""
    return pd.Index(known).get_indexer(labels)


def _lookup(table: list, code: np.ndarray) -> np.ndarray:
    """``table[code]`` for every code, with None (missing) for code -1."""
    return np.asarray([*table, None], dtype=object)[code]


# --------------------------------------------------------------------------- tiers, pyramid, ABC


def assign_tier(
    value: pd.Series,
    current: pd.Series,
    growth: pd.Series,
    high_current: pd.Series,
    rank: np.ndarray,
    rule: TierRule,
    n: int | None = None,
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
    Lead wins over the top group when both apply. ``n`` is the population size the ranks refer
    to (default: the customers given).
    """
    n = len(value) if n is None else n
    lead = (value.to_numpy(dtype=float) <= rule.lead_max_value) | (rank >= n - share_count(rule.lead_share, n))
    top = top_positions(rank, rule.top_share, n) & ~lead
    growing = growth.to_numpy(dtype=float) >= rule.growing_ratio * current.to_numpy(dtype=float)
    platinum = top & high_current.to_numpy(dtype=bool) & growing
    tier = np.full(len(value), "iron", dtype=object)
    tier[top] = "gold"
    tier[platinum] = "platinum"
    tier[lead] = "lead"
    return pd.Series(tier, index=value.index, name="tier")


def pyramid_counts(shares: tuple[tuple[str, float], ...], n: int) -> list[int]:
    """Customers in each pyramid level and the ones above it, for every level but the last."""
    bounds = np.cumsum([share for _, share in shares])
    return [share_count(float(cumulative), n) for cumulative in bounds[:-1]]


def assign_pyramid(
    rank: np.ndarray, shares: tuple[tuple[str, float], ...], index: pd.Index, n: int | None = None
) -> pd.Series:
    """Pyramid level by value rank: the first share of customers gets the first level, and so on.

    Level boundaries are cumulative counts rounded half up (top 1% of 250 customers = 3 VIPs);
    the last level takes everyone left.
    """
    n = len(rank) if n is None else n
    levels = np.full(len(rank), shares[-1][0], dtype=object)
    for (name, _), count in reversed(list(zip(shares[:-1], pyramid_counts(shares, n), strict=True))):
        levels[rank < count] = name
    return pd.Series(levels, index=index, name="pyramid_level")


def abc_counts(value: pd.Series, rank: np.ndarray, a: float, b: float) -> tuple[int, int]:
    """Customers in class A, and in A or B, by cumulative share of (non-negative) value in rank order.

    A customer is A when the value of everyone ranked before them is below ``a`` of the total
    (so A is the smallest set making the first 80%), B when it is below ``b``. Both classes are
    a prefix of the rank order (the share before a customer only grows along it), so two counts
    describe them. Customers with no value are never A or B; if nobody has value, both are 0.
    """
    clipped = value.to_numpy(dtype=float).clip(min=0.0)
    total = clipped.sum()
    if total <= 0:
        return 0, 0
    sorted_values = clipped[np.argsort(rank, kind="stable")]
    before = (np.cumsum(sorted_values) - sorted_values) / total
    valued = sorted_values > 0
    n_a = int((valued & (before < a - SHARE_TOLERANCE)).sum())
    n_ab = int((valued & (before < b - SHARE_TOLERANCE)).sum())
    return n_a, n_ab


def abc_from_counts(value: pd.Series, rank: np.ndarray, counts: tuple[int, int]) -> pd.Series:
    """ABC class from the two prefix counts of :func:`abc_counts`; no value means C."""
    valued = value.to_numpy(dtype=float) > 0
    labels = np.where(valued & (rank < counts[0]), "A", np.where(valued & (rank < counts[1]), "B", "C")).astype(object)
    return pd.Series(labels, index=value.index, name="abc_class")


def assign_abc(value: pd.Series, rank: np.ndarray, a: float, b: float) -> pd.Series:
    """ABC class by cumulative share of (non-negative) value in rank order (see :func:`abc_counts`):
    A makes the first ``a`` of the value, B the rest up to ``b``, C everyone else."""
    return abc_from_counts(value, rank, abc_counts(value, rank, a, b))


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
    days_since_first: pd.Series,
    days_since_last: pd.Series,
    ipi_mean: pd.Series,
    rule: LifecycleRule,
    fallback: float | None = None,
) -> pd.Series:
    """new / active / drowsy / half_asleep / dormant.

    new: first purchase at most ``new_days`` days before the cutoff. Otherwise the gap ratio
    days_since_last / interval (interval = the customer's mean inter-purchase interval, or the
    one-time-buyer interval ``fallback``, by default :func:`one_time_buyer_interval` of these
    customers) is compared with the multiples: ratio >= dormant -> dormant, >= half_asleep ->
    half_asleep, >= drowsy -> drowsy, else active.
    """
    if fallback is None:
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


def cell_shares(cell: pd.Series) -> dict[str, float]:
    """Share of the customers in each cell (e.g. quadrant x tier) that holds any."""
    return {str(k): float(v) for k, v in cell.value_counts(normalize=True).items() if v > 0}


CELLS = tuple(f"{q}/{t}" for q in QUADRANTS for t in TIERS)


def quadrant_tier_cells(quadrant: pd.Series, tier: pd.Series) -> pd.Series:
    """The "quadrant/tier" cell of each customer, as a categorical over :data:`CELLS` (integer
    codes, no string building per customer)."""
    code = label_codes(quadrant, QUADRANTS) * len(TIERS) + label_codes(tier, TIERS)
    return pd.Series(pd.Categorical.from_codes(code, categories=CELLS), index=quadrant.index, name="cell")


def customer_count_level(cell: pd.Series, rule: RelationshipRule, shares: dict[str, float] | None = None) -> pd.Series:
    """many / moderate / few by the share of the base in each customer's cell (e.g. quadrant x tier).

    ``shares``: the base's share per cell (default: these customers'); an unknown cell has share 0.
    """
    shares = cell_shares(cell) if shares is None else shares
    code, cells = pd.factorize(cell)
    share = np.asarray([shares.get(str(c), 0.0) for c in cells] + [0.0], dtype=float)[code]
    level = np.select([share >= rule.many_share, share < rule.few_share], ["many", "few"], default="moderate")
    return pd.Series(level.astype(object), index=cell.index, name="customer_count_level")


def tercile_counts(n: int) -> tuple[int, int]:
    return share_count(1 / 3, n), share_count(2 / 3, n)


def margin_level(rank: np.ndarray, index: pd.Index, n: int | None = None) -> pd.Series:
    """high / medium / low: the customer's value tercile by rank (top third is high)."""
    high, medium = tercile_counts(len(rank) if n is None else n)
    level = np.select([rank < high, rank < medium], ["high", "medium"], default="low")
    return pd.Series(level.astype(object), index=index, name="margin_level")


def relationship_level(customers: pd.Series, margin: pd.Series) -> pd.Series:
    """Look up the relationship table for (customer count level, margin level)."""
    row, col = label_codes(customers, CUSTOMER_COUNT_LEVELS), label_codes(margin, MARGIN_LEVELS)
    unknown = (row < 0) | (col < 0)
    if unknown.any():
        pairs = zip(customers[unknown], margin[unknown], strict=True)
        raise ValueError(f"no relationship level for {sorted({(str(c), str(m)) for c, m in pairs})}")
    table = np.asarray([[RELATIONSHIP_TABLE[(c, m)] for m in MARGIN_LEVELS] for c in CUSTOMER_COUNT_LEVELS], dtype=object)
    return pd.Series(table[row, col], index=customers.index, name="relationship_level", dtype=object)


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
    *EXPECTED_COLUMNS,
)


@dataclass(frozen=True)
class SegmentReference:
    """What labelling a customer needs from the population scored at as_of.

    Quadrant cuts, the one-time-buyer interval and the share of the base in each quadrant/tier
    cell are numbers. Every rank rule asks "is the customer among the top c by value?" for a few
    counts c; ``boundaries`` holds, per count, the ranking key (value, customer_id) of the last
    customer inside, so one customer is placed without the others. For the population itself
    this reproduces its rank labels exactly; a new customer is placed among the population.
    """

    n_customers: int
    current_value_cut: float
    growth_potential_cut: float
    one_time_buyer_interval_days: float
    abc: tuple[int, int]  # customers in A, and in A or B
    boundaries: tuple[tuple[int, float, str], ...]  # (count, value, customer_id), by count
    cell_shares: dict[str, float]

    def to_dict(self) -> dict:
        return {
            "n_customers": self.n_customers,
            "current_value_cut": self.current_value_cut,
            "growth_potential_cut": self.growth_potential_cut,
            "one_time_buyer_interval_days": self.one_time_buyer_interval_days,
            "abc": list(self.abc),
            "boundaries": [list(b) for b in self.boundaries],
            "cell_shares": dict(sorted(self.cell_shares.items())),
        }

    @classmethod
    def from_dict(cls, data: dict) -> SegmentReference:
        return cls(
            n_customers=int(data["n_customers"]),
            current_value_cut=float(data["current_value_cut"]),
            growth_potential_cut=float(data["growth_potential_cut"]),
            one_time_buyer_interval_days=float(data["one_time_buyer_interval_days"]),
            abc=(int(data["abc"][0]), int(data["abc"][1])),
            boundaries=tuple((int(c), float(v), str(i)) for c, v, i in data["boundaries"]),
            cell_shares={str(k): float(v) for k, v in data["cell_shares"].items()},
        )

    def rank(self, value: pd.Series, customer_id: pd.Series) -> np.ndarray:
        """A stand-in for each customer's 0-based rank in the population: c - 1 for the smallest
        stored count c whose top group holds the customer, ``n_customers`` when none does. Every
        rank rule compares ranks with stored counts only, so it gives the labels the true rank
        gives (and for a population member, the same labels as in the population)."""
        v = value.to_numpy(dtype=float)
        ids = customer_id.astype(str)
        rank = np.full(len(v), self.n_customers, dtype=np.int64)
        for count, last_value, last_id in sorted(self.boundaries, reverse=True):
            inside = v > last_value
            tied = np.flatnonzero(v == last_value)
            inside[tied] = ids.iloc[tied].to_numpy(dtype=object) <= last_id
            rank[inside] = count - 1
        return rank


def rank_counts(rules: SegmentRules, n: int, abc: tuple[int, int]) -> list[int]:
    """Every count c of a "top c by value" question the rank rules ask about n customers."""
    tier = [share_count(rules.tier.top_share, n), n - share_count(rules.tier.lead_share, n)]
    counts = {*tier, *pyramid_counts(rules.pyramid, n), *tercile_counts(n), *abc}
    return sorted(c for c in counts if 0 < c <= n)


def rank_boundaries(value: pd.Series, customer_id: pd.Series, rank: np.ndarray, counts: list[int]):
    """(count, value, customer_id) of the customer at rank count - 1, for every count."""
    at = np.empty(len(rank), dtype=np.int64)
    at[rank] = np.arange(len(rank))
    v = value.to_numpy(dtype=float)
    return tuple((c, float(v[at[c - 1]]), str(customer_id.iloc[at[c - 1]])) for c in counts)


@dataclass(frozen=True)
class SegmentResult:
    """Per-customer labels plus the cut points used and the population reference."""

    customers: pd.DataFrame  # customer_id, current_value, growth_potential, ..., value, churn_probability
    current_value_cut: float
    growth_potential_cut: float
    reference: SegmentReference | None = None


def segment_customers(frame: pd.DataFrame, rules: SegmentRules, reference: SegmentReference | None = None) -> SegmentResult:
    """Apply every rule to one row per customer (columns ``SEGMENT_INPUT_COLUMNS``).

    Without ``reference`` the customers are the population: cuts, ranks and cell shares are
    theirs, and the result carries the reference they define. With one (from an earlier run),
    each customer is labelled against that population, whoever else is in ``frame``.

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
    growth = growth_potential(rules.growth_potential, df["clv"], df["p_no_purchase"], df["churn_probability"],
                              df.get(VALUE_PREDICTION))  # fmt: skip
    value = customer_value(current, growth, rules.value_basis)

    if reference is None:
        n = len(df)
        rank = value_rank(value, ids)
        cv_cut = axis_cut(current, rules.cut.method, rules.cut.current_value)
        gp_cut = axis_cut(growth, rules.cut.method, rules.cut.growth_potential)
        abc = abc_counts(value, rank, *rules.abc)
        fallback = one_time_buyer_interval(df["ipi_mean"], rules.lifecycle.one_time_buyer_interval_days)
    else:
        n, rank = reference.n_customers, reference.rank(value, ids)
        cv_cut, gp_cut = reference.current_value_cut, reference.growth_potential_cut
        abc, fallback = reference.abc, reference.one_time_buyer_interval_days

    high_current = is_high(current, cv_cut)
    quadrant = assign_quadrant(high_current, is_high(growth, gp_cut))
    tier = assign_tier(value, current, growth, high_current, rank, rules.tier, n)
    cell = quadrant_tier_cells(quadrant, tier)
    if reference is None:
        boundaries = rank_boundaries(value, ids, rank, rank_counts(rules, n, abc))
        reference = SegmentReference(n, cv_cut, gp_cut, fallback, abc, boundaries, cell_shares(cell))
    relationship = relationship_level(
        customer_count_level(cell, rules.relationship, reference.cell_shares), margin_level(rank, df.index, n)
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
            assign_pyramid(rank, rules.pyramid, df.index, n),
            abc_from_counts(value, rank, abc),
            assign_lifecycle(df["days_since_first"], df["days_since_last"], df["ipi_mean"], rules.lifecycle, fallback),
            relationship,
            value,
            df["churn_probability"].astype(float),
        ],
        axis=1,
    )
    out = with_quadrant_probability(out, df, gp_cut, rules.uncertain_below)
    return SegmentResult(out, cv_cut, gp_cut, reference)


# --------------------------------------------------------------------------- quadrant probability

#: The standard normal quantile of the upper interval level (0.9): (log P90 - log P10) / (2 Z_90) is the
#: log-scale standard deviation of a log-normal with those quantiles.
Z_90 = 1.2815515655446004


def log_spread(p10, p90) -> np.ndarray:
    """Log-scale standard deviation of a log-normal with 10% and 90% quantiles ``p10``, ``p90``: 0 when
    they are equal (every draw the same, or one draw), inf when only ``p10`` is 0 (a draw at 0)."""
    p10, p90 = (np.asarray(v, dtype=float) for v in (p10, p90))
    with np.errstate(divide="ignore", invalid="ignore"):
        spread = (np.log(p90) - np.log(p10)) / (2.0 * Z_90)
    return np.where((p90 <= p10) | ~np.isfinite(p10) | ~np.isfinite(p90), 0.0, np.where(p10 > 0, spread, np.inf))


def quadrant_probability(growth: pd.Series, p10: pd.Series, p90: pd.Series, cut: float) -> pd.Series:
    """Probability that the customer's EXPECTED growth potential lies on the same side of the cut as
    its point value (the current-value axis is observed: certain), so the probability of its quadrant
    given the parameter uncertainty of the CLV model.

    ``p10``, ``p90`` are the 10% and 90% quantiles of the expected CLV over the bootstrap parameter
    draws (clv_expected_p10/p90). The growth potential's draws are the CLV's scaled by growth / clv,
    which leaves the log-scale spread unchanged, so the growth potential under parameter uncertainty
    is taken as log-normal centred on its point value g with the CLV draws' log spread s
    (:func:`log_spread`): P = Phi(|log g - log cut| / s). At the cut it is 0.5; it reaches 0.9 when
    the cut is as far from g as the draws' P10 or P90 (on log scale); s = 0 (no spread) gives 1. High
    means strictly above the cut, as in :func:`is_high`; a point value or a cut <= 0 is certain (the
    draws are non-negative multiples of the point value)."""
    from scipy.special import ndtr  # lazily: pipelines/contracts.py imports this module

    g = growth.to_numpy(dtype=float)
    s = log_spread(p10.to_numpy(dtype=float), p90.to_numpy(dtype=float))
    certain = (g <= 0) | (cut <= 0) | (s == 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.abs(np.log(np.where(certain, 1.0, g)) - math.log(cut if cut > 0 else 1.0)) / np.where(certain, 1.0, s)
    prob = np.where(certain, 1.0, ndtr(z))
    return pd.Series(prob, index=growth.index, name="quadrant_probability")


def with_quadrant_probability(labelled: pd.DataFrame, frame: pd.DataFrame, cut: float,
                              uncertain_below: float) -> pd.DataFrame:  # fmt: skip
    """``labelled`` (segment_customers' rows) with quadrant_probability and quadrant_uncertain (1 when
    the probability is below ``uncertain_below``), from the expected-CLV quantile columns of ``frame``
    (same rows)."""
    missing = [c for c in EXPECTED_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"segment input lacks columns {missing}")
    prob = quadrant_probability(labelled["growth_potential"], *(frame[c] for c in EXPECTED_COLUMNS), cut)
    prob.index = labelled.index
    return labelled.assign(quadrant_probability=prob, quadrant_uncertain=(prob < uncertain_below).astype("int64"))


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
    score: pd.Series, amount: pd.Series, customer_id: pd.Series, share: float = TOP_SHARE
) -> float:
    """Share of the total ``amount`` held by the top ``share`` of customers ranked by ``score``
    (ties by customer_id). NaN when the total is 0."""
    total = float(amount.sum())
    if total == 0:
        return float("nan")
    top = top_positions(value_rank(score, customer_id), share)
    return float(amount.to_numpy(dtype=float)[top].sum() / total)


def concentration(value: pd.Series, customer_id: pd.Series, top_share: float = TOP_SHARE) -> dict[str, float]:
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
    actual: pd.Series, forecasts: dict[str, pd.Series], customer_id: pd.Series, top_share: float = TOP_SHARE
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
