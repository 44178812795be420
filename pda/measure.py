"""Measurement: size, FLOPs, latency and energy of models, measured the same way for every compressed variant."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count


# ---------------------------------------------------------------- size

def _numel(params: Mapping[int, nn.Parameter]) -> int:
    return sum(p.numel() for p in params.values())


def _params(module: nn.Module | None) -> dict[int, nn.Parameter]:
    """Unique parameters by identity (tied weights count once)."""
    return {} if module is None else {id(p): p for p in module.parameters()}


def count_parameters(model: nn.Module) -> dict[str, int]:
    """``{"total", "encoder", "embeddings", "trainable"}`` parameter counts of a HF BERT model.

    ``encoder`` is every base-model parameter outside the embeddings and pooler:
    the transformer layers plus any adapter modules (in-layer bottlenecks, prefix/prompt
    pools). ``total`` includes pooler and heads. Tied weights count once.
    """
    everything = _params(model)
    base = getattr(model, "base_model", model)
    embeddings = _params(getattr(base, "embeddings", None))
    pooler = _params(getattr(base, "pooler", None))
    encoder = {k: p for k, p in _params(base).items() if k not in embeddings and k not in pooler}
    return {
        "total": _numel(everything),
        "encoder": _numel(encoder),
        "embeddings": _numel(embeddings),
        "trainable": sum(p.numel() for p in everything.values() if p.requires_grad),
    }


def bytes_on_disk(path: str | Path) -> int:
    """Bytes of saved weights: the file itself, or the sum of ``*.safetensors`` directly in a directory."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in {path}")
    return sum(f.stat().st_size for f in files)


# ---------------------------------------------------------------- FLOPs

def _sdpa_cpu_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _flop_mapping() -> dict[Any, Any]:
    """torch's counter knows the CUDA SDPA kernels but not the CPU flash kernel BERT uses by default."""
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    return {op: _sdpa_cpu_flop} if op is not None else {}


def _dummy_batch(batch_size: int, seq_len: int, vocab_size: int, seed: int = 0,
                 device: torch.device | str = "cpu") -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, max(2, vocab_size), (batch_size, seq_len), generator=g)
    return {
        "input_ids": ids.to(device),
        "attention_mask": torch.ones_like(ids).to(device),
        "token_type_ids": torch.zeros_like(ids).to(device),
    }


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _vocab_size(model: nn.Module, default: int = 100) -> int:
    return getattr(getattr(model, "config", None), "vocab_size", None) or default


def flops_per_example(model: nn.Module, seq_len: int = 128) -> int:
    """Forward FLOPs (multiply-add = 2) of one unpadded example of ``seq_len`` tokens.

    Counted by ``torch.utils.flop_counter.FlopCounterMode`` in eval mode without grad:
    matmuls and attention only (no softmax, LayerNorm, GELU, embedding lookups).
    For BERT this equals, per layer, ``2Ld*3d + 2L^2d + 2L^2d + 2Ld*d + 2*2LdF``
    plus pooler ``2d*d`` (CLS token only) and classifier ``2d*C``.
    """
    was_training = model.training
    model.eval()
    batch = _dummy_batch(1, seq_len, _vocab_size(model), device=_device(model))
    try:
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_flop_mapping()) as counter:
            model(**batch)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


# ---------------------------------------------------------------- latency

