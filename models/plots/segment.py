"""Figures of the segment stage (plots/segment/*.png): the value-potential matrix, the Lorenz
curve of value, customers and value by quadrant, and the lifecycle states."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from models import segments as seg

QUADRANT_COLOURS = {"I": "#7f7f7f", "II": "#1f77b4", "III": "#ff7f0e", "IV": "#2ca02c"}


def quadrant_scatter(labelled: pd.DataFrame, cv_cut: float, gp_cut: float, seed: int, sample_size: int) -> Figure:
    """Current value vs growth potential on symmetric-log axes (linear near 0, so zero and
    negative values show), coloured by quadrant, with the two cut lines. Above ``sample_size``
    customers the dots are a seeded random sample of that many (counts in the legend stay whole)."""
    points = labelled
    if len(points) > sample_size:
        points = points.sample(sample_size, random_state=seed)
    positive = np.concatenate([points["current_value"].to_numpy(), points["growth_potential"].to_numpy()])
    positive = positive[positive > 0]
    linthresh = float(np.quantile(positive, 0.05)) if len(positive) else 1.0
    fig = Figure(figsize=(7, 6))
    ax = fig.subplots()
    for quadrant in seg.QUADRANTS:
        part = points[points["quadrant"] == quadrant]
        ax.scatter(part["current_value"], part["growth_potential"], s=4, alpha=0.4, c=QUADRANT_COLOURS[quadrant],
                   label=f"{quadrant} ({(labelled['quadrant'] == quadrant).sum():,})", rasterized=True)
    ax.set_xscale("symlog", linthresh=linthresh)
    ax.set_yscale("symlog", linthresh=linthresh)
    ax.axvline(cv_cut, color="black", lw=1, ls="--", zorder=0)
    ax.axhline(gp_cut, color="black", lw=1, ls="--", zorder=0)
    at_zero = int((labelled["current_value"] == 0).sum())
    if at_zero:
        ax.annotate(f"{at_zero:,} customers at current value 0\n(no purchase in the last horizon)",
                    xy=(0.15, 0.98), xycoords="axes fraction", va="top", fontsize=8)
    ax.set_xlabel(f"current value (margin, last horizon; symlog, linear below {linthresh:.3g})")
    ax.set_ylabel("growth potential (predicted margin, next horizon; symlog)")
    ax.set_title(f"Value-potential matrix: cuts at {cv_cut:.3g} / {gp_cut:.3g}")
    ax.legend(title="quadrant (customers)", loc="lower right", markerscale=3)
    return fig


def lorenz(curve: pd.DataFrame, conc: dict) -> Figure:
    """The Lorenz curve (:func:`models.segments.lorenz_curve`) against equal value, with the Gini
    coefficient and the top share's value in the title (``conc``: :func:`models.segments.concentration`)."""
    fig = Figure(figsize=(6, 6))
    ax = fig.subplots()
    ax.plot(curve["share_of_customers"], curve["share_of_value"], lw=2, label="Lorenz curve")
    ax.plot([0, 1], [0, 1], color="grey", ls="--", label="equal value")
    ax.set_xlabel("share of customers (least valuable first)")
    ax.set_ylabel("share of value")
    ax.set_title(f"Gini {conc['gini']:.3f}; top {conc['top_share']:.0%} hold {conc['top_share_of_value']:.1%} of value")
    ax.legend(loc="upper left")
    return fig


def value_by_quadrant(summary: pd.DataFrame) -> Figure:
    """Shares of customers, current and predicted value per quadrant (``summary``:
    :func:`models.segments.summarise_segments`)."""
    part = summary[summary["group_by"] == "quadrant"].set_index("segment").reindex(seg.QUADRANTS)
    shares = {
        "customers": part["share_of_customers"],
        "current value": part["share_of_current_value"],
        "predicted value": part["share_of_predicted_value"],
    }
    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    x = np.arange(len(seg.QUADRANTS))
    for i, (name, values) in enumerate(shares.items()):
        ax.bar(x + (i - 1) * 0.27, values.fillna(0.0), width=0.27, label=name)
    ax.set_xticks(x, [f"{q}\n{seg.QUADRANT_STRATEGY[q][0]}" for q in seg.QUADRANTS], fontsize=9)
    ax.set_ylabel("share of total")
    ax.set_title("Customers and value by quadrant")
    ax.legend()
    return fig


def lifecycle(labelled: pd.DataFrame) -> Figure:
    """Customers per lifecycle state and their mean churn probability, side by side."""
    grouped = labelled.groupby("lifecycle_state")
    counts = grouped.size().reindex(seg.LIFECYCLE_STATES, fill_value=0)
    churn = grouped["churn_probability"].mean().reindex(seg.LIFECYCLE_STATES)
    fig = Figure(figsize=(9, 4))
    left, right = fig.subplots(1, 2)
    left.bar(seg.LIFECYCLE_STATES, counts.to_numpy(), color="#1f77b4")
    left.set_title("customers per lifecycle state")
    right.bar(seg.LIFECYCLE_STATES, churn.fillna(0.0).to_numpy(), color="#d62728")
    right.set_ylim(0, 1)
    right.set_title("mean churn probability")
    for ax in (left, right):
        ax.tick_params(axis="x", labelrotation=30)
    fig.tight_layout()
    return fig


def figures(
    result: seg.SegmentResult, summary: pd.DataFrame, curve: pd.DataFrame, conc: dict, seed: int, scatter_sample_size: int
) -> dict[str, Figure]:
    """Every figure of the stage by file stem (``scatter_sample_size``: see :func:`quadrant_scatter`)."""
    labelled = result.customers
    return {
        "quadrant_scatter": quadrant_scatter(
            labelled, result.current_value_cut, result.growth_potential_cut, seed, scatter_sample_size
        ),
        "lorenz": lorenz(curve, conc),
        "value_by_quadrant": value_by_quadrant(summary),
        "lifecycle": lifecycle(labelled),
    }
