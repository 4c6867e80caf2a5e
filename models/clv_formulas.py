"""Closed forms for P(no purchase in the next t time units | x, t_x, T), vectorised over customers.

Notation: x = frequency (repeat purchases), t_x = recency, T = age, all in one time unit; the
forecast window is (T, T+t]. Every expression splits on the customer's state at T:

    P(X(T, T+t) = 0 | x, t_x, T) = 1 - P(alive) * P(X(T, T+t) >= 1 | alive, x, t_x, T)

since a customer who has dropped out buys nothing. Given "alive at T", the latent rates have
conjugate Gamma posteriors that do not depend on t_x (the "alive" term of the individual
likelihood is (1-p)^x lambda^x e^(-lambda T) for BG/NBD, (1-p)^(x+1) lambda^x e^(-lambda T) for
MBG/NBD and lambda^x e^(-(lambda+mu) T) for Pareto/NBD):

- BG/NBD (Fader, Hardie & Lee 2005, "Counting Your Customers the Easy Way", Marketing Science
  24(2)) and MBG/NBD (Batislam, Denizel & Filiztekin 2007; Wagner & Hoppe 2008): dropout happens
  only right after a purchase, so an alive customer with no purchase in (T, T+t] is exactly one
  whose next Poisson event falls after T+t; with lambda | alive ~ Gamma(r+x, alpha+T),
      P(X >= 1 | alive) = 1 - ((alpha+T) / (alpha+T+t))^(r+x).
  P(alive) is from Fader, Hardie & Lee (2008), "Computing P(alive) using the BG/NBD model"
  (note 021) for BG/NBD and Batislam et al. (2007), appendix eq. (5), for MBG/NBD. This is the
  x* = 0 case of the BG/NBD conditional PMF.
- Pareto/NBD (Schmittlein, Morrison & Colombo 1987; Fader & Hardie 2005 note 009): with
  lambda | alive ~ Gamma(r+x, alpha+T) and mu | alive ~ Gamma(s, beta+T) independent, and the
  competing exponential clocks "next purchase" (rate lambda) and "dropout" (rate mu),
      P(X >= 1 | alive, lambda, mu) = lambda/(lambda+mu) * (1 - e^(-(lambda+mu) t)).
  Its posterior mean uses E[lambda/(lambda+mu)] (see `expected_purchase_share`); tilting both
  Gammas by e^(-lambda t - mu t) shifts their rates by t. The result is the x* = 0 case of Fader &
  Hardie (2006) note 028 ("Deriving the conditional PMF of the Pareto/NBD model"), eq. (16).
"""

from __future__ import annotations

import numpy as np

from models.btyd import safe_hyp2f1 as hyp2f1  # never hands scipy a non-finite or absurd argument


def bg_family_p_no_purchase(p_alive, r: float, alpha: float, t, frequency, T) -> np.ndarray:
    """P(X(T, T+t) = 0 | x, t_x, T) under BG/NBD or MBG/NBD, given P(alive) from the same model.

    1 - P(alive) * (1 - ((alpha+T)/(alpha+T+t))^(r+x)), with expm1/log1p for small t.
    """
    frequency, T, t = (np.asarray(v, dtype=float) for v in (frequency, T, t))
    p_buy_if_alive = -np.expm1(-(r + frequency) * np.log1p(t / (alpha + T)))
    return 1.0 - np.asarray(p_alive, dtype=float) * p_buy_if_alive


def expected_purchase_share(r, alpha, s, beta) -> np.ndarray:
    """E[lambda / (lambda + mu)] for independent lambda ~ Gamma(r, rate alpha), mu ~ Gamma(s, rate beta).

    With B = X/(X+Y) ~ Beta(r, s) for X ~ Gamma(r, 1), Y ~ Gamma(s, 1), lambda/(lambda+mu) =
    B / (B + (alpha/beta)(1-B)); Euler's integral for 2F1 gives
        (r/(r+s)) * 2F1(1, s; r+s+1; 1 - alpha/beta)                 (alpha <= beta)
        (beta/alpha) * (r/(r+s)) * 2F1(1, r+1; r+s+1; 1 - beta/alpha) (alpha > beta, Pfaff),
    each used where its argument lies in [0, 1), so the series converges.
    """
    r, alpha, s, beta = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in (r, alpha, s, beta)))
    share = np.empty(r.shape)
    low = alpha <= beta
    rl, al, sl, bl = r[low], alpha[low], s[low], beta[low]
    share[low] = rl / (rl + sl) * hyp2f1(1.0, sl, rl + sl + 1.0, 1.0 - al / bl)
    rh, ah, sh, bh = r[~low], alpha[~low], s[~low], beta[~low]
    share[~low] = bh / ah * rh / (rh + sh) * hyp2f1(1.0, rh + 1.0, rh + sh + 1.0, 1.0 - bh / ah)
    return share


def pareto_nbd_p_no_purchase(p_alive, r: float, alpha: float, s: float, beta: float, t, frequency, T) -> np.ndarray:
    """P(X(T, T+t) = 0 | x, t_x, T) under Pareto/NBD, given P(alive) from the same model.

    1 - P(alive) * (S(r+x, alpha+T, s, beta+T)
                    - ((alpha+T)/(alpha+T+t))^(r+x) ((beta+T)/(beta+T+t))^s S(r+x, alpha+T+t, s, beta+T+t))
    with S = expected_purchase_share.
    """
    frequency, T, t = (np.asarray(v, dtype=float) for v in (frequency, T, t))
    shape = r + frequency
    rate_purchase, rate_dropout = alpha + T, beta + T
    share_now = expected_purchase_share(shape, rate_purchase, s, rate_dropout)
    log_quiet = -shape * np.log1p(t / rate_purchase) - s * np.log1p(t / rate_dropout)
    share_later = expected_purchase_share(shape, rate_purchase + t, s, rate_dropout + t)
    p_buy_if_alive = share_now - np.exp(log_quiet) * share_later
    return 1.0 - np.asarray(p_alive, dtype=float) * p_buy_if_alive
