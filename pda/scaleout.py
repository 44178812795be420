"""Running a study's runs in parallel: Dask clusters, one run per worker, and a per-run lock.

Dask does the scheduling: every run is one ``client.submit`` whose arguments include the
futures of the runs it depends on (its FT teacher, the D student it prunes), so Dask starts
it only when they have finished, and runs everything else concurrently. The lock is not
Dask's business: it protects ``runs/<id>/`` on the shared disk against a second attempt at
the same run (a lost worker whose task Dask resubmits, two studies started by hand).

On a SLURM cluster, with ``outputs/``, the parameter file and the ``pda`` kernel visible
from every node, keep a Python session open with the cluster and point the study at it::

    from dask_jobqueue import SLURMCluster

    cluster = SLURMCluster(
        cores=8, processes=1, memory="32GB", walltime="24:00:00",
        job_extra_directives=["--gres=gpu:1"],
        worker_extra_args=["--resources", "run=1"],  # one run per job, all 8 cores for it
    )
    cluster.scale(jobs=16)
    print(cluster.scheduler_address)  # e.g. tcp://10.1.2.3:8786

    # then, in a shell:  python -m pda study parameters/paper.yaml --scheduler tcp://10.1.2.3:8786
    # or in the same session:  pda.study.run_study("parameters/paper.yaml", scheduler=cluster)

A worker that advertises the ``run`` resource gets one run at a time, with all its threads
for torch; a worker without it runs one run per Dask thread, one torch thread each.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from distributed import Client, LocalCluster, WorkerPlugin, get_worker

from pda.kernels import KernelPool

LOCK_FILE = ".lock"
STALE_AFTER_S = 600.0  # a lock whose heartbeat is older than this belongs to a lost worker
POLL_S = 2.0  # how often a waiting attempt looks at a lock held by someone else
RUN_RESOURCE = "run"


# --------------------------------------------------------------------------- the per-run lock


class RunLock:
    """``runs/<id>/.lock``, created with O_CREAT|O_EXCL: only one process can hold it.

    The file holds host, pid, start time and a random token. While held, a heartbeat thread
    touches it, so its mtime says when its holder was last alive. A lock is stale, and may be
    broken, when its heartbeat is older than ``stale_after`` seconds (a holder lost on any
    host) or when it names a dead pid on this host (a crashed process, found at once).
    ``acquire`` waits for a live holder: the run is being made, and the caller (a dependent,
    a resubmission) wants its result rather than a second copy.
    """

    def __init__(self, run_dir: Path, stale_after: float = STALE_AFTER_S, poll: float | None = None) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self.stale_after, self.poll = stale_after, POLL_S if poll is None else poll
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def try_acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        info = {"host": socket.gethostname(), "pid": os.getpid(), "token": self.token,
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(info, handle)
        self._stop.clear()
        self._heartbeat = threading.Thread(target=self._beat, name=f"lock {self.path.parent.name}", daemon=True)
        self._heartbeat.start()
        return True

    def acquire(self) -> None:
        """Take the lock, breaking it if stale, else waiting until its holder lets go."""
        while not self.try_acquire():
            if not break_if_stale(self.path, self.stale_after):
                time.sleep(self.poll)

    def release(self) -> None:
        """Stop the heartbeat and remove the lock if it is still ours (it may have been broken)."""
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        if (read_lock(self.path) or {}).get("token") == self.token:
            self.path.unlink(missing_ok=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.stale_after / 5):
            with contextlib.suppress(FileNotFoundError):
                os.utime(self.path)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def read_lock(path: Path) -> dict[str, Any] | None:
    """The holder's info; None when there is no lock, {} while its holder is still writing it."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return {}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(path: Path, stale_after: float) -> bool:
    info = read_lock(path)
    if info is None:
        return False
    try:
        age = time.time() - Path(path).stat().st_mtime
    except FileNotFoundError:
        return False
    if age > stale_after:
        return True
    return bool(info) and info.get("host") == socket.gethostname() and not pid_alive(int(info["pid"]))


