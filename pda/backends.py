"""A model's speed, against the uncompressed reference, on the backends people deploy: eager fp32/bf16, ONNX Runtime fp32/INT8.

Every backend times the model, the uncompressed reference and two skeletons of the reference (no
layers: the *floor* of embeddings, pooler, head and call overhead; one minimal layer: the fixed
cost of a layer) interleaved in the same process, each backend in its own rounds. The INT8 variant
(Q) is the ONNX Runtime dynamic-INT8 model; its dev metric comes from an ``evaluate`` callback.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from pda import export, measure
from pda.config import MeasureConfig
from pda.modeling_pda_bert import PdaBertConfig, PdaBertForSequenceClassification

ORT_BACKENDS = ("ort_fp32", "ort_int8")
SKELETONS = ("floor", "layer")
CACHE_VERSION = 1


def cpu_flags() -> set[str]:
    """The CPU feature flags Linux reports (empty elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def bf16_unsupported(device: torch.device) -> str | None:
    """Why bf16 should not be timed on ``device`` (None: it has native bf16 math).

    Without AMX or AVX512-BF16 a CPU emulates bf16 and runs slower than fp32, which says nothing
    about what bf16 buys where people would deploy it.
    """
    if device.type == "cuda":
        return None if torch.cuda.is_bf16_supported() else f"{measure.device_name(device)} has no bf16 support"
    if {"amx_bf16", "avx512_bf16"} & cpu_flags():
        return None
    return "this CPU has neither amx_bf16 nor avx512_bf16 (bf16 would be emulated, slower than fp32)"


def skeleton(config: PdaBertConfig | Any, layers: int) -> PdaBertForSequenceClassification:
    """The reference's embeddings, pooler and head with ``layers`` minimal layers (1 head, 1 FFN unit).

    Weights are random: only its timing is used. With 0 layers its latency is the floor no
    compression of the encoder can go below; one layer more adds a layer's fixed cost.
    """
    data = {k: v for k, v in config.to_dict().items() if k not in ("auto_map", "pda_adapter", "pruned_heads")}
    heads = data["num_attention_heads"]
    data.update(num_hidden_layers=layers, pda_structure={
        "hidden_kept": data["hidden_size"], "hidden_size": data["hidden_size"],
        "layers": [{"layer": i, "heads_kept": [0], "num_heads": heads, "mha_kept": True, "ffn_units_kept": 1,
                    "ffn_size": data["intermediate_size"], "ffn_kept": True} for i in range(layers)]})
    with torch.random.fork_rng(devices=[]):  # leaves the run's random state alone
        torch.manual_seed(0)
        return PdaBertForSequenceClassification(PdaBertConfig.from_dict(data)).eval()


@dataclasses.dataclass
class ReferenceOnnx:
    """Cached ONNX files of the reference architecture and its skeletons, fp32 and INT8."""

    files: dict[str, Path]  # "reference", "floor", "layer" and each + "_int8"
    created: bool  # False: taken from the cache


def reference_onnx(reference: PdaBertForSequenceClassification, cache_dir: Path, m: MeasureConfig,
                   threads: int) -> ReferenceOnnx:
    """The reference's ONNX files, exported, checked and quantised once per architecture and settings.

    Timing does not depend on weight values, so one export serves every run of a study with this
    model and label count. Written into a temporary directory and renamed into place, so concurrent
    runs never read a half-written cache entry.
    """
    key = _cache_key(reference.config, m)
    final = Path(cache_dir) / key
    names = [n for base in ("reference", *SKELETONS) for n in (base, f"{base}_int8")]
    files = {n: final / f"{n}.onnx" for n in names}
    if all(f.is_file() for f in files.values()):
        return ReferenceOnnx(files, created=False)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=final.parent))
    try:
        models = {"reference": reference.cpu(), "floor": skeleton(reference.config, 0),
                  "layer": skeleton(reference.config, 1)}
        for name, model in models.items():
            export.export_onnx(model, tmp / f"{name}.onnx")
            if name == "reference":
                export.check_onnx(export.ort_session(tmp / f"{name}.onnx", threads), model)
            export.quantize_int8(tmp / f"{name}.onnx", tmp / f"{name}_int8.onnx", m.quantize_per_channel,
                                 op_types=m.quantize_ops)
        (tmp / "key.json").write_text(json.dumps(_cache_facts(reference.config, m), indent=1, sort_keys=True))
        try:
            os.rename(tmp, final)
        except OSError:  # another run created it meanwhile, or a stale partial entry is in the way
            if not all(f.is_file() for f in files.values()):
                shutil.rmtree(final, ignore_errors=True)
                os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ReferenceOnnx(files, created=True)


