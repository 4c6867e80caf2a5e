"""Bounded, safe CLV fits: the Pareto/NBD search's time and iteration budgets and progress log,
degenerate optima, the Gamma-Gamma retry ladder, `auto` skipping a candidate that cannot be
fitted, and the guard that keeps a non-finite model output from reaching the predictions."""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd
import pytest

from features.errors import DataError
from models import _lifetimes, btyd, clv_eval, clv_select
from models.clv import FitError, PurchaseModel, SpendModel, as_predictions, compress, predict_customers
from pipelines import contracts
from pipelines.config import ClvParams
from tests.clv_models_data import cdnow_features, cdnow_summary


def fitting(**changes) -> clv_select.ClvFitting:
    """The fitting settings of the default config (seed 0), with ``changes``."""
    return clv_select.ClvFitting.from_config({**ClvParams().model_dump(), **changes}, seed=0)


@pytest.fixture(scope="module")
def weekly() -> pd.DataFrame:
    return cdnow_summary("sample", 7)


def fit(summary: pd.DataFrame, model: str = "paretonbd", **kwargs) -> PurchaseModel:
    return PurchaseModel(model, random_state=0, **kwargs).fit(summary["frequency"], summary["recency"], summary["T"])


# --- 1. The Pareto/NBD search is bounded in time and iterations, and logs its progress


def test_a_search_over_its_time_budget_is_a_one_line_fit_error_naming_the_param(weekly):
    started = time.monotonic()
    with pytest.raises(FitError) as raised:
        fit(weekly, time_budget_s=1e-3)
    message = str(raised.value)
    assert time.monotonic() - started < 5  # stopped, not retried
    assert "\n" not in message and "Pareto/NBD fit on 2357 customers" in message
    assert "over the time budget of 0.001 s" in message and "clv.fit_time_budget_s" in message
    assert "penalizer 0.001" not in message


def test_a_search_over_its_iteration_cap_names_the_param(weekly):
    with pytest.raises(FitError, match=r"no convergence within 2 iterations.*clv.fit_max_iterations"):
        fit(weekly, max_iterations=2)


def test_progress_is_logged_at_info(weekly, caplog):
    rows = compress(weekly, ["frequency", "recency", "T"])
    with caplog.at_level(logging.INFO, logger="models.btyd"):
        btyd.fit_pareto_nbd(rows["frequency"], rows["recency"], rows["T"], rows["count"], 0.0, np.ones(4),
                            log_every_s=0.0)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Pareto/NBD fit:")]
    assert len(lines) >= 5 and "likelihood evaluations on 1016 rows" in lines[0]


def test_the_search_stays_inside_its_bounds_and_a_bound_optimum_is_degenerate(weekly, monkeypatch):
    # Every repeat customer bought at the end of the window: no sign of dropout, so the likelihood
    # keeps rising as s -> 0 (mu concentrated at 0), an optimum on the search bound. The fit stops
    # within seconds with a one-line error instead of drifting to r ~ 1e-27, s ~ 1e101 and handing
    # hyp2f1 an infinite argument (docs/clv_models.md).
    recency = np.where(weekly["frequency"] > 0, weekly["T"], 0.0)
    seen = []
    real_value = btyd.ParetoNBDObjective.value

    def recording(self, log_params):
        seen.append(np.array(log_params))
        return real_value(self, log_params)

    monkeypatch.setattr(btyd.ParetoNBDObjective, "value", recording)
    started = time.monotonic()
    with pytest.raises(FitError) as raised:
        PurchaseModel("paretonbd", random_state=0).fit(weekly["frequency"], recency, weekly["T"])
    assert time.monotonic() - started < 60
    message = str(raised.value)
    assert "penalizer 0: degenerate optimum: s ran to the search bound" in message
    assert "clv.retry_penalizer" in message and "another clv.model" in message
    tried = np.exp(np.array(seen))
    low, high = btyd.PARETO_NBD_BOUNDS
    assert tried.min() >= low * (1 - 1e-4) and tried.max() <= high * (1 + 1e-4)


