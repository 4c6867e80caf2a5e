"""Where a stage command's wall time goes: start-up, imports, read, compute, write, MLflow.

Enabled by the environment variable ``CVP_PROFILE`` (``1``: one INFO line at the end of the
command; a file path: also one JSON line appended to that file, as the benchmark does). Off, it
costs nothing.

A sampler thread looks at the main thread's stack every :data:`INTERVAL_S` seconds and books the
interval to the first category whose rule matches the stack (:func:`category_of`), so every call
is covered without timing code in the stages. The figures are statistical: a phase shorter than a
few intervals may be booked to its neighbour. ``start-up`` is the time from the process's start
(Linux: /proc) to the sampler's start: the interpreter and the `cvp` command's own imports.
Only the standard library is imported here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

log = logging.getLogger(__name__)

ENV = "CVP_PROFILE"
INTERVAL_S = 0.01
CATEGORIES = ("start-up", "imports", "read", "compute", "write", "mlflow")

# (category, test on one frame's file path and function name); the first category any frame of
# the stack matches wins, in this order: an import triggered by MLflow is MLflow's cost, an
# import triggered by a read is an import, a Parquet read inside a write (a rewrite) is the write's.
_MLFLOW_PATHS = ("/mlflow/", "/sqlalchemy/", "/alembic/", "pipelines/tracking.py")
_READ_FUNCS = {"read", "read_json", "read_parquet", "read_table", "read_csv", "read_frame"}
_WRITE_FUNCS = {"write", "write_parquet", "write_csv", "write_parquet_stream", "write_json", "write_text",
                "write_bytes", "write_table", "save_figure", "png_bytes"}  # fmt: skip


def _is_mlflow(path: str, func: str) -> bool:
    return any(part in path for part in _MLFLOW_PATHS)


def _is_import(path: str, func: str) -> bool:
    return path.startswith("<frozen importlib")


_PROJECT_IO = ("pipelines/catalog.py", "pipelines/files.py", "pipelines/database.py")


def _is_read(path: str, func: str) -> bool:
    return func in _READ_FUNCS and path.endswith(_PROJECT_IO)


def _is_write(path: str, func: str) -> bool:
    return func in _WRITE_FUNCS and path.endswith(_PROJECT_IO)


def _is_table_write(path: str, func: str) -> bool:
    """The export's SQL table write: SQLAlchemy under it is the write's cost, not MLflow's store."""
    return func == "write_table" and path.endswith("pipelines/database.py")


_RULES = (("write", _is_table_write), ("mlflow", _is_mlflow), ("imports", _is_import), ("write", _is_write),
          ("read", _is_read))  # fmt: skip


def category_of(stack: list[tuple[str, str]]) -> str:
    """The category of one sample: ``stack`` is (file path, function name) of each frame, outermost first."""
    for category, rule in _RULES:
        if any(rule(path, func) for path, func in stack):
            return category
    return "compute"


def _stack(frame: FrameType | None) -> list[tuple[str, str]]:
    frames = []
    while frame is not None:
        frames.append((frame.f_code.co_filename.replace("\\", "/"), frame.f_code.co_name))
        frame = frame.f_back
    return frames[::-1]


def process_age_s() -> float | None:
    """Seconds since this process started (Linux /proc), or None where that is not known."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        start_ticks = int(fields[19])  # field 22 of stat(5); two fields precede the split
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


class Sampler:
    """Counts the main thread's samples per category while running (a daemon thread)."""

    def __init__(self, interval_s: float = INTERVAL_S) -> None:
        self.interval_s = interval_s
        self.samples: Counter[str] = Counter()
        self._stop = threading.Event()
        self._main = threading.main_thread().ident
        self._thread = threading.Thread(target=self._loop, name="cvp-profile", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            frame = sys._current_frames().get(self._main)
            self.samples[category_of(_stack(frame))] += 1

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def breakdown(samples: Counter[str], wall_s: float, start_up_s: float | None) -> dict[str, float]:
    """Seconds per category: the sampled shares of ``wall_s`` (the sampler's wall time), plus start-up."""
    total = sum(samples.values())
    seconds = {c: round(wall_s * samples[c] / total, 3) if total else 0.0 for c in CATEGORIES if c != "start-up"}
    return {"start-up": round(start_up_s or 0.0, 3), **seconds}


def describe(command: str, seconds: dict[str, float]) -> str:
    """One line: the command's total and each category, largest first."""
    parts = ", ".join(f"{c} {s:.1f} s" for c, s in sorted(seconds.items(), key=lambda cs: -cs[1]) if s >= 0.05)
    return f"{command} took {sum(seconds.values()):.1f} s: {parts}"


@contextlib.contextmanager
def profiled(command: str) -> Iterator[None]:
    """Profile the block when CVP_PROFILE is set: log the breakdown, and append it to the file
    CVP_PROFILE names (one JSON line: command, seconds per category, total, pid)."""
    target = os.environ.get(ENV, "").strip()
    if target.lower() in ("", "0", "false", "no"):
        yield
        return
    start_up, began = process_age_s(), time.perf_counter()
    sampler = Sampler().start()
    try:
        yield
    finally:
        sampler.stop()
        seconds = breakdown(sampler.samples, time.perf_counter() - began, start_up)
        log.info("%s", describe(command, seconds))
        if target.lower() not in ("1", "true", "yes"):
            line = {"command": command, "seconds": seconds, "total_s": round(sum(seconds.values()), 3), "pid": os.getpid()}
            with open(target, "a", encoding="utf-8") as out:
                out.write(json.dumps(line) + "\n")
