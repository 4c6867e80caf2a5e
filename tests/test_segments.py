"""Segmentation rules on hand-made customers: every expected label is worked out by hand."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from features.errors import DataError
from models import segments as seg
from pipelines.config import parse_params
from pipelines.domain import segment_rules

#: The rules under the typed config's defaults (pipelines/config.py holds the only defaults).
RULES = segment_rules(parse_params({"data": {"columns": {"customer_id": "id", "timestamp": "date", "amount": "amount"}}}))


def ids(n):
    return pd.Series([f"c{i:03d}" for i in range(n)])


# --------------------------------------------------------------------------- current value


def test_current_value_uses_the_cost_margin_when_present_else_spend_times_margin():
    spend = pd.Series([100.0, 50.0, 0.0, -20.0])
    margin = pd.Series([np.nan, 20.0, np.nan, np.nan])
    got = seg.current_value(spend, margin, margin=0.3)
    assert got.tolist() == pytest.approx([30.0, 20.0, 0.0, -6.0])
    assert got.name == "current_value"


def test_current_value_with_a_cost_column_ignores_the_margin_rate():
    got = seg.current_value(pd.Series([100.0, 40.0]), pd.Series([-5.0, 12.5]), margin=0.9)
    assert got.tolist() == [-5.0, 12.5]


# --------------------------------------------------------------------------- growth potential


def test_combined_growth_potential_swaps_the_model_purchase_probability_for_the_classifier():
    clv = pd.Series([10.0, 10.0, 6.0])
    p0 = pd.Series([0.5, 0.5, 0.8])
    churn = pd.Series([0.2, 0.5, 0.0])
    got = seg.growth_potential_combined(clv, p0, churn)
    # (1 - churn) * clv / (1 - p0)
    assert got.tolist() == pytest.approx([16.0, 10.0, 30.0])


def test_combined_equals_clv_when_the_classifier_agrees_with_the_model():
    rng = np.random.default_rng(0)
    clv = pd.Series(rng.gamma(2.0, 5.0, 200))
    p0 = pd.Series(rng.uniform(0.01, 0.99, 200))
    got = seg.growth_potential_combined(clv, p0, p0)
    np.testing.assert_allclose(got, clv, rtol=1e-12)


def test_combined_growth_potential_stays_finite_when_no_purchase_is_certain():
    got = seg.growth_potential_combined(pd.Series([0.0, 1e-9]), pd.Series([1.0, 1.0]), pd.Series([0.5, 0.0]))
    assert np.isfinite(got).all()
    assert got.tolist() == pytest.approx([0.0, 1e-9 / seg.MIN_PURCHASE_PROBABILITY])


def test_clv_growth_potential_is_clv_alone_and_unknown_method_fails():
    clv = pd.Series([3.0, 4.0])
    got = seg.growth_potential("clv", clv, pd.Series([0.9, 0.1]), pd.Series([0.0, 1.0]))
    assert got.tolist() == [3.0, 4.0]
    with pytest.raises(ValueError, match="combined"):
        seg.growth_potential("nope", clv, clv, clv)


def test_value_basis():
    cur, gro = pd.Series([1.0, -2.0]), pd.Series([3.0, 5.0])
    assert seg.customer_value(cur, gro, "total").tolist() == [4.0, 3.0]
    assert seg.customer_value(cur, gro, "current").tolist() == [1.0, -2.0]
    assert seg.customer_value(cur, gro, "growth").tolist() == [3.0, 5.0]


# --------------------------------------------------------------------------- quadrants


def test_quantile_cut_is_the_median_and_ties_at_the_cut_are_low():
    values = pd.Series([1.0, 2.0, 3.0, 3.0, 3.0, 9.0])
    cut = seg.axis_cut(values, "quantile", 0.5)
    assert cut == 3.0
    assert seg.is_high(values, cut).tolist() == [False, False, False, False, False, True]


def test_zero_median_makes_any_positive_value_high():
    values = pd.Series([0.0, 0.0, 0.0, 0.0, -1.0, 0.5, 7.0])
    cut = seg.axis_cut(values, "quantile", 0.5)
    assert cut == 0.0
    assert seg.is_high(values, cut).tolist() == [False, False, False, False, False, True, True]


def test_fixed_cut_is_the_amount():
    assert seg.axis_cut(pd.Series([1.0, 100.0]), "fixed", 25.0) == 25.0
    with pytest.raises(ValueError):
        seg.axis_cut(pd.Series([1.0]), "quantile", 1.5)


@pytest.mark.parametrize("method,cv_cut,gp_cut", [("quantile", 0.5, 0.5), ("fixed", 10.0, 20.0)])
def test_one_customer_in_each_quadrant(method, cv_cut, gp_cut):
    # medians: current (1, 5, 15, 40) -> 10, growth (2, 8, 30, 50) -> 19
    frame = pd.DataFrame(
        {
            "current_value": [1.0, 5.0, 15.0, 40.0],
            "growth_potential": [2.0, 30.0, 8.0, 50.0],
        }
    )
    rule = seg.CutRule(method, cv_cut, gp_cut)
    cv = seg.axis_cut(frame["current_value"], rule.method, rule.current_value)
    gp = seg.axis_cut(frame["growth_potential"], rule.method, rule.growth_potential)
    assert (cv, gp) == (10.0, 19.0 if method == "quantile" else 20.0)
    quadrant = seg.assign_quadrant(seg.is_high(frame["current_value"], cv), seg.is_high(frame["growth_potential"], gp))
    assert quadrant.tolist() == ["I", "II", "III", "IV"]
    text = seg.quadrant_strategies(quadrant)
    assert text["resource_allocation"].tolist() == ["no investment", "moderate investment", "key investment", "top priority"]
    assert text["retention_strategy"].iloc[0] == "let the relationship go (minimise cost to serve)"
    assert text["retention_strategy"].iloc[3] == "spare no effort to keep and grow the relationship"


# --------------------------------------------------------------------------- ranks, pyramid, ABC


def test_value_rank_breaks_ties_by_customer_id():
    rank = seg.value_rank(pd.Series([5.0, 9.0, 5.0, 5.0]), pd.Series(["b", "z", "a", "c"]))
    assert rank.tolist() == [2, 0, 1, 3]


def test_value_rank_puts_nan_last_treats_minus_zero_as_zero_and_orders_ids_by_code_point():
    values = pd.Series([np.nan, 0.0, -0.0, 3.0, np.nan, 0.0, -1.0])
    ids = pd.Series(["a", "é", "z", "m", "A", "b", "q"])  # code points: A < a < b < m < q < z < é
    # 3.0 (m); the three zeros by id: b, z, é; -1.0 (q); NaN by id: A, a.
    assert seg.value_rank(values, ids).tolist() == [6, 3, 2, 0, 5, 1, 4]
    assert seg.value_rank(pd.Series([1.0, 1.0, 2.0]), pd.Series([10, 9, 11])).tolist() == [2, 1, 0]


def test_pyramid_shares_on_100_customers():
    n = 100
    values = pd.Series(np.arange(n, 0, -1, dtype=float))  # customer 0 is the most valuable
    rank = seg.value_rank(values, ids(n))
    got = seg.assign_pyramid(rank, RULES.pyramid, values.index)
    assert got.value_counts().to_dict() == {"small": 80, "ordinary": 15, "major": 4, "vip": 1}
    assert got.iloc[0] == "vip" and got.iloc[1:5].eq("major").all() and got.iloc[5:20].eq("ordinary").all()


def test_pyramid_rounds_half_up_and_ties_go_by_customer_id():
    n = 250  # 1% = 2.5 -> 3 VIPs; 5% = 12.5 -> 13; 20% = 50
    values = pd.Series(np.ones(n))
    cid = pd.Series([f"c{i:03d}" for i in range(n)][::-1])  # ids in reverse order of rows
    got = seg.assign_pyramid(seg.value_rank(values, cid), RULES.pyramid, values.index)
    assert got.value_counts().to_dict() == {"small": 200, "ordinary": 37, "major": 10, "vip": 3}
    vip_ids = sorted(cid[got == "vip"])
    assert vip_ids == ["c000", "c001", "c002"]


def test_abc_boundaries():
    values = pd.Series([5.0, 50.0, 15.0, 30.0])
    got = seg.assign_abc(values, seg.value_rank(values, ids(4)), 0.80, 0.95)
    # ranked 50, 30 (80% reached) -> A; 15 (80..95%) -> B; 5 -> C
    assert got.tolist() == ["C", "A", "B", "A"]


def test_abc_equal_values_and_nonpositive_values():
    values = pd.Series([1.0] * 10 + [0.0, -3.0])
    got = seg.assign_abc(values, seg.value_rank(values, ids(12)), 0.80, 0.95)
    # 8 customers make the first 80% exactly (no float drift); the 9th and 10th start below 95%
    assert got.tolist() == ["A"] * 8 + ["B", "B", "C", "C"]


def test_abc_all_zero_is_all_c():
    values = pd.Series([0.0, 0.0, -1.0])
    assert seg.assign_abc(values, seg.value_rank(values, ids(3)), 0.8, 0.95).tolist() == ["C", "C", "C"]


# --------------------------------------------------------------------------- tiers


def test_tiers_by_value_rank_and_growth():
    # 10 customers: top 20% = 2, bottom 20% = 2 (plus any value <= 0)
    frame = pd.DataFrame(
        {
            "current": [50.0, 10.0, 0.0, 4.0, 3.0, 2.0, 2.0, 1.0, 0.0, -5.0],
            "growth": [10.0, 60.0, 65.0, 4.0, 3.0, 2.0, 1.0, 1.0, 0.5, 4.0],
        }
    )
    value = frame["current"] + frame["growth"]  # 60, 70, 65, 8, 6, 4, 3, 2, 0.5, -1
    rank = seg.value_rank(value, ids(10))
    rule = replace(RULES.tier, top_share=0.3)
    got = seg.assign_tier(value, frame["current"], frame["growth"], frame["current"] > 0, rank, rule)
    # c000: top, 10 < 50 (shrinking) -> gold; c001: top, growing, profitable now -> platinum;
    # c002: top by forecast only (current value 0, not high) -> gold
    assert got.tolist() == ["gold", "platinum", "gold", "iron", "iron", "iron", "iron", "iron", "lead", "lead"]


def test_lead_by_value_threshold_wins_over_rank():
    value = pd.Series([10.0, 5.0, 4.0, 3.0])
    rule = seg.TierRule(top_share=0.5, lead_share=0.0, lead_max_value=5.0, growing_ratio=1.0)
    high = pd.Series([True] * 4)
    got = seg.assign_tier(value, value * 0, value, high, seg.value_rank(value, ids(4)), rule)
    # top 50% = c000, c001; but c001 (5 <= 5) is lead
    assert got.tolist() == ["platinum", "lead", "lead", "lead"]


def test_growing_ratio_moves_gold_to_platinum():
    value = pd.Series([100.0, 1.0])
    current, growth, high = pd.Series([60.0, 1.0]), pd.Series([40.0, 0.0]), pd.Series([True, False])
    rank = seg.value_rank(value, ids(2))
    strict = seg.TierRule(top_share=0.5, lead_share=0.0, lead_max_value=0.0, growing_ratio=1.0)
    lenient = seg.TierRule(top_share=0.5, lead_share=0.0, lead_max_value=0.0, growing_ratio=0.5)
    assert seg.assign_tier(value, current, growth, high, rank, strict).tolist() == ["gold", "iron"]
    assert seg.assign_tier(value, current, growth, high, rank, lenient).tolist() == ["platinum", "iron"]


# --------------------------------------------------------------------------- lifecycle


def test_each_lifecycle_state():
    frame = pd.DataFrame(
        {
            "days_since_first": [90.0, 91.0, 400.0, 400.0, 400.0, 400.0, 400.0],
            "days_since_last": [5.0, 14.0, 14.9, 15.0, 25.0, 39.9, 40.0],
            "ipi_mean": [np.nan, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0],
        }
    )
    got = seg.assign_lifecycle(frame["days_since_first"], frame["days_since_last"], frame["ipi_mean"], RULES.lifecycle)
    assert got.tolist() == ["new", "active", "active", "drowsy", "half_asleep", "half_asleep", "dormant"]


def test_one_time_buyers_use_the_configured_interval():
    rule = replace(RULES.lifecycle, one_time_buyer_interval_days=20)
    got = seg.assign_lifecycle(
        pd.Series([300.0, 300.0, 300.0]), pd.Series([29.0, 35.0, 80.0]), pd.Series([np.nan] * 3), rule
    )
    # ratios 1.45, 1.75, 4.0
    assert got.tolist() == ["active", "drowsy", "dormant"]


def test_one_time_buyers_default_to_the_population_median_interval():
    ipi = pd.Series([10.0, 30.0, 60.0, np.nan])  # median of defined intervals = 30
    got = seg.assign_lifecycle(pd.Series([500.0] * 4), pd.Series([10.0, 10.0, 10.0, 80.0]), ipi, RULES.lifecycle)
    assert seg.one_time_buyer_interval(ipi, None) == 30.0
    assert got.iloc[3] == "half_asleep"  # 80 / 30 = 2.67


def test_median_interval_undefined_without_repeat_buyers():
    with pytest.raises(DataError, match="one_time_buyer_interval_days"):
        seg.one_time_buyer_interval(pd.Series([np.nan, np.nan]), None)


# --------------------------------------------------------------------------- relationship


@pytest.mark.parametrize(
    "customers,margin,level",
    [
        ("many", "high", "accountable"), ("many", "medium", "reactive"), ("many", "low", "basic"),
        ("moderate", "high", "proactive"), ("moderate", "medium", "accountable"), ("moderate", "low", "reactive"),
        ("few", "high", "partnership"), ("few", "medium", "proactive"), ("few", "low", "accountable"),
    ],
)
def test_relationship_table(customers, margin, level):
    assert seg.relationship_level(pd.Series([customers]), pd.Series([margin])).tolist() == [level]


def test_customer_count_level_by_cell_share():
    cell = pd.Series(["a"] * 12 + ["b"] * 5 + ["c"] * 3)  # shares 0.60, 0.25, 0.15
    rule = seg.RelationshipRule(many_share=0.5, few_share=0.2)
    got = seg.customer_count_level(cell, rule)
    assert got.iloc[0] == "many" and got.iloc[12] == "moderate" and got.iloc[17] == "few"


def test_relationship_level_of_many_customers_at_once_and_unknown_levels():
    customers = pd.Series(["few", "many", "moderate", "many", "few"])
    margin = pd.Series(["low", "low", "high", "medium", "high"])
    got = seg.relationship_level(customers, margin)
    assert got.tolist() == ["accountable", "basic", "proactive", "reactive", "partnership"]
    with pytest.raises(ValueError, match=r"\('lots', 'low'\)"):
        seg.relationship_level(pd.Series(["many", "lots"]), pd.Series(["high", "low"]))


def test_quadrant_tier_cells_and_their_shares():
    quadrant = pd.Series(["IV", "I", "IV", "II"])
    tier = pd.Series(["gold", "lead", "gold", "iron"])
    cell = seg.quadrant_tier_cells(quadrant, tier)
    assert cell.astype(str).tolist() == ["IV/gold", "I/lead", "IV/gold", "II/iron"]
    # Only the cells someone is in, with the same shares as the text cells.
    assert seg.cell_shares(cell) == {"IV/gold": 0.5, "I/lead": 0.25, "II/iron": 0.25}
    assert seg.cell_shares(cell) == seg.cell_shares(quadrant + "/" + tier)
    rule = seg.RelationshipRule(many_share=0.5, few_share=0.3)
    assert seg.customer_count_level(cell, rule).tolist() == ["many", "few", "many", "few"]


def test_quadrant_strategies_of_an_unknown_quadrant_are_missing():
    text = seg.quadrant_strategies(pd.Series(["II", "V"]))
    assert text["resource_allocation"].iloc[0] == "moderate investment"
    assert text["resource_allocation"].isna().tolist() == [False, True]


def test_margin_terciles_by_rank():
    rank = np.array([5, 0, 3, 1, 4, 2])
    assert seg.margin_level(rank, pd.RangeIndex(6)).tolist() == ["low", "high", "medium", "high", "low", "medium"]


# --------------------------------------------------------------------------- concentration


def test_gini_and_lorenz_of_equal_values():
    assert seg.gini([4.0] * 7) == pytest.approx(0.0, abs=1e-12)
    curve = seg.lorenz_curve([4.0] * 7, points=11)
    np.testing.assert_allclose(curve["share_of_value"], curve["share_of_customers"], atol=1e-12)


@pytest.mark.parametrize("n", [2, 5, 40])
def test_gini_when_one_customer_holds_everything(n):
    values = np.zeros(n)
    values[3 % n] = 10.0
    assert seg.gini(values) == pytest.approx((n - 1) / n)
    curve = seg.lorenz_curve(values, points=n + 1)
    assert curve["share_of_value"].iloc[:-1].max() == pytest.approx(0.0)
    assert curve["share_of_value"].iloc[-1] == 1.0


def test_gini_and_lorenz_hand_computed():
    values = [3.0, 1.0, 4.0, 2.0]
    # sum |xi - xj| over ordered pairs = 20; 2 * n^2 * mean = 80
    assert seg.gini(values) == pytest.approx(0.25)
    curve = seg.lorenz_curve(values, points=5)
    assert curve["share_of_value"].tolist() == pytest.approx([0.0, 0.1, 0.3, 0.6, 1.0])
    # Gini = 1 - 2 * area under the Lorenz curve
    area = np.trapezoid(curve["share_of_value"], curve["share_of_customers"])
    assert seg.gini(values) == pytest.approx(1 - 2 * area)


def test_concentration_top_share_and_negative_values():
    values = pd.Series([100.0] + [0.0] * 8 + [-50.0])
    conc = seg.concentration(values, ids(10), top_share=0.2)
    assert conc["top_share_of_value"] == 1.0
    assert conc["gini"] == pytest.approx(0.9)


# --------------------------------------------------------------------------- full rules + summary


def with_intervals(frame):
    """Expected-CLV quantiles over parameter draws around the CLV (the clv stage's columns), as the segment
    input carries them."""
    clv = frame["clv"]
    return frame.assign(clv_expected_p10=0.7 * clv, clv_expected_p90=1.4 * clv)


def small_base(n=40, seed=3):
    rng = np.random.default_rng(seed)
    repeat = rng.random(n) < 0.7
    return with_intervals(pd.DataFrame(
        {
            "customer_id": [f"{i:05d}" for i in range(n)][::-1],
            "spend_trailing": np.where(rng.random(n) < 0.4, 0.0, rng.gamma(2.0, 40.0, n)),
            "margin_trailing": np.nan,
            "days_since_first": rng.integers(10, 500, n).astype(float),
            "days_since_last": rng.integers(0, 300, n).astype(float),
            "ipi_mean": np.where(repeat, rng.uniform(10, 120, n), np.nan),
            "clv": rng.gamma(1.5, 10.0, n),
            "p_no_purchase": rng.uniform(0.05, 0.95, n),
            "churn_probability": rng.uniform(0.05, 0.95, n),
        }
    ))


def test_segment_customers_composes_the_rules():
    frame = small_base()
    rules = RULES
    result = seg.segment_customers(frame, rules)
    out = result.customers
    assert len(out) == len(frame) and out["customer_id"].tolist() == frame["customer_id"].tolist()
    np.testing.assert_allclose(out["current_value"], frame["spend_trailing"] * 0.3)
    np.testing.assert_allclose(
        out["growth_potential"], (1 - frame["churn_probability"]) * frame["clv"] / (1 - frame["p_no_purchase"])
    )
    np.testing.assert_allclose(out["growth_potential_clv"], frame["clv"])
    assert result.current_value_cut == pytest.approx(np.median(frame["spend_trailing"] * 0.3))
    high_cv = out["current_value"] > result.current_value_cut
    high_gp = out["growth_potential"] > result.growth_potential_cut
    expected = np.select([high_cv & high_gp, high_cv, high_gp], ["IV", "III", "II"], default="I")
    assert out["quadrant"].tolist() == expected.tolist()
    assert out["pyramid_level"].value_counts().to_dict() == {"small": 32, "ordinary": 6, "major": 2}
    assert set(out["relationship_level"]) <= set(seg.RELATIONSHIP_LEVELS)
    assert out.notna().all().all()


def test_summary_shares_sum_to_one_and_match_the_labels():
    out = seg.segment_customers(small_base(), RULES).customers
    summary = seg.summarise_segments(out)
    assert summary[["group_by", "segment"]].values.tolist() == [["quadrant", q] for q in seg.QUADRANTS] + [
        ["tier", t] for t in seg.TIERS
    ]
    for _, part in summary.groupby("group_by"):
        assert part["customers"].sum() == len(out)
        for column in ("share_of_customers", "share_of_value", "share_of_current_value", "share_of_predicted_value"):
            assert part[column].sum() == pytest.approx(1.0)
    row = summary.set_index(["group_by", "segment"]).loc[("quadrant", "IV")]
    iv = out[out["quadrant"] == "IV"]
    assert row["customers"] == len(iv)
    assert row["predicted_value"] == pytest.approx(iv["growth_potential"].sum())
    assert row["mean_churn_probability"] == pytest.approx(iv["churn_probability"].mean())


def test_label_counts_lists_every_label():
    out = seg.segment_customers(small_base(), RULES).customers
    counts = seg.label_counts(out)
    assert set(counts["lifecycle_state"]) == set(seg.LIFECYCLE_STATES)
    assert all(sum(c.values()) == len(out) for c in counts.values())


# --------------------------------------------------------------------------- holdout ranking


def test_top_share_capture_hand_computed():
    actual = pd.Series([10.0, 0.0, 30.0, 60.0, 0.0])
    score = pd.Series([5.0, 4.0, 3.0, 2.0, 1.0])
    # top 40% = 2 customers by score: c000, c001 -> 10 of 100
    assert seg.top_share_of_total(score, actual, ids(5), 0.4) == pytest.approx(0.10)
    assert seg.top_share_of_total(actual, actual, ids(5), 0.4) == pytest.approx(0.90)


def test_rank_forecasts_matches_scipy_and_the_oracle_bounds_capture():
    rng = np.random.default_rng(1)
    actual = pd.Series(rng.gamma(1.0, 10.0, 300))
    good = actual + rng.normal(0, 2, 300)
    poor = pd.Series(rng.random(300))
    got = seg.rank_forecasts(actual, {"good": good, "poor": poor}, ids(300), 0.2)
    assert got["good"]["spearman"] == pytest.approx(spearmanr(good, actual).statistic)
    assert got["good"]["top_share_capture"] > got["poor"]["top_share_capture"]
    assert got["oracle"]["top_share_capture"] >= got["good"]["top_share_capture"]


# --------------------------------------------------------------------------- labelling one customer


def tied_base(n: int = 300, seed: int = 3) -> pd.DataFrame:
    """A base with many ties in value (zero spend, equal CLV), so boundaries fall inside ties."""
    rng = np.random.default_rng(seed)
    frame = small_base(n)
    frame["spend_trailing"] = np.where(rng.uniform(size=n) < 0.6, 0.0, rng.choice([10.0, 25.0, 40.0], n))
    frame["clv"] = rng.choice([0.0, 5.0, 12.0, 30.0, 80.0], n)
    frame["customer_id"] = rng.permutation([f"k{i}" for i in range(n)])
    return with_intervals(frame)


@pytest.mark.parametrize("base", [small_base, tied_base], ids=["distinct", "tied"])
def test_the_reference_labels_each_customer_alone_as_in_the_population(base):
    frame = base()
    rules = RULES
    batch = seg.segment_customers(frame, rules)
    # The reference survives a JSON round trip (it is stored with the served model).
    import json

    reference = seg.SegmentReference.from_dict(json.loads(json.dumps(batch.reference.to_dict())))
    alone = pd.concat(
        [seg.segment_customers(frame.iloc[[i]], rules, reference).customers for i in range(len(frame))],
        ignore_index=True,
    )
    pd.testing.assert_frame_equal(alone, batch.customers)
    reversed_order = seg.segment_customers(frame.iloc[::-1], rules, reference).customers
    pd.testing.assert_frame_equal(reversed_order.iloc[::-1].reset_index(drop=True), batch.customers)


def test_a_new_customer_is_placed_among_the_population():
    frame = small_base(200)  # 2 vips
    rules = RULES
    batch = seg.segment_customers(frame, rules)
    best = frame.loc[[batch.customers["value"].idxmax()]].assign(customer_id="new-best")
    worst = frame.loc[[batch.customers["value"].idxmin()]].assign(customer_id="new-worst")
    got = seg.segment_customers(pd.concat([best, worst]), rules, batch.reference).customers
    # A copy of the best customer ranks second (its id sorts after the original's): vip and A; the
    # worst's copy ranks after everyone: small and lead, whatever else is in the request.
    assert got["pyramid_level"].tolist() == ["vip", "small"]
    assert got["abc_class"].tolist()[0] == "A"
    assert got["tier"].tolist()[1] == "lead"
    # A cell no population customer is in has share 0: "few" customers.
    assert seg.customer_count_level(pd.Series(["IV/lead"]), rules.relationship, {"I/iron": 1.0}).tolist() == ["few"]


def test_quadrant_scatter_draws_a_seeded_sample_of_at_most_the_sample_size():
    from models.plots.segment import quadrant_scatter

    labelled = seg.segment_customers(small_base(60), RULES).customers

    def dots(sample_size, seed=0):
        ax = quadrant_scatter(labelled, 0.0, 1.0, seed, sample_size).axes[0]
        return np.concatenate([c.get_offsets() for c in ax.collections])

    assert len(dots(25)) == 25 and len(dots(60)) == 60 and len(dots(1000)) == 60
    np.testing.assert_array_equal(dots(25), dots(25))  # seeded
    legend = quadrant_scatter(labelled, 0.0, 1.0, 0, 25).axes[0].get_legend()
    assert sum(int(t.get_text().split("(")[1].rstrip(")").replace(",", "")) for t in legend.get_texts()) == 60
