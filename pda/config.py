"""Load a parameter file, apply per-group/per-task overrides, and validate everything before any work starts."""

from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from pda.data import DataNotFoundError, locate_task
from pda.tasks import TASKS, get_task

# A scenario is a set of flags; the labels are what records, figures and tables show.
SCENARIOS: dict[str, dict[str, bool]] = {
    "base": {"prune": False, "distill": False, "adapters": False, "finetune": False},
    "FT": {"prune": False, "distill": False, "adapters": False, "finetune": True},
    "A": {"prune": False, "distill": False, "adapters": True, "finetune": True},
    "D": {"prune": False, "distill": True, "adapters": False, "finetune": True},
    "D+A": {"prune": False, "distill": True, "adapters": True, "finetune": True},
    "P": {"prune": True, "distill": False, "adapters": False, "finetune": True},
    "P+A": {"prune": True, "distill": False, "adapters": True, "finetune": True},
    "P+D": {"prune": True, "distill": True, "adapters": False, "finetune": True},
    "P+D+A": {"prune": True, "distill": True, "adapters": True, "finetune": True},
}
EMBEDDED_MODEL = "embedded"
# Where a model's speed is measured (pda.backends): torch eager fp32 / bf16 autocast, ONNX Runtime fp32 / INT8.
BACKENDS = ("eager_fp32", "eager_bf16", "ort_fp32", "ort_int8")
QUANTIZE_OPS = ("MatMul", "Gather")  # ONNX Runtime dynamic INT8: linear layers, embedding tables


@dataclasses.dataclass
class TrainingConfig:
    """The one training loop's budget; ``eval_every_steps`` 0 means evaluate at the end only."""

    epochs: float = 3.0
    batch_size: int = 32
    eval_batch_size: int = 64
    learning_rate: float = 5e-5
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    max_grad_norm: float = 1.0
    eval_every_steps: int = 0
    log_every_steps: int = 10
    group_by_length: bool = True  # batches of similar length: less padding, same examples per epoch


@dataclasses.dataclass
class AdapterConfig:
    """Houlsby bottleneck adapters (``double_seq_bn`` in the adapters library)."""

    config: str = "double_seq_bn"
    reduction_factor: int = 16
    learning_rate: float = 1e-3


@dataclasses.dataclass
class PruningConfig:
    """CoFi: gates and Lagrangian during ``epochs``, then ``finetune_epochs`` on the exported model."""

    epochs: float = 3.0
    finetune_epochs: float = 1.0
    sparsity_warmup_ratio: float = 0.5  # fraction of pruning steps over which the target rises from 0
    gate_learning_rate: float = 0.1
    lagrangian_learning_rate: float = 0.1
    droprate_init: float = 0.5
    prune_hidden: bool = False


@dataclasses.dataclass
class DistillConfig:
    """Hinton/DistilBERT distillation from the fine-tuned teacher."""

    temperature: float = 2.0
    alpha: float = 0.5  # weight of the distillation term; 1 - alpha goes to the task loss
    student_layers: str | list[int] = "every_other"
    layer_distill: bool = False
    layer_distill_weight: float = 1.0
    cache_teacher_logits: bool = True


@dataclasses.dataclass
class MeasureConfig:
    """Speed and energy measurement protocol.

    ``backends``: where speed is measured, each against the uncompressed model on the same backend
    (``eager_fp32`` is always one: the record's ``speed`` comes from it; ``eager_bf16`` is skipped, with
    a note, on hardware without native bf16); ``backend_rounds``: timed rounds for the backends other
    than ``eager_fp32`` (None: ``rounds``), to trade their precision for time. ``quantize``: also record
    the ONNX Runtime dynamic-INT8 variant (dev metric, bytes, speed), quantising ``quantize_ops`` per
    tensor or ``quantize_per_channel``.
    """

    speed: bool = True
    batch_sizes: list[int] = dataclasses.field(default_factory=lambda: [1, 32])
    seq_len: int = 128
    warmup: int = 3
    rounds: int = 10
    threads: int = 1
    energy: bool = True
    country_iso_code: str = "DNK"
    flops: bool = True
    backends: list[str] = dataclasses.field(default_factory=lambda: list(BACKENDS))
    backend_rounds: int | None = None
    quantize: bool = True
    quantize_per_channel: bool = False
    quantize_ops: list[str] = dataclasses.field(default_factory=lambda: list(QUANTIZE_OPS))


@dataclasses.dataclass
class StudyConfig:
    """Everything a study needs; one run is a StudyConfig plus (task, scenario, sparsity, seed)."""

    study_name: str = "study"
    model: str = EMBEDDED_MODEL
    online: bool = False
    data_dir: str | None = None
    output_dir: str = "outputs"
    tasks: list[str] = dataclasses.field(default_factory=lambda: ["mrpc"])
    scenarios: list[str] = dataclasses.field(default_factory=lambda: ["FT"])
    sparsities: list[float] = dataclasses.field(default_factory=lambda: [0.6])
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0])
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    max_seq_length: int = 128
    data_seed: int = 0
    device: str = "auto"
    precision: str = "fp32"
    torch_threads: int | None = None
    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)
    adapters: AdapterConfig = dataclasses.field(default_factory=AdapterConfig)
    pruning: PruningConfig = dataclasses.field(default_factory=PruningConfig)
    distill: DistillConfig = dataclasses.field(default_factory=DistillConfig)
    measure: MeasureConfig = dataclasses.field(default_factory=MeasureConfig)
    overrides: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class RunConfig:
    """One run: the study settings with the task's overrides applied, plus the grid coordinates."""

    study: StudyConfig
    task: str
    scenario: str
    sparsity: float | None
    seed: int

    @property
    def flags(self) -> dict[str, bool]:
        return SCENARIOS[self.scenario]


