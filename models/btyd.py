"""Numerically safe closed forms of the BG/NBD, MBG/NBD and Pareto/NBD models, and a bounded
Pareto/NBD fit on compressed rows.

Every function is vectorised over customers (x = frequency, t_x = recency, T = age, one time
unit) with scalar model parameters, and stays finite for any valid history: recency = T,
frequency 0 or in the thousands, T tiny or huge. How:

- P(alive) is a logistic function of a log-odds computed in log space (never 1 / (1 + inf)).
- The Gaussian hypergeometric terms are Euler-transformed so that what is left is bounded:
  2F1(a, b; a+1; z) = (1-z)^(1-b) 2F1(1, a+1-b; a+1; z) (Pareto/NBD A_0, note 009) and
  2F1(R, B; C; z) = (1-z)^(C-R-B) 2F1(C-R, C-B; C; z) (BG/NBD conditional expectation), the
  power taken in log space. Untransformed, 2F1(r+x, b+x; a+b+x-1; z) grows like
  (1-z)^-(r+x) and overflows for heavy buyers (x in the hundreds), giving inf * 0 = NaN.
- Every scipy ``hyp2f1`` call goes through :func:`safe_hyp2f1`, which passes only finite,
  sane arguments: scipy 1.17 ends the process (segmentation fault) on non-finite or absurd
  ones (docs/clv_models.md). Where scipy returns NaN for valid arguments (z within ~1e-8 of 1
  with c in the hundreds), the value comes from mpmath.
- Short horizons, where 1 - (1-z)^(a-1) 2F1(...) cancels, use a series form instead.

References: Fader, Hardie & Lee (2005) "Counting your customers the easy way" (BG/NBD),
Batislam, Denizel & Filiztekin (2007) (MBG/NBD), Fader & Hardie (2005) "A note on deriving
the Pareto/NBD model and related expressions" (note 009): likelihood eq. (18) with A_0 from
eqs. (19)-(22), P(alive) eq. (36), conditional expectation eq. (41).
"""

from __future__ import annotations

import functools
import logging
import time

import numpy as np
from scipy.optimize import minimize
from scipy.special import exprel, expit, gammaln, hyp2f1

log = logging.getLogger(__name__)

#: Largest |a|, |b|, |c| passed to scipy's hyp2f1 (beyond it the function is not evaluated).
HYP2F1_ARG_LIMIT = 1e8
#: Bounds of the Pareto/NBD search, on each parameter in the fitting time unit.
PARETO_NBD_BOUNDS = (1e-6, 1e6)
#: Relative step of the central-difference gradient (on log-parameters).
_GRADIENT_STEP = 1e-5
#: 2F1 values per likelihood evaluation that may come from mpmath during a fit (beyond: +inf,
#: so a search never spends its time budget inside one evaluation).
_FIT_MPMATH_RETRIES = 100


def _floats(*values):
    return np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in values))


def safe_hyp2f1(a, b, c, z, max_retries: int = 10_000) -> np.ndarray:
    """scipy's 2F1(a, b; c; z) where all four arguments are finite, |a|, |b|, |c| <= 1e8, c is not
    0, -1, -2, ... and 0 <= z < 1; NaN elsewhere (the function is then never called). Where scipy
    returns NaN or inf for valid arguments, up to ``max_retries`` values come from mpmath."""
    a, b, c, z = _floats(a, b, c, z)
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(a) & np.isfinite(b) & np.isfinite(c) & np.isfinite(z)
        ok &= (np.abs(a) <= HYP2F1_ARG_LIMIT) & (np.abs(b) <= HYP2F1_ARG_LIMIT) & (np.abs(c) <= HYP2F1_ARG_LIMIT)
        ok &= ~((c <= 0) & (c == np.round(c))) & (z >= 0) & (z < 1)
    out = np.full(a.shape, np.nan)
    if ok.any():
        out[ok] = hyp2f1(a[ok], b[ok], c[ok], z[ok])
    by_series = ok & ~np.isfinite(out) & (a == 1.0) & (b > 0) & (c > b) & (z <= 0.99)
    if by_series.any():
        out[by_series] = _hyp2f1_one_series(b[by_series], c[by_series], z[by_series])
    retry = ok & ~np.isfinite(out)
    if retry.any() and retry.sum() <= max_retries:
        out[retry] = [_mpmath_hyp2f1(*args) for args in zip(a[retry], b[retry], c[retry], z[retry])]
    return out


