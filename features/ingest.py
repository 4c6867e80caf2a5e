"""Row-level validation of raw transactions: every input row is accepted or rejected with one reason.

The rules are ibis expressions, so the same classification runs on DuckDB (default) and on
any other ibis backend. The input table holds the raw source columns (strings for text files,
typed columns for Parquet) plus ``source_row`` (0-based row index in the input) and, for file
sources, ``source_file``.

Rules are checked in the order of ``REASONS``; a row gets the first one it fails:

1. ``missing_customer_id``    customer id null, empty or only whitespace
2. ``missing_timestamp``      timestamp null, empty or only whitespace
3. ``unparseable_timestamp``  not parseable with ``timestamp_format`` (strptime) or, when that is
                              None, by a lenient cast
4. ``implausible_timestamp``  outside [valid_from, valid_to)
5. ``missing_amount``         amount null, empty or only whitespace
6. ``non_numeric_amount``     amount not a finite number ("abc", "inf", "nan", "1,5")
7. ``non_numeric_quantity``   quantity mapped, present and not a finite number
8. ``non_numeric_cost``       cost mapped, present and not a finite number
9. ``duplicate_order_line``   order id mapped and present, and the row's raw values are identical
                              on every mapped column to an earlier row (smaller source_row);
                              the first such row stays accepted

Negative amounts (returns) and zero amounts are accepted. An empty quantity, cost or order id
is accepted as missing (NaN / null). Text is trimmed of surrounding whitespace before it is
checked; rejected rows keep their raw text.

``classify`` runs everything as one expression (small inputs, tests). On large inputs run
``parse``, materialise it, then ``rejections`` (small) and ``attach_reasons``: ibis inlines a
parsed expression into every rule that uses it, so materialising parses each value once.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import ibis
import ibis.expr.types as ir
import numpy as np
import pandera.pandas as pa
import pyarrow as pyarrow_lib

REASONS: tuple[str, ...] = (
    "missing_customer_id",
    "missing_timestamp",
    "unparseable_timestamp",
    "implausible_timestamp",
    "missing_amount",
    "non_numeric_amount",
    "non_numeric_quantity",
    "non_numeric_cost",
    "duplicate_order_line",
)

REQUIRED_ROLES: tuple[str, ...] = ("customer_id", "timestamp", "amount")
OPTIONAL_ROLES: tuple[str, ...] = ("quantity", "order_id", "cost")

SOURCE_ROW = "source_row"
SOURCE_FILE = "source_file"
REASON = "reason"
RESERVED_COLUMNS: tuple[str, ...] = (SOURCE_ROW, SOURCE_FILE, REASON)

# Parsed values live beside the raw columns under this prefix until the output is selected.
_PARSED = "__cvp_"


@dataclass(frozen=True)
class IngestRules:
    """What the classification needs: the role -> source column mapping and the valid range.

    ``columns`` must map customer_id, timestamp and amount; quantity, order_id and cost are
    optional. ``valid_from`` is inclusive, ``valid_to`` exclusive (calendar dates, midnight).
    """

    columns: Mapping[str, str]
    timestamp_format: str | None = None
    valid_from: dt.date = dt.date(1970, 1, 1)
    valid_to: dt.date = dt.date(2100, 1, 1)
    mapped_roles: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        missing = [role for role in REQUIRED_ROLES if not self.columns.get(role)]
        if missing:
            raise ValueError(f"required column role(s) not mapped: {', '.join(missing)}")
        if self.valid_from >= self.valid_to:
            raise ValueError("valid_from must be before valid_to")
        roles = tuple(r for r in (*REQUIRED_ROLES, *OPTIONAL_ROLES) if self.columns.get(r))
        object.__setattr__(self, "mapped_roles", roles)


def missing_mapped_columns(available: Iterable[str], columns: Mapping[str, str | None]) -> list[tuple[str, str]]:
    """(role, column) pairs of the mapping whose column is not among ``available``."""
    present = set(available)
    return [(role, col) for role, col in columns.items() if col and col not in present]


# --- parsing helpers -------------------------------------------------------------------------

@ibis.udf.scalar.builtin(name="try_strptime")
def _try_strptime(value: str, fmt: str) -> dt.datetime:
    """DuckDB's TRY_STRPTIME: NULL instead of an error when the text does not match."""


