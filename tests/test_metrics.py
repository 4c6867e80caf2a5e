"""Binary classification metrics (scikit-learn's where it has them) against definitions computed
by hand here, and the hand-written ones (bootstrap closures, tie-sharing lift) by hand."""

import numpy as np
import pandas as pd
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import log_loss, precision_recall_curve, roc_curve

from models import metrics as m


def _random_case(seed: int, n: int = 500, tied: bool = False):
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.02, 0.98, n)
    y = (rng.uniform(size=n) < p).astype(int)
    if tied:  # coarse scores: many ties, as with integer day counts
        p = np.round(p * 8) / 8
    return y, p


CASES = [(seed, tied) for seed in (0, 1, 2) for tied in (False, True)]


def pairwise_auc(y, s) -> float:
    """P(score of a positive > score of a negative), ties one half: the AUC's definition."""
    pos, neg = s[y == 1][:, None], s[y == 0][None, :]
    return float(((pos > neg) + 0.5 * (pos == neg)).mean())


def stepwise_average_precision(y, s) -> float:
    """Sum over distinct scores, descending, of (recall gained) x (precision at that score)."""
    total, recall_before = 0.0, 0.0
    for t in np.unique(s)[::-1]:
        chosen = s >= t
        tp = (y[chosen] == 1).sum()
        recall = tp / (y == 1).sum()
        total += (recall - recall_before) * tp / chosen.sum()
        recall_before = recall
    return float(total)


@pytest.mark.parametrize(("seed", "tied"), CASES)
def test_ranking_metrics_follow_their_definitions(seed, tied):
    y, p = _random_case(seed, tied=tied)
    assert m.roc_auc(y, p) == pytest.approx(pairwise_auc(y, p), abs=1e-12)
    assert m.average_precision(y, p) == pytest.approx(stepwise_average_precision(y, p), abs=1e-12)


@pytest.mark.parametrize(("seed", "tied"), CASES)
def test_probability_metrics_follow_their_definitions(seed, tied):
    y, p = _random_case(seed, tied=tied)
    assert m.brier(y, p) == pytest.approx(np.mean((p - y) ** 2), abs=1e-12)
    q = np.clip(p, np.finfo(float).eps, 1 - np.finfo(float).eps)  # tied cases hold 0 and 1
    assert m.log_loss(y, p) == pytest.approx(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)), abs=1e-12)


def test_one_class_gives_nan_ranking_metrics_and_finite_probability_metrics():
    assert np.isnan(m.average_precision([0, 0, 0], [0.1, 0.2, 0.3]))
    assert m.log_loss([1, 1], [0.5, 0.5]) == pytest.approx(np.log(2))  # one class: still the mean loss
    assert m.brier([0, 0], [0.5, 0.0]) == pytest.approx(0.125)


def test_log_loss_clips_certain_wrong_predictions_like_scikit_learn():
    y = np.array([1, 0, 1, 0])
    p = np.array([0.0, 1.0, 1.0, 0.0])
    assert np.isfinite(m.log_loss(y, p))
    assert m.log_loss(y, p) == pytest.approx(log_loss(y, p), rel=1e-12)


@pytest.mark.parametrize("tied", [False, True])
def test_roc_points_equal_scikit_learn_curve(tied):
    y, p = _random_case(3, n=200, tied=tied)
    fpr, tpr, thr = roc_curve(y, p, drop_intermediate=False)
    pts = m.roc_curve_points(y, p)
    np.testing.assert_allclose(pts["fpr"], fpr)
    np.testing.assert_allclose(pts["tpr"], tpr)
    np.testing.assert_allclose(pts["threshold"].iloc[1:], thr[1:])


def test_precision_recall_points_equal_scikit_learn_curve():
    y, p = _random_case(4, n=200, tied=True)
    precision, recall, thr = precision_recall_curve(y, p)
    pts = m.precision_recall_points(y, p)
    # scikit-learn lists thresholds ascending and appends (precision 1, recall 0)
    np.testing.assert_allclose(pts["precision"], precision[:-1][::-1])
    np.testing.assert_allclose(pts["recall"], recall[:-1][::-1])
    np.testing.assert_allclose(pts["threshold"], thr[::-1])


