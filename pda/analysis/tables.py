"""Tables for readers: numbers formatted with their units in the headers, '—' where a value does not apply.

Every table here is built from a list of columns (header, source column, formatter), so a new
measurement is one more entry, not a new function. Values that do not apply (the sparsity of an
unpruned run) show as ``NOT_APPLICABLE``; values that apply but were not measured as ``NOT_MEASURED``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping, Sequence
from html import escape
from typing import Any

import numpy as np
import pandas as pd

from pda.analysis.frame import (
    TASK_GROUPS, batch_sizes, recipes_of, select_recipe, sort_recipes, task_sort_key,
)
from pda.analysis.values import as_float, is_missing, value_of

NOT_APPLICABLE = "—"
NOT_MEASURED = "n/a"


# ----------------------------------------------------------------------------- formatters

def fixed(digits: int, scale: float = 1.0) -> Callable[[Any], str]:
    """``value * scale`` with ``digits`` decimals and thousands separators; NOT_MEASURED when missing."""
    def fmt(value: Any) -> str:
        v = as_float(value)
        return NOT_MEASURED if math.isnan(v) else f"{v * scale:,.{digits}f}"
    return fmt


def readable(scale: float = 1.0) -> Callable[[Any], str]:
    """Three significant digits without exponents (12,345 / 123 / 12.3 / 1.23 / 0.0123)."""
    def fmt(value: Any) -> str:
        v = as_float(value) * scale
        if math.isnan(v):
            return NOT_MEASURED
        if v == 0 or abs(v) >= 100:
            return f"{v:,.0f}"
        return f"{v:.{max(0, 2 - math.floor(math.log10(abs(v))))}f}"
    return fmt


def percent_of_one(digits: int = 1) -> Callable[[Any], str]:
    """A fraction as percent; NOT_APPLICABLE when missing (a sparsity of an unpruned model)."""
    def fmt(value: Any) -> str:
        v = as_float(value)
        return NOT_APPLICABLE if math.isnan(v) else f"{v * 100:.{digits}f}"
    return fmt


def target_sparsity(value: Any) -> str:
    v = as_float(value)
    return NOT_APPLICABLE if math.isnan(v) else f"{v * 100 if v <= 1 else v:g}"


def text(value: Any) -> str:
    return NOT_MEASURED if is_missing(value) else str(value)


def integer(value: Any) -> str:
    v = as_float(value)
    return NOT_MEASURED if math.isnan(v) else f"{int(v):,}"


MILLIONS = fixed(2, 1e-6)
TIMES = fixed(2)
POINTS = fixed(2)
WATT_HOURS = readable(1e3)  # records hold kWh; CPU runs are Wh-scale
GRAMS = readable(1e3)  # records hold kg CO2eq


def mean_std(mean: Any, std: Any, n: Any, digits: int = 2) -> str:
    """'79.40 ± 1.00 (n=3)'; without a spread (n = 1) '79.40 (n=1)', never '± 0' or '± nan'."""
    m, s, k = as_float(mean), as_float(std), as_float(n)
    if math.isnan(m):
        return NOT_MEASURED
    spread = "" if math.isnan(s) or (not math.isnan(k) and k < 2) else f" ± {s:.{digits}f}"
    count = "" if math.isnan(k) else f" (n={int(k)})"
    return f"{m:.{digits}f}{spread}{count}"


@dataclasses.dataclass(frozen=True)
class Column:
    """One column of a readable table: its header (with unit), the source column, how to print a value."""

    header: str
    source: str
    fmt: Callable[[Any], str] = text


def render(df: pd.DataFrame, columns: Sequence[Column]) -> pd.DataFrame:
    """Rows of ``df`` as strings under the columns' headers; a missing source column reads NOT_MEASURED."""
    out = {c.header: [c.fmt(v) for v in df[c.source]] if c.source in df else [NOT_MEASURED] * len(df)
           for c in columns}
    return pd.DataFrame(out, index=range(len(df)))


def speed_columns(data: pd.DataFrame, suffix: str = "") -> list[Column]:
    """One speed-up column per measured batch size (``suffix`` '_mean' for aggregates)."""
    return [Column(f"speed-up b{b} (×)", f"speedup_b{b}{suffix}", TIMES) for b in batch_sizes(data)]


# ----------------------------------------------------------------------------- tables

def runs_table(frame: pd.DataFrame, run_ids: bool = False) -> pd.DataFrame:
    """One row per run: the main metric, size, achieved sparsity, speed-ups and energy, ready to read
    (``run_ids``: a first column with the run id, e.g. to link each run)."""
    columns = [
        *[Column("run", "run_id")] * run_ids, Column("task", "task"), Column("scenario", "scenario"),
        Column("target sparsity (%)", "sparsity", target_sparsity),
        Column("seed", "seed", integer), Column("metric", "main_metric"), Column("score (%)", "main_metric_value", POINTS),
        Column("params (M)", "params_total", MILLIONS), Column("size reduction (×)", "size_reduction_params", TIMES),
        Column("encoder sparsity vs teacher (%)", "sparsity_achieved_encoder", percent_of_one()),
        *speed_columns(frame), Column("energy (Wh)", "total_kwh", WATT_HOURS), Column("CO2 (g)", "total_kg_co2eq", GRAMS),
    ]
    if frame.empty:
        return render(frame, columns)
    return render(sort_recipes(frame), columns)


def _task_metric(agg: pd.DataFrame, task: str) -> str:
    names = agg.loc[agg["task"] == task, "main_metric"].dropna()
    return str(names.iloc[0]) if len(names) else "metric"


