"""notebooks/explore.ipynb runs top to bottom against a project's outputs and shows the right numbers."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import nbformat
import pandas as pd
import pytest
from nbclient import NotebookClient

from pipelines import export, io, paths
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
    with project_env(project):
        params = load_params("params.yaml")
        export.run(params, params_path=Path("params.yaml"))
        runs = mlflow.search_runs(
            filter_string="tags.`cvp.stage` = 'export'", order_by=["attributes.start_time DESC"], max_results=1,
            output_format="list",
        )  # fmt: skip
    return runs[0].info.run_id


@pytest.fixture(scope="module")
def executed(exported_project, tmp_path_factory):
    """The notebook executed from an unrelated directory, pointed at the project by CVP_PROJECT_DIR."""
    run_id = latest_export_run(exported_project)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell(STATE_CELL))
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CVP_PROJECT_DIR", str(exported_project))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("CVP_PIPELINE_RUN_ID", raising=False)
        NotebookClient(notebook, kernel_name="python3", timeout=180, resources={"metadata": {"path": str(elsewhere)}}).execute()
    cells = {cell.get("id"): cell for cell in notebook.cells}
    state = json.loads(text_output(notebook.cells[-1]).strip().splitlines()[-1])
    return cells, state, run_id


def test_committed_notebook_has_no_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


def test_notebook_reads_the_project_from_the_environment(executed, exported_project):
    cells, state, _ = executed
    assert state["project"] == str(exported_project.resolve())
    assert f"project: {exported_project.resolve()}" in text_output(cells["setup"])
    assert "300 customers scored at 2000-06-30 with cvp-clv/3;cvp-churn/2" in text_output(cells["export-summary"])


def test_notebook_segment_numbers_match_the_outputs(executed, exported_project):
    _, state, _ = executed
    scores = pd.read_parquet(exported_project / paths.SCORES_PARQUET)
    assert state["rows"] == len(scores)
    assert state["quadrant_customers"] == scores["quadrant"].value_counts().sort_index().to_dict()
    sleeping = scores["lifecycle_state"].isin(["drowsy", "half_asleep", "dormant"]) & (scores["p_alive"] >= 0.5)
    assert state["targets"] == scores[sleeping].sort_values("clv", ascending=False)["customer_id"].tolist()


def test_notebook_finds_the_latest_pipeline_run_and_its_export(executed, exported_project):
    cells, state, run_id = executed
    assert state["export_run_id"] == run_id
    assert "export" in state["stages"]
    assert state["export_rows"] == io.read_json(exported_project / paths.metrics_file("export"))["rows"] == 300
    assert "pipeline run " in text_output(cells["mlflow-runs"])
