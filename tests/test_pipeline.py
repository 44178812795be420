"""Runs end to end in-process: determinism, what each scenario trains, and that saved models reproduce the record."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pda import checkpoint, config, fingerprint, pipeline
from pda.pruning import encoder_weight_count, structure_full_weights
from pda.runs import run_dir
from pda.tasks import get_task

TINY = dict(max_train_samples=32, max_eval_samples=32, max_seq_length=48,
            training={"epochs": 1, "batch_size": 16, "log_every_steps": 1},
            pruning={"epochs": 1, "finetune_epochs": 1},
            measure={"speed": False, "energy": False, "flops": False, "quantize": False})


@pytest.fixture
def tiny_study(make_params):
    return config.load_params(make_params(**TINY))


def dev_logits(model, cfg) -> np.ndarray:
    data = pipeline.prepare_data(cfg, pipeline.load_tokenizer(cfg.study.model))
    loader = pipeline.make_loader(data.dev["dev"], data.tokenizer, 32, False, 0)
    return pipeline.predict(model, loader, torch.device("cpu"))[0]


def test_same_seed_same_metrics_different_seed_different_weights(make_params, tmp_path):
    records = []
    for out, seed in (("a", 0), ("b", 0), ("c", 1)):
        study = config.load_params(make_params(**TINY, output_dir=str(tmp_path / out)))
        records.append(pipeline.run(config.for_run(study, "stsb", "FT", None, seed)))
    assert records[0].metrics == records[1].metrics
    assert records[0].metrics != records[2].metrics


@pytest.mark.parametrize("layer_norms, pooler", [(True, True), (False, False)])
def test_adapter_run_trains_only_adapters_head_and_as_houlsby_the_layer_norms(make_params, layer_norms, pooler):
    study = config.load_params(make_params(**TINY, adapters={"train_layer_norms": layer_norms,
                                                             "train_pooler": pooler}))
    rec = pipeline.run(config.for_run(study, "mrpc", "A", None, 0))
    assert 0 < rec.params["trainable"] < 0.02 * rec.params["total"]
    model = checkpoint.load_model(run_dir(study, rec.run_id) / "model")
    names = {n for n, _ in model.named_parameters()}
    assert any(".adapters.pda." in n for n in names)
    pretrained = pipeline.load_pretrained_for_task(study.model, get_task("mrpc")).state_dict()
    changed = {n for n, p in model.state_dict().items() if n in pretrained and not torch.equal(p, pretrained[n])}
    norms = {n for n in pretrained if "LayerNorm" in n}
    head = {"classifier.weight", "classifier.bias"} | ({"bert.pooler.dense.weight", "bert.pooler.dense.bias"}
                                                       if pooler else set())
    assert changed - norms == head  # the rest of the encoder stays frozen
    assert (changed & norms == norms) if layer_norms else not changed & norms


@pytest.mark.parametrize("pooler", [True, False])
def test_base_probe_trains_the_head_adapters_train_and_nothing_else(make_params, pooler):
    """The probe is A's head on the untouched encoder, so "A beats base" compares like with like."""
    study = config.load_params(make_params(**TINY, adapters={"train_pooler": pooler}))
    rec = pipeline.run(config.for_run(study, "mrpc", "base", None, 0))
    model = checkpoint.load_model(run_dir(study, rec.run_id) / "model")
    pretrained = pipeline.load_pretrained_for_task(study.model, get_task("mrpc")).state_dict()
    changed = {n for n, p in model.state_dict().items() if not torch.equal(p, pretrained[n])}
    head = {"classifier.weight", "classifier.bias"} | ({"bert.pooler.dense.weight", "bert.pooler.dense.bias"}
                                                       if pooler else set())
    assert changed == head
    assert rec.params["trainable"] == sum(model.state_dict()[n].numel() for n in head)


