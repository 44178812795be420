"""Did a run learn anything? Its main metric next to the majority-class baseline and its teacher's."""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from pda.analysis.frame import recipe_label, sort_recipes
from pda.analysis.tables import NOT_MEASURED
from pda.analysis.values import is_missing

MARGIN = 1.0  # points: a run this close to the majority class (or below it) has collapsed


def collapse_table(frame: pd.DataFrame, majority: Mapping[str, float], margin: float = MARGIN) -> pd.DataFrame:
    """One row per run other than FT on a task with a majority baseline: 'collapsed' is yes when the run
    is within ``margin`` points of the majority class (or below) while its task's FT teacher beats that
    class by more than ``2 * margin`` points (otherwise the task itself is not learned, and it says so)."""
    rows = []
    teachers = frame[frame["scenario"] == "FT"].groupby("task")["main_metric_value"].mean()
    for _, r in sort_recipes(frame).iterrows():
        if r["scenario"] == "FT" or r["task"] not in majority or is_missing(r["main_metric_value"]):
            continue
        floor, teacher = majority[r["task"]], teachers.get(r["task"])
        learned = teacher is not None and teacher - floor > 2 * margin
        at_floor = r["main_metric_value"] <= floor + margin
        verdict = ("yes" if at_floor else "no") if learned else "teacher not above the majority class"
        rows.append({
            "run": r["run_id"], "task": r["task"], "recipe": recipe_label(r["scenario"], r["sparsity"]),
            "main metric": r["main_metric"], "run (%)": f"{r['main_metric_value']:.2f}",
            "majority class (%)": f"{floor:.2f}",
            "FT teacher (%)": NOT_MEASURED if teacher is None else f"{teacher:.2f}",
            "collapsed to the majority class": verdict,
        })
    return pd.DataFrame(rows)
