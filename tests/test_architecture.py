"""The layering the README's architecture section draws, checked on the source.

- features/ and models/ are pure: they import nothing from pipelines/ and do no MLflow I/O;
- a stage module (pipelines/<stage>.py of dvc.yaml, and the retrain/backtest/score commands)
  imports no other stage, never changes directory and never writes os.environ;
- the DVC stage modules are wiring: short (STAGE_MAX_LINES), the logic lives in models/ and features/.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DVC_STAGES = tuple(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])
COMMANDS = ("retrain", "backtest", "score")
STAGE_MODULES = tuple(s for s in (*DVC_STAGES, *COMMANDS) if (ROOT / "pipelines" / f"{s}.py").exists())
STAGE_MAX_LINES = 150
ENVIRON_WRITES = {"update", "pop", "setdefault", "clear", "popitem", "__setitem__", "__delitem__"}


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def _is_os_environ(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "environ" and isinstance(node.value, ast.Name) and node.value.id == "os"


def global_state_writes(path: Path) -> list[str]:
    """os.chdir / contextlib.chdir calls and writes to os.environ in a module, as 'line: what'."""
    found = []
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr == "chdir":
                found.append(f"{node.lineno}: chdir")
            if node.func.attr in ENVIRON_WRITES and _is_os_environ(node.func.value):
                found.append(f"{node.lineno}: os.environ.{node.func.attr}")
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AugAssign) else []
        targets += node.targets if isinstance(node, ast.Delete) else []
        for target in targets:
            if isinstance(target, ast.Subscript) and _is_os_environ(target.value):
                found.append(f"{node.lineno}: os.environ[...] write")
    return found


@pytest.mark.parametrize("layer", ["features", "models"])
def test_pure_layers_import_nothing_from_pipelines_or_mlflow_tracking(layer):
    for path in sorted((ROOT / layer).rglob("*.py")):
        bad = {m for m in imported_modules(path) if m.split(".")[0] == "pipelines" or m in ("mlflow.tracking", "mlflow.client")}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


@pytest.mark.parametrize("stage", STAGE_MODULES)
def test_a_stage_imports_no_other_stage(stage):
    others = {f"pipelines.{s}" for s in STAGE_MODULES if s != stage}
    bad = imported_modules(ROOT / "pipelines" / f"{stage}.py") & others
    assert not bad, f"pipelines/{stage}.py imports {sorted(bad)}"


# The one place that may: the warm server's forked child, which becomes the `cvp` process that
# asked (its directory and environment) before it runs the command; no test process runs it.
BECOMES_ANOTHER_PROCESS = {"pipelines/warm.py": "_run_child"}


def _lines_of(path: Path, function: str) -> range:
    node = next(n for n in ast.walk(_tree(path)) if isinstance(n, ast.FunctionDef) and n.name == function)
    return range(node.lineno, node.end_lineno + 1)


def test_no_module_of_the_project_changes_directory_or_the_environment():
    offenders = {}
    for layer in ("pipelines", "models", "features"):
        for path in sorted((ROOT / layer).rglob("*.py")):
            name = str(path.relative_to(ROOT))
            allowed = _lines_of(path, BECOMES_ANOTHER_PROCESS[name]) if name in BECOMES_ANOTHER_PROCESS else range(0)
            if writes := [w for w in global_state_writes(path) if int(w.split(":")[0]) not in allowed]:
                offenders[name] = writes
    assert offenders == {}
    assert len(global_state_writes(ROOT / "pipelines" / "warm.py")) == 3  # chdir, environ clear and update


@pytest.mark.parametrize("stage", [s for s in STAGE_MODULES if s in DVC_STAGES])
def test_dvc_stage_modules_are_wiring(stage):
    lines = len((ROOT / "pipelines" / f"{stage}.py").read_text().splitlines())
    assert lines <= STAGE_MAX_LINES, f"pipelines/{stage}.py has {lines} lines; move logic into models/ or features/"


def test_the_checks_above_can_fail(tmp_path):
    """The detectors find what they look for (so an empty result above means something)."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import os, contextlib\nfrom pipelines.churn import x\nos.environ['A'] = '1'\n"
        "os.environ.pop('A')\nos.chdir('/')\nwith contextlib.chdir('/'):\n    pass\n"
    )
    assert "pipelines.churn" in imported_modules(sample)
    found = sorted(w.split(": ")[1] for w in global_state_writes(sample))
    assert found == ["chdir", "chdir", "os.environ.pop", "os.environ[...] write"]
