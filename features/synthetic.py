"""Seeded synthetic retail transactions with known BG/NBD and Gamma-Gamma parameters.

The population (rates per day, amounts in currency units):

- purchase rate of customer i: lambda_i ~ Gamma(shape r, rate alpha);
- dropout: after each repeat purchase the customer leaves for good with probability
  p_i ~ Beta(a, b) (BG/NBD: nobody leaves at the first purchase);
- spend: nu_i ~ Gamma(shape spend_q, rate spend_gamma); an order is worth
  z ~ Gamma(shape spend_p, rate nu_i) (Gamma-Gamma), split over 1 + Poisson(extra_lines_mean)
  order lines whose amounts are Gamma(spend_p / lines, nu_i), so they add up to z exactly;
- first purchases are spread over the whole period (staggered acquisition): uniformly, or with
  density proportional to exp(g t / period) when ``acquisition_growth`` g > 0 (a growing base);
- seasonality: purchases follow a homogeneous Poisson process in "operational time", mapped to
  calendar time through an hourly intensity (hour of day x day of week x an annual cosine wave)
  whose mean over the period is 1, so lambda is the average purchases per calendar day;
- returns: a purchased line is returned with probability return_prob after an exponential delay
  (a negative row with the purchase's order_id, when it falls inside the period);
- noise: extra copies of clean rows, each broken in one way that ingest quarantines (one kind
  per reason of features.ingest.REASONS), at ``noise_rate`` noise rows per clean row.

Customers are simulated in blocks of ``customers_per_block``; block ``k`` draws from its own
stream ``SeedSequence(seed, spawn_key=(k,))``, so the rows do not depend on the chunk size and a
block can be generated without the others. Output columns are text, like a raw export:
customer_id (zero-padded digits), timestamp (``%Y-%m-%d %H:%M:%S``), amount, quantity,
order_id (``<customer_id>-<nnnn>``), cost.

Named worlds (``WORLD_PRESETS``, ``cvp generate --world``): ``default`` (these defaults) and
``retail`` (a young, behaviour-driven base calibrated to a real base's churn difficulty).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from scipy import optimize, special

from features.behaviours import BEHAVIOURS, DEFAULT_STRENGTH, Behaviours, Traits
from features.frames import fixed_size_tables
from features.ingest import REASONS

TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S"
# data.columns mapping for generated files (role -> column); map all of them so every noise
# kind is caught (with order_id unmapped, duplicate lines are indistinguishable from real ones).
COLUMNS = {
    "customer_id": "customer_id",
    "timestamp": "timestamp",
    "amount": "amount",
    "order_id": "order_id",
    "quantity": "quantity",
    "cost": "cost",
}
OUTPUT_COLUMNS = ("customer_id", "timestamp", "amount", "quantity", "order_id", "cost")
TRUTH_COLUMNS = ("noise_kind", "is_return")
NOISE_KINDS: tuple[str, ...] = REASONS
DEFAULT_CHUNK_ROWS = 1 << 18
MIN_DROPOUT = 1e-12  # floor of a customer's dropout probability (geometric lifetimes need p > 0)

# Text written in place of the clean value, per noise kind: (column, variants); None = null.
_NOISE_TEXT: dict[str, tuple[str | None, tuple[str | None, ...]]] = {
    "missing_customer_id": ("customer_id", ("", "   ")),
    "missing_timestamp": ("timestamp", (None, "")),
    "unparseable_timestamp": ("timestamp", ("not a date", "2023-02-30 10:00:00", "31/12/2023 10:00")),
    "implausible_timestamp": ("timestamp", ("1900-01-01 00:00:00", "2999-12-31 23:59:59")),
    "missing_amount": ("amount", (None, "", " ")),
    "non_numeric_amount": ("amount", ("abc", "inf", "NaN", "12.34.5", "12 EUR 50")),
    "non_numeric_quantity": ("quantity", ("two", "1/2")),
    "non_numeric_cost": ("cost", ("cheap", "-inf")),
    "duplicate_order_line": (None, ()),
}

_HOUR_WEIGHTS = (
    0.2, 0.1, 0.1, 0.1, 0.1, 0.2, 0.4, 0.7, 1.0, 1.2, 1.4, 1.5,
    1.6, 1.5, 1.4, 1.3, 1.3, 1.4, 1.6, 1.7, 1.6, 1.3, 0.9, 0.5,
)


@dataclass(frozen=True)
class SyntheticParams:
    """True parameters of the simulated population (rates per calendar day)."""

    r: float = 0.6                  # BG/NBD: purchase-rate shape
    alpha: float = 30.0             # BG/NBD: purchase-rate rate (days); mean rate r/alpha per day
    a: float = 0.8                  # BG/NBD: dropout Beta(a, b)
    b: float = 2.5
    spend_p: float = 6.0            # Gamma-Gamma p (order value shape)
    spend_q: float = 4.0            # Gamma-Gamma q
    spend_gamma: float = 20.0       # Gamma-Gamma gamma (lifetimes calls it v); E[order] = p*gamma/(q-1)
    start: dt.date = dt.date(2023, 1, 1)
    period_days: int = 730
    weekday_weights: tuple[float, ...] = (0.95, 0.9, 0.95, 1.0, 1.1, 1.3, 0.8)  # Monday..Sunday
    hour_weights: tuple[float, ...] = _HOUR_WEIGHTS
    annual_amplitude: float = 0.2   # relative amplitude of the yearly cosine wave (0 = none)
    annual_peak_day: int = 350      # day of the year with the most purchases
    extra_lines_mean: float = 0.5   # lines per order = 1 + Poisson(this)
    extra_quantity_mean: float = 0.4  # units per line = 1 + Poisson(this)
    cost_share: tuple[float, float] = (0.55, 0.85)  # line cost = amount * Uniform(low, high)
    return_prob: float = 0.03       # probability that a purchased line is returned
    return_delay_days: float = 14.0  # mean delay between purchase and return
    noise_rate: float = 0.002       # noise rows per clean row
    customers_per_block: int = 20_000  # simulation block (part of the seed's meaning)
    # arrivals: first purchases have density proportional to exp(g * t / period) over the period,
    # so the last day sees exp(g) times the first day's newcomers (0 = uniform, the default world)
    acquisition_growth: float = 0.0

    def __post_init__(self) -> None:
        if min(self.r, self.alpha, self.a, self.b, self.spend_p, self.spend_q, self.spend_gamma) <= 0:
            raise ValueError("r, alpha, a, b, spend_p, spend_q and spend_gamma must be positive")
        if self.period_days <= 0 or self.customers_per_block <= 0:
            raise ValueError("period_days and customers_per_block must be positive")
        if len(self.weekday_weights) != 7 or len(self.hour_weights) != 24:
            raise ValueError("weekday_weights needs 7 values and hour_weights 24")
        if not 0 <= self.annual_amplitude < 1:
            raise ValueError("annual_amplitude must be in [0, 1)")
        if not (0 <= self.return_prob < 1 and 0 <= self.noise_rate < 1):
            raise ValueError("return_prob and noise_rate must be in [0, 1)")
        if not (math.isfinite(self.acquisition_growth) and 0 <= self.acquisition_growth <= 20):
            raise ValueError("acquisition_growth must be in [0, 20]")

    @property
    def end(self) -> dt.date:
        """First day after the period."""
        return self.start + dt.timedelta(days=self.period_days)

    def bgnbd(self, time_unit: str = "D") -> dict[str, float]:
        """BG/NBD parameters (r, alpha, a, b) in days (D) or weeks (W; alpha scales with the unit)."""
        scale = {"D": 1.0, "W": 1.0 / 7.0}[time_unit]
        return {"r": self.r, "alpha": self.alpha * scale, "a": self.a, "b": self.b}

    def gamma_gamma(self) -> dict[str, float]:
        """Gamma-Gamma parameters of the order value, in lifetimes' names (p, q, v)."""
        return {"p": self.spend_p, "q": self.spend_q, "v": self.spend_gamma}

    def mean_order_value(self) -> float:
        """E[order value] = p * gamma / (q - 1) (infinite when q <= 1)."""
        return math.inf if self.spend_q <= 1 else self.spend_p * self.spend_gamma / (self.spend_q - 1)

    def to_dict(self) -> dict:
        """JSON-ready fields; ``acquisition_growth`` only when set (the default world's record is unchanged)."""
        return {k: (v.isoformat() if isinstance(v, dt.date) else list(v) if isinstance(v, tuple) else v)
                for k, v in asdict(self).items() if k != "acquisition_growth" or v}

    def birth_times(self, u: np.ndarray, total: float) -> np.ndarray:
        """First-purchase times in (0, total) from uniform draws ``u``: the inverse of the
        arrival distribution (density proportional to exp(g t / total), g = acquisition_growth)."""
        g = self.acquisition_growth
        if not g:
            return u * total
        return total * np.log1p(u * math.expm1(g)) / g

    def horizon_weights(self, h: np.ndarray, total: float) -> np.ndarray:
        """Density (per unit of total) of a customer's horizon ``h`` = total - first purchase."""
        g = self.acquisition_growth
        if not g:
            return np.ones_like(h)
        return g * np.exp(g * (total - h) / total) / math.expm1(g)


