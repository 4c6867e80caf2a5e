"""Model choice and the fits at each cutoff (models/clv_select.py) on hand-made inputs: selection,
its failures, the t_2 skip, the sampled comparison, the error messages and the config mapping."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.errors import DataError
from models import clv_eval, clv_select
from models.clv import PREDICTION_DTYPES, ClvSettings, FitError
from models.clv_select import ClvFitting
from pipelines.config import ClvParams

CUTOFF = pd.Timestamp("2021-03-31")
SOURCE = "data/features/features_t1.parquet"
SETTINGS = ClvSettings(days_per_unit=7.0, horizon_days=91, margin=0.3, discount_rate=0.1, discount_period_days=30)


def fitting(**changes) -> ClvFitting:
    """The fitting settings of the default config (seed 0), with ``changes``."""
    return ClvFitting.from_config({**ClvParams().model_dump(), **changes}, seed=0)


def tiny_features(ids=("a", "b", "c", "d"), frequency=(0, 1, 2, 3)) -> pd.DataFrame:
    n = len(ids)
    frequency = np.asarray(frequency, dtype="int64")
    return pd.DataFrame(
        {
            "customer_id": pd.Series(ids, dtype="str"),
            "cutoff": pd.Series([CUTOFF] * n, dtype="datetime64[us]"),
            "first_purchase": pd.Series([CUTOFF - pd.Timedelta(days=70)] * n, dtype="datetime64[us]"),
            "frequency": frequency,
            "recency": frequency.astype(float),
            "T": np.full(n, 10.0),
            "monetary_value": np.where(frequency > 0, 20.0, 0.0),
            "avg_spend": np.full(n, 20.0),
            "ipi_mean": np.where(frequency > 0, 7.0, np.nan),
        }
    )


def tiny_labels(features: pd.DataFrame, purchases=(0, 1, 2, 3)) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_id": features["customer_id"],
            "cutoff": features["cutoff"],
            "purchased": (np.asarray(purchases) > 0).astype("int8"),
            "n_purchase_days": np.asarray(purchases, dtype="int64"),
            "spend": np.asarray(purchases, dtype=float) * 10,
        }
    )


class FixedModel:
    """A purchase model stand-in whose predictions are given (or whose fit fails)."""

    def __init__(self, predicted=None, fails=False):
        self.predicted, self.fails = predicted, fails

    def fit(self, frequency, recency, T, weights=None):
        if self.fails:
            raise FitError("cannot fit: optimiser diverged")
        return self

    def expected_purchases(self, t, frequency, recency, T):
        return np.asarray(self.predicted, dtype=float)


# --------------------------------------------------------------------------- config


def test_fitting_takes_its_fields_from_the_clv_section_and_has_no_defaults_of_its_own():
    cfg = ClvParams(penalizer=0.5, fit_max_iterations=9, spend_fallback=None, selection_max_customers=7)
    built = ClvFitting.from_config(cfg.model_dump(), seed=3)
    assert set(clv_select.CONFIG_FIELDS) <= set(ClvParams.model_fields)
    assert {name: getattr(built, name) for name in clv_select.CONFIG_FIELDS} == cfg.model_dump(include=set(clv_select.CONFIG_FIELDS))
    assert built.seed == 3
    assert all(f.default is dataclasses.MISSING for f in dataclasses.fields(ClvFitting))


def test_the_estimators_defaults_are_the_configs():
    """PurchaseModel and SpendModel keep scikit-learn style __init__ defaults: they must be the
    config's, so a model built without the stage fits like one built from params.yaml."""
    from models.clv import PurchaseModel, SpendModel

    cfg = ClvParams()
    purchase, spend = PurchaseModel(), SpendModel()
    assert (purchase.penalizer, purchase.retry_penalizer) == (cfg.penalizer, cfg.retry_penalizer)
    assert (purchase.max_iterations, purchase.time_budget_s) == (cfg.fit_max_iterations, cfg.fit_time_budget_s)
    assert (spend.penalizer, spend.retry_penalizer) == (cfg.spend_penalizer, cfg.spend_retry_penalizer)
    assert (spend.correlation_warn, spend.fallback) == (cfg.spend_correlation_warn, cfg.spend_fallback)


