"""Churn labels, leakage guards, feature preparation and the ChurnClassifier estimator."""

import datetime as dt

import ibis
import numpy as np
import pandas as pd
import pytest
from scipy.special import expit
from sklearn.base import clone

from features.customer import DEFAULT_WINDOWS_DAYS, FeatureSpec, customer_features, feature_dtypes, window_labels
from features.errors import DataError
from models import metrics
from models.churn import (
    CLV_FEATURES,
    ChurnClassifier,
    IsotonicCalibrator,
    SigmoidCalibrator,
    baseline_predictions,
    bootstrap_difference,
    check_no_window_columns,
    check_time_honest,
    choose_calibration,
    churn_labels,
    compare_with_baselines,
    fit_recency_map,
    prepare_features,
)

CUTOFF = dt.date(2021, 3, 31)
HORIZON = 30
# Any feature settings do here (the churn checks do not depend on them): the config's defaults.
SPEC = FeatureSpec(horizon_days=HORIZON, days_per_unit=7.0, windows_days=DEFAULT_WINDOWS_DAYS, trend_days=182, trend_purchases=3)
FAST = {"n_estimators": 40, "learning_rate": 0.1, "num_leaves": 4, "min_child_samples": 20, "min_child_share": None,
        "boost_from": None}  # the synthetic frames below have no CLV columns to boost from


def _execute(expr) -> pd.DataFrame:
    return ibis.duckdb.connect().to_pandas(expr)


def _tx(rows) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["customer_id", "timestamp", "amount"])
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], format="ISO8601").astype("datetime64[us]")
    return frame


# (customer, timestamp, amount); the window is (2021-03-31, 2021-04-30]
HAND_MADE = _tx(
    [
        ("one_time", "2021-01-10 10:00", 20.0),  # one purchase before the cutoff, nothing after
        ("repeat_buyer", "2021-02-01", 10.0),
        ("repeat_buyer", "2021-04-15", 15.0),  # buys in the window
        ("return_only", "2021-03-01", 30.0),
        ("return_only", "2021-04-10", -30.0),  # only a return in the window: not a purchase day
        ("edge", "2021-03-31 23:59", 5.0),  # on the cutoff day: history, not window
        ("edge", "2021-04-30 23:00", 5.0),  # last day of the window (inclusive)
        ("too_late", "2021-03-05", 8.0),
        ("too_late", "2021-05-01 00:00", 8.0),  # first day after the window
        ("zero_amount", "2021-02-20", 12.0),
        ("zero_amount", "2021-04-02", 0.0),  # a zero-amount row makes a purchase day
        ("newcomer", "2021-04-05", 50.0),  # first purchase in the window: not a customer at the cutoff
    ]
)


def _labels(tx: pd.DataFrame, cutoff: dt.date = CUTOFF) -> pd.DataFrame:
    table = ibis.memtable(tx)
    customers = customer_features(table, cutoff, SPEC).select("customer_id")
    return _execute(window_labels(table, customers, cutoff, HORIZON))


def test_churn_label_on_a_hand_made_example():
    churned = churn_labels(_labels(HAND_MADE))
    assert churned.to_dict() == {
        "edge": 0,
        "one_time": 1,
        "repeat_buyer": 0,
        "return_only": 1,
        "too_late": 1,
        "zero_amount": 0,
    }
    assert churned.dtype == np.int8 and churned.index.is_monotonic_increasing


def test_churn_labels_refuse_values_other_than_0_and_1():
    labels = pd.DataFrame({"customer_id": ["a", "b"], "purchased": [1, 2]})
    with pytest.raises(DataError, match="purchased"):
        churn_labels(labels)


def _features(tx: pd.DataFrame, cutoff: dt.date = CUTOFF) -> pd.DataFrame:
    return _execute(customer_features(ibis.memtable(tx), cutoff, SPEC))


