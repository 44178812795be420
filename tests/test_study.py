"""Parallel studies: Dask runs give the serial numbers, wait for dependencies, isolate failures,
resume, and the per-run lock lets exactly one attempt make a run."""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from pda import fingerprint, scaleout
from pda.__main__ import main
from pda.config import for_run, load_params
from pda.kernels import WarmKernel
from pda.records import RunRecord, read_record, write_record
from pda.runs import RunSpec, dependencies, expand_grid, is_done, run_dir
from pda.study import Outcome, execute_run, run_parallel, run_parameters, run_study, torch_threads_for
from tests.conftest import ROOT

# Small enough for a shared 2-core machine: the kernel start and imports dominate each run.
TINY = dict(seeds=[0], torch_threads=1, max_train_samples=32, max_eval_samples=32,
            measure={"speed": False, "energy": False, "flops": False, "quantize": False})


def write_params(path: Path, glue: Path, **changes) -> Path:
    """A smoke-based parameter file, like conftest's make_params, usable from a module fixture."""
    base = yaml.safe_load((ROOT / "parameters" / "smoke.yaml").read_text())
    base.update({"data_dir": str(glue), "output_dir": str(path.parent.parent / "outputs"), **TINY, **changes})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(base))
    return path


# --------------------------------------------------------------------------- real runs through papermill


@pytest.fixture(scope="module")
def parallel_study(tmp_path_factory, glue_dir) -> SimpleNamespace:
    """One parallel study, shared by two tests to save notebook runs: mrpc FT and A, and rte FT
    and D, where RTE's model folder is broken so rte-FT fails and rte-D must be skipped."""
    root = tmp_path_factory.mktemp("parallel")
    broken = root / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    params = write_params(root / "parameters" / "parallel.yaml", glue_dir, tasks=["mrpc", "rte"],
                          scenarios=["FT", "A"], overrides={"rte": {"scenarios": ["FT", "D"], "model": str(broken)}})
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["study", str(params), "--workers", "2", "--no-analysis"])
    return SimpleNamespace(params=params, cfg=load_params(params), code=code, out=out.getvalue(), broken=broken)


def test_parallel_study_gives_the_serial_metrics(parallel_study, tmp_path, glue_dir):
    assert "Dask dashboard: http" in parallel_study.out
    serial = write_params(tmp_path / "parameters" / "serial.yaml", glue_dir, tasks=["mrpc"], scenarios=["FT", "A"])
    assert {o.status for o in run_study(serial, analysis=False)} == {"done"}
    for rid in ("mrpc-FT-seed0", "mrpc-A-seed0"):
        a = read_record(tmp_path / "outputs" / "runs" / rid)
        b = read_record(run_dir(parallel_study.cfg, rid))
        assert a.metrics and a.metrics == b.metrics
        # the kernel's record carries the fingerprint the study computes; two studies that differ only in
        # grid, paths and threads give the same run the same fingerprint
        assert b.fingerprint["sha256"] == fingerprint_of(parallel_study.cfg, rid) and a.fingerprint == b.fingerprint
        assert {"device_name", "torch_threads", "precision"} <= set(b.environment)
        executed = json.loads((run_dir(parallel_study.cfg, rid) / "notebook.ipynb").read_text())
        assert executed["metadata"]["papermill"]["parameters"]["torch_threads"] == 1  # min(file's 1, cores // 2)
        # what the study says at its start is what the runs got: their threads and their precision
        assert f"2 workers, {b.environment['torch_threads']} torch thread(s) per run" in parallel_study.out
        assert f"training in {b.environment['precision']} (precision: " in parallel_study.out