# --- BG/NBD expectations (used for calibration and by the tests) ------------------------------------

def prob_no_repeat(t, r: float, alpha: float):
    """P(X(t) = 0): no repeat purchase within ``t`` after the first, = (alpha / (alpha + t))^r."""
    t = np.asarray(t, dtype=float)
    return (alpha / (alpha + t)) ** r


def expected_repeat_purchases(t, r: float, alpha: float, a: float, b: float):
    """BG/NBD E[X(t)] (Fader, Hardie & Lee 2005, eq. 9): expected repeat purchases in (0, t]."""
    t = np.asarray(t, dtype=float)
    z = t / (alpha + t)
    hyp = special.hyp2f1(r, b, a + b - 1.0, z)
    return (a + b - 1.0) / (a - 1.0) * (1.0 - (alpha / (alpha + t)) ** r * hyp)


def expected_rows_per_customer(params: SyntheticParams, horizon_total: float | None = None) -> float:
    """Expected output rows per customer (orders x lines, plus returns and noise), with the first
    purchase spread over the period as ``acquisition_growth`` says (uniform by default):
    E_T[1 + E[X(T)]], T the time from the first purchase to the end, in operational days."""
    total = float(params.period_days if horizon_total is None else horizon_total)
    nodes, weights = np.polynomial.legendre.leggauss(64)
    t = (nodes + 1.0) / 2.0 * total
    repeats = expected_repeat_purchases(t, params.r, params.alpha, params.a, params.b)
    mean_repeats = float(np.sum(weights * params.horizon_weights(t, total) * repeats) / 2.0)
    lines = (1.0 + mean_repeats) * (1.0 + params.extra_lines_mean)
    return lines * (1.0 + params.return_prob) * (1.0 + params.noise_rate)


