"""Where a study's time went: each run's wall time from its executed notebook, per task and scenario.

Papermill stamps every executed notebook with its start and end; these, not a clock of the study
driver, are what a parallel study (runs overlapping on several workers) can be timed by.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Iterable

import pandas as pd

from pda.analysis.frame import SCENARIO_ORDER, task_sort_key
from pda.records import RunRecord

NOTEBOOK = "notebook.ipynb"


def run_times(records: Iterable[RunRecord], runs_dir: Path) -> pd.DataFrame:
    """One row per run whose executed notebook has papermill's times: start, end, seconds, of which training."""
    rows = []
    for r in records:
        path = Path(runs_dir) / r.run_id / NOTEBOOK
        if not path.exists():
            continue
        meta = json.loads(path.read_text(encoding="utf-8")).get("metadata", {}).get("papermill", {})
        if not meta.get("start_time") or not meta.get("end_time"):
            continue
        start, end = datetime.fromisoformat(meta["start_time"]), datetime.fromisoformat(meta["end_time"])
        rows.append({"run": r.run_id, "task": r.task, "scenario": r.scenario, "start": start, "end": end,
                     "seconds": (end - start).total_seconds(), "train_seconds": r.train_time_s or 0.0})
    return pd.DataFrame(rows, columns=["run", "task", "scenario", "start", "end", "seconds", "train_seconds"])


def time_table(times: pd.DataFrame) -> pd.DataFrame:
    """Minutes of run time per task (rows, then 'all') and scenario (summed over sparsities and seeds),
    with the training share and each task's span from its first run's start to its last run's end."""
    if times.empty:
        return pd.DataFrame()
    present = set(times["scenario"])
    order = [s for s in SCENARIO_ORDER if s in present] + sorted(present - set(SCENARIO_ORDER))
    tasks = sorted(set(times["task"]), key=task_sort_key)
    rows = []
    for task, group in [*((t, times[times["task"] == t]) for t in tasks), ("all", times)]:
        busy = group.groupby("scenario")["seconds"].sum()
        row = {"task": task, "runs": len(group)}
        row.update({s: f"{busy.get(s, 0.0) / 60:.1f}" for s in order})
        row["run time (min)"] = f"{group['seconds'].sum() / 60:.1f}"
        row["of which training"] = f"{100 * group['train_seconds'].sum() / group['seconds'].sum():.0f} %"
        row["span (min)"] = f"{(group['end'].max() - group['start'].min()).total_seconds() / 60:.1f}"
        rows.append(row)
    return pd.DataFrame(rows)


def time_sentence(times: pd.DataFrame) -> str:
    """The runs' wall time (first start to last end) and how many ran at once on average."""
    if times.empty:
        return "No executed notebooks with papermill's start and end times were found."
    span = (times["end"].max() - times["start"].min()).total_seconds()
    busy = times["seconds"].sum()
    return (f"{len(times)} runs in {span / 60:.1f} min of wall time, from the first run's start to the last one's end "
            f"({busy / 60:.1f} min of run time, {busy / span:.2f} runs at once on average; the study's set-up and "
            "its analysis notebook are not included). Runs reused from an earlier study keep their old times, "
            "so the span is the study's wall time only when every run was made by it.")
