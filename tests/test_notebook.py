"""notebooks/explore.ipynb runs top to bottom against a project's outputs, shows the right numbers, and renders
into one offline HTML page (`cvp notebook`, reports/explore.html); failures name the cell."""

from __future__ import annotations

import base64
import json
import re
import sys
from pathlib import Path

import mlflow
import nbformat
import pandas as pd
import pytest

from features.errors import DataError
from pipelines import cli, export, files
from pipelines import notebook as explore
from pipelines.catalog import Catalog
from pipelines.config import load_params
from tests.test_export_fixture import exported_project, mlflow_store, project_env  # noqa: F401

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "explore.ipynb"

# Appended to the executed copy: the state a reader ends up with, as one JSON line.
STATE_CELL = """
import json
print(json.dumps({
    "project": str(PROJECT),
    "rows": len(scores),
    "quadrant_customers": quadrants["customers"].to_dict(),
    "targets": targets["customer_id"].tolist(),
    "stages": sorted(stage_runs["tags.cvp.stage"]),
    "export_rows": float(stage_runs.set_index("tags.cvp.stage").loc["export", "metrics.rows"]),
    "export_run_id": stage_runs.set_index("tags.cvp.stage").loc["export", "run_id"],
}))
"""


def text_output(cell) -> str:
    parts = []
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream":
            parts.append(output["text"])
        elif "data" in output:
            parts.append(output["data"].get("text/plain", ""))
    return "".join(parts)


def latest_export_run(project: Path) -> str:
    """Export the project again so that its run is the latest in the (shared) store; its run id."""
    with project_env(project) as paths:
        export.run(load_params(paths.params_file), paths)
        runs = mlflow.search_runs(
            filter_string="tags.`cvp.stage` = 'export'", order_by=["attributes.start_time DESC"], max_results=1,
            output_format="list",
        )  # fmt: skip
    return runs[0].info.run_id


@pytest.fixture(scope="module")
def executed(exported_project, tmp_path_factory):
    """The notebook (plus the state cell) rendered by `cvp notebook`'s code against the project,
    from an unrelated directory; the executed cells, the state, the export run id, the HTML page."""
    run_id = latest_export_run(exported_project)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell(STATE_CELL))
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    with_state = elsewhere / "explore.ipynb"
    nbformat.write(notebook, with_state)
    out = elsewhere / "explore.html"
    before = with_state.read_bytes()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(elsewhere)
        mp.delenv("CVP_PROJECT_DIR", raising=False)  # render sets it for the kernel
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("CVP_PIPELINE_RUN_ID", raising=False)
        notebook = explore.render(exported_project, out=out, timeout=180, notebook_path=with_state)
    assert with_state.read_bytes() == before, "render must not write outputs into the notebook file"
    cells = {cell.get("id"): cell for cell in notebook.cells}
    state = json.loads(text_output(notebook.cells[-1]).strip().splitlines()[-1])
    return cells, state, run_id, out.read_text(encoding="utf-8")


def test_committed_notebook_has_no_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


def test_notebook_reads_the_project_from_the_environment(executed, exported_project):
    cells, state, _, _ = executed
    assert state["project"] == str(exported_project.resolve())
    assert f"project: {exported_project.resolve()}" in text_output(cells["setup"])
    assert "300 customers scored at 2000-06-30 with cvp-clv/3;cvp-churn/2" in text_output(cells["export-summary"])


def test_notebook_segment_numbers_match_the_outputs(executed, exported_project):
    _, state, _, _ = executed
    scores = pd.read_parquet(Catalog(exported_project).SCORES_PARQUET)
    assert state["rows"] == len(scores)
    assert state["quadrant_customers"] == scores["quadrant"].value_counts().sort_index().to_dict()
    sleeping = scores["lifecycle_state"].isin(["drowsy", "half_asleep", "dormant"]) & (scores["p_alive"] >= 0.5)
    assert state["targets"] == scores[sleeping].sort_values("clv", ascending=False)["customer_id"].tolist()


def test_notebook_finds_the_latest_pipeline_run_and_its_export(executed, exported_project):
    cells, state, run_id, _ = executed
    assert state["export_run_id"] == run_id
    assert "export" in state["stages"]
    assert state["export_rows"] == files.read_json(Catalog(exported_project).metrics_file("export"))["rows"] == 300
    assert "pipeline run " in text_output(cells["mlflow-runs"])


def test_committed_notebook_reads_the_project_through_the_catalog():
    """No relative paths (so no chdir into the project) and nothing from the retired pipelines.paths."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "code")
    assert "paths = Catalog(PROJECT)" in code and "chdir" not in code
    assert not re.search(r"pipelines\.paths|from pipelines import [^\n]*\bpaths\b", code)


def test_committed_notebook_draws_figures():
    """The page has figures to show only if the notebook draws them."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    sources = {cell.get("id"): cell.source for cell in notebook.cells if cell.cell_type == "code"}
    assert "plt.show()" in sources["quadrants-figure"] and "plt.show()" in sources["concentration-figure"]


