"""`cvp`: run any pipeline stage by hand (dvc.yaml calls the same commands).

    cvp fingerprint   list what ingest would read (files, sizes, mtimes); ingest re-runs when it changes
    cvp ingest        validate raw transactions, quarantine bad rows
    cvp features      customer features at the scoring and training cutoffs, and labels
    cvp clv           BG/NBD-family + Gamma-Gamma CLV models
    cvp churn         LightGBM churn classifier
    cvp value         next-horizon value model, used for growth potential when it wins out of time
    cvp segment       value-potential quadrants, tiers, lifecycle states
    cvp export        batch scores to Parquet/CSV/SQL and the HTML report
    cvp generate      seeded synthetic transactions (BG/NBD + Gamma-Gamma) for tests and benchmarks
    cvp retrain       scheduled retraining: drift checks, champion/challenger gate, export
    cvp backtest      holdout metrics of the clv and churn models over past as_of dates
    cvp score         apply the registered scoring model to features_t0
    cvp notebook      execute notebooks/explore.ipynb into reports/explore.html
    cvp check-params  check params.yaml for the stages and for DVC (`make run` calls it first)
    cvp flush-runs    send the queued MLflow runs of ingest, features and export to the store
    cvp warm CMD...   run CMD (e.g. dvc repro) with its cvp stages forked from one warm process

Errors: a problem the user can fix (params, data, usage) is one line `cvp: error: ...` on
stderr, exit code 2; anything unexpected (a bug) is one line ending in `(run with --verbose
for the traceback)`, exit code 1. `--verbose` (`-v`, before or after the command, or the
environment variable CVP_VERBOSE=1, e.g. under `dvc repro`) shows DEBUG logs and the traceback.
"""

from __future__ import annotations

import importlib
import logging
import re
import sys
import traceback
from pathlib import Path

import typer

from features.errors import DataError, contract_error_message
from pipelines import logs
from pipelines.config import ConfigError, check_params_file, load_params
from pipelines.process_exit import env_flag, exit_process

log = logging.getLogger("cvp")

_DOC = __doc__.split("\n\n")
HELP = f"{_DOC[0]}\n\n{' '.join(_DOC[2].split())}"  # the summary and the errors paragraph
# Plain tracebacks (only with --verbose), not typer's rich ones.
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, help=HELP)

STAGES: dict[str, str] = {
    "ingest": "Validate raw transactions; accepted rows to data/interim, bad rows to data/quarantine.",
    "features": "Customer features at as_of and one/two horizons back, with the window labels.",
    "clv": "Fit the BG/NBD family and Gamma-Gamma, evaluate on the holdout, predict CLV.",
    "churn": "Train and evaluate the LightGBM churn classifier; score every customer.",
    "value": "Train and evaluate the next-horizon value model out of time; score every customer.",
    "segment": "Quadrants, tiers, pyramid, ABC, lifecycle and relationship levels.",
    "export": "Write the batch scores (Parquet, CSV, SQL table) and the HTML report.",
}

PARAMS_OPTION = typer.Option(Path("params.yaml"), "--params", "-p", help="Params file to read.")
VERBOSE_HELP = "DEBUG logs, and the traceback of an error (also: environment variable CVP_VERBOSE=1)."
VERBOSE_OPTION = typer.Option(False, "--verbose", "-v", help=VERBOSE_HELP)
USER_ERROR_EXIT = 2  # params, data or usage the user can fix
UNEXPECTED_EXIT = 1  # a bug: the one line says how to see the traceback
INTERRUPTED_EXIT = 130
_state = {"verbose": False}


def verbose_requested(flag: bool = False) -> bool:
    """--verbose on the command line (global or per command) or CVP_VERBOSE set to a true value."""
    return flag or env_flag("CVP_VERBOSE") or _state["verbose"]


def setup_logging(verbose: bool = False) -> None:
    verbose = _state["verbose"] = verbose_requested(verbose)
    logs.configure(verbose)
    log.debug("cvp %s: DEBUG logs on, tracebacks shown", " ".join(sys.argv[1:]))


