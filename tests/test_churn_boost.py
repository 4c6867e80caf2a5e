"""The churn classifier boosted from a CLV baseline (churn.lightgbm.boost_from): the trees learn
corrections to the baseline's log-odds, and every prediction path adds that start back."""

import datetime as dt
import pickle
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit, logit

from features.errors import DataError
from models import metrics
from models.churn import BOOST_CLIP, ChurnClassifier, prepare_features
from models.churn_pyfunc import ChurnPyfuncModel

FAST = {"n_estimators": 40, "learning_rate": 0.1, "num_leaves": 4, "min_child_samples": 20, "min_child_share": None}
NO_SPLIT = {**FAST, "min_child_samples": 10**6}  # no leaf can hold that many customers: every tree is one leaf


def _world(n: int, seed: int) -> tuple[pd.DataFrame, pd.Series]:
    """A baseline that knows recency (p_no_purchase, expected_purchases) and a signal it misses
    (basket_trend); the labels follow both. Includes probabilities 0 and 1 to exercise the clip."""
    rng = np.random.default_rng(seed)
    days = rng.uniform(0, 400, n)
    trend = rng.normal(size=n)
    base = -1.0 + 0.012 * days
    p_no = expit(base)
    p_no[:2] = (0.0, 1.0)
    X = pd.DataFrame(
        {"days_since_last": days, "basket_trend": trend, "p_no_purchase": p_no, "expected_purchases": -np.log(expit(base))},
        index=pd.Index([f"c{i:05d}" for i in range(n)], name="customer_id"),
    )
    y = pd.Series((rng.uniform(size=n) < expit(base + trend)).astype(np.int8), index=X.index)
    return X, y


def _start(X: pd.DataFrame, boost_from: str = "p_no_purchase") -> np.ndarray:
    p = X["p_no_purchase"].to_numpy() if boost_from == "p_no_purchase" else np.exp(-X["expected_purchases"].to_numpy())
    return logit(np.clip(p, BOOST_CLIP, 1 - BOOST_CLIP))


@pytest.mark.parametrize("boost_from", ["p_no_purchase", "expected_purchases"])
def test_a_classifier_whose_trees_add_nothing_is_the_baseline(boost_from):
    """Hand case: no tree can split, so the boosted classifier's probability is the baseline's own
    (clipped to [1e-6, 1 - 1e-6]); unboosted, the same trees give one number for everyone."""
    X, y = _world(500, 0)
    model = ChurnClassifier(**NO_SPLIT, boost_from=boost_from, calibration="none", random_state=0).fit(X, y)
    p = X["p_no_purchase"].to_numpy() if boost_from == "p_no_purchase" else np.exp(-X["expected_purchases"].to_numpy())
    np.testing.assert_allclose(model.predict_churn_probability(X), np.clip(p, BOOST_CLIP, 1 - BOOST_CLIP), rtol=0, atol=1e-12)
    np.testing.assert_allclose(model.predict_margin(X), _start(X, boost_from), rtol=0, atol=1e-12)
    if boost_from == "p_no_purchase":  # P(no purchase) 0 and 1 start from the clipped log-odds
        assert model.predict_churn_probability(X)[:2].tolist() == pytest.approx([BOOST_CLIP, 1 - BOOST_CLIP], abs=1e-15)
    flat = ChurnClassifier(**NO_SPLIT, boost_from=None, calibration="none", random_state=0).fit(X, y).predict_churn_probability(X)
    assert np.unique(flat).size == 1


def test_every_prediction_adds_the_start_to_the_trees():
    X, y = _world(2000, 1)
    X_new, _ = _world(300, 2)
    model = ChurnClassifier(**FAST, boost_from="p_no_purchase", calibration="sigmoid", random_state=0).fit(X, y)
    trees = model.booster_.predict(X_new, raw_score=True)
    margin = model.predict_margin(X_new)
    np.testing.assert_array_equal(margin, trees + _start(X_new))
    assert np.abs(trees).max() < np.abs(_start(X_new)).max()  # the trees are corrections, the start is most of it
    raw, calibrated = model.predict_raw_and_calibrated(X_new)
    np.testing.assert_array_equal(raw, expit(margin))
    np.testing.assert_array_equal(calibrated, np.clip(model.calibrator_.predict(margin), 0, 1))
    np.testing.assert_array_equal(model.predict_churn_probability(X_new), calibrated)
    np.testing.assert_array_equal(model.predict_proba(X_new)[:, 1], calibrated)
    shap = model.shap_values(X_new)
    np.testing.assert_allclose(shap.sum(axis=1), margin, rtol=0, atol=1e-9)


