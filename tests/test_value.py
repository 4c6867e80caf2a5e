"""The value model (models/value.py, models/value_eval.py) and the `cvp value` stage on a small base."""

from __future__ import annotations

import datetime as dt
import shutil

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone

from features.errors import DataError
from models import segment_eval as ev
from models import segments as seg
from models import value as vm
from pipelines import files
from pipelines import value as stage
from pipelines.catalog import Catalog
from pipelines.config import load_params
from pipelines.contracts import VALUE_PREDICTIONS_SCHEMA
from tests.test_churn_stage import AS_OF, HORIZON, inputs_dir, write_params  # noqa: F401  (inputs_dir: fixture)


def _ids(n: int) -> pd.Series:
    return pd.Series([f"c{i}" for i in range(n)])


# --------------------------------------------------------------------------- target and metrics


def test_the_target_discounts_the_spend_like_the_clv_periods():
    rate = 1.10 ** (30 / 365) - 1  # 10% a year, per 30-day period
    factors = (1 + rate) ** -np.arange(1, 5)
    assert vm.mean_discount_factor(90, 0.10, 30) == pytest.approx(factors[:3].mean(), rel=1e-12)
    # 91 days: three whole periods and one day of the fourth
    assert vm.mean_discount_factor(91, 0.10, 30) == pytest.approx((30 * factors[:3].sum() + factors[3]) / 91, rel=1e-12)
    assert vm.mean_discount_factor(91, 0.0, 30) == 1.0
    labels = pd.DataFrame({"customer_id": ["b", "a"], "spend": [100.0, 0.0]})
    value = vm.realised_value(labels, margin=0.3, discount=0.5)
    assert value.to_dict() == {"a": 0.0, "b": 15.0}


def test_normalized_gini_is_one_for_the_perfect_order_and_minus_one_reversed():
    actual, ids = pd.Series([3.0, 1.0, 0.0, 0.0]), _ids(4)
    assert vm.normalized_gini(actual, pd.Series([4.0, 3.0, 2.0, 1.0]), ids) == pytest.approx(1.0)
    assert vm.normalized_gini(actual, pd.Series([1.0, 2.0, 3.0, 4.0]), ids) == pytest.approx(-1.0)
    # order (1, 3, 0, 0): cumulative shares .25, 1, 1, 1 -> mean .8125 - 5/8 = .1875; perfect: .3125
    assert vm.normalized_gini(actual, pd.Series([3.0, 4.0, 2.0, 1.0]), ids) == pytest.approx(0.1875 / 0.3125)
    assert np.isnan(vm.normalized_gini(pd.Series([0.0, 0.0]), pd.Series([1.0, 2.0]), _ids(2)))


def test_forecast_metrics_by_hand():
    # 5 customers: the top 20% is one customer; the forecast puts the 6.0 first, the 4.0 last
    actual = pd.Series([6.0, 0.0, 0.0, 0.0, 4.0])
    score = pd.Series([5.0, 4.0, 3.0, 2.0, 1.0])
    got = vm.forecast_metrics(actual, score, _ids(5))
    assert got["top_share_capture"] == pytest.approx(0.6)
    # ranks of the score 5..1, of the actual 5, 2, 2, 2, 4: Pearson of the ranks
    assert got["spearman"] == pytest.approx(np.corrcoef([5, 4, 3, 2, 1], [5, 2, 2, 2, 4])[0, 1])
    assert got["total_ratio"] == pytest.approx(15.0 / 10.0)
    perfect = vm.forecast_metrics(actual, actual + 0.5, _ids(5))
    assert perfect["normalized_gini"] == pytest.approx(1.0) and perfect["top_share_capture"] == pytest.approx(0.6)


def test_decile_calibration_groups_by_predicted_rank():
    score = pd.Series(np.arange(20, dtype=float))  # customer 19 has the highest prediction
    actual = score * 2
    table = vm.decile_calibration(actual, score, _ids(20))
    assert table["decile"].tolist() == list(range(1, 11)) and (table["customers"] == 2).all()
    assert table.loc[0, "mean_predicted"] == 18.5 and table.loc[0, "mean_realised"] == 37.0
    assert table.loc[9, "mean_predicted"] == 0.5


