"""P10/P50/P90 of the horizon value (models/clv_intervals.py) and the quadrant probability built on
them (models/segments.py): hand-checked values, invariants, determinism, and coverage where the
model is right (a base simulated from known BG/NBD and Gamma-Gamma parameters)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models import btyd
from models import clv_intervals as ci
from models import segments as seg
from models.clv import PurchaseModel, SpendModel, compress
from tests.clv_interval_world import TRUE_BGNBD, TRUE_GAMMA_GAMMA, simulate_world

HISTORY = ["frequency", "recency", "T"]
SETTINGS = ci.IntervalSettings(days_per_unit=7.0, horizon_days=91, margin=0.3, discount_rate=0.1,
                               discount_period_days=30, process_draws=200, seed=42)  # fmt: skip
PARAMS = {
    "bgnbd": {"r": 0.27, "alpha": 6.0, "a": 0.48, "b": 2.1},
    "mbgnbd": {"r": 0.69, "alpha": 9.9, "a": 0.49, "b": 0.86},
    "paretonbd": {"r": 0.55, "alpha": 10.6, "s": 0.61, "beta": 11.7},
}


def draws_of(model: str, n: int = 3, seed: int = 0, spend: dict | None = None) -> ci.ParameterDraws:
    """``n`` parameter sets spread around the model's parameters (the first exact)."""
    rng = np.random.default_rng(seed)
    point = np.array(list(PARAMS[model].values()))
    purchase = np.vstack([point, point * rng.uniform(0.9, 1.1, (n - 1, 4))])
    gg = np.array(list((spend or TRUE_GAMMA_GAMMA).values()))
    return ci.ParameterDraws(model, purchase, np.vstack([gg] * n), 36.0)


def quantiles(draws, frequency, recency, T, monetary, settings=SETTINGS):
    return ci.clv_quantiles(draws, frequency, recency, T, monetary, settings)


# --------------------------------------------------------------------------- invariants


@pytest.mark.parametrize("model", list(PARAMS))
def test_quantiles_are_finite_ordered_and_non_negative_over_a_grid_of_histories(model):
    x, r, T = np.meshgrid([0, 1, 3, 20, 150, 400], [0.0, 0.5, 1.0], [0.5, 10.0, 78.0], indexing="ij")
    x, T = x.ravel().astype(float), T.ravel()
    recency = np.where(x > 0, r.ravel() * T, 0.0)  # includes recency = T
    monetary = np.where(x > 0, 40.0, 0.0)
    q, p_zero, inside = quantiles(draws_of(model), x, recency, T, monetary, SETTINGS)
    assert q.shape == (len(x), 3) and np.isfinite(q).all() and (q >= 0).all()
    assert (np.diff(q, axis=1) >= 0).all()
    assert ((p_zero >= 0) & (p_zero <= 1)).all() and ((inside >= 0.8 - 1e-12) & (inside <= 1)).all()
    # A frequent, recent buyer is worth more than the same age with no repeat purchase.
    heavy = (x == 400) & (recency == T) & (T == 78.0)
    none = (x == 0) & (T == 78.0)
    assert q[heavy, 1] > 100 * max(q[none, 2].max(), 1e-9) or q[none, 2].max() == 0


def test_a_customer_with_a_huge_history_has_a_narrow_interval_and_a_median_near_the_clv():
    """frequency 300 over 100 weeks, bought just now: about 3 purchases a week, ~39 over 13 weeks, so
    the Poisson spread alone is about 1/sqrt(39) = 16%; a two-purchase customer's interval is wide."""
    draws = draws_of("bgnbd", n=1)
    q, _, _ = quantiles(draws, [300, 2], [100.0, 60.0], [100.0, 100.0], [50.0, 50.0])
    heavy, light = q
    assert (heavy[2] - heavy[0]) / heavy[1] < 0.6
    assert light[0] == 0.0 and (light[2] - light[0]) > 3 * max(light[1], 1e-9)
    purchase = PurchaseModel.from_params("bgnbd", PARAMS["bgnbd"])
    spend = SpendModel.from_params(TRUE_GAMMA_GAMMA)
    features = pd.DataFrame({"customer_id": ["h"], "cutoff": pd.Timestamp("2020-01-01"), "frequency": [300],
                             "recency": [100.0], "T": [100.0], "monetary_value": [50.0]})  # fmt: skip
    from models.clv import ClvSettings

    clv = ClvSettings(7.0, 91, 0.3, 0.1, 30).predict(purchase, spend, features)["clv"].iloc[0]
    assert heavy[1] == pytest.approx(clv, rel=0.15)


