"""The segment report: one self-contained HTML file (reports/segments.html) for business readers.

Everything is inline: figures are base64 PNG data URIs, the CSS sits in the page, there is no
script and no external URL, so the file can be mailed or opened offline. It is built from the
export frame plus what the other stages wrote (segment summary, metrics/*.json, plots/*/*.png);
a missing optional input shows as "not available" instead of stopping the export.
Section ids (``SECTIONS``) are stable: tests and links rely on them.
"""

from __future__ import annotations

import base64
import io as bytes_io
import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jinja2
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from models.scores import SCORE_COLUMNS
from models.segments import ABC_CLASSES, LIFECYCLE_STATES, PYRAMID_LEVELS, QUADRANT_STRATEGY, RELATIONSHIP_LEVELS
from pipelines import io, paths, tracking

log = logging.getLogger(__name__)

SECTIONS: tuple[tuple[str, str], ...] = (
    ("overview", "Overview"),
    ("quadrants", "Value-potential quadrants"),
    ("tiers", "Tiers, pyramid and lifecycle"),
    ("concentration", "Value concentration"),
    ("distributions", "Churn probability and CLV distributions"),
    ("model-evaluation", "Holdout evaluation of the models"),
    ("data-quality", "Data quality"),
    ("column-dictionary", "Column dictionary of the export"),
)
METRIC_STAGES = ("ingest", "features", "clv", "churn", "segment")
PLOT_STAGES = ("clv", "churn", "segment")

# Figures of other stages shown first in a section, in this order, with their captions; any
# other PNG of the same stage follows under its file name, so new plots are never lost.
KNOWN_FIGURES: dict[str, dict[str, str]] = {
    "segment": {
        "quadrant_scatter": "Current value vs growth potential, one dot per customer; dashed lines are the cuts.",
        "value_by_quadrant": "Share of customers, current value and predicted value per quadrant.",
        "lifecycle": "Customers per lifecycle state and their mean churn probability.",
        "lorenz": "Lorenz curve of customer value: how far value is from equally spread.",
    },
    "clv": {
        "tracking": "Tracking: cumulative repeat purchases, actual vs model, through the holdout window.",
        "calibration_holdout": "Mean holdout purchases by calibration-period frequency, actual vs predicted.",
        "model_vs_baseline": "Share of holdout spend captured by the top customers: model vs quick estimate.",
        "frequency_recency": "Expected purchase days in the next horizon by frequency and recency (model at as_of).",
        "p_alive_matrix": "P(alive) by frequency and recency (model at as_of).",
    },
    "churn": {
        "roc": "ROC curves of the churn classifier and the CLV-model baselines (test customers).",
        "calibration": "Calibration: predicted churn probability vs observed churn rate (test customers).",
        "precision_recall": "Precision-recall curves (test customers).",
        "lift": "Share of churners found in the top-scored customers (test customers).",
        "feature_importance": "Features the classifier relies on most (gain).",
        "shap_summary": "SHAP values of the top features at as_of: how each pushes the churn probability.",
    },
}
WIDE_FIGURES = {"lifecycle", "tracking", "lift", "shap_summary"}
FIGURE_SECTIONS = {
    "quadrant_scatter": "quadrants", "value_by_quadrant": "quadrants", "lifecycle": "tiers", "lorenz": "concentration",
}  # fmt: skip


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class ReportSources:
    """What the other stages wrote: segment summary (or None), metrics per stage ({} when
    missing) and the PNG bytes of each stage's plots by file stem."""

    summary: pd.DataFrame | None = None
    metrics: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    plots: Mapping[str, Mapping[str, bytes]] = field(default_factory=dict)


def load_sources() -> ReportSources:
    """Read the optional report inputs relative to the working directory; warn about missing ones."""
    summary = pd.read_parquet(paths.SEGMENT_SUMMARY) if paths.SEGMENT_SUMMARY.exists() else None
    if summary is None:
        log.warning("%s not found: the report shows no quadrant/tier tables", paths.SEGMENT_SUMMARY)
    metrics = {}
    for stage in METRIC_STAGES:
        path = paths.metrics_file(stage)
        try:
            metrics[stage] = io.read_json(path)
        except FileNotFoundError:
            log.warning("%s not found: its report section shows 'not available'", path)
        except ValueError as exc:
            log.warning("%s is not valid JSON (%s): its report section shows 'not available'", path, exc)
    plots = {
        stage: {png.stem: png.read_bytes() for png in sorted(paths.plots_dir(stage).glob("*.png"))}
        for stage in PLOT_STAGES
    }
    return ReportSources(summary, metrics, plots)