def _hyp2f1_one_series(b, c, z, max_terms: int = 5000) -> np.ndarray:
    """2F1(1, b; c; z) = sum_n (b)_n / (c)_n z^n for 0 < b < c, 0 <= z <= 0.99: positive terms whose
    ratio is below z, so the sum converges within log(1e-17) / log(z) terms."""
    term = np.ones_like(z)
    total = np.ones_like(z)
    for n in range(max_terms):
        term = term * (b + n) / (c + n) * z
        total += term
        if np.all(term <= 1e-17 * total):
            break
    return total


@functools.lru_cache(maxsize=4096)
def _mpmath_hyp2f1(a: float, b: float, c: float, z: float) -> float:
    """2F1 at 30 digits (mpmath), for the arguments where scipy gives NaN or inf (e.g. z within
    1e-8 of 1 with c in the hundreds); NaN if mpmath does not converge either. Imported here: only
    these rare values need it."""
    import mpmath

    try:
        with mpmath.workdps(30):
            return float(mpmath.hyp2f1(a, b, c, z, maxterms=100_000))
    except (mpmath.libmp.NoConvergence, ValueError, ZeroDivisionError, OverflowError):
        return float("nan")


def check_params(params: dict[str, float]) -> None:
    """Model parameters must be finite and > 0 before any closed form sees them."""
    bad = {k: v for k, v in params.items() if not (np.isfinite(v) and v > 0)}
    if bad:
        raise ValueError(f"model parameters must be finite and > 0: {', '.join(f'{k}={v}' for k, v in bad.items())}")


# ------------------------------------------------------------------------------- BG/NBD family


def bg_log_odds_dropped(r, alpha, a, b, x, t_x, T, modified: bool) -> np.ndarray:
    """log(P(dropped out) / P(alive)) at T: BG/NBD (FHL 2008, note 021; 0 -> -inf when x = 0)
    or MBG/NBD (Batislam et al. 2007): log(a / (b + x [- 1])) + (r + x) log((alpha + T) / (alpha + t_x))."""
    x, t_x, T = _floats(x, t_x, T)
    shift = 0.0 if modified else 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        odds = (np.log(a) - np.log(b + x - shift) + (r + x) * (np.log(alpha + T) - np.log(alpha + t_x)))
    if not modified:
        odds = np.where(x > 0, odds, -np.inf)
    return odds


def bg_p_alive(r, alpha, a, b, x, t_x, T, modified: bool = False) -> np.ndarray:
    """P(alive at T | x, t_x, T) under BG/NBD (modified=False) or MBG/NBD, in [0, 1]."""
    return expit(-bg_log_odds_dropped(r, alpha, a, b, x, t_x, T, modified))


def bg_expected_if_alive(t, r, alpha, a, b) -> np.ndarray:
    """E[X(t)] of a BG/NBD customer alive at time 0 with lambda ~ Gamma(r, alpha), p ~ Beta(a, b):
    E_p[(1 - (alpha / (alpha + p t))^r) / p] = (a+b-1)/(a-1) [1 - (1-z)^r 2F1(r, b; a+b-1; z)],
    z = t / (alpha + t). Arrays t, r, alpha, b broadcast.

    Evaluated Euler-transformed, c = a+b-1: c/(a-1) [1 - (1-z)^(a-1) 2F1(c-r, a-1; c; z)], and for
    z <= 1/2 (horizons shorter than alpha, where 1 - (...) cancels) as
    c [-log(1-z) exprel((a-1) log(1-z)) - (1-z)^(a-1) S], S = (2F1(c-r, a-1; c; z) - 1)/(a-1) summed
    as a series; that form also holds at a = 1. With posterior parameters (r+x, alpha+T, a, b+x)
    it is the BG/NBD conditional expectation of an alive customer (FHL 2005, eq. 10);
    (r+x, alpha+T, a, b+x+1) gives MBG/NBD's."""
    t, r, alpha, a, b = _floats(t, r, alpha, a, b)
    c = a + b - 1.0
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        log_one_minus_z = -np.log1p(t / alpha)
        z = -np.expm1(log_one_minus_z)
        power = np.exp((a - 1.0) * log_one_minus_z)
        series = _bg_deficit_series(c - r, a, c, np.where(z <= 0.5, z, 0.0))
        value = c * (-log_one_minus_z * exprel((a - 1.0) * log_one_minus_z) - power * series)
        use_hyp = (z > 0.5) | ~np.isfinite(value)
        if use_hyp.any():
            value = np.where(use_hyp, _bg_expected_hyp2f1(log_one_minus_z, z, r, a, c), value)
    return np.where(t > 0, np.maximum(value, 0.0), 0.0)