def test_a_spend_fallback_values_each_purchase_at_the_customers_own_point_spend():
    """Without Gamma-Gamma draws (the credibility fallback of a heavy-tailed base) a heavy buyer who
    spends 5,000 per purchase day keeps that level: its median is near its CLV, not the mean's."""
    gg = draws_of("bgnbd", n=1)
    fallback = ci.ParameterDraws("bgnbd", gg.purchase, None, 36.0)
    history = ([300, 300], [100.0, 100.0], [100.0, 100.0], [5000.0, 50.0])
    q, _, _ = ci.clv_quantiles(fallback, *history, SETTINGS, point_spend=np.array([5000.0, 50.0]))
    np.testing.assert_allclose(q[0], 100.0 * q[1], rtol=1e-12)  # same draws, 100 times the spend
    purchase = PurchaseModel.from_params("bgnbd", PARAMS["bgnbd"])
    features = pd.DataFrame({"customer_id": ["h"], "cutoff": pd.Timestamp("2020-01-01"), "frequency": [300],
                             "recency": [100.0], "T": [100.0], "monetary_value": [5000.0]})  # fmt: skip
    from models.clv import ClvSettings

    spend = SpendModel(fallback="credibility")  # own mean spend for a repeat buyer when k = 0
    spend.params_, spend.population_mean_spend_, spend.credibility_k_, spend.source_ = {}, 36.0, 0.0, "fallback:credibility"
    clv = ClvSettings(7.0, 91, 0.3, 0.1, 30).predict(purchase, spend, features)["clv"].iloc[0]
    assert q[0][1] == pytest.approx(clv, rel=0.15)
    without, _, _ = ci.clv_quantiles(fallback, *history, SETTINGS)  # no point spend given: the population mean
    np.testing.assert_allclose(without[0], without[1], rtol=1e-12)
    assert without[0][1] == pytest.approx(q[0][1] * 36.0 / 5000.0, rel=1e-12)


def test_same_seed_same_quantiles_and_a_customer_alone_gets_its_batch_quantiles():
    draws = draws_of("mbgnbd", n=4)
    x = np.array([0, 2, 5, 2, 11])
    recency, T = np.array([0, 8.0, 30.0, 8.0, 50.0]), np.array([20.0, 40.0, 60.0, 40.0, 52.0])
    m = np.array([0, 20.0, 35.0, 90.0, 12.0])
    batch = quantiles(draws, x, recency, T, m)
    assert all(np.array_equal(a, b) for a, b in zip(batch, quantiles(draws, x, recency, T, m)))
    for i in range(len(x)):
        alone = quantiles(draws, x[[i]], recency[[i]], T[[i]], m[[i]])
        assert np.array_equal(alone[0][0], batch[0][i])
    other = quantiles(draws, x, recency, T, m, ci.IntervalSettings(**{**SETTINGS.__dict__, "seed": 7}))
    assert not np.array_equal(other[0], batch[0])
    # Customers 1 and 3 share a history and differ in spend: the same draws, scaled by v + x m.
    assert batch[0][3, 2] > batch[0][1, 2]


def test_the_draws_survive_the_served_artifact_round_trip():
    import json

    draws = draws_of("paretonbd", n=3)
    text = ci.served_artifact(draws, ci.IntervalConfig(3, 150, 9))
    back, settings = ci.from_served_artifact(json.loads(text), _clv_settings())
    assert np.array_equal(back.purchase, draws.purchase) and np.array_equal(back.spend, draws.spend)
    assert (settings.process_draws, settings.seed, settings.margin) == (150, 9, 0.3)


def _clv_settings():
    from models.clv import ClvSettings

    return ClvSettings(7.0, 91, 0.3, 0.1, 30)


# --------------------------------------------------------------------------- bootstrap


def test_a_refit_on_the_original_counts_returns_the_point_estimate_and_the_draws_vary():
    features, _ = simulate_world(3000, seed=3)
    purchase = PurchaseModel("bgnbd").fit(features["frequency"], features["recency"], features["T"])
    spend = SpendModel().fit(features["frequency"], features["monetary_value"])
    rfm, spend_rows = compress(features, HISTORY), compress(features, ["frequency", "monetary_value"])
    again = ci._refit_purchase(purchase, rfm, rfm["count"].to_numpy(), 1000)
    np.testing.assert_allclose(again, list(purchase.params_.values()), rtol=1e-3)
    draws = ci.bootstrap_parameters(purchase, spend, rfm, spend_rows, 6, seed=1)
    assert draws.n_draws == 6 and draws.n_failed == 0
    np.testing.assert_array_equal(draws.purchase[0], list(purchase.params_.values()))
    spread = draws.purchase[1:].std(axis=0) / draws.purchase[1:].mean(axis=0)
    assert ((spread > 0.002) & (spread < 0.5)).all()  # a real, sampling-sized spread
    same = ci.bootstrap_parameters(purchase, spend, rfm, spend_rows, 6, seed=1)
    np.testing.assert_array_equal(same.purchase, draws.purchase)


