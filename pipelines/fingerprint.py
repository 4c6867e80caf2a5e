"""Stage `fingerprint`: a small JSON of what ingest would read, so ingest re-runs only when it changes.

DVC runs this stage on every ``dvc repro`` (``always_changed``); ingest depends on its output
(data/interim/source_fingerprint.json) instead of re-reading the source every time. It holds:

- ``files``: every file ingest reads for ``data.path``, in read order, with its size (bytes) and
  modification time (ns): a file added to or removed from a glob, rewritten or touched changes it;
- ``lifetimes``: for a ``lifetimes:<name>`` source, the installed lifetimes version (its bundled
  file is in ``files`` too);
- ``valid_until``: the exclusive upper bound of plausible timestamps (pipelines.domain.valid_until).
  With ``data.valid_to: null`` it is the day after the run date, so the first run on a new day
  re-reads the source and accepts the rows that have become plausible;
- ``error``: the one-line data error when the source cannot be listed (ingest then re-runs and
  stops with the same line).

It also writes ``data/interim/code/<stage>.json``, the code each stage runs
(pipelines/code_fingerprint.py): a stage re-runs when one of its modules changes.

The ``data`` params are ingest's own DVC params, so they need no place here. The bytes are the
same whenever these values are (sorted keys, no time of its own). Standard library only (no
pandas, DuckDB or MLflow): the stage costs little more than the start of ``cvp``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from pathlib import Path
from typing import Any

from features.errors import DataError
from pipelines import code_fingerprint, domain
from pipelines.catalog import Catalog
from pipelines.config import DataParams, Params
from pipelines.source_files import LIFETIMES_PREFIX, file_label, source_files

log = logging.getLogger(__name__)

ARTIFACT = "source_fingerprint"


def fingerprint(data: DataParams, root: Path, today: dt.date | None = None) -> dict[str, Any]:
    """What ingest would read for ``data`` in the project at ``root`` on ``today`` (default: the
    UTC run date), as JSON-ready values."""
    found: dict[str, Any] = {"source": data.path, "files": []}
    try:
        files = source_files(data.path, root)
    except DataError as exc:
        found["error"] = str(exc)
        files = ()
    found["files"] = [_file_entry(file, root) for file in files]
    if data.path.startswith(LIFETIMES_PREFIX) and files:
        found["lifetimes"] = _package_version("lifetimes")
    found["valid_until"] = domain.valid_until(data, domain.run_date() if today is None else today).isoformat()
    return found


def fingerprint_text(data: DataParams, root: Path, today: dt.date | None = None) -> str:
    """The fingerprint as the file holds it: indented JSON with sorted keys."""
    return json.dumps(fingerprint(data, root, today), indent=2, sort_keys=True) + "\n"


def run(params: Params, paths: Catalog) -> None:
    """Write the fingerprint of ``params.data``'s source in the project at ``paths``, and each
    stage's code fingerprint (pipelines/code_fingerprint.py)."""
    target = paths.path(ARTIFACT)
    write_text_atomically(fingerprint_text(params.data, paths.root), target)
    log.info("source fingerprint of %s -> %s", params.data.path, target)
    for stage, text in code_fingerprint.stage_code_texts(code_fingerprint.code_root(paths.root)).items():
        write_text_atomically(text, paths.path(code_artifact(stage)))
    log.debug("code fingerprints of %d stages -> %s", len(code_fingerprint.STAGES), paths.path(code_artifact("ingest")).parent)


def code_artifact(stage: str) -> str:
    """The catalog key of a stage's code fingerprint."""
    return f"code_{stage}"


def write_text_atomically(text: str, target: Path) -> None:
    """Replace ``target`` in one rename, as pipelines.files.write_text does, without importing the
    pandas and pyarrow that pipelines.files loads. No fsync: a fingerprint lost in a crash only
    makes ingest re-run."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _file_entry(file: Path, root: Path) -> dict[str, Any]:
    stat = file.stat()
    return {"path": file_label(file, root), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _package_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
