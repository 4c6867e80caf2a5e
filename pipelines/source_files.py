"""Which files a ``data.path`` names, found without reading them.

Cheap on purpose (standard library only): the fingerprint stage lists the source on every
``dvc repro`` to decide whether ingest must re-read it, and must not pay for pandas or DuckDB.
pipelines/sources.py opens the same files, through these functions.
"""

from __future__ import annotations

import glob
import importlib.util
from pathlib import Path

from features.errors import DataError

LIFETIMES_PREFIX = "lifetimes:"
# name -> (file in lifetimes/datasets, column names when the file has no header)
LIFETIMES_FILES: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "CDNOW_master": ("CDNOW_master.txt", None),
    "CDNOW_sample": ("CDNOW_sample.txt", ("customer_id", "customer_index", "date", "quantity", "amount")),
}


def source_files(path: str, root: Path) -> tuple[Path, ...]:
    """The files ingest reads for ``path`` (data.path, relative to ``root``), in read order;
    DataError (one line) when there are none."""
    if path.startswith(LIFETIMES_PREFIX):
        return (lifetimes_dataset(path)[0],)
    return resolve_files(path, root)


def resolve_files(path: str, root: Path) -> tuple[Path, ...]:
    """Files named by a path or glob (relative to ``root``), sorted; DataError if none exist."""
    pattern = str(root / path)
    if glob.has_magic(path):
        files = tuple(sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file()))
        if not files:
            raise DataError(f"data.path '{path}' matches no file (looked under {root}); fix the glob or add the data")
        return files
    file = Path(pattern)
    if not file.is_file():
        raise DataError(f"{path}: file not found (looked under {root}); fix data.path in params.yaml")
    return (file,)


def lifetimes_dataset(path: str) -> tuple[Path, tuple[str, ...] | None]:
    """The bundled file of a ``lifetimes:<name>`` source and its column names (None: the file
    has a header); DataError for an unknown name."""
    name = path[len(LIFETIMES_PREFIX):]
    if name not in LIFETIMES_FILES:
        known = ", ".join(LIFETIMES_PREFIX + k for k in LIFETIMES_FILES)
        raise DataError(f"data.path '{path}' is not a bundled data set; use one of {known}, or a file path")
    file_name, names = LIFETIMES_FILES[name]
    return lifetimes_file(file_name), names


def lifetimes_file(name: str) -> Path:
    """Path of a data file bundled with lifetimes, found without importing the package."""
    spec = importlib.util.find_spec("lifetimes")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"{LIFETIMES_PREFIX}{name}: the lifetimes package is not installed; install it or point data.path at a file")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / name


def file_label(file: Path, root: Path) -> str:
    """The file as messages name it: relative to ``root`` when inside it, else as given (POSIX)."""
    try:
        return file.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return file.as_posix()
