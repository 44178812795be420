"""What the figures show, computed once from the runs: the plotting code only draws these numbers."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Collection, Iterable, Mapping, Sequence

import pandas as pd

from pda.analysis.carbon import energy_is_estimated
from pda.analysis.collapse import collapsed_counts, collapsed_recipes
from pda.analysis.frame import RECIPE_KEYS, aggregate, batch_sizes, recipe_label
from pda.analysis.structure import survival_matrix
from pda.baselines import MajorityBaseline
from pda.records import RunRecord


@dataclasses.dataclass(frozen=True)
class FigureData:
    """The inputs of every figure.

    ``by_task``: per (task, scenario, sparsity) mean/std/n over seeds (``aggregate``) plus
    ``on_front`` (on that task's accuracy-vs-size Pareto front). ``by_recipe``: per (scenario,
    sparsity) over all tasks and seeds. ``survival``: ``survival_matrix`` averaged over seeds.
    """

    by_task: pd.DataFrame
    by_recipe: pd.DataFrame
    survival: dict[Any, dict[str, Any]]
    batch_sizes: tuple[int, ...]
    teacher_params: float  # mean over runs, NaN when no run recorded it
    speed_context: str  # device and threads of the speed measurements, '' when none
    energy_modes: tuple[str, ...]
    majority: Mapping[str, float] = dataclasses.field(default_factory=dict)  # task -> majority class's main metric
    collapsed: Mapping[tuple[str, str], int] = dataclasses.field(default_factory=dict)  # (task, recipe) -> runs collapsed

    @property
    def energy_estimated(self) -> bool:
        return energy_is_estimated(self.energy_modes)

    @property
    def empty(self) -> bool:
        return self.by_task.empty


def pareto_front(params: Sequence[float], metric: Sequence[float]) -> list[int]:
    """Indices of points not dominated (no other point has <= params and >= metric with one strict),
    ordered by params."""
    pts = [(p, m, i) for i, (p, m) in enumerate(zip(params, metric)) if not (math.isnan(p) or math.isnan(m))]
    front, best = [], -math.inf
    for p, m, i in sorted(pts, key=lambda t: (t[0], -t[1])):
        if m > best:
            front.append(i)
            best = m
    return front


def _on_front(by_task: pd.DataFrame, excluded: Collection[tuple[str, str]] = ()) -> pd.Series:
    """Per task, the recipes on the accuracy-vs-size Pareto front; ``excluded`` (task, recipe label) pairs,
    the collapsed recipes, cannot be on it (as the recommendations never pick them)."""
    flags = pd.Series(False, index=by_task.index)
    if by_task.empty:
        return flags
    for task, rows in by_task.groupby("task", sort=False):
        rows = rows[[(task, recipe_label(s, p)) not in excluded for s, p in zip(rows["scenario"], rows["sparsity"])]]
        params = [float(v) for v in rows["params_total_mean"]]
        metric = [float(v) for v in rows["main_metric_value_mean"]]
        flags[rows.index[pareto_front(params, metric)]] = True
    return flags


def _speed_context(frame: pd.DataFrame) -> str:
    devices = frame["speed_device"].dropna().unique() if "speed_device" in frame else []
    threads = frame["speed_threads"].dropna().unique() if "speed_threads" in frame else []
    parts = [", ".join(map(str, devices))] if len(devices) else []
    if len(threads):
        parts.append(f"{', '.join(f'{t:g}' for t in threads)} thread(s)")
    sources = frame["speed_source"].dropna() if "speed_source" in frame else pd.Series(dtype=object)
    if len(sources):  # how the machine was loaded while timing (pda.retime)
        retimed = int((sources == "retime").sum())
        parts.append("timed after training, machine idle" if retimed == len(sources) else "timed during each run"
                     if not retimed else f"{retimed} of {len(sources)} runs timed after training, machine idle")
    return "; ".join(parts)


def figure_data(frame: pd.DataFrame, records: Iterable[RunRecord], majority: Mapping[str, MajorityBaseline] | None = None,
                collapse: pd.DataFrame | None = None) -> FigureData:
    """Compute every figure's numbers from the run frame (``records_frame``) and the records (structure);
    with the majority baselines and the ``collapse_table``, Fig. 2 draws the majority class and marks
    collapsed runs, and recipes that collapsed in most seeds are kept off Fig. 7's Pareto front."""
    by_task = aggregate(frame)
    collapse = pd.DataFrame() if collapse is None else collapse
    by_task = by_task.assign(on_front=_on_front(by_task, collapsed_recipes(collapse)))
    teacher = frame["teacher_params_total"].dropna() if "teacher_params_total" in frame else pd.Series(dtype=float)
    modes = set()
    for phase in ("train", "inference"):
        if f"{phase}_energy_mode" in frame:
            modes |= set(frame[f"{phase}_energy_mode"].dropna())
    return FigureData(
        by_task=by_task, by_recipe=aggregate(frame, RECIPE_KEYS), survival=survival_matrix(records),
        batch_sizes=tuple(batch_sizes(frame)), teacher_params=float(teacher.mean()) if len(teacher) else math.nan,
        speed_context=_speed_context(frame), energy_modes=tuple(sorted(modes)),
        majority={task: b.main_metric for task, b in (majority or {}).items()}, collapsed=collapsed_counts(collapse),
    )
