"""Per-customer P10/P50/P90 of the CLV over the horizon: parameter uncertainty plus the purchase process.

Pure code (arrays and frames in, arrays out), seeded and deterministic.

1. **Parameter uncertainty** (:func:`bootstrap_parameters`): a customer bootstrap on the compressed
   statistics. Resampling customers with replacement is a multinomial draw of customer counts
   over the distinct (frequency, recency, T) rows (and, separately, over the (frequency,
   monetary_value) rows); the chosen purchase model and Gamma-Gamma are refitted on each
   resample starting from the point estimate, so a refit costs a fraction of the first fit.
2. **The purchase process** (:func:`clv_quantiles`): for each distinct history, Monte Carlo of
   the realised, discounted margin over the horizon, each draw with one set of parameters:
   alive at T ~ Bernoulli(P(alive)); given alive, lambda ~ Gamma(r + x, alpha + T) and
   p ~ Beta(a, b + x) (BG/NBD), p ~ Beta(a, b + x + 1) (MBG/NBD, whose customers may also drop
   out right after the first purchase), mu ~ Gamma(s, beta + T) (Pareto/NBD); then the purchase
   days of each discount period (a Poisson process, stopped after each purchase with
   probability p, or at an exponential lifetime of rate mu), the spend of each purchase from
   the Gamma-Gamma posterior of the customer's mean spend nu ~ Gamma(q + p_s x, v + x m), and
   the clv stage's margin and discount per period.
3. Quantiles per customer (once per distinct history and mean spend).

The random work is per distinct (frequency, spend-modelled) key, not per customer: given alive at T
the process depends on the history through (frequency, T) only, and recency through P(alive) only;
the frequency sets the shapes of every distribution and T only rescales the rates. So the random
numbers are drawn once per key (the gammas, the alive and dropout uniforms, the purchase arrivals
of a unit-rate Poisson process and the Gamma(p_s, 1) spend of each arrival), and each (frequency,
T) group reads them with its own rates (common random numbers across T; each customer's
distribution is exact). Each history keeps draw j when the key's alive uniform u_j is below its
own P(alive). The spend of a draw is margin * (v + x m) * S / H with S the discounted sum of the
spends of its purchases (each discounted by its own period's factor) and H ~ Gamma(q + p_s x, 1),
so a customer's draws are (A + m C) * alive. Each key's stream is seeded by the seed and the key
itself, and arrivals are drawn in fixed blocks until every customer of the batch is covered, so a
customer gets the same quantiles whoever else is scored with them (the served chain scores one
customer as the batch does).

4. The expected CLV under each parameter draw (:func:`expected_quantiles`): parameter uncertainty
   alone, what the segment stage's quadrant probability reads.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from models import _lifetimes, btyd, btyd_fit
from models.clv import (
    EXPECTED_COLUMNS,
    HISTORY_COLUMNS,
    INTERVAL_COLUMNS,
    ClvSettings,
    PurchaseModel,
    SpendModel,
    _period_ends_days,
    _spend_modelled,
    discounted_expected_purchases,
    period_discount_factors,
    period_discount_rate,
    resolve_time_scale,
)

log = logging.getLogger(__name__)

QUANTILES = (0.1, 0.5, 0.9)
#: Histories whose draws are turned into customer quantiles at once (bounds memory).
_CHUNK_DRAW_CELLS = 4_000_000


@dataclass(frozen=True)
class ParameterDraws:
    """Bootstrap draws of the model parameters (row 0 is the point estimate).

    ``purchase``: (B, 4) in the model's parameter order and the caller's time unit; ``spend``:
    (B, 3) Gamma-Gamma p, q, v, or None when the spend model is the population-mean fallback
    (then every purchase is worth the customer's point expected spend: the credibility or population-mean
    fallback of models.clv.SpendModel, ``population_mean_spend`` when none is given)."""

    model: str
    purchase: np.ndarray
    spend: np.ndarray | None
    population_mean_spend: float
    n_failed: int = 0

    @property
    def n_draws(self) -> int:
        return int(len(self.purchase))

    def purchase_params(self, b: int) -> dict[str, float]:
        return dict(zip(_lifetimes.PURCHASE_PARAMS[self.model], (float(v) for v in self.purchase[b])))

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "purchase_param_names": list(_lifetimes.PURCHASE_PARAMS[self.model]),
            "purchase": self.purchase.tolist(),
            "spend_param_names": list(_lifetimes.SPEND_PARAMS),
            "spend": None if self.spend is None else self.spend.tolist(),
            "population_mean_spend": self.population_mean_spend,
            "n_failed": self.n_failed,
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> ParameterDraws:
        spend = data["spend"]
        return cls(data["model"], np.asarray(data["purchase"], dtype=float),
                   None if spend is None else np.asarray(spend, dtype=float),
                   float(data["population_mean_spend"]), int(data.get("n_failed", 0)))  # fmt: skip


# --------------------------------------------------------------------------- 1. parameter bootstrap


def _refit_purchase(model: PurchaseModel, rows: pd.DataFrame, counts: np.ndarray, max_iterations: int,
                    time_budget_s: float = 300.0) -> np.ndarray:  # fmt: skip
    """The purchase model refitted on ``rows`` weighted by ``counts``, starting at its parameters
    (the same scaling as PurchaseModel.fit); values in the caller's time unit."""
    name = model.model_
    keep = counts > 0
    f = rows["frequency"].to_numpy(dtype=float)[keep]
    scale = getattr(model, "time_scale_", None) or resolve_time_scale("auto", float(rows["T"].max()))
    r, T = rows["recency"].to_numpy(dtype=float)[keep] / scale, rows["T"].to_numpy(dtype=float)[keep] / scale
    point = np.array([model.params_[k] for k in _lifetimes.PURCHASE_PARAMS[name]])
    is_rate = np.array([k in _lifetimes.TIME_RATE_PARAMS for k in _lifetimes.PURCHASE_PARAMS[name]])
    start = np.where(is_rate, point / scale, point)
    if name != "paretonbd":  # lifetimes searches log-parameters with time divided by max T
        start = np.log(np.where(is_rate, start / T.max(), start))
    penalizer = getattr(model, "penalizer_", 0.0)
    if name in btyd_fit.PURCHASE_NLL:
        values = btyd_fit.fit_purchase(name, f, r, T, counts[keep].astype(float), penalizer, start, max_iterations)
    else:
        fitted = _lifetimes.fit_purchase(name, f, r, T, counts[keep].astype(float), penalizer, start,
                                         max_iterations=max_iterations, time_budget_s=time_budget_s)  # fmt: skip
        values = np.array([fitted[k] for k in _lifetimes.PURCHASE_PARAMS[name]])
    return np.where(is_rate, values * scale, values)


