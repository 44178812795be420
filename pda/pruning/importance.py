"""Start the gates from how much each structure matters, not from a uniform guess.

Fisher importance (as in Kwon et al. 2022, "A Fast Post-Training Pruning Framework for
Transformers"): put a mask variable m = 1 on every head, FFN unit, MHA block and FFN block
(the same places the L0 gates act, through ``attach_gates``) and accumulate (dL/dm)^2 over a few
batches. Removing structure i costs about I_i / 2 in loss; per weight it saves, I_i / cost_i.
``init_gates_from_importance`` turns log(I_i / cost_i), standardised over all structures, into
``log_alpha``: the least useful weights sit lowest and are the first the controller lets go.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable

import torch
from torch import nn

from .gates import LOG_ALPHA_MAX, LOG_ALPHA_MIN, L0Pruner
from .masking import attach_gates

LossFn = Callable[[nn.Module, dict], tuple[torch.Tensor, dict]]


def fisher_importance(model: nn.Module, pruner: L0Pruner, batches: Iterable[dict], loss_fn: LossFn,
                      num_batches: int, autocast: Callable[[], object] | None = None) -> dict[str, torch.Tensor]:
    """Sum over ``num_batches`` batches of (dL/dm)^2 per gate, shaped like the pruner's gates dict.

    The model runs in eval mode (no dropout noise) and its own gradients are not touched.
    """
    device = pruner.head.log_alpha.device
    masks = {name: torch.ones(g.log_alpha.shape[:-1] if name in ("mha", "ffn") else g.log_alpha.shape,
                              device=device, requires_grad=True)
             for name, g in pruner.gate_modules().items()}
    scores = {name: torch.zeros_like(m) for name, m in masks.items()}
    was_training = model.training
    model.eval()
    seen = 0
    try:
        with attach_gates(model, masks):
            for batch in itertools.islice(batches, num_batches):
                with autocast() if autocast is not None else torch.enable_grad():
                    loss, _ = loss_fn(model, batch)
                grads = torch.autograd.grad(loss, list(masks.values()))
                for name, grad in zip(masks, grads):
                    scores[name] += grad.detach().float() ** 2
                seen += 1
    finally:
        model.train(was_training)
    if seen == 0:
        raise ValueError("no batches to estimate importance from: the training set is empty")
    return scores


def structure_costs(pruner: L0Pruner) -> dict[str, float]:
    """Encoder weights each gate of a group switches off: a head, an MHA block, an FFN unit, an FFN block."""
    heads = pruner.head.log_alpha.shape[-1]
    units = pruner.int.log_alpha.shape[-1]
    head = 4.0 * pruner.hidden_size * pruner.head_dim
    unit = 2.0 * pruner.hidden_size
    return {"head": head, "mha": head * heads, "int": unit, "ffn": unit * units}


@torch.no_grad()
def init_gates_from_importance(pruner: L0Pruner, scores: dict[str, torch.Tensor], spread: float = 2.0) -> None:
    """``log_alpha = spread * z`` where z standardises log(importance per weight) over every structure.

    Median and interquartile range (not mean and std) set the scale, so a few dead units with zero
    gradient do not squash everyone else together. Values are clipped to CoFi's log_alpha range.
    """
    costs = structure_costs(pruner)
    per_weight = {name: torch.log(scores[name].double() / costs[name] + 1e-30) for name in scores}
    every = torch.cat([v.flatten() for v in per_weight.values()])
    q1, median, q3 = torch.quantile(every, torch.tensor([0.25, 0.5, 0.75], dtype=every.dtype, device=every.device))
    scale = float(q3 - q1) / 1.349 or 1.0
    for name, gate in pruner.gate_modules().items():
        z = (per_weight[name] - median) / scale
        gate.log_alpha.copy_((spread * z).clamp(LOG_ALPHA_MIN, LOG_ALPHA_MAX).reshape(gate.log_alpha.shape))
