"""``python -m pda retime``: a finished study's models timed again, kept beside the record, preferred by the analysis."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pda import config, pipeline
from pda.__main__ import main
from pda.analysis.bound import GOAL, bound_shares, bound_table
from pda.analysis.frame import records_frame
from pda.config import BACKENDS, ConfigError
from pda.records import RESULT_FILE, RETIME_FILE, RunRecord, read_record, write_record
from pda.retime import retime_settings, retime_study
from pda.runs import run_dir

ROOT = Path(__file__).resolve().parent.parent

TINY = dict(max_train_samples=32, max_eval_samples=32, max_seq_length=48,
            training={"epochs": 1, "batch_size": 16, "log_every_steps": 1},
            pruning={"epochs": 1, "finetune_epochs": 1},
            measure={"speed": False, "energy": False, "flops": True, "quantize": False,
                     "batch_sizes": [1, 4], "seq_len": 32, "warmup": 1, "rounds": 1})


@pytest.fixture(scope="module")
def finished(tmp_path_factory, glue_dir):
    """A study folder with MRPC's teacher and its P 60 % student, trained without timing them."""
    return _train_mrpc_p60(tmp_path_factory.mktemp("retime"), glue_dir, {})


def _train_mrpc_p60(root: Path, glue_dir: Path, changes: dict) -> tuple[Path, config.StudyConfig]:
    """Write smoke.yaml with TINY and `changes` under `root`, and train MRPC's teacher and P 60 %."""
    base = yaml.safe_load((ROOT / "parameters" / "smoke.yaml").read_text())
    base.update({"data_dir": str(glue_dir), "output_dir": str(root / "outputs"), **TINY, **changes})
    params = root / "parameters" / "p.yaml"
    params.parent.mkdir()
    params.write_text(yaml.safe_dump(base))
    study = config.load_params(params)
    pipeline.run(config.for_run(study, "mrpc", "P", 0.6, 0), with_dependencies=True)
    return params, study


def test_retime_times_each_saved_model_again_and_the_analysis_prefers_it(finished) -> None:
    params, study = finished
    pruned = run_dir(study, "mrpc-P-sp60-seed0")
    before = (pruned / RESULT_FILE).read_bytes()
    assert read_record(pruned).retimed is None and read_record(pruned).speed is None  # the run timed nothing
    done = retime_study(study, rounds=2, backend_names=["eager_fp32"], patterns=["*-P-*"], log=lambda _: None)
    assert done == [pruned]  # the glob chose the pruned run, not the teacher
    assert (pruned / RESULT_FILE).read_bytes() == before  # the record itself is never rewritten
    rec = read_record(pruned)
    got = rec.retimed
    assert got["fingerprint"] == rec.fingerprint["sha256"] and got["settings"]["rounds"] == 2
    assert set(got["backends"]) == {"eager_fp32"} and set(got["speed"]["by_batch"]) == {"1", "4"}
    assert got["speed"]["by_batch"]["4"]["speedup"] == got["backends"]["eager_fp32"]["by_batch"]["4"]["speedup"]
    row = records_frame([rec]).iloc[0]
    assert row["speed_source"] == "retime"
    assert row["speedup_b4"] == pytest.approx(got["speed"]["by_batch"]["4"]["speedup"])
    assert row["speedup_eager_fp32_b4"] == pytest.approx(got["backends"]["eager_fp32"]["by_batch"]["4"]["speedup"])
    # resumable: the same settings again do nothing; other settings, or --force, time it again
    assert retime_study(study, rounds=2, backend_names=["eager_fp32"], patterns=["*-P-*"], log=lambda _: None) == []
    assert retime_study(study, rounds=2, backend_names=["eager_fp32"], patterns=["*-P-*"], force=True,
                        log=lambda _: None) == [pruned]
    assert retime_study(study, rounds=1, backend_names=["eager_fp32"], patterns=["*-P-*"],
                        log=lambda _: None) == [pruned]


def test_a_tasks_runs_share_one_timing_of_the_reference_per_backend(finished) -> None:
    _, study = finished
    done = retime_study(study, rounds=1, backend_names=["eager_fp32", "ort_fp32"], force=True, log=lambda _: None)
    assert [p.name for p in done] == ["mrpc-FT-seed0", "mrpc-P-sp60-seed0"]
    teacher, pruned = (read_record(p).retimed for p in done)
    assert teacher["group"] == pruned["group"] == ["mrpc-FT-seed0", "mrpc-P-sp60-seed0"]
    for backend in ("eager_fp32", "ort_fp32"):
        for batch in ("1", "4"):
            a, b = teacher["backends"][backend]["by_batch"][batch], pruned["backends"][backend]["by_batch"][batch]
            assert a["teacher_latency_ms_median"] == b["teacher_latency_ms_median"]  # one reference timing
            assert b["latency_ms_median"] != b["teacher_latency_ms_median"]  # the pruned model its own
            # the teacher computes what the reference does: its timing is the reference's, not a second one
            assert a["latency_ms_median"] == a["teacher_latency_ms_median"] and a["speedup"] == 1.0
    assert pruned["backends"]["ort_fp32"]["max_abs_logit_diff"] <= 1e-4
    assert any("timed as the reference" in note for note in teacher["notes"])
    assert not any("timed as the reference" in note for note in pruned["notes"])


