"""Warm stage server: the stages of one `dvc repro` run in forks of a process that imported once.

Every `cvp` stage is a process of its own that imports pandas, pyarrow, pandera, scipy, scikit-learn,
LightGBM, matplotlib and MLflow again: 1-3.5 s per stage before any work, about 15 s of a CDNOW run.
``cvp warm COMMAND...`` (what `make run` does with ``dvc repro``) listens on a Unix socket named
by the environment variable :data:`SOCKET_ENV`, starts COMMAND (which and whose stages inherit the
variable), and imports those libraries and the stage modules once, one module at a time between
requests. The installed `cvp` (:mod:`pipelines.launch`) finds the variable and hands its
arguments, working directory, environment and standard streams (the descriptors themselves) to
the server, which forks: the child runs the command exactly as a fresh process would (same code,
files, environment, exit code; the outputs are byte-identical) and imports whatever the server has
not imported yet, while the `cvp` process waits and relays signals.

What stays as it was: without the variable (a plain `dvc repro`, `cvp` by hand, the tests), on a
platform other than Linux, or with ``CVP_WARM=0`` or ``CVP_FULL_EXIT=1``, `cvp` runs in its own
process. The server lives exactly as long as COMMAND; its socket sits in a private temporary
directory, removed at the end. It starts no thread (a fork copies only the forking thread; should
an import start one, the server stops serving and every `cvp` runs in its own process): it polls
COMMAND and its children.

Only the standard library is imported at module level: the `cvp` client must start in
milliseconds.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence

log = logging.getLogger(__name__)

SOCKET_ENV = "CVP_WARM_SOCKET"
SWITCH_ENV = "CVP_WARM"  # 0/false/no: every `cvp` in its own process
POLL_S = 0.02  # how often the server checks COMMAND and its children while idle
STREAMS = (0, 1, 2)  # stdin, stdout, stderr: handed over as descriptors
_HEADER = struct.Struct("!I")  # request length
_REPLY = struct.Struct("!ci")  # b"P" + child pid, then b"S" + exit status
LIGHT_COMMANDS = ("fingerprint",)  # what `dvc repro` runs when nothing changed: no preload for it

#: What the stages import (the heaviest first), found by diffing ``sys.modules`` before and after
#: each stage; ``module:function`` also calls a function (a cached lazy import). What fails to
#: import is skipped (the child then imports it itself, or reports why).
PRELOAD = (
    "pandas", "pyarrow.parquet", "pyarrow.dataset", "pyarrow.csv", "duckdb", "pandera.pandas",
    "pandera.accessors.pandas_accessor", "pandera.strategies.pandas_strategies", "ibis", "ibis.backends.duckdb",
    "sqlglot.dialects", "pipelines.cli", "pipelines.profile", "pipelines.fingerprint", "pipelines.ingest",
    "pipelines.features", "scipy.stats", "scipy.optimize", "sklearn.ensemble", "sklearn.linear_model",
    "sklearn.metrics", "sklearn.isotonic", "lightgbm", "matplotlib.pyplot", "PIL.Image", "mlflow", "mlflow.pyfunc",
    "mlflow.models", "mlflow.tracking", "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.store.model_registry.sqlalchemy_store", "sqlalchemy.dialects.sqlite", "git", "autograd", "dill",
    "models._lifetimes:_lifetimes", "pipelines.clv", "pipelines.churn", "pipelines.value", "pipelines.segment",
    "pipelines.export", "pipelines.notebook", "pipelines.score", "pipelines.tracking", "pipelines.report_models",
    "pipelines.report_marketing", "models.clv_pyfunc", "models.churn_pyfunc", "models.scores_pyfunc",
)  # fmt: skip


def enabled() -> bool:
    """Whether `cvp` may use a warm server here (Linux: fork and descriptor passing; not switched off)."""
    from pipelines.process_exit import env_flag

    off = os.environ.get(SWITCH_ENV, "").strip().lower() in ("0", "false", "no")
    return sys.platform.startswith("linux") and not off and not env_flag("CVP_FULL_EXIT")


# --------------------------------------------------------------------------- client (the `cvp` process)


def run_in_server(argv: Sequence[str]) -> int | None:
    """Run `cvp ARGV` in the warm server of :data:`SOCKET_ENV`; its exit status, or None when no
    server is listening (the caller then runs the command itself)."""
    path = os.environ.get(SOCKET_ENV)
    if not path or not enabled():
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError:  # not listening yet (still importing) or gone: run here
        sock.close()
        return None
    with sock:
        request = json.dumps({"argv": list(argv), "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
        message = _HEADER.pack(len(request)) + request
        sent = socket.send_fds(sock, [message], list(STREAMS))
        sock.sendall(message[sent:])
        return _wait_for_child(sock)


def _wait_for_child(sock: socket.socket) -> int:
    """Relay termination signals to the server's child until the server reports its exit status
    (a signal that comes before the child's pid is known is sent once it is)."""
    child, early = 0, []

    def relay(signum: int, _frame: object) -> None:
        if not child:
            early.append(signum)
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signum)

    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(signum, relay)
    while True:
        reply = _recv_exact(sock, _REPLY.size)
        if reply is None:
            sys.stderr.write("cvp: the warm stage server stopped before the command ended\n")
            return 1
        kind, value = _REPLY.unpack(reply)
        if kind == b"S":
            return value
        child = value
        with contextlib.suppress(OSError):
            if os.getpgid(child) == os.getpgrp():  # Ctrl-C reaches it directly, as it does us
                signal.signal(signal.SIGINT, signal.SIG_IGN)
        for signum in early:
            relay(signum, None)