def dig(mapping: Mapping[str, Any] | None, *keys: str, default: Any = None) -> Any:
    """``mapping[k1][k2]...`` or ``default`` when any level is missing."""
    current: Any = mapping
    for key in keys:
        if not isinstance(current, Mapping) or key not in current:
            return default
        current = current[key]
    return current


# --------------------------------------------------------------------------- formatting


def fmt(value: Any) -> str:
    """A readable cell: thousands separators, 4 significant decimals below 1, '–' for missing."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 1:
            return f"{value:,.2f}"
        return f"{value:.4f}"
    return str(value)


def pct(value: Any) -> str:
    """A share as a percentage: 20%, 67.3%; '–' for missing."""
    if value is None or not isinstance(value, (int, float, np.number)) or not math.isfinite(float(value)):
        return "–"
    value = float(value)
    return f"{value:.0%}" if abs(value * 100 - round(value * 100)) < 1e-9 else f"{value:.1%}"


NUMERIC_CELL = re.compile(r"^(–|[-+]?[\d,]*\.?\d+%?)$")


@dataclass(frozen=True)
class Table:
    caption: str
    headers: Sequence[str]
    rows: Sequence[Sequence[str]]
    css_id: str = ""

    @property
    def numeric(self) -> list[bool]:
        """Per column: every body cell is a number, a percentage or '–' (right-aligned)."""
        return [all(NUMERIC_CELL.match(row[i]) for row in self.rows) for i in range(len(self.headers))]


@dataclass(frozen=True)
class Picture:
    name: str
    caption: str
    uri: str
    wide: bool = False  # shown larger (figures with two panels)


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def figure_png(fig: Figure) -> bytes:
    """PNG bytes of a figure, without software metadata (same figure -> same bytes)."""
    buffer = bytes_io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()


def flat_scalars(metrics: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) of every scalar leaf; lists (curves, tables) are left out."""
    return [(k, v) for k, v in tracking.flatten(prefix, dict(metrics)).items() if not isinstance(v, (list, dict))]


# --------------------------------------------------------------------------- notices

TOP_REJECTION_REASONS = 3  # reasons named in the rejected-share notice


@dataclass(frozen=True)
class Notice:
    """A line shown at the top of the report and in the run summary (``make run``)."""

    key: str  # stable id: rejected-share | churn-source
    level: str  # warning | note
    text: str


def rejected_share(ingest: Mapping[str, Any]) -> float | None:
    """Share of input rows ingest rejected: ``rejected_share``, else rows_rejected / rows_in
    (rows_in = accepted + rejected when absent); None when the counts are missing."""
    share = ingest.get("rejected_share")
    if isinstance(share, (int, float)) and not isinstance(share, bool):
        return float(share)
    rejected, accepted = ingest.get("rows_rejected"), ingest.get("rows_accepted")
    rows_in = ingest.get("rows_in")
    if not isinstance(rows_in, int) and isinstance(rejected, int) and isinstance(accepted, int):
        rows_in = accepted + rejected
    if not isinstance(rejected, int) or not isinstance(rows_in, int) or rows_in <= 0:
        return None
    return rejected / rows_in


def rejected_share_notice(ingest: Mapping[str, Any] | None) -> Notice | None:
    """A warning whenever ingest rejected any row: how many, the share and the top reasons."""
    share = rejected_share(ingest or {})
    if share is None or share <= 0:
        return None
    rejected, rows_in = ingest.get("rows_rejected"), ingest.get("rows_in")
    if not isinstance(rows_in, int):
        rows_in = ingest.get("rows_accepted", 0) + rejected
    reasons = ingest.get("rejected_by_reason")
    top = []
    if isinstance(reasons, Mapping):
        found = sorted(((n, r) for r, n in reasons.items() if isinstance(n, int) and n > 0), key=lambda x: (-x[0], x[1]))
        top = [f"{reason} {n:,}" for n, reason in found[:TOP_REJECTION_REASONS]]
    counts = f"{rejected:,} of {rows_in:,} input rows" if isinstance(rejected, int) else "input rows"
    why = f"; top reasons: {', '.join(top)}" if top else ""
    return Notice(
        "rejected-share", "warning",
        f"ingest rejected {counts} ({100 * share:.3g}%{why}); they are left out of every score and kept in "
        f"{paths.QUARANTINE}",
    )  # fmt: skip


def churn_source_notice(churn: Mapping[str, Any] | None) -> Notice | None:
    """Which churn probability was exported (metrics/churn.json ``churn_source``): a note for the
    classifier, a warning for a CLV baseline; None for metrics written before the guard existed."""
    source = dig(churn, "churn_source")
    if not isinstance(source, str):
        return None
    reason = dig(churn, "churn_source_reason", default="")
    if source == "classifier":
        return Notice("churn-source", "note", f"churn_probability from the classifier: {reason}")
    return Notice(
        "churn-source", "warning",
        f"churn_probability from {source} (calibrated on the training labels), not from the classifier: {reason}",
    )  # fmt: skip


def run_notices(metrics: Mapping[str, Mapping[str, Any]]) -> list[Notice]:
    """The notices of a run from the stages' metrics (by stage name), in display order."""
    found = (rejected_share_notice(metrics.get("ingest")), churn_source_notice(metrics.get("churn")))
    return [notice for notice in found if notice is not None]


# --------------------------------------------------------------------------- figures drawn here


def churn_histogram(scores: pd.DataFrame) -> Figure:
    """Customers by churn probability, 20 bins of 0.05."""
    fig = Figure(figsize=(6.4, 4))
    ax = fig.subplots()
    ax.hist(scores["churn_probability"], bins=np.linspace(0, 1, 21), color="#d62728", edgecolor="white")
    ax.axvline(scores["churn_probability"].mean(), color="black", ls="--", lw=1,
               label=f"mean {scores['churn_probability'].mean():.3f}")
    ax.set_xlabel("churn probability (no purchase in the next horizon)")
    ax.set_ylabel("customers")
    ax.set_title("Churn probability")
    ax.legend(loc="upper left")
    fig.tight_layout()
    return fig


def clv_histogram(scores: pd.DataFrame) -> Figure:
    """Customers by CLV; values above the 99th percentile are counted in the last bar."""
    values = scores["clv"].to_numpy(dtype=float)
    top = float(np.quantile(values, 0.99))
    low = float(min(values.min(), 0.0))
    fig = Figure(figsize=(6.4, 4))
    ax = fig.subplots()
    ax.hist(np.clip(values, low, top), bins=40, range=(low, top) if top > low else None, color="#1f77b4", edgecolor="white")
    ax.set_xlabel(f"CLV (discounted margin, next horizon); >= {top:,.2f} (99th pct) in the last bar")
    ax.set_ylabel("customers")
    ax.set_title(f"CLV: median {np.median(values):,.2f}, mean {values.mean():,.2f}")
    fig.tight_layout()
    return fig


def own_figures(scores: pd.DataFrame) -> dict[str, bytes]:
    """The figures the report draws from the export frame, as PNG bytes by name."""
    return {"churn_probability_hist": figure_png(churn_histogram(scores)), "clv_hist": figure_png(clv_histogram(scores))}


def stage_pictures(sources: ReportSources, stage: str, names: Iterable[str] | None = None) -> list[Picture]:
    """Pictures of a stage: ``names`` (known captions) if given, else every PNG not placed elsewhere."""
    available = sources.plots.get(stage, {})
    known = KNOWN_FIGURES.get(stage, {})
    if names is None:
        placed = set(FIGURE_SECTIONS) if stage == "segment" else set()
        ordered = [n for n in known if n in available and n not in placed]
        names = ordered + [n for n in available if n not in known and n not in placed]
    return [
        Picture(name, known.get(name, name.replace("_", " ")), data_uri(available[name]), wide=name in WIDE_FIGURES)
        for name in names
        if name in available
    ]


# --------------------------------------------------------------------------- tables