def _as_text(col: ir.Value) -> ir.StringValue:
    return col if col.type().is_string() else col.cast("string")


def trimmed(col: ir.Value) -> ir.StringValue:
    """Text without leading/trailing whitespace. Only values that start or end with a character
    <= ' ' go through the (slower) full strip, so clean columns cost one cheap check."""
    text = _as_text(col)
    edge = (text.ascii_str() <= 32) | (text.right(1).ascii_str() <= 32)
    return ibis.ifelse(edge, text.strip(), text)


def is_blank(value: ir.Value) -> ir.BooleanValue:
    """Null, or (text) empty. Apply to trimmed text so whitespace-only values count as blank."""
    if not value.type().is_string():
        return value.isnull()
    return value.isnull() | (value == "")


def parse_number(value: ir.Value) -> ir.FloatingValue:
    """Float64 of a numeric column or of trimmed text (null when the text is not a number)."""
    if value.type().is_numeric():
        return value.cast("float64")
    return _as_text(value).try_cast("float64")


def is_not_finite(value: ir.FloatingValue) -> ir.BooleanValue:
    """True where a parsed number is null (unparseable), NaN or +-inf."""
    return value.isnull() | value.isnan().fill_null(True) | value.isinf().fill_null(True)


def parse_timestamp(value: ir.Value, timestamp_format: str | None) -> ir.TimestampValue:
    """Naive timestamp of a timestamp/date column or of trimmed text; null when it does not parse.

    Typed columns (Parquet) are cast (time-zone aware values become naive in the connection's
    time zone, UTC for the pipeline); text is parsed with ``timestamp_format`` (strptime codes)
    or, when it is None, cast leniently (ISO dates and date-times parse, anything else is null).
    """
    dtype = value.type()
    if dtype.is_timestamp() or dtype.is_date():
        return value.cast("timestamp")
    text = _as_text(value)
    if timestamp_format is None:
        return text.try_cast("timestamp")
    return _try_strptime(text, timestamp_format).cast("timestamp")


def _parsed(role: str) -> str:
    return f"{_PARSED}{role}"


def _blank(role: str) -> str:
    return f"{_PARSED}blank_{role}"


# --- classification ----------------------------------------------------------------------------

def parse(raw: ir.Table, rules: IngestRules) -> ir.Table:
    """The raw table plus, per mapped role, its parsed value ``__cvp_<role>`` and a blank flag
    ``__cvp_blank_<role>`` (text is trimmed first). Unmapped optional roles get a null value."""
    columns: dict[str, ir.Value] = {}
    for role in rules.mapped_roles:
        col = raw[rules.columns[role]]
        value = trimmed(col) if col.type().is_string() else col
        columns[_blank(role)] = is_blank(value)
        if role == "customer_id":
            columns[_parsed(role)] = _as_text(value)
        elif role == "timestamp":
            columns[_parsed(role)] = parse_timestamp(value, rules.timestamp_format)
        elif role == "order_id":
            text = _as_text(value)
            columns[_parsed(role)] = ibis.ifelse(text == "", ibis.null("string"), text)
        else:
            columns[_parsed(role)] = parse_number(value)
    for role, dtype in (("quantity", "float64"), ("cost", "float64"), ("order_id", "string")):
        if role not in rules.mapped_roles:
            columns[_parsed(role)] = ibis.null(dtype)
    return raw.mutate(**columns)


def add_reasons(parsed: ir.Table, rules: IngestRules) -> ir.Table:
    """``reason`` for every row of a ``parse`` result: the first failing rule, null = accepted."""
    ts = parsed[_parsed("timestamp")]
    valid_from = ibis.literal(dt.datetime.combine(rules.valid_from, dt.time()))
    valid_to = ibis.literal(dt.datetime.combine(rules.valid_to, dt.time()))
    cases: list[tuple[ir.BooleanValue, str]] = [
        (parsed[_blank("customer_id")], "missing_customer_id"),
        (parsed[_blank("timestamp")], "missing_timestamp"),
        (ts.isnull(), "unparseable_timestamp"),
        ((ts < valid_from) | (ts >= valid_to), "implausible_timestamp"),
        (parsed[_blank("amount")], "missing_amount"),
        (is_not_finite(parsed[_parsed("amount")]), "non_numeric_amount"),
    ]
    for role in ("quantity", "cost"):
        if role in rules.mapped_roles:
            bad = ~parsed[_blank(role)] & is_not_finite(parsed[_parsed(role)])
            cases.append((bad, f"non_numeric_{role}"))
    table = parsed
    if "order_id" in rules.mapped_roles:
        table = _with_first_identical_row(parsed, rules)
        first_row = table[_FIRST_ROW]
        cases.append((first_row.notnull() & (table[SOURCE_ROW] > first_row), "duplicate_order_line"))
    out = table.mutate(**{REASON: ibis.cases(*cases, else_=ibis.null("string"))})
    return out.drop(_FIRST_ROW) if _FIRST_ROW in out.columns else out