def test_auc_of_one_class_is_nan_and_perfect_ranking_is_one():
    assert np.isnan(m.roc_auc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert m.roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert m.roc_auc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0


def test_top_decile_lift_and_capture_by_hand():
    # 20 customers, 5 churners; top decile = the 2 highest scores: one churner, one not.
    y = np.array([1, 0, 1, 1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    score = np.arange(20, 0, -1, dtype=float)  # strictly decreasing: rows 0 and 1 are the top decile
    # rate in top = 1/2, base rate = 5/20 -> lift 2; capture = 1 of 5 churners.
    assert m.top_share_lift(y, score) == pytest.approx(2.0)
    assert m.top_share_capture(y, score) == pytest.approx(0.2)


def test_top_decile_shares_a_tied_boundary_group_proportionally():
    # 10 customers, top decile = 1 row, but the top 4 scores tie; 2 of those 4 churn.
    y = np.array([1, 0, 1, 0, 1, 0, 0, 0, 0, 0])
    score = np.array([9, 9, 9, 9, 5, 4, 3, 2, 1, 0], dtype=float)
    size, positives = m.expected_positives_in_top(y, score, 0.1)
    assert size == pytest.approx(1.0)
    assert positives == pytest.approx(0.5)  # one row drawn from a group with churn rate 2/4
    assert m.top_share_lift(y, score) == pytest.approx(0.5 / (3 / 10))
    assert m.top_share_capture(y, score) == pytest.approx(0.5 / 3)
    # row order does not matter
    order = np.array([3, 1, 0, 2, 9, 8, 7, 6, 5, 4])
    assert m.top_share_lift(y[order], score[order]) == pytest.approx(m.top_share_lift(y, score))


def test_cumulative_gains_end_at_everyone():
    y, p = _random_case(5, n=300)
    gains = m.cumulative_gains(y, p)
    assert list(gains["share_targeted"]) == pytest.approx([i / 10 for i in range(1, 11)])
    assert gains["capture"].iloc[-1] == pytest.approx(1.0)
    assert gains["lift"].iloc[-1] == pytest.approx(1.0)
    assert gains["capture"].is_monotonic_increasing
    assert gains["lift"].iloc[0] == pytest.approx(m.top_share_lift(y, p))


def test_reliability_curve_equals_scikit_learn_calibration_curve():
    y, p = _random_case(6, n=400)
    # values on the inner bin edges and at 0 and 1 go where scikit-learn puts them
    p = np.r_[p, 0.0, 0.1, 0.2, 0.5, 0.9, 1.0]
    y = np.r_[y, 0, 1, 0, 1, 1, 1]
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10, strategy="uniform")
    curve = m.reliability_curve(y, p, n_bins=10)
    np.testing.assert_allclose(curve["fraction_positive"], prob_true)
    np.testing.assert_allclose(curve["mean_predicted"], prob_pred)
    assert curve["count"].sum() == len(y)


def test_reliability_curve_skips_empty_bins():
    curve = m.reliability_curve([0, 1, 1], [0.05, 0.95, 0.92])
    assert list(curve["bin"]) == [0, 9]
    assert list(curve["count"]) == [1, 2]
    assert curve["fraction_positive"].tolist() == [0.0, 1.0]


def test_probability_outside_unit_interval_is_refused():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        m.brier([0, 1], [0.5, 1.5])


def test_roc_grid_keeps_the_area_and_pr_grid_is_the_interpolated_curve():
    y, p = _random_case(7, n=400)
    grid = m.roc_on_grid(y, p, n_points=1001)
    assert np.trapezoid(grid["tpr"], grid["fpr"]) == pytest.approx(m.roc_auc(y, p), abs=2e-3)
    pr = m.pr_on_grid(y, p)
    assert pr["precision"].is_monotonic_decreasing
    pts = m.precision_recall_points(y, p)
    for r in (0.25, 0.5, 1.0):
        best = pts.loc[pts["recall"] >= r - 1e-12, "precision"].max()
        assert pr.loc[np.isclose(pr["recall"], r), "precision"].item() == pytest.approx(best)


def test_summary_reports_null_probability_metrics_without_a_probability():
    y, p = _random_case(8, n=100)
    summary = m.classification_summary(y, -p)
    assert summary["brier"] is None and summary["log_loss"] is None
    assert summary["roc_auc"] == pytest.approx(1 - pairwise_auc(y, p))
    assert summary["n"] == 100 and summary["positive_rate"] == pytest.approx(y.mean())


def test_inputs_are_checked():
    with pytest.raises(ValueError, match="0 and 1"):
        m.roc_auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="length"):
        m.brier([0, 1], [0.1])
    with pytest.raises(ValueError, match="NaN"):
        m.roc_auc([0, 1], [np.nan, 0.2])
    assert isinstance(m.reliability_curve([0, 1], [0.2, 0.8]), pd.DataFrame)


def test_weighted_metrics_equal_the_metrics_of_repeated_rows():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 300)
    score = np.round(rng.uniform(size=300), 1)  # many ties
    w = rng.integers(0, 4, 300)
    repeated = np.repeat(np.arange(300), w)
    assert m.weighted_roc_auc(y, score)(w) == pytest.approx(m.roc_auc(y[repeated], score[repeated]), rel=1e-12)
    assert m.weighted_roc_auc(y, score)(np.ones(300)) == pytest.approx(m.roc_auc(y, score), rel=1e-12)
    assert m.weighted_brier(y, score)(w) == pytest.approx(m.brier(y[repeated], score[repeated]), rel=1e-12)
    assert np.isnan(m.weighted_roc_auc(y, score)(np.where(y == 1, 1, 0)))  # one class left
