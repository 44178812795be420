"""Tests of pda.distill on tiny random BERTs (whole file runs in seconds)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset
from transformers import BertConfig, BertForSequenceClassification

from pda import distill as distill_module
from pda.distill import (
    LayerDistiller,
    TeacherLogitCache,
    kd_loss,
    make_student,
    resolve_student_layers,
    teacher_logits,
    time_cache_vs_online,
)

torch.set_num_threads(1)


def tiny_config(layers: int = 4, num_labels: int = 2) -> BertConfig:
    return BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, num_labels=num_labels,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )


def tiny_bert(layers: int = 4, num_labels: int = 2, seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    return BertForSequenceClassification(tiny_config(layers, num_labels)).eval()


# ---------------------------------------------------------------- kd_loss

S = [[1.0, 2.0, 0.5], [0.0, -1.0, 1.0]]
T_ = [[2.0, 1.0, 0.0], [0.5, 0.5, -0.5]]
Y = [1, 2]


def softmax(row, t):
    e = [math.exp(x / t) for x in row]
    return [v / sum(e) for v in e]


def hand_kd(s, t_logits, y, temp, alpha):
    kl = 0.0
    ce = 0.0
    for srow, trow, label in zip(s, t_logits, y):
        ps, pt = softmax(srow, temp), softmax(trow, temp)
        kl += sum(pt[c] * (math.log(pt[c]) - math.log(ps[c])) for c in range(3))
        ce += -math.log(softmax(srow, 1.0)[label])
    n = len(s)
    return alpha * temp**2 * kl / n + (1 - alpha) * ce / n


@pytest.mark.parametrize("temp,alpha", [(1.0, 0.5), (2.0, 0.5), (4.0, 0.9), (3.0, 0.0), (2.0, 1.0)])
def test_kd_loss_matches_hand_computation(temp, alpha):
    got = kd_loss(torch.tensor(S), torch.tensor(T_), torch.tensor(Y), temp, alpha, regression=False)
    assert got.item() == pytest.approx(hand_kd(S, T_, Y, temp, alpha), rel=1e-5)


def test_distillation_part_is_zero_when_logits_match():
    s = torch.tensor(S)
    assert kd_loss(s, s.clone(), None, 2.0, 1.0, regression=False).item() == pytest.approx(0.0, abs=1e-7)
    # with alpha < 1 only the hard-label CE remains
    ce = torch.nn.functional.cross_entropy(s, torch.tensor(Y))
    assert kd_loss(s, s.clone(), torch.tensor(Y), 2.0, 0.3, regression=False).item() == pytest.approx(0.7 * ce.item(), rel=1e-6)


def test_temperature_squared_scaling_of_gradient():
    s0, t = torch.tensor(S), torch.tensor(T_)
    grads = {}
    for temp in (1.0, 2.0, 10.0, 20.0):
        s = s0.clone().requires_grad_(True)
        kd_loss(s, t, None, temp, 1.0, regression=False).backward()
        # d/ds [T^2 KL(p_t || p_s)] / B = T * (p_s - p_t) / B  (exact)
        expected = temp * (torch.softmax(s0 / temp, -1) - torch.softmax(t / temp, -1)) / len(S)
        torch.testing.assert_close(s.grad, expected)
        grads[temp] = s.grad.norm().item()
    # thanks to T^2 the soft-gradient magnitude is T-invariant at high T (it would shrink like 1/T^2 without)
    assert grads[20.0] / grads[10.0] == pytest.approx(1.0, abs=0.02)
    # and the loss itself: T^2 * KL tends to a finite limit, KL alone falls like 1/T^2
    l10 = kd_loss(s0, t, None, 10.0, 1.0, regression=False).item()
    l20 = kd_loss(s0, t, None, 20.0, 1.0, regression=False).item()
    assert l20 / l10 == pytest.approx(1.0, abs=0.02)


def test_kd_loss_regression_branch():
    s = torch.tensor([[1.0], [2.0], [0.0]])
    t = torch.tensor([[1.5], [2.0], [1.0]])
    y = torch.tensor([1.0, 3.0, 0.0])
    mse_t = (0.25 + 0.0 + 1.0) / 3
    mse_y = (0.0 + 1.0 + 0.0) / 3
    # temperature must not matter for regression
    for temp in (1.0, 5.0):
        got = kd_loss(s, t, y, temp, 0.25, regression=True).item()
        assert got == pytest.approx(0.25 * mse_t + 0.75 * mse_y, rel=1e-6)
    assert kd_loss(s, t, None, 1.0, 1.0, regression=True).item() == pytest.approx(mse_t, rel=1e-6)


@pytest.mark.parametrize("temp,alpha,match", [(0.0, 0.5, "temperature"), (-1.0, 0.5, "temperature"),
                                              (1.0, -0.1, "alpha"), (1.0, 1.5, "alpha")])
def test_kd_loss_rejects_bad_hyperparameters(temp, alpha, match):
    with pytest.raises(ValueError, match=match):
        kd_loss(torch.tensor(S), torch.tensor(T_), torch.tensor(Y), temp, alpha, regression=False)


def test_kd_loss_requires_labels_when_alpha_below_one():
    with pytest.raises(ValueError, match="labels"):
        kd_loss(torch.tensor(S), torch.tensor(T_), None, 1.0, 0.5, regression=False)


# ---------------------------------------------------------------- layers

def test_resolve_student_layers():
    assert resolve_student_layers("every_other", 12) == [1, 3, 5, 7, 9, 11]
    assert resolve_student_layers("every_other", 6) == [1, 3, 5]
    assert resolve_student_layers([0, 2, 5], 6) == [0, 2, 5]


@pytest.mark.parametrize("rule,match", [
    ([], "non-empty"), ([0, 6], "6 is out of range; valid indices are 0..5"), ([-1], "out of range"),
    ([1, 1], "repeat"), ([3, 1], "not sorted"), ([1.0], "not an int"), ("every_third", "unknown student layer rule"),
])
def test_resolve_student_layers_rejects_bad_input(rule, match):
    with pytest.raises(ValueError, match=match):
        resolve_student_layers(rule, 6)


def test_make_student_copies_the_right_weights():
    teacher = tiny_bert(layers=4, num_labels=3)
    layers = [1, 3]
    student = make_student(teacher, layers)
    assert student.config.num_hidden_layers == 2 and len(student.bert.encoder.layer) == 2
    assert student.config.pda_student_layers == layers
    assert teacher.config.num_hidden_layers == 4 and len(teacher.bert.encoder.layer) == 4  # untouched
    assert [layer.attention.self.layer_idx for layer in student.bert.encoder.layer] == [0, 1]
    assert teacher.bert.encoder.layer[3].attention.self.layer_idx == 3
    for i, t_i in enumerate(layers):
        s_sd = student.bert.encoder.layer[i].state_dict()
        t_sd = teacher.bert.encoder.layer[t_i].state_dict()
        assert s_sd.keys() == t_sd.keys()
        for k in s_sd:
            torch.testing.assert_close(s_sd[k], t_sd[k], rtol=0, atol=0)
    for name in ("bert.embeddings", "bert.pooler", "classifier"):
        s_sd = student.get_submodule(name).state_dict()
        t_sd = teacher.get_submodule(name).state_dict()
        for k in s_sd:
            torch.testing.assert_close(s_sd[k], t_sd[k], rtol=0, atol=0)
    # a copy, not shared storage
    with torch.no_grad():
        student.classifier.weight.add_(1.0)
    assert not torch.equal(student.classifier.weight, teacher.classifier.weight)
    # the student's forward is the teacher's modules chained with layers 1 and 3
    x = torch.randint(1, 100, (2, 8))
    with torch.no_grad():
        h = teacher.bert.embeddings(input_ids=x)
        for t_i in layers:
            h = teacher.bert.encoder.layer[t_i](h)[0]
        ref = teacher.classifier(teacher.bert.pooler(h))
        student.classifier.weight.sub_(1.0)
        torch.testing.assert_close(student(input_ids=x).logits, ref)


def test_make_student_reindexes_pruned_heads_and_per_layer_lists():
    teacher = tiny_bert(layers=4)
    teacher.config.pda_heads_kept = [4, 3, 2, 1]
    teacher.prune_heads({1: [0], 3: [1, 2]})
    student = make_student(teacher, "every_other")
    assert student.config.pruned_heads == {0: [0], 1: [1, 2]}
    assert student.config.pda_heads_kept == [3, 1]
    assert student.bert.encoder.layer[1].attention.self.num_attention_heads == 2
    assert student(input_ids=torch.randint(1, 100, (2, 8))).logits.shape == (2, 2)


def test_make_student_from_teacher_with_adapters():
    adapters = pytest.importorskip("adapters")
    teacher = tiny_bert(layers=4)
    adapters.init(teacher)
    teacher.add_adapter("a", config="seq_bn")
    teacher.set_active_adapters("a")
    with torch.no_grad():
        for n, p in teacher.named_parameters():
            if "adapters.a." in n:
                p.normal_(0, 0.5)
    student = make_student(teacher, [1, 3])
    x = torch.randint(1, 100, (2, 8))
    t_name = "bert.encoder.layer.3.output.adapters.a.adapter_up.weight"
    s_name = "bert.encoder.layer.1.output.adapters.a.adapter_up.weight"
    torch.testing.assert_close(dict(student.named_parameters())[s_name], dict(teacher.named_parameters())[t_name])
    before = student(input_ids=x).logits.detach()
    with torch.no_grad():  # the teacher's adapters no longer influence the student ...
        for n, p in teacher.named_parameters():
            if "adapters.a." in n:
                p.zero_()
        torch.testing.assert_close(student(input_ids=x).logits, before)
        for n, p in student.named_parameters():  # ... but the student's own copies do
            if "adapters.a." in n:
                p.zero_()
        assert not torch.allclose(student(input_ids=x).logits, before)
    # layer_idx is renumbered: a new adapter with leave_out=[0] skips student layer 0
    student.add_adapter("b", config=adapters.SeqBnConfig(leave_out=[0]))
    names = [n for n, _ in student.named_parameters() if "adapters.b." in n]
    assert names and all(n.startswith("bert.encoder.layer.1.") for n in names)


# ---------------------------------------------------------------- layer distillation

def test_layer_distiller_zero_for_identical_states_and_masks_padding():
    teacher = tiny_bert(layers=4)
    student = make_student(teacher, [1, 3])
    x = torch.randint(1, 100, (2, 8))
    with torch.no_grad():
        t_out = teacher(input_ids=x, output_hidden_states=True)
        s_out = student(input_ids=x, output_hidden_states=True)
    distiller = LayerDistiller(32, 32, mapping=[1, 3])
    d1 = LayerDistiller(32, 32, mapping=[0])
    assert d1(t_out.hidden_states[:2], t_out.hidden_states).item() == pytest.approx(0.0, abs=1e-10)
    # padded positions do not count
    mask = torch.tensor([[1] * 4 + [0] * 4] * 2)
    noisy = list(t_out.hidden_states[:2])
    noisy[1] = noisy[1].clone()
    noisy[1][:, 4:] += 10.0
    assert d1(noisy, t_out.hidden_states, mask).item() == pytest.approx(0.0, abs=1e-10)
    loss = distiller(s_out.hidden_states, t_out.hidden_states)
    loss.backward()
    assert distiller.proj.weight.grad is not None
    with pytest.raises(ValueError, match="expected 3"):
        distiller(s_out.hidden_states[:2], t_out.hidden_states)


# ---------------------------------------------------------------- cache

def _loader(n: int = 40, batch_size: int = 8, shuffle: bool = True):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 100, (n, 8), generator=g)
    ds = TensorDataset(ids, torch.ones_like(ids), torch.arange(n))

    def collate(rows):
        a, m, i = map(torch.stack, zip(*rows))
        return {"input_ids": a, "attention_mask": m, "idx": i, "labels": torch.zeros(len(rows), dtype=torch.long)}

    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, collate_fn=collate, generator=g)


def test_teacher_logit_cache_matches_online_forward():
    teacher = tiny_bert(layers=2, num_labels=3)
    teacher.train()  # the cache must switch it to eval itself
    loader = _loader()
    cache = TeacherLogitCache(40, 3).fill(teacher, loader)
    assert not teacher.training and len(cache) == 40
    for batch in loader:  # a different shuffle order
        torch.testing.assert_close(cache.get(batch["idx"]), teacher_logits(teacher, batch))
    with pytest.raises(KeyError, match="rows"):
        TeacherLogitCache(50, 3).fill(teacher, loader).get([45])


def test_teacher_logit_cache_save_load(tmp_path):
    teacher = tiny_bert(layers=2, num_labels=3)
    cache = TeacherLogitCache(40, 3).fill(teacher, _loader())
    meta = {"teacher_run": "mrpc-FT-seed0", "precision": "bf16"}
    cache.save(tmp_path / "logits.safetensors", meta)
    loaded = TeacherLogitCache.load(tmp_path / "logits.safetensors", meta)
    torch.testing.assert_close(loaded.get(list(range(40))), cache.get(list(range(40))))
    with pytest.raises(ValueError, match="precision"):
        TeacherLogitCache.load(tmp_path / "logits.safetensors", {**meta, "precision": "fp32"})
    assert [p.name for p in tmp_path.iterdir()] == ["logits.safetensors"]  # no temp file left


def test_teacher_logit_cache_grows_and_names_missing_rows():
    teacher = tiny_bert(layers=2, num_labels=3)
    batches = list(_loader())
    cache = TeacherLogitCache(0, 3).fill(teacher, batches[:1])
    first = set(torch.as_tensor(batches[0]["idx"]).tolist())
    assert cache.missing(range(45)) == [i for i in range(45) if i not in first]  # rows past the end too
    cache.fill(teacher, batches[1:])
    assert len(cache) == 40 and cache.missing(range(40)) == []


def test_time_cache_vs_online_counts_one_fill_plus_lookups_against_every_online_epoch(monkeypatch):
    """On a clock that moves only in teacher forwards (1 s each) and cache lookups (0.1 s each), the
    cached side costs one pass of forwards plus a lookup per batch and epoch; the online side a pass
    per epoch. A timing that skipped the fill, counted it per epoch or missed an epoch gives other numbers."""
    clock = SimpleNamespace(now=0.0)
    teacher = tiny_bert(layers=2)
    forward = teacher.forward

    def timed_forward(*args, **kwargs):
        clock.now += 1.0
        return forward(*args, **kwargs)

    def timed_get(self, indices):
        clock.now += 0.1
        return real_get(self, indices)

    real_get = TeacherLogitCache.get
    teacher.forward = timed_forward
    monkeypatch.setattr(TeacherLogitCache, "get", timed_get)
    monkeypatch.setattr(distill_module, "time", SimpleNamespace(perf_counter=lambda: clock.now))
    batches = list(_loader(shuffle=False))  # 5 batches of 8 rows
    out = time_cache_vs_online(teacher, batches, epochs=3)
    assert out["fill_s"] == pytest.approx(5.0)  # one forward per batch
    assert out["cached_s"] == pytest.approx(5.0 + 3 * 5 * 0.1)  # the fill, then a lookup per batch and epoch
    assert out["online_s"] == pytest.approx(3 * 5.0)
    assert out["speedup"] == pytest.approx(15.0 / 6.5) and out["epochs"] == 3


# ---------------------------------------------------------------- end to end: D on a tiny task

def synthetic_task(n: int, seed: int):
    """Label 1 iff the tokens come from the upper half of the vocabulary: linearly separable."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=g)
    ids = torch.randint(10, 50, (n, 8), generator=g) + 40 * labels[:, None]
    return ids, labels


