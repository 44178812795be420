"""Small real models of every kind pda saves, for the loading and export tests.

Each builder returns a tiny BERT (random, non-trivial weights and biases; adapters perturbed so that
dropping one would change the logits) shaped like one scenario: uneven heads and FFN widths, removed
MHA and FFN blocks, a layer with both removed, adapters (Houlsby and Pfeiffer), a distilled student,
and their combinations.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification

from pda.adapters import add_adapters
from pda.checkpoint import mark_adapter
from pda.config import AdapterConfig
from pda.distill import make_student
from pda.pruning import export_pruned

LAYERS, HEADS, HIDDEN, FFN, VOCAB, MAX_LEN = 4, 4, 32, 64, 100, 40


def tiny(seed: int = 0, num_labels: int = 3) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                        intermediate_size=FFN, vocab_size=VOCAB, max_position_embeddings=MAX_LEN,
                        num_labels=num_labels)
    model = BertForSequenceClassification(config)
    _perturb(model, lambda name: True)
    return model.eval()


def _perturb(model: nn.Module, which: Callable[[str], bool], scale: float = 0.2) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if which(name):
                p.add_(scale * torch.randn_like(p))


def with_adapters(model: nn.Module, config: str = "double_seq_bn", via_pda: bool = False) -> nn.Module:
    """Adapters, by pda's own helper (a config object) or by name (a config string), then perturbed."""
    if via_pda:
        add_adapters(model, AdapterConfig(config=config, reduction_factor=8))
    else:
        import adapters

        adapters.init(model)
        model.add_adapter("pda", config=config)
        model.set_active_adapters("pda")
        model.train_adapter("pda")
        mark_adapter(model.config, "pda", config)
    _perturb(model, lambda name: ".adapters." in name, scale=0.3)
    return model.eval()


def gates(layers: int, seed: int = 1, first_case: int = 0) -> dict[str, torch.Tensor]:
    """Fractional gates with every case: layer 0 uneven heads and half the FFN; then a removed MHA,
    a removed FFN (the FFN kept elsewhere at another width), and both removed, cycling over the
    remaining layers from ``first_case``."""
    g = torch.Generator().manual_seed(seed)
    frac = lambda *shape: 0.3 + 0.7 * torch.rand(*shape, generator=g)  # noqa: E731
    head, mha, inter, ffn = frac(layers, HEADS), frac(layers), frac(layers, FFN), frac(layers)
    head[0, [1, 3]] = 0
    inter[0, ::2] = 0
    for i in range(1, layers):
        case = (i - 1 + first_case) % 3
        if case in (0, 2):
            mha[i] = 0
        if case in (1, 2):
            ffn[i] = 0
        if case == 1:
            inter[i, : FFN // 4] = 0  # a different FFN width where it is kept
    return {"head": head, "mha": mha, "int": inter, "ffn": ffn}


def pruned(model: nn.Module, seed: int = 1, first_case: int = 0) -> nn.Module:
    export_pruned(model, gates(len(model.bert.encoder.layer), seed, first_case))
    return model.eval()


def stock_pruned() -> nn.Module:
    """Pruned heads unevenly, one FFN width, no block removed: stock BERT represents it."""
    g = gates(LAYERS)
    g["mha"], g["ffn"] = g["mha"].clamp(min=0.5), g["ffn"].clamp(min=0.5)
    g["head"] = g["head"].clamp(min=0.4)
    g["head"][0, [1, 3]] = 0
    g["head"][2, 0] = 0
    for i in range(LAYERS):
        g["int"][i] = 0.5
        g["int"][i, torch.randperm(FFN, generator=torch.Generator().manual_seed(i))[: FFN - 40]] = 0
    model = tiny()
    export_pruned(model, g)
    return model.eval()


def student(model: nn.Module) -> nn.Module:
    return make_student(model, [0, 2, 3]).eval()


def _per_layer_houlsby() -> object:
    """Houlsby adapters left out of layer 1, with a wider bottleneck in layer 0 than elsewhere."""
    import adapters

    return adapters.DoubleSeqBnConfig(leave_out=[1], reduction_factor={"0": 4, "default": 8})


# name -> (builder, whether stock BERT can represent the saved model)
KINDS: dict[str, tuple[Callable[[], nn.Module], bool]] = {
    "FT": (tiny, True),
    "A": (lambda: with_adapters(tiny()), False),
    "A-pfeiffer": (lambda: with_adapters(tiny(), "seq_bn"), False),
    "A-per-layer": (lambda: with_adapters(tiny(), _per_layer_houlsby()), False),
    "D": (lambda: student(tiny()), True),
    "D+A": (lambda: with_adapters(student(tiny()), via_pda=True), False),
    "P": (lambda: pruned(tiny()), False),
    "P-stock": (stock_pruned, True),
    "P+A": (lambda: pruned(with_adapters(tiny(), via_pda=True)), False),
    "P+D": (lambda: pruned(student(tiny()), first_case=2), False),
    "P+D+A": (lambda: pruned(with_adapters(student(tiny()), via_pda=True), seed=2, first_case=1), False),
}


def batches(vocab: int = VOCAB, max_len: int = MAX_LEN) -> list[dict[str, torch.Tensor]]:
    """Several batch sizes and lengths, right padding in all rows but the first, both segments used."""
    from pda.export import example_inputs

    return [example_inputs(bs, min(n, max_len), vocab, seed=bs + n) for bs, n in ((1, 5), (3, 17), (8, 40))]
