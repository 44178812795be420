"""The sparsity controllers and the importance start: the projection puts s on t exactly, importance orders the gates."""

from __future__ import annotations

import pytest
import torch

from pda.pruning import L0Pruner, attach_gates, structure_sparsity, target_at
from pda.pruning.control import project_
from pda.pruning.gates import LOG_ALPHA_MAX, LOG_ALPHA_MIN
from pda.pruning.importance import fisher_importance, init_gates_from_importance, structure_costs
from tests.test_pruning import HIDDEN, LAYERS, tiny_config, tiny_model


@pytest.mark.parametrize("target", [0.0, 0.05, 0.6, 0.9, 0.95])
def test_projection_puts_the_expected_sparsity_on_the_target(target: float) -> None:
    torch.manual_seed(1)
    pruner = L0Pruner(tiny_config(), target_sparsity=0.95, coarse_init=None)
    with torch.no_grad():
        for gate in pruner.gate_modules().values():
            gate.log_alpha.normal_(0.0, 2.0)
    learned = {k: g.log_alpha.detach().clamp(LOG_ALPHA_MIN, LOG_ALPHA_MAX) for k, g in pruner.gate_modules().items()}
    project_(pruner, target)
    assert float(pruner.expected_sparsity().detach()) == pytest.approx(target, abs=1e-6)
    for name, gate in pruner.gate_modules().items():  # only CoFi's clamp and the shared offset, not the order
        assert torch.equal(gate.log_alpha.detach(), learned[name])
        assert float(gate.offset) == float(pruner.head.offset)


def test_projection_keeps_the_order_of_the_learned_gates() -> None:
    """After projecting to 0.5, the gates with the lowest log_alpha are the least likely to be kept."""
    pruner = L0Pruner(tiny_config(), target_sparsity=0.5, coarse_init=None)
    with torch.no_grad():
        pruner.int.log_alpha.copy_(torch.linspace(-3, 3, pruner.int.log_alpha.numel()).reshape(pruner.int.log_alpha.shape))
    project_(pruner, 0.5)
    p = pruner.int.prob_nonzero().detach().flatten()
    assert bool((p[1:] >= p[:-1]).all()) and p[0] < 0.5 < p[-1]


def test_projection_follows_a_warming_target_inside_training_steps() -> None:
    """The loop's ``after_step`` hook: after each optimiser step the expected sparsity is the next target."""
    from pda.prune_run import PruningExtension

    torch.manual_seed(0)
    model = tiny_model()
    pruner = L0Pruner(model.config, target_sparsity=0.8, warmup_steps=6)
    extension = PruningExtension(pruner, gate_lr=0.5, lambda_lr=0.5, controller="projection")
    opt = torch.optim.Adam(extension.param_groups()[0]["params"], lr=0.5)
    assert len(extension.param_groups()) == 1  # no multipliers to train
    project_(pruner, target_at(0, 0.8, 6))
    batch = {"input_ids": torch.randint(1, 100, (4, 8))}
    with attach_gates(model.train(), pruner):
        for step in range(10):
            loss = model(**batch).logits.pow(2).mean() + extension.extra_loss(step, 10)[0]
            opt.zero_grad()
            loss.backward()
            opt.step()
            extension.after_step(step + 1, 10)
    assert [round(t, 6) for _, _, t in extension.trace] == [round(target_at(s, 0.8, 6), 6) for s in range(10)]
    assert max(abs(s - t) for _, s, t in extension.trace) < 1e-5


