"""Save and load models as config.json + model.safetensors (no pickle), pruned or adapted or not.

The config carries everything needed to rebuild the module tree before ``strict=True`` loading:
``pda_adapter`` (adapter name and config, see ``mark_adapter``) and ``pda_structure`` (CoFi
export, see ``pda.pruning.export``). Students with fewer layers need nothing extra.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForSequenceClassification, PretrainedConfig, PreTrainedModel

WEIGHTS_NAME = "model.safetensors"
ALIASES_KEY = "pda_aliases"  # safetensors metadata: {dropped name: kept name} for shared tensors


def mark_adapter(config: PretrainedConfig, name: str, adapter_config: Any) -> None:
    """Record in ``config`` that the model carries adapter ``name`` (config: a name such as
    ``"double_seq_bn"``, a dict, or an ``adapters`` config object) so ``load_model`` re-creates it."""
    if hasattr(adapter_config, "to_dict"):
        adapter_config = adapter_config.to_dict()
    json.dumps(adapter_config)  # must survive config.json
    config.pda_adapter = {"name": name, "config": adapter_config}


def save_model(model: PreTrainedModel, out_dir: str | os.PathLike, tokenizer: Any = None) -> None:
    """Write ``config.json`` + ``model.safetensors`` (full state dict) [+ tokenizer] to ``out_dir``.

    Written into a temporary sibling directory, then renamed into place: a crash leaves either the
    previous ``out_dir`` or none, never a half-written one.
    """
    out_dir = Path(out_dir)
    state = model.state_dict()
    if any(".adapters." in key for key in state) and not getattr(model.config, "pda_adapter", None):
        raise ValueError("model has adapter weights but config.pda_adapter is unset; call mark_adapter() first")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp's 0700 would otherwise become the final directory's mode
        config = copy.deepcopy(model.config)
        config.architectures = [type(model).__name__]
        config.save_pretrained(tmp)
        tensors, aliases = _split_aliases(state)
        save_file(tensors, tmp / WEIGHTS_NAME, metadata={"format": "pt", ALIASES_KEY: json.dumps(aliases)})
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        _fsync_files(tmp)
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_model(model_dir: str | os.PathLike) -> PreTrainedModel:
    """Rebuild the model saved by ``save_model`` (adapters activated, pruned shape applied), in eval mode.

    Parameters come back with ``requires_grad=True``; re-freeze (e.g. ``train_adapter``) to train again.
    """
    model_dir = Path(model_dir)
    config = AutoConfig.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_config(config)
    adapter = getattr(config, "pda_adapter", None)
    if adapter:
        import adapters  # only needed for adapted models

        adapters.init(model)
        model.add_adapter(adapter["name"], config=adapter["config"])
        model.set_active_adapters(adapter["name"])
    structure = getattr(config, "pda_structure", None)
    if structure:
        from pda.pruning.export import apply_structure

        apply_structure(model, structure)
    model.load_state_dict(_load_tensors(model_dir / WEIGHTS_NAME), strict=True)
    return model.eval()


def _split_aliases(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Keep one copy of each tensor shared under several names (tied weights); map the others to it."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name, tensor in state.items():
        key = (tensor.device, tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tensor.stride())
        if tensor.numel() > 0 and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = tensor.detach().to("cpu").clone().contiguous()  # private storage for safetensors
    return tensors, aliases


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    tensors = load_file(path)
    with safe_open(path, framework="pt") as f:
        aliases = json.loads((f.metadata() or {}).get(ALIASES_KEY, "{}"))
    for name, target in aliases.items():
        tensors[name] = tensors[target]
    return tensors


def _fsync_files(directory: Path) -> None:
    for path in directory.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())


def _replace_dir(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``; an existing ``dst`` is moved aside first and deleted last."""
    if not dst.exists():
        os.replace(src, dst)
        return
    old = dst.with_name(f".{dst.name}.old-{uuid.uuid4().hex}")
    os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old)