def test_html_page_holds_the_notebooks_tables_and_embedded_figures(executed, exported_project):
    cells, _, _, html = executed
    scores = pd.read_parquet(Catalog(exported_project).SCORES_PARQUET)
    assert "<title>Exploring the customer scores</title>" in html
    assert ">Value-potential quadrants<" in html and ">Tiers against quadrants<" in html
    assert "300 customers scored at 2000-06-30 with cvp-clv/3;cvp-churn/2" in html
    # The quadrant table as a rendered HTML table: its header and each quadrant's customer count.
    assert '<table border="1" class="dataframe">' in html and "<th>share_of_customers</th>" in html
    for quadrant, count in scores["quadrant"].value_counts().items():
        assert re.search(rf"<th>{quadrant}</th>\s*<td>{count}</td>", html), quadrant
    # Both figures embedded as PNG data, and their cells produced exactly one image each.
    images = re.findall(r'<img[^>]+src="data:image/png;base64,([^"]+)"', html)
    assert len(images) >= 2 and all(base64.b64decode(image)[:8] == b"\x89PNG\r\n\x1a\n" for image in images)
    for figure in ("quadrants-figure", "concentration-figure"):
        assert sum("image/png" in output.get("data", {}) for output in cells[figure].outputs) == 1, figure


def test_executed_notebook_writes_nothing_to_stderr(executed):
    """No warning or log noise on the page: every output is a result the reader asked for."""
    cells, *_ = executed
    noisy = [name for name, cell in cells.items() for output in cell.get("outputs", []) if output.get("name") == "stderr"]
    assert noisy == []


def test_html_page_needs_no_network(executed):
    *_, html = executed
    assert not re.search(r"<(script|link|img|iframe)\b[^>]*\b(src|href)=[\"']?(https?:)?//", html)
    assert "cdnjs" not in html and "require.min.js" not in html


def tiny_notebook(tmp_path: Path, *sources: str) -> Path:
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_markdown_cell("# Tiny")]
    for name, source in sources:
        cell = nbformat.v4.new_code_cell(source)
        cell.id = name
        notebook.cells.append(cell)
    path = tmp_path / "tiny.ipynb"
    nbformat.write(notebook, path)
    return path


def test_a_failing_cell_stops_with_one_line_naming_it(tmp_path):
    """The kernel is this interpreter, in the project, with CVP_PROJECT_DIR; a failure names the cell."""
    path = tiny_notebook(
        tmp_path,
        ("where", "import os, sys\nprint(sys.executable, os.getcwd(), os.environ['CVP_PROJECT_DIR'], os.environ['PYTHONHASHSEED'])"),
        ("broken", "1 / 0"),
        ("after", "print('not reached')"),
    )  # fmt: skip
    notebook = nbformat.read(path, as_version=4)
    with pytest.raises(DataError) as caught:
        explore.execute_notebook(notebook, tmp_path, timeout=60, source="tiny.ipynb")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("tiny.ipynb: cell 'broken' (cell 3) failed with ZeroDivisionError: division by zero")
    assert f"CVP_PROJECT_DIR={tmp_path}" in message
    assert text_output(notebook.cells[1]).split() == [sys.executable, str(tmp_path), str(tmp_path), "0"]
    assert notebook.cells[3].execution_count is None and not notebook.cells[3].outputs


def test_render_writes_no_page_when_a_cell_fails(exported_project, tmp_path):
    path = tiny_notebook(tmp_path, ("reads", "import pandas as pd\npd.read_parquet('exports/no_such.parquet')"))
    out = tmp_path / "explore.html"
    with pytest.raises(DataError) as caught:
        explore.render(exported_project, out=out, timeout=60, notebook_path=path)
    message = str(caught.value)
    assert message.startswith(f"{path}: cell 'reads' (cell 2) failed with FileNotFoundError: ")
    assert message.endswith(f"; {out} not updated") and "\n" not in message
    assert not out.exists()


def test_a_slow_cell_stops_at_the_timeout_naming_it(tmp_path):
    path = tiny_notebook(tmp_path, ("quick", "x = 1"), ("slow", "import time\ntime.sleep(60)"))
    notebook = nbformat.read(path, as_version=4)
    with pytest.raises(DataError, match=r"^tiny\.ipynb: cell 'slow' \(cell 3\) did not finish within 2 s \(cvp notebook --timeout\)$"):
        explore.execute_notebook(notebook, tmp_path, timeout=2, source="tiny.ipynb")


def test_cli_without_pipeline_outputs_says_what_to_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["notebook", "--project", str(tmp_path)])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err == (
        f"cvp: error: exports/scores.parquet, data/segments/summary.parquet, metrics/export.json not found in "
        f"{tmp_path.resolve()}: run `make run` (or the stages up to `cvp export`) first\n"
    )
    assert not (tmp_path / "reports").exists()
