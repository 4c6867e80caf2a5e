"""Figure of `cvp backtest`: the holdout metrics over the as_of dates.

A pure function from the backtest table (:func:`models.backtest.metrics_row` rows) to a
matplotlib Figure (no global pyplot state); the command saves it with pipelines.files.save_figure.
"""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

#: (title, column prefix, column suffix) of each panel; a line per column between the two.
PANELS = (
    ("CLV holdout purchases MAE", "clv_", "_purchases_mae"),
    ("CLV Spearman rho (CLV vs holdout spend)", "clv_", "_spearman_rho"),
    ("churn ROC-AUC", "churn_", "_roc_auc"),
    ("churn Brier score", "churn_", "_brier"),
)


def metrics_over_time(table: pd.DataFrame) -> Figure:
    """Four panels over as_of: CLV purchases MAE, CLV Spearman, churn ROC-AUC, churn Brier; one
    line per model or baseline with a value at some date."""
    x = pd.to_datetime(table["as_of"])
    fig = Figure(figsize=(12, 8))
    for ax, (title, prefix, suffix) in zip(fig.subplots(2, 2).flat, PANELS):
        for column in table.columns:
            if column.startswith(prefix) and column.endswith(suffix) and table[column].notna().any():
                ax.plot(x, table[column], marker="o", label=column[len(prefix) : -len(suffix)])
        ax.set_title(title)
        ax.set_xlabel("as_of")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig
