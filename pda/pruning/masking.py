"""Apply CoFi gates to a stock Hugging Face BERT through removable hooks, so no modeling code is forked.

Where each gate acts (as in CoFi):
- z_head[l, h] scales head h's context vector, i.e. the input of ``attention.output.dense``;
- z_MHA[l] scales the output of ``attention.output.dense`` (incl. bias), before residual + LayerNorm
  (and before the adapter, when the ``adapters`` library patched the layer);
- z_int[l, u] scales the FFN activation, i.e. the output of ``intermediate``;
- z_FFN[l] scales the output of ``output.dense`` (incl. bias), before residual + LayerNorm / adapter.

Attach AFTER ``adapters.init``/``add_adapter``: the adapters library replaces ``output.dense``
by a wrapper module, which would silently drop a hook registered earlier.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .gates import GATE_GROUPS
from .sparsity import _base

GateSource = Callable[[bool], Mapping[str, torch.Tensor]] | Mapping[str, torch.Tensor]


class GateHandles:
    """The hooks of one ``attach_gates`` call; ``remove()`` (or leaving a ``with`` block) detaches them."""

    def __init__(self, handles: list[RemovableHandle]) -> None:
        self._handles = handles

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> "GateHandles":
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def attach_gates(model: nn.Module, gates: GateSource) -> GateHandles:
    """Gate ``model``'s encoder with ``gates``: a fixed gates dict, or a callable such as an
    ``L0Pruner`` that is called as ``gates(encoder.training)`` once per encoder forward (so training
    forwards draw fresh samples and eval forwards use deterministic gates)."""
    layers = _base(model).encoder.layer
    source = gates if callable(gates) else (lambda training: gates)
    current: dict[str, torch.Tensor] = {}

    def refresh(encoder: nn.Module, args: tuple) -> None:
        z = source(encoder.training)
        check_gates(z, len(layers))
        current.update(z)

    handles = [_base(model).encoder.register_forward_pre_hook(_mark(refresh))]
    for i, layer in enumerate(layers):
        handles += [
            layer.attention.output.dense.register_forward_pre_hook(_head_hook(current, i)),
            layer.attention.output.dense.register_forward_hook(_scale_hook(current, "mha", i)),
            layer.intermediate.register_forward_hook(_scale_hook(current, "int", i)),
            layer.output.dense.register_forward_hook(_scale_hook(current, "ffn", i)),
        ]
    return GateHandles(handles)


def has_gate_hooks(model: nn.Module) -> bool:
    """True if hooks from ``attach_gates`` are still registered anywhere in ``model``."""
    return any(getattr(hook, "_pda_gate", False)
               for module in model.modules()
               for hook in [*module._forward_pre_hooks.values(), *module._forward_hooks.values()])


def check_gates(gates: Mapping[str, torch.Tensor], num_layers: int) -> None:
    """Raise a ValueError unless ``gates`` holds the four groups with consistent shapes."""
    missing = [g for g in GATE_GROUPS if g not in gates]
    if missing:
        raise ValueError(f"gates lack groups {missing}; expected keys {list(GATE_GROUPS)}")
    shapes = {g: tuple(gates[g].shape) for g in GATE_GROUPS}
    ok = (len(shapes["head"]) == 2 and len(shapes["int"]) == 2 and shapes["mha"] == shapes["ffn"] == (num_layers,)
          and shapes["head"][0] == shapes["int"][0] == num_layers)
    if not ok:
        raise ValueError(f"gate shapes {shapes} do not fit {num_layers} layers: expected head (L, H), "
                         "mha (L,), int (L, F), ffn (L,)")


def _mark(hook: Callable) -> Callable:
    hook._pda_gate = True
    return hook


def _head_hook(current: dict[str, torch.Tensor], layer: int) -> Callable:
    def hook(module: nn.Module, args: tuple) -> tuple:
        context, *rest = args
        z = current["head"][layer].to(context.dtype)
        per_head = context.unflatten(-1, (z.shape[0], -1)) * z[:, None]
        return (per_head.flatten(-2), *rest)

    return _mark(hook)


def _scale_hook(current: dict[str, torch.Tensor], group: str, layer: int) -> Callable:
    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return output * current[group][layer].to(output.dtype)

    return _mark(hook)