def test_the_model_card_shows_the_retimed_speeds_and_says_so(finished, tmp_path) -> None:
    from pda.export import export_run

    _, study = finished
    pruned = run_dir(study, "mrpc-P-sp60-seed0")
    retime_study(study, rounds=1, backend_names=["eager_fp32"], patterns=["*-P-*"], force=True, log=lambda _: None)
    speedup = read_record(pruned).retimed["backends"]["eager_fp32"]["by_batch"]["4"]["speedup"]
    card = (export_run(pruned, tmp_path / "export") / "README.md").read_text()
    assert "after the study's training, with nothing else running" in card and f"{speedup:.2f}x" in card


def test_a_retime_of_another_model_in_the_same_folder_is_ignored(finished) -> None:
    _, study = finished
    teacher = run_dir(study, "mrpc-FT-seed0")
    (teacher / RETIME_FILE).write_text(json.dumps({"fingerprint": "a model this folder held before", "speed": {},
                                                   "backends": {}}))
    try:
        assert read_record(teacher).retimed is None
    finally:
        (teacher / RETIME_FILE).unlink()


def test_result_json_never_carries_the_retime(tmp_path) -> None:
    rec = RunRecord(run_id="r", task="mrpc", scenario="FT", prune=False, distill=False, adapters=False,
                    sparsity=None, seed=0, model="m", retimed={"speed": {}})
    write_record(rec, tmp_path)
    assert "retimed" not in json.loads((tmp_path / RESULT_FILE).read_text())


def test_retime_defaults_to_every_backend_and_refuses_unknown_ones_by_name(finished) -> None:
    _, study = finished
    assert retime_settings(study.measure, 3, 1, None).backends == list(BACKENDS)
    with pytest.raises(ConfigError, match="ort_fp16"):
        retime_settings(study.measure, 3, 1, ["eager_fp32", "ort_fp16"])
    with pytest.raises(ConfigError, match="no finished run"):
        retime_study(study, patterns=["cola-*"], log=lambda _: None)


def test_the_command_line_names_a_bad_value(finished, capsys) -> None:
    params, _ = finished
    assert main(["retime", str(params), "--rounds", "0", "--no-analysis"]) == 2
    assert "--rounds=0" in capsys.readouterr().err
    assert main(["retime", str(params), "--backends", "tensorrt", "--no-analysis"]) == 2
    assert "tensorrt" in capsys.readouterr().err


@pytest.fixture(scope="module")
def deferred(tmp_path_factory, glue_dir):
    """MRPC's teacher and P 60 % trained by a study that times after training; P times one backend only."""
    measure = {**TINY["measure"], "speed": True, "timing": "after_study", "quantize": True,
               "backends": ["eager_fp32", "ort_int8"]}
    return _train_mrpc_p60(tmp_path_factory.mktemp("deferred"), glue_dir, {
        "tasks": ["mrpc"], "scenarios": ["FT", "P"], "sparsities": [0.6], "measure": measure,
        "overrides": {"mrpc/P": {"measure": {"backends": ["eager_fp32"], "rounds": 2}}}})