def _refit_spend(model: SpendModel, rows: pd.DataFrame, counts: np.ndarray) -> np.ndarray:
    f, m = rows["frequency"].to_numpy(dtype=float), rows["monetary_value"].to_numpy(dtype=float)
    keep = (counts > 0) & _spend_modelled(f, m)
    start = np.log([model.params_[k] for k in _lifetimes.SPEND_PARAMS])
    values = btyd_fit.fit_spend(f[keep], m[keep], counts[keep].astype(float), model.penalizer_ or 0.0, start)
    if not (np.isfinite(values).all() and (values > 0).all() and values[1] > 1.0):
        raise FloatingPointError(f"Gamma-Gamma refit gave {values}")
    return values


def _shrink(point: np.ndarray, values: np.ndarray, factor: float) -> np.ndarray:
    """``values`` moved towards ``point`` by ``factor`` on log scale (positive parameters stay positive,
    and a Gamma-Gamma q > 1 between two values > 1 stays > 1)."""
    if factor >= 1.0:
        return values
    return np.exp(np.log(point) + factor * (np.log(values) - np.log(point)))


def bootstrap_parameters(purchase: PurchaseModel, spend: SpendModel, rfm: pd.DataFrame, spend_rows: pd.DataFrame,
                         n_draws: int, seed: int, max_iterations: int = 1000, time_budget_s: float = 300.0,
                         sample: int | None = None) -> ParameterDraws:  # fmt: skip
    """``n_draws`` parameter sets (the point estimate first, then ``n_draws - 1`` bootstrap refits).

    ``rfm``: distinct frequency, recency, T with ``count``; ``spend_rows``: distinct frequency,
    monetary_value with ``count`` (the clv stage's Patterns). A resample whose refit fails is
    replaced by the next one (at most ``n_draws`` extra attempts); their number is ``n_failed``.

    ``sample`` (m): with more customers than m, each resample draws m customers, not n (the m-out-of-n
    bootstrap: a refit then holds at most m distinct rows, so its cost stops growing with the base), and
    the refit's deviation from the point estimate is scaled by sqrt(m / n) on log scale, the spread
    of an n-customer resample (estimates converge at the rate 1 / sqrt(n)). None: always n."""
    rng = np.random.default_rng(seed)
    name = purchase.model_
    point = np.array([purchase.params_[k] for k in _lifetimes.PURCHASE_PARAMS[name]])
    has_gg = getattr(spend, "source_", "gamma_gamma") == "gamma_gamma" and bool(spend.params_)
    spend_point = np.array([spend.params_[k] for k in _lifetimes.SPEND_PARAMS]) if has_gg else None
    p_rfm = rfm["count"].to_numpy(dtype=float)
    p_spend = spend_rows["count"].to_numpy(dtype=float)
    n_customers = int(round(p_rfm.sum()))
    n_spend = int(round(p_spend.sum()))
    m_rfm, m_spend = (n if sample is None else min(n, int(sample)) for n in (n_customers, n_spend))
    draws, spend_draws, failed, started = [point], [spend_point], 0, time.perf_counter()
    while len(draws) < n_draws and failed <= n_draws:
        counts = rng.multinomial(m_rfm, p_rfm / p_rfm.sum())
        spend_counts = rng.multinomial(m_spend, p_spend / p_spend.sum())
        try:
            values = _shrink(point, _refit_purchase(purchase, rfm, counts, max_iterations, time_budget_s),
                             np.sqrt(m_rfm / n_customers))  # fmt: skip
            spend_values = None
            if has_gg:
                spend_values = _shrink(spend_point, _refit_spend(spend, spend_rows, spend_counts), np.sqrt(m_spend / n_spend))
            btyd.check_params(dict(zip("abcd", values)))
        except (*_lifetimes.FIT_FAILURES, btyd.FitBudgetExceeded) as exc:
            failed += 1
            log.debug("bootstrap refit failed: %s", exc)
            continue
        draws.append(values)
        spend_draws.append(spend_values)
    if failed:
        log.warning("%d bootstrap refits failed and were replaced", failed)
    log.info("parameter bootstrap: %d draws of %s and Gamma-Gamma (resamples of %d of %d customers) in %.1f s",
             len(draws), name, m_rfm, n_customers, time.perf_counter() - started)  # fmt: skip
    return ParameterDraws(name, np.vstack(draws), np.vstack(spend_draws) if has_gg else None,
                          float(spend.population_mean_spend_), failed)  # fmt: skip


