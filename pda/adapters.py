"""Houlsby bottleneck adapters through the `adapters` library: insertion, freezing, bookkeeping."""

from __future__ import annotations

import adapters
from adapters import SeqBnConfig
from torch import nn
from transformers import PreTrainedModel

from pda.checkpoint import mark_adapter
from pda.config import AdapterConfig
from pda.models import task_head_prefixes

ADAPTER_NAME = "pda"


def adapter_settings(cfg: AdapterConfig) -> SeqBnConfig:
    """The library's named config (``double_seq_bn`` = Houlsby) with our reduction factor."""
    base = adapters.AdapterConfig.load(cfg.config)
    return base.replace(reduction_factor=cfg.reduction_factor)


def add_adapters(model: PreTrainedModel, cfg: AdapterConfig, name: str = ADAPTER_NAME) -> PreTrainedModel:
    """Insert adapters, activate them and freeze everything else but the task head and, as
    ``cfg.train_layer_norms`` and ``cfg.train_pooler`` say, the layer norms and the pooler.

    The head must train (it is new for the task); `train_adapter` leaves it trainable, and
    we re-assert that so a later structural change cannot silently freeze or unfreeze it.
    """
    if not hasattr(model, "adapters_config"):
        adapters.init(model)
    model.add_adapter(name, config=adapter_settings(cfg), overwrite_ok=True)
    model.set_active_adapters(name)
    freeze_for_adapters(model, cfg, name)
    mark_adapter(model.config, name, adapter_settings(cfg))  # so checkpoint.load_model re-creates it
    return model


def freeze_for_adapters(model: PreTrainedModel, cfg: AdapterConfig, name: str = ADAPTER_NAME) -> None:
    """Only adapter weights, the task head and, with ``cfg.train_layer_norms``, the model's own layer norms train.

    Houlsby et al. (2019) train "the adapter, the layer normalization parameters, and the final
    classification layer". With ``cfg.train_pooler`` the head is the pooler's dense layer and the classifier,
    as in the adapters library's own classification head (dense, tanh, output); the embedded model's
    pooler was never trained (zero bias, weights at their initial scale). Call again after pruning makes
    new layers.
    """
    model.train_adapter(name)
    norms = {f"{module_name}.{pname}" for module_name, module in model.named_modules()
             if cfg.train_layer_norms and isinstance(module, nn.LayerNorm) and "adapters." not in module_name
             for pname, _ in module.named_parameters(recurse=False)}
    head = task_head_prefixes(model, cfg.train_pooler)
    for pname, param in model.named_parameters():
        adapter = "adapters." in pname and f".{name}." in pname
        param.requires_grad = adapter or pname.startswith(head) or pname in norms
