"""A killed run resumes from its checkpoint and ends exactly as an uninterrupted one: metrics, history, weights.

The kills are real: ``tests/kill_run.py`` runs in a subprocess and SIGKILLs itself after a chosen
step (or while the trained model is evaluated); the restart happens here, in-process, and is
compared bit for bit with an uninterrupted run of the same settings and threads. The unit tests
below cover the pieces: the state file, the data cursor and the checkpointer.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import BertConfig, BertForSequenceClassification

from pda import config, pipeline, resume, statefile
from pda.models import load_tokenizer
from pda.runs import run_dir
from pda.train import History, make_loader

ROOT = Path(__file__).resolve().parent.parent
# 24 rows in batches of 8: 3 steps an epoch. FT and D train 2 epochs (6 steps); P prunes 3 steps and fine-tunes 3.
SMALL = dict(max_train_samples=24, max_eval_samples=16, max_seq_length=32, torch_threads=1,
             training={"epochs": 2, "batch_size": 8, "log_every_steps": 1},
             pruning={"epochs": 1, "finetune_epochs": 1},
             measure={"speed": False, "energy": False, "flops": False, "quantize": False})


def study_in(root: Path, glue_dir: Path, copy_from: config.StudyConfig | None = None, runs: tuple[str, ...] = (),
             **changes) -> tuple[Path, config.StudyConfig]:
    """A parameter file writing to ``root/outputs``, with finished ``runs`` (dependencies) copied from another study."""
    base = yaml.safe_load((ROOT / "parameters" / "smoke.yaml").read_text())
    base.update({**SMALL, **changes, "data_dir": str(glue_dir), "output_dir": str(root / "outputs")})
    path = root / "parameters" / "p.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(base))
    study = config.load_params(path)
    for rid in runs:
        shutil.copytree(run_dir(copy_from, rid), run_dir(study, rid))
    return path, study


def run(study: config.StudyConfig, scenario: str, sparsity: float | None = None):
    return pipeline.run(config.for_run(study, "mrpc", scenario, sparsity, 0))


def kill(params: Path, scenario: str, sparsity: float | None, kill_at: str, save_at: str | None = None) -> None:
    """Run ``scenario`` in a subprocess that SIGKILLs itself at ``kill_at`` (see tests/kill_run.py)."""
    cmd = [sys.executable, str(ROOT / "tests" / "kill_run.py"), str(params), "mrpc", scenario,
           "none" if sparsity is None else str(sparsity), "0",
           "--kill-at", kill_at, *(["--save-at", save_at] if save_at else [])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == -signal.SIGKILL, f"exit {proc.returncode}: {proc.stderr[-3000:]}"


def latest_in(folder: Path) -> str:
    """The name of the checkpoint ``folder/latest.json`` points to."""
    return json.loads((folder / resume.LATEST).read_text())["checkpoint"]


def latest(study: config.StudyConfig, rid: str) -> str:
    return latest_in(run_dir(study, rid) / resume.CHECKPOINT_DIR)


def assert_same_run(reference: config.StudyConfig, study: config.StudyConfig, rid: str) -> None:
    """Same record numbers, same training curves, bit-identical weights; no checkpoint left behind."""
    ref, got = run_dir(reference, rid), run_dir(study, rid)
    a, b = (json.loads((d / "result.json").read_text()) for d in (ref, got))
    for key in ("metrics", "structure", "pruning", "train_steps", "params"):
        assert a[key] == b[key], key
    ha, hb = (json.loads((d / "history.json").read_text()) for d in (ref, got))
    assert ha["log"] == hb["log"] and ha["evals"] == hb["evals"] and ha["steps"] == hb["steps"]
    wa, wb = (load_file(d / "model" / "model.safetensors") for d in (ref, got))
    assert wa.keys() == wb.keys()
    changed = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not changed, f"weights differ: {changed[:5]}"
    assert not (got / resume.CHECKPOINT_DIR).exists()


def resumed_at(notes: list[str]) -> list[str]:
    """Where each restart resumed, from the record's notes."""
    prefix = "resumed from a checkpoint at "
    return [note.split(" (saved")[0].removeprefix(prefix) for note in notes if note.startswith(prefix)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, glue_dir):
    """Uninterrupted runs, checkpointing as by default (10 minutes: only at phase ends here).

    One torch thread, here and in the killed subprocesses (the same thread count is what makes
    runs bit-identical); the session's thread count comes back afterwards.
    """
    threads = torch.get_num_threads()
    _, study = study_in(tmp_path_factory.mktemp("reference"), glue_dir)
    for scenario, sparsity in (("FT", None), ("D", None), ("P", 0.6), ("P+D+A", 0.6)):
        record = run(study, scenario, sparsity)
        assert record.notes == [] and not (run_dir(study, record.run_id) / resume.CHECKPOINT_DIR).exists()
    yield study
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- killed runs


