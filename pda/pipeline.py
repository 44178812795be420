"""One run end to end: build the scenario's model, train it, export, measure, and write its record."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import datasets
import torch
import transformers

from pda import backends, checkpoint, distill, fingerprint, measure, resume
from pda.config import RunConfig, transfer_tasks_of
from pda.data import load_split, locate_task, subsample, tokenize, transfer_rows, with_swapped_pairs
from pda.export import evaluate_session
from pda.metrics import predictions_from_logits, task_metrics
from pda.precision import autocast, precision_info, resolve_precision
from pda.models import load_pretrained_for_task, load_tokenizer, resolve_model_source, task_head_prefixes
from pda.records import RunRecord, atomic_write_text, write_record
from pda.runs import MODEL_DIR, RunSpec, dependencies, is_done, move_aside, parent_of, run_dir, run_state, teacher_of
from pda.tasks import CUSTOM_GROUP, TaskSpec, spec_to_dict
from pda.train import (fit, keep_word_embeddings, make_loader, model_inputs, pick_device, predict, seed_everything,
                       task_loss)


def configure_environment(online: bool) -> None:
    """Offline unless asked: a hub miss otherwise costs ~23 s of retries per call."""
    if not online:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    logging.getLogger("adapters").setLevel(logging.ERROR)


@dataclasses.dataclass
class TaskData:
    """Tokenised train split and one loader per dev split.

    ``transfer_from``: the first ``idx`` of the transfer set's rows in ``train`` (other tasks' inputs, whose
    labels the teacher gives: ``label_transfer_rows``), None without one. Dev splits are the task's own.
    """

    task: TaskSpec
    train: Any
    dev: dict[str, Any]
    tokenizer: Any
    transfer_from: int | None = None


def prepare_data(cfg: RunConfig, tokenizer) -> TaskData:
    study, task = cfg.study, cfg.study.task(cfg.task)
    source = locate_task(task, study.data_dir, study.online)
    full_train = load_split(task, "train", source)
    train = subsample(full_train, study.max_train_samples, study.data_seed)
    if study.training.swap_pairs:
        train = with_swapped_pairs(train, task, offset=len(full_train))
    transfer_from = None
    if transfer_tasks_of(cfg):
        transfer_from = 2 * len(full_train)  # past the task's rows and their swapped copies, in every run
        sources = []
        for name in transfer_tasks_of(cfg):
            other = study.task(name)
            rows = load_split(other, "train", locate_task(other, study.data_dir, study.online))
            sources.append((other, subsample(rows, study.max_train_samples, study.data_seed), len(rows)))
        extra = transfer_rows(task, sources, transfer_from).cast(train.features)
        train = datasets.concatenate_datasets([train, extra])
    dev = {s: subsample(load_split(task, s, source), study.max_eval_samples, study.data_seed)
           for s in task.dev_splits}
    tok = lambda ds: tokenize(ds, task, tokenizer, study.max_seq_length)  # noqa: E731
    return TaskData(task, tok(train), {s: sort_by_length(tok(ds)) for s, ds in dev.items()}, tokenizer, transfer_from)


def label_transfer_rows(data: TaskData, cache: distill.TeacherLogitCache) -> TaskData:
    """``data`` with the transfer set's placeholder labels replaced by the teacher's: its predicted class
    (or value, for regression), so the task loss has a target where the task's own label is missing."""
    if data.transfer_from is None:
        return data
    idx = list(data.train["idx"])
    teacher = distill.teacher_labels(cache.get(idx), data.task.is_regression)
    labels = [t if i >= data.transfer_from else own for i, t, own in zip(idx, teacher, data.train["label"])]
    train = data.train.remove_columns("label").add_column("label", labels).cast(data.train.features)
    return dataclasses.replace(data, train=train)


def sort_by_length(ds):
    """Evaluation order does not change a metric; sorted batches carry little padding."""
    lengths = [len(ids) for ids in ds["input_ids"]]
    return ds.select(sorted(range(len(ds)), key=lengths.__getitem__))


def evaluate(model: torch.nn.Module, data: TaskData, batch_size: int, device: torch.device,
             precision: str = "fp32") -> dict[str, float]:
    """GLUE metrics of ``model`` on every dev split of the task."""
    per_split = {}
    for split, ds in data.dev.items():
        logits, labels = predict(model, make_loader(ds, data.tokenizer, batch_size, False, 0), device, precision)
        per_split[split] = (predictions_from_logits(data.task, logits), labels)
    return task_metrics(data.task, per_split)


