"""An exclusive inter-process lock, so two retraining runs never write the registry or exports at once.

``fcntl.flock`` on a lock file: the kernel releases it when the holder exits, even on a crash,
so a left-over file never blocks anyone. The holder writes its pid, host and start time into
the file, so a process that gives up can name who holds it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_NAME = ".cvp-retrain.lock"
POLL_SECONDS = 0.2


class LockBusy(RuntimeError):
    """The lock is still held by another process after the timeout; the message names the holder."""


def holder_info() -> dict[str, object]:
    """What the holder writes into the lock file: pid, host, start time (UTC, ISO 8601)."""
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def describe_holder(text: str) -> str:
    """'pid 123 on host h since 2024-01-01T00:00:00+00:00' from a lock file's content."""
    try:
        info = json.loads(text)
        return f"pid {info['pid']} on {info['host']} since {info['since']}"
    except (ValueError, KeyError, TypeError):
        return "an unknown process"


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextlib.contextmanager
def exclusive(path: Path | str, timeout_s: float, poll_s: float = POLL_SECONDS) -> Iterator[Path]:
    """Hold an exclusive lock on ``path`` for the block; wait up to ``timeout_s`` seconds for it.

    Raises LockBusy (one line naming the holder) if another process still holds it then.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # "a+" neither truncates nor fails when the file exists: the holder's details stay readable.
    with open(path, "a+") as fh:
        deadline = time.monotonic() + max(timeout_s, 0.0)
        waited = False
        while not _try_lock(fh.fileno()):
            if not waited:
                fh.seek(0)
                log.info("%s is held by %s; waiting up to %g s", path, describe_holder(fh.read()), timeout_s)
                waited = True
            if time.monotonic() >= deadline:
                fh.seek(0)
                raise LockBusy(
                    f"another retraining run holds {path} ({describe_holder(fh.read())}); "
                    f"gave up after {timeout_s:g} s: wait for it to finish or raise retrain.lock_timeout_s"
                )
            time.sleep(poll_s)
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(json.dumps(holder_info()))
            fh.flush()
            log.info("acquired %s", path)
            yield path
        finally:
            fh.seek(0)
            fh.truncate()
            fh.flush()
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