class ConfigError(ValueError):
    """A parameter is wrong; the message names it and says what would be valid."""


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys (typos) by name."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'parameters'} must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown parameter(s) {', '.join(where + k for k in unknown)}; "
                          f"valid keys here: {sorted(fields)}")
    hints = get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value or {}, f"{where}{key}.")
        else:
            kwargs[key] = value
    return cls(**kwargs)


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _check_number(name: str, value: Any, low: float, high: float | None = None,
                  high_inclusive: bool = False, integer: bool = False) -> None:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigError(f"{name} must be a {'whole ' if integer else ''}number, got {value!r}")
    upper_ok = high is None or (value <= high if high_inclusive else value < high)
    if value < low or not upper_ok:
        bracket = "]" if high_inclusive else ")"
        raise ConfigError(f"{name}={value!r} is outside the valid range [{low}, {high}{bracket}")


def check_sparsity(value: Any) -> float:
    """A target sparsity is a fraction of encoder parameters removed, in [0, 1)."""
    _check_number("sparsity", value, 0.0, 1.0)
    return float(value)


def validate(cfg: StudyConfig) -> StudyConfig:
    """Reject a bad parameter set before any training, naming the bad value and what is valid."""
    for task in cfg.tasks:
        get_task(task)  # raises with the valid list
    cfg.tasks = [get_task(t).name for t in cfg.tasks]
    bad = [s for s in cfg.scenarios if s not in SCENARIOS]
    if bad:
        raise ConfigError(f"unknown scenario(s) {bad}; valid scenarios: {list(SCENARIOS)}")
    if not cfg.tasks or not cfg.scenarios or not cfg.seeds:
        raise ConfigError("tasks, scenarios and seeds must each list at least one value")
    if any(SCENARIOS[s]["prune"] for s in cfg.scenarios) and not cfg.sparsities:
        raise ConfigError("pruning scenarios need at least one value in sparsities")
    for s in cfg.sparsities:
        check_sparsity(s)
    for seed in cfg.seeds:
        _check_number("seed", seed, 0, integer=True)
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device={cfg.device!r} is not valid; use one of auto, cpu, cuda")
    if cfg.precision not in ("fp32", "bf16", "fp16"):
        raise ConfigError(f"precision={cfg.precision!r} is not valid; use one of fp32, bf16, fp16")
    for name in ("max_train_samples", "max_eval_samples"):
        value = getattr(cfg, name)
        if value is not None:
            _check_number(name, value, 1, integer=True)
    _check_number("max_seq_length", cfg.max_seq_length, 8, 4096, high_inclusive=True, integer=True)
    t = cfg.training
    _check_number("training.epochs", t.epochs, 0.0)
    _check_number("training.batch_size", t.batch_size, 1, integer=True)
    _check_number("training.learning_rate", t.learning_rate, 0.0, 1.0)
    _check_number("distill.temperature", cfg.distill.temperature, 1e-6)
    _check_number("distill.alpha", cfg.distill.alpha, 0.0, 1.0, high_inclusive=True)
    _check_number("pruning.epochs", cfg.pruning.epochs, 0.0)
    _check_number("pruning.finetune_epochs", cfg.pruning.finetune_epochs, 0.0)
    _check_number("pruning.sparsity_warmup_ratio", cfg.pruning.sparsity_warmup_ratio, 0.0, 1.0,
                  high_inclusive=True)
    validate_measure(cfg.measure)
    for key in cfg.overrides:
        groups = {"GLUE low", "GLUE high"}
        if key not in groups and key.lower() not in TASKS:
            raise ConfigError(f"overrides key {key!r} is neither a task {sorted(TASKS)} nor a group {sorted(groups)}")
        _build(StudyConfig, cfg.overrides[key], f"overrides[{key}].")  # typos inside overrides too
        merged = _deep_merge({k: v for k, v in dataclasses.asdict(cfg).items() if k != "overrides"},
                             cfg.overrides[key])
        validate_measure(_build(StudyConfig, merged, "").measure, f"overrides[{key}].measure.")
    if cfg.data_dir and not Path(cfg.data_dir).expanduser().is_dir():
        raise ConfigError(f"data_dir {str(cfg.data_dir)!r} does not exist; point it at a glue_data/-style "
                          "folder (TASK/train.tsv, TASK/dev.tsv), or leave it null to use PDA_GLUE_DIR, "
                          "the repository's data/glue, or the hub (online: true)")
    for task in cfg.tasks:
        try:
            locate_task(get_task(task), cfg.data_dir, cfg.online)
        except DataNotFoundError as err:
            raise ConfigError(str(err)) from None
    if cfg.model != EMBEDDED_MODEL and not cfg.online and "/" not in cfg.model and not Path(cfg.model).exists():
        raise ConfigError(f"model {cfg.model!r} is not a local path; use 'embedded', a local "
                          "directory, or set online: true to load it from the hub")
    return cfg


