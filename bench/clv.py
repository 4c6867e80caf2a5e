"""Benchmark: CLV models on simulated customers, our route against the plain lifetimes route.

(a) ours: PurchaseModel("bgnbd") + SpendModel fitted on unique rows with counts, then
    predict_customers (every prediction evaluated once per unique purchase history);
(b) plain lifetimes: BetaGeoFitter().fit on every customer, GammaGammaFitter().fit on every
    repeat customer, GammaGammaFitter.customer_lifetime_value for every customer.

Both run in the same process on the same simulated customers (days; 3 periods of 30 days,
10% a year, margin 1, so both compute the same CLV). Prints the timings and writes
bench/out/clv.json.

    python -m bench.clv [--customers 1000000] [--seed 42] [--out bench/out/clv.json]
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from models.clv import PurchaseModel, SpendModel, period_discount_rate, predict_customers
from pipelines.files import write_json

with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # lifetimes imports pkg_resources
    from lifetimes import BetaGeoFitter, GammaGammaFitter

# Fader, Hardie & Lee's CDNOW estimates, rates per day.
TRUE_PURCHASE = {"r": 0.243, "alpha": 4.414 * 7, "a": 0.793, "b": 2.426}
TRUE_SPEND = {"p": 6.25, "q": 3.74, "v": 15.44}
HORIZON_DAYS, PERIOD_DAYS, ANNUAL_RATE = 90, 30, 0.10
MAX_AGE_DAYS = 730


def simulate_customers(n: int, seed: int) -> pd.DataFrame:
    """Customers acquired over two years, observed in whole days, from BG/NBD + Gamma-Gamma.

    Repeat purchases: Poisson(lambda) in (0, T]; the customer drops out after the J-th repeat
    purchase, J ~ Geometric(p), so x = min(N(T), J) and, given N(T) = n >= x, the x-th purchase
    time is T times the x-th of n uniform order statistics, T * Beta(x, n - x + 1).
    Mean spend of x purchases ~ Gamma(p x, rate nu x), nu ~ Gamma(q, rate v); in cents.
    """
    rng = np.random.default_rng(seed)
    T = rng.integers(1, MAX_AGE_DAYS + 1, size=n).astype(float)
    lam = rng.gamma(TRUE_PURCHASE["r"], 1.0 / TRUE_PURCHASE["alpha"], size=n)
    p = rng.beta(TRUE_PURCHASE["a"], TRUE_PURCHASE["b"], size=n)
    n_poisson = rng.poisson(lam * T)
    x = np.minimum(n_poisson, rng.geometric(p))
    repeat = x > 0
    recency = np.zeros(n)
    recency[repeat] = np.floor(T[repeat] * rng.beta(x[repeat], n_poisson[repeat] - x[repeat] + 1))
    nu = rng.gamma(TRUE_SPEND["q"], 1.0 / TRUE_SPEND["v"], size=n)
    spend = np.zeros(n)
    spend[repeat] = rng.gamma(TRUE_SPEND["p"] * x[repeat], 1.0 / (nu[repeat] * x[repeat]))
    spend[repeat] = np.maximum(np.round(spend[repeat], 2), 0.01)
    return pd.DataFrame({
        "customer_id": pd.Series(np.arange(n)).map("{:07d}".format),
        "cutoff": pd.Timestamp("2024-01-01"),
        "frequency": x.astype(float),
        "recency": recency,
        "T": T,
        "monetary_value": spend,
    })


class StepTimer:
    """Wall-clock and CPU seconds of consecutive steps (CPU time is robust to a busy machine)."""

    def __init__(self):
        self.wall, self.cpu = {}, {}
        self._start = self._mark = (time.perf_counter(), time.process_time())

    def step(self, name: str) -> None:
        now = (time.perf_counter(), time.process_time())
        self.wall[name], self.cpu[name] = now[0] - self._mark[0], now[1] - self._mark[1]
        self._mark = now

    def result(self) -> dict:
        self.wall["total"] = self._mark[0] - self._start[0]
        self.cpu["total"] = self._mark[1] - self._start[1]
        return {"seconds": self.wall, "cpu_seconds": self.cpu}


def our_route(customers: pd.DataFrame) -> dict:
    timer = StepTimer()
    purchase = PurchaseModel("bgnbd").fit(customers["frequency"], customers["recency"], customers["T"])
    timer.step("fit_purchase")
    spend = SpendModel().fit(customers["frequency"], customers["monetary_value"])
    timer.step("fit_spend")
    predictions = predict_customers(purchase, spend, customers, HORIZON_DAYS, 1, 1.0, ANNUAL_RATE, PERIOD_DAYS)
    timer.step("predict")
    return {**timer.result(), "purchase_params": purchase.params_, "spend_params": spend.params_,
            "unique_rows": purchase.n_unique_rows_, "clv": predictions["clv"].to_numpy()}


def plain_lifetimes_route(customers: pd.DataFrame) -> dict:
    f, r, T, m = (customers[c] for c in ("frequency", "recency", "T", "monetary_value"))
    timer = StepTimer()
    bgf = BetaGeoFitter().fit(f, r, T)
    timer.step("fit_purchase")
    repeat = (f > 0) & (m > 0)  # Gamma-Gamma needs a positive mean spend (returns can make it <= 0)
    ggf = GammaGammaFitter().fit(f[repeat], m[repeat])
    timer.step("fit_spend")
    clv = ggf.customer_lifetime_value(bgf, f, r, T, m, time=HORIZON_DAYS // PERIOD_DAYS,
                                      discount_rate=period_discount_rate(ANNUAL_RATE, PERIOD_DAYS), freq="D")
    timer.step("predict")
    return {**timer.result(), "purchase_params": {k: float(v) for k, v in bgf.params_.items()},
            "spend_params": {k: float(v) for k, v in ggf.params_.items()}, "clv": clv.to_numpy()}


def max_relative_difference(ours: dict, plain: dict) -> float:
    return max(abs(ours[k] / plain[k] - 1.0) for k in plain)


def run(n_customers: int, seed: int) -> dict:
    print(f"simulating {n_customers:,} customers (seed {seed})", flush=True)
    customers = simulate_customers(n_customers, seed)
    print("our route: compressed fits + predict_customers", flush=True)
    ours = our_route(customers)
    print(f"  {ours['seconds']['total']:.2f} s ({ours['cpu_seconds']['total']:.2f} s CPU) on "
          f"{ours['unique_rows']:,} unique histories", flush=True)
    print("plain lifetimes route: fits on every row + customer_lifetime_value", flush=True)
    plain = plain_lifetimes_route(customers)
    print(f"  {plain['seconds']['total']:.2f} s ({plain['cpu_seconds']['total']:.2f} s CPU)", flush=True)
    clv_difference = np.abs(ours["clv"] - plain["clv"]) / np.maximum(np.abs(plain["clv"]), 1e-12)
    return {
        "customers": n_customers,
        "seed": seed,
        "repeat_customers": int((customers["frequency"] > 0).sum()),
        "unique_histories": ours["unique_rows"],
        "seconds": {"ours": ours["seconds"], "plain_lifetimes": plain["seconds"]},
        "cpu_seconds": {"ours": ours["cpu_seconds"], "plain_lifetimes": plain["cpu_seconds"]},
        "speedup_total": plain["seconds"]["total"] / ours["seconds"]["total"],
        "speedup_total_cpu": plain["cpu_seconds"]["total"] / ours["cpu_seconds"]["total"],
        "speedup_by_step": {step: plain["seconds"][step] / ours["seconds"][step] for step in ours["seconds"]},
        "params": {"ours": {**ours["purchase_params"], **ours["spend_params"]},
                   "plain_lifetimes": {**plain["purchase_params"], **plain["spend_params"]},
                   "true": {**TRUE_PURCHASE, **TRUE_SPEND}},
        "max_relative_param_difference": max(max_relative_difference(ours["purchase_params"], plain["purchase_params"]),
                                             max_relative_difference(ours["spend_params"], plain["spend_params"])),
        "max_relative_clv_difference": float(clv_difference.max()),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, default=Path("bench/out/clv.json"))
    args = parser.parse_args(argv)
    result = run(args.customers, args.seed)
    print(f"speed-up: {result['speedup_total']:.1f}x wall-clock, {result['speedup_total_cpu']:.1f}x CPU "
          f"(fit BG/NBD {result['speedup_by_step']['fit_purchase']:.1f}x, "
          f"fit Gamma-Gamma {result['speedup_by_step']['fit_spend']:.1f}x, "
          f"predict {result['speedup_by_step']['predict']:.1f}x wall-clock)")
    print(f"max relative difference: parameters {result['max_relative_param_difference']:.2e}, "
          f"CLV {result['max_relative_clv_difference']:.2e}")
    write_json(result, args.out)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
