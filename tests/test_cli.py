"""The installed `cvp` command: every failure is one line `cvp: error: ...` on stderr, no traceback
unless --verbose; exit 2 for what the user can fix, 1 for anything unexpected.

The unexpected-error and contract-violation cases need a failing command: a test-only `cvp boom`
is added to the same command group and run through the same entry point (pipelines.cli.main) in
this process (tests/inprocess.py), the rest through the installed `cvp`."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests import inprocess

ROOT = Path(__file__).resolve().parents[1]
CVP = str(Path(sys.executable).parent / "cvp")
COMMANDS = "fingerprint, ingest, features, clv, churn, value, segment, export, retrain, backtest, generate, score, notebook, warm, check-params, flush-runs"
TOP_USAGE = "(usage: cvp [OPTIONS] COMMAND [ARGS]...; `cvp --help` for more)"


def cvp(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "CVP_VERBOSE"} | (env or {})
    return subprocess.run([CVP, *args], cwd=cwd, env=environ, capture_output=True, text=True, timeout=120)


def run_boom(code: str, *args: str, cwd: Path) -> inprocess.Done:
    """`cvp boom <args>` with the test-only command ``code`` defines (compiled from a string, so a
    traceback shows no source lines, as for a script), run by pipelines.cli.main in this process."""
    from pipelines import cli

    exec(compile(code, "<boom>", "exec"), {})
    try:
        return inprocess.cvp(cwd, *args)
    finally:
        cli.app.registered_commands[:] = [c for c in cli.app.registered_commands if c.name != "boom"]


def assert_one_line(done: subprocess.CompletedProcess | inprocess.Done, code: int, line: str) -> None:
    assert done.returncode == code, done.stderr
    assert done.stderr == line + "\n", done.stderr
    assert done.stdout == ""


# --------------------------------------------------------------------------- usage errors


@pytest.mark.parametrize(
    ("args", "line"),
    [
        ((), f"cvp: error: missing command; commands: {COMMANDS} {TOP_USAGE}"),
        (("-v",), f"cvp: error: missing command; commands: {COMMANDS} {TOP_USAGE}"),
        (("foo",), f"cvp: error: no such command 'foo'; commands: {COMMANDS} {TOP_USAGE}"),
        (("--nope",), f"cvp: error: no such option: --nope {TOP_USAGE}"),
        (("ingest", "--nope"),
         "cvp: error: no such option: --nope (usage: cvp ingest [OPTIONS]; `cvp ingest --help` for more)"),
        (("ingest", "--para"),
         "cvp: error: no such option: --para; did you mean --params? "
         "(usage: cvp ingest [OPTIONS]; `cvp ingest --help` for more)"),
        (("ingest", "extra"),
         "cvp: error: got unexpected extra argument(s) (extra) "
         "(usage: cvp ingest [OPTIONS]; `cvp ingest --help` for more)"),
        (("generate",),
         "cvp: error: missing option '--rows' (usage: cvp generate [OPTIONS]; `cvp generate --help` for more)"),
        (("generate", "--rows", "10"),
         "cvp: error: missing option '--out' (usage: cvp generate [OPTIONS]; `cvp generate --help` for more)"),
        (("backtest", "--from", "1998-01-01"),
         "cvp: error: missing option '--to' (usage: cvp backtest [OPTIONS]; `cvp backtest --help` for more)"),
        (("generate", "--rows", "0", "--out", "x.csv"),
         "cvp: error: invalid value for '--rows': Input should be greater than or equal to 1 "
         "(usage: cvp generate [OPTIONS]; `cvp generate --help` for more)"),
    ],
)
def test_usage_errors_are_one_line_with_the_usage_and_exit_2(tmp_path, args, line):
    assert_one_line(cvp(*args, cwd=tmp_path), 2, line)


def test_help_documents_verbose_and_the_exit_codes(tmp_path):
    done = cvp("--help", cwd=tmp_path, env={"COLUMNS": "200"})
    assert done.returncode == 0 and done.stderr == ""
    text = " ".join(done.stdout.replace("│", " ").split())
    assert "--verbose -v" in text and "CVP_VERBOSE=1" in text
    assert "exit code 2" in text and "exit code 1" in text
    assert "check-params" in text
    stage = cvp("clv", "--help", cwd=tmp_path, env={"COLUMNS": "200"})
    assert stage.returncode == 0 and "--verbose" in stage.stdout


# --------------------------------------------------------------------------- errors of the stages


def test_config_and_data_errors_are_one_line_exit_2_and_verbose_adds_the_traceback(tmp_path):
    line = "cvp: error: nope.yaml: params file not found; run from the project root or pass --params"
    assert_one_line(cvp("ingest", "-p", "nope.yaml", cwd=tmp_path), 2, line)
    for verbose in (cvp("check-params", "-p", "nope.yaml", "--verbose", cwd=tmp_path),
                    cvp("-v", "check-params", "-p", "nope.yaml", cwd=tmp_path),
                    cvp("check-params", "-p", "nope.yaml", cwd=tmp_path, env={"CVP_VERBOSE": "1"})):
        assert verbose.returncode == 2
        assert "Traceback (most recent call last)" in verbose.stderr and "ConfigError" in verbose.stderr
        assert " DEBUG cvp: " in verbose.stderr
        assert verbose.stderr.strip().splitlines()[-1] == line
    shutil.copy2(ROOT / "params.yaml", tmp_path / "params.yaml")
    quiet = cvp("features", cwd=tmp_path)
    assert quiet.returncode == 2 and quiet.stderr.strip().splitlines()[-1] == (
        "cvp: error: data/interim/transactions.parquet not found; run `cvp ingest` first")
    assert "Traceback" not in quiet.stderr and "DEBUG" not in quiet.stderr


BOOM = """
from pipelines import cli

@cli.app.command(name="boom")
def boom(verbose: bool = cli.VERBOSE_OPTION) -> None:
    cli.setup_logging(verbose)
    {body}
"""


def test_an_unexpected_error_is_one_line_exit_1_and_the_traceback_only_with_verbose(tmp_path):
    code = BOOM.format(body="raise KeyError('frequency')")
    quiet = run_boom(code, "boom", cwd=tmp_path)
    assert_one_line(quiet, 1, "cvp: error: unexpected KeyError: 'frequency' (run with --verbose for the traceback)")
    loud = run_boom(code, "boom", "-v", cwd=tmp_path)
    assert loud.returncode == 1
    assert "Traceback (most recent call last)" in loud.stderr and ", in boom\nKeyError: 'frequency'" in loud.stderr
    assert loud.stderr.strip().splitlines()[-1] == quiet.stderr.strip()


def test_a_multi_line_unexpected_message_keeps_its_first_line(tmp_path):
    done = run_boom(BOOM.format(body="raise RuntimeError('first line\\nsecond line')"), "boom", cwd=tmp_path)
    assert_one_line(done, 1, "cvp: error: unexpected RuntimeError: first line (run with --verbose for the traceback)")


CONTRACT = """
import numpy as np
import pandas as pd
import pandera.pandas as pa
from pipelines import cli

SCHEMA = pa.DataFrameSchema(
    {"customer_id": pa.Column(str), "p_alive": pa.Column(float, pa.Check.in_range(0, 1), nullable=False)},
    name="clv predictions",
)

@cli.app.command(name="boom")
def boom(lazy: bool = False) -> None:
    frame = pd.DataFrame({"customer_id": ["0001", "0002", "0003"], "p_alive": [0.5, np.nan, {value}]})
    SCHEMA.validate(frame, lazy=lazy)
