"""CLV model fitting: literature references, compression, time scaling, recovery, failures, API."""

from __future__ import annotations

import logging
import math
import pickle
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone

from features.errors import DataError
from models import _lifetimes
from models.clv import FitError, PurchaseModel, SpendModel, compress, credibility_constant, resolve_time_scale
from tests.clv_models_data import cdnow_summary

with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    import lifetimes.fitters
    from lifetimes import BetaGeoFitter, GammaGammaFitter, ModifiedBetaGeoFitter
    from lifetimes.generate_data import beta_geometric_nbd_model


def fit_purchase(summary: pd.DataFrame, model: str, **kwargs) -> PurchaseModel:
    return PurchaseModel(model, random_state=0, **kwargs).fit(summary["frequency"], summary["recency"], summary["T"])


def repeaters(summary: pd.DataFrame) -> pd.DataFrame:
    return summary[summary["frequency"] > 0]


def assert_params_close(actual: dict, expected: dict, rtol: float) -> None:
    for name, value in expected.items():
        assert actual[name] == pytest.approx(value, rel=rtol), f"{name}: {actual[name]} vs {value}"


# --- 1. Reference results: Fader, Hardie & Lee (2005), CDNOW 1/10 sample, 39 weeks of calibration


@pytest.fixture(scope="module")
def weekly() -> pd.DataFrame:
    return cdnow_summary("sample", 7)


@pytest.fixture(scope="module")
def weekly_fits(weekly) -> dict[str, PurchaseModel]:
    return {model: fit_purchase(weekly, model) for model in ("bgnbd", "mbgnbd", "paretonbd")}


def test_cdnow_sample_summary_matches_the_paper(weekly):
    # 2357 customers, 946 of whom repeat within the calibration period (FHL 2005, section 4).
    assert len(weekly) == 2357
    assert (weekly["frequency"] > 0).sum() == 946


def test_bgnbd_reproduces_fader_hardie_lee(weekly_fits):
    model = weekly_fits["bgnbd"]
    assert_params_close(model.params_, {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}, 0.005)
    assert_params_close(model.params_, {"r": 0.242595, "alpha": 4.413603, "a": 0.792922, "b": 2.425906}, 1e-5)
    assert model.log_likelihood_ == pytest.approx(-9582.4, abs=0.05)  # FHL 2005, table 1
    assert (model.model_, model.n_customers_, model.penalizer_, model.time_scale_) == ("bgnbd", 2357, 0.0, 1.0)


def test_paretonbd_reproduces_fader_hardie_lee(weekly_fits):
    model = weekly_fits["paretonbd"]
    assert_params_close(model.params_, {"r": 0.553, "alpha": 10.58, "s": 0.606, "beta": 11.67}, 0.005)
    # lifetimes' own Nelder-Mead (tol 1e-4 on raw parameters) stops a little earlier than ours.
    assert_params_close(model.params_, {"r": 0.553280, "alpha": 10.577572, "s": 0.606196, "beta": 11.667347}, 2e-4)
    assert model.log_likelihood_ == pytest.approx(-9595.0, abs=0.05)


def test_gamma_gamma_reproduces_fader_hardie_lee(weekly):
    model = SpendModel().fit(weekly["frequency"], weekly["monetary_value"])
    assert_params_close(model.params_, {"p": 6.25, "q": 3.74, "v": 15.44}, 0.005)
    assert_params_close(model.params_, {"p": 6.249572, "q": 3.744225, "v": 15.443521}, 1e-5)
    assert (model.n_fit_, model.n_excluded_) == (946, 2357 - 946)
    assert model.population_mean_spend_ == pytest.approx(6.249572 * 15.443521 / 2.744225, rel=1e-5)


# --- 2. A fit on unique rows with counts equals the plain fit on every customer


@pytest.mark.parametrize("model, fitter", [("bgnbd", BetaGeoFitter), ("mbgnbd", ModifiedBetaGeoFitter)])
def test_compressed_fit_equals_plain_lifetimes_fit(weekly, weekly_fits, model, fitter):
    ours = weekly_fits[model]
    plain = fitter().fit(weekly["frequency"], weekly["recency"], weekly["T"])
    assert ours.n_unique_rows_ == 1016 < ours.n_customers_ == 2357
    # The README's claim; measured 5.6e-14 (BG/NBD) and 2.6e-13 (MBG/NBD).
    assert_params_close(ours.params_, dict(plain.params_), 1e-12)


