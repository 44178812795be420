"""Parameter validation fails early and by name; run records are atomic; a study resumes and isolates failures."""

from __future__ import annotations

import json
import os

import pytest

from pda import fingerprint, records
from pda.config import SCENARIOS, ConfigError, for_run, load_params, share_cores
from pda.records import RunRecord, atomic_write_text, read_all_records, write_record
from pda.runs import RunSpec, dependencies, expand_grid, run_dir, run_id
from pda.study import Outcome, execute_run, run_serial
from pda.views import describe_run


def test_smoke_and_paper_and_default_files_validate(glue_dir, monkeypatch):
    from tests.conftest import ROOT

    monkeypatch.setenv("PDA_GLUE_DIR", str(glue_dir))
    for name in ("smoke", "default"):
        cfg = load_params(ROOT / "parameters" / f"{name}.yaml", data_dir=str(glue_dir))
        assert cfg.tasks and cfg.scenarios
    paper = load_params(ROOT / "parameters" / "paper.yaml")
    assert paper.model == "google-bert/bert-base-cased" and len(paper.tasks) == 8
    assert paper.sparsities == [0.6, 0.7, 0.8, 0.9, 0.95]
    low = for_run(paper, "mrpc", "FT", None, 0).study.training
    high = for_run(paper, "mnli", "FT", None, 0).study.training
    assert (low.epochs, low.eval_every_steps) == (100, 50)
    assert (high.epochs, high.eval_every_steps) == (20, 500)


def test_the_sparsity_curve_reuses_the_default_studys_runs_and_finetunes_between_as_measured(glue_dir, monkeypatch):
    """parameters/sparsity_curve.yaml promises that its 60 and 90 % runs (and their teachers and students)
    are the default study's, so copying them in reuses them, that 80 and 85 % fine-tune as 90 % does, and
    70 % as 60 % does."""
    from tests.conftest import ROOT

    monkeypatch.setenv("PDA_GLUE_DIR", str(glue_dir))
    default = load_params(ROOT / "parameters" / "default.yaml")
    curve = load_params(ROOT / "parameters" / "sparsity_curve.yaml")
    assert curve.tasks == ["mrpc"] and curve.sparsities == [0.6, 0.7, 0.8, 0.85, 0.9] and curve.seeds == [0, 1, 2]
    assert curve.output_dir != default.output_dir  # its analysis covers its own runs only
    for scenario, sparsity in [("FT", None), ("D", None), ("P", 0.6), ("P", 0.9), ("P+D", 0.6), ("P+D", 0.9)]:
        for seed in (0, 2):
            assert (fingerprint.fingerprint(for_run(curve, "mrpc", scenario, sparsity, seed))
                    == fingerprint.fingerprint(for_run(default, "mrpc", scenario, sparsity, seed))), (scenario, sparsity)

    def finetune(scenario: str, sparsity: float) -> tuple:
        pruning = for_run(curve, "mrpc", scenario, sparsity, 1).study.pruning
        return pruning.finetune_epochs, pruning.finetune_learning_rate

    assert finetune("P", 0.6) != finetune("P", 0.9)
    assert finetune("P+D", 0.8) == finetune("P", 0.85) == finetune("P", 0.9)
    assert finetune("P", 0.7) == finetune("P+D", 0.7) == finetune("P", 0.6)