def _clv_for(features: pd.DataFrame) -> pd.DataFrame:
    n = len(features)
    return pd.DataFrame(
        {
            "customer_id": features["customer_id"],
            "cutoff": features["cutoff"],
            "model": "bgnbd",
            "p_alive": np.linspace(0.2, 0.9, n),
            "expected_purchases": np.linspace(0.1, 1.0, n),
            "p_no_purchase": np.linspace(0.9, 0.3, n),
            "expected_avg_spend": 20.0,
            "clv": np.linspace(1.0, 9.0, n),
        }
    )


def test_window_transactions_never_change_the_scoring_features():
    rng = np.random.default_rng(0)
    before = _features(HAND_MADE)
    labels_before = _labels(HAND_MADE)
    # rewrite everything after the cutoff: drop, add, change amounts and add returns
    history = HAND_MADE[HAND_MADE["timestamp"] < pd.Timestamp(CUTOFF + dt.timedelta(days=1))]
    future = _tx(
        [(c, f"2021-04-{d:02d}", float(rng.integers(-20, 50))) for c in before["customer_id"] for d in (1, 9, 29)]
        + [("one_time", "2021-06-01", 99.0)]
    )
    perturbed = pd.concat([history, future], ignore_index=True)
    after = _features(perturbed)
    pd.testing.assert_frame_equal(before, after)
    assert not _labels(perturbed)["purchased"].equals(labels_before["purchased"])
    pd.testing.assert_frame_equal(prepare_features(before, _clv_for(before)), prepare_features(after, _clv_for(after)))


def test_time_honesty_checks():
    features = _features(HAND_MADE)
    labels, clv = _labels(HAND_MADE), _clv_for(features)
    assert check_time_honest(features, "features_t1", labels=labels, clv=clv) == pd.Timestamp(CUTOFF)
    with pytest.raises(DataError, match="labels cutoff .* differs"):
        check_time_honest(features, "features_t1", labels=labels.assign(cutoff=pd.Timestamp("2021-04-30")))
    with pytest.raises(DataError, match="clv predictions cutoff"):
        check_time_honest(features, "features_t1", clv=clv.assign(cutoff=pd.Timestamp("2021-01-01")))
    with pytest.raises(DataError, match="last_purchase"):
        late = features.copy()
        late.loc[0, "last_purchase"] = pd.Timestamp("2021-04-02")
        check_time_honest(late, "features_t1")
    with pytest.raises(DataError, match="no clv predictions"):
        check_time_honest(features, "features_t1", clv=clv.iloc[1:])


@pytest.mark.parametrize(
    "column", ["purchased", "spend_next_90d", "churned", "label", "window_spend", "target", "future_purchases"]
)
def test_leakage_guard_refuses_window_columns(column):
    with pytest.raises(DataError, match=column):
        check_no_window_columns(["frequency", column])


def test_leakage_guard_accepts_every_contract_feature():
    check_no_window_columns([*feature_dtypes(), *CLV_FEATURES])


def test_prepare_features_drops_ids_converts_dates_and_joins_clv():
    features = _features(HAND_MADE).assign(signup=pd.Timestamp("2021-03-01"), channel="web")
    X = prepare_features(features, _clv_for(features))
    assert X.index.name == "customer_id" and X.index.is_monotonic_increasing
    for dropped in ("customer_id", "cutoff", "model", "first_purchase", "last_purchase"):
        assert dropped not in X
    assert (X["signup_days_before_cutoff"] == 30.0).all()
    assert set(CLV_FEATURES) <= set(X.columns)
    assert isinstance(X["channel"].dtype, pd.CategoricalDtype)
    numeric = X.drop(columns="channel")
    assert (numeric.dtypes == "float64").all()
    assert X.loc["repeat_buyer", "frequency"] == 0.0  # one purchase day on or before the cutoff
    with pytest.raises(DataError, match="window"):
        prepare_features(features.assign(window_spend=1.0))


# --------------------------------------------------------------------------- estimator


