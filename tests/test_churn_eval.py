"""The churn stage's evaluation strategy and figures on small hand-made frames (no files, no MLflow)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from scipy.special import expit

from features.errors import DataError
from models import churn_eval as ce
from models.churn import CalibratedBaseline, ChurnClassifier, is_constant
from models.plots import churn as churn_plots

CUTOFF = pd.Timestamp("2021-01-31")
FAST = {"n_estimators": 30, "learning_rate": 0.1, "num_leaves": 4, "min_child_samples": 10, "min_child_share": None}
MODELS = {"classifier_raw", "classifier_calibrated", "baseline_p_no_purchase", "baseline_expected_purchases",
          "baseline_recency", "diagnostic_p_alive"}  # fmt: skip


def _build(**overrides):
    def build() -> ChurnClassifier:
        return ChurnClassifier(**{**FAST, "calibration": "none", "random_state": 0, **overrides})

    return build


def _snapshot(n: int, seed: int, k: int = 1) -> ce.Snapshot:
    """Prepared features (the CLV outputs included) whose churn rises with days since the last purchase."""
    rng = np.random.default_rng(seed)
    days = rng.uniform(0, 300, n)
    expected = rng.gamma(2.0, 0.5, n)
    X = pd.DataFrame(
        {
            "days_since_last": days,
            "frequency": rng.poisson(2, n).astype(float),
            "expected_purchases": expected,
            "p_alive": rng.uniform(0.2, 1.0, n),
            "p_no_purchase": np.exp(-expected),
            "clv": expected * 30.0,
        },
        index=pd.Index([f"c{i:04d}" for i in range(n)], name="customer_id"),
    )
    y = pd.Series((rng.uniform(size=n) < expit(-2 + 0.02 * days)).astype(np.int8), index=X.index, name="churned")
    return ce.Snapshot(k, CUTOFF - pd.Timedelta(days=60 * (k - 1)), X, y)


# --------------------------------------------------------------------------- inputs


def _frames(n: int = 3):
    ids = [f"c{i}" for i in range(n)]
    cutoff = pd.Series(CUTOFF, index=range(n)).astype("datetime64[us]")
    features = pd.DataFrame({"customer_id": ids, "cutoff": cutoff, "days_since_last": [1.0, 50.0, 200.0][:n],
                             "frequency": [3, 1, 0][:n]})  # fmt: skip
    clv = pd.DataFrame({"customer_id": ids, "cutoff": cutoff, "expected_purchases": [2.0, 0.5, 0.1][:n],
                        "p_alive": [0.9, 0.6, 0.2][:n], "p_no_purchase": [0.2, 0.6, 0.9][:n], "clv": [50.0, 10.0, 1.0][:n]})  # fmt: skip
    labels = pd.DataFrame({"customer_id": ids, "cutoff": cutoff, "purchased": np.array([1, 0, 0][:n], dtype="int8")})
    return features, clv, labels


def test_a_snapshot_joins_the_clv_outputs_and_turns_purchases_into_churn_labels():
    features, clv, labels = _frames()
    snap = ce.snapshot(1, features, clv, labels, "f.parquet", "c.parquet")
    assert snap.cutoff == CUTOFF and snap.k == 1
    assert list(snap.X.index) == ["c0", "c1", "c2"] and snap.X.loc["c2", "p_no_purchase"] == 0.9
    assert snap.y.tolist() == [0, 1, 1]  # churned = 1 - purchased
    assert ce.snapshot(0, features, clv, None, "f.parquet", "c.parquet").y is None


def test_empty_or_inconsistent_inputs_are_one_line_errors_naming_the_file():
    features, clv, labels = _frames()
    with pytest.raises(DataError, match=r"^f\.parquet: no customers at this cutoff"):
        ce.snapshot(0, features.iloc[:0], clv, None, "f.parquet", "c.parquet")
    with pytest.raises(DataError, match=r"^c\.parquet: no predictions .*clv.min_customers"):
        ce.snapshot(0, features, clv.iloc[:0], None, "f.parquet", "c.parquet")
    shifted = clv.assign(cutoff=clv["cutoff"] - pd.Timedelta(days=1))
    with pytest.raises(DataError, match=r"^f\.parquet: clv predictions cutoff 2021-01-30 differs"):
        ce.snapshot(0, features, shifted, None, "f.parquet", "c.parquet")


def test_too_few_of_a_class_names_the_labels_file_the_window_and_the_param():
    snap = _snapshot(40, 0)
    snap.y[:] = 1
    snap.y.iloc[:3] = 0
    problem = ce.too_few_of_a_class(snap, 5, 60, "labels_t1.parquet")
    assert problem == ("labels_t1.parquet: 3 retained and 37 churned customers in the window (2021-01-31, 2021-04-01], "
                       "fewer than churn.min_class_customers=5 of each")  # fmt: skip
    assert ce.too_few_of_a_class(snap, 3, 60, "labels_t1.parquet") is None
    assert ce.class_counts(snap.y) == (37, 3)
    with pytest.raises(DataError, match=r"^labels_t1.parquet: 3 retained .*; the churn model needs churned and retained"):
        ce.require_both_classes(snap, 5, 60, "labels_t1.parquet")
    ce.require_both_classes(snap, 3, 60, "labels_t1.parquet")  # enough: no error


def test_out_of_time_needs_enough_customers_and_both_classes_at_t2():
    t2 = _snapshot(120, 1, k=2)
    assert ce.out_of_time_problem(t2, 100, 5, 60, "labels_t2.parquet") is None
    assert ce.out_of_time_problem(t2, 500, 5, 60, "labels_t2.parquet") == "120 customers at t2 < churn.min_train_customers=500"
    t2.y[:] = 0
    assert ce.out_of_time_problem(t2, 100, 5, 60, "labels_t2.parquet").startswith("labels_t2.parquet: 120 retained and 0 churned")


# --------------------------------------------------------------------------- evaluation


def test_cross_fit_folds_never_exceed_the_smaller_class():
    assert ce.grouped_folds(0.3) == 3 and ce.grouped_folds(0.25, 100) == 4  # round(1 / test_fraction)
    assert ce.grouped_folds(0.1, 5) == 5 and ce.grouped_folds(0.3, 2) == 2 and ce.grouped_folds(0.3, 1) == 2


class _Recording:
    """A stand-in classifier that remembers the customers it was fitted on and scores by position."""

    fitted: list[pd.Index] = []

    def fit(self, X, y):
        _Recording.fitted.append(X.index)
        return self

    def predict_churn_probability(self, X):
        return np.full(len(X), len(_Recording.fitted) / 10)


def test_a_cross_fit_scores_every_customer_with_a_model_that_never_saw_it():
    t1 = _snapshot(60, 2)
    folds = [(t1.X.index[20:], t1.X.index[:20]), (t1.X.index.delete(slice(20, 40)), t1.X.index[20:40]),
             (t1.X.index[:40], t1.X.index[40:])]  # fmt: skip
    _Recording.fitted = []
    probability = ce.cross_fit(_Recording, t1, folds)
    assert probability.index.equals(t1.X.index) and probability.notna().all()
    assert probability.iloc[[0, 25, 45]].tolist() == [0.1, 0.2, 0.3]  # fold i's customers scored by model i
    for trained, (_, test) in zip(_Recording.fitted, folds, strict=True):
        assert trained.intersection(test).empty


def test_out_of_time_trains_at_t2_and_tests_every_t1_customer():
    t1, t2 = _snapshot(300, 3, k=1), _snapshot(250, 4, k=2)
    ev = ce.evaluate(_build(), t1, t2, "enough history at t2", 0.3, 0)
    assert ev.mode == "out_of_time" and ev.reason == "enough history at t2" and ev.folds is None
    assert ev.train_cutoff == t2.cutoff and ev.test_cutoff == t1.cutoff
    assert ev.y_test.index.equals(t1.X.index) and ev.X_train.index.equals(t2.X.index)
    assert set(ev.results) == MODELS and ev.results["classifier_calibrated"]["roc_auc"] > 0.6
    refit = _build()().fit(t2.X, t2.y).predict_churn_probability(t1.X)
    assert ev.t1_probability.to_numpy().tobytes() == refit.tobytes()
    assert ce.out_of_sample_t1(_build(), ev, t1).to_numpy().tobytes() == refit.tobytes()


def test_without_t2_a_grouped_split_keeps_train_and_test_customers_apart():
    t1 = _snapshot(300, 5)
    ev = ce.evaluate(_build(), t1, None, "t2 not found", 0.25, 0)
    assert ev.mode == "grouped_split" and ev.train_cutoff == ev.test_cutoff == t1.cutoff
    assert ev.y_train.index.intersection(ev.y_test.index).empty and len(ev.y_test) == 75
    assert len(ev.folds) == 4 and ev.t1_probability.index.equals(t1.X.index) and ev.t1_probability.notna().all()
    assert ce.out_of_sample_t1(_build(), ev, t1).to_numpy().tobytes() == ev.t1_probability.to_numpy().tobytes()


# --------------------------------------------------------------------------- churn source and metrics


def _exported(build, t1: ce.Snapshot, t0: ce.Snapshot, clv_file: str = "clv_t0.parquet"):
    ev = ce.evaluate(build, t1, None, "no t2", 0.3, 0)
    final = build().fit(t1.X, t1.y)
    scores_t0 = final.predict_churn_probability(t0.X)
    return ev, final, scores_t0, ce.choose_exported(build, ev, final, scores_t0, t1, t0, 0.005, clv_file)


def test_a_constant_classifier_exports_the_best_baseline_calibrated_on_the_same_labels():
    t1, t0 = _snapshot(300, 6), _snapshot(200, 7, k=0)
    ev, final, scores_t0, exported = _exported(_build(min_child_samples=5000, boost_from=None), t1, t0)
    assert is_constant(scores_t0)
    best = ev.results["baseline_p_no_purchase"]["roc_auc"] >= ev.results["baseline_expected_purchases"]["roc_auc"]
    assert exported.source == ("baseline:p_no_purchase" if best else "baseline:expected_purchases")
    assert exported.reason.startswith("the classifier's churn probability is constant at t0")
    assert isinstance(exported.model, CalibratedBaseline) and exported.model.n_fit_ == len(t1.y)
    assert exported.t0.tobytes() == exported.model.predict_churn_probability(t0.X).tobytes()
    assert exported.t1.index.equals(t1.X.index) and exported.t1.notna().all()
    block = ce.source_summary(exported)
    model = exported.model
    assert block["churn_source"] == exported.source
    assert block["exported"]["baseline_calibration"] == {"method": "sigmoid" if model.calibrated_ else "none",
                                                         "a": model.a_, "b": model.b_, "n_train": 300}  # fmt: skip
    assert block["exported"]["mean_churn_probability_t0"] == pytest.approx(exported.t0.mean())


def test_a_good_classifier_is_exported_as_it_is():
    t1, t0 = _snapshot(400, 8), _snapshot(200, 9, k=0)
    ev, final, scores_t0, exported = _exported(_build(), t1, t0)
    if exported.source != "classifier":  # the simulated baselines carry no signal: the classifier must win
        pytest.fail(exported.reason)
    assert exported.model is final and exported.t0 is scores_t0 and exported.t1 is ev.t1_probability
    assert ce.source_summary(exported)["exported"]["baseline_calibration"] is None


def test_a_constant_classifier_and_a_constant_baseline_stop_naming_the_clv_file():
    t1, t0 = _snapshot(300, 10), _snapshot(200, 11, k=0)
    for snap in (t1, t0):
        snap.X["p_no_purchase"], snap.X["expected_purchases"] = 0.8, 0.25
    with pytest.raises(DataError, match=r"^clv_t0.parquet: the churn classifier is not usable \(the classifier's churn"):
        _exported(_build(min_child_samples=5000, boost_from=None), t1, t0)


def test_stage_metrics_report_the_evaluation_the_comparison_and_the_final_model():
    t1, t0 = _snapshot(300, 12), _snapshot(200, 13, k=0)
    ev, final, scores_t0, exported = _exported(_build(), t1, t0)
    importance, shap = ce.importance_table(final, t0.X, seed=0, sample=50)
    assert len(shap) == 50 and shap.index.is_monotonic_increasing
    np.testing.assert_allclose(shap.sum(axis=1), final.predict_margin(t0.X.loc[shap.index]), rtol=1e-9, atol=1e-9)
    summary = ce.stage_metrics(ev, final, t1, t0, scores_t0, importance, exported, horizon_days=60,
                               calibration="none", auc_tolerance=0.005, top_features=3, seed=0)  # fmt: skip
    assert summary["evaluation"] == "grouped_split" and summary["n_test"] == len(ev.y_test) == 90
    assert summary["train_cutoff"] == summary["test_cutoff"] == "2021-01-31"
    assert summary["final_model"]["n_scored"] == 200 and summary["final_model"]["score_cutoff"] == "2021-04-01"
    assert set(summary["models"]) == MODELS and "reliability" not in summary["models"]["diagnostic_p_alive"]
    assert len(summary["top_features"]) == 3 and summary["top_features"][0]["feature"] == importance["feature"][0]
    low, high = summary["comparison"]["bootstrap"]["auc_difference_ci95"]
    assert low <= summary["comparison"]["auc_difference"] <= high
    tags = ce.run_tags(summary)
    assert tags["cvp.evaluation"] == "grouped_split" and tags["cvp.claim.auc_within_tolerance"] in ("true", "false")
    assert ce.outcome(summary).startswith("churn (grouped_split): classifier AUC ")
    description = ce.model_description(exported, final, t1.cutoff)
    assert description["features"] == list(t1.X.columns) and description["train_cutoff"] == "2021-01-31"


def test_the_p_alive_note_and_the_claim_warnings_say_what_happened():
    assert "worse than chance (ROC-AUC 0.420)" in ce.p_alive_note(0.42)
    assert "better than chance (ROC-AUC 0.610)" in ce.p_alive_note(0.61)
    comparison = {"classifier_beats_baseline_brier": False, "classifier_brier": 0.2, "best_baseline_by_brier": "b",
                  "best_baseline_brier": 0.1, "classifier_auc_within_tolerance": True}  # fmt: skip
    assert ce.warn_on_failed_claims(comparison) == [
        "calibrated classifier Brier 0.2000 does not beat the best CLV baseline (b, 0.1000)"
    ]


def test_predictions_are_sorted_by_customer_with_one_microsecond_cutoff():
    frame = ce.predictions_frame(pd.Series([0.3, 0.1], index=pd.Index(["b", "a"], name="customer_id")), CUTOFF)
    assert frame["customer_id"].tolist() == ["a", "b"] and frame["churn_probability"].tolist() == [0.1, 0.3]
    assert str(frame["cutoff"].dtype) == "datetime64[us]" and (frame["cutoff"] == CUTOFF).all()
    assert list(frame.columns) == ["customer_id", "cutoff", "churn_probability"]


# --------------------------------------------------------------------------- tables and figures


def test_plot_tables_and_figures_cover_every_model():
    t1, t0 = _snapshot(300, 14), _snapshot(200, 15, k=0)
    ev, final, _, _ = _exported(_build(), t1, t0)
    importance, shap = ce.importance_table(final, t0.X, seed=0)
    y = ev.y_test.to_numpy()
    tables = ce.plot_tables(y, ev.scored, importance)
    assert set(tables) == {"roc", "pr", "calibration", "lift", "importance"}
    assert set(tables["roc"]["model"]) == MODELS
    assert set(tables["calibration"]["model"]) == MODELS - {"diagnostic_p_alive"}  # no probability, no reliability
    figures = churn_plots.figures(tables, ev.results, ev.scored, y, shap, t0.X, top=4, seed=0)
    assert list(figures) == ["roc.png", "precision_recall.png", "calibration.png", "lift.png",
                             "feature_importance.png", "shap_summary.png"]  # fmt: skip
    assert all(isinstance(fig, Figure) for fig in figures.values())
    legend = [t.get_text() for t in figures["roc.png"].axes[0].get_legend().get_texts()]
    auc = ev.results["classifier_calibrated"]["roc_auc"]
    assert f"LightGBM (calibrated)  AUC {auc:.3f}" in legend and len(legend) == len(MODELS)
    bars = figures["feature_importance.png"].axes[0].patches
    assert len(bars) == 4  # the top 4 features
    assert sum(b.get_width() for b in bars) == pytest.approx(importance["gain"].head(4).sum() / importance["gain"].sum())
