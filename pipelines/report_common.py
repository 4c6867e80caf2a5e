"""Shared pieces of the two reports: inputs, number formatting, tables, pictures, notices.

reports/segments.html (pipelines/report_marketing.py) is written for the marketer in plain words
and money; reports/models.html (pipelines/report_models.py) holds the model evaluation with the
exact metric names. Both are self-contained: figures are base64 PNG data URIs, the CSS sits in
the page, there is no script and no external URL, so each file can be mailed or opened offline.
"""

from __future__ import annotations

import base64
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

from pipelines import files, tracking
from pipelines.catalog import Catalog
from pipelines.notices import (  # noqa: F401  (re-exported: the notices are shared with the run summary)
    TOP_REJECTION_REASONS,
    Notice,
    churn_source_notice,
    dig,
    rejected_share,
    rejected_share_notice,
    run_notices,
    spend_source_notice,
)

log = logging.getLogger(__name__)

METRIC_STAGES = ("ingest", "features", "clv", "churn", "segment")
EMBEDDED_DPI = 100  # the figures drawn for the pages: smaller than the stages' PNGs (plots/, 110 dpi)
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


def load_sources(paths: Catalog) -> ReportSources:
    """Read the optional report inputs of the project; warn about missing ones."""
    summary = paths.read("segment_summary") if paths.SEGMENT_SUMMARY.exists() else None
    if summary is None:
        log.warning("%s not found: the report shows no quadrant/tier tables", paths.SEGMENT_SUMMARY)
    metrics = {}
    for stage in METRIC_STAGES:
        path = paths.metrics_file(stage)
        try:
            metrics[stage] = files.read_json(path)
        except FileNotFoundError:
            log.warning("%s not found: its report section shows 'not available'", path)
        except ValueError as exc:
            log.warning("%s is not valid JSON (%s): its report section shows 'not available'", path, exc)
    plots = {
        stage: {png.stem: png.read_bytes() for png in sorted(paths.plots_dir(stage).glob("*.png"))}
        for stage in PLOT_STAGES
    }
    return ReportSources(summary, metrics, plots)


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


# A number, a percentage, an amount with its currency symbol or code in front, or '–'.
NUMERIC_CELL = re.compile(r"^(–|[-+]?(?:[^\w\s]{1,2}|[A-Z]{1,3}\$|[A-Z]{3} |zł)?[\d,]*\.?\d+%?)$")


@dataclass(frozen=True)
class Link:
    """A table cell that links somewhere (e.g. a segment's CSV list)."""

    text: str
    href: str


@dataclass(frozen=True)
class Table:
    caption: str
    headers: Sequence[str]
    rows: Sequence[Sequence[str | Link]]
    css_id: str = ""

    @property
    def numeric(self) -> list[bool]:
        """Per column: every body cell is a number, a percentage or '–' (right-aligned)."""
        return [
            all(isinstance(row[i], str) and NUMERIC_CELL.match(row[i]) for row in self.rows)
            for i in range(len(self.headers))
        ]


@dataclass(frozen=True)
class Picture:
    name: str
    caption: str
    uri: str
    wide: bool = False  # shown larger (figures with two panels)


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def figure_png(fig: Figure) -> bytes:
    """PNG bytes of a figure drawn for a page (same figure -> same bytes)."""
    return files.png_bytes(fig, dpi=EMBEDDED_DPI)