# --------------------------------------------------------------------------- 2. the purchase process


@dataclass(frozen=True)
class IntervalSettings:
    """How the horizon value is simulated: the clv settings' horizon, unit, margin and discounting,
    the draws per history, the seed and the quantiles."""

    days_per_unit: float
    horizon_days: float
    margin: float
    discount_rate: float
    discount_period_days: float
    process_draws: int = 200
    seed: int = 0
    quantiles: tuple[float, ...] = QUANTILES


def _key_seed(seed: int, x: float, modelled: bool) -> list[int]:
    """Entropy of one (frequency, spend-modelled) key's random stream: the seed and the key."""
    return [int(seed), int(x), int(modelled)]


_ARRIVAL_BLOCK = 32  # purchase arrivals drawn per block and draw


class _Process:
    """The per-draw constants of the simulation (parameter row j mod B for draw j) and the draws of
    the groups of one (frequency, spend-modelled) key.

    Given alive at T, every random quantity of a history is a draw from a distribution whose shape
    depends on the frequency x alone; T only rescales it (lambda = G_r / (alpha + T), mu = G_s /
    (beta + T)). So the random numbers are drawn once per key, from the key's own stream, and each
    group (x, T) of the key transforms them: common random numbers across T, exact marginals. The
    purchases of a draw are the arrivals of a unit-rate Poisson process (exponential gaps, drawn in
    blocks of ``_ARRIVAL_BLOCK``) read in operational time lambda * t; each arrival carries its
    Gamma(p_s, 1) spend. Blocks are drawn until every group of the batch is covered, and a block's
    numbers do not depend on how many follow it, so a customer's draws do not depend on the batch."""

    def __init__(self, model: str, params: np.ndarray, spend: np.ndarray | None, ends: np.ndarray,
                 factors: np.ndarray):  # fmt: skip
        self.model, self.d = model, len(params)
        self.params, self.spend = params, spend
        self.ends, self.factors = ends, factors
        # Gamma shapes drawn in one call per key: lambda, then p's two Beta gammas (BG/MBG) or mu
        # (Pareto/NBD), then H (Gamma-Gamma); the key's frequency is added in place.
        blocks = [params[:, 0], params[:, 2]] + ([params[:, 3]] if model != "paretonbd" else [])
        if spend is not None:
            blocks.append(spend[:, 1])
        self.base_shapes = np.concatenate(blocks)
        self.shapes = self.base_shapes.copy()
        self.shift = 1.0 if model == "mbgnbd" else 0.0

    def draw(self, rng: np.random.Generator, x: float, T: np.ndarray, x_spend: float) -> tuple[np.ndarray, np.ndarray]:
        """For the key's groups of ages ``T`` (G,): (G, d) S / H per draw given alive at T (discounted
        spend per unit of (v + x m)), or, without Gamma-Gamma parameters, the discounted number of
        purchases; and the key's (d,) uniforms deciding alive."""
        d, params, spend = self.d, self.params, self.spend
        shapes = self.shapes
        np.add(self.base_shapes[:d], x, out=shapes[:d])  # lambda | alive ~ Gamma(r + x, alpha + T)
        pareto = self.model == "paretonbd"
        if not pareto:  # p | alive ~ Beta(a, b + x [+ 1]) = G1 / (G1 + G2)
            np.add(self.base_shapes[2 * d:3 * d], x + self.shift, out=shapes[2 * d:3 * d])
        if spend is not None:  # H ~ Gamma(q + p_s x, 1)
            np.add(self.base_shapes[-d:], spend[:, 0] * x_spend, out=shapes[-d:])
        g = rng.standard_gamma(shapes)
        u = rng.random(2 * d)
        T = np.asarray(T, dtype=float)
        lam = g[None, :d] / (params[None, :, 1] + T[:, None])  # (G, d)
        ends = np.broadcast_to(self.ends, (len(T), d, len(self.ends)))
        last = None
        if pareto:  # mu | alive ~ Gamma(s, beta + T); the lifetime left is exponential with rate mu
            life = -np.log1p(-u[None, d:]) * (params[None, :, 3] + T[:, None]) / g[None, d:2 * d]
            ends = np.minimum(ends, life[:, :, None])
        else:
            p = g[d:2 * d] / (g[d:2 * d] + g[2 * d:3 * d])
            # The purchase after which the customer drops out: geometric on 1, 2, ... with probability p
            # (both logarithms finite: u < 1 and p clipped inside (0, 1)).
            last = np.floor(np.log1p(-u[d:]) / np.log1p(-np.clip(p, 1e-300, 1.0 - 1e-16))) + 1.0
        reach = lam[:, :, None] * ends  # (G, d, periods): operational time at each period end
        arrivals, spends = self._arrivals(rng, reach[:, :, -1].max(axis=0))
        bought = np.empty(reach.shape, dtype=np.int64)  # purchases by each period end
        for j in range(d):
            bought[:, j, :] = np.searchsorted(arrivals[j], reach[:, j, :], side="right")
        if last is not None:
            np.minimum(bought, np.minimum(last, arrivals.shape[1])[None, :, None].astype(np.int64), out=bought)
        if spend is None:
            n = np.diff(bought, axis=2, prepend=0)
            return n @ self.factors, u[:d]
        spent = spends[np.arange(d)[None, :, None], bought]  # cumulative spend by each period end
        per_period = np.diff(spent, axis=2, prepend=0.0)
        return (per_period @ self.factors) / g[None, -d:], u[:d]

    def _arrivals(self, rng: np.random.Generator, need: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(d, K) arrival times of unit-rate Poisson processes, K a multiple of the block, past ``need``
        (d,) in every row; and (d, K + 1) cumulative Gamma(p_s, 1) spends of the arrivals (0 first)."""
        d, spend = self.d, self.spend
        times, gifts, reached = [], [], np.zeros(d)
        while True:
            gaps = rng.standard_exponential((d, _ARRIVAL_BLOCK))
            times.append(reached[:, None] + np.cumsum(gaps, axis=1))
            reached = times[-1][:, -1]
            if spend is not None:
                gifts.append(rng.standard_gamma(np.broadcast_to(spend[:, 0, None], (d, _ARRIVAL_BLOCK))))
            if (reached > need).all():
                break
        arrivals = np.hstack(times)
        if spend is None:
            return arrivals, None
        return arrivals, np.hstack([np.zeros((d, 1)), np.cumsum(np.hstack(gifts), axis=1)])


@dataclass(frozen=True)
class _Histories:
    """Customers as distinct (frequency, recency, T) histories and as (frequency, T, spend-modelled) groups,
    with each history's P(alive) under every parameter draw (B, histories)."""

    codes: np.ndarray  # history of each customer
    group_codes: np.ndarray  # group of each customer
    x: np.ndarray  # per history
    recency: np.ndarray
    T: np.ndarray
    history_group: np.ndarray  # group of each history
    groups: pd.DataFrame  # frequency, T, modelled per group
    p_alive: np.ndarray


def _histories(draws: ParameterDraws, frequency, recency, T, modelled) -> _Histories:
    keys = pd.DataFrame({"frequency": frequency, "T": T, "modelled": modelled, "recency": recency})
    grouped = keys.groupby(["frequency", "T", "modelled", "recency"], sort=True)
    codes = grouped.ngroup().to_numpy()
    hist = grouped.size().reset_index()
    group_of = hist.groupby(["frequency", "T", "modelled"], sort=True)
    history_group = group_of.ngroup().to_numpy()
    groups = group_of.size().reset_index()
    hx, hr, hT = (hist[c].to_numpy(dtype=float) for c in ("frequency", "recency", "T"))
    p_alive = np.vstack([btyd.p_alive(draws.model, draws.purchase_params(b), hx, hr, hT)
                         for b in range(draws.n_draws)])  # fmt: skip
    return _Histories(codes, history_group[codes], hx, hr, hT, history_group, groups, p_alive)


def clv_quantiles(draws: ParameterDraws, frequency, recency, T, monetary_value, settings: IntervalSettings,
                  point_spend=None, shares: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """(n customers, len(quantiles)) quantiles of each customer's discounted margin over the horizon,
    the share of the customer's draws at 0 (P(value = 0), the point mass of no purchase) and the
    share inside [first, last quantile] (the coverage the model itself expects: above 0.8 for
    P10-P90 when the point mass at 0 exceeds 0.1); ``shares=False`` leaves both shares unset
    (the served chain reads the quantiles only).

    Inputs are one value per customer (time in the caller's unit). Draw j of every history uses
    parameter row j mod B (B = draws.n_draws), so every parameter draw is used alike.

    Given alive at T, the process depends on the history through (frequency, T) only (the posteriors
    of lambda, p or mu, and of the mean spend), and recency only through P(alive): the process is
    simulated once per (frequency, T, spend-modelled) group, from the random numbers of its
    (frequency, spend-modelled) key (:class:`_Process`), and each history of the group keeps draw
    j when the key's alive uniform u_j < its own P(alive) under parameter row j mod B."""
    frequency, recency, T, monetary_value = (np.asarray(v, dtype=float).ravel()
                                             for v in (frequency, recency, T, monetary_value))  # fmt: skip
    modelled = _spend_modelled(frequency, monetary_value) & (draws.spend is not None)
    m = np.where(modelled, monetary_value, 0.0)
    if draws.spend is None:  # a spend fallback: each purchase is worth the customer's point expected spend
        fallback = draws.population_mean_spend if point_spend is None else point_spend
        m = np.broadcast_to(np.asarray(fallback, dtype=float), frequency.shape).ravel()
    h = _histories(draws, frequency, recency, T, modelled)
    gx, gT, gm = (h.groups[c].to_numpy() for c in ("frequency", "T", "modelled"))

    d = int(settings.process_draws)
    rows = np.arange(d) % draws.n_draws
    params = draws.purchase[rows]
    spend = None if draws.spend is None else draws.spend[rows]
    ends = _period_ends_days(settings.horizon_days, settings.discount_period_days) / settings.days_per_unit
    rate = period_discount_rate(settings.discount_rate, settings.discount_period_days)
    factors = period_discount_factors(len(ends), rate)

    process = _Process(draws.model, params, spend, ends, factors)
    n_groups = len(gx)
    base = np.empty((n_groups, d))
    scale = np.empty((n_groups, d))
    alive_u = np.empty((n_groups, d))
    keys = pd.DataFrame({"x": gx, "m": gm}).groupby(["x", "m"], sort=True).indices
    for (x, modelled), rows_of_key in keys.items():
        rng = np.random.default_rng(_key_seed(settings.seed, x, bool(modelled)))
        xs = x if modelled else 0.0
        ratio, alive_u[rows_of_key] = process.draw(rng, x, gT[rows_of_key], xs)
        if spend is None:  # value = m x margin x discounted purchases, m the customer's point spend
            base[rows_of_key], scale[rows_of_key] = 0.0, settings.margin * ratio
        else:
            base[rows_of_key] = settings.margin * spend[None, :, 2] * ratio  # A: draws for m = 0 (v of each draw)
            scale[rows_of_key] = settings.margin * xs * ratio  # C: per unit of m

    # Customers with the same history and mean spend have the same draws: one row per such unit.
    units = pd.DataFrame({"h": h.codes, "m": m}).groupby(["h", "m"], sort=True)
    unit_codes = units.ngroup().to_numpy()
    unit_rows = units.size().reset_index()
    uh, um = unit_rows["h"].to_numpy(), unit_rows["m"].to_numpy(dtype=float)
    n_units = len(uh)
    q_units = np.empty((n_units, len(settings.quantiles)))
    zero_units, inside_units = np.empty(n_units), np.empty(n_units)
    chunk = max(1, _CHUNK_DRAW_CELLS // d)
    repeats = d // draws.n_draws if d % draws.n_draws == 0 else 0  # column j reads parameter row j mod B
    for first in range(0, n_units, chunk):
        sl = slice(first, min(first + chunk, n_units))
        hist, group = uh[sl], h.history_group[uh[sl]]
        values = base[group]
        values += um[sl, None] * scale[group]
        if repeats:
            p_alive = np.tile(h.p_alive[:, hist].T, (1, repeats))
        else:
            p_alive = h.p_alive[rows[:, None], hist[None, :]].T
        values *= alive_u[group] < p_alive
        q = np.maximum.accumulate(np.quantile(values, settings.quantiles, axis=1).T, axis=1)  # exact order
        q_units[sl] = q
        if shares:
            zero_units[sl] = np.count_nonzero(values <= 0.0, axis=1) / d
            inside_units[sl] = np.count_nonzero((values >= q[:, :1]) & (values <= q[:, -1:]), axis=1) / d
    out, zero, inside = q_units[unit_codes], zero_units[unit_codes], inside_units[unit_codes]
    return out, zero, inside


# --------------------------------------------------------------------------- parameter uncertainty alone


def expected_clv_draws(draws: ParameterDraws, frequency, recency, T, monetary_value, point_spend,
                       settings: IntervalSettings, units: bool = False):  # fmt: skip
    """(n customers, B) expected CLV of each customer under each parameter draw: the clv column's
    closed form (margin x E[mean spend] x discounted expected purchases, models/clv.py) with the
    draw's purchase and Gamma-Gamma parameters; column 0 is the point estimate (to rounding).

    The conditional expectation of every model is P(alive | x, t_x, T) x the expectation given
    alive, which depends on (x, T) only: the discounted expected purchases are evaluated once per
    (frequency, T) and draw (at t_x = T, or 0 without repeat purchase) and scaled by each history's
    P(alive) ratio. Without Gamma-Gamma draws (a spend fallback) every draw uses ``point_spend``
    (the clv stage's expected_avg_spend). ``units``: (one row per distinct customer, the row of each
    customer) instead."""
    frequency, recency, T, monetary_value, point_spend = (
        np.asarray(v, dtype=float).ravel() for v in (frequency, recency, T, monetary_value, point_spend))  # fmt: skip
    h = _histories(draws, frequency, recency, T, np.zeros(len(frequency), dtype=bool))
    gx, gT = (h.groups[c].to_numpy(dtype=float) for c in ("frequency", "T"))
    g_tx = np.where(gx > 0, gT, 0.0)
    # Customers with the same history, mean spend and point spend have the same draws: one row per such unit.
    grouped = pd.DataFrame({"h": h.codes, "m": monetary_value, "s": point_spend}).groupby(["h", "m", "s"], sort=True,
                                                                                          dropna=False)  # fmt: skip
    unit_codes = grouped.ngroup().to_numpy()
    first = np.zeros(grouped.ngroups, dtype=np.int64)
    first[unit_codes[::-1]] = np.arange(len(unit_codes))[::-1]  # a customer of each unit
    uh, ux, um, us = h.codes[first], frequency[first], monetary_value[first], point_spend[first]
    rate = period_discount_rate(settings.discount_rate, settings.discount_period_days)
    out = np.empty((len(first), draws.n_draws))
    for b in range(draws.n_draws):
        model = PurchaseModel.from_params(draws.model, draws.purchase_params(b))
        discounted = discounted_expected_purchases(model, gx, g_tx, gT, settings.horizon_days, settings.days_per_unit,
                                                   rate, settings.discount_period_days)  # fmt: skip
        given_alive = discounted / model.p_alive(gx, g_tx, gT)
        if draws.spend is None:
            spend = us
        else:
            params = dict(zip(_lifetimes.SPEND_PARAMS, (float(v) for v in draws.spend[b])))
            spend = SpendModel.from_params(params).expected_avg_spend(ux, um)
        out[:, b] = settings.margin * spend * (h.p_alive[b] * given_alive[h.history_group])[uh]
    return (out, unit_codes) if units else out[unit_codes]


def expected_quantiles(draws: ParameterDraws, frequency, recency, T, monetary_value, point_spend,
                       settings: IntervalSettings) -> np.ndarray:
    """(n customers, 2): the 10% and 90% quantiles (linear interpolation) of :func:`expected_clv_draws`
    over the parameter draws: how sure the model is of the customer's EXPECTED value."""
    values = expected_clv_draws(draws, frequency, recency, T, monetary_value, point_spend, settings, units=True)
    q = np.maximum.accumulate(np.quantile(values[0], (QUANTILES[0], QUANTILES[-1]), axis=1).T, axis=1)
    return q[values[1]]


def interval_frame(draws: ParameterDraws, features: pd.DataFrame, settings: IntervalSettings,
                   point_spend) -> pd.DataFrame:  # fmt: skip
    """customer_id, clv_p10, clv_p50, clv_p90, clv_expected_p10, clv_expected_p90 for rows of a features
    frame, in its row order (``point_spend``: the clv's expected_avg_spend of the same rows)."""
    history = [features[c] for c in (*HISTORY_COLUMNS, "monetary_value")]
    q, _, _ = clv_quantiles(draws, *history, settings, point_spend, shares=False)
    e = expected_quantiles(draws, *history, point_spend, settings)
    out = pd.DataFrame(np.hstack([q, e]), columns=[*INTERVAL_COLUMNS, *EXPECTED_COLUMNS], index=features.index)
    return pd.concat([features[["customer_id"]], out], axis=1)


# --------------------------------------------------------------------------- 3. coverage on the holdout


FREQUENCY_BINS = (0, 1, 2, 3, 5, 10)


def frequency_bin(frequency: np.ndarray, bins: Sequence[int] = FREQUENCY_BINS) -> np.ndarray:
    """Labels '0', '1', '2', '3-4', '5-9', '10_or_more' of repeat purchase days (names MLflow accepts)."""
    labels = []
    for lo, hi in zip(bins, (*bins[1:], None)):
        labels.append(f"{lo}_or_more" if hi is None else (str(lo) if hi == lo + 1 else f"{lo}-{hi - 1}"))
    idx = np.searchsorted(np.asarray(bins), np.asarray(frequency), side="right") - 1
    return np.asarray(labels, dtype=object)[idx]


def realised_value(period_spend: np.ndarray, margin: float, discount_rate: float, period_days: float) -> np.ndarray:
    """margin x spend of each discount period (columns), discounted as the clv is."""
    rate = period_discount_rate(discount_rate, period_days)
    factors = period_discount_factors(period_spend.shape[1], rate)
    return margin * (np.asarray(period_spend, dtype=float) * factors[None, :]).sum(axis=1)


def coverage(frequency, low, mid, high, realised, p_zero=None, expected_inside=None,
             level: tuple[float, float] = (QUANTILES[0], QUANTILES[-1])) -> tuple[dict, pd.DataFrame]:
    """How often the realised value lies in the customers' intervals, overall and by frequency bin.

    - ``coverage``: share with low <= realised <= high (both ends included, so a realised 0 with
      low = 0 is inside). Where a customer's point mass at 0 (``p_zero``) exceeds the lower level
      (0.1), the closed interval [0, P90] holds about 90% of that customer's outcomes, so a
      correct model gives more than 80% here: ``expected_coverage`` is the model's own expectation
      (the mean of ``expected_inside``, each customer's share of draws in [P10, P90]).
    - ``coverage_pit``: the atom-aware version with the exact target 0.8 for a correct model: a
      realised 0 counts as inside with the probability that a uniform point of the atom [0, p_zero]
      falls between the levels, (min(p_zero, 0.9) - 0.1)^+ / p_zero (the randomised probability
      integral transform, averaged rather than drawn); other outcomes as for ``coverage``.
    Also the mean width, the shares below and above, of P10 = 0 and of realised 0; and the table
    by bin (for plots/clv/)."""
    realised, low, mid, high = (np.asarray(v, dtype=float) for v in (realised, low, mid, high))
    inside = (realised >= low) & (realised <= high)
    lo, hi = level
    if p_zero is None:
        pit = inside.astype(float)
    else:
        p_zero = np.asarray(p_zero, dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            atom = np.where(p_zero > 0, np.clip(np.minimum(p_zero, hi) - lo, 0.0, None) / p_zero, 0.0)
        pit = np.where(realised == 0, atom, inside.astype(float))
    expected = np.full(len(realised), np.nan) if expected_inside is None else np.asarray(expected_inside, dtype=float)
    frame = pd.DataFrame({"frequency_bin": frequency_bin(np.asarray(frequency)), "inside": inside, "pit": pit,
                          "expected": expected, "below": realised < low, "above": realised > high,
                          "width": high - low, "p10_zero": low <= 0, "realised_zero": realised == 0,
                          "realised": realised, "p50": mid})  # fmt: skip
    table = frame.groupby("frequency_bin", sort=False).agg(
        customers=("inside", "size"), coverage=("inside", "mean"), coverage_pit=("pit", "mean"),
        expected_coverage=("expected", "mean"), below=("below", "mean"), above=("above", "mean"),
        mean_width=("width", "mean"), share_p10_zero=("p10_zero", "mean"), mean_realised=("realised", "mean"),
        mean_p50=("p50", "mean"))  # fmt: skip
    order = {label: i for i, label in enumerate(frequency_bin(np.asarray(FREQUENCY_BINS)))}
    table = table.reset_index().sort_values("frequency_bin", key=lambda s: s.map(order)).reset_index(drop=True)
    summary = {
        "customers": int(len(frame)),
        "coverage": float(inside.mean()),
        "coverage_pit": float(pit.mean()),
        "expected_coverage": float(np.mean(expected)),
        "share_below": float(frame["below"].mean()),
        "share_above": float(frame["above"].mean()),
        "mean_width": float(frame["width"].mean()),
        "share_p10_zero": float(frame["p10_zero"].mean()),
        "share_realised_zero": float(frame["realised_zero"].mean()),
        "by_frequency": {row.frequency_bin: {"customers": int(row.customers), "coverage": float(row.coverage),
                                             "coverage_pit": float(row.coverage_pit),
                                             "expected_coverage": float(row.expected_coverage),
                                             "mean_width": float(row.mean_width)}
                         for row in table.itertuples()},  # fmt: skip
    }
    return summary, table


# --------------------------------------------------------------------------- the clv stage's use


@dataclass(frozen=True)
class IntervalConfig:
    """The ``clv.interval_*`` params: parameter draws (1 = the point estimate only), process draws
    per history, the seed, and the bounds of each refit (clv.fit_max_iterations, clv.fit_time_budget_s)."""

    draws: int
    process_draws: int
    seed: int
    max_iterations: int = 1000
    time_budget_s: float = 300.0
    bootstrap_sample: int | None = None

    def settings(self, clv: ClvSettings) -> IntervalSettings:
        return IntervalSettings(clv.days_per_unit, clv.horizon_days, clv.margin, clv.discount_rate,
                                clv.discount_period_days, self.process_draws, self.seed)  # fmt: skip


def served_artifact(draws: ParameterDraws, config: IntervalConfig) -> str:
    """What the served chain needs to reproduce the t_0 intervals, as JSON text with exact floats:
    the draws, the process draws and the seed."""
    data = {"draws": draws.to_dict(), "process_draws": config.process_draws, "seed": config.seed}
    return json.dumps(data, indent=1, sort_keys=True) + "\n"


def from_served_artifact(data: Mapping, clv: ClvSettings) -> tuple[ParameterDraws, IntervalSettings]:
    config = IntervalConfig(draws=len(data["draws"]["purchase"]), process_draws=int(data["process_draws"]),
                            seed=int(data["seed"]))  # fmt: skip
    return ParameterDraws.from_dict(data["draws"]), config.settings(clv)


def fill_intervals(predictions: pd.DataFrame, features: pd.DataFrame, quantiles: np.ndarray,
                   columns: Sequence[str] = (*INTERVAL_COLUMNS, *EXPECTED_COLUMNS)) -> pd.DataFrame:  # fmt: skip
    """``predictions`` with ``columns`` from ``quantiles`` (rows of ``features``), matched by customer_id."""
    rows = pd.Index(features["customer_id"]).get_indexer(predictions["customer_id"])
    if (rows < 0).any():
        raise ValueError("predictions hold customers the features do not")
    return predictions.assign(**{c: quantiles[rows, i] for i, c in enumerate(columns)})


def point_spend_of(predictions: pd.DataFrame, features: pd.DataFrame) -> np.ndarray:
    """The predictions' expected_avg_spend in the row order of ``features`` (matched by customer_id)."""
    rows = pd.Index(predictions["customer_id"]).get_indexer(features["customer_id"])
    if (rows < 0).any():
        raise ValueError("features hold customers the predictions do not")
    return predictions["expected_avg_spend"].to_numpy(dtype=float)[rows]


def realised_matrix(customer_id: pd.Series, period_spend: pd.DataFrame, n_periods: int) -> np.ndarray:
    """(customers, periods) net spend from rows customer_id, period, spend (customers without rows: 0)."""
    out = np.zeros((len(customer_id), n_periods))
    rows = pd.Index(customer_id).get_indexer(period_spend["customer_id"])
    keep = (rows >= 0) & (period_spend["period"].to_numpy() < n_periods)
    np.add.at(out, (rows[keep], period_spend["period"].to_numpy()[keep]), period_spend["spend"].to_numpy()[keep])
    return out


@dataclass(frozen=True)
class StageIntervals:
    """What the clv stage writes about intervals: predictions at t_0 and t_1 with the interval
    columns, the t_0 parameter draws (the served chain's artifact), the metrics block and the
    coverage table by frequency bin."""

    predictions: dict[int, pd.DataFrame]
    draws_t0: ParameterDraws
    metrics: dict
    table: pd.DataFrame


def stage_intervals(models: Mapping[int, tuple[PurchaseModel, SpendModel]], features: Mapping[int, pd.DataFrame],
                    patterns: Mapping[int, tuple[pd.DataFrame, pd.DataFrame]], predictions: Mapping[int, pd.DataFrame],
                    labels_t1: pd.DataFrame, period_spend_t1: pd.DataFrame, config: IntervalConfig,
                    clv: ClvSettings) -> StageIntervals:  # fmt: skip
    """Intervals at t_0 and t_1 from each cutoff's models (``models[k]``: purchase, spend) and compressed
    tables (``patterns[k]``: rfm, spend rows), and their coverage on the holdout (t_1, t_0]: the
    realised value is margin x the net spend of each discount period (``period_spend_t1``: customer_id,
    period, spend), discounted as the clv is."""
    settings, out, draws = config.settings(clv), dict(predictions), {}
    extra = {}
    for k in (1, 0):
        started = time.perf_counter()
        draws[k] = bootstrap_parameters(*models[k], *patterns[k], config.draws, config.seed + k, config.max_iterations,
                                        config.time_budget_s, config.bootstrap_sample)  # fmt: skip
        boot = time.perf_counter()
        f = features[k]
        history = [f[c] for c in (*HISTORY_COLUMNS, "monetary_value")]
        point_spend = point_spend_of(predictions[k], f)
        q, p_zero, inside = clv_quantiles(draws[k], *history, settings, point_spend)
        simulated = time.perf_counter()
        e = expected_quantiles(draws[k], *history, point_spend, settings)
        out[k] = fill_intervals(predictions[k], f, np.hstack([q, e]))
        log.info("intervals at t_%d: %d parameter draws in %.1f s, %d process draws per (frequency, T) group in %.1f s, "
                 "expected-value quantiles in %.1f s", k, draws[k].n_draws, boot - started, config.process_draws,
                 simulated - boot, time.perf_counter() - simulated)  # fmt: skip
        extra[k] = (q, p_zero, inside)
    f1 = features[1]
    n_periods = len(_period_ends_days(clv.horizon_days, clv.discount_period_days))
    spend = realised_matrix(f1["customer_id"], period_spend_t1, n_periods)
    label_spend = labels_t1["spend"].to_numpy(dtype=float)
    if not np.allclose(spend.sum(axis=1), label_spend, rtol=1e-9, atol=1e-6):
        log.warning("the spend by discount period does not add up to labels_t1.spend for %d customers",
                    int((~np.isclose(spend.sum(axis=1), label_spend, rtol=1e-9, atol=1e-6)).sum()))  # fmt: skip
    realised = realised_value(spend, clv.margin, clv.discount_rate, clv.discount_period_days)
    q, p_zero, inside = extra[1]
    summary, table = coverage(f1["frequency"], q[:, 0], q[:, 1], q[:, 2], realised, p_zero, inside)
    n_failed = {f"t{k}": draws[k].n_failed for k in draws}
    metrics = {"holdout": summary, "parameter_draws": config.draws, "process_draws": config.process_draws,
               "failed_refits": n_failed,
               "parameter_spread_t0": _spread(draws[0])}  # fmt: skip
    return StageIntervals(out, draws[0], metrics, table)


def _spread(draws: ParameterDraws) -> dict:
    """Relative spread (std / mean) of each parameter over the bootstrap draws."""
    names = [*_lifetimes.PURCHASE_PARAMS[draws.model], *(_lifetimes.SPEND_PARAMS if draws.spend is not None else ())]
    values = draws.purchase if draws.spend is None else np.hstack([draws.purchase, draws.spend])
    if len(values) < 2:
        return dict.fromkeys(names, 0.0)
    return {n: float(values[:, i].std(ddof=1) / values[:, i].mean()) for i, n in enumerate(names)}
