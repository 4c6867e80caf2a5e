"""The pure rules of a retrain on hand-made frames: versions, holdout overlap, unit conversion,
holdout metrics and the decision records."""

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from models import drift, gate
from models import retrain_rules as rules
from models.clv import ClvSettings

NAMES = {"clv": "cvp-clv", "churn": "cvp-churn", "scores": "cvp-scores"}
SETTINGS = ClvSettings(days_per_unit=7.0, horizon_days=91, margin=0.3, discount_rate=0.1, discount_period_days=30)


def _holdout(cutoff="1998-03-31"):
    ids = ["a", "b", "c", "d"]
    features = pd.DataFrame({"customer_id": ids, "frequency": [0, 1, 2, 3], "ipi_mean": [np.nan, 10.0, 20.0, 30.0],
                             "avg_spend": [5.0, 10.0, 15.0, 20.0]})  # fmt: skip
    labels = pd.DataFrame({"customer_id": ids, "purchased": [0, 1, 0, 1], "n_purchase_days": [0, 2, 0, 1],
                           "spend": [0.0, 30.0, 0.0, 12.0]})  # fmt: skip
    return rules.Holdout(features, labels, pd.Timestamp(cutoff))


def test_versions_as_dict_names_every_model_and_the_chain_only_when_registered():
    assert rules.Versions("3", None, None).as_dict(NAMES) == {"cvp-clv": "3", "cvp-churn": None}
    assert rules.Versions("3", "2", "5").as_dict(NAMES) == {"cvp-clv": "3", "cvp-churn": "2", "cvp-scores": "5"}
    assert rules.Versions(None, None, "1").empty and not rules.Versions(None, "1", None).empty


def test_holdout_overlap_and_unit_conversion():
    cutoff = pd.Timestamp
    assert rules.holdout_overlap_days(dt.date(1998, 3, 31), cutoff("1998-03-31")) == 0
    assert rules.holdout_overlap_days(dt.date(1998, 3, 31), cutoff("1998-03-01")) == 30  # retrained a month later
    assert rules.holdout_overlap_days(dt.date(1998, 3, 31), cutoff("1998-06-30")) == 0
    assert rules.holdout_overlap_days(None, cutoff("1998-03-01")) == 0
    weeks = pd.DataFrame({"recency": [1.0], "T": [2.0]})
    days = rules.in_model_units(weeks, days_per_unit=7.0, model_days_per_unit=1.0)
    assert days[["recency", "T"]].iloc[0].tolist() == [7.0, 14.0]
    assert rules.in_model_units(weeks, 7.0, 7.0) is weeks


def test_holdout_metrics_by_hand():
    holdout = _holdout()
    predictions = pd.DataFrame({"customer_id": ["d", "c", "b", "a"], "expected_purchases": [1.0, 0.5, 2.0, 0.0],
                                "expected_avg_spend": [10.0, 10.0, 15.0, 5.0], "clv": [3.0, 1.5, 9.0, 0.0]})  # fmt: skip
    clv = rules.clv_holdout_metrics(holdout, predictions, SETTINGS)
    # predicted spend a..d: 0, 30, 5, 10 vs actual 0, 30, 0, 12 -> MAE (0 + 0 + 5 + 2) / 4
    assert clv["clv.spend_mae"] == pytest.approx(7 / 4)
    assert clv["clv.purchases_mae"] == pytest.approx((0 + 0 + 0.5 + 0) / 4)
    # churned = a, c; P(churn) ranks them first: AUC 1; Brier = mean squared error
    p = pd.Series([0.9, 0.2, 0.6, 0.1], index=["a", "b", "c", "d"])
    churn = rules.churn_holdout_metrics(holdout, p)
    assert churn["churn.roc_auc"] == 1.0
    assert churn["churn.brier"] == pytest.approx((0.01 + 0.04 + 0.16 + 0.01) / 4)
    with pytest.raises(rules.DataError, match="missing for 1 holdout customer"):
        rules.churn_holdout_metrics(holdout, p.drop("c"))


def test_without_a_champion_clv_model_nothing_is_loaded():
    def load(model):
        raise AssertionError(f"loaded {model}")

    assert rules.champion_metrics(rules.Versions(None, None, None), _holdout(), SETTINGS, load) == dict.fromkeys(rules.METRIC_KEYS)


def test_decision_records():
    failing = drift.DriftReport((drift.Check("psi.x", 0.4, 0.25, "max"), drift.Check("rows.drop", 0.0, 0.1, "max")))
    assert rules.drift_refusal(failing) == {"decision": "refuse", "stopped_by": "drift", "forced": False,
                                            "reasons": ["drift: psi.x = 0.4 > 0.25"]}  # fmt: skip
    rule = gate.MetricRule("m", higher_is_better=True, tolerance=0.0, relative=False, target=None)
    forced = gate.decide({"m": 0.5}, {"m": 0.9}, [rule], force=True)
    record = rules.gate_record(forced, failing)
    assert record["decision"] == "promote" and record["stopped_by"] is None and record["forced"] is True
    assert record["reasons"][0] == "forced by --force-promote" and record["reasons"][-1] == "drift overridden: psi.x = 0.4 > 0.25"
    assert record["metrics"]["m"]["passed"] is False and rules.version_tag(forced) == "promote-forced"
    refused = gate.decide({"m": 0.5}, {"m": 0.9}, [rule])
    assert rules.gate_record(refused, None)["stopped_by"] == "gate" and rules.version_tag(refused) == "refuse"
    assert rules.refusal_message(refused, "metrics/retrain.json").startswith("challenger refused by the gate: m: challenger 0.5 worse")
    assert rules.keep_record(False)["decision"] == "promote"
