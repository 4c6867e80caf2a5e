"""Row classification (features/ingest.py) on hand-made rows: every quarantine reason, the rule
order, duplicates, typed inputs, the output contracts and the row-accounting invariant."""

from __future__ import annotations

import datetime as dt

import hypothesis.strategies as st
import ibis
import numpy as np
import pandas as pd
import pandera.errors
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings

from features.frames import fixed_size_tables
from features.ingest import (
    REASONS,
    TRANSACTIONS_SCHEMA,
    IngestRules,
    accepted_transactions,
    classify,
    counts_by_reason,
    missing_mapped_columns,
    reason_counts,
    rejected_rows,
    rejected_schema,
)

COLUMNS = ("cust", "ts", "amt", "qty", "order", "cost", "note")
MAPPING = {"customer_id": "cust", "timestamp": "ts", "amount": "amt", "quantity": "qty", "order_id": "order", "cost": "cost"}
# Every field of IngestRules (it has no defaults: pipelines.domain.ingest_rules builds it from params).
BASE_RULES = {"timestamp_format": "%Y-%m-%d", "valid_from": dt.date(1970, 1, 1), "valid_to": dt.date(2100, 1, 1),
              "timezone": None, "decimal": "."}


def make_rules(columns=MAPPING, **changes) -> IngestRules:
    """IngestRules with BASE_RULES, ``columns`` and ``changes``."""
    return IngestRules(columns=columns, **{**BASE_RULES, **changes})


RULES = make_rules(valid_from=dt.date(1990, 1, 1), valid_to=dt.date(2030, 1, 1))
GOOD = {"cust": "c1", "ts": "2020-05-01", "amt": "10.50", "qty": "1", "order": "o1", "cost": "7.00", "note": "x"}


@pytest.fixture(scope="module")
def con():
    backend = ibis.duckdb.connect()
    backend.raw_sql("SET TimeZone = 'UTC'")
    yield backend
    backend.disconnect()


def raw_frame(rows: list[dict]) -> pd.DataFrame:
    """Raw text rows (missing keys = the good row's value) with source_row 0..n-1."""
    frame = pd.DataFrame([{**GOOD, **row} for row in rows], columns=list(COLUMNS)).astype(object)
    frame = frame.where(frame.notna(), None)
    return frame.assign(source_row=np.arange(len(frame), dtype="int64"))


def execute(con, expr) -> pd.DataFrame:
    return con.to_pyarrow(expr).to_pandas()


RAW = "raw"  # the name the raw rows are registered under for a compiled query
_COMPILED: dict[tuple[str, str], list[tuple[ibis.Expr, str]]] = {}


def compiled(con, schema: ibis.Schema, rules: IngestRules) -> list[tuple[ibis.Expr, str]]:
    """(expression, its DuckDB SQL) of the classified, accepted and rejected rows over a table
    named RAW with ``schema``, compiled once per (rules, schema): compiling takes longer than
    running the query on a few rows (as tests/test_features.py's ``compiled``)."""
    key = (repr(rules), repr(schema))
    if key not in _COMPILED:
        classified = classify(ibis.table(schema, name=RAW), rules)
        raw_columns = [c for c in schema.names if c != "source_row"]
        exprs = [classified, accepted_transactions(classified), rejected_rows(classified, raw_columns)]
        _COMPILED[key] = [(expr, con.compile(expr.as_table())) for expr in exprs]
    return _COMPILED[key]


def execute_compiled(con, expr: ibis.Expr, sql: str, raw: pa.Table) -> pd.DataFrame:
    """What ``execute(con, expr)`` gives with ``raw`` as the RAW table: the same query and
    ibis's own conversion of DuckDB's result to the expression's schema."""
    from ibis.backends.duckdb.converter import DuckDBPyArrowData

    con.con.register(RAW, raw)
    try:
        table = con.con.sql(sql).to_arrow_table()
    finally:
        con.con.unregister(RAW)
    return expr.__pyarrow_result__(table, data_mapper=DuckDBPyArrowData).to_pandas()


