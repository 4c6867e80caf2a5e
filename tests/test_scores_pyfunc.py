"""The served scoring chain (models/scores_pyfunc.py) loads light and its pinned requirements
cover what it imports: a model server needs neither pandera, ibis, matplotlib nor the pipeline."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from models import scores_pyfunc

ROOT = Path(__file__).resolve().parents[1]
FIRST_PARTY = ("models", "features")
HEAVY = ("pandera", "ibis", "matplotlib", "pipelines")


def _imports(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports (at load time or inside functions)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    return names


def chain_imports(module: str = "models.scores_pyfunc") -> tuple[set[str], set[str]]:
    """(first-party modules, third-party top-level packages) the module imports, transitively
    through the project's own modules."""
    seen: set[str] = set()
    third: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        path = ROOT / (name.replace(".", "/") + ".py")
        if name in seen or not path.exists():
            continue
        seen.add(name)
        for imported in _imports(path):
            top = imported.split(".")[0]
            if top in FIRST_PARTY:
                todo.append(imported)
            elif top not in sys.stdlib_module_names and top != "__future__":
                third.add(top)
    return seen, third


def test_loading_the_chain_imports_no_heavy_package():
    code = f"import json, sys; import models.scores_pyfunc; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert json.loads(out.strip().splitlines()[-1]) == []


def test_the_pinned_requirements_cover_every_package_the_chain_imports():
    modules, packages = chain_imports()
    assert {"models.scores", "models.segments", "models.churn", "models.clv"} <= modules
    assert not set(HEAVY) & packages
    distributions = metadata.packages_distributions()  # package -> the distributions that install it
    pinned = {r.lower() for r in scores_pyfunc.REQUIREMENTS}
    uncovered = [p for p in sorted(packages) if not {d.lower() for d in distributions.get(p, [p])} & pinned]
    assert uncovered == []


def test_the_import_scan_sees_imports_inside_functions(tmp_path):
    """The scan above counts lazy imports (e.g. mpmath inside a function), so it can fail."""
    sample = tmp_path / "sample.py"
    sample.write_text("import os\n\ndef f():\n    import mpmath\n    from scipy import stats\n")
    assert {"mpmath", "scipy.stats", "scipy", "os"} <= _imports(sample)
