"""reports/segments.html: the page for the marketer who decides where the retention budget goes.

Plain words and money, no model vocabulary: first what to do (how many customers to invest in,
which ones, what they are worth), then the four customer groups (value-potential quadrants),
the value tiers, activity and relationship depth, and a downloadable customer list per group and
tier (CSV files beside the page, written by the export stage). A data-quality banner opens the
page whenever ingest rejected rows or a model fell back to a simpler estimate. Every number is
computed from the export rows, so the page, the lists and the export always agree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from models.segments import LIFECYCLE_STATES, QUADRANT_STRATEGY, QUADRANTS, RELATIONSHIP_LEVELS, RELATIONSHIP_TABLE, TIERS
from pipelines.report_common import (
    Link,
    Money,
    Notice,
    Picture,
    ReportSources,
    Table,
    data_uri,
    dig,
    figure_png,
    fmt,
    pct,
    reader_date,
    rejected_share,
    render_page,
)

SECTIONS: tuple[tuple[str, str], ...] = (
    ("what-to-do", "What to do"),
    ("groups", "The four customer groups"),
    ("tiers", "Value tiers"),
    ("activity", "Activity and relationship"),
    ("concentration", "Where the value is"),
    ("lists", "Customer lists to download"),
    ("data-quality", "Data quality"),
)
TINY_SHARE = 0.01  # a label holding less than this share of the customers gets a sentence saying why
PRIORITY = ("IV", "III", "II", "I")  # quadrants in the order a budget is spent
INVEST = ("IV", "III", "II")  # quadrants whose allocation is not "no investment"

# Columns of each downloadable list (export column names, so the files join the CRM data).
LIST_COLUMNS = (
    "customer_id", "quadrant", "resource_allocation", "retention_strategy", "tier", "current_value",
    "growth_potential", "clv", "churn_probability", "lifecycle_state", "relationship_level",
)  # fmt: skip


@dataclass(frozen=True)
class PageSettings:
    """What the marketing page needs from params.yaml (built by the export stage)."""

    money: Money = field(default_factory=Money)
    horizon_days: int = 91
    margin: float = 0.3  # clv.margin: share of revenue kept as margin
    has_cost: bool = False  # data.columns.cost mapped: past margin is revenue minus cost
    new_days: int = 90  # segment.lifecycle.new_days
    lifecycle: Mapping[str, float] = field(default_factory=lambda: {"drowsy": 1.5, "half_asleep": 2.5, "dormant": 4.0})

    @property
    def period(self) -> str:
        return f"{self.horizon_days} days"

    @property
    def value_word(self) -> str:
        """What "value" is here: revenue when the margin rate is 100% and no cost column, else profit margin."""
        return "revenue" if self.margin >= 1 and not self.has_cost else "profit margin"

    @property
    def value_sentence(self) -> str:
        """One sentence saying what the amounts measure."""
        if self.has_cost:
            return ("Value is profit margin: for the past, what customers paid minus the cost of what they bought; "
                    f"for the future, {pct(self.margin)} of what they are expected to spend.")  # fmt: skip
        if self.value_word == "revenue":
            return "Value is revenue: what customers paid (no margin rate applied)."
        return f"Value is profit margin: {pct(self.margin)} of what customers spend (the margin rate of this analysis)."


# --------------------------------------------------------------------------- plain words

QUADRANT_NAMES = {q: f"{q} – {allocation}" for q, (allocation, _) in QUADRANT_STRATEGY.items()}
QUADRANT_WHO = {
    "I": "Brought little in the last {p} and are expected to bring little: occasional or lapsed buyers.",
    "II": "Brought little in the last {p} but are expected to bring a lot: customers who can grow.",
    "III": "Brought a lot in the last {p} but are expected to bring little: valuable customers drifting away.",
    "IV": "Brought a lot in the last {p} and are expected to bring a lot: your best customers.",
}
QUADRANT_EMPTY = {
    "I": "every customer either brought a lot in the last {p} or is expected to bring a lot in the next {p}.",
    "II": "every customer who brought little in the last {p} is also expected to bring little in the next {p}.",
    "III": "every customer who brought a lot in the last {p} is also expected to bring a lot in the next {p} "
    "(recent buyers are the ones most likely to buy again).",
    "IV": "no customer both brought a lot in the last {p} and is expected to bring a lot in the next {p}.",
}
TIER_WHO = {
    "platinum": "The most valuable customers whose value is still growing.",
    "gold": "Valuable, fairly loyal customers with little growth left; sensitive to price.",
    "iron": "The many customers who spend a limited amount.",
    "lead": "The least valuable customers: little spend, costly to serve.",
}
TIER_TODO = {
    "platinum": "Keep them and grow the relationship: personal attention, first access to new offers.",
    "gold": "Keep them: look after them and protect the margin rather than discount.",
    "iron": "Develop them at low cost: standard offers that make them buy more often.",
    "lead": "Serve them at the lowest cost, or let them go.",
}
TIER_WHY_FEW = {
    "platinum": "few of the most valuable customers are expected to bring more in the next {p} than in the last {p}.",
    "gold": "almost every one of the most valuable customers is still growing.",
    "iron": "almost every customer is either among the most or among the least valuable.",
    "lead": "almost every customer brings some value.",
}
LIFECYCLE_WHO = {
    "new": "First purchase in the last {new_days} days.",
    "active": "Buying at their usual rhythm.",
    "drowsy": "Overdue: the time since their last purchase is {drowsy} to {half_asleep} times their usual gap.",
    "half_asleep": "Well overdue: {half_asleep} to {dormant} times their usual gap.",
    "dormant": "Silent for more than {dormant} times their usual gap.",
}
LIFECYCLE_NAMES = {"half_asleep": "half asleep"}
LIFECYCLE_WHY_FEW = {
    "new": "no customer made a first purchase in the last {new_days} days.",
    "active": "most customers are overdue by their own rhythm.",
    "drowsy": "few customers are just slightly overdue.",
    "half_asleep": "few customers are in between overdue and silent.",
    "dormant": "few customers have been silent for long.",
}
RELATIONSHIP_WHAT = {
    "basic": "No contact after the sale.",
    "reactive": "Invite them to get in touch with any problem.",
    "accountable": "Check back soon after each sale.",
    "proactive": "Contact them regularly.",
    "partnership": "Work with them continuously.",
}
GROUP_SIZE_WORDS = {"many": "a large group", "moderate": "a mid-sized group", "few": "a small group"}

BANNER_REJECTED = (
    "{rejected} of {rows_in} rows of the input data ({share}) were rejected as invalid{why} and are left out of "
    "every number on this page."
)
BANNER_CHURN = (
    "The chance of buying again comes from a simpler back-up estimate this time, because the detailed prediction "
    "did not beat it on past data; treat it as a rough guide (details on the model page)."
)
BANNER_SPEND = (
    "Every customer's spend per purchase was set to the average of all customers, because it could not be "
    "estimated per customer; expected values differ between customers only by how often they buy."
)


def plain(label: str) -> str:
    return label.replace("_", " ")


def when_few(label: str, count: int, total: int, reason: str) -> str | None:
    """One sentence for an empty or tiny segment (under TINY_SHARE of the customers); None otherwise."""
    if count == 0:
        return f"{label}: no customers, because {reason}"
    if total and count / total < TINY_SHARE:
        return f"{label}: only {count:,} customers ({pct(count / total)}), because {reason}"
    return None


def relationship_reason(level: str) -> str:
    """Why a relationship level is rare: the (group size, margin) cells of the table that give it."""
    cells = [f"{GROUP_SIZE_WORDS[size]} whose members each bring a {margin} margin"
             for (size, margin), value in RELATIONSHIP_TABLE.items() if value == level]  # fmt: skip
    return f"this level is recommended only for {' or '.join(cells)} (group = customer group and tier together)."


# --------------------------------------------------------------------------- banner


def data_quality_banner(metrics: Mapping[str, Mapping[str, Any]]) -> list[Notice]:
    """Plain warnings for the top of the page: rejected input rows, a churn baseline, a spend fallback."""
    found = []
    ingest = metrics.get("ingest") or {}
    share = rejected_share(ingest)
    if share is not None and share > 0:
        rejected = ingest.get("rows_rejected")
        rows_in = ingest.get("rows_in")
        if not isinstance(rows_in, int) and isinstance(rejected, int):
            rows_in = ingest.get("rows_accepted", 0) + rejected
        reasons = ingest.get("rejected_by_reason")
        top = ""
        if isinstance(reasons, Mapping):
            found_reasons = sorted(((-n, r) for r, n in reasons.items() if isinstance(n, int) and n > 0))
            top = ", ".join(plain(r) for _, r in found_reasons[:3])
        text = BANNER_REJECTED.format(
            rejected=f"{rejected:,}" if isinstance(rejected, int) else "Some",
            rows_in=f"{rows_in:,}" if isinstance(rows_in, int) else "all",
            share=pct(share) if share >= 0.001 else "under 0.1%",
            why=f" (mostly: {top})" if top else "",
        )
        found.append(Notice("rejected-rows", "warning", text))
    source = dig(metrics.get("churn"), "churn_source")
    if isinstance(source, str) and source.startswith("baseline"):
        found.append(Notice("churn-fallback", "warning", BANNER_CHURN))
    spend = dig(metrics.get("clv"), "gamma_gamma", "source")
    if isinstance(spend, str) and spend.startswith("fallback"):
        found.append(Notice("spend-fallback", "warning", BANNER_SPEND))
    return found


# --------------------------------------------------------------------------- numbers


@dataclass(frozen=True)
class Segment:
    """One group or tier as the page shows it."""

    kind: str  # quadrant | tier | lifecycle_state | relationship_level
    label: str
    customers: int
    share: float | None
    past_value: float  # sum of current_value, last horizon
    expected_value: float  # sum of growth_potential, next horizon
    chance_active: float | None  # mean of 1 - churn_probability


def segments_of(scores: pd.DataFrame, column: str, labels: Sequence[str]) -> list[Segment]:
    """Every label of ``column`` (empty ones too) with its counts and sums from the export rows."""
    total = len(scores)
    out = []
    for label in labels:
        part = scores[scores[column] == label]
        out.append(Segment(
            column, label, len(part), len(part) / total if total else None, float(part["current_value"].sum()),
            float(part["growth_potential"].sum()), float(1 - part["churn_probability"].mean()) if len(part) else None,
        ))  # fmt: skip
    return out


def list_file(kind: str, label: str) -> str:
    """File name of a segment's customer list: quadrant_IV.csv, tier_gold.csv."""
    return f"{kind}_{label}.csv"


