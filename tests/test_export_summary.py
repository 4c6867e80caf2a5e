"""`python -m pipelines.summary`: locations and headline numbers of the last export."""

from __future__ import annotations

import shutil

from pipelines import files, summary
from pipelines.config import load_params
from tests.test_export_fixture import exported_project, mlflow_store, project_env  # noqa: F401


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
