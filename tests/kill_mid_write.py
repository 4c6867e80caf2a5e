"""Run a `cvp` command that kills itself with SIGKILL in the middle of writing an output.

    python tests/kill_mid_write.py row_group:3 features
    python tests/kill_mid_write.py replace:4 clv --params params.yaml

The kill point counts writes through pipelines.files, so it depends only on the order in which the
stage writes its outputs, never on timing:

row_group:N  the N-th Parquet file streamed by ``write_parquet_stream``: the process dies right
             after the first row group has reached its temporary file (no footer yet, not renamed).
replace:N    the N-th finished temporary file of ``atomic_path``: it is cut to half its length (the
             part of the write that had reached the disk) and the process dies before renaming it.

Outputs written before that point have already been renamed over their targets. Used by
tests/test_killed_stage.py; not collected by pytest.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import pyarrow.parquet as pq

from pipelines import files
from pipelines.cli import main


class _Patched:
    """A module with some attributes replaced, installed only in pipelines.files's namespace."""

    def __init__(self, module: Any, **overrides: Any) -> None:
        self._module = module
        self.__dict__.update(overrides)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def kill_at_row_group(n: int) -> None:
    opened = 0

    class KillingWriter(pq.ParquetWriter):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            nonlocal opened
            super().__init__(*args, **kwargs)
            opened += 1
            self._kill = opened == n

        def write_table(self, *args: Any, **kwargs: Any) -> None:
            super().write_table(*args, **kwargs)
            if self._kill:
                _die()

    files.pq = _Patched(pq, ParquetWriter=KillingWriter)


def kill_at_replace(n: int) -> None:
    renames = 0

    def replace(src: Any, dst: Any) -> None:
        nonlocal renames
        renames += 1
        if renames == n:
            os.truncate(src, os.path.getsize(src) // 2)
            _die()
        os.replace(src, dst)

    files.os = _Patched(os, replace=replace)


KILL_POINTS = {"row_group": kill_at_row_group, "replace": kill_at_replace}

if __name__ == "__main__":
    point, _, count = sys.argv[1].partition(":")
    KILL_POINTS[point](int(count))
    sys.argv = ["cvp", *sys.argv[2:]]
    main()