def test_failed_task_skips_only_its_dependents_and_resume_runs_only_the_missing(parallel_study):
    from pda.models import embedded_model_dir

    cfg, out = parallel_study.cfg, parallel_study.out
    assert parallel_study.code == 1
    assert "FAILED rte-FT-seed0" in out and "SKIPPED rte-D-seed0: dependency rte-FT-seed0 failed" in out
    done = {rid: is_done(cfg, rid, fingerprint_of(cfg, rid))
            for rid in ("mrpc-FT-seed0", "mrpc-A-seed0", "rte-FT-seed0")}
    assert done == {"mrpc-FT-seed0": True, "mrpc-A-seed0": True, "rte-FT-seed0": False}
    assert not run_dir(cfg, "rte-D-seed0").exists()  # never started
    assert not (run_dir(cfg, "rte-FT-seed0") / scaleout.LOCK_FILE).exists()  # a failed run releases its lock
    before = {rid: (run_dir(cfg, rid) / "result.json").stat().st_mtime_ns for rid in ("mrpc-FT-seed0", "mrpc-A-seed0")}

    for name in ("config.json", "model.safetensors", "vocab.txt", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json"):  # repair the model folder: the failed runs now succeed
        (parallel_study.broken / name).unlink(missing_ok=True)
        if (embedded_model_dir() / name).exists():
            (parallel_study.broken / name).symlink_to(embedded_model_dir() / name)
    outcomes = {o.spec.run_id: o.status for o in run_study(parallel_study.params, analysis=False)}
    assert outcomes == {"mrpc-FT-seed0": "cached", "mrpc-A-seed0": "cached", "rte-FT-seed0": "done",
                        "rte-D-seed0": "done"}
    assert {rid: (run_dir(cfg, rid) / "result.json").stat().st_mtime_ns for rid in before} == before


# --------------------------------------------------------------------------- Dask scheduling, fake runs


@dataclasses.dataclass
class FakeExecute:
    """Stands in for execute_run on Dask workers; logs start and end of each run to a file."""

    log: Path
    fail: tuple[str, ...] = ()
    crash: tuple[str, ...] = ()
    seconds: float = 0.3

    def __call__(self, spec: RunSpec) -> Outcome:
        start = time.time()
        time.sleep(self.seconds)
        with open(self.log, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"run": spec.run_id, "start": start, "end": time.time()}) + "\n")
        if spec.run_id in self.crash:
            raise RuntimeError("worker lost")
        if spec.run_id in self.fail:
            return Outcome(spec, "failed", error="boom")
        return Outcome(spec, "done")


def test_dask_waits_for_dependencies_runs_the_rest_concurrently_and_isolates_failures(make_params, tmp_path):
    from distributed import Client

    cfg = load_params(make_params(tasks=["mrpc", "rte"], scenarios=["FT", "A", "P+D"]))
    specs = expand_grid(cfg)
    fake = FakeExecute(tmp_path / "log.jsonl", fail=("rte-FT-seed0",), crash=("mrpc-D-seed0",))
    with Client(processes=False, n_workers=2, threads_per_worker=1, dashboard_address=":0") as client:
        outcomes = {o.spec.run_id: o for o in run_parallel(client, cfg, specs, fake, poll=0.05)}
    status = {rid: o.status for rid, o in outcomes.items()}
    assert status == {"mrpc-FT-seed0": "done", "mrpc-A-seed0": "done", "mrpc-D-seed0": "failed",
                      "mrpc-P+D-sp60-seed0": "skipped", "rte-FT-seed0": "failed", "rte-A-seed0": "done",
                      "rte-D-seed0": "skipped", "rte-P+D-sp60-seed0": "skipped"}
    assert "worker lost" in outcomes["mrpc-D-seed0"].error
    assert outcomes["mrpc-P+D-sp60-seed0"].error == "dependency mrpc-D-seed0 failed"
    assert outcomes["rte-D-seed0"].error == "dependency rte-FT-seed0 failed"
    runs = {row["run"]: row for row in map(json.loads, (tmp_path / "log.jsonl").read_text().splitlines())}
    assert set(runs) == {"mrpc-FT-seed0", "mrpc-A-seed0", "mrpc-D-seed0", "rte-FT-seed0", "rte-A-seed0"}
    for spec in specs:
        for dep in dependencies(spec):
            if spec.run_id in runs:
                assert runs[dep.run_id]["end"] <= runs[spec.run_id]["start"]
    intervals = sorted((r["start"], r["end"]) for r in runs.values())
    assert any(b[0] < a[1] for a, b in zip(intervals, intervals[1:])), "two workers never overlapped"


