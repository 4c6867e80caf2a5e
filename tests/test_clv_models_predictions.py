"""CLV model predictions: P(no purchase) closed forms against simulation and lifetimes, discounted
value against lifetimes' customer_lifetime_value, and the predictions contract."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, stats

from features.errors import DataError
from models.clv import (PREDICTION_COLUMNS, PurchaseModel, SpendModel, discounted_value, period_discount_rate,
                        predict_customers)
from models.clv_formulas import expected_purchase_share
from tests.clv_models_data import cdnow_features, cdnow_summary

with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    from lifetimes import BetaGeoFitter, GammaGammaFitter, ParetoNBDFitter

# Fader, Hardie & Lee (2005) estimates on the CDNOW sample, per week.
WEEKLY_PARAMS = {
    "bgnbd": {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426},
    "mbgnbd": {"r": 0.525, "alpha": 6.183, "a": 0.891, "b": 1.614},
    "paretonbd": {"r": 0.553, "alpha": 10.58, "s": 0.606, "beta": 11.67},
}
# (x, t_x, T) in weeks: a one-off buyer, early and late repeaters, a frequent buyer gone quiet.
HISTORIES = [(0, 0.0, 30.0), (1, 5.0, 30.0), (2, 28.0, 32.0), (5, 10.0, 38.0), (5, 36.0, 38.0)]
HORIZON_WEEKS = 13.0


def model_from(name: str) -> PurchaseModel:
    return PurchaseModel.from_params(name, WEEKLY_PARAMS[name])


# --- 5. P(no purchase): Monte Carlo simulation of each model, conditioned by importance weights


def simulate_future(name: str, params: dict, x: int, t_x: float, T: float, t: float, n: int, rng):
    """Draw customers from the model's prior, weight each by the likelihood of the observed
    (x, t_x, T), draw its state at T (alive/dropped out) in proportion to the two parts of that
    likelihood, then simulate its purchases in (T, T+t]. Returns (weights, P(alive | draw), X)."""
    lam = rng.gamma(params["r"], 1.0 / params["alpha"], n)
    if name == "paretonbd":
        mu = rng.gamma(params["s"], 1.0 / params["beta"], n)
        log_alive = x * np.log(lam) - (lam + mu) * T
        # dropout at tau in (t_x, T] with no purchase after t_x
        log_dead = (x * np.log(lam) + np.log(mu / (lam + mu)) - (lam + mu) * t_x
                    + np.log(-np.expm1(-(lam + mu) * (T - t_x))))
    else:
        p = rng.beta(params["a"], params["b"], n)
        # BG/NBD: a dropout chance after each repeat purchase; MBG/NBD also right after the first.
        survived = x + 1 if name == "mbgnbd" else x
        log_alive = survived * np.log1p(-p) + x * np.log(lam) - lam * T
        if name == "mbgnbd" or x > 0:
            log_dead = np.log(p) + (survived - 1) * np.log1p(-p) + x * np.log(lam) - lam * t_x
        else:
            log_dead = np.full(n, -np.inf)
    log_total = np.logaddexp(log_alive, log_dead)
    weights = np.exp(log_total - log_total.max())
    p_alive = np.exp(log_alive - log_total)
    alive = rng.random(n) < p_alive
    if name == "paretonbd":
        remaining_life = rng.exponential(1.0 / mu)
        purchases = rng.poisson(lam * np.minimum(remaining_life, t))
    else:
        purchases = np.minimum(rng.poisson(lam * t), rng.geometric(p))  # gone after the J-th purchase
    return weights, p_alive, np.where(alive, purchases, 0)


def weighted_mean_and_error(values: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
    mean = np.average(values, weights=weights)
    effective_n = weights.sum() ** 2 / (weights**2).sum()
    return float(mean), float(np.sqrt(np.average((values - mean) ** 2, weights=weights) / effective_n))


@pytest.mark.parametrize("name", ["bgnbd", "mbgnbd", "paretonbd"])
def test_p_no_purchase_matches_simulation(name):
    rng = np.random.default_rng(11)
    model = model_from(name)
    for x, t_x, T in HISTORIES:
        weights, p_alive_draws, purchases = simulate_future(name, model.params_, x, t_x, T, HORIZON_WEEKS,
                                                            400_000, rng)
        assert weights.sum() ** 2 / (weights**2).sum() > 2_000  # enough effective draws to judge
        for simulated, closed_form in [
            (weighted_mean_and_error(purchases == 0, weights), model.p_no_purchase(HORIZON_WEEKS, x, t_x, T)),
            (weighted_mean_and_error(purchases, weights), model.expected_purchases(HORIZON_WEEKS, x, t_x, T)),
            (weighted_mean_and_error(p_alive_draws, weights), model.p_alive(x, t_x, T)),
        ]:
            mean, error = simulated
            assert abs(mean - closed_form) < 5 * error + 1e-3, (x, t_x, T, mean, error, closed_form)


def test_pareto_nbd_p_no_purchase_equals_lifetimes_conditional_pmf():
    # lifetimes implements Fader & Hardie's note 028, eq. (16): P(X(T, T+t) = x* | x, t_x, T).
    summary = cdnow_summary("sample", 7)
    ours = model_from("paretonbd")
    reference = ParetoNBDFitter()
    reference.params_ = pd.Series(WEEKLY_PARAMS["paretonbd"])
    f, r, T = summary["frequency"], summary["recency"], summary["T"]
    for t in (1.0, HORIZON_WEEKS, 52.0):
        expected = reference.conditional_probability_of_n_purchases_up_to_time(0, t, f, r, T)
        np.testing.assert_allclose(ours.p_no_purchase(t, f, r, T), expected, rtol=1e-8)


@pytest.mark.parametrize("r, alpha, s, beta", [
    (0.553, 10.58, 0.606, 11.67), (5.5, 40.0, 0.6, 41.0), (0.3, 1.0, 2.0, 500.0), (2.0, 800.0, 0.4, 0.5),
])
def test_expected_purchase_share_equals_the_integral(r, alpha, s, beta):
    # E[lambda / (lambda + mu)] with B = X/(X+Y) ~ Beta(r, s): lambda/(lambda+mu) = B/(B + (alpha/beta)(1-B)).
    ratio = alpha / beta
    integral, _ = integrate.quad(lambda b: b / (b + ratio * (1 - b)) * stats.beta.pdf(b, r, s), 0, 1, limit=200)
    assert expected_purchase_share(r, alpha, s, beta) == pytest.approx(integral, rel=1e-7)


@pytest.mark.parametrize("name", ["bgnbd", "mbgnbd", "paretonbd"])
def test_p_no_purchase_is_a_consistent_probability(name):
    summary = cdnow_summary("sample", 7)
    model = model_from(name)
    f, r, T = summary["frequency"], summary["recency"], summary["T"]
    p_zero = model.p_no_purchase(HORIZON_WEEKS, f, r, T)
    expected = model.expected_purchases(HORIZON_WEEKS, f, r, T)
    assert ((p_zero >= 0) & (p_zero <= 1)).all()
    assert (expected >= 1 - p_zero - 1e-9).all()  # E[X] >= P(X >= 1)
    assert (p_zero >= 1 - model.p_alive(f, r, T) - 1e-12).all()  # dropped-out customers never buy
    np.testing.assert_array_equal(model.p_no_purchase(0.0, f, r, T), 1.0)
    assert (model.p_no_purchase(52.0, f, r, T) <= p_zero + 1e-12).all()  # a longer window, more chances


def test_bgnbd_p_no_purchase_by_hand():
    # x = 2, t_x = 20, T = 30, t = 10: P(alive) = 1 / (1 + a/(b+x-1) ((alpha+T)/(alpha+t_x))^(r+x)).
    r, alpha, a, b = 0.25, 4.0, 0.8, 2.4
    p_alive = 1.0 / (1.0 + a / (b + 1.0) * (34.0 / 24.0) ** 2.25)
    expected = 1.0 - p_alive * (1.0 - (34.0 / 44.0) ** 2.25)
    model = PurchaseModel.from_params("bgnbd", {"r": r, "alpha": alpha, "a": a, "b": b})
    assert model.p_no_purchase(10.0, 2, 20.0, 30.0) == pytest.approx(expected, rel=1e-12)
    assert model.p_no_purchase(10.0, 0, 0.0, 30.0) == pytest.approx((34.0 / 44.0) ** 0.25, rel=1e-12)


# --- 6. Discounted value equals lifetimes' customer_lifetime_value


def lifetimes_clv(summary: pd.DataFrame, freq: str) -> pd.Series:
    """The plain lifetimes route: BG/NBD on all customers, Gamma-Gamma on repeaters, 3 'months'."""
    bgf = BetaGeoFitter().fit(summary["frequency"], summary["recency"], summary["T"])
    rep = summary[summary["frequency"] > 0]
    ggf = GammaGammaFitter().fit(rep["frequency"], rep["monetary_value"])
    monthly = period_discount_rate(0.10, 30 if freq == "D" else 4.345 * 7)
    return ggf.customer_lifetime_value(bgf, summary["frequency"], summary["recency"], summary["T"],
                                       summary["monetary_value"], time=3, discount_rate=monthly, freq=freq)


@pytest.mark.parametrize("days_per_unit, freq, period_days", [(1, "D", 30.0), (7, "W", 4.345 * 7)])
def test_clv_equals_lifetimes_customer_lifetime_value(days_per_unit, freq, period_days):
    # lifetimes' month is 30 days for freq "D" and 4.345 weeks for "W": the same periods here.
    features = cdnow_features("sample", days_per_unit)
    purchase = PurchaseModel().fit(features["frequency"], features["recency"], features["T"])
    spend = SpendModel().fit(features["frequency"], features["monetary_value"])
    ours = predict_customers(purchase, spend, features, horizon_days=3 * period_days, days_per_unit=days_per_unit,
                             margin=1.0, annual_discount_rate=0.10, period_days=period_days)
    expected = lifetimes_clv(cdnow_summary("sample", days_per_unit), freq)
    # The README's claim; measured 1.0e-13 (days) and 9.4e-14 (weeks) on one CPU, 1.3e-12 on
    # another (the Gamma-Gamma optimum's last digits follow the CPU's SIMD summation order).
    np.testing.assert_allclose(ours["clv"].to_numpy(), expected.to_numpy(), rtol=1e-11)


class LinearPurchases:
    """A purchase model whose expected purchases grow linearly: rate per time unit per customer."""

    def __init__(self, rate):
        self.rate = np.asarray(rate, dtype=float)

    def expected_purchases(self, t, frequency, recency, T):
        return self.rate * t


def test_discounted_value_by_hand():
    rho = period_discount_rate(0.10, 30)
    assert rho == pytest.approx(1.10 ** (30 / 365) - 1, rel=1e-15)
    assert period_discount_rate(0.10, 365) == pytest.approx(0.10, rel=1e-15)
    zeros = np.zeros(2)
    model = LinearPurchases([0.1, 0.2])  # purchases per week
    # horizon 75 days in weeks: periods end at 30, 60, 75 days -> 30/7, 30/7, 15/7 weeks of purchases
    value = discounted_value(model, np.array([50.0, 10.0]), zeros, zeros, zeros, horizon_days=75, days_per_unit=7,
                             margin=0.3, period_rate=rho, period_days=30)
    weeks = 30 / 7 / (1 + rho) + 30 / 7 / (1 + rho) ** 2 + 15 / 7 / (1 + rho) ** 3
    np.testing.assert_allclose(value, [0.3 * 50 * 0.1 * weeks, 0.3 * 10 * 0.2 * weeks], rtol=1e-12)


# --- 7 (prediction side) and the predictions contract


@pytest.fixture(scope="module")
def fitted_weekly():
    features = cdnow_features("sample", 7)
    purchase = PurchaseModel("mbgnbd").fit(features["frequency"], features["recency"], features["T"])
    return features, purchase, SpendModel().fit(features["frequency"], features["monetary_value"])


def test_predict_customers_follows_the_contract(fitted_weekly):
    features, purchase, spend = fitted_weekly
    shuffled = features.sample(frac=1.0, random_state=5)
    out = predict_customers(purchase, spend, shuffled, horizon_days=91, days_per_unit=7, margin=0.3,
                            annual_discount_rate=0.10, period_days=30)
    # The point predictions; the interval columns come from models/clv_intervals.py.
    assert list(out.columns) == [c for c in PREDICTION_COLUMNS if c not in ("clv_p10", "clv_p50", "clv_p90", "clv_expected_p10",
                                                                         "clv_expected_p90")]
    assert out["customer_id"].tolist() == shuffled["customer_id"].tolist()
    assert out.index.equals(shuffled.index) and (out["model"] == "mbgnbd").all()
    assert out["customer_id"].dtype == shuffled["customer_id"].dtype
    assert out["cutoff"].dtype == shuffled["cutoff"].dtype
    f, r, T = shuffled["frequency"], shuffled["recency"], shuffled["T"]
    horizon = 91 / 7
    np.testing.assert_allclose(out["p_alive"], purchase.p_alive(f, r, T), rtol=1e-12)
    np.testing.assert_allclose(out["expected_purchases"], purchase.expected_purchases(horizon, f, r, T), rtol=1e-12)
    np.testing.assert_allclose(out["p_no_purchase"], purchase.p_no_purchase(horizon, f, r, T), rtol=1e-12)
    spend_per_purchase = spend.expected_avg_spend(f, shuffled["monetary_value"])
    np.testing.assert_allclose(out["expected_avg_spend"], spend_per_purchase, rtol=1e-12)
    clv = discounted_value(purchase, spend_per_purchase, f, r, T, 91, 7, 0.3, period_discount_rate(0.10, 30), 30)
    np.testing.assert_allclose(out["clv"], clv, rtol=1e-12)
    # 91 days in periods of 30: the last, one-day period is discounted as period 4
    assert (out["clv"] < 0.3 * out["expected_avg_spend"] * out["expected_purchases"]).all()


def test_customers_without_positive_spend_get_the_population_mean(fitted_weekly):
    features, purchase, spend = fitted_weekly
    odd = features.head(4).assign(frequency=[3.0, 2.0, 0.0, 1.0], recency=[20.0, 10.0, 0.0, 5.0],
                                  monetary_value=[0.0, -15.0, 0.0, np.nan])
    out = predict_customers(purchase, spend, odd, 91, 7, 0.3, 0.10, 30)
    np.testing.assert_array_equal(out["expected_avg_spend"], spend.population_mean_spend_)
    assert np.isfinite(out["clv"]).all() and (out["clv"] > 0).all()


def test_expected_avg_spend_equals_lifetimes(fitted_weekly):
    features, _, spend = fitted_weekly
    reference = GammaGammaFitter()
    reference.params_ = pd.Series(spend.params_)
    f, m = features["frequency"], features["monetary_value"]
    np.testing.assert_allclose(spend.expected_avg_spend(f, m), reference.conditional_expected_average_profit(f, m),
                               rtol=1e-12)


def test_unconditional_expectation_equals_lifetimes(fitted_weekly):
    _, purchase, _ = fitted_weekly
    reference = PurchaseModel.from_params("bgnbd", WEEKLY_PARAMS["bgnbd"])
    plain = BetaGeoFitter()
    plain.params_ = pd.Series(WEEKLY_PARAMS["bgnbd"])
    t = np.array([1.0, 13.0, 39.0, 78.0])
    np.testing.assert_allclose(reference.expected_purchases_unconditional(t),
                               plain.expected_number_of_purchases_up_to_time(t), rtol=1e-12)
    assert np.all(np.diff(purchase.expected_purchases_unconditional(t)) > 0)


def test_missing_feature_columns_are_named(fitted_weekly):
    features, purchase, spend = fitted_weekly
    with pytest.raises(DataError, match="monetary_value"):
        predict_customers(purchase, spend, features.drop(columns="monetary_value"), 91, 7, 0.3, 0.1, 30)