def _bg_expected_hyp2f1(log_one_minus_z, z, r, a, c) -> np.ndarray:
    """c/(a-1) [1 - (1-z)^(a-1) 2F1(c-r, a-1; c; z)]; within 1e-6 of a = 1 (a removable singularity),
    the mean of the values at a = 1 -/+ 1e-6."""
    def at(a_value):
        tail = np.exp((a_value - 1.0) * log_one_minus_z) * safe_hyp2f1(c - r, a_value - 1.0, c, z)
        return c / (a_value - 1.0) * (1.0 - tail)

    near_one = np.abs(a - 1.0) < 1e-6
    if not near_one.any():
        return at(a)
    return np.where(near_one, 0.5 * (at(np.where(near_one, 1.0 - 1e-6, a)) + at(np.where(near_one, 1.0 + 1e-6, a))),
                    at(np.where(near_one, 2.0, a)))


def _bg_deficit_series(A, a, c, z, max_terms: int = 2000) -> np.ndarray:
    """S = sum_{n>=1} (A)_n (a)_(n-1) / ((c)_n n!) z^n = (2F1(A, a-1; c; z) - 1) / (a-1), for z <= 1/2;
    NaN where it has not converged after max_terms terms."""
    A, a, c, z = _floats(A, a, c, z)
    term = A / c * z
    total = term.copy()
    for n in range(1, max_terms):
        term = term * (A + n) * (a + n - 1.0) / ((c + n) * (n + 1.0)) * z
        total += term
        if np.all(np.abs(term) <= 1e-17 * np.abs(total)):
            return total
    return np.where(np.abs(term) <= 1e-17 * np.abs(total), total, np.nan)


