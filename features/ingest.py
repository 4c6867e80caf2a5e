"""Row-level validation of raw transactions: every input row is accepted or rejected with one reason.

The rules are ibis expressions, so the same classification runs on DuckDB (default) and on
any other ibis backend. The input table holds the raw source columns (strings for text files,
typed columns for Parquet) plus ``source_row`` (0-based row index in the input) and, for file
sources, ``source_file``.

Rules are checked in the order of ``REASONS``; a row gets the first one it fails:

1. ``missing_customer_id``    customer id null, empty, only whitespace or a null word
2. ``missing_timestamp``      timestamp null, empty, only whitespace or a null word
3. ``unparseable_timestamp``  not parseable with any of ``timestamp_format`` (strptime formats,
                              tried in order) or, when that is None, as ISO 8601
4. ``implausible_timestamp``  outside [valid_from, valid_to) after conversion to UTC
5. ``missing_amount``         amount null, empty, only whitespace or a null word
6. ``non_numeric_amount``     amount not a finite number ("abc", "inf", "nan", "1,5" with decimal ".")
7. ``non_numeric_quantity``   quantity mapped, present and not a finite number
8. ``non_numeric_cost``       cost mapped, present and not a finite number
9. ``duplicate_order_line``   order id mapped and present, and the row's raw values are identical
                              on every mapped column to an earlier row (smaller source_row);
                              the first such row stays accepted

Negative amounts (returns) and zero amounts are accepted. An empty quantity, cost or order id
is accepted as missing (NaN / null). Text is trimmed of surrounding whitespace before it is
checked; rejected rows keep their raw text. The null words ``NULL``, ``N/A``, ``#N/A``, ``NA``
and ``None`` (any case) count as empty.

Numbers (``parse_number``): a plain cast first; only text that fails it goes through the
(regexp) money parser: currency symbols and codes (``$12.00``, ``12 EUR``), thousands separators
(``1,234.50``, ``1'234.50``, ``1 234.50``), parentheses and a trailing minus for negatives
(``(12.00)``, ``12.00-``). ``decimal=","`` reads ``12,5`` and ``1.234,50``.

Timestamps (``parse_timestamp``) come out as naive UTC: values with an offset (``-05:00``, ``Z``)
are converted; naive values are wall-clock time in ``timezone`` (None = UTC) and converted;
date-only values (no time of day) are calendar days and are not shifted.

``classify`` runs everything as one expression (small inputs, tests). On large inputs run
``parse``, materialise it, then ``rejections`` (small) and ``attach_reasons``: ibis inlines a
parsed expression into every rule that uses it, so materialising parses each value once.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import ibis
import ibis.expr.datatypes as dtypes
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
    Built from ``params.data`` by pipelines.domain.ingest_rules (no defaults here).
    """

    columns: Mapping[str, str]
    timestamp_format: str | tuple[str, ...] | None  # None = ISO 8601
    valid_from: dt.date
    valid_to: dt.date
    timezone: str | None  # None = UTC
    decimal: str
    mapped_roles: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        missing = [role for role in REQUIRED_ROLES if not self.columns.get(role)]
        if missing:
            raise ValueError(f"required column role(s) not mapped: {', '.join(missing)}")
        if self.valid_from >= self.valid_to:
            raise ValueError("valid_from must be before valid_to")
        if self.decimal not in (".", ","):
            raise ValueError("decimal must be '.' or ','")
        if isinstance(self.timestamp_format, list):
            object.__setattr__(self, "timestamp_format", tuple(self.timestamp_format))
        if self.timestamp_format is not None and not self.formats:
            raise ValueError("timestamp_format must be a format or a non-empty list of formats")
        roles = tuple(r for r in (*REQUIRED_ROLES, *OPTIONAL_ROLES) if self.columns.get(r))
        object.__setattr__(self, "mapped_roles", roles)

    @property
    def formats(self) -> tuple[str, ...]:
        """The timestamp formats in the order they are tried (empty = ISO 8601 inference)."""
        if self.timestamp_format is None:
            return ()
        if isinstance(self.timestamp_format, str):
            return (self.timestamp_format,)
        return tuple(self.timestamp_format)