def test_compressed_rows_give_the_likelihood_of_every_customer(weekly):
    rows = compress(weekly, ["frequency", "recency", "T"])
    params = {"r": 0.553, "alpha": 10.58, "s": 0.606, "beta": 11.67}
    every = _lifetimes.purchase_log_likelihood("paretonbd", params, weekly["frequency"], weekly["recency"],
                                               weekly["T"], np.ones(len(weekly)))
    compressed = _lifetimes.purchase_log_likelihood("paretonbd", params, rows["frequency"], rows["recency"],
                                                    rows["T"], rows["count"])
    assert compressed == pytest.approx(every, rel=1e-12)
    assert compressed == pytest.approx(-9595.0, abs=0.2)  # FHL 2005 at the published (rounded) estimates


# --- 2. Gamma-Gamma: the purchase models' retry ladder


REAL_FIT_SPEND = _lifetimes.fit_spend


def failing_spend_fit(fail_penalizers):
    def fit_spend(frequency, monetary_value, weights, penalizer):
        if penalizer in fail_penalizers:
            raise _lifetimes.ConvergenceError("The model did not converge")
        return REAL_FIT_SPEND(frequency, monetary_value, weights, penalizer)
    return fit_spend


def test_a_failed_spend_fit_is_retried_with_the_retry_penalizer(weekly, monkeypatch, caplog):
    monkeypatch.setattr(_lifetimes, "fit_spend", failing_spend_fit({0.0}))
    with caplog.at_level(logging.WARNING, logger="models.clv"):
        model = SpendModel(retry_penalizer=0.001).fit(weekly["frequency"], weekly["monetary_value"])
    assert model.penalizer_ == 0.001 and "Gamma-Gamma fit with penalizer 0 failed" in caplog.text
    unpenalised = SpendModel(retry_penalizer=None)
    monkeypatch.setattr(_lifetimes, "fit_spend", failing_spend_fit(set()))
    assert unpenalised.fit(weekly["frequency"], weekly["monetary_value"]).penalizer_ == 0.0


def test_a_spend_fit_failing_every_attempt_names_the_params(weekly, monkeypatch):
    monkeypatch.setattr(_lifetimes, "fit_spend", failing_spend_fit({0.0, 0.001}))
    with pytest.raises(FitError) as raised:
        SpendModel(fallback=None).fit(weekly["frequency"], weekly["monetary_value"])
    message = str(raised.value)
    assert "\n" not in message and isinstance(raised.value, DataError)
    assert "Gamma-Gamma fit failed on 946 repeat customers" in message
    assert "penalizer 0: The model did not converge; penalizer 0.001: The model did not converge" in message
    assert "clv.spend_retry_penalizer" in message and "clv.spend_penalizer" in message
    assert message.endswith("or set clv.spend_fallback: credibility")
    # With a fallback the failure is recorded without the advice to set one (it is already set).
    fallen = SpendModel(fallback="credibility").fit(weekly["frequency"], weekly["monetary_value"])
    assert fallen.fit_failure_.startswith("Gamma-Gamma fit failed on 946") and "spend_fallback" not in fallen.fit_failure_


def test_a_spend_optimum_with_q_below_one_is_retried(weekly, monkeypatch):
    def heavy_tailed_first(frequency, monetary_value, weights, penalizer):
        params = REAL_FIT_SPEND(frequency, monetary_value, weights, penalizer)
        return {**params, "q": 0.8} if penalizer == 0.0 else params

    monkeypatch.setattr(_lifetimes, "fit_spend", heavy_tailed_first)
    model = SpendModel().fit(weekly["frequency"], weekly["monetary_value"])
    assert model.penalizer_ == 0.001 and model.params_["q"] > 1