_FIRST_ROW = f"{_PARSED}first_row"


def _with_first_identical_row(parsed: ir.Table, rules: IngestRules) -> ir.Table:
    """Add ``__cvp_first_row``: the smallest source_row among rows with an order id whose raw
    values are identical (nulls equal) on every mapped column, when there are two or more such
    rows; null otherwise. A grouped count and a join with the (small) set of repeated lines,
    which parallelises better than a window over all rows."""
    names = list(dict.fromkeys(rules.columns[role] for role in rules.mapped_roles))
    keys = [f"{_PARSED}key{i}" for i in range(len(names))]
    with_order = parsed.filter(parsed[_parsed("order_id")].notnull())
    repeated = with_order.group_by(**{key: with_order[name] for key, name in zip(keys, names)}).aggregate(
        **{_FIRST_ROW: with_order[SOURCE_ROW].min(), f"{_PARSED}n": with_order.count()}
    )
    repeated = repeated.filter(repeated[f"{_PARSED}n"] > 1)
    predicates = [parsed[name].identical_to(repeated[key]) for key, name in zip(keys, names)]
    joined = parsed.left_join(repeated, predicates)
    return joined.select(*[joined[c] for c in parsed.columns], joined[_FIRST_ROW])


def classify(raw: ir.Table, rules: IngestRules) -> ir.Table:
    """``parse`` then ``add_reasons`` in one expression: raw columns, parsed columns, ``reason``."""
    return add_reasons(parse(raw, rules), rules)


def rejections(parsed: ir.Table, rules: IngestRules) -> ir.Table:
    """(source_row, reason) of the rejected rows only: small, worth materialising on its own."""
    with_reason = add_reasons(parsed, rules)
    return with_reason.filter(with_reason[REASON].notnull()).select(SOURCE_ROW, REASON)


def attach_reasons(parsed: ir.Table, rejected: ir.Table) -> ir.Table:
    """The same table as ``classify`` from a parsed table and its ``rejections``."""
    key = f"{_PARSED}row"
    renamed = rejected.rename(**{key: SOURCE_ROW})
    return parsed.left_join(renamed, parsed[SOURCE_ROW] == renamed[key]).drop(key)


def accepted_transactions(classified: ir.Table) -> ir.Table:
    """Accepted rows in the transactions contract, sorted by customer_id, timestamp, source_row."""
    ok = classified.filter(classified[REASON].isnull())
    out = ok.select(
        customer_id=ok[_parsed("customer_id")],
        timestamp=ok[_parsed("timestamp")],
        amount=ok[_parsed("amount")],
        quantity=ok[_parsed("quantity")].cast("float64"),
        order_id=ok[_parsed("order_id")].cast("string"),
        cost=ok[_parsed("cost")].cast("float64"),
        source_row=ok[SOURCE_ROW].cast("int64"),
    )
    return out.order_by(["customer_id", "timestamp", SOURCE_ROW])


def rejected_rows(classified: ir.Table, raw_columns: Iterable[str]) -> ir.Table:
    """Rejected rows with every raw source column as text, source_row, source_file (if any), reason.

    Sorted by source_row.
    """
    bad = classified.filter(classified[REASON].notnull())
    selection = {name: _as_text(bad[name]) for name in raw_columns}
    selection[SOURCE_ROW] = bad[SOURCE_ROW].cast("int64")
    if SOURCE_FILE in classified.columns:
        selection[SOURCE_FILE] = bad[SOURCE_FILE].cast("string")
    selection[REASON] = bad[REASON]
    return bad.select(**selection).order_by(SOURCE_ROW)


