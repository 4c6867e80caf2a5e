"""An exclusive inter-process lock, so two retraining runs never write the registry or exports at once.

``filelock.FileLock`` (``flock`` on Unix) on a lock file: the kernel releases it when the holder
exits, even on a crash, so a left-over file never blocks anyone. The holder writes its pid, host
and start time into the lock file (through filelock's ``on_acquired`` hook, with the pathname kept
on release), so a process that gives up can name who holds it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import filelock

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


def _current_holder(path: Path) -> str:
    """Who holds ``path``, from the content its holder wrote (read without locking)."""
    try:
        return describe_holder(path.read_text())
    except OSError:
        return "an unknown process"


def _overwrite(fd: int, text: str) -> None:
    """Replace the whole content of the open file ``fd`` with ``text``."""
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, text.encode())


@contextlib.contextmanager
def exclusive(path: Path | str, timeout_s: float, poll_s: float = POLL_SECONDS) -> Iterator[Path]:
    """Hold an exclusive lock on ``path`` for the block; wait up to ``timeout_s`` seconds for it.

    Raises LockBusy (one line naming the holder) if another process still holds it then.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    held_fd: list[int] = []

    def record_holder(fd: int) -> None:  # runs once the lock is held, before acquire returns
        _overwrite(fd, json.dumps(holder_info()))
        held_fd.append(fd)

    # preserve_lock_file: never unlinked on release, and no fallback to a marker-file lock, whose
    # file could not carry the holder's details.
    file_lock = filelock.FileLock(path, preserve_lock_file=True, on_acquired=record_holder)
    try:
        file_lock.acquire(blocking=False)
    except filelock.Timeout:
        log.info("%s is held by %s; waiting up to %g s", path, _current_holder(path), timeout_s)
        try:
            file_lock.acquire(timeout=max(timeout_s, 0.0), poll_interval=poll_s)
        except filelock.Timeout:
            raise LockBusy(
                f"another retraining run holds {path} ({_current_holder(path)}); "
                f"gave up after {timeout_s:g} s: wait for it to finish or raise retrain.lock_timeout_s"
            ) from None
    try:
        log.info("acquired %s", path)
        yield path
    finally:
        try:
            os.ftruncate(held_fd[0], 0)  # a stale holder's details must not outlive its hold
        finally:
            file_lock.release()