def test_the_own_task_template_runs_sst2_s_recipes_with_the_default_study_s_settings(glue_dir, monkeypatch):
    """parameters/own_task.yaml reads SST-2's files as a task of its own: its runs must read the settings the
    default study's SST-2 runs read, so its numbers check the own-task path against the SST-2 column."""
    from tests.conftest import ROOT

    monkeypatch.setenv("PDA_GLUE_DIR", str(glue_dir))
    default = load_params(ROOT / "parameters" / "default.yaml")
    own = load_params(ROOT / "parameters" / "own_task.yaml")
    assert own.tasks == ["movie_reviews"] and own.output_dir != default.output_dir
    assert (own.scenarios, own.sparsities, own.seeds) == (default.scenarios, default.sparsities, default.seeds)
    for scenario in own.scenarios:
        for sparsity in own.sparsities if SCENARIOS[scenario]["prune"] else [None]:
            mine, glue = for_run(own, "movie_reviews", scenario, sparsity, 0), for_run(default, "sst2", scenario, sparsity, 0)
            assert fingerprint.run_settings(mine) == fingerprint.run_settings(glue), (scenario, sparsity)
            assert fingerprint.data_files(mine)["files"] == fingerprint.data_files(glue)["files"]


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"tasks": ["mrcp"]}, r"unknown GLUE task 'mrcp'; valid tasks: \['cola'"),
        ({"scenarios": ["FT", "PDA"]}, r"unknown scenario\(s\) \['PDA'\]; valid scenarios: \['base', 'FT'"),
        ({"sparsities": [0.6, 1.0]}, r"sparsity=1.0 is outside the valid range \[0.0, 1.0\)"),
        ({"sparsities": [-0.1]}, r"sparsity=-0.1 is outside the valid range"),
        ({"sparsities": ["0.5"]}, r"sparsity must be a number, got '0.5'"),
        ({"data_dir": "/nonexistent/glue"}, r"data_dir '/nonexistent/glue' does not exist"),
        ({"epochs": 3}, r"unknown parameter\(s\) epochs; valid keys here: \["),
        ({"training": {"epoch": 3}}, r"unknown parameter\(s\) training.epoch; valid keys here: \['batch_size'"),
        ({"overrides": {"GLUE mid": {}}}, r"overrides key 'GLUE mid' is not a group"),
        ({"overrides": {"mrpc": {"training": {"lr": 1}}}}, r"overrides\[mrpc\].training.lr"),
        ({"device": "tpu"}, r"device='tpu' is not valid; use one of auto, cpu, cuda"),
        ({"distill": {"alpha": 1.5}}, r"distill.alpha=1.5 is outside the valid range \[0.0, 1.0\]"),
        ({"model": "not-a-local-dir"}, r"model 'not-a-local-dir' is not a local path"),
    ],
)
def test_bad_parameters_fail_by_name_before_any_work(make_params, changes, message):
    with pytest.raises(ValueError, match=message):
        load_params(make_params(**changes))


def test_a_task_with_no_data_offline_says_how_to_fix(make_params, monkeypatch):
    monkeypatch.delenv("PDA_GLUE_DIR", raising=False)
    with pytest.raises(ConfigError, match=r"qnli: no QNLI/train.tsv in .*PDA_GLUE_DIR.*online: true"):
        load_params(make_params(data_dir=None, tasks=["mrpc", "qnli"]))


def test_no_data_dir_uses_the_repository_data(make_params, monkeypatch, glue_dir):
    monkeypatch.delenv("PDA_GLUE_DIR", raising=False)
    assert load_params(make_params(data_dir=None)).data_dir is None


def test_pruned_run_rejects_bad_sparsity_and_unpruned_run_ignores_it(make_params):
    cfg = load_params(make_params())
    with pytest.raises(ConfigError, match=r"sparsity=1.5"):
        for_run(cfg, "mrpc", "P", 1.5, 0)
    assert for_run(cfg, "mrpc", "A", 0.9, 0).sparsity is None


def test_grid_puts_dependencies_first():
    from pda.config import StudyConfig

    cfg = StudyConfig(tasks=["mrpc"], scenarios=["P+D+A", "A"], sparsities=[0.6, 0.9], seeds=[0, 1])
    specs = expand_grid(cfg)
    ids = [s.run_id for s in specs]
    assert len(ids) == len(set(ids))
    for spec in specs:
        for dep in dependencies(spec):
            assert ids.index(dep.run_id) < ids.index(spec.run_id)
    assert "mrpc-P+D+A-sp90-seed1" in ids and "mrpc-D-seed1" in ids and "mrpc-FT-seed1" in ids
    assert len(ids) == 2 * (2 + 1 + 1 + 1)  # per seed: 2 P+D+A, A, D, FT


def test_atomic_write_keeps_old_file_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "result.json"
    atomic_write_text(path, "old")

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(records.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]  # no temp file left behind


def test_atomic_write_gives_the_mode_of_any_new_file(tmp_path):
    """Not mkstemp's 0600: a group sharing outputs/ must be able to read the results."""
    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "result.json", "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "result.json").stat().st_mode & 0o777 == 0o640


def test_record_round_trip_and_unknown_field_rejected(tmp_path):
    rec = RunRecord(run_id="mrpc-FT-seed0", task="mrpc", scenario="FT", prune=False, distill=False,
                    adapters=False, sparsity=None, seed=0, model="embedded", metrics={"f1": 80.0})
    write_record(rec, tmp_path / "runs" / rec.run_id)
    assert read_all_records(tmp_path / "runs") == [rec]
    data = json.loads((tmp_path / "runs" / rec.run_id / "result.json").read_text())
    data["surprise"] = 1
    with pytest.raises(ValueError, match="surprise"):
        RunRecord.from_dict(data)


