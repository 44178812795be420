"""Turn a gated BERT into a physically smaller dense one, so pruning yields real size and speed gains.

``export_pruned`` folds the (possibly fractional) eval gates into the weights, slices away pruned
heads and FFN units, and replaces a sublayer whose output became a constant by a
``ConstantSublayer`` computing ``LayerNorm(residual + c)`` without any matmul. A layer whose MHA and
FFN are both removed becomes one ``ConstantLayer``: two LayerNorms and two adds, with none of the
layer's attention-mask, chunking or FFN machinery. Its logits equal the gated model's eval logits. ``apply_structure`` gives a freshly built stock model the same shapes,
so saved weights load with ``strict=True``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .masking import check_gates, has_gate_hooks
from .sparsity import _base, structure_from_gates

ADAPTER_CHECK_ATOL = 1e-4


class ConstantSublayer(nn.Module):
    """A sublayer pruned away: ``LayerNorm(input_tensor + const)``; ``hidden_states`` is ignored.

    ``const`` is a buffer (not trained): zero, the surviving output bias, or adapter(that bias).
    """

    def __init__(self, layer_norm: nn.LayerNorm, const: torch.Tensor) -> None:
        super().__init__()
        self.LayerNorm = layer_norm
        self.register_buffer("const", const)

    def forward(self, hidden_states: Any, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(input_tensor + self.const)


class PrunedAttention(nn.Module):
    """Stands in for ``BertAttention`` when the whole MHA is pruned (attention weights: None)."""

    def __init__(self, output: ConstantSublayer) -> None:
        super().__init__()
        self.output = output

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
        return self.output(None, hidden_states), None


class PrunedIntermediate(nn.Module):
    """Stands in for ``BertIntermediate`` when the whole FFN is pruned; passes its input through."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states


class ConstantLayer(nn.Module):
    """An encoder layer with both blocks removed: ``LN_ffn(LN_mha(x + c_mha) + c_ffn)`` in one call.

    Keeps BertLayer's child names (``attention.output``, ``output``) so the weights keep their names.
    """

    def __init__(self, attention: PrunedAttention, output: ConstantSublayer) -> None:
        super().__init__()
        self.attention = attention
        self.intermediate = PrunedIntermediate()
        self.output = output

    def forward(self, hidden_states: torch.Tensor, *args: Any, output_attentions: bool = False,
                **kwargs: Any) -> tuple[torch.Tensor, ...]:
        out = self.output(None, self.attention.output(None, hidden_states))
        return (out, None) if output_attentions else (out,)


