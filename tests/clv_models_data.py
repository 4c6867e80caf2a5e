"""CDNOW data for the CLV model tests, summarised with lifetimes' own utility (the reference route)."""

from __future__ import annotations

import functools
import importlib.resources
import warnings

import pandas as pd

with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # lifetimes imports pkg_resources
    from lifetimes.utils import summary_data_from_transaction_data

CALIBRATION_END = "1997-09-30"  # Fader, Hardie & Lee (2005): 39-week calibration period
SAMPLE_COLUMNS = ["customer_id", "customer_index", "date", "quantity", "amount"]


def _dataset(name: str):
    return importlib.resources.files("lifetimes.datasets") / name


@functools.cache
def _transactions(name: str) -> pd.DataFrame:
    if name == "sample":
        tx = pd.read_csv(_dataset("CDNOW_sample.txt"), sep=r"\s+", header=None, names=SAMPLE_COLUMNS,
                         dtype={"customer_id": str})
    else:
        tx = pd.read_csv(_dataset("CDNOW_master.txt"), sep=r"\s+", dtype={"customer_id": str})
        tx = tx.rename(columns={"dollar_value": "amount"})
    tx["date"] = pd.to_datetime(tx["date"].astype(str), format="%Y%m%d")
    return tx[tx["date"] <= CALIBRATION_END]


@functools.cache
def _summary(name: str, days_per_unit: int) -> pd.DataFrame:
    return summary_data_from_transaction_data(
        _transactions(name), "customer_id", "date", monetary_value_col="amount",
        observation_period_end=CALIBRATION_END, freq="D", freq_multiplier=days_per_unit)


def cdnow_summary(name: str = "sample", days_per_unit: int = 7) -> pd.DataFrame:
    """frequency, recency, T (units of `days_per_unit` days), monetary_value per customer (index
    customer_id) over the calibration period ending 1997-09-30; name: "sample" (1/10) or "master"."""
    return _summary(name, days_per_unit).copy()


def cdnow_features(name: str = "sample", days_per_unit: int = 7) -> pd.DataFrame:
    """The summary shaped like the features contract: customer_id, cutoff, frequency, recency, T, monetary_value."""
    summary = cdnow_summary(name, days_per_unit).reset_index()
    summary.insert(1, "cutoff", pd.Timestamp(CALIBRATION_END))
    return summary