def test_pruned_run_killed_in_each_phase_ends_as_if_never_stopped(reference, tmp_path, glue_dir):
    params, study = study_in(tmp_path, glue_dir, reference, ("mrpc-FT-seed0",))
    kill(params, "P", 0.6, save_at="prune:1", kill_at="prune:2")  # gates, lambdas, trace, Fisher-initialised
    kill(params, "P", 0.6, save_at="finetune:1", kill_at="finetune:3")  # the exported (smaller) model
    record = run(study, "P", 0.6)
    assert_same_run(reference, study, "mrpc-P-sp60-seed0")
    assert resumed_at(record.notes) == ["prune step 1/3", "finetune step 1/3"]


def test_pruned_distilled_adapter_run_killed_after_export_and_while_evaluating_ends_as_if_never_stopped(
        reference, tmp_path, glue_dir):
    params, study = study_in(tmp_path, glue_dir, reference, ("mrpc-FT-seed0", "mrpc-D-seed0"))
    kill(params, "P+D+A", 0.6, kill_at="finetune:1")  # no checkpoint since the export: resume from it
    assert latest(study, "mrpc-P+D+A-sp60-seed0").startswith("finetune-00000000-")
    kill(params, "P+D+A", 0.6, kill_at="evaluate")  # fine-tunes the reloaded model to the end, saves, dies
    assert latest(study, "mrpc-P+D+A-sp60-seed0").startswith("finetune-00000003-")
    record = run(study, "P+D+A", 0.6)  # nothing left to train: evaluates, measures, records
    assert_same_run(reference, study, "mrpc-P+D+A-sp60-seed0")
    assert resumed_at(record.notes) == ["finetune step 0/3", "finetune step 3/3"]


def test_a_pruned_run_that_keeps_its_teachers_word_embeddings_keeps_them_through_a_resumed_fine_tune(
        reference, tmp_path, glue_dir):
    """``training.train_word_embeddings: false``: the fine-tune reloads the exported model from its checkpoint,
    which trains everything unless the run freezes the embeddings again; the rest of the model still trains."""
    keep = {"overrides": {"P": {"training": {"train_word_embeddings": False}}}}
    _, whole = study_in(tmp_path / "whole", glue_dir, reference, ("mrpc-FT-seed0",), **keep)
    params, study = study_in(tmp_path / "killed", glue_dir, reference, ("mrpc-FT-seed0",), **keep)
    record = run(whole, "P", 0.6)
    kill(params, "P", 0.6, kill_at="finetune:1")  # no checkpoint since the export: resumes from the saved export
    assert resumed_at(run(study, "P", 0.6).notes) == ["finetune step 0/3"]
    assert_same_run(whole, study, "mrpc-P-sp60-seed0")
    key = "bert.embeddings.word_embeddings.weight"
    teacher, pruned, default = (load_file(run_dir(s, rid) / "model" / "model.safetensors") for s, rid in (
        (reference, "mrpc-FT-seed0"), (study, "mrpc-P-sp60-seed0"), (reference, "mrpc-P-sp60-seed0")))
    assert torch.equal(pruned[key], teacher[key]) and not torch.equal(default[key], teacher[key])
    assert not torch.equal(pruned["classifier.weight"], teacher["classifier.weight"])
    assert record.params["trainable"] == record.params["total"] - teacher[key].numel()