def test_the_m_out_of_n_bootstrap_rescales_a_smaller_resample_to_the_full_spread():
    assert ci._shrink(np.array([2.0, 3.0]), np.array([8.0, 3.0]), 0.5) == pytest.approx([4.0, 3.0])  # log midpoint
    features, _ = simulate_world(4000, seed=4)
    purchase = PurchaseModel("bgnbd").fit(features["frequency"], features["recency"], features["T"])
    spend = SpendModel().fit(features["frequency"], features["monetary_value"])
    rfm, spend_rows = compress(features, HISTORY), compress(features, ["frequency", "monetary_value"])
    full = ci.bootstrap_parameters(purchase, spend, rfm, spend_rows, 12, seed=1)
    # m >= n is the ordinary bootstrap, draw for draw.
    np.testing.assert_array_equal(ci.bootstrap_parameters(purchase, spend, rfm, spend_rows, 12, seed=1,
                                                          sample=10_000).purchase, full.purchase)  # fmt: skip
    small = ci.bootstrap_parameters(purchase, spend, rfm, spend_rows, 12, seed=1, sample=1000)
    np.testing.assert_array_equal(small.purchase[0], full.purchase[0])
    spread = [np.log(d.purchase[1:]).std(axis=0).mean() for d in (full, small)]
    # Rescaled by sqrt(1000 / 4000), the quarter-size resamples spread as the full ones (11 draws each: loose).
    assert 0.5 < spread[1] / spread[0] < 2.0


@pytest.mark.parametrize("model", list(PARAMS))
def test_the_simulated_value_averages_to_the_closed_form_expected_clv(model):
    """One parameter set, 40,000 draws of one key (3 repeat purchases) read at three ages: each
    history's mean simulated value (kept where alive) is the clv column's closed form (discounted
    expected purchases x posterior mean spend x margin) within 4 standard errors."""
    d, x, m = 40_000, 3.0, 30.0
    draws = draws_of(model, n=1)
    T = np.array([5.0, 20.0, 60.0])
    recency = 0.8 * T
    ends = ci._period_ends_days(SETTINGS.horizon_days, SETTINGS.discount_period_days) / SETTINGS.days_per_unit
    factors = ci.period_discount_factors(len(ends), ci.period_discount_rate(SETTINGS.discount_rate, SETTINGS.discount_period_days))
    params, spend = np.repeat(draws.purchase, d, axis=0), np.repeat(draws.spend, d, axis=0)
    ratio, u = ci._Process(model, params, spend, ends, factors).draw(np.random.default_rng(1), x, T, x)
    p_alive = btyd.p_alive(model, draws.purchase_params(0), np.full(3, x), recency, T)
    values = SETTINGS.margin * (spend[None, :, 2] + x * m) * ratio * (u[None, :] < p_alive[:, None])
    expected = ci.expected_clv_draws(draws, np.full(3, x), recency, T, np.full(3, m), np.full(3, m), SETTINGS)[:, 0]
    standard_error = values.std(axis=1) / np.sqrt(d)
    assert (np.abs(values.mean(axis=1) - expected) < 4 * standard_error).all(), (values.mean(axis=1), expected)
    assert (expected[0] > expected[2]) and (standard_error < 0.05 * expected).all()


def test_histories_of_one_frequency_t_group_share_the_process_and_differ_by_p_alive():
    """Same frequency and T, recency 2 vs 40 (= T): the group's draws are kept where its alive uniform
    is below each history's P(alive), so the more recent buyer's draws dominate the other's, quantile
    by quantile; a customer alone still gets its batch values."""
    draws = draws_of("bgnbd", n=4)
    x, recency, T, m = np.array([3, 3]), np.array([2.0, 40.0]), np.array([40.0, 40.0]), np.array([30.0, 30.0])
    q, zero, _ = quantiles(draws, x, recency, T, m)
    assert (q[1] >= q[0]).all() and zero[1] < zero[0] and q[1, 2] > q[0, 2]
    assert np.array_equal(quantiles(draws, x[:1], recency[:1], T[:1], m[:1])[0][0], q[0])


# --------------------------------------------------------------------------- coverage


