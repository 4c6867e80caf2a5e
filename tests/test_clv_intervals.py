"""P10/P50/P90 of the horizon value (models/clv_intervals.py) and the quadrant probability built on
them (models/segments.py): hand-checked values, invariants, determinism, and coverage where the
model is right (a base simulated from known BG/NBD and Gamma-Gamma parameters)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

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


def test_p10_p90_covers_80_percent_of_a_base_simulated_from_the_model():
    """5,000 customers from known BG/NBD + Gamma-Gamma; models fitted on them, intervals, holdout."""
    features, period_spend = simulate_world(5000, seed=11)
    purchase = PurchaseModel("bgnbd").fit(features["frequency"], features["recency"], features["T"])
    spend = SpendModel().fit(features["frequency"], features["monetary_value"])
    rfm, spend_rows = compress(features, HISTORY), compress(features, ["frequency", "monetary_value"])
    draws = ci.bootstrap_parameters(purchase, spend, rfm, spend_rows, 10, seed=2)
    q, p_zero, inside = quantiles(draws, *(features[c] for c in ("frequency", "recency", "T", "monetary_value")))
    realised = ci.realised_value(period_spend, 0.3, 0.1, 30)
    summary, _ = ci.coverage(features["frequency"], q[:, 0], q[:, 1], q[:, 2], realised, p_zero, inside)
    assert summary["coverage_pit"] == pytest.approx(0.80, abs=0.03)
    assert summary["coverage"] == pytest.approx(summary["expected_coverage"], abs=0.03)
    assert TRUE_BGNBD["r"] == pytest.approx(purchase.params_["r"], rel=0.25)  # the fit found the truth


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mbgnbd", "paretonbd"])
def test_coverage_holds_with_every_purchase_model_on_a_larger_base(model):
    features, period_spend = simulate_world(20000, seed=5)
    purchase = PurchaseModel(model, random_state=0).fit(features["frequency"], features["recency"], features["T"])
    spend = SpendModel().fit(features["frequency"], features["monetary_value"])
    rfm, spend_rows = compress(features, HISTORY), compress(features, ["frequency", "monetary_value"])
    draws = ci.bootstrap_parameters(purchase, spend, rfm, spend_rows, 20, seed=2)
    q, p_zero, inside = quantiles(draws, *(features[c] for c in ("frequency", "recency", "T", "monetary_value")))
    realised = ci.realised_value(period_spend, 0.3, 0.1, 30)
    summary, _ = ci.coverage(features["frequency"], q[:, 0], q[:, 1], q[:, 2], realised, p_zero, inside)
    assert summary["coverage_pit"] == pytest.approx(0.80, abs=0.05)


# --------------------------------------------------------------------------- quadrant probability


def test_cdf_from_quantiles_by_hand():
    p10, p50, p90 = np.array([0.0]), np.array([10.0]), np.array([20.0])
    got = [float(seg.cdf_from_quantiles(c, p10, p50, p90)[0]) for c in (-1.0, 0.0, 5.0, 10.0, 20.0, 21.25, 30.0)]
    # P10 = 0 is a point mass of 0.1 at 0 (no negative CLV); linear between the knots; the upper tail
    # reaches 1 at 20 + (20 - 10) / 4 = 22.5.
    assert got == pytest.approx([0.0, 0.1, 0.3, 0.5, 0.9, 0.95, 1.0])
    # All three equal: a point mass.
    assert seg.cdf_from_quantiles(np.array([0.9, 1.0]), *(np.ones(2),) * 3).tolist() == [0.0, 1.0]
    # Without the lower bound, the lower tail runs down to P10 - (P50 - P10) / 4.
    p10, p50, p90 = np.array([8.0]), np.array([24.0]), np.array([30.0])
    assert float(seg.cdf_from_quantiles(4.0, p10, p50, p90, None)[0]) == pytest.approx(0.0)
    assert float(seg.cdf_from_quantiles(6.0, p10, p50, p90, None)[0]) == pytest.approx(0.05)


def test_quadrant_probability_is_the_share_on_the_point_side_of_the_cut():
    growth = pd.Series([12.0, 3.0, 20.0, 0.0])
    clv = pd.Series([12.0, 3.0, 10.0, 0.0])  # the third: growth = 2 x clv (combined rule), so its quantiles double
    p10, p50, p90 = pd.Series([0.0] * 4), pd.Series([10.0, 2.0, 2.5, 0.0]), pd.Series([20.0, 8.0, 10.0, 0.0])
    got = seg.quadrant_probability(growth, clv, p10, p50, p90, cut=5.0)
    # 1: high, P(X > 5) = 1 - 0.3; 2: low, P(X <= 5) = 0.5 + 0.4 * 3 / 6 = 0.7; 3: quantiles 0, 5, 20, high,
    # P(X > 5) = 0.5; 4: a certain zero, low.
    np.testing.assert_allclose(got, [0.7, 0.7, 0.5, 1.0])
    labelled = pd.DataFrame({"growth_potential": growth})
    frame = pd.DataFrame({"clv": clv, "clv_p10": p10, "clv_p50": p50, "clv_p90": p90})
    flagged = seg.with_quadrant_probability(labelled, frame, 5.0, 0.6)
    assert flagged["quadrant_uncertain"].tolist() == [0, 0, 1, 0]