def distinct_pairs(x, T) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distinct x, their T, where each input sits among them): the distinct (x, T) pairs of the
    flattened inputs, so that a function of (x, T) alone is evaluated once per pair."""
    x, T = (np.asarray(v, dtype=float).ravel() for v in (x, T))
    order = np.lexsort((T, x))
    sorted_x, sorted_T = x[order], T[order]
    new = np.ones(len(order), dtype=bool)
    new[1:] = (sorted_x[1:] != sorted_x[:-1]) | (sorted_T[1:] != sorted_T[:-1])
    position = np.empty(len(order), dtype=np.intp)
    position[order] = np.cumsum(new) - 1
    return sorted_x[new], sorted_T[new], position


def bg_conditional_expected(t, r, alpha, a, b, x, t_x, T, modified: bool = False) -> np.ndarray:
    """E[X(T, T+t) | x, t_x, T] = P(alive) E[X(t) | alive at T] (BG/NBD or MBG/NBD), finite, >= 0.

    The alive part depends on (x, T) only (posterior r+x, alpha+T, a, b+x): it is evaluated once
    per distinct (x, T) (its series and 2F1 terms are the cost of a prediction; compressed histories
    share far fewer (x, T) than (x, t_x, T)) and gathered, the very value each history gets alone."""
    x, t_x, T = _floats(x, t_x, T)
    shift = 1.0 if modified else 0.0
    if np.ndim(t) == 0 and x.size > 1:
        px, pT, position = distinct_pairs(x, T)
        alive = bg_expected_if_alive(t, r + px, alpha + pT, a, b + px + shift)[position].reshape(x.shape)
    else:
        alive = bg_expected_if_alive(t, r + x, alpha + T, a, b + x + shift)
    return bg_p_alive(r, alpha, a, b, x, t_x, T, modified) * alive


def bg_expected_unconditional(t, r, alpha, a, b, modified: bool = False) -> np.ndarray:
    """E[X(t)] of a newly acquired customer: BG/NBD, or MBG/NBD (b/(a+b) times the alive expectation
    with b+1, since MBG/NBD customers may drop out right after the first purchase)."""
    if modified:
        return b / (a + b) * bg_expected_if_alive(t, r, alpha, a, b + 1.0)
    return bg_expected_if_alive(t, r, alpha, a, b)


# --------------------------------------------------------------------------------- Pareto/NBD


def _pareto_log_f(r, alpha, s, beta, x, tau, max_retries: int = 10_000) -> np.ndarray:
    """log F(tau), F = 2F1(r+s+x, b; r+s+x+1; z) / (m+tau)^(r+s+x), z = |alpha-beta| / (m+tau),
    m = max(alpha, beta), b = s+1 (alpha >= beta) or r+x (alpha < beta): A_0 = F(t_x) - F(T).

    With 1-z = (min(alpha, beta)+tau)/(m+tau) and Euler's transformation,
    log F = (1-b) log(1-z) - (r+s+x) log(m+tau) + log 2F1(1, r+s+x+1-b; r+s+x+1; z), whose 2F1 is
    bounded (it grows at most like a power of 1/(1-z) with exponent < 1 when r+x < 1)."""
    rsx = r + s + x
    high, low = (alpha, beta) if alpha >= beta else (beta, alpha)
    b = s + 1.0 if alpha >= beta else r + x
    with np.errstate(divide="ignore", invalid="ignore"):
        log_one_minus_z = np.log(low + tau) - np.log(high + tau)
        z = -np.expm1(log_one_minus_z)
        h = safe_hyp2f1(1.0, rsx + 1.0 - b, rsx + 1.0, z, max_retries)
        return (1.0 - b) * log_one_minus_z - rsx * np.log(high + tau) + np.log(h)


class TauPairs:
    """The distinct (x, tau) pairs of the ages tau in {t_x, T} of some histories, and where each
    history's (x, t_x) and (x, T) sit among them.

    log F (:func:`_pareto_log_f`, the 2F1 term of the Pareto/NBD likelihood) depends on a history
    only through (x, tau), and compressed (x, t_x, T) rows share far fewer of those pairs than
    they have rows (e.g. 17,796 pairs for 64,260 rows at 85,815 customers in weeks): evaluating
    it once per pair and gathering gives every row the very value it would get on its own (an
    elementwise function), at a fraction of the 2F1 calls."""

    def __init__(self, x, t_x, T):
        x, t_x, T = (np.asarray(v, dtype=float).ravel() for v in (x, t_x, T))
        self.x, self.tau, position = distinct_pairs(np.concatenate([x, x]), np.concatenate([t_x, T]))
        self.at_recency, self.at_age = position[: len(x)], position[len(x) :]
        # the row-wise terms that depend on x alone or T alone, likewise once per distinct value
        self.frequencies, self.frequency_index = np.unique(x, return_inverse=True)
        self.ages, self.age_index = np.unique(T, return_inverse=True)

    def by_frequency(self, values: np.ndarray) -> np.ndarray:
        """Per-row values of a function evaluated on ``frequencies``."""
        return values[self.frequency_index]

    def by_age(self, values: np.ndarray) -> np.ndarray:
        """Per-row values of a function evaluated on ``ages``."""
        return values[self.age_index]

    def __len__(self) -> int:
        return len(self.x)


def pareto_log_terms(r, alpha, s, beta, x, t_x, T, max_retries: int = 10_000,
                     pairs: TauPairs | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(log of the 'alive at T' part, log of the 'dropped out in (t_x, T]' part) of the Pareto/NBD
    likelihood bracket (note 009, eq. 18), without the common factor Gamma(r+x) alpha^r beta^s / Gamma(r).

    alive = (alpha+T)^-(r+x) (beta+T)^-s; dropped = s/(r+s+x) A_0, A_0 = F(t_x) - F(T) >= 0 taken in
    log space (-inf when t_x = T). F is evaluated once per distinct (x, tau) (``pairs``: the
    :class:`TauPairs` of these histories, computed here when not given; ``max_retries`` then
    counts distinct 2F1 values)."""
    x, t_x, T = _floats(x, t_x, T)
    shape = x.shape
    pairs = pairs if pairs is not None else TauPairs(x, t_x, T)
    log_f = _pareto_log_f(r, alpha, s, beta, pairs.x, pairs.tau, max_retries)
    at_recency, at_age = log_f[pairs.at_recency].reshape(shape), log_f[pairs.at_age].reshape(shape)
    ages, frequencies = pairs.ages, pairs.frequencies
    log_alpha_age = pairs.by_age(np.log(alpha + ages)).reshape(shape)
    log_beta_age = pairs.by_age(np.log(beta + ages)).reshape(shape)
    log_alive = -(r + x) * log_alpha_age - s * log_beta_age
    with np.errstate(divide="ignore", invalid="ignore"):
        gap = np.minimum(at_age - at_recency, 0.0)
        log_a0 = at_recency + np.log(-np.expm1(gap))
        log_dropped = np.log(s) - pairs.by_frequency(np.log(r + s + frequencies)).reshape(shape) + log_a0
    return log_alive, log_dropped


