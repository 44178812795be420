"""A self-contained BERT classifier for pda's saved models: pruned shapes, removed blocks, Houlsby adapters.

This file is copied next to the weights of every saved model that stock BERT cannot represent and is
registered through ``auto_map``, so ``AutoModelForSequenceClassification.from_pretrained(dir,
trust_remote_code=True)`` loads the model with nothing but ``torch`` and ``transformers``. It must
therefore never import ``pda`` or ``adapters``.

What the config may carry on top of a ``BertConfig``:

- ``pda_structure``: per layer the kept heads (original indices), whether the MHA block is kept, the
  kept FFN units and whether the FFN block is kept. A removed block is ``LayerNorm(x + const)``.
- ``pda_adapter``: ``{"name", "config"}`` with a sequential bottleneck adapter configuration as the
  ``adapters`` library writes it (Houlsby ``double_seq_bn`` or Pfeiffer ``seq_bn``). The forward below
  reproduces that library's ``pre_forward`` / ``forward`` / ``post_forward`` for one active adapter.
- Distilled students are plain BERT configs with fewer layers.

Loading is strict: a missing, unexpected or mis-shaped weight raises instead of leaving random weights.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, PreTrainedModel
from transformers.activations import get_activation
from transformers.modeling_outputs import SequenceClassifierOutput

MODEL_TYPE = "pda-bert"

# Bottleneck options this file reproduces, with the only values it supports where it does not support all.
_ADAPTER_FIXED = {"is_parallel": False, "use_gating": False, "phm_layer": False, "ln_before": False,
                  "ln_after": False, "inv_adapter": None}


class PdaBertConfig(BertConfig):
    """A ``BertConfig`` whose ``model_type`` tells stock loaders that this model needs this file."""

    model_type = MODEL_TYPE


def layer_plan(config: BertConfig) -> list[dict[str, Any]]:
    """Per layer: ``heads`` kept (count), ``head_dim``, ``ffn`` units kept, and adapter bottleneck sizes.

    ``heads == 0`` means the MHA block was removed, ``ffn == 0`` the FFN block; ``attention_adapter``
    and ``output_adapter`` are the bottleneck widths (0: no adapter there).
    """
    hidden, layers = config.hidden_size, config.num_hidden_layers
    structure = getattr(config, "pda_structure", None)
    if structure:
        if len(structure["layers"]) != layers:
            raise ValueError(f"pda_structure has {len(structure['layers'])} layers, the config {layers}")
        if structure["hidden_kept"] != hidden:
            raise ValueError(f"pruned hidden size {structure['hidden_kept']} != {hidden} is not supported")
        specs = [{"heads": len(s["heads_kept"]) if s["mha_kept"] else 0, "head_dim": hidden // s["num_heads"],
                  "ffn": s["ffn_units_kept"] if s["ffn_kept"] else 0} for s in structure["layers"]]
    else:
        pruned = {int(k): v for k, v in (getattr(config, "pruned_heads", None) or {}).items()}
        head_dim = hidden // config.num_attention_heads
        specs = [{"heads": config.num_attention_heads - len(pruned.get(i, ())), "head_dim": head_dim,
                  "ffn": config.intermediate_size} for i in range(layers)]
    adapter = adapter_options(config)
    for i, spec in enumerate(specs):
        size = _bottleneck_size(adapter, i, hidden) if adapter else 0
        spec["attention_adapter"] = size if adapter and adapter["mh_adapter"] and spec["heads"] else 0
        spec["output_adapter"] = size if adapter and adapter["output_adapter"] and spec["ffn"] else 0
    return specs


def adapter_options(config: BertConfig) -> dict[str, Any] | None:
    """The adapter configuration dict from ``config.pda_adapter`` (None without adapters), checked."""
    marker = getattr(config, "pda_adapter", None)
    if not marker:
        return None
    options = marker.get("config")
    if not isinstance(options, dict):
        raise ValueError(f"pda_adapter config {options!r} is a name, not a resolved configuration; "
                         "re-save the model with pda.checkpoint.save_model, which resolves it")
    arch = options.get("architecture", "bottleneck")
    if arch != "bottleneck":
        raise ValueError(f"adapter architecture {arch!r} is not supported here; only sequential bottleneck "
                         "adapters (double_seq_bn, seq_bn) are")
    for key, wanted in _ADAPTER_FIXED.items():
        if options.get(key, wanted) != wanted:
            raise ValueError(f"adapter option {key}={options[key]!r} is not supported here (supported: {wanted!r}); "
                             "only sequential bottleneck adapters (double_seq_bn, seq_bn) are")
    if not isinstance(options.get("scaling", 1.0), (int, float)):
        raise ValueError(f"adapter scaling {options['scaling']!r} is not supported here; only a constant factor is")
    if options.get("residual_before_ln", True) == "post_add" and not options.get("original_ln_before", False):
        raise ValueError("adapter residual_before_ln='post_add' needs original_ln_before=True")
    return {"name": marker["name"], **options}


def _bottleneck_size(options: dict[str, Any], layer: int, hidden: int) -> int:
    if layer in (options.get("leave_out") or []):
        return 0
    factor = options["reduction_factor"]
    if isinstance(factor, dict):
        factor = factor.get(str(layer), factor.get("default"))
        if factor is None:
            raise ValueError(f"adapter reduction_factor {options['reduction_factor']!r} has no entry for layer "
                             f"{layer} and no 'default'")
    return max(1, int(hidden // factor))


class _Activation(nn.Module):
    """The adapter's non-linearity, resolved the way the ``adapters`` library resolves it."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.fn = F.leaky_relu if name.lower() == "leakyrelu" else get_activation(name.lower())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


