"""Customer lifetime value models: "buy till you die" purchase models and Gamma-Gamma spend.

Pure code (arrays and frames in, arrays and frames out). Estimators follow scikit-learn
conventions and store plain parameters only, so they pickle cleanly as model artifacts.

- `PurchaseModel`: BG/NBD, MBG/NBD or Pareto/NBD, fitted on unique (frequency, recency, T)
  rows weighted by their customer counts (lifetimes for BG/NBD and MBG/NBD, our bounded search
  for Pareto/NBD), in an internally rescaled time unit; parameters are reported in the caller's
  time unit. Predictions come from the numerically safe closed forms of models/btyd.py.
- `SpendModel`: Gamma-Gamma model of the mean spend per repeat purchase.
- `discounted_value` / `predict_customers`: expected margin over a horizon, discounted per period,
  vectorised over customers (evaluated once per unique purchase history).

Time: `frequency` counts repeat purchase days; `recency`, `T` and every `t` are in the caller's
model time unit, which is `days_per_unit` days long (1 for days, 7 for weeks). Horizons and
discount periods are in days.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError

from features.errors import DataError
from features.frames import sorted_by_id
from models import _lifetimes, btyd
from models.clv_columns import EXPECTED_COLUMNS, INTERVAL_COLUMNS, PREDICTION_COLUMNS, PREDICTION_DTYPES  # noqa: F401 (re-exported)
from models.clv_formulas import bg_family_p_no_purchase, pareto_nbd_p_no_purchase
from models.clv_notes import fallback_description

log = logging.getLogger(__name__)

MODELS = tuple(_lifetimes.PURCHASE_PARAMS)
HISTORY_COLUMNS = ["frequency", "recency", "T"]
SPEND_COLUMNS = ["frequency", "monetary_value"]
FEATURE_COLUMNS = ["customer_id", "cutoff", *HISTORY_COLUMNS, "monetary_value"]
DAYS_PER_YEAR = 365.0
# A fitted parameter outside this range (in the fitting time unit) is a degenerate optimum.
_PARAM_RANGE = (1e-8, 1e8)
SPEND_FALLBACKS = ("credibility", "population_mean")


class FitError(DataError):
    """A model that could not be fitted on any attempt; the message says what was tried."""


# ----------------------------------------------------------------------------------- compression


def _strictly_increasing(keys: pd.DataFrame) -> bool:
    """Whether the rows are sorted and distinct already (e.g. compressed rows passed to a fit):
    each row lexicographically below the next; False at any NaN."""
    below, equal = np.zeros(len(keys) - 1, dtype=bool), np.ones(len(keys) - 1, dtype=bool)
    for column in keys.columns:
        values = keys[column].to_numpy()
        below |= equal & (values[:-1] < values[1:])
        equal &= values[:-1] == values[1:]
    return bool(below.all())


def _unique_rows(frame: pd.DataFrame, columns: Sequence[str], weights=None) -> tuple[pd.DataFrame, np.ndarray]:
    """Sorted unique rows of `columns` with their `count`, and each input row's position in them.
    Rows that are sorted and distinct already are their own unique rows (no grouping)."""
    columns = list(columns)
    keys = frame[columns].reset_index(drop=True)
    if len(keys) > 1 and _strictly_increasing(keys):
        counts = np.ones(len(keys), dtype=np.int64) if weights is None else np.asarray(weights, dtype=float) * 1.0
        return keys.assign(count=counts), np.arange(len(keys))
    grouped = keys.groupby(columns, sort=True, dropna=False)
    codes = grouped.ngroup().to_numpy()
    unique = grouped.size().reset_index(name="count")
    if weights is not None:
        unique["count"] = np.bincount(codes, weights=np.asarray(weights, dtype=float), minlength=len(unique))
    return unique, codes


def compress(frame: pd.DataFrame, columns: list[str], weights=None) -> pd.DataFrame:
    """Unique rows of `columns`, sorted, with `count` = rows (or summed `weights`) per unique row.

    Fitting a likelihood on these rows with `count` as weights is the same as fitting it on every
    customer (Fader & Hardie fit their models on such RFM "patterns").
    """
    return _unique_rows(frame, columns, weights)[0]


# ------------------------------------------------------------------------------- input checking


def _as_float_arrays(**arrays) -> dict[str, np.ndarray]:
    converted = {name: np.asarray(values, dtype=float).ravel() for name, values in arrays.items()}
    lengths = {name: len(values) for name, values in converted.items()}
    if len(set(lengths.values())) != 1:
        raise DataError(f"{', '.join(lengths)} must have one value per customer (lengths {lengths})")
    if not next(iter(lengths.values())):
        raise DataError(f"no customers: {', '.join(lengths)} are empty")
    return converted


def _check_finite(name: str, values: np.ndarray) -> None:
    bad = ~np.isfinite(values)
    if bad.any():
        raise DataError(f"{name} has {bad.sum()} missing or infinite values; every customer needs one")


def _check_counts(name: str, values: np.ndarray) -> None:
    _check_finite(name, values)
    bad = (values < 0) | (values != np.round(values))
    if bad.any():
        raise DataError(f"{name} must hold whole numbers >= 0 (repeat purchase days); {bad.sum()} values are not")


def _check_history(frequency: np.ndarray, recency: np.ndarray, T: np.ndarray) -> None:
    """The rules lifetimes relies on, as one-line errors naming the column."""
    _check_counts("frequency", frequency)
    for name, values in (("recency", recency), ("T", T)):
        _check_finite(name, values)
        if (values < 0).any():
            raise DataError(f"{name} has {(values < 0).sum()} negative values; it is measured from the first purchase")
    if (recency > T).any():
        raise DataError(f"recency exceeds T for {(recency > T).sum()} customers; both must count from the first "
                        "purchase, in the same time unit")
    if ((frequency == 0) & (recency != 0)).any():
        raise DataError(f"recency must be 0 when frequency is 0 ({((frequency == 0) & (recency != 0)).sum()} "
                        "customers break this)")


def _check_weights(weights, n: int) -> np.ndarray:
    if weights is None:
        return np.ones(n)
    weights = np.asarray(weights, dtype=float).ravel()
    if len(weights) != n or not np.isfinite(weights).all() or (weights <= 0).any():
        raise DataError(f"weights must be {n} positive customer counts, one per row")
    return weights


def resolve_time_scale(time_scale, max_T: float) -> float:
    """Divisor applied to recency and T before fitting.

    "auto": the power of ten that brings max(T) into [10, 100), e.g. 10 for a year in days,
    1 for a year in weeks, so lifetimes' search starts near the optimum in any time unit;
    a number: that divisor.
    """
    if time_scale == "auto":
        return float(10.0 ** (math.floor(math.log10(max_T)) - 1)) if max_T > 0 else 1.0
    if isinstance(time_scale, (int, float)) and not isinstance(time_scale, bool) and time_scale > 0:
        return float(time_scale)
    raise ValueError(f"time_scale must be 'auto' or a positive number, not {time_scale!r}")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def penalizer_ladder(penalizer, retry_penalizer) -> list[float]:
    """The penalties a fit tries in turn: the first, then the retry (unless None or the same)."""
    penalizers = [float(penalizer)]
    if retry_penalizer is not None and float(retry_penalizer) != penalizers[0]:
        penalizers.append(float(retry_penalizer))
    return penalizers


def _record_failure(failures: list[str], name: str, penalizer: float, exc: BaseException, verb: str = "failed") -> None:
    """One rung of a penalizer ladder that did not give a usable fit: kept for the error, logged now."""
    failures.append(f"penalizer {penalizer:g}: {_one_line(exc).rstrip('.')}")
    log.warning("%s fit with penalizer %g %s: %s", name, penalizer, verb, _one_line(exc))


def _check_fitted(model, attribute: str = "params_") -> None:
    if not hasattr(model, attribute):
        raise NotFittedError(f"this {type(model).__name__} is not fitted yet; call fit() first")


# ------------------------------------------------------------------------------ purchase models


class PurchaseModel(BaseEstimator):
    """BG/NBD-family model of repeat purchases and dropout ("buy till you die").

    model: "bgnbd" (Fader, Hardie & Lee 2005), "mbgnbd" (Batislam et al. 2007) or "paretonbd"
    (Schmittlein et al. 1987). penalizer: L2 penalty of the first fit (lifetimes' penalizer_coef,
    on the per-customer mean log-likelihood); retry_penalizer: penalty of the one retry after a
    failed fit (None: no retry). time_scale: "auto" or a divisor of recency/T used while fitting.
    random_state: seeds the Pareto/NBD search's starting point (the BG/NBD and MBG/NBD searches
    start from lifetimes' fixed point). max_iterations: iteration cap of each search (all three
    models); time_budget_s: wall-time budget of each Pareto/NBD search (not retried when over).

    Fitted: params_ (name -> value, in the caller's time unit: r, alpha, a, b or r, alpha, s,
    beta; alpha and beta are rates per time unit), model_, n_customers_, n_unique_rows_,
    penalizer_ (the one that succeeded), time_scale_, log_likelihood_ (total, unpenalised).
    """

    def __init__(self, model="bgnbd", penalizer=0.0, retry_penalizer=0.001, time_scale="auto", random_state=None,
                 max_iterations=_lifetimes.PARETO_NBD_MAXITER, time_budget_s=_lifetimes.PARETO_NBD_TIME_BUDGET_S):
        self.model = model
        self.penalizer = penalizer
        self.retry_penalizer = retry_penalizer
        self.time_scale = time_scale
        self.random_state = random_state
        self.max_iterations = max_iterations
        self.time_budget_s = time_budget_s

    @classmethod
    def from_params(cls, model: str, params: dict[str, float], **init_params) -> PurchaseModel:
        """A model with known parameters (caller's time unit), e.g. from a registry or a simulation."""
        instance = cls(model=model, **init_params)
        if model not in MODELS or set(params) != set(_lifetimes.PURCHASE_PARAMS[model]):
            expected = _lifetimes.PURCHASE_PARAMS.get(model)
            raise ValueError(f"{model!r} needs parameters {expected}, got {sorted(params)}")
        instance.params_ = {name: float(params[name]) for name in _lifetimes.PURCHASE_PARAMS[model]}
        btyd.check_params(instance.params_)
        instance.model_ = model
        return instance

    # -- fitting

    def fit(self, frequency, recency, T, weights=None) -> PurchaseModel:
        """Fit on one row per customer (or per pattern, with `weights` customers each)."""
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {', '.join(MODELS)}, not {self.model!r}")
        data = _as_float_arrays(frequency=frequency, recency=recency, T=T)
        _check_history(data["frequency"], data["recency"], data["T"])
        weights = _check_weights(weights, len(data["T"]))
        name = _lifetimes.PURCHASE_MODEL_NAMES[self.model]
        n_customers = float(weights.sum())
        if not (data["frequency"] > 0).any():
            raise FitError(f"cannot fit {name}: none of the {n_customers:.0f} customers has a repeat purchase "
                           "(frequency > 0), so purchase rates and dropout are not identifiable; nothing was tried")

        rows = compress(pd.DataFrame(data), HISTORY_COLUMNS, weights)
        scale = resolve_time_scale(self.time_scale, float(rows["T"].max()))
        log.info("fitting %s on %.0f customers (%d unique frequency/recency/T rows), time divided by %g",
                 name, n_customers, len(rows), scale)
        scaled_params, penalizer = self._fit_with_retry(rows, scale, n_customers)

        self.params_ = {key: value * scale if key in _lifetimes.TIME_RATE_PARAMS else value
                        for key, value in scaled_params.items()}
        self.model_ = self.model
        self.n_customers_ = int(n_customers) if n_customers.is_integer() else n_customers
        self.n_unique_rows_ = len(rows)
        self.penalizer_ = float(penalizer)
        self.time_scale_ = scale
        self.log_likelihood_ = _lifetimes.purchase_log_likelihood(
            self.model, self.params_, *(rows[c].to_numpy() for c in HISTORY_COLUMNS), rows["count"].to_numpy())
        log.info("%s fitted: %s, log-likelihood %.2f", name,
                 ", ".join(f"{k}={v:.4g}" for k, v in self.params_.items()), self.log_likelihood_)
        return self

    def _attempts(self) -> list[float]:
        return penalizer_ladder(self.penalizer, self.retry_penalizer)

    def _start(self, n_params: int):
        """Pareto/NBD starting point near 1 in lifetimes' internal unit (max T = 1), as lifetimes draws it."""
        if self.model != "paretonbd":
            return None
        return np.exp(np.random.default_rng(self.random_state).normal(0.0, 0.05, n_params))

    def _fit_with_retry(self, rows: pd.DataFrame, scale: float, n_customers: float) -> tuple[dict, float]:
        name = _lifetimes.PURCHASE_MODEL_NAMES[self.model]
        frequency = rows["frequency"].to_numpy()
        recency, T = rows["recency"].to_numpy() / scale, rows["T"].to_numpy() / scale
        failures = []
        for penalizer in self._attempts():
            try:
                params = _lifetimes.fit_purchase(self.model, frequency, recency, T, rows["count"].to_numpy(),
                                                 penalizer, self._start(len(_lifetimes.PURCHASE_PARAMS[self.model])),
                                                 max_iterations=self.max_iterations, time_budget_s=self.time_budget_s)
                _check_interior(params)
                return params, penalizer
            except btyd.FitBudgetExceeded as exc:
                _record_failure(failures, name, penalizer, exc, "stopped")
                raise FitError(
                    f"{name} fit on {n_customers:.0f} customers ({len(rows)} unique frequency/recency/T rows) ran over "
                    f"its budget: {'; '.join(failures)}. Raise clv.fit_time_budget_s or clv.fit_max_iterations, "
                    "or choose another clv.model") from None
            except _lifetimes.FIT_FAILURES as exc:
                _record_failure(failures, name, penalizer, exc)
        raise FitError(
            f"{name} fit failed on {n_customers:.0f} customers ({len(rows)} unique frequency/recency/T rows, time "
            f"divided by {scale:g}); tried {'; '.join(failures)}. Check that frequency, recency and T are "
            "consistent, raise clv.retry_penalizer (e.g. 0.01), or choose another clv.model")

    # -- predictions (arrays in the caller's time unit)

    def _history(self, frequency, recency, T) -> tuple[tuple[np.ndarray, ...], tuple[int, ...]]:
        _check_fitted(self)
        arrays = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in (frequency, recency, T)))
        return tuple(np.atleast_1d(a).ravel() for a in arrays), arrays[0].shape

    def p_alive(self, frequency, recency, T) -> np.ndarray:
        """P(customer still active at T | frequency, recency, T)."""
        (f, r, age), shape = self._history(frequency, recency, T)
        return btyd.p_alive(self.model_, self.params_, f, r, age).reshape(shape)

    def expected_purchases(self, t, frequency, recency, T) -> np.ndarray:
        """E[X(T, T+t) | frequency, recency, T]: expected repeat purchases in the next t time units."""
        (f, r, age), shape = self._history(frequency, recency, T)
        t = _check_horizon(t)
        if t == 0:
            return np.zeros(shape)
        return btyd.conditional_expected(self.model_, self.params_, t, f, r, age).reshape(shape)

    def p_no_purchase(self, t, frequency, recency, T) -> np.ndarray:
        """P(X(T, T+t) = 0 | frequency, recency, T), closed form (see models/clv_formulas.py)."""
        (f, r, age), shape = self._history(frequency, recency, T)
        return self._p_no_purchase(_check_horizon(t), f, age, self.p_alive(f, r, age)).reshape(shape)

    def _p_no_purchase(self, t: float, frequency: np.ndarray, T: np.ndarray, p_alive: np.ndarray) -> np.ndarray:
        params = self.params_
        if self.model_ == "paretonbd":
            p0 = pareto_nbd_p_no_purchase(p_alive, params["r"], params["alpha"], params["s"], params["beta"],
                                          t, frequency, T)
        else:
            p0 = bg_family_p_no_purchase(p_alive, params["r"], params["alpha"], t, frequency, T)
        return np.clip(p0, 0.0, 1.0)

    def expected_purchases_unconditional(self, t) -> np.ndarray:
        """E[X(t)]: expected repeat purchases in (0, t] of a newly acquired customer."""
        _check_fitted(self)
        t = np.asarray(t, dtype=float)
        if (t < 0).any():
            raise ValueError("t must be >= 0")
        return btyd.unconditional_expected(self.model_, self.params_, t)