def segment_lists(scores: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The downloadable lists, by file name: one per quadrant and per tier (empty ones with the header),
    most valuable customers first (current + expected value, then customer_id)."""
    ordered = scores.assign(_value=scores["current_value"] + scores["growth_potential"])
    ordered = ordered.sort_values(["_value", "customer_id"], ascending=[False, True], kind="stable")
    frame = ordered.loc[:, list(LIST_COLUMNS)].reset_index(drop=True)
    lists = {}
    for kind, labels in (("quadrant", QUADRANTS), ("tier", TIERS)):
        for label in labels:
            lists[list_file(kind, label)] = frame[frame[kind] == label].reset_index(drop=True)
    return lists


# --------------------------------------------------------------------------- tables


def segment_table(segments: Sequence[Segment], names: Mapping[str, str], settings: PageSettings, css_id: str,
                  caption: str, lists_href: str | None) -> Table:  # fmt: skip
    """Customers, share, value last and next period, per customer, chance of buying, list link."""
    money, p, word = settings.money, settings.period, settings.value_word
    headers = ["", "customers", "share of customers", f"{word}, last {p}", f"expected {word}, next {p}",
               "expected per customer", f"chance of buying, next {p}"]  # fmt: skip
    if lists_href is not None:
        headers.append("list")
    rows = []
    for s in segments:
        row = [names.get(s.label, plain(s.label)), fmt(s.customers), pct(s.share), money(s.past_value),
               money(s.expected_value), money(s.expected_value / s.customers if s.customers else None),
               pct(round(s.chance_active, 3)) if s.chance_active is not None else "–"]  # fmt: skip
        if lists_href is not None:
            row.append(Link("CSV", f"{lists_href}/{list_file(s.kind, s.label)}"))
        rows.append(row)
    return Table(caption, headers, rows, css_id=css_id)


def table_means(settings: PageSettings) -> str:
    """The "what this means" line under a segment table."""
    p, word = settings.period, settings.value_word
    return (f"“{word.capitalize()}, last {p}” is what the group brought in the {p} up to the scoring date; "
            f"“expected {word}” is what it is expected to bring in the next {p}, allowing for customers who stop "
            f"buying; “chance of buying” is the average chance that a customer of the group buys at least once "
            f"in the next {p}.")  # fmt: skip


def cut_sentence(segment_metrics: Mapping[str, Any] | None, settings: PageSettings) -> str:
    """What "a lot" and "little" mean: the dividing lines between low and high."""
    cuts = dig(segment_metrics, "cuts")
    p, word, money = settings.period, settings.value_word, settings.money
    if not isinstance(cuts, Mapping):
        return f"“A lot” means more than the typical customer, on {word} in the last {p} or expected in the next {p}."
    past = cuts.get("current_value")
    most_idle = isinstance(cuts.get("high_current_value_share"), float) and cuts["high_current_value_share"] <= 0.5
    past_text = (f"any purchase at all in the last {p}" + (" (most customers bought nothing in that time)" if most_idle else "")
                 if past == 0 else f"more than {money(past)} of {word} in the last {p}")  # fmt: skip
    return (f"“Brought a lot” means {past_text}; “expected to bring a lot” means more than "
            f"{money(cuts.get('growth_potential'))} of {word} expected in the next {p}.")  # fmt: skip


# --------------------------------------------------------------------------- figure


def groups_figure(groups: Sequence[Segment], settings: PageSettings) -> Figure:
    """Share of customers, of last period's value and of expected value per group (bars)."""
    fig = Figure(figsize=(7.6, 3.6))
    ax = fig.subplots()
    x = np.arange(len(groups))
    total_c = sum(g.customers for g in groups) or 1
    total_past = sum(g.past_value for g in groups) or 1.0
    total_next = sum(g.expected_value for g in groups) or 1.0
    bars = (("customers", [g.customers / total_c for g in groups], "#7f8c99"),
            (f"{settings.value_word}, last {settings.period}", [g.past_value / total_past for g in groups], "#d9822b"),
            (f"expected {settings.value_word}, next {settings.period}", [g.expected_value / total_next for g in groups],
             "#1f6fb2"))  # fmt: skip
    for i, (label, values, colour) in enumerate(bars):
        ax.bar(x + (i - 1) * 0.27, values, width=0.27, label=label, color=colour)
    ax.set_xticks(x, [QUADRANT_NAMES.get(g.label, g.label).replace(" – ", "\n") for g in groups])
    ax.set_ylim(0, 1)
    ax.yaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
    ax.set_ylabel("share of all customers")
    ax.set_title("Each group's share of customers and of value")
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- page

TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>{{ css | safe }}
p.lead { font-size: 1.05rem; line-height: 1.5; }
ol.todo li { margin: .5rem 0; line-height: 1.45; }
ul.few { color: #555; font-size: .92rem; }
div.banner { padding: .4rem 2rem; background: #fff4e5; border-bottom: 1px solid #f0d2a8; }
</style>
</head>
<body>
<header>
<h1>{{ title }}</h1>
<p>{{ customers }} customers, as of {{ as_of }} &middot; {{ unit_note }} &middot;
<a href="{{ models_href }}" id="link-models">model evaluation (for data scientists)</a></p>
</header>
{% if banner %}<div class="banner" id="data-quality-banner" role="alert">{% for n in banner %}
<p class="notice warning" id="banner-{{ n.key }}"><strong>Data quality:</strong> {{ n.text }}</p>{% endfor %}
</div>{% endif %}
<nav>{% for id, heading in sections %}<a href="#{{ id }}">{{ heading }}</a>{% endfor %}</nav>
<main>
{% macro means(text) %}<p class="means">What this means: {{ text }}</p>{% endmacro %}
{% macro few(items) %}{% if items %}<ul class="few">{% for s in items %}<li>{{ s }}</li>{% endfor %}</ul>{% endif %}{% endmacro %}

<section id="what-to-do"><h2>{{ headings["what-to-do"] }}</h2>
<p class="lead">{{ summary }}</p>
<ol class="todo">{% for item in todo %}
<li id="todo-{{ item.label }}"><strong>{{ item.name }}</strong> ({{ item.count }}): {{ item.action }}
{{ item.who }}{% if item.href %} <a href="{{ item.href }}">Download the list</a>.{% endif %}</li>{% endfor %}
</ol>
{% if reactivate %}<p>{{ reactivate }}</p>{% endif %}
<p class="note">{{ value_sentence }}</p>
</section>

<section id="groups"><h2>{{ headings["groups"] }}</h2>
<p class="note">Customers are placed in four groups by what they brought in the last {{ period }} and what they
are expected to bring in the next {{ period }}. {{ cut_sentence }}</p>
{{ table(group_table) }}
{{ means(group_means) }}
{{ few(group_few) }}
{{ pictures(group_pictures) }}
</section>

<section id="tiers"><h2>{{ headings["tiers"] }}</h2>
<p class="note">Tiers rank customers by total value (last {{ period }} plus expected next {{ period }}), from most to
least attractive.</p>
{{ table(tier_table) }}
{{ means(tier_means) }}
{{ few(tier_few) }}
{{ table(tier_todo) }}
</section>

<section id="activity"><h2>{{ headings["activity"] }}</h2>
{{ table(lifecycle_table) }}
{{ means(lifecycle_means) }}
{{ few(lifecycle_few) }}
{{ table(relationship_table) }}
{{ means(relationship_means) }}
{{ few(relationship_few) }}
</section>

<section id="concentration"><h2>{{ headings["concentration"] }}</h2>
{% if concentration %}<p>{{ concentration }}</p>{% else %}{{ missing("how value is spread (run cvp segment)") }}{% endif %}
</section>

<section id="lists"><h2>{{ headings["lists"] }}</h2>
<p>One CSV file per group and per tier, most valuable customers first, beside this page in
<code>{{ lists_href }}/</code>: {% for name, href in list_links %}<a href="{{ href }}">{{ name }}</a>{{ ", " if not loop.last else "." }}{% endfor %}
The full export (every customer, every column) is <code>exports/scores.csv</code>.</p>
{{ table(list_columns) }}
</section>

<section id="data-quality"><h2>{{ headings["data-quality"] }}</h2>
{% if quality %}<p>{{ quality }}</p>{% else %}{{ missing("the input row counts (metrics/ingest.json)") }}{% endif %}
</section>
</main>
</body>
</html>
"""


@dataclass(frozen=True)
class TodoItem:
    label: str
    name: str
    count: str
    action: str
    who: str
    href: str | None


def todo_items(groups: Sequence[Segment], settings: PageSettings, lists_href: str) -> list[TodoItem]:
    """One line per group in budget order: name, size and worth, action, who, list link (or why empty)."""
    by_label = {g.label: g for g in groups}
    items = []
    for label in PRIORITY:
        g = by_label[label]
        allocation, strategy = QUADRANT_STRATEGY[label]
        p = settings.period
        if g.customers == 0:
            items.append(TodoItem(label, f"Group {QUADRANT_NAMES[label]}", "no customers", f"nobody to {allocation} here, "
                                  f"because {QUADRANT_EMPTY[label].format(p=p)}", "", None))  # fmt: skip
            continue
        count = (f"{g.customers:,} customers, expected to bring {settings.money(g.expected_value)} of "
                 f"{settings.value_word} in the next {p}")  # fmt: skip
        items.append(TodoItem(label, f"Group {QUADRANT_NAMES[label]}", count, strategy[0].upper() + strategy[1:] + ".",
                              QUADRANT_WHO[label].format(p=p), f"{lists_href}/{list_file('quadrant', label)}"))  # fmt: skip
    return items


def summary_sentence(groups: Sequence[Segment], settings: PageSettings) -> str:
    """The answer first: how many customers to invest in, which groups, what they are worth."""
    total = sum(g.customers for g in groups)
    invest = [g for g in groups if g.label in INVEST]
    n_invest = sum(g.customers for g in invest)
    worth = sum(g.expected_value for g in invest)
    worth_all = sum(g.expected_value for g in groups)
    top = next(g for g in groups if g.label == "IV")
    named = sorted((g for g in invest if g.customers), key=lambda g: PRIORITY.index(g.label))
    which = " and ".join(f"{g.label} ({g.customers:,})" for g in named) or "none"
    return (f"Invest in {n_invest:,} of your {total:,} customers ({pct(n_invest / total if total else None)}): "
            f"group{'s' if len(named) > 1 else ''} {which}. Together they are expected to bring {settings.money(worth)} "
            f"of the {settings.money(worth_all)} in {settings.value_word} expected from all customers in the next "
            f"{settings.period} ({pct(round(worth / worth_all, 3)) if worth_all else '–'}). "
            + (f"Put the most effort into the {top.customers:,} customers of group IV; " if top.customers else "")
            + "spend as little as possible on group I.")  # fmt: skip


def reactivation_sentence(scores: pd.DataFrame) -> str | None:
    """Sleeping customers (overdue by their own rhythm) in groups II and IV: worth waking up."""
    sleeping = scores["lifecycle_state"].isin(["drowsy", "half_asleep", "dormant"]) & scores["quadrant"].isin(["II", "IV"])
    n = int(sleeping.sum())
    if not n:
        return None
    return (f"{n:,} of the customers in groups II and IV are overdue by their own buying rhythm but still "
            "expected to bring a lot: they are the ones to win back first.")


def concentration_sentence(segment_metrics: Mapping[str, Any] | None) -> str | None:
    conc = dig(segment_metrics, "concentration")
    if not isinstance(conc, Mapping) or conc.get("top_share") is None:
        return None
    return (f"The most valuable {pct(conc.get('top_share'))} of customers bring {pct(round(conc['top_share_of_value'], 3))} "
            "of the total value (last period plus expected next period): losing one of them costs far more than "
            "losing a typical customer.")  # fmt: skip


def quality_sentence(ingest: Mapping[str, Any] | None) -> str | None:
    accepted, rejected = dig(ingest, "rows_accepted"), dig(ingest, "rows_rejected")
    if not isinstance(accepted, int) or not isinstance(rejected, int):
        return None
    if rejected == 0:
        return f"All {accepted:,} rows of the input data passed the checks; none was left out."
    return (f"{accepted:,} rows of the input data passed the checks and {rejected:,} were rejected as invalid; the "
            "rejected rows are kept aside with their reason (data/quarantine/rejected.parquet) for the data team.")


def list_columns_table(settings: PageSettings) -> Table:
    p, word = settings.period, settings.value_word
    meaning = {
        "customer_id": "The customer's identifier, as in your systems.",
        "quadrant": "Customer group (I to IV).",
        "resource_allocation": "How much to invest in the group.",
        "retention_strategy": "What to do with the group.",
        "tier": "Value tier (platinum, gold, iron, lead).",
        "current_value": f"{word.capitalize()} brought in the last {p}.",
        "growth_potential": f"{word.capitalize()} expected in the next {p}, allowing for the chance the customer stops.",
        "clv": f"{word.capitalize()} expected in the next {p} if the customer stays, in today's money.",
        "churn_probability": f"Chance the customer makes no purchase in the next {p} (0 to 1).",
        "lifecycle_state": "Activity by the customer's own buying rhythm (new, active, drowsy, half asleep, dormant).",
        "relationship_level": "Recommended depth of contact (basic to partnership).",
    }
    return Table("Columns of the lists", ["column", "what it says"], [[c, meaning[c]] for c in LIST_COLUMNS],
                 css_id="list-columns-table")  # fmt: skip


def render_marketing_page(
    scores: pd.DataFrame,
    sources: ReportSources,
    settings: PageSettings,
    models_href: str = "models.html",
    lists_href: str = "segments",
) -> tuple[str, dict[str, bytes]]:
    """The HTML of reports/segments.html and the figures drawn for it (PNG bytes by name)."""
    p, total = settings.period, len(scores)
    groups = segments_of(scores, "quadrant", QUADRANTS)
    tiers = segments_of(scores, "tier", TIERS)
    lifecycle = segments_of(scores, "lifecycle_state", LIFECYCLE_STATES)
    relationship = segments_of(scores, "relationship_level", RELATIONSHIP_LEVELS)
    figures = {"groups": figure_png(groups_figure(groups, settings))}
    words = {"p": p, "new_days": settings.new_days, **settings.lifecycle}
    segment_metrics = sources.metrics.get("segment")
    context = {
        "title": "Customer value: who to invest in",
        "as_of": reader_date(scores["as_of"].iloc[0]),
        "customers": fmt(total),
        "unit_note": settings.money.unit_note,
        "value_sentence": settings.value_sentence,
        "models_href": models_href,
        "lists_href": lists_href,
        "period": p,
        "sections": SECTIONS,
        "headings": dict(SECTIONS),
        "banner": data_quality_banner(sources.metrics),
        "summary": summary_sentence(groups, settings),
        "todo": todo_items(groups, settings, lists_href),
        "reactivate": reactivation_sentence(scores),
        "cut_sentence": cut_sentence(segment_metrics, settings),
        "group_table": segment_table(groups, QUADRANT_NAMES, settings, "group-table", "Customers and value per group",
                                     lists_href),  # fmt: skip
        "group_means": table_means(settings),
        "group_few": [s for g in groups
                      if (s := when_few(f"Group {g.label}", g.customers, total, QUADRANT_EMPTY[g.label].format(p=p)))],
        "group_pictures": [Picture("groups", "Share of customers and of value per group.", data_uri(figures["groups"]))],
        "tier_table": segment_table(tiers, {}, settings, "tier-table", "Customers and value per tier", lists_href),
        "tier_means": table_means(settings) + " Platinum and gold are the most valuable fifth of customers.",
        "tier_few": [s for t in tiers if (s := when_few(t.label.capitalize(), t.customers, total,
                                                        TIER_WHY_FEW[t.label].format(p=p)))],  # fmt: skip
        "tier_todo": Table("Who they are and what to do", ["tier", "who they are", "what to do"],
                           [[t, TIER_WHO[t], TIER_TODO[t]] for t in TIERS], css_id="tier-todo-table"),  # fmt: skip
        "lifecycle_table": segment_table(lifecycle, LIFECYCLE_NAMES, settings, "lifecycle-table",
                                         "Customers by activity", None),  # fmt: skip
        "lifecycle_means": "Activity compares the time since a customer's last purchase with their own usual gap "
        "between purchases: " + " ".join(f"{plain(s).capitalize()}: {LIFECYCLE_WHO[s].format(**words)}" for s in LIFECYCLE_STATES),
        "lifecycle_few": [s for g in lifecycle if (s := when_few(plain(g.label).capitalize(), g.customers, total,
                                                                  LIFECYCLE_WHY_FEW[g.label].format(**words)))],  # fmt: skip
        "relationship_table": segment_table(relationship, {}, settings, "relationship-table",
                                            "Recommended depth of relationship", None),  # fmt: skip
        "relationship_means": "How closely to stay in touch, chosen by the size of the customer's group and tier and "
        "by how much margin each of its customers brings: " + " ".join(f"{r.capitalize()}: {RELATIONSHIP_WHAT[r]}" for r in RELATIONSHIP_LEVELS),
        "relationship_few": [s for r in relationship if (s := when_few(r.label.capitalize(), r.customers, total,
                                                                        relationship_reason(r.label)))],  # fmt: skip
        "concentration": concentration_sentence(segment_metrics),
        "list_links": [(name, f"{lists_href}/{name}") for name in segment_lists(scores.iloc[0:0])],
        "list_columns": list_columns_table(settings),
        "quality": quality_sentence(sources.metrics.get("ingest")),
    }
    return render_page(TEMPLATE, context), figures