def _recv_exact(sock: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        try:
            chunk = sock.recv(size - len(data))
        except InterruptedError:  # pragma: no cover - retried by Python since PEP 475
            continue
        if not chunk:
            return None
        data += chunk
    return data


# --------------------------------------------------------------------------- server (`cvp warm COMMAND`)


def main(command: Sequence[str]) -> int:
    """`cvp warm COMMAND...`: logging as every `cvp` command has it, then :func:`run_with_server`;
    a command that cannot start is one line `cvp: error: ...` and exit code 2."""
    from pipelines import logs
    from pipelines.process_exit import env_flag

    logs.configure(env_flag("CVP_VERBOSE"))
    try:
        return run_with_server(command)
    except FileNotFoundError as exc:
        sys.stderr.write(f"cvp: error: {exc}\n")
        return 2


def run_with_server(command: Sequence[str], preload: Sequence[str] = PRELOAD) -> int:
    """Run ``command`` with a warm server for the `cvp` commands it starts; its exit code."""
    if not enabled():
        return subprocess.run(list(command), check=False).returncode
    directory = tempfile.mkdtemp(prefix="cvp-warm-")  # private (0700): only this user can connect
    path = os.path.join(directory, "socket")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGCHLD)}
    try:
        try:
            proc = subprocess.Popen(list(command), env={**os.environ, SOCKET_ENV: path})
        except OSError as exc:
            raise FileNotFoundError(f"cannot start {command[0]!r}: {exc.strerror}; check the command and PATH") from exc
        for signum in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, lambda s, _f: proc.send_signal(s))
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the command, in our process group, gets Ctrl-C itself
        log.info("warm stage server: the cvp commands of `%s` run in forks of this process", " ".join(command))
        _serve(listener, proc, list(preload))
        return proc.wait()
    finally:
        listener.close()
        for signum, handler in saved.items():
            signal.signal(signum, handler)
        with contextlib.suppress(OSError):
            os.unlink(path)
        with contextlib.suppress(OSError):
            os.rmdir(directory)


def _import_one(name: str) -> None:
    """Import ``module`` (and call ``function`` of ``module:function``); a failure is the child's to report."""
    module, _, function = name.partition(":")
    try:
        loaded = importlib.import_module(module)
        if function:
            getattr(loaded, function)()
    except Exception as exc:  # an optional extra, or a broken module
        log.debug("warm server: not preloading %s (%s)", name, exc)


def _serve(listener: socket.socket, proc: subprocess.Popen, preload: list[str]) -> None:
    """Until the command ends: fork a child for every request, report each child's exit status,
    and between requests import the next module of ``preload`` (a request never waits for them:
    its child imports what is still missing itself). The imports start with the first command
    that is not light (:data:`LIGHT_COMMANDS`): a `dvc repro` with nothing to do runs only those,
    and imports beside it would slow it down (0.5-1 s of 2 s on a 2-core machine)."""
    children: dict[int, socket.socket] = {}
    started, stopping, served, pending = time.perf_counter(), False, 0, []
    _stop_if_threaded(listener, preload)
    try:
        while proc.poll() is None or children:
            ready, _, _ = select.select([listener] if listener.fileno() >= 0 else [], [], [], 0 if pending else POLL_S)
            if ready:
                conn, _ = listener.accept()
                pid, argv = _fork_child(listener, conn)
                if pid:
                    children[pid] = conn
                    served += 1
                if preload and next((a for a in argv if not a.startswith("-")), None) not in LIGHT_COMMANDS:
                    started, pending, preload = time.perf_counter(), preload, []
            elif pending:
                if not _import_unless_done(pending.pop(0), proc, children):
                    pending.clear()
                elif not _stop_if_threaded(listener, pending) and not pending:
                    log.debug("warm server: imports done in %.1f s", time.perf_counter() - started)
            _report_finished(children)
            if proc.poll() is not None and children and not stopping:  # the command is gone: nobody waits
                stopping = True
                for pid in children:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
    finally:
        for conn in children.values():
            conn.close()
        log.info("warm stage server: %d cvp commands ran in forks of this process", served)