def run(con, frame: pd.DataFrame | pa.Table, rules: IngestRules = RULES) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(classified rows by source_row, accepted contract frame, rejected frame)."""
    if isinstance(frame, pd.DataFrame):
        frame = pa.Table.from_pandas(frame, preserve_index=False)
    raw = ibis.memtable(frame)
    classified, accepted, rejected = (execute_compiled(con, expr, sql, frame) for expr, sql in compiled(con, raw.schema(), rules))
    return classified.sort_values("source_row").reset_index(drop=True), accepted, rejected


def reasons_of(con, rows: list[dict], rules: IngestRules = RULES) -> list[str | None]:
    classified, _, _ = run(con, raw_frame(rows), rules)
    return [None if r is None or r != r else r for r in classified["reason"]]


RULE_CASES: list[tuple[dict, str | None]] = [
    ({}, None),
    ({"cust": None}, "missing_customer_id"),
    ({"cust": ""}, "missing_customer_id"),
    ({"cust": " \t "}, "missing_customer_id"),
    ({"ts": None}, "missing_timestamp"),
    ({"ts": "  "}, "missing_timestamp"),
    ({"ts": "not a date"}, "unparseable_timestamp"),
    ({"ts": "2020-02-30"}, "unparseable_timestamp"),
    ({"ts": "01/05/2020"}, "unparseable_timestamp"),
    ({"ts": "1989-12-31"}, "implausible_timestamp"),
    ({"ts": "2030-01-01"}, "implausible_timestamp"),  # valid_to is exclusive
    ({"ts": "1990-01-01"}, None),  # valid_from is inclusive
    ({"amt": None}, "missing_amount"),
    ({"amt": ""}, "missing_amount"),
    ({"amt": "   "}, "missing_amount"),
    ({"amt": "abc"}, "non_numeric_amount"),
    ({"amt": "inf"}, "non_numeric_amount"),
    ({"amt": "-Infinity"}, "non_numeric_amount"),
    ({"amt": "NaN"}, "non_numeric_amount"),
    ({"amt": "1,50"}, "non_numeric_amount"),
    ({"amt": "1e400"}, "non_numeric_amount"),  # overflows to inf
    ({"qty": "two"}, "non_numeric_quantity"),
    ({"qty": "nan"}, "non_numeric_quantity"),
    ({"qty": ""}, None),  # an absent quantity is allowed (NaN)
    ({"cost": "cheap"}, "non_numeric_cost"),
    ({"cost": "n/a"}, None),  # a null word is an absent cost (NaN)
    ({"cust": "NULL"}, "missing_customer_id"),
    ({"cust": "n/a"}, "missing_customer_id"),
    ({"ts": "None"}, "missing_timestamp"),
    ({"amt": "#N/A"}, "missing_amount"),
    ({"amt": "$"}, "non_numeric_amount"),
    ({"amt": "12 apples"}, "non_numeric_amount"),
    ({"amt": "1,23,456.00"}, "non_numeric_amount"),  # not groups of three
    ({"amt": "$1,234.50"}, None),
    ({"cost": None}, None),
    ({"amt": "-12.5"}, None),  # a return
    ({"amt": "0"}, None),
    ({"amt": " 1e2 "}, None),
    ({"order": ""}, None),  # no order id: accepted, order_id null
]


def test_each_rule_gives_its_reason(con):
    rows = [{"order": f"o{i}", **row} for i, (row, _) in enumerate(RULE_CASES)]  # no accidental duplicates
    got = reasons_of(con, rows)
    assert [(row, reason) for (row, _), reason in zip(RULE_CASES, got)] == RULE_CASES


def test_the_first_failing_rule_in_documented_order_wins(con):
    rows = [
        {"cust": "", "ts": "bad", "amt": "abc"},
        {"ts": "bad", "amt": "", "qty": "x"},
        {"ts": "1900-01-01", "amt": "abc"},
        {"amt": "", "qty": "x", "cost": "y"},
        {"amt": "abc", "qty": "x"},
        {"qty": "x", "cost": "y"},
    ]
    assert reasons_of(con, rows) == [
        "missing_customer_id", "unparseable_timestamp", "implausible_timestamp",
        "missing_amount", "non_numeric_amount", "non_numeric_quantity",
    ]


def test_duplicate_order_lines_keep_the_first_and_ignore_unmapped_columns(con):
    rows = [
        {"order": "o1"},
        {"order": "o1", "amt": "3.00"},  # another line of the same order: different amount
        {"order": "o1", "note": "different unmapped value"},  # identical on every mapped column
        {"order": "o1"},
        {"order": "o2"},  # same values, other order
        {"order": ""},
        {"order": ""},  # no order id: never a duplicate
        {"order": " o1 "},  # raw text differs (spaces): not identical
        {"order": "o1", "cost": None, "qty": None},
        {"order": "o1", "cost": None, "qty": None},  # nulls compare equal
    ]
    assert reasons_of(con, rows) == [
        None, None, "duplicate_order_line", "duplicate_order_line", None, None, None, None,
        None, "duplicate_order_line",
    ]


def test_duplicates_are_not_checked_without_an_order_id_column(con):
    rules = make_rules({k: v for k, v in MAPPING.items() if k != "order_id"})
    assert reasons_of(con, [{}, {}], rules) == [None, None]


def test_duplicate_of_a_rejected_row_keeps_the_earlier_reason(con):
    assert reasons_of(con, [{"amt": "abc"}, {"amt": "abc"}]) == ["non_numeric_amount", "non_numeric_amount"]


def test_lenient_timestamps_without_a_format(con):
    rules = make_rules(timestamp_format=None)
    rows = [{"ts": "2020-05-01"}, {"ts": "2020-05-01 13:45:10"}, {"ts": "2020-05-01T13:45:10"}, {"ts": "20200501"}]
    classified, _, _ = run(con, raw_frame(rows), rules)
    assert classified["reason"].isna().tolist() == [True, True, True, False]
    assert classified["reason"].iloc[3] == "unparseable_timestamp"
    assert classified["__cvp_timestamp"].iloc[1] == pd.Timestamp("2020-05-01 13:45:10")


def test_accepted_rows_follow_the_contract(con):
    rows = [
        {"cust": " 007 ", "ts": "2020-05-02", "amt": " -4.25 ", "qty": "", "order": " o9 ", "cost": ""},
        {"cust": "007", "ts": "2020-05-01", "amt": "0.00"},
        {"cust": "0010", "ts": "2020-05-01", "amt": "12"},
        {"cust": "007", "ts": "2020-05-01", "amt": "5", "order": "o2"},
        {"amt": "abc"},
    ]
    _, accepted, rejected = run(con, raw_frame(rows))
    TRANSACTIONS_SCHEMA.validate(accepted)
    assert accepted["customer_id"].tolist() == ["0010", "007", "007", "007"]  # trimmed, zeros kept, sorted
    assert accepted["source_row"].tolist() == [2, 1, 3, 0]  # ties on timestamp broken by source_row
    ret = accepted[accepted.source_row == 0].iloc[0]
    assert ret.amount == -4.25 and np.isnan(ret.quantity) and np.isnan(ret.cost) and ret.order_id == "o9"
    assert accepted.loc[accepted.source_row == 1, "amount"].item() == 0.0
    assert rejected["source_row"].tolist() == [4]


def test_unmapped_optional_columns_are_nan_and_null(con):
    rules = make_rules({"customer_id": "cust", "timestamp": "ts", "amount": "amt"})
    _, accepted, _ = run(con, raw_frame([{}, {"qty": "not checked", "cost": "nor this"}]), rules)
    TRANSACTIONS_SCHEMA.validate(accepted)
    assert len(accepted) == 2
    assert accepted["quantity"].isna().all() and accepted["cost"].isna().all() and accepted["order_id"].isna().all()


def test_rejected_rows_keep_the_original_raw_text(con):
    rows = [{"cust": "  ", "note": "kept"}, {}, {"amt": " abc ", "qty": " 2 "}]
    _, _, rejected = run(con, raw_frame(rows))
    schema = rejected_schema(list(COLUMNS), with_source_file=False)
    schema.validate(rejected)
    assert list(rejected.columns) == [*COLUMNS, "source_row", "reason"]
    assert rejected["cust"].tolist() == ["  ", "c1"]
    assert rejected["amt"].tolist() == ["10.50", " abc "]  # untrimmed, as read
    assert rejected["qty"].tolist() == ["1", " 2 "]
    assert rejected["note"].tolist() == ["kept", "x"]
    assert rejected["reason"].tolist() == ["missing_customer_id", "non_numeric_amount"]


def test_typed_columns_are_classified_without_text_parsing(con):
    table = pa.table(
        {
            "cust": pa.array([1, 2, 3, None, 5], pa.int64()),
            "ts": pa.array([dt.datetime(2020, 1, 1, 10), None, dt.datetime(2020, 1, 2), dt.datetime(2020, 1, 3),
                            dt.datetime(2020, 1, 4)], pa.timestamp("us")),
            "amt": pa.array([5.0, 6.0, float("nan"), 7.0, None], pa.float64(), from_pandas=False),
            "source_row": pa.array(range(5), pa.int64()),
        }
    )
    rules = make_rules({"customer_id": "cust", "timestamp": "ts", "amount": "amt"})
    classified, accepted, rejected = run(con, table, rules)
    assert classified["reason"].tolist()[1:] == [
        "missing_timestamp", "non_numeric_amount", "missing_customer_id", "missing_amount",
    ]
    assert accepted["customer_id"].tolist() == ["1"]
    assert accepted["timestamp"].tolist() == [pd.Timestamp("2020-01-01 10:00")]
    assert pd.isna(rejected["ts"].iloc[0])
    assert rejected["amt"].iloc[1].lower() == "nan"
    assert rejected["cust"].fillna("<null>").tolist() == ["2", "3", "<null>", "5"]


def test_transactions_schema_rejects_contract_violations():
    good = pd.DataFrame(
        {
            "customer_id": pd.Series(["a"], dtype="str"),
            "timestamp": pd.to_datetime(["2020-01-01"]),
            "amount": [1.0], "quantity": [np.nan], "order_id": pd.Series([None], dtype="str"),
            "cost": [np.nan], "source_row": np.array([0], dtype="int64"),
        }
    )
    TRANSACTIONS_SCHEMA.validate(good)
    for column, value in [("customer_id", " a"), ("customer_id", ""), ("amount", np.inf), ("quantity", -np.inf)]:
        bad = good.copy()
        bad[column] = value
        with pytest.raises(pandera.errors.SchemaError):
            TRANSACTIONS_SCHEMA.validate(bad)
    with pytest.raises(pandera.errors.SchemaError):
        TRANSACTIONS_SCHEMA.validate(good.assign(timestamp=good.timestamp.dt.tz_localize("UTC")))


def test_missing_mapped_columns_and_rule_validation():
    assert missing_mapped_columns(["a", "b"], {"customer_id": "a", "amount": "c", "cost": None}) == [("amount", "c")]
    with pytest.raises(ValueError, match="amount"):
        make_rules({"customer_id": "a", "timestamp": "b"})
    with pytest.raises(ValueError, match="valid_from"):
        make_rules(valid_from=dt.date(2020, 1, 1), valid_to=dt.date(2020, 1, 1))


def test_counts_by_reason_lists_every_reason(con):
    accepted, by_reason = counts_by_reason([(None, 5), ("missing_amount", 2)])
    assert accepted == 5
    assert list(by_reason) == list(REASONS)
    assert by_reason["missing_amount"] == 2 and sum(by_reason.values()) == 2
    table = ibis.memtable(pa.Table.from_pandas(raw_frame([{}, {"amt": ""}, {"cust": ""}, {"amt": ""}]), preserve_index=False))
    counts = con.to_pyarrow(reason_counts(classify(table, RULES))).to_pylist()
    assert counts_by_reason((row["reason"], row["n"]) for row in counts) == (
        1, {**dict.fromkeys(REASONS, 0), "missing_amount": 2, "missing_customer_id": 1})


# Catalogue of rows with the reason each must get (duplicates are tested above: here every
# row gets a distinct order id so that a random mix has no accidental duplicates).
CATALOGUE: list[tuple[dict, str | None]] = [
    ({}, None), ({"amt": "-3"}, None), ({"amt": "0"}, None), ({"qty": ""}, None), ({"cust": " c2 "}, None),
    ({"cust": ""}, "missing_customer_id"), ({"cust": None}, "missing_customer_id"),
    ({"ts": ""}, "missing_timestamp"), ({"ts": "2020-13-01"}, "unparseable_timestamp"),
    ({"ts": "1900-01-01"}, "implausible_timestamp"), ({"amt": None}, "missing_amount"),
    ({"amt": "x"}, "non_numeric_amount"), ({"qty": "?"}, "non_numeric_quantity"), ({"cost": "-"}, "non_numeric_cost"),
]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(picks=st.lists(st.integers(0, len(CATALOGUE) - 1), min_size=1, max_size=60), dup_every=st.integers(0, 5))
def test_row_accounting_holds_for_any_mix(con, picks, dup_every):
    rows = [{**CATALOGUE[k][0], "order": f"o{i}"} for i, k in enumerate(picks)]
    expected = [CATALOGUE[k][1] for k in picks]
    if dup_every:  # repeat some rows verbatim (same order id): the copies are duplicates unless rejected earlier
        for i in range(0, len(picks), dup_every):
            rows.append(dict(rows[i]))
            expected.append(expected[i] or "duplicate_order_line")
    frame = raw_frame(rows)
    classified, accepted, rejected = run(con, frame)
    assert len(accepted) + len(rejected) == len(frame)
    assert sorted([*accepted.source_row, *rejected.source_row]) == list(range(len(frame)))
    got = [None if r != r else r for r in classified["reason"]]
    assert got == expected
    assert rejected["reason"].tolist() == [r for r in expected if r is not None]


@settings(max_examples=50, deadline=None)
@given(sizes=st.lists(st.integers(0, 40), max_size=12), rows=st.integers(1, 17))
def test_fixed_size_tables_reslice_without_changing_content(sizes, rows):
    start = 0
    tables = []
    for size in sizes:
        tables.append(pa.table({"x": np.arange(start, start + size)}))
        start += size
    out = list(fixed_size_tables(tables, rows))
    assert all(t.num_rows == rows for t in out[:-1])
    assert (not out) or 0 < out[-1].num_rows <= rows
    assert [v for t in out for v in t.column("x").to_pylist()] == list(range(start))


def parsed_values(con, column: str, texts: list[str | None], rules: IngestRules) -> list:
    """The parsed value of ``column`` (a role's source column) for each text, by source_row."""
    role = {v: k for k, v in MAPPING.items()}[column]
    classified, _, _ = run(con, raw_frame([{column: t} for t in texts]), rules)
    return [None if v is None or v != v else v for v in classified[f"__cvp_{role}"]]


MONEY_CASES: list[tuple[str, float | None]] = [
    ("12.00", 12.0), ("$12.00", 12.0), ("-$12.00", -12.0), ("$-12.00", -12.0), ("$ 1,234.50", 1234.5),
    ("1,234.50", 1234.5), ("1,234,567", 1234567.0), ("1'234.50", 1234.5), ("1 234.50", 1234.5),
    ("1\u00a0234.50", 1234.5), ("(12.00)", -12.0), ("($1,200.00)", -1200.0), ("12.00-", -12.0),
    ("EUR 12.50", 12.5), ("12.50 EUR", 12.5), ("12.50€", 12.5), ("£7", 7.0), ("US$3.10", 3.1), ("-USD 4", -4.0),
    ("1.5e3", 1500.0), ("2E-2", 0.02), ("1e10", 1e10), ("12345678901.25", 12345678901.25),
    ("1,50", None), ("12.34.5", None), ("1,2345", None), ("EUR", None), ("12 $ 34", None), ("12 apples", None), ("1.2.3", None),
]


def test_money_formats_parse_and_ambiguous_ones_do_not(con):
    got = parsed_values(con, "amt", [text for text, _ in MONEY_CASES], RULES)
    assert list(zip([t for t, _ in MONEY_CASES], got)) == MONEY_CASES


DECIMAL_COMMA_CASES: list[tuple[str, float | None]] = [
    ("12,5", 12.5), ("1.234,50", 1234.5), ("1.234.567", 1234567.0), ("€ 1.234,50", 1234.5), ("12,50 EUR", 12.5),
    ("1 234,50", 1234.5), ("-3,20", -3.2), ("(3,20)", -3.2), ("7", 7.0), ("1,5e3", 1500.0),
    ("12.5", None), ("1.23", None), ("1,234.50", None),
]


def test_decimal_comma_reads_comma_decimals_and_dot_groups(con):
    rules = make_rules(decimal=",")
    got = parsed_values(con, "amt", [text for text, _ in DECIMAL_COMMA_CASES], rules)
    assert list(zip([t for t, _ in DECIMAL_COMMA_CASES], got)) == DECIMAL_COMMA_CASES
    assert parsed_values(con, "qty", ["1.000", "2,5"], rules) == [1000.0, 2.5]


def test_quantity_takes_separators_but_not_money_marks(con):
    assert parsed_values(con, "qty", ["1,000", "$3", "(2)", "3-"], RULES) == [1000.0, None, None, -3.0]


TS = pd.Timestamp
TIMESTAMP_CASES: list[tuple[str, pd.Timestamp | None]] = [
    ("2024-03-01", TS("2024-03-01")),
    ("2024-03-01 10:00:00", TS("2024-03-01 10:00")),
    ("2024-03-01T10:00:00-05:00", TS("2024-03-01 15:00")),
    ("2024-03-01 10:00:00+05:30", TS("2024-03-01 04:30")),
    ("2024-03-01T10:00:00Z", TS("2024-03-01 10:00")),
    ("2024-03-01T10:00:00.250-0500", TS("2024-03-01 15:00:00.250")),
    ("2024-03-01 23:30:00 America/New_York", TS("2024-03-02 04:30")),
    ("03/01/2024", None),
]


def test_iso_inference_converts_offsets_to_utc(con):
    rules = make_rules(timestamp_format=None)
    got = parsed_values(con, "ts", [t for t, _ in TIMESTAMP_CASES], rules)
    assert list(zip([t for t, _ in TIMESTAMP_CASES], got)) == TIMESTAMP_CASES


def test_naive_timestamps_are_local_time_in_the_configured_zone(con):
    rules = make_rules(timestamp_format=None, timezone="America/New_York")
    texts = ["2024-03-01 10:00:00", "2024-07-01 10:00:00", "2024-03-01T10:00:00+01:00", "2024-03-01"]
    # EST (UTC-5) in March, EDT (UTC-4) in July; an explicit offset wins; a date is a calendar day
    assert parsed_values(con, "ts", texts, rules) == [
        TS("2024-03-01 15:00"), TS("2024-07-01 14:00"), TS("2024-03-01 09:00"), TS("2024-03-01")]
    listed = make_rules(timestamp_format=["%d.%m.%Y %H:%M", "%d.%m.%Y"], timezone="Europe/Berlin")
    assert parsed_values(con, "ts", ["01.03.2024 10:00", "01.03.2024"], listed) == [TS("2024-03-01 09:00"), TS("2024-03-01")]


def test_a_list_of_formats_is_tried_in_order(con):
    rules = make_rules(timestamp_format=["iso", "%m/%d/%Y", "%d.%m.%Y", "%Y-%m-%dT%H:%M:%S%z"])
    texts = ["2024-03-01 10:00:00", "03/04/2024", "04.03.2024", "2024-03-01T10:00:00-05:00", "1 March 2024"]
    assert parsed_values(con, "ts", texts, rules) == [
        TS("2024-03-01 10:00"), TS("2024-03-04"), TS("2024-03-04"), TS("2024-03-01 15:00"), None]
    # order decides ambiguous dates: 03/04/2024 is 4 March with %m/%d first, 3 April with %d/%m first
    day_first = make_rules(timestamp_format=["%d/%m/%Y", "%m/%d/%Y"])
    assert parsed_values(con, "ts", ["03/04/2024", "12/31/2024"], day_first) == [TS("2024-04-03"), TS("2024-12-31")]
    offset = make_rules(timestamp_format="%Y-%m-%d %H:%M:%S%z")
    assert parsed_values(con, "ts", ["2024-03-01 10:00:00+0200", "2024-03-01 10:00:00"], offset) == [TS("2024-03-01 08:00"), None]