def pareto_log_likelihood(r, alpha, s, beta, x, t_x, T, max_retries: int = 10_000,
                          pairs: TauPairs | None = None) -> np.ndarray:  # fmt: skip
    """Individual Pareto/NBD log-likelihood (note 009, eq. 18); NaN only if a 2F1 was not evaluated
    (``max_retries``: how many distinct 2F1 values scipy cannot give may come from mpmath, ~10 ms
    each; ``pairs``: the histories' :class:`TauPairs`, when known)."""
    x, t_x, T = _floats(x, t_x, T)
    pairs = pairs if pairs is not None else TauPairs(x, t_x, T)
    log_alive, log_dropped = pareto_log_terms(r, alpha, s, beta, x, t_x, T, max_retries, pairs)
    with np.errstate(invalid="ignore"):
        bracket = np.logaddexp(log_alive, log_dropped)
    log_gamma = pairs.by_frequency(gammaln(r + pairs.frequencies)).reshape(x.shape)
    return log_gamma - gammaln(r) + r * np.log(alpha) + s * np.log(beta) + bracket


def pareto_p_alive(r, alpha, s, beta, x, t_x, T) -> np.ndarray:
    """P(alive at T | x, t_x, T) under Pareto/NBD (note 009, eq. 36), in [0, 1]."""
    log_alive, log_dropped = pareto_log_terms(r, alpha, s, beta, x, t_x, T)
    with np.errstate(invalid="ignore"):
        return expit(log_alive - log_dropped)


def pareto_expected_if_alive(t, r, alpha, s, beta) -> np.ndarray:
    """E[X(t)] of a Pareto/NBD customer alive at 0: r beta / (alpha (s-1)) [1 - (beta/(beta+t))^(s-1)],
    as (r/alpha) beta u exprel(-(s-1) u), u = log(1 + t/beta) (finite at s = 1, where it is r beta u / alpha)."""
    t, r, alpha, s, beta = _floats(t, r, alpha, s, beta)
    u = np.log1p(t / beta)
    return r / alpha * beta * u * exprel(-(s - 1.0) * u)


def pareto_conditional_expected(t, r, alpha, s, beta, x, t_x, T) -> np.ndarray:
    """E[X(T, T+t) | x, t_x, T] = P(alive) E[X(t) | alive, posterior (r+x, alpha+T, s, beta+T)] (note 009, eq. 41)."""
    x, t_x, T = _floats(x, t_x, T)
    alive = pareto_p_alive(r, alpha, s, beta, x, t_x, T)
    return alive * pareto_expected_if_alive(t, r + x, alpha + T, s, beta + T)


# ------------------------------------------------------------------------------ Pareto/NBD fit


class SearchFailed(RuntimeError):
    """The search stopped without a usable optimum."""


class FitBudgetExceeded(SearchFailed):
    """The search used up its wall-time or iteration budget."""


