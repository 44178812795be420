"""Reading numbers out of run records: floats or NaN, nested look-ups, safe ratios."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd


def as_float(value: Any) -> float:
    """A float, or NaN for None/non-numbers (never a made-up value)."""
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def dig(data: Any, *keys: Any) -> Any:
    """``data[k1][k2]...`` through nested dicts (int keys also match their str form); None when absent."""
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key, data.get(str(key)) if not isinstance(key, str) else None)
    return data


def ratio(num: float, den: float) -> float:
    """``num / den``, NaN when either is missing or ``den`` is 0."""
    return num / den if den and not math.isnan(num) and not math.isnan(den) else math.nan


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def value_of(row: pd.Series | None, col: str) -> float:
    """``row[col]`` as a float; NaN when the row or the column is absent."""
    return math.nan if row is None or col not in row.index else as_float(row[col])