class Crash(Exception):
    """Stands in for a kill where only the checkpoint matters, not how the process died."""


def test_a_checkpoint_from_other_settings_is_discarded_not_resumed(reference, tmp_path, glue_dir, capsys,
                                                                   monkeypatch):
    _, study = study_in(tmp_path, glue_dir, training={**SMALL["training"], "learning_rate": 1e-4})

    def crash(self, state):
        if state.step == 2:
            self.checkpointer.save(self.name, state)
            raise Crash

    monkeypatch.setattr(resume.Phase, "step_done", crash)
    with pytest.raises(Crash):
        run(study, "FT")
    assert latest(study, "mrpc-FT-seed0").startswith("train-00000002-")
    monkeypatch.undo()
    _, study = study_in(tmp_path, glue_dir)  # the reference's settings, same output folder
    record = run(study, "FT")
    out = capsys.readouterr().out
    assert "was made from other inputs (settings.training.learning_rate: 0.0001 -> 5e-05): discarded" in out
    assert record.notes == []
    assert_same_run(reference, study, "mrpc-FT-seed0")  # trained from step 0, as the uninterrupted run


# --------------------------------------------------------------------------- the pieces


def same(a, b) -> bool:
    """Equal values of the same types all the way down; tensors bit for bit, with their dtype."""
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def test_state_file_keeps_nested_training_state_exactly(tmp_path):
    layer = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(layer.parameters(), betas=(0.8, 0.99))
    layer(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    random.seed(1)
    value = {"optimizer": optimizer.state_dict(), "python": random.getstate(), 7: "an int key",
             "bf16": torch.randn(3, dtype=torch.bfloat16), "numbers": [float("inf"), -0.0, 1e-310, 0.1, None, True]}
    statefile.save(value, tmp_path, "state", meta={"step": 3})
    back, meta = statefile.load(tmp_path, "state")
    assert meta == {"step": 3}
    assert same(back, value)
    assert list(back["optimizer"]["state"]) == [0, 1] and back["optimizer"]["param_groups"][0]["betas"] == (0.8, 0.99)
    random.setstate(back["python"])  # a tuple again, as setstate requires
    with pytest.raises(TypeError, match=r"cannot store object at \['x'\]\[0\]"):
        statefile.flatten({"x": [object()]})


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("embedded")


def draws(batches, n: int) -> list:
    """The next ``n`` batches' example ids, each with what the step after it draws from every global RNG."""
    return [(next(batches)["idx"].tolist(), torch.rand(2).tolist(), float(np.random.rand()), random.random())
            for _ in range(n)]


@pytest.mark.parametrize("group_by_length", [True, False])
@pytest.mark.parametrize("taken", [0, 2, 4, 6])  # before the first epoch, mid-epoch, at its end, in the second
def test_a_restored_cursor_continues_with_the_same_batches_and_random_draws(tokenizer, group_by_length, taken):
    rows = datasets.Dataset.from_dict({"input_ids": [[101] + [1000 + i] * (i % 3 + 1) + [102] for i in range(14)],
                                       "label": [i % 2 for i in range(14)], "idx": list(range(14))})
    new_loader = lambda: make_loader(rows, tokenizer, 4, True, seed=0, group_by_length=group_by_length)  # noqa: E731
    torch.manual_seed(0)
    cursor = resume.DataCursor(new_loader())  # 4 batches an epoch
    batches = iter(cursor)
    draws(batches, taken)
    saved = cursor.position(), resume.rng_states()
    uninterrupted = draws(batches, 7)
    torch.manual_seed(99), np.random.seed(99), random.seed(99)  # a new process: other RNG states,
    loader = new_loader()
    next(iter(loader))  # and a generator that has moved on
    restored = resume.DataCursor(loader)
    restored.seek(*saved)
    assert draws(iter(restored), 7) == uninterrupted


def tiny_state(seed: int, total_steps: int = 4) -> resume.LoopState:
    torch.manual_seed(seed)
    model = BertForSequenceClassification(BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=8))
    loader = torch.utils.data.DataLoader(list(range(8)), batch_size=2, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    return resume.LoopState(model, resume.DataCursor(loader), History(), total_steps)


FINGERPRINT = {"sha256": "a" * 64, "inputs": {"settings": {"training": {"learning_rate": 5e-05}}}}


def test_checkpoints_replace_each_other_atomically_and_resume_only_their_own_run(tmp_path):
    folder = tmp_path / resume.CHECKPOINT_DIR
    checkpoints = resume.Checkpointer(folder, FINGERPRINT, every_minutes=10)
    state = tiny_state(0)
    state.step = 1
    checkpoints.save(resume.TRAIN, state)
    (folder / ".train-00000002-0123abcd.tmp-x").mkdir()  # what a save killed halfway leaves
    state.step = 2
    state.history.log.append({"step": 2, "loss": 0.5})
    checkpoints.save(resume.TRAIN, state)
    name = latest_in(folder)
    assert name.startswith("train-00000002-")
    assert sorted(p.name for p in folder.iterdir()) == sorted([resume.LATEST, name])  # the old one is gone too

    again = resume.Checkpointer(folder, FINGERPRINT, every_minutes=10)
    assert again.open().startswith(f"resuming from checkpoint {folder}: train step 2/4")
    fresh = tiny_state(1)
    assert not again.restore(resume.PRUNE, fresh)  # another phase's checkpoint is not this one's
    assert again.restore(resume.TRAIN, fresh)
    assert fresh.step == 2 and fresh.history.log == [{"step": 2, "loss": 0.5}]
    assert same(fresh.model.state_dict(), state.model.state_dict())

    other = {"sha256": "b" * 64, "inputs": {"settings": {"training": {"learning_rate": 1e-04}}}}
    line = resume.Checkpointer(folder, other, every_minutes=10).open()
    assert line == (f"checkpoint {folder} was made from other inputs (settings.training.learning_rate: 5e-05 -> "
                     "0.0001): discarded, the run starts from step 0")
    assert not folder.exists()

    folder.mkdir()
    (folder / resume.LATEST).write_text(json.dumps({"checkpoint": "train-00000009-gone"}))
    with pytest.raises(RuntimeError, match=r"is unreadable .*; delete that directory to start the run from step 0"):
        resume.Checkpointer(folder, FINGERPRINT, every_minutes=10).open()


def test_checkpoints_are_due_every_interval_and_never_when_off(tmp_path):
    now = [0.0]
    checkpoints = resume.Checkpointer(tmp_path / "on", FINGERPRINT, every_minutes=2, clock=lambda: now[0])
    phase = checkpoints.phase(resume.TRAIN)
    state = tiny_state(0)
    for seconds, step in ((60.0, 1), (119.9, 2)):
        now[0], state.step = seconds, step
        phase.step_done(state)
    assert not (tmp_path / "on").exists()
    now[0], state.step = 120.0, 3
    phase.step_done(state)
    assert latest_in(tmp_path / "on").startswith("train-00000003-")
    now[0], state.step = 200.0, 4  # 80 s later: not due, but the phase ends, so it saves
    phase.step_done(state)
    assert latest_in(tmp_path / "on").startswith("train-00000003-")
    phase.end(state)
    assert latest_in(tmp_path / "on").startswith("train-00000004-")
    off = resume.Checkpointer(tmp_path / "off", FINGERPRINT, every_minutes=0, clock=lambda: now[0])
    now[0] = 1e9
    assert not off.due()
    off.phase(resume.TRAIN).end(state)
    assert not (tmp_path / "off").exists()