def run_stage(name: str, params_path: Path) -> None:
    """Parse params once, then run the stage module's ``run(params, paths)`` on the catalog of
    the project holding the current directory. Runs of stages without a model are queued for
    the next process that sets MLflow up (pipelines.tracking), so this one never imports it."""
    from pipelines import profile, tracking
    from pipelines.catalog import project_catalog

    with profile.profiled(f"cvp {name}"):
        params = load_params(params_path)
        module = importlib.import_module(f"pipelines.{name}")
        with tracking.deferred_stage_records():
            module.run(params, project_catalog(params_path))


@app.callback()
def _global_options(verbose: bool = VERBOSE_OPTION) -> None:
    _state["verbose"] = verbose_requested(verbose)


def _register(name: str, help_text: str) -> None:
    def command(params: Path = PARAMS_OPTION, verbose: bool = VERBOSE_OPTION) -> None:
        setup_logging(verbose)
        run_stage(name, params)

    command.__doc__ = help_text
    app.command(name=name, help=help_text)(command)


@app.command(name="fingerprint")
def fingerprint(params: Path = PARAMS_OPTION, verbose: bool = VERBOSE_OPTION) -> None:
    """Record what ingest would read (source files, sizes, mtimes, the date bound); DVC runs it on every repro."""
    from pipelines import fingerprint as stage
    from pipelines.catalog import project_catalog

    setup_logging(verbose)  # no MLflow run and no heavy import: it runs on every `dvc repro`
    stage.run(load_params(params), project_catalog(params))


for _name, _help in STAGES.items():
    _register(_name, _help)


@app.command(name="retrain")
def retrain(
    params: Path = PARAMS_OPTION,
    force_promote: bool = typer.Option(False, "--force-promote", help="Promote even if drift or the gate refuse (recorded)."),
    verbose: bool = VERBOSE_OPTION,
) -> None:
    """Retrain up to segment, check drift, gate the challenger against the champion, export if promoted."""
    setup_logging(verbose)
    checked = check_params_file(params)  # retrain runs `dvc repro`, which cannot read some YAML values
    from pipelines.catalog import project_catalog
    from pipelines.retrain import RetrainStopped, run

    try:
        run(checked, project_catalog(params), force_promote=force_promote)
    except RetrainStopped as exc:
        sys.stderr.write(f"cvp: error: {exc}\n")
        raise SystemExit(exc.exit_code) from None


@app.command(name="backtest")
def backtest(
    start: str = typer.Option(..., "--from", help="First as_of date, YYYY-MM-DD."),
    end: str = typer.Option(..., "--to", help="Last as_of date, YYYY-MM-DD (included)."),
    every: int | None = typer.Option(None, "--every", min=1, help="Days between as_of dates (default data.horizon_days)."),
    params: Path = PARAMS_OPTION,
    verbose: bool = VERBOSE_OPTION,
) -> None:
    """Run ingest..churn at each past as_of in a scratch directory; table, plot and MLflow runs of the holdout metrics."""
    import datetime as dt

    from pipelines.backtest import run
    from pipelines.catalog import project_catalog

    setup_logging(verbose)
    try:
        dates = dt.date.fromisoformat(start), dt.date.fromisoformat(end)
    except ValueError:
        raise ConfigError(f"--from/--to must be dates like 1998-03-31, not '{start}'/'{end}'") from None
    run(load_params(params), project_catalog(params), start=dates[0], end=dates[1], every_days=every)