def accuracy_table(agg: pd.DataFrame) -> pd.DataFrame:
    """Recipes x tasks of 'mean ± std (n=seeds)' of the main metric in percent, plus GLUE low/high
    averages of the task means (over the group's tasks present; the count is shown when some are missing)."""
    tasks = sorted(agg["task"].dropna().unique(), key=task_sort_key)
    rows = []
    for scenario, sparsity in recipes_of(agg):
        mine = select_recipe(agg, scenario, sparsity)
        row = {"recipe": mine["recipe"].iloc[0]}
        means = {}
        for task in tasks:
            hit = mine[mine["task"] == task]
            header = f"{task} {_task_metric(agg, task)} (%)"
            mean = value_of(hit.iloc[0], "main_metric_value_mean") if len(hit) else math.nan
            row[header] = NOT_MEASURED if math.isnan(mean) else mean_std(
                mean, hit.iloc[0]["main_metric_value_std"], hit.iloc[0]["n_runs"])
            if not math.isnan(mean):
                means[task] = mean
        for group, members in TASK_GROUPS.items():
            if any(t in tasks for t in members):
                got = [means[t] for t in members if t in means]
                row[f"{group} mean (%)"] = NOT_MEASURED if not got else f"{np.mean(got):.2f}" + (
                    "" if len(got) == len(members) else f" ({len(got)}/{len(members)} tasks)")
        rows.append(row)
    return pd.DataFrame(rows)


def efficiency_columns(agg: pd.DataFrame) -> list[Column]:
    """Size, speed and energy columns of the per-recipe table (aggregate means)."""
    return [
        Column("params (M)", "params_total_mean", MILLIONS),
        Column("size reduction (×)", "size_reduction_params_mean", TIMES),
        *speed_columns(agg, "_mean"),
        Column("FLOP bound (×)", "flops_speedup_bound_mean", TIMES),
        Column("training energy (Wh)", "train_kwh_mean", WATT_HOURS),
        Column("inference energy (Wh)", "inference_kwh_mean", WATT_HOURS),
        Column("CO2, training + inference (g)", "total_kg_co2eq_mean", GRAMS),
    ]


def efficiency_table(agg: pd.DataFrame) -> pd.DataFrame:
    """Per recipe, the mean over tasks of the per-task means of size, speed-up and energy."""
    columns = efficiency_columns(agg)
    rows = []
    for scenario, sparsity in recipes_of(agg):
        grp = select_recipe(agg, scenario, sparsity)
        row: dict[str, Any] = {"recipe": grp["recipe"].iloc[0], "tasks": str(grp["task"].nunique())}
        for c in columns:
            have = grp[c.source].dropna() if c.source in grp else pd.Series(dtype=float)
            row[c.header] = c.fmt(have.mean() if len(have) else math.nan)
        rows.append(row)
    return pd.DataFrame(rows, columns=["recipe", "tasks", *[c.header for c in columns]])


def recommendation_table(recs: pd.DataFrame) -> pd.DataFrame:
    """The recommendations (``recommendations.recommendations``) ready to read."""
    speed = [Column(f"speed-up b{b} (×)", f"speedup_b{b}", TIMES) for b in batch_sizes(recs)]
    columns = [
        Column("task", "task"), Column("priority", "priority"), Column("recipe", "recipe"),
        Column("metric (%, mean ± std)", "metric"), Column("Δ vs FT (points)", "delta_vs_ft", POINTS),
        Column("params (M)", "params_M", fixed(2)), Column("on disk (MB)", "megabytes", fixed(1)), *speed, Column("energy (Wh)", "total_kwh", WATT_HOURS),
        Column("CO2 (g)", "total_kg_co2eq", GRAMS), Column("note", "note"),
    ]
    table = render(recs, columns)
    table["recipe"] = [NOT_APPLICABLE if is_missing(r) else r for r in recs["recipe"]]
    return table


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub markdown table of ``df`` as shown (no index); '|' in cells is escaped."""
    def cell(v: Any) -> str:
        return "" if is_missing(v) else str(v).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(map(cell, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


_NUMBER_CELL = re.compile(r"^[-+]?[\d,]*\.?\d+( ± [\d.]+)?( \(n=\d+\)| \(\d+/\d+ tasks\))?$")


def _numeric_column(values: Sequence[Any]) -> bool:
    """Numbers (and '—' / 'n/a') read best right-aligned; words left-aligned."""
    cells = [str(v) for v in values if not is_missing(v) and str(v) not in (NOT_APPLICABLE, NOT_MEASURED)]
    return bool(cells) and all(_NUMBER_CELL.match(c) for c in cells)


def html_table(df: pd.DataFrame, links: Mapping[str, Sequence[str]] | None = None) -> str:
    """``df`` as an HTML table for reading: no index, nothing truncated, text columns left-aligned and
    numbers right-aligned, a first column of short labels never wrapped; ``links`` maps a column to one href
    per row."""
    links = links or {}
    align = ["right" if _numeric_column(list(df[c])) else "left" for c in df.columns]
    short_first = len(df.columns) > 0 and all(len(str(v)) <= 32 for v in df.iloc[:, 0])  # ids, recipes, labels

    def cell(tag: str, j: int, content: str) -> str:
        nowrap = "; white-space: nowrap" if j == 0 and short_first else ""
        return f'<{tag} style="text-align: {align[j]}{nowrap}">{content}</{tag}>'

    head = "".join(cell("th", j, escape(str(c))) for j, c in enumerate(df.columns))
    rows = []
    for i, values in enumerate(df.itertuples(index=False)):
        cells = []
        for j, (col, value) in enumerate(zip(df.columns, values)):
            text = escape(NOT_MEASURED if is_missing(value) else str(value))
            if col in links:
                text = f'<a href="{escape(links[col][i])}">{text}</a>'
            cells.append(cell("td", j, text))
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return f'<table class="dataframe"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
