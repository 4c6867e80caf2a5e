"""Errors a user can hit and fix: their message is one line naming the file, column or key."""

from __future__ import annotations

import traceback

MAX_EXAMPLES = 3


class DataError(ValueError):
    """Input data that the pipeline cannot use as it is."""


def _contract_name(exc: BaseException) -> str | None:
    """Name of the pandera DataFrameSchema whose ``validate`` raised ``exc`` (from the traceback:
    for a column check, pandera's error carries the column's schema, not the frame's)."""
    name = getattr(getattr(exc, "schema", None), "name", None) if hasattr(getattr(exc, "schema", None), "columns") else None
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        owner = frame.f_locals.get("self")
        if type(owner).__name__ == "DataFrameSchema" and getattr(owner, "name", None):
            name = owner.name
    return name


def _customer(data: object, index: object) -> object:
    """The customer_id of row ``index`` of the validated frame, when it has one."""
    try:
        return data["customer_id"].loc[index]  # type: ignore[index]
    except (KeyError, TypeError, IndexError):
        return None


def _examples(err: BaseException) -> str:
    """'(N row(s), e.g. customer X: value, ...)' from the error's failure cases; '' if none."""
    cases = getattr(err, "failure_cases", None)
    if cases is None or not hasattr(cases, "columns") or "failure_case" not in cases.columns or cases.empty:
        return ""
    data = getattr(err, "data", None)
    shown = []
    for _, case in cases.head(MAX_EXAMPLES).iterrows():
        customer = _customer(data, case["index"]) if "index" in case else None
        shown.append(f"customer {customer}: {case['failure_case']}" if customer is not None else str(case["failure_case"]))
    return f" ({len(cases)} row(s), e.g. {', '.join(shown)})"


def _what_failed(err: BaseException) -> str:
    check = getattr(err, "check", None)
    if check == "not_nullable":
        return "has null or NaN values"
    if isinstance(check, str):  # pandera's built-in checks: dtype('float64'), field_uniqueness, ...
        return f"fails check {check}"
    if check is not None:
        return f"fails check {getattr(check, 'error', None) or getattr(check, 'name', None) or check}"
    text = str(err).strip()
    return text.splitlines()[0].rstrip(":") if text else type(err).__name__


def contract_problem(exc: BaseException) -> str:
    """What a pandera SchemaError/SchemaErrors says is wrong, in a few words: the column, what
    failed and a few failing rows, e.g. ``column 'p' fails check less_than_or_equal_to(1) (2 row(s), e.g. 1.5)``."""
    errors = getattr(exc, "schema_errors", None) or [exc]  # SchemaErrors (lazy validation): the first
    first = errors[0]
    if getattr(first, "check", None) == "column_in_dataframe":
        cases = getattr(first, "failure_cases", None)  # the column name, or a frame holding it
        column = cases if isinstance(cases, str) else getattr(first, "column_name", None) or "?"
        if hasattr(cases, "columns") and "failure_case" in cases.columns and len(cases):
            column = cases["failure_case"].iloc[0]
        problem = f"column '{column}' is missing"
    else:
        column = getattr(first, "column_name", None)
        problem = (f"column '{column}' " if column else "") + _what_failed(first) + _examples(first)
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return problem + more


def contract_error_message(exc: BaseException) -> str:
    """One line for a pandera SchemaError/SchemaErrors raised at a stage boundary: the contract,
    the column, what failed and a few failing rows. A contract refusing a stage's own output
    (e.g. a NaN) is a bug upstream; the line says how to see where it came from."""
    contract = _contract_name(exc)
    where = f"contract '{contract}'" if contract else "stage contract"
    return f"{where}: {contract_problem(exc)}; the stage produced values its contract refuses (run with --verbose for the traceback)"
