"""The CLV stage's figures (models/plots/clv.py) drawn from small hand-made tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from models import clv_eval
from models.plots import clv as clv_plots


def _inputs():
    calibration = clv_eval.calibration_holdout_table([0, 1, 2, 9], [0.1, 0.5, 1.0, 3.0], [0, 1, 1, 4])
    tracking = pd.DataFrame({"date": pd.date_range("2020-01-08", periods=3, freq="7D"),
                             "actual_cumulative": [1.0, 2.0, 4.0], "expected_cumulative": [1.2, 2.1, 3.5]})  # fmt: skip
    gains = clv_eval.gains_curve({"model": [3.0, 1.0, 2.0], "baseline": [1.0, 2.0, 3.0]}, [5.0, 0.0, 2.0], n_points=4)
    ranking = {"model": {"spearman_rho": 0.9}, "baseline": {"spearman_rho": -0.5}, "oracle": {}}
    evaluation = {"calibration": calibration, "gains": gains, "summary": {"ranking": ranking}}
    matrix = clv_eval.expectation_matrix(lambda f, r, T: f + r, [0, 1, 2], [0, 1, 2, 3], T=3.0)
    return evaluation, tracking, (matrix, matrix / 10, 3.0)


def test_figures_are_every_plot_of_the_stage_with_their_titles_and_units():
    evaluation, tracking, matrices = _inputs()
    figures = clv_plots.figures(evaluation, tracking, matrices, "mbgnbd", pd.Timestamp("2020-01-15"), "W", 91)
    assert list(figures) == ["calibration_holdout", "tracking", "frequency_recency", "p_alive_matrix", "model_vs_baseline"]
    assert all(isinstance(f, Figure) for f in figures.values())
    heat = figures["frequency_recency"].axes[0]
    assert heat.get_title() == "Expected purchase days in the next 91 days (mbgnbd)\ncustomer age T = 3.0 weeks"
    assert heat.get_xlabel() == "recency (weeks; age at last purchase)"
    assert figures["p_alive_matrix"].axes[0].get_title().startswith("P(alive) (mbgnbd)")
    in_days = clv_plots.figures(evaluation, tracking, matrices, "bgnbd", pd.Timestamp("2020-01-15"), "D", 30)
    assert in_days["frequency_recency"].axes[0].get_xlabel() == "recency (days; age at last purchase)"


def test_the_gains_legend_carries_each_spearman_rho_and_the_calibration_plot_its_counts():
    evaluation, tracking, matrices = _inputs()
    figures = clv_plots.figures(evaluation, tracking, matrices, "bgnbd", pd.Timestamp("2020-01-15"), "W", 91)
    legend = [t.get_text() for t in figures["model_vs_baseline"].axes[0].get_legend().get_texts()]
    assert legend == ["model (Spearman rho 0.900)", "baseline (Spearman rho -0.500)", "oracle", "random"]
    ax = figures["calibration_holdout"].axes[0]
    assert [t.get_text() for t in ax.texts] == [f"n={n}" for n in evaluation["calibration"]["n_customers"]]
    actual = ax.get_lines()[0].get_ydata()
    np.testing.assert_array_equal(actual, evaluation["calibration"]["actual_mean"].to_numpy())
    tracking_ax = figures["tracking"].axes[0]
    assert [line.get_label() for line in tracking_ax.get_lines()] == ["actual", "model (bgnbd)", "calibration end"]
