"""The churn stage's shared work: trees chosen on the out-of-time curve, the final model reusing the
evaluation's settings, capped LightGBM fits and the sampled, shared-draw bootstrap."""

import numpy as np
import pandas as pd
import pytest

from models import churn_eval as ce
from models import metrics
from models.churn import (
    ChurnClassifier,
    Scored,
    bootstrap_difference,
    capped_rows,
    choose_n_trees,
    comparison_intervals,
    paired_bootstrap,
)
from tests.test_churn_model import FAST, _synthetic


def test_choose_n_trees_on_a_hand_made_curve():
    curve = np.array([0.50, 0.40, 0.35, 0.3410, 0.3402, 0.3400, 0.3401])
    assert choose_n_trees(curve, None) == 7  # null: the cap (every tree of the curve)
    assert choose_n_trees(curve, 0.0) == 6  # the minimum
    assert choose_n_trees(curve, 0.0002) == 5  # 0.3402 <= 0.3400 + 0.0002
    assert choose_n_trees(curve, 0.0011) == 4
    assert choose_n_trees(curve, 1.0) == 1
    with pytest.raises(ValueError):
        choose_n_trees(np.array([0.5, np.nan]), 0.0)


def test_capped_rows_keeps_everything_below_the_cap_and_a_seeded_stratified_sample_above():
    y = np.r_[np.ones(300, dtype=np.int8), np.zeros(700, dtype=np.int8)]
    positions = np.arange(0, 1000)
    assert capped_rows(positions, y, None, 0) is positions or np.array_equal(capped_rows(positions, y, None, 0), positions)
    np.testing.assert_array_equal(capped_rows(positions, y, 1000, 0), positions)
    kept = capped_rows(positions, y, 100, 0)
    assert len(kept) == 100 and np.all(np.diff(kept) > 0) and y[kept].sum() == 30  # sorted, 30 % churned
    np.testing.assert_array_equal(kept, capped_rows(positions, y, 100, 0))  # seeded
    assert not np.array_equal(kept, capped_rows(positions, y, 100, 1))


def test_an_eval_set_records_the_curve_without_changing_the_model():
    X, y = _synthetic(600, 0)
    X_next, y_next = _synthetic(500, 1)
    plain = ChurnClassifier(**FAST, calibration="none", random_state=0).fit(X, y)
    untracked = ChurnClassifier(**FAST, calibration="none", tree_tolerance=None, random_state=0)
    untracked.fit(X, y, eval_set=(X_next, y_next))
    assert untracked.learning_curve_ is None and untracked.n_trees_ == FAST["n_estimators"]  # tolerance null: no curve
    tracked = ChurnClassifier(**FAST, calibration="none", tree_tolerance=0.0, random_state=0)
    tracked.fit(X, y, eval_set=(X_next, y_next))
    assert plain.learning_curve_ is None and plain.n_trees_ == FAST["n_estimators"]
    assert tracked.learning_curve_.shape == (FAST["n_estimators"],)
    assert tracked.n_trees_ == int(np.argmin(tracked.learning_curve_)) + 1
    np.testing.assert_array_equal(plain.booster_.predict(X_next, raw_score=True), tracked.booster_.predict(X_next, raw_score=True))
    # the curve is the eval customers' log loss after each tree
    for n in (1, 10, FAST["n_estimators"]):
        margin = tracked.booster_.predict(X_next, raw_score=True, num_iteration=n)
        assert tracked.learning_curve_[n - 1] == pytest.approx(metrics.log_loss(y_next, 1 / (1 + np.exp(-margin))), rel=1e-9)


def test_a_tolerance_keeps_the_first_trees_and_equals_a_fit_with_that_many():
    X, y = _synthetic(600, 0)
    X_next, y_next = _synthetic(500, 1)
    trimmed = ChurnClassifier(**FAST, calibration="none", tree_tolerance=0.05, random_state=0)
    trimmed.fit(X, y, eval_set=(X_next, y_next))
    n = trimmed.n_trees_
    assert n < FAST["n_estimators"] and n == choose_n_trees(trimmed.learning_curve_, 0.05)
    direct = ChurnClassifier(**{**FAST, "n_estimators": n}, calibration="none", random_state=0).fit(X, y)
    np.testing.assert_array_equal(trimmed.predict_margin(X_next), direct.predict_margin(X_next))
    shap = trimmed.shap_values(X_next.head(20))
    np.testing.assert_allclose(shap.sum(axis=1).to_numpy(), trimmed.predict_margin(X_next.head(20)), atol=1e-9)


