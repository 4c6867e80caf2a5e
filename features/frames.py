"""Small checks and helpers on frames and Arrow tables shared by every layer (pure: data in, data out)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa

from features.errors import DataError


def single_date(frame: pd.DataFrame, source: str | object, column: str = "cutoff") -> pd.Timestamp:
    """The one date ``column`` holds in ``frame`` (time of day dropped, missing values ignored);
    a DataError naming ``source`` when it holds none or several. Every stage checks its inputs'
    cutoff this way: features, labels and predictions at one cutoff must agree on it."""
    dates = pd.to_datetime(frame[column]).dropna().dt.normalize().unique()
    if len(dates) != 1:
        raise DataError(
            f"{source}: column '{column}' must hold one date (found {len(dates)}); re-run the stage that writes it"
        )
    return pd.Timestamp(dates[0])


def same_ids(left: pd.Series, right: pd.Series) -> bool:
    """Whether two id columns hold the same ids in the same order (compared as text)."""
    if len(left) != len(right):
        return False
    a, b = pd.Series(left).astype("str"), pd.Series(right).astype("str")
    return bool((a.array == b.array).all())


def join_on_id(left: pd.DataFrame, right: pd.DataFrame, how: str = "inner", on: str = "customer_id") -> pd.DataFrame:
    """``left.merge(right, on=on, how=how, validate="one_to_one")``, by position when both hold the
    same unique ids in the same order (the usual case: predictions of the features' rows), which
    spares hashing every id (about 1 s per join at a million customers)."""
    clash = set(left.columns) & set(right.columns) - {on}
    if not clash and same_ids(left[on], right[on]) and left[on].is_unique:
        return pd.concat([left.reset_index(drop=True), right.drop(columns=on).reset_index(drop=True)], axis=1)
    return left.merge(right, on=on, how=how, validate="one_to_one")


def duplicated_mask(values: pd.Series) -> np.ndarray:
    """``values.duplicated(keep=False)`` as a bool array; on sorted values by comparing neighbours
    (hashing a million text ids costs about 0.2 s, this a few milliseconds)."""
    values = pd.Series(values)
    if len(values) > 1 and values.notna().all() and values.is_monotonic_increasing:
        same = np.asarray(values.array[1:] == values.array[:-1], dtype=bool)
        mask = np.zeros(len(values), dtype=bool)
        mask[1:] |= same
        mask[:-1] |= same
        return mask
    return values.duplicated(keep=False).to_numpy()


def sorted_by_id(frame: pd.DataFrame, on: str = "customer_id") -> pd.DataFrame:
    """``frame`` sorted by ``on`` (stable), index reset; a frame already in order is not sorted again
    (sorting a million text ids costs about 1 s even when they are in order)."""
    if not frame[on].is_monotonic_increasing:
        frame = frame.sort_values(on, kind="stable")
    return frame.reset_index(drop=True)


def fixed_size_tables(tables: Iterable[pa.Table | pa.RecordBatch], rows: int) -> Iterator[pa.Table]:
    """Re-slice a stream of Arrow tables/batches into tables of exactly ``rows`` rows (last may be
    shorter), so output layout depends only on the data, never on upstream batch sizes."""
    if rows <= 0:
        raise ValueError("rows must be positive")
    pending: list[pa.Table] = []
    n_pending = 0
    for item in tables:
        table = pa.Table.from_batches([item]) if isinstance(item, pa.RecordBatch) else item
        if table.num_rows == 0:
            continue
        pending.append(table)
        n_pending += table.num_rows
        if n_pending >= rows:
            merged = pa.concat_tables(pending)
            start = 0
            while merged.num_rows - start >= rows:
                yield merged.slice(start, rows).combine_chunks()
                start += rows
            rest = merged.slice(start)
            pending, n_pending = ([rest], rest.num_rows) if rest.num_rows else ([], 0)
    if n_pending:
        yield pa.concat_tables(pending).combine_chunks()
