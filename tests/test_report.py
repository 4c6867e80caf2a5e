"""The model page (reports/models.html): stable sections, self-contained, tables that agree with
their sources. The marketing page and the customer lists: tests/test_report_marketing.py."""

from __future__ import annotations

import base64
import re
import struct
from html.parser import HTMLParser

import mlflow
import pandas as pd
import pytest

from pipelines import export, files, report, tracking
from pipelines.catalog import Catalog
from pipelines.config import load_params
from tests.test_export import CONTRACT, assemble, tiny_inputs
from tests.test_export_fixture import (  # noqa: F401
    copy_outputs,
    exported_project,
    mlflow_store,
    project_env,
    stage_outputs,
    write_params,
)

SECTION_IDS = [
    "overview", "quadrants", "tiers", "concentration", "distributions", "model-evaluation", "data-quality",
    "column-dictionary",
]  # fmt: skip


class ReportParser(HTMLParser):
    """Sections (id, h2 text), tables by id (rows of cell texts), and every src/href/tag seen."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.headings: list[str] = []
        self.tables: dict[str, list[list[str]]] = {}
        self.srcs: list[str] = []
        self.hrefs: list[str] = []
        self.tags: set[str] = set()
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._in_h2 = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.add(tag)
        if tag == "section":
            self.sections.append(attrs.get("id", ""))
        elif tag == "h2":
            self._in_h2 = True
            self.headings.append("")
        elif tag == "table":
            self._table = attrs.get("id", "")
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []
        if "src" in attrs:
            self.srcs.append(attrs["src"])
        if "href" in attrs:
            self.hrefs.append(attrs["href"])

    def handle_endtag(self, tag):
        if tag == "h2":
            self._in_h2 = False
        elif tag in ("td", "th") and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._in_h2:
            self.headings[-1] += data
        if self._cell is not None:
            self._cell.append(data)


def parse(html: str) -> ReportParser:
    parser = ReportParser()
    parser.feed(html)
    return parser


def body_rows(parser: ReportParser, table_id: str) -> list[list[str]]:
    return parser.tables[table_id][1:]  # the first row holds the headers


def png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    return struct.unpack(">II", png[16:24])


@pytest.fixture(scope="module")
def html(exported_project) -> str:
    return Catalog(exported_project).MODELS_HTML.read_text()


def test_sections_have_stable_ids_and_headings(html):
    parsed = parse(html)
    assert parsed.sections == SECTION_IDS
    assert [s[0] for s in report.MODEL_SECTIONS] == SECTION_IDS
    assert parsed.headings == [heading for _, heading in report.MODEL_SECTIONS]


def test_report_is_self_contained(html):
    parsed = parse(html)
    assert not parsed.tags & {"script", "link", "iframe", "object", "embed"}
    assert parsed.srcs and all(src.startswith("data:image/png;base64,") for src in parsed.srcs)
    assert all(href.startswith("#") for href in parsed.hrefs if href != "segments.html")
    assert "segments.html" in parsed.hrefs  # the link back to the marketing page
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", html, re.IGNORECASE)
    assert "@import" not in html and "url(" not in html


def test_every_embedded_figure_decodes_as_a_png(html):
    srcs = parse(html).srcs
    # 4 segment figures, 2 CLV, 2 churn, 2 histograms drawn from the export
    assert len(srcs) == 10
    for src in srcs:
        width, height = png_size(base64.b64decode(src.split(",", 1)[1], validate=True))
        assert width > 100 and height > 100


def test_quadrant_and_tier_tables_match_the_segment_summary(html, exported_project):
    parsed = parse(html)
    paths = Catalog(exported_project)
    summary = pd.read_parquet(paths.SEGMENT_SUMMARY)
    for group in ("quadrant", "tier"):
        expected = summary[summary["group_by"] == group]
        rows = body_rows(parsed, f"{group}-table")
        assert [r[0] for r in rows] == expected["segment"].tolist()
        customers_column = 3 if group == "quadrant" else 1
        assert [int(r[customers_column].replace(",", "")) for r in rows] == expected["customers"].tolist()
    assert '<th class="num">customers</th>' in html and "<th>retention strategy</th>" in html  # numbers right-aligned
    segment_metrics = files.read_json(paths.metrics_file("segment"))
    cuts = body_rows(parsed, "cuts-table")
    assert [r[0] for r in cuts] == ["current value", "growth potential"]
    assert cuts[1][2] == report.pct(segment_metrics["cuts"]["high_growth_potential_share"])
    quadrant_iv = body_rows(parsed, "quadrant-table")[3]
    assert quadrant_iv[1:3] == ["top priority", "spare no effort to keep and grow the relationship"]


def test_label_tables_count_the_exported_customers(html, exported_project):
    scores = pd.read_parquet(Catalog(exported_project).SCORES_PARQUET)
    rows = body_rows(parse(html), "lifecycle_state-table")
    counts = scores["lifecycle_state"].value_counts()
    assert {r[0]: int(r[1]) for r in rows} == {s: int(counts.get(s, 0)) for s in ("new", "active", "drowsy", "half_asleep", "dormant")}


def test_data_quality_shows_accepted_and_rejected_rows(html):
    parsed = parse(html)
    assert body_rows(parsed, "ingest-rows-table") == [
        ["accepted", "1,240", "99.2%"], ["rejected (quarantined)", "10", "0.8%"], ["read", "1,250", "100%"],
    ]  # fmt: skip
    assert body_rows(parsed, "ingest-reasons-table") == [["bad timestamp", "6"], ["bad amount", "4"]]  # zeros left out


def test_model_evaluation_shows_the_holdout_metrics(html):
    parsed = parse(html)
    holdout = {(r[0], r[1]): r for r in body_rows(parsed, "clv-holdout-table")}
    assert holdout[("purchases", "model")][2] == "0.6100" and holdout[("purchases", "baseline")][2] == "0.9300"
    assert holdout[("spend", "model")][6] == "4%"
    churn = {r[0]: r for r in body_rows(parsed, "churn-comparison-table")}
    assert churn["classifier_calibrated"][1:4] == ["0.7800", "0.8000", "0.1710"]
    assert [r[0] for r in body_rows(parsed, "clv-selection-table")] == ["bgnbd (chosen)", "mbgnbd", "paretonbd"]
    claims = dict(map(tuple, body_rows(parsed, "churn-claims-table")))
    assert claims["classifier beats baseline brier"] == "yes"
    assert claims["bootstrap: auc difference ci95"] == "[0.0100, 0.0500]"
    growth = {r[0]: r[1:] for r in body_rows(parsed, "growth-ranking-table")}
    assert growth == {"clv": ["0.4000", "0.7670"], "combined": ["0.4100", "0.7770"], "oracle": ["–", "1.00"]}


def test_column_dictionary_lists_the_contract(html):
    rows = body_rows(parse(html), "column-table")
    assert [r[0] for r in rows] == CONTRACT
    assert rows[CONTRACT.index("quadrant")][4] == "I, II, III, IV"
    assert rows[CONTRACT.index("churn_probability")][4] == "[0, 1]"


def test_histograms_count_every_customer():
    scores = assemble(tiny_inputs())
    scores = pd.concat([scores] * 40, ignore_index=True).assign(clv=[float(i) for i in range(120)])
    for figure in (report.churn_histogram(scores), report.clv_histogram(scores)):
        heights = [patch.get_height() for patch in figure.axes[0].patches]
        assert sum(heights) == len(scores)
    clv_bars = [p.get_height() for p in report.clv_histogram(scores).axes[0].patches]
    assert clv_bars[-1] >= 2  # the values above the 99th percentile land in the last bar


def test_missing_sources_show_not_available_and_the_page_still_renders():
    rendered = report.render_report(assemble(tiny_inputs()), report.ReportSources())
    parsed = parse(rendered.models_html)
    assert parsed.sections == SECTION_IDS
    for what in ("segment summary", "CLV holdout metrics", "churn evaluation metrics", "ingest metrics", "concentration metrics"):
        assert f"Not available: {what}" in rendered.models_html
    assert len(parsed.srcs) == 2 and set(rendered.figures) == {"churn_probability_hist", "clv_hist", "groups"}
    marketing = parse(rendered.html)
    assert len(marketing.srcs) == 1 and "Not available: how value is spread" in rendered.html


def test_partial_metrics_are_shown_with_gaps():
    sources = report.ReportSources(metrics={
        "clv": {"holdout": {"purchases": {"model": {"mae": 1.25}}}},
        "churn": {"models": {"classifier_calibrated": {"roc_auc": 0.7}}},
        "ingest": {"rows_accepted": 5},
    })  # fmt: skip
    parsed = parse(report.render_report(assemble(tiny_inputs()), sources).models_html)
    assert body_rows(parsed, "clv-holdout-table") == [["purchases", "model", "1.25", "–", "–", "–", "–"]]
    assert body_rows(parsed, "churn-comparison-table") == [["classifier_calibrated", "0.7000", "–", "–", "–", "–", "–"]]
    assert "ingest-rows-table" not in parsed.tables


def test_export_run_logs_report_figures_counts_and_hash(exported_project, mlflow_store):
    params = load_params(exported_project / "params.yaml")
    with project_env(exported_project) as paths:
        tracking.configure(params, paths.root)
        metrics = files.read_json(paths.metrics_file("export"))
        run = mlflow.search_runs(
            filter_string=f"tags.`cvp.stage` = 'export' and tags.`cvp.scores_sha256` = '{metrics['scores_sha256']}'",
            output_format="list", max_results=1,
        )[0]  # fmt: skip
        client = mlflow.MlflowClient()
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        figures = {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
    assert {"report", "figures", "segments", "export.json"} <= artifacts
    assert figures == {"figures/churn_probability_hist.png", "figures/clv_hist.png", "figures/groups.png"}
    reports = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert reports == {"report/segments.html", "report/models.html"}
    assert run.data.metrics["rows"] == 300 and run.data.metrics["table.inserted"] == 300
    assert run.data.tags["cvp.model_version"] == "cvp-clv/3;cvp-churn/2"
    assert run.data.params["database_url"] == "sqlite:///exports/scores.db"


def test_segment_summary_is_not_logged_twice(tmp_path, mlflow_store, stage_outputs):
    copy_outputs(stage_outputs, tmp_path)
    params_path = write_params(tmp_path, mlflow_store, table="scores_once")
    with project_env(tmp_path) as paths:
        params = load_params(params_path)
        with tracking.stage_run("segment", params, paths) as segment_run:
            mlflow.log_table(pd.read_parquet(paths.SEGMENT_SUMMARY), artifact_file="summary.json")
        export.run(params, paths)
        parent = segment_run.data.tags["mlflow.parentRunId"]
        (run,) = mlflow.search_runs(
            filter_string=f"tags.`mlflow.parentRunId` = '{parent}' and tags.`cvp.stage` = 'export'", output_format="list"
        )
        artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert "report" in artifacts and "segments" not in artifacts


def test_unreadable_or_missing_sources_are_skipped_with_a_warning(tmp_path, caplog):
    paths = Catalog(tmp_path)
    files.write_text("{not json", paths.metrics_file("clv"))
    files.write_json({"rows_accepted": 3, "rows_rejected": 1}, paths.metrics_file("ingest"))
    with caplog.at_level("WARNING", logger="pipelines.report_common"):
        sources = report.load_sources(paths)
    assert set(sources.metrics) == {"ingest"} and sources.summary is None
    assert sources.plots == {"clv": {}, "churn": {}, "segment": {}}
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "metrics/clv.json is not valid JSON" in messages and "metrics/churn.json not found" in messages


def test_the_interval_table_shows_holdout_coverage_overall_and_by_repeat_purchases():
    from pipelines.report_models import interval_table

    holdout = {"customers": 100, "coverage_pit": 0.7986, "coverage": 0.94, "expected_coverage": 0.9402, "mean_width": 7.05,
               "by_frequency": {"0": {"customers": 60, "coverage_pit": 0.80, "coverage": 0.97, "expected_coverage": 0.96,
                                      "mean_width": 0.0}}}  # fmt: skip
    table = interval_table(holdout)
    assert [row[0] for row in table.rows] == ["all customers", "0 repeat purchase days"]
    assert table.rows[0][1:3] == ["100", "79.9%"] and table.rows[1][2:5] == ["80%", "97%", "96%"]
    assert interval_table({"coverage": 0.9}) is None and interval_table(None) is None
