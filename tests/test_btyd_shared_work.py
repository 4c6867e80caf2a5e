"""The CLV models' work done once: each closed form evaluated once per distinct argument and
gathered, compressed rows not compressed again, lifetimes' search without its Hessian, the
holdout table and gains curve without repeated merges and sorts. Every shortcut must give the
very numbers of the direct computation (bit for bit), which is what these tests check."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.special import gammaln

from models import _lifetimes, btyd, clv_eval
from models.clv import _unique_rows, compress
from tests.clv_models_data import cdnow_summary

with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    from lifetimes import BetaGeoFitter, GammaGammaFitter, ModifiedBetaGeoFitter


@pytest.fixture(scope="module")
def weekly() -> pd.DataFrame:
    return cdnow_summary("sample", 7)


@pytest.fixture(scope="module")
def rows(weekly) -> pd.DataFrame:
    return compress(weekly, ["frequency", "recency", "T"])


def _arrays(rows: pd.DataFrame):
    return tuple(rows[c].to_numpy(dtype=float) for c in ("frequency", "recency", "T"))


# --- distinct arguments


def test_tau_pairs_by_hand():
    # rows (x, t_x, T): (0, 0, 5), (1, 2, 5), (1, 5, 5), (0, 0, 3)
    pairs = btyd.TauPairs([0, 1, 1, 0], [0, 2, 5, 0], [5, 5, 5, 3])
    assert list(zip(pairs.x, pairs.tau)) == [(0, 0), (0, 3), (0, 5), (1, 2), (1, 5)]
    assert list(zip(pairs.x[pairs.at_recency], pairs.tau[pairs.at_recency])) == [(0, 0), (1, 2), (1, 5), (0, 0)]
    assert list(zip(pairs.x[pairs.at_age], pairs.tau[pairs.at_age])) == [(0, 5), (1, 5), (1, 5), (0, 3)]
    assert list(pairs.frequencies) == [0, 1] and list(pairs.by_frequency(np.array([10.0, 20.0]))) == [10, 20, 20, 10]
    assert list(pairs.ages) == [3, 5] and list(pairs.by_age(np.array([1.0, 2.0]))) == [2, 2, 2, 1]


def _pareto_row_by_row(params, x, t_x, T) -> np.ndarray:
    """The Pareto/NBD log-likelihood of each row on its own, written out without any sharing."""
    r, alpha, s, beta = params
    out = []
    for xi, ti, Ti in zip(x, t_x, T):
        at_recency = btyd._pareto_log_f(r, alpha, s, beta, np.array([xi]), np.array([ti]))
        at_age = btyd._pareto_log_f(r, alpha, s, beta, np.array([xi]), np.array([Ti]))
        with np.errstate(divide="ignore", invalid="ignore"):
            log_a0 = at_recency + np.log(-np.expm1(np.minimum(at_age - at_recency, 0.0)))
            dropped = np.log(s) - np.log(r + s + xi) + log_a0
        alive = -(r + xi) * np.log(alpha + Ti) - s * np.log(beta + Ti)
        bracket = np.logaddexp(alive, dropped)
        out.append((gammaln(r + xi) - gammaln(r) + r * np.log(alpha) + s * np.log(beta) + bracket)[0])
    return np.array(out)


@pytest.mark.parametrize("params", [(0.553, 10.58, 0.606, 11.67), (1.0, 1.0, 1.0, 1.0), (2.0, 0.5, 0.3, 40.0)])
def test_pareto_likelihood_on_distinct_pairs_is_each_rows_own_value(rows, params):
    x, t_x, T = _arrays(rows)
    pairs = btyd.TauPairs(x, t_x, T)
    assert len(pairs) < 0.5 * 2 * len(rows)  # the point: far fewer 2F1 evaluations than rows
    shared = btyd.pareto_log_likelihood(*params, x, t_x, T, pairs=pairs)
    np.testing.assert_array_equal(shared, _pareto_row_by_row(params, x, t_x, T))
    np.testing.assert_array_equal(btyd.pareto_log_likelihood(*params, x, t_x, T), shared)


@pytest.mark.parametrize("model, params", [
    ("bgnbd", {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}),
    ("mbgnbd", {"r": 0.525, "alpha": 6.183, "a": 0.891, "b": 1.614}),
    ("bgnbd", {"r": 0.243, "alpha": 4.414, "a": 1.0000002, "b": 2.426}),  # the a = 1 branch
    ("paretonbd", {"r": 0.553, "alpha": 10.58, "s": 0.606, "beta": 11.67}),
])  # fmt: skip
@pytest.mark.parametrize("t", [4.0, 13.0, 39.0, 200.0])
def test_conditional_expectation_on_distinct_histories_is_each_rows_own_value(rows, model, params, t):
    x, t_x, T = _arrays(rows)
    together = btyd.conditional_expected(model, params, t, x, t_x, T)
    alone = np.array([btyd.conditional_expected(model, params, t, [xi], [ti], [Ti])[0] for xi, ti, Ti in zip(x, t_x, T)])
    np.testing.assert_array_equal(together, alone)


# --- compressed rows are not compressed again


def test_sorted_distinct_rows_are_their_own_unique_rows(rows):
    once, codes = _unique_rows(rows, ["frequency", "recency", "T"], rows["count"])
    grouped = rows.groupby(["frequency", "recency", "T"], sort=True).size().reset_index(name="count")
    grouped["count"] = rows["count"].to_numpy(dtype=float)
    pd.testing.assert_frame_equal(once, grouped)
    assert (codes == np.arange(len(rows))).all()
    shuffled = rows.sample(frac=1.0, random_state=0)  # not sorted: grouped as before
    again, codes = _unique_rows(shuffled, ["frequency", "recency", "T"], shuffled["count"])
    pd.testing.assert_frame_equal(again, grouped)
    assert (again.iloc[codes][["frequency", "T"]].to_numpy() == shuffled[["frequency", "T"]].to_numpy()).all()


# --- lifetimes' search without its Hessian: the same optimum, bit for bit


@pytest.mark.parametrize("model, fitter", [("bgnbd", BetaGeoFitter), ("mbgnbd", ModifiedBetaGeoFitter)])
@pytest.mark.parametrize("penalizer", [0.0, 0.001])
def test_purchase_search_equals_lifetimes_fit_exactly(rows, model, fitter, penalizer):
    x, t_x, T = _arrays(rows)
    ours = _lifetimes.fit_purchase(model, x, t_x, T, rows["count"].to_numpy(), penalizer)
    plain = fitter(penalizer_coef=penalizer).fit(x, t_x, T, weights=rows["count"].to_numpy())
    assert ours == {k: float(v) for k, v in plain.params_.items()}


def test_spend_search_equals_lifetimes_fit_exactly(weekly):
    spend = compress(weekly[weekly["frequency"] > 0], ["frequency", "monetary_value"])
    args = (spend["frequency"].to_numpy(), spend["monetary_value"].to_numpy(), spend["count"].to_numpy())
    plain = GammaGammaFitter(penalizer_coef=0.0).fit(*args)
    assert _lifetimes.fit_spend(*args, 0.0) == {k: float(v) for k, v in plain.params_.items()}


# --- holdout table and gains curve


def test_holdout_frame_side_by_side_equals_the_merges():
    ids = pd.Series(["a", "b", "c", "d"], dtype="str")
    features = pd.DataFrame({"customer_id": ids, "frequency": [0, 1, 2, 3], "ipi_mean": [np.nan, 7.0, 5.0, 3.0],
                             "avg_spend": [10.0, 20.0, 30.0, 40.0], "recency": 1.0})  # fmt: skip
    predictions = pd.DataFrame({"customer_id": ids, "expected_purchases": [0.1, 0.2, 0.3, 0.4],
                                "expected_avg_spend": [9.0, 8.0, 7.0, 6.0], "clv": [1.0, 2.0, 3.0, 4.0]})  # fmt: skip
    labels = pd.DataFrame({"customer_id": ids, "n_purchase_days": [0, 1, 0, 2], "spend": [0.0, 5.0, 0.0, 9.0]})
    side_by_side = clv_eval.holdout_frame(features, predictions, labels)
    merged = clv_eval.holdout_frame(features, predictions.iloc[::-1], labels)  # another order: merged
    pd.testing.assert_frame_equal(side_by_side, merged)
    assert list(side_by_side.columns) == ["customer_id", "frequency", "ipi_mean", "avg_spend", "expected_purchases",
                                          "expected_avg_spend", "clv", "actual_purchases", "actual_spend"]  # fmt: skip
    with pytest.raises(pd.errors.MergeError):  # a duplicated customer is still refused
        clv_eval.holdout_frame(pd.concat([features, features.iloc[:1]]), predictions, labels)


def test_gains_curve_points_are_top_share_captures():
    rng = np.random.default_rng(3)
    actual, score = rng.gamma(0.5, 10.0, 997), rng.normal(size=997).round(1)  # ties in the score
    gains = clv_eval.gains_curve({"model": score}, actual, n_points=20)
    for share, model, oracle in zip(gains["customer_share"], gains["model"], gains["oracle"]):
        assert model == clv_eval.top_share_capture(score, actual, share)
        assert oracle == clv_eval.top_share_capture(actual, actual, share)
    assert clv_eval.gains_curve({"model": [1.0, 2.0]}, [0.0, 0.0], n_points=2)["model"].isna().all()