def flat_scalars(metrics: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) of every scalar leaf; lists (curves, tables) are left out."""
    return [(k, v) for k, v in tracking.flatten(prefix, dict(metrics)).items() if not isinstance(v, (list, dict))]


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




# --------------------------------------------------------------------------- money and dates

CURRENCY_SYMBOLS = {
    "EUR": "€", "USD": "$", "GBP": "£", "JPY": "¥", "CNY": "¥", "INR": "₹", "KRW": "₩", "AUD": "A$", "CAD": "C$",
    "NZD": "NZ$", "HKD": "HK$", "SGD": "S$", "BRL": "R$", "MXN": "MX$", "ILS": "₪", "TRY": "₺", "PLN": "zł",
}  # fmt: skip
NO_CURRENCY_NOTE = "Amounts are plain numbers in the money units of the input data."


@dataclass(frozen=True)
class Money:
    """How amounts are written: ``currency`` is an ISO 4217 code (report.currency) or None."""

    currency: str | None = None

    @property
    def symbol(self) -> str:
        """'€' for EUR; the code and a space for codes without a symbol here ('CHF '); '' for None."""
        if self.currency is None:
            return ""
        return CURRENCY_SYMBOLS.get(self.currency, f"{self.currency} ")

    @property
    def unit_note(self) -> str:
        """The one sentence saying what the amounts are in."""
        if self.currency is None:
            return NO_CURRENCY_NOTE
        return f"Amounts are in {self.currency} ({self.symbol.strip()})."

    def __call__(self, amount: Any) -> str:
        """€1,235 (whole units from 100 up), €22.27, -€5.00, '–' for missing."""
        if amount is None or not isinstance(amount, (int, float, np.number)) or not math.isfinite(float(amount)):
            return "–"
        amount = float(amount)
        digits = 0 if abs(amount) >= 100 or amount == 0 else 2
        text = f"{abs(amount):,.{digits}f}"
        if text.strip("0.,") == "":
            amount = 0.0  # -0.001 rounds to "0.00": no sign
        return f"{'-' if amount < 0 else ''}{self.symbol}{text}"


def reader_date(value: Any) -> str:
    """A date as people write it: 30 Jun 1998 (day without a leading zero)."""
    stamp = pd.Timestamp(value)
    return f"{stamp.day} {stamp:%b %Y}"


# --------------------------------------------------------------------------- page parts

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #222; margin: 0; background: #fafafa; }
header { background: #1f3b57; color: #fff; padding: 1.2rem 2rem; }
header h1 { margin: 0 0 .3rem 0; font-size: 1.6rem; }
header p { margin: 0; opacity: .85; }
header a { color: #fff; }
nav { background: #e9eef3; padding: .5rem 2rem; position: sticky; top: 0; font-size: .9rem; }
nav a { margin-right: 1rem; color: #1f3b57; text-decoration: none; }
main { max-width: 1150px; margin: 0 auto; padding: 0 2rem 3rem; }
section { background: #fff; border: 1px solid #e3e3e3; border-radius: 6px; margin: 1.2rem 0; padding: .6rem 1.4rem 1.2rem; overflow-x: auto; }
h2 { color: #1f3b57; border-bottom: 2px solid #e9eef3; padding-bottom: .3rem; }
h3 { color: #333; margin-top: 1.4rem; }
p.note, p.means { color: #555; font-size: .92rem; }
p.means { margin: -.6rem 0 1rem; font-style: italic; max-width: 60rem; }
table { border-collapse: collapse; margin: .6rem 0 1rem; font-size: .88rem; }
caption { text-align: left; font-weight: 600; padding: .3rem 0; color: #333; }
th, td { border-bottom: 1px solid #e3e3e3; padding: .3rem .7rem; text-align: left; vertical-align: top; }
th { background: #f3f5f7; }
th.num, td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.num { white-space: nowrap; }
.figures, .tables { display: flex; flex-wrap: wrap; gap: .5rem 2rem; align-items: flex-start; }
figure { margin: 0; flex: 0 1 520px; max-width: 100%; }
figure.wide { flex-basis: 760px; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: .85rem; color: #555; }
.missing { color: #a33; font-style: italic; }
.notices { margin: 1.2rem 0 0; }
p.notice { margin: .4rem 0; padding: .5rem .9rem; border-radius: 4px; background: #eef3f8; border-left: 4px solid #1f3b57; }
p.notice.warning { background: #fff4e5; border-left-color: #d9822b; }
"""

MACROS = """
{% macro table(t) -%}
<table id="{{ t.css_id }}">
<caption>{{ t.caption }}</caption>
{% set numeric = t.numeric %}
<thead><tr>{% for h in t.headers %}<th{% if numeric[loop.index0] %} class="num"{% endif %}>{{ h }}</th>{% endfor %}</tr></thead>
<tbody>{% for row in t.rows %}<tr>{% for cell in row %}<td{% if numeric[loop.index0] %} class="num"{% endif %}>{% if cell.href is defined %}<a href="{{ cell.href }}">{{ cell.text }}</a>{% else %}{{ cell }}{% endif %}</td>{% endfor %}</tr>{% endfor %}</tbody>
</table>
{%- endmacro %}
{% macro pictures(items) -%}
{% if items %}<div class="figures">{% for p in items %}
<figure id="fig-{{ p.name }}"{% if p.wide %} class="wide"{% endif %}><img src="{{ p.uri }}" alt="{{ p.caption }}"><figcaption>{{ p.caption }}</figcaption></figure>{% endfor %}
</div>{% endif %}
{%- endmacro %}
{% macro missing(what) %}<p class="missing">Not available: {{ what }}.</p>{% endmacro %}
"""


def render_page(template: str, context: Mapping[str, Any]) -> str:
    """Render a page template (it may use CSS and the table / pictures / missing macros)."""
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env.from_string(MACROS + template).render({"css": CSS, **context})
