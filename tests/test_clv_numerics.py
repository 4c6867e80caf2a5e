"""Numerical safety of the CLV model outputs (models/btyd.py): every model's P(alive), conditional
expected purchases and P(no purchase) are finite and in range over a grid of edge-case customers
and parameters, agree with lifetimes where lifetimes is finite, and agree with high-precision
values computed with mpmath (50 digits, from forms independent of ours)."""

from __future__ import annotations

import itertools
import warnings

import mpmath as mp
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models import btyd
from models.clv import PurchaseModel

with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    from lifetimes import BetaGeoFitter, ModifiedBetaGeoFitter, ParetoNBDFitter

PARAMS = {
    "bgnbd": [
        {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426},  # FHL 2005, CDNOW sample (weeks)
        {"r": 0.267, "alpha": 5.99, "a": 0.484, "b": 2.11},  # CDNOW full data at as_of
        {"r": 5.0, "alpha": 0.01, "a": 3.0, "b": 0.05},  # fast buyers, a > 1, tiny b
        {"r": 0.01, "alpha": 900.0, "a": 1.0, "b": 50.0},  # a = 1: removable singularity
        {"r": 1e-4, "alpha": 1e4, "a": 1e-3, "b": 1e3},
    ],
    "mbgnbd": [
        {"r": 0.525, "alpha": 6.183, "a": 0.891, "b": 1.614},  # CDNOW sample (weeks)
        {"r": 0.689, "alpha": 9.889, "a": 0.492, "b": 0.859},  # CDNOW full data at as_of
        {"r": 5.0, "alpha": 0.01, "a": 3.0, "b": 0.05},
        {"r": 0.01, "alpha": 900.0, "a": 1.0, "b": 50.0},
    ],
    "paretonbd": [
        {"r": 0.553, "alpha": 10.58, "s": 0.606, "beta": 11.67},  # FHL 2005, CDNOW sample (weeks)
        {"r": 1.137, "alpha": 8.045, "s": 0.9889, "beta": 59.62},  # the 10M-row simulation (issue 11)
        {"r": 1.0, "alpha": 0.001, "s": 1.0, "beta": 1e5},  # alpha << beta, s = 1
        {"r": 0.05, "alpha": 1e5, "s": 50.0, "beta": 0.01},  # alpha >> beta
        {"r": 20.0, "alpha": 3.0, "s": 1e-3, "beta": 3.0},  # alpha = beta
    ],
}
FREQUENCIES = [0, 1, 2, 30, 164, 1000, 5000]
AGES = [1e-3, 0.5, 102.57, 1e4]
RECENCY_SHARES = [0.0, 0.5, 1 - 1e-9, 1.0]  # recency = share * T (0 when frequency is 0)
HORIZONS = [1e-6, 13.0, 1e4]


def grid() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cases = itertools.product(FREQUENCIES, AGES, RECENCY_SHARES)
    rows = [(x, 0.0 if x == 0 else share * T, T) for x, T, share in cases]
    return tuple(np.array(column, dtype=float) for column in zip(*rows))


def model_cases():
    return [(name, i) for name, sets in PARAMS.items() for i in range(len(sets))]


def assert_outputs_in_range(model: PurchaseModel, x, t_x, T, t: float) -> None:
    alive = model.p_alive(x, t_x, T)
    expected = model.expected_purchases(t, x, t_x, T)
    p_zero = model.p_no_purchase(t, x, t_x, T)
    assert np.isfinite(alive).all() and ((alive >= 0) & (alive <= 1)).all()
    assert np.isfinite(expected).all() and (expected >= 0).all()
    assert np.isfinite(p_zero).all() and ((p_zero >= 0) & (p_zero <= 1)).all()
    assert (p_zero >= 1 - alive - 1e-9).all()  # a dropped-out customer never buys
    assert (expected >= (1 - p_zero) * (1 - 1e-9) - 1e-12).all()  # E[X] >= P(X >= 1)


# --- 1. The grid: 7 frequencies x 4 ages x 4 recencies x 3 horizons, for 14 parameter sets


@pytest.mark.parametrize("name, index", model_cases())
def test_every_output_is_finite_and_in_range_on_the_grid(name, index):
    model = PurchaseModel.from_params(name, PARAMS[name][index])
    x, t_x, T = grid()
    for t in HORIZONS:
        assert_outputs_in_range(model, x, t_x, T, t)
    longer = model.expected_purchases(HORIZONS[-1], x, t_x, T)
    assert (longer >= model.expected_purchases(HORIZONS[1], x, t_x, T) * (1 - 1e-9)).all()


