"""Which recipe to use for which priority: the rules, applied per task to the aggregated runs."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection
from typing import Any

import pandas as pd

from pda.analysis.frame import as_aggregate, batch_sizes, task_sort_key
from pda.analysis.quantized import SUFFIX
from pda.analysis.tables import mean_std
from pda.analysis.values import value_of

KEEP_ACCURACY = "keep accuracy"


@dataclasses.dataclass(frozen=True)
class Priority:
    """A priority ranks the eligible recipes by one aggregate column, lowest or highest first."""

    label: str
    column: str  # an aggregate column, e.g. "params_total_mean"
    best: str  # "min" or "max"


def priorities(agg: pd.DataFrame) -> list[Priority]:
    """The ranked priorities: size, speed at every measured batch size, CO2 (new ones are one more entry)."""
    return [
        Priority("smallest on disk", "bytes_on_disk_mean", "min"),  # bytes, so INT8 (+Q) counts
        *[Priority(f"fastest (batch {b})", f"speedup_b{b}_mean", "max") for b in batch_sizes(agg)],
        Priority("least CO2 (training + inference)", "total_kg_co2eq_mean", "min"),
    ]


def keep_accuracy_label(tolerance: float) -> str:
    return f"{KEEP_ACCURACY} (within {tolerance:g} point{'' if tolerance == 1 else 's'} of FT)"


def eligible_recipes(task_rows: pd.DataFrame, ft_mean: float, tolerance: float) -> pd.DataFrame:
    """Recipes of one task within ``tolerance`` points of FT and, when a base run exists, above the base
    (head-only probe): a recipe no better than the untouched encoder's probe has learned nothing."""
    eligible = task_rows[task_rows["main_metric_value_mean"] >= ft_mean - tolerance]
    base = task_rows[task_rows["scenario"] == "base"]["main_metric_value_mean"].dropna()
    if not base.empty:
        eligible = eligible[(eligible["scenario"] == "FT") | (eligible["main_metric_value_mean"] > base.iloc[0])]
    return eligible


def recommendations(data: pd.DataFrame, tolerance: float = 1.0,
                    collapsed: Collection[tuple[str, str]] = ()) -> pd.DataFrame:
    """Best recipe (scenario + sparsity) per task for "keep accuracy" and each of ``priorities``.

    Eligible recipes on a task are those whose mean main metric is >= FT's mean on that task
    minus ``tolerance`` points and, when a ``base`` run exists, strictly above the base (linear
    probe) mean, so a model collapsed to the majority class never wins on size or speed (with
    F1 as MRPC's metric, predicting "paraphrase" everywhere scores 81.2), and none of
    ``collapsed`` (``(task, recipe)`` pairs, ``analysis.collapsed_recipes``: not significantly
    better than the majority class) nor their INT8 variants. FT itself is eligible. Among
    eligible recipes:

    - keep accuracy: the non-FT recipe with the highest mean metric; if no non-FT recipe is
      eligible, FT is recommended and the note names the best other recipe and its gap;
    - smallest on disk: lowest mean ``bytes_on_disk`` (the weights file: fewer parameters, or INT8 for "+Q");
    - fastest (batch b): highest mean measured ``speedup_b<b>`` (vs the teacher), per batch size measured;
    - least CO2: lowest mean ``total_kg_co2eq`` = the run's own training + inference emissions
      (the teacher's training, which D recipes also need, is not added).

    Ties go to the higher mean metric. Recipes missing the ranked value are skipped (the note
    says how many); without FT runs or without any value the row says it cannot be computed.
    """
    agg = as_aggregate(data)
    ranked = priorities(agg)
    columns = list(_rec_row("", "", None, None, "", ranked).keys())
    rows: list[dict[str, Any]] = []
    for task in sorted(agg["task"].dropna().unique(), key=task_sort_key):
        task_rows = agg[agg["task"] == task]
        ft = task_rows[(task_rows["scenario"] == "FT") & task_rows["main_metric_value_mean"].notna()]
        if ft.empty:
            rows += [_rec_row(task, label, None, None, f"cannot compute: no FT runs with a metric on {task}", ranked)
                     for label in (keep_accuracy_label(tolerance), *[p.label for p in ranked])]
            continue
        ft_mean = value_of(ft.iloc[0], "main_metric_value_mean")
        eligible = eligible_recipes(task_rows, ft_mean, tolerance)
        eligible = eligible[[(task, str(r).removesuffix(" " + SUFFIX)) not in collapsed for r in eligible["recipe"]]]
        rows.append(_keep_accuracy(task, task_rows, eligible, ft.iloc[0], ft_mean, tolerance, ranked))
        rows += [_pick(task, p, eligible, ft_mean, ranked) for p in ranked]
    return pd.DataFrame(rows, columns=columns)