def test_pruned_distilled_adapter_run_end_to_end(tiny_study):
    """P+D+A pulls in FT and D first, prunes the student, and the saved model reproduces the record."""
    cfg = config.for_run(tiny_study, "mrpc", "P+D+A", 0.6, 0)
    rec = pipeline.run(cfg, with_dependencies=True)
    teacher = json.loads((run_dir(tiny_study, "mrpc-FT-seed0") / "result.json").read_text())
    student = json.loads((run_dir(tiny_study, "mrpc-D-seed0") / "result.json").read_text())
    assert student["params"]["encoder"] < teacher["params"]["encoder"]
    assert len(rec.structure["layers"]) == 3  # the every-other-layer student of a 6-layer teacher
    assert rec.params["encoder"] < student["params"]["encoder"]
    assert rec.parent_run_id == "mrpc-D-seed0" and rec.teacher_run_id == "mrpc-FT-seed0"
    model = checkpoint.load_model(run_dir(tiny_study, rec.run_id) / "model")
    assert sum(p.numel() for p in model.parameters()) == rec.params["total"]
    # the record's sparsity is the saved model's: its Q, K, V, O, FFN weights against the student's
    full = structure_full_weights(rec.structure)
    assert encoder_weight_count(model) == pytest.approx(full * (1 - rec.pruning["achieved_vs_input"]), abs=full * 1e-6)
    assert full == 3 * (4 * 384 * 384 + 2 * 384 * 1536)
    data = pipeline.prepare_data(cfg, pipeline.load_tokenizer(tiny_study.model))
    assert pipeline.evaluate(model, data, 32, torch.device("cpu")) == rec.metrics


def test_scenario_without_its_teacher_says_which_run_is_missing(tiny_study):
    with pytest.raises(FileNotFoundError, match="needs run 'rte-FT-seed0' first"):
        pipeline.run(config.for_run(tiny_study, "rte", "P", 0.6, 0))


def test_measured_run_records_size_speed_flops_and_energy(make_params):
    study = config.load_params(make_params(**{**TINY, "measure": {"batch_sizes": [1, 4], "seq_len": 32,
                                                                   "warmup": 1, "rounds": 2}}))
    rec = pipeline.run(config.for_run(study, "mrpc", "D", None, 0), with_dependencies=True)
    assert rec.flops["reduction_bound"] == pytest.approx(2.0, rel=0.05)  # half the layers, same embeddings
    assert set(rec.speed["by_batch"]) == {"1", "4"}
    for stats in rec.speed["by_batch"].values():  # a speed-up is the ratio of the two medians measured
        assert stats["speedup"] == pytest.approx(stats["teacher_latency_ms_median"] / stats["latency_ms_median"],
                                                 rel=1e-3)
    train, inference = rec.energy["train"], rec.energy["inference"]
    assert train["country_iso_code"] == inference["country_iso_code"] == "DNK"
    assert train["kwh"] > 0 and inference["kwh"] > 0
    # one grid: the same carbon intensity (kg per kWh) for both phases of the run
    assert train["kg_co2eq"] / train["kwh"] == pytest.approx(inference["kg_co2eq"] / inference["kwh"], rel=1e-6)
    assert train["duration_s"] == pytest.approx(rec.train_time_s, abs=2.0)
    assert rec.bytes_on_disk < 0.8 * rec.teacher_bytes_on_disk  # 3 of 6 layers (the embeddings stay)
    assert rec.environment["device"] == "cpu" and rec.environment["precision"] == "fp32"
    # every backend against the reference on the same backend; the speed field is the eager fp32 one
    assert {"eager_fp32", "ort_fp32", "ort_int8"} <= set(rec.backends)
    assert rec.speed["by_batch"]["4"]["speedup"] == rec.backends["eager_fp32"]["by_batch"]["4"]["speedup"]
    assert rec.backends["ort_fp32"]["max_abs_logit_diff"] <= 1e-4
    # the INT8 variant: its own dev metrics, a file far smaller than the fp32 model's
    q = rec.quantized
    assert set(q["metrics"]) == set(rec.metrics) and q["main_metric_value"] == q["metrics"][rec.main_metric]
    assert q["bytes_on_disk"] < 0.4 * rec.bytes_on_disk and q["teacher_bytes_on_disk"] == rec.teacher_bytes_on_disk
    assert set(q["speed"]["by_batch"]) == {"1", "4"} and rec.deploy_time_s["total_s"] > 0


