"""A study: the grid of runs, each executed as a parameterised notebook by papermill, resumable.

Serial and parallel studies share everything but the executor: ``attempt`` decides whether a
run is skipped (a dependency failed) or executed, ``execute_run`` executes it under its
lock unless its result exists, and ``Progress`` reports. Serially the runs go in grid order
(dependencies first); in parallel each is a Dask task that waits for its dependencies.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pda import fingerprint, retime, scaleout, site
from pda.config import RunConfig, StudyConfig, check_data, for_run, load_params, share_cores
from pda.kernels import WarmKernel
from pda.precision import precision_note, read_cpuinfo
from pda.runs import RunSpec, dependencies, expand_grid, is_done, move_aside, run_dir, run_state
from pda.train import pick_device

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
    moved_aside: Path | None = None  # where a stale result of this run went (runs/.stale/...)


def execute_notebook(notebook: str, output: Path, parameters: dict, kernel_name: str = KERNEL_NAME,
                     kernel: WarmKernel | None = None) -> None:
    """Run one notebook with papermill; the executed copy is the record of what ran.

    With ``kernel`` the notebook runs in that warm kernel (see ``pda.kernels``), else in a new one,
    started the same way (``pda.kernels.kernel_environment``) and shut down after.
    """
    if kernel is None:
        with WarmKernel(kernel_name, NOTEBOOKS_DIR) as fresh:
            return execute_notebook(notebook, output, parameters, kernel_name, fresh)
    import papermill

    output.parent.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(  # no widget state saved: progress widgets leave only their final line
        str(NOTEBOOKS_DIR / notebook), str(output), parameters=parameters, kernel_name=kernel_name,
        cwd=str(NOTEBOOKS_DIR), progress_bar=False, log_output=False, store_widget_state=False,
        km=kernel.manager(),
    )


def notebook_path(path: Path) -> str:
    """``path`` as the notebooks name it: relative to notebooks/ (their working directory) when it lies in
    the project, so an executed notebook shows no machine's folders; absolute when it lies elsewhere."""
    path = Path(path).resolve()
    return os.path.relpath(path, NOTEBOOKS_DIR) if path.is_relative_to(NOTEBOOKS_DIR.parent) else str(path)


def run_parameters(params_file: Path, spec: RunSpec, torch_threads: int | None = None) -> dict:
    """The notebook's parameters; ``torch_threads`` only when a parallel study caps it."""
    params = {"params_file": notebook_path(params_file), "task": spec.task, "scenario": spec.scenario,
              "sparsity": spec.sparsity, "seed": spec.seed}
    if torch_threads is not None:
        params["torch_threads"] = torch_threads
    return params


def torch_threads_for(cfg: StudyConfig, budget: int | None) -> int | None:
    """The parameter file's ``torch_threads``, lowered to the run's share of the cores if needed."""
    return None if budget is None else share_cores(cfg, budget).torch_threads


def run_config(cfg: StudyConfig, spec: RunSpec) -> RunConfig:
    return for_run(cfg, spec.task, spec.scenario, spec.sparsity, spec.seed)


def execute_run(params_file: Path, cfg: StudyConfig, spec: RunSpec, kernel_name: str = KERNEL_NAME,
                thread_budget: int | None = None, stale_after: float = scaleout.STALE_AFTER_S,
                kernel: WarmKernel | None = None) -> Outcome:
    """Execute one run's notebook unless a result made from the same inputs exists; never raises for a failed run.

    The run's lock makes a second attempt (a resubmitted task, a second study) wait for the
    first and then find its result, so a run is made once. A result made from other inputs
    (its fingerprint differs) is moved aside under the lock and the run made again. On a Dask
    worker without an explicit ``thread_budget`` the worker's own share of threads is used.
    """
    rid = spec.run_id
    out_nb = run_dir(cfg, rid) / "notebook.ipynb"
    expected = fingerprint.fingerprint(run_config(cfg, spec))
    if is_done(cfg, rid, expected):
        return Outcome(spec, "cached", out_nb)
    threads = torch_threads_for(cfg, thread_budget or scaleout.worker_thread_budget())
    with scaleout.RunLock(run_dir(cfg, rid), stale_after=stale_after):
        state = run_state(cfg, rid, expected)
        if state == "done":  # made by whoever held the lock while we waited
            return Outcome(spec, "cached", out_nb)
        moved = move_aside(cfg, rid) if state == "stale" else None
        start = time.perf_counter()
        pool = scaleout.worker_kernels() if kernel is None else None  # on a Dask worker: its warm kernels
        try:
            with pool.borrow() if pool is not None else contextlib.nullcontext(kernel) as warm:
                execute_notebook(notebook_for(spec), out_nb, run_parameters(params_file, spec, threads), kernel_name,
                                 warm)
        except Exception as exc:  # noqa: BLE001 - a failed run is reported, the study goes on
            message = str(exc).strip().splitlines()
            return Outcome(spec, "failed", out_nb, message[-1] if message else type(exc).__name__,
                           time.perf_counter() - start, moved)
    state = run_state(cfg, rid, expected)
    if state != "done":
        why = ("notebook finished without writing result.json" if state == "missing" else
               "notebook wrote a record whose fingerprint differs from the study's: "
               + fingerprint.why_stale(run_config(cfg, spec)))
        return Outcome(spec, "failed", out_nb, why, time.perf_counter() - start, moved)
    return Outcome(spec, "done", out_nb, seconds=time.perf_counter() - start, moved_aside=moved)