def _check_horizon(t) -> float:
    t = float(t)
    if not np.isfinite(t) or t < 0:
        raise ValueError(f"t must be a finite number of time units >= 0, not {t}")
    return t


def _check_interior(params: dict[str, float]) -> None:
    """A 'converged' search that ran off to 0 or infinity did not find a usable optimum."""
    low, high = _PARAM_RANGE
    off = {k: v for k, v in params.items() if not (np.isfinite(v) and low < v < high)}
    if off:
        raise FloatingPointError(f"degenerate optimum {', '.join(f'{k}={v:.3g}' for k, v in off.items())}")


# --------------------------------------------------------------------------------- spend model


class SpendModel(BaseEstimator):
    """Gamma-Gamma model of the mean spend per repeat purchase (Fader, Hardie & Lee 2005, note 025).

    Fitted on repeat customers (frequency > 0) with positive mean spend; others are left out and
    get the population mean. penalizer: lifetimes' L2 penalty of the first fit; retry_penalizer:
    penalty of the one retry after a failed fit (None: no retry), as for the purchase models;
    correlation_warn: a warning is logged when |corr(frequency, monetary_value)| among fitted
    customers exceeds it (the model assumes spend independent of frequency). fallback: what to do
    when every penalty of the ladder fails (small or very heavy-tailed spend, e.g. q <= 1):
    "credibility" keeps Gamma-Gamma's form, a weighting x / (x + k) of the customer's mean spend
    against the population mean, with k estimated without a distribution (Buhlmann credibility:
    k = within-customer variance / between-customer variance, from the regression of the squared
    deviation of a customer's mean on 1 / frequency), so customers keep their own spend level;
    "population_mean" gives every customer the customer-weighted mean of the fitted customers'
    mean spend (no per-customer spend differences, but a finite, unbiased level); None raises.

    Fitted: params_ {p, q, v} ({} for a fallback), population_mean_spend_ (p v / (q - 1), or the
    fallback's mean), credibility_k_ (the k above: (q - 1) / p for Gamma-Gamma, inf for
    population_mean), source_ ("gamma_gamma", "fallback:credibility" or "fallback:population_mean"),
    fit_failure_ (why the fallback was used, else None), penalizer_ (the one that succeeded, None for
    a fallback), n_fit_, n_excluded_, frequency_spend_corr_.
    """

    def __init__(self, penalizer=0.0, correlation_warn=0.3, retry_penalizer=0.001, fallback="credibility"):
        self.penalizer = penalizer
        self.correlation_warn = correlation_warn
        self.retry_penalizer = retry_penalizer
        self.fallback = fallback

    @classmethod
    def from_params(cls, params: dict[str, float], **init_params) -> SpendModel:
        """A model with known Gamma-Gamma parameters p, q, v (q > 1)."""
        instance = cls(**init_params)
        instance._set_params({name: float(params[name]) for name in _lifetimes.SPEND_PARAMS})
        return instance

    def _set_params(self, params: dict[str, float]) -> None:
        btyd.check_params(params)
        if params["q"] <= 1.0:
            raise FitError(f"Gamma-Gamma fit gave q = {params['q']:.3g} <= 1: the population mean spend p*v/(q-1) is "
                           "undefined (spend too heavy-tailed); cap extreme monetary_value or raise "
                           "clv.spend_penalizer")
        self.params_ = params
        self.population_mean_spend_ = params["p"] * params["v"] / (params["q"] - 1.0)
        self.credibility_k_ = (params["q"] - 1.0) / params["p"]
        self.source_ = "gamma_gamma"
        self.fit_failure_ = None

    def fit(self, frequency, monetary_value, weights=None) -> SpendModel:
        data = _as_float_arrays(frequency=frequency, monetary_value=monetary_value)
        _check_counts("frequency", data["frequency"])
        weights = _check_weights(weights, len(data["frequency"]))
        included = _spend_modelled(data["frequency"], data["monetary_value"])
        n_fit, n_excluded = float(weights[included].sum()), float(weights[~included].sum())
        if not included.any():
            raise FitError(f"cannot fit Gamma-Gamma: none of the {n_excluded:.0f} customers has frequency > 0 and "
                           "monetary_value > 0; nothing was tried")
        rows = compress(pd.DataFrame(data)[included], SPEND_COLUMNS, weights[included])
        corr = _weighted_corr(rows["frequency"].to_numpy(), rows["monetary_value"].to_numpy(), rows["count"].to_numpy())
        if np.isfinite(corr) and abs(corr) > self.correlation_warn:
            log.warning("Gamma-Gamma assumes spend independent of frequency, but corr(frequency, monetary_value) = "
                        "%.3f among the %.0f fitted customers (|corr| > %g)", corr, n_fit, self.correlation_warn)
        log.info("fitting Gamma-Gamma on %.0f repeat customers (%d unique rows); %.0f left out (frequency 0 or "
                 "monetary_value <= 0)", n_fit, len(rows), n_excluded)
        if self.fallback not in (None, *SPEND_FALLBACKS):
            raise ValueError(f"fallback must be one of {', '.join(SPEND_FALLBACKS)} or None, not {self.fallback!r}")
        try:
            params, penalizer = self._fit_with_retry(rows, n_fit)
        except FitError as exc:
            if self.fallback is None:
                raise FitError(f"{exc} Raise clv.spend_retry_penalizer (e.g. 0.01; first fit: clv.spend_penalizer), "
                               "or set clv.spend_fallback: credibility") from None
            self._set_fallback(rows, str(exc))
        else:
            self._set_params(params)
            self.penalizer_ = penalizer
        self.n_fit_ = int(n_fit) if n_fit.is_integer() else n_fit
        self.n_excluded_ = int(n_excluded) if n_excluded.is_integer() else n_excluded
        self.frequency_spend_corr_ = float(corr)
        if self.source_ == "gamma_gamma":
            log.info("Gamma-Gamma fitted: %s, population mean spend %.4g",
                     ", ".join(f"{k}={v:.4g}" for k, v in self.params_.items()), self.population_mean_spend_)
        return self

    def _set_fallback(self, rows: pd.DataFrame, failure: str) -> None:
        """The population mean is the customer-weighted mean of the fitted customers' mean spend; each
        customer's own mean gets the credibility weight x / (x + k) (k = inf for population_mean)."""
        frequency, spend, count = (rows[c].to_numpy(dtype=float) for c in ("frequency", "monetary_value", "count"))
        mean = float(np.average(spend, weights=count))
        k = credibility_constant(frequency, spend, count, mean) if self.fallback == "credibility" else math.inf
        log.warning("%s; expected spend falls back to %s (clv.spend_fallback: %s; null stops instead)",
                    failure.rstrip("."), fallback_description(k, mean), self.fallback)
        self.params_ = {}
        self.population_mean_spend_ = mean
        self.credibility_k_ = k
        self.source_ = f"fallback:{self.fallback}"
        self.fit_failure_ = failure
        self.penalizer_ = None

    def _attempts(self) -> list[float]:
        return penalizer_ladder(self.penalizer, self.retry_penalizer)

    def _fit_with_retry(self, rows: pd.DataFrame, n_fit: float) -> tuple[dict[str, float], float]:
        """Gamma-Gamma with penalizer, then retry_penalizer: the first fit with a finite, interior optimum
        and q > 1 (a finite population mean spend)."""
        failures = []
        for penalizer in self._attempts():
            try:
                params = _lifetimes.fit_spend(rows["frequency"].to_numpy(), rows["monetary_value"].to_numpy(),
                                              rows["count"].to_numpy(), penalizer)
                _check_interior(params)
                if params["q"] <= 1.0:
                    raise FloatingPointError(f"q = {params['q']:.3g} <= 1, so the population mean spend p*v/(q-1) "
                                             "is undefined (spend too heavy-tailed)")
                return params, penalizer
            except _lifetimes.FIT_FAILURES as exc:
                _record_failure(failures, "Gamma-Gamma", penalizer, exc)
        raise FitError(f"Gamma-Gamma fit failed on {n_fit:.0f} repeat customers ({len(rows)} unique rows); tried "
                       f"{'; '.join(failures)}.")

    def expected_avg_spend(self, frequency, monetary_value) -> np.ndarray:
        """E[mean spend per purchase | frequency, monetary_value] (note 025, eq. 5): a credibility
        weighting of the customer's mean and the population mean; customers left out of the fit
        (frequency 0, monetary_value <= 0 or missing) get population_mean_spend_."""
        _check_fitted(self)
        frequency, monetary_value = np.broadcast_arrays(np.asarray(frequency, dtype=float),
                                                        np.asarray(monetary_value, dtype=float))
        k = getattr(self, "credibility_k_", None)
        if k is None:  # a model pickled before credibility_k_ existed
            k = (self.params_["q"] - 1.0) / self.params_["p"] if self.params_ else math.inf
        if math.isinf(k):
            return np.full(frequency.shape, self.population_mean_spend_)
        with np.errstate(invalid="ignore", divide="ignore"):
            individual_weight = np.where(frequency > 0, frequency / (frequency + k), 0.0)
        blended = (1.0 - individual_weight) * self.population_mean_spend_ + individual_weight * monetary_value
        return np.where(_spend_modelled(frequency, monetary_value), blended, self.population_mean_spend_)


