"""The installed `cvp` command: in the warm server of `cvp warm` when one is listening
(pipelines.warm), else in this process (pipelines.cli). Only the standard library is imported
before that choice, so a warm `cvp` starts in milliseconds, and so does `cvp warm CMD...` itself
(its command starts without waiting for the CLI's imports)."""

from __future__ import annotations

import sys


def entry_point() -> None:
    from pipelines import warm

    argv = sys.argv[1:]
    if len(argv) > 1 and argv[0] == "warm" and not argv[1].startswith("-"):  # the command starts at once
        status: int | None = warm.main(argv[1:])
    else:
        status = warm.run_in_server(argv)
    if status is not None:
        from pipelines.process_exit import finish_process

        finish_process(status)
    from pipelines.cli import entry_point as run_here

    run_here()