def missing_mapped_columns(available: Iterable[str], columns: Mapping[str, str | None]) -> list[tuple[str, str]]:
    """(role, column) pairs of the mapping whose column is not among ``available``."""
    present = set(available)
    return [(role, col) for role, col in columns.items() if col and col not in present]


# --- parsing helpers -------------------------------------------------------------------------

# Words that mean "no value" in exports (compared case-insensitively, after trimming).
NULL_WORDS: tuple[str, ...] = ("null", "n/a", "#n/a", "na", "none")
# ``timestamp_format`` list entry that stands for the ISO 8601 parse used when the format is None.
ISO_FORMAT = "iso"

_CURRENCY_SYMBOLS = "$€£¥₹₽₩₺₪₫₴₦₱¢"
_CURRENCY_CODES = (
    "USD", "EUR", "GBP", "JPY", "CNY", "RMB", "CHF", "CAD", "AUD", "NZD", "SEK", "NOK", "DKK", "ISK", "PLN",
    "CZK", "HUF", "RON", "BGN", "HRK", "RUB", "UAH", "TRY", "ILS", "INR", "PKR", "BRL", "MXN", "ARS", "CLP",
    "COP", "PEN", "ZAR", "NGN", "KES", "EGP", "SAR", "AED", "QAR", "KRW", "SGD", "HKD", "TWD", "THB", "MYR",
    "IDR", "PHP", "VND",
)
# A currency: a symbol with an optional letter prefix (US$, R$, HK$) or an ISO 4217 code.
_CURRENCY = f"(?:[A-Z]{{0,3}}[{_CURRENCY_SYMBOLS}]|(?:{'|'.join(_CURRENCY_CODES)})\\b)"
_LEADING_CURRENCY = rf"^([-+]?)\s*{_CURRENCY}\s*"
_TRAILING_CURRENCY = rf"\s*{_CURRENCY}$"
_TRAILING_MINUS = r"^([0-9][0-9.,' \x{00A0}\x{202F}]*)\s*-$"
# Thousands groups: 1-3 digits, then groups of exactly 3 after one kind of separator.
_GROUP_SEPARATORS = {".": (",", "'", " ", "\u00a0", "\u202f"), ",": (".", "'", " ", "\u00a0", "\u202f")}


def _grouped_number(decimal: str) -> str:
    """A whole number with digits ungrouped or in thousands groups of one separator kind."""
    groups = "|".join(rf"[0-9]{{1,3}}(?:{_regex_char(sep)}[0-9]{{3}})+" for sep in _GROUP_SEPARATORS[decimal])
    return rf"^[-+]?(?:[0-9]+|{groups})?(?:{_regex_char(decimal)}[0-9]*)?$"


def _regex_char(char: str) -> str:
    return {".": r"\.", " ": " ", "\u00a0": r"\x{00A0}", "\u202f": r"\x{202F}"}.get(char, char)


@ibis.udf.scalar.builtin(name="try_strptime")
def _try_strptime(value: str, fmt: str) -> dt.datetime:
    """DuckDB's TRY_STRPTIME: NULL instead of an error when the text does not match."""


@ibis.udf.scalar.builtin(name="try_strptime")
def _try_strptime_offset(value: str, fmt: str) -> dtypes.Timestamp(timezone="UTC"):
    """TRY_STRPTIME with a %z/%Z format: an instant (DuckDB returns TIMESTAMPTZ)."""


@ibis.udf.scalar.builtin(name="timezone")
def _wall_clock(zone: str, value: dtypes.Timestamp(timezone="UTC")) -> dt.datetime:
    """DuckDB's timezone(zone, instant): the naive wall-clock time of an instant in ``zone``."""


@ibis.udf.scalar.builtin(name="timezone")
def _instant(zone: str, value: dt.datetime) -> dtypes.Timestamp(timezone="UTC"):
    """DuckDB's timezone(zone, naive): the instant of a wall-clock time in ``zone``."""