def test_runs_that_others_wait_for_start_first(make_params, tmp_path):
    """One worker, teachers listed after runs that need none: Dask still starts both teachers first."""
    from distributed import Client

    cfg = load_params(make_params(tasks=["mrpc", "rte"], scenarios=["base", "A", "P+D"]))
    specs = expand_grid(cfg)
    waiting = scaleout.waiting_on(specs, dependencies)
    by_id = {s.run_id: n for s, n in waiting.items()}
    assert by_id["mrpc-FT-seed0"] == 2 and by_id["mrpc-D-seed0"] == 1 and by_id["mrpc-P+D-sp60-seed0"] == 0
    assert by_id["mrpc-base-seed0"] == by_id["mrpc-A-seed0"] == 0
    fake = FakeExecute(tmp_path / "log.jsonl", seconds=0.05)
    with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=":0") as client:
        outcomes = run_parallel(client, cfg, specs, fake, poll=0.05)
    assert {o.status for o in outcomes} == {"done"}
    rows = sorted(map(json.loads, (tmp_path / "log.jsonl").read_text().splitlines()), key=lambda r: r["start"])
    assert {r["run"] for r in rows[:2]} == {"mrpc-FT-seed0", "rte-FT-seed0"}


def test_scheduler_option_runs_on_an_existing_cluster_with_the_workers_threads(make_params, monkeypatch, capsys):
    """--scheduler: an existing cluster whose worker holds one run at a time (resource ``run``)
    gives that run all its threads, capped by the parameter file's torch_threads (2 in smoke), and
    the worker's one warm kernel, the same for both runs."""
    from distributed import LocalCluster

    params = make_params(tasks=["mrpc"], scenarios=["FT", "D"])
    cfg = load_params(params)
    seen, kernels = {}, []

    def fake_notebook(notebook, output, parameters, kernel_name="pda", kernel=None):
        seen[output.parent.name] = parameters["torch_threads"]
        kernels.append(kernel)
        write_record(fake_record(RunSpec(parameters["task"], parameters["scenario"], None, 0), cfg), output.parent)

    monkeypatch.setattr("pda.study.execute_notebook", fake_notebook)  # in-process workers see it
    closed = []
    monkeypatch.setattr(WarmKernel, "close", lambda self: closed.append(self))
    with LocalCluster(n_workers=1, threads_per_worker=3, processes=False, resources={"run": 1},
                      dashboard_address=":0") as cluster:
        outcomes = run_study(params, scheduler=cluster.scheduler_address, analysis=False)
        assert closed == kernels[:1]  # the study shut its kernel down; the cluster lives on
    assert [o.status for o in outcomes] == ["done", "done"] and seen == {"mrpc-FT-seed0": 2, "mrpc-D-seed0": 2}
    assert isinstance(kernels[0], WarmKernel) and kernels[1] is kernels[0]
    assert "Dask dashboard: http" in capsys.readouterr().out
    assert not list(run_dir(cfg, "mrpc-FT-seed0").glob(".lock*"))


def test_threads_per_run_never_oversubscribe_the_cores(make_params):
    assert scaleout.thread_budget(2, cores=2) == 1
    assert scaleout.thread_budget(3, cores=2) == 1
    assert scaleout.thread_budget(8, cores=64) == 8
    cfg = load_params(make_params())  # smoke: torch_threads 2
    assert torch_threads_for(cfg, 1) == 1 and torch_threads_for(cfg, 8) == 2 and torch_threads_for(cfg, None) is None
    cfg.torch_threads = None
    assert torch_threads_for(cfg, 4) == 4
    spec = RunSpec("mrpc", "FT", None, 0)
    assert "torch_threads" not in run_parameters(Path("p.yaml"), spec)
    assert run_parameters(Path("p.yaml"), spec, 3)["torch_threads"] == 3