def _synthetic(n: int, seed: int) -> tuple[pd.DataFrame, pd.Series]:
    """Features with a known churn signal (recency and frequency) plus noise columns."""
    rng = np.random.default_rng(seed)
    days = rng.uniform(0, 400, n)
    freq = rng.poisson(2, n).astype(float)
    noise = rng.normal(size=n)
    p = expit(-1.0 + 0.012 * days - 0.5 * freq)
    X = pd.DataFrame(
        {"days_since_last": days, "frequency": freq, "noise": noise},
        index=pd.Index([f"c{i:05d}" for i in range(n)], name="customer_id"),
    )
    y = pd.Series((rng.uniform(size=n) < p).astype(np.int8), index=X.index)
    return X, y


def test_classifier_is_deterministic_bitwise_and_honours_random_state():
    X, y = _synthetic(1500, 0)
    first = ChurnClassifier(**FAST, random_state=7).fit(X, y).predict_churn_probability(X)
    second = ChurnClassifier(**FAST, random_state=7).fit(X, y).predict_churn_probability(X)
    assert first.tobytes() == second.tobytes()
    other = ChurnClassifier(**FAST, random_state=8).fit(X, y).predict_churn_probability(X)
    assert not np.array_equal(first, other)


def test_classifier_defaults_are_the_config_defaults():
    """Every ChurnClassifier default with a config counterpart (churn.lightgbm, churn.calibration*,
    seed) equals the typed config's default, so a classifier built without params behaves like the stage's."""
    import inspect

    from pipelines.config import ChurnParams, LightGBMParams, Params

    churn = ChurnParams()
    config = {
        **LightGBMParams().model_dump(),
        "calibration": churn.calibration,
        "calibration_fraction": churn.calibration_fraction,
        "random_state": Params.model_fields["seed"].default,
    }
    signature = inspect.signature(ChurnClassifier.__init__).parameters
    defaults = {name: p.default for name, p in signature.items() if name != "self"}
    assert defaults == config
    assert defaults["n_jobs"] == 2 and defaults["min_child_share"] == 0.05  # the two that used to disagree


def test_classifier_follows_scikit_learn_conventions():
    model = ChurnClassifier(**FAST, calibration="sigmoid", random_state=3)
    assert clone(model).get_params() == model.get_params()
    assert not hasattr(model, "booster_")
    with pytest.raises(AttributeError, match="not fitted"):
        model.predict_churn_probability(pd.DataFrame({"a": [1.0]}))
    X, y = _synthetic(600, 1)
    assert model.fit(X, y) is model
    assert model.calibration_method_ == "sigmoid" and model.n_fit_ + model.n_calibration_ == len(X)
    proba = model.predict_proba(X)
    assert proba.shape == (len(X), 2) and np.allclose(proba.sum(axis=1), 1.0)
    assert list(model.classes_) == [0, 1]


def test_classifier_learns_the_signal():
    X, y = _synthetic(3000, 2)
    X_test, y_test = _synthetic(3000, 3)
    model = ChurnClassifier(**FAST, random_state=0).fit(X, y)
    assert metrics.roc_auc(y_test, model.predict_churn_probability(X_test)) > 0.75
    importance = model.feature_importance()
    assert importance["feature"].iloc[0] in ("days_since_last", "frequency")
    assert importance["feature"].iloc[-1] == "noise"


def test_calibration_improves_brier_of_an_overconfident_model():
    """An overfitted LightGBM is overconfident; the held-out calibration must fix most of it."""
    X, y = _synthetic(3000, 4)
    X_test, y_test = _synthetic(3000, 5)
    overfit = {"n_estimators": 150, "learning_rate": 0.3, "num_leaves": 63, "min_child_samples": 2, "boost_from": None}
    for method in ("isotonic", "sigmoid", "auto"):
        model = ChurnClassifier(**overfit, calibration=method, random_state=0).fit(X, y)
        raw = metrics.brier(y_test, model.predict_proba_raw(X_test))
        calibrated = metrics.brier(y_test, model.predict_churn_probability(X_test))
        assert model.calibration_method_ in ("isotonic", "sigmoid")
        assert calibrated < raw - 0.01, method