def summary_table(summary: pd.DataFrame | None, group_by: str, caption: str) -> Table | None:
    if summary is None or "group_by" not in summary.columns:
        return None
    part = summary[summary["group_by"] == group_by]
    headers = ["segment"]
    if group_by == "quadrant":
        headers += ["resource allocation", "retention strategy"]
    headers += [
        "customers", "share of customers", "current value", "predicted value", "share of value", "mean churn probability",
    ]  # fmt: skip
    rows = []
    for _, row in part.iterrows():
        cells = [str(row["segment"])]
        if group_by == "quadrant":
            cells += list(QUADRANT_STRATEGY.get(str(row["segment"]), ("–", "–")))
        cells += [
            fmt(row.get("customers")),
            pct(row.get("share_of_customers")),
            fmt(row.get("current_value")),
            fmt(row.get("predicted_value")),
            pct(row.get("share_of_value")),
            fmt(row.get("mean_churn_probability")),
        ]
        rows.append(cells)
    return Table(caption, headers, rows, css_id=f"{group_by}-table")


def label_table(scores: pd.DataFrame, column: str, labels: Sequence[str], caption: str) -> Table:
    """Customers, share, summed CLV and mean churn probability per label (every label listed)."""
    grouped = scores.groupby(column)
    total = len(scores)
    rows = []
    for label in labels:
        part = grouped.get_group(label) if label in grouped.groups else scores.iloc[0:0]
        rows.append([
            label, fmt(len(part)), pct(len(part) / total if total else None), fmt(float(part["clv"].sum())),
            fmt(float(part["churn_probability"].mean()) if len(part) else None),
        ])  # fmt: skip
    return Table(caption, [column.replace("_", " "), "customers", "share", "total CLV", "mean churn probability"], rows,
                 css_id=f"{column}-table")  # fmt: skip


def overview_table(scores: pd.DataFrame, sources: ReportSources) -> Table:
    conc = dig(sources.metrics.get("segment"), "concentration", default={})
    rows = [
        ["scoring date (as_of)", scores["as_of"].iloc[0].date().isoformat()],
        ["customers scored", fmt(len(scores))],
        ["model versions", str(scores["model_version"].iloc[0])],
        ["total CLV (next horizon)", fmt(float(scores["clv"].sum()))],
        ["total current value (last horizon)", fmt(float(scores["current_value"].sum()))],
        ["expected purchase days (next horizon)", fmt(float(scores["expected_purchases"].sum()))],
        ["mean P(alive)", fmt(float(scores["p_alive"].mean()))],
        ["mean churn probability", fmt(float(scores["churn_probability"].mean()))],
        ["customers in quadrant IV (top priority)", fmt(int((scores["quadrant"] == "IV").sum()))],
    ]
    if conc:
        share = conc.get("top_share")
        rows.append([f"value held by the top {pct(share)} of customers", pct(conc.get("top_share_of_value"))])
        rows.append(["Gini coefficient of value", fmt(conc.get("gini"))])
    targets = dig(sources.metrics.get("segment"), "reactivation_targets")
    if isinstance(targets, int):
        rows.append(["sleeping customers worth re-activating", fmt(targets)])
    return Table("Headline numbers", ["", "value"], rows, css_id="headline-table")


def matrix_table(blocks: Any, caption: str, first_header: str, css_id: str) -> Table | None:
    """{row: {measure: value}} as a table, one column per measure seen (scalar entries skipped)."""
    if not isinstance(blocks, Mapping):
        return None
    named = {name: values for name, values in blocks.items() if isinstance(values, Mapping)}
    if not named:
        return None
    measures = sorted({k for values in named.values() for k in values})
    rows = [[name, *[fmt(values.get(m)) for m in measures]] for name, values in named.items()]
    return Table(caption, [first_header, *[m.replace("_", " ") for m in measures]], rows, css_id=css_id)


def growth_ranking_table(segment_metrics: Mapping[str, Any] | None) -> Table | None:
    """The segment stage's holdout check: does the growth potential rank customers by what they spent?"""
    holdout = dig(segment_metrics, "holdout")
    caption = (f"Growth potential ranking of {fmt(dig(holdout, 'customers'))} customers by their spend after "
               f"{dig(holdout, 'cutoff', default='the holdout cutoff')} (combined = CLV x churn classifier)")  # fmt: skip
    return matrix_table(holdout, caption, "growth potential", "growth-ranking-table")


