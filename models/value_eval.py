"""How the value stage evaluates the value model and words its outputs, as pure functions.

The out-of-time evaluation trains a :class:`models.value.ValueModel` at t2 (value realised in
(t2, t1]) and scores every t1 customer against the value realised in (t1, t0], next to the
references: the BTYD CLV, the combined growth potential of models/segments.py (CLV x the
out-of-time churn probability at t1) and the textbook quick estimate of models/clv_eval.py.
:func:`evaluate` returns the holdout block of metrics/value.json with the verdict of
:func:`models.value.model_wins`; :func:`predictions_frame` is the predictions file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import pandas as pd

from features.frames import sorted_by_id
from models import segments as seg
from models import value as vm
from models.clv_eval import baseline_value

log = logging.getLogger(__name__)

MODEL_SOURCE, CLV_SOURCE = "value_model", "clv"
REFERENCES = ("clv", "combined")  # what the value model must beat to be used
DECILE_COLUMNS = ["forecast", "decile", "customers", "mean_predicted", "mean_realised"]


def training_problem(X: pd.DataFrame, y: pd.Series | None, k: int, min_customers: int, min_buyers: int) -> str | None:
    """Why the snapshot at t_k cannot train the value model (value.min_train_customers,
    value.min_train_buyers); None when it can."""
    if y is None or X.empty:
        return f"no customers or no CLV predictions at t{k}"
    if len(X) < min_customers:
        return f"{len(X)} customers at t{k} < value.min_train_customers={min_customers}"
    buyers = int((y > 0).sum())
    if buyers < min_buyers:
        return f"{buyers} customers with a positive value after t{k} < value.min_train_buyers={min_buyers}"
    return None


def reference_forecasts(features: pd.DataFrame, X: pd.DataFrame, churn: pd.DataFrame | None, horizon_days: float,
                        margin: float) -> dict[str, pd.Series]:  # fmt: skip
    """The forecasts the value model is compared with at t1 (aligned with X's index): the BTYD CLV,
    the combined growth potential (when ``churn`` covers every customer) and the quick estimate."""
    out = {"clv": X["clv"]}
    if churn is not None and not churn.empty:
        probability = churn.assign(customer_id=churn["customer_id"].astype(str)).set_index("customer_id")
        probability = probability["churn_probability"].reindex(X.index)
        if probability.notna().all():
            out["combined"] = seg.growth_potential_combined(X["clv"], X["p_no_purchase"], probability)
    if "combined" not in out:
        log.warning("no out-of-time churn probability for every t1 customer: the value model is compared with the CLV only")
    by_id = features.assign(customer_id=features["customer_id"].astype(str)).set_index("customer_id").reindex(X.index)
    quick = baseline_value(by_id["ipi_mean"], by_id["avg_spend"], horizon_days, margin)
    out["quick_estimate"] = pd.Series(np.nan_to_num(quick), index=X.index)
    return out


def evaluate(build: Callable[[], vm.ValueModel], X2: pd.DataFrame, y2: pd.Series, X1: pd.DataFrame, y1: pd.Series,
             references: dict[str, pd.Series], *, win_metric: str, min_gain: float, win_interval: float | None,
             seed: int, bootstrap_sample: int | None) -> tuple[dict, pd.Series, pd.DataFrame]:  # fmt: skip
    """Train at t2, score t1: (the evaluation and comparison blocks of metrics/value.json, the t1
    predictions, the decile table of every forecast)."""
    log.info("out-of-time evaluation: train t2 (%d customers), test t1 (%d customers)", len(X2), len(X1))
    predicted = pd.Series(build().fit(X2, y2).predict(X1), index=X1.index)
    forecasts = {"value_model": predicted, **references}
    ids = pd.Series(X1.index, index=X1.index)
    comparison = vm.compare_forecasts(y1, forecasts, ids)
    rivals = [r for r in REFERENCES if r in forecasts]
    intervals = None
    if win_interval is not None:
        intervals = {r: vm.bootstrap_gain(y1, predicted, forecasts[r], ids, win_metric, win_interval, seed,
                                          max_customers=bootstrap_sample) for r in rivals}  # fmt: skip
    wins, why = vm.model_wins({k: comparison[k] for k in ("value_model", *rivals)}, intervals, win_metric, min_gain)
    log.info("value model %s: %s", "wins" if wins else "does not win", why)
    deciles = pd.concat(
        [vm.decile_calibration(y1, score, ids).assign(forecast=name) for name, score in forecasts.items()], ignore_index=True
    )[DECILE_COLUMNS]
    evaluation = {
        "mode": "out_of_time", "n_train": len(X2), "n_train_buyers": int((y2 > 0).sum()), "n_test": len(X1),
        "n_test_buyers": int((y1 > 0).sum()), "wins": wins, "verdict": why,
        "gain_intervals": {r: list(iv) for r, iv in (intervals or {}).items()},
    }  # fmt: skip
    return {"evaluation": evaluation, "comparison": comparison}, predicted, deciles


def predictions_frame(values: pd.Series, cutoff: pd.Timestamp, source: str) -> pd.DataFrame:
    """The predictions file: customer_id, cutoff, predicted_value, source; sorted by customer_id."""
    frame = pd.DataFrame({
        "customer_id": pd.Series(values.index.astype(str), dtype="str"),
        "cutoff": pd.Series(cutoff, index=range(len(values))).astype("datetime64[us]"),
        "predicted_value": values.to_numpy(dtype="float64"),
        "source": pd.Series(source, index=range(len(values)), dtype="str"),
    })  # fmt: skip
    return sorted_by_id(frame)


def unused_reason(growth_potential: str, won: bool) -> str | None:
    """Why the final model would serve nothing (segment.growth_potential does not resolve to the
    value model), or None when segment will use it: fitting it then only costs time."""
    method = seg.resolve_growth_potential(growth_potential, won)
    if method == "value":
        return None
    return f"not used: segment.growth_potential {growth_potential} gives growth potential '{method}'"


def final_description(final: vm.ValueModel | None, cutoff: pd.Timestamp, problem: str | None) -> dict:
    """metrics/value.json's final_model block."""
    if final is None:
        return {"fitted": False, "reason": problem, "train_cutoff": str(cutoff.date())}
    return {"fitted": True, "train_cutoff": str(cutoff.date()), "kind": final.kind, "n_fit": final.n_fit_,
            "n_buyers": final.n_buyers_, "smearing": final.smearing_, "boost_from_btyd": final.boost_from_btyd}  # fmt: skip


def empty_deciles() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="str" if c == "forecast" else "float64") for c in DECILE_COLUMNS})
