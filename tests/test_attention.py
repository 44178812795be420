"""The attention kernel models train with (``training.attention``): eager on CPU, the same numbers as SDPA.

The setting is not fingerprinted (like thread counts), so a record made with one kernel stands for the
other. That holds only if both draw the same dropout masks and compute the same losses; these tests
check it on a model with dropout, padding and a few optimiser steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertConfig
from transformers.models.bert.modeling_bert import BertSdpaSelfAttention, BertSelfAttention

from pda import fingerprint
from pda.checkpoint import load_model, save_model
from pda.config import ConfigError, for_run, load_params
from pda.models import training_attention

torch.set_num_threads(1)


def tiny_config() -> BertConfig:
    return BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=32, num_labels=2,
                      hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)


def model_with(attention: str) -> torch.nn.Module:
    torch.manual_seed(0)  # the same initial weights whatever the kernel
    return AutoModelForSequenceClassification.from_config(tiny_config(), attn_implementation=attention)


def self_attention_types(model: torch.nn.Module) -> set[type]:
    return {type(layer.attention.self) for layer in model.bert.encoder.layer}


def train_losses(model: torch.nn.Module, seed: int, steps: int = 5) -> list[float]:
    """A few AdamW steps in train mode (dropout on) on padded batches; the losses seen."""
    data = torch.Generator().manual_seed(1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    torch.manual_seed(seed)  # the dropout masks
    losses = []
    for _ in range(steps):
        ids = torch.randint(1, 100, (4, 12), generator=data)
        mask = torch.ones_like(ids)
        mask[2:, 7:] = 0  # right padding in half the rows
        out = model(input_ids=ids, attention_mask=mask, labels=torch.randint(0, 2, (4,), generator=data))
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(out.loss.detach()))
    return losses


def test_auto_is_eager_on_cpu_and_sdpa_on_a_gpu():
    assert training_attention("auto", torch.device("cpu")) == "eager"
    assert training_attention("auto", torch.device("cuda")) == "sdpa"
    assert training_attention("sdpa", torch.device("cpu")) == "sdpa"


def test_eager_and_sdpa_train_the_same_numbers():
    eager, sdpa = model_with("eager"), model_with("sdpa")
    assert self_attention_types(eager) == {BertSelfAttention}
    assert self_attention_types(sdpa) == {BertSdpaSelfAttention}
    losses = train_losses(eager, seed=0)
    assert train_losses(sdpa, seed=0) == pytest.approx(losses, abs=1e-5)
    for (name, a), b in zip(eager.state_dict().items(), sdpa.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5), name
    # the dropout masks decide the losses: other masks, other numbers (so the comparison above can fail)
    assert train_losses(model_with("eager"), seed=1) != pytest.approx(losses, abs=1e-4)


def test_a_saved_model_loads_with_the_default_attention_unless_asked(tmp_path: Path):
    model = model_with("eager").eval()
    save_model(model, tmp_path / "m")
    assert not any("attn" in key for key in json.loads((tmp_path / "m" / "config.json").read_text()))
    default, eager = load_model(tmp_path / "m"), load_model(tmp_path / "m", "eager")
    assert self_attention_types(default) == {BertSdpaSelfAttention}
    assert self_attention_types(eager) == {BertSelfAttention}
    ids = torch.randint(1, 100, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits
        for loaded in (default, eager):
            assert torch.allclose(loaded(input_ids=ids, attention_mask=mask).logits, expected, atol=1e-5)


def test_a_bad_attention_setting_names_the_valid_ones(make_params):
    with pytest.raises(ConfigError, match=r"training.attention='flash' is not valid; use one of auto, eager, sdpa"):
        load_params(make_params(training={"attention": "flash"}))


def test_the_attention_setting_does_not_change_a_runs_fingerprint(make_params):
    def digest(attention: str) -> str:
        study = load_params(make_params(training={"attention": attention}))
        return fingerprint.fingerprint(for_run(study, "mrpc", "FT", None, 0))

    assert digest("eager") == digest("sdpa") == digest("auto")
