"""Figures of the churn stage: ROC, precision-recall, reliability, gains/lift, importance and SHAP.

Pure functions from the tables of :func:`models.churn_eval.plot_tables` (and the metrics of
the evaluation) to matplotlib Figures; the stage saves them with pipelines.files.save_figure.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from models.churn import Scored

LABELS = {
    "classifier_raw": "LightGBM (raw)",
    "classifier_calibrated": "LightGBM (calibrated)",
    "baseline_p_no_purchase": "CLV: P(no purchase)",
    "baseline_expected_purchases": "CLV: expected purchases",
    "baseline_recency": "recency (days since last)",
    "diagnostic_p_alive": "1 - P(alive) (diagnostic)",
}
STYLES = {
    "classifier_raw": {"color": "tab:blue", "linestyle": "--"},
    "classifier_calibrated": {"color": "tab:blue", "linestyle": "-", "linewidth": 2},
    "baseline_p_no_purchase": {"color": "tab:orange"},
    "baseline_expected_purchases": {"color": "tab:green"},
    "baseline_recency": {"color": "tab:purple"},
    "diagnostic_p_alive": {"color": "tab:gray", "linestyle": ":"},
}
SHAP_SCATTER_MAX = 2000  # customers drawn in the SHAP scatter (a seeded sample when more)


def roc_figure(roc: pd.DataFrame, results: dict[str, dict]) -> Figure:
    """ROC curve of every model on the test customers, with its AUC in the legend."""
    fig = Figure(figsize=(6, 5.5), layout="constrained")
    ax = fig.add_subplot()
    for name, curve in roc.groupby("model", sort=False):
        ax.plot(curve["fpr"], curve["tpr"], label=f"{LABELS[name]}  AUC {results[name]['roc_auc']:.3f}", **STYLES[name])
    ax.plot([0, 1], [0, 1], color="black", linewidth=0.7, alpha=0.5)
    ax.set(xlabel="false positive rate (retained flagged as churn)", ylabel="true positive rate (churners found)",
           title="ROC on the test customers")
    ax.legend(fontsize=8, loc="lower right")
    return fig


def precision_recall_figure(pr: pd.DataFrame, results: dict[str, dict], base_rate: float) -> Figure:
    """Interpolated precision-recall of every model, with the test churn rate as the floor."""
    fig = Figure(figsize=(6, 5.5), layout="constrained")
    ax = fig.add_subplot()
    for name, curve in pr.groupby("model", sort=False):
        ax.plot(curve["recall"], curve["precision"], label=f"{LABELS[name]}  AP {results[name]['average_precision']:.3f}",
                **STYLES[name])
    ax.axhline(base_rate, color="black", linewidth=0.7, alpha=0.5, label=f"churn rate {base_rate:.3f}")
    ax.set(xlabel="recall (share of churners found)", ylabel="precision (share of flagged who churn)",
           title="Precision-recall (interpolated)", ylim=(max(0.0, base_rate - 0.1), 1.01))
    ax.legend(fontsize=8, loc="lower left")
    return fig


def calibration_figure(calibration: pd.DataFrame, results: dict[str, dict], scored: dict[str, Scored]) -> Figure:
    """Reliability curves (10 bins) over histograms of the calibrated classifier's and the CLV
    model's churn probabilities."""
    fig = Figure(figsize=(6.5, 7.5), layout="constrained")
    ax, hist = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    ax.plot([0, 1], [0, 1], color="black", linewidth=0.7, alpha=0.5, label="perfect calibration")
    for name, curve in calibration.groupby("model", sort=False):
        ax.plot(curve["mean_predicted"], curve["fraction_positive"], marker="o", markersize=3,
                label=f"{LABELS[name]}  Brier {results[name]['brier']:.4f}", **STYLES[name])
    ax.set(ylabel="observed churn rate", title="Reliability (10 equal-width bins) on the test customers")
    ax.legend(fontsize=8, loc="upper left")
    bins = np.linspace(0, 1, 21)
    for name in ("classifier_calibrated", "baseline_p_no_purchase"):
        hist.hist(scored[name].probability, bins=bins, histtype="step", color=STYLES[name]["color"], label=LABELS[name])
    hist.set(xlabel="predicted churn probability", ylabel="customers")
    hist.legend(fontsize=8, loc="upper left")
    return fig