def test_auto_calibration_keeps_the_raw_model_when_it_is_already_calibrated():
    rng = np.random.default_rng(0)
    margin = rng.normal(size=4000)
    y = (rng.uniform(size=4000) < expit(margin)).astype(int)
    method, scores = choose_calibration(margin, y, seed=0)
    assert method == "none"
    assert {"none", "sigmoid", "isotonic"} <= set(scores)


def test_auto_calibration_fixes_a_deliberately_miscalibrated_score():
    rng = np.random.default_rng(1)
    margin = rng.normal(scale=3, size=4000)  # 3x too confident, shifted
    y = (rng.uniform(size=4000) < expit(margin / 3 - 0.5)).astype(int)
    method, scores = choose_calibration(margin, y, seed=0)
    assert method in ("sigmoid", "isotonic")
    assert scores[method] < scores["none"]
    sigmoid = SigmoidCalibrator().fit(margin, y)
    assert sigmoid.a_ == pytest.approx(1 / 3, abs=0.05) and sigmoid.b_ == pytest.approx(-0.5, abs=0.15)


def test_auto_settling_on_none_refits_lightgbm_on_every_customer(monkeypatch):
    X, y = _synthetic(1000, 6)
    monkeypatch.setattr("models.churn.choose_calibration", lambda margin, y, seed: ("none", {"none": 0.1}))
    auto = ChurnClassifier(**FAST, calibration="auto", random_state=0).fit(X, y)
    explicit = ChurnClassifier(**FAST, calibration="none", random_state=0).fit(X, y)
    assert auto.calibration_method_ == "none" and auto.calibrator_ is None
    assert auto.n_fit_ == len(X) and explicit.n_fit_ == len(X) and explicit.n_calibration_ == 0
    p = auto.predict_churn_probability(X)
    assert p.tobytes() == auto.predict_proba_raw(X).tobytes() == explicit.predict_churn_probability(X).tobytes()


def test_shap_values_add_up_to_the_raw_margin():
    X, y = _synthetic(800, 7)
    model = ChurnClassifier(**FAST, random_state=0).fit(X, y)
    shap = model.shap_values(X.head(50))
    assert list(shap.columns) == [*X.columns, "bias"]
    np.testing.assert_allclose(shap.sum(axis=1), model.predict_margin(X.head(50)), atol=1e-9)


def test_categories_are_fixed_at_fit_time():
    X, y = _synthetic(1500, 8)
    X["segment"] = pd.Categorical(np.where(X["frequency"] > 2, "loyal", "casual"))
    model = ChurnClassifier(**FAST, random_state=0).fit(X, y)
    assert model.categories_ == {"segment": ["casual", "loyal"]}
    reordered = X.assign(segment=pd.Categorical(X["segment"].astype(str), categories=["loyal", "casual", "vip"]))
    np.testing.assert_array_equal(model.predict_churn_probability(X), model.predict_churn_probability(reordered))
    unseen = X.head(3).assign(segment="vip")
    missing = X.head(3).assign(segment=np.nan)
    np.testing.assert_array_equal(model.predict_churn_probability(unseen), model.predict_churn_probability(missing))


def test_prediction_needs_the_training_columns():
    X, y = _synthetic(600, 9)
    model = ChurnClassifier(**FAST, random_state=0).fit(X, y)
    with pytest.raises(DataError, match="frequency"):
        model.predict_churn_probability(X.drop(columns="frequency"))
    # column order does not matter
    np.testing.assert_array_equal(
        model.predict_churn_probability(X[X.columns[::-1]]), model.predict_churn_probability(X)
    )


