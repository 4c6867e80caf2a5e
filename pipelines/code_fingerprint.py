"""The code each DVC stage runs, as one small JSON per stage: a stage re-runs when its code changes.

A stage's code is ``pipelines/<stage>.py`` and every project module it imports, directly or not
(:func:`stage_modules`: static, including imports inside functions, from the ``features``,
``models`` and ``pipelines`` packages; the notebook stage also the imports of its notebook's code
cells). The fingerprint stage writes ``data/interim/code/<stage>.json``, the SHA-256 of each of
those files, and each stage depends on its own file instead of listing its modules in dvc.yaml.

Why: DVC rewrites the whole of dvc.lock after every stage, parsing and dumping it with a
round-trip YAML library. Listing every module of every stage made that file 1,500 lines, and its
rewrite about 1.5 s of each stage's run (0.3 s at 500 lines). A module edit still re-runs exactly
the stages whose code it is. Standard library only, like the rest of the fingerprint stage.
"""

from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path

PACKAGES = ("features", "models", "pipelines")
#: Imported by every command but not stage code: the command-line dispatcher.
NOT_STAGE_CODE = frozenset({"pipelines/cli.py"})
#: Notebooks whose code cells a stage runs (their own bytes are a dvc.yaml dependency).
STAGE_NOTEBOOKS = {"notebook": ("notebooks/explore.ipynb",)}
#: Stages with a code fingerprint: every DVC stage but ``fingerprint``, which runs every time.
STAGES = ("ingest", "features", "clv", "churn", "value", "segment", "export", "notebook")


def imported_modules(source: str) -> set[str]:
    """Dotted names a piece of Python source imports (``import a.b``; ``from a import b`` gives
    ``a`` and ``a.b``, since b may be a module); relative imports are not used in the project."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def notebook_source(path: Path) -> str:
    """The code cells of a notebook as one Python source (lines starting with % or ! dropped)."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    lines = [line for cell in cells if cell.get("cell_type") == "code"
             for line in "".join(cell.get("source", "")).splitlines()]  # fmt: skip
    return "\n".join(line for line in lines if not line.lstrip().startswith(("%", "!")))


class ImportGraph:
    """The project modules each project file imports, each file parsed once (the fingerprint
    stage computes every stage's closure in one run)."""

    def __init__(self, root: Path):
        self.root = root
        self._imports: dict[str, set[str]] = {}

    def imports(self, rel: str) -> set[str]:
        if rel not in self._imports:
            self._imports[rel] = imported_modules((self.root / rel).read_text(encoding="utf-8"))
        return self._imports[rel]

    def closure(self, sources: list[str]) -> list[str]:
        """Project files (relative POSIX paths, sorted) imported, directly or not, by ``sources``."""
        seen: set[str] = set()
        todo = [name for source in sources for name in imported_modules(source)]
        while todo:
            name = todo.pop()
            if name.split(".")[0] not in PACKAGES:
                continue
            rel = name.replace(".", "/") + ".py"
            if rel in seen or not (self.root / rel).is_file():
                continue
            seen.add(rel)
            todo.extend(self.imports(rel))
        return sorted(seen - NOT_STAGE_CODE)

    def stage_modules(self, stage: str) -> list[str]:
        """``pipelines/<stage>.py`` and the project modules it (and its notebook) imports."""
        entry = f"pipelines/{stage}.py"
        sources = [(self.root / entry).read_text(encoding="utf-8")]
        # a missing notebook: the stage itself stops with one line naming it
        sources += [notebook_source(self.root / nb) for nb in STAGE_NOTEBOOKS.get(stage, ()) if (self.root / nb).is_file()]
        return sorted({entry, *self.closure(sources)})


def code_root(project: Path) -> Path:
    """Where the stages' code is read: the project (DVC's view of its files) when it holds the
    packages, else the directory this code was imported from (a project of data and params only)."""
    return project if (project / "pipelines").is_dir() else Path(__file__).resolve().parents[1]


def stage_code_texts(root: Path, stages: tuple[str, ...] = STAGES) -> dict[str, str]:
    """Each stage's file: {"stage", "modules": {path: sha256}} as JSON with sorted keys; ``root``
    holds the code (:func:`code_root`)."""
    graph, digests = ImportGraph(root), {}
    out = {}
    for stage in stages:
        modules = graph.stage_modules(stage)
        for rel in modules:
            if rel not in digests:
                digests[rel] = hashlib.sha256((root / rel).read_bytes()).hexdigest()
        out[stage] = json.dumps({"stage": stage, "modules": {rel: digests[rel] for rel in modules}}, indent=2,
                                sort_keys=True) + "\n"  # fmt: skip
    return out