def retire_stale(cfg: StudyConfig, specs: list[RunSpec], stale_after: float = scaleout.STALE_AFTER_S) -> list[str]:
    """Before any run starts: move aside every result in the grid made from other inputs, one line each.

    A run whose lock is held (another study is making it now) is left to ``execute_run``, which
    checks again under the lock.
    """
    lines = []
    for spec in specs:
        rid = spec.run_id
        run = run_config(cfg, spec)
        if run_state(cfg, rid, fingerprint.fingerprint(run)) != "stale":
            continue
        why = fingerprint.why_stale(run)
        lock = scaleout.RunLock(run_dir(cfg, rid), stale_after=stale_after)
        if not lock.try_acquire() and not (scaleout.break_if_stale(lock.path, stale_after) and lock.try_acquire()):
            lines.append(f"stale {rid} ({why}): being made by another process now; checked again when it ends")
            continue
        try:  # under the lock, look again: it may have been made while we waited
            target = move_aside(cfg, rid) if run_state(cfg, rid, fingerprint.fingerprint(run)) == "stale" else None
        finally:
            lock.release()
        if target is not None:
            lines.append(f"stale {rid} ({why}): moved to {target}; it runs again")
    return lines


def attempt(spec: RunSpec, execute: Callable[[RunSpec], Outcome], *dependency_outcomes: Outcome) -> Outcome:
    """Skip a run whose dependency failed or was skipped (naming it), else execute it.

    The one place this rule lives: the serial loop calls it in grid order, Dask calls it as
    the task of each run, with the outcomes of the dependencies' tasks as arguments.
    """
    bad = [o for o in dependency_outcomes if o.status in ("failed", "skipped")]
    if bad:
        return Outcome(spec, "skipped", error=f"dependency {bad[0].spec.run_id} {bad[0].status}")
    return execute(spec)


class Progress:
    """One tqdm bar over the runs, with done / failed / skipped / running counts in its postfix."""

    def __init__(self, total: int) -> None:
        from tqdm.auto import tqdm

        self.counts = {"done": 0, "failed": 0, "skipped": 0, "running": 0}
        self.bar = tqdm(total=total, desc="study", unit="run")
        self._write = tqdm.write

    def running(self, n: int) -> None:
        if n != self.counts["running"]:
            self.counts["running"] = n
            self.bar.set_postfix(self.counts)

    def finished(self, outcome: Outcome) -> None:
        key = "done" if outcome.status == "cached" else outcome.status
        self.counts[key] += 1
        self.bar.set_postfix(self.counts, refresh=False)
        self.bar.update(1)
        if outcome.status == "failed":
            self._write(f"FAILED {outcome.spec.run_id}: {outcome.error} (see {outcome.notebook})")

    def close(self) -> None:
        self.bar.close()


def run_serial(params_file: Path, cfg: StudyConfig, specs: list[RunSpec],
               execute: Callable[[RunSpec], Outcome] | None = None) -> list[Outcome]:
    """Runs in grid order (dependencies first), in this process."""
    execute = execute or functools.partial(execute_run, params_file, cfg)
    outcomes: dict[RunSpec, Outcome] = {}
    progress = Progress(len(specs))
    try:
        for spec in specs:
            progress.running(1)
            outcomes[spec] = attempt(spec, execute, *[outcomes[d] for d in dependencies(spec) if d in outcomes])
            progress.running(0)
            progress.finished(outcomes[spec])
    finally:
        progress.close()
    return [outcomes[s] for s in specs]