class TrainableModule:
    """Extra trainable parameters for the loop (the layer-distillation map), with no loss of their own."""

    def __init__(self, module: torch.nn.Module, learning_rate: float) -> None:
        self.module, self.learning_rate = module, learning_rate

    def param_groups(self) -> list[dict[str, Any]]:
        return [{"params": list(self.module.parameters()), "lr": self.learning_rate, "weight_decay": 0.0}]

    def extra_loss(self, step: int, total_steps: int) -> tuple[torch.Tensor, dict[str, float]]:
        return torch.zeros((), device=next(self.module.parameters()).device), {}

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])


def distill_loss(model: torch.nn.Module, teacher: torch.nn.Module, data: TaskData, cfg: RunConfig,
                 device: torch.device, precision: str = "fp32", cache: distill.TeacherLogitCache | None = None,
                 ) -> tuple[Any, tuple[TrainableModule, ...]]:
    """Student loss = alpha * T^2 * KL(teacher || student at temperature T) + (1 - alpha) * task loss.

    With ``distill.layer_distill`` (CoFi's layer loss, off by default) each student layer's hidden
    states are also matched, through a learned linear map, to the teacher layer it was copied
    from; the teacher then runs online (its hidden states are not cached). ``cache``: the teacher's
    logits for these rows if the caller already has them (a transfer set's labels come from them).
    """
    d = cfg.study.distill
    teacher.to(device).eval()  # online (layer distillation) or to fill the cache: either way on the run's device
    distiller = None
    if d.layer_distill:
        mapping = getattr(model.config, "pda_student_layers", None) or list(range(model.config.num_hidden_layers))
        distiller = distill.LayerDistiller(model.config.hidden_size, teacher.config.hidden_size, mapping).to(device)
    if not d.cache_teacher_logits or distiller is not None:
        cache = None
    elif cache is None:
        cache = shared_teacher_logits(cfg, teacher, data, device, precision)

    def loss_fn(model, batch):
        inputs = model_inputs(batch, device)
        out = model(**inputs, output_hidden_states=distiller is not None)
        logits = out.logits
        if cache is not None:
            t_logits = cache.get(batch["idx"]).to(device)
        else:
            with torch.no_grad():
                t_out = teacher(**inputs, output_hidden_states=distiller is not None)
            t_logits = t_out.logits
        loss = distill.kd_loss(logits, t_logits, batch["labels"].to(device), d.temperature, d.alpha,
                               data.task.is_regression)
        logs = {}
        if distiller is not None:
            layer_loss = distiller(out.hidden_states, t_out.hidden_states, inputs.get("attention_mask"))
            loss = loss + d.layer_distill_weight * layer_loss
            logs["layer_distill_loss"] = float(layer_loss.detach())
        if not data.task.is_regression:
            logs["teacher_agreement"] = float((logits.argmax(-1) == t_logits.argmax(-1)).float().mean())
        return loss, logs

    extensions = (TrainableModule(distiller, cfg.study.training.learning_rate),) if distiller is not None else ()
    return loss_fn, extensions


TEACHER_LOGITS_DIR = "teacher_logits"


def shared_teacher_logits(cfg: RunConfig, teacher: torch.nn.Module, data: TaskData, device: torch.device,
                          precision: str) -> distill.TeacherLogitCache:
    """The FT teacher's logits for this run's training rows, from a file in the teacher's run folder.

    Every student of a teacher (D, D+A and the eight pruned runs of a task) trains on the same rows or a
    subset of them (training subsets are nested), so the teacher's forward pass over its own training rows
    runs once, by whichever student comes first, instead of once per student. Rows are filled in
    length-sorted batches in a fixed order, so the file does not depend on which student made it; rows a
    student has beyond the teacher's are added in a second pass. The file sits in the teacher's folder:
    a teacher made again (stale) takes its logits aside with it. A student with a transfer set keeps its
    logits in a file of that set's own (its rows' idx depend on the tasks listed), begun from the plain one.
    """
    spec = teacher_of(run_spec(cfg))
    folder = run_dir(cfg.study, spec.run_id) / TEACHER_LOGITS_DIR
    plain = folder / f"{precision}-len{cfg.study.max_seq_length}.safetensors"
    meta = {"teacher_run": spec.run_id, "precision": precision, "max_seq_length": str(cfg.study.max_seq_length)}
    path, cache = plain, None
    transfer = transfer_tasks_of(cfg)
    if transfer:
        path = plain.with_name(f"{plain.stem}-transfer-{'-'.join(transfer)}.safetensors")
        if not path.exists() and plain.exists():
            cache = distill.TeacherLogitCache.load(plain, meta)  # the teacher's own rows, already computed
        meta = {**meta, "transfer_tasks": ",".join(transfer)}
    if path.exists():
        cache = distill.TeacherLogitCache.load(path, meta)
    rows = list(data.train["idx"])
    if cache is not None and not cache.missing(rows):
        return cache
    if cache is None:
        cache = distill.TeacherLogitCache(0, data.task.num_labels)
        teacher_rows = prepare_data(cfg.other(spec.task, spec.scenario, spec.sparsity, spec.seed), data.tokenizer).train
        _fill(cache, teacher, teacher_rows, data.tokenizer, cfg, device, precision)
    extra = set(cache.missing(rows))
    if extra:
        _fill(cache, teacher, data.train.filter(lambda row: row["idx"] in extra), data.tokenizer, cfg, device, precision)
    cache.save(path, meta)
    return cache


def _fill(cache: distill.TeacherLogitCache, teacher: torch.nn.Module, rows, tokenizer, cfg: RunConfig,
          device: torch.device, precision: str) -> None:
    loader = make_loader(sort_by_length(rows), tokenizer, cfg.study.training.eval_batch_size, False, 0)
    with autocast(precision, device):  # the teacher's logits in the precision students train against
        cache.fill(teacher, loader)


def load_run_model(cfg: RunConfig, spec: RunSpec) -> torch.nn.Module:
    """The saved model of a finished run this run depends on (its teacher or parent), made from today's inputs."""
    rid = spec.run_id
    if not is_done(cfg.study, rid, fingerprint.fingerprint(cfg.other(spec.task, spec.scenario, spec.sparsity,
                                                                     spec.seed))):
        raise FileNotFoundError(f"run {cfg.task}/{cfg.scenario} needs run {rid!r} first, made from the current "
                                f"settings; expected {run_dir(cfg.study, rid)}/result.json with a matching "
                                "fingerprint (run the study, which orders them)")
    return checkpoint.load_model(run_dir(cfg.study, rid) / MODEL_DIR)


def run_spec(cfg: RunConfig) -> RunSpec:
    return RunSpec(cfg.task, cfg.scenario, cfg.sparsity, cfg.seed)


def build_model(cfg: RunConfig, data: TaskData) -> tuple[torch.nn.Module, torch.nn.Module | None, float]:
    """The model this scenario trains, the teacher it distils from (or None), and its learning rate."""
    flags, study, spec = cfg.flags, cfg.study, run_spec(cfg)
    teacher = None
    if cfg.uses_teacher_loss:
        teacher = load_run_model(cfg, teacher_of(spec))
        teacher.eval().requires_grad_(False)
    if flags["prune"] and flags["distill"]:
        model = load_run_model(cfg, parent_of(spec))  # the distilled student
    elif flags["distill"]:
        layers = distill.resolve_student_layers(study.distill.student_layers, teacher.config.num_hidden_layers)
        model = distill.make_student(teacher, layers)
    elif flags["prune"]:
        model = load_run_model(cfg, teacher_of(spec))
    else:
        model = load_pretrained_for_task(study.model, data.task)
    model.requires_grad_(True)
    if not study.training.train_word_embeddings:
        keep_word_embeddings(model)
    lr = study.training.learning_rate
    if flags["adapters"]:
        from pda import adapters as pda_adapters  # the adapters library takes seconds to import: only when used

        pda_adapters.add_adapters(model, study.adapters)
        lr = study.adapters.learning_rate
    elif not flags["finetune"]:  # base: the task head alone on the untouched encoder, the head A trains
        head = task_head_prefixes(model, study.adapters.train_pooler)
        for name, param in model.named_parameters():
            param.requires_grad = name.startswith(head)
        lr = study.adapters.learning_rate
    return model, teacher, lr


def environment_info(device: torch.device, requested: str, precision: str) -> dict[str, Any]:
    name = measure.device_name(device)
    return {
        "device": device.type, "device_name": name, "torch_threads": torch.get_num_threads(),
        **precision_info(requested, precision, device), "torch": torch.__version__,
        "transformers": transformers.__version__, "python": platform.python_version(),
    }


