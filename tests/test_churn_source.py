"""Small data and the churn-source guard: leaf minimum scaled with the training size, the
calibrated CLV baseline exported when the classifier is constant or worse than it, and
one-line stops on one-sided labels."""

from __future__ import annotations

import pickle
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from scipy.special import expit, logit

from features.errors import DataError
from models import metrics
from models.churn import (
    MIN_CHILD_FLOOR,
    CalibratedBaseline,
    ChurnClassifier,
    choose_churn_source,
    compare_with_baselines,
    is_constant,
    scaled_min_child_samples,
)
from pipelines import churn, files
from pipelines.config import load_params
from tests import inprocess
from tests.test_churn_stage import inputs_dir, project, write_params  # noqa: F401  (fixtures)

FAST = {"n_estimators": 40, "learning_rate": 0.1, "num_leaves": 4, "boost_from": None}  # _small has no CLV columns


# --------------------------------------------------------------------------- complexity scaling


@pytest.mark.parametrize(
    ("n", "cap", "share", "expected"),
    [
        (62, 300, 0.05, 5),  # 0.05 * 62 = 3.1 -> 4, raised to the floor of 5
        (180, 300, 0.05, 9),  # exactly 9.0: no rounding up to 10 from 9.000000000000002
        (735, 300, 0.05, 37),  # 36.75 -> 37
        (6_000, 300, 0.05, 300),  # the cap is reached at 300 / 0.05 = 6,000 customers
        (16_499, 300, 0.05, 300),  # CDNOW's evaluation fit (70% of 23,570): the tuned 300, unchanged
        (23_570, 300, None, 300),  # share null: the absolute number, as before
        (100, 3, 0.05, 3),  # a cap below the floor wins
    ],
)
def test_leaf_minimum_scales_with_the_training_size(n, cap, share, expected):
    assert scaled_min_child_samples(n, cap, share) == expected
    assert MIN_CHILD_FLOOR == 5


def _small(n: int, seed: int) -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(seed)
    days = rng.uniform(0, 300, n)
    X = pd.DataFrame({"days_since_last": days, "frequency": rng.poisson(2, n).astype(float)},
                     index=pd.Index([f"c{i:04d}" for i in range(n)], name="customer_id"))  # fmt: skip
    y = pd.Series((rng.uniform(size=n) < expit(-2 + 0.02 * days)).astype(np.int8), index=X.index)
    return X, y


def test_a_fixed_leaf_minimum_leaves_a_small_base_with_one_constant_and_the_share_fixes_it():
    """The reported failure: min_child_samples 300 on ~90 customers grows no tree at all."""
    X, y = _small(90, 0)
    fixed = ChurnClassifier(**FAST, min_child_samples=300, min_child_share=None, calibration="none", random_state=0)
    fixed.fit(X, y)
    assert fixed.min_child_samples_ == 300 and is_constant(fixed.predict_churn_probability(X))
    scaled = ChurnClassifier(**FAST, min_child_samples=300, min_child_share=0.05, calibration="none", random_state=0)
    p = scaled.fit(X, y).predict_churn_probability(X)
    assert scaled.min_child_samples_ == 5  # 0.05 * 90 = 4.5 -> 5
    assert not is_constant(p) and metrics.roc_auc(y, p) > 0.75


def test_auto_calibration_skips_the_hold_out_when_a_class_is_tiny():
    X, y = _small(60, 1)
    y[:] = 1
    y.iloc[:3] = 0  # 3 retained customers: too few to hold any out
    model = ChurnClassifier(**FAST, min_child_samples=300, min_child_share=0.05, random_state=0).fit(X, y)
    assert model.calibration_method_ == "none" and model.n_fit_ == 60 and model.n_calibration_ == 0
    with pytest.raises(DataError, match=r"\(57 churned, 3 retained; 4 of each needed\): set churn.calibration: none or auto"):
        ChurnClassifier(**FAST, calibration="isotonic", random_state=0).fit(X, y)


# --------------------------------------------------------------------------- the guard


def _results(classifier_auc: float, p_no_purchase_auc: float, expected_auc: float) -> dict:
    def one(auc: float, brier: float) -> dict:
        return {"roc_auc": auc, "brier": brier}

    return {"classifier_calibrated": one(classifier_auc, 0.10), "baseline_p_no_purchase": one(p_no_purchase_auc, 0.09),
            "baseline_expected_purchases": one(expected_auc, 0.11)}  # fmt: skip


VARIED = np.array([0.2, 0.5, 0.9])


def test_the_classifier_is_exported_when_within_the_tolerance():
    comparison = compare_with_baselines(_results(0.836, 0.8335, 0.8359), auc_tolerance=0.005)
    source, reason = choose_churn_source(comparison, {"at t0": VARIED})
    assert source == "classifier"
    assert reason == ("classifier ROC-AUC 0.8360 is not below the best CLV baseline expected_purchases (0.8359) "
                      "by more than churn.auc_tolerance=0.005")  # fmt: skip