def export_pruned(model: nn.Module, gates: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Shrink ``model`` IN PLACE according to eval ``gates`` and return the structure summary.

    The gate hooks must be removed first. Parameters that survive keep their ``requires_grad`` flag.
    The model gets its own copy of the config, updated with ``pda_structure``, ``pruned_heads``
    and, when every layer keeps the same number of FFN units, ``intermediate_size``.
    """
    layers = _base(model).encoder.layer
    check_gates(gates, len(layers))
    if has_gate_hooks(model):
        raise ValueError("gate hooks are still attached: remove them (GateHandles.remove()) before export_pruned")
    gates = {k: v.detach().to("cpu", torch.float64) for k, v in gates.items()}
    config = _own_config(model)
    if gates["head"].shape[1] != config.num_attention_heads or gates["int"].shape[1] != config.intermediate_size:
        raise ValueError("gates do not match the model config; export needs the unpruned model")
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for i, layer in enumerate(layers):
            _export_attention(layer, gates["head"][i], gates["mha"][i])
            _export_ffn(layer, gates["int"][i], gates["ffn"][i])
            if isinstance(layer.attention, PrunedAttention) and isinstance(layer.intermediate, PrunedIntermediate):
                layers[i] = ConstantLayer(layer.attention, layer.output)
    model.train(was_training)
    structure = structure_from_gates(gates, config.hidden_size)
    _record_structure(config, structure)
    return structure


def apply_structure(model: nn.Module, structure: Mapping[str, Any]) -> None:
    """Reshape a freshly built stock model (built from the exported config) into ``structure``'s shapes.

    Weights are not meaningful afterwards: load the exported state dict next. Heads already pruned
    by Hugging Face from ``config.pruned_heads`` are accepted as they are.
    """
    layers = _base(model).encoder.layer
    if len(structure["layers"]) != len(layers) or structure["hidden_kept"] != structure["hidden_size"]:
        raise ValueError(f"structure with {len(structure['layers'])} layers and hidden "
                         f"{structure['hidden_kept']}/{structure['hidden_size']} does not fit this model")
    for i, (layer, spec) in enumerate(zip(layers, structure["layers"])):
        if not spec["mha_kept"] and not spec["ffn_kept"]:
            layers[i] = ConstantLayer(PrunedAttention(_removed(layer.attention.output)), _removed(layer.output))
            continue
        if not spec["mha_kept"]:
            layer.attention = PrunedAttention(_removed(layer.attention.output))
        else:
            _reshape_heads(layer.attention, spec["heads_kept"], spec["num_heads"])
        if not spec["ffn_kept"]:
            layer.intermediate = PrunedIntermediate()
            layer.output = _removed(layer.output)
        else:
            _reshape_ffn(layer, spec["ffn_units_kept"], spec["ffn_size"])


def _export_attention(layer: nn.Module, z_head: torch.Tensor, z_mha: torch.Tensor) -> None:
    """Fold z_MHA * z_head into ``attention.output.dense``, then drop pruned heads or the whole MHA."""
    attention = layer.attention
    if attention.self.num_attention_heads != z_head.shape[0]:
        raise ValueError("attention heads were already pruned; export needs the unpruned model")
    dense = attention.output.dense
    head_dim = attention.self.attention_head_size
    _fold(dense, columns=(z_mha * z_head).repeat_interleave(head_dim), out_scale=z_mha)
    kept = torch.nonzero(z_head * z_mha > 0).flatten().tolist()
    if not kept:
        const = _constant_output(attention.output, _bias_or_zero(dense))
        layer.attention = PrunedAttention(ConstantSublayer(attention.output.LayerNorm, const))
    elif len(kept) < z_head.shape[0]:
        _keep_heads(attention, kept)


def _export_ffn(layer: nn.Module, z_int: torch.Tensor, z_ffn: torch.Tensor) -> None:
    """Fold z_FFN * z_int into ``output.dense``, then slice pruned units or drop the whole FFN."""
    dense = layer.output.dense
    _fold(dense, columns=z_ffn * z_int, out_scale=z_ffn)
    kept = torch.nonzero(z_int * z_ffn > 0).flatten()
    if kept.numel() == 0:
        const = _constant_output(layer.output, _bias_or_zero(dense))
        layer.intermediate = PrunedIntermediate()
        layer.output = ConstantSublayer(layer.output.LayerNorm, const)
    elif kept.numel() < z_int.shape[0]:
        layer.intermediate.dense = _slice_linear(layer.intermediate.dense, kept, dim=0)
        layer.output.dense = _slice_linear(dense, kept, dim=1)


def _fold(linear: nn.Linear, columns: torch.Tensor, out_scale: torch.Tensor) -> None:
    """W <- W * columns[None, :] (gates on the input units already include out_scale); b <- b * out_scale."""
    linear.weight.mul_(columns.to(linear.weight)[None, :])
    if linear.bias is not None:
        linear.bias.mul_(out_scale.to(linear.bias))


def _bias_or_zero(linear: nn.Linear) -> torch.Tensor:
    return linear.bias.detach().clone() if linear.bias is not None else linear.weight.new_zeros(linear.out_features)


def _constant_output(sublayer: nn.Module, h0: torch.Tensor) -> torch.Tensor:
    """The c in LayerNorm(x + c) that ``sublayer`` computes when its dense output is the constant h0.

    Without adapters c = h0. With the ``adapters`` library, c = h0 + adapter(h0) for Houlsby-style
    adapters; the form LayerNorm(x + c) is checked numerically and anything else is rejected.
    """
    if not hasattr(sublayer, "bottleneck_layer_forward"):
        return h0.clone()
    zeros = torch.zeros_like(h0).view(1, 1, -1)
    const = sublayer.bottleneck_layer_forward(h0.view(1, 1, -1), zeros, None).reshape(-1).detach().clone()
    probe = torch.randn(2, 3, h0.shape[0], generator=torch.Generator().manual_seed(0)).to(h0)
    actual = sublayer.bottleneck_layer_forward(h0.expand_as(probe), probe, sublayer.LayerNorm)
    if not torch.allclose(actual, sublayer.LayerNorm(probe + const), atol=ADAPTER_CHECK_ATOL):
        raise ValueError(f"{type(sublayer).__name__}: with its adapter configuration a pruned sublayer is not "
                         "LayerNorm(x + c), so it cannot be removed; use Houlsby-style (double_seq_bn) adapters")
    return const


def _keep_heads(attention: nn.Module, kept: list[int]) -> None:
    """Keep only heads ``kept`` (original indices, ascending) in an unpruned ``BertAttention``."""
    sa = attention.self
    total = sa.num_attention_heads
    index = torch.cat([torch.arange(h * sa.attention_head_size, (h + 1) * sa.attention_head_size) for h in kept])
    sa.query = _slice_linear(sa.query, index, dim=0)
    sa.key = _slice_linear(sa.key, index, dim=0)
    sa.value = _slice_linear(sa.value, index, dim=0)
    attention.output.dense = _slice_linear(attention.output.dense, index, dim=1)
    sa.num_attention_heads = len(kept)
    sa.all_head_size = len(kept) * sa.attention_head_size
    attention.pruned_heads = set(range(total)) - set(kept)


def _reshape_heads(attention: nn.Module, kept: list[int], num_heads: int) -> None:
    pruned = set(range(num_heads)) - set(kept)
    if attention.pruned_heads == pruned:
        return  # Hugging Face already pruned them from config.pruned_heads
    if attention.pruned_heads or attention.self.num_attention_heads != num_heads:
        raise ValueError(f"attention has pruned heads {sorted(attention.pruned_heads)}, "
                         f"the structure wants {sorted(pruned)}")
    if pruned:
        _keep_heads(attention, kept)


def _reshape_ffn(layer: nn.Module, units: int, full_size: int) -> None:
    current = layer.intermediate.dense.out_features
    if current == units:
        return  # config.intermediate_size already says so
    if current != full_size:
        raise ValueError(f"FFN has {current} units, expected {full_size} or {units}")
    index = torch.arange(units)
    layer.intermediate.dense = _slice_linear(layer.intermediate.dense, index, dim=0)
    layer.output.dense = _slice_linear(layer.output.dense, index, dim=1)


def _slice_linear(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A new ``nn.Linear`` keeping ``index`` along weight dim ``dim``; dtype, device and requires_grad kept."""
    weight = linear.weight.detach().index_select(dim, index.to(linear.weight.device)).clone()
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=linear.bias is not None,
                    device=weight.device, dtype=weight.dtype)
    new.weight = nn.Parameter(weight, requires_grad=linear.weight.requires_grad)
    if linear.bias is not None:
        bias = linear.bias.detach()
        bias = bias[index.to(bias.device)] if dim == 0 else bias
        new.bias = nn.Parameter(bias.clone(), requires_grad=linear.bias.requires_grad)
    return new