def test_the_model_wins_only_by_more_than_min_gain_and_with_an_interval_above_zero():
    comparison = {"value_model": {"spearman": 0.45}, "clv": {"spearman": 0.40}, "combined": {"spearman": 0.42},
                  "oracle": {"top_share_capture": 1.0}}  # fmt: skip
    wins, why = vm.model_wins(comparison, None, "spearman", 0.02)
    assert wins and "combined" in why
    assert not vm.model_wins(comparison, None, "spearman", 0.04)[0]
    unsure = {"clv": (0.01, 0.09), "combined": (-0.001, 0.06)}
    wins, why = vm.model_wins(comparison, unsure, "spearman", 0.0)
    assert not wins and "combined" in why
    assert vm.model_wins(comparison, {"clv": (0.01, 0.09), "combined": (0.001, 0.06)}, "spearman", 0.0)[0]


def test_the_bootstrap_interval_holds_the_gain():
    rng = np.random.default_rng(0)
    actual = pd.Series(rng.gamma(0.3, 10, 400))
    good, noisy = actual + rng.normal(0, 1, 400), actual + rng.normal(0, 20, 400)
    low, high = vm.bootstrap_gain(actual, good, noisy, _ids(400), "spearman", 0.9, seed=1, resamples=50)
    gain = vm.metric_value("spearman", actual, good, _ids(400)) - vm.metric_value("spearman", actual, noisy, _ids(400))
    assert 0 < low <= gain <= high


# --------------------------------------------------------------------------- the estimator