"""
TAIL = "; the stage produced values its contract refuses (run with --verbose for the traceback)"


@pytest.mark.parametrize(
    ("value", "args", "line"),
    [
        ("0.2", ("boom",),
         "cvp: error: contract 'clv predictions': column 'p_alive' has null or NaN values "
         f"(1 row(s), e.g. customer 0002: nan){TAIL}"),
        ("0.2", ("boom", "--lazy"),
         "cvp: error: contract 'clv predictions': column 'p_alive' has null or NaN values "
         f"(1 row(s), e.g. nan){TAIL}"),
        ("1.5", ("boom", "--lazy"),
         "cvp: error: contract 'clv predictions': column 'p_alive' has null or NaN values "
         f"(1 row(s), e.g. nan) (and 1 more problem(s)){TAIL}"),
    ],
)
def test_a_contract_violation_is_one_line_naming_the_contract_column_and_rows(tmp_path, value, args, line):
    assert_one_line(run_boom(CONTRACT.replace("{value}", value), *args, cwd=tmp_path), 2, line)


def test_a_failed_range_check_names_the_check_and_the_customer(tmp_path):
    code = CONTRACT.replace("{value}", "1.5").replace("np.nan", "0.25")
    assert_one_line(run_boom(code, "boom", cwd=tmp_path), 2,
                    "cvp: error: contract 'clv predictions': column 'p_alive' fails check in_range(0, 1) "
                    f"(1 row(s), e.g. customer 0003: 1.5){TAIL}")


# --------------------------------------------------------------------------- check-params


def _params_with(tmp_path: Path, old: str, new: str) -> Path:
    text = (ROOT / "params.yaml").read_text()
    assert text.count(old) == 1, old
    target = tmp_path / "params.yaml"
    target.write_text(text.replace(old, new))
    return target


AS_OF_LINE = "  as_of: null "


@pytest.mark.parametrize(
    ("old", "new", "line"),
    [
        (AS_OF_LINE, "  as_of: 1998-03-31 ",
         'cvp: error: params.yaml: data.as_of is an unquoted date; write it quoted: as_of: "1998-03-31"'),
        (AS_OF_LINE, "  as_of: 1998-03-31\n  extra_dates: [2024-01-01] ",
         "cvp: error: params.yaml: unknown key 'data.extra_dates'; remove or rename it"),
        (AS_OF_LINE, "  as_of: 1998-02-31 ",
         'cvp: error: params.yaml: cannot read a value (day is out of range for month); '
         'write dates quoted, as real days: "1998-03-31"'),
        (AS_OF_LINE, "  as_of: 1998-03-31 10:30:00 ",
         "cvp: error: params.yaml: bad value for 'data.as_of': "
         "Datetimes provided to dates should have zero time - e.g. be exact dates"),
    ],
)
def test_check_params_names_the_value_dvc_cannot_read_and_the_quoted_form(tmp_path, old, new, line):
    _params_with(tmp_path, old, new)
    assert_one_line(cvp("check-params", cwd=tmp_path), 2, line)


def test_check_params_passes_the_project_params_and_a_quoted_date(tmp_path):
    done = cvp("check-params", "--params", str(ROOT / "params.yaml"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().endswith("params.yaml: ok (stages and DVC can read it)")
    _params_with(tmp_path, AS_OF_LINE, '  as_of: "1998-03-31" ')
    assert cvp("check-params", cwd=tmp_path).returncode == 0


def test_the_stages_accept_an_unquoted_date_when_run_by_hand(tmp_path):
    """cvp reads the date itself (only DVC cannot): the stage gets past the params and stops at its input."""
    _params_with(tmp_path, AS_OF_LINE, "  as_of: 1998-03-31 ")
    assert yaml.safe_load((tmp_path / "params.yaml").read_text())["data"]["as_of"] == dt.date(1998, 3, 31)
    done = cvp("features", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "cvp: error: data/interim/transactions.parquet not found; run `cvp ingest` first")


def test_retrain_checks_the_params_before_dvc_runs(tmp_path):
    _params_with(tmp_path, AS_OF_LINE, "  as_of: 1998-03-31 ")
    done = cvp("retrain", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        'cvp: error: params.yaml: data.as_of is an unquoted date; write it quoted: as_of: "1998-03-31"')
    assert not (tmp_path / ".dvc").exists() and not (tmp_path / "tracking").exists()


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("target", ["run", "run-spark"])
def test_make_run_checks_the_params_before_dvc_repro(target):
    planned = subprocess.run(["make", "-n", "--always-make", target], cwd=ROOT, capture_output=True, text=True,
                             timeout=60, env={**os.environ, "MAKEFLAGS": ""})
    lines = [line for line in planned.stdout.splitlines() if "check-params" in line or "dvc repro" in line]
    assert "cvp check-params" in lines[0] and "dvc repro" in lines[1], planned.stdout