def _removed(sublayer: nn.Module) -> ConstantSublayer:
    """The ``LayerNorm(x + c)`` that stands for a removed block, with ``sublayer``'s LayerNorm; c is a
    placeholder until the saved weights load into it."""
    return ConstantSublayer(sublayer.LayerNorm, torch.zeros_like(sublayer.LayerNorm.weight, requires_grad=False))


def _own_config(model: nn.Module):
    """Give ``model`` (and its submodules sharing it) a private copy of the config, so that
    pruning never edits a config shared with e.g. a teacher model."""
    old = model.config
    new = copy.deepcopy(old)
    for module in model.modules():
        if getattr(module, "config", None) is old:
            module.config = new
    return new


def _record_structure(config, structure: dict[str, Any]) -> None:
    """Write the structure into the config: ``pda_structure``, plus Hugging Face's own
    ``pruned_heads`` / ``intermediate_size`` so plain ``from_pretrained`` works when shapes allow."""
    config.pda_structure = copy.deepcopy(structure)
    config.pruned_heads = {
        spec["layer"]: sorted(set(range(spec["num_heads"])) - set(spec["heads_kept"]))
        for spec in structure["layers"] if spec["mha_kept"] and len(spec["heads_kept"]) < spec["num_heads"]
    }
    sizes = {spec["ffn_units_kept"] for spec in structure["layers"]}
    if len(sizes) == 1 and all(spec["ffn_kept"] for spec in structure["layers"]):
        config.intermediate_size = sizes.pop()
