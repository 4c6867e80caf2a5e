"""Benchmark: the CLV intervals (models/clv_intervals.py) at scale, against the point CLV.

Simulates customers from known BG/NBD + Gamma-Gamma parameters with their realised holdout
(tests/clv_interval_world.py, T in whole days as the features stage gives it), fits the models,
then times each part of one cutoff's intervals (the parameter bootstrap, the purchase-process
simulation with the per-customer quantiles, the expected-value quantiles) and, as the reference
measured in the same run, the point CLV of every customer (``ClvSettings.predict``). Prints the
timings, their ratio to the point CLV, the holdout coverage, and writes bench/out/intervals.json.

    python -m bench.intervals [--customers 1000000] [--seed 5]
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

from models import clv_intervals as ci
from models.clv import ClvSettings, PurchaseModel, SpendModel, compress
from pipelines.files import write_json
from tests.clv_interval_world import simulate_world

HISTORY = ["frequency", "recency", "T"]
SETTINGS = ci.IntervalSettings(days_per_unit=7.0, horizon_days=91, margin=0.3, discount_rate=0.1,
                               discount_period_days=30, process_draws=200, seed=42)  # fmt: skip


def _timed(timings: dict, name: str, call):
    started = time.perf_counter()
    out = call()
    timings[name] = round(time.perf_counter() - started, 3)
    return out


def run(n_customers: int, seed: int, n_draws: int = 20, sample: int = 50_000) -> dict:
    features, period_spend = simulate_world(n_customers, seed=seed)
    features["T"] = np.round(features["T"] * 7.0) / 7.0  # whole days, as the features stage counts them
    features["recency"] = np.minimum(np.round(features["recency"] * 7.0) / 7.0, features["T"])
    timings: dict[str, float] = {}
    purchase = _timed(timings, "fit_bgnbd", lambda: PurchaseModel("bgnbd").fit(*(features[c] for c in HISTORY)))
    spend = _timed(timings, "fit_gamma_gamma", lambda: SpendModel().fit(features["frequency"], features["monetary_value"]))
    settings = ClvSettings(horizon_days=91, days_per_unit=7.0, margin=0.3, discount_rate=0.1, discount_period_days=30)
    point = _timed(timings, "point_clv", lambda: settings.predict(purchase, spend, features))
    rfm, spend_rows = compress(features, HISTORY), compress(features, ["frequency", "monetary_value"])
    draws = _timed(timings, "bootstrap", lambda: ci.bootstrap_parameters(purchase, spend, rfm, spend_rows, n_draws, seed=2,
                                                                          sample=sample))  # fmt: skip
    history = [features[c] for c in (*HISTORY, "monetary_value")]
    q, p_zero, inside = _timed(timings, "simulation", lambda: ci.clv_quantiles(draws, *history, SETTINGS))
    _timed(timings, "expected_quantiles",
           lambda: ci.expected_quantiles(draws, *history, point["expected_avg_spend"], SETTINGS))  # fmt: skip
    realised = ci.realised_value(period_spend, 0.3, 0.1, 30)
    summary, _ = ci.coverage(features["frequency"], q[:, 0], q[:, 1], q[:, 2], realised, p_zero, inside)
    intervals = timings["bootstrap"] + timings["simulation"] + timings["expected_quantiles"]
    groups = features.groupby(["frequency", "T"]).ngroups
    return {
        "customers": n_customers,
        "histories": int(len(rfm)),
        "frequency_T_groups": int(groups),
        "frequency_keys": int(features["frequency"].nunique()),
        "seconds": timings,
        "intervals_seconds": round(intervals, 3),
        "ratio_vs_point_clv": round(intervals / max(timings["point_clv"], 1e-9), 2),
        "coverage_pit": round(summary["coverage_pit"], 4),
        "coverage": round(summary["coverage"], 4),
        "expected_coverage": round(summary["expected_coverage"], 4),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench/out/intervals.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    result = run(args.customers, args.seed)
    write_json(result, args.out)
    logging.getLogger(__name__).info("intervals at %d customers: %s", args.customers, result)
    return result


if __name__ == "__main__":
    main()