def device_name(device: torch.device | str = "cpu") -> str:
    """Human-readable name of the device: GPU name, or the CPU model from /proc/cpuinfo."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def _summary(times_ms: list[float], batch_size: int) -> dict[str, Any]:
    q1, _, q3 = statistics.quantiles(times_ms, n=4, method="inclusive") if len(times_ms) > 1 else times_ms * 3
    return {
        "latency_ms_median": statistics.median(times_ms),
        "latency_ms_iqr": q3 - q1,
        "latency_ms_min": min(times_ms),
        "throughput_median": statistics.median(batch_size * 1000.0 / t if t > 0 else float("inf") for t in times_ms),
        "timings_ms": list(times_ms),
    }


class Runner(Protocol):
    """Anything timed like a model: called with one batch of tensors, on ``device``, for ``vocab_size`` ids.

    ``benchmark_latency`` wraps ``nn.Module`` s itself; other runtimes (ONNX Runtime) implement this.
    """

    device: torch.device
    vocab_size: int

    def __call__(self, batch: Mapping[str, Tensor]) -> Any: ...


def warmup_calls(runner: Any, warmup: int) -> int:
    """Untimed calls per batch size before ``runner``'s first timed one: ``warmup``, or more if the runtime
    says (a ``min_warmup`` attribute) that it reaches its steady state later."""
    return max(warmup, int(getattr(runner, "min_warmup", 0)))


class _ModuleRunner:
    """An ``nn.Module`` called as ``module(**batch)``, optionally under autocast (e.g. bf16)."""

    def __init__(self, module: nn.Module, autocast_dtype: torch.dtype | None = None) -> None:
        self.module, self.autocast_dtype = module, autocast_dtype
        self.device, self.vocab_size = _device(module), _vocab_size(module)

    def __call__(self, batch: Mapping[str, Tensor]) -> Any:
        if self.autocast_dtype is None:
            return self.module(**batch)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype):
            return self.module(**batch)


def benchmark_latency(
    models: Mapping[str, nn.Module | Runner],
    batch_sizes: Sequence[int] = (1, 32),
    seq_len: int = 128,
    warmup: int = 5,
    rounds: int = 30,
    threads: int = 1,
    inputs: Mapping[int, Mapping[str, Tensor]] | None = None,
    clock: Callable[[], float] = time.perf_counter,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """Forward latency of several models measured together, so they share conditions.

    All models run in this process with ``threads`` intra-op torch threads (restored
    afterwards), modules in eval mode under ``inference_mode`` (and autocast to
    ``autocast_dtype`` if given), on the same inputs: ``inputs[batch_size]`` if given
    (e.g. real dev batches), else synthetic unpadded ids of length ``seq_len``. A model
    may also be a ``Runner`` (another runtime), which sets its own threads. ``warmup``
    untimed calls per model and batch size come first (more for a runner whose ``min_warmup`` says
    it needs them, see ``warmup_calls``); then each of ``rounds`` rounds
    times one forward of every model for every batch size, rotating the model order
    each round so drift hits all equally.

    Returns ``{"device", "threads", "seq_len", "warmup", "rounds", "inputs",
    "models": {name: {batch_size: {"latency_ms_median", "latency_ms_iqr",
    "latency_ms_min", "throughput_median" (examples/s), "timings_ms"}}}}``.
    """
    if rounds < 1 or warmup < 0 or threads < 1:
        raise ValueError(f"need rounds >= 1, warmup >= 0, threads >= 1; got {rounds}, {warmup}, {threads}")
    names = list(models)
    if not names:
        raise ValueError("no models to benchmark")
    modules = {n: m for n, m in models.items() if isinstance(m, nn.Module)}
    runners = {n: _ModuleRunner(m, autocast_dtype) if n in modules else m for n, m in models.items()}
    vocab = min(r.vocab_size for r in runners.values())
    batches = {
        name: {
            bs: ({k: v.to(r.device) for k, v in inputs[bs].items()} if inputs is not None
                 else _dummy_batch(bs, seq_len, vocab, seed=bs, device=r.device))
            for bs in batch_sizes
        }
        for name, r in runners.items()
    }
    if inputs is not None:
        seq_len = int(next(iter(inputs.values()))["input_ids"].shape[-1])
    timings: dict[str, dict[int, list[float]]] = {n: {bs: [] for bs in batch_sizes} for n in names}
    was_training = {n: m.training for n, m in modules.items()}
    prev_threads = torch.get_num_threads()

    def run(name: str, bs: int) -> None:
        runners[name](batches[name][bs])
        if runners[name].device.type == "cuda":
            torch.cuda.synchronize()

    try:
        torch.set_num_threads(threads)
        for m in modules.values():
            m.eval()
        with torch.inference_mode():
            for bs in batch_sizes:
                for name in names:
                    for _ in range(warmup_calls(runners[name], warmup)):
                        run(name, bs)
            for r in range(rounds):
                order = names[r % len(names):] + names[: r % len(names)]
                for bs in batch_sizes:
                    for name in order:
                        start = clock()
                        run(name, bs)
                        timings[name][bs].append((clock() - start) * 1000.0)
    finally:
        torch.set_num_threads(prev_threads)
        for n, m in modules.items():
            m.train(was_training[n])

    return {
        "device": device_name(runners[names[0]].device),
        "threads": threads,
        "seq_len": seq_len,
        "warmup": warmup,
        "rounds": rounds,
        "inputs": "given" if inputs is not None else "synthetic",
        "models": {n: {bs: _summary(timings[n][bs], bs) for bs in batch_sizes} for n in names},
    }


def speedup(result: Mapping[str, Any], model: str, reference: str) -> dict[int, float]:
    """Per batch size, ``median latency of reference / median latency of model`` (> 1: model is faster)."""
    by_model = result["models"]
    return {
        bs: by_model[reference][bs]["latency_ms_median"] / by_model[model][bs]["latency_ms_median"]
        for bs in by_model[model]
    }


# ---------------------------------------------------------------- energy

@dataclasses.dataclass
class EnergyResult:
    """What CodeCarbon measured for one ``track_energy`` block; ``None`` where it could not."""

    country_iso_code: str
    kwh: float | None = None
    kg_co2eq: float | None = None
    duration_s: float | None = None
    mode: str | None = None
    cpu_kwh: float | None = None
    ram_kwh: float | None = None
    gpu_kwh: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _tdp_source(model: str) -> str:
    """Whether CodeCarbon found the CPU's TDP in its registry or fell back to its per-thread default."""
    try:
        from codecarbon.core import cpu
        from codecarbon.core.hardware_cache import get_cached_tdp

        return "registry" if get_cached_tdp(cpu)._get_cpu_power_from_registry(model) else "default-per-thread"
    except Exception:  # private API: only a label, never fatal
        return "unknown-source"