def cuts_table(segment_metrics: Mapping[str, Any] | None) -> Table | None:
    cuts = dig(segment_metrics, "cuts")
    if not isinstance(cuts, Mapping) or not cuts:
        return None
    rows = [
        ["current value", fmt(cuts.get("current_value")), pct(cuts.get("high_current_value_share"))],
        ["growth potential", fmt(cuts.get("growth_potential")), pct(cuts.get("high_growth_potential_share"))],
    ]
    caption = f"Cuts between low and high ({cuts.get('method', 'quantile')}; high = strictly above the cut)"
    return Table(caption, ["axis", "cut", "customers high"], rows, css_id="cuts-table")


def concentration_table(segment_metrics: Mapping[str, Any] | None) -> Table | None:
    conc = dig(segment_metrics, "concentration")
    if not conc:
        return None
    rows = [[f"share of value from the top {pct(conc.get('top_share'))}", pct(conc.get("top_share_of_value"))],
            ["Gini coefficient (0 = equal, 1 = one customer holds all)", fmt(conc.get("gini"))]]  # fmt: skip
    basis = dig(segment_metrics, "value_basis")
    if basis:
        rows.append(["value ranked", f"{basis} (segment.value_basis)"])
    return Table("Concentration of customer value", ["measure", "value"], rows, css_id="concentration-table")


def clv_tables(clv: Mapping[str, Any] | None) -> list[Table]:
    """Holdout errors (model vs quick estimate), ranking quality and the model choice."""
    if not clv:
        return []
    tables = []
    holdout = dig(clv, "holdout", default={})
    rows = []
    for quantity in ("purchases", "spend"):
        for who in ("model", "baseline"):
            errors = dig(holdout, quantity, who)
            if isinstance(errors, Mapping):
                rows.append([quantity, who, fmt(errors.get("mae")), fmt(errors.get("rmse")),
                             fmt(errors.get("total_predicted")), fmt(errors.get("total_actual")),
                             pct(errors.get("aggregate_error"))])  # fmt: skip
    if rows:
        caption = f"CLV holdout errors per customer ({fmt(holdout.get('n_customers'))} customers; baseline = (T/t) x s)"
        tables.append(Table(caption, ["quantity", "forecast", "MAE", "RMSE", "total predicted", "total actual", "aggregate error"],
                            rows, css_id="clv-holdout-table"))  # fmt: skip
    ranking = matrix_table(dig(holdout, "ranking"), "Ranking of customers by holdout spend", "forecast", "clv-ranking-table")
    if ranking:
        tables.append(ranking)
    candidates = dig(clv, "model_selection", "candidates", default={})
    if isinstance(candidates, Mapping) and candidates:
        chosen = dig(clv, "model_selection", "chosen")
        rows = [[name + (" (chosen)" if name == chosen else ""), str(dig(v, "status", default="")), fmt(dig(v, "mae")),
                 fmt(dig(v, "rmse")), pct(dig(v, "aggregate_error"))] for name, v in candidates.items()]  # fmt: skip
        tables.append(Table("Purchase-model candidates on the holdout", ["model", "status", "MAE", "RMSE", "aggregate error"],
                            rows, css_id="clv-selection-table"))  # fmt: skip
    return tables


CHURN_MEASURES = ("roc_auc", "average_precision", "brier", "log_loss", "top_decile_lift", "top_decile_capture")


def churn_tables(churn: Mapping[str, Any] | None) -> list[Table]:
    """Classifier vs CLV-model baselines on the test customers, and the two claims."""
    if not churn:
        return []
    tables = []
    models = dig(churn, "models", default={})
    if isinstance(models, Mapping) and models:
        rows = [[name, *[fmt(dig(v, m)) for m in CHURN_MEASURES]] for name, v in models.items()]
        caption = (f"Churn models on {fmt(dig(churn, 'n_test'))} test customers "
                   f"({dig(churn, 'evaluation', default='evaluation')}, test cutoff {dig(churn, 'test_cutoff', default='–')})")  # fmt: skip
        headers = ["model", *[m.replace("_", " ") for m in CHURN_MEASURES]]
        tables.append(Table(caption, headers, rows, css_id="churn-comparison-table"))
    comparison = dig(churn, "comparison", default={})
    if isinstance(comparison, Mapping) and comparison:
        rows = [[k.replace("_", " ").replace(".", ": "), fmt(v)] for k, v in tracking.flatten("", dict(comparison)).items()]
        tables.append(Table("Classifier vs best baseline", ["measure", "value"], rows, css_id="churn-claims-table"))
    return tables


