"""Every module, buffer and batch of a run sits on the configured device: the audit, and a real run under it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from pda import prune_run
from pda.config import for_run, load_params
from pda.devices import DeviceMismatchError, device_audit
from pda.pipeline import run
from pda.pruning import L0Pruner


def tiny_model() -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16)
    return BertForSequenceClassification(config).eval()


def batch() -> dict[str, torch.Tensor]:
    return {"input_ids": torch.randint(1, 50, (2, 5)), "attention_mask": torch.ones(2, 5, dtype=torch.long)}


def test_a_model_wholly_on_the_device_passes_the_audit() -> None:
    model = tiny_model()
    with device_audit("cpu") as seen:
        model(**batch())
    assert {"BertEmbeddings", "Linear", "LayerNorm", "BertForSequenceClassification"} <= set(seen)


def test_the_audit_names_a_module_left_on_another_device() -> None:
    model = tiny_model()
    model.bert.encoder.layer[1].output.dense.to("meta")  # one sublayer left behind
    with pytest.raises(DeviceMismatchError, match=r"Linear.weight is on meta, but the run's device is cpu"):
        with device_audit("cpu"):
            model(**batch())


def test_the_audit_names_a_batch_on_another_device() -> None:
    model = tiny_model().to("meta")
    with pytest.raises(DeviceMismatchError, match=r"input 0 of \w+ is on cpu, but the run's device is meta"):
        with device_audit("meta"):
            model(**batch())


def test_the_audit_is_gone_after_its_block() -> None:
    model = tiny_model()
    with device_audit("meta"):
        pass
    model(**batch())  # would raise if the hook were still registered


@pytest.fixture
def layer_distill_params(make_params):
    """P+D+A with the teacher online (layer distillation, no logit cache): the path where the teacher was left behind."""
    return make_params(tasks=["mrpc"], max_train_samples=16, max_eval_samples=16, max_seq_length=32,
                       training={"epochs": 1, "batch_size": 8, "eval_batch_size": 16, "learning_rate": 5e-5,
                                 "log_every_steps": 1},
                       pruning={"epochs": 1, "finetune_epochs": 1},
                       distill={"layer_distill": True, "cache_teacher_logits": False},
                       measure={"batch_sizes": [1, 4], "seq_len": 16, "warmup": 0, "rounds": 1, "energy": False})


def test_every_run_of_a_pruned_distilled_adapted_chain_stays_on_the_device(layer_distill_params) -> None:
    """FT teacher, D student and P+D+A (gates, λ, layer-distillation map, online teacher, speed-up reference)."""
    cfg = for_run(load_params(layer_distill_params), "mrpc", "P+D+A", 0.6, 0)
    with device_audit("cpu") as seen:
        record = run(cfg, with_dependencies=True)
    assert record.pruning and record.speed and {"L0Pruner", "LayerDistiller", "Adapter"} <= set(seen)


@pytest.mark.parametrize("gate_init, controller, error", [
    ("cofi", "lagrangian", r"StrandedPruner.lambda_1 is on meta"), ("importance", "projection", r"meta")])
def test_a_pruner_stranded_on_another_device_stops_the_run(layer_distill_params, monkeypatch, gate_init,
                                                           controller, error) -> None:
    """The bug this guards against: gates left where the model was before ``fit`` moved it. With the
    importance start and the projection, gates on the pruner's device are used before any forward: torch stops."""
    study = load_params(layer_distill_params, pruning={"epochs": 1, "finetune_epochs": 1, "gate_init": gate_init,
                                                       "controller": controller})
    run(for_run(study, "mrpc", "FT", None, 0))

    class StrandedPruner(L0Pruner):
        def to(self, *args, **kwargs):
            return super().to("meta")

    monkeypatch.setattr(prune_run, "L0Pruner", StrandedPruner)
    with pytest.raises((DeviceMismatchError, RuntimeError), match=error):
        with device_audit("cpu"):
            run(for_run(study, "mrpc", "P", 0.6, 0))


ZEN3_FLAGS = "flags\t\t: fpu vme avx avx2 fma sha_ni vaes\n"  # an AMD EPYC Zen 3: no AVX-512, no bf16
ZEN4_FLAGS = "flags\t\t: fpu vme avx avx2 avx512f avx512_bf16 vaes\n"


def test_auto_trains_in_bf16_only_on_a_cpu_that_has_it_and_the_study_says_which() -> None:
    """``precision: auto`` is fp32 on a CPU without bf16 (emulated bf16 is slower there) and bf16 on one with it;
    the line a study prints at its start names the precision and the reason."""
    from pda.precision import precision_note, resolve_precision

    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu, ZEN3_FLAGS) == "fp32"
    assert resolve_precision("auto", cpu, ZEN4_FLAGS) == "bf16"
    assert resolve_precision("fp32", cpu, ZEN4_FLAGS) == "fp32"
    without = precision_note("auto", cpu, ZEN3_FLAGS)
    assert without.startswith("training in fp32") and "neither amx_bf16 nor avx512_bf16" in without
    assert "--measure" in without
    assert precision_note("auto", cpu, ZEN4_FLAGS) == "training in bf16 (precision: auto; this CPU has avx512_bf16)"
    assert precision_note("bf16", cpu, ZEN3_FLAGS) == "training in bf16 (precision: bf16)"
    with pytest.raises(ValueError, match="'fp16' needs CUDA"):
        precision_note("fp16", cpu, ZEN4_FLAGS)


def test_a_study_names_every_precision_its_runs_train_in() -> None:
    """A task that overrides ``precision`` gets its own start line; one line when all runs agree."""
    from pda.runs import expand_grid
    from pda.study import precision_lines

    cpu, params = torch.device("cpu"), Path(__file__).resolve().parent.parent / "parameters" / "smoke.yaml"
    same = load_params(params, precision="auto")
    assert precision_lines(same, expand_grid(same), cpu, ZEN4_FLAGS) == [
        "training in bf16 (precision: auto; this CPU has avx512_bf16)"]
    mixed = load_params(params, precision="auto", overrides={"stsb": {"precision": "fp32"}})
    specs = expand_grid(mixed)
    stsb = sum(spec.task == "stsb" for spec in specs)
    assert precision_lines(mixed, specs, cpu, ZEN4_FLAGS) == [
        f"{len(specs) - stsb} run(s) (mrpc-base-seed0, ...): training in bf16 (precision: auto; this CPU has avx512_bf16)",
        f"{stsb} run(s) (stsb-base-seed0, ...): training in fp32 (precision: fp32)"]