def test_the_stage_passes_the_spend_retry_penalizer():
    features = cdnow_features("sample", 7)
    cfg = fitting(spend_penalizer=0.0, spend_retry_penalizer=0.02)
    model = clv_select.fit_spend(cfg, clv_select.patterns_of(features))
    assert (model.penalizer, model.retry_penalizer, model.penalizer_) == (0.0, 0.02, 0.0)
    purchase = clv_select.new_purchase_model("paretonbd", fitting(fit_time_budget_s=7, fit_max_iterations=9))
    assert (purchase.time_budget_s, purchase.max_iterations) == (7, 9)


# --- 3. `auto` skips a candidate that cannot be fitted in its budget and records why


def test_auto_skips_a_candidate_over_its_budget_and_records_the_reason():
    features = cdnow_features("sample", 7)
    features = features.assign(ipi_mean=np.nan, avg_spend=0.0)
    rng = np.random.default_rng(0)
    labels = pd.DataFrame({"customer_id": features["customer_id"],
                           "n_purchase_days": rng.poisson(0.3, len(features)).astype("int64")})
    cfg = fitting(model="auto", fit_time_budget_s=1e-3)
    chosen, report = clv_select.choose_purchase_model(cfg, features, labels, 13.0, "features_t1.parquet")
    skipped = report["candidates"]["paretonbd"]
    assert skipped["status"] == "skipped" and "over the time budget of 0.001 s" in skipped["reason"]
    assert chosen.name in ("bgnbd", "mbgnbd") and report["candidates"][chosen.name]["status"] == "ok"
    assert clv_eval.selection_table(report).set_index("candidate").loc["paretonbd", "reason"] == skipped["reason"]


def test_every_candidate_failing_is_one_line_naming_the_params():
    features = cdnow_features("sample", 7).assign(frequency=0, recency=0.0)
    labels = pd.DataFrame({"customer_id": features["customer_id"], "n_purchase_days": np.zeros(len(features), "int64")})
    with pytest.raises(DataError) as raised:
        clv_select.choose_purchase_model(fitting(model="auto"), features, labels, 13.0, "features_t1.parquet")
    message = str(raised.value)
    assert "\n" not in message and "no purchase model could be fitted" in message
    assert all(p in message for p in ("clv.penalizer", "clv.retry_penalizer", "clv.fit_time_budget_s", "clv.model"))


# --- 4. No NaN reaches the predictions contract


def test_the_issue_11_customer_passes_the_predictions_contract():
    features = cdnow_features("sample", 7).head(3).assign(frequency=[164, 0, 5000], recency=[102.57, 0.0, 90.0],
                                                          T=[102.57, 102.57, 104.0])
    purchase = PurchaseModel.from_params("paretonbd", {"r": 1.137, "alpha": 8.045, "s": 0.9889, "beta": 59.62})
    spend = SpendModel.from_params({"p": 6.25, "q": 3.74, "v": 15.44})
    out = predict_customers(purchase, spend, features, 91, 7, 0.3, 0.1, 30)
    validated = contracts.CLV_PREDICTIONS_SCHEMA.validate(as_predictions(out))
    assert validated["p_alive"].tolist()[0] == 1.0 and np.isfinite(validated["clv"]).all()


def test_a_non_finite_output_is_a_one_line_error_not_a_nan(monkeypatch):
    features = cdnow_features("sample", 7).head(5)
    purchase = PurchaseModel.from_params("bgnbd", {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426})
    spend = SpendModel.from_params({"p": 6.25, "q": 3.74, "v": 15.44})
    monkeypatch.setattr(btyd, "bg_p_alive", lambda *args, **kwargs: np.full(5, np.nan))
    with pytest.raises(FitError) as raised:
        predict_customers(purchase, spend, features, 91, 7, 0.3, 0.1, 30)
    message = str(raised.value)
    assert "\n" not in message and "bgnbd gave p_alive = nan for" in message and "choose another clv.model" in message
