"""Figures of the CLV stage: holdout calibration, tracking, frequency x recency heatmaps and the
model-vs-baseline gains curve.

Pure functions from the tables of :mod:`models.clv_eval` to matplotlib Figures (Agg, no global
pyplot state); the stage saves them with pipelines.files.save_figure.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator


def figures(evaluation: dict, tracking_table: pd.DataFrame, matrices: tuple[pd.DataFrame, pd.DataFrame, float],
            model: str, calibration_end: pd.Timestamp, time_unit: str, horizon_days: int) -> dict[str, Figure]:  # fmt: skip
    """Every figure of the stage by file stem. ``evaluation``: :func:`models.clv_eval.evaluate`'s
    result; ``matrices``: (expected purchases, P(alive), largest T) of
    :func:`models.clv_eval.purchase_matrices`; ``time_unit``: "W" (weeks) or "D" (days)."""
    expected, alive, t_max = matrices
    unit = "weeks" if time_unit == "W" else "days"
    title = f"Expected purchase days in the next {horizon_days} days ({model})"
    return {
        "calibration_holdout": calibration_holdout(evaluation["calibration"], model),
        "tracking": tracking(tracking_table, calibration_end, model),
        "frequency_recency": heatmap(expected, title, "expected purchase days", t_max, unit),
        "p_alive_matrix": heatmap(alive, f"P(alive) ({model})", "P(alive)", t_max, unit),
        "model_vs_baseline": model_vs_baseline(evaluation["gains"], evaluation["summary"]["ranking"]),
    }


def calibration_holdout(table: pd.DataFrame, model: str) -> Figure:
    """Mean actual vs predicted holdout purchases by calibration frequency (0..7+)."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    x = np.arange(len(table))
    ax.plot(x, table["actual_mean"], marker="o", label="actual")
    ax.plot(x, table["predicted_mean"], marker="s", linestyle="--", label=f"predicted ({model})")
    for xi, n in zip(x, table["n_customers"]):
        ax.annotate(f"n={n}", (xi, 0), xytext=(0, 2), textcoords="offset points", ha="center", fontsize=7, color="grey")
    ax.set_xticks(x, table["frequency_bin"])
    ax.set_xlabel("repeat purchase days in the calibration period")
    ax.set_ylabel("mean purchase days in the holdout window")
    ax.set_title("Calibration vs holdout purchases")
    ax.legend()
    fig.tight_layout()
    return fig


def tracking(table: pd.DataFrame, calibration_end: pd.Timestamp, model: str) -> Figure:
    """Cumulative repeat purchases by week, actual vs model, with the calibration end marked."""
    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    ax.plot(table["date"], table["actual_cumulative"], label="actual")
    ax.plot(table["date"], table["expected_cumulative"], linestyle="--", label=f"model ({model})")
    ax.axvline(calibration_end, color="grey", linestyle=":", label="calibration end")
    ax.set_xlabel("date")
    ax.set_ylabel("cumulative repeat purchase days")
    ax.set_title("Tracking: cumulative repeat purchases")
    ax.legend()
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig


def heatmap(matrix: pd.DataFrame, title: str, colorbar_label: str, T: float, unit: str) -> Figure:
    """Frequency (rows, top = highest) x recency (columns) heatmap of one model output."""
    fig = Figure(figsize=(8, 5.5))
    ax = fig.subplots()
    values = matrix.to_numpy()[::-1]
    r, f = matrix.columns.to_numpy(dtype=float), matrix.index.to_numpy(dtype=float)
    extent = (r[0] - 0.5, r[-1] + 0.5, f[0] - 0.5, f[-1] + 0.5)
    image = ax.imshow(values, aspect="auto", interpolation="nearest", extent=extent)
    fig.colorbar(image, ax=ax, label=colorbar_label)
    ax.set_xlabel(f"recency ({unit}; age at last purchase)")
    ax.set_ylabel("frequency (repeat purchase days)")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"{title}\ncustomer age T = {T:.1f} {unit}")
    fig.tight_layout()
    return fig


def model_vs_baseline(gains: pd.DataFrame, ranking: dict) -> Figure:
    """Share of holdout spend captured by the top x% of customers, by model clv, baseline and oracle."""
    fig = Figure(figsize=(6.5, 5))
    ax = fig.subplots()
    share = np.r_[0.0, gains["customer_share"]]
    for name, style in (("model", "-"), ("baseline", "--"), ("oracle", ":")):
        rho = ranking.get(name, {}).get("spearman_rho")
        label = name if rho is None else f"{name} (Spearman rho {rho:.3f})"
        ax.plot(share, np.r_[0.0, gains[name]], linestyle=style, label=label)
    ax.plot([0, 1], [0, 1], color="lightgrey", linewidth=0.8, label="random")
    ax.set_xlabel("share of customers (ranked by score)")
    ax.set_ylabel("share of holdout spend captured")
    ax.set_title("Model CLV vs quick estimate (T/t)*s")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig
