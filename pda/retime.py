"""Time a finished study's models again, on a machine with nothing else running.

A run times its model while the other runs of the study train beside it (see ``pda.backends``).
That load falls unevenly: the uncompressed reference is mostly large matrix products, which keep
their speed, while a 90 % model is mostly LayerNorms, residual adds and skinny products over the
full hidden width, which share memory bandwidth with the training next door and slow down. So the
in-run speed-ups of the smallest models are biased low, by more than their noise. ``retime`` times
each saved model again, every backend, against the reference on the same backend in the same
process, and writes ``runs/<id>/retime.json`` next to the record; the analysis uses it in place of
the in-run ``speed`` and ``backends`` and says so (``speed_source``). A task's models are timed
together, so the reference is timed once per round for all of them, not once per model; a model that
computes exactly what the reference does (the FT teacher, the head-only probe: other weights, the same
shapes and config) gets the reference's timing instead of a second timing of the same computation.

Resumable: a run whose ``retime.json`` was made with the same settings and the same model (the
record's fingerprint) is skipped, so an interrupted pass continues with the task it was timing.

A study whose ``measure.timing`` is ``after_study`` does not time in its runs at all: ``pda study``
calls ``time_after_study`` once every run has trained, with each run's own measurement settings.
"""

from __future__ import annotations

import dataclasses
import datetime
import fnmatch
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from pda import backends, checkpoint
from pda.config import BACKENDS, ConfigError, MeasureConfig, StudyConfig, for_run, validate_measure
from pda.records import RESULT_FILE, RETIME_FILE, RunRecord, atomic_write_text, fingerprint_sha, read_record
from pda.runs import MODEL_DIR, RunSpec, run_dir, runs_dir

VERSION = 3  # 2: backend_rounds in the settings; 3: ONNX Runtime warmed twice per shape (export.OrtRunner)
# Who made a retime.json: `pda retime` (the command) or `pda study` (measure.timing: after_study). A study
# re-times its own timings when its settings change, never one the user asked for with the command.
RETIME_COMMAND, STUDY = "retime", "study"
TIMED_AS_REFERENCE = ("timed as the reference: this model computes exactly what the uncompressed reference does "
                      "(the same parameter shapes and config, other weights), so its latency on every backend is "
                      "the reference's, measured in the same rounds, and its speed-up is 1 by construction")


def retime_settings(measure: MeasureConfig, rounds: int, threads: int, backend_names: list[str] | None) -> MeasureConfig:
    """The study's measurement protocol with every backend (or ``backend_names``) timed ``rounds`` times, no INT8 metric."""
    m = dataclasses.replace(timing_settings(measure), rounds=rounds, backend_rounds=None, threads=threads,
                            backends=list(backend_names or BACKENDS))
    validate_measure(m, where="retime ")
    return m


def timing_settings(measure: MeasureConfig) -> MeasureConfig:
    """``measure`` as a timing pass uses it: speed only (the INT8 metric and the energy belong to the run)."""
    return dataclasses.replace(measure, speed=True, quantize=False, energy=False, timing="in_run")


def settings_key(m: MeasureConfig) -> dict[str, Any]:
    """What makes two timings of the same model comparable (a retime with other settings is done again)."""
    return {"version": VERSION, "backends": list(m.backends), "batch_sizes": list(m.batch_sizes),
            "seq_len": m.seq_len, "warmup": m.warmup, "rounds": m.rounds, "backend_rounds": m.backend_rounds,
            "threads": m.threads,
            "quantize_ops": list(m.quantize_ops), "quantize_per_channel": m.quantize_per_channel}


def select_runs(directory: Path, patterns: list[str] | None) -> list[Path]:
    """Finished runs (``result.json`` and a saved model) whose id matches one of ``patterns`` (globs)."""
    found = sorted(p.parent for p in Path(directory).glob(f"*/{RESULT_FILE}") if (p.parent / MODEL_DIR).is_dir())
    if patterns:
        found = [p for p in found if any(fnmatch.fnmatchcase(p.name, pat) for pat in patterns)]
    return found


