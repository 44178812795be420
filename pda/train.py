"""The one training loop: every scenario is this loop with a different loss and optional extensions."""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding, get_linear_schedule_with_warmup
from transformers.trainer_pt_utils import LengthGroupedSampler

from pda.precision import autocast, autocast_dtype
from pda.progress import Progress
from pda.resume import DataCursor, LoopState, Phase

Batch = dict[str, torch.Tensor]
LossFn = Callable[[torch.nn.Module, Batch], tuple[torch.Tensor, dict[str, float]]]


class LoopExtension(Protocol):
    """Something that trains alongside the model (e.g. pruning gates and their Lagrangian)."""

    def param_groups(self) -> list[dict[str, Any]]: ...

    def extra_loss(self, step: int, total_steps: int) -> tuple[torch.Tensor, dict[str, float]]: ...

    # Optional: ``after_step(steps_done, total_steps)``, called after every optimiser step.
    # With checkpoints (pda.resume): ``state_dict()`` and ``load_state_dict(state)`` for whatever the
    # extension holds besides its optimiser (gates, multipliers, a trace), as tensors and JSON values.


@dataclasses.dataclass
class History:
    """What happened during training, step by step, for the notebooks' curves."""

    steps: int = 0
    train_time_s: float = 0.0
    log: list[dict[str, float]] = dataclasses.field(default_factory=list)
    evals: list[dict[str, float]] = dataclasses.field(default_factory=list)


def seed_everything(seed: int) -> None:
    """Same seed and parameters give the same numbers on CPU."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one is an error, not a fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was asked for but torch sees no CUDA device; use auto or cpu")
    return torch.device(name)


def keep_word_embeddings(model: torch.nn.Module) -> None:
    """Freeze the word embeddings (``training.train_word_embeddings: false``): half of a small BERT's weights,
    whose dense gradient, clipping and AdamW update every step pays for even though a batch uses few rows."""
    model.get_input_embeddings().weight.requires_grad_(False)


def make_loader(ds, tokenizer, batch_size: int, shuffle: bool, seed: int,
                group_by_length: bool = False) -> DataLoader:
    """Dynamic padding; a seeded generator makes the shuffle order part of the run's seed.

    ``group_by_length`` (training only) uses transformers' LengthGroupedSampler: random
    mega-batches sorted by length, so little compute goes to padding on CPU.
    """
    generator = torch.Generator().manual_seed(seed)
    collate = DataCollatorWithPadding(tokenizer, return_tensors="pt")
    ds = ds.with_format("torch")
    if shuffle and group_by_length:
        lengths = [len(ids) for ids in ds.with_format(None)["input_ids"]]
        sampler = LengthGroupedSampler(batch_size, lengths=lengths, generator=generator)
        return DataLoader(ds, batch_size=batch_size, sampler=sampler, collate_fn=collate)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, collate_fn=collate, generator=generator)


# Keys of a batch that go into a BERT forward (the rest, e.g. ``labels``/``idx``, do not).
MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


def model_inputs(batch: Batch, device: torch.device | str | None = None) -> Batch:
    """The tensors a BERT forward takes (``idx``, ``labels`` and anything else stay out)."""
    return {k: (v.to(device) if device is not None else v) for k, v in batch.items() if k in MODEL_INPUT_KEYS}


def task_loss(regression: bool) -> LossFn:
    """Cross-entropy for classification, MSE for regression: the plain fine-tuning objective."""

    def loss_fn(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        device = next(model.parameters()).device
        logits = model(**model_inputs(batch, device)).logits
        labels = batch["labels"].to(device)
        if regression:
            loss = torch.nn.functional.mse_loss(logits.squeeze(-1), labels.float())
        else:
            loss = torch.nn.functional.cross_entropy(logits, labels)
        return loss, {}

    return loss_fn


@torch.no_grad()
def predict(model: torch.nn.Module, loader: Iterable[Batch], device: torch.device,
            precision: str = "fp32") -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels over a whole loader, in eval mode (under autocast for a bf16/fp16 precision)."""
    was_training = model.training
    model.eval()
    logits, labels = [], []
    for batch in loader:
        with autocast(precision, device):
            out = model(**model_inputs(batch, device)).logits
        logits.append(out.float().cpu())
        labels.append(batch["labels"])
    model.train(was_training)
    return torch.cat(logits).numpy(), torch.cat(labels).numpy()


