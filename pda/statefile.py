"""Nested training state (optimiser, scheduler, RNG states) as safetensors + a JSON skeleton, without pickle.

``flatten`` replaces every tensor in a nest of dicts, lists, tuples and scalars by a reference
``{"__tensor__": name}`` and returns the tensors separately; ``unflatten`` puts them back. Tuples
and dicts whose keys are not plain strings (an optimiser's ``state`` is keyed by parameter index)
are tagged so they come back as they were. ``save``/``load`` write and read the pair
``NAME.safetensors`` + ``NAME.json``: nothing is ever unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from pda.records import atomic_write_bytes, atomic_write_text

TENSOR, TUPLE, ITEMS = "__tensor__", "__tuple__", "__items__"  # markers in the skeleton


def flatten(value: Any, tensors: dict[str, torch.Tensor] | None = None,
            path: str = "") -> tuple[Any, dict[str, torch.Tensor]]:
    """``(skeleton, tensors)``: ``value`` with each tensor replaced by a numbered reference into ``tensors``
    (on the CPU); ``path`` only names where an unstorable value sits."""
    tensors = {} if tensors is None else tensors
    if isinstance(value, torch.Tensor):
        name = str(len(tensors))
        tensors[name] = value.detach().to("cpu").contiguous()
        return {TENSOR: name}, tensors
    if isinstance(value, tuple):
        return {TUPLE: [flatten(v, tensors, f"{path}[{i}]")[0] for i, v in enumerate(value)]}, tensors
    if isinstance(value, list):
        return [flatten(v, tensors, f"{path}[{i}]")[0] for i, v in enumerate(value)], tensors
    if isinstance(value, dict):
        items = [(k, flatten(v, tensors, f"{path}[{k!r}]")[0]) for k, v in value.items()]
        if all(isinstance(k, str) and not k.startswith("__") for k, _ in items):
            return dict(items), tensors
        for key, _ in items:
            if not isinstance(key, (str, int)) or isinstance(key, bool):
                raise TypeError(f"cannot store the dict key {key!r} at {path or 'the top'} "
                                f"({type(key).__name__}); keys must be str or int")
        return {ITEMS: [[k, v] for k, v in items]}, tensors
    if value is None or isinstance(value, (bool, int, float, str)):
        return value, tensors
    raise TypeError(f"cannot store {type(value).__name__} at {path or 'the top'}: only tensors, dicts, lists, tuples, "
                    "str, int, float, bool and None")


def unflatten(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of ``flatten``."""
    if isinstance(skeleton, list):
        return [unflatten(v, tensors) for v in skeleton]
    if isinstance(skeleton, dict):
        if TENSOR in skeleton:
            return tensors[skeleton[TENSOR]]
        if TUPLE in skeleton:
            return tuple(unflatten(v, tensors) for v in skeleton[TUPLE])
        if ITEMS in skeleton:
            return {k: unflatten(v, tensors) for k, v in skeleton[ITEMS]}
        return {k: unflatten(v, tensors) for k, v in skeleton.items()}
    return skeleton


def save(value: Any, directory: Path, name: str, meta: dict[str, Any] | None = None) -> None:
    """Write ``value`` as ``directory/name.safetensors`` (tensors) and ``directory/name.json`` (the rest + ``meta``),
    both flushed to disk. Write into a fresh directory and rename it to make the pair atomic (``pda.resume``)."""
    directory = Path(directory)
    skeleton, tensors = flatten(value)
    atomic_write_bytes(directory / f"{name}.safetensors", safetensors_bytes(tensors))
    text = json.dumps({**(meta or {}), "tree": skeleton}, indent=1, allow_nan=True)
    atomic_write_text(directory / f"{name}.json", text + "\n")


def load(directory: Path, name: str) -> tuple[Any, dict[str, Any]]:
    """``(value, meta)`` as written by ``save``; tensors come back on the CPU."""
    directory = Path(directory)
    meta = json.loads((directory / f"{name}.json").read_text(encoding="utf-8"))
    tensors = load_file(directory / f"{name}.safetensors")
    return unflatten(meta.pop("tree"), tensors), meta