def test_new_models_carry_the_fitting_settings():
    purchase = clv_select.new_purchase_model("paretonbd", fitting(fit_time_budget_s=7, fit_max_iterations=9, penalizer=0.2))
    assert (purchase.model, purchase.time_budget_s, purchase.max_iterations, purchase.penalizer) == ("paretonbd", 7, 9, 0.2)
    assert purchase.random_state == 0


# --------------------------------------------------------------------------- model choice


def test_auto_selection_picks_the_lower_holdout_error_and_skips_failures():
    features = tiny_features()
    labels = tiny_labels(features, purchases=(0, 1, 2, 3))
    injected = {
        "bgnbd": FixedModel([1, 1, 1, 1]),  # MAE (1 + 0 + 1 + 2) / 4 = 1.0
        "paretonbd": FixedModel([0.5, 1.5, 2.5, 3.5]),  # MAE 0.5
        "mbgnbd": FixedModel(fails=True),
    }
    chosen, report = clv_select.choose_purchase_model(fitting(model="auto"), features, labels, 13.0, SOURCE,
                                                      make_model=injected.get)  # fmt: skip
    assert chosen.name == "paretonbd" and chosen.model is injected["paretonbd"]
    assert report["method"] == "auto" and report["chosen"] == "paretonbd"
    assert report["candidates"]["bgnbd"]["mae"] == pytest.approx(1.0)
    assert report["candidates"]["paretonbd"]["mae"] == pytest.approx(0.5)
    assert report["candidates"]["mbgnbd"] == {"status": "skipped", "reason": "cannot fit: optimiser diverged"}
    table = clv_eval.selection_table(report)
    assert table["candidate"].tolist() == ["bgnbd", "paretonbd", "mbgnbd"]


def test_configured_model_is_the_only_candidate():
    features = tiny_features()
    labels = tiny_labels(features)
    injected = {"mbgnbd": FixedModel([9, 9, 9, 9]), "bgnbd": FixedModel([0, 1, 2, 3])}
    chosen, report = clv_select.choose_purchase_model(fitting(model="mbgnbd"), features, labels, 13.0, SOURCE,
                                                      make_model=injected.get)  # fmt: skip
    assert chosen.name == "mbgnbd" and report["method"] == "configured"
    assert list(report["candidates"]) == ["mbgnbd"]


def test_no_fittable_candidate_is_a_data_error_naming_the_source():
    features = tiny_features()
    with pytest.raises(DataError, match=r"^features_t1 here: no purchase model could be fitted .*clv.penalizer"):
        clv_select.choose_purchase_model(fitting(min_customers=1), features, tiny_labels(features), 13.0,
                                         "features_t1 here", make_model=lambda n: FixedModel(fails=True))  # fmt: skip


def test_no_fittable_candidate_on_a_tiny_base_names_the_size():
    features = tiny_features()
    with pytest.raises(DataError) as raised:
        clv_select.choose_purchase_model(fitting(min_customers=len(features) + 1), features, tiny_labels(features),
                                         13.0, SOURCE, make_model=lambda n: FixedModel(fails=True))  # fmt: skip
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"{SOURCE}: {len(features)} customers at t_1 are too few to fit")
    assert f"clv.min_customers={len(features) + 1}" in message and "data.horizon_days" in message


def test_a_large_base_compares_candidates_on_a_sample_then_fits_the_winner_on_everyone():
    from tests.test_clv_stage import HORIZON, cdnow_sample_transactions, features_and_labels

    features, labels = features_and_labels(cdnow_sample_transactions(), pd.Timestamp("1998-03-31"))
    sampled = fitting(model="auto", selection_max_customers=800)
    chosen, report = clv_select.choose_purchase_model(sampled, features, labels, HORIZON / 7, SOURCE)
    assert report["sample_customers"] == 800 and len(features) == 2357
    # The winner is fitted on every customer: the same model as a fit on all of them.
    everyone = clv_select.fit_purchase(clv_select.new_purchase_model(chosen.name, sampled), clv_select.patterns_of(features))
    assert chosen.model.n_customers_ == 2357 and chosen.model.params_ == everyone.params_
    # Below the limit nothing is sampled.
    _, full = clv_select.choose_purchase_model(fitting(model="auto"), features, labels, HORIZON / 7, SOURCE)
    assert "sample_customers" not in full