def _power_mode(tracker: Any, data: Any) -> str:
    """Short description of how CodeCarbon got each power figure (read from its hardware objects)."""
    parts = []
    for hw in getattr(tracker, "_hardware", []):
        kind = type(hw).__name__
        if kind == "CPU":
            mode = getattr(hw, "_mode", "?")
            if mode == "cpu_load":
                parts.append(f"cpu:load-x-tdp({hw._tdp}W {_tdp_source(hw._model)})")
            elif mode == "constant":
                parts.append(f"cpu:constant-tdp({hw._tdp}W)")
            else:
                parts.append(f"cpu:{mode}")
        elif kind == "RAM":
            forced = getattr(hw, "_force_ram_power", None)
            watts = f"{data.ram_power:.0f}W" if data is not None else "?W"
            parts.append(f"ram:constant({watts} {'forced' if forced else 'from-memory-size'})")
        elif kind == "GPU":
            parts.append("gpu:nvml-or-amdsmi")
        else:
            parts.append(f"{kind.lower()}:measured")
    tracking = getattr(tracker, "_tracking_mode", "?")
    return "+".join(parts) + f" [{tracking}]" if parts else f"unknown [{tracking}]"


@contextlib.contextmanager
def track_energy(
    output_dir: str | Path,
    country_iso_code: str = "DNK",
    project_name: str = "pda",
    measure_power_secs: float = 5.0,
    tracking_mode: str = "process",
    save_csv: bool = False,
    log_level: str = "error",
) -> Iterator[EnergyResult]:
    """Measure energy and CO2 of the ``with`` block with CodeCarbon's offline tracker.

    Nothing is written to the cwd: CodeCarbon's output dir is ``output_dir`` (created),
    and its ``emissions.csv`` is written there only if ``save_csv``. ``tracking_mode``
    "process" attributes CPU load of this process only (other jobs share the machine).
    If CodeCarbon fails, the result keeps ``None`` values and ``mode`` says why;
    the block itself always runs.
    """
    result = EnergyResult(country_iso_code=country_iso_code)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    tracker = None
    try:
        from codecarbon import OfflineEmissionsTracker
        from codecarbon.output_methods.base_output import OutputMethod

        # the tracker sets this level itself, but only after logging its first lines
        logging.getLogger("codecarbon").setLevel(log_level.upper())
        tracker = OfflineEmissionsTracker(
            country_iso_code=country_iso_code,
            project_name=project_name,
            output_dir=str(output_dir),
            output_methods=[OutputMethod.CSV] if save_csv else [],
            measure_power_secs=measure_power_secs,
            tracking_mode=tracking_mode,
            log_level=log_level,
            allow_multiple_runs=True,
        )
        tracker.start()
    except Exception as err:  # CodeCarbon missing or broken: measure nothing, run anyway
        result.mode = f"error: {type(err).__name__}: {err}"
        tracker = None
    start = time.perf_counter()
    try:
        yield result
    finally:
        result.duration_s = time.perf_counter() - start
        if tracker is not None:
            _finish(tracker, result)


def _finish(tracker: Any, result: EnergyResult) -> None:
    try:
        tracker.stop()
        data = getattr(tracker, "final_emissions_data", None)
    except Exception as err:
        result.mode = f"error: {type(err).__name__}: {err}"
        return
    if data is None:  # CodeCarbon logs and swallows its own exceptions
        result.mode = "error: CodeCarbon returned no measurement (rerun with log_level='warning' to see why)"
        return
    result.kwh = float(data.energy_consumed)
    result.kg_co2eq = float(data.emissions)
    result.cpu_kwh, result.ram_kwh, result.gpu_kwh = float(data.cpu_energy), float(data.ram_energy), float(data.gpu_energy)
    result.duration_s = float(data.duration)
    result.country_iso_code = data.country_iso_code or result.country_iso_code
    result.mode = _power_mode(tracker, data)