def test_fisher_importance_is_zero_for_structures_the_loss_cannot_see() -> None:
    """A head whose output projection columns are zero cannot change the loss: its importance is 0."""
    torch.manual_seed(0)
    model = tiny_model()
    dense = model.bert.encoder.layer[1].attention.output.dense
    head_dim = HIDDEN // 4
    with torch.no_grad():
        dense.weight[:, 2 * head_dim:3 * head_dim] = 0  # layer 1, head 2 writes nothing
    pruner = L0Pruner(model.config, target_sparsity=0.5)
    batches = [{"input_ids": torch.randint(1, 100, (4, 8)), "labels": torch.randint(0, 3, (4,))} for _ in range(3)]

    def loss_fn(m, batch):
        return torch.nn.functional.cross_entropy(m(input_ids=batch["input_ids"]).logits, batch["labels"]), {}

    scores = fisher_importance(model, pruner, batches, loss_fn, num_batches=3)
    assert scores["head"].shape == (LAYERS, 4) and scores["mha"].shape == (LAYERS,)
    assert float(scores["head"][1, 2]) == 0.0
    assert bool((scores["head"].flatten()[torch.arange(16) != 6] > 0).all())
    assert all(p.grad is None for p in model.parameters())  # the model's own gradients are untouched


def test_importance_start_ranks_gates_by_importance_per_weight() -> None:
    pruner = L0Pruner(tiny_config(), target_sparsity=0.5)
    costs = structure_costs(pruner)
    scores = {name: torch.rand(g.log_alpha.shape[:-1] if name in ("mha", "ffn") else g.log_alpha.shape,
                               generator=torch.Generator().manual_seed(i)) * costs[name]
              for i, (name, g) in enumerate(pruner.gate_modules().items())}
    init_gates_from_importance(pruner, scores, spread=2.0)
    per_weight = torch.cat([(scores[n] / costs[n]).flatten() for n in scores])
    log_alpha = torch.cat([g.log_alpha.detach().flatten() for g in pruner.gate_modules().values()])
    order = torch.argsort(per_weight)
    assert bool((log_alpha[order][1:] >= log_alpha[order][:-1] - 1e-6).all())  # same order (up to clipping)
    assert float(log_alpha.max()) <= 4.61 and float(log_alpha.min()) >= -4.61


def _synthetic_batches(n: int = 16, batch: int = 8) -> list[dict[str, torch.Tensor]]:
    """A learnable toy task for the tiny model: the label is the first token id mod 3."""
    ids = torch.randint(1, 100, (n * batch, 12), generator=torch.Generator().manual_seed(0))
    return [{"input_ids": ids[i * batch:(i + 1) * batch], "attention_mask": torch.ones(batch, 12, dtype=torch.long),
             "labels": ids[i * batch:(i + 1) * batch, 0] % 3} for i in range(n)]


def _toy_loss(model, batch):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return torch.nn.functional.cross_entropy(logits, batch["labels"]), {}


@pytest.mark.parametrize("controller", ["lagrangian", "projection"])
def test_each_controller_brings_s_to_its_target_inside_a_real_fit(controller: str) -> None:
    """CoFi's Lagrangian gets there given enough steps (here 320, after overshooting on the way, as it does
    on short budgets); the projection is on the target at every step. Both then export at the target."""
    from pda.prune_run import PruningExtension, tracking_summary
    from pda.pruning import structure_from_gates, structure_sparsity
    from pda.train import fit

    torch.manual_seed(0)
    model = tiny_model().train()
    batches = _synthetic_batches()
    pruner = L0Pruner(model.config, target_sparsity=0.5, warmup_steps=96)
    extension = PruningExtension(pruner, gate_lr=0.1, lambda_lr=0.1, controller=controller)
    if controller == "projection":
        project_(pruner, 0.0)
    with attach_gates(model, pruner):
        history = fit(model, batches, epochs=20, learning_rate=1e-3, loss_fn=_toy_loss, device=torch.device("cpu"),
                      extensions=(extension,), log_every_steps=1000)
    tracking = tracking_summary(extension.trace, 0.5)
    assert history.steps == tracking["steps"] == 320
    assert tracking["max_abs_gap_last_quarter"] < 0.05, tracking
    if controller == "projection":
        assert tracking["max_over_target"] < 1e-5
    achieved = structure_sparsity(structure_from_gates(pruner.deterministic_gates(), HIDDEN))
    assert 0.5 <= achieved < 0.55


