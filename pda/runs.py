"""Run identity and dependencies: which runs a grid holds, where each lives, and what each needs first."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

from pda.config import SCENARIOS, StudyConfig, sparsity_key
from pda.records import RESULT_FILE, RunRecord, read_record
from pda.scaleout import LOCK_FILE

MODEL_DIR = "model"
STALE_DIR = ".stale"  # runs/.stale/: records made from other inputs, moved aside (the analysis reads runs/*/ only)


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """The grid coordinates of one run."""

    task: str
    scenario: str
    sparsity: float | None
    seed: int

    @property
    def run_id(self) -> str:
        return run_id(self.task, self.scenario, self.sparsity, self.seed)


def run_id(task: str, scenario: str, sparsity: float | None, seed: int) -> str:
    """A readable, filesystem-safe id, e.g. ``mrpc-P+D+A-sp90-seed0`` or ``sst2-FT-seed1``."""
    parts = [task, scenario]
    if SCENARIOS[scenario]["prune"]:
        parts.append(sparsity_key(sparsity))
    parts.append(f"seed{seed}")
    return "-".join(parts)


def runs_dir(cfg: StudyConfig) -> Path:
    return Path(cfg.output_dir) / "runs"


def run_dir(cfg: StudyConfig, rid: str) -> Path:
    return runs_dir(cfg) / rid


def has_result(cfg: StudyConfig, rid: str) -> bool:
    """Whether a result.json exists, whatever inputs made it (see ``is_done``)."""
    return (run_dir(cfg, rid) / RESULT_FILE).is_file()


def recorded_fingerprint(cfg: StudyConfig, rid: str) -> dict[str, Any] | None:
    """The ``fingerprint`` entry of a run's record ({"sha256", "inputs"}); None if it has none or is unreadable."""
    try:
        entry = json.loads((run_dir(cfg, rid) / RESULT_FILE).read_text(encoding="utf-8")).get("fingerprint")
    except (OSError, ValueError, AttributeError):
        return None
    return entry if isinstance(entry, dict) and isinstance(entry.get("sha256"), str) else None


def run_state(cfg: StudyConfig, rid: str, fingerprint: str) -> str:
    """``missing`` (no result), ``done`` (a result made from these inputs) or ``stale`` (made from other
    inputs, or by code that wrote no fingerprint): a stale result is never reused."""
    if not has_result(cfg, rid):
        return "missing"
    entry = recorded_fingerprint(cfg, rid)
    return "done" if entry is not None and entry["sha256"] == fingerprint else "stale"


def is_done(cfg: StudyConfig, rid: str, fingerprint: str) -> bool:
    """A run is done when its result.json (written last, atomically) was made from these inputs."""
    return run_state(cfg, rid, fingerprint) == "done"


def move_aside(cfg: StudyConfig, rid: str) -> Path:
    """Move a stale run's files to ``runs/.stale/<id>-<old fingerprint[:12]>-<time>/``; nothing is deleted.

    The record goes first, so an interruption leaves a run without a result (made again), never
    a new model under an old record. The run's lock, if any, stays: the caller may hold it.
    """
    entry = recorded_fingerprint(cfg, rid)
    old = entry["sha256"][:12] if entry else "none"
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    base = runs_dir(cfg) / STALE_DIR / f"{rid}-{old}-{stamp}"
    target, n = base, 1
    while target.exists():
        n += 1
        target = base.with_name(f"{base.name}-{n}")
    target.mkdir(parents=True)
    source = run_dir(cfg, rid)
    entries = sorted(source.iterdir(), key=lambda p: p.name != RESULT_FILE)
    for path in entries:
        if not path.name.startswith(LOCK_FILE):  # .lock, .lock.break
            os.replace(path, target / path.name)
    return target


def teacher_of(spec: RunSpec) -> RunSpec | None:
    """P and D start from the fine-tuned teacher (FT of the same task and seed)."""
    flags = SCENARIOS[spec.scenario]
    if spec.scenario == "FT" or not (flags["prune"] or flags["distill"]):
        return None
    return RunSpec(spec.task, "FT", None, spec.seed)


def parent_of(spec: RunSpec) -> RunSpec | None:
    """P+D and P+D+A prune the distilled student of the D run (same task and seed)."""
    flags = SCENARIOS[spec.scenario]
    if flags["prune"] and flags["distill"]:
        return RunSpec(spec.task, "D", None, spec.seed)
    return None


def dependencies(spec: RunSpec) -> list[RunSpec]:
    return [dep for dep in (teacher_of(spec), parent_of(spec)) if dep is not None]


def task_grid(cfg: StudyConfig, task: str) -> StudyConfig:
    """The study settings for one task: group and task overrides may change its seeds, scenarios, sparsities."""
    from pda.config import effective_settings

    return effective_settings(cfg, task)


def expand_grid(cfg: StudyConfig) -> list[RunSpec]:
    """Every run the study asks for, plus the runs they depend on, in an order that runs dependencies first."""
    wanted: list[RunSpec] = []
    for task in cfg.tasks:
        grid = task_grid(cfg, task)
        for seed in grid.seeds:
            for scenario in grid.scenarios:
                sparsities = grid.sparsities if SCENARIOS[scenario]["prune"] else [None]
                wanted.extend(RunSpec(task, scenario, sp, seed) for sp in sparsities)
    ordered: list[RunSpec] = []

    def visit(spec: RunSpec) -> None:
        for dep in dependencies(spec):
            visit(dep)
        if spec not in ordered:
            ordered.append(spec)

    for spec in wanted:
        visit(spec)
    return ordered


def study_records(cfg: StudyConfig) -> list[RunRecord]:
    """The finished runs of this study's grid (``expand_grid``), in run-id order.

    An output folder can hold other studies' runs: ``seeds.yaml`` limited to one task writes beside the
    default study. The analysis reads these only, so its majority-class baselines, collapse marks,
    recommendations and Pareto fronts cover exactly the tasks and runs the parameter file names.
    """
    ids = sorted({spec.run_id for spec in expand_grid(cfg)})
    return [read_record(run_dir(cfg, rid)) for rid in ids if has_result(cfg, rid)]
