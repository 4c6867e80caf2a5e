"""BG/NBD, MBG/NBD and Gamma-Gamma likelihoods with closed-form gradients, for fast refits.

The same negative log-likelihoods as lifetimes' fitters (mean over the weighted customers plus
``penalizer * sum(params ** 2)``, searched on log-parameters with time divided by max T), with the
gradient written out (digamma terms) instead of taken by autograd. One evaluation costs a few
vectorised numpy passes: a refit is 10-30x faster than lifetimes' search, and reaches the same
optimum within the search tolerance (not bit for bit: the point estimates of the clv stage stay on
lifetimes' search, ``models._lifetimes``; the bootstrap refits of ``models.clv_intervals`` use
this module).

Gradients (log-parameters ``theta = log(params)``, so ``dNLL/dtheta = params * dNLL/dparams``):

- BG/NBD: LL = A1 + A2 + log(exp(A3) + [x > 0] exp(A4)) with
  A1 = lnG(r+x) - lnG(r) + r ln(alpha), A2 = lnG(a+b) + lnG(b+x) - lnG(b) - lnG(a+b+x),
  A3 = -(r+x) ln(alpha+T), A4 = ln(a) - ln(b+max(x,1)-1) - (r+x) ln(alpha+t_x);
- MBG/NBD: LL = A1 + A2' + A3 + log(1 + exp(A4')) with A2' as A2 at x+1 and
  A4' = ln(a) - ln(b+x) + (r+x) (ln(alpha+T) - ln(alpha+t_x));
- Gamma-Gamma: LL = lnG(px+q) - lnG(px) - lnG(q) + q ln(v) + (px-1) ln(m) + px ln(x) - (px+q) ln(xm+v).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from scipy.special import digamma, gammaln, logsumexp

from models.btyd import SearchFailed

TOLERANCE = 1e-7  # lifetimes' tol for the same search


def _mean_and_penalty(ll: np.ndarray, grads: list[np.ndarray], params: np.ndarray, weights: np.ndarray,
                      penalizer: float) -> tuple[float, np.ndarray]:  # fmt: skip
    """NLL = -mean_w(ll) + penalizer * sum(params^2) and its gradient in log-parameters."""
    total = weights.sum()
    value = -(weights * ll).sum() / total + penalizer * (params**2).sum()
    grad = np.array([-(weights * g).sum() / total for g in grads]) * params + 2.0 * penalizer * params**2
    return float(value), grad


def bgnbd_nll(log_params: np.ndarray, x, t_x, T, weights, penalizer: float) -> tuple[float, np.ndarray]:
    """BG/NBD negative log-likelihood (lifetimes' BetaGeoFitter) and its gradient in log-parameters."""
    params = np.exp(log_params)
    r, alpha, a, b = params
    xb = b + np.maximum(x, 1) - 1
    A1 = gammaln(r + x) - gammaln(r) + r * np.log(alpha)
    A2 = gammaln(a + b) + gammaln(b + x) - gammaln(b) - gammaln(a + b + x)
    A3 = -(r + x) * np.log(alpha + T)
    A4 = np.log(a) - np.log(xb) - (r + x) * np.log(t_x + alpha)
    repeat = x > 0
    tail = logsumexp(np.stack([A3, np.where(repeat, A4, -np.inf)]), axis=0)
    w3, w4 = np.exp(A3 - tail), np.where(repeat, np.exp(np.where(repeat, A4, 0.0) - tail), 0.0)
    psi_ab, psi_abx = digamma(a + b), digamma(a + b + x)
    grads = [
        digamma(r + x) - digamma(r) + np.log(alpha) - w3 * np.log(alpha + T) - w4 * np.log(t_x + alpha),
        r / alpha - w3 * (r + x) / (alpha + T) - w4 * (r + x) / (t_x + alpha),
        psi_ab - psi_abx + w4 / a,
        psi_ab + digamma(b + x) - digamma(b) - psi_abx - w4 / xb,
    ]
    return _mean_and_penalty(A1 + A2 + tail, grads, params, weights, penalizer)


def mbgnbd_nll(log_params: np.ndarray, x, t_x, T, weights, penalizer: float) -> tuple[float, np.ndarray]:
    """MBG/NBD negative log-likelihood (lifetimes' ModifiedBetaGeoFitter) and its gradient."""
    params = np.exp(log_params)
    r, alpha, a, b = params
    log_aT, log_ar = np.log(alpha + T), np.log(alpha + t_x)
    A1 = gammaln(r + x) - gammaln(r) + r * np.log(alpha)
    A2 = gammaln(a + b) + gammaln(b + x + 1) - gammaln(b) - gammaln(a + b + x + 1)
    A3 = -(r + x) * log_aT
    A4 = np.log(a) - np.log(b + x) + (r + x) * (log_aT - log_ar)
    s = np.exp(-np.logaddexp(0.0, -A4))  # d logaddexp(A4, 0) / dA4
    psi_ab, psi_abx = digamma(a + b), digamma(a + b + x + 1)
    grads = [
        digamma(r + x) - digamma(r) + np.log(alpha) - log_aT + s * (log_aT - log_ar),
        r / alpha - (r + x) / (alpha + T) + s * (r + x) * (1.0 / (alpha + T) - 1.0 / (alpha + t_x)),
        psi_ab - psi_abx + s / a,
        psi_ab + digamma(b + x + 1) - digamma(b) - psi_abx - s / (b + x),
    ]
    return _mean_and_penalty(A1 + A2 + A3 + np.logaddexp(A4, 0.0), grads, params, weights, penalizer)


def gamma_gamma_nll(log_params: np.ndarray, x, m, weights, penalizer: float) -> tuple[float, np.ndarray]:
    """Gamma-Gamma negative log-likelihood (lifetimes' GammaGammaFitter) and its gradient."""
    params = np.exp(log_params)
    p, q, v = params
    px, log_xmv = p * x, np.log(x * m + v)
    ll = (gammaln(px + q) - gammaln(px) - gammaln(q) + q * np.log(v) + (px - 1) * np.log(m) + px * np.log(x)
          - (px + q) * log_xmv)  # fmt: skip
    psi = digamma(px + q)
    grads = [
        x * (psi - digamma(px) + np.log(m) + np.log(x) - log_xmv),
        psi - digamma(q) + np.log(v) - log_xmv,
        q / v - (px + q) / (x * m + v),
    ]
    return _mean_and_penalty(ll, grads, params, weights, penalizer)


PURCHASE_NLL = {"bgnbd": bgnbd_nll, "mbgnbd": mbgnbd_nll}


def search(nll, args: tuple, start: np.ndarray, max_iterations: int | None = None) -> np.ndarray:
    """BFGS on log-parameters from ``start`` (lifetimes' search: tol 1e-7) -> the log-parameters;
    SearchFailed when it does not converge or leaves the finite range."""
    options = {} if max_iterations is None else {"maxiter": int(max_iterations)}
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        output = minimize(nll, np.asarray(start, dtype=float), args=args, jac=True, method="BFGS", tol=TOLERANCE,
                          options=options)  # fmt: skip
    if not output.success or not np.isfinite(output.x).all():
        raise SearchFailed(f"the search did not converge: {output.message}")
    return output.x


def fit_purchase(model: str, x, t_x, T, weights, penalizer: float, start_log_params: np.ndarray,
                 max_iterations: int | None = None) -> np.ndarray:  # fmt: skip
    """BG/NBD or MBG/NBD parameters (r, alpha, a, b), alpha in the unit of ``T``; ``start_log_params``
    in lifetimes' convention (log-parameters with time divided by max T)."""
    x, t_x, T = (np.asarray(v, dtype=float) for v in (x, t_x, T))
    scale = 1.0 / T.max()
    args = (x, t_x * scale, T * scale, np.asarray(weights, dtype=float), penalizer)
    params = np.exp(search(PURCHASE_NLL[model], args, start_log_params, max_iterations))
    params[1] /= scale
    return params


def fit_spend(x, m, weights, penalizer: float, start_log_params: np.ndarray) -> np.ndarray:
    """Gamma-Gamma parameters (p, q, v) from log-parameters ``start_log_params``."""
    args = tuple(np.asarray(v, dtype=float) for v in (x, m, weights)) + (penalizer,)
    return np.exp(search(gamma_gamma_nll, args, start_log_params))