def test_a_classifier_trailing_the_best_baseline_gives_way_to_it():
    comparison = compare_with_baselines(_results(0.9221, 0.9361, 0.9257), auc_tolerance=0.005)
    source, reason = choose_churn_source(comparison, {"at t0": VARIED})
    assert source == "baseline:p_no_purchase"
    assert "classifier ROC-AUC 0.9221 trails the best CLV baseline p_no_purchase (0.9361)" in reason
    # just inside the tolerance it stays: 0.9312 >= 0.9361 - 0.005
    comparison = compare_with_baselines(_results(0.9312, 0.9361, 0.9257), auc_tolerance=0.005)
    assert choose_churn_source(comparison, {"at t0": VARIED})[0] == "classifier"


def test_a_constant_classifier_gives_way_even_with_a_good_auc():
    comparison = compare_with_baselines(_results(0.99, 0.9444, 0.9583), auc_tolerance=0.005)
    source, reason = choose_churn_source(comparison, {"at t0": VARIED, "on the test customers": np.full(27, 0.7426)})
    assert source == "baseline:expected_purchases"
    assert reason == "the classifier's churn probability is constant on the test customers (0.7426 for every customer)"
    nearly = 0.5 + np.r_[0.0, 1e-12, -1e-12]  # distinct values, spread far below 1e-9
    assert is_constant(nearly) and is_constant(np.array([0.3])) and not is_constant(VARIED)


def test_the_calibrated_baseline_keeps_the_ranking_and_recovers_a_known_map():
    rng = np.random.default_rng(4)
    n = 20_000
    p = rng.uniform(0.02, 0.98, n)
    X = pd.DataFrame({"p_no_purchase": p, "expected_purchases": -np.log(p)},
                     index=pd.Index([f"c{i:05d}" for i in range(n)], name="customer_id"))  # fmt: skip
    y = pd.Series((rng.uniform(size=n) < expit(2.0 * logit(p) - 0.5)).astype(np.int8), index=X.index)
    for name in ("p_no_purchase", "expected_purchases"):  # exp(-(-log p)) = p: both see the same probability
        model = CalibratedBaseline(name).fit(X, y)
        assert model.calibrated_ and model.a_ == pytest.approx(2.0, abs=0.1) and model.b_ == pytest.approx(-0.5, abs=0.1)
        calibrated = model.predict_churn_probability(X)
        assert metrics.roc_auc(y, calibrated) == metrics.roc_auc(y, p)  # an increasing map keeps every rank
        assert metrics.brier(y, calibrated) < metrics.brier(y, p)
        restored = pickle.loads(pickle.dumps(model))
        assert restored.predict_churn_probability(X).tobytes() == calibrated.tobytes()
    one_class = CalibratedBaseline("p_no_purchase").fit(X, pd.Series(1, index=X.index))
    assert not one_class.calibrated_ and (one_class.a_, one_class.b_) == (1.0, 0.0)
    np.testing.assert_allclose(one_class.predict_churn_probability(X), p, rtol=1e-12)
    with pytest.raises(ValueError, match="baseline must be one of"):
        CalibratedBaseline("recency").fit(X, y)


# --------------------------------------------------------------------------- the stage


def _params(root, **lightgbm) -> Path:
    """The stage tests' params.yaml with these churn.lightgbm settings."""
    target = write_params(root)
    raw = yaml.safe_load(target.read_text())
    raw["churn"]["lightgbm"].update(lightgbm)
    target.write_text(yaml.safe_dump(raw, sort_keys=False))
    return target


def test_a_constant_classifier_exports_the_calibrated_baseline_everywhere(project):  # noqa: F811
    # a leaf minimum above the number of customers: LightGBM cannot split and, not boosted from the
    # CLV model, the classifier is constant
    paths = project
    params = load_params(_params(paths.root, min_child_samples=5000, min_child_share=None, boost_from=None))
    churn.run(params, paths)

    summary = files.read_json(paths.metrics_file("churn"))
    best = summary["comparison"]["best_baseline_by_auc"].removeprefix("baseline_")
    assert summary["churn_source"] == f"baseline:{best}"
    assert summary["churn_source_reason"].startswith("the classifier's churn probability is constant at t0")
    assert summary["final_model"]["min_child_samples"] == 5000
    calibration = summary["exported"]["baseline_calibration"]
    assert calibration["method"] == "sigmoid" and calibration["a"] > 0

    t1, t0 = churn.load_snapshot(paths, params, 1), churn.load_snapshot(paths, params, 0)
    expected = CalibratedBaseline(best).fit(t1.X, t1.y).predict_churn_probability(t0.X)
    written = pd.read_parquet(paths.churn_predictions_at(0))
    assert written["churn_probability"].to_numpy().tobytes() == expected.tobytes()
    assert not is_constant(expected)
    # t1: out of sample (the baseline calibrated at t2, applied at t1), as the classifier's was
    t2 = churn.load_snapshot(paths, params, 2)
    out_of_time = CalibratedBaseline(best).fit(t2.X, t2.y).predict_churn_probability(t1.X)
    assert pd.read_parquet(paths.churn_predictions_at(1))["churn_probability"].to_numpy().tobytes() == out_of_time.tobytes()
    assert summary["exported"]["test"]["roc_auc"] == pytest.approx(summary["comparison"]["best_baseline_auc"])

    # what segment and serving load is the exported model, and it answers like the batch
    with open(paths.path("churn_model"), "rb") as fh:
        assert isinstance(pickle.load(fh), CalibratedBaseline)
    assert files.read_json(paths.path("churn_features"))["churn_source"] == f"baseline:{best}"
    registration = files.read_json(paths.registration_file(paths.CHURN_MODEL_DIR))
    served = mlflow.pyfunc.load_model(f"models:/cvp-churn/{registration['version']}").predict(t0.X.reset_index(drop=True))
    assert served["churn_probability"].to_numpy().tobytes() == expected.tobytes()
    assert mlflow.get_run(registration["run_id"]).data.tags["cvp.churn_source"] == f"baseline:{best}"