def run(cfg: RunConfig, with_dependencies: bool = False) -> RunRecord:
    """Train, export, measure and record one run; the record is written last, atomically.

    With ``with_dependencies`` a missing teacher (or distilled parent) is run first, so a
    reader can execute any scenario notebook on its own; a study orders them anyway.
    """
    study = cfg.study
    if with_dependencies:
        for dep in dependencies(run_spec(cfg)):
            dep_cfg = cfg.other(dep.task, dep.scenario, dep.sparsity, dep.seed)
            state = run_state(study, dep.run_id, fingerprint.fingerprint(dep_cfg))
            if state == "stale":  # made from other inputs: kept aside, made again
                why = fingerprint.why_stale(dep_cfg)
                print(f"stale {dep.run_id} ({why}): moved to {move_aside(study, dep.run_id)}; running it again")
            if state != "done":
                run(dep_cfg, with_dependencies=True)
    run_fingerprint = fingerprint.record_entry(cfg)
    configure_environment(study.online)
    if study.torch_threads:
        torch.set_num_threads(study.torch_threads)
    device = pick_device(study.device)
    precision = resolve_precision(study.precision, device)
    seed_everything(cfg.seed)
    spec = run_spec(cfg)
    out = run_dir(study, spec.run_id)
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / TEACHER_LOGITS_DIR, ignore_errors=True)  # an earlier model's, if this folder held one
    checkpoints = resume.Checkpointer(out / resume.CHECKPOINT_DIR, run_fingerprint, study.checkpoint_every_minutes)
    opened = checkpoints.open()  # an earlier attempt's checkpoint of this run, if its inputs were the same
    if opened:
        print(opened)
    tokenizer = load_tokenizer(study.model)
    data = prepare_data(cfg, tokenizer)
    t = study.training
    model, teacher, lr = build_model(cfg, data)
    model.to(device)  # before anything attaches to it (gates, distiller) or evaluates it, even with 0 steps
    logits = None
    if data.transfer_from is not None:  # the transfer set's labels: the teacher's, through the shared logit file
        logits = shared_teacher_logits(cfg, teacher.to(device).eval(), data, device, precision)
        data = label_transfer_rows(data, logits)
    loss_fn, extensions = (distill_loss(model, teacher, data, cfg, device, precision, logits) if teacher is not None
                           else (task_loss(data.task.is_regression), ()))
    loader = make_loader(data.train, tokenizer, t.batch_size, True, cfg.seed, t.group_by_length)
    eval_fn = lambda m: evaluate(m, data, t.eval_batch_size, device, precision)  # noqa: E731
    common = dict(device=device, precision=precision, weight_decay=t.weight_decay,
                  warmup_ratio=t.warmup_ratio, max_grad_norm=t.max_grad_norm,
                  evaluate=eval_fn, eval_every_steps=t.eval_every_steps, log_every_steps=t.log_every_steps,
                  extensions=extensions)
    record_extra: dict[str, Any] = {}
    energy_cm = measure.track_energy if study.measure.energy else None
    with (energy_cm(out, study.measure.country_iso_code, "train") if energy_cm else nullcontext()) as train_energy:
        if cfg.flags["prune"]:
            from pda.prune_run import prune_and_export
            model, history, record_extra = prune_and_export(model, loader, cfg, lr, loss_fn, common, checkpoints)
        else:
            history = fit(model, loader, epochs=t.epochs, learning_rate=lr, loss_fn=loss_fn,
                          desc=f"{spec.run_id}", checkpoints=checkpoints.phase(resume.TRAIN), **common)
    model.eval()
    with (energy_cm(out, study.measure.country_iso_code, "inference") if energy_cm else nullcontext()) as inf_energy:
        start = time.perf_counter()
        metrics = evaluate(model, data, t.eval_batch_size, device, precision)
        eval_time = time.perf_counter() - start
    model_dir = out / MODEL_DIR
    checkpoint.save_model(model, model_dir, tokenizer=tokenizer)
    atomic_write_text(out / "history.json", json.dumps(dataclasses.asdict(history), indent=1) + "\n")
    reference = load_pretrained_for_task(study.model, data.task).to(device)  # the uncompressed architecture
    sizes = measurements(model, reference, model_dir, study, device, data)
    notes = sizes.pop("notes", [])
    task = data.task
    record = RunRecord(
        run_id=spec.run_id, task=cfg.task, scenario=cfg.scenario, sparsity=cfg.sparsity, seed=cfg.seed,
        prune=cfg.flags["prune"], distill=cfg.flags["distill"], adapters=cfg.flags["adapters"],
        model=study.model if study.model != "embedded" else f"embedded:{Path(resolve_model_source(study.model)).parent.name}",
        teacher_run_id=teacher_of(spec).run_id if teacher_of(spec) else None,
        parent_run_id=parent_of(spec).run_id if parent_of(spec) else None,
        task_spec=spec_to_dict(task) if task.group == CUSTOM_GROUP else None, main_metric=task.main_metric, main_metric_value=metrics.get(task.main_metric), metrics=metrics,
        train_time_s=round(history.train_time_s, 3), eval_time_s=round(eval_time, 3), train_steps=history.steps,
        energy={"train": train_energy.to_dict() if train_energy else None,
                "inference": inf_energy.to_dict() if inf_energy else None},
        environment=environment_info(device, study.precision, precision), fingerprint=run_fingerprint,
        notes=checkpoints.notes(), **sizes, **record_extra,
    )
    record.notes.extend(notes)
    if data.transfer_from is not None:
        extra = sum(1 for i in data.train["idx"] if i >= data.transfer_from)
        record.notes.append(f"transfer set: {extra} of {len(data.train)} training rows are "
                            f"{', '.join(transfer_tasks_of(cfg))} inputs labelled by the teacher")
    write_record(record, out)
    checkpoints.remove()  # the record has landed: nothing left to resume
    return record