def test_slurm_example_builds_a_job_script():
    """The docstring's SLURMCluster recipe: one run per job through the ``run`` resource."""
    jobqueue = pytest.importorskip("dask_jobqueue")
    with jobqueue.SLURMCluster(cores=8, processes=1, memory="32GB", walltime="24:00:00",
                               worker_extra_args=["--resources", "run=1"], scheduler_options={"dashboard_address": ":0"}) as cluster:
        script = cluster.job_script()
    assert "--resources run=1" in script and "#SBATCH" in script
    assert "worker_extra_args=[\"--resources\", \"run=1\"]" in scaleout.__doc__


# --------------------------------------------------------------------------- the per-run lock


def fingerprint_of(cfg, rid: str) -> str:
    """The fingerprint the study expects for run ``rid`` of ``cfg``'s grid."""
    spec = next(s for s in expand_grid(cfg) if s.run_id == rid)
    return fingerprint.fingerprint(for_run(cfg, spec.task, spec.scenario, spec.sparsity, spec.seed))


def fake_record(spec: RunSpec, cfg) -> RunRecord:
    """What a run's notebook writes, less the measurements: ids and the fingerprint of its inputs."""
    run = for_run(cfg, spec.task, spec.scenario, spec.sparsity, spec.seed)
    return RunRecord(run_id=spec.run_id, task=spec.task, scenario=spec.scenario, prune=False, distill=False,
                     adapters=False, sparsity=spec.sparsity, seed=spec.seed, model="embedded",
                     fingerprint=fingerprint.record_entry(run))


def test_two_concurrent_attempts_at_one_run_execute_it_once(make_params, monkeypatch):
    params = make_params()
    cfg = load_params(params)
    spec = RunSpec("mrpc", "FT", None, 0)
    calls = []

    def fake_notebook(notebook, output, parameters, kernel_name="pda", kernel=None):
        calls.append(threading.current_thread().name)
        time.sleep(0.5)  # the other attempt arrives while this one holds the lock
        write_record(fake_record(spec, cfg), output.parent)

    monkeypatch.setattr("pda.study.execute_notebook", fake_notebook)
    monkeypatch.setattr(scaleout, "POLL_S", 0.05)
    barrier = threading.Barrier(2)

    def attempt(_: int) -> str:
        barrier.wait()
        return execute_run(params, cfg, spec).status

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        statuses = sorted(pool.map(attempt, range(2)))
    assert len(calls) == 1 and statuses == ["cached", "done"]
    assert not (run_dir(cfg, spec.run_id) / scaleout.LOCK_FILE).exists()


def write_lock(path: Path, host: str, pid: int, age: float = 0.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": host, "pid": pid, "token": "theirs", "started": "then"}))
    os.utime(path, (time.time() - age, time.time() - age))


def test_stale_locks_are_broken_live_ones_are_not(tmp_path):
    lock = tmp_path / "run" / scaleout.LOCK_FILE
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write_lock(lock, socket.gethostname(), dead.pid)  # crashed on this host: stale at once
    assert scaleout.break_if_stale(lock, 600) and not lock.exists()
    write_lock(lock, "elsewhere", 1, age=1000)  # lost on another host: no heartbeat for 1000 s
    assert scaleout.is_stale(lock, 600) and not scaleout.is_stale(lock, 2000)
    write_lock(lock, socket.gethostname(), os.getpid())  # alive and fresh: wait for it
    assert not scaleout.is_stale(lock, 600) and not scaleout.break_if_stale(lock, 600)
    assert not scaleout.RunLock(lock.parent).try_acquire()
    lock.unlink()


def test_heartbeat_keeps_a_long_run_fresh_and_release_spares_a_successor(tmp_path):
    held = scaleout.RunLock(tmp_path / "run", stale_after=0.5)
    with held:
        time.sleep(1.0)  # twice stale_after, but the heartbeat touched it every 0.1 s
        assert not scaleout.is_stale(held.path, 0.5)
        assert json.loads(held.path.read_text())["pid"] == os.getpid()
    assert not held.path.exists()
    held.acquire()
    write_lock(held.path, "elsewhere", 1)  # broken as stale and taken by another attempt meanwhile
    held.release()
    assert held.path.exists()  # not ours any more: left alone
