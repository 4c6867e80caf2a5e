"""`cvp` commands and the DVC pipeline's stage commands, run in the test's own process.

``cvp(project, *args)`` calls ``pipelines.cli.main`` (the installed command's entry point: the
same argument parsing, error handling, one-line messages and exit codes) with ``project`` as the
working directory; ``repro(project)`` runs the ``cmd`` of every dvc.yaml stage that way, in the
file's (the pipeline's) order, and stops at the first failure, as `dvc repro` does. A fresh `cvp`
process pays the interpreter start-up and the imports of pandas, DuckDB, MLflow, LightGBM ... at
every call (several seconds each); where that is not what a test checks, this keeps the stage's
work and drops the start-up. tests/test_pipeline_e2e.py (`dvc repro` of the whole CDNOW
pipeline), tests/test_cli.py and the slow corpus cases keep running the real processes.
"""

from __future__ import annotations

import contextlib
import io
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

# Variables a stage reads (or MLflow writes) that must not leak into or out of a command.
_ISOLATED = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "CVP_PIPELINE_RUN_ID", "CVP_VERBOSE")


@dataclass
class Done:
    """What a command left: its exit code and what it wrote to stdout and stderr."""

    returncode: int
    stdout: str
    stderr: str
    ran: list[str] = field(default_factory=list)  # repro: the stages run, the failed one last


def store_env(project: Path) -> dict[str, str]:
    """The project's own sqlite MLflow store, as tests/test_pipeline_e2e.py gives `dvc repro`."""
    return {"MLFLOW_TRACKING_URI": f"sqlite:///{project / 'tracking' / 'mlflow.db'}"}


def cvp(project: Path, *args: str, env: dict[str, str] | None = None) -> Done:
    """`cvp <args>` in this process, from ``project``, with ``env`` set and nothing else of
    :data:`_ISOLATED` (restored afterwards, whatever MLflow set meanwhile)."""
    from pipelines import cli

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(cli._state, "verbose", False)  # --verbose of this command ends with it
        for name in _ISOLATED:
            mp.setenv(name, "")  # recorded, so that undo also removes what MLflow sets later
            mp.delenv(name)
        for name, value in (env or {}).items():
            mp.setenv(name, value)
        mp.chdir(project)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                cli.main(list(args))
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
    return Done(code, out.getvalue(), err.getvalue())


def stage_commands(project: Path) -> dict[str, list[str]]:
    """Each dvc.yaml stage's command without the leading ``cvp``, in the file's order."""
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    commands = {}
    for name, spec in stages.items():
        argv = shlex.split(spec["cmd"])
        assert argv[0] == "cvp", f"dvc.yaml stage {name} does not run cvp: {spec['cmd']}"
        commands[name] = argv[1:]
    return commands


def repro(project: Path, env: dict[str, str] | None = None, until: str | None = None) -> Done:
    """Every stage of the project's dvc.yaml (up to ``until``), in this process; stops at the first failure."""
    ran, stdout, stderr = [], [], []
    code = 0
    for name, args in stage_commands(project).items():
        done = cvp(project, *args, env=env if env is not None else store_env(project))
        ran.append(name)
        stdout.append(done.stdout)
        stderr.append(done.stderr)
        code = done.returncode
        if code or name == until:
            break
    return Done(code, "".join(stdout), "".join(stderr), ran)