def test_compressed_gamma_gamma_equals_plain_lifetimes_fit(weekly):
    ours = SpendModel().fit(weekly["frequency"], weekly["monetary_value"])
    rep = repeaters(weekly)
    plain = GammaGammaFitter().fit(rep["frequency"], rep["monetary_value"])
    # measured 9.1e-14 on one CPU, 1.8e-12 on another (SIMD summation order moves the optimum's last digits)
    assert_params_close(ours.params_, dict(plain.params_), 1e-11)


def test_compressed_paretonbd_equals_fit_on_every_customer(weekly):
    # lifetimes' own Pareto/NBD objective is not invariant to compression (it divides by the mean
    # weight); ours is: the same search on unique rows with counts and on every customer.
    weekly = weekly.iloc[:800]
    rows = compress(weekly, ["frequency", "recency", "T"])
    assert len(rows) < 0.6 * len(weekly)
    start = np.ones(4)
    args = ("paretonbd",)
    on_rows = _lifetimes.fit_purchase(*args, rows["frequency"], rows["recency"], rows["T"], rows["count"], 0.0, start)
    on_all = _lifetimes.fit_purchase(*args, weekly["frequency"], weekly["recency"], weekly["T"],
                                     np.ones(len(weekly)), 0.0, start)
    # The likelihoods agree to 1e-12 (test_clv_fit_bounds); the optimiser's stopping point moves with the
    # summation order, so the parameters agree to 8.6e-8 (measured), not 1e-12.
    assert_params_close(on_rows, on_all, 1e-6)


def test_weights_are_customer_counts(weekly, weekly_fits):
    rows = compress(weekly, ["frequency", "recency", "T"])
    assert rows["count"].sum() == len(weekly) and not rows.duplicated(["frequency", "recency", "T"]).any()
    from_rows = PurchaseModel().fit(rows["frequency"], rows["recency"], rows["T"], weights=rows["count"])
    assert_params_close(from_rows.params_, weekly_fits["bgnbd"].params_, 1e-9)
    assert from_rows.n_customers_ == 2357


def test_compress_sums_weights_and_sorts():
    frame = pd.DataFrame({"f": [2, 1, 2, 1], "m": [5.0, 3.0, 5.0, 4.0]})
    out = compress(frame, ["f", "m"], weights=[1, 2, 3, 4])
    assert out.to_dict("list") == {"f": [1, 1, 2], "m": [3.0, 4.0, 5.0], "count": [2.0, 4.0, 4.0]}
    assert compress(frame, ["f"])["count"].tolist() == [2, 2]


# --- 3. Time scaling: days give the weekly parameters converted


def test_time_scale_auto_brings_T_to_tens():
    assert resolve_time_scale("auto", 38.9) == 1.0
    assert resolve_time_scale("auto", 272.0) == 10.0
    assert resolve_time_scale("auto", 17520.0) == 1000.0
    assert resolve_time_scale("auto", 0.75) == 0.01
    assert resolve_time_scale(7, 100.0) == 7.0
    with pytest.raises(ValueError, match="time_scale"):
        resolve_time_scale("weekly", 10.0)


def weekly_from_daily(params: dict) -> dict:
    """Gamma rate parameters of daily rates -> of weekly rates (lambda_week = 7 lambda_day, so
    alpha_week = alpha_day / 7; likewise beta); shape parameters unchanged."""
    return {k: v / 7.0 if k in ("alpha", "beta") else v for k, v in params.items()}


@pytest.mark.parametrize("model", ["bgnbd", "mbgnbd", "paretonbd"])
def test_daily_fit_converts_to_weekly_fit(weekly_fits, model):
    daily = fit_purchase(cdnow_summary("sample", 1), model)
    assert daily.time_scale_ == 10.0
    assert_params_close(weekly_from_daily(daily.params_), weekly_fits[model].params_, 1e-5)


def test_explicit_time_scale_gives_the_same_optimum():
    daily = cdnow_summary("sample", 1)
    auto, unscaled = fit_purchase(daily, "bgnbd"), fit_purchase(daily, "bgnbd", time_scale=1.0)
    assert unscaled.time_scale_ == 1.0
    assert_params_close(auto.params_, unscaled.params_, 1e-6)


