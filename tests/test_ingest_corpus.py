"""The corpus of odd inputs (tests/corpus): every case goes through the ingest stage and must give
exactly the outcome written beside it in ``<case>.expected.yaml``: the row counts per reason (and
a few summary figures), or the exact one-line error. ``rows_in = accepted + rejected`` is checked
for every case that ingests.

A case file holds ``description``, ``data`` (overrides of the corpus defaults below), ``repro``
(small-data cases that should also run through the whole pipeline), ``expect`` and optionally
``source`` (the data file or glob, default ``<case>.<ext>``) or ``generate`` (built by the test).
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from features.errors import DataError
from features.ingest import REASONS
from pipelines import ingest as stage
from pipelines.catalog import Catalog
from pipelines.config import ConfigError, parse_params

ROOT = Path(__file__).resolve().parents[1]
CORPUS = Path(__file__).resolve().parent / "corpus"
SUFFIX = ".expected.yaml"
CASES = sorted(p.name.removesuffix(SUFFIX) for p in CORPUS.glob(f"*{SUFFIX}"))
# The run date the cases are ingested on (rows dated after it are quarantined).
RUN_DATE = dt.date(2026, 1, 1)
DEFAULT_DATA = {
    "columns": {"customer_id": "customer", "timestamp": "date", "amount": "amount",
                "order_id": None, "quantity": None, "cost": None},
    "timestamp_format": None,
}
SUMMARY_KEYS = ("n_customers", "n_returns", "date_min", "date_max")


def load_case(name: str) -> dict:
    return yaml.safe_load((CORPUS / f"{name}{SUFFIX}").read_text())


def source_of(name: str, case: dict) -> str:
    """The case's data file or glob, relative to the corpus directory."""
    if "source" in case:
        return case["source"]
    files = [p.name for p in CORPUS.glob(f"{name}.*") if not p.name.endswith(SUFFIX)]
    assert len(files) == 1, f"{name}: expected one data file, found {files}"
    return files[0]


def write_one_customer(path: Path, rows: int = 100_000) -> None:
    """One customer buying every minute from 2024-01-01 00:00 (rows minutes in all)."""
    start = pd.Timestamp("2024-01-01")
    frame = pd.DataFrame({
        "customer": "C001",
        "date": (start + pd.to_timedelta(range(rows), unit="min")).strftime("%Y-%m-%d %H:%M:%S"),
        "amount": [f"{1 + i % 50}.99" for i in range(rows)],
    })
    frame.to_csv(path, index=False)


def stage_case(project: Path, name: str, case: dict):
    """Copy (or generate) the case's input under data/raw and return its validated data params."""
    raw_dir = project / "data" / "raw"
    raw_dir.mkdir(parents=True)
    if case.get("generate") == "one_customer_100k":
        write_one_customer(raw_dir / f"{name}.csv")
        source = f"{name}.csv"
    else:
        source = source_of(name, case)
        top = source.split("/")[0]
        origin = CORPUS / top
        if origin.is_dir():
            shutil.copytree(origin, raw_dir / top)
        else:
            shutil.copy(origin, raw_dir / top)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update({**DEFAULT_DATA, **case["data"], "path": f"data/raw/{source}"})
    return parse_params(params).data


def test_the_corpus_has_the_cases_the_issue_lists():
    assert len(CASES) >= 25
    data_files = {p.name for p in CORPUS.iterdir() if not p.name.endswith(SUFFIX) and p.name != "README.md"}
    used = {source_of(n, c).split("/")[0] for n in CASES for c in [load_case(n)] if "generate" not in c}
    assert data_files == used  # every data file belongs to a case
    for name in CASES:
        case = load_case(name)
        assert set(case) <= {"description", "source", "generate", "data", "repro", "expect"}, name
        assert case["description"] and isinstance(case["repro"], bool), name
        assert ("error" in case["expect"]) != ("rows_in" in case["expect"]), name


@pytest.mark.parametrize("name", CASES)
def test_corpus_case(name, tmp_path, caplog):
    paths = Catalog(tmp_path)
    case = load_case(name)
    expect = case["expect"]
    data = stage_case(tmp_path, name, case)
    caplog.set_level(logging.WARNING, logger="pipelines.ingest")

    if "error" in expect:
        with pytest.raises((DataError, ConfigError)) as refused:
            stage.ingest(data, paths, today=RUN_DATE)
        assert str(refused.value) == expect["error"]
        assert "\n" not in str(refused.value)
        assert not paths.TRANSACTIONS.exists() and not paths.QUARANTINE.exists()  # nothing half-written
        return

    metrics = stage.ingest(data, paths, today=RUN_DATE)
    assert metrics["rows_in"] == metrics["rows_accepted"] + metrics["rows_rejected"]
    assert {k: metrics[k] for k in ("rows_in", "rows_accepted", "rows_rejected")} == {
        k: expect[k] for k in ("rows_in", "rows_accepted", "rows_rejected")}
    assert metrics["rejected_by_reason"] == {**dict.fromkeys(REASONS, 0), **expect["rejected_by_reason"]}
    assert metrics["rejected_share"] == pytest.approx(expect["rows_rejected"] / expect["rows_in"], abs=0)
    for key in SUMMARY_KEYS:
        if key in expect:
            assert metrics[key] == expect[key], key

    accepted = pd.read_parquet(paths.TRANSACTIONS)
    assert len(accepted) == metrics["rows_accepted"]
    assert len(pd.read_parquet(paths.QUARANTINE)) == metrics["rows_rejected"]
    if "amount_sum" in expect:
        assert accepted["amount"].sum() == pytest.approx(expect["amount_sum"], rel=1e-12)
    if "amount_max" in expect:
        assert accepted["amount"].max() == expect["amount_max"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "pipelines.ingest"]
    if metrics["rows_rejected"]:
        # the expected line names the quarantine file as seen from the project root
        expected = [expect["warning"].replace("the rows are in data/", f"the rows are in {tmp_path}/data/")]
        assert warnings == expected if "warning" in expect else len(warnings) == 1
    else:
        assert warnings == []