# --------------------------------------------------------------------------- fits and failures


def test_a_failed_fit_on_a_small_base_names_the_size_at_either_cutoff():
    source = "data/features/features_t0.parquet"
    at_t0 = str(clv_select.too_few_customers(source, 0, 9, 100, "Pareto/NBD fit failed on 9 customers"))
    assert at_t0 == ("data/features/features_t0.parquet: 9 customers at t_0 are too few to fit a purchase model (fits are "
                     "reliable from clv.min_customers=100); use a larger customer base or a shorter data.horizon_days "
                     "(details: Pareto/NBD fit failed on 9 customers)")  # fmt: skip
    at_t1 = str(clv_select.too_few_customers(SOURCE, 1, 8, 100, "x"))
    assert "8 customers at t_1" in at_t1 and "which moves t_1 later" in at_t1


def test_failures_named_turns_a_fit_error_into_one_line_naming_the_file():
    with pytest.raises(DataError) as raised:
        with clv_select.failures_named("f0.parquet", 0, 500, 100):
            raise FitError("Gamma-Gamma fit failed")
    assert str(raised.value) == "f0.parquet: Gamma-Gamma fit failed" and not isinstance(raised.value, FitError)
    with pytest.raises(DataError, match=r"^f0.parquet: 5 customers at t_0 are too few"):
        with clv_select.failures_named("f0.parquet", 0, 5, 100):
            raise FitError("x")


def test_t2_with_too_few_customers_gives_an_empty_frame_with_the_prediction_dtypes():
    features = tiny_features()
    pred, reason = clv_select.predict_t2(features, clv_select.patterns_of(features), "bgnbd", fitting(min_customers=10),
                                         SETTINGS)  # fmt: skip
    assert pred.empty and reason and "clv.min_customers=10" in reason
    assert {c: str(t) for c, t in pred.dtypes.items()} == PREDICTION_DTYPES


def test_t2_whose_fit_fails_is_skipped():
    # nobody has a repeat purchase: the purchase model is not identifiable
    features = tiny_features(frequency=(0, 0, 0, 0))
    pred, reason = clv_select.predict_t2(features, clv_select.patterns_of(features), "bgnbd", fitting(min_customers=1),
                                         SETTINGS)  # fmt: skip
    assert pred.empty and "repeat purchase" in reason


def test_inputs_without_customers_or_with_other_labels_are_rejected():
    features = {k: tiny_features() for k in (0, 1, 2)}
    sources = {k: f"f{k}.parquet" for k in (0, 1, 2)}
    clv_select.check_inputs(features, tiny_labels(features[1]), sources, "l1.parquet")
    other = tiny_labels(tiny_features(ids=("a", "b", "c", "e")))
    with pytest.raises(DataError, match=r"^l1.parquet: customers differ from f1.parquet; rerun `cvp features`"):
        clv_select.check_inputs(features, other, sources, "l1.parquet")
    empty = {**features, 0: tiny_features().iloc[:0]}
    with pytest.raises(DataError, match=r"^f0.parquet: no customers; .*on or before t_0"):
        clv_select.check_inputs(empty, tiny_labels(features[1]), sources, "l1.parquet")
    clv_select.check_inputs({**features, 2: tiny_features().iloc[:0]}, tiny_labels(features[1]), sources, "l1.parquet")


# --------------------------------------------------------------------------- one run on the CDNOW sample


