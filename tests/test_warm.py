"""`cvp warm COMMAND`: the `cvp` commands COMMAND starts run in forks of one warm process
(pipelines/warm.py), with the results, streams and exit codes of a process of their own.
tests/test_pipeline_e2e.py runs the whole CDNOW pipeline that way (as `make run` does) and checks
its figures."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import warm

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the warm server needs Linux")

BIN = Path(sys.executable).parent
CVP = str(BIN / "cvp")
# Three commands: a file written, help on stdout, a user error on stderr with its exit code.
SCRIPT = (
    "cvp generate --rows 400 --seed 3 --out a.csv; echo $? > rc_generate.txt; "
    "cvp --help > help.txt; "
    "cvp check-params --params missing.yaml 2> err.txt; echo $? > rc_check.txt"
)
OUTPUTS = ("a.csv", "rc_generate.txt", "help.txt", "err.txt", "rc_check.txt")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (warm.SOCKET_ENV, warm.SWITCH_ENV, "CVP_FULL_EXIT")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return {**env, **extra}


def _run(args: list[str], cwd: Path, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=_env(**extra), capture_output=True, text=True, timeout=300)


def test_commands_run_in_forks_with_the_results_of_their_own_process(tmp_path):
    cold, warmed = tmp_path / "cold", tmp_path / "warm"
    cold.mkdir(), warmed.mkdir()
    _run(["sh", "-c", SCRIPT], cold)
    result = _run([CVP, "warm", "sh", "-c", SCRIPT], warmed)
    assert result.returncode == 0, result.stderr
    assert "3 cvp commands ran in forks of this process" in result.stderr
    for name in OUTPUTS:
        assert (warmed / name).read_bytes() == (cold / name).read_bytes(), name
    assert (warmed / "rc_check.txt").read_text().strip() == "2"
    assert "cvp: error:" in (warmed / "err.txt").read_text()
    assert "Usage: cvp" in (warmed / "help.txt").read_text()


def test_a_terminated_cvp_takes_its_child_down_with_the_signal_status(tmp_path):
    script = "cvp generate --rows 50000000 --out big.parquet & pid=$!; sleep 3; kill -TERM $pid; wait $pid; echo $? > rc.txt"
    result = _run([CVP, "warm", "sh", "-c", script], tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "rc.txt").read_text().strip() == "143"  # 128 + SIGTERM, as for a process of its own
    assert "1 cvp commands ran in forks" in result.stderr
    assert not (tmp_path / "big.parquet").exists()


def test_the_command_exit_code_is_the_warm_exit_code(tmp_path):
    assert _run([CVP, "warm", "sh", "-c", "exit 3"], tmp_path).returncode == 3
    missing = _run([CVP, "warm", "no-such-command-here"], tmp_path)
    assert missing.returncode == 2
    assert "cannot start 'no-such-command-here'" in missing.stderr


def test_the_socket_lives_as_long_as_the_command(tmp_path):
    result = _run([CVP, "warm", "sh", "-c", f'test -S "${warm.SOCKET_ENV}" && echo "${warm.SOCKET_ENV}" > s.txt'], tmp_path)
    assert result.returncode == 0, result.stderr
    socket_path = Path((tmp_path / "s.txt").read_text().strip())
    assert not socket_path.exists() and not socket_path.parent.exists()


def test_switched_off_every_cvp_runs_in_its_own_process(tmp_path):
    script = f'echo "${{{warm.SOCKET_ENV}:-none}}" > s.txt; cvp generate --rows 400 --seed 3 --out a.csv'
    result = _run([CVP, "warm", "sh", "-c", script], tmp_path, CVP_WARM="0")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "s.txt").read_text().strip() == "none"
    assert "ran in forks" not in result.stderr
    assert (tmp_path / "a.csv").stat().st_size > 0


def test_without_a_listening_server_cvp_runs_in_its_own_process(tmp_path):
    result = _run([CVP, "generate", "--rows", "400", "--seed", "3", "--out", "a.csv"], tmp_path,
                  **{warm.SOCKET_ENV: str(tmp_path / "no-socket")})  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "a.csv").stat().st_size > 0


def test_the_client_imports_only_the_standard_library():
    code = (
        "import sys, pipelines.launch, pipelines.warm, pipelines.process_exit\n"
        "heavy = {'pandas', 'numpy', 'typer', 'yaml', 'pyarrow', 'mlflow'}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("name", warm.PRELOAD)
def test_every_preloaded_module_exists(name):
    """A renamed module would silently drop out of the preload (its stage would import it again)."""
    module, _, function = name.partition(":")
    loaded = importlib.import_module(module)
    assert not function or callable(getattr(loaded, function))


def test_with_another_thread_running_the_server_forks_nothing(tmp_path):
    """A fork copies only the forking thread: with a second thread alive, every `cvp` runs cold."""
    code = (
        "import logging, sys, threading\n"
        "from pipelines.warm import run_with_server\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "stop = threading.Event(); threading.Thread(target=stop.wait).start()\n"
        "try:\n"
        "    code = run_with_server(['sh', '-c', 'cvp generate --rows 400 --seed 3 --out a.csv'], preload=[])\n"
        "finally:\n"
        "    stop.set()\n"
        "sys.exit(code)\n"
    )
    result = _run([sys.executable, "-c", code], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "a thread is running in this process" in result.stderr
    assert "0 cvp commands ran in forks" in result.stderr
    assert (tmp_path / "a.csv").stat().st_size > 0


def test_the_server_does_not_wait_for_its_imports_once_the_command_ended(tmp_path):
    """`make run` with nothing to do must not wait for a second of imports it will never use."""
    (tmp_path / "slow_to_import.py").write_text("import time\ntime.sleep(120)\n")
    command = "cvp check-params --params missing.yaml; exit 4"  # a first cvp command starts the imports
    code = f"import sys\nfrom pipelines.warm import run_with_server\nsys.exit(run_with_server(['sh', '-c', {command!r}], preload=['slow_to_import']))\n"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(PYTHONPATH=str(tmp_path)),
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 4, result.stderr
    assert "cvp: error:" in result.stderr  # the check-params child ran (and failed: no such file)