@app.command(name="generate")
def generate(
    rows: int = typer.Option(..., "--rows", min=1, help="Rows to generate (approximate: whole customers)."),
    out: Path = typer.Option(..., "--out", help="Output file: .parquet, .csv or .csv.gz."),
    seed: int = typer.Option(42, "--seed", help="Random seed; same seed and sizes give the same rows."),
    customers: int | None = typer.Option(None, "--customers", min=1, help="Number of customers (default: from --rows)."),
    noise_rate: float | None = typer.Option(None, "--noise-rate", min=0.0, max=0.99, help="Noise rows per clean row (default 0.002)."),
    behaviours: str | None = typer.Option(
        None, "--behaviours",
        help="Churn behaviours to switch on: slowdown,basket,returns,seasonal,growth or all; name=strength (default 1).",
    ),
    truth: Path | None = typer.Option(None, "--truth", help="Also write per-customer ground truth here (.parquet or .csv)."),
    world: str = typer.Option(
        "default", "--world",
        help="Population: default, or retail (young, behaviour-driven churn; all behaviours on at strength 4 unless --behaviours).",
    ),
    verbose: bool = VERBOSE_OPTION,
) -> None:
    """Write seeded synthetic retail transactions (BG/NBD purchases, Gamma-Gamma spend, returns, noise)."""
    from features.behaviours import parse_behaviours
    from features.synthetic import world_preset
    from pipelines.generate import write_synthetic

    setup_logging(verbose)
    try:
        preset = world_preset(world)
        chosen = parse_behaviours(preset.behaviours if behaviours is None else behaviours, preset.strengths)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    write_synthetic(out, rows, seed, customers, noise_rate=noise_rate, behaviours=chosen, truth_path=truth,
                    params=preset.params, world=preset.name)


@app.command(name="score")
def score(
    out: Path = typer.Option(..., "--out", help="Parquet file to write the scores to."),
    engine: str = typer.Option("pandas", "--engine", help="pandas (this process) or pyspark (mlflow spark_udf)."),
    model: str = typer.Option("scores", "--model", help="scores (the whole chain: export rows) or clv (CLV predictions)."),
    params: Path = PARAMS_OPTION,
    verbose: bool = VERBOSE_OPTION,
) -> None:
    """Apply a registered model (@champion, else the stage's version) to features_t0."""
    from pipelines import score as scoring
    from pipelines.catalog import project_catalog

    setup_logging(verbose)
    if engine not in ("pandas", "pyspark"):
        raise ConfigError(f"--engine must be pandas or pyspark, not '{engine}'")
    if model not in ("scores", "clv"):
        raise ConfigError(f"--model must be scores or clv, not '{model}'")
    scoring.score(load_params(params), project_catalog(params), engine, out, model)


@app.command(name="notebook")
def notebook(
    out: Path = typer.Option(Path("reports/explore.html"), "--out", help="HTML page to write (relative: to the project)."),
    timeout: int = typer.Option(300, "--timeout", min=1, help="Seconds each cell may take before the run stops."),
    project: Path | None = typer.Option(None, "--project", help="Project directory (default: the one holding the current directory)."),
    verbose: bool = VERBOSE_OPTION,
) -> None:
    """Execute notebooks/explore.ipynb against the project's outputs into a self-contained HTML page."""
    from pipelines import notebook as explore
    from pipelines.tracking import project_root

    setup_logging(verbose)
    explore.render(project or project_root(), out=out, timeout=timeout)


@app.command(
    name="warm", context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True},
)
def warm(command: list[str] = typer.Argument(..., help="The command to run, e.g. dvc repro.")) -> None:
    """Run a command (`make run`: dvc repro) whose `cvp` stages run in forks of one process that
    imported the libraries once (1-3.5 s saved per stage); its exit code is this command's.
    The installed `cvp` runs `cvp warm CMD...` without this module (pipelines.launch)."""
    from pipelines import warm as server

    code = server.main(command)
    if code:
        raise typer.Exit(code)


@app.command(name="check-params")
def check_params(params: Path = PARAMS_OPTION, verbose: bool = VERBOSE_OPTION) -> None:
    """Check the params file for the stages and for DVC (e.g. an unquoted date); `make run` calls it first."""
    setup_logging(verbose)
    check_params_file(params)
    log.info("%s: ok (stages and DVC can read it)", params)