def break_if_stale(path: Path, stale_after: float) -> bool:
    """Remove a stale lock. Breakers take ``.lock.break`` first, so two of them cannot both
    judge the old lock stale and then delete the fresh lock the other one has just created."""
    breaker = Path(f"{path}.break")
    try:
        fd = os.open(breaker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        with contextlib.suppress(FileNotFoundError):
            if time.time() - breaker.stat().st_mtime > 60:  # a breaker that died mid-break
                breaker.unlink()
        return False
    try:
        if is_stale(path, stale_after):
            path.unlink(missing_ok=True)
            return True
        return False
    finally:
        os.close(fd)
        breaker.unlink(missing_ok=True)


# --------------------------------------------------------------------------- threads per run


def cpu_count() -> int:
    """Cores this process may use (the affinity mask, which containers and SLURM set)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def thread_budget(workers: int, cores: int | None = None) -> int:
    """Torch threads per run when ``workers`` runs share this machine: never more threads than cores."""
    return max(1, (cores or cpu_count()) // max(1, workers))


def worker_thread_budget() -> int | None:
    """Inside a Dask task on a remote worker: its threads divided among the runs it may hold at once.

    None outside a worker (a serial study keeps the parameter file's ``torch_threads``).
    """
    try:
        worker = get_worker()
    except ValueError:  # not on a worker
        return None
    nthreads = worker.state.nthreads
    runs = worker.state.total_resources.get(RUN_RESOURCE) or nthreads
    return max(1, int(nthreads // runs))


# --------------------------------------------------------------------------- warm kernels on workers

WARM_KERNELS = "pda-warm-kernels"


class WarmKernelPlugin(WorkerPlugin):
    """Gives each worker a pool of warm kernels (``pda.kernels.KernelPool``), shut down with the worker.

    A worker's runs then skip the kernel start and imports (about 9 s a run here), as a serial study's do.
    """

    name = WARM_KERNELS

    def __init__(self, kernel_name: str, cwd: Path) -> None:
        self.kernel_name, self.cwd = kernel_name, Path(cwd)
        self.pool: KernelPool | None = None

    def setup(self, worker: Any) -> None:
        self.pool = KernelPool(self.kernel_name, self.cwd)

    def teardown(self, worker: Any) -> None:
        if self.pool is not None:
            self.pool.close()


def close_worker_kernels(dask_worker: Any) -> None:
    """Shut down this worker's warm kernels (through ``client.run``) at the end of a study, while the worker still
    answers: on an existing cluster they would otherwise outlive the study, and left to the plugin's teardown
    when a local cluster closes they outlast the nanny's 4 s and each worker is killed with a warning."""
    plugin = dask_worker.plugins.get(WARM_KERNELS)
    if plugin is not None:
        plugin.teardown(dask_worker)  # the plugin's own close; its teardown at cluster close then finds nothing left


def worker_kernels() -> KernelPool | None:
    """This Dask worker's warm kernels; None outside a worker or on one without the plugin."""
    try:
        plugin = get_worker().plugins.get(WARM_KERNELS)
    except ValueError:  # not on a worker
        return None
    return getattr(plugin, "pool", None)


# --------------------------------------------------------------------------- clusters and submission


@contextlib.contextmanager
def connect(workers: int = 0, scheduler: Any = None) -> Iterator[Any]:
    """A Dask client: to ``scheduler`` (an address or a cluster object) if given, else to a new
    ``LocalCluster`` of ``workers`` single-threaded processes. Closed (and the local cluster
    shut down) on exit."""
    if scheduler is not None:
        with Client(scheduler) as client:
            yield client
        return
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True) as cluster, Client(cluster) as client:
        yield client


def dashboard_note(client: Any) -> str:
    link = client.dashboard_link
    try:
        import bokeh  # noqa: F401
    except ImportError:
        return f"Dask dashboard: {link} (served only when bokeh is installed: pip install 'bokeh>=3.1')"
    return f"Dask dashboard: {link}"


def run_resources(client: Any) -> dict[str, float] | None:
    """Ask for one ``run`` slot when workers advertise it (see the module docstring), else nothing."""
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    return {RUN_RESOURCE: 1} if any(RUN_RESOURCE in w.get("resources", {}) for w in workers) else None


def submit_runs(client: Any, specs: list, dependencies: Callable[[Any], list], task: Callable[..., Any],
                *args: Any) -> dict[Any, Any]:
    """Submit ``task(spec, *args, *dependency_outcomes)`` for every spec; specs come dependencies first.

    Passing the dependencies' futures as arguments is what makes Dask wait for them; Dask
    replaces them by their results (the dependencies' outcomes) when the task starts. A run that
    others wait for goes first (``waiting_on``): left to Dask's own order, the default study's last
    FT teacher started 50 minutes in, and its task's twelve runs made a long tail.
    """
    resources = run_resources(client)
    batch = uuid.uuid4().hex[:8]  # a resubmitted study gets fresh keys, not the old results
    waiting = waiting_on(specs, dependencies)
    futures: dict[Any, Any] = {}
    # Submitted most-waited-for first (a dependency is waited for by more runs than any of its dependents,
    # so it still comes before them): an idle worker starts the first task it is given, before the rest arrive.
    for spec in sorted(specs, key=lambda s: -waiting[s]):
        deps = [futures[d] for d in dependencies(spec) if d in futures]
        futures[spec] = client.submit(task, spec, *args, *deps, key=f"{spec.run_id}-{batch}", pure=False,
                                      resources=resources, priority=waiting[spec])
    return futures


def waiting_on(specs: list, dependencies: Callable[[Any], list]) -> dict[Any, int]:
    """For each spec, how many specs wait for it, directly or through others (a teacher: every run of its task)."""
    waiters: dict[Any, set] = {spec: set() for spec in specs}
    for spec in reversed(specs):  # dependents come after their dependencies, so theirs are complete here
        for dep in dependencies(spec):
            if dep in waiters:
                waiters[dep] |= {spec} | waiters[spec]
    return {spec: len(w) for spec, w in waiters.items()}
