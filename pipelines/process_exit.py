"""Leave a finished `cvp` process without the interpreter's teardown.

After a stage, Python's finalization frees every object of every imported library one by one
(pandas, pyarrow, scikit-learn, LightGBM, MLflow, SQLAlchemy...): measured at about 1.4 s of CPU for
the clv, churn, value and segment stages on CDNOW and 0.5 s for ingest and features, all of it
after the outputs are written. :func:`exit_process` first does what a normal exit does that
anyone could observe (waits for non-daemon threads, runs the atexit handlers, which flush the
logs and end MLflow runs, flushes stdout and stderr), then ends the process with ``os._exit``.
Every file the stages write is closed (and renamed into place) before their ``run`` returns.
``CVP_FULL_EXIT=1`` keeps the normal teardown (e.g. to debug a destructor), as does a running
profiler or debugger (``python -m cProfile``, ``pdb``), which reports after the program's end.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import NoReturn


def env_flag(name: str) -> bool:
    """Whether the environment variable ``name`` is set to a true value (not '', 0, false or no)."""
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def exit_status(code: object) -> int:
    """The status ``SystemExit(code)`` gives: None -> 0, an int as is, anything else (a message,
    printed by the caller) -> 1."""
    if code is None:
        return 0
    return code if isinstance(code, int) else 1


def exit_process(code: object = None) -> NoReturn:
    """Exit with ``code`` (as ``SystemExit`` would) after threads, atexit handlers and streams are done."""
    if env_flag("CVP_FULL_EXIT") or sys.getprofile() is not None or sys.gettrace() is not None:  # a profiler or debugger reports at the end
        raise SystemExit(code)
    finish_process(code)


def finish_process(code: object = None) -> NoReturn:
    """What a normal exit does that anyone could observe, then ``os._exit``: the message of a
    non-int ``code`` on stderr, non-daemon threads joined, atexit handlers run, streams flushed."""
    status = exit_status(code)
    if code is not None and not isinstance(code, int):
        sys.stderr.write(f"{code}\n")
    # What Py_FinalizeEx does first: join non-daemon threads (this also stops idle
    # concurrent.futures workers), then the atexit handlers.
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can be written anyway
            status = status or 1
    os._exit(status)