class ParetoNBDObjective:
    """Mean negative log-likelihood per customer (+ L2 penalty on the parameters) of compressed
    rows, on log-parameters, with a central-difference gradient (8 vectorised evaluations).
    Parameters outside the search bounds, or a non-finite likelihood, give +inf."""

    def __init__(self, x, t_x, T, weights, penalizer: float, time_budget_s: float, log_every_s: float = 5.0):
        self.x, self.t_x, self.T = (np.asarray(v, dtype=float) for v in (x, t_x, T))
        self.pairs = TauPairs(self.x, self.t_x, self.T)  # the same for every evaluation of the search
        self.weights = np.asarray(weights, dtype=float)
        self.total_weight = float(self.weights.sum())
        self.penalizer = float(penalizer)
        self.time_budget_s, self.log_every_s = float(time_budget_s), float(log_every_s)
        self.started = self.last_log = time.monotonic()
        self.evaluations = 0
        self.best = (np.inf, None)

    def value(self, log_params) -> float:
        log_params = np.asarray(log_params, dtype=float)
        self._check_budget()
        low, high = np.log(PARETO_NBD_BOUNDS)
        if not np.all(np.isfinite(log_params)) or np.any(log_params < low - 1e-9) or np.any(log_params > high + 1e-9):
            return np.inf
        params = np.exp(log_params)
        ll = pareto_log_likelihood(*params, self.x, self.t_x, self.T, max_retries=_FIT_MPMATH_RETRIES, pairs=self.pairs)
        self.evaluations += 1
        if not np.all(np.isfinite(ll)):
            return np.inf
        value = float(-(self.weights * ll).sum() / self.total_weight + self.penalizer * np.sum(params**2))
        if value < self.best[0]:
            self.best = (value, params)
        return value

    def value_and_gradient(self, log_params) -> tuple[float, np.ndarray]:
        log_params = np.asarray(log_params, dtype=float)
        value = self.value(log_params)
        gradient = np.zeros_like(log_params)
        if np.isfinite(value):
            for i in range(len(log_params)):
                step = np.zeros_like(log_params)
                step[i] = _GRADIENT_STEP
                up, down = self.value(log_params + step), self.value(log_params - step)
                if not (np.isfinite(up) and np.isfinite(down)):  # at a bound: one-sided
                    up, down, span = (up, value, 1) if np.isfinite(up) else (value, down, 1)
                    gradient[i] = (up - down) / (span * _GRADIENT_STEP) if np.isfinite(up - down) else 0.0
                else:
                    gradient[i] = (up - down) / (2 * _GRADIENT_STEP)
        self._log_progress(value, log_params)
        return value, gradient

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def _check_budget(self) -> None:
        if self.elapsed() > self.time_budget_s:
            raise FitBudgetExceeded(f"stopped after {self.elapsed():.1f} s, over the time budget of "
                                    f"{self.time_budget_s:g} s ({self.evaluations} likelihood evaluations)")

    def _log_progress(self, value: float, log_params: np.ndarray) -> None:
        now = time.monotonic()
        if now - self.last_log >= self.log_every_s:
            self.last_log = now
            log.info("Pareto/NBD fit: %.0f s, %d likelihood evaluations on %d rows, objective %.8g at %s",
                     now - self.started, self.evaluations, len(self.x), value,
                     ", ".join(f"{k}={v:.4g}" for k, v in zip(("r", "alpha", "s", "beta"), np.exp(log_params))))


class _BoundWatch:
    """Stops a search whose parameter has sat on a bound for ``patience`` iterations: the optimum is
    degenerate (e.g. s -> 0 when nobody drops out), so the remaining iterations are wasted."""

    def __init__(self, low: float, high: float, patience: int = 8):
        self.low, self.high, self.patience = low, high, patience
        self.streak = np.zeros(4, dtype=int)

    def __call__(self, intermediate) -> None:
        log_params = np.asarray(getattr(intermediate, "x", intermediate))
        on_bound = (log_params <= self.low + 1e-6) | (log_params >= self.high - 1e-6)
        self.streak = np.where(on_bound, self.streak + 1, 0)
        if (self.streak >= self.patience).any():
            names = [n for n, hit in zip(("r", "alpha", "s", "beta"), self.streak >= self.patience) if hit]
            raise SearchFailed(f"degenerate optimum: {', '.join(names)} ran to the search bound")


