"""The marketing page (reports/segments.html) and the customer lists beside it: money and dates in
the reader's form, plain words, the answer first, the data-quality banner, one sentence per empty
or tiny segment, and lists that agree with the export."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from models.segments import QUADRANTS, TIERS
from pipelines import files, report
from pipelines.catalog import Catalog
from pipelines.config import ConfigError, ReportParams, load_params, parse_params
from pipelines.report_common import Money, reader_date
from pipelines.report_marketing import (
    LIST_COLUMNS,
    PageSettings,
    data_quality_banner,
    relationship_reason,
    segment_lists,
    when_few,
)
from tests.test_export import assemble, tiny_inputs
from tests.test_export_fixture import exported_project, ingest_metrics, mlflow_store  # noqa: F401
from tests.test_report import body_rows, parse

MARKETING_SECTIONS = ["what-to-do", "groups", "tiers", "activity", "concentration", "lists", "data-quality"]
# Words of the model page that must not reach the marketer.
JARGON = ("P(alive)", "p_alive", "Gini", "Spearman", "AUC", "SHAP", "Brier", "log loss", "BG/NBD", "Gamma-Gamma",
          "baseline_", "holdout", "calibrat", "symlog", "grouped_split", "mbgnbd", "log-odds")  # fmt: skip


@pytest.fixture(scope="module")
def page(exported_project) -> str:
    return Catalog(exported_project).REPORT_HTML.read_text()


def visible_text(html: str) -> str:
    """The page without tags, attribute values and the CSS (what a reader can see)."""
    html = re.sub(r"<style>.*?</style>", "", html, flags=re.S)
    html = re.sub(r'src="data:[^"]*"', "", html)
    return re.sub(r"<[^>]+>", " ", html)


# --------------------------------------------------------------------------- units


def test_money_is_written_with_the_currency_symbol_or_as_plain_numbers():
    assert Money("EUR")(1235.7) == "€1,236"
    assert Money("USD")(22.274) == "$22.27"
    assert Money("GBP")(-5) == "-£5.00"
    assert Money("CHF")(100) == "CHF 100"  # no symbol known: the code in front
    assert Money()(64555.2) == "64,555" and Money()(0.333) == "0.33" and Money()(0) == "0"
    assert Money("EUR")(-0.001) == "€0.00"  # rounds to zero: no minus sign
    assert Money("EUR")(None) == "–" and Money()(float("nan")) == "–"
    assert Money().unit_note == "Amounts are plain numbers in the money units of the input data."
    assert Money("EUR").unit_note == "Amounts are in EUR (€)."


def test_money_cells_are_right_aligned_as_numbers():
    table = report.Table("t", ["a", "b"], [["€1,234", "CHF 5.00"], ["-$3.10", "–"], ["A$7", "£0"]])
    assert table.numeric == [True, True]
    assert report.Table("t", ["a"], [["top priority"], ["€1"]]).numeric == [False]


def test_dates_are_written_as_day_month_year():
    assert reader_date(pd.Timestamp("1998-06-30")) == "30 Jun 1998"
    assert reader_date("2024-01-05") == "5 Jan 2024"


def test_value_is_profit_margin_or_revenue_as_the_clv_stage_applies_it():
    assert PageSettings(margin=0.3).value_word == "profit margin"
    assert "30% of what customers spend" in PageSettings(margin=0.3).value_sentence
    assert PageSettings(margin=1.0).value_word == "revenue"  # no margin applied: revenue
    with_cost = PageSettings(margin=1.0, has_cost=True)
    assert with_cost.value_word == "profit margin" and "minus the cost" in with_cost.value_sentence


def test_empty_and_tiny_segments_get_one_sentence():
    assert when_few("Group III", 0, 23570, "every recent buyer also grows.") == "Group III: no customers, because every recent buyer also grows."
    assert when_few("Partnership", 17, 23570, "it is rare.") == "Partnership: only 17 customers (0.1%), because it is rare."
    assert when_few("Gold", 4010, 23570, "x") is None  # 17% is not tiny
    assert relationship_reason("partnership") == (
        "this level is recommended only for a small group whose members each bring a high margin "
        "(group = customer group and tier together)."
    )


INGEST_CLEAN = {"rows_in": 5, "rows_accepted": 5, "rows_rejected": 0}


def test_banner_shows_rejected_rows_and_fallbacks_only():
    assert data_quality_banner({"ingest": INGEST_CLEAN, "churn": {"churn_source": "classifier"},
                                "clv": {"gamma_gamma": {"source": "gamma_gamma"}}}) == []  # fmt: skip
    # a purchase-model candidate skipped by the model choice is not a fallback
    skipped = {"gamma_gamma": {"source": "gamma_gamma"}, "model_selection": {"candidates": {"paretonbd": {"status": "skipped"}}}}
    assert data_quality_banner({"clv": skipped}) == []
    (rejected,) = data_quality_banner({"ingest": ingest_metrics()})
    assert rejected.key == "rejected-rows"
    assert rejected.text == ("10 of 1,250 rows of the input data (0.8%) were rejected as invalid (mostly: bad timestamp, "
                             "bad amount) and are left out of every number on this page.")  # fmt: skip
    one = data_quality_banner({"ingest": {"rows_in": 20000, "rows_accepted": 19999, "rows_rejected": 1}})
    assert "(under 0.1%)" in one[0].text
    keys = [n.key for n in data_quality_banner({
        "churn": {"churn_source": "baseline:p_no_purchase"}, "clv": {"gamma_gamma": {"source": "fallback:population_mean"}},
    })]  # fmt: skip
    assert keys == ["churn-fallback", "spend-fallback"]


def test_segment_lists_hold_each_segment_most_valuable_first():
    scores = assemble(tiny_inputs())
    lists = segment_lists(scores)
    assert list(lists) == [f"quadrant_{q}.csv" for q in QUADRANTS] + [f"tier_{t}.csv" for t in TIERS]
    for kind, labels in (("quadrant", QUADRANTS), ("tier", TIERS)):
        counts = scores[kind].value_counts()
        assert {label: len(lists[f"{kind}_{label}.csv"]) for label in labels} == {l: int(counts.get(l, 0)) for l in labels}
    for frame in lists.values():
        assert list(frame.columns) == list(LIST_COLUMNS)
        value = (frame["current_value"] + frame["growth_potential"]).tolist()
        assert value == sorted(value, reverse=True)


def test_amounts_use_the_currency_and_the_page_avoids_model_words():
    scores = assemble(tiny_inputs())
    settings = PageSettings(money=Money("EUR"))
    html = report.render_report(scores, report.ReportSources(), settings=settings).html
    parsed = parse(html)
    money_cells = [row[3:6] for row in body_rows(parsed, "group-table")]
    assert money_cells and all(cell.startswith(("€", "-€")) or cell == "–" for row in money_cells for cell in row)
    assert "money units" not in html and "Amounts are in EUR (€)." in html
    plain = report.render_report(scores, report.ReportSources()).html
    assert visible_text(plain).count("money units") == 1  # said once


# --------------------------------------------------------------------------- the exported page


def test_page_answers_first_then_groups_tiers_and_lists(page):
    parsed = parse(page)
    assert parsed.sections == MARKETING_SECTIONS
    assert [s[0] for s in report.SECTIONS] == MARKETING_SECTIONS
    summary = re.search(r'<p class="lead">(.*?)</p>', page, re.S).group(1)
    assert summary.startswith("Invest in ") and "of your 300 customers" in summary
    assert page.index('id="todo-IV"') < page.index('id="todo-III"') < page.index('id="todo-II"') < page.index('id="todo-I"')
    assert "models.html" in parsed.hrefs
    assert {h for h in parsed.hrefs if h.endswith(".csv")} == {f"segments/quadrant_{q}.csv" for q in QUADRANTS} | {
        f"segments/tier_{t}.csv" for t in TIERS
    }
    assert page.count('<p class="means">What this means:') == 4  # under each table of numbers


def test_page_speaks_plain_words(page):
    text = visible_text(page)
    found = [word for word in JARGON if word.lower() in text.lower()]
    assert found == []


def test_page_dates_and_counts_agree_with_the_export(page, exported_project):
    scores = pd.read_parquet(Catalog(exported_project).SCORES_PARQUET)
    assert "as of 30 Jun 2000" in page
    rows = body_rows(parse(page), "group-table")
    counts = scores["quadrant"].value_counts()
    assert [int(r[1].replace(",", "")) for r in rows] == [int(counts.get(q, 0)) for q in QUADRANTS]
    expected = scores.groupby("quadrant")["growth_potential"].sum()
    assert [r[4] for r in rows] == [report.Money()(float(expected.get(q, 0.0))) for q in QUADRANTS]


def test_banner_opens_the_page_when_rows_were_rejected(page):
    assert 'id="data-quality-banner"' in page
    assert page.index('id="data-quality-banner"') < page.index("<nav>") < page.index('<section id="what-to-do">')
    assert 'id="banner-rejected-rows"' in page and "10 of 1,250 rows" in page


def test_lists_beside_the_page_match_the_export_counts(exported_project):
    paths = Catalog(exported_project)
    metrics = files.read_json(paths.metrics_file("export"))["headline"]
    for kind, labels, counts in (("quadrant", QUADRANTS, metrics["customers_by_quadrant"]),
                                 ("tier", TIERS, metrics["customers_by_tier"])):  # fmt: skip
        for label in labels:
            frame = pd.read_csv(paths.SEGMENT_LISTS / f"{kind}_{label}.csv", dtype={"customer_id": str})
            assert len(frame) == counts[label], (kind, label)
            assert list(frame.columns) == list(LIST_COLUMNS)
            assert (frame[kind] == label).all()
    scores = pd.read_parquet(paths.SCORES_PARQUET)
    everyone = pd.concat(pd.read_csv(p, dtype={"customer_id": str}) for p in sorted(paths.SEGMENT_LISTS.glob("quadrant_*.csv")))
    assert sorted(everyone["customer_id"]) == sorted(scores["customer_id"])


def test_page_settings_come_from_params():
    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    settings = report.page_settings(params)
    assert settings.money == Money(None) and settings.horizon_days == params.data.horizon_days == 91
    assert settings.margin == 0.3 and not settings.has_cost and settings.value_word == "profit margin"
    assert settings.new_days == 90 and settings.lifecycle == {"drowsy": 1.5, "half_asleep": 2.5, "dormant": 4.0}
    columns = params.data.columns.model_copy(update={"cost": "unit_cost"})
    custom = params.model_copy(update={"report": ReportParams(currency="GBP"), "data": params.data.model_copy(update={"columns": columns})})
    assert report.page_settings(custom).money(1500) == "£1,500" and report.page_settings(custom).has_cost
    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    raw["report"] = {"currency": "eur"}
    with pytest.raises(ConfigError, match=r"^params.yaml: bad value for 'report.currency': String should match"):
        parse_params(raw)