def _as_text(col: ir.Value) -> ir.StringValue:
    return col if col.type().is_string() else col.cast("string")


def _has_edge_space(text: ir.StringValue) -> ir.BooleanValue:
    return (text.ascii_str() <= 32) | (text.right(1).ascii_str() <= 32)


def trimmed(col: ir.Value) -> ir.StringValue:
    """Text without leading/trailing whitespace. Only values that start or end with a character
    <= ' ' go through the (slower) full strip, so clean columns cost one cheap check."""
    text = _as_text(col)
    return ibis.ifelse(_has_edge_space(text), text.strip(), text)


_NULL_WORD_TEXT = f"^\\s*(?i:{'|'.join(re.escape(w) for w in NULL_WORDS)})\\s*$"


def is_blank(value: ir.Value) -> ir.BooleanValue:
    """Null, or (text) empty. Apply to trimmed text so whitespace-only values count as blank."""
    if not value.type().is_string():
        return value.isnull()
    return value.isnull() | (value == "")


def is_null_word(col: ir.Value) -> ir.BooleanValue:
    """True where raw text is a null word (``NULL``, ``N/A``, ``#N/A``, ``NA``, ``None``, any case,
    surrounding whitespace allowed). The rules test it behind cheaper checks: DuckDB evaluates the
    rest of an AND/OR in a CASE condition only for the rows still undecided."""
    if not col.type().is_string():
        return ibis.literal(False)
    return (col.length() <= 12) & col.re_search(_NULL_WORD_TEXT)


def parse_number(value: ir.Value, decimal: str = ".", money: bool = False) -> ir.FloatingValue:
    """Float64 of a numeric column or of trimmed text (null when the text is not a number).

    Text is cast as it is first (with ``decimal=","``: text without a "." with its comma read as
    the decimal point); only where that fails is it normalised with regexps: thousands separators
    in groups of three, a trailing minus, and with ``money`` currency symbols/codes and
    parentheses for negatives. Clean columns cost one cast; COALESCE runs the rest only on the
    rows that need it. Each step uses the text once, so the SQL stays small.
    """
    if value.type().is_numeric():
        return value.cast("float64")
    text = _as_text(value)
    return ibis.coalesce(_plain_number(text, decimal), _formatted_number(text, decimal, money))


def _plain_number(text: ir.StringValue, decimal: str) -> ir.FloatingValue:
    if decimal == ".":
        return text.try_cast("float64")
    return text.re_extract(r"^([^.]*)$", 1).replace(",", ".").try_cast("float64")


def _formatted_number(text: ir.StringValue, decimal: str, money: bool) -> ir.FloatingValue:
    """The slow path of ``parse_number``: a number written with currency marks or separators."""
    if money:
        text = _strip_currency(_strip_currency(text).re_replace(r"^\((.*)\)$", r"-\1"))
    text = text.re_replace(_TRAILING_MINUS, r"-\1")
    separators = "[" + "".join(_regex_char(c) for c in _GROUP_SEPARATORS[decimal]) + "]"
    grouped = text.re_extract(_grouped_number(decimal), 0).re_replace(separators, "")
    if decimal == ".":
        return grouped.try_cast("float64")
    return _plain_number(grouped, decimal)


def _strip_currency(text: ir.StringValue) -> ir.StringValue:
    """Text without a leading (after an optional sign) or trailing currency symbol or code."""
    return text.re_replace(_LEADING_CURRENCY, r"\1").re_replace(_TRAILING_CURRENCY, "")


def is_not_finite(value: ir.FloatingValue) -> ir.BooleanValue:
    """True where a parsed number is null (unparseable), NaN or +-inf."""
    return value.isnull() | value.isnan().fill_null(True) | value.isinf().fill_null(True)


_ZONE_SUFFIX = r"[0-9]:[0-9]{2}(?::[0-9]{2}(?:[.,][0-9]+)?)?\s*(?:[A-Za-z][A-Za-z_/]*|[+-][0-9]{2}(?::?[0-9]{2})?)$"
_TIME_DIRECTIVE = re.compile(r"%-?[HIklMSfcXTsp]")