class _CommandEnded(BaseException):
    """Raised into an import when the command has ended and no child runs: nothing left to serve.
    (A BaseException: no library's ``except Exception`` swallows it.)"""


def _import_unless_done(name: str, proc: subprocess.Popen, children: dict) -> bool:
    """Import ``name`` (:func:`_import_one`) while still reporting each child's end at once (an
    import can take a second or more, and DVC waits for the stage's `cvp`); cut short when the
    command ends meanwhile, False if so."""

    def on_child_exit(_signum: int, _frame: object) -> None:
        _report_finished(children)
        if proc.poll() is not None and not children:
            raise _CommandEnded

    signal.signal(signal.SIGCHLD, on_child_exit)
    try:
        if proc.poll() is not None and not children:
            return False
        _import_one(name)
        return True
    except _CommandEnded:
        log.debug("warm server: the command ended during the import of %s", name)
        return False
    finally:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)


def _stop_if_threaded(listener: socket.socket, pending: list[str]) -> bool:
    """Stop serving (every `cvp` then runs in its own process) if another thread runs here: a fork
    copies only the forking thread, so a lock another thread holds would stay locked in the child."""
    if threading.active_count() == 1:
        return False
    log.warning("warm server: a thread is running in this process; each cvp runs in its own process")
    listener.close()
    pending.clear()
    return True


def _report_finished(children: dict[int, socket.socket]) -> None:
    """Send each finished child's exit status (128 + N when killed by signal N) to its `cvp`."""
    for pid in list(children):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            with children.pop(pid) as conn, contextlib.suppress(OSError):
                code = os.waitstatus_to_exitcode(status)
                conn.sendall(_REPLY.pack(b"S", code if code >= 0 else 128 - code))


def _fork_child(listener: socket.socket, conn: socket.socket) -> tuple[int, list[str]]:
    """Read one request and fork its child; the child's pid (0 when the request was unreadable)
    and the command's arguments."""
    conn.settimeout(10)
    try:
        request, fds = _read_request(conn)
    except (OSError, ValueError) as exc:
        log.warning("warm server: unreadable request (%s); that cvp runs in its own process", exc)
        conn.close()
        return 0, []
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child; tested through its effects
        _run_child(listener, conn, request, fds)
    for fd in fds:
        os.close(fd)
    conn.settimeout(None)
    with contextlib.suppress(OSError):  # the `cvp` is gone: its child still runs, and is reaped
        conn.sendall(_REPLY.pack(b"P", pid))
    return pid, list(request["argv"])


def _read_request(conn: socket.socket) -> tuple[dict, list[int]]:
    data, fds, _, _ = socket.recv_fds(conn, 65536, len(STREAMS))
    if len(fds) != len(STREAMS) or len(data) < _HEADER.size:
        for fd in fds:
            os.close(fd)
        raise ValueError(f"expected {len(STREAMS)} descriptors and a header, got {len(fds)} and {len(data)} bytes")
    (size,) = _HEADER.unpack_from(data)
    body = data[_HEADER.size :]
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            raise ValueError("request cut short")
        body += chunk
    return json.loads(body), fds


def _run_child(listener: socket.socket, conn: socket.socket, request: dict, fds: list[int]) -> None:
    """In the forked child: become the `cvp` process that asked (streams, directory, environment,
    signals), run the command and exit; never returns into the server's loop."""
    status = 1
    try:
        listener.close()
        for target, fd in zip(STREAMS, fds):
            os.dup2(fd, target)
            os.close(fd)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = ["cvp", *request["argv"]]
        sys.stdout.reconfigure(line_buffering=os.isatty(1))
        logging.root.handlers.clear()  # as in a new process: the command sets its own logging up
        conn.close()
        from pipelines.cli import main
        from pipelines.process_exit import finish_process

        try:
            main(request["argv"])
            code: object = 0
        except SystemExit as exc:
            code = exc.code
        finish_process(code)
    except BaseException:  # noqa: BLE001 - nothing may return into the server's loop
        with contextlib.suppress(Exception):
            import traceback

            traceback.print_exc()
    finally:
        os._exit(status)