def test_a_purchase_at_T_means_alive_for_pareto_nbd_and_bgnbd():
    # recency = T: the customer bought at the end of the window; Pareto/NBD P(alive) = 1 exactly,
    # BG/NBD P(alive) = 1 / (1 + a / (b + x - 1)) (drop out right after that purchase or not).
    x, T = np.array([1.0, 164.0, 5000.0]), np.array([102.57, 102.57, 102.57])
    pareto = PurchaseModel.from_params("paretonbd", PARAMS["paretonbd"][1])
    np.testing.assert_array_equal(pareto.p_alive(x, T, T), 1.0)
    p = PARAMS["bgnbd"][0]
    np.testing.assert_allclose(PurchaseModel.from_params("bgnbd", p).p_alive(x, T, T),
                               1 / (1 + p["a"] / (p["b"] + x - 1)), rtol=1e-14)


def test_the_issue_11_customer_gets_finite_outputs():
    # frequency 164, recency = T = 102.57 weeks under the Pareto/NBD fitted on the 10M-row
    # simulation: lifetimes gave P(alive) = NaN ('invalid value encountered in logaddexp').
    model = PurchaseModel.from_params("paretonbd", PARAMS["paretonbd"][1])
    assert model.p_alive(164, 102.57, 102.57) == 1.0
    expected = model.expected_purchases(13.0, 164, 102.57, 102.57)
    # alive for sure: E = (r+x)(beta+T)/((alpha+T)(s-1)) [1 - ((beta+T)/(beta+T+t))^(s-1)]
    r, alpha, s, beta = (PARAMS["paretonbd"][1][k] for k in ("r", "alpha", "s", "beta"))
    by_hand = (r + 164) * (beta + 102.57) / ((alpha + 102.57) * (s - 1)) * (
        1 - ((beta + 102.57) / (beta + 102.57 + 13.0)) ** (s - 1))
    assert expected == pytest.approx(by_hand, rel=1e-12)
    # Alive with ~18.7 purchases expected in 13 weeks: no purchase only by dropping out first,
    # about E[mu / (lambda + mu)] = (s / (beta+T)) / ((r+x) / (alpha+T)) = 0.0041.
    assert model.p_no_purchase(13.0, 164, 102.57, 102.57) == pytest.approx(0.0041, abs=0.0002)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(
    name=st.sampled_from(sorted(PARAMS)),
    shapes=st.tuples(*[st.floats(-4, 2) for _ in range(2)]),  # log10 of r and a (or s)
    rates=st.tuples(*[st.floats(-3, 4) for _ in range(2)]),  # log10 of alpha and b (or beta)
    x=st.integers(0, 3000),
    T=st.floats(1e-3, 1e4),
    share=st.floats(0, 1),
    t=st.floats(1e-6, 1e4),
)
def test_outputs_are_in_range_for_random_parameters_and_histories(name, shapes, rates, x, T, share, t):
    keys = ("r", "alpha", "s", "beta") if name == "paretonbd" else ("r", "alpha", "a", "b")
    values = (10 ** shapes[0], 10 ** rates[0], 10 ** shapes[1], 10 ** rates[1])
    model = PurchaseModel.from_params(name, dict(zip(keys, values)))
    assert_outputs_in_range(model, np.array([x]), np.array([share * T if x else 0.0]), np.array([T]), t)


# --- 2. Where lifetimes' formulas are finite, ours give the same numbers


LIFETIMES = {"bgnbd": BetaGeoFitter, "mbgnbd": ModifiedBetaGeoFitter, "paretonbd": ParetoNBDFitter}
# Parameter sets where lifetimes gives NaN on most of the grid: a = 1 (its formula divides by
# a - 1) and Pareto/NBD with alpha/beta or beta/alpha beyond 1e7 (scipy's 2F1 returns NaN).
LIFETIMES_UNUSABLE = [("bgnbd", 3), ("mbgnbd", 3), ("paretonbd", 2), ("paretonbd", 3)]


def lifetimes_outputs(name: str, params: dict, x, t_x, T) -> tuple[np.ndarray, np.ndarray]:
    reference = LIFETIMES[name]()
    reference.params_ = pd.Series(params)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        alive = np.asarray(reference.conditional_probability_alive(x, t_x, T), dtype=float)
        expected = reference.conditional_expected_number_of_purchases_up_to_time(13.0, x, t_x, T)
        expected = np.asarray(expected, dtype=float)
    return alive, expected


@pytest.mark.parametrize("name, index", LIFETIMES_UNUSABLE)
def test_lifetimes_has_no_finite_output_where_ours_are_in_range(name, index):
    x, t_x, T = grid()
    alive, expected = lifetimes_outputs(name, PARAMS[name][index], x, t_x, T)
    assert (~(np.isfinite(alive) & np.isfinite(expected)))[x > 0].mean() > 0.7
    assert_outputs_in_range(PurchaseModel.from_params(name, PARAMS[name][index]), x, t_x, T, 13.0)