class Bottleneck(nn.Module):
    """One sequential bottleneck adapter: ``residual + scaling * up(act(down(h)))``.

    In inference (no autograd, no autocast, not tracing) the residual is the up-projection's GEMM
    accumulator: one full-width pass instead of three (bias, scaling, residual add). On a 90 %-pruned
    model, whose other work is small, that made eager fp32 about 10 % faster (MiniLM, batch 32, 1 thread).
    """

    def __init__(self, hidden: int, size: int, options: dict[str, Any]) -> None:
        super().__init__()
        self.adapter_down = nn.Sequential(nn.Linear(hidden, size), _Activation(options["non_linearity"]))
        self.adapter_up = nn.Linear(size, hidden)
        self.scaling = float(options.get("scaling", 1.0))

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        z = self.adapter_down(h)
        if torch.is_grad_enabled() or torch.is_autocast_enabled(z.device.type) or torch.jit.is_tracing():
            return self.adapter_up(z) * self.scaling + residual
        up = self.adapter_up
        out = torch.add(residual, up.bias, alpha=self.scaling)  # a new tensor: the residual itself is kept
        out.view(-1, out.shape[-1]).addmm_(z.reshape(-1, z.shape[-1]), up.weight.t(), alpha=self.scaling)
        return out


class SublayerOutput(nn.Module):
    """Dense projection, optional adapter, residual and LayerNorm: BertSelfOutput / BertOutput.

    Without adapters: ``LayerNorm(dense(h) + x)``. With an adapter, the order of residuals and the
    original LayerNorm follows the adapter's ``original_ln_before/after`` and ``residual_before_ln``.
    """

    def __init__(self, in_features: int, config: BertConfig, adapter_size: int,
                 options: dict[str, Any] | None) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.dense = nn.Linear(in_features, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.options = options if adapter_size else None
        if adapter_size:
            self.adapters = nn.ModuleDict({options["name"]: Bottleneck(hidden, adapter_size, options)})

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        h = self.dropout(self.dense(h))
        o = self.options
        if o is None:
            return self.LayerNorm(h + x)
        before = o.get("residual_before_ln", True)
        residual = h
        if o.get("original_ln_before", False):
            h = h + x
            if before == "post_add":
                residual = h
            h = self.LayerNorm(h)
        if not before:
            residual = h
        h = self.adapters[o["name"]](h, residual)
        if o.get("original_ln_after", True):
            h = self.LayerNorm(h + x)
        return h


class ConstantSublayer(nn.Module):
    """A removed MHA or FFN block: ``LayerNorm(x + const)``, no matmul (``const`` folds bias and adapter).

    After ``fold_constants`` the constant lives in the LayerNorm before it and this is a bare LayerNorm.
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.register_buffer("const", torch.zeros(config.hidden_size))
        self.folded = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(x) if self.folded else self.LayerNorm(x + self.const)


class SelfAttention(nn.Module):
    """Q, K, V projections for the kept heads, scaled dot-product attention over an additive mask."""

    def __init__(self, config: BertConfig, heads: int, head_dim: int) -> None:
        super().__init__()
        width = heads * head_dim
        self.heads, self.head_dim = heads, head_dim
        self.query = nn.Linear(config.hidden_size, width)
        self.key = nn.Linear(config.hidden_size, width)
        self.value = nn.Linear(config.hidden_size, width)
        self.dropout_p = config.attention_probs_dropout_prob

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n = mask.shape[0], mask.shape[-1]
        split = lambda t: t.view(b, n, self.heads, self.head_dim).transpose(1, 2)  # noqa: E731
        ctx = F.scaled_dot_product_attention(split(self.query(x)), split(self.key(x)), split(self.value(x)),
                                             attn_mask=mask, dropout_p=self.dropout_p if self.training else 0.0)
        return ctx.transpose(1, 2).reshape(b * n, self.heads * self.head_dim)


class Attention(nn.Module):
    """The attention sublayer; a removed MHA keeps only ``output`` (a ``ConstantSublayer``)."""

    def __init__(self, config: BertConfig, spec: dict[str, Any], options: dict[str, Any] | None) -> None:
        super().__init__()
        self.removed = spec["heads"] == 0
        if self.removed:
            self.output = ConstantSublayer(config)
        else:
            self.self = SelfAttention(config, spec["heads"], spec["head_dim"])
            self.output = SublayerOutput(spec["heads"] * spec["head_dim"], config, spec["attention_adapter"], options)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.removed:
            return self.output(x)
        return self.output(self.self(x, mask), x)


class Intermediate(nn.Module):
    def __init__(self, config: BertConfig, units: int) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, units)
        self.act = get_activation(config.hidden_act) if isinstance(config.hidden_act, str) else config.hidden_act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class Layer(nn.Module):
    """One encoder layer with its own head count and FFN width; removed blocks cost no matmul."""

    def __init__(self, config: BertConfig, spec: dict[str, Any], options: dict[str, Any] | None) -> None:
        super().__init__()
        self.attention = Attention(config, spec, options)
        self.ffn_removed = spec["ffn"] == 0
        if self.ffn_removed:
            self.output = ConstantSublayer(config)
        else:
            self.intermediate = Intermediate(config, spec["ffn"])
            self.output = SublayerOutput(spec["ffn"], config, spec["output_adapter"], options)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, mask)
        if self.ffn_removed:
            return self.output(x)
        return self.output(self.intermediate(x), x)


class Embeddings(nn.Module):
    """Word + absolute position + token type embeddings, LayerNorm, dropout (as BertEmbeddings)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        if getattr(config, "position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"position_embedding_type {config.position_embedding_type!r} is not supported; "
                             "only 'absolute'")
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor,
                position_ids: torch.Tensor | None) -> torch.Tensor:
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(x + self.position_embeddings(position_ids)))