def _relabel(paths, k: int, retained: int) -> None:
    """Labels at t_k with exactly ``retained`` customers who bought in the window (the first ones)."""
    labels = pd.read_parquet(paths.labels_at(k))
    purchased = np.zeros(len(labels), dtype="int8")
    purchased[:retained] = 1
    files.write_parquet(labels.assign(purchased=purchased, n_purchase_days=purchased.astype("int64")), paths.labels_at(k))


@pytest.mark.parametrize("retained", [0, 1])
def test_one_sided_labels_at_t1_stop_with_one_line(project, retained):  # noqa: F811
    """One class, or one member of a class (the 2099 typo row): a one-line stop naming the param."""
    paths = project
    params = load_params(write_params(paths.root))
    _relabel(paths, 1, retained)
    t1 = churn.load_snapshot(paths, params, 1)
    with pytest.raises(DataError) as err:
        churn.run(params, paths)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{paths.labels_at(1)}: {retained} retained and {len(t1.y) - retained} churned customers")
    assert "fewer than churn.min_class_customers=5 of each" in message and "data.horizon_days" in message
    assert not paths.churn_predictions_at(0).exists()


def test_the_cli_prints_the_one_line_and_exits_2(project):  # noqa: F811
    """`cvp churn`'s entry point in this process (tests/inprocess.py; tests/test_cli.py runs the
    installed command for the same one-line contract)."""
    write_params(project.root)
    _relabel(project, 1, 1)
    done = inprocess.cvp(project.root, "churn")
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("cvp: error:")]
    assert len(errors) == 1 and "churn.min_class_customers" in errors[0]
    assert errors[0].startswith("cvp: error: data/features/labels_t1.parquet: 1 retained and ")  # relative to the project


def test_one_sided_labels_at_t2_fall_back_to_the_grouped_split(project):  # noqa: F811
    paths = project
    params = load_params(write_params(paths.root))
    _relabel(paths, 2, 1)
    ev = churn.evaluate(params, paths, churn.load_snapshot(paths, params, 1))
    assert ev.mode == "grouped_split"
    assert ev.reason.startswith(f"{paths.labels_at(2)}: 1 retained and ")


def test_a_tiny_base_completes_with_a_varying_score(project):  # noqa: F811
    """40 customers at t1 with a handful retained: grouped split, trees that split, a score that varies."""
    paths = project
    for k in (0, 1, 2):
        for path in (paths.features_at(k), paths.clv_predictions_at(k), *([paths.labels_at(k)] if k else [])):
            frame = pd.read_parquet(path)
            files.write_parquet(frame[frame["customer_id"].isin(sorted(frame["customer_id"])[:40])], path)
    params = load_params(_params(paths.root, min_child_samples=300))
    churn.run(params, paths)
    summary = files.read_json(paths.metrics_file("churn"))
    assert summary["evaluation"] == "grouped_split" and summary["final_model"]["n_train"] == 40
    assert summary["final_model"]["min_child_samples"] == MIN_CHILD_FLOOR  # 0.05 * 40 = 2 -> the floor
    assert summary["churn_source"] in ("classifier", "baseline:p_no_purchase", "baseline:expected_purchases")
    assert not is_constant(pd.read_parquet(paths.churn_predictions_at(0))["churn_probability"].to_numpy())


def test_a_constant_classifier_and_a_constant_baseline_stop_with_one_line(project):  # noqa: F811
    """Nothing that tells customers apart: no constant is exported, the stage stops."""
    paths = project
    params = load_params(_params(paths.root, min_child_samples=5000, min_child_share=None))
    for k in (0, 1, 2):
        clv = pd.read_parquet(paths.clv_predictions_at(k))
        files.write_parquet(clv.assign(p_no_purchase=0.8, expected_purchases=0.25), paths.clv_predictions_at(k))
    with pytest.raises(DataError) as err:
        churn.run(params, paths)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{paths.clv_predictions_at(0)}: the churn classifier is not usable (the classifier's "
                              "churn probability is constant at t0")  # fmt: skip
    assert "gives every customer the same churn probability" in message
    assert not paths.churn_predictions_at(0).exists()
