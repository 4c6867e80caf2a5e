"""`python -m pipelines.summary`: where a run's outputs are, with the headline numbers.

Called at the end of `make run`. Reads params.yaml and metrics/export.json, plus
metrics/ingest.json, metrics/churn.json and metrics/clv.json for the notices the report also shows at its top
(rows rejected by ingest; which churn probability was exported). No MLflow query, so it
returns at once; it prints a few lines to stdout: this is a CLI summary.

It runs at the end of every `make run`, so it imports only light modules (no pandas,
matplotlib, SQLAlchemy or MLflow): the notices come from pipelines.notices, and the database
line needs SQLAlchemy only for a configured export.database_url.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pipelines.catalog import Catalog, artifact, project_root, tracking_dir
from pipelines.config import ConfigError, Params, load_params
from pipelines.notices import run_notices


def mlflow_location(params: Params, paths: Catalog) -> str:
    """The tracking URI the stages log to (MLFLOW_TRACKING_URI, else the project's sqlite store)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{tracking_dir(params, paths.root) / 'mlflow.db'}"


def database_location(params: Params, paths: Catalog) -> str:
    """The export's database URL, password masked. The default, the project's SQLite file, is
    rendered without SQLAlchemy (0.3-0.8 s to import) exactly as pipelines.database renders it:
    the path quoted like a URL's database part."""
    if params.export.database_url is None:
        return f"sqlite:///{quote(str(paths.DEFAULT_DATABASE), safe=' +/')}"
    from pipelines.database import database_url, masked_url

    return masked_url(database_url(params.export, paths))


def read_json(path: Path) -> Any:
    """pipelines.files.read_json, without the pandas and pyarrow that module imports."""
    return json.loads(path.read_text())


def summary_lines(params: Params, paths: Catalog) -> list[str]:
    """The summary of the last export of the project; one line saying what to run when there is none."""
    metrics_path = paths.metrics_file("export")
    if not metrics_path.exists():
        return [f"no export yet ({metrics_path} not found): run `make run` or `cvp export`"]
    metrics = read_json(metrics_path)
    headline = metrics.get("headline", {})
    rows = metrics["rows"]
    quadrant_iv = headline.get("customers_by_quadrant", {}).get("IV", 0)
    where = [
        ("scores", f"{paths.SCORES_PARQUET}  (+ {paths.SCORES_CSV.name})"),
        ("database", f"{database_location(params, paths)}  table {params.export.table}"),
        ("report", f"{paths.REPORT_HTML}  (model evaluation: {paths.MODELS_HTML.name}; lists: {artifact('segment_lists').path}/)"),
        ("notebook", str(paths.EXPLORE_HTML)),
        ("metrics", str(paths.METRICS)),
        ("MLflow", mlflow_location(params, paths)),
    ]
    lines = [f"Customer scores at {metrics['as_of']}: {rows:,} customers, models {metrics['model_version']}"]
    lines += [f"  {name:<10}{value}" for name, value in where]
    if headline:
        lines.append(
            f"  total CLV {headline['total_clv']:,.2f} over the next {params.data.horizon_days} days; "
            f"mean churn probability {headline['mean_churn_probability']:.3f}; "
            f"quadrant IV (top priority) {quadrant_iv:,} customers ({quadrant_iv / rows:.1%})"
        )
    lines += notice_lines(paths)
    return lines


def notice_lines(paths: Catalog) -> list[str]:
    """The report's notices as summary lines (``WARNING:`` first when they warn)."""
    metrics = {}
    for stage in ("ingest", "churn", "clv"):
        path = paths.metrics_file(stage)
        try:
            metrics[stage] = read_json(path)
        except (FileNotFoundError, ValueError):
            continue  # the export ran without them (e.g. inputs written by hand): nothing to say
    return [f"  {'WARNING: ' if n.level == 'warning' else ''}{n.text}" for n in run_notices(metrics)]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    params_path = Path(args[0]) if args else Path("params.yaml")
    try:
        params = load_params(params_path)
    except ConfigError as exc:
        sys.stderr.write(f"cvp summary: {exc}\n")
        return 2
    paths = Catalog(project_root(params_path.resolve().parent), params_path)  # the project of the params file
    print("\n".join(summary_lines(params, paths)))
    return 0 if paths.metrics_file("export").exists() else 1


if __name__ == "__main__":
    raise SystemExit(main())
