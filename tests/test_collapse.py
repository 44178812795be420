"""The majority-class baseline (computed by hand) and the collapse check that flags runs sitting on it."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from pda import analysis
from pda.baselines import MajorityBaseline, majority_baselines, majority_metrics
from pda.records import RunRecord, write_record
from pda.tasks import get_task


def test_majority_metrics_by_hand() -> None:
    # MRPC: training majority is 1 ("paraphrase"); on dev [1, 1, 0, 1, 0] the constant 1 is right 3 times:
    # accuracy 60 %, precision 3/5, recall 1, F1 = 2 * 0.6 / 1.6 = 75 %.
    mrpc = majority_metrics(get_task("mrpc"), [1, 1, 0], {"dev": [1, 1, 0, 1, 0]})
    assert mrpc == pytest.approx({"accuracy": 60.0, "f1": 75.0})
    # CoLA: a constant prediction has Matthews 0 whatever the labels; the majority here is 0.
    cola = majority_metrics(get_task("cola"), [0, 0, 1], {"dev": [1, 0, 0, 0]})
    assert cola == pytest.approx({"matthews": 0.0, "accuracy": 75.0})
    assert majority_metrics(get_task("stsb"), [1.0, 2.0], {"dev": [3.0]}) == {}
    with pytest.raises(ValueError, match="mrpc: no training labels"):
        majority_metrics(get_task("mrpc"), [], {"dev": [1]})


def test_majority_baselines_on_the_shipped_data(glue_dir: Path) -> None:
    got = majority_baselines(["mrpc", "sst2", "cola", "stsb"], str(glue_dir), online=False)
    # MRPC dev: 279 of 408 are paraphrases -> F1 = 2 * 279 / (408 + 279); SST-2 dev: 444 of 872 positive.
    assert got["mrpc"].main_metric == pytest.approx(100 * 2 * 279 / (408 + 279), abs=1e-3)
    assert got["mrpc"].accuracy == pytest.approx(100 * 279 / 408, abs=1e-3) and got["mrpc"].dev_examples == 408
    assert got["sst2"].main_metric == pytest.approx(100 * 444 / 872, abs=1e-3) and got["sst2"].dev_examples == 872
    assert got["cola"].main_metric == 0.0
    # STS-B: a constant score has no correlation with the labels; 1,500 dev pairs
    assert got["stsb"] == MajorityBaseline(main_metric=0.0, accuracy=None, dev_examples=1500)


def record(run_id: str, task: str, scenario: str, accuracy: float, sparsity: float | None = None) -> RunRecord:
    return RunRecord(run_id=run_id, task=task, scenario=scenario, prune=sparsity is not None, distill="D" in scenario,
                     adapters="A" in scenario.replace("base", ""), sparsity=sparsity, seed=0, model="m",
                     main_metric="f1", main_metric_value=accuracy + 10, metrics={"accuracy": accuracy, "f1": accuracy + 10})


# 100 dev examples, half of them the majority class. By hand: P(X >= 60 | n=100, p=1/2) = 0.028 and
# P(X >= 58) = 0.067, so 60 right is significantly above the majority class and 58 is not.
COIN = MajorityBaseline(main_metric=66.7, accuracy=50.0, dev_examples=100)


def test_p_above_majority_is_the_exact_one_sided_binomial_tail() -> None:
    assert analysis.collapse.p_above_majority(60.0, COIN) == pytest.approx(0.0284, abs=1e-4)
    assert analysis.collapse.p_above_majority(58.0, COIN) == pytest.approx(0.0666, abs=1e-4)
    assert analysis.collapse.p_above_majority(50.0, COIN) > 0.5


def test_collapse_table_flags_runs_not_significantly_above_the_majority_class(tmp_path: Path) -> None:
    runs = [record("mrpc-FT", "mrpc", "FT", 70.0), record("mrpc-P60", "mrpc", "P", 60.0, 0.6),
            record("mrpc-P90", "mrpc", "P", 58.0, 0.9), record("mrpc-D", "mrpc", "D", 45.0),
            record("rte-FT", "rte", "FT", 58.0), record("rte-P60", "rte", "P", 70.0, 0.6)]
    frame = analysis.records_frame(runs)
    majority = {"mrpc": COIN, "rte": COIN}
    table = analysis.collapse_table(frame, majority)
    verdict = dict(zip(table["run"], table["collapsed to the majority class"]))
    assert verdict == {"mrpc-P60": "no", "mrpc-P90": "yes", "mrpc-D": "yes",  # p = 0.028, 0.067, below the class
                       "rte-P60": "teacher not above the majority class (p = 0.07)"}  # the teacher's 58 is not
    assert "mrpc-FT" not in verdict  # the teacher is the reference, not a candidate
    assert list(table["run"]) == ["mrpc-D", "mrpc-P60", "mrpc-P90", "rte-P60"]  # the paper's task and recipe order
    assert analysis.collapse_table(frame, {}).empty

    for r in runs:
        write_record(r, tmp_path / "runs" / r.run_id)
    report = analysis.write_report(tmp_path / "runs", tmp_path / "report.md", majority=majority)
    text = report.read_text()
    assert "## Runs at the majority class" in text and "2 of 4 run(s) other than FT collapsed: `mrpc-D`, `mrpc-P90`" in text
    assert "majority class" not in analysis.write_report(tmp_path / "runs", tmp_path / "plain.md").read_text()


def test_cola_is_tested_on_matthews_not_on_accuracy() -> None:
    """CoLA's majority class is right on 69 % of dev: a run with MCC 0.22 can sit near that accuracy and still
    have learned. Under independence z = MCC * sqrt(n): 0.10 * sqrt(400) = 2, p = 0.0228 by hand."""
    assert analysis.collapse.p_positive_matthews(10.0, 400) == pytest.approx(0.02275, abs=1e-4)
    cola = MajorityBaseline(main_metric=0.0, accuracy=69.0, dev_examples=400)

    def run(run_id: str, scenario: str, matthews: float, sparsity: float | None = None) -> RunRecord:
        return RunRecord(run_id=run_id, task="cola", scenario=scenario, prune=sparsity is not None, distill=False,
                         adapters=False, sparsity=sparsity, seed=0, model="m", main_metric="matthews",
                         main_metric_value=matthews, metrics={"matthews": matthews, "accuracy": 68.0})

    frame = analysis.records_frame([run("cola-FT", "FT", 25.0), run("cola-P60", "P", 10.0, 0.6),
                                    run("cola-P90", "P", 5.0, 0.9)])
    table = analysis.collapse_table(frame, {"cola": cola})
    assert dict(zip(table["run"], table["collapsed to the majority class"])) == {"cola-P60": "no", "cola-P90": "yes"}
    assert set(table["tested"]) == {"matthews"}  # all three are below the majority class's accuracy


def test_stsb_is_tested_on_pearson_against_no_correlation() -> None:
    """A regression run collapses to one constant score (correlation 0; SciPy's NaN is scored 0). By hand:
    n = 403, r = 0.10: atanh(0.10) = 0.1003, times sqrt(400) = 2.007, p = 0.0224; r = 0.05: z = 1.001, p = 0.158."""
    assert analysis.collapse.p_positive_pearson(10.0, 403) == pytest.approx(0.0224, abs=1e-4)
    assert analysis.collapse.p_positive_pearson(5.0, 403) == pytest.approx(0.158, abs=1e-3)
    constant = MajorityBaseline(main_metric=0.0, accuracy=None, dev_examples=403)

    def run(run_id: str, scenario: str, pearson: float, sparsity: float | None = None) -> RunRecord:
        return RunRecord(run_id=run_id, task="stsb", scenario=scenario, prune=sparsity is not None, distill=False,
                         adapters="A" in scenario, sparsity=sparsity, seed=0, model="m",
                         main_metric="pearson_spearman_mean", main_metric_value=pearson + 1,
                         metrics={"pearson": pearson, "spearman": pearson + 2, "pearson_spearman_mean": pearson + 1})

    frame = analysis.records_frame([run("stsb-FT", "FT", 84.0), run("stsb-A", "A", 0.0), run("stsb-P60", "P", 10.0, 0.6),
                                    run("stsb-P90", "P", 5.0, 0.9)])
    table = analysis.collapse_table(frame, {"stsb": constant})
    assert dict(zip(table["run"], table["collapsed to the majority class"])) == {
        "stsb-A": "yes", "stsb-P60": "no", "stsb-P90": "yes"}
    assert set(table["tested"]) == {"pearson"} and set(table["constant prediction (%)"]) == {"0.00"}
    with pytest.raises(ValueError, match="regression task has no majority class"):
        analysis.collapse.p_above_majority(50.0, constant)


def test_a_collapsed_recipe_is_never_recommended_even_with_the_better_main_metric() -> None:
    """MRPC-like: P 90 % has the higher F1 (75 against 70) but only 58 right of 100 against the majority
    class's 50 (p = 0.067): with the collapse check, 'keep accuracy' picks P 60 % instead."""
    def run(run_id: str, scenario: str, accuracy: float, f1: float, sparsity: float | None = None) -> RunRecord:
        return RunRecord(run_id=run_id, task="mrpc", scenario=scenario, prune=sparsity is not None, distill=False,
                         adapters=False, sparsity=sparsity, seed=0, model="m", main_metric="f1",
                         main_metric_value=f1, metrics={"accuracy": accuracy, "f1": f1})

    frame = analysis.records_frame([run("mrpc-FT", "FT", 70.0, 80.0), run("mrpc-P60", "P", 60.0, 70.0, 0.6),
                                    run("mrpc-P90", "P", 58.0, 75.0, 0.9)])
    collapsed = analysis.collapsed_recipes(analysis.collapse_table(frame, {"mrpc": COIN}))
    assert collapsed == {("mrpc", "P 90%")}
    agg = analysis.aggregate(frame)

    def keep_accuracy(**kwargs) -> str:
        table = analysis.recommendations(agg, tolerance=10.0, **kwargs)
        return table[table["priority"].str.startswith("keep accuracy")]["recipe"].item()

    assert keep_accuracy() == "P 90%"
    assert keep_accuracy(collapsed=collapsed) == "P 60%"


def test_majority_baseline_is_scored_on_the_dev_rows_the_runs_are_scored_on(glue_dir: Path) -> None:
    from pda.data import load_split, locate_task, subsample

    got = majority_baselines(["mrpc"], str(glue_dir), online=False, max_eval_samples=64, data_seed=3)["mrpc"]
    rows = subsample(load_split(get_task("mrpc"), "dev", locate_task(get_task("mrpc"), str(glue_dir), False)), 64, 3)
    assert got.dev_examples == 64
    assert got.accuracy == pytest.approx(100 * sum(rows["label"]) / 64)  # the majority class is 1, "paraphrase"


def test_the_analysis_reads_only_its_own_study_from_a_shared_output_folder(make_params) -> None:
    """``seeds.yaml`` limited to one task writes beside the default study: its analysis must not take
    the other tasks' runs, for which it computed no majority-class baseline (a collapsed MRPC run
    would lose its mark, enter the Pareto front and could be recommended)."""
    from pda.config import load_params
    from pda.runs import run_dir, runs_dir, study_records

    study = load_params(make_params(tasks=["stsb"], scenarios=["FT", "P"], seeds=[0, 1]))
    mine = [record("stsb-FT-seed1", "stsb", "FT", 80.0), record("stsb-P-sp60-seed0", "stsb", "P", 79.0, 0.6)]
    theirs = [record("mrpc-FT-seed0", "mrpc", "FT", 70.0), record("mrpc-P-sp90-seed0", "mrpc", "P", 50.0, 0.9),
              record("stsb-P-sp90-seed0", "stsb", "P", 60.0, 0.9), record("stsb-FT-seed2", "stsb", "FT", 81.0)]
    for r in mine + theirs:
        write_record(r, run_dir(study, r.run_id))
    got = study_records(study)
    assert [r.run_id for r in got] == ["stsb-FT-seed1", "stsb-P-sp60-seed0"]  # run-id order; unfinished runs absent

    runs = runs_dir(study)
    text = analysis.write_report(runs, runs.parent / "report.md", records=got).read_text(encoding="utf-8")
    assert "2 run(s) from" in text and "4 other record(s) in that folder belong to other studies" in text
    assert "mrpc" not in text and "sp90" not in text and "90%" not in text and "stsb-FT-seed2" not in text
    every = analysis.write_report(runs, runs.parent / "all.md").read_text(encoding="utf-8")
    assert "6 run(s) from" in every and "other record" not in every and "mrpc" in every
