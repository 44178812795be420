"""A study: the grid of runs, each executed as a parameterised notebook by papermill, resumable."""

from __future__ import annotations

import dataclasses
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from pda.config import StudyConfig, load_params
from pda.runs import RunSpec, dependencies, expand_grid, is_done, run_dir

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
KERNEL_NAME = "pda"


def notebook_for(spec: RunSpec) -> str:
    """FT is the teacher notebook; every other scenario goes through the one scenario notebook."""
    return "01_teacher.ipynb" if spec.scenario == "FT" else "02_scenario.ipynb"


@dataclasses.dataclass
class Outcome:
    """How one run of a study ended: done (now or before), failed, or skipped because a dependency failed."""

    spec: RunSpec
    status: str  # "done", "cached", "failed", "skipped"
    notebook: Path | None = None
    error: str | None = None
    seconds: float = 0.0


def execute_notebook(notebook: str, output: Path, parameters: dict, kernel_name: str = KERNEL_NAME) -> None:
    """Run one notebook with papermill; the executed copy is the record of what ran."""
    import papermill

    output.parent.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(
        str(NOTEBOOKS_DIR / notebook), str(output), parameters=parameters, kernel_name=kernel_name,
        cwd=str(NOTEBOOKS_DIR), progress_bar=False, log_output=False,
    )


def run_parameters(params_file: Path, spec: RunSpec) -> dict:
    return {"params_file": str(Path(params_file).resolve()), "task": spec.task, "scenario": spec.scenario,
            "sparsity": spec.sparsity, "seed": spec.seed}


def execute_run(params_file: Path, cfg: StudyConfig, spec: RunSpec, kernel_name: str = KERNEL_NAME) -> Outcome:
    """Execute one run's notebook unless its result already exists; never raises for a failed run."""
    rid = spec.run_id
    if is_done(cfg, rid):
        return Outcome(spec, "cached", run_dir(cfg, rid) / "notebook.ipynb")
    out_nb = run_dir(cfg, rid) / "notebook.ipynb"
    start = time.perf_counter()
    try:
        execute_notebook(notebook_for(spec), out_nb, run_parameters(params_file, spec), kernel_name)
    except Exception as exc:  # noqa: BLE001 - a failed run is reported, the study goes on
        message = str(exc).strip().splitlines()
        return Outcome(spec, "failed", out_nb, message[-1] if message else type(exc).__name__,
                       time.perf_counter() - start)
    if not is_done(cfg, rid):
        return Outcome(spec, "failed", out_nb, "notebook finished without writing result.json",
                       time.perf_counter() - start)
    return Outcome(spec, "done", out_nb, seconds=time.perf_counter() - start)


def run_serial(params_file: Path, cfg: StudyConfig, specs: list[RunSpec],
               execute: Callable[[RunSpec], Outcome] | None = None) -> list[Outcome]:
    """Runs in dependency order; a run whose dependency failed is skipped with the reason."""
    from tqdm import tqdm

    execute = execute or (lambda s: execute_run(params_file, cfg, s))
    outcomes: dict[RunSpec, Outcome] = {}
    bar = tqdm(specs, desc="study", unit="run")
    for spec in bar:
        bad = [d for d in dependencies(spec) if d in outcomes and outcomes[d].status in ("failed", "skipped")]
        if bad:
            outcomes[spec] = Outcome(spec, "skipped", error=f"dependency {bad[0].run_id} {outcomes[bad[0]].status}")
        else:
            bar.set_postfix_str(spec.run_id)
            outcomes[spec] = execute(spec)
        if outcomes[spec].status == "failed":
            tqdm.write(f"FAILED {spec.run_id}: {outcomes[spec].error} (see {outcomes[spec].notebook})")
    return [outcomes[s] for s in specs]


def run_study(params_file: Path, workers: int = 0, scheduler: str | None = None,
              kernel_name: str = KERNEL_NAME) -> list[Outcome]:
    """Validate the parameters, execute the data notebook, every run, then the analysis notebook."""
    cfg = load_params(params_file)
    specs = expand_grid(cfg)
    outcomes = run_serial(params_file, cfg, specs, lambda s: execute_run(params_file, cfg, s, kernel_name))
    analysis_nb = Path(cfg.output_dir) / "notebooks" / "99_analysis.ipynb"
    try:
        execute_notebook("99_analysis.ipynb", analysis_nb, {"params_file": str(Path(params_file).resolve())},
                         kernel_name)
    except Exception as exc:  # noqa: BLE001
        print(f"analysis notebook failed: {exc} (see {analysis_nb})", file=sys.stderr)
        outcomes.append(Outcome(RunSpec("*", "analysis", None, 0), "failed", analysis_nb, str(exc)))
    return outcomes


def summarize(outcomes: list[Outcome]) -> str:
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    lines = [", ".join(f"{n} {status}" for status, n in sorted(counts.items()))]
    for o in outcomes:
        if o.status in ("failed", "skipped"):
            where = f" (notebook: {o.notebook})" if o.notebook else ""
            lines.append(f"  {o.status.upper()} {o.spec.run_id}: {o.error}{where}")
    return "\n".join(lines)
