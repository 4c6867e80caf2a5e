"""The one door to the `lifetimes` package: fitting its models on (compressed) rows and
evaluating its published closed forms from plain parameter dictionaries.

Nothing here keeps a lifetimes fitter object around: fitters hold lambdas and data that do not
pickle, so the public models in ``models/clv.py`` store parameters only and rebuild a
parameters-only fitter whenever they need one of lifetimes' formulas.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings

import numpy as np
import pandas as pd
from scipy.optimize import minimize

with warnings.catch_warnings():
    # lifetimes 0.11.3 imports pkg_resources, which warns at import time; nothing to act on.
    warnings.simplefilter("ignore", UserWarning)
    from lifetimes import BetaGeoFitter, GammaGammaFitter, ModifiedBetaGeoFitter, ParetoNBDFitter
    from lifetimes.utils import ConvergenceError

log = logging.getLogger(__name__)

PURCHASE_PARAMS: dict[str, tuple[str, ...]] = {
    "bgnbd": ("r", "alpha", "a", "b"),
    "mbgnbd": ("r", "alpha", "a", "b"),
    "paretonbd": ("r", "alpha", "s", "beta"),
}
PURCHASE_MODEL_NAMES = {"bgnbd": "BG/NBD", "mbgnbd": "MBG/NBD", "paretonbd": "Pareto/NBD"}
TIME_RATE_PARAMS = ("alpha", "beta")  # parameters in 1 / time: they scale with the time unit
SPEND_PARAMS = ("p", "q", "v")

# Convergence of the Pareto/NBD search (mean log-likelihood per customer, log-parameters).
PARETO_NBD_TOL = 1e-10
PARETO_NBD_MAXITER = 5000

# What a failed lifetimes fit can raise once its inputs have been validated.
FIT_FAILURES = (ConvergenceError, np.linalg.LinAlgError, FloatingPointError, ValueError, ZeroDivisionError)


class PerCustomerParetoNBDFitter(ParetoNBDFitter):
    """lifetimes' Pareto/NBD fitter with the conventions of its BG/NBD fitter.

    lifetimes 0.11.3 divides the weighted Pareto/NBD log-likelihood by the MEAN weight, so a fit on
    compressed rows optimises a differently scaled objective (and a differently weighted penalty)
    than the same customers uncompressed, and its Nelder-Mead search on raw parameters (tol 1e-4)
    never reports failure. Here the objective is the mean log-likelihood per customer (as in
    BetaGeoFitter), the search runs on log-parameters to tight tolerances (2-4 times fewer
    likelihood evaluations than Nelder-Mead to the same optimum), and non-convergence raises.
    """

    @staticmethod
    def _negative_log_likelihood(params, freq, rec, T, weights, penalizer_coef):
        params = np.asarray(params, dtype=float)
        if np.any(params <= 0.0):
            return np.inf
        cll = ParetoNBDFitter._conditional_log_likelihood(params, freq, rec, T)
        return -(weights * cll).sum() / weights.sum() + penalizer_coef * np.sum(params**2)

    def _fit(self, minimizing_function_args, iterative_fitting, initial_params, params_size, disp,
             tol=PARETO_NBD_TOL, fit_method=None, maxiter=PARETO_NBD_MAXITER, **kwargs):
        """L-BFGS-B (central-difference gradient) on log-parameters; Nelder-Mead from where it stopped
        when it reports failure. Returns (parameters, mean negative log-likelihood)."""

        def objective(log_params):
            return self._negative_log_likelihood(np.exp(log_params), *minimizing_function_args)

        start = np.zeros(params_size) if initial_params is None else np.log(initial_params)
        output = minimize(objective, start, method="L-BFGS-B", jac="3-point",
                          options={"ftol": 1e-15, "gtol": tol, "maxiter": maxiter})
        if not output.success or not np.isfinite(output.fun):
            log.debug("Pareto/NBD L-BFGS-B stopped (%s); continuing with Nelder-Mead", output.message)
            output = minimize(objective, output.x if np.isfinite(output.fun) else start, method="Nelder-Mead",
                              options={"xatol": tol, "fatol": tol, "maxiter": maxiter, "maxfev": 2 * maxiter})
        if not output.success or not np.isfinite(output.fun):
            raise ConvergenceError(f"Pareto/NBD search did not converge: {output.message}")
        return np.exp(output.x), output.fun


_FIT_CLASSES = {"bgnbd": BetaGeoFitter, "mbgnbd": ModifiedBetaGeoFitter, "paretonbd": PerCustomerParetoNBDFitter}
_PREDICT_CLASSES = {"bgnbd": BetaGeoFitter, "mbgnbd": ModifiedBetaGeoFitter, "paretonbd": ParetoNBDFitter}


@contextlib.contextmanager
def _quiet_lifetimes_call():
    """lifetimes prints the optimiser output on failure and its line searches may overflow; both
    are expected during a fit whose outcome we check ourselves."""
    printed = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(printed):
        warnings.simplefilter("ignore", RuntimeWarning)
        yield
    if printed.getvalue().strip():
        log.debug("lifetimes output: %s", " ".join(printed.getvalue().split()))


def fit_purchase(model: str, frequency, recency, T, weights, penalizer: float,
                 initial_params=None) -> dict[str, float]:
    """Fit a BG/NBD-family model on rows with `weights` customers each; parameters in the unit of T.

    Raises one of FIT_FAILURES when lifetimes fails.
    """
    fitter = _FIT_CLASSES[model](penalizer_coef=penalizer)
    options = {"tol": PARETO_NBD_TOL, "maxiter": PARETO_NBD_MAXITER} if model == "paretonbd" else {}
    with _quiet_lifetimes_call():
        fitter.fit(frequency, recency, T, weights=weights, initial_params=initial_params, **options)
    return {name: float(fitter.params_[name]) for name in PURCHASE_PARAMS[model]}


def purchase_log_likelihood(model: str, params: dict[str, float], frequency, recency, T, weights) -> float:
    """Total (unpenalised) log-likelihood of the customers, in the time unit of `params`."""
    values = np.array([params[name] for name in PURCHASE_PARAMS[model]])
    weights = np.asarray(weights, dtype=float)
    if model == "paretonbd":
        cll = ParetoNBDFitter._conditional_log_likelihood(values, frequency, recency, T)
        return float((weights * cll).sum())
    mean_nll = _FIT_CLASSES[model]._negative_log_likelihood(np.log(values), frequency, recency, T, weights, 0.0)
    return float(-mean_nll * weights.sum())


def fit_spend(frequency, monetary_value, weights, penalizer: float) -> dict[str, float]:
    """Fit Gamma-Gamma on repeat customers with positive mean spend (rows with `weights` customers)."""
    fitter = GammaGammaFitter(penalizer_coef=penalizer)
    with _quiet_lifetimes_call():
        fitter.fit(frequency, monetary_value, weights=weights)
    return {name: float(fitter.params_[name]) for name in SPEND_PARAMS}


def _purchase_fitter(model: str, params: dict[str, float]):
    """A lifetimes fitter that knows only its parameters: enough for every closed form."""
    fitter = _PREDICT_CLASSES[model]()
    fitter.params_ = pd.Series({name: float(params[name]) for name in PURCHASE_PARAMS[model]})
    return fitter


def p_alive(model: str, params: dict[str, float], frequency, recency, T) -> np.ndarray:
    """P(alive at T | x, t_x, T): FHL (2005) / note 021, Batislam et al. (2007), Fader & Hardie note 009."""
    values = _purchase_fitter(model, params).conditional_probability_alive(frequency, recency, T)
    return np.asarray(values, dtype=float).reshape(np.shape(frequency))


def conditional_expected_purchases(model: str, params: dict[str, float], t, frequency, recency, T) -> np.ndarray:
    """E[X(T, T+t) | x, t_x, T] (repeat purchases in the next t time units)."""
    fitter = _purchase_fitter(model, params)
    values = fitter.conditional_expected_number_of_purchases_up_to_time(t, frequency, recency, T)
    return np.asarray(values, dtype=float)


def unconditional_expected_purchases(model: str, params: dict[str, float], t) -> np.ndarray:
    """E[X(t)]: repeat purchases in (0, t] of a customer just acquired."""
    return np.asarray(_purchase_fitter(model, params).expected_number_of_purchases_up_to_time(t), dtype=float)
