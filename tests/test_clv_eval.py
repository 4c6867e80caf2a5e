"""Holdout evaluation functions of the CLV stage, on small hand-computed examples."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from models import clv_eval


def test_prediction_errors_by_hand():
    out = clv_eval.prediction_errors([1, 2, 3], [1, 1, 5])  # differences 0, 1, -2
    assert out["n_customers"] == 3
    assert out["mae"] == pytest.approx(1.0)
    assert out["rmse"] == pytest.approx(math.sqrt(5 / 3))
    assert (out["total_predicted"], out["total_actual"]) == (6.0, 7.0)
    assert out["aggregate_error"] == pytest.approx(-1 / 7)


def test_prediction_errors_rejects_misaligned_inputs():
    with pytest.raises(ValueError, match="length"):
        clv_eval.prediction_errors([1, 2], [1, 2, 3])


def test_calibration_table_bins_zero_to_seven_plus():
    table = clv_eval.calibration_holdout_table(
        frequency=[0, 0, 1, 3, 7, 9, 12],
        predicted=[0.1, 0.3, 0.5, 1.0, 2.0, 3.0, 4.0],
        actual=[0, 1, 1, 0, 2, 4, 3],
    )
    assert list(table["frequency_bin"]) == ["0", "1", "2", "3", "4", "5", "6", "7+"]
    assert list(table["n_customers"]) == [2, 1, 0, 1, 0, 0, 0, 3]
    assert table.loc[0, "actual_mean"] == pytest.approx(0.5)
    assert table.loc[0, "predicted_mean"] == pytest.approx(0.2)
    assert table.loc[3, ["actual_mean", "predicted_mean"]].tolist() == pytest.approx([0.0, 1.0])
    assert table.loc[7, "actual_mean"] == pytest.approx(3.0)  # (2 + 4 + 3) / 3
    assert table.loc[7, "predicted_mean"] == pytest.approx(3.0)  # (2 + 3 + 4) / 3
    assert table.loc[2, ["actual_mean", "predicted_mean"]].isna().all()


def test_baseline_is_horizon_over_interval_times_spend():
    # known intervals 10, 30, 20 -> the one-time buyer takes their median, 20 days
    out = clv_eval.baseline_frame(ipi_mean=[10, np.nan, 30, 20], avg_spend=[5, 8, 10, 2], horizon_days=90, margin=0.5)
    assert out["interval_days"].tolist() == [10, 20, 30, 20]
    assert out["purchases"].tolist() == pytest.approx([9, 4.5, 3, 4.5])
    assert out["spend"].tolist() == pytest.approx([45, 36, 30, 9])
    assert out["clv"].tolist() == pytest.approx([22.5, 18, 15, 4.5])


def test_baseline_one_time_fallback_can_be_fixed():
    purchases = clv_eval.baseline_purchases([np.nan, 15], horizon_days=90, one_time_interval_days=45)
    assert purchases.tolist() == pytest.approx([2.0, 6.0])


def test_spearman_by_hand_without_and_with_ties():
    # rank differences 1, -1, 1, -1, 0: rho = 1 - 6 * 4 / (5 * 24) = 0.8
    assert clv_eval.spearman_rho([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)
    # tied scores get rank 2.5: Pearson of ranks = 4.5 / sqrt(4.5 * 5) = sqrt(0.9)
    assert clv_eval.spearman_rho([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(math.sqrt(0.9))
    assert math.isnan(clv_eval.spearman_rho([1, 1, 1], [1, 2, 3]))


def test_top_share_capture_by_hand():
    actual = [10, 0, 5, 0, 0, 20, 0, 1, 4, 0]  # total 40
    score = [9, 1, 8, 2, 3, 4, 5, 6, 7, 0]  # top 2 of 10 = customers 0 and 2
    assert clv_eval.top_share_capture(score, actual) == pytest.approx(15 / 40)
    assert clv_eval.top_share_capture(actual, actual) == pytest.approx(30 / 40)
    # 7 customers: the top group has ceil(1.4) = 2 customers; equal scores keep input order
    assert clv_eval.top_share_capture([1] * 7, [1, 2, 3, 4, 0, 0, 0]) == pytest.approx(3 / 10)
    assert math.isnan(clv_eval.top_share_capture([1, 2], [0, 0]))


def test_gains_curve_ends_at_one_and_oracle_dominates():
    actual = [10, 0, 5, 0, 0, 20, 0, 1, 4, 0]
    gains = clv_eval.gains_curve({"score": [9, 1, 8, 2, 3, 4, 5, 6, 7, 0]}, actual, n_points=5)
    assert gains["customer_share"].tolist() == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert gains["score"].tolist() == pytest.approx([15 / 40, 20 / 40, 40 / 40, 1.0, 1.0])
    assert (gains["oracle"] >= gains["score"]).all()
    assert gains["oracle"].iloc[-1] == pytest.approx(1.0)


def test_holdout_summary_by_hand():
    frame = pd.DataFrame(
        {
            "frequency": [3, 0, 1],
            "ipi_mean": [10.0, np.nan, 30.0],  # one-time buyer -> median 20 days
            "avg_spend": [5.0, 8.0, 10.0],
            "expected_purchases": [3.0, 0.5, 1.0],
            "expected_avg_spend": [6.0, 8.0, 9.0],
            "clv": [5.0, 1.0, 3.0],
            "actual_purchases": [4, 0, 2],
            "actual_spend": [25.0, 0.0, 18.0],
        }
    )
    out = clv_eval.holdout_summary(frame, horizon_days=60, margin=0.5)
    assert out["n_customers"] == 3 and out["n_one_time_buyers"] == 1
    assert out["baseline_one_time_interval_days"] == 20.0
    # baseline purchases 6, 3, 2; spend 30, 24, 20
    assert out["purchases"]["baseline"]["mae"] == pytest.approx(5 / 3)
    assert out["spend"]["baseline"]["mae"] == pytest.approx(31 / 3)
    # model spend 18, 4, 9 vs 25, 0, 18
    assert out["spend"]["model"]["mae"] == pytest.approx(20 / 3)
    assert out["purchases"]["model"]["mae"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert out["ranking"]["model"]["spearman_rho"] == pytest.approx(1.0)
    assert out["ranking"]["baseline"]["spearman_rho"] == pytest.approx(0.5)  # rank differences 0, 1, -1
    assert out["ranking"]["model"]["top20_capture"] == pytest.approx(25 / 43)
    assert out["ranking"]["oracle"]["top20_capture"] == pytest.approx(25 / 43)


def test_select_candidate_lowest_error_skipping_failures():
    assert clv_eval.select_candidate({"bgnbd": 0.5, "paretonbd": 0.4, "mbgnbd": None}) == "paretonbd"
    assert clv_eval.select_candidate({"bgnbd": float("nan"), "mbgnbd": 0.9}) == "mbgnbd"


def test_select_candidate_tie_goes_to_the_earlier_model():
    assert clv_eval.select_candidate({"mbgnbd": 0.4, "bgnbd": 0.4}) == "bgnbd"
    assert clv_eval.select_candidate({"mbgnbd": 0.4, "paretonbd": 0.4 + 1e-13}) == "paretonbd"
    assert clv_eval.select_candidate({"mbgnbd": 0.39, "paretonbd": 0.4}) == "mbgnbd"


def test_select_candidate_without_any_error_raises():
    with pytest.raises(ValueError, match="no candidate"):
        clv_eval.select_candidate({"bgnbd": None})


def test_repeat_purchase_days_follow_the_purchase_day_rules():
    d = pd.Timestamp("2020-01-01")
    tx = pd.DataFrame(
        {
            "customer_id": ["a", "a", "a", "a", "a", "b", "b", "b", "c"],
            "timestamp": [d, d + pd.Timedelta(hours=5), d + pd.Timedelta(days=2), d + pd.Timedelta(days=4, hours=3),
                          d + pd.Timedelta(days=8), d + pd.Timedelta(days=1), d + pd.Timedelta(days=1, hours=2),
                          d + pd.Timedelta(days=3), d + pd.Timedelta(days=3)],
            "amount": [10.0, 5.0, -2.0, 0.0, 7.0, 3.0, 1.0, 4.0, 9.0],
        }
    )  # fmt: skip
    first = pd.Series([d, d + pd.Timedelta(days=1)], index=["a", "b"])
    days = clv_eval.repeat_purchase_days(tx, first, end=d + pd.Timedelta(days=6))
    # a: the return-only day does not count, the zero-amount day does, day 8 is after the end;
    # b: two rows on the first day are one (first) purchase day; c is not a calibration customer
    assert days.tolist() == [d + pd.Timedelta(days=3), d + pd.Timedelta(days=4)]


def test_tracking_curve_by_hand():
    start = pd.Timestamp("2020-01-01")
    births = pd.Series([start, start, start + pd.Timedelta(days=7)])
    repeats = pd.Series([start + pd.Timedelta(days=n) for n in (3, 7, 10, 14, 20)])
    table = clv_eval.tracking_curve(births, repeats, lambda t: t, days_per_unit=7, end=start + pd.Timedelta(days=14))
    assert table["date"].tolist() == [start + pd.Timedelta(days=7), start + pd.Timedelta(days=14)]
    assert table["week"].tolist() == [1.0, 2.0]
    assert table["actual_cumulative"].tolist() == [2.0, 4.0]
    # E[X(age)] = age in weeks: day 7 -> 2 * 1 + 1 * 0; day 14 -> 2 * 2 + 1 * 1
    assert table["expected_cumulative"].tolist() == pytest.approx([2.0, 5.0])
    assert table["actual_incremental"].tolist() == [2.0, 2.0]
    assert table["expected_incremental"].tolist() == pytest.approx([2.0, 3.0])


def test_expectation_matrix_grid_and_mask():
    m = clv_eval.expectation_matrix(lambda f, r, T: f + 10 * r + 100 * T, [0, 1], [0, 1, 2], T=1.5)
    assert m.index.tolist() == [0, 1] and m.columns.tolist() == [0, 1, 2]
    assert m.loc[1, 1] == pytest.approx(1 + 10 + 150)
    assert m.loc[0, 0] == pytest.approx(150)
    assert m[2].isna().all()  # recency beyond T is impossible


def test_matrix_axes_limits():
    f, r, t_max = clv_eval.matrix_axes(frequency=[0, 0, 1, 2], T=[10.0, 20.5, 3.0, 1.0], max_columns=80)
    assert f.tolist() == [0, 1, 2]
    assert r.tolist() == list(range(21)) and t_max == 20.5
    _, r, _ = clv_eval.matrix_axes(frequency=[0], T=[500.0], max_columns=51)
    assert r[1] - r[0] == 10 and len(r) <= 51


# --------------------------------------------------------------------------- the stage's evaluation steps


def _holdout_inputs():
    features = pd.DataFrame(
        {
            "customer_id": ["a", "b", "c"],
            "frequency": [3, 0, 1],
            "ipi_mean": [10.0, np.nan, 30.0],
            "avg_spend": [5.0, 8.0, 10.0],
            "first_purchase": pd.to_datetime(["2020-01-01", "2020-01-01", "2020-01-08"]),
            "recency": [1.0, 0.0, 2.0],  # not carried into the holdout frame
        }
    )
    # predictions and labels in another customer order: the frame joins on customer_id
    predictions = pd.DataFrame(
        {
            "customer_id": ["c", "a", "b"],
            "expected_purchases": [1.0, 3.0, 0.5],
            "expected_avg_spend": [9.0, 6.0, 8.0],
            "clv": [3.0, 5.0, 1.0],
            "p_alive": [0.5, 0.9, 0.2],
        }
    )
    labels = pd.DataFrame({"customer_id": ["b", "c", "a"], "n_purchase_days": [0, 2, 4], "spend": [0.0, 18.0, 25.0],
                           "cutoff": pd.Timestamp("2020-03-31")})  # fmt: skip
    return features, predictions, labels


def test_holdout_frame_joins_features_predictions_and_labels_by_customer():
    features, predictions, labels = _holdout_inputs()
    frame = clv_eval.holdout_frame(features, predictions, labels)
    assert list(frame.columns) == ["customer_id", "frequency", "ipi_mean", "avg_spend", "expected_purchases",
                                   "expected_avg_spend", "clv", "actual_purchases", "actual_spend"]  # fmt: skip
    assert frame["customer_id"].tolist() == ["a", "b", "c"]  # the features' order
    assert frame["expected_purchases"].tolist() == [3.0, 0.5, 1.0]
    assert frame["actual_purchases"].tolist() == [4, 0, 2] and frame["actual_spend"].tolist() == [25.0, 0.0, 18.0]
    with pytest.raises(pd.errors.MergeError):  # a customer twice is a bug, not a silent duplicate row
        clv_eval.holdout_frame(features, pd.concat([predictions, predictions.head(1)]), labels)


def test_evaluate_reports_the_holdout_summary_calibration_and_gains():
    frame = clv_eval.holdout_frame(*_holdout_inputs())
    out = clv_eval.evaluate(frame, horizon_days=60, margin=0.5)
    assert {k: v for k, v in out["summary"].items() if k != "calibration"} == clv_eval.holdout_summary(frame, 60, 0.5)
    pd.testing.assert_frame_equal(pd.DataFrame(out["summary"]["calibration"]), out["calibration"])  # NaN-aware
    assert out["calibration"]["n_customers"].sum() == 3
    assert out["calibration"].loc[3, "actual_mean"] == 4.0
    assert list(out["gains"].columns[:1]) == ["customer_share"] and {"model", "baseline", "oracle"} <= set(out["gains"])
    assert out["gains"]["oracle"].iloc[-1] == pytest.approx(1.0)


def test_tracking_table_counts_the_customers_repeat_days_against_the_model():
    features, _, _ = _holdout_inputs()
    d = pd.Timestamp("2020-01-01")
    tx = pd.DataFrame({"customer_id": ["a", "a", "c", "z"], "timestamp": [d, d + pd.Timedelta(days=3),
                       d + pd.Timedelta(days=10), d + pd.Timedelta(days=2)], "amount": [1.0, 2.0, 3.0, 4.0]})  # fmt: skip

    class Linear:
        def expected_purchases_unconditional(self, t):
            return np.asarray(t, dtype=float)  # E[X(age)] = age in model units (weeks)

    table = clv_eval.tracking_table(features, tx, Linear(), d + pd.Timedelta(days=14), days_per_unit=7)
    assert table["date"].tolist() == [d + pd.Timedelta(days=7), d + pd.Timedelta(days=14)]
    assert table["actual_cumulative"].tolist() == [1.0, 2.0]  # a on day 3, c on day 10 (z is not a customer)
    assert table["expected_cumulative"].tolist() == pytest.approx([2.0, 5.0])  # two born day 0, one day 7


def test_plot_tables_are_named_and_rounded():
    evaluation = {"calibration": pd.DataFrame({"x": [1.0000000000000002]}), "gains": pd.DataFrame({"g": [0.5]})}
    report = {"candidates": {"bgnbd": {"status": "ok", "mae": 0.123456789012345, "rmse": 1.0, "aggregate_error": 0.0}}}
    tables = clv_eval.plot_tables(evaluation, pd.DataFrame({"t": [1 / 3]}), report)
    assert list(tables) == ["calibration_holdout", "tracking", "model_vs_baseline", "model_selection"]
    assert tables["calibration_holdout"]["x"].iloc[0] == 1.0 and tables["tracking"]["t"].iloc[0] == round(1 / 3, 10)
    assert tables["model_selection"]["mae"].iloc[0] == round(0.123456789012345, 10)