@pytest.mark.parametrize("model", ["bgnbd", "mbgnbd"])
def test_full_cdnow_in_days_converts_to_weeks(model):
    daily = fit_purchase(cdnow_summary("master", 1), model)
    weekly_master = fit_purchase(cdnow_summary("master", 7), model)
    assert daily.n_customers_ == 23570
    assert_params_close(weekly_from_daily(daily.params_), weekly_master.params_, 1e-5)


@pytest.mark.slow
def test_full_cdnow_in_days_converts_to_weeks_paretonbd():
    daily = fit_purchase(cdnow_summary("master", 1), "paretonbd")
    assert_params_close(weekly_from_daily(daily.params_), fit_purchase(cdnow_summary("master", 7), "paretonbd").params_,
                        1e-5)


# --- 4. Parameter recovery from simulated customers


@pytest.fixture
def global_numpy_seed():
    """lifetimes' simulator draws from numpy's global generator: seed it, then restore it."""
    state = np.random.get_state()
    np.random.seed(20240)
    yield
    np.random.set_state(state)


def test_bgnbd_recovers_simulated_parameters(global_numpy_seed):
    # 20,000 customers observed 1-2 years. lifetimes' simulator counts purchases on distinct whole
    # time units, so it simulates in hours (same-hour purchases are negligible) and we fit in hours
    # (time_scale auto = 1000) and convert to days. Tolerance: 10% on r, alpha and the mean
    # dropout probability a/(a+b); 15% on a and b, whose sampling error at this size is ~5%.
    true = {"r": 0.25, "alpha": 30.0, "a": 0.8, "b": 2.5}  # alpha per day
    hours = 24.0
    T = np.random.randint(365, 731, size=20_000) * hours
    customers = beta_geometric_nbd_model(T, true["r"], true["alpha"] * hours, true["a"], true["b"], size=len(T))
    model = PurchaseModel().fit(customers["frequency"], customers["recency"], customers["T"])
    assert model.time_scale_ == 1000.0
    fitted = {k: v / hours if k == "alpha" else v for k, v in model.params_.items()}  # per hour -> per day
    assert_params_close(fitted, {"r": true["r"], "alpha": true["alpha"]}, 0.10)
    assert_params_close(fitted, {"a": true["a"], "b": true["b"]}, 0.15)
    dropout = fitted["a"] / (fitted["a"] + fitted["b"])
    assert dropout == pytest.approx(true["a"] / (true["a"] + true["b"]), rel=0.10)


def simulate_gamma_gamma(frequency: np.ndarray, p: float, q: float, v: float, rng) -> np.ndarray:
    """Mean of `frequency` spends ~ Gamma(p, rate nu) per customer, nu ~ Gamma(q, rate v):
    the mean of x such spends is Gamma(p x, rate nu x)."""
    nu = rng.gamma(q, 1.0 / v, size=len(frequency))
    return rng.gamma(p * frequency, 1.0 / (nu * frequency))


def test_gamma_gamma_recovers_simulated_parameters():
    # 50,000 repeat customers: p and v are strongly correlated estimates (each ~3.5% sampling
    # error), their ratio-driven population mean much less so (2%).
    rng = np.random.default_rng(7)
    frequency = 1.0 + rng.poisson(3.0, size=50_000)
    spend = simulate_gamma_gamma(frequency, 6.25, 3.74, 15.44, rng)
    model = SpendModel().fit(frequency, spend)
    assert_params_close(model.params_, {"p": 6.25, "q": 3.74, "v": 15.44}, 0.10)
    assert model.population_mean_spend_ == pytest.approx(6.25 * 15.44 / 2.74, rel=0.02)


# --- 7 (fit side). Zero and negative spend never crash the spend model


def test_spend_model_leaves_out_zero_and_negative_spend(weekly):
    rep = repeaters(weekly)
    frequency = np.concatenate([rep["frequency"], [3.0, 2.0, 5.0, 0.0, 4.0]])
    spend = np.concatenate([rep["monetary_value"], [0.0, -12.5, -0.01, 0.0, np.nan]])
    model = SpendModel().fit(frequency, spend)
    assert (model.n_fit_, model.n_excluded_) == (946, 5)
    assert_params_close(model.params_, SpendModel().fit(rep["frequency"], rep["monetary_value"]).params_, 1e-9)
    left_out = model.expected_avg_spend(frequency[-5:], spend[-5:])
    np.testing.assert_array_equal(left_out, np.full(5, model.population_mean_spend_))