def _frame(n: int, seed: int) -> tuple[pd.DataFrame, pd.Series]:
    """Customers whose chance to buy and spend grow with x; clv and p_no_purchase as a BTYD would give."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, n)
    buys = rng.random(n) < 0.1 + 0.6 * x
    value = np.where(buys, rng.lognormal(1 + x, 0.8), 0.0)
    X = pd.DataFrame({"x": x, "noise": rng.normal(size=n), "p_no_purchase": 0.9 - 0.6 * x,
                      "clv": (0.1 + 0.6 * x) * np.exp(1.3 + x)}, index=pd.Index(_ids(n), name="customer_id"))  # fmt: skip
    return X, pd.Series(value, index=X.index)


@pytest.mark.parametrize("kind", ["two_part", "single"])
def test_the_estimator_follows_scikit_learn_conventions(kind):
    X, y = _frame(2000, 0)
    model = vm.ValueModel(kind=kind, n_estimators=40, random_state=3)
    assert model.fit(X, y) is model
    copy = clone(model)
    assert copy.get_params() == model.get_params() and not hasattr(copy, "n_fit_")
    same = vm.ValueModel(kind=kind, n_estimators=40, random_state=3).fit(X, y).predict(X)
    np.testing.assert_array_equal(model.predict(X), same)
    other = vm.ValueModel(kind=kind, n_estimators=40, random_state=4).fit(X, y).predict(X)
    assert not np.array_equal(other, same)  # the seed reaches LightGBM's row and column sampling
    assert (model.predict(X) >= 0).all()
    with pytest.raises(AttributeError, match="not fitted"):
        vm.ValueModel().predict(X)


def test_max_fit_customers_fits_a_seeded_sample_stratified_by_buyer():
    X, y = _frame(3000, 5)
    capped = vm.ValueModel(n_estimators=20, max_fit_customers=1000, random_state=1).fit(X, y)
    assert capped.n_fit_ == 1000 and capped.p_buy_ == pytest.approx((y > 0).mean(), abs=1e-3)
    again = vm.ValueModel(n_estimators=20, max_fit_customers=1000, random_state=1).fit(X, y)
    np.testing.assert_array_equal(capped.predict(X), again.predict(X))
    full = vm.ValueModel(n_estimators=20, max_fit_customers=None, random_state=1).fit(X, y)
    assert full.n_fit_ == 3000 and not np.array_equal(full.predict(X), capped.predict(X))
    assert len(capped.predict(X)) == 3000


def test_the_smearing_factor_keeps_the_expected_total_unbiased():
    X, y = _frame(6000, 1)
    model = vm.ValueModel(n_estimators=150, learning_rate=0.05, boost_from_btyd=False).fit(X, y)
    assert model.smearing_ > 1.1  # exp of the log residuals: the log-scale fit alone is low
    assert model.predict(X).sum() == pytest.approx(y.sum(), rel=0.05)
    biased = model.predict_purchase_probability(X) * np.clip((model.predict_buyer_value(X) + 1) / model.smearing_ - 1, 0, None)
    assert biased.sum() < 0.9 * y.sum()
    X2, _ = _frame(3000, 2)
    assert model.predict(X2)[X2["x"] > 0.8].mean() > 3 * model.predict(X2)[X2["x"] < 0.2].mean()


def test_window_columns_and_missing_btyd_columns_are_refused():
    X, y = _frame(200, 0)
    with pytest.raises(DataError, match="label-window"):
        vm.ValueModel().fit(X.assign(spend_next_horizon=y), y)
    with pytest.raises(DataError, match="p_no_purchase"):
        vm.ValueModel().fit(X.drop(columns="p_no_purchase"), y)
    assert vm.ValueModel(boost_from_btyd=False, n_estimators=5).fit(X.drop(columns="p_no_purchase"), y).n_fit_ == 200


# --------------------------------------------------------------------------- growth potential source


def test_auto_uses_the_value_model_only_when_it_won():
    won = {"use": True, "reason": "r", "comparison": {"clv": {}}, "evaluation": {"mode": "out_of_time"}}
    assert ev.growth_potential_source("auto", won, "metrics/value.json")["used"] == "value"
    assert ev.growth_potential_source("auto", {**won, "use": False}, "metrics/value.json")["used"] == "combined"
    missing = ev.growth_potential_source("auto", None, "metrics/value.json")
    assert missing["used"] == "combined" and "metrics/value.json not found" in missing["reason"]
    assert ev.growth_potential_source("clv", won, "metrics/value.json")["used"] == "clv"
    predicted = pd.Series([1.0, 2.0])
    growth = seg.growth_potential("value", pd.Series([5.0, 5.0]), pd.Series([0.5, 0.5]), pd.Series([0.1, 0.1]), predicted)
    assert growth.tolist() == [1.0, 2.0]


# --------------------------------------------------------------------------- the stage


@pytest.fixture
def project(tmp_path, inputs_dir, monkeypatch) -> Catalog:  # noqa: F811
    shutil.copytree(inputs_dir / "data", tmp_path / "data")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.delenv("CVP_PIPELINE_RUN_ID", raising=False)
    return Catalog(tmp_path, tmp_path / "params.yaml")


def _params(paths: Catalog, growth_potential: str = "value", **value):
    """Small, quick value settings; segment.growth_potential ``value`` (the final model is fitted)."""
    params = load_params(write_params(paths.root))
    lightgbm = params.value.lightgbm.model_copy(update={"n_estimators": 40, "learning_rate": 0.1})
    segment = params.segment.model_copy(update={"growth_potential": growth_potential})
    return params.model_copy(update={"value": params.value.model_copy(update={"lightgbm": lightgbm, "min_train_customers": 100,
                                                                             "min_train_buyers": 20, **value}),
                                     "segment": segment})  # fmt: skip


def test_stage_evaluates_out_of_time_and_writes_every_output(project):
    paths = project
    params = _params(paths, win_interval=None)  # the bootstrap is tested above; here it would take most of the time
    stage.run(params, paths)
    summary = files.read_json(paths.metrics_file("value"))
    evaluation = summary["evaluation"]
    assert evaluation["mode"] == "out_of_time" and evaluation["n_test"] == len(pd.read_parquet(paths.labels_at(1)))
    assert set(summary["comparison"]) == {"value_model", "clv", "quick_estimate", "oracle"}  # no churn_predictions_t1
    assert summary["use"] == evaluation["wins"] and summary["final_model"]["fitted"]
    for k, cutoff in ((0, AS_OF), (1, AS_OF - dt.timedelta(days=HORIZON))):
        frame = VALUE_PREDICTIONS_SCHEMA.validate(pd.read_parquet(paths.path(f"value_predictions_t{k}")))
        assert frame["customer_id"].tolist() == pd.read_parquet(paths.features_at(k))["customer_id"].tolist()
        assert (frame["cutoff"] == pd.Timestamp(cutoff)).all() and (frame["source"] == "value_model").all()
    deciles = pd.read_csv(paths.plots_dir("value") / "decile_calibration.csv")
    assert set(deciles["forecast"]) == {"value_model", "clv", "quick_estimate"}
    assert (paths.plots_dir("value") / "decile_calibration.png").read_bytes()[:4] == b"\x89PNG"

    # no leakage: the t1 predictions come from the model trained at t2; changing what happened
    # after t1 changes the realised value they are scored against, not the predictions
    before = paths.path("value_predictions_t1").read_bytes()
    labels = pd.read_parquet(paths.labels_at(1))
    files.write_parquet(labels.assign(spend=labels["spend"][::-1].to_numpy()), paths.labels_at(1))
    stage.run(params, paths)
    assert paths.path("value_predictions_t1").read_bytes() == before
    assert files.read_json(paths.metrics_file("value"))["comparison"] != summary["comparison"]


@pytest.mark.parametrize("growth_potential", ["auto", "combined"])
def test_no_final_model_is_fitted_when_segment_will_not_use_it(project, growth_potential):
    """auto with a model that does not win (min_gain 1: it cannot), or combined: the evaluation is
    reported, the t0 predictions are the BTYD CLV and metrics say why nothing was fitted. The t0
    features are not read then (at a million customers reading and preparing them took ~3.5 s)."""
    paths = project
    paths.features_at(0).unlink()
    stage.run(_params(paths, growth_potential, win_interval=None, min_gain=1.0), paths)
    summary = files.read_json(paths.metrics_file("value"))
    assert summary["evaluation"]["mode"] == "out_of_time" and summary["use"] is False
    assert "not more than value.min_gain=1.0" in summary["reason"]  # the verdict, not overwritten
    assert not summary["final_model"]["fitted"] and "combined" in summary["final_model"]["reason"]
    t0 = pd.read_parquet(paths.path("value_predictions_t0"))
    assert (t0["source"] == "clv").all()
    assert t0["predicted_value"].tolist() == pd.read_parquet(paths.clv_predictions_at(0))["clv"].tolist()
    assert (pd.read_parquet(paths.path("value_predictions_t1"))["source"] == "value_model").all()  # the evaluation's


def test_a_base_too_small_for_t2_writes_predictions_and_says_why_the_model_is_not_used(project):
    paths = project
    stage.run(_params(paths, min_train_customers=100_000), paths)
    summary = files.read_json(paths.metrics_file("value"))
    assert summary["use"] is False and summary["evaluation"]["mode"] == "none"
    assert "value.min_train_customers=100000" in summary["reason"]
    t1 = pd.read_parquet(paths.path("value_predictions_t1"))
    clv_t1 = pd.read_parquet(paths.clv_predictions_at(1))
    assert (t1["source"] == "clv").all() and t1["predicted_value"].tolist() == clv_t1["clv"].tolist()
    assert not summary["final_model"]["fitted"]
    assert (pd.read_parquet(paths.path("value_predictions_t0"))["source"] == "clv").all()


def test_resample_ranks_from_counts_are_scipys_average_ranks_and_give_its_spearman():
    """The bootstrap's O(n) ranks: a resample with repeats and ties gets rankdata's average ranks,
    and their Pearson correlation is spearmanr's statistic."""
    from scipy.stats import rankdata, spearmanr

    rng = np.random.default_rng(3)
    actual = np.round(rng.exponential(10.0, 300))  # many ties, a few zeros
    score = actual + rng.normal(0.0, 5.0, 300)
    take = rng.integers(0, 300, 300)
    ranks_a, ranks_s = (vm._RankLevels(v).average_ranks(take) for v in (actual, score))
    np.testing.assert_allclose(ranks_a, rankdata(actual[take]), rtol=0, atol=1e-9)
    np.testing.assert_allclose(ranks_s, rankdata(score[take]), rtol=0, atol=1e-9)
    assert vm._pearson(ranks_a, ranks_s) == pytest.approx(spearmanr(actual[take], score[take]).statistic, abs=1e-12)
    small = take[:50]  # far fewer customers than distinct scores: ranked by sorting, the same ranks
    np.testing.assert_allclose(vm._RankLevels(score).average_ranks(small), rankdata(score[small]), rtol=0, atol=1e-9)
    assert np.isnan(vm._pearson(np.ones(5), np.arange(5.0)))