def test_coverage_counts_a_realised_zero_inside_when_p10_is_zero_and_the_pit_version_splits_the_atom():
    summary, table = ci.coverage(frequency=[0, 3, 3, 12], low=[0.0, 1.0, 0.0, 0.0], mid=[0.0, 4.0, 2.0, 1.0],
                                 high=[3.0, 10.0, 10.0, 2.0], realised=[0.0, 5.0, 12.0, -1.0],
                                 p_zero=[0.5, 0.0, 0.3, 0.0], expected_inside=[0.9, 0.8, 0.8, 0.8])  # fmt: skip
    assert summary["coverage"] == 0.5  # the zero (inside [0, 3]) and 5 in [1, 10]
    # The atom at 0 of mass 0.5 lies between the levels 0.1 and 0.9 for (0.5 - 0.1) / 0.5 of it.
    assert summary["coverage_pit"] == pytest.approx((0.8 + 1.0) / 4)
    assert (summary["share_below"], summary["share_above"], summary["share_p10_zero"]) == (0.25, 0.25, 0.75)
    assert summary["mean_width"] == pytest.approx((3 + 9 + 10 + 2) / 4)
    assert table["frequency_bin"].tolist() == ["0", "3-4", "10_or_more"]
    assert table["customers"].tolist() == [1, 2, 1]


def test_realised_value_is_discounted_per_period_as_the_clv_is():
    got = ci.realised_value(np.array([[100.0, 0, 0, 0], [0, 0, 0, 100.0]]), 0.3, 0.1, 30)
    rate = 1.1 ** (30 / 365) - 1
    np.testing.assert_allclose(got, [30 / (1 + rate), 30 / (1 + rate) ** 4])


def holdout_coverage(purchase: PurchaseModel, customers: int, world_seed: int, n_draws: int):
    """(coverage summary, fitted purchase model): a base simulated from known BG/NBD + Gamma-Gamma
    parameters, the models fitted on it, their intervals against the simulated holdout."""
    features, period_spend = simulate_world(customers, seed=world_seed)
    purchase.fit(features["frequency"], features["recency"], features["T"])
    spend = SpendModel().fit(features["frequency"], features["monetary_value"])
    rfm, spend_rows = compress(features, HISTORY), compress(features, ["frequency", "monetary_value"])
    draws = ci.bootstrap_parameters(purchase, spend, rfm, spend_rows, n_draws, seed=2)
    q, p_zero, inside = quantiles(draws, *(features[c] for c in ("frequency", "recency", "T", "monetary_value")))
    realised = ci.realised_value(period_spend, 0.3, 0.1, 30)
    summary, _ = ci.coverage(features["frequency"], q[:, 0], q[:, 1], q[:, 2], realised, p_zero, inside)
    return summary, purchase


def test_p10_p90_covers_80_percent_of_a_base_simulated_from_the_model():
    """5,000 customers from known BG/NBD + Gamma-Gamma; models fitted on them, intervals, holdout."""
    summary, purchase = holdout_coverage(PurchaseModel("bgnbd"), 5000, world_seed=11, n_draws=10)
    assert summary["coverage_pit"] == pytest.approx(0.80, abs=0.03)
    assert summary["coverage"] == pytest.approx(summary["expected_coverage"], abs=0.03)
    assert TRUE_BGNBD["r"] == pytest.approx(purchase.params_["r"], rel=0.25)  # the fit found the truth


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mbgnbd", "paretonbd"])
def test_coverage_holds_with_every_purchase_model_on_a_larger_base(model):
    summary, _ = holdout_coverage(PurchaseModel(model, random_state=0), 20000, world_seed=5, n_draws=20)
    assert summary["coverage_pit"] == pytest.approx(0.80, abs=0.05)


# --------------------------------------------------------------------------- quadrant probability