def test_the_pickled_and_served_model_predict_the_batch_numbers(tmp_path):
    X, y = _world(1500, 3)
    model = ChurnClassifier(**FAST, boost_from="p_no_purchase", calibration="none", random_state=0).fit(X, y)
    batch = model.predict_churn_probability(X)
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(model))
    served = ChurnPyfuncModel()
    served.load_context(SimpleNamespace(artifacts={ChurnPyfuncModel.ARTIFACT: str(path)}))
    rows = X.reset_index(drop=True)[X.columns[::-1]]  # a served request: plain index, any column order
    assert served.predict(None, rows)["churn_probability"].to_numpy().tobytes() == batch.tobytes()
    # dropping the start at predict time would give the trees' corrections alone: far from the batch
    assert np.abs(expit(model.booster_.predict(X, raw_score=True)) - batch).max() > 0.3


def test_the_learning_curve_scores_the_eval_customers_from_their_start():
    X, y = _world(1500, 4)
    X_next, y_next = _world(800, 5)
    model = ChurnClassifier(**FAST, boost_from="p_no_purchase", calibration="none", tree_tolerance=0.0, random_state=0)
    model.fit(X, y, eval_set=(X_next, y_next))
    start = _start(X_next)
    for n in (1, 10, FAST["n_estimators"]):
        margin = model.booster_.predict(X_next, raw_score=True, num_iteration=n) + start
        assert model.learning_curve_[n - 1] == pytest.approx(metrics.log_loss(y_next, expit(margin)), rel=1e-6)


def test_boosting_needs_the_baseline_column():
    X, y = _world(300, 6)
    with pytest.raises(DataError, match="'p_no_purchase' is missing.*boost_from: null"):
        ChurnClassifier(**FAST, boost_from="p_no_purchase").fit(X.drop(columns="p_no_purchase"), y)
    with pytest.raises(DataError, match="'p_no_purchase' has missing"):
        ChurnClassifier(**FAST, boost_from="p_no_purchase").fit(X.assign(p_no_purchase=np.nan), y)
    with pytest.raises(ValueError, match="boost_from"):
        ChurnClassifier(**FAST, boost_from="p_alive").fit(X, y)
    model = ChurnClassifier(**FAST, boost_from="p_no_purchase", calibration="none").fit(X, y)
    with pytest.raises(DataError, match="p_no_purchase"):
        model.predict_churn_probability(X.drop(columns="p_no_purchase"))


def test_dates_held_as_objects_become_day_counts_not_categories():
    """Arrow's date32 arrives in pandas as datetime.date objects: they must give the same model
    input as datetime64 dates (a day count, or nothing when that count is already a feature),
    never a category with one level per day."""
    cutoff = pd.Timestamp("2024-09-30")
    frame = pd.DataFrame({
        "customer_id": ["a", "b"], "cutoff": [cutoff, cutoff],
        "first_purchase": pd.to_datetime(["2024-01-01", "2024-09-01"]), "signup": pd.to_datetime(["2024-09-20", None]),
        "days_since_first": [273, 29], "frequency": [3, 0],
    })  # fmt: skip
    as_objects = frame.assign(
        first_purchase=[dt.date(2024, 1, 1), dt.date(2024, 9, 1)], signup=[dt.date(2024, 9, 20), None]
    )
    expected = prepare_features(frame)
    pd.testing.assert_frame_equal(prepare_features(as_objects), expected)
    assert "first_purchase" not in expected and expected["signup_days_before_cutoff"].tolist()[0] == 10.0


def test_a_model_pickled_before_boosting_predicts_from_its_trees_alone():
    """A champion registered before boost_from existed has no such attribute: it must still load and
    score as it did (no start), not fail at serving or at the retraining gate."""
    X, y = _world(1000, 4)
    unboosted = ChurnClassifier(**FAST, boost_from=None, calibration="none", random_state=0).fit(X, y)
    old = pickle.loads(pickle.dumps(unboosted))
    del old.__dict__["boost_from"]
    np.testing.assert_array_equal(old.predict_churn_probability(X), unboosted.predict_churn_probability(X))