def test_layer_distillation_changes_what_the_student_learns(make_params, tmp_path):
    """The layer loss is logged at every step and reaches the weights: the same run without it ends elsewhere."""
    weights = {}
    for layer_distill in (True, False):
        study = config.load_params(make_params(**{**TINY, "distill": {"layer_distill": layer_distill},
                                                  "output_dir": str(tmp_path / str(layer_distill))}))
        rec = pipeline.run(config.for_run(study, "mrpc", "D", None, 0), with_dependencies=True)
        log = json.loads((run_dir(study, rec.run_id) / "history.json").read_text())["log"]
        assert len(log) == rec.train_steps and all(("layer_distill_loss" in row) == layer_distill for row in log)
        weights[layer_distill] = checkpoint.load_model(run_dir(study, rec.run_id) / "model").state_dict()
    assert any(not torch.equal(weights[True][k], weights[False][k]) for k in weights[True])


def test_projection_controller_keeps_s_on_the_warming_target_at_every_step(tiny_study):
    rec = pipeline.run(config.for_run(tiny_study, "mrpc", "P", 0.7, 0), with_dependencies=True)
    trace = rec.pruning["trace"]
    assert len(trace) == rec.pruning["prune_steps"] == 2
    assert all(abs(s - t) < 1e-4 for _, s, t in trace)
    assert rec.pruning["controller"] == "projection" and rec.pruning["gate_init"] == "importance"


def test_kept_heads_of_the_last_layer_survive_pruning_to_90_percent_and_a_bad_count_names_its_key(make_params):
    study = config.load_params(make_params(**TINY, sparsities=[0.9], overrides={
        "P+A": {"pruning": {"keep_last_layer_heads": 2}}, "P": {"pruning": {"keep_last_layer_heads": 13}}}))
    rec = pipeline.run(config.for_run(study, "mrpc", "P+A", 0.9, 0), with_dependencies=True)
    kept = rec.pruning["kept_heads"]
    last = rec.structure["layers"][-1]
    assert len(kept) == 2 and {layer for layer, _ in kept} == {last["layer"]}
    assert {head for _, head in kept} <= set(last["heads_kept"]) and last["mha_kept"]
    assert rec.pruning["achieved_vs_input"] >= 0.9
    model = checkpoint.load_model(run_dir(study, rec.run_id) / "model")
    assert model.base_model.encoder.layer[-1].attention.self.query.out_features == 32 * len(last["heads_kept"])
    with pytest.raises(ValueError, match=r"pruning.keep_last_layer_heads=13: count=13 .* \[0, 12\]"):
        pipeline.run(config.for_run(study, "mrpc", "P", 0.9, 0))


@pytest.mark.parametrize("scenario", ["base", "FT", "A", "D", "D+A", "P", "P+A", "P+D", "P+D+A"])
def test_another_seed_gives_other_weights_in_every_scenario(make_params, tmp_path, scenario):
    small = {**TINY, "max_train_samples": 16, "max_eval_samples": 8, "max_seq_length": 32,
             "training": {"epochs": 1, "batch_size": 8, "log_every_steps": 1}}
    states = []
    for seed in (0, 1):
        study = config.load_params(make_params(**small, output_dir=str(tmp_path / f"seed{seed}")))
        cfg = config.for_run(study, "rte", scenario, 0.5, seed)
        rec = pipeline.run(cfg, with_dependencies=True)
        states.append(checkpoint.load_model(run_dir(study, rec.run_id) / "model").state_dict())
    trained = [k for k in states[0] if k in states[1] and states[0][k].shape == states[1][k].shape]
    assert trained and any(not torch.equal(states[0][k], states[1][k]) for k in trained)
    assert any(not torch.equal(states[0][k], states[1][k]) for k in trained if k.startswith("classifier."))