def credibility_constant(frequency: np.ndarray, spend: np.ndarray, count: np.ndarray, mean: float) -> float:
    """Buhlmann's k = s2 / a for mean spends ``spend`` over ``frequency`` purchases (rows seen ``count``
    times): E[(spend - mean)^2 | x] = a + s2 / x, fitted by weighted least squares. a <= 0 (no spread
    between customers beyond noise) gives inf (everyone gets the mean); s2 <= 0 gives 0 (own means)."""
    design = np.column_stack([np.ones_like(frequency), 1.0 / frequency]) * np.sqrt(count)[:, None]
    target = (spend - mean) ** 2 * np.sqrt(count)
    if len(np.unique(frequency)) < 2:
        return math.inf
    (between, within), *_ = np.linalg.lstsq(design, target, rcond=None)
    if not between > 0:
        return math.inf
    return float(max(within, 0.0) / between)


def _spend_modelled(frequency: np.ndarray, monetary_value: np.ndarray) -> np.ndarray:
    """Customers the Gamma-Gamma model describes: at least one repeat purchase, positive mean spend."""
    with np.errstate(invalid="ignore"):
        return (frequency > 0) & (monetary_value > 0) & np.isfinite(monetary_value)


def _weighted_corr(x: np.ndarray, y: np.ndarray, weights: np.ndarray) -> float:
    """Pearson correlation of x and y over customers (rows counted `weights` times); NaN if constant."""
    mx, my = np.average(x, weights=weights), np.average(y, weights=weights)
    cov = np.average((x - mx) * (y - my), weights=weights)
    var = np.average((x - mx) ** 2, weights=weights) * np.average((y - my) ** 2, weights=weights)
    return float(cov / np.sqrt(var)) if var > 0 else float("nan")


