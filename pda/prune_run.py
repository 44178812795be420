"""The P step of a run: gate the model, learn the gates under the sparsity constraint, export, fine-tune."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.utils.data import DataLoader

from pda import adapters as pda_adapters
from pda.config import RunConfig
from pda.pruning import L0Pruner, attach_gates, export_pruned, structure_sparsity
from pda.train import History, LossFn, fit


class PruningExtension:
    """Plugs the L0 pruner into the training loop: its parameter groups and its Lagrangian term."""

    def __init__(self, pruner: L0Pruner, gate_lr: float, lambda_lr: float) -> None:
        self.pruner, self.gate_lr, self.lambda_lr = pruner, gate_lr, lambda_lr

    def param_groups(self) -> list[dict[str, Any]]:
        return self.pruner.param_groups(self.gate_lr, self.lambda_lr)

    def extra_loss(self, step: int, total_steps: int) -> tuple[torch.Tensor, dict[str, float]]:
        terms = self.pruner.lagrangian_loss(step)
        return terms.loss, {
            "expected_sparsity": float(terms.expected_sparsity), "target_sparsity": float(terms.target),
            "lambda_1": float(self.pruner.lambda_1.detach()), "lambda_2": float(self.pruner.lambda_2.detach()),
        }


def _tag(history: History, phase: str, offset: int = 0) -> list[dict[str, float]]:
    """Log rows of one phase, with steps counted from the start of the whole run."""
    return [{**row, "step": row["step"] + offset, "phase": phase} for row in history.log]


def prune_and_export(model: torch.nn.Module, loader: DataLoader, cfg: RunConfig, lr: float, loss_fn: LossFn,
                     common: dict[str, Any]) -> tuple[torch.nn.Module, History, dict[str, Any]]:
    """CoFi on ``model``: gates + Lagrangian for ``pruning.epochs``, export to a dense model, then fine-tune it.

    The target sparsity applies to the model handed in (the FT teacher for P, the distilled
    student for P+D); the run record also states the sparsity against the uncompressed model.
    """
    p = cfg.study.pruning
    steps = max(1, math.ceil(len(loader) * p.epochs))
    pruner = L0Pruner(model.config, cfg.sparsity, warmup_steps=int(p.sparsity_warmup_ratio * steps),
                      droprate_init=p.droprate_init, prune_hidden=p.prune_hidden)
    pruner.to(common["device"])  # the training device, whatever device the model arrived on
    extension = PruningExtension(pruner, p.gate_learning_rate, p.lagrangian_learning_rate)
    common = dict(common)
    others = tuple(common.pop("extensions", ()))  # e.g. the layer-distillation map
    with attach_gates(model, pruner):
        gated = fit(model, loader, epochs=p.epochs, learning_rate=lr, loss_fn=loss_fn,
                    extensions=(extension, *others), desc=f"prune {cfg.task} {cfg.scenario} {cfg.sparsity}", **common)
        expected = float(pruner.expected_sparsity().detach())
        gates = pruner.deterministic_gates()
    structure = export_pruned(model, gates)
    if cfg.flags["adapters"]:
        pda_adapters.freeze_for_adapters(model)  # export may create fresh layers that would train otherwise
    tuned = fit(model, loader, epochs=p.finetune_epochs, learning_rate=lr, loss_fn=loss_fn, extensions=others,
                desc=f"fine-tune pruned {cfg.task} {cfg.scenario}", **common)
    history = History(steps=gated.steps + tuned.steps, train_time_s=gated.train_time_s + tuned.train_time_s,
                      log=_tag(gated, "prune") + _tag(tuned, "finetune", gated.steps), evals=gated.evals + tuned.evals)
    pruning = {
        "target": cfg.sparsity, "expected_sparsity_at_end": round(expected, 6),
        "achieved_vs_input": round(structure_sparsity(structure), 6),
        "prune_steps": gated.steps, "finetune_steps": tuned.steps,
        "counts": "encoder weights of Q, K, V, O and FFN in/out (CoFi's convention, no biases/LayerNorm)",
    }
    return model, history, {"structure": structure, "pruning": pruning}