def test_spend_model_warns_on_frequency_spend_correlation(caplog):
    rng = np.random.default_rng(3)
    frequency = 1.0 + rng.poisson(3.0, size=2000)
    spend = simulate_gamma_gamma(frequency, 6.0, 4.0, 15.0, rng) * frequency  # spend grows with frequency
    with caplog.at_level(logging.WARNING, logger="models.clv"):
        model = SpendModel(correlation_warn=0.3).fit(frequency, spend)
    assert model.frequency_spend_corr_ > 0.3
    assert "corr(frequency, monetary_value)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="models.clv"):
        SpendModel(correlation_warn=0.99).fit(frequency, spend)
    assert "corr(" not in caplog.text


# --- 8. Failures: one line that says what was tried


def failing_minimize(fail_penalizers):
    real = lifetimes.fitters.minimize

    def minimize(*args, **kwargs):
        result = real(*args, **kwargs)
        if kwargs["args"][-1] in fail_penalizers:  # lifetimes passes the penalizer last
            result.success = False
        return result
    return minimize


def test_fit_error_names_every_attempt(weekly, monkeypatch):
    monkeypatch.setattr(lifetimes.fitters, "minimize", failing_minimize({0.0, 0.001}))
    with pytest.raises(FitError) as raised:
        fit_purchase(weekly, "bgnbd")
    message = str(raised.value)
    assert "\n" not in message and isinstance(raised.value, DataError)
    assert "BG/NBD" in message and "2357 customers" in message and "1016 unique" in message
    assert "penalizer 0:" in message and "penalizer 0.001:" in message and "did not converge" in message


def test_failed_fit_is_retried_with_the_retry_penalizer(weekly, monkeypatch, caplog):
    monkeypatch.setattr(lifetimes.fitters, "minimize", failing_minimize({0.0}))
    with caplog.at_level(logging.WARNING, logger="models.clv"):
        model = fit_purchase(weekly, "mbgnbd", retry_penalizer=0.001)
    assert model.penalizer_ == 0.001
    assert "penalizer 0 failed" in caplog.text
    monkeypatch.setattr(lifetimes.fitters, "minimize", failing_minimize({0.0}))
    with pytest.raises(FitError, match="tried penalizer 0: .*did not converge"):
        fit_purchase(weekly, "bgnbd", retry_penalizer=None)


def test_no_repeat_purchases_is_a_fit_error():
    with pytest.raises(FitError, match=r"none of the 100 customers has a repeat purchase \(frequency > 0\)") as raised:
        PurchaseModel().fit(np.zeros(100), np.zeros(100), np.full(100, 30.0))
    assert "\n" not in str(raised.value)
    with pytest.raises(FitError, match="monetary_value > 0"):
        SpendModel().fit([0, 2, 3], [0.0, 0.0, -5.0])


@pytest.mark.parametrize("frequency, recency, T, column", [
    ([1, 2], [5.0, 40.0], [30.0, 30.0], "recency exceeds T"),
    ([0, 2], [3.0, 4.0], [30.0, 30.0], "recency must be 0 when frequency is 0"),
    ([1.5, 2], [3.0, 4.0], [30.0, 30.0], "frequency must hold whole numbers"),
    ([1, 2], [np.nan, 4.0], [30.0, 30.0], "recency has 1 missing"),
    ([1, 2], [1.0, 4.0], [30.0], "one value per customer"),
])
def test_inconsistent_histories_are_data_errors(frequency, recency, T, column):
    with pytest.raises(DataError, match=column):
        PurchaseModel().fit(frequency, recency, T)


# --- estimator conventions


def test_models_pickle_and_clone(weekly, weekly_fits):
    purchase, spend = weekly_fits["paretonbd"], SpendModel(penalizer=0.0).fit(
        weekly["frequency"], weekly["monetary_value"])
    restored = pickle.loads(pickle.dumps(purchase))
    args = (13.0, weekly["frequency"], weekly["recency"], weekly["T"])
    np.testing.assert_array_equal(restored.expected_purchases(*args), purchase.expected_purchases(*args))
    np.testing.assert_array_equal(restored.p_no_purchase(*args), purchase.p_no_purchase(*args))
    restored_spend = pickle.loads(pickle.dumps(spend))
    assert restored_spend.population_mean_spend_ == spend.population_mean_spend_
    assert clone(purchase).get_params() == {"model": "paretonbd", "penalizer": 0.0, "retry_penalizer": 0.001,
                                            "time_scale": "auto", "random_state": 0, "max_iterations": 1000,
                                            "time_budget_s": 300.0}
    assert not hasattr(clone(purchase), "params_")
    assert SpendModel().set_params(correlation_warn=0.5).correlation_warn == 0.5