def calibrate_alpha(params: SyntheticParams, rows_per_customer: float) -> float:
    """The alpha (other parameters fixed) that gives ``rows_per_customer`` expected rows."""
    def gap(log_alpha: float) -> float:
        trial = SyntheticParams(**{**asdict(params), "alpha": math.exp(log_alpha)})
        return math.log(expected_rows_per_customer(trial)) - math.log(rows_per_customer)

    low, high = math.log(1e-3), math.log(1e9)
    if gap(high) > 0:
        floor = expected_rows_per_customer(SyntheticParams(**{**asdict(params), "alpha": 1e9}))
        raise ValueError(
            f"{rows_per_customer:.2f} rows per customer is too few: every customer makes at least one "
            f"order (>= {floor:.2f} rows expected); ask for more rows or fewer customers"
        )
    if gap(low) < 0:
        raise ValueError(f"{rows_per_customer:.0f} rows per customer is too many for a {params.period_days}-day period")
    return math.exp(optimize.brentq(gap, low, high, xtol=1e-10))


# --- seasonal clock ------------------------------------------------------------------------------

@dataclass(frozen=True)
class SeasonalClock:
    """Calendar days since ``start`` <-> operational days (cumulative purchase intensity).

    The intensity is piecewise constant per hour and averages 1 over the period, so both clocks
    run from 0 to ``period_days``.
    """

    calendar_knots: np.ndarray = field(repr=False)
    operational_knots: np.ndarray = field(repr=False)

    @classmethod
    def from_params(cls, params: SyntheticParams) -> SeasonalClock:
        hours = np.arange(params.period_days * 24)
        days = hours // 24
        dates = np.datetime64(params.start, "D") + days
        weekday = (dates.astype("datetime64[D]").view("int64") - 4) % 7  # 1970-01-01 was a Thursday
        day_of_year = (dates - dates.astype("datetime64[Y]")).astype(int) + 1
        week = np.asarray(params.weekday_weights, dtype=float)
        hour = np.asarray(params.hour_weights, dtype=float)
        annual = 1.0 + params.annual_amplitude * np.cos(2 * np.pi * (day_of_year - params.annual_peak_day) / 365.25)
        intensity = (week / week.mean())[weekday] * (hour / hour.mean())[hours % 24] * annual
        intensity *= intensity.size / intensity.sum()
        operational = np.concatenate([[0.0], np.cumsum(intensity) / 24.0])
        calendar = np.arange(hours.size + 1) / 24.0
        return cls(calendar_knots=calendar, operational_knots=operational)

    @property
    def total(self) -> float:
        """Operational length of the period (= period_days)."""
        return float(self.operational_knots[-1])

    def to_calendar(self, operational):
        return np.interp(operational, self.operational_knots, self.calendar_knots)

    def to_operational(self, calendar):
        return np.interp(calendar, self.calendar_knots, self.operational_knots)


