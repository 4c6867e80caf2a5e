"""The pure rules and figure of a backtest on hand-made metrics: dates, skips, the table row."""

import datetime as dt
import math

import pandas as pd
import pytest

from models import backtest as rules
from models.plots.backtest import metrics_over_time


def test_as_of_dates_step_and_bounds():
    dates = rules.as_of_dates(dt.date(1998, 1, 1), dt.date(1998, 4, 2), 45)
    assert dates == [dt.date(1998, 1, 1), dt.date(1998, 2, 15), dt.date(1998, 4, 1)]
    assert rules.as_of_dates(dt.date(1998, 1, 1), dt.date(1998, 1, 1), 7) == [dt.date(1998, 1, 1)]
    with pytest.raises(ValueError, match="--to 1998-01-01 is before --from 1998-02-01"):
        rules.as_of_dates(dt.date(1998, 2, 1), dt.date(1998, 1, 1), 10)
    with pytest.raises(ValueError, match="--every must be at least 1"):
        rules.as_of_dates(dt.date(1998, 1, 1), dt.date(1998, 2, 1), 0)


def test_dates_after_the_data_or_without_customers_at_t1_are_skipped():
    rules.check_date_usable(dt.date(1998, 6, 30), pd.Timestamp("1998-06-30 12:00"), 10)
    with pytest.raises(rules.DateSkipped, match=r"after the last transaction \(1998-06-30\)"):
        rules.check_date_usable(dt.date(1998, 7, 1), pd.Timestamp("1998-06-30"), 10)
    with pytest.raises(rules.DateSkipped, match=r"\(None\)"):
        rules.check_date_usable(dt.date(1998, 7, 1), pd.NaT, 10)
    with pytest.raises(rules.DateSkipped, match="no customers at t_1"):
        rules.check_date_usable(dt.date(1997, 1, 5), pd.Timestamp("1998-06-30"), 0)


def _metrics(mae: float):
    side = {"purchases": {"mae": mae}, "ranking": {"spearman_rho": 0.4, "top20_capture": 0.7}}
    clv = {"holdout_cutoff": "1998-03-31", "model": "bgnbd",
           "holdout": {"n_customers": 100, "purchases": {"model": side["purchases"], "baseline": {"mae": 2.0}},
                       "ranking": {"model": side["ranking"], "baseline": {"spearman_rho": 0.3, "top20_capture": 0.6}}}}  # fmt: skip
    churn = {"evaluation": "out_of_time", "churn_source": "classifier",
             "models": {"classifier_calibrated": {"roc_auc": 0.8, "brier": 0.1}, "baseline_recency": {"roc_auc": 0.7, "brier": None}}}  # fmt: skip
    return clv, churn


def test_metrics_row_takes_every_number_from_the_stage_metrics():
    row = rules.metrics_row(dt.date(1998, 6, 30), *_metrics(0.3))
    assert row["as_of"] == "1998-06-30" and row["holdout_cutoff"] == "1998-03-31" and row["n_customers"] == 100
    assert (row["clv_model"], row["churn_evaluation"], row["churn_source"]) == ("bgnbd", "out_of_time", "classifier")
    assert row["clv_model_purchases_mae"] == 0.3 and row["clv_baseline_purchases_mae"] == 2.0
    assert row["clv_model_spearman_rho"] == 0.4 and row["clv_baseline_top20_capture"] == 0.6
    assert row["churn_classifier_calibrated_roc_auc"] == 0.8 and row["churn_classifier_calibrated_brier"] == 0.1
    assert math.isnan(row["churn_baseline_recency_brier"])  # no Brier for a ranking baseline


def test_the_figure_has_a_line_per_model_with_values():
    table = pd.DataFrame([rules.metrics_row(dt.date(1998, m, 1), *_metrics(0.1 * m)) for m in (1, 4)])
    fig = metrics_over_time(table)
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == [title for title, _, _ in __import__("models.plots.backtest", fromlist=["PANELS"]).PANELS]
    assert sorted(line.get_label() for line in axes[0].lines) == ["baseline", "model"]
    assert list(axes[0].lines[1].get_ydata()) in ([0.1, 0.4], [2.0, 2.0])
    assert [line.get_label() for line in axes[3].lines] == ["classifier_calibrated"]  # the all-empty Brier is left out
