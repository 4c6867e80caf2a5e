"""The segment stage's checks and summaries (models/segment_eval.py) on hand-made frames."""

import logging

import numpy as np
import pandas as pd
import pytest

from features.errors import DataError
from models import segment_eval as ev
from models import segments as seg
from tests.test_segments import RULES

CUTOFF = pd.Timestamp("2020-01-01")


def frame(ids, cutoff=CUTOFF, **columns):
    return pd.DataFrame({"customer_id": ids, "cutoff": cutoff, **columns})


# --------------------------------------------------------------------------- joining the inputs


def test_join_inputs_aligns_customers_and_sorts_them():
    joined = ev.join_inputs({
        "a.parquet": frame(["c2", "c1", "c3"], x=[2.0, 1.0, 3.0]),
        "b.parquet": frame(["c3", "c2", "c1"], y=[30.0, 20.0, 10.0]),
    })  # fmt: skip
    assert list(joined.columns) == ["customer_id", "cutoff", "x", "y"]
    assert joined["customer_id"].tolist() == ["c1", "c2", "c3"]
    assert joined["x"].tolist() == [1.0, 2.0, 3.0] and joined["y"].tolist() == [10.0, 20.0, 30.0]


@pytest.mark.parametrize(
    ("other", "message"),
    [
        (frame(["c1"], y=[1.0]), r"^b.parquet: 1 customer\(s\) missing \(e.g. c2\); every input must cover"),
        (frame(["c1", "c2", "c9"], y=[1.0, 2.0, 3.0]), r"^a.parquet: 1 customer\(s\) missing \(e.g. c9\)"),
        (frame(["c1", "c2"], cutoff=pd.Timestamp("2020-02-01"), y=[1.0, 2.0]), r"^b.parquet: cutoff 2020-02-01 differs from a.parquet \(2020-01-01\)"),
        (frame(["c1", "c2"], cutoff=[CUTOFF, pd.Timestamp("2020-02-01")], y=[1.0, 2.0]), r"^b.parquet: column 'cutoff' must hold one date \(found 2\)"),
    ],
    ids=["missing", "extra", "other-cutoff", "two-cutoffs"],
)
def test_join_inputs_names_the_file_at_fault(other, message):
    with pytest.raises(DataError, match=message):
        ev.join_inputs({"a.parquet": frame(["c1", "c2"], x=[1.0, 2.0]), "b.parquet": other})


def test_scoring_frame_casts_whole_days_to_floats_and_refuses_no_customers():
    features = frame(["c1", "c2"], spend_trailing=[0.0, 5.0], margin_trailing=np.nan, days_since_first=[10, 20],
                     days_since_last=[1, 2], ipi_mean=[np.nan, 4.0])  # fmt: skip
    clv = frame(["c2", "c1"], clv=[1.0, 2.0], p_no_purchase=[0.5, 0.4])
    churn = frame(["c1", "c2"], churn_probability=[0.3, 0.2])
    joined = ev.scoring_frame(("f", features), ("c", clv), ("h", churn))
    assert joined["days_since_first"].dtype == "float64" and joined["days_since_last"].tolist() == [1.0, 2.0]
    assert joined["clv"].tolist() == [2.0, 1.0] and "cutoff" in joined.columns
    with pytest.raises(DataError, match=r"^f: no customers to segment .*data.as_of"):
        ev.scoring_frame(("f", features.iloc[0:0]), ("c", clv), ("h", churn))


def test_holdout_frame_is_none_with_a_warning_when_an_input_is_empty(caplog):
    labels, clv, churn = frame(["c1"], spend=[1.0]), frame(["c1"], clv=[1.0], p_no_purchase=[0.5]), frame(["c1"], churn_probability=[0.2])
    assert len(ev.holdout_frame(("l", labels), ("c", clv), ("h", churn))) == 1
    with caplog.at_level(logging.WARNING, logger="models.segment_eval"):
        assert ev.holdout_frame(("l", labels), ("c", clv.iloc[0:0]), ("h", churn)) is None
    assert "holdout comparison skipped: c has no rows" in caplog.text


# --------------------------------------------------------------------------- holdout verdict


def _holdout(churn_informative: bool, n=400, seed=7):
    rng = np.random.default_rng(seed)
    buys = rng.random(n) < 0.4
    spend = np.where(buys, rng.gamma(2.0, 30.0, n), 0.0)
    informed = np.where(buys, rng.uniform(0.0, 0.4, n), rng.uniform(0.6, 1.0, n))
    churn = informed if churn_informative else 1 - informed
    return pd.DataFrame(
        {
            "customer_id": [f"{i:04d}" for i in range(n)],
            "cutoff": pd.Timestamp("2020-01-01"),
            "spend": spend,
            "clv": rng.gamma(2.0, 5.0, n),
            "p_no_purchase": np.full(n, 0.6),
            "churn_probability": churn,
        }
    )


