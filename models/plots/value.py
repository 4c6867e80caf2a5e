"""Figure of the value stage (plots/value/decile_calibration.png): mean predicted vs realised
next-horizon value per predicted decile, for each forecast compared on the holdout."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure


def decile_calibration(table: pd.DataFrame, note: str | None = None) -> Figure:
    """One line per forecast (dashed: predicted, solid: realised) over the predicted deciles;
    ``note`` (e.g. why there is no holdout) replaces the lines when the table is empty."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    if table.empty:
        ax.text(0.5, 0.5, note or "no holdout evaluation", ha="center", va="center", wrap=True, transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    for i, (name, part) in enumerate(table.groupby("forecast", sort=False)):
        colour = f"C{i}"
        ax.plot(part["decile"], part["mean_realised"], color=colour, marker="o", label=f"{name}: realised")
        ax.plot(part["decile"], part["mean_predicted"], color=colour, ls="--", label=f"{name}: predicted")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_xticks(range(1, 11))
    ax.set_xlabel("predicted decile (1 = highest predictions)")
    ax.set_ylabel("mean value per customer (margin, next horizon; symlog)")
    ax.set_title("Decile calibration on the holdout")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig
