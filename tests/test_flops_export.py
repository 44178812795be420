"""FLOPs of a physically pruned model (a removed MHA, a removed FFN, uneven FFN widths) against a hand count."""

from __future__ import annotations

import torch
from transformers import BertConfig, BertForSequenceClassification

from pda.measure import flops_per_example
from pda.pruning import export_pruned

HIDDEN, HEADS, FFN, CLASSES, SEQ = 32, 4, 64, 3, 16
HEAD_DIM = HIDDEN // HEADS


def hand_count(seq: int, layers: list[tuple[int, int]]) -> int:
    """``flops_per_example``'s docstring formula, per layer with ``a`` = kept heads x head size (0 = MHA
    removed) and ``f`` = kept FFN units (0 = FFN removed): 2L·d·3a + 2L²a + 2L²a + 2L·a·d + 2·2L·d·f,
    plus the pooler 2d² (CLS token only) and the classifier 2dC."""
    d, total = HIDDEN, 0
    for a, f in layers:
        total += 2 * seq * d * 3 * a + 2 * seq * seq * a + 2 * seq * seq * a + 2 * seq * a * d
        total += 2 * 2 * seq * d * f
    return total + 2 * d * d + 2 * d * CLASSES


def test_flops_of_an_exported_model_match_a_hand_count() -> None:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=HIDDEN, num_hidden_layers=3, num_attention_heads=HEADS,
                        intermediate_size=FFN, max_position_embeddings=32, num_labels=CLASSES)
    model = BertForSequenceClassification(config).eval()
    full = flops_per_example(model, seq_len=SEQ)
    assert full == hand_count(SEQ, [(HIDDEN, FFN)] * 3)
    head, mha = torch.ones(3, HEADS), torch.ones(3)
    inter, ffn = torch.ones(3, FFN), torch.ones(3)
    head[0, [1, 3]] = 0  # layer 0: 2 of 4 heads, 40 of 64 FFN units
    inter[0, 40:] = 0
    mha[1] = 0  # layer 1: whole MHA removed, 24 FFN units
    inter[1, ::8] = 0
    inter[1, 1::8] = 0
    inter[1, 2::8] = 0
    inter[1, 3::8] = 0
    inter[1, 4::8] = 0
    ffn[2] = 0  # layer 2: every head, whole FFN removed

    structure = export_pruned(model, {"head": head, "mha": mha, "int": inter, "ffn": ffn})

    kept = [(len(s["heads_kept"]) * HEAD_DIM if s["mha_kept"] else 0, s["ffn_units_kept"] if s["ffn_kept"] else 0)
            for s in structure["layers"]]
    assert kept == [(2 * HEAD_DIM, 40), (0, 24), (HIDDEN, 0)]  # the export did what the gates say
    assert model.bert.encoder.layer[0].intermediate.dense.out_features == 40  # uneven widths, physically
    assert model.bert.encoder.layer[1].intermediate.dense.out_features == 24
    assert flops_per_example(model, seq_len=SEQ) == hand_count(SEQ, kept)
    assert flops_per_example(model, seq_len=SEQ) < full