@pytest.fixture(scope="module")
def cdnow_run():
    from tests.test_clv_stage import HORIZON, cdnow_sample_transactions, features_and_labels

    tx = cdnow_sample_transactions()
    frames = {k: features_and_labels(tx, pd.Timestamp("1998-06-30") - pd.Timedelta(days=k * HORIZON)) for k in (0, 1, 2)}
    features = {k: f for k, (f, _) in frames.items()}
    patterns = {k: clv_select.patterns_of(f) for k, f in features.items()}
    cfg = fitting(model="bgnbd")
    fits = clv_select.fit_cutoffs(features, frames[1][1], patterns, cfg, SETTINGS, {k: f"f{k}" for k in (0, 1, 2)})
    return features, patterns, cfg, fits


def test_fit_cutoffs_refits_at_each_cutoff_on_its_own_data(cdnow_run):
    features, patterns, cfg, fits = cdnow_run
    assert fits.name == "bgnbd" and fits.skipped_t2 is None
    for k in (0, 1, 2):
        pred = fits.predictions[k]
        assert pred["customer_id"].tolist() == sorted(features[k]["customer_id"]) and len(pred) == len(features[k])
        assert {c: str(t) for c, t in pred.dtypes.items()} == PREDICTION_DTYPES
    # t_1: the chosen model; t_0: a refit on t_0's data (different parameters, same settings)
    purchase_t0, spend_t0 = clv_select.fit_both("bgnbd", patterns[0], 0, cfg)
    assert fits.purchase_t0.params_ == purchase_t0.params_ and fits.spend_t0.params_ == spend_t0.params_
    assert fits.chosen.model.params_ != fits.purchase_t0.params_
    expected_t0 = clv_select.predict_at(purchase_t0, spend_t0, features[0], SETTINGS)
    pd.testing.assert_frame_equal(fits.predictions[0], expected_t0)


def test_metrics_and_model_summary_report_the_t0_fits(cdnow_run):
    features, patterns, cfg, fits = cdnow_run
    f0 = features[0]
    bgnbd = clv_select.bgnbd_block(fits.name, fits.purchase_t0, patterns[0], cfg)
    assert bgnbd == clv_select.purchase_block(fits.purchase_t0)  # the chosen model is BG/NBD: no reference refit
    holdout = {"n_customers": 1}
    metrics = clv_select.clv_metrics(fits, pd.Timestamp("1998-06-30"), pd.Timestamp("1998-03-31"), f0, bgnbd, holdout,
                                     "W", 91)  # fmt: skip
    assert metrics["model"] == "bgnbd" and metrics["as_of"] == "1998-06-30" and metrics["holdout_cutoff"] == "1998-03-31"
    assert metrics["n_customers"] == len(f0) and metrics["n_repeat_customers"] == int((f0["frequency"] > 0).sum())
    assert metrics["gamma_gamma"]["source"] == "gamma_gamma" and metrics["holdout"] is holdout
    assert metrics["predictions"]["t0"]["total_clv"] == pytest.approx(fits.predictions[0]["clv"].sum())
    assert "skipped" not in metrics["predictions"]["t2"]
    skipped = dataclasses.replace(fits, skipped_t2="too few")
    assert clv_select.clv_metrics(skipped, pd.Timestamp("1998-06-30"), pd.Timestamp("1998-03-31"), f0, bgnbd, holdout,
                                  "W", 91)["predictions"]["t2"]["skipped"] == "too few"  # fmt: skip
    summary = clv_select.model_summary(fits, pd.Timestamp("1998-06-30"), "W", 7.0, 91, {"purchase_model": Path("m/p.pkl")})
    assert summary["purchase_params"] == fits.purchase_t0.params_ and summary["files"] == {"purchase_model": "p.pkl"}
    assert summary["n_customers"] == len(f0) and summary["cutoff"] == "1998-06-30"


def test_a_reference_bgnbd_is_fitted_when_another_model_is_chosen(cdnow_run):
    features, patterns, cfg, fits = cdnow_run
    mbg = clv_select.fit_purchase(clv_select.new_purchase_model("mbgnbd", cfg), patterns[0])
    block = clv_select.bgnbd_block("mbgnbd", mbg, patterns[0], cfg)
    assert block == clv_select.purchase_block(fits.purchase_t0)  # the BG/NBD fitted on the same patterns