def format_has_offset(fmt: str) -> bool:
    """True for a strptime format that reads a UTC offset or zone name (%z, %Z)."""
    return "%z" in fmt or "%Z" in fmt


def format_has_time(fmt: str) -> bool:
    """True for a strptime format that reads a time of day (a date-only format is not shifted)."""
    return bool(_TIME_DIRECTIVE.search(fmt)) or fmt.lower() == ISO_FORMAT


def _local_to_utc(naive: ir.TimestampValue, timezone: str | None) -> ir.TimestampValue:
    """A naive wall-clock time in ``timezone`` as naive UTC (unchanged when the zone is None/UTC)."""
    if timezone is None or timezone.upper() == "UTC":
        return naive
    return _wall_clock("UTC", _instant(timezone, naive))


def parse_timestamp(
    value: ir.Value, timestamp_format: str | tuple[str, ...] | None, timezone: str | None = None
) -> ir.TimestampValue:
    """Naive UTC timestamp of a timestamp/date column or of trimmed text; null when it does not parse.

    Text is parsed with each strptime format of ``timestamp_format`` in order (the first that
    matches wins; ``"iso"`` is the ISO 8601 parse), or as ISO 8601 when it is None. Values with a
    UTC offset or zone (``2024-03-01T10:00:00-05:00``, ``...Z``, a ``%z`` format) are converted to
    UTC; naive values are taken as wall-clock time in ``timezone`` (None = UTC) and converted;
    date-only values are calendar days and are not shifted. Typed columns: zone-aware timestamps
    are converted, naive ones are read in ``timezone``, dates are kept.
    """
    dtype = value.type()
    if dtype.is_date():
        return value.cast("timestamp")
    if dtype.is_timestamp():
        if dtype.timezone is not None:
            return _wall_clock("UTC", value)
        return _local_to_utc(value, timezone)
    text = _as_text(value)
    formats = (ISO_FORMAT,) if timestamp_format is None else (
        (timestamp_format,) if isinstance(timestamp_format, str) else tuple(timestamp_format))
    parsed = [_parse_with(text, fmt, timezone) for fmt in formats]
    return parsed[0] if len(parsed) == 1 else ibis.coalesce(*parsed)


def _parse_with(text: ir.StringValue, fmt: str, timezone: str | None) -> ir.TimestampValue:
    """One format's parse of ``text`` as naive UTC (null when it does not match)."""
    if fmt.lower() == ISO_FORMAT:
        naive = text.try_cast("timestamp")  # drops an offset: used only for text without one
        with_offset = _wall_clock("UTC", text.try_cast(dtypes.Timestamp(timezone="UTC")))
        date_only = text.length() <= 10
        local = ibis.ifelse(date_only, naive, _local_to_utc(naive, timezone)) if timezone else naive
        return ibis.ifelse(text.re_search(_ZONE_SUFFIX), with_offset, local)
    if format_has_offset(fmt):
        return _wall_clock("UTC", _try_strptime_offset(text, fmt))
    naive = _try_strptime(text, fmt).cast("timestamp")
    return _local_to_utc(naive, timezone) if format_has_time(fmt) else naive


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
            columns[_parsed(role)] = parse_timestamp(value, rules.timestamp_format, rules.timezone)
        elif role == "order_id":
            text = _as_text(value)
            columns[_parsed(role)] = ibis.ifelse(is_blank(value), ibis.null("string"), text)
        else:
            columns[_parsed(role)] = parse_number(value, rules.decimal, money=role in ("amount", "cost"))
    for role, dtype in (("quantity", "float64"), ("cost", "float64"), ("order_id", "string")):
        if role not in rules.mapped_roles:
            columns[_parsed(role)] = ibis.null(dtype)
    return raw.mutate(**columns)