def test_fit_refuses_one_class_and_leaky_columns():
    X, y = _synthetic(300, 10)
    with pytest.raises(DataError, match="one class"):
        ChurnClassifier(**FAST).fit(X, pd.Series(1, index=X.index))
    with pytest.raises(DataError, match="purchased"):
        ChurnClassifier(**FAST).fit(X.assign(purchased=0.0), y)


# --------------------------------------------------------------------------- baselines and comparison


def test_baselines_are_computed_from_the_clv_outputs():
    X = pd.DataFrame(
        {
            "p_no_purchase": [0.9, 0.2],
            "expected_purchases": [0.1, 2.0],
            "days_since_last": [300.0, 5.0],
            "p_alive": [0.4, 1.0],
        }
    )
    recency = fit_recency_map(np.array([1.0, 100.0, 200.0, 400.0]), np.array([0, 0, 1, 1]))
    scored = baseline_predictions(X, recency)
    np.testing.assert_allclose(scored["baseline_p_no_purchase"].probability, [0.9, 0.2])
    np.testing.assert_allclose(scored["baseline_expected_purchases"].score, [-0.1, -2.0])
    np.testing.assert_allclose(scored["baseline_expected_purchases"].probability, np.exp([-0.1, -2.0]))
    np.testing.assert_allclose(scored["baseline_recency"].score, [300.0, 5.0])
    np.testing.assert_allclose(scored["baseline_recency"].probability, [1.0, 0.0])
    np.testing.assert_allclose(scored["diagnostic_p_alive"].score, [0.6, 0.0])
    assert scored["diagnostic_p_alive"].probability is None
    assert baseline_predictions(X, None)["baseline_recency"].probability is None


def test_recency_map_is_monotone():
    rng = np.random.default_rng(0)
    days = rng.uniform(0, 400, 2000)
    y = (rng.uniform(size=2000) < days / 400).astype(int)
    grid = np.linspace(-10, 500, 50)
    assert np.all(np.diff(IsotonicCalibrator().fit(days, y).predict(grid)) >= 0)


def test_comparison_picks_the_best_baseline_per_metric():
    results = {
        "classifier_calibrated": {"brier": 0.090, "roc_auc": 0.832},
        "baseline_p_no_purchase": {"brier": 0.091, "roc_auc": 0.830},
        "baseline_expected_purchases": {"brier": 0.095, "roc_auc": 0.840},
    }
    c = compare_with_baselines(results, auc_tolerance=0.005)
    assert c["best_baseline_by_brier"] == "baseline_p_no_purchase"
    assert c["best_baseline_by_auc"] == "baseline_expected_purchases"
    assert c["classifier_beats_baseline_brier"] is True
    assert c["classifier_auc_within_tolerance"] is False  # 0.832 < 0.840 - 0.005
    assert c["auc_difference"] == pytest.approx(-0.008)
    assert compare_with_baselines(results, auc_tolerance=0.01)["classifier_auc_within_tolerance"] is True


def test_bootstrap_interval_brackets_the_difference():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 1000)
    good = np.clip(y * 0.6 + rng.uniform(0, 0.4, 1000), 0, 1)
    bad = rng.uniform(size=1000)
    low, high = bootstrap_difference(y, good, bad, metrics.weighted_brier, n_resamples=100, seed=0)
    point = metrics.brier(y, good) - metrics.brier(y, bad)
    assert low < point < high < 0
    assert bootstrap_difference(y, good, good, metrics.weighted_brier, n_resamples=20, seed=0) == (0.0, 0.0)
    # The same resamples as drawing rows: the interval of the plain metrics on the drawn rows.
    rng = np.random.default_rng(0)
    drawn = [rng.integers(0, 1000, 1000) for _ in range(100)]
    diffs = [metrics.roc_auc(y[i], good[i]) - metrics.roc_auc(y[i], bad[i]) for i in drawn]
    expected = np.quantile(diffs, [0.025, 0.975])
    got = bootstrap_difference(y, good, bad, metrics.weighted_roc_auc, n_resamples=100, seed=0)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
