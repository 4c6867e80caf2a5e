"""`cvp notebook`: execute notebooks/explore.ipynb against the project and write reports/explore.html.

The committed notebook has no outputs; this renders its tables and figures into one offline,
self-contained HTML page, readable without Jupyter. The kernel is this interpreter (the project
venv), started in the project directory with ``CVP_PROJECT_DIR`` pointing at it. Each cell has a
time limit; a failing cell stops the run with one line naming it, and no page is written. The
same outputs and MLflow store give a byte-identical page (it shows MLflow run ids and times).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import nbformat
from jinja2 import DictLoader
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
from nbconvert import HTMLExporter
from traitlets import default

from features.errors import DataError
from pipelines import files
from pipelines.catalog import LAYOUT, Catalog, artifact

log = logging.getLogger(__name__)

NOTEBOOK = Path(LAYOUT["NOTEBOOK"])
EXPLORE_HTML = Path(artifact("explore_html").path)
# What the notebook reads (catalog keys); missing ones mean the pipeline has not run yet.
INPUTS = ("scores_parquet", "segment_summary", "metrics_export")
CELL_TIMEOUT_S = 300  # per cell; on CDNOW the whole notebook runs in 7-8 s
STARTUP_TIMEOUT_S = 120  # the kernel's start (imports nothing yet), on a busy machine

# The lab template without its <script src="https://..."> tags (require.js, MathJax, mermaid, widgets; all unused): offline.
_TEMPLATE_NAME = "cvp_explore.html.j2"
_OFFLINE_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
"""


class _ThisPythonKernels(KernelSpecManager):
    """Every kernel name means this interpreter: a `python3` kernel installed elsewhere on the
    machine (another Python, without the project's packages) is never picked up."""

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        return KernelSpec(
            argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            display_name=f"Python {sys.version_info.major}.{sys.version_info.minor} (project venv)",
            language="python",
        )


class _ThisPythonKernelManager(AsyncKernelManager):
    """nbclient's (async) kernel manager with the kernel specs above; nbclient creates it, so it
    also shuts the kernel down after a failure or a timeout."""

    @default("kernel_spec_manager")
    def _kernel_spec_manager_default(self) -> KernelSpecManager:
        return _ThisPythonKernels()


def execute_notebook(notebook: Any, project: Path, timeout: int = CELL_TIMEOUT_S, source: str = str(NOTEBOOK)) -> Any:
    """Run every code cell of ``notebook`` (in place) in a fresh kernel in ``project``; return it.
    Raises DataError with one line naming the cell that failed, timed out or killed the kernel."""
    current: dict[str, Any] = {}

    def remember(cell: Any, cell_index: int, **_: Any) -> None:
        current.update(cell=cell, index=cell_index)

    client = NotebookClient(
        notebook, kernel_manager_class=_ThisPythonKernelManager, kernel_name="python3",
        timeout=timeout, startup_timeout=STARTUP_TIMEOUT_S, allow_errors=False,
        resources={"metadata": {"path": str(project)}}, on_cell_execute=remember,
        shutdown_kernel="immediate",  # all outputs are in hand after the last cell: ~0.9 s saved
    )  # fmt: skip
    # The kernel's environment: this one, plus the project and a fixed hash seed (set ordering).
    env = {**os.environ, "CVP_PROJECT_DIR": str(project), "PYTHONHASHSEED": "0"}
    try:
        client.execute(env=env)
    except CellTimeoutError as exc:
        raise DataError(f"{source}: {failed_cell(current)} did not finish within {timeout} s (cvp notebook --timeout)") from exc
    except DeadKernelError as exc:
        raise DataError(f"{source}: the kernel died while running {failed_cell(current)}") from exc
    except CellExecutionError as exc:
        what = f"{exc.ename}: {' '.join(str(exc.evalue).split())}" if exc.ename else "an error"
        raise DataError(f"{source}: {failed_cell(current)} failed with {what} (open the notebook with "
                        f"CVP_PROJECT_DIR={project} for the traceback)") from exc
    return notebook


def failed_cell(current: dict[str, Any]) -> str:
    """The cell running when execution stopped, by its id (which says what it does) and position."""
    return f"cell '{current['cell'].get('id', '?')}' (cell {current['index'] + 1})" if current else "the kernel's start"


def notebook_html(notebook: Any, title: str) -> str:
    """The executed notebook as one offline HTML page: the lab look, figures as data: URIs."""
    exporter = HTMLExporter(
        template_name="lab", template_file=_TEMPLATE_NAME,
        extra_loaders=[DictLoader({_TEMPLATE_NAME: _OFFLINE_TEMPLATE})], embed_images=True,
    )  # fmt: skip
    body, _ = exporter.from_notebook_node(notebook, resources={"metadata": {"name": title}})
    return body


def notebook_title(notebook: Any) -> str:
    """The first markdown heading, else the file name."""
    headings = (line[2:].strip() for cell in notebook.cells if cell.cell_type == "markdown"
                for line in cell.source.splitlines() if line.startswith("# "))  # fmt: skip
    return next(headings, NOTEBOOK.stem)


def check_inputs(project: Path) -> None:
    """Stop with one line when the pipeline has not produced what the notebook reads."""
    paths = Catalog(project)
    missing = [artifact(key).path for key in INPUTS if not paths.path(key).exists()]
    if missing:
        raise DataError(f"{', '.join(missing)} not found in {project}: run `make run` (or the stages up to `cvp export`) first")


def render(project: Path, out: Path = EXPLORE_HTML, timeout: int = CELL_TIMEOUT_S, notebook_path: Path = NOTEBOOK) -> Any:
    """Execute ``notebook_path`` against ``project``, write the HTML page to ``out`` (relative paths:
    to the project) and return the executed notebook. The notebook file itself is not changed."""
    project = project.resolve()
    check_inputs(project)
    source = project / notebook_path
    if not source.exists():
        raise DataError(f"{source} not found: `cvp notebook` renders that notebook (restore it from git)")
    started = time.perf_counter()
    notebook = nbformat.read(source, as_version=4)
    target = out if out.is_absolute() else project / out
    try:
        execute_notebook(notebook, project, timeout=timeout, source=str(notebook_path))
    except DataError as exc:
        raise DataError(f"{exc}; {out} not updated") from exc
    html = notebook_html(notebook, notebook_title(notebook))
    files.write_bytes(html.encode("utf-8"), target)
    log.info("%s executed in %.1f s -> %s (%.0f kB)", notebook_path, time.perf_counter() - started, target, len(html) / 1e3)
    return notebook

