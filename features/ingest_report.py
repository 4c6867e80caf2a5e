"""What ingest reports about a classified source: the row accounting, the rejected rows in one
line, and the decision to refuse it (pure: counts and sample rows in, text and DataError out).

The line names the reasons with the most rows, their counts and the raw values of their first
rows, and the params to check for them, so a user can fix a source without opening the
quarantine file::

    data/raw/tx.csv: 8 of 12 rows rejected (66.7%): duplicate_order_line 1 (source_row 2: ...), ...
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from features.errors import DataError
from features.ingest import REASON, SOURCE_FILE, SOURCE_ROW, counts_by_reason

SAMPLES_PER_REASON = 2
TOP_REASONS = 3
SAMPLE_VALUE_CHARS = 40
# What to check for each reason, named in the rejected-share line.
REASON_HINTS: dict[str, str] = {
    "missing_customer_id": "data.columns.customer_id",
    "missing_timestamp": "data.columns.timestamp",
    "unparseable_timestamp": "data.timestamp_format (a list of formats is tried in order)",
    "implausible_timestamp": "data.valid_from/valid_to (rows dated after the run date are implausible)",
    "missing_amount": "data.columns.amount",
    "non_numeric_amount": "data.decimal and the amount format",
    "non_numeric_quantity": "data.decimal and data.columns.quantity",
    "non_numeric_cost": "data.decimal and data.columns.cost",
    "duplicate_order_line": "data.columns.order_id",
}


def ingest_metrics(rows_in: int, reason_rows: Iterable[tuple[str | None, int]], accepted: Mapping[str, Any]) -> dict:
    """The row counts (RuntimeError unless rows_in = accepted + rejected) and the accepted rows'
    summary (features.ingest.accepted_summary: timestamps as datetimes, dates as ISO days)."""
    n_accepted, by_reason = counts_by_reason(reason_rows)
    rejected = sum(by_reason.values())
    if n_accepted + rejected != rows_in:
        raise RuntimeError(f"row accounting broken: {rows_in} rows read, {n_accepted} accepted + {rejected} rejected")

    def day(value) -> str | None:
        return None if value is None else value.date().isoformat()

    return {
        "rows_in": rows_in,
        "rows_accepted": n_accepted,
        "rows_rejected": rejected,
        "rejected_by_reason": by_reason,
        "rejected_share": rejected / rows_in if rows_in else 0.0,
        "n_customers": int(accepted["n_customers"]),
        "n_returns": int(accepted["n_returns"] or 0),
        "n_zero_amount": int(accepted["n_zero_amount"] or 0),
        "date_min": day(accepted["date_min"]),
        "date_max": day(accepted["date_max"]),
    }


def samples_by_reason(rows: Iterable[Mapping[str, Any]], names: Iterable[str], several_files: bool) -> dict[str, list[dict]]:
    """Rows of features.ingest.rejected_samples as {reason: [{source_row, [source_file], values}]},
    values being the raw text of the ``names`` columns; the file only when there are several."""
    names = list(names)
    out: dict[str, list[dict]] = {}
    for row in rows:
        entry = {"source_row": row[SOURCE_ROW], "values": {name: row[name] for name in names}}
        if SOURCE_FILE in row and several_files:
            entry["source_file"] = row[SOURCE_FILE]
        out.setdefault(row[REASON], []).append(entry)
    return out


def sample_source_rows(samples: Mapping[str, list[dict]]) -> dict[str, list[int]]:
    """{reason: [source_row, ...]} of the sample rows, for metrics/ingest.json."""
    return {reason: [x["source_row"] for x in rows] for reason, rows in samples.items()}


def share_text(share: float) -> str:
    """A share as a percentage with 3 significant digits (0.0412% for one row in 2,427)."""
    return f"{100 * share:.3g}%"


def _quoted(value: str | None) -> str:
    if value is None:
        return "null"
    text = value if len(value) <= SAMPLE_VALUE_CHARS else value[: SAMPLE_VALUE_CHARS - 3] + "..."
    return repr(text)


def _top_reasons(metrics: Mapping[str, Any]) -> list[tuple[int, str]]:
    """(rows, reason) of the reasons with rejected rows, most rows first (ties by name)."""
    return sorted(((n, r) for r, n in metrics["rejected_by_reason"].items() if n), key=lambda x: (-x[0], x[1]))


def rejection_summary(metrics: Mapping[str, Any], samples: Mapping[str, list[dict]]) -> str:
    """'<n> of <rows> rows rejected (<share>): <reason> <count> (source_row r: col='v', ...; ...), ...'
    for the TOP_REASONS reasons with the most rows."""
    by_reason = _top_reasons(metrics)
    parts = []
    for n, reason in by_reason[:TOP_REASONS]:
        shown = []
        for sample in samples.get(reason, []):
            where = f"source_row {sample['source_row']}"
            if "source_file" in sample:
                where += f" of {sample['source_file']}"
            shown.append(where + ": " + ", ".join(f"{k}={_quoted(v)}" for k, v in sample["values"].items()))
        parts.append(f"{reason} {n:,} ({'; '.join(shown)})" if shown else f"{reason} {n:,}")
    if len(by_reason) > TOP_REASONS:
        parts.append(f"{len(by_reason) - TOP_REASONS} more reason(s) with {sum(n for n, _ in by_reason[TOP_REASONS:]):,} rows")
    return (
        f"{metrics['rows_rejected']:,} of {metrics['rows_in']:,} rows rejected ({share_text(metrics['rejected_share'])}): "
        + ", ".join(parts)
    )


def hints(metrics: Mapping[str, Any]) -> str:
    """The params to check for the top reasons, e.g. 'data.decimal and the amount format; ...'."""
    by_reason = metrics["rejected_by_reason"]
    top = sorted((r for r, n in by_reason.items() if n), key=lambda r: -by_reason[r])
    return "; ".join(dict.fromkeys(REASON_HINTS[r] for r in top[:TOP_REASONS] if r in REASON_HINTS))


def check_outcome(
    metrics: Mapping[str, Any], samples: Mapping[str, list[dict]], label: str, max_rejected_share: float, amount_column: str
) -> str | None:
    """Refuse (DataError, one line) a source without rows, a rejected share above
    ``max_rejected_share`` (data.max_rejected_share), no accepted row, or only returns. Otherwise
    return the warning line for rejected rows within the limit (None when there are none)."""
    if metrics["rows_in"] == 0:
        raise DataError(f"{label}: file is empty (a header but no rows); export the transactions again or fix data.path")
    share, limit = metrics["rejected_share"], max_rejected_share
    if share > limit:
        raise DataError(
            f"{label}: {rejection_summary(metrics, samples)}; above data.max_rejected_share {share_text(limit)}: "
            f"check {hints(metrics)}, or raise data.max_rejected_share to accept the loss"
        )
    if metrics["rows_accepted"] == 0:
        raise DataError(f"{label}: no row accepted; {rejection_summary(metrics, samples)}; check {hints(metrics)}")
    if metrics["n_returns"] == metrics["rows_accepted"]:
        raise DataError(
            f"{label}: all {metrics['rows_accepted']:,} accepted rows have a negative amount (returns), so no customer "
            f"has a purchase to score; check data.columns.amount ('{amount_column}') and the sign of the export's amounts"
        )
    if not metrics["rows_rejected"]:
        return None
    return f"{label}: {rejection_summary(metrics, samples)}; within data.max_rejected_share {share_text(limit)}"
