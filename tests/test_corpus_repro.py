"""The corpus cases marked ``repro: true`` through the whole pipeline, in a project copy.

Their accepted rows are ordinary transactions of 8-9 customers, far fewer than the CLV models can be
fitted on: ingest and features must complete, and the clv stage must stop with exactly one line that
says the base is too small and which params change that, never a traceback. One case runs in the
default suite, its stage commands in this process (tests/inprocess.py: the stages' work without a
`cvp` start-up each); the rest are slow, each a fresh `dvc repro`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.inprocess import repro as repro_in_process
from tests.test_ingest_corpus import CASES, DEFAULT_DATA, load_case, stage_case
from tests.test_pipeline_e2e import _copy_project

pytestmark = pytest.mark.xdist_group("small_data")

REPRO_CASES = [name for name in CASES if load_case(name)["repro"]]
DEFAULT_SUITE_CASE = "utf8_bom"
TOO_FEW = re.compile(r"^cvp: error: data/features/features_t([01])\.parquet: \d+ customers at t_\1 are too few to fit "
                     r"a purchase model \(fits are reliable from clv\.min_customers=100\); use a larger customer base "
                     r"or a shorter data\.horizon_days(, which moves t_1 later)? \(details: .+\)$")


def test_the_default_suite_runs_one_repro_case():
    assert DEFAULT_SUITE_CASE in REPRO_CASES and len(REPRO_CASES) >= 10


def _dvc(args: list[str], project: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{project / 'tracking' / 'mlflow.db'}"
    for name in ("MLFLOW_REGISTRY_URI", "CVP_PIPELINE_RUN_ID", "CVP_VERBOSE"):
        env.pop(name, None)
    return subprocess.run(["dvc", *args], cwd=project, env=env, capture_output=True, text=True, timeout=1200)


def run_pipeline(project: Path, in_process: bool) -> tuple[int, str, str | None]:
    """(exit code, output, the stage that failed) of the project's pipeline: its stage commands in
    this process, or `dvc repro`."""
    if in_process:
        done = repro_in_process(project)
        return done.returncode, done.stdout + done.stderr, done.ran[-1] if done.returncode else None
    assert _dvc(["init", "--no-scm", "-q"], project).returncode == 0
    result = _dvc(["repro"], project)
    failed = re.search(r"failed to reproduce '([^']+)'", result.stdout + result.stderr)
    return result.returncode, result.stdout + result.stderr, failed and failed.group(1)


@pytest.mark.parametrize("name", [n if n == DEFAULT_SUITE_CASE else pytest.param(n, marks=pytest.mark.slow)
                                  for n in REPRO_CASES])
def test_repro_case_stops_in_one_line_naming_the_size(name, tmp_path, monkeypatch):
    project = tmp_path / "project"
    project.mkdir()
    _copy_project(project)
    (project / "tracking").mkdir()
    monkeypatch.chdir(project)
    case = load_case(name)
    data = stage_case(project, name, case)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"].update({**DEFAULT_DATA, **case["data"], "path": data.path})
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    code, output, failed = run_pipeline(project, in_process=name == DEFAULT_SUITE_CASE)
    assert code != 0 and "Traceback" not in output
    assert failed == "clv"  # ingest and features completed
    errors = [line for line in output.splitlines() if line.startswith("cvp: error:")]
    assert len(errors) == 1 and TOO_FEW.match(errors[0]), errors
    assert (project / "data" / "features" / "features_t0.parquet").exists()