def measure_deployment(
    model: PdaBertForSequenceClassification,
    reference: PdaBertForSequenceClassification,
    m: MeasureConfig,
    work_dir: Path,
    cache_dir: Path,
    evaluate: Callable[[Any], dict[str, float]] | None = None,
    main_metric: str | None = None,
) -> dict[str, Any]:
    """Backends and the INT8 variant of ``model`` (both deployable models, see ``checkpoint.deployable_model``).

    Returns ``{"backends", "quantized", "speed", "deploy_time_s", "notes"}`` as the run record
    stores them (see ``pda.records.RunRecord``). ``work_dir`` receives the model's ONNX files
    (the caller removes it); ``cache_dir`` keeps the reference's. ``evaluate(session)`` gives the
    INT8 model's dev metrics.
    """
    spent: dict[str, float] = {}
    notes: list[str] = []
    wanted = timed_backends(m, next(model.parameters()).device, notes)
    onnx, ref_sessions = None, {}
    if m.quantize or any(b in ORT_BACKENDS for b in wanted):
        onnx = model_onnx(model, m, work_dir, spent)
        start = time.perf_counter()
        ref_sessions = reference_sessions(reference, m, wanted, cache_dir, notes)
        spent["sessions_s"] += time.perf_counter() - start
    start = time.perf_counter()
    sessions = {b: {**ref_sessions[b], "models": {MODEL: onnx["sessions"][b]}} for b in wanted if b in ORT_BACKENDS}
    benches = {b: bench_view(bench, MODEL) for b, bench in benchmarks({MODEL: model}, reference, m, wanted,
                                                                       sessions).items()}
    spent["benchmark_s"] = time.perf_counter() - start
    out = deployment_records(benches, onnx["max_diff"] if onnx else None)
    if m.quantize:
        start = time.perf_counter()
        metrics = evaluate(onnx["sessions"]["ort_int8"]) if evaluate is not None else {}
        spent["evaluate_s"] = time.perf_counter() - start
        out["quantized"] = quantized_record(m, metrics, main_metric, onnx["int8_file"].stat().st_size,
                                            benches.get("ort_int8"), benches.get("eager_fp32"),
                                            benches.get("ort_fp32"))
    spent["total_s"] = sum(spent.values())
    out["deploy_time_s"] = {k: round(v, 3) for k, v in spent.items()}
    out["notes"] = notes
    return out


MODEL = "model"  # the timed model's name in a benchmark of one model (see ``bench_view``)


def timed_backends(m: MeasureConfig, device: torch.device, notes: list[str]) -> list[str]:
    """The backends of ``m`` that are timed on ``device`` (bf16 only with native bf16; a note says why not)."""
    wanted = list(m.backends) if m.speed else []
    if "eager_bf16" in wanted and (why := bf16_unsupported(device)):
        wanted.remove("eager_bf16")
        notes.append(f"eager_bf16 not measured: {why}")
    return wanted


def deployment_records(benches: Mapping[str, Mapping[str, Any]], max_diff: float | None) -> dict[str, Any]:
    """``{"backends", "speed", "quantized": None}`` of one model from its per-backend benchmark views."""
    eager_teacher = benches.get("eager_fp32")
    out: dict[str, Any] = {"backends": {b: backend_record(bench, b, eager_teacher) for b, bench in benches.items()},
                           "quantized": None, "speed": None}
    if "ort_fp32" in out["backends"]:
        out["backends"]["ort_fp32"]["max_abs_logit_diff"] = max_diff
    if eager_teacher is not None:
        out["speed"] = speed_record(eager_teacher, MODEL, "teacher")
    return out


def model_onnx(model: PdaBertForSequenceClassification, m: MeasureConfig, work_dir: Path,
               spent: dict[str, float]) -> dict[str, Any]:
    """Export, quantise and check ``model``: ONNX Runtime sessions ``{"ort_fp32", "ort_int8"}``, the INT8
    file and the export's largest logit difference. An inexact export is an error whatever is timed."""
    clock = time.perf_counter
    start = clock()
    model = model if model.device.type == "cpu" else copy.deepcopy(model).cpu()
    model_file = export.export_onnx(model, work_dir / export.ONNX_FILE)
    spent["export_s"] = spent.get("export_s", 0.0) + clock() - start
    start = clock()
    int8_file = export.quantize_int8(model_file, work_dir / export.INT8_FILE, m.quantize_per_channel,
                                     op_types=m.quantize_ops)
    spent["quantize_s"] = spent.get("quantize_s", 0.0) + clock() - start
    start = clock()
    fp32 = export.ort_session(model_file, m.threads)
    max_diff = export.check_onnx(fp32, model)
    sessions = {"ort_fp32": fp32, "ort_int8": export.ort_session(int8_file, m.threads)}
    spent["sessions_s"] = spent.get("sessions_s", 0.0) + clock() - start
    return {"sessions": sessions, "int8_file": int8_file, "max_diff": max_diff}