def test_students_share_one_teacher_forward_pass_and_get_the_teachers_logits(tiny_study, monkeypatch):
    """The first student of a teacher fills a logit file over the teacher's rows; the next ones only read it,
    and what they read is the teacher's own output for each row."""
    first = pipeline.run(config.for_run(tiny_study, "mrpc", "D", None, 0), with_dependencies=True)
    files = list((run_dir(tiny_study, "mrpc-FT-seed0") / pipeline.TEACHER_LOGITS_DIR).iterdir())
    assert [f.name for f in files] == ["fp32-len48.safetensors"] and first.run_id == "mrpc-D-seed0"
    cfg = config.for_run(tiny_study, "mrpc", "P", 0.6, 0)
    teacher = pipeline.load_run_model(cfg, pipeline.teacher_of(pipeline.run_spec(cfg)))
    data = pipeline.prepare_data(cfg, pipeline.load_tokenizer(tiny_study.model))
    forwards = []
    monkeypatch.setattr(pipeline.distill, "teacher_logits", lambda *a: forwards.append(1))
    cache = pipeline.shared_teacher_logits(cfg, teacher, data, torch.device("cpu"), "fp32")
    assert forwards == []  # read, not recomputed
    monkeypatch.undo()
    loader = pipeline.make_loader(data.train, data.tokenizer, 8, False, 0)
    for batch in loader:
        torch.testing.assert_close(cache.get(batch["idx"]), pipeline.distill.teacher_logits(teacher, batch),
                                   rtol=1e-4, atol=1e-4)


def test_a_run_made_again_in_its_folder_drops_the_logits_of_the_model_it_replaces(tiny_study):
    cfg = config.for_run(tiny_study, "rte", "FT", None, 0)
    pipeline.run(cfg)
    old = run_dir(tiny_study, "rte-FT-seed0") / pipeline.TEACHER_LOGITS_DIR / "fp32-len48.safetensors"
    old.parent.mkdir()
    old.write_bytes(b"logits of the previous teacher")
    (run_dir(tiny_study, "rte-FT-seed0") / "result.json").unlink()  # made again, e.g. after a manual clean-up
    pipeline.run(cfg)
    assert not old.parent.exists()


def test_a_student_on_swapped_pairs_trains_on_both_orders_against_the_teachers_logits_for_each(make_params):
    """Swapped rows are new rows (their own ids): the shared teacher-logit file gets the teacher's output on the
    swapped text, not the logits of the pair it came from."""
    study = config.load_params(make_params(**TINY, overrides={"mrpc/D": {"training": {"swap_pairs": True}}}))
    rec = pipeline.run(config.for_run(study, "mrpc", "D", None, 0), with_dependencies=True)
    cfg = config.for_run(study, "mrpc", "D", None, 0)
    data = pipeline.prepare_data(cfg, pipeline.load_tokenizer(study.model))
    ids = data.train["idx"]
    assert len(ids) == 64 and sorted(i - 3668 for i in ids[32:]) == sorted(ids[:32])  # MRPC has 3,668 train rows
    assert rec.train_steps == 4  # 64 rows, batch 16, one epoch
    teacher = checkpoint.load_model(run_dir(study, "mrpc-FT-seed0") / "model")
    cache = pipeline.shared_teacher_logits(cfg, teacher, data, torch.device("cpu"), "fp32")
    batch = next(iter(pipeline.make_loader(data.train.select(range(32, 64)), data.tokenizer, 32, False, 0)))
    swapped_logits = pipeline.distill.teacher_logits(teacher, batch)
    torch.testing.assert_close(cache.get(batch["idx"]), swapped_logits, rtol=1e-4, atol=1e-4)
    original = next(iter(pipeline.make_loader(data.train.select(range(32)), data.tokenizer, 32, False, 0)))
    assert not torch.allclose(pipeline.distill.teacher_logits(teacher, original), swapped_logits, atol=1e-3)