@pytest.mark.parametrize("name, index", [case for case in model_cases() if case not in LIFETIMES_UNUSABLE])
def test_outputs_equal_lifetimes_where_lifetimes_is_finite(name, index):
    params = PARAMS[name][index]
    ours = PurchaseModel.from_params(name, params)
    x, t_x, T = grid()
    alive, expected = lifetimes_outputs(name, params, x, t_x, T)
    usable = np.isfinite(alive) & np.isfinite(expected) & (expected >= 0) & (x < 1000)
    assert usable.sum() >= 20
    np.testing.assert_allclose(ours.p_alive(x, t_x, T)[usable], alive[usable], rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(ours.expected_purchases(13.0, x, t_x, T)[usable], expected[usable], rtol=1e-7,
                               atol=1e-12)


# --- 3. High-precision references (mpmath, 50 digits)


def mp_pareto(params: dict, x: int, t_x: float, T: float, t: float) -> tuple[float, float, float]:
    """P(alive), E[X(T, T+t)] and the log-likelihood at 50 digits from note 009's untransformed
    closed form: A_0 = F(t_x) - F(T), F(u) = 2F1(r+s+x, b; r+s+x+1; |alpha-beta|/(m+u)) / (m+u)^(r+s+x),
    m = max(alpha, beta), b = s+1 (alpha >= beta) or r+x; likelihood bracket
    (alpha+T)^-(r+x) (beta+T)^-s + s/(r+s+x) A_0, times Gamma(r+x) alpha^r beta^s / Gamma(r)."""
    with mp.workdps(50):
        r, alpha, s, beta = (mp.mpf(params[k]) for k in ("r", "alpha", "s", "beta"))
        x, t_x, T, t = mp.mpf(x), mp.mpf(t_x), mp.mpf(T), mp.mpf(t)
        rsx = r + s + x
        high, b = (alpha, s + 1) if alpha >= beta else (beta, r + x)

        def f(u):
            return mp.hyp2f1(rsx, b, rsx + 1, abs(alpha - beta) / (high + u)) / (high + u) ** rsx

        alive = (alpha + T) ** -(r + x) * (beta + T) ** -s
        dropped = s / rsx * (f(t_x) - f(T))
        p_alive = alive / (alive + dropped)
        if s == 1:  # the limit s -> 1
            rest = (r + x) * (beta + T) / (alpha + T) * mp.log((beta + T + t) / (beta + T))
        else:
            rest = (r + x) * (beta + T) / ((alpha + T) * (s - 1)) * (1 - ((beta + T) / (beta + T + t)) ** (s - 1))
        log_lik = mp.loggamma(r + x) - mp.loggamma(r) + r * mp.log(alpha) + s * mp.log(beta) + mp.log(alive + dropped)
        return float(p_alive), float(p_alive * rest), float(log_lik)


def test_pareto_nbd_a0_is_the_dropout_integral():
    # A derivation check of the reference: a customer who drops out at u in (t_x, T] after the last
    # purchase contributes s int (alpha+u)^-(r+x) (beta+u)^-(s+1) du = s/(r+s+x) A_0.
    params, (x, t_x, T) = PARAMS["paretonbd"][1], (3, 20.0, 50.0)
    with mp.workdps(30):
        r, alpha, s, beta = (mp.mpf(params[k]) for k in ("r", "alpha", "s", "beta"))
        alive = (alpha + T) ** -(r + x) * (beta + T) ** -s
        dropped = s * mp.quad(lambda u: (alpha + u) ** -(r + x) * (beta + u) ** -(s + 1), [t_x, T])
    assert mp_pareto(params, x, t_x, T, 13.0)[0] == pytest.approx(float(alive / (alive + dropped)), rel=1e-14)


def mp_bg(params: dict, x: int, t_x: float, T: float, t: float, modified: bool) -> tuple[float, float]:
    """P(alive) and E[X(T, T+t)] from the published (untransformed) closed forms at 50 digits:
    FHL 2005 eq. (10) for BG/NBD, Batislam et al. (2007) for MBG/NBD."""
    with mp.workdps(50):
        r, alpha, a, b = (mp.mpf(params[k]) for k in ("r", "alpha", "a", "b"))
        x, t_x, T, t = mp.mpf(x), mp.mpf(t_x), mp.mpf(T), mp.mpf(t)
        ratio = ((alpha + T) / (alpha + t_x)) ** (r + x)
        odds = a / (b + x) * ratio if modified else (a / (b + x - 1) * ratio if x > 0 else 0)
        p_alive = 1 / (1 + odds)
        shift = 1 if modified else 0
        z = t / (alpha + T + t)
        hyp = mp.hyp2f1(r + x, b + x + shift, a + b + x - 1 + shift, z)
        rest = (a + b + x - 1 + shift) / (a - 1) * (1 - ((alpha + T) / (alpha + T + t)) ** (r + x) * hyp)
        return float(p_alive), float(p_alive * rest)


REFERENCE_HISTORIES = [(0, 0.0, 39.0), (2, 30.43, 38.86), (164, 102.57, 102.57), (164, 60.0, 102.57),
                       (1000, 95.0, 104.0), (7, 0.5, 3000.0)]


@pytest.mark.parametrize("index", range(3))
@pytest.mark.parametrize("x, t_x, T", REFERENCE_HISTORIES)
def test_pareto_nbd_equals_mpmath(index, x, t_x, T):
    params = PARAMS["paretonbd"][index]
    p_alive, expected, log_lik = mp_pareto(params, x, t_x, T, 13.0)
    model = PurchaseModel.from_params("paretonbd", params)
    assert model.p_alive(x, t_x, T) == pytest.approx(p_alive, rel=1e-10, abs=1e-300)
    assert model.expected_purchases(13.0, x, t_x, T) == pytest.approx(expected, rel=1e-10, abs=1e-300)
    ours = btyd.pareto_log_likelihood(*(params[k] for k in ("r", "alpha", "s", "beta")), x, t_x, T)
    assert float(ours) == pytest.approx(log_lik, rel=1e-12)


@pytest.mark.parametrize("name, index", [("bgnbd", 0), ("bgnbd", 1), ("bgnbd", 2), ("mbgnbd", 0), ("mbgnbd", 2)])
@pytest.mark.parametrize("x, t_x, T", REFERENCE_HISTORIES)
def test_bg_family_equals_mpmath(name, index, x, t_x, T):
    params = PARAMS[name][index]
    p_alive, expected = mp_bg(params, x, t_x, T, 13.0, modified=name == "mbgnbd")
    model = PurchaseModel.from_params(name, params)
    assert model.p_alive(x, t_x, T) == pytest.approx(p_alive, rel=1e-12, abs=1e-300)
    assert model.expected_purchases(13.0, x, t_x, T) == pytest.approx(expected, rel=1e-9, abs=1e-300)


def test_a_equal_to_one_is_the_limit_of_its_neighbours():
    params = dict(PARAMS["bgnbd"][3])
    at_one = PurchaseModel.from_params("bgnbd", params).expected_purchases(13.0, 5, 20.0, 40.0)
    near = [PurchaseModel.from_params("bgnbd", {**params, "a": a}).expected_purchases(13.0, 5, 20.0, 40.0)
            for a in (1 - 1e-4, 1 + 1e-4)]
    assert np.isfinite(at_one) and at_one == pytest.approx(np.mean(near), rel=1e-6)


# --- 4. hyp2f1 is never handed an argument that crashes scipy


def test_safe_hyp2f1_skips_non_finite_and_absurd_arguments():
    # scipy 1.17.1 ends the process on hyp2f1(2e101, 0.5, 2e101 + 1, nan) (docs/clv_models.md).
    out = btyd.safe_hyp2f1([2e101, 1.0, 1.0, 1.0, 1.0, 1.0], [0.5, np.inf, 2.0, 2.0, 2.0, 2.0],
                           [2e101 + 1.0, 3.0, -2.0, 3.0, 3.0, 3.0], [np.nan, 0.5, 0.5, 1.0, -0.1, 0.5])
    assert np.isnan(out[:5]).all()
    assert out[5] == pytest.approx(float(mp.hyp2f1(1, 2, 3, 0.5)), rel=1e-14)


def test_parameters_must_be_finite_and_positive():
    with pytest.raises(ValueError, match="finite and > 0: beta=inf"):
        PurchaseModel.from_params("paretonbd", {"r": 1.0, "alpha": 1.0, "s": 1.0, "beta": np.inf})


def test_pareto_nbd_log_likelihood_equals_lifetimes_on_cdnow():
    from tests.clv_models_data import cdnow_summary

    summary = cdnow_summary("sample", 7)
    f, r, T = summary["frequency"], summary["recency"], summary["T"]
    for params in PARAMS["paretonbd"][:2]:
        values = np.array([params[k] for k in ("r", "alpha", "s", "beta")])
        reference = ParetoNBDFitter._conditional_log_likelihood(values, f, r, T)
        np.testing.assert_allclose(btyd.pareto_log_likelihood(*values, f, r, T), reference, rtol=1e-12)