def test_finished_run_is_not_executed_again(make_params, monkeypatch):
    cfg = load_params(make_params())
    spec = RunSpec("mrpc", "FT", None, 0)
    rec = RunRecord(run_id=spec.run_id, task="mrpc", scenario="FT", prune=False, distill=False, adapters=False,
                    sparsity=None, seed=0, model="embedded",
                    fingerprint=fingerprint.record_entry(for_run(cfg, "mrpc", "FT", None, 0)))
    write_record(rec, run_dir(cfg, spec.run_id))

    def must_not_run(*args, **kwargs):
        raise AssertionError("papermill called for a finished run")

    monkeypatch.setattr("pda.study.execute_notebook", must_not_run)
    assert execute_run(make_params(), cfg, spec).status == "cached"


def test_failed_run_is_reported_and_its_dependents_skipped_while_others_go_on(make_params):
    cfg = load_params(make_params(tasks=["mrpc", "rte"], scenarios=["FT", "A", "P"], sparsities=[0.6]))
    specs = expand_grid(cfg)
    executed = []

    def fake_execute(spec):
        executed.append(spec.run_id)
        if spec.run_id == "mrpc-FT-seed0":
            return Outcome(spec, "failed", error="boom")
        return Outcome(spec, "done")

    outcomes = {o.spec.run_id: o for o in run_serial(make_params(), cfg, specs, fake_execute)}
    assert outcomes["mrpc-FT-seed0"].status == "failed"
    assert outcomes["mrpc-P-sp60-seed0"].status == "skipped"
    assert "mrpc-FT-seed0" in outcomes["mrpc-P-sp60-seed0"].error
    assert "mrpc-P-sp60-seed0" not in executed
    assert all(outcomes[r].status == "done" for r in ("mrpc-A-seed0", "rte-FT-seed0", "rte-A-seed0", "rte-P-sp60-seed0"))


def test_run_ids_are_readable_and_distinct():
    assert run_id("mrpc", "P+D+A", 0.9, 0) == "mrpc-P+D+A-sp90-seed0"
    assert run_id("sst2", "FT", None, 1) == "sst2-FT-seed1"
    assert run_id("mrpc", "P", 0.95, 0) != run_id("mrpc", "P", 0.9, 0)


def test_share_cores_caps_training_and_benchmark_threads(make_params):
    study = load_params(make_params(torch_threads=2, measure={"threads": 2}))
    shared = share_cores(study, 1)
    assert (shared.torch_threads, shared.measure.threads) == (1, 1)
    assert (study.torch_threads, study.measure.threads) == (2, 2)  # the file's settings are not mutated
    assert share_cores(study, None) is study
    with pytest.raises(ConfigError, match="torch_threads"):
        share_cores(study, 0)


def test_overrides_apply_by_group_scenario_task_then_task_scenario(make_params):
    study = load_params(make_params(overrides={
        "GLUE low": {"training": {"epochs": 2, "batch_size": 8}},
        "FT": {"training": {"epochs": 3}, "max_train_samples": 48},
        "mrpc": {"training": {"batch_size": 4}},
        "mrpc/FT": {"training": {"epochs": 5}},
    }))
    ft, a = for_run(study, "mrpc", "FT", None, 0).study, for_run(study, "mrpc", "A", None, 0).study
    stsb_ft = for_run(study, "stsb", "FT", None, 0).study
    assert (ft.training.epochs, ft.training.batch_size, ft.max_train_samples) == (5, 4, 48)
    assert (a.training.epochs, a.training.batch_size, a.max_train_samples) == (2, 4, 64)
    assert (stsb_ft.training.epochs, stsb_ft.training.batch_size) == (3, 8)