def test_a_transfer_set_joins_only_the_students_training_rows_labelled_by_its_teacher(make_params, monkeypatch):
    """D learns from MRPC's rows plus STS-B's and RTE's inputs, labelled with the teacher's predicted class;
    the dev set, the teacher's own rows and the runs without the setting stay as they were."""
    transfer = {"distill": {"transfer_tasks": ["stsb", "rte"]}}
    study = config.load_params(make_params(**TINY, overrides={"mrpc/D": transfer}))
    cfg = config.for_run(study, "mrpc", "D", None, 0)
    loads = []
    load = pipeline.distill.TeacherLogitCache.load
    monkeypatch.setattr(pipeline.distill.TeacherLogitCache, "load",
                        classmethod(lambda cls, path, meta=None: loads.append(path) or load(path, meta)))
    rec = pipeline.run(cfg, with_dependencies=True)
    assert loads == []  # the logits that labelled the transfer rows are the loss's: the file is written, not read back
    assert rec.train_steps == 6  # 32 MRPC + 32 STS-B + 32 RTE rows, batch 16, one epoch
    assert any("transfer set: 64 of 96 training rows are stsb, rte inputs" in n for n in rec.notes)
    tokenizer = pipeline.load_tokenizer(study.model)
    data = pipeline.prepare_data(cfg, tokenizer)
    plain = pipeline.prepare_data(config.for_run(study, "mrpc", "FT", None, 0), tokenizer)
    ids = data.train["idx"]
    assert data.transfer_from == 2 * 3668  # past MRPC's rows and their swapped copies
    assert ids[:32] == plain.train["idx"][:32] and all(i >= data.transfer_from for i in ids[32:])
    assert 3668 * 2 + 5749 <= min(ids[64:]) < 3668 * 2 + 5749 + 2490  # RTE's rows after all of STS-B's
    for split, ds in data.dev.items():  # the dev set is MRPC's own, row for row
        assert ds["idx"] == plain.dev[split]["idx"] and ds["input_ids"] == plain.dev[split]["input_ids"]
    assert data.train["label"][32:] == [-1] * 64  # placeholders until the teacher labels them
    teacher = checkpoint.load_model(run_dir(study, "mrpc-FT-seed0") / "model")
    cache = pipeline.shared_teacher_logits(cfg, teacher, data, torch.device("cpu"), "fp32")
    labelled = pipeline.label_transfer_rows(data, cache)
    assert labelled.train["label"][:32] == data.train["label"][:32]  # MRPC's own labels untouched
    batch = next(iter(pipeline.make_loader(data.train.select(range(32, 96)), tokenizer, 64, False, 0)))
    assert labelled.train["label"][32:] == pipeline.distill.teacher_logits(teacher, batch).argmax(-1).tolist()
    folder = run_dir(study, "mrpc-FT-seed0") / pipeline.TEACHER_LOGITS_DIR
    assert sorted(p.name for p in folder.iterdir()) == ["fp32-len48-transfer-stsb-rte.safetensors"]
    # the same student without a transfer set: the teacher's plain file, and a fingerprint of its own
    other = config.for_run(config.load_params(make_params(**TINY)), "mrpc", "D", None, 0)
    assert pipeline.prepare_data(other, tokenizer).transfer_from is None
    assert "transfer_tasks" not in fingerprint.run_inputs(other)["settings"]["distill"]
    assert fingerprint.fingerprint(other) != rec.fingerprint["sha256"]
    assert set(rec.fingerprint["inputs"]["data"]["transfer"]) == {"stsb", "rte"}
