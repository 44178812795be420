"""Run identity and dependencies: which runs a grid holds, where each lives, and what each needs first."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from pda.config import SCENARIOS, StudyConfig
from pda.records import RESULT_FILE

MODEL_DIR = "model"


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
        parts.append(f"sp{round(float(sparsity) * 100):02d}")
    parts.append(f"seed{seed}")
    return "-".join(parts)


def runs_dir(cfg: StudyConfig) -> Path:
    return Path(cfg.output_dir) / "runs"


def run_dir(cfg: StudyConfig, rid: str) -> Path:
    return runs_dir(cfg) / rid


def is_done(cfg: StudyConfig, rid: str) -> bool:
    """A run is done when its result.json exists (it is written last, atomically)."""
    return (run_dir(cfg, rid) / RESULT_FILE).is_file()


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
    from pda.config import for_run

    return for_run(cfg, task, "FT", None, 0).study


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