def _keep_accuracy(task: str, task_rows: pd.DataFrame, eligible: pd.DataFrame, ft: pd.Series, ft_mean: float,
                   tolerance: float, ranked: list[Priority]) -> dict[str, Any]:
    label = keep_accuracy_label(tolerance)
    others = eligible[eligible["scenario"] != "FT"]
    if not others.empty:
        best = others.sort_values("main_metric_value_mean", ascending=False, kind="stable").iloc[0]
        note = f"{len(others)} non-FT recipe(s) within {tolerance:g} point(s) of FT"
        return _rec_row(task, label, best, ft_mean, note, ranked)
    rest = task_rows[(task_rows["scenario"] != "FT") & task_rows["main_metric_value_mean"].notna()]
    if rest.empty:
        note = "only FT has a metric on this task"
    else:
        b = rest.sort_values("main_metric_value_mean", ascending=False, kind="stable").iloc[0]
        note = (f"no other recipe within {tolerance:g} point(s) of FT; best other: {b['recipe']} "
                f"({value_of(b, 'main_metric_value_mean') - ft_mean:+.2f} points)")
    return _rec_row(task, label, ft, ft_mean, note, ranked)


def _pick(task: str, priority: Priority, eligible: pd.DataFrame, ft_mean: float,
          ranked: list[Priority]) -> dict[str, Any]:
    name = priority.column.removesuffix("_mean")
    if priority.column not in eligible.columns:
        return _rec_row(task, priority.label, None, ft_mean, f"cannot compute: no '{name}' column", ranked)
    have = eligible[eligible[priority.column].notna()]
    if have.empty:
        return _rec_row(task, priority.label, None, ft_mean, f"cannot compute: no eligible recipe has '{name}'", ranked)
    order = have.sort_values([priority.column, "main_metric_value_mean"], ascending=[priority.best == "min", False],
                             kind="stable")
    skipped = len(eligible) - len(have)
    note = f"{len(have)} eligible recipe(s) ranked" + (f"; {skipped} skipped (no '{name}')" if skipped else "")
    return _rec_row(task, priority.label, order.iloc[0], ft_mean, note, ranked)


def _rec_row(task: str, priority: str, row: pd.Series | None, ft_mean: float | None, note: str,
             ranked: list[Priority]) -> dict[str, Any]:
    mean = value_of(row, "main_metric_value_mean")
    out = {
        "task": task, "priority": priority,
        "recipe": None if row is None else row["recipe"],
        "scenario": None if row is None else row["scenario"],
        "sparsity": value_of(row, "sparsity"),
        "metric": "n/a" if row is None else mean_std(mean, row.get("main_metric_value_std"), row.get("n_runs")),
        "metric_mean": mean, "metric_std": value_of(row, "main_metric_value_std"),
        "delta_vs_ft": mean - ft_mean if ft_mean is not None else math.nan,
        "n_runs": value_of(row, "n_runs"),
        "params_M": value_of(row, "params_total_mean") / 1e6,
        "megabytes": value_of(row, "bytes_on_disk_mean") / 1e6,
    }
    for p in ranked:
        if p.column.startswith("speedup_b"):
            out[p.column.removesuffix("_mean")] = value_of(row, p.column)
    out.update({"total_kwh": value_of(row, "total_kwh_mean"), "total_kg_co2eq": value_of(row, "total_kg_co2eq_mean"),
                "note": note})
    return out
