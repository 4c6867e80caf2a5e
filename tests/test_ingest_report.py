"""What ingest reports (features/ingest_report.py) on hand-made counts: the row accounting, the
one-line summary of rejected rows with samples and hints, and when the source is refused."""

from __future__ import annotations

import datetime as dt

import pytest

from features import ingest_report as report
from features.errors import DataError
from features.ingest import REASONS

SUMMARY = {"n_customers": 3, "n_returns": 1, "n_zero_amount": 0,
           "date_min": dt.datetime(2024, 1, 1, 10), "date_max": dt.datetime(2024, 2, 1, 9)}


def metrics(rows_in: int = 10, rejected: dict[str, int] | None = None, summary: dict | None = None) -> dict:
    rejected = rejected or {}
    pairs = [(None, rows_in - sum(rejected.values())), *rejected.items()]
    return report.ingest_metrics(rows_in, pairs, summary or SUMMARY)


def sample(row: int, amount: str | None, source_file: str | None = None) -> dict:
    entry = {"source_row": row, "values": {"customer": "C1", "amount": amount}}
    return entry | ({"source_file": source_file} if source_file else {})


def test_metrics_count_every_reason_and_the_accepted_summary():
    got = metrics(10, {"missing_amount": 2, "non_numeric_amount": 1})
    assert (got["rows_in"], got["rows_accepted"], got["rows_rejected"], got["rejected_share"]) == (10, 7, 3, 0.3)
    assert got["rejected_by_reason"] == {**dict.fromkeys(REASONS, 0), "missing_amount": 2, "non_numeric_amount": 1}
    assert (got["date_min"], got["date_max"], got["n_returns"]) == ("2024-01-01", "2024-02-01", 1)
    empty = report.ingest_metrics(0, [], {**SUMMARY, "n_customers": 0, "n_returns": None, "date_min": None, "date_max": None})
    assert (empty["rejected_share"], empty["n_returns"], empty["date_min"]) == (0.0, 0, None)


def test_rows_that_do_not_add_up_are_a_bug():
    with pytest.raises(RuntimeError, match="row accounting broken: 10 rows read, 8 accepted"):
        report.ingest_metrics(10, [(None, 8), ("missing_amount", 1)], SUMMARY)


def test_samples_are_grouped_by_reason_with_the_file_only_for_several_files():
    rows = [{"reason": "missing_amount", "source_row": 4, "source_file": "a.csv", "customer": "C1", "amount": None},
            {"reason": "missing_amount", "source_row": 9, "source_file": "b.csv", "customer": "C2", "amount": " "}]
    one = report.samples_by_reason(rows, ["customer", "amount"], several_files=False)
    assert one == {"missing_amount": [{"source_row": 4, "values": {"customer": "C1", "amount": None}},
                                      {"source_row": 9, "values": {"customer": "C2", "amount": " "}}]}
    assert report.samples_by_reason(rows, ["amount"], several_files=True)["missing_amount"][1]["source_file"] == "b.csv"
    assert report.sample_source_rows(one) == {"missing_amount": [4, 9]}


def test_the_summary_line_names_the_top_reasons_their_samples_and_the_rest():
    got = metrics(2427, {"missing_amount": 3, "non_numeric_amount": 3, "duplicate_order_line": 1, "missing_timestamp": 1,
                         "non_numeric_cost": 2})
    samples = {"missing_amount": [sample(4, None, "a.csv")], "non_numeric_amount": [sample(7, "x" * 50)]}
    assert report.rejection_summary(got, samples) == (
        "10 of 2,427 rows rejected (0.412%): missing_amount 3 (source_row 4 of a.csv: customer='C1', amount=null), "
        f"non_numeric_amount 3 (source_row 7: customer='C1', amount='{'x' * 37}...'), non_numeric_cost 2, "
        "2 more reason(s) with 2 rows")
    assert report.hints(got) == "data.columns.amount; data.decimal and the amount format; data.decimal and data.columns.cost"
    assert report.share_text(1 / 2427) == "0.0412%"


def test_the_outcome_refuses_unusable_sources_in_one_line():
    def refused(m: dict, limit: float = 0.05) -> str:
        with pytest.raises(DataError) as err:
            report.check_outcome(m, {}, "tx.csv", limit, "eur")
        assert "\n" not in str(err.value)
        return str(err.value)

    assert refused(metrics(0)).startswith("tx.csv: file is empty (a header but no rows)")
    assert refused(metrics(10, {"missing_amount": 1})) == (
        "tx.csv: 1 of 10 rows rejected (10%): missing_amount 1; above data.max_rejected_share 5%: "
        "check data.columns.amount, or raise data.max_rejected_share to accept the loss")
    assert refused(metrics(2, {"missing_amount": 2}), limit=1.0).startswith("tx.csv: no row accepted; 2 of 2 rows rejected")
    returns = metrics(3, summary={**SUMMARY, "n_returns": 3})
    assert refused(returns) == (
        "tx.csv: all 3 accepted rows have a negative amount (returns), so no customer has a purchase to score; "
        "check data.columns.amount ('eur') and the sign of the export's amounts")


def test_the_outcome_warns_within_the_limit_and_is_silent_without_rejected_rows():
    assert report.check_outcome(metrics(10), {}, "tx.csv", 0.05, "eur") is None
    assert report.check_outcome(metrics(100, {"missing_amount": 1}), {}, "tx.csv", 0.05, "eur") == (
        "tx.csv: 1 of 100 rows rejected (1%): missing_amount 1; within data.max_rejected_share 5%")
