"""The one door to the `lifetimes` package: fitting BG/NBD, MBG/NBD and Gamma-Gamma on
(compressed) rows, and the dispatch of every purchase-model fit.

Pareto/NBD is fitted by our own bounded search (models/btyd.py) and every prediction (P(alive),
expectations) comes from models/btyd.py's numerically safe closed forms: lifetimes' Pareto/NBD
likelihood calls scipy's hyp2f1 on unguarded arguments per row, and its predictions overflow to
NaN for heavy buyers (docs/clv_models.md). lifetimes stays the reference in the tests.

Nothing here keeps a lifetimes fitter object around: fitters hold lambdas and data that do not
pickle, so the public models in ``models/clv.py`` store parameters only. lifetimes is imported on
first use (a fit): predictions never need it, so a served CLV model loads without it (lifetimes
0.11.3 imports pkg_resources, which recent setuptools no longer ship).
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import warnings
from types import SimpleNamespace

import numpy as np

from models import btyd

log = logging.getLogger(__name__)

PURCHASE_PARAMS: dict[str, tuple[str, ...]] = {
    "bgnbd": ("r", "alpha", "a", "b"),
    "mbgnbd": ("r", "alpha", "a", "b"),
    "paretonbd": ("r", "alpha", "s", "beta"),
}
PURCHASE_MODEL_NAMES = {"bgnbd": "BG/NBD", "mbgnbd": "MBG/NBD", "paretonbd": "Pareto/NBD"}
TIME_RATE_PARAMS = ("alpha", "beta")  # parameters in 1 / time: they scale with the time unit
SPEND_PARAMS = ("p", "q", "v")

# Default bounds of the Pareto/NBD search (our own fitter, models/btyd.py).
PARETO_NBD_MAXITER = 1000
PARETO_NBD_TIME_BUDGET_S = 300.0


@functools.cache
def _lifetimes() -> SimpleNamespace:
    """lifetimes' fitters and ConvergenceError, imported once, on first use."""
    with warnings.catch_warnings():
        # lifetimes 0.11.3 imports pkg_resources, which warns at import time; nothing to act on.
        warnings.simplefilter("ignore", UserWarning)
        from lifetimes import BetaGeoFitter, GammaGammaFitter, ModifiedBetaGeoFitter
        from lifetimes.utils import ConvergenceError
    return SimpleNamespace(BetaGeoFitter=BetaGeoFitter, GammaGammaFitter=GammaGammaFitter,
                           ModifiedBetaGeoFitter=ModifiedBetaGeoFitter, ConvergenceError=ConvergenceError)


def _fit_class(model: str):
    api = _lifetimes()
    return {"bgnbd": api.BetaGeoFitter, "mbgnbd": api.ModifiedBetaGeoFitter}[model]


def __getattr__(name: str):
    """``FIT_FAILURES`` (what a failed fit can raise once its inputs have been validated) and
    ``ConvergenceError``, resolved on first access (PEP 562) so that importing this module does
    not import lifetimes."""
    if name == "ConvergenceError":
        return _lifetimes().ConvergenceError
    if name == "FIT_FAILURES":
        return (_lifetimes().ConvergenceError, np.linalg.LinAlgError, FloatingPointError, ValueError,
                ZeroDivisionError, btyd.SearchFailed)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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


