"""Parameter counts and the sparsity constraint, so a target sparsity has one exact meaning.

Convention (CoFi's): "encoder weights" are the weight matrices of the encoder layers' Q, K, V,
attention-output, FFN-in and FFN-out ``nn.Linear`` modules. Biases, LayerNorms, embeddings,
pooler, classifier and adapters are NOT in it. ``pda.measure.count_parameters`` gives real module counts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig


def validate_target_sparsity(value: Any) -> float:
    """Return ``value`` as a float if it is a number in [0, 1), else raise a ValueError naming it."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and 0.0 <= value < 1.0
    if not ok:
        raise ValueError(f"target sparsity {value!r} is invalid: it must be a number in the range [0, 1)")
    return float(value)


def target_at(step: int, target: float, warmup_steps: int) -> float:
    """Target sparsity at ``step``: linear from 0 to ``target`` over ``warmup_steps``, then constant."""
    if warmup_steps <= 0:
        return target
    return target * min(1.0, max(step, 0) / warmup_steps)


def lagrangian_term(expected_sparsity: torch.Tensor, target: float, lambda_1: torch.Tensor,
                    lambda_2: torch.Tensor) -> torch.Tensor:
    """CoFi's constraint term lambda_1 (s - t) + lambda_2 (s - t)^2."""
    gap = expected_sparsity - target
    return lambda_1 * gap + lambda_2 * gap * gap


def full_encoder_weights(config: PretrainedConfig) -> int:
    """Encoder weights of the unpruned model: layers x (4 d^2 + 2 d F)."""
    d, f = config.hidden_size, config.intermediate_size
    return config.num_hidden_layers * (4 * d * d + 2 * d * f)


def expected_encoder_weights(p_head: torch.Tensor, p_mha: torch.Tensor, p_int: torch.Tensor, p_ffn: torch.Tensor,
                             hidden_size: int, head_dim: int, p_hidden: torch.Tensor | None = None) -> torch.Tensor:
    """Expected kept encoder weights from gate probabilities P(z > 0).

    Per layer: sum_h P(head h) P(MHA) 4 d head_dim + sum_u P(unit u) P(FFN) 2 d, where d is the
    hidden size, or its expected kept size sum P(z_hidden) when ``p_hidden`` is given (CoFi).
    Shapes: p_head (L, H), p_mha (L,), p_int (L, F), p_ffn (L,).
    """
    d = hidden_size if p_hidden is None else p_hidden.sum()
    heads = (p_head * p_mha[:, None]).sum()
    units = (p_int * p_ffn[:, None]).sum()
    return d * (heads * 4 * head_dim + units * 2)


def structure_from_gates(gates: Mapping[str, torch.Tensor], hidden_size: int) -> dict[str, Any]:
    """JSON-able summary of what survives: a head (unit) is kept iff z_head * z_MHA (z_int * z_FFN) > 0."""
    heads = gates["head"] * gates["mha"][:, None]
    units = gates["int"] * gates["ffn"][:, None]
    layers = []
    for i in range(heads.shape[0]):
        kept = [int(h) for h in torch.nonzero(heads[i] > 0).flatten()]
        n_units = int((units[i] > 0).sum())
        layers.append({"layer": i, "heads_kept": kept, "num_heads": int(heads.shape[1]), "mha_kept": bool(kept),
                       "ffn_units_kept": n_units, "ffn_size": int(units.shape[1]), "ffn_kept": n_units > 0})
    return {"layers": layers, "hidden_kept": hidden_size, "hidden_size": hidden_size}


def structure_weights(structure: Mapping[str, Any]) -> int:
    """Exact encoder weights kept by ``structure``."""
    d = structure["hidden_kept"]
    return sum(len(l["heads_kept"]) * 4 * d * _head_dim(structure, l) + l["ffn_units_kept"] * 2 * d
               for l in structure["layers"])


def structure_full_weights(structure: Mapping[str, Any]) -> int:
    """Encoder weights of the unpruned model that ``structure`` was cut from."""
    d = structure["hidden_size"]
    return sum(l["num_heads"] * 4 * d * _head_dim(structure, l) + l["ffn_size"] * 2 * d for l in structure["layers"])


def structure_sparsity(structure: Mapping[str, Any]) -> float:
    """Exact encoder-weight sparsity of ``structure``: 1 - kept / full."""
    return 1.0 - structure_weights(structure) / structure_full_weights(structure)