def test_a_study_that_times_after_training_times_every_model_at_its_end_with_its_own_settings(deferred) -> None:
    from pda.study import run_study

    params, study = deferred
    teacher, pruned = run_dir(study, "mrpc-FT-seed0"), run_dir(study, "mrpc-P-sp60-seed0")
    for run in (teacher, pruned):  # the runs timed nothing, but still measured their INT8 variant's metric
        rec = read_record(run)
        assert rec.speed is None and not rec.backends
        assert rec.quantized["metrics"] and rec.quantized.get("speed") is None
        assert any("after_study" in note for note in rec.notes) and rec.retimed is None
    outcomes = run_study(params, analysis=False)  # both runs are done: the study only times them
    assert {o.status for o in outcomes} == {"cached"}
    t, p = read_record(teacher).retimed, read_record(pruned).retimed
    assert t["settings"]["backends"] == ["eager_fp32", "ort_int8"] and t["settings"]["rounds"] == 1
    assert t["source"] == p["source"] == "study"
    assert p["settings"]["backends"] == ["eager_fp32"] and p["settings"]["rounds"] == 2  # mrpc/P's override
    assert t["group"] == ["mrpc-FT-seed0"] and p["group"] == ["mrpc-P-sp60-seed0"]  # other settings: apart
    rows = records_frame([read_record(teacher), read_record(pruned)]).set_index("run_id")
    assert (rows["speed_source"] == "retime").all() and rows.loc["mrpc-P-sp60-seed0", "speedup_b4"] > 0
    assert rows.loc["mrpc-FT-seed0", "q_speedup_b4"] > 0  # +Q's speed from the timing after the study
    stamp = (pruned / RETIME_FILE).stat().st_mtime_ns
    assert {o.status for o in run_study(params, analysis=False)} == {"cached"}
    assert (pruned / RETIME_FILE).stat().st_mtime_ns == stamp  # timed once: a study started again skips it
    more = yaml.safe_load(params.read_text())
    more["overrides"]["mrpc/P"]["measure"]["rounds"] = 3  # timed with another setting: re-timed, not retrained
    params.write_text(yaml.safe_dump(more))
    assert {o.status for o in run_study(params, analysis=False)} == {"cached"}
    assert read_record(pruned).retimed["settings"]["rounds"] == 3 and read_record(teacher).retimed == t
    retime_study(study, rounds=1, backend_names=["eager_fp32"], patterns=["mrpc-P-*"], log=lambda _: None)
    asked = read_record(pruned).retimed
    assert asked["source"] == "retime" and asked["settings"]["rounds"] == 1
    assert {o.status for o in run_study(params, analysis=False)} == {"cached"}
    assert read_record(pruned).retimed == asked  # the study never overwrites a timing the user asked for


def test_a_failed_timing_after_the_study_is_a_named_failed_outcome(deferred, monkeypatch) -> None:
    from pda import retime
    from pda.study import run_deferred_timing, summarize

    def broken(*args, **kwargs):
        raise RuntimeError("no ONNX Runtime here")

    monkeypatch.setattr(retime, "time_after_study", broken)
    outcomes = run_deferred_timing(deferred[1], [])
    assert [o.status for o in outcomes] == ["failed"]
    assert "timing after the study: RuntimeError: no ONNX Runtime here" in summarize(outcomes)


def test_an_unknown_timing_is_named_with_the_valid_ones(deferred) -> None:
    _, study = deferred
    with pytest.raises(ConfigError, match=r"measure.timing='later'.*in_run.*after_study"):
        config.validate_measure(dataclasses.replace(study.measure, timing="later"))


def _record(run_id: str, scenario: str, sparsity: float | None, bound: float, speedups: dict[str, float],
            retimed: bool) -> RunRecord:
    backends = {b: {"by_batch": {"32": {"speedup": s}}} for b, s in speedups.items()}
    speed = backends["eager_fp32"]
    return RunRecord(run_id=run_id, task="sst2", scenario=scenario, prune="P" in scenario, distill="D" in scenario,
                     adapters=False, sparsity=sparsity, seed=0, model="m",
                     flops={"per_example": 100, "teacher_per_example": int(100 * bound)},
                     speed=None if retimed else speed, backends=None if retimed else backends,
                     retimed={"speed": speed, "backends": backends} if retimed else None)


def test_bound_table_takes_each_runs_best_backend_over_its_flop_bound() -> None:
    frame = records_frame([
        _record("a", "P", 0.9, 10.0, {"eager_fp32": 6.0, "ort_fp32": 8.6}, retimed=True),
        _record("b", "P", 0.9, 10.0, {"eager_fp32": 7.0, "ort_fp32": 5.0}, retimed=False),
        _record("c", "FT", None, 1.0, {"eager_fp32": 1.0}, retimed=True),  # no compression: not in the table
    ])
    shares = bound_shares(frame)
    assert list(shares["run_id"]) == ["a", "b"]
    assert list(shares["best"]) == pytest.approx([0.86, 0.7])
    table = bound_table(frame)
    assert len(table) == 1
    row = table.iloc[0]
    assert row["best backend, mean"] == "0.78" and row["best, lowest run"] == "0.70"
    assert row[f"runs ≥ {GOAL:g}"] == "1 / 2" and row["timed"] in ("1 retime, 1 in run", "1 in run, 1 retime")
    assert row["ort_fp32"] == "0.68 (2)"  # (0.86 + 0.5) / 2
    assert bound_table(pd.DataFrame(columns=frame.columns)).empty
