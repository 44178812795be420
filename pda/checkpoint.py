"""Save and load models as config.json + model.safetensors (no pickle), pruned or adapted or not.

A saved directory loads two ways, with the same logits:

- ``load_model`` (this module): the training form, a stock ``transformers`` BERT with the ``adapters``
  library's adapters and ``pda.pruning`` shapes, ready to train further.
- ``AutoModelForSequenceClassification.from_pretrained(dir, trust_remote_code=True)`` with only torch
  and transformers installed: a model that stock BERT cannot represent (removed blocks, per-layer FFN
  widths, adapters) is saved with ``model_type`` ``pda-bert``, ``auto_map`` and the self-contained
  ``modeling_pda_bert.py`` next to its weights. Without ``trust_remote_code`` stock loaders refuse it,
  so it never loads silently wrong. A model stock BERT rebuilds exactly (fine-tuned, distilled, or
  pruned with only ``pruned_heads`` and one ``intermediate_size``) stays a plain ``bert`` checkpoint.

The config carries everything needed to rebuild the module tree before ``strict=True`` loading:
``pda_adapter`` (adapter name and resolved config, see ``mark_adapter``) and ``pda_structure`` (CoFi
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
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from transformers import AutoModelForSequenceClassification, PretrainedConfig, PreTrainedModel
from transformers.modeling_utils import no_init_weights
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from pda import modeling_pda_bert
from pda.modeling_pda_bert import MODEL_TYPE, PdaBertConfig, PdaBertForSequenceClassification

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
MODELING_FILE = Path(modeling_pda_bert.__file__).name
ALIASES_KEY = "pda_aliases"  # safetensors metadata: {dropped name: kept name} for shared tensors
BASE_TYPE_KEY = "pda_base_model_type"  # the stock model_type a pda-* config was derived from
AUTO_MAP = {
    "AutoConfig": f"{Path(MODELING_FILE).stem}.PdaBertConfig",
    "AutoModelForSequenceClassification": f"{Path(MODELING_FILE).stem}.PdaBertForSequenceClassification",
}


def mark_adapter(config: PretrainedConfig, name: str, adapter_config: Any) -> None:
    """Record in ``config`` that the model carries adapter ``name`` (config: a name such as
    ``"double_seq_bn"``, a dict, or an ``adapters`` config object) so ``load_model`` re-creates it."""
    if hasattr(adapter_config, "to_dict"):
        adapter_config = adapter_config.to_dict()
    json.dumps(adapter_config)  # must survive config.json
    config.pda_adapter = {"name": name, "config": adapter_config}


def _saved_form(model: PreTrainedModel) -> tuple[dict[str, torch.Tensor], dict[str, str], dict[str, Any], bool]:
    """What ``save_model`` writes: the tensors, the safetensors metadata, the config and whether it is custom."""
    state = model.state_dict()
    if any(".adapters." in key for key in state) and not getattr(model.config, "pda_adapter", None):
        raise ValueError("model has adapter weights but config.pda_adapter is unset; call mark_adapter() first")
    tensors, aliases = _split_aliases(state)
    config_dict, custom, expected = saved_config(model.config, state)
    for name in [n for n in aliases if n in expected]:  # a name the loading class needs is stored, not aliased
        tensors[name] = tensors[aliases.pop(name)].clone()
    return tensors, {"format": "pt", ALIASES_KEY: json.dumps(aliases)}, config_dict, custom


def weights_bytes(model: PreTrainedModel) -> int:
    """The size ``model.safetensors`` would have if ``save_model`` wrote it, serialised in memory (no disk)."""
    from safetensors.torch import save

    tensors, metadata, _, _ = _saved_form(model)
    return len(save(tensors, metadata=metadata))


def save_model(model: PreTrainedModel, out_dir: str | os.PathLike, tokenizer: Any = None) -> None:
    """Write ``config.json`` + ``model.safetensors`` (full state dict) [+ tokenizer] to ``out_dir``.

    A model stock BERT cannot rebuild also gets ``modeling_pda_bert.py`` and a ``pda-bert`` config
    (see the module docstring); one that neither stock BERT nor that file can rebuild is refused.
    Written into a temporary sibling directory, then renamed into place: a crash leaves either the
    previous ``out_dir`` or none, never a half-written one.
    """
    out_dir = Path(out_dir)
    tensors, metadata, config_dict, custom = _saved_form(model)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp's 0700 would otherwise become the final directory's mode
        (tmp / CONFIG_NAME).write_text(json.dumps(config_dict, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if custom:
            shutil.copyfile(modeling_pda_bert.__file__, tmp / MODELING_FILE)
        (tmp / WEIGHTS_NAME).write_bytes(safetensors_bytes(tensors, metadata=metadata))  # save_file makes it 0600
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        fsync_files(tmp)
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def saved_config(config: PretrainedConfig,
                 state: dict[str, torch.Tensor]) -> tuple[dict[str, Any], bool, dict[str, tuple[int, ...]]]:
    """The ``config.json`` content for state dict ``state``, whether it needs the modeling file, and
    the weight names and shapes the class that will load it expects.

    Stock when a stock model built from ``config`` has exactly these weights; otherwise ``pda-bert``,
    checked the same way against ``PdaBertForSequenceClassification``. Another family (e.g. RoBERTa)
    has no self-contained file: it gets ``model_type`` ``pda-<type>``, so stock loaders refuse it and
    ``load_model`` loads it. A second name
    for a shared tensor (e.g. the ``adapters`` library's alias of the word embeddings) may be absent
    from the class; every other weight must match by name and shape.
    """
    config = copy.deepcopy(config)
    _resolve_adapter(config)
    stock = config.to_dict()
    stock.pop("auto_map", None)
    stock_model = _stock_model_on_meta(config)
    stock["architectures"] = [type(stock_model).__name__]
    expected = _shapes(stock_model)
    if not _misfit(expected, state):
        return stock, False, expected
    base_type = stock["model_type"]
    if base_type != "bert":  # no self-contained file for it: loads with pda only, never with stock loaders
        return {**stock, "model_type": f"pda-{base_type}", BASE_TYPE_KEY: base_type}, False, _shapes(tensors_of(state))
    custom = {**stock, "model_type": MODEL_TYPE, BASE_TYPE_KEY: base_type, "auto_map": dict(AUTO_MAP),
              "architectures": [PdaBertForSequenceClassification.__name__], "pruned_heads": {}}
    expected = _shapes(_custom_model_on_meta(custom))
    if problem := _misfit(expected, state):
        raise ValueError(f"{MODELING_FILE} cannot rebuild this model: {problem}")
    return custom, True, expected


def tensors_of(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors ``save_model`` stores for ``state``: each shared tensor once."""
    return _split_aliases(state)[0]


def _misfit(expected: dict[str, tuple[int, ...]], state: dict[str, torch.Tensor]) -> str:
    """What keeps ``state`` from loading strictly into a module with weights ``expected`` ('' if nothing)."""
    _, aliases = _split_aliases(state)
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected) - set(aliases))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k] != tuple(state[k].shape))
    if not (missing or extra or wrong):
        return ""
    return f"missing {missing[:5]}, unexpected {extra[:5]}, mis-shaped {wrong[:5]}"


