"""Run records: the one schema every run writes and the analysis reads.

A run record is the only thing that crosses from a run to the analysis, so its
fields are explicit here. A value that a run could not measure is ``None``
(``null`` in JSON), never a made-up number.
"""

from __future__ import annotations

import dataclasses
import json
import os
import uuid
from pathlib import Path
from typing import Any

RESULT_FILE = "result.json"
RETIME_FILE = "retime.json"  # written next to result.json by ``python -m pda retime`` (see ``pda.retime``)


@dataclasses.dataclass
class RunRecord:
    """Everything one run measured.

    Nested dictionaries keep the JSON readable; their keys are documented here.

    - ``task_spec``: for a study's own task (``custom_tasks``) how its files are read and scored
      (``pda.tasks.spec_to_dict``), so an export needs no parameter file; None for GLUE's tasks.
    - ``metrics``: every GLUE metric of the task on the dev split, in percent
      (e.g. ``{"accuracy": 84.1, "f1": 88.0}``; MNLI uses ``accuracy_m``/``accuracy_mm``).
    - ``params``: ``{"total", "encoder", "embeddings", "trainable"}`` counts of
      the final (exported) model; ``teacher_params`` the same for the teacher.
    - ``sparsity_achieved``: ``{"encoder", "total"}`` = 1 - params/teacher params.
    - ``structure``: ``{"layers": [{"layer", "heads_kept", "num_heads", "mha_kept",
      "ffn_units_kept", "ffn_size", "ffn_kept"}], "hidden_kept", "hidden_size"}``.
    - ``pruning``: ``{"target", "expected_sparsity_at_end", "achieved_vs_input", "prune_steps",
      "finetune_steps", "counts"}``; ``achieved_vs_input`` is the exact sparsity of the kept
      structure relative to the model that was pruned (the teacher for P, the student for P+D).
    - ``speed``: ``{"device", "threads", "seq_len", "rounds", "by_batch":
      {"1": {"latency_ms_median", "latency_ms_iqr", "throughput_median",
      "teacher_latency_ms_median", "speedup"}, "32": {...}}}``: the deployable model
      (``from_pretrained(..., trust_remote_code=True)``) against the uncompressed one in
      eager fp32; the same numbers as ``backends["eager_fp32"]``.
    - ``backends``: ``{backend: {"device", "threads", "seq_len", "warmup", "rounds", "runtime",
      "by_batch": {"1": {...}, "32": {...}}}}`` for each backend measured, of ``eager_fp32``,
      ``eager_bf16`` (autocast; absent, with a note, on hardware without native bf16),
      ``ort_fp32`` and ``ort_int8`` (ONNX Runtime, CPU). Each backend ran its own rounds,
      interleaving the model with the uncompressed reference *on that same backend*; per batch
      size: ``latency_ms_median``, ``latency_ms_iqr``, ``throughput_median`` (examples/s),
      ``teacher_latency_ms_median``, ``teacher_latency_ms_iqr``, ``speedup`` (teacher / model,
      same backend), ``speedup_vs_eager_fp32_teacher`` (the eager fp32 teacher / this model),
      ``floor_latency_ms_median`` (the reference with no layers: embeddings, pooler, head and
      call overhead, the latency no encoder pruning can go below), ``floor_speedup_bound``
      (teacher / floor) and ``layer_overhead_ms`` (what one minimal layer, 1 head and 1 FFN unit,
      adds to the floor: a layer's fixed cost). ``ort_fp32`` also has ``max_abs_logit_diff``
      (ONNX vs torch over several batch sizes and lengths; the export is refused above 1e-4).
    - ``quantized``: the INT8 variant (lever Q), ``{"method", "backend": "ort_int8",
      "per_channel", "op_types", "metrics", "main_metric_value", "bytes_on_disk" (the INT8 ONNX
      file), "teacher_bytes_on_disk" (the uncompressed fp32 safetensors), "speed": {"device",
      "threads", "seq_len", "warmup", "rounds", "by_batch": {"1": {"latency_ms_median",
      "latency_ms_iqr", "throughput_median", "teacher_latency_ms_median", "speedup",
      "speedup_vs_ort_fp32_teacher"}}}}``. Its ``speedup`` is against the uncompressed model in
      eager fp32, the same reference as ``speed``, so "recipe" and "recipe + Q" compare directly;
      ``speedup_vs_ort_fp32_teacher`` leaves out what the runtime alone gains.
    - ``deploy_time_s``: seconds the backends and the INT8 variant cost this run (``export_s``,
      ``quantize_s``, ``sessions_s``, ``benchmark_s``, ``evaluate_s``, ``total_s``).
    - ``flops``: ``{"per_example", "teacher_per_example", "reduction_bound", "seq_len"}``.
    - ``energy``: ``{"train": {"kwh", "kg_co2eq", "duration_s", "mode", "country_iso_code"},
      "inference": {...}}`` (CodeCarbon; ``mode`` says how power was obtained).
    - ``environment``: device name, torch threads, precision, library versions.
    - ``fingerprint``: ``{"sha256", "inputs"}`` from ``pda.fingerprint``: everything that
      determined the run (settings, model source, data checksums, dependencies' fingerprints)
      and its hash. A record whose fingerprint differs from the current one is not reused.
    - ``retimed``: not part of ``result.json``. ``read_record`` fills it from ``retime.json`` when
      ``python -m pda retime`` timed this same model again (same fingerprint) with the machine to
      itself: ``{"fingerprint", "settings", "when", "load_average_before", "cpu_count", "group" (the
      runs timed with it), "speed", "backends", "notes", "group_time_s"}``, ``speed`` and ``backends``
      as above. The analysis prefers it.
    """

    run_id: str
    task: str
    scenario: str
    prune: bool
    distill: bool
    adapters: bool
    sparsity: float | None
    seed: int
    model: str
    teacher_run_id: str | None = None
    parent_run_id: str | None = None
    task_spec: dict[str, Any] | None = None
    main_metric: str | None = None
    main_metric_value: float | None = None
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    params: dict[str, int] = dataclasses.field(default_factory=dict)
    teacher_params: dict[str, int] | None = None
    bytes_on_disk: int | None = None
    teacher_bytes_on_disk: int | None = None
    sparsity_achieved: dict[str, float] | None = None
    structure: dict[str, Any] | None = None
    pruning: dict[str, Any] | None = None
    train_time_s: float | None = None
    eval_time_s: float | None = None
    train_steps: int | None = None
    speed: dict[str, Any] | None = None
    backends: dict[str, Any] | None = None
    quantized: dict[str, Any] | None = None
    deploy_time_s: dict[str, float] | None = None
    flops: dict[str, Any] | None = None
    energy: dict[str, Any] | None = None
    environment: dict[str, Any] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)
    fingerprint: dict[str, Any] | None = None
    retimed: dict[str, Any] | None = dataclasses.field(default=None, metadata={"sidecar": RETIME_FILE})

    def to_dict(self) -> dict[str, Any]:
        """The ``result.json`` content: every field but the side-car ones (``retimed``)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in SIDECAR_FIELDS}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunRecord":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"run record has unknown fields {unknown}; known fields: {sorted(known)}")
        return cls(**data)


SIDECAR_FIELDS = frozenset(f.name for f in dataclasses.fields(RunRecord) if "sidecar" in f.metadata)


def fingerprint_sha(record: RunRecord) -> str | None:
    """The hash that names the inputs ``record``'s run was made from (None for a record without one)."""
    return (record.fingerprint or {}).get("sha256")


