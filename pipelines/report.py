"""The two HTML reports of the export stage, and the customer lists beside them.

- reports/segments.html (pipelines/report_marketing.py): for the marketer, plain words and money;
- reports/models.html (pipelines/report_models.py): the model evaluation for data scientists;
- reports/segments/<quadrant|tier>_<label>.csv: one customer list per group and tier.

Both pages are self-contained (inline CSS, figures as base64 PNG data URIs, no script, no
external URL) and link only to each other and to the lists. They are built from the export
frame plus what the other stages wrote (segment summary, metrics/*.json, plots/*/*.png); a
missing optional input shows as "not available" instead of stopping the export. Shared pieces
live in pipelines/report_common.py; the names below are re-exported for the other modules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pandas as pd

from pipelines.catalog import artifact
from pipelines.config import Params
from pipelines.report_common import (  # noqa: F401  (re-exported)
    KNOWN_FIGURES,
    METRIC_STAGES,
    PLOT_STAGES,
    Money,
    Notice,
    Picture,
    ReportSources,
    Table,
    churn_histogram,
    churn_source_notice,
    clv_histogram,
    dig,
    fmt,
    load_sources,
    own_figures,
    pct,
    reader_date,
    rejected_share,
    rejected_share_notice,
    run_notices,
)
from pipelines.report_marketing import SECTIONS  # noqa: F401  (the marketing page's section ids)
from pipelines.report_marketing import PageSettings, render_marketing_page, segment_lists
from pipelines.report_models import SECTIONS as MODEL_SECTIONS  # noqa: F401  (the model page's section ids)
from pipelines.report_models import render_models_page

# The pages link to each other and to the lists by their paths relative to the reports directory.
REPORT_HREF = PurePosixPath(artifact("report_html").path).name
MODELS_HREF = PurePosixPath(artifact("models_html").path).name
LISTS_HREF = PurePosixPath(artifact("segment_lists").path).relative_to(PurePosixPath(artifact("report_html").path).parent).as_posix()


@dataclass(frozen=True)
class RenderedReport:
    html: str  # reports/segments.html
    models_html: str  # reports/models.html
    figures: dict[str, bytes]  # the figures drawn by the report, PNG bytes by name
    lists: dict[str, pd.DataFrame] = field(default_factory=dict)  # customer lists by file name


def render_report(
    scores: pd.DataFrame,
    sources: ReportSources,
    table_name: str = "customer_scores",
    horizon: str = "horizon",
    settings: PageSettings | None = None,
) -> RenderedReport:
    """Both pages, the figures drawn for them and the customer lists, from the export frame and the sources."""
    settings = settings or PageSettings()
    figures = own_figures(scores)
    marketing, marketing_figures = render_marketing_page(
        scores, sources, settings, models_href=MODELS_HREF, lists_href=LISTS_HREF
    )
    models = render_models_page(scores, sources, figures, table_name, horizon, marketing_href=REPORT_HREF)
    return RenderedReport(marketing, models, {**figures, **marketing_figures}, segment_lists(scores))


def page_settings(params: Params) -> PageSettings:
    """The marketing page's settings from params.yaml: report.currency, the horizon, clv.margin,
    whether a cost column gives the margin, and the lifecycle thresholds."""
    lifecycle = params.segment.lifecycle
    return PageSettings(
        money=Money(params.report.currency),
        horizon_days=params.data.horizon_days,
        margin=params.clv.margin,
        has_cost=params.data.columns.cost is not None,
        new_days=lifecycle.new_days,
        lifecycle={"drowsy": lifecycle.drowsy, "half_asleep": lifecycle.half_asleep, "dormant": lifecycle.dormant},
    )


def list_paths(rendered: RenderedReport, lists_dir: Path) -> dict[Path, pd.DataFrame]:
    """Where each customer list is written (``lists_dir``: the catalog's SEGMENT_LISTS)."""
    return {lists_dir / name: frame for name, frame in rendered.lists.items()}
