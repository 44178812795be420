"""``python -m pda plan``: what a study will run and roughly how long it takes, without running it.

The estimate is deliberately simple so a reader can redo it by hand:

- steps of one run = ceil(train rows / batch size) batches per epoch x epochs, rounded up as the
  training loop does; a pruned run adds ``pruning.epochs`` and ``pruning.finetune_epochs``
  instead of ``training.epochs``. Train rows are the official GLUE counts, capped by
  ``max_train_samples``, plus those of a transfer set's tasks (``distill.transfer_tasks``, each
  capped the same way); per-task overrides apply.
- forward passes outside those steps (evaluation every ``eval_every_steps``, the teacher's
  logits for distillation) count as train-step equivalents: a forward pass costs about a
  third of a training step (forward + backward), per example.
- run time = (steps + equivalents) x step time + a per-run overhead (kernel start, model
  loading, final evaluation, speed and energy measurement). The step time is given, taken from
  the study's finished runs (per scenario), or timed here per task (``--measure``: the whole model
  at the task's mean batch length, in the study's precision, on the threads one worker gets).
- wall time with N workers = Dask-like greedy scheduling of those run times in grid order,
  every run waiting for its dependencies; each worker is assumed as fast as the step time
  says (one GPU, or the measured CPU threads, per worker).
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import math
import statistics
import time
from pathlib import Path

from pda.config import (
    EMBEDDED_MODEL, SCENARIOS, ConfigError, StudyConfig, check_data, effective_settings, for_run, load_params,
    share_cores, transfer_tasks_of,
)
from pda.data import locate_task, split_file
from pda.records import read_record
from pda.runs import RunSpec, dependencies, expand_grid, runs_dir
from pda.tasks import TaskSpec
from pda.validate import check_file

DEFAULT_OVERHEAD_S = 60.0  # measured 45-70 s per run for the default study on a 2-core CPU
FORWARD_COST = 1 / 3  # a forward pass per example, relative to a training step's forward + backward
SHOWN_WORKERS = (8, 32, 64)


@dataclasses.dataclass
class RunEstimate:
    """The work of one run, in training steps and train-step equivalents of forward passes."""

    spec: RunSpec
    train_rows: int
    batch_size: int
    batches_per_epoch: int
    train_steps: int
    forward_equivalents: float

    @property
    def work(self) -> float:
        return self.train_steps + self.forward_equivalents


@dataclasses.dataclass
class StepTime:
    """Seconds per training step (per scenario where known) and per-run overhead, with their sources."""

    seconds: float
    source: str
    overhead_s: float = DEFAULT_OVERHEAD_S
    overhead_source: str = "default (kernel start, model loading, final evaluation, measurement)"
    per_scenario: dict[str, float] = dataclasses.field(default_factory=dict)
    per_task: dict[str, float] = dataclasses.field(default_factory=dict)

    def run_seconds(self, est: RunEstimate) -> float:
        seconds = self.per_scenario.get(est.spec.scenario, self.per_task.get(est.spec.task, self.seconds))
        return est.work * seconds + self.overhead_s


def split_rows(task: TaskSpec, study: StudyConfig) -> dict[str, int]:
    """Rows per split: GLUE's official counts, or for a study's own task the rows its files hold."""
    if task.official_rows:
        return dict(task.official_rows)
    folder = locate_task(task, study.data_dir, study.online).folder
    return {split: check_file(task, split_file(task, folder, split)).rows for split in ("train", *task.dev_splits)}


def train_rows(task: TaskSpec, study: StudyConfig) -> int:
    rows = split_rows(task, study)["train"]
    return min(rows, study.max_train_samples) if study.max_train_samples else rows


def own_rows(task: TaskSpec, study: StudyConfig) -> int:
    """The task's own training rows a run reads: capped, and doubled when each pair also comes swapped."""
    return train_rows(task, study) * (2 if study.training.swap_pairs else 1)


def dev_rows(task: TaskSpec, study: StudyConfig) -> int:
    rows, cap = split_rows(task, study), study.max_eval_samples
    return sum(min(rows[s], cap) if cap else rows[s] for s in task.dev_splits)


def fit_steps(batches_per_epoch: int, epochs: float) -> int:
    """The steps ``pda.train.fit`` takes: ceil(batches x epochs), at least one, none for 0 epochs."""
    return max(1, math.ceil(batches_per_epoch * epochs)) if epochs > 0 else 0