def validate_measure(m: MeasureConfig, where: str = "measure.") -> None:
    """Speed and quantisation settings: known backends, each once, eager_fp32 among them; known INT8 ops."""
    if not isinstance(m.backends, list) or not m.backends:
        raise ConfigError(f"{where}backends={m.backends!r} must be a non-empty list; valid: {list(BACKENDS)}")
    bad = [b for b in m.backends if b not in BACKENDS]
    if bad:
        raise ConfigError(f"{where}backends has unknown backend(s) {bad}; valid: {list(BACKENDS)}")
    if len(set(m.backends)) != len(m.backends):
        raise ConfigError(f"{where}backends={m.backends!r} lists a backend twice; list each once")
    if "eager_fp32" not in m.backends:
        raise ConfigError(f"{where}backends={m.backends!r} must include 'eager_fp32': every record's speed field "
                          "and every other backend's comparison come from it")
    for name in ("speed", "quantize", "quantize_per_channel", "flops", "energy"):
        if not isinstance(getattr(m, name), bool):
            raise ConfigError(f"{where}{name}={getattr(m, name)!r} must be true or false")
    if not isinstance(m.quantize_ops, list) or not m.quantize_ops or any(o not in QUANTIZE_OPS for o in m.quantize_ops):
        raise ConfigError(f"{where}quantize_ops={m.quantize_ops!r} must be a non-empty list of {list(QUANTIZE_OPS)} "
                          "(MatMul: linear layers, Gather: embedding tables)")
    if not isinstance(m.batch_sizes, list) or not m.batch_sizes:
        raise ConfigError(f"{where}batch_sizes={m.batch_sizes!r} must be a non-empty list of whole numbers >= 1")
    for bs in m.batch_sizes:
        _check_number(f"{where}batch_sizes", bs, 1, integer=True)
    _check_number(f"{where}seq_len", m.seq_len, 1, integer=True)
    _check_number(f"{where}warmup", m.warmup, 0, integer=True)
    _check_number(f"{where}rounds", m.rounds, 1, integer=True)
    if m.backend_rounds is not None:
        _check_number(f"{where}backend_rounds", m.backend_rounds, 1, integer=True)
    _check_number(f"{where}threads", m.threads, 1, integer=True)


def load_params(path: str | Path, **changes: Any) -> StudyConfig:
    """Read a YAML parameter file (relative paths resolve from its folder's parent) and validate it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"parameter file {str(path)!r} does not exist")
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    raw = _deep_merge(raw, changes)
    cfg = _build(StudyConfig, raw, "")
    root = path.resolve().parent.parent  # parameters/ sits in the project root
    if cfg.data_dir and not os.path.isabs(os.path.expanduser(cfg.data_dir)):
        cfg.data_dir = str((root / cfg.data_dir).resolve())
    if not os.path.isabs(cfg.output_dir):
        cfg.output_dir = str((root / cfg.output_dir).resolve())
    if cfg.model != EMBEDDED_MODEL and cfg.model.startswith((".", "~")):
        cfg.model = str((root / Path(cfg.model).expanduser()).resolve())
    return validate(cfg)


def share_cores(cfg: StudyConfig, threads: int | None) -> StudyConfig:
    """A run's share of the cores in a parallel study (None: keep the file's settings).

    Training and the speed benchmark both stay within the share, so concurrent runs on one
    machine never oversubscribe it; the record states the threads each measurement used.
    """
    if threads is None:
        return cfg
    _check_number("torch_threads", threads, 1, integer=True)
    measure = dataclasses.replace(cfg.measure, threads=min(cfg.measure.threads, threads))
    return dataclasses.replace(cfg, torch_threads=min(cfg.torch_threads or threads, threads), measure=measure)


def for_run(cfg: StudyConfig, task: str, scenario: str, sparsity: float | None, seed: int) -> RunConfig:
    """The config of one run: group overrides, then task overrides, applied to the study settings."""
    spec = get_task(task)
    if scenario not in SCENARIOS:
        raise ConfigError(f"unknown scenario {scenario!r}; valid scenarios: {list(SCENARIOS)}")
    base = dataclasses.asdict(cfg)
    overrides = base.pop("overrides")
    for key in (spec.group, spec.name):
        match = next((v for k, v in overrides.items() if k.lower() == key.lower()), None)
        if match:
            base = _deep_merge(base, match)
    run_study = _build(StudyConfig, base, "")
    validate_measure(run_study.measure, f"measure (for {spec.name}).")
    if SCENARIOS[scenario]["prune"]:
        sparsity = check_sparsity(sparsity)
    else:
        sparsity = None
    return RunConfig(study=run_study, task=spec.name, scenario=scenario, sparsity=sparsity, seed=int(seed))