# -------------------------------------------------------------------------- discounted value


def period_discount_rate(annual_rate, period_days) -> float:
    """Discount rate per period of `period_days` days equivalent to `annual_rate` per 365 days."""
    return float((1.0 + annual_rate) ** (period_days / DAYS_PER_YEAR) - 1.0)


def period_discount_factors(n_periods: int, period_rate: float) -> np.ndarray:
    """(1 + period_rate)^-i for the periods i = 1 .. n_periods: what a value of period i is worth at the cutoff."""
    return (1.0 + period_rate) ** -np.arange(1, n_periods + 1, dtype=float)


def _period_ends_days(horizon_days: float, period_days: float) -> np.ndarray:
    """End of each discount period in days: period_days, 2 period_days, ..., capped at the horizon."""
    if not (horizon_days > 0 and period_days > 0):
        raise ValueError("horizon_days and period_days must be > 0")
    n_periods = math.ceil(horizon_days / period_days - 1e-9)  # 3 * 30.415 / 30.415 may be 3.0000000000000004
    return np.minimum(np.arange(1, n_periods + 1) * float(period_days), float(horizon_days))


def _cumulative_expected_purchases(purchase_model, frequency, recency, T, horizon_days, days_per_unit,
                                   period_days) -> np.ndarray:
    """E[X(T, T + end_i)] for each period end (rows) and customer (columns)."""
    ends = _period_ends_days(horizon_days, period_days) / float(days_per_unit)
    return np.vstack([purchase_model.expected_purchases(end, frequency, recency, T) for end in ends])