def fit_purchase(model: str, frequency, recency, T, weights, penalizer: float, initial_params=None,
                 max_iterations: int = PARETO_NBD_MAXITER,
                 time_budget_s: float = PARETO_NBD_TIME_BUDGET_S) -> dict[str, float]:
    """Fit a BG/NBD-family model on rows with `weights` customers each; parameters in the unit of T.

    BG/NBD and MBG/NBD: lifetimes' likelihoods and search (closed forms, no hypergeometric terms, a
    few milliseconds per evaluation), BFGS capped at ``max_iterations`` iterations, without the
    Hessian lifetimes computes after it (:func:`_search`).
    Pareto/NBD: our bounded search (models/btyd.py), within ``max_iterations`` iterations and
    ``time_budget_s`` seconds. Raises one of FIT_FAILURES when a fit fails
    (btyd.FitBudgetExceeded when it runs over its budget).
    """
    if model == "paretonbd":
        start = np.ones(4) if initial_params is None else initial_params
        values, _, _ = btyd.fit_pareto_nbd(frequency, recency, T, weights, penalizer, start,
                                           max_iterations=max_iterations, time_budget_s=time_budget_s)
        return dict(zip(PURCHASE_PARAMS[model], (float(v) for v in values)))
    from lifetimes.utils import _check_inputs, _scale_time

    # BetaGeoFitter.fit (ModifiedBetaGeoFitter's calls it), step by step, up to its search.
    frequency, recency, T = np.asarray(frequency).astype(int), np.asarray(recency), np.asarray(T)
    _check_inputs(frequency, recency, T)
    scale = _scale_time(T)
    args = (frequency, recency * scale, T * scale, np.asarray(weights), penalizer)
    log_params = _search(_fit_class(model), args, initial_params, 4, int(max_iterations))
    params = np.exp(log_params)
    params[1] /= scale  # alpha, as lifetimes reports it
    return dict(zip(PURCHASE_PARAMS[model], (float(v) for v in params)))


def _search(fitter_class, args: tuple, initial_params, n_params: int, max_iterations: int | None) -> np.ndarray:
    """lifetimes' ``BaseFitter._fit`` search, the same call with the same arguments (so the same
    optimum, bit for bit), without what follows it there: the autograd Hessian (about 45% of a
    BG/NBD fit's time), the standard errors built from it and a copy of the data, none of which
    the models keep. Returns the log-parameters; ConvergenceError (lifetimes' message) when the
    search fails, as lifetimes raises it."""
    import lifetimes.fitters
    from autograd import value_and_grad

    options = {"disp": False} if max_iterations is None else {"disp": False, "maxiter": max_iterations}
    start = 0.1 * np.ones(n_params) if initial_params is None else initial_params
    with _quiet_lifetimes_call():
        output = lifetimes.fitters.minimize(value_and_grad(fitter_class._negative_log_likelihood), jac=True,
                                            method=None, tol=1e-7, x0=start, args=args, options=options,
                                            bounds=None)  # fmt: skip
        if not output.success:
            print(output)
            raise _lifetimes().ConvergenceError(
                "\nThe model did not converge. Try adding a larger penalizer to see if that helps convergence.\n")
    return output.x


def purchase_log_likelihood(model: str, params: dict[str, float], frequency, recency, T, weights) -> float:
    """Total (unpenalised) log-likelihood of the customers, in the time unit of `params`."""
    values = np.array([params[name] for name in PURCHASE_PARAMS[model]])
    weights = np.asarray(weights, dtype=float)
    if model == "paretonbd":
        cll = btyd.pareto_log_likelihood(*values, frequency, recency, T)
        return float((weights * cll).sum())
    mean_nll = _fit_class(model)._negative_log_likelihood(np.log(values), frequency, recency, T, weights, 0.0)
    return float(-mean_nll * weights.sum())


def fit_spend(frequency, monetary_value, weights, penalizer: float, initial_params=None) -> dict[str, float]:
    """Fit Gamma-Gamma on repeat customers with positive mean spend (rows with `weights` customers);
    ``initial_params``: log-parameters (p, q, v) the search starts from (None: lifetimes' start)."""
    from lifetimes.utils import _check_inputs

    # GammaGammaFitter.fit, step by step, up to its search (no q constraint, lifetimes' default).
    _check_inputs(frequency, monetary_value=monetary_value)
    args = (np.asarray(frequency).astype(float), np.asarray(monetary_value).astype(float), np.asarray(weights),
            penalizer)  # fmt: skip
    log_params = _search(_lifetimes().GammaGammaFitter, args, initial_params, 3, None)
    return dict(zip(SPEND_PARAMS, (float(v) for v in np.exp(log_params))))