def read_retimed(run_dir: Path, record: RunRecord) -> dict[str, Any] | None:
    """``run_dir``'s ``retime.json`` if it timed the model of ``record`` (same fingerprint), else None.

    A retime of an earlier model that this folder once held is ignored, never mixed in.
    """
    path = Path(run_dir) / RETIME_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    sha = fingerprint_sha(record)
    return data if sha is not None and data.get("fingerprint") == sha else None


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` so that readers see the old file or the new one, never half."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half.

    The file gets the mode any new file gets here (0666 less the umask), not ``mkstemp``'s 0600, so
    the group that shares an ``outputs/`` folder (a cluster's project space) can read the results.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_record(record: RunRecord, run_dir: Path) -> Path:
    """Atomically write ``result.json`` into ``run_dir``; its presence marks the run done."""
    path = Path(run_dir) / RESULT_FILE
    atomic_write_text(path, json.dumps(record.to_dict(), indent=2, sort_keys=True) + "\n")
    return path


def read_record(run_dir: Path) -> RunRecord:
    """The run's record, with ``retimed`` filled from its ``retime.json`` if that times this model."""
    data = json.loads((Path(run_dir) / RESULT_FILE).read_text(encoding="utf-8"))
    record = RunRecord.from_dict({k: v for k, v in data.items() if k not in SIDECAR_FIELDS})
    record.retimed = read_retimed(run_dir, record)
    return record


def finished_run_dirs(runs_dir: Path) -> list[Path]:
    """The folders of every finished run under ``runs_dir`` (a run is finished when its result.json exists),
    sorted; a folder's name is its run id."""
    return [p.parent for p in sorted(Path(runs_dir).glob(f"*/{RESULT_FILE}"))]


def read_all_records(runs_dir: Path) -> list[RunRecord]:
    """Every finished run under ``runs_dir``."""
    return [read_record(d) for d in finished_run_dirs(runs_dir)]