def _discount(cumulative: np.ndarray, period_rate: float) -> np.ndarray:
    """sum_i (E[X(T, T+end_i)] - E[X(T, T+start_i)]) / (1 + period_rate)^i."""
    per_period = np.diff(cumulative, axis=0, prepend=0.0)
    factors = period_discount_factors(len(cumulative), period_rate)
    # A period-by-period sum, not a matrix product: BLAS sums in an order that depends on the
    # number of customers, and a customer scored alone must get the batch's value to the last bit.
    return np.sum(factors[:, None] * per_period, axis=0)


def discounted_expected_purchases(purchase_model, frequency, recency, T, horizon_days, days_per_unit,
                                  period_rate, period_days) -> np.ndarray:
    """Expected purchases over the horizon, each discounted to the cutoff by its period (i = 1, 2, ...)."""
    cumulative = _cumulative_expected_purchases(purchase_model, frequency, recency, T, horizon_days,
                                                days_per_unit, period_days)
    return _discount(cumulative, period_rate)


def discounted_value(purchase_model, expected_spend, frequency, recency, T, horizon_days, days_per_unit,
                     margin, period_rate, period_days) -> np.ndarray:
    """CLV over the horizon: sum over periods i = 1..ceil(horizon/period) of
    margin * spend * (E[X(T, T+end_i)] - E[X(T, T+start_i)]) / (1 + period_rate)^i.

    Vectorised over customers (one model evaluation per period end); the last period ends at the
    horizon. margin and expected_spend are scalars or one value per customer.
    """
    discounted = discounted_expected_purchases(purchase_model, frequency, recency, T, horizon_days,
                                               days_per_unit, period_rate, period_days)
    return np.asarray(margin, dtype=float) * np.asarray(expected_spend, dtype=float) * discounted