def retime_group(runs: dict[Path, RunRecord], reference: torch.nn.Module, m: MeasureConfig, cache_dir: Path,
                 device: torch.device, source: str = RETIME_COMMAND) -> dict[Path, dict[str, Any]]:
    """Time the saved models of ``runs`` (run folder -> its record; one task: one reference) together and
    write each ``retime.json`` (``source``: who asked, ``RETIME_COMMAND`` or ``STUDY``).

    Every backend runs its own rounds over all the models, the reference and its skeletons, so the
    reference is timed once per round for the whole group instead of once per model. A model with the
    reference's computation (``backends.same_computation``) is not timed again: it gets the reference's view.
    """
    notes: list[str] = []
    wanted = backends.timed_backends(m, device, notes)
    models = {run.name: checkpoint.deployable_model(checkpoint.load_model(run / MODEL_DIR).to(device)) for run in runs}
    as_reference = {name for name, model in models.items() if backends.same_computation(model, reference)}
    timed = {name: model for name, model in models.items() if name not in as_reference}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    spent: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as work:
        onnx = {}
        if any(b in backends.ORT_BACKENDS for b in wanted):
            for name, model in timed.items():
                (Path(work) / name).mkdir()
                onnx[name] = backends.model_onnx(model, m, Path(work) / name, spent)
        ref_sessions = backends.reference_sessions(reference, m, wanted, cache_dir, notes)
        sessions = {b: {**ref_sessions[b], "models": {n: o["sessions"][b] for n, o in onnx.items()}}
                    for b in wanted if b in backends.ORT_BACKENDS}
        start = time.perf_counter()
        benches = backends.benchmarks(timed, reference, m, wanted, sessions)
        spent["benchmark_s"] = time.perf_counter() - start
    written = {}
    for run in runs:
        own = "teacher" if run.name in as_reference else run.name
        out = backends.deployment_records({b: backends.bench_view(bench, own) for b, bench in benches.items()},
                                          onnx[run.name]["max_diff"] if run.name in onnx else None)
        out = {"fingerprint": fingerprint_sha(runs[run]), "settings": settings_key(m), "source": source,
               "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "load_average_before": load, "cpu_count": os.cpu_count(), "group": [r.name for r in runs],
               "speed": out["speed"], "backends": out["backends"],
               "notes": notes + ([TIMED_AS_REFERENCE] if run.name in as_reference else []),
               "group_time_s": {k: round(v, 3) for k, v in spent.items()}}
        atomic_write_text(run / RETIME_FILE, json.dumps(out, indent=1, sort_keys=True) + "\n")
        written[run] = out
    return written


def retime_study(cfg: StudyConfig, rounds: int = 5, threads: int | None = None,
                 backend_names: list[str] | None = None, patterns: list[str] | None = None,
                 force: bool = False, log=print) -> list[Path]:
    """Re-time every finished run of ``cfg``'s output folder (or those matching ``patterns``); the retimed runs.

    Runs are timed task by task (one reference each); a task's runs are written when its timing ends,
    so an interrupted pass loses at most the task it was timing. ``threads`` defaults to the study's
    ``measure.threads``: a deployment that has the machine to itself.
    """
    m = retime_settings(cfg.measure, rounds, threads or cfg.measure.threads, backend_names)
    directory = runs_dir(cfg)
    if not directory.is_dir():
        raise ConfigError(f"no runs to re-time: {str(directory)!r} does not exist (run the study first)")
    runs = select_runs(directory, patterns)
    if not runs:
        raise ConfigError(f"no finished run with a saved model in {str(directory)!r}"
                          + (f" matches {patterns}" if patterns else ""))
    return _time_groups(cfg, [(run, read_record(run), m) for run in runs], force, log, RETIME_COMMAND)


def time_after_study(cfg: StudyConfig, specs: list[RunSpec], log=print) -> list[Path]:
    """The timing a study with ``measure.timing: after_study`` left for its end; the runs timed.

    Every finished run of ``specs`` that did not time itself (no ``speed`` in its record: its
    settings deferred it) and whose model is saved is timed with its own settings (its task's
    backends, rounds and threads, as the parameter file gives them), a task's runs together.
    Runs already timed with those settings are skipped, so a study started again resumes here, and so
    are runs re-timed by ``pda retime`` (whatever its settings: the user asked for those).
    """
    todo = []
    for spec in specs:
        m = for_run(cfg, spec.task, spec.scenario, spec.sparsity, spec.seed).study.measure
        run = run_dir(cfg, spec.run_id)
        if not (m.speed and m.timing == "after_study" and (run / RESULT_FILE).is_file() and (run / MODEL_DIR).is_dir()):
            continue
        record = read_record(run)
        if record.speed is not None:
            continue
        if record.retimed is not None and record.retimed.get("source") == RETIME_COMMAND:
            log(f"{run.name}: keeps its timing by `pda retime` ({record.retimed.get('when')})")
            continue
        todo.append((run, record, timing_settings(m)))
    return _time_groups(cfg, todo, False, log, STUDY) if todo else []


def _time_groups(cfg: StudyConfig, runs: list[tuple[Path, RunRecord, MeasureConfig]], force: bool, log,
                 source: str) -> list[Path]:
    """Time ``runs`` (folder, record, settings) grouped by task and settings; skip those already timed so."""
    from pda.models import load_pretrained_for_task
    from pda.pipeline import configure_environment, onnx_cache_dir
    from pda.train import pick_device

    configure_environment(cfg.online)
    device = pick_device(cfg.device)
    groups: dict[tuple[str, str], tuple[MeasureConfig, dict[Path, RunRecord]]] = {}
    for run, record, m in runs:
        key = settings_key(m)
        if record.retimed is not None and record.retimed.get("settings") == key and not force:
            log(f"{run.name}: already re-timed with these settings")
            continue
        groups.setdefault((record.task, json.dumps(key, sort_keys=True)), (m, {}))[1][run] = record
    done = []
    for (task, _), (m, group) in groups.items():
        start = time.perf_counter()
        reference = checkpoint.deployable_model(load_pretrained_for_task(cfg.model, cfg.task(task)).to(device))
        written = retime_group(group, reference, m, onnx_cache_dir(cfg), device, source)
        log(f"{task}: {len(group)} run(s) timed in {time.perf_counter() - start:.0f} s")
        for run, out in written.items():
            b32 = {b: r["by_batch"].get(str(max(m.batch_sizes)), {}).get("speedup") for b, r in out["backends"].items()}
            log(f"  {run.name}: speed-up at batch {max(m.batch_sizes)} {b32}")
        done.extend(written)
    return done