def data_quality_tables(ingest: Mapping[str, Any] | None) -> list[Table]:
    """Rows accepted / rejected (with shares), rejections by reason and what was accepted."""
    if not ingest:
        return []
    tables = []
    accepted, rejected = ingest.get("rows_accepted"), ingest.get("rows_rejected")
    if isinstance(accepted, int) and isinstance(rejected, int):
        total = accepted + rejected
        rows = [["accepted", fmt(accepted), pct(accepted / total if total else None)],
                ["rejected (quarantined)", fmt(rejected), pct(rejected / total if total else None)],
                ["read", fmt(total), pct(1.0 if total else None)]]  # fmt: skip
        tables.append(Table(f"Input rows of {ingest.get('input', 'the source')}", ["rows", "count", "share"], rows,
                            css_id="ingest-rows-table"))  # fmt: skip
    reasons = ingest.get("rejected_by_reason")
    if isinstance(reasons, Mapping) and reasons:
        found = sorted(((r, n) for r, n in reasons.items() if n), key=lambda kv: (-kv[1], kv[0]))
        rows = [[str(reason).replace("_", " "), fmt(n)] for reason, n in found] or [["none", "0"]]
        tables.append(Table("Rejected rows by reason", ["reason", "rows"], rows, css_id="ingest-reasons-table"))
    shown = {"rows_accepted", "rows_rejected", "rows_in", "rejected_by_reason", "rejected_share", "input", "input_sha256"}
    rows = [[k.replace("_", " "), fmt(v)] for k, v in flat_scalars({k: v for k, v in ingest.items() if k not in shown})]
    if rows:
        tables.append(Table("Accepted transactions", ["measure", "value"], rows, css_id="ingest-summary-table"))
    return tables


def column_dictionary() -> Table:
    def allowed(c) -> str:
        return ", ".join(c.allowed) if c.allowed else ("[0, 1]" if c.unit_interval else "")

    rows = [[c.name, c.dtype, c.source, c.meaning, allowed(c)] for c in SCORE_COLUMNS]
    return Table("Columns of exports/scores.parquet, scores.csv and the SQL table, in order",
                 ["column", "type", "from stage", "meaning", "allowed values"], rows, css_id="column-table")  # fmt: skip


# --------------------------------------------------------------------------- page

TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #222; margin: 0; background: #fafafa; }
header { background: #1f3b57; color: #fff; padding: 1.2rem 2rem; }
header h1 { margin: 0 0 .3rem 0; font-size: 1.6rem; }
header p { margin: 0; opacity: .85; }
nav { background: #e9eef3; padding: .5rem 2rem; position: sticky; top: 0; font-size: .9rem; }
nav a { margin-right: 1rem; color: #1f3b57; text-decoration: none; }
main { max-width: 1150px; margin: 0 auto; padding: 0 2rem 3rem; }
section { background: #fff; border: 1px solid #e3e3e3; border-radius: 6px; margin: 1.2rem 0; padding: .6rem 1.4rem 1.2rem; }
h2 { color: #1f3b57; border-bottom: 2px solid #e9eef3; padding-bottom: .3rem; }
h3 { color: #333; margin-top: 1.4rem; }
p.note { color: #555; font-size: .92rem; }
table { border-collapse: collapse; margin: .6rem 0 1rem; font-size: .88rem; }
caption { text-align: left; font-weight: 600; padding: .3rem 0; color: #333; }
th, td { border-bottom: 1px solid #e3e3e3; padding: .3rem .7rem; text-align: left; vertical-align: top; }
th { background: #f3f5f7; }
th.num, td.num { text-align: right; font-variant-numeric: tabular-nums; }
.figures, .tables { display: flex; flex-wrap: wrap; gap: .5rem 2rem; align-items: flex-start; }
figure { margin: 0; flex: 0 1 520px; max-width: 100%; }
figure.wide { flex-basis: 760px; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: .85rem; color: #555; }
.missing { color: #a33; font-style: italic; }
.notices { margin: 1.2rem 0 0; }
p.notice { margin: .4rem 0; padding: .5rem .9rem; border-radius: 4px; background: #eef3f8; border-left: 4px solid #1f3b57; }
p.notice.warning { background: #fff4e5; border-left-color: #d9822b; }
</style>
</head>
<body>
<header>
<h1>{{ title }}</h1>
<p>Scores at {{ as_of }} for {{ customers }} customers &middot; models {{ model_version }}</p>
</header>
<nav>{% for id, heading in sections %}<a href="#{{ id }}">{{ heading }}</a>{% endfor %}</nav>
<main>
{% if notices %}<div class="notices">{% for n in notices %}
<p class="notice {{ n.level }}" id="notice-{{ n.key }}"><strong>{{ "Warning" if n.level == "warning" else "Note" }}:</strong> {{ n.text }}</p>{% endfor %}
</div>{% endif %}
{% macro table(t) -%}
<table id="{{ t.css_id }}">
<caption>{{ t.caption }}</caption>
{% set numeric = t.numeric %}
<thead><tr>{% for h in t.headers %}<th{% if numeric[loop.index0] %} class="num"{% endif %}>{{ h }}</th>{% endfor %}</tr></thead>
<tbody>{% for row in t.rows %}<tr>{% for cell in row %}<td{% if numeric[loop.index0] %} class="num"{% endif %}>{{ cell }}</td>{% endfor %}</tr>{% endfor %}</tbody>
</table>
{%- endmacro %}
{% macro pictures(items) -%}
{% if items %}<div class="figures">{% for p in items %}
<figure id="fig-{{ p.name }}"{% if p.wide %} class="wide"{% endif %}><img src="{{ p.uri }}" alt="{{ p.caption }}"><figcaption>{{ p.caption }}</figcaption></figure>{% endfor %}
</div>{% endif %}
{%- endmacro %}
{% macro missing(what) %}<p class="missing">Not available: {{ what }}.</p>{% endmacro %}

<section id="overview"><h2>{{ headings["overview"] }}</h2>
<p class="note">One row per customer known at the scoring date is exported for CRM use
(Parquet, CSV and the SQL table <code>{{ table_name }}</code>). The value-potential quadrant of a
customer says how much to invest in them; the churn probability says how likely they are to make
no purchase in the next {{ horizon }}.</p>
{{ table(overview) }}
</section>

<section id="quadrants"><h2>{{ headings["quadrants"] }}</h2>
<p class="note">Current value = margin realised over the last horizon; growth potential = margin
predicted for the next horizon. The cuts split each axis into low and high.</p>
{{ pictures(quadrant_pictures) }}
{% if quadrant_table %}{{ table(quadrant_table) }}{% else %}{{ missing("segment summary (run cvp segment)") }}{% endif %}
{% if cuts_table %}{{ table(cuts_table) }}{% endif %}
</section>

<section id="tiers"><h2>{{ headings["tiers"] }}</h2>
{% if tier_table %}{{ table(tier_table) }}{% else %}{{ missing("segment summary (run cvp segment)") }}{% endif %}
<div class="tables">{% for t in label_tables %}{{ table(t) }}{% endfor %}</div>
{{ pictures(tier_pictures) }}
</section>

<section id="concentration"><h2>{{ headings["concentration"] }}</h2>
<p class="note">The 80/20 rule in numbers: how much of the value a minority of customers brings.</p>
<div class="tables">
{% if concentration_table %}{{ table(concentration_table) }}{% else %}{{ missing("concentration metrics (metrics/segment.json)") }}{% endif %}
{{ pictures(concentration_pictures) }}
</div>
</section>

<section id="distributions"><h2>{{ headings["distributions"] }}</h2>
{{ pictures(distribution_pictures) }}
</section>

<section id="model-evaluation"><h2>{{ headings["model-evaluation"] }}</h2>
<p class="note">Models are fitted one horizon back and judged on the window that followed, which
they never saw.</p>
<h3 id="clv-evaluation">CLV model</h3>
{% for t in clv_tables %}{{ table(t) }}{% else %}{{ missing("CLV holdout metrics (metrics/clv.json)") }}{% endfor %}
{{ pictures(clv_pictures) }}
<h3 id="churn-evaluation">Churn classifier</h3>
{% for t in churn_tables %}{{ table(t) }}{% else %}{{ missing("churn evaluation metrics (metrics/churn.json)") }}{% endfor %}
{{ pictures(churn_pictures) }}
<h3 id="growth-evaluation">Growth potential</h3>
{% if growth_table %}{{ table(growth_table) }}{% else %}{{ missing("the segment stage's holdout check (metrics/segment.json)") }}{% endif %}
</section>

<section id="data-quality"><h2>{{ headings["data-quality"] }}</h2>
<p class="note">Rows of the input that failed validation are kept out of every model and stored in
data/quarantine/rejected.parquet with their reason.</p>
<div class="tables">{% for t in quality_tables %}{{ table(t) }}{% else %}{{ missing("ingest metrics (metrics/ingest.json)") }}{% endfor %}</div>
</section>

<section id="column-dictionary"><h2>{{ headings["column-dictionary"] }}</h2>
{{ table(columns) }}
</section>
</main>
</body>
</html>
"""


@dataclass(frozen=True)
class RenderedReport:
    html: str
    figures: dict[str, bytes]  # the figures drawn by the report, PNG bytes by name


def render_report(
    scores: pd.DataFrame, sources: ReportSources, table_name: str = "customer_scores", horizon: str = "horizon"
) -> RenderedReport:
    """The HTML page (a string) and the PNGs drawn for it, from the export frame and the sources."""
    figures = own_figures(scores)
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    segment_metrics = sources.metrics.get("segment")
    context = {
        "title": "Customer value and segments",
        "as_of": scores["as_of"].iloc[0].date().isoformat(),
        "customers": fmt(len(scores)),
        "model_version": scores["model_version"].iloc[0],
        "table_name": table_name,
        "horizon": horizon,
        "sections": SECTIONS,
        "headings": dict(SECTIONS),
        "notices": run_notices(sources.metrics),
        "overview": overview_table(scores, sources),
        "quadrant_pictures": stage_pictures(sources, "segment", ["quadrant_scatter", "value_by_quadrant"]),
        "quadrant_table": summary_table(sources.summary, "quadrant", "Customers and value per quadrant"),
        "cuts_table": cuts_table(segment_metrics),
        "growth_table": growth_ranking_table(segment_metrics),
        "tier_table": summary_table(sources.summary, "tier", "Customers and value per tier"),
        "label_tables": [
            label_table(scores, "pyramid_level", PYRAMID_LEVELS, "Customer pyramid"),
            label_table(scores, "abc_class", ABC_CLASSES, "ABC classes"),
            label_table(scores, "lifecycle_state", LIFECYCLE_STATES, "Lifecycle states"),
            label_table(scores, "relationship_level", RELATIONSHIP_LEVELS, "Recommended relationship level"),
        ],
        "tier_pictures": stage_pictures(sources, "segment", ["lifecycle"]),
        "concentration_table": concentration_table(segment_metrics),
        "concentration_pictures": stage_pictures(sources, "segment", ["lorenz"]) + stage_pictures(sources, "segment"),
        "distribution_pictures": [
            Picture("churn_probability_hist", "Customers by churn probability (drawn from the export).",
                    data_uri(figures["churn_probability_hist"])),
            Picture("clv_hist", "Customers by CLV over the next horizon (drawn from the export).", data_uri(figures["clv_hist"])),
        ],  # fmt: skip
        "clv_tables": clv_tables(sources.metrics.get("clv")),
        "clv_pictures": stage_pictures(sources, "clv"),
        "churn_tables": churn_tables(sources.metrics.get("churn")),
        "churn_pictures": stage_pictures(sources, "churn"),
        "quality_tables": data_quality_tables(sources.metrics.get("ingest")),
        "columns": column_dictionary(),
    }
    html = env.from_string(TEMPLATE).render(context)
    return RenderedReport(html, figures)