def test_a_sparsity_override_reaches_only_pruned_runs_at_that_sparsity(make_params):
    study = load_params(make_params(sparsities=[0.6, 0.9], overrides={
        "P": {"pruning": {"finetune_epochs": 2}},
        "sp90": {"pruning": {"finetune_epochs": 6, "finetune_learning_rate": 3.0e-4}},
        "mrpc/P": {"pruning": {"finetune_learning_rate": 1.0e-4}},
    }))
    tuned = lambda scenario, sparsity, task="stsb": for_run(study, task, scenario, sparsity, 0).study.pruning  # noqa: E731
    assert (tuned("P", 0.9).finetune_epochs, tuned("P", 0.9).finetune_learning_rate) == (6, 3.0e-4)
    assert (tuned("P", 0.6).finetune_epochs, tuned("P", 0.6).finetune_learning_rate) == (2, None)
    assert tuned("P+D", 0.9).finetune_epochs == 6 and tuned("FT", None).finetune_epochs != 6
    assert tuned("P", 0.9, "mrpc").finetune_learning_rate == 1.0e-4  # TASK/SCENARIO still comes last
    run = lambda scenario, sparsity=0.9: for_run(study, "stsb", scenario, sparsity, 0)  # noqa: E731
    assert run("P+D").finetune_learning_rate == 3.0e-4
    assert run("P+A").finetune_learning_rate is None  # adapters keep their own rate
    assert run("P", 0.6).finetune_learning_rate is None
    assert "fine-tune 6 at lr 0.0003" in describe_run(run("P")) and "at lr" not in describe_run(run("P+D+A"))


def test_a_task_scenario_sparsity_override_comes_last_and_reaches_only_that_run(make_params):
    study = load_params(make_params(sparsities=[0.6, 0.9], overrides={
        "sp90": {"pruning": {"finetune_epochs": 6}},
        "sst2/P": {"max_train_samples": 40},
        "sst2/P/sp60": {"pruning": {"finetune_epochs": 3}},
    }))
    run = lambda task, scenario, sparsity: for_run(study, task, scenario, sparsity, 0).study  # noqa: E731
    assert run("sst2", "P", 0.6).pruning.finetune_epochs == 3 and run("sst2", "P", 0.6).max_train_samples == 40
    assert run("sst2", "P", 0.9).pruning.finetune_epochs == 6  # the sparsity's own override is not undone
    assert run("sst2", "P+D", 0.6).pruning.finetune_epochs != 3 and run("mrpc", "P", 0.6).pruning.finetune_epochs != 3


@pytest.mark.parametrize("overrides, message", [
    ({"FT": {"seeds": [1]}}, r"overrides\[FT\]: seeds cannot differ per scenario"),
    ({"sst2/FT/sp60": {}}, r"overrides key 'sst2/FT/sp60' is not a group .* TASK/SCENARIO/spNN"),
    ({"sst2/P/sp6": {}}, r"overrides key 'sst2/P/sp6' is not a group"),
    ({"sst2/P/sp60": {"seeds": [1]}}, r"overrides\[sst2/P/sp60\]: seeds cannot differ per scenario"),
    ({"mrpc/P": {"model": "x"}}, r"overrides\[mrpc/P\]: model cannot differ per scenario"),
    ({"mrpc/PDA": {}}, r"overrides key 'mrpc/PDA' is not a group .* TASK/SCENARIO \(e.g. 'mrpc/FT'\)"),
    ({"D": {"training": {"epochs": -1}}}, r"overrides\[D\]: training.epochs=-1"),
    ({"sp90": {"seeds": [1]}}, r"overrides\[sp90\]: seeds cannot differ per scenario"),
    ({"sp90": {"pruning": {"finetune_learning_rate": 2}}},
     r"overrides\[sp90\]: pruning.finetune_learning_rate=2 is outside the valid range"),
    ({"sp9": {}}, r"overrides key 'sp9' is not a group .* a target sparsity of pruned runs \(e.g. 'sp90'"),
    ({"P+A": {"pruning": {"keep_last_layer_heads": -1}}}, r"overrides\[P\+A\]: pruning.keep_last_layer_heads=-1"),
    ({"P+A": {"pruning": {"keep_last_layer_heads": 1.5}}}, r"pruning.keep_last_layer_heads must be a whole number, got 1.5"),
])
def test_scenario_overrides_are_checked_like_the_rest(make_params, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_params(make_params(overrides=overrides))


def test_a_parameter_file_can_extend_another(make_params, tmp_path):
    base = make_params(seeds=[0], training={"epochs": 2, "batch_size": 8})
    more = base.parent / "more.yaml"
    more.write_text("extends: p.yaml\nseeds: [0, 1, 2]\ntraining: {epochs: 3}\n")
    cfg = load_params(more)
    assert cfg.seeds == [0, 1, 2] and (cfg.training.epochs, cfg.training.batch_size) == (3, 8)
    loop = base.parent / "loop.yaml"
    loop.write_text("extends: loop.yaml\n")
    with pytest.raises(ConfigError, match=r"extends 'loop.yaml' makes a cycle"):
        load_params(loop)
    missing = base.parent / "missing.yaml"
    missing.write_text("extends: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"extends 'nowhere.yaml', which does not exist"):
        load_params(missing)