def add_reasons(parsed: ir.Table, rules: IngestRules) -> ir.Table:
    """``reason`` for every row of a ``parse`` result: the first failing rule, null = accepted."""
    ts = parsed[_parsed("timestamp")]
    valid_from = ibis.literal(dt.datetime.combine(rules.valid_from, dt.time()))
    valid_to = ibis.literal(dt.datetime.combine(rules.valid_to, dt.time()))
    def null_word(role: str) -> ir.BooleanValue:
        return is_null_word(parsed[rules.columns[role]])

    amount = parsed[_parsed("amount")]
    cases: list[tuple[ir.BooleanValue, str]] = [
        (parsed[_blank("customer_id")] | null_word("customer_id"), "missing_customer_id"),
        (parsed[_blank("timestamp")] | (ts.isnull() & null_word("timestamp")), "missing_timestamp"),
        (ts.isnull(), "unparseable_timestamp"),
        ((ts < valid_from) | (ts >= valid_to), "implausible_timestamp"),
        (parsed[_blank("amount")] | (amount.isnull() & null_word("amount")), "missing_amount"),
        (is_not_finite(amount), "non_numeric_amount"),
    ]
    for role in ("quantity", "cost"):
        if role in rules.mapped_roles:
            bad = is_not_finite(parsed[_parsed(role)]) & ~parsed[_blank(role)] & ~null_word(role)
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


def rejected_samples(parsed: ir.Table, rejected: ir.Table, raw_columns: Iterable[str], per_reason: int = 2) -> ir.Table:
    """The first ``per_reason`` rejected rows (smallest source_row) of every reason: reason,
    source_row, [source_file] and ``raw_columns`` as text. ``rejected`` is a ``rejections``
    result (source_row, reason), so the window runs over the rejected rows only."""
    rank = ibis.row_number().over(group_by=rejected[REASON], order_by=rejected[SOURCE_ROW])
    first = rejected.mutate(**{f"{_PARSED}rank": rank})
    first = first.filter(first[f"{_PARSED}rank"] < per_reason).drop(f"{_PARSED}rank")
    key = f"{_PARSED}row"
    first = first.rename(**{key: SOURCE_ROW})
    joined = first.inner_join(parsed, first[key] == parsed[SOURCE_ROW])
    selection = {REASON: joined[REASON], SOURCE_ROW: joined[key].cast("int64")}
    if SOURCE_FILE in parsed.columns:
        selection[SOURCE_FILE] = joined[SOURCE_FILE].cast("string")
    selection.update({name: _as_text(joined[name]) for name in raw_columns})
    return joined.select(**selection).order_by([REASON, SOURCE_ROW])


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


#: The transactions contract as Arrow types: the schema of the file ingest streams.
TRANSACTIONS_ARROW = pyarrow_lib.schema(
    [
        ("customer_id", pyarrow_lib.string()),
        ("timestamp", pyarrow_lib.timestamp("us")),
        ("amount", pyarrow_lib.float64()),
        ("quantity", pyarrow_lib.float64()),
        ("order_id", pyarrow_lib.string()),
        ("cost", pyarrow_lib.float64()),
        (SOURCE_ROW, pyarrow_lib.int64()),
    ]
)


def rejected_arrow_schema(raw_columns: Iterable[str], with_source_file: bool) -> pyarrow_lib.Schema:
    """The quarantine contract (``rejected_schema``) as Arrow types: raw columns as text."""
    fields = [(name, pyarrow_lib.string()) for name in raw_columns] + [(SOURCE_ROW, pyarrow_lib.int64())]
    if with_source_file:
        fields.append((SOURCE_FILE, pyarrow_lib.string()))
    fields.append((REASON, pyarrow_lib.string()))
    return pyarrow_lib.schema(fields)


def rejected_schema(raw_columns: Iterable[str], with_source_file: bool) -> pa.DataFrameSchema:
    """Contract of the quarantine file: raw columns as text, source_row, [source_file], reason."""
    columns: dict[str, pa.Column] = {name: pa.Column(str, nullable=True) for name in raw_columns}
    columns[SOURCE_ROW] = pa.Column("int64", pa.Check.ge(0), unique=True)
    if with_source_file:
        columns[SOURCE_FILE] = pa.Column(str)
    columns[REASON] = pa.Column(str, pa.Check.isin(REASONS))
    return pa.DataFrameSchema(columns, strict=True, ordered=True, name="rejected")
