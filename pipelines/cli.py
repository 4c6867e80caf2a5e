"""`cvp`: run any pipeline stage by hand (dvc.yaml calls the same commands).

    cvp ingest        validate raw transactions, quarantine bad rows
    cvp features      customer features at the scoring and training cutoffs, and labels
    cvp clv           BG/NBD-family + Gamma-Gamma CLV models
    cvp churn         LightGBM churn classifier
    cvp segment       value-potential quadrants, tiers, lifecycle states
    cvp export        batch scores to Parquet/CSV/SQL and the HTML report
    cvp generate      seeded synthetic transactions (BG/NBD + Gamma-Gamma) for tests and benchmarks
    cvp retrain       scheduled retraining: drift checks, champion/challenger gate, export
    cvp backtest      holdout metrics of the clv and churn models over past as_of dates
"""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path

import typer

from features.errors import DataError
from pipelines.config import ConfigError, load_params

log = logging.getLogger("cvp")

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.split("\n\n")[0])

STAGES: dict[str, str] = {
    "ingest": "Validate raw transactions; accepted rows to data/interim, bad rows to data/quarantine.",
    "features": "Customer features at as_of and one/two horizons back, with the window labels.",
    "clv": "Fit the BG/NBD family and Gamma-Gamma, evaluate on the holdout, predict CLV.",
    "churn": "Train and evaluate the LightGBM churn classifier; score every customer.",
    "segment": "Quadrants, tiers, pyramid, ABC, lifecycle and relationship levels.",
    "export": "Write the batch scores (Parquet, CSV, SQL table) and the HTML report.",
}

PARAMS_OPTION = typer.Option(Path("params.yaml"), "--params", "-p", help="Params file to read.")


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("alembic", "mlflow.store", "urllib3", "matplotlib", "numexpr", "py4j"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_stage(name: str, params_path: Path) -> None:
    """Parse params once, then run the stage module's ``run(params, params_path)``."""
    params = load_params(params_path)
    module = importlib.import_module(f"pipelines.{name}")
    module.run(params, params_path=params_path)


def _register(name: str, help_text: str) -> None:
    def command(params: Path = PARAMS_OPTION, verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
        setup_logging(verbose)
        run_stage(name, params)

    command.__doc__ = help_text
    app.command(name=name, help=help_text)(command)


for _name, _help in STAGES.items():
    _register(_name, _help)


@app.command(name="retrain")
def retrain(
    params: Path = PARAMS_OPTION,
    force_promote: bool = typer.Option(False, "--force-promote", help="Promote even if drift or the gate refuse (recorded)."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Retrain up to segment, check drift, gate the challenger against the champion, export if promoted."""
    from pipelines.retrain import RetrainStopped, run

    setup_logging(verbose)
    try:
        run(load_params(params), params_path=params, force_promote=force_promote)
    except RetrainStopped as exc:
        sys.stderr.write(f"cvp: error: {exc}\n")
        raise SystemExit(exc.exit_code) from None


@app.command(name="backtest")
def backtest(
    start: str = typer.Option(..., "--from", help="First as_of date, YYYY-MM-DD."),
    end: str = typer.Option(..., "--to", help="Last as_of date, YYYY-MM-DD (included)."),
    every: int | None = typer.Option(None, "--every", min=1, help="Days between as_of dates (default data.horizon_days)."),
    params: Path = PARAMS_OPTION,
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Run ingest..churn at each past as_of in a scratch directory; table, plot and MLflow runs of the holdout metrics."""
    import datetime as dt

    from pipelines.backtest import run

    setup_logging(verbose)
    try:
        dates = dt.date.fromisoformat(start), dt.date.fromisoformat(end)
    except ValueError:
        raise ConfigError(f"--from/--to must be dates like 1998-03-31, not '{start}'/'{end}'") from None
    run(load_params(params), params_path=params, start=dates[0], end=dates[1], every_days=every)


@app.command(name="generate")
def generate(
    rows: int = typer.Option(..., "--rows", min=1, help="Rows to generate (approximate: whole customers)."),
    out: Path = typer.Option(..., "--out", help="Output file: .parquet, .csv or .csv.gz."),
    seed: int = typer.Option(42, "--seed", help="Random seed; same seed and sizes give the same rows."),
    customers: int | None = typer.Option(None, "--customers", min=1, help="Number of customers (default: from --rows)."),
    noise_rate: float | None = typer.Option(None, "--noise-rate", min=0.0, max=0.99, help="Noise rows per clean row (default 0.002)."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Write seeded synthetic retail transactions (BG/NBD purchases, Gamma-Gamma spend, returns, noise)."""
    from pipelines.generate import write_synthetic

    setup_logging(verbose)
    write_synthetic(out, rows, seed, customers, noise_rate=noise_rate)


@app.command(name="score")
def score(
    out: Path = typer.Option(..., "--out", help="Parquet file to write the scores to."),
    engine: str = typer.Option("pandas", "--engine", help="pandas (this process) or pyspark (mlflow spark_udf)."),
    model: str = typer.Option("scores", "--model", help="scores (the whole chain: export rows) or clv (CLV predictions)."),
    params: Path = PARAMS_OPTION,
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Apply a registered model (@champion, else the stage's version) to features_t0."""
    from pipelines import score as scoring

    setup_logging(verbose)
    if engine not in ("pandas", "pyspark"):
        raise ConfigError(f"--engine must be pandas or pyspark, not '{engine}'")
    if model not in ("scores", "clv"):
        raise ConfigError(f"--model must be scores or clv, not '{model}'")
    scoring.score(load_params(params), engine, out, model)


def main() -> None:
    """Entry point: user-facing errors become one line on stderr and exit code 2."""
    try:
        # Without standalone mode click returns (not raises) the code of a typer.Exit.
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:
            raise SystemExit(code)
    except (ConfigError, DataError) as exc:
        log.debug("stopped", exc_info=True)
        sys.stderr.write(f"cvp: error: {exc}\n")
        raise SystemExit(2) from None
    except (typer.Abort, KeyboardInterrupt):
        sys.stderr.write("cvp: interrupted\n")
        raise SystemExit(130) from None
    except Exception as exc:  # click usage errors carry their own exit codes
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            raise SystemExit(exc.exit_code) from None
        raise


if __name__ == "__main__":
    main()
