"""`python -m pipelines.summary`: locations and headline numbers of the last export."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import catalog, files, summary, tracking
from pipelines.catalog import Catalog
from pipelines.config import load_params, parse_params
from tests.test_export_fixture import exported_project, mlflow_store, project_env  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]


def test_summary_names_every_location_and_the_headline(exported_project, mlflow_store, capsys):
    with project_env(exported_project) as paths:
        code = summary.main([str(exported_project / "params.yaml")])
    out = capsys.readouterr().out
    metrics = files.read_json(paths.metrics_file("export"))
    quadrant_iv = metrics["headline"]["customers_by_quadrant"]["IV"]
    assert code == 0
    assert out.splitlines()[0] == "Customer scores at 2000-06-30: 300 customers, models cvp-clv/3;cvp-churn/2"
    for expected in (
        f"scores    {exported_project / 'exports' / 'scores.parquet'}  (+ scores.csv)",
        f"sqlite:///{exported_project / 'exports' / 'scores.db'}  table customer_scores",
        str(exported_project / "reports" / "segments.html"),
        "(model evaluation: models.html; lists: reports/segments/)",
        f"notebook  {exported_project / 'reports' / 'explore.html'}",
        f"sqlite:///{mlflow_store / 'mlflow.db'}",
        f"total CLV {metrics['headline']['total_clv']:,.2f} over the next 91 days",
        f"quadrant IV (top priority) {quadrant_iv} customers ({quadrant_iv / 300:.1%})",
    ):
        assert expected in out
    assert len(out.splitlines()) <= 9


def test_summary_without_an_export_says_what_to_run(exported_project, tmp_path, capsys):
    shutil.copy(exported_project / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    with project_env(tmp_path) as paths:
        code = summary.main([str(tmp_path / "params.yaml")])
        lines = summary.summary_lines(load_params(tmp_path / "params.yaml"), paths)
    assert code == 1
    assert lines == [f"no export yet ({tmp_path / 'metrics' / 'export.json'} not found): run `make run` or `cvp export`"]
    assert capsys.readouterr().out.strip() == lines[0]


# --------------------------------------------------------------------------- light on purpose

HEAVY = ("pandas", "numpy", "pyarrow", "duckdb", "ibis", "pandera", "mlflow", "sqlalchemy", "matplotlib", "jinja2")


def _small_project(root: Path) -> Path:
    """A project with the metrics the summary reads (no stage run): an export, rejected rows."""
    (root / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    (root / "dvc.yaml").write_text("stages: {}\n")
    headline = {"total_clv": 1234.5, "mean_churn_probability": 0.25, "customers_by_quadrant": {"IV": 30}}
    export = {"as_of": "2000-06-30", "rows": 300, "model_version": "cvp-clv/3;cvp-churn/2", "headline": headline}
    ingest = {"rows_in": 1000, "rows_accepted": 990, "rows_rejected": 10, "rejected_by_reason": {"missing_amount": 10}}
    files.write_json(export, root / "metrics" / "export.json")
    files.write_json(ingest, root / "metrics" / "ingest.json")
    return root / "params.yaml"


def test_the_summary_loads_no_heavy_library(tmp_path):
    """`make run` ends with it: it must not pay for pandas, matplotlib, SQLAlchemy or MLflow."""
    params = _small_project(tmp_path)
    code = (
        "import sys\nfrom pipelines import summary\ncode = summary.main([sys.argv[1]])\n"
        f"print(code, sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))"
    )
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    result = subprocess.run([sys.executable, "-c", code, str(params)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == "0 []", result.stdout + result.stderr
    assert lines[0] == "Customer scores at 2000-06-30: 300 customers, models cvp-clv/3;cvp-churn/2"
    assert f"  database  sqlite:///{tmp_path / 'exports' / 'scores.db'}  table customer_scores" in lines
    assert "  WARNING: ingest rejected 10 of 1,000 input rows (1%; top reasons: missing_amount 10)" in lines[-2]


@pytest.mark.parametrize("name", ["plain", "with space", "a@b%c?d#e+f", "ü"])
def test_the_default_database_line_is_the_one_pipelines_database_renders(tmp_path, name):
    from pipelines.database import database_url, masked_url

    paths = Catalog(tmp_path / name)
    params = load_params(ROOT / "params.yaml")
    assert params.export.database_url is None
    assert summary.database_location(params, paths) == masked_url(database_url(params.export, paths))


def test_a_configured_database_url_is_masked(tmp_path):
    raw = load_params(ROOT / "params.yaml").model_dump()
    raw["export"]["database_url"] = "postgresql+psycopg://cvp:secret@db.example:5432/scores"
    line = summary.database_location(parse_params(raw), Catalog(tmp_path))
    assert line == "postgresql+psycopg://cvp:***@db.example:5432/scores"


def test_the_project_and_the_mlflow_store_are_found_as_pipelines_tracking_finds_them(tmp_path):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    workspace = tmp_path / ".dvc" / "tmp" / "exps" / "run" / "abc"
    nested = tmp_path / "notebooks" / "deep"
    for start in (tmp_path, workspace, nested):
        start.mkdir(parents=True, exist_ok=True)
        assert catalog.project_root(start) == tracking.project_root(start) == tmp_path
    raw = load_params(ROOT / "params.yaml").model_dump()
    for configured in (None, "store", str(tmp_path / "elsewhere")):
        raw["mlflow"]["tracking_dir"] = configured
        params = parse_params(raw)
        assert catalog.tracking_dir(params, nested) == tracking.tracking_dir(params, nested)
