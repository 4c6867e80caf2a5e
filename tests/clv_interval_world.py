"""A customer base simulated from known BG/NBD and Gamma-Gamma parameters, with its realised holdout.

Used by tests/test_clv_intervals.py to measure the P10-P90 coverage where the model is right.
Time in weeks; each customer's first purchase is at 0, the calibration ends at T (uniform between
``min_T`` and ``max_T``), and the holdout is (T, T + horizon_days / 7], cut into the clv stage's
discount periods.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from models.clv import _period_ends_days

TRUE_BGNBD = {"r": 0.5, "alpha": 6.0, "a": 0.7, "b": 2.5}
TRUE_GAMMA_GAMMA = {"p": 6.0, "q": 4.0, "v": 15.0}


def simulate_world(n: int, seed: int, horizon_days: float = 91.0, period_days: float = 30.0, min_T: float = 26.0,
                   max_T: float = 78.0, bgnbd=TRUE_BGNBD, gamma_gamma=TRUE_GAMMA_GAMMA) -> tuple[pd.DataFrame, np.ndarray]:  # fmt: skip
    """(features, period_spend): features customer_id, cutoff, frequency, recency, T, monetary_value at
    the end of calibration; period_spend (n, periods) the spend of each discount period after it."""
    rng = np.random.default_rng(seed)
    lam = rng.gamma(bgnbd["r"], 1.0 / bgnbd["alpha"], n)
    p = rng.beta(bgnbd["a"], bgnbd["b"], n)
    nu = rng.gamma(gamma_gamma["q"], 1.0 / gamma_gamma["v"], n)
    T = rng.uniform(min_T, max_T, n)
    ends = T[:, None] + _period_ends_days(horizon_days, period_days)[None, :] / 7.0
    end = ends[:, -1]
    frequency, recency, total, period_spend = (np.zeros(n) for _ in range(4))
    period_spend = np.zeros((n, ends.shape[1]))
    t = np.zeros(n)
    alive = np.ones(n, dtype=bool)
    while alive.any():
        i = np.flatnonzero(alive)
        t[i] += rng.exponential(1.0 / lam[i])
        i = i[t[i] <= end[i]]
        alive[:] = False
        if not len(i):
            break
        spend = rng.gamma(gamma_gamma["p"], 1.0 / nu[i])
        calibration = t[i] <= T[i]
        c = i[calibration]
        frequency[c] += 1
        recency[c] = t[c]
        total[c] += spend[calibration]
        h = i[~calibration]
        period = (t[h][:, None] > ends[h]).sum(axis=1)
        np.add.at(period_spend, (h, period), spend[~calibration])
        stays = rng.random(len(i)) >= p[i]  # drops out right after a repeat purchase with probability p
        alive[i[stays]] = True
    features = pd.DataFrame({
        "customer_id": [f"c{k:06d}" for k in range(n)],
        "cutoff": pd.Timestamp("2020-01-01"),
        "frequency": frequency.astype(int),
        "recency": recency,
        "T": T,
        "monetary_value": np.where(frequency > 0, total / np.maximum(frequency, 1), 0.0),
    })
    return features, period_spend
