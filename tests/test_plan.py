"""`python -m pda plan`: its counts are the grid's, its steps are the training loop's, its times add up."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections import Counter

import pytest

from pda.__main__ import main
from pda.config import load_params
from pda.models import load_tokenizer
from pda.plan import (FORWARD_COST, StepTime, choose_step_time, estimate_grid, estimate_run, makespan,
                      mean_batch_length, measure, model_config, per_token_macs, plan)
from pda.records import RunRecord, write_record
from pda.runs import RunSpec, expand_grid, run_dir
from pda.tasks import get_task
from tests.conftest import ROOT


def table_counts(text: str) -> tuple[list[str], dict[tuple[str, str], int], int]:
    """Parse the 'Runs per scenario and task' table back into {(scenario, task): runs}."""
    lines = text.split("Runs per scenario and task\n", 1)[1].splitlines()
    tasks = lines[0].split()[1:-1]
    counts, total = {}, None
    for line in lines[1:]:
        cells = line.split()
        if cells[0] == "total":
            total = int(cells[-1])
            break
        counts.update({(cells[0], t): int(n) for t, n in zip(tasks, cells[1:-1])})
    return tasks, counts, total


@pytest.mark.parametrize("name", ["smoke", "paper", "default"])
def test_plan_counts_equal_the_grid_expansion(name, glue_dir):
    params = ROOT / "parameters" / f"{name}.yaml"
    if not params.exists():
        pytest.skip(f"{params} not written yet")
    cfg = load_params(params, **({} if name == "paper" else {"data_dir": str(glue_dir)}))
    grid = expand_grid(cfg)
    assert [e.spec for e in estimate_grid(cfg)] == grid
    text = plan(params, step_seconds=0.1)
    tasks, counts, total = table_counts(text)
    assert tasks == cfg.tasks and total == len(grid)
    expected = Counter((s.scenario, s.task) for s in grid)
    assert {k: v for k, v in counts.items() if v} == dict(expected)
    assert f"{len(grid)} runs" in text


def test_step_estimates_match_hand_computation(glue_dir):
    paper = load_params(ROOT / "parameters" / "paper.yaml")
    # MRPC is GLUE low: 3668 rows / 32 = 115 batches; pruning 100 epochs + fine-tuning 20 epochs.
    est = estimate_run(paper, RunSpec("mrpc", "P+D+A", 0.9, 0))
    assert (est.train_rows, est.batches_per_epoch, est.train_steps) == (3668, 115, 115 * 100 + 115 * 20)
    # MNLI is GLUE high: 20 epochs of ceil(392702 / 32) = 12272 batches, evaluated every 500 steps
    # on both dev splits (9815 + 9832 rows), a forward pass costing a third of a training step; plus,
    # once per teacher, its logits over its 392,702 training rows, which all its students share.
    est = estimate_run(paper, RunSpec("mnli", "FT", None, 0))
    assert est.train_steps == 12272 * 20 == 245440
    evals = (245440 - 1) // 500 * (9815 + 9832)
    assert est.forward_equivalents == pytest.approx((evals + 392702) * FORWARD_COST / 32)
    d = estimate_run(paper, RunSpec("mnli", "D", None, 0))
    assert d.forward_equivalents == pytest.approx((d.train_steps - 1) // 500 * (9815 + 9832) * FORWARD_COST / 32)
    smoke = load_params(ROOT / "parameters" / "smoke.yaml", data_dir=str(glue_dir))
    assert estimate_run(smoke, RunSpec("mrpc", "P", 0.6, 0)).train_steps == (64 // 16) * (2 + 1)
    default = ROOT / "parameters" / "default.yaml"
    if default.exists():  # overrides: FT on all 3668 rows for 3 epochs, A (up to 4000) on all 3668 for 2, D for 3
        # on a transfer set too (mrpc/D), P+A on 1600 rows for 1 pruning epoch + 2 fine-tuning epochs, P at 90 % 6 (sp90),
        # P at 60 % on all rows (mrpc/P/sp60)
        cfg = load_params(default, data_dir=str(glue_dir))
        assert estimate_run(cfg, RunSpec("mrpc", "FT", None, 0)).train_steps == math.ceil(3668 / 32) * 3
        assert estimate_run(cfg, RunSpec("mrpc", "A", None, 0)).train_steps == math.ceil(3668 / 32) * 2
        # D's transfer set (mrpc/D): STS-B's 5,749 and RTE's 2,490 training pairs join MRPC's 3,668 rows
        d = estimate_run(cfg, RunSpec("mrpc", "D", None, 0))
        assert (d.train_rows, d.train_steps) == (11907, math.ceil(11907 / 32) * 3)
        assert d.forward_equivalents == pytest.approx((5749 + 2490) * FORWARD_COST / 32)  # the teacher labels them
        stsb_d = estimate_run(cfg, RunSpec("stsb", "D", None, 0))  # STS-B's D: MRPC's and RTE's pairs join its own
        assert stsb_d.train_rows == 5749 + 3668 + 2490
        d_a = estimate_run(cfg, RunSpec("mrpc", "D+A", None, 0))  # the same set, each task capped at D+A's 4,000 rows
        assert (d_a.train_rows, d_a.train_steps) == (3668 + 4000 + 2490, math.ceil(10158 / 32) * 2)
        assert estimate_run(cfg, RunSpec("mrpc", "P+A", 0.6, 0)).train_steps == math.ceil(1600 / 32) * (1 + 2)
        assert estimate_run(cfg, RunSpec("mrpc", "P", 0.9, 0)).train_steps == math.ceil(1600 / 32) * (1 + 6)
        assert estimate_run(cfg, RunSpec("mrpc", "P", 0.6, 0)).train_steps == math.ceil(3668 / 32) * (1 + 2)  # mrpc/P/sp60


def test_makespan_waits_for_dependencies_and_uses_the_workers(make_params):
    cfg = load_params(make_params(tasks=["mrpc", "rte"], scenarios=["FT", "D"]))
    estimates = estimate_grid(cfg)
    seconds = {e.spec: 10.0 for e in estimates}
    assert makespan(estimates, seconds, 1) == 40.0
    assert makespan(estimates, seconds, 2) == 20.0  # the two FT runs together, then the two D runs
    assert makespan(estimates, seconds, 8) == 20.0  # D cannot start before its teacher


def test_step_time_from_finished_runs_and_projection_by_hand(make_params, capsys):
    params = make_params(tasks=["mrpc"], scenarios=["FT", "A"])
    cfg = load_params(params)
    for rid, scenario, train_time, duration in (("mrpc-FT-seed0", "FT", 2.0, 22.0), ("mrpc-A-seed0", "A", 1.0, 21.0)):
        rec = RunRecord(run_id=rid, task="mrpc", scenario=scenario, prune=False, distill=False,
                        adapters=scenario == "A", sparsity=None, seed=0, model="embedded",
                        train_time_s=train_time, train_steps=4)
        write_record(rec, run_dir(cfg, rid))
        (run_dir(cfg, rid) / "notebook.ipynb").write_text(json.dumps({"metadata": {"papermill": {"duration": duration}}}))
    step = choose_step_time(cfg, None, False)
    assert step.per_scenario == {"FT": 0.5, "A": 0.25} and step.overhead_s == 20.0  # 22 - 2 and 21 - 1
    assert "finished runs" in step.source
    assert main(["plan", str(params), "--workers", "2"]) == 0
    out = capsys.readouterr().out
    # serial = FT (4 steps x 0.5 + 20) + A (4 x 0.25 + 20) = 43 s; two workers: the longer run, 22 s
    assert re.search(r"1 \(serial\)\s+43 s", out) and re.search(r"\n2\s+22 s", out)
    given = choose_step_time(cfg, 1.0, False)  # a given step time wins; the overhead stays measured
    assert given.source.startswith("given") and given.overhead_s == 20.0
    assert StepTime(1.0, "x", overhead_s=0).run_seconds(estimate_run(cfg, RunSpec("mrpc", "FT", None, 0))) == 4.0


def test_no_step_time_says_how_to_get_one(make_params, capsys):
    assert main(["plan", str(make_params())]) == 0
    assert "--step-seconds" in capsys.readouterr().out


def test_scaling_rule_for_bert_base_is_the_ratio_of_multiply_adds():
    bert, described = model_config("google-bert/bert-base-cased")
    embedded, _ = model_config("embedded")
    assert (bert.num_hidden_layers, bert.hidden_size, bert.intermediate_size) == (12, 768, 3072)
    assert (embedded.num_hidden_layers, embedded.hidden_size, embedded.intermediate_size) == (6, 384, 1536)
    by_hand = 12 * (4 * 768**2 + 2 * 768 * 3072 + 2 * 128 * 768) / (6 * (4 * 384**2 + 2 * 384 * 1536 + 2 * 128 * 384))
    assert per_token_macs(bert, 128) / per_token_macs(embedded, 128) == pytest.approx(by_hand)
    assert 7.5 < by_hand < 8.0


def test_measured_steps_are_priced_at_each_tasks_real_batch_length(make_params):
    """`--measure` must time what the runs train on: the study's precision and each task's length-grouped
    batches, not 128 padded tokens (which projected 10.9 h for a study that took 77 min here)."""
    cfg = load_params(make_params(tasks=["sst2", "rte"], max_train_samples=200, max_seq_length=128))
    tokenizer = load_tokenizer("embedded")
    short, long = (mean_batch_length(cfg, get_task(t), tokenizer, 16) for t in ("sst2", "rte"))
    assert short < long <= 128  # SST-2's sentences are short, RTE's premise + hypothesis pairs long
    ungrouped = mean_batch_length(dataclasses.replace(
        cfg, training=dataclasses.replace(cfg.training, group_by_length=False)), get_task("rte"), tokenizer, 16)
    assert long < ungrouped  # length grouping leaves less padding, and the runs train with it
    step = measure(cfg, threads=1)
    assert set(step.per_task) == {"sst2", "rte"} and all(v > 0 for v in step.per_task.values())
    assert "1 thread(s) per worker" in step.source and f"sst2 {short:.0f}" in step.source
    sst2_run = estimate_run(cfg, RunSpec("sst2", "FT", None, 0))
    assert step.run_seconds(sst2_run) == pytest.approx(sst2_run.work * step.per_task["sst2"] + step.overhead_s)
    # QNLI is not in data/glue: with online: true its rows would come from the hub, which a plan never reads
    hub_only = measure(load_params(make_params(tasks=["qnli"], max_seq_length=64, online=True)), threads=1)
    assert hub_only.per_task["qnli"] > 0 and "qnli 64 (rows on the hub only: padded length)" in hub_only.source