def measurements(model, reference, model_dir: Path, study, device, data: TaskData | None = None) -> dict[str, Any]:
    """Size, FLOPs, speed on every backend and the INT8 variant, next to the uncompressed reference, in one process.

    Speed is measured on the deployable form of both models (what ``from_pretrained(...,
    trust_remote_code=True)`` gives); ``speed`` is its eager fp32 backend. A model that form cannot
    represent (not a BERT) is timed as it is, eager fp32 only, with a note.
    """
    m = study.measure
    model.to(device)
    reference.to(device)
    params, ref_params = measure.count_parameters(model), measure.count_parameters(reference)
    out: dict[str, Any] = {
        "params": params, "teacher_params": ref_params,
        "bytes_on_disk": measure.bytes_on_disk(model_dir),
        "sparsity_achieved": {
            "encoder": round(1 - params["encoder"] / ref_params["encoder"], 6),
            "total": round(1 - params["total"] / ref_params["total"], 6),
        },
        "notes": [],
    }
    out["teacher_bytes_on_disk"] = checkpoint.weights_bytes(reference)  # as save_model would write it
    if m.flops:
        ours, theirs = measure.flops_per_example(model, m.seq_len), measure.flops_per_example(reference, m.seq_len)
        out["flops"] = {"per_example": ours, "teacher_per_example": theirs,
                        "reduction_bound": round(theirs / ours, 4), "seq_len": m.seq_len}
    if not (m.speed or m.quantize):
        return out
    try:
        deployable, deployable_ref = checkpoint.deployable_model(model), checkpoint.deployable_model(reference.to(device))
    except ValueError as err:  # not a BERT: no deployable form, so no ONNX either
        out["notes"].append(f"backends and INT8 not measured: {err}")
        if m.speed:
            bench = measure.benchmark_latency({"model": model, "teacher": reference}, tuple(m.batch_sizes),
                                              m.seq_len, m.warmup, m.rounds, m.threads)
            out["speed"] = backends.speed_record(bench, "model", "teacher")
        return out
    evaluate_int8 = (lambda session: evaluate_session(session, data, study.training.eval_batch_size)) \
        if data is not None else None
    later = m.speed and m.timing == "after_study"
    if later:
        out["notes"].append("speed not timed in the run: the study times every model once all runs have trained "
                            "(measure.timing: after_study, runs/<id>/retime.json)")
    now = dataclasses.replace(m, speed=False) if later else m
    with tempfile.TemporaryDirectory(dir=model_dir.parent) as work:
        deploy = backends.measure_deployment(deployable, deployable_ref, now, Path(work), onnx_cache_dir(study),
                                             evaluate_int8, data.task.main_metric if data is not None else None)
    if deploy["quantized"] is not None:
        deploy["quantized"]["teacher_bytes_on_disk"] = out["teacher_bytes_on_disk"]
    out["notes"].extend(deploy.pop("notes"))
    out.update(deploy)
    return out


def onnx_cache_dir(study) -> Path:
    """Where the reference's ONNX files are cached for every run of the study (see ``backends.reference_onnx``)."""
    return Path(study.output_dir) / "cache" / "onnx"