def fit_pareto_nbd(x, t_x, T, weights, penalizer: float, start, max_iterations: int = 1000,
                   time_budget_s: float = 300.0, gtol: float = 1e-9,
                   log_every_s: float = 5.0) -> tuple[np.ndarray, float, int]:
    """Pareto/NBD maximum likelihood on compressed rows: bounded L-BFGS-B on log-parameters.

    Returns (r, alpha, s, beta), the mean negative log-likelihood per customer (penalised) and the
    number of iterations; progress is logged at INFO every ``log_every_s`` seconds. Raises
    FitBudgetExceeded past ``time_budget_s`` seconds or ``max_iterations`` iterations,
    SearchFailed when the search fails or ends on a bound (a degenerate optimum).
    """
    objective = ParetoNBDObjective(x, t_x, T, weights, penalizer, time_budget_s, log_every_s)
    low, high = np.log(PARETO_NBD_BOUNDS)
    start = np.clip(np.log(np.asarray(start, dtype=float)), low, high)
    if not np.isfinite(objective.value(start)):
        raise SearchFailed("the likelihood is not finite at the starting point")
    result = minimize(objective.value_and_gradient, start, jac=True, method="L-BFGS-B", bounds=[(low, high)] * 4,
                      options={"maxiter": int(max_iterations), "ftol": 1e-15, "gtol": gtol, "maxls": 40},
                      callback=_BoundWatch(low, high))
    log_params, value = result.x, float(result.fun)
    gradient_norm = float(np.max(np.abs(result.jac))) if result.jac is not None else np.inf
    converged = result.success or (result.status == 2 and gradient_norm < 1e-6)  # line search stalled at the optimum
    if not converged or not np.isfinite(value):
        if result.nit >= max_iterations:
            raise FitBudgetExceeded(f"no convergence within {max_iterations} iterations")
        raise SearchFailed(f"search did not converge: {result.message} (max |gradient| {gradient_norm:.2g})")
    on_bound = (log_params <= low + 1e-6) | (log_params >= high - 1e-6)
    if on_bound.any():
        names = [n for n, hit in zip(("r", "alpha", "s", "beta"), on_bound) if hit]
        raise SearchFailed(f"degenerate optimum: {', '.join(names)} ran to the search bound")
    log.debug("Pareto/NBD fit: %d iterations, %d evaluations, %.2f s", result.nit, objective.evaluations,
              objective.elapsed())
    return np.exp(log_params), value, int(result.nit)


# ------------------------------------------------------------------------------- by model name


def p_alive(model: str, params: dict[str, float], x, t_x, T) -> np.ndarray:
    """P(alive at T | x, t_x, T) for "bgnbd", "mbgnbd" or "paretonbd", in [0, 1]."""
    if model == "paretonbd":
        return pareto_p_alive(params["r"], params["alpha"], params["s"], params["beta"], x, t_x, T)
    return bg_p_alive(params["r"], params["alpha"], params["a"], params["b"], x, t_x, T, model == "mbgnbd")


def conditional_expected(model: str, params: dict[str, float], t, x, t_x, T) -> np.ndarray:
    """E[X(T, T+t) | x, t_x, T]: repeat purchases in the next t time units, finite and >= 0."""
    if model == "paretonbd":
        return pareto_conditional_expected(t, params["r"], params["alpha"], params["s"], params["beta"], x, t_x, T)
    return bg_conditional_expected(t, params["r"], params["alpha"], params["a"], params["b"], x, t_x, T,
                                   model == "mbgnbd")


def unconditional_expected(model: str, params: dict[str, float], t) -> np.ndarray:
    """E[X(t)]: repeat purchases in (0, t] of a customer just acquired."""
    if model == "paretonbd":
        return pareto_expected_if_alive(t, params["r"], params["alpha"], params["s"], params["beta"])
    return bg_expected_unconditional(t, params["r"], params["alpha"], params["a"], params["b"], model == "mbgnbd")