def _pruner_whose_last_attention_matters_least(target: float = 0.9) -> L0Pruner:
    pruner = L0Pruner(tiny_config(), target_sparsity=target, coarse_init=None)
    with torch.no_grad():
        for gate in pruner.gate_modules().values():
            gate.log_alpha.normal_(1.0, 0.5, generator=torch.Generator().manual_seed(3))
        pruner.head.log_alpha[-1] = torch.tensor([-4.0, -3.0, -4.5, -3.5])
        pruner.mha.log_alpha[-1] = -4.0
    return pruner


def test_kept_heads_survive_a_target_that_removes_the_rest_of_their_layer() -> None:
    """At 90 % the last layer's attention goes first; its two best heads, kept, stay through the projection
    and the final gates, while everything else still meets the target exactly."""
    free, pruner = _pruner_whose_last_attention_matters_least(), _pruner_whose_last_attention_matters_least()
    project_(free, 0.9)
    assert free.structure()["layers"][-1]["heads_kept"] == []
    assert pruner.keep_heads_(-1, 2) == [1, 3] and pruner.kept_heads() == [[LAYERS - 1, 1], [LAYERS - 1, 3]]
    project_(pruner, 0.9)
    assert float(pruner.expected_sparsity().detach()) == pytest.approx(0.9, abs=1e-6)
    structure = pruner.structure()
    assert structure["layers"][-1]["heads_kept"] == [1, 3] and structure["layers"][-1]["mha_kept"]
    assert 0.9 <= structure_sparsity(structure) < 0.9 + pruner._one_structure()
    gates = pruner.deterministic_gates()
    assert torch.equal(gates["head"][-1, [1, 3]], torch.ones(2)) and float(gates["mha"][-1]) == 1.0
    with torch.no_grad():
        sampled = pruner(True)
    assert torch.equal(sampled["head"][-1, [1, 3]], torch.ones(2)) and float(sampled["mha"][-1]) == 1.0


def test_kept_gates_take_no_gradient_and_the_others_still_learn() -> None:
    pruner = _pruner_whose_last_attention_matters_least()
    pruner.keep_heads_(-1, 2)
    pruner.expected_sparsity().backward()
    grads = {name: g.log_alpha.grad for name, g in pruner.gate_modules().items()}
    assert all(bool(torch.isfinite(grad).all()) for grad in grads.values())
    assert torch.equal(grads["head"][-1, [1, 3]], torch.zeros(2)) and float(grads["mha"][-1]) == 0.0
    assert bool((grads["head"][-1, [0, 2]] != 0).all()) and bool((grads["head"][0] != 0).all())


def test_kept_heads_travel_with_the_pruners_state() -> None:
    """A resumed run reads the kept heads from its checkpoint (the pruner's state dict)."""
    pruner = _pruner_whose_last_attention_matters_least()
    pruner.keep_heads_(-1, 2)
    fresh = L0Pruner(tiny_config(), target_sparsity=0.9)
    assert fresh.kept_heads() == []
    fresh.load_state_dict(pruner.state_dict())
    assert fresh.kept_heads() == pruner.kept_heads()


@pytest.mark.parametrize("layer, count, message", [
    (-1, 5, r"count=5 heads to keep is invalid: it must be an int in \[0, 4\]"),
    (-1, True, r"count=True"),
    (LAYERS, 1, rf"layer={LAYERS} is invalid: the encoder has layers 0 to {LAYERS - 1}"),
    (-1, 4, r"keeping 4 heads of layer -1 \(4,096 weights\) does not fit the 3,277 encoder weights"),
])
def test_keeping_heads_refuses_what_cannot_be_kept(layer: int, count, message: str) -> None:
    pruner = _pruner_whose_last_attention_matters_least()
    with pytest.raises(ValueError, match=message):
        pruner.keep_heads_(layer, count)
    assert pruner.kept_heads() == []
