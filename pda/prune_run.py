"""The P step of a run: gate the model, learn the gates under the sparsity constraint, export, fine-tune."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch.utils.data import DataLoader

from pda.config import RunConfig
from pda.precision import autocast
from pda.pruning import L0Pruner, attach_gates, export_pruned, structure_sparsity, target_at
from pda.pruning.control import project_
from pda.pruning.importance import fisher_importance, init_gates_from_importance
from pda.resume import FINETUNE, PRUNE, Checkpointer, DataCursor, LoopState
from pda.train import History, LossFn, fit, keep_word_embeddings, total_steps


class PruningExtension:
    """Plugs the L0 pruner into the training loop: its parameter groups, the constraint, and a trace of s vs t.

    ``controller`` is ``lagrangian`` (CoFi: a loss term, multipliers by gradient ascent) or ``projection``
    (after each step the gates' shared offset is set so the expected sparsity equals the next target).
    """

    def __init__(self, pruner: L0Pruner, gate_lr: float, lambda_lr: float, controller: str) -> None:
        self.pruner, self.gate_lr, self.lambda_lr, self.controller = pruner, gate_lr, lambda_lr, controller
        self.trace: list[tuple[int, float, float]] = []  # (step, expected sparsity, target) at every step

    def param_groups(self) -> list[dict[str, Any]]:
        groups = self.pruner.param_groups(self.gate_lr, self.lambda_lr)
        return groups if self.controller == "lagrangian" else groups[:1]  # projection: gates only

    def extra_loss(self, step: int, total_steps: int) -> tuple[torch.Tensor, dict[str, float]]:
        if self.controller == "lagrangian":
            terms = self.pruner.lagrangian_loss(step)
            loss, s_hat, target = terms.loss, float(terms.expected_sparsity), float(terms.target)
            logs = {"lambda_1": float(self.pruner.lambda_1.detach()), "lambda_2": float(self.pruner.lambda_2.detach())}
        else:
            loss = torch.zeros((), device=self.pruner.head.log_alpha.device)
            s_hat = float(self.pruner.expected_sparsity().detach())
            target = target_at(step, self.pruner.target_sparsity, self.pruner.warmup_steps)
            logs = {"gate_offset": float(self.pruner.head.offset)}
        self.trace.append((step, s_hat, target))
        return loss, {"expected_sparsity": s_hat, "target_sparsity": target, **logs}

    def after_step(self, steps_done: int, total_steps: int) -> None:
        if self.controller == "projection":
            project_(self.pruner, target_at(steps_done, self.pruner.target_sparsity, self.pruner.warmup_steps))

    def state_dict(self) -> dict[str, Any]:
        """Gates (log_alpha, shared offset), multipliers and the trace so far, for a checkpoint."""
        return {"pruner": self.pruner.state_dict(), "trace": [list(row) for row in self.trace]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pruner.load_state_dict(state["pruner"])
        self.trace = [(int(step), s, t) for step, s, t in state["trace"]]


def tracking_summary(trace: list[tuple[int, float, float]], target: float) -> dict[str, Any]:
    """How closely s followed t: the largest |s - t| over the last quarter of the steps, and max(s) - target."""
    if not trace:
        return {"steps": 0}
    quarter = trace[len(trace) - max(1, len(trace) // 4):]
    return {
        "steps": len(trace),
        "max_abs_gap_last_quarter": round(max(abs(s - t) for _, s, t in quarter), 6),
        "max_over_target": round(max(s for _, s, _ in trace) - target, 6),
        "expected_at_end": round(trace[-1][1], 6),
    }


def _tag(history: History, phase: str, offset: int = 0) -> list[dict[str, float]]:
    """Log rows of one phase, with steps counted from the start of the whole run."""
    return [{**row, "step": row["step"] + offset, "phase": phase} for row in history.log]


def prune_and_export(model: torch.nn.Module, loader: DataLoader, cfg: RunConfig, lr: float, loss_fn: LossFn,
                     common: dict[str, Any], checkpoints: Checkpointer | None = None,
                     ) -> tuple[torch.nn.Module, History, dict[str, Any]]:
    """CoFi on ``model``: gates + constraint for ``pruning.epochs``, export to a dense model, then fine-tune it.

    The target sparsity applies to the model handed in (the FT teacher for P, the distilled
    student for P+D); the run record also states the sparsity against the uncompressed model.
    With ``checkpoints``, both phases resume from a checkpoint, and the exported model is saved
    (with what pruning produced for the record) before the fine-tune starts; a run that had got
    that far resumes from it and never sees the unpruned ``model``.
    """
    p = cfg.study.pruning
    device = common["device"]
    common = dict(common)
    others = tuple(common.pop("extensions", ()))  # e.g. the layer-distillation map, trained in both phases
    if checkpoints is not None and checkpoints.resume_phase == FINETUNE:  # pruned and exported before the kill
        model = checkpoints.load_model().to(device)
        gated, outcome = History(**checkpoints.carry["prune_history"]), checkpoints.carry["outcome"]
    else:
        gated, outcome = _prune_phase(model, loader, cfg, lr, loss_fn, common, others, checkpoints)
        if checkpoints is not None:  # the fine-tune's step 0: the exported model, data position, RNG
            checkpoints.carry = {"prune_history": dataclasses.asdict(gated), "outcome": outcome}
            checkpoints.save(FINETUNE, LoopState(model, DataCursor(loader), History(),
                                                     total_steps(loader, p.finetune_epochs), others))
    if cfg.flags["adapters"]:
        from pda import adapters as pda_adapters

        pda_adapters.freeze_for_adapters(model, cfg.study.adapters)  # export may create fresh layers that would train
    if not cfg.study.training.train_word_embeddings:  # a model loaded from the fine-tune's checkpoint trains all
        keep_word_embeddings(model)
    tuned = fit(model, loader, epochs=p.finetune_epochs, learning_rate=cfg.finetune_learning_rate or lr,
                loss_fn=loss_fn, extensions=others,
                desc=f"fine-tune pruned {cfg.task} {cfg.scenario}",
                checkpoints=checkpoints.phase(FINETUNE) if checkpoints is not None else None, **common)
    history = History(steps=gated.steps + tuned.steps, train_time_s=gated.train_time_s + tuned.train_time_s,
                      log=_tag(gated, "prune") + _tag(tuned, "finetune", gated.steps), evals=gated.evals + tuned.evals)
    outcome["pruning"]["finetune_steps"] = tuned.steps
    return model, history, outcome


def _prune_phase(model: torch.nn.Module, loader: DataLoader, cfg: RunConfig, lr: float, loss_fn: LossFn,
                 common: dict[str, Any], others: tuple, checkpoints: Checkpointer | None,
                 ) -> tuple[History, dict[str, Any]]:
    """Gates and the sparsity constraint on ``model``, then the export (in place); the phase's history
    and what it produced for the record (``structure``, ``pruning``)."""
    p = cfg.study.pruning
    device, precision = common["device"], common.get("precision", "fp32")
    steps = total_steps(loader, p.epochs)
    pruner = L0Pruner(model.config, cfg.sparsity, warmup_steps=int(p.sparsity_warmup_ratio * steps),
                      droprate_init=p.droprate_init, prune_hidden=p.prune_hidden)
    pruner.to(device)  # the training device, whatever device the model arrived on
    resuming = checkpoints is not None and checkpoints.resume_phase == PRUNE  # the gates come from the checkpoint
    if p.gate_init == "importance" and not resuming:
        scores = fisher_importance(model, pruner, loader, loss_fn, p.importance_batches,
                                   autocast=lambda: autocast(precision, device))
        init_gates_from_importance(pruner, scores, p.importance_spread)
    if not resuming:  # a checkpoint carries the kept heads
        try:
            pruner.keep_heads_(-1, p.keep_last_layer_heads)
        except ValueError as error:
            raise ValueError(f"pruning.keep_last_layer_heads={p.keep_last_layer_heads!r}: {error}") from None
    if p.controller == "projection":
        project_(pruner, target_at(0, pruner.target_sparsity, pruner.warmup_steps))
    extension = PruningExtension(pruner, p.gate_learning_rate, p.lagrangian_learning_rate, p.controller)
    with attach_gates(model, pruner):
        gated = fit(model, loader, epochs=p.epochs, learning_rate=lr, loss_fn=loss_fn,
                    extensions=(extension, *others), desc=f"prune {cfg.task} {cfg.scenario} {cfg.sparsity}",
                    checkpoints=checkpoints.phase(PRUNE, save_at_end=False) if checkpoints is not None else None,
                    **common)
        expected = float(pruner.expected_sparsity().detach())
        gates = pruner.deterministic_gates()
    structure = export_pruned(model, gates)
    pruning = {
        "target": cfg.sparsity, "expected_sparsity_at_end": round(expected, 6),
        "achieved_vs_input": round(structure_sparsity(structure), 6),
        "prune_steps": gated.steps,
        "controller": p.controller, "gate_init": p.gate_init, "kept_heads": pruner.kept_heads(),
        "tracking": tracking_summary(extension.trace, cfg.sparsity),
        "trace": [[step, round(s, 5), round(t, 5)] for step, s, t in extension.trace],
        "counts": "encoder weights of Q, K, V, O and FFN in/out (CoFi's convention, no biases/LayerNorm)",
    }
    return gated, {"structure": structure, "pruning": pruning}
