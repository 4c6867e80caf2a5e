"""Champion/challenger gate on hand-made metric dicts: each metric failing alone refuses."""

import pytest

from models.gate import PROMOTE, REFUSE, MetricRule, compare, decide

RULES = (
    MetricRule("churn.auc", higher_is_better=True, tolerance=0.01, relative=False, target=None),
    MetricRule("churn.brier", higher_is_better=False, tolerance=0.005, relative=False, target=None),
    MetricRule("clv.mae", higher_is_better=False, tolerance=0.05, relative=True, target=None),
    MetricRule("clv.spearman", higher_is_better=True, tolerance=0.02, relative=False, target=None),
)
CHAMPION = {"churn.auc": 0.80, "churn.brier": 0.150, "clv.mae": 2.00, "clv.spearman": 0.60}


def test_first_run_without_a_champion_promotes_unconditionally():
    result = decide({"churn.auc": 0.5}, None, RULES)
    assert result.decision == PROMOTE and not result.forced
    assert result.reasons == ("first model: no champion to compare with",)
    assert all(v.passed for v in result.verdicts)


def test_a_challenger_equal_or_within_tolerance_is_promoted():
    within = {"churn.auc": 0.79, "churn.brier": 0.155, "clv.mae": 2.10, "clv.spearman": 0.58}
    for challenger in (CHAMPION, within):
        result = decide(challenger, CHAMPION, RULES)
        assert result.decision == PROMOTE, result.reasons
        assert len(result.reasons) == 4


@pytest.mark.parametrize(
    ("metric", "value"),
    [
        ("churn.auc", 0.789),  # limit 0.79
        ("churn.brier", 0.1551),  # limit 0.155
        ("clv.mae", 2.11),  # limit 2.00 * 1.05 = 2.10
        ("clv.spearman", 0.579),  # limit 0.58
    ],
)
def test_each_metric_failing_alone_refuses_and_is_named(metric, value):
    challenger = {**CHAMPION, metric: value}
    result = decide(challenger, CHAMPION, RULES)
    assert result.decision == REFUSE
    failed = [v for v in result.verdicts if not v.passed]
    assert [v.metric for v in failed] == [metric]
    assert "worse than champion" in failed[0].reason
    assert failed[0].reason.startswith(metric)


def test_better_values_pass_in_both_directions():
    better = {"churn.auc": 0.9, "churn.brier": 0.1, "clv.mae": 1.0, "clv.spearman": 0.9}
    assert decide(better, CHAMPION, RULES).decision == PROMOTE


def test_limits_are_direction_aware_and_relative_where_asked():
    assert MetricRule("auc", True, 0.01, False, None).limit(0.8) == pytest.approx(0.79)
    assert MetricRule("brier", False, 0.005, False, None).limit(0.15) == pytest.approx(0.155)
    assert MetricRule("mae", False, 0.05, relative=True, target=None).limit(2.0) == pytest.approx(2.1)
    assert MetricRule("r", True, 0.1, relative=True, target=None).limit(-0.5) == pytest.approx(-0.55)
    with pytest.raises(ValueError, match="tolerance"):
        MetricRule("x", True, -0.1, False, None)


@pytest.mark.parametrize("missing", [None, float("nan"), "0.8"])
def test_a_missing_challenger_value_refuses(missing):
    challenger = {**CHAMPION, "churn.auc": missing}
    result = decide(challenger, CHAMPION, RULES)
    assert result.decision == REFUSE
    assert "churn.auc: challenger has no value" in result.reasons


def test_a_champion_without_a_value_refuses_so_the_override_has_to_be_explicit():
    champion = {k: v for k, v in CHAMPION.items() if k != "clv.spearman"}
    verdict = compare(RULES[3], 0.9, None)
    assert not verdict.passed and verdict.limit is None
    assert decide(CHAMPION, champion, RULES).decision == REFUSE


def test_force_promote_overrides_a_refusal_and_is_recorded():
    worse = {**CHAMPION, "churn.auc": 0.5}
    result = decide(worse, CHAMPION, RULES, force=True)
    assert result.decision == PROMOTE and result.forced
    assert result.reasons[0] == "forced by --force-promote"
    assert [v.passed for v in result.verdicts] == [False, True, True, True]
    assert result.to_dict()["forced"] is True
    assert result.to_dict()["metrics"]["churn.auc"]["passed"] is False


def test_decision_as_dict():
    result = decide(CHAMPION, CHAMPION, RULES[:1])
    assert result.to_dict() == {
        "decision": "promote",
        "forced": False,
        "reasons": ["churn.auc: challenger 0.8 within tolerance of champion 0.8 (higher is better, limit 0.79)"],
        "metrics": {
            "churn.auc": {
                "challenger": 0.8, "champion": 0.8, "limit": pytest.approx(0.79), "passed": True,
                "reason": "churn.auc: challenger 0.8 within tolerance of champion 0.8 (higher is better, limit 0.79)",
            }
        },
    }


def test_a_band_rule_checks_the_challenger_alone_against_its_target():
    band = MetricRule("clv.interval_coverage", higher_is_better=True, tolerance=0.05, relative=False, target=0.80)
    rules = (*RULES, band)
    inside, outside = {**CHAMPION, "clv.interval_coverage": 0.76}, {**CHAMPION, "clv.interval_coverage": 0.86}
    champion = {**CHAMPION, "clv.interval_coverage": 0.95}  # a champion far off its target does not matter
    assert decide(inside, champion, rules).decision == PROMOTE
    refused = decide(outside, champion, rules)
    assert refused.decision == REFUSE
    assert refused.reasons[-1] == "clv.interval_coverage: challenger 0.86 outside 0.8 +- 0.05"
    # over-covering fails too (a higher value is not "better" for a band), and the champion may lack the value
    assert not compare(band, 0.90, None).passed and compare(band, 0.80, None).passed
    assert not compare(band, None, 0.80).passed