def test_expected_draws_are_the_clv_closed_form_under_each_parameter_set_and_batch_invariant():
    """Column b is what models/clv.py predicts with draw b's parameters; column 0 is the point clv."""
    from models.clv import ClvSettings

    draws = draws_of("bgnbd", n=4, spend={"p": 6.0, "q": 3.9, "v": 15.0})
    draws = ci.ParameterDraws(draws.model, draws.purchase, draws.spend * np.array([1.0, 1.05, 0.97])[None, :], 36.0)
    features = pd.DataFrame({"customer_id": list("abcd"), "cutoff": pd.Timestamp("2020-01-01"),
                             "frequency": [0, 2, 5, 2], "recency": [0.0, 8.0, 30.0, 8.0], "T": [20.0, 40.0, 60.0, 40.0],
                             "monetary_value": [0.0, 20.0, 35.0, 90.0]})  # fmt: skip
    args = [features[c] for c in (*HISTORY, "monetary_value")]
    got = ci.expected_clv_draws(draws, *args, np.zeros(4), SETTINGS)
    assert got.shape == (4, 4)
    for b in range(4):
        purchase = PurchaseModel.from_params("bgnbd", draws.purchase_params(b))
        spend = SpendModel.from_params(dict(zip("pqv", draws.spend[b])))
        want = ClvSettings(7.0, 91, 0.3, 0.1, 30).predict(purchase, spend, features)["clv"].to_numpy()
        np.testing.assert_allclose(got[:, b], want, rtol=1e-12)
    q = ci.expected_quantiles(draws, *args, np.zeros(4), SETTINGS)
    np.testing.assert_allclose(q, np.quantile(got, [0.1, 0.9], axis=1).T)
    for i in range(4):  # a customer alone gets its batch values
        alone = ci.expected_quantiles(draws, *(a.iloc[[i]] for a in args), np.zeros(1), SETTINGS)
        assert np.array_equal(alone[0], q[i])
    # Without Gamma-Gamma draws every draw uses the point spend given.
    fallback = ci.ParameterDraws("bgnbd", draws.purchase, None, 36.0)
    flat = ci.expected_clv_draws(fallback, *args, np.full(4, 10.0), SETTINGS)
    purchase = PurchaseModel.from_params("bgnbd", draws.purchase_params(2))
    assert flat[1, 2] == pytest.approx(0.3 * 10.0 * purchase_discounted(purchase, 2.0, 8.0, 40.0))


def purchase_discounted(model, x, r, T):
    from models.clv import discounted_expected_purchases, period_discount_rate

    rate = period_discount_rate(0.1, 30)
    return float(discounted_expected_purchases(model, np.array([x]), np.array([r]), np.array([T]), 91, 7.0, rate, 30)[0])


def test_log_spread_by_hand():
    # P10 = 1, P90 = e^(2 Z_90): spread 1; equal quantiles: 0; a P10 at 0 below a positive P90: inf.
    got = seg.log_spread(np.array([1.0, 5.0, 0.0, 0.0]), np.array([np.exp(2 * seg.Z_90), 5.0, 3.0, 0.0]))
    assert got.tolist() == [pytest.approx(1.0), 0.0, np.inf, 0.0]


def test_quadrant_probability_by_hand():
    """Log-normal on log scale centred on the point value with the draws' log spread."""
    cut = 10.0
    e = np.exp(2 * seg.Z_90)  # P90 / P10 of a log spread of 1
    growth = pd.Series([20.0, 5.0, 10.0 * np.exp(seg.Z_90), 10.0, 10.0 + 1e-12, 400.0, 0.0, 30.0])
    p10 = pd.Series([15.0, 2.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0])
    p90 = pd.Series([15.0, 2.0, e, e, e, e, 0.0, 50.0])
    got = seg.quadrant_probability(growth, p10, p90, cut).to_numpy()
    # 1, 2: every draw the same (no spread): certain, above or below; 3: the cut is Z_90 log spreads below the
    # point, i.e. at the draws' P10: 0.9; 4, 5: at the cut: 0.5 (low side, and just above); 6: log(40) = 3.7
    # spreads above the cut: certain to 1e-4; 7: a point value 0 (no purchase expected): certain;
    # 8: a draw at 0 (infinite log spread): 0.5.
    np.testing.assert_allclose(got, [1.0, 1.0, 0.9, 0.5, 0.5, 0.99989, 1.0, 0.5], atol=1e-5)
    labelled = pd.DataFrame({"growth_potential": growth})
    frame = pd.DataFrame({"clv_expected_p10": p10, "clv_expected_p90": p90})
    flagged = seg.with_quadrant_probability(labelled, frame, cut, 0.8)
    assert flagged["quadrant_uncertain"].tolist() == [0, 0, 0, 1, 1, 0, 0, 1]
    # All draws on one side of the cut: the share is 1 and the probability is above 0.9 (the P10 is above
    # the cut); a customer whose P10 and P90 straddle the cut symmetrically: 0.5.
    draws = np.array([[12.0, 14.0, 16.0, 18.0, 20.0], [5.0, 7.0, 10.0, 14.0, 20.0]])
    q = np.quantile(draws, [0.1, 0.9], axis=1).T
    prob = seg.quadrant_probability(pd.Series([16.0, 10.0]), pd.Series(q[:, 0]), pd.Series(q[:, 1]), cut)
    assert prob[0] > 0.9 and prob[1] == pytest.approx(0.5)
