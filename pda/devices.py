"""Device audit: every parameter, buffer and input a module sees must be on the run's configured device.

A run that leaves one module or batch behind on the CPU works on a CPU-only machine and fails (or
silently measures the wrong thing) on a GPU. ``device_audit`` checks, at the start of every module
forward while it is active, the module's own parameters and buffers and its positional tensor
inputs, and raises ``DeviceMismatchError`` naming the first one that is elsewhere.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_pre_hook


class DeviceMismatchError(RuntimeError):
    """A tensor is not on the device the run was configured for."""


def on_device(tensor: torch.Tensor, expected: torch.device) -> bool:
    """Same device type, and the same index when ``expected`` names one (``cuda`` matches ``cuda:0``)."""
    return tensor.device.type == expected.type and (expected.index is None or tensor.device.index == expected.index)


def misplaced(module: nn.Module, args: tuple, expected: torch.device) -> str | None:
    """The first of ``module``'s own parameters/buffers or tensor ``args`` not on ``expected``, described; else None."""
    own = itertools.chain(module.named_parameters(recurse=False), module.named_buffers(recurse=False))
    for name, tensor in own:
        if tensor is not None and not on_device(tensor, expected):
            return f"{type(module).__name__}.{name} is on {tensor.device}"
    for i, arg in enumerate(args):
        if isinstance(arg, torch.Tensor) and not on_device(arg, expected):
            return f"input {i} of {type(module).__name__} is on {arg.device}"
    return None


@contextlib.contextmanager
def device_audit(device: torch.device | str) -> Iterator[list[str]]:
    """Within the block, every module forward checks its placement against ``device``; yields the list of
    module types audited (for tests that want to see the audit really ran over a model)."""
    expected = torch.device(device)
    seen: list[str] = []

    def check(module: nn.Module, args: tuple) -> None:
        seen.append(type(module).__name__)
        problem = misplaced(module, args, expected)
        if problem:
            raise DeviceMismatchError(f"{problem}, but the run's device is {expected}")

    handle = register_module_forward_pre_hook(check)
    try:
        yield seen
    finally:
        handle.remove()