def lift_figure(gains: pd.DataFrame) -> Figure:
    """Cumulative gains and cumulative lift by share of customers targeted."""
    fig = Figure(figsize=(11, 4.8), layout="constrained")
    cap, lift = fig.subplots(1, 2)
    for name, curve in gains.groupby("model", sort=False):
        share = np.r_[0.0, curve["share_targeted"]]
        cap.plot(share, np.r_[0.0, curve["capture"]], label=LABELS[name], **STYLES[name])
        lift.plot(curve["share_targeted"], curve["lift"], marker="o", markersize=3, label=LABELS[name], **STYLES[name])
    cap.plot([0, 1], [0, 1], color="black", linewidth=0.7, alpha=0.5)
    cap.set(xlabel="share of customers targeted (highest churn score first)", ylabel="share of churners captured",
            title="Cumulative gains")
    lift.axhline(1.0, color="black", linewidth=0.7, alpha=0.5)
    lift.set(xlabel="share of customers targeted", ylabel="cumulative lift (churn rate / overall)", title="Cumulative lift")
    cap.legend(fontsize=8, loc="lower right")
    return fig


def importance_figure(importance: pd.DataFrame, top: int) -> Figure:
    """The ``top`` features by share of total gain."""
    head = importance.head(top).iloc[::-1]
    fig = Figure(figsize=(7, 0.35 * len(head) + 1.5), layout="constrained")
    ax = fig.add_subplot()
    ax.barh(head["feature"], head["gain"] / importance["gain"].sum(), color="tab:blue")
    ax.set(xlabel="share of total gain", title=f"Top {len(head)} features by gain (final model)")
    return fig


def shap_summary_figure(importance: pd.DataFrame, shap: pd.DataFrame, X: pd.DataFrame, top: int, seed: int) -> Figure:
    """Mean |SHAP| bars and a beeswarm-like scatter (x = SHAP, colour = feature value rank)."""
    order = importance.sort_values(["mean_abs_shap", "feature"], ascending=[False, True]).head(top)["feature"].tolist()[::-1]
    rows = shap.index  # already a sample of the scored customers
    if len(rows) > SHAP_SCATTER_MAX:
        rows = pd.Index(np.sort(np.random.default_rng(seed).choice(rows.to_numpy(), SHAP_SCATTER_MAX, replace=False)))
    rng = np.random.default_rng(seed)
    fig = Figure(figsize=(12, 0.4 * len(order) + 1.8), layout="constrained")
    bar, swarm = fig.subplots(1, 2, width_ratios=[1, 1.6], sharey=True)
    bar.barh(order, [shap[f].abs().mean() for f in order], color="tab:blue")
    bar.set(xlabel="mean |SHAP| (log-odds of churn)", title="Feature impact (final model, scored customers)")
    for i, feature in enumerate(order):
        values = shap.loc[rows, feature].to_numpy()
        raw = pd.to_numeric(X.loc[rows, feature], errors="coerce")
        colour = raw.rank(pct=True).fillna(0.5).to_numpy()
        swarm.scatter(values, i + rng.uniform(-0.3, 0.3, len(values)), c=colour, cmap="coolwarm", s=4, alpha=0.6,
                      vmin=0, vmax=1, rasterized=True)
    swarm.axvline(0, color="black", linewidth=0.7)
    swarm.set(xlabel="SHAP value (log-odds; > 0 pushes towards churn)", title="Per-customer SHAP (red = high value)")
    return fig


def figures(tables: dict[str, pd.DataFrame], results: dict[str, dict], scored: dict[str, Scored], y: np.ndarray,
            shap: pd.DataFrame, X: pd.DataFrame, top: int, seed: int) -> dict[str, Figure]:  # fmt: skip
    """Every churn figure by file name (plots/churn/<name>): ``tables`` from plot_tables, ``results``
    and ``scored`` of the evaluation, ``y`` its test labels, ``shap`` and ``X`` of the scored customers."""
    return {
        "roc.png": roc_figure(tables["roc"], results),
        "precision_recall.png": precision_recall_figure(tables["pr"], results, float(y.mean())),
        "calibration.png": calibration_figure(tables["calibration"], results, scored),
        "lift.png": lift_figure(tables["lift"]),
        "feature_importance.png": importance_figure(tables["importance"], top),
        "shap_summary.png": shap_summary_figure(tables["importance"], shap, X, top, seed),
    }