def deployable_model(model: PreTrainedModel) -> PdaBertForSequenceClassification:
    """The same network as ``model`` (a pda BERT in training form) as a ``PdaBertForSequenceClassification``.

    Its logits equal ``model``'s; its forward has no data-dependent branch (exportable to ONNX) and no
    ``adapters`` library overhead. It shares no storage with ``model``; eval mode, on ``model``'s device.
    """
    state = model.state_dict()
    config_dict, _, _ = saved_config(model.config, state)
    if config_dict.get(BASE_TYPE_KEY, config_dict["model_type"]) != "bert":
        raise ValueError(f"{MODELING_FILE} rebuilds BERT models only, not model_type "
                         f"{config_dict.get(BASE_TYPE_KEY, config_dict['model_type'])!r}")
    if config_dict["model_type"] != MODEL_TYPE:  # a stock BERT: the file builds it as well
        config_dict = {**config_dict, "model_type": MODEL_TYPE}
    deployable = _custom_model_on_meta(config_dict)
    wanted = deployable.state_dict()
    deployable.load_state_dict({k: state[k].detach().clone() for k in wanted}, strict=True, assign=True)
    device = next(model.parameters()).device
    return deployable.to(device).eval()


def load_model(model_dir: str | os.PathLike) -> PreTrainedModel:
    """Rebuild the model saved by ``save_model`` (adapters activated, pruned shape applied), in eval mode.

    Parameters come back with ``requires_grad=True``; re-freeze (e.g. ``train_adapter``) to train again.
    """
    model_dir = Path(model_dir)
    config = stock_config(model_dir)
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


def stock_config(model_dir: str | os.PathLike) -> PretrainedConfig:
    """The saved config as its stock ``transformers`` class (a ``pda-bert`` config becomes a ``BertConfig``)."""
    path = Path(model_dir) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG_NAME} in {model_dir}; expected a directory written by save_model")
    data = json.loads(path.read_text(encoding="utf-8"))
    data.pop("auto_map", None)
    model_type = data.pop(BASE_TYPE_KEY, None) or data.get("model_type")
    if model_type not in CONFIG_MAPPING:
        raise ValueError(f"{path}: unknown model_type {model_type!r}")
    data["model_type"] = model_type
    return CONFIG_MAPPING[model_type].from_dict(data)


def _resolve_adapter(config: PretrainedConfig) -> None:
    """Replace an adapter config name (e.g. ``"double_seq_bn"``) by its full dict, so loaders need no ``adapters``."""
    marker = getattr(config, "pda_adapter", None)
    if marker and not isinstance(marker.get("config"), dict):
        import adapters

        config.pda_adapter = {"name": marker["name"],
                              "config": adapters.AdapterConfig.load(marker["config"]).to_dict()}


def _stock_model_on_meta(config: PretrainedConfig) -> PreTrainedModel:
    """The stock model ``config`` describes, without real weights (on CPU when heads must be pruned:
    Hugging Face's head pruning cannot run on the meta device)."""
    device = "cpu" if getattr(config, "pruned_heads", None) else "meta"
    with torch.device(device), no_init_weights():
        return AutoModelForSequenceClassification.from_config(copy.deepcopy(config))


def _custom_model_on_meta(config_dict: dict[str, Any]) -> PdaBertForSequenceClassification:
    config = PdaBertConfig.from_dict({k: v for k, v in config_dict.items() if k != "auto_map"})
    with torch.device("meta"):
        return PdaBertForSequenceClassification(config)


def _shapes(source: torch.nn.Module | dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """Weight names and shapes of a (meta) module's state dict or of a tensor dict."""
    tensors = source.state_dict() if isinstance(source, torch.nn.Module) else source
    return {name: tuple(t.shape) for name, t in tensors.items()}


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


def fsync_files(directory: Path) -> None:
    """Flush every file under ``directory`` to disk (before it is renamed into place)."""
    for path in directory.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())


def replace_dir(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``; an existing ``dst`` is moved aside first and deleted last."""
    if not dst.exists():
        os.replace(src, dst)
        return
    old = dst.with_name(f".{dst.name}.old-{uuid.uuid4().hex}")
    os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old)