def predict_customers(purchase_model: PurchaseModel, spend_model: SpendModel, features: pd.DataFrame,
                      horizon_days, days_per_unit, margin, annual_discount_rate, period_days) -> pd.DataFrame:
    """Per-customer predictions over (cutoff, cutoff + horizon_days] (the CLV predictions contract).

    features: customer_id, cutoff, frequency, recency, T (model time unit), monetary_value.
    Returns customer_id, cutoff, model, p_alive, expected_purchases, p_no_purchase,
    expected_avg_spend, clv in the input's row order (and index). The purchase model is evaluated
    once per unique (frequency, recency, T).
    """
    missing = [c for c in FEATURE_COLUMNS if c not in features.columns]
    if missing:
        raise DataError(f"features lack column(s) {', '.join(missing)} needed for CLV predictions")
    history, codes = _unique_rows(features, HISTORY_COLUMNS)
    frequency, recency, T = (history[c].to_numpy(dtype=float) for c in HISTORY_COLUMNS)
    _check_history(frequency, recency, T)

    horizon = float(horizon_days) / float(days_per_unit)
    p_alive = purchase_model.p_alive(frequency, recency, T)
    cumulative = _cumulative_expected_purchases(purchase_model, frequency, recency, T, horizon_days,
                                                days_per_unit, period_days)
    discounted = _discount(cumulative, period_discount_rate(annual_discount_rate, period_days))
    p_no_purchase = purchase_model._p_no_purchase(horizon, frequency, T, p_alive)
    spend = spend_model.expected_avg_spend(features["frequency"].to_numpy(dtype=float),
                                           features["monetary_value"].to_numpy(dtype=float))
    clv = np.asarray(margin, dtype=float) * spend * discounted[codes]
    _check_outputs(purchase_model, {"p_alive": p_alive, "expected_purchases": cumulative[-1],
                                    "p_no_purchase": p_no_purchase}, history)
    return pd.DataFrame({
        "customer_id": features["customer_id"].array,
        "cutoff": features["cutoff"].array,
        "model": purchase_model.model_,
        "p_alive": p_alive[codes],
        "expected_purchases": cumulative[-1][codes],
        "p_no_purchase": p_no_purchase[codes],
        "expected_avg_spend": spend,
        "clv": clv,
    }, index=features.index)