def _head_dim(structure: Mapping[str, Any], layer: Mapping[str, Any]) -> int:
    return structure["hidden_size"] // layer["num_heads"]


def encoder_weight_count(model: nn.Module) -> int:
    """Encoder weights actually present in a (possibly exported) BERT model, by the convention above."""
    total = 0
    for layer in _base(model).encoder.layer:
        if hasattr(layer.attention, "self"):  # a removed MHA has no Q/K/V
            sa = layer.attention.self
            linears = [sa.query, sa.key, sa.value, layer.attention.output.dense]
            total += sum(m.weight.numel() for m in linears)
        if hasattr(layer.intermediate, "dense"):  # a removed FFN has no dense layers
            total += layer.intermediate.dense.weight.numel() + layer.output.dense.weight.numel()
    return total


def _base(model: nn.Module) -> nn.Module:
    """The BertModel inside a task model (or the model itself)."""
    base = getattr(model, "base_model", model)
    if not hasattr(base, "encoder"):
        raise ValueError(f"{type(model).__name__} has no BERT encoder (expected model.base_model.encoder.layer)")
    return base


def gates_meeting_target(gates: Mapping[str, torch.Tensor], head_score: torch.Tensor, int_score: torch.Tensor,
                         hidden_size: int, target: float) -> dict[str, torch.Tensor]:
    """Zero further heads / FFN units of ``gates`` until their exact sparsity reaches ``target``.

    Exact sparsity is ``structure_sparsity(structure_from_gates(gates, hidden_size))``: a head costs
    4 d head_dim weights, an FFN unit 2 d, and a head (unit) counts as kept iff z_head * z_MHA
    (z_int * z_FFN) > 0. If ``gates`` already reach ``target`` they are returned unchanged (a copy).
    Otherwise the kept heads and units are ranked TOGETHER by ascending score (``head_score``
    (L, H), ``int_score`` (L, F); ties: heads before units, then by index) and removed in that
    order, each subtracting its own cost, until the sparsity is >= ``target``. The greedy stop
    means the result overshoots ``target`` by less than one removed structure's cost / full.
    A layer whose remaining heads (units) were all removed here also gets z_MHA (z_FFN) = 0, so
    the block is switched off as a whole. Gates that stay kept keep their (fractional) value.
    """
    out = {k: v.detach().clone() for k, v in gates.items()}
    head_on = (out["head"] * out["mha"][:, None]) > 0
    unit_on = (out["int"] * out["ffn"][:, None]) > 0
    layers, heads = head_on.shape
    head_cost, unit_cost = 4 * hidden_size * (hidden_size // heads), 2 * hidden_size
    full = layers * (heads * head_cost + unit_on.shape[1] * unit_cost)
    kept = int(head_on.sum()) * head_cost + int(unit_on.sum()) * unit_cost
    if 1.0 - kept / full >= target:
        return out
    on = torch.cat([head_on.flatten(), unit_on.flatten()]).cpu()
    score = torch.cat([head_score.detach().flatten(), int_score.detach().flatten()]).cpu().double()
    cost = torch.cat([torch.full((head_on.numel(),), head_cost, dtype=torch.int64),
                      torch.full((unit_on.numel(),), unit_cost, dtype=torch.int64)])
    candidates = torch.nonzero(on).flatten()
    candidates = candidates[torch.argsort(score[candidates], stable=True)]  # nonzero() is ascending: ties by index
    removed = torch.cumsum(cost[candidates], 0)
    # same float arithmetic as structure_sparsity, so the check there agrees exactly
    reached = 1.0 - (kept - removed).double() / full >= target
    chosen = candidates[: int(torch.nonzero(reached)[0]) + 1]  # reachable: removing everything gives 1 > target
    is_head = chosen < head_on.numel()
    head_idx, unit_idx = chosen[is_head], chosen[~is_head] - head_on.numel()
    out["head"].view(-1)[head_idx.to(out["head"].device)] = 0
    out["int"].view(-1)[unit_idx.to(out["int"].device)] = 0
    for name, block, idx, width in (("head", "mha", head_idx, heads), ("int", "ffn", unit_idx, unit_on.shape[1])):
        emptied = torch.unique(idx // width).to(out[block].device)
        gated = out[name] * out[block][:, None]
        emptied = emptied[~(gated[emptied] > 0).any(dim=1)]
        out[block][emptied] = 0
    return out