# --- named worlds --------------------------------------------------------------------------------

@dataclass(frozen=True)
class WorldPreset:
    """A named world of ``cvp generate --world``: the population and the strength each behaviour
    (features/behaviours.py) has when switched on (``--behaviours slowdown`` = the preset's slowdown)."""

    name: str
    params: SyntheticParams
    strengths: Behaviours  # strength of each behaviour when switched on by name or 'all'
    rows_per_customer: float  # the studies' size: customers x this rows (alpha re-calibrated)
    behaviours: str = ""  # switched on when --behaviours is not given


# "retail": a young, behaviour-driven base where churn is hard for BG/NBD, calibrated to a
# reference study of 20,000 real customers at a cutoff against the next 91 days (BG/NBD expected
# purchases ROC-AUC 0.728, recency 0.679, a gradient-boosted model reading the behaviours 0.819):
# - customers keep arriving: acquisition_growth 1 (e times as many newcomers on the last day as on
#   the first), so at the test cutoff (91 days before the end) the median customer is ~8 months
#   old and ~70% are under a year;
# - few orders each (alpha 55: ~6 rows, mean 3.3 orders, median 2, 46% with one order; mean rate
#   0.011 a day), so recency and frequency say little and an alive customer's silence over 91 days
#   is common (most of the ~0.7 churn rate at the test cutoff; ~11% have left by the end);
# - BG/NBD leaving is rare on its own (dropout Beta(0.3, 8): mean 0.036 per repeat purchase) and
#   driven by the behaviours: the decliners (slowdown or basket customers) leave far more readily
#   (decline_leaving 10: p -> 1 - (1 - p)^11, mean ~0.3), serial returners too (strength 4:
#   p -> 1 - (1 - p)^17), growers stay (p / 21): ~90% of the leavers are decliners or returners;
#   every behaviour at strength 4 (a slowing leaver's last gap x 9, a shrinking basket's last
#   order x exp(-3)); 20% seasonal buyers, whose off-season is most of the label's uncertainty.
# Measured with tests/signal_study.py --world retail (docs/churn.md): best BTYD baseline ROC-AUC
# ~0.76 with all behaviours on, recency ~0.72, the oracle ~+0.09 above the baseline.
RETAIL_STRENGTH = 4.0
WORLD_PRESETS: dict[str, WorldPreset] = {
    "default": WorldPreset("default", SyntheticParams(), Behaviours(**dict.fromkeys(BEHAVIOURS, DEFAULT_STRENGTH)), 15.0),
    "retail": WorldPreset(
        "retail",
        SyntheticParams(alpha=55.0, a=0.3, b=8.0, acquisition_growth=1.0),
        Behaviours(**dict.fromkeys(BEHAVIOURS, RETAIL_STRENGTH), decline_leaving=10.0),
        6.0,
        behaviours="all",
    ),
}