def _check_outputs(purchase_model, outputs: dict[str, np.ndarray], history: pd.DataFrame) -> None:
    """A non-finite or out-of-range model output is a one-line error naming a customer history, never a NaN
    passed on (the closed forms of models/btyd.py are built so that this does not happen)."""
    for name, values in outputs.items():
        bad = ~np.isfinite(values) | (values < 0) | ((values > 1) if name != "expected_purchases" else False)
        if bad.any():
            row = history.iloc[int(np.flatnonzero(bad)[0])]
            raise FitError(f"{purchase_model.model_} gave {name} = {float(values[bad][0])} for {int(bad.sum())} "
                           f"customer histories, e.g. frequency={row['frequency']:g}, recency={row['recency']:g}, "
                           f"T={row['T']:g}, with parameters {purchase_model.params_}; choose another clv.model")


def as_predictions(frame: pd.DataFrame | None = None) -> pd.DataFrame:
    """``frame`` (None: no rows) in the predictions files' column order and dtypes, sorted by customer_id;
    interval columns it lacks are NaN (models/clv_intervals.py fills them)."""
    if frame is None:
        frame = pd.DataFrame({name: pd.Series([], dtype=dtype) for name, dtype in PREDICTION_DTYPES.items()})
    missing = {name: np.nan for name in (*INTERVAL_COLUMNS, *EXPECTED_COLUMNS) if name not in frame.columns}
    out = frame.assign(**missing).loc[:, PREDICTION_COLUMNS].astype(PREDICTION_DTYPES)
    return sorted_by_id(out)


@dataclass(frozen=True)
class ClvSettings:
    """How fitted models become CLV: days per model time unit, horizon (days), margin rate,
    annual discount rate and discount period (days)."""

    days_per_unit: float
    horizon_days: int
    margin: float
    discount_rate: float
    discount_period_days: int

    @property
    def horizon_units(self) -> float:
        """The horizon in model time units."""
        return self.horizon_days / self.days_per_unit

    def predict(self, purchase_model: PurchaseModel, spend_model: SpendModel, features: pd.DataFrame) -> pd.DataFrame:
        """:func:`predict_customers` with these settings."""
        return predict_customers(purchase_model, spend_model, features, horizon_days=self.horizon_days,
                                 days_per_unit=self.days_per_unit, margin=self.margin,
                                 annual_discount_rate=self.discount_rate, period_days=self.discount_period_days)
