"""The installed `cvp` command: in the warm server of `cvp warm` when one is listening
(pipelines.warm), else in this process (pipelines.cli). Only the standard library is imported
before that choice, so a warm `cvp` starts in milliseconds."""

from __future__ import annotations

import sys


def entry_point() -> None:
    from pipelines import warm

    status = warm.run_in_server(sys.argv[1:])
    if status is not None:
        from pipelines.process_exit import finish_process

        finish_process(status)
    from pipelines.cli import entry_point as run_here

    run_here()