def reason_counts(classified: ir.Table) -> ir.Table:
    """Rows per reason (null reason = accepted)."""
    return classified.group_by(REASON).aggregate(n=classified.count())


def accepted_summary(accepted: ir.Table) -> ir.Table:
    """One row: n_customers, n_returns (amount < 0), n_zero_amount, date_min, date_max."""
    return accepted.aggregate(
        n_customers=accepted.customer_id.nunique(),
        n_returns=(accepted.amount < 0).sum(),
        n_zero_amount=(accepted.amount == 0).sum(),
        date_min=accepted.timestamp.min(),
        date_max=accepted.timestamp.max(),
    )


def counts_by_reason(pairs: Iterable[tuple[str | None, int]]) -> tuple[int, dict[str, int]]:
    """(accepted rows, {reason: rejected rows} with every known reason, zeros included)."""
    by_reason = dict.fromkeys(REASONS, 0)
    accepted = 0
    for reason, n in pairs:
        if reason is None:
            accepted += int(n)
        else:
            by_reason[reason] = by_reason.get(reason, 0) + int(n)
    return accepted, by_reason


# --- contracts -----------------------------------------------------------------------------------

def _finite_or_missing(series):
    """True for finite values and NaN (missing), False for +-inf."""
    return ~np.isinf(series)


TRANSACTIONS_SCHEMA = pa.DataFrameSchema(
    {
        "customer_id": pa.Column(
            str,
            [
                pa.Check(lambda s: s.str.len() > 0, error="customer_id must not be empty"),
                pa.Check(lambda s: s == s.str.strip(), error="customer_id must be trimmed"),
            ],
        ),
        "timestamp": pa.Column(pa.DateTime),
        "amount": pa.Column("float64", pa.Check(np.isfinite, error="amount must be finite")),
        "quantity": pa.Column("float64", pa.Check(_finite_or_missing, error="quantity must be finite or NaN"), nullable=True),
        "order_id": pa.Column(str, nullable=True),
        "cost": pa.Column("float64", pa.Check(_finite_or_missing, error="cost must be finite or NaN"), nullable=True),
        SOURCE_ROW: pa.Column("int64", pa.Check.ge(0), unique=True),
    },
    strict=True,
    ordered=True,
    name="transactions",
    description="Accepted transactions (data/interim/transactions.parquet).",
)


def rejected_schema(raw_columns: Iterable[str], with_source_file: bool) -> pa.DataFrameSchema:
    """Contract of the quarantine file: raw columns as text, source_row, [source_file], reason."""
    columns: dict[str, pa.Column] = {name: pa.Column(str, nullable=True) for name in raw_columns}
    columns[SOURCE_ROW] = pa.Column("int64", pa.Check.ge(0), unique=True)
    if with_source_file:
        columns[SOURCE_FILE] = pa.Column(str)
    columns[REASON] = pa.Column(str, pa.Check.isin(REASONS))
    return pa.DataFrameSchema(columns, strict=True, ordered=True, name="rejected")


# --- Arrow helpers (pure: tables in, tables out) ---------------------------------------------------

def fixed_size_tables(tables: Iterable[pyarrow_lib.Table | pyarrow_lib.RecordBatch], rows: int) -> Iterator[pyarrow_lib.Table]:
    """Re-slice a stream of Arrow tables/batches into tables of exactly ``rows`` rows (last may be
    shorter), so output layout depends only on the data, never on upstream batch sizes."""
    if rows <= 0:
        raise ValueError("rows must be positive")
    pending: list[pyarrow_lib.Table] = []
    n_pending = 0
    for item in tables:
        table = pyarrow_lib.Table.from_batches([item]) if isinstance(item, pyarrow_lib.RecordBatch) else item
        if table.num_rows == 0:
            continue
        pending.append(table)
        n_pending += table.num_rows
        if n_pending >= rows:
            merged = pyarrow_lib.concat_tables(pending)
            start = 0
            while merged.num_rows - start >= rows:
                yield merged.slice(start, rows).combine_chunks()
                start += rows
            rest = merged.slice(start)
            pending, n_pending = ([rest], rest.num_rows) if rest.num_rows else ([], 0)
    if n_pending:
        yield pyarrow_lib.concat_tables(pending).combine_chunks()