def reference_sessions(reference: PdaBertForSequenceClassification, m: MeasureConfig, wanted: list[str],
                       cache_dir: Path, notes: list[str]) -> dict[str, dict[str, Any]]:
    """Per ORT backend timed, sessions of the cached reference and skeletons (``reference``, ``floor``, ``layer``)."""
    if not any(b in ORT_BACKENDS for b in wanted):
        return {}  # nothing to time on ONNX Runtime: no reference export either
    reference = reference if reference.device.type == "cpu" else copy.deepcopy(reference).cpu()
    ref = reference_onnx(reference, cache_dir, m, m.threads)
    if ref.created:
        notes.append("reference ONNX files exported into the cache by this run (its export time counts here)")
    return {backend: {n: export.ort_session(ref.files[n + suffix], m.threads) for n in ("reference", *SKELETONS)}
            for backend, suffix in (("ort_fp32", ""), ("ort_int8", "_int8")) if backend in wanted}


def benchmarks(models: Mapping[str, PdaBertForSequenceClassification], reference: PdaBertForSequenceClassification,
               m: MeasureConfig, wanted: list[str], sessions: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """One ``benchmark_latency`` per backend, in its own rounds: every model, the reference and both skeletons.

    Several models (named by ``models``' keys, never ``teacher``, ``floor`` or ``layer``) share one timing of
    the reference per round. ``sessions[backend]``: ``{"models": {name: session}, "reference", "floor",
    "layer"}`` for each ORT backend in ``wanted``.
    """
    if not wanted:
        return {}
    clash = set(models) & {"teacher", *SKELETONS}
    if clash:
        raise ValueError(f"model names {sorted(clash)} are reserved for the reference and its skeletons")
    device = next(reference.parameters()).device
    eager = {**models, "teacher": reference, "floor": skeleton(reference.config, 0).to(device),
             "layer": skeleton(reference.config, 1).to(device)}
    vocab = reference.config.vocab_size
    benches = {}
    for backend in wanted:
        rounds = m.rounds if backend == "eager_fp32" or m.backend_rounds is None else m.backend_rounds
        if backend in ORT_BACKENDS:
            s = sessions[backend]
            runners = {**{n: export.OrtRunner(session, vocab) for n, session in s["models"].items()},
                       "teacher": export.OrtRunner(s["reference"], vocab),
                       **{n: export.OrtRunner(s[n], vocab) for n in SKELETONS}}
            benches[backend] = measure.benchmark_latency(runners, tuple(m.batch_sizes), m.seq_len, m.warmup,
                                                         rounds, m.threads)
        else:
            dtype = torch.bfloat16 if backend == "eager_bf16" else None
            benches[backend] = measure.benchmark_latency(eager, tuple(m.batch_sizes), m.seq_len, m.warmup, rounds,
                                                         m.threads, autocast_dtype=dtype)
    return benches


def bench_view(bench: Mapping[str, Any], name: str) -> dict[str, Any]:
    """One model's view of a shared benchmark: that model as ``model``, with the reference and skeletons."""
    keep = {"teacher", *SKELETONS}
    return {**bench, "models": {MODEL: bench["models"][name],
                                **{k: v for k, v in bench["models"].items() if k in keep}}}


def same_computation(model: torch.nn.Module, reference: torch.nn.Module) -> bool:
    """Whether ``model`` computes exactly what ``reference`` does, whatever its weights: the same class,
    the same parameters and buffers (name, shape, dtype) and the same ``architecture``.

    Such a model (the FT teacher, the head-only probe) has the reference's latency on every backend, so
    timing it beside the reference only measures the reference twice.
    """
    if type(model) is not type(reference):
        return False

    def tensors(m: torch.nn.Module) -> dict[str, tuple]:
        return {k: (tuple(v.shape), v.dtype) for k, v in m.state_dict().items()}

    return tensors(model) == tensors(reference) and architecture(model.config) == architecture(reference.config)


def speed_record(bench: Mapping[str, Any], model: str, reference: str) -> dict[str, Any]:
    """The run record's view of a benchmark: medians, spread and speed-up per batch size."""
    ratios = measure.speedup(bench, model, reference)
    by_batch = {}
    for bs, stats in bench["models"][model].items():
        ref = bench["models"][reference][bs]
        by_batch[str(bs)] = {
            "latency_ms_median": stats["latency_ms_median"], "latency_ms_iqr": stats["latency_ms_iqr"],
            "throughput_median": stats["throughput_median"],
            "teacher_latency_ms_median": ref["latency_ms_median"], "teacher_latency_ms_iqr": ref["latency_ms_iqr"],
            "speedup": round(ratios[bs], 4),
        }
    return {"device": bench["device"], "threads": bench["threads"], "seq_len": bench["seq_len"],
            "warmup": bench["warmup"], "rounds": bench["rounds"], "by_batch": by_batch}


def backend_record(bench: Mapping[str, Any], backend: str, eager: Mapping[str, Any] | None) -> dict[str, Any]:
    """``speed_record`` plus, per batch size, the floor and a layer's fixed cost on this backend,
    the speed-up the floor allows, and the speed-up over the reference in eager fp32."""
    record = speed_record(bench, "model", "teacher")
    record["runtime"] = _runtime(backend)
    models = bench["models"]
    for bs, row in record["by_batch"].items():
        b = int(bs)
        floor = models["floor"][b]["latency_ms_median"]
        row["floor_latency_ms_median"] = floor
        row["layer_overhead_ms"] = models["layer"][b]["latency_ms_median"] - floor
        row["floor_speedup_bound"] = round(row["teacher_latency_ms_median"] / floor, 4)
        if eager is not None:
            row["speedup_vs_eager_fp32_teacher"] = round(
                eager["models"]["teacher"][b]["latency_ms_median"] / row["latency_ms_median"], 4)
    return record


def quantized_record(m: MeasureConfig, metrics: Mapping[str, float], main_metric: str | None, nbytes: int,
                     int8: Mapping[str, Any] | None, eager: Mapping[str, Any] | None,
                     ort_fp32: Mapping[str, Any] | None) -> dict[str, Any]:
    """The INT8 variant: its metrics and bytes, and its speed against the uncompressed fp32 reference."""
    speed = None
    if int8 is not None:
        by_batch = {}
        for b, stats in int8["models"]["model"].items():
            row = {"latency_ms_median": stats["latency_ms_median"], "latency_ms_iqr": stats["latency_ms_iqr"],
                   "throughput_median": stats["throughput_median"]}
            if eager is not None:
                teacher = eager["models"]["teacher"][b]["latency_ms_median"]
                row.update(teacher_latency_ms_median=teacher, speedup=round(teacher / stats["latency_ms_median"], 4))
            if ort_fp32 is not None:
                teacher = ort_fp32["models"]["teacher"][b]["latency_ms_median"]
                row["speedup_vs_ort_fp32_teacher"] = round(teacher / stats["latency_ms_median"], 4)
            by_batch[str(b)] = row
        speed = {"device": int8["device"], "threads": int8["threads"], "seq_len": int8["seq_len"],
                 "warmup": int8["warmup"], "rounds": int8["rounds"], "by_batch": by_batch}
    return {
        "method": "onnxruntime dynamic int8", "backend": "ort_int8", "per_channel": m.quantize_per_channel,
        "op_types": list(m.quantize_ops), "metrics": dict(metrics),
        "main_metric_value": metrics.get(main_metric) if main_metric else None,
        "bytes_on_disk": nbytes, "teacher_bytes_on_disk": None, "speed": speed,
    }


def _runtime(backend: str) -> str:
    if backend in ORT_BACKENDS:
        import onnxruntime

        return f"onnxruntime {onnxruntime.__version__}"
    return f"torch {torch.__version__}"


def architecture(config: Any) -> dict[str, Any]:
    """A model config without what only names or labels it (paths, versions, label names): what its forward computes."""
    return {k: v for k, v in config.to_dict().items() if not k.startswith("_") and k not in (
        "transformers_version", "id2label", "label2id", "architectures", "auto_map")} | {"num_labels": config.num_labels}


def _cache_facts(config: Any, m: MeasureConfig) -> dict[str, Any]:
    import onnxruntime

    source = Path(export.__file__).with_name("modeling_pda_bert.py").read_bytes()
    return {"version": CACHE_VERSION, "architecture": architecture(config), "opset": export.OPSET,
            "quantize": {"per_channel": m.quantize_per_channel, "ops": list(m.quantize_ops)},
            "modeling_sha256": hashlib.sha256(source).hexdigest(), "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__}


def _cache_key(config: Any, m: MeasureConfig) -> str:
    facts = json.dumps(_cache_facts(config, m), sort_keys=True, default=str)
    return "reference-" + hashlib.sha256(facts.encode()).hexdigest()[:16]
