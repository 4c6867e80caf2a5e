"""The rules of a backtest (`cvp backtest`), pure: the as_of dates, which dates can be evaluated,
and one table row from a date's clv and churn metrics (metrics/clv.json, metrics/churn.json)."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import pandas as pd


class DateSkipped(Exception):
    """This as_of cannot be backtested (outside the data, or no customers at t_1)."""


def as_of_dates(start: dt.date, end: dt.date, every_days: int) -> list[dt.date]:
    """start, start + every_days, ... up to and including end; ValueError naming the CLI option."""
    if every_days < 1:
        raise ValueError(f"--every must be at least 1 day, not {every_days}")
    if end < start:
        raise ValueError(f"--to {end} is before --from {start}; swap them")
    count = (end - start).days // every_days + 1
    return [start + dt.timedelta(days=i * every_days) for i in range(count)]


def check_date_usable(as_of: dt.date, last_transaction: pd.Timestamp, customers_t1: int) -> None:
    """Raise DateSkipped when as_of is after the last transaction (NaT: none) or nobody had bought by t_1."""
    if pd.isna(last_transaction) or as_of > last_transaction.date():
        last = None if pd.isna(last_transaction) else last_transaction.date()
        raise DateSkipped(f"as_of {as_of} is after the last transaction ({last})")
    if customers_t1 == 0:
        raise DateSkipped(f"no customers at t_1 = {as_of} minus one horizon (too early in the data)")


def metrics_row(as_of: dt.date, clv: dict[str, Any], churn: dict[str, Any]) -> dict[str, Any]:
    """One table row: the CLV holdout metrics (model and baseline) and each churn model's."""
    holdout = clv["holdout"]
    row: dict[str, Any] = {
        "as_of": as_of.isoformat(),
        "holdout_cutoff": clv.get("holdout_cutoff"),
        "n_customers": holdout.get("n_customers"),
        "clv_model": clv.get("model"),
        "churn_evaluation": churn.get("evaluation"),
        "churn_source": churn.get("churn_source"),
    }
    for side in ("model", "baseline"):
        row[f"clv_{side}_purchases_mae"] = holdout["purchases"][side]["mae"]
        row[f"clv_{side}_spearman_rho"] = holdout["ranking"][side]["spearman_rho"]
        row[f"clv_{side}_top20_capture"] = holdout["ranking"][side]["top20_capture"]
    for model, values in sorted(churn["models"].items()):
        for metric in ("roc_auc", "brier"):
            value = values.get(metric)
            row[f"churn_{model}_{metric}"] = math.nan if value is None else value
    return row
