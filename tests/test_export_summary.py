"""`python -m pipelines.summary`: locations and headline numbers of the last export."""

from __future__ import annotations

import shutil

from pipelines import io, paths, summary
from pipelines.config import load_params
from tests.test_export_fixture import exported_project, mlflow_store, project_env  # noqa: F401


def test_summary_names_every_location_and_the_headline(exported_project, mlflow_store, capsys):
    with project_env(exported_project):
        code = summary.main([])
    out = capsys.readouterr().out
    metrics = io.read_json(exported_project / paths.metrics_file("export"))
    quadrant_iv = metrics["headline"]["customers_by_quadrant"]["IV"]
    assert code == 0
    assert out.splitlines()[0] == "Customer scores at 2000-06-30: 300 customers, models cvp-clv/3;cvp-churn/2"
    for expected in (
        str(exported_project / paths.SCORES_PARQUET),
        f"sqlite:///{exported_project / paths.DEFAULT_DATABASE}  table customer_scores",
        str(exported_project / paths.REPORT_HTML),
        f"(model evaluation: models.html; lists: {paths.SEGMENT_LISTS}/)",
        f"notebook  {exported_project / paths.EXPLORE_HTML}",
        f"sqlite:///{mlflow_store / 'mlflow.db'}",
        f"total CLV {metrics['headline']['total_clv']:,.2f} over the next 91 days",
        f"quadrant IV (top priority) {quadrant_iv} customers ({quadrant_iv / 300:.1%})",
    ):
        assert expected in out
    assert len(out.splitlines()) <= 9


def test_summary_without_an_export_says_what_to_run(exported_project, tmp_path, capsys):
    shutil.copy(exported_project / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    with project_env(tmp_path):
        code = summary.main([])
        lines = summary.summary_lines(load_params("params.yaml"), tmp_path)
    assert code == 1
    assert lines == [f"no export yet ({tmp_path / paths.metrics_file('export')} not found): run `make run` or `cvp export`"]
    assert capsys.readouterr().out.strip() == lines[0]