def total_steps(loader: DataLoader, epochs: float) -> int:
    """Optimiser steps of ``epochs`` over ``loader``: a fractional epoch rounds up to a whole batch."""
    return max(1, math.ceil(len(loader) * epochs)) if epochs > 0 else 0


def fit(
    model: torch.nn.Module,
    loader: DataLoader,
    *,
    epochs: float,
    learning_rate: float,
    loss_fn: LossFn,
    device: torch.device,
    precision: str = "fp32",  # resolved: fp32, bf16 or fp16 (see pda.precision)
    weight_decay: float = 0.0,
    warmup_ratio: float = 0.0,
    max_grad_norm: float = 1.0,
    extensions: tuple[LoopExtension, ...] = (),
    evaluate: Callable[[torch.nn.Module], dict[str, float]] | None = None,
    eval_every_steps: int = 0,
    log_every_steps: int = 10,
    desc: str = "train",
    checkpoints: Phase | None = None,
) -> History:
    """Train ``model`` for ``epochs`` (fractions allowed) with AdamW and linear decay.

    Only parameters with ``requires_grad`` train, so freezing (adapters) is decided by the
    caller. Extensions add parameter groups and a loss term per step (pruning adds gates
    trained by descent and Lagrange multipliers trained by ascent). With ``checkpoints``
    (``pda.resume``) the loop starts from a saved state of this phase if there is one, and saves
    its state when one is due and at the end; the numbers are the same either way.
    """
    history = History()
    if epochs > 0 and len(loader) == 0:  # else the loop below would wait forever for a first batch
        raise ValueError("the training set is empty: no batch to train on; check the task's train.tsv "
                         "and max_train_samples")
    total = total_steps(loader, epochs)
    if total == 0:
        return history
    model.to(device).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("nothing to train: every parameter of the model is frozen")
    groups = [{"params": trainable, "lr": learning_rate, "weight_decay": weight_decay}]
    # The fused kernel: one pass over all weights; the per-tensor loop took ~1/6 of a CPU step.
    optimizer = torch.optim.AdamW(groups, fused=device.type in ("cpu", "cuda"))
    ext_optimizers = []
    for ext in extensions:
        for group in ext.param_groups():
            group = dict(group)
            maximize = group.pop("maximize", False)
            ext_optimizers.append(torch.optim.AdamW([group], weight_decay=0.0, maximize=maximize))
    scheduler = get_linear_schedule_with_warmup(optimizer, int(warmup_ratio * total), total)
    amp_dtype = autocast_dtype(precision)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    state = LoopState(model, DataCursor(loader), history, total, tuple(extensions), optimizer,
                      ext_optimizers, scheduler, scaler)
    if checkpoints is not None:
        checkpoints.restore(state)  # where an earlier attempt of this phase stopped, if it left a checkpoint
    time_before, start = history.train_time_s, time.perf_counter()
    bar = Progress(total, desc)  # a widget in Jupyter, one final line in executed notebooks
    if state.step:
        bar.update(state.step)
    batches = iter(state.cursor)  # epoch after epoch; a restored cursor continues mid-epoch
    while state.step < total:
        batch, step = next(batches), state.step
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss, logs = loss_fn(model, batch)
            for ext in extensions:
                extra, ext_logs = ext.extra_loss(step, total)
                loss = loss + extra
                logs.update(ext_logs)
        optimizer.zero_grad(set_to_none=True)
        for opt in ext_optimizers:
            opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
        scaler.step(optimizer)
        for opt in ext_optimizers:
            scaler.step(opt)
        scaler.update()
        scheduler.step()
        state.step = step = step + 1
        for ext in extensions:  # e.g. the projection controller re-centres the gates for the next step
            if hasattr(ext, "after_step"):
                ext.after_step(step, total)
        bar.update(1)
        if step % log_every_steps == 0 or step == total:
            history.log.append({"step": step, "loss": float(loss.detach()), **logs})
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", refresh=False)
        if evaluate is not None and eval_every_steps and step % eval_every_steps == 0 and step < total:
            history.evals.append({"step": step, **evaluate(model)})
        history.steps, history.train_time_s = step, time_before + time.perf_counter() - start
        if checkpoints is not None:
            checkpoints.step_done(state)
    bar.close()
    history.steps, history.train_time_s = state.step, time_before + time.perf_counter() - start
    if checkpoints is not None:
        checkpoints.end(state)
    return history