class Encoder(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        options = adapter_options(config)
        self.layer = nn.ModuleList([Layer(config, spec, options) for spec in layer_plan(config)])


class Pooler(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (batch, length, hidden); the first token of each sequence."""
        return torch.tanh(self.dense(x[:, 0]))


class PdaBertModel(nn.Module):
    """Embeddings, encoder and pooler; module names match ``BertModel`` so the weights load as saved."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.embeddings = Embeddings(config)
        self.encoder = Encoder(config)
        self.pooler = Pooler(config)

    def _prune_heads(self, heads_to_prune: dict[int, list[int]]) -> None:
        """Nothing to do: ``layer_plan`` already built each layer with ``config.pruned_heads`` removed."""


def fold_constants(model: "PdaBertForSequenceClassification") -> int:
    """Add each removed block's constant into the bias of the LayerNorm whose output is the block's
    input, leaving the block a bare LayerNorm; returns how many were folded.

    ``LN(LN_prev(u) + c) == LN(LN_prev'(u))`` with ``LN_prev'.bias = LN_prev.bias + c``, since the removed
    block's input has no other use. Logits are unchanged; the hidden states between the two are not,
    so this is for inference graphs (the ONNX export), on a copy.
    """
    folded = 0
    previous: nn.LayerNorm | None = model.bert.embeddings.LayerNorm
    with torch.no_grad():
        for layer in model.bert.encoder.layer:
            for sub in (layer.attention.output, layer.output):
                if isinstance(sub, ConstantSublayer):
                    if previous is not None and not sub.folded:
                        previous.bias.add_(sub.const)
                        sub.const.zero_()
                        sub.folded = True
                        folded += 1
                    previous = sub.LayerNorm
                else:  # ends with its LayerNorm unless an adapter moved it
                    ends_with_ln = sub.options is None or sub.options.get("original_ln_after", True)
                    previous = sub.LayerNorm if ends_with_ln else None
    return folded


class PdaBertForSequenceClassification(PreTrainedModel):
    """BERT sequence classifier whose layers may differ in heads and FFN width, lack blocks, or carry adapters.

    Always builds the additive attention mask (no data-dependent shortcut), so that a traced or
    exported graph is valid at every batch size and sequence length.
    """

    config_class = PdaBertConfig
    base_model_prefix = "bert"
    _no_split_modules = ["Layer"]

    def __init__(self, config: BertConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = PdaBertModel(config)
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """BERT's initialisation, for weights a checkpoint does not provide (strict loading refuses those)."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            module.weight.data.normal_(mean=0.0, std=std)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.data.normal_(mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> Any:
        """``PreTrainedModel.from_pretrained``, but a missing, unexpected or mis-shaped weight is an error."""
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        problems = {k: sorted(map(str, v)) for k, v in info.items()
                    if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
        if problems:
            raise ValueError(f"weights do not match the model this config describes: {problems}")
        return (model, info) if want_info else model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **unused: Any,
    ) -> SequenceClassifierOutput | tuple:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        b, n = input_ids.shape
        x = self.bert.embeddings(input_ids, token_type_ids, position_ids)
        keep = attention_mask[:, None, None, :].to(x.dtype)
        mask = (1.0 - keep) * torch.finfo(x.dtype).min  # additive: 0 to attend, most negative to mask
        hidden = [x] if output_hidden_states else None
        x = x.reshape(b * n, -1)  # tokens as rows: every linear is one 2-D GEMM with its bias fused
        for layer in self.bert.encoder.layer:
            x = layer(x, mask)
            if hidden is not None:
                hidden.append(x.view(b, n, -1))
        logits = self.classifier(self.dropout(self.bert.pooler(x.view(b, n, -1))))
        loss = self._loss(logits, labels) if labels is not None else None
        if return_dict is False:
            return tuple(v for v in (loss, logits, tuple(hidden) if hidden else None) if v is not None)
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=tuple(hidden) if hidden else None)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Same rule as ``BertForSequenceClassification``: regression, single- or multi-label."""
        problem = self.config.problem_type
        if problem is None:
            if self.num_labels == 1:
                problem = "regression"
            elif labels.dtype in (torch.long, torch.int):
                problem = "single_label_classification"
            else:
                problem = "multi_label_classification"
        if problem == "regression":
            return F.mse_loss(logits.squeeze(-1), labels.squeeze(-1).to(logits.dtype)) if self.num_labels == 1 \
                else F.mse_loss(logits, labels.to(logits.dtype))
        if problem == "single_label_classification":
            return F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