def evals_during(steps: int, every: int) -> int:
    """Evaluations inside ``fit`` (at multiples of ``every``, not at the last step)."""
    return (steps - 1) // every if every and steps else 0


def estimate_run(cfg: StudyConfig, spec: RunSpec) -> RunEstimate:
    run = for_run(cfg, spec.task, spec.scenario, spec.sparsity, spec.seed)
    study, task, flags = run.study, run.study.task(spec.task), SCENARIOS[spec.scenario]
    t = study.training
    transfer = sum(train_rows(study.task(name), study) for name in transfer_tasks_of(run))
    rows = own_rows(task, study) + transfer
    batches = math.ceil(rows / t.batch_size)
    phases = ([study.pruning.epochs, study.pruning.finetune_epochs] if flags["prune"] else [t.epochs])
    steps = [fit_steps(batches, e) for e in phases]
    forward_rows = sum(evals_during(s, t.eval_every_steps) for s in steps) * dev_rows(task, study)
    forward_rows += transfer  # the teacher labels its transfer set, in this run (pipeline.label_transfer_rows)
    students = (for_run(cfg, spec.task, s, sp, spec.seed)
                for s in cfg.scenarios for sp in (cfg.sparsities if SCENARIOS[s]["prune"] else [None]))
    if spec.scenario == "FT" and study.distill.cache_teacher_logits and any(r.uses_teacher_loss for r in students):
        forward_rows += rows  # its logits over its train set: once, by its first student (pipeline.shared_teacher_logits)
    return RunEstimate(spec, rows, t.batch_size, batches, sum(steps), forward_rows * FORWARD_COST / t.batch_size)


def estimate_grid(cfg: StudyConfig) -> list[RunEstimate]:
    return [estimate_run(cfg, spec) for spec in expand_grid(cfg)]


def makespan(estimates: list[RunEstimate], seconds: dict[RunSpec, float], workers: int) -> float:
    """Wall time when ``workers`` take runs in grid order as soon as their dependencies are done."""
    waiting = [e.spec for e in estimates]
    in_grid = set(waiting)
    finished: set[RunSpec] = set()
    running: list[tuple[float, int, RunSpec]] = []
    now, order = 0.0, 0
    while waiting or running:
        for spec in list(waiting):
            if len(running) >= workers:
                break
            if all(d in finished or d not in in_grid for d in dependencies(spec)):
                waiting.remove(spec)
                order += 1
                heapq.heappush(running, (now + seconds[spec], order, spec))
        now, _, spec = heapq.heappop(running)
        finished.add(spec)
    return now


# --------------------------------------------------------------------------- step time sources


def from_finished_runs(cfg: StudyConfig) -> StepTime | None:
    """Step time = train_time_s / (train steps + equivalents) over this study's finished runs;
    overhead = the executed notebook's duration minus train_time_s (median)."""
    work: dict[str, float] = {}
    secs: dict[str, float] = {}
    overheads = []
    for result in sorted(runs_dir(cfg).glob("*/result.json")):
        try:
            rec = read_record(result.parent)
        except (ValueError, OSError):
            continue
        if not rec.train_steps or not rec.train_time_s:
            continue
        est = estimate_run(cfg, RunSpec(rec.task, rec.scenario, rec.sparsity, rec.seed))
        work[rec.scenario] = work.get(rec.scenario, 0.0) + rec.train_steps + est.forward_equivalents
        secs[rec.scenario] = secs.get(rec.scenario, 0.0) + rec.train_time_s
        duration = notebook_duration(result.parent / "notebook.ipynb")
        if duration is not None:
            overheads.append(max(0.0, duration - rec.train_time_s))
    if not work:
        return None
    mean = sum(secs.values()) / sum(work.values())
    step = StepTime(mean, f"measured from this study's finished runs in {runs_dir(cfg)} (train_time_s / "
                          f"steps, per scenario; scenarios not yet run use the overall {mean:.4g})",
                    per_scenario={s: secs[s] / work[s] for s in work})
    if overheads:
        step.overhead_s = statistics.median(overheads)
        step.overhead_source = f"median over {len(overheads)} finished runs (notebook duration - train_time_s)"
    return step