def run_parallel(client: Any, cfg: StudyConfig, specs: list[RunSpec], execute: Callable[[RunSpec], Outcome],
                 poll: float = 1.0) -> list[Outcome]:
    """Every run as a Dask task that depends on its dependencies' tasks; outcomes in grid order.

    ``execute`` runs on the workers, so it must pickle (a ``functools.partial`` of
    ``execute_run`` does). A task that raises (a worker lost too often: ``KilledWorker``) is a
    failed run; Dask then errs its dependents too, which are reported as skipped.
    """
    futures = scaleout.submit_runs(client, specs, dependencies, attempt, execute)
    outcomes: dict[RunSpec, Outcome] = {}
    progress = Progress(len(specs))
    try:
        while len(outcomes) < len(specs):
            for spec in specs:  # grid order: a dependency's outcome is recorded before its dependents'
                future = futures[spec]
                if spec in outcomes or not future.done():
                    continue
                if future.status == "finished":
                    outcomes[spec] = future.result()
                else:
                    outcomes[spec] = _erred(spec, future, [outcomes.get(d) for d in dependencies(spec)])
                progress.finished(outcomes[spec])
            pending = [s for s in specs if s not in outcomes]
            progress.running(sum((run_dir(cfg, s.run_id) / scaleout.LOCK_FILE).exists() for s in pending))
            if pending:
                time.sleep(poll)
    finally:
        progress.close()
        for future in futures.values():
            future.cancel()
    return [outcomes[s] for s in specs]


def _erred(spec: RunSpec, future: Any, dependency_outcomes: list[Outcome | None]) -> Outcome:
    bad = [o for o in dependency_outcomes if o is not None and o.status in ("failed", "skipped")]
    if bad:
        return Outcome(spec, "skipped", error=f"dependency {bad[0].spec.run_id} {bad[0].status}")
    try:
        exc = future.exception()
    except BaseException as cancelled:  # noqa: BLE001 - a cancelled future has no exception to give
        exc = cancelled
    return Outcome(spec, "failed", error=f"{type(exc).__name__}: {exc}")


def precision_lines(cfg: StudyConfig, specs: list[RunSpec], device: torch.device,
                    cpuinfo: str | None = None) -> list[str]:
    """What the runs will train in, one line per precision they request (an override may change it for some)."""
    runs: dict[str, list[str]] = {}
    for spec in specs:
        requested = run_config(cfg, spec).study.precision
        runs.setdefault(requested, []).append(spec.run_id)
    if cpuinfo is None and device.type == "cpu":
        cpuinfo = read_cpuinfo()
    if len(runs) <= 1:
        return [precision_note(next(iter(runs), cfg.precision), device, cpuinfo)]
    return [f"{len(ids)} run(s) ({ids[0]}{', ...' if len(ids) > 1 else ''}): {precision_note(p, device, cpuinfo)}"
            for p, ids in runs.items()]


def run_study(params_file: Path, workers: int = 0, scheduler: Any = None, kernel_name: str = KERNEL_NAME,
              analysis: bool = True, stale_after: float = scaleout.STALE_AFTER_S,
              warm_kernel: bool = True) -> list[Outcome]:
    """Validate the parameters, execute every run, then the analysis notebook.

    Serial by default, every notebook in one warm kernel (``warm_kernel``: no kernel start and
    imports per run; ``False`` starts a fresh kernel per notebook); ``workers`` > 0 runs them on a
    local Dask cluster of that many single-threaded processes, each run with ``cores // workers``
    torch threads, each worker with warm kernels of its own; ``scheduler`` (an address or a cluster
    object) sends them to an existing Dask cluster instead.
    """
    cfg = load_params(params_file)  # every setting and data file checked: a fault stops here, before any kernel
    print(check_data(cfg).summary(), flush=True)
    specs = expand_grid(cfg)
    for line in retire_stale(cfg, specs, stale_after):
        print(line, flush=True)
    if scheduler is None:  # the runs train on this machine
        for line in precision_lines(cfg, specs, pick_device(cfg.device)):
            print(line, flush=True)
    kernel = WarmKernel(kernel_name, NOTEBOOKS_DIR) if warm_kernel and scheduler is None and workers <= 0 else None
    try:
        outcomes = _run_grid(params_file, cfg, specs, workers, scheduler, kernel_name, stale_after, kernel,
                             warm_kernel)
        outcomes.extend(run_deferred_timing(cfg, specs))
        if analysis:
            outcomes.extend(run_analysis(params_file, cfg, kernel_name, kernel))
            print(site.site_note(Path(cfg.output_dir), [spec.run_id for spec in specs], params_file), flush=True)
    finally:
        if kernel is not None:
            kernel.close()
    return outcomes