@app.command(name="flush-runs")
def flush_runs(params: Path = PARAMS_OPTION, verbose: bool = VERBOSE_OPTION) -> None:
    """Send the queued MLflow runs of ingest, features and export (the stages that log a model send them first)."""
    from pipelines import tracking
    from pipelines.catalog import project_catalog

    setup_logging(verbose)
    checked, root = load_params(params), project_catalog(params).root
    if not tracking.flush(checked, root, strict=True):
        log.info("no queued stage run in %s", tracking.queue_dir(checked, root))


def one_line(text: str) -> str:
    """``text`` on one line: newlines and runs of spaces become single spaces."""
    return " ".join(str(text).split())


def usage_error_message(exc: typer.TyperException) -> str:
    """A click usage error (unknown command or option, missing or bad option) as one line with the usage."""
    ctx = getattr(exc, "ctx", None)
    if ctx is None:
        return one_line(exc.format_message())
    message = one_line(exc.format_message()).rstrip(".")
    message = message[:1].lower() + message[1:]
    message = re.sub(r" \(Possible options: (.+)\)$", r"; did you mean \1?", message)
    commands = getattr(ctx.command, "commands", None)
    if commands and (message == "missing command" or message.startswith("no such command")):
        message += f"; commands: {', '.join(commands)}"
    usage = one_line(ctx.get_usage()).removeprefix("Usage: ")
    return f"{message} (usage: {usage}; `{ctx.command_path} --help` for more)"


def _fail(message: str, code: int, exc: BaseException | None = None) -> None:
    """Print the traceback (only when verbose), then the one line; exit with ``code``."""
    if exc is not None and verbose_requested():
        traceback.print_exception(exc)
    sys.stderr.write(f"cvp: error: {one_line(message)}\n")
    raise SystemExit(code) from None


def _is_contract_error(exc: BaseException) -> bool:
    """A pandera SchemaError(s): a frame that breaks a stage contract (pandera is loaded if so)."""
    errors = sys.modules.get("pandera.errors")
    return errors is not None and isinstance(exc, (errors.SchemaError, errors.SchemaErrors))


def main(argv: list[str] | None = None) -> None:
    """Entry point: every failure is one line on stderr (the traceback only with --verbose).

    Exit codes: 2 for what the user can fix (params, data, usage, a broken stage contract),
    1 for anything unexpected, 130 when interrupted; a stage's own code (e.g. retrain's 4) stays.
    """
    _state["verbose"] = False  # set by --verbose while parsing (main may run more than once in a process)
    try:
        # Without standalone mode click returns (not raises) the code of a typer.Exit.
        code = app(args=argv, prog_name="cvp", standalone_mode=False)
        if code == INTERRUPTED_EXIT:
            sys.stderr.write("cvp: interrupted\n")
        if isinstance(code, int) and code:
            raise SystemExit(code)
    except (ConfigError, DataError) as exc:
        _fail(str(exc), USER_ERROR_EXIT, exc)
    except typer.TyperException as exc:  # click's usage errors (typer's bundled click)
        _fail(usage_error_message(exc), USER_ERROR_EXIT)
    except (typer.Abort, KeyboardInterrupt):
        sys.stderr.write("cvp: interrupted\n")
        raise SystemExit(INTERRUPTED_EXIT) from None
    except Exception as exc:
        if _is_contract_error(exc):
            _fail(contract_error_message(exc), USER_ERROR_EXIT, exc)
        first = one_line(str(exc).strip().splitlines()[0] if str(exc).strip() else "")
        what = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
        _fail(f"unexpected {what} (run with --verbose for the traceback)", UNEXPECTED_EXIT, exc)


def entry_point() -> None:
    """The installed `cvp` command: :func:`main`, then exit without the interpreter's teardown
    (pipelines.process_exit: about 1.4 s per model stage). Tests call :func:`main` in-process."""
    try:
        main()
    except SystemExit as exc:
        exit_process(exc.code)
    exit_process(0)


if __name__ == "__main__":  # `python -m pipelines.cli`: the normal exit (profilers, debuggers)
    main()