def world_preset(name: str) -> WorldPreset:
    """The named world, or a ValueError naming the known ones."""
    try:
        return WORLD_PRESETS[name]
    except KeyError:
        raise ValueError(f"--world: unknown world '{name}'; use {', '.join(WORLD_PRESETS)}") from None


# --- population size ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    """How many customers to simulate and with which parameters, for a requested row count."""

    n_rows: int
    n_customers: int
    params: SyntheticParams
    seed: int
    behaviours: Behaviours = Behaviours()

    @property
    def n_blocks(self) -> int:
        return -(-self.n_customers // self.params.customers_per_block)

    @property
    def id_width(self) -> int:
        return max(6, len(str(self.n_customers - 1)))


def plan(n_rows: int, seed: int, n_customers: int | None = None, params: SyntheticParams | None = None,
         behaviours: Behaviours | None = None) -> Plan:
    """Customers for ~``n_rows`` rows: from the expected rows per customer, or, when
    ``n_customers`` is given, with alpha re-calibrated so that they make ~``n_rows`` rows."""
    params = params or SyntheticParams()
    if n_rows <= 0:
        raise ValueError("n_rows must be positive")
    if n_customers is None:
        n_customers = max(1, round(n_rows / expected_rows_per_customer(params)))
    elif n_customers <= 0:
        raise ValueError("n_customers must be positive")
    else:
        params = SyntheticParams(**{**asdict(params), "alpha": calibrate_alpha(params, n_rows / n_customers)})
    return Plan(n_rows=n_rows, n_customers=int(n_customers), params=params, seed=int(seed),
                behaviours=behaviours or Behaviours())


# --- simulation ----------------------------------------------------------------------------------

def _block_rng(seed: int, block: int, behaviours: bool = False) -> np.random.Generator:
    """The block's stream; the behaviours draw from a stream of their own, so switching them on
    leaves the default world's draws (and rows) as they were."""
    key = (block, 1) if behaviours else (block,)
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _segment_cumsum(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Cumulative sums restarting at every segment (segments given by their lengths)."""
    total = np.cumsum(values)
    starts = np.cumsum(counts) - counts
    before = np.concatenate([[0.0], total])[starts]
    return total - np.repeat(before, counts)


def _orders(rng: np.random.Generator, n: int, params: SyntheticParams, total: float, adjust_dropout=None):
    """Per-customer latent traits and every order's (customer, operational time, sequence number).
    ``adjust_dropout`` (behaviours) maps the drawn dropout probabilities to the ones used."""
    lam = rng.gamma(params.r, 1.0 / params.alpha, n)
    dropout = rng.beta(params.a, params.b, n)
    if adjust_dropout is not None:
        dropout = adjust_dropout(dropout)
    # a Beta with a small a (the retail world's 0.3) can draw p = 0 (or a grower's p / 21 underflow):
    # floor it, a customer who practically never leaves (no default-world draw comes near it)
    dropout = np.maximum(dropout, MIN_DROPOUT)
    nu = rng.gamma(params.spend_q, 1.0 / params.spend_gamma, n)
    birth = rng.uniform(0.0, total, n) if not params.acquisition_growth else params.birth_times(rng.random(n), total)
    horizon = total - birth
    potential = rng.poisson(lam * horizon)           # purchases if the customer never left
    lifetime = rng.geometric(dropout)                # repeat purchase after which they leave
    repeats = np.minimum(potential, lifetime)
    # Times of the first `repeats` of `potential` uniform points on (0, horizon): order statistics
    # as normalised cumulative sums of exponentials (the rest of the sum is one Gamma draw).
    gaps = rng.exponential(1.0, int(repeats.sum()))
    rest = rng.gamma(potential - repeats + 1.0)
    cum = _segment_cumsum(gaps, repeats)
    last = np.zeros(n)
    has = repeats > 0
    last[has] = cum[np.cumsum(repeats)[has] - 1]
    owner_rep = np.repeat(np.arange(n), repeats)
    rep_time = birth[owner_rep] + horizon[owner_rep] * cum / (last + rest)[owner_rep]

    # orders per customer: the first purchase, then the repeats (already in time order)
    per_customer = 1 + repeats
    owner = np.repeat(np.arange(n), per_customer)
    starts = np.cumsum(per_customer) - per_customer
    seq = np.arange(owner.size) - np.repeat(starts, per_customer)
    op_time = np.empty(owner.size)
    op_time[starts] = birth
    op_time[seq > 0] = rep_time
    latent = {"lam": lam, "dropout": dropout, "left": lifetime <= potential, "lifetime": lifetime}
    return nu, owner, op_time, seq, latent


def _simulate_block(plan_: Plan, clock: SeasonalClock, block: int, include_truth: bool,
                    truth_sink: list | None = None) -> pa.Table:
    params, beh = plan_.params, plan_.behaviours
    first = block * params.customers_per_block
    n = min(params.customers_per_block, plan_.n_customers - first)
    rng = _block_rng(plan_.seed, block)
    traits = beh.draw(_block_rng(plan_.seed, block, behaviours=True), n) if beh.active else None
    adjust = None if traits is None else traits.adjust_dropout
    nu, owner, op_time, seq, latent = _orders(rng, n, params, clock.total, adjust)
    value_scale = None
    if traits is not None:
        owner, op_time, seq, value_scale = traits.shape_orders(owner, op_time, seq, latent, clock.total)
    day = clock.to_calendar(op_time)
    if traits is not None:
        day = traits.seasonal_days(owner, day, params.period_days)

    # order lines: amounts Gamma(p / lines, nu) add up to a Gamma(p, nu) order value
    n_lines = 1 + rng.poisson(params.extra_lines_mean, owner.size)
    line_order = np.repeat(np.arange(owner.size), n_lines)
    line_owner = owner[line_order]
    line_day = day[line_order]
    scale = 1.0 / nu[line_owner] if value_scale is None else value_scale[line_order] / nu[line_owner]
    amount = np.round(rng.gamma(params.spend_p / n_lines[line_order], scale), 2)
    quantity = 1 + rng.poisson(params.extra_quantity_mean, line_order.size)
    cost = np.round(amount * rng.uniform(*params.cost_share, line_order.size), 2)

    # returns: a later negative row for the same order
    return_prob = params.return_prob if traits is None else traits.return_prob(line_owner, params.return_prob)
    returned = (rng.random(line_order.size) < return_prob) & (amount > 0)
    return_day = line_day + rng.exponential(params.return_delay_days, line_order.size)
    ret = np.flatnonzero(returned & (return_day < params.period_days))
    by = _merge_returns(line_owner, line_day, ret, return_day[ret], params.period_days)

    row_owner = np.concatenate([line_owner, line_owner[ret]])
    row_day = np.concatenate([line_day, return_day[ret]])
    row_order = np.concatenate([line_order, line_order[ret]])
    row_amount = np.concatenate([amount, -amount[ret]])
    row_quantity = np.concatenate([quantity, -quantity[ret]])
    row_cost = np.concatenate([cost, -cost[ret]])

    # noise: a copy right after a clean row, broken in one way
    noisy = rng.random(by.size) < params.noise_rate / (1.0 + params.noise_rate)
    rows = np.repeat(by, 1 + noisy)
    is_noise = np.zeros(rows.size, bool)
    is_noise[np.cumsum(1 + noisy)[noisy] - 1] = True
    kind = rng.integers(0, len(NOISE_KINDS), int(is_noise.sum()))
    variant = rng.integers(0, 1 << 30, kind.size)

    start_s = (params.start - dt.date(1970, 1, 1)).days * 86400
    seconds = start_s + np.minimum(np.round(row_day[rows] * 86400.0), params.period_days * 86400 - 1).astype(np.int64)
    customer_text = pc.utf8_lpad(pc.cast(pa.array(np.arange(first, first + n)), pa.string()), width=plan_.id_width, padding="0")
    order_text = pc.binary_join_element_wise(
        customer_text.take(pa.array(owner)), pc.utf8_lpad(pc.cast(pa.array(seq), pa.string()), width=4, padding="0"), "-"
    )
    columns = {
        "customer_id": customer_text.take(pa.array(row_owner[rows])),
        "timestamp": pc.cast(pa.array(seconds, pa.timestamp("s")), pa.string()),
        "amount": pc.cast(pa.array(row_amount[rows]), pa.string()),
        "quantity": pc.cast(pa.array(row_quantity[rows]), pa.string()),
        "order_id": order_text.take(pa.array(row_order[rows])),
        "cost": pc.cast(pa.array(row_cost[rows]), pa.string()),
    }
    _apply_noise(columns, is_noise, kind, variant)
    if include_truth:
        truth = np.full(rows.size, None, dtype=object)
        truth[is_noise] = np.asarray(NOISE_KINDS, dtype=object)[kind]
        columns["noise_kind"] = pa.array(truth, pa.string())
        columns["is_return"] = pa.array(rows >= line_order.size)
    if truth_sink is not None:
        ids = customer_text.to_numpy(zero_copy_only=False)
        truth_sink.append(customer_truth(ids, owner, day, latent, nu, traits, params))
    return pa.table(columns)


def _merge_returns(line_owner: np.ndarray, line_day: np.ndarray, ret: np.ndarray, ret_day: np.ndarray,
                   period_days: int) -> np.ndarray:
    """Row order of lines + returns by (customer, time): lines are already in that order, so the
    returns are sorted among themselves and slotted in after any line at the same instant.
    Returns indices into the concatenation [lines, returns]."""
    n_lines = line_owner.size
    line_key = line_owner * float(period_days + 1) + line_day
    ret_key = line_owner[ret] * float(period_days + 1) + ret_day
    ret_sorted = np.argsort(ret_key, kind="stable")
    slots = np.searchsorted(line_key, ret_key[ret_sorted], side="right") + np.arange(ret.size)
    order = np.empty(n_lines + ret.size, dtype=np.int64)
    is_ret_slot = np.zeros(order.size, bool)
    is_ret_slot[slots] = True
    order[slots] = n_lines + ret_sorted
    order[~is_ret_slot] = np.arange(n_lines)
    return order


def _apply_noise(columns: dict[str, pa.Array], is_noise: np.ndarray, kind: np.ndarray, variant: np.ndarray) -> None:
    """Overwrite the broken value of every noise row (in place, column by column)."""
    positions = np.flatnonzero(is_noise)
    for name in OUTPUT_COLUMNS:
        texts: list[str | None] = []
        picks = np.full(positions.size, -1, dtype=np.int64)
        for k, reason in enumerate(NOISE_KINDS):
            column, variants = _NOISE_TEXT[reason]
            if column != name:
                continue
            hit = kind == k
            picks[hit] = len(texts) + variant[hit] % len(variants)
            texts.extend(variants)
        hit = picks >= 0
        if not hit.any():
            continue
        mask = np.zeros(is_noise.size, bool)
        mask[positions[hit]] = True
        replacement = pa.array(texts, pa.string()).take(pa.array(picks[hit]))
        columns[name] = pc.replace_with_mask(columns[name], pa.array(mask), replacement)


def iter_transaction_tables(
    n_rows: int,
    seed: int,
    n_customers: int | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    params: SyntheticParams | None = None,
    include_truth: bool = False,
    behaviours: Behaviours | None = None,
    truth_sink: list | None = None,
) -> Iterator[pa.Table]:
    """Arrow tables of ``chunk_rows`` rows (the last may be shorter) of ~``n_rows`` transactions.

    Rows come customer block by customer block, each customer's rows in time order. The content
    depends only on (n_rows, seed, n_customers, params), never on ``chunk_rows``.
    ``include_truth`` adds ``noise_kind`` (the quarantine reason a noise row should get, else
    null) and ``is_return``. ``behaviours`` switches on features.behaviours; ``truth_sink``, a list,
    receives each block's per-customer ground truth (:func:`customer_truth`) as it is simulated.
    """
    plan_ = plan(n_rows, seed, n_customers, params, behaviours)
    clock = SeasonalClock.from_params(plan_.params)
    blocks = (_simulate_block(plan_, clock, k, include_truth, truth_sink) for k in range(plan_.n_blocks))
    yield from fixed_size_tables(blocks, chunk_rows)


def iter_transaction_chunks(
    n_rows: int,
    seed: int,
    n_customers: int | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    params: SyntheticParams | None = None,
    include_truth: bool = False,
    behaviours: Behaviours | None = None,
    truth_sink: list | None = None,
) -> Iterator[pd.DataFrame]:
    """Like ``iter_transaction_tables``, as pandas frames (all output columns are text)."""
    for table in iter_transaction_tables(n_rows, seed, n_customers, chunk_rows, params, include_truth, behaviours,
                                         truth_sink):
        yield table.to_pandas()


def generate_transactions(n_rows: int, seed: int, **kwargs) -> pd.DataFrame:
    """All rows in one frame (small sizes: tests, examples)."""
    frames = list(iter_transaction_chunks(n_rows, seed, **kwargs))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(OUTPUT_COLUMNS))


# --- per-customer ground truth ---------------------------------------------------------------------

TRUTH_FLAGS = tuple(f"behaviour_{name}" for name in ("slowdown", "basket", "returns", "seasonal", "growth"))


def _marked_days(owner: np.ndarray, day: np.ndarray, mark: np.ndarray, n: int) -> np.ndarray:
    out = np.full(n, np.nan)
    out[owner[mark]] = day[mark]
    return out


def _timestamps(params: SyntheticParams, days: np.ndarray) -> pa.Array:
    start_s = (params.start - dt.date(1970, 1, 1)).days * 86400
    seconds = np.where(np.isnan(days), 0, start_s + np.round(np.nan_to_num(days) * 86400.0)).astype(np.int64)
    return pa.array(seconds, pa.timestamp("s"), mask=np.isnan(days))


def customer_truth(ids: np.ndarray, owner: np.ndarray, day: np.ndarray, latent: dict, nu: np.ndarray,
                   traits: Traits | None, params: SyntheticParams) -> pa.Table:
    """One row per customer: alive at the period's end, the day of the last purchase before
    leaving (dropout), the behaviour flags and the latent parameters (rates per day)."""
    n = ids.size
    marks = latent.get("marks") or {"dropout": latent["left"][owner] & (np.diff(owner, append=-1) != 0)}
    dropout_day = _marked_days(owner, day, marks["dropout"], n)
    flags = {name: np.zeros(n, bool) for name in TRUTH_FLAGS} if traits is None else {
        f"behaviour_{name}": flag for name, flag in traits.flags.items()}
    seasonal = flags["behaviour_seasonal"]
    season = np.where(seasonal, np.floor(traits.season_start) if traits is not None else 0, np.nan)
    columns = {
        "customer_id": pa.array(ids, pa.string()),
        "alive_at_end": pa.array(np.isnan(dropout_day)),
        "dropout_at": _timestamps(params, dropout_day),
        **{name: pa.array(flag) for name, flag in flags.items()},
        "season_start_day": pa.array(season, mask=~seasonal),  # days after 1 January the window opens
        "slowdown_from": _timestamps(params, _marked_days(owner, day, marks.get("slowdown_from", np.zeros(owner.size, bool)), n)),
        "basket_from": _timestamps(params, _marked_days(owner, day, marks.get("basket_from", np.zeros(owner.size, bool)), n)),
        "purchase_rate": pa.array(latent["lam"]),
        "dropout_prob": pa.array(latent["dropout"]),
        "spend_nu": pa.array(nu),
    }
    return pa.table(columns)