def _run_grid(params_file: Path, cfg: StudyConfig, specs: list[RunSpec], workers: int, scheduler: Any,
              kernel_name: str, stale_after: float, kernel: WarmKernel | None,
              warm_kernels: bool = True) -> list[Outcome]:
    if scheduler is None and workers <= 0:
        execute = functools.partial(execute_run, params_file, cfg, kernel_name=kernel_name, stale_after=stale_after,
                                    kernel=kernel)
        return run_serial(params_file, cfg, specs, execute)
    else:
        budget = scaleout.thread_budget(workers) if scheduler is None else None  # remote: each worker decides
        execute = functools.partial(execute_run, params_file, cfg, kernel_name=kernel_name,
                                    thread_budget=budget, stale_after=stale_after)
        with scaleout.connect(workers, scheduler) as client:
            if warm_kernels:
                client.register_plugin(scaleout.WarmKernelPlugin(kernel_name, NOTEBOOKS_DIR))
            print(scaleout.dashboard_note(client), flush=True)
            if budget is not None:
                cores = scaleout.cpu_count()
                crowded = " (more workers than cores: runs will compete)" if workers > cores else ""
                threads = torch_threads_for(cfg, budget)  # the file's torch_threads, if lower than the share
                print(f"{workers} workers, {threads} torch thread(s) per run on {cores} cores{crowded}", flush=True)
            outcomes = run_parallel(client, cfg, specs, execute)
            if warm_kernels:  # not in a finally: a cluster that failed the study must not hide why behind this call
                client.run(scaleout.close_worker_kernels)
            return outcomes


def run_deferred_timing(cfg: StudyConfig, specs: list[RunSpec]) -> list[Outcome]:
    """Time the models of runs that left it to the study (``measure.timing: after_study``), now that no run
    trains beside them; in this process, one model at a time. Its failure is one more failed outcome."""
    start = time.perf_counter()
    try:
        timed = retime.time_after_study(cfg, specs, log=lambda line: print(line, flush=True))
    except Exception as exc:  # noqa: BLE001
        print(f"timing after the study failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return [Outcome(RunSpec("*", "timing", None, 0), "failed", None, f"{type(exc).__name__}: {exc}")]
    if timed:
        print(f"{len(timed)} model(s) timed after the study in {(time.perf_counter() - start) / 60:.1f} min", flush=True)
    return []


def run_analysis(params_file: Path, cfg: StudyConfig, kernel_name: str = KERNEL_NAME,
                 kernel: WarmKernel | None = None) -> list[Outcome]:
    """The analysis notebook over whatever runs finished; its failure is one more failed outcome."""
    analysis_nb = Path(cfg.output_dir) / "notebooks" / "99_analysis.ipynb"
    try:
        execute_notebook("99_analysis.ipynb", analysis_nb, {"params_file": notebook_path(params_file)}, kernel_name,
                         kernel)
    except Exception as exc:  # noqa: BLE001
        print(f"analysis notebook failed: {exc} (see {analysis_nb})", file=sys.stderr)
        return [Outcome(RunSpec("*", "analysis", None, 0), "failed", analysis_nb, str(exc))]
    return []


# The study's steps after its runs, as their outcomes name them (a RunSpec with task "*")
STEPS = {"timing": "timing after the study", "analysis": "analysis notebook"}


def summarize(outcomes: list[Outcome]) -> str:
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    lines = [", ".join(f"{n} {status}" for status, n in sorted(counts.items()))]
    for o in outcomes:
        if o.moved_aside is not None:  # found stale only when its turn came (its lock was busy at start)
            lines.append(f"  STALE {o.spec.run_id}: its old result was moved to {o.moved_aside}")
        if o.status in ("failed", "skipped"):
            where = f" (notebook: {o.notebook})" if o.notebook else ""
            name = STEPS.get(o.spec.scenario) or o.spec.run_id
            lines.append(f"  {o.status.upper()} {name}: {o.error}{where}")
    return "\n".join(lines)