def test_pareto_nbd_start_follows_random_state(weekly, weekly_fits):
    again = fit_purchase(weekly, "paretonbd")
    assert again.params_ == weekly_fits["paretonbd"].params_  # same seed, same search
    other = PurchaseModel("paretonbd", random_state=1).fit(weekly["frequency"], weekly["recency"], weekly["T"])
    assert other.params_ != again.params_
    assert_params_close(other.params_, again.params_, 1e-5)  # another start, the same optimum


def test_unknown_model_is_rejected(weekly):
    with pytest.raises(ValueError, match="bgnbd, mbgnbd, paretonbd"):
        fit_purchase(weekly, "bgbb")


# --- Gamma-Gamma that cannot be fitted: a named fallback, or a one-line stop when asked

def _heavy_tailed_spend():
    """40 repeat customers with log-normal spend (sigma 2.5): every penalty gives q <= 1."""
    rng = np.random.default_rng(0)
    return rng.integers(1, 4, 40).astype(float), np.exp(rng.normal(3.0, 2.5, 40))


def test_spend_model_falls_back_to_the_population_mean_when_every_fit_fails():
    frequency, spend = _heavy_tailed_spend()
    model = SpendModel(fallback="population_mean").fit(frequency, spend)
    assert model.source_ == "fallback:population_mean"
    assert "q = " in model.fit_failure_ and model.params_ == {} and model.penalizer_ is None
    assert model.population_mean_spend_ == pytest.approx(spend.mean(), rel=1e-12)
    predicted = model.expected_avg_spend(np.array([0.0, 1.0, 3.0]), np.array([np.nan, 5.0, 1e6]))
    np.testing.assert_array_equal(predicted, np.full(3, spend.mean()))
    restored = pickle.loads(pickle.dumps(model))
    assert restored.expected_avg_spend(2.0, 10.0) == pytest.approx(spend.mean(), rel=1e-12)



def test_credibility_constant_of_a_hand_computed_case():
    """Mean 100; deviations^2 of 9 at x = 1 and 5 at x = 2: a + s2 = 9, a + s2 / 2 = 5, so s2 = 8,
    a = 1 and k = 8."""
    frequency = np.array([1.0, 1.0, 2.0, 2.0])
    spend = np.array([97.0, 103.0, 100.0 - 5**0.5, 100.0 + 5**0.5])
    assert credibility_constant(frequency, spend, np.ones(4), 100.0) == pytest.approx(8.0, rel=1e-12)
    # no spread between customers beyond what 1 / x explains: everyone gets the mean
    assert credibility_constant(frequency, np.array([99.0, 101.0, 100.0 - 0.4**0.5, 100.0 + 0.4**0.5]),
                                np.ones(4), 100.0) == math.inf
    # spread that does not shrink with x: the customer's own mean is the estimate (k = 0)
    assert credibility_constant(frequency, np.array([97.0, 103.0, 96.0, 104.0]), np.ones(4), 100.0) == 0.0


def test_spend_model_credibility_fallback_keeps_each_customers_spend_level():
    frequency, spend = _heavy_tailed_spend()
    model = SpendModel().fit(frequency, spend)
    assert model.source_ == "fallback:credibility" and "q = " in model.fit_failure_ and model.params_ == {}
    m0 = spend.mean()
    assert model.population_mean_spend_ == pytest.approx(m0, rel=1e-12)
    k = model.credibility_k_
    assert k == pytest.approx(credibility_constant(frequency, spend, np.ones(len(spend)), m0), rel=1e-12)
    assert 0 <= k < math.inf
    x, m = np.array([0.0, 1.0, 3.0, 3.0]), np.array([np.nan, 5.0, 1e6, 5.0])
    expected = [m0, (5.0 + k * m0) / (1 + k), (3e6 + k * m0) / (3 + k), (15.0 + k * m0) / (3 + k)]
    predicted = model.expected_avg_spend(x, m)
    np.testing.assert_allclose(predicted, expected, rtol=1e-12)
    assert predicted[2] > predicted[3], "a customer who spends more keeps a higher expected spend"
    restored = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(restored.expected_avg_spend(x, m), predicted)