def agreement(model, ids, ref_pred):
    with torch.no_grad():
        return (model.eval()(input_ids=ids).logits.argmax(-1) == ref_pred).float().mean().item()


def distil(student, teacher, ids, labels, steps, alpha, lr=3e-3):
    opt = torch.optim.AdamW(student.parameters(), lr=lr)
    g = torch.Generator().manual_seed(0)
    student.train()
    for _ in range(steps):
        b = torch.randint(0, len(ids), (32,), generator=g)
        t = teacher_logits(teacher, {"input_ids": ids[b]})
        loss = kd_loss(student(input_ids=ids[b]).logits, t, labels[b], 2.0, alpha, regression=False)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return student.eval()


@pytest.fixture(scope="module")
def trained_teacher():
    ids, labels = synthetic_task(512, seed=0)
    torch.manual_seed(0)
    teacher = BertForSequenceClassification(tiny_config(layers=4))
    opt = torch.optim.AdamW(teacher.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    teacher.train()
    for _ in range(60):
        b = torch.randint(0, len(ids), (32,), generator=g)
        loss = teacher(input_ids=ids[b], labels=labels[b]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return teacher.eval()


def test_distilled_student_beats_untrained_student(trained_teacher):
    ids, labels = synthetic_task(256, seed=1)  # held-out
    t_pred = trained_teacher(input_ids=ids).logits.argmax(-1)
    assert (t_pred == labels).float().mean().item() > 0.95  # the teacher learned the task
    ids_train, labels_train = synthetic_task(512, seed=0)

    student = distil(make_student(trained_teacher, [1, 3]), trained_teacher, ids_train, labels_train, 20, alpha=0.5)
    random_student = tiny_bert(layers=2, seed=123)
    distilled_agree = agreement(student, ids, t_pred)
    random_agree = agreement(random_student, ids, t_pred)
    assert distilled_agree > 0.95 and distilled_agree > random_agree + 0.2

    # the soft labels alone (alpha=1, no labels used) teach a randomly initialised student
    scratch = distil(tiny_bert(layers=2, seed=123).train(), trained_teacher, ids_train, labels_train, 40, alpha=1.0)
    assert agreement(scratch, ids, t_pred) > random_agree + 0.2


def test_student_save_load_round_trip(tmp_path):
    teacher = tiny_bert(layers=4)
    teacher.prune_heads({3: [1, 2]})
    student = make_student(teacher, [1, 3])
    student.save_pretrained(tmp_path / "s")
    loaded = BertForSequenceClassification.from_pretrained(tmp_path / "s").eval()
    assert loaded.config.num_hidden_layers == 2 and loaded.config.pda_student_layers == [1, 3]
    x = torch.randint(1, 100, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=x).logits, student(input_ids=x).logits)
