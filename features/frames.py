"""Small checks on frames shared by every layer (pure: frames in, values out)."""

from __future__ import annotations

import pandas as pd

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
