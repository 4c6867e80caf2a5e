"""reports/models.html: the model evaluation for data scientists, with the exact metric names.

Holdout errors and model choice of the CLV model, the churn classifier against its baselines
(ROC, calibration, lift, SHAP, bootstrap intervals), the growth-potential ranking check, the
segment tables in their technical form, data quality and the export's column dictionary.
Section ids (``SECTIONS``) are stable: tests and links rely on them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from models.scores import SCORE_COLUMNS
from models.segments import ABC_CLASSES, LIFECYCLE_STATES, PYRAMID_LEVELS, QUADRANT_STRATEGY, RELATIONSHIP_LEVELS
from pipelines import tracking
from pipelines.report_common import (
    Picture,
    ReportSources,
    Table,
    data_uri,
    dig,
    flat_scalars,
    fmt,
    pct,
    render_page,
    run_notices,
    stage_pictures,
)

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


def value_model_table(segment_metrics: Mapping[str, Any] | None) -> Table | None:
    """The value stage's out-of-time comparison (as the segment stage records it) and where growth
    potential came from."""
    source = dig(segment_metrics, "growth_potential_source", default={})
    comparison = dig(source, "value_holdout", "comparison")
    caption = (f"Value model vs BTYD CLV, combined rule and quick estimate on the holdout (realised margin; "
               f"growth potential used: {dig(source, 'used', default='?')}: {dig(source, 'reason', default='')})")  # fmt: skip
    return matrix_table(comparison, caption, "forecast", "value-model-table")


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
    intervals = interval_table(dig(clv, "intervals", "holdout"))
    return tables + ([intervals] if intervals else [])


def interval_table(holdout: Mapping[str, Any] | None) -> Table | None:
    """Holdout coverage of [clv_p10, clv_p90], overall and by repeat purchases (metrics/clv.json intervals)."""
    if not isinstance(holdout, Mapping) or "coverage_pit" not in holdout:
        return None
    groups = {"all customers": holdout, **{f"{k} repeat purchase days": v for k, v in dig(holdout, "by_frequency", default={}).items()}}
    rows = [[name, fmt(g.get("customers")), pct(g.get("coverage_pit")), pct(g.get("coverage")), pct(g.get("expected_coverage")),
             fmt(g.get("mean_width"))] for name, g in groups.items() if isinstance(g, Mapping)]  # fmt: skip
    caption = ("CLV interval [P10, P90] on the holdout: the share of customers whose realised value falls inside "
               "(target 80%; a realised 0 counted by the share of the zero mass between P10 and P90)")
    return Table(caption, ["customers", "n", "coverage", "coverage, every realised 0 at P10 = 0 inside",
                           "the model's own expectation of that", "mean width"], rows, css_id="clv-interval-table")  # fmt: skip


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
        headers = ["model", *CHURN_MEASURES]
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


TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>{{ css | safe }}</style>
</head>
<body>
<header>
<h1>{{ title }}</h1>
<p>Scores at {{ as_of }} for {{ customers }} customers &middot; models {{ model_version }} &middot;
<a href="{{ marketing_href }}" id="link-marketing">the page for marketing: who to invest in</a></p>
</header>
<nav>{% for id, heading in sections %}<a href="#{{ id }}">{{ heading }}</a>{% endfor %}</nav>
<main>
{% if notices %}<div class="notices">{% for n in notices %}
<p class="notice {{ n.level }}" id="notice-{{ n.key }}"><strong>{{ "Warning" if n.level == "warning" else "Note" }}:</strong> {{ n.text }}</p>{% endfor %}
</div>{% endif %}


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
{% if value_table %}{{ table(value_table) }}{% endif %}
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


def render_models_page(
    scores: pd.DataFrame,
    sources: ReportSources,
    figures: Mapping[str, bytes],
    table_name: str = "customer_scores",
    horizon: str = "horizon",
    marketing_href: str = "segments.html",
) -> str:
    """The HTML of reports/models.html from the export frame, the sources and the report's own figures."""
    segment_metrics = sources.metrics.get("segment")
    context = {
        "title": "Model evaluation and technical detail",
        "as_of": scores["as_of"].iloc[0].date().isoformat(),
        "customers": fmt(len(scores)),
        "model_version": scores["model_version"].iloc[0],
        "marketing_href": marketing_href,
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
        "value_table": value_model_table(segment_metrics),
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
    return render_page(TEMPLATE, context)