def notebook_duration(path: Path) -> float | None:
    try:
        return float(json.loads(path.read_text(encoding="utf-8"))["metadata"]["papermill"]["duration"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def per_token_macs(config, seq_len: int) -> float:
    """Multiply-adds per token of a BERT encoder: per layer Q, K, V, O (4h^2), the FFN (2hI) and
    attention scores and mixing (2sh); embeddings and the head are negligible."""
    h, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    return layers * (4 * h * h + 2 * h * inter + 2 * seq_len * h)


def model_config(model: str):
    """The configured model's architecture without the network: a local config, the hub cache,
    or, for a ``bert-base`` name, transformers' ``BertConfig`` defaults (which are BERT-base)."""
    from transformers import AutoConfig, BertConfig

    from pda.models import resolve_model_source

    try:
        return AutoConfig.from_pretrained(resolve_model_source(model), local_files_only=True), "its config"
    except OSError:
        if "bert-base" in model.lower():
            return BertConfig(), "BERT-base (12 layers, hidden 768, FFN 3072; transformers' BertConfig defaults)"
        raise ConfigError(f"cannot read the architecture of {model!r} offline; give --step-seconds") from None


def mean_batch_length(cfg: StudyConfig, task: TaskSpec, tokenizer, batch_size: int) -> float | None:
    """Mean padded length of the training batches a run of ``task`` sees: its training rows tokenized and
    batched as the runs batch them (length-grouped when ``training.group_by_length``), over at most 50
    batches' worth of rows; None when the rows are only on the hub (a plan downloads nothing)."""
    from pda.data import load_split, subsample, tokenize
    from pda.train import make_loader

    study = effective_settings(cfg, task.name)
    source = locate_task(task, study.data_dir, study.online)
    if source.is_hub:
        return None
    rows = load_split(task, "train", source)
    rows = tokenize(subsample(rows, 50 * batch_size, study.data_seed), task, tokenizer, study.max_seq_length)
    loader = make_loader(rows, tokenizer, batch_size, True, 0, study.training.group_by_length)
    return statistics.mean(batch["input_ids"].shape[1] for batch in loader)


def time_training_steps(cfg: StudyConfig, model: str, threads: int, steps: int = 3) -> tuple[dict[str, float], str]:
    """Median seconds of a training step of ``model`` on this machine, per task of the study: the task's
    teacher batch size at its mean batch length (``mean_batch_length``), under the study's precision,
    with the torch threads each worker of the study gets. Every step is priced as the whole model's,
    an upper bound for the pruned and distilled students, whose steps are cheaper."""
    import torch
    import transformers

    from pda.models import load_pretrained_for_task, load_tokenizer
    from pda.precision import autocast, resolve_precision
    from pda.train import pick_device

    transformers.logging.set_verbosity_error()  # "classifier newly initialised" is expected here
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    device = pick_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    tokenizer = load_tokenizer(model)
    per_task, lengths, missing = {}, {}, []
    try:
        for name in cfg.tasks:
            task = cfg.task(name)
            batch_size = for_run(cfg, name, "FT", None, 0).study.training.batch_size
            length = mean_batch_length(cfg, task, tokenizer, batch_size)
            if length is None:  # rows only on the hub: the padded length, an upper bound
                length = float(effective_settings(cfg, name).max_seq_length)
                missing.append(name)
            lengths[name] = length
            net = load_pretrained_for_task(model, task).to(device).train()
            optimizer = torch.optim.AdamW(net.parameters(), lr=1e-5, fused=device.type in ("cpu", "cuda"))
            gen = torch.Generator().manual_seed(0)
            ids = torch.randint(1000, net.config.vocab_size, (batch_size, round(length)), generator=gen)
            ids = ids.to(device)
            labels = torch.zeros(batch_size, dtype=torch.float if task.is_regression else torch.long, device=device)
            times = []
            for _ in range(steps + 1):  # the first step warms up allocators and kernels
                start = time.perf_counter()
                with autocast(precision, device):
                    loss = net(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
            per_task[name] = statistics.median(times[1:])
    finally:
        torch.set_num_threads(previous_threads)
    where = f"{device.type}, {threads} thread(s) per worker" if device.type == "cpu" else device.type
    shown = ", ".join(f"{t} {lengths[t]:.0f}" + (" (rows on the hub only: padded length)" if t in missing else "")
                      for t in cfg.tasks)
    return per_task, (f"{steps} training steps per task of the whole model, {precision}, at each task's mean batch "
                      f"length in tokens ({shown}), on this machine ({where}); an upper bound for pruned and "
                      "distilled students")


def measure(cfg: StudyConfig, threads: int = 1) -> StepTime:
    """Time the configured model here; a model not available offline is timed as the embedded
    model and scaled by the ratio of multiply-adds per token of the two architectures."""
    local = cfg.model == EMBEDDED_MODEL or Path(cfg.model).exists()
    probe = cfg.model if local else EMBEDDED_MODEL
    per_task, how = time_training_steps(cfg, probe, threads)
    ratio, scaled = 1.0, f"measured: {probe}, {how}"
    if not local:
        target, described = model_config(cfg.model)
        embedded, _ = model_config(EMBEDDED_MODEL)
        ratio = per_token_macs(target, cfg.max_seq_length) / per_token_macs(embedded, cfg.max_seq_length)
        scaled = (f"scaled: the embedded model measured ({how}), x {ratio:.2f} = the ratio of multiply-adds per "
                  f"token, L(4h^2 + 2hI + 2sh) at s={cfg.max_seq_length}, of {cfg.model} ({described}) to the "
                  f"embedded model ({embedded.num_hidden_layers} layers, hidden {embedded.hidden_size}, "
                  f"FFN {embedded.intermediate_size})")
    per_task = {t: v * ratio for t, v in per_task.items()}
    return StepTime(statistics.mean(per_task.values()), scaled, per_task=per_task)


def choose_step_time(cfg: StudyConfig, step_seconds: float | None, do_measure: bool,
                     threads: int = 1) -> StepTime | None:
    """Given beats measured-from-finished-runs beats timed-here; None when there is nothing to go on."""
    finished = from_finished_runs(cfg)
    if step_seconds is not None:
        chosen = StepTime(step_seconds, "given (--step-seconds)")
    elif finished is not None:
        return finished
    elif do_measure:
        chosen = measure(cfg, threads)
    else:
        return None
    if finished is not None:  # the overhead is still best measured, whatever the step time
        chosen.overhead_s, chosen.overhead_source = finished.overhead_s, finished.overhead_source
    return chosen


# --------------------------------------------------------------------------- the report


def human(seconds: float) -> str:
    for unit, size in (("years", 365 * 86400), ("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def table(header: list[str], rows: list[list[object]]) -> str:
    cells = [header] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
                     for row in cells)


def grid_section(cfg: StudyConfig, specs: list[RunSpec]) -> list[str]:
    """Runs per scenario and task, and who waits for whom."""
    scenarios = [s for s in SCENARIOS if any(x.scenario == s for x in specs)]
    count = {(s, t): sum(1 for x in specs if (x.scenario, x.task) == (s, t)) for s in scenarios for t in cfg.tasks}
    rows = [[s, *(count[s, t] for t in cfg.tasks), sum(count[s, t] for t in cfg.tasks)] for s in scenarios]
    rows.append(["total", *(sum(count[s, t] for s in scenarios) for t in cfg.tasks), len(specs)])
    needs_ft = sum(1 for x in specs if any(d.scenario == "FT" for d in dependencies(x)))
    needs_d = sum(1 for x in specs if any(d.scenario == "D" for d in dependencies(x)))
    return ["Runs per scenario and task", table(["scenario", *cfg.tasks, "total"], rows), "",
            f"Dependencies: {needs_ft} runs (P, D, and their combinations) start after the FT teacher of their "
            f"task and seed; {needs_d} (P+D, P+D+A) also after the D student they prune. Independent tasks and "
            "seeds run concurrently.", ""]


def steps_section(cfg: StudyConfig, estimates: list[RunEstimate]) -> list[str]:
    """Steps per run for each task and scenario (they do not depend on sparsity or seed)."""
    scenarios = [s for s in SCENARIOS if any(e.spec.scenario == s for e in estimates)]
    first: dict[tuple[str, str], RunEstimate] = {}
    for e in estimates:
        first.setdefault((e.spec.task, e.spec.scenario), e)

    def cell(e: RunEstimate | None) -> str:
        if e is None:
            return "-"
        return f"{e.train_steps}" + (f"+{e.forward_equivalents:.0f}" if e.forward_equivalents >= 0.5 else "")

    rows = []
    for t in cfg.tasks:
        study = effective_settings(cfg, t)  # the task's settings; a scenario's own budget shows in its cell
        task_rows = own_rows(study.task(t), study)
        batch = study.training.batch_size
        epochs = f"{study.training.epochs:g} / {study.pruning.epochs:g}+{study.pruning.finetune_epochs:g}"
        rows.append([t, task_rows, batch, math.ceil(task_rows / batch), epochs,
                     *(cell(first.get((t, s))) for s in scenarios)])
    total_steps = sum(e.train_steps for e in estimates)
    total_fwd = sum(e.forward_equivalents for e in estimates)
    return ["Training steps per run: ceil(train rows / batch) per epoch x epochs (pruned runs: pruning.epochs + "
            "pruning.finetune_epochs), + forward passes (evaluation during training, teacher logits) in "
            "train-step equivalents",
            table(["task", "rows", "batch", "batches/epoch", "epochs / prune+ft", *scenarios], rows),
            f"Total: {total_steps:,} training steps + {total_fwd:,.0f} forward-pass step equivalents", ""]


def time_section(estimates: list[RunEstimate], step: StepTime, workers: int) -> list[str]:
    """Step time and overhead with their sources, then the wall time serially and with N workers."""
    seconds = {e.spec: step.run_seconds(e) for e in estimates}
    out = [f"Step time: {step.seconds:.4g} s/step; source: {step.source}"]
    if step.per_scenario:
        out.append("  per scenario: " + ", ".join(f"{s} {v:.4g}" for s, v in step.per_scenario.items()))
    if step.per_task:
        out.append("  per task: " + ", ".join(f"{t} {v:.4g}" for t, v in step.per_task.items()))
    out += [f"Per-run overhead: {step.overhead_s:.0f} s; source: {step.overhead_source}", "", "Projected wall time"]
    serial = sum(seconds.values())
    rows = [["1 (serial)", human(serial), "100%"]]
    for n in sorted({workers, *SHOWN_WORKERS} - {0, 1}):
        span = makespan(estimates, seconds, n)
        rows.append([str(n), human(span), f"{serial / (n * span):.0%}"])
    return out + [table(["workers", "wall time", "busy"], rows),
                  "(busy = share of worker time spent running; each worker assumed as fast as the step time, "
                  "e.g. one GPU or the measured CPU threads each)"]


def runs_section(estimates: list[RunEstimate], step: StepTime | None) -> list[str]:
    rows = [[e.spec.run_id, ",".join(d.run_id for d in dependencies(e.spec)) or "-", e.train_steps,
             f"{e.forward_equivalents:.0f}", human(step.run_seconds(e)) if step else "-"] for e in estimates]
    return ["", table(["run", "after", "steps", "fwd", "time"], rows)]


def describe(cfg: StudyConfig, params_file: Path, estimates: list[RunEstimate], step: StepTime | None,
             workers: int, show_runs: bool = False) -> str:
    specs = [e.spec for e in estimates]
    out = [f"Study {cfg.study_name!r} ({params_file}): {len(specs)} runs, model {cfg.model}",
           check_data(cfg).summary(), ""]
    out += grid_section(cfg, specs) + steps_section(cfg, estimates)
    if step is None:
        out.append("No step time: give --step-seconds X, or --measure to time a few training steps here.")
    else:
        out += time_section(estimates, step, workers)
    if show_runs:
        out += runs_section(estimates, step)
    return "\n".join(out)


def plan(params_file: Path, workers: int = 2, step_seconds: float | None = None, do_measure: bool = False,
         overhead_s: float | None = None, show_runs: bool = False) -> str:
    cfg = load_params(params_file)
    from pda.scaleout import thread_budget

    threads = share_cores(cfg, thread_budget(workers)).torch_threads  # what each run of such a study gets
    step = choose_step_time(cfg, step_seconds, do_measure, threads)
    if step is not None and overhead_s is not None:
        step.overhead_s, step.overhead_source = overhead_s, "given (--overhead-seconds)"
    return describe(cfg, Path(params_file), estimate_grid(cfg), step, workers, show_runs)