def test_max_fit_customers_caps_every_lightgbm_fit():
    X, y = _synthetic(600, 0)
    auto = ChurnClassifier(**FAST, max_fit_customers=200, random_state=0).fit(X, y)
    assert auto.n_fit_ == 200
    none = ChurnClassifier(**FAST, calibration="none", max_fit_customers=250, random_state=0).fit(X, y)
    assert none.n_fit_ == 250
    uncapped = ChurnClassifier(**FAST, calibration="none", max_fit_customers=600, random_state=0).fit(X, y)
    unset = ChurnClassifier(**FAST, calibration="none", max_fit_customers=None, random_state=0).fit(X, y)
    np.testing.assert_array_equal(uncapped.predict_margin(X), unset.predict_margin(X))


class _Ev:
    def __init__(self, model):
        self.model = model


def test_the_final_model_takes_the_evaluations_trees_and_calibration():
    X, y = _synthetic(600, 0)
    evaluated = ChurnClassifier(**FAST, calibration="sigmoid", random_state=0).fit(X, y)
    evaluated.n_trees_ = 17
    t1 = ce.Snapshot(1, pd.Timestamp("2021-01-01"), X, y)

    def build():
        return ChurnClassifier(**FAST, calibration="auto", random_state=0)

    final = ce.final_builder(build, _Ev(evaluated), t1)()
    assert (final.n_estimators, final.calibration) == (17, "sigmoid")
    few = ce.Snapshot(1, t1.cutoff, X.head(40), pd.Series(np.r_[np.ones(37), np.zeros(3)].astype(np.int8), index=X.index[:40]))
    assert ce.final_builder(build, _Ev(evaluated), few)().calibration == "none"  # 3 retained: nothing to hold out

    def build_explicit():
        return ChurnClassifier(**FAST, calibration="isotonic", random_state=0)

    assert ce.final_builder(build_explicit, _Ev(evaluated), t1)().calibration == "isotonic"  # a setting is kept


def _scored(n: int, seed: int) -> tuple[np.ndarray, dict[str, Scored], dict]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    good = np.clip(y * 0.5 + rng.uniform(0, 0.5, n), 0, 1)
    base = np.clip(y * 0.3 + rng.uniform(0, 0.7, n), 0, 1)
    scored = {"clf": Scored(good, good), "base": Scored(base, base)}
    comparison = {"classifier": "clf", "best_baseline_by_brier": "base", "best_baseline_by_auc": "base"}
    return y, scored, comparison


def test_the_shared_draws_give_each_pair_its_own_single_pair_interval():
    y, scored, _ = _scored(800, 0)
    a, b = scored["clf"].score, scored["base"].score
    pairs = [(a, b, metrics.weighted_brier), (a, b, metrics.weighted_roc_auc)]
    both = paired_bootstrap(y, pairs, 50, seed=3)
    assert both[0] == bootstrap_difference(y, a, b, metrics.weighted_brier, 50, 3)
    assert both[1] == bootstrap_difference(y, a, b, metrics.weighted_roc_auc, 50, 3)


def test_a_bootstrap_sample_at_least_the_test_size_changes_nothing():
    y, scored, comparison = _scored(800, 0)
    full = comparison_intervals(y, scored, comparison, 50, seed=1)
    assert comparison_intervals(y, scored, comparison, 50, seed=1, sample=800) == full
    assert full["resampled_customers"] == 800


def test_a_sampled_bootstrap_is_rescaled_to_the_whole_test_set():
    y, scored, comparison = _scored(20000, 0)
    full = comparison_intervals(y, scored, comparison, 200, seed=1)
    sampled = comparison_intervals(y, scored, comparison, 200, seed=1, sample=5000)
    assert sampled["resampled_customers"] == 5000
    point = metrics.brier(y, scored["clf"].probability) - metrics.brier(y, scored["base"].probability)
    for key in ("brier_difference_ci95", "auc_difference_ci95"):
        (lo_f, hi_f), (lo_s, hi_s) = full[key], sampled[key]
        assert lo_s < hi_s
        assert (hi_s - lo_s) == pytest.approx(hi_f - lo_f, rel=0.3)  # the whole set's width, not twice it
    assert sampled["brier_difference_ci95"][0] < point < sampled["brier_difference_ci95"][1]