def test_holdout_comparison_prefers_an_informative_classifier():
    got = ev.holdout_comparison(_holdout(churn_informative=True))
    assert got["combined"]["spearman"] > got["clv"]["spearman"]
    assert got["combined_at_least_as_good"] is True
    assert got["customers"] == 400 and got["cutoff"] == "2020-01-01" and got["top_share"] == seg.TOP_SHARE == 0.2


def test_holdout_comparison_warns_when_combined_is_worse(caplog):
    with caplog.at_level(logging.WARNING, logger="models.segment_eval"):
        got = ev.holdout_comparison(_holdout(churn_informative=False))
    assert got["combined_at_least_as_good"] is False
    assert "worse than CLV alone" in caplog.text and "top-20% capture" in caplog.text


def test_holdout_comparison_uses_the_top_share_given():
    holdout = _holdout(churn_informative=True)
    got = ev.holdout_comparison(holdout, top_share=0.5)
    assert got["top_share"] == 0.5
    assert got["oracle"]["top_share_capture"] == pytest.approx(
        seg.top_share_of_total(holdout["spend"], holdout["spend"], holdout["customer_id"], 0.5)
    )


def test_holdout_comparison_skipped_without_inputs():
    assert "skipped" in ev.holdout_comparison(None)


@pytest.mark.parametrize(
    ("combined", "verdict"),
    [((0.5, 0.7), True), ((0.4, 0.6), True), ((0.39, 0.9), False), ((0.9, 0.59), False)],
    ids=["better", "tied", "worse-spearman", "worse-capture"],
)
def test_the_verdict_needs_both_spearman_and_capture_at_least_as_good(combined, verdict):
    ranking = {"combined": {"spearman": combined[0], "top_share_capture": combined[1]},
               "clv": {"spearman": 0.4, "top_share_capture": 0.6}}  # fmt: skip
    assert ev.combined_at_least_as_good(ranking) is verdict


# --------------------------------------------------------------------------- outputs


def test_reactivation_targets_are_sleeping_customers_in_high_growth_quadrants():
    labelled = pd.DataFrame({
        "lifecycle_state": ["drowsy", "half_asleep", "dormant", "active", "new", "dormant", "drowsy"],
        "quadrant": ["II", "IV", "II", "IV", "II", "I", "III"],
    })  # fmt: skip
    assert ev.reactivation_targets(labelled) == 3


def _labelled(n=60):
    rng = np.random.default_rng(5)
    base = pd.DataFrame({
        "customer_id": [f"{i:03d}" for i in range(n)][::-1], "spend_trailing": rng.gamma(2.0, 20.0, n),
        "margin_trailing": np.nan, "days_since_first": rng.integers(10, 400, n).astype(float),
        "days_since_last": rng.integers(0, 300, n).astype(float), "ipi_mean": rng.uniform(10, 90, n),
        "clv": rng.gamma(2.0, 8.0, n), "p_no_purchase": rng.uniform(0.1, 0.9, n), "churn_probability": rng.uniform(0.1, 0.9, n),
    })  # fmt: skip
    base = base.assign(clv_expected_p10=0.6 * base["clv"], clv_expected_p90=1.5 * base["clv"])
    return seg.segment_customers(base, RULES)


def test_segments_table_has_the_contract_columns_sorted_with_as_of():
    result = _labelled()
    table = ev.segments_table(result.customers, CUTOFF)
    assert list(table.columns) == list(ev.SEGMENT_COLUMNS)
    assert table["customer_id"].is_monotonic_increasing and (table["as_of"] == CUTOFF).all()
    assert str(table["as_of"].dtype) == "datetime64[ns]" and pd.api.types.is_string_dtype(table["quadrant"])
    row = table.set_index("customer_id").loc["007"]
    expected = result.customers.set_index("customer_id").loc["007"]
    assert (row["quadrant"], row["tier"], row["current_value"]) == (expected["quadrant"], expected["tier"], expected["current_value"])


def test_segment_metrics_summarise_the_labels():
    result = _labelled()
    holdout = {"skipped": "none"}
    metrics = ev.segment_metrics(result, RULES, CUTOFF, holdout)
    labelled = result.customers
    assert metrics["as_of"] == "2020-01-01" and metrics["customers"] == 60 and metrics["holdout"] is holdout
    assert metrics["counts"]["quadrant"] == labelled["quadrant"].value_counts().reindex(seg.QUADRANTS, fill_value=0).to_dict()
    assert metrics["cuts"]["current_value"] == result.current_value_cut
    assert metrics["cuts"]["high_current_value_share"] == pytest.approx((labelled["current_value"] > result.current_value_cut).mean())
    assert metrics["reactivation_targets"] == ev.reactivation_targets(labelled)
    assert metrics["concentration"]["top_share"] == seg.TOP_SHARE
    assert metrics["totals"]["growth_potential"] == pytest.approx(labelled["growth_potential"].sum())
    assert ev.segment_metrics(result, RULES, CUTOFF, holdout, top_share=0.1)["concentration"]["top_share"] == 0.1
