"""Tests of the analysis layer on synthetic run records (TEST DATA ONLY — no real measurements)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pda import analysis, plots
from pda.records import RunRecord, write_record

TEACHER_PARAMS = 110_000_000
TEACHER_LAT = {1: 10.0, 32: 200.0}
CO2_PER_KWH = 0.5
ESTIMATED = "estimated: CPU power from TDP, no RAPL"
SEED_OFFSET = {0: 0.0, 1: -1.0, 2: 1.0}  # seeds (0,1,2) -> mean = base, std = 1; seeds (1,2) -> std = sqrt(2)

# Synthetic "claims hold" world: recipe -> (metric - FT metric, params in M, latency b1 ms, latency b32 ms, train kWh).
TRUE_WORLD: dict[tuple[str, float | None], tuple[float, float, float, float, float]] = {
    ("FT", None): (0.0, 110, 10.0, 200, 0.10),
    ("base", None): (-10.0, 110, 10.0, 200, 0.02),
    ("A", None): (-0.5, 111, 9.5, 190, 0.06),
    ("D", None): (-3.0, 67, 5.0, 100, 0.15),
    ("D+A", None): (-3.2, 68, 4.8, 96, 0.16),
    ("P", 0.5): (-0.8, 60, 6.0, 120, 0.03),
    ("P", 0.9): (-4.0, 25, 3.0, 60, 0.03),
    ("P+A", 0.5): (-0.7, 61, 5.2, 115, 0.04),
    ("P+A", 0.9): (-3.5, 26, 2.9, 58, 0.04),
    ("P+D", 0.5): (-0.9, 58, 5.9, 100, 0.05),
    ("P+D", 0.9): (-3.8, 24, 2.7, 55, 0.05),
    ("P+D+A", 0.5): (-0.6, 57, 5.5, 110, 0.045),
    ("P+D+A", 0.9): (-3.0, 20, 2.5, 50, 0.045),
}
# "Claims fail" world: A far below FT, D above FT, P+D smaller than P+D+A, adapters slower.
FALSE_WORLD = {
    **TRUE_WORLD,
    ("A", None): (-3.0, 111, 11.0, 210, 0.06),
    ("D", None): (3.0, 67, 5.0, 100, 0.15),
    ("D+A", None): (2.8, 68, 5.5, 110, 0.16),
    ("P+A", 0.5): (-0.7, 61, 6.5, 130, 0.04),
    ("P+A", 0.9): (-3.5, 26, 3.3, 66, 0.04),
    ("P+D", 0.9): (-3.8, 18, 2.4, 48, 0.05),
    ("P+D+A", 0.5): (-0.6, 57, 6.2, 125, 0.045),
    ("P+D+A", 0.9): (-3.0, 20, 2.6, 52, 0.045),
}
FT_METRIC = {"rte": 80.0, "sst2": 90.0}


def structure(sparsity: float, ffn_first: bool, last_first: bool, layers: int = 6) -> dict:
    """Per-layer structure where FFN (or MHA) and the last (or first) layers lose more."""
    a_ffn, a_mha = (1.2, 0.6) if ffn_first else (0.6, 1.2)
    out = []
    for i in range(layers):
        w = 0.5 + (i if last_first else layers - 1 - i) / (layers - 1)
        heads = int(round(12 * min(1.0, max(0.0, 1 - sparsity * w * a_mha))))
        units = int(round(3072 * min(1.0, max(0.0, 1 - sparsity * w * a_ffn))))
        out.append({"layer": i, "heads_kept": list(range(heads)), "num_heads": 12, "mha_kept": heads > 0,
                    "ffn_units_kept": units, "ffn_size": 3072, "ffn_kept": units > 0})
    return {"layers": out, "hidden_kept": 768, "hidden_size": 768}


def make_run(task: str, scenario: str, sparsity: float | None, seed: int, spec: tuple, *, ffn_first: bool = True,
             last_first: bool = True, with_speed: bool = True, with_structure: bool = True) -> RunRecord:
    delta, params_m, lat1, lat32, train_kwh = spec
    metric = FT_METRIC[task] + delta + SEED_OFFSET[seed]
    params = int(params_m * 1e6)
    infer_kwh = lat1 / 1000
    speed = {"device": "cpu-test", "threads": 2, "seq_len": 128, "rounds": 5, "by_batch": {
        str(b): {"latency_ms_median": lat, "latency_ms_iqr": 0.1, "throughput_median": b * 1000 / lat,
                 "teacher_latency_ms_median": TEACHER_LAT[b], "speedup": TEACHER_LAT[b] / lat}
        for b, lat in ((1, lat1), (32, lat32))}}
    energy = {phase: {"kwh": kwh, "kg_co2eq": kwh * CO2_PER_KWH, "duration_s": 10.0, "mode": ESTIMATED,
                      "country_iso_code": "FRA"} for phase, kwh in (("train", train_kwh), ("inference", infer_kwh))}
    prune = sparsity is not None
    return RunRecord(
        run_id=f"{task}-{scenario}-{sparsity}-{seed}", task=task, scenario=scenario, prune=prune,
        distill="D" in scenario, adapters="A" in scenario.replace("base", ""), sparsity=sparsity, seed=seed,
        model="test-bert", main_metric="accuracy", main_metric_value=metric, metrics={"accuracy": metric},
        params={"total": params, "encoder": params - 20_000_000, "embeddings": 20_000_000, "trainable": params},
        teacher_params={"total": TEACHER_PARAMS, "encoder": 90_000_000}, bytes_on_disk=params * 4,
        teacher_bytes_on_disk=TEACHER_PARAMS * 4,
        sparsity_achieved={"encoder": 1 - (params - 2e7) / 9e7, "total": 1 - params / TEACHER_PARAMS},
        structure=structure(sparsity, ffn_first, last_first) if prune and with_structure else None,
        train_time_s=100.0, eval_time_s=5.0, speed=speed if with_speed else None,
        flops={"per_example": params * 256.0, "teacher_per_example": TEACHER_PARAMS * 256.0,
               "reduction_bound": TEACHER_PARAMS / params, "seq_len": 128},
        energy=energy,
    )


def make_world(world: dict, seeds: tuple[int, ...] = (0, 1, 2), **kw) -> list[RunRecord]:
    return [make_run(t, s, p, seed, spec, **kw) for t in FT_METRIC for (s, p), spec in world.items() for seed in seeds]


@pytest.fixture(scope="module")
def true_records() -> list[RunRecord]:
    return make_world(TRUE_WORLD)


@pytest.fixture(scope="module")
def true_frame(true_records: list[RunRecord]) -> pd.DataFrame:
    return analysis.records_frame(true_records)


def row(agg: pd.DataFrame, task: str, scenario: str, sparsity: float | None) -> pd.Series:
    same = agg["sparsity"].isna() if sparsity is None else agg["sparsity"] == sparsity
    hit = agg[(agg["task"] == task) & (agg["scenario"] == scenario) & same]
    assert len(hit) == 1, (task, scenario, sparsity, len(hit))
    return hit.iloc[0]


# ----------------------------------------------------------------------------- frame and aggregation

def test_records_frame_flattens_and_keeps_missing_as_nan() -> None:
    full = make_run("rte", "P+D+A", 0.5, 0, TRUE_WORLD[("P+D+A", 0.5)])
    full.pruning = {"target": 0.5, "achieved_vs_input": 0.48}
    bare = RunRecord(run_id="x", task="rte", scenario="FT", prune=False, distill=False, adapters=False,
                     sparsity=None, seed=0, model="m")
    frame = analysis.records_frame([full, bare])
    f, b = frame.iloc[0], frame.iloc[1]
    assert f["recipe"] == "P+D+A 50%" and b["recipe"] == "FT"
    assert f["params_total"] == 57e6 and f["size_reduction_params"] == pytest.approx(110 / 57)
    assert f["speedup_b1"] == pytest.approx(10 / 5.5) and f["latency_ms_b32"] == 110
    assert f["total_kwh"] == pytest.approx(0.045 + 0.0055) and f["train_energy_mode"] == ESTIMATED
    assert f["flops_speedup_bound"] == pytest.approx(110 / 57)
    assert f["metric_accuracy"] == pytest.approx(79.4) and f["pruning_achieved_vs_input"] == 0.48
    assert 0 < f["mha_removed_frac"] < f["ffn_removed_frac"] < 1
    assert f["last_third_kept"] < f["first_third_kept"]
    for col in ("main_metric_value", "params_total", "speedup_b1", "total_kwh", "sparsity", "ffn_removed_frac",
                "pruning_achieved_vs_input"):
        assert math.isnan(b[col]), col
    assert frame["speedup_b1"].dtype == float


def test_aggregate_mean_std_n_on_known_numbers(true_frame: pd.DataFrame) -> None:
    records = make_world(TRUE_WORLD) + [make_run("rte", "FT", None, 0, TRUE_WORLD[("FT", None)])]  # 4th FT run
    agg = analysis.aggregate(analysis.records_frame(records))
    ft = row(agg, "rte", "FT", None)  # metrics 80, 79, 81, 80
    assert ft["main_metric_value_mean"] == pytest.approx(80.0)
    assert ft["main_metric_value_std"] == pytest.approx(np.std([80, 79, 81, 80], ddof=1))
    assert ft["main_metric_value_n"] == 4 and ft["n_runs"] == 4
    pda = row(analysis.aggregate(true_frame), "sst2", "P+D+A", 0.9)
    assert pda["main_metric_value_mean"] == pytest.approx(87.0) and pda["main_metric_value_std"] == pytest.approx(1.0)
    assert pda["params_total_mean"] == 20e6 and pda["params_total_std"] == 0.0


def test_aggregate_single_and_two_seed_groups() -> None:
    records = [make_run("rte", "A", None, 0, TRUE_WORLD[("A", None)])]
    records += [make_run("rte", "D", None, s, TRUE_WORLD[("D", None)]) for s in (1, 2)]
    agg = analysis.aggregate(analysis.records_frame(records))
    assert math.isnan(row(agg, "rte", "A", None)["main_metric_value_std"])
    assert row(agg, "rte", "A", None)["n_runs"] == 1
    assert row(agg, "rte", "D", None)["main_metric_value_std"] == pytest.approx(math.sqrt(2))


def test_aggregate_keeps_none_sparsity_as_own_group() -> None:
    spec = TRUE_WORLD[("P", 0.5)]
    records = [make_run("rte", "P", None, s, spec) for s in (0, 1)]
    records += [make_run("rte", "P", 0.5, s, (spec[0] + 5, *spec[1:])) for s in (0, 1)]
    agg = analysis.aggregate(analysis.records_frame(records))
    assert len(agg) == 2
    assert row(agg, "rte", "P", None)["main_metric_value_mean"] == pytest.approx(78.7)
    assert row(agg, "rte", "P", 0.5)["main_metric_value_mean"] == pytest.approx(83.7)


# ----------------------------------------------------------------------------- recommendations

def pick(recs: pd.DataFrame, task: str, priority_prefix: str) -> pd.Series:
    hit = recs[(recs["task"] == task) & recs["priority"].str.startswith(priority_prefix)]
    assert len(hit) == 1
    return hit.iloc[0]


def test_recommendations_follow_the_rule(true_frame: pd.DataFrame) -> None:
    recs = analysis.recommendations(true_frame, tolerance=1.0)
    assert len(recs) == 2 * (1 + len(analysis.priorities(analysis.aggregate(true_frame))))
    for task in FT_METRIC:  # eligible: FT, A, P/P+A/P+D/P+D+A at 50 %
        assert pick(recs, task, "keep accuracy")["recipe"] == "A"
        assert pick(recs, task, "smallest")["recipe"] == "P+D+A 50%"  # 57 M; the 20 M P+D+A 90 % is 3 points down
        assert pick(recs, task, "fastest (batch 1)")["recipe"] == "P+A 50%"
        assert pick(recs, task, "fastest (batch 32)")["recipe"] == "P+D 50%"
        assert pick(recs, task, "least CO2")["recipe"] == "P 50%"
    smallest = pick(recs, "rte", "smallest")
    assert smallest["params_M"] == pytest.approx(57) and smallest["delta_vs_ft"] == pytest.approx(-0.6)
    assert smallest["metric"] == "79.40 ± 1.00 (n=3)"


def test_recommendations_respect_tolerance(true_frame: pd.DataFrame) -> None:
    recs = analysis.recommendations(true_frame, tolerance=5.0)  # now the 90 % recipes qualify, base (-10) not
    assert pick(recs, "rte", "smallest")["recipe"] == "P+D+A 90%"
    assert pick(recs, "rte", "fastest (batch 1)")["recipe"] == "P+D+A 90%"
    assert pick(recs, "rte", "least CO2")["recipe"] == "P 90%"  # 0.03 + 0.003 kWh
    strict = analysis.recommendations(true_frame, tolerance=0.1)
    keep = pick(strict, "rte", "keep accuracy")
    assert keep["recipe"] == "FT" and "no other recipe within" in keep["note"] and "A (-0.50" in keep["note"]
    assert pick(strict, "rte", "smallest")["recipe"] == "FT"


def test_recommendations_say_when_not_computable() -> None:
    records = make_world(TRUE_WORLD, with_speed=False)
    records = [r for r in records if not (r.task == "sst2" and r.scenario == "FT")]
    recs = analysis.recommendations(analysis.records_frame(records))
    fast = pick(recs, "rte", "fastest (batch 1)")
    assert pd.isna(fast["recipe"]) and fast["note"].startswith("cannot compute")
    assert all(r.startswith("cannot compute: no FT") for r in recs[recs["task"] == "sst2"]["note"])
    assert pick(recs, "rte", "smallest")["recipe"] == "P+D+A 50%"


# ----------------------------------------------------------------------------- claims

def verdicts(records: list[RunRecord]) -> dict[str, str]:
    table = analysis.claims(analysis.records_frame(records))
    assert list(table.columns) == ["claim", "verdict", "evidence", "rule"]
    assert {analysis.verdict_kind(v) for v in table["verdict"]} <= {"confirmed", "refuted", "inconclusive", "n = 1"}
    return {c.split(")")[0] + ")": v for c, v in zip(table["claim"], table["verdict"])}


def test_claims_confirmed_when_true(true_records: list[RunRecord]) -> None:
    assert verdicts(true_records) == {"(1)": "confirmed", "(2)": "confirmed", "(3)": "confirmed",
                                      "(4)": "confirmed", "(5a)": "confirmed", "(5b)": "confirmed"}


def test_claims_refuted_when_false() -> None:
    records = make_world(FALSE_WORLD, ffn_first=False, last_first=False)
    assert verdicts(records) == {"(1)": "refuted", "(2)": "refuted", "(3)": "refuted",
                                 "(4)": "refuted", "(5a)": "refuted", "(5b)": "refuted"}


def test_claims_inconclusive_without_data_or_within_noise() -> None:
    world = {k: v for k, v in TRUE_WORLD.items() if k[0] != "A"}
    world[("D", None)] = (-0.5, 67, 5.0, 100, 0.15)  # 0.5 below FT with seed std 1: within 2·SE
    v = verdicts(make_world(world, with_speed=False, with_structure=False))
    assert v == {"(1)": "inconclusive", "(2)": "inconclusive", "(3)": "inconclusive",
                 "(4)": "inconclusive", "(5a)": "inconclusive", "(5b)": "inconclusive"}


def test_claim_evidence_has_numbers(true_frame: pd.DataFrame) -> None:
    table = analysis.claims(analysis.aggregate(true_frame)).set_index("claim")["evidence"]
    assert table.iloc[0].startswith("A − FT = -0.50 points on average over 2 task(s)")
    assert "D − FT = -3.00 points" in table.iloc[1] and "2·SE = 1.15" in table.iloc[1]
    assert "X+A faster in 12/12 pair(s)" in table.iloc[3]


# ----------------------------------------------------------------------------- carbon and survival

def test_carbon_statement_totals_and_modes() -> None:
    runs = [make_run("rte", "FT", None, s, (0.0, 110, 10.0, 200, kwh)) for s, kwh in ((0, 0.1), (1, 0.2), (2, 0.3))]
    runs[2].energy["inference"] = None  # third run lacks inference energy: not counted, reported
    c = analysis.carbon_statement(analysis.records_frame(runs))
    assert c["n_runs"] == 3 and c["n_runs_with_inference_energy"] == 2
    assert c["train_kwh"] == pytest.approx(0.6) and c["inference_kwh"] == pytest.approx(0.02)
    assert c["total_kwh"] == pytest.approx(0.62) and c["total_kg_co2eq"] == pytest.approx(0.31)
    assert c["modes"] == {ESTIMATED: 5} and c["estimated"] is True
    assert "620 Wh" in c["sentence"] and "310 g CO2eq" in c["sentence"] and "1 without inference energy" in c["sentence"] and ESTIMATED in c["sentence"]
    empty = analysis.carbon_statement(analysis.records_frame([]))
    assert empty["total_kwh"] is None and "No energy" in empty["sentence"]


def test_survival_matrix_averages_seeds() -> None:
    a = make_run("rte", "P", 0.5, 0, TRUE_WORLD[("P", 0.5)])
    b = make_run("rte", "P", 0.5, 1, TRUE_WORLD[("P", 0.5)])
    b.structure["layers"][0].update(heads_kept=[], mha_kept=False)
    sm = analysis.survival_matrix([a, b, make_run("rte", "FT", None, 0, TRUE_WORLD[("FT", None)])])
    assert list(sm) == [("rte", "P", 0.5)]
    item = sm[("rte", "P", 0.5)]
    assert item["n_runs"] == 2 and item["values"].shape == (6, 4) and item["layers"] == list(range(6))
    heads0 = len(a.structure["layers"][0]["heads_kept"]) / 12
    assert item["values"][0, 0] == pytest.approx(heads0 / 2) and item["values"][0, 1] == pytest.approx(0.5)
    assert item["values"][5, 2] == pytest.approx(a.structure["layers"][5]["ffn_units_kept"] / 3072)
    assert len(analysis.survival_matrix([a, b], average_seeds=False)) == 2


# ----------------------------------------------------------------------------- figures and report

FIGURE_STEMS = ("fig2_metric_by_scenario", "fig3_size_vs_sparsity", "fig4_speedup", "fig5_emissions",
                "fig6_survival", "fig7_pareto")
FIGURE_FUNCTIONS = [plots.plot_metric_by_scenario, plots.plot_size_vs_sparsity, plots.plot_speedup,
                    plots.plot_emissions, plots.plot_survival_heatmap, plots.plot_pareto]


def assert_image_files(png: Path, svg: Path, min_png_bytes: int = 2000) -> None:
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > min_png_bytes, png
    assert b"<svg" in svg.read_bytes()[:2000], svg


@pytest.fixture(scope="module")
def report(true_records: list[RunRecord], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The report over the synthetic runs, rendered once (it also renders every figure)."""
    root = tmp_path_factory.mktemp("report")
    for r in true_records:
        write_record(r, root / "runs" / r.run_id)
    figures = plots.save_all_figures(analysis.figure_data(analysis.records_frame(true_records), true_records),
                                     root / "outputs" / "figures")
    out = analysis.write_report(root / "runs", root / "outputs" / "report.md", figures)
    return out, root / "outputs" / "figures"


def test_every_figure_written_as_png_and_svg(report: tuple[Path, Path]) -> None:
    _, figures = report
    for stem in FIGURE_STEMS:
        assert_image_files(figures / f"{stem}.png", figures / f"{stem}.svg", min_png_bytes=20_000)


@pytest.mark.parametrize("fn", FIGURE_FUNCTIONS, ids=lambda f: f.__name__)
def test_figures_tolerate_missing_columns_and_scenarios(fn, true_frame: pd.DataFrame, tmp_path: Path) -> None:
    dropped = [c for c in true_frame.columns if c.startswith(("speedup", "train_", "inference_", "flops", "teacher"))]
    partial = true_frame[true_frame["scenario"].isin(["FT", "P+D+A"])].drop(columns=dropped)
    no_values = true_frame.assign(main_metric_value=np.nan, params_total=np.nan, speedup_b1=np.nan)
    for name, data in (("partial", partial), ("empty", analysis.records_frame([])), ("no_values", no_values)):
        fig = fn(analysis.figure_data(data, []))
        notes = [t.get_text() for ax in fig.axes for t in ax.texts if t.get_text().startswith("no ")]
        assert notes or name != "empty", "an empty frame must give a panel with a note"
        assert_image_files(*plots.save_figure(fig, tmp_path, name, dpi=40), min_png_bytes=500)


def test_survival_heatmap_panels_and_empty(true_records: list[RunRecord], tmp_path: Path) -> None:
    fig = plots.plot_survival_heatmap(analysis.figure_data(analysis.records_frame(true_records), true_records))
    assert [ax.get_title() for ax in fig.axes[:4]] == ["P", "P+A", "P+D", "P+D+A"]
    assert fig.axes[0].images[0].get_array().shape == (6, 4)  # 6 layers x (heads, FFN) x 2 sparsities
    empty = analysis.figure_data(analysis.records_frame([]), [])
    assert_image_files(*plots.save_figure(plots.plot_survival_heatmap(empty), tmp_path, "empty", dpi=40), 500)


def test_pareto_front() -> None:
    assert analysis.pareto_front([10, 20, 30, 15], [70, 80, 79, 69]) == [0, 1]
    assert analysis.pareto_front([10, 10, np.nan], [70, 75, 90]) == [1]


def test_write_report(report: tuple[Path, Path], tmp_path: Path) -> None:
    text = report[0].read_text(encoding="utf-8")
    for needle in ("## Main metric per task",
                   "| recipe | rte accuracy (%) | sst2 accuracy (%) | GLUE low mean (%) | GLUE high mean (%) |",
                   "| P+D+A 50% | 79.40 ± 1.00 (n=3) | 89.40 ± 1.00 (n=3) | 79.40 (1/4 tasks) | 89.40 (1/4 tasks) |",
                   "## Recommendations", "| rte | smallest on disk | P+D+A 50% | 79.40 ± 1.00 (n=3) | -0.60 | 57.00 |",
                   "## Claims", "| (1) Adapters reach FT accuracy (A ≈ FT) | confirmed |",
                   "## Carbon footprint", "These figures are estimates",
                   "![fig2_metric_by_scenario](figures/fig2_metric_by_scenario.png)"):
        assert needle in text, needle
    empty = analysis.write_report(tmp_path / "none", tmp_path / "empty.md")
    assert "No finished runs" in empty.read_text(encoding="utf-8")


def test_adapter_speed_claim_compares_speed_ups_not_raw_latencies_across_runs() -> None:
    """Runs measured on a busier machine have longer raw latencies; only same-process ratios compare."""
    records = make_world(FALSE_WORLD, ffn_first=False, last_first=False)  # X+A slower than X
    for rec in records:
        if rec.adapters and rec.speed:
            for stats in rec.speed["by_batch"].values():  # X+A measured while the machine was 10x faster
                stats["latency_ms_median"] /= 10
                stats["teacher_latency_ms_median"] /= 10
    assert verdicts(records)["(4)"] == "refuted"


def test_recipes_no_better_than_the_linear_probe_are_never_recommended(true_frame: pd.DataFrame) -> None:
    loose = analysis.recommendations(true_frame, tolerance=100.0)
    assert pick(loose, "rte", "smallest")["recipe"] == "P+D+A 90%"
    frame = true_frame.copy()
    rte = frame["task"].eq("rte")
    collapsed = rte & frame["scenario"].eq("P+D+A") & frame["sparsity"].eq(0.9)
    frame.loc[collapsed, "main_metric_value"] = frame.loc[rte & frame["scenario"].eq("base"), "main_metric_value"].mean()
    recs = analysis.recommendations(frame, tolerance=100.0)
    assert "P+D+A 90%" not in set(recs[recs["task"] == "rte"]["recipe"].dropna())


# ----------------------------------------------------------------------------- evidence-respecting verdicts

def claim_verdicts(records: list[RunRecord]) -> dict[str, str]:
    table = analysis.claims(analysis.records_frame(records))
    return {c.split(")")[0] + ")": v for c, v in zip(table["claim"], table["verdict"])}


def test_one_seed_accuracy_claims_are_not_tested_and_name_a_collapsed_task() -> None:
    """n = 1: no spread, so no verdict from a standard error of 0; A at the head-only probe on rte is named."""
    world = dict(TRUE_WORLD)
    world[("A", None)] = TRUE_WORLD[("base", None)]  # A no better than the head-only probe (on both tasks' means)
    records = make_world(world, seeds=(0,))
    records = [r for r in records if not (r.task == "sst2" and r.scenario == "A")]
    records.append(make_run("sst2", "A", None, 0, TRUE_WORLD[("A", None)]))  # sst2: A within 0.5 of FT
    v = claim_verdicts(records)
    assert v["(1)"] == "n = 1, not tested; on the means alone it holds on sst2; fails on rte"
    assert v["(2)"] == "n = 1, not tested; on the means alone it holds on rte, sst2"
    evidence = analysis.claims(analysis.records_frame(records))["evidence"].iloc[0]
    assert "rte: A 70.00 is no better than the head-only probe (base 70.00)" in evidence and "no spread" in evidence
    one_seed_table = analysis.accuracy_table(analysis.aggregate(analysis.records_frame(records)))
    assert not one_seed_table.apply(lambda c: c.str.contains("±")).any().any()  # no '± 0.00', no '± nan'
    assert one_seed_table.iloc[0, 1] == "80.00 (n=1)"


def test_claim_that_holds_on_the_mean_but_fails_on_a_task_says_so() -> None:
    records = [r for r in make_world(TRUE_WORLD) if r.scenario != "A"]
    records += [make_run("sst2", "A", None, s, (2.5, 111, 9.5, 190, 0.06)) for s in (0, 1, 2)]
    records += [make_run("rte", "A", None, s, (-4.0, 111, 9.5, 190, 0.06)) for s in (0, 1, 2)]
    assert claim_verdicts(records)["(1)"] == "confirmed on the mean; fails on rte"  # mean -0.75 >= -1
    records = [r for r in records if not (r.scenario == "A" and r.task == "sst2")]
    records += [make_run("sst2", "A", None, s, (-0.5, 111, 9.5, 190, 0.06)) for s in (0, 1, 2)]
    assert claim_verdicts(records)["(1)"] == "refuted on the mean; holds on sst2"  # mean -2.25 < -1 - 2 SE (2.15)


def test_distillation_claim_names_a_task_that_disagrees() -> None:
    records = [r for r in make_world(TRUE_WORLD) if not (r.scenario == "D" and r.task == "sst2")]
    records += [make_run("sst2", "D", None, s, (2.5, 67, 5.0, 100, 0.15)) for s in (0, 1, 2)]
    # rte: D 3 below FT, sst2: 2.5 above; the mean (-0.25) is within seed noise
    assert claim_verdicts(records)["(2)"] == "inconclusive; holds on rte; fails on sst2"


# ----------------------------------------------------------------------------- tables for readers

def test_runs_table_is_formatted_with_units_and_dashes_for_what_does_not_apply(true_frame: pd.DataFrame) -> None:
    table = analysis.runs_table(true_frame)
    assert len(table) == len(true_frame)
    assert {"params (M)", "score (%)", "target sparsity (%)", "encoder sparsity vs teacher (%)", "speed-up b1 (×)",
            "speed-up b32 (×)", "energy (Wh)", "CO2 (g)"} <= set(table.columns)
    first = table.iloc[0]  # rte FT seed 0: GLUE low first, FT first
    assert (first["task"], first["scenario"], first["seed"]) == ("rte", "FT", "0")
    assert first["params (M)"] == "110.00" and first["target sparsity (%)"] == "—"
    assert first["encoder sparsity vs teacher (%)"] == "0.0" and first["score (%)"] == "80.00"
    assert first["energy (Wh)"] == "110" and first["CO2 (g)"] == "55.0"
    pruned = table[(table["scenario"] == "P+D+A") & (table["target sparsity (%)"] == "90")].iloc[0]
    assert pruned["params (M)"] == "20.00" and pruned["encoder sparsity vs teacher (%)"] == "100.0"
    assert all(isinstance(v, str) for v in table.to_numpy().ravel())
    assert not table.apply(lambda c: c.str.fullmatch(r"-?\d+\.\d{3,}|nan|NaN|\d{5,}(\.0)?")).any().any()


def test_tables_follow_the_measured_batch_sizes() -> None:
    records = make_world({k: v for k, v in TRUE_WORLD.items() if k[0] in ("FT", "P")}, seeds=(0,))
    for r in records:
        r.speed["by_batch"]["8"] = r.speed["by_batch"].pop("32")
    agg = analysis.aggregate(analysis.records_frame(records))
    assert analysis.batch_sizes(agg) == [1, 8]
    assert [p.label for p in analysis.priorities(agg)][1:3] == ["fastest (batch 1)", "fastest (batch 8)"]
    assert "speed-up b8 (×)" in analysis.efficiency_table(agg).columns
    assert "speed-up b32 (×)" not in analysis.efficiency_table(agg).columns


# ----------------------------------------------------------------------------- error bars only where n > 1

def error_bar_count(fig) -> int:
    from matplotlib.container import ErrorbarContainer

    return sum(isinstance(c, ErrorbarContainer) for ax in fig.axes for c in ax.containers)


@pytest.mark.parametrize("fn", [plots.plot_metric_by_scenario, plots.plot_size_vs_sparsity, plots.plot_speedup,
                                plots.plot_emissions, plots.plot_pareto], ids=lambda f: f.__name__)
def test_no_error_bars_with_one_run_per_mark_and_the_caption_says_n(fn) -> None:
    one = make_world(TRUE_WORLD, seeds=(0,))
    one_task = [r for r in one if r.task == "rte"]
    fig = fn(analysis.figure_data(analysis.records_frame(one_task), one_task))
    assert error_bar_count(fig) == 0
    assert "n = 1" in fig.get_suptitle() + "".join(ax.get_title() for ax in fig.axes)
    three = make_world(TRUE_WORLD)
    fig = fn(analysis.figure_data(analysis.records_frame(three), three))
    assert error_bar_count(fig) > 0
    assert "n = 1" not in fig.get_suptitle() + "".join(ax.get_title() for ax in fig.axes)


def test_metric_figure_draws_the_seed_std_as_error_bars() -> None:
    records = make_world(TRUE_WORLD)  # every (task, recipe) has 3 seeds with sample std 1
    fig = plots.plot_metric_by_scenario(analysis.figure_data(analysis.records_frame(records), records))
    assert "n = 3 seeds each; error bars = sample std" in fig.get_suptitle()
    from matplotlib.container import ErrorbarContainer

    bars = [c for c in fig.axes[0].containers if isinstance(c, ErrorbarContainer)][0]
    segments = bars.lines[2][0].get_segments()
    assert len(segments) == len(TRUE_WORLD)
    assert all(seg[1][1] - seg[0][1] == pytest.approx(2.0) for seg in segments)  # mean ± 1


def test_metric_figure_draws_the_majority_class_and_marks_collapsed_recipes() -> None:
    from pda.baselines import MajorityBaseline

    records = make_world(TRUE_WORLD)
    frame = analysis.records_frame(records)
    task = frame["task"].iloc[0]
    collapse = pd.DataFrame({"task": [task] * 3, "recipe": ["P 90%", "P 90%", "A"],
                             analysis.collapse.VERDICT: ["yes", "yes", "no"]})
    data = analysis.figure_data(frame, records, {task: MajorityBaseline(65.0, 65.0, 100)}, collapse)  # on the axis
    assert data.collapsed == {(task, "P 90%"): 2}
    fig = plots.plot_metric_by_scenario(data)
    ax = fig.axes[0]
    assert any(list(line.get_ydata()) == [65.0, 65.0] for line in ax.get_lines())  # the majority-class line
    assert [t.get_text() for t in ax.texts if t.get_text().startswith("†")] == ["†2"]
    assert "†k" in fig.get_suptitle()
    plain = plots.plot_metric_by_scenario(analysis.figure_data(frame, records))
    assert not any(t.get_text().startswith("†") for a in plain.axes for t in a.texts) and "†" not in plain.get_suptitle()


def test_a_collapse_mark_stands_above_a_negative_bar_not_inside_it() -> None:
    records = make_world(TRUE_WORLD, seeds=(0,))
    frame = analysis.records_frame(records)
    task = frame["task"].iloc[0]
    negative = (frame["task"] == task) & (frame["scenario"] == "P+A") & (frame["sparsity"] == 0.9)
    frame.loc[negative, "main_metric_value"] = -2.1  # CoLA's P+A 90 %: an MCC under 0
    collapse = pd.DataFrame({"task": [task], "recipe": ["P+A 90%"], analysis.collapse.VERDICT: ["yes"]})
    fig = plots.plot_metric_by_scenario(analysis.figure_data(frame, records, collapse=collapse))
    mark = [t for t in fig.axes[0].texts if t.get_text() == "†1"]
    assert len(mark) == 1 and mark[0].xy[1] == 0.0  # the bar spans -2.1 to 0: the mark sits on top of it


def test_a_majority_class_below_the_axis_is_named_in_the_title_not_drawn_outside_it() -> None:
    from pda.baselines import MajorityBaseline

    records = make_world(TRUE_WORLD)
    frame = analysis.records_frame(records)
    task = frame["task"].iloc[0]
    low = float(frame[frame["task"] == task]["main_metric_value"].min()) - 30  # far under every bar
    fig = plots.plot_metric_by_scenario(analysis.figure_data(frame, records, {task: MajorityBaseline(low, low, 100)}))
    ax = fig.axes[0]
    assert ax.get_ylim()[0] > low
    assert not any(t.get_text().startswith("majority") for t in ax.texts)
    assert not any(list(line.get_ydata()) == [low, low] for line in ax.get_lines())
    assert f"majority class {low:.1f} is below the axis" in ax.get_title()


def test_figures_name_tasks_and_metrics_as_glue_does() -> None:
    import dataclasses

    records = [dataclasses.replace(r, task="stsb", main_metric="pearson_spearman_mean") if r.task == "rte" else r
               for r in make_world(TRUE_WORLD, seeds=(0,))]
    data = analysis.figure_data(analysis.records_frame(records), records)
    for fn in (plots.plot_metric_by_scenario, plots.plot_pareto):
        fig = fn(data)
        labels = {ax.get_title().split("  ")[0]: ax.get_ylabel() for ax in fig.axes if ax.get_title()}
        assert labels == {"STS-B": "Pearson/Spearman mean (×100)", "SST-2": "accuracy (%)"}, fn.__name__


def test_a_recipe_collapsed_in_most_seeds_is_kept_off_the_pareto_front() -> None:
    records = make_world(TRUE_WORLD)
    frame = analysis.records_frame(records)
    by_task = analysis.figure_data(frame, records).by_task
    task = by_task["task"].iloc[0]
    front = by_task[(by_task["task"] == task) & by_task["on_front"]]
    smallest = front.sort_values("params_total_mean").iloc[0]  # the front's cheapest recipe
    label = analysis.recipe_label(smallest["scenario"], smallest["sparsity"])
    collapse = pd.DataFrame({"task": [task] * 3, "recipe": [label] * 3,
                             analysis.collapse.VERDICT: ["yes", "yes", "no"]})
    after = analysis.figure_data(frame, records, collapse=collapse).by_task
    row = after[(after["task"] == task) & (after["scenario"] == smallest["scenario"])
                & (after["sparsity"].fillna(-1) == (-1 if pd.isna(smallest["sparsity"]) else smallest["sparsity"]))]
    assert not row["on_front"].item()
    assert after[after["task"] == task]["on_front"].any()  # the rest still has a front


def test_html_table_aligns_words_left_numbers_right_escapes_and_links() -> None:
    from pda.analysis.tables import html_table

    df = pd.DataFrame({"run": ["a<b", "c"], "score (%)": ["76.92 (n=1)", "—"], "note": ["x & y", None]})
    html = html_table(df, links={"run": ["runs/a<b/notebook.html", "runs/c/notebook.html"]})
    assert '<th style="text-align: left; white-space: nowrap">run</th>' in html
    assert '<td style="text-align: right">76.92 (n=1)</td>' in html and '<td style="text-align: right">—</td>' in html
    assert '<a href="runs/a&lt;b/notebook.html">a&lt;b</a>' in html and "x &amp; y" in html and ">n/a</td>" in html
    assert "<th></th>" not in html and "<th>0</th>" not in html  # no index column


def test_tracking_table_flags_a_run_that_strays_from_its_target():
    from pda.analysis.tracking import tracking_frame
    from pda.records import RunRecord

    def pruned(rid, gap, over):
        return RunRecord(run_id=rid, task="mrpc", scenario="P", prune=True, distill=False, adapters=False,
                         sparsity=0.6, seed=0, model="m", pruning={
                             "controller": "projection", "gate_init": "importance", "achieved_vs_input": 0.6004,
                             "tracking": {"steps": 100, "max_abs_gap_last_quarter": gap, "max_over_target": over}})

    unpruned = RunRecord(run_id="mrpc-FT-seed0", task="mrpc", scenario="FT", prune=False, distill=False,
                         adapters=False, sparsity=None, seed=0, model="m")
    table = tracking_frame([pruned("on", 0.0, 0.0), pruned("lags", 0.2, 0.0), pruned("overshoots", 0.01, 0.3),
                            unpruned])
    assert list(table["run"]) == ["on", "lags", "overshoots"]
    assert list(table["tracks its target"]) == ["yes", "no", "no"]
    assert list(table["max ŝ − target (pp)"]) == ["+0.0", "+0.0", "+30.0"]


def test_int8_variants_become_recipes_the_recommendations_can_pick():
    from pda.analysis import aggregate, recommendations, records_frame, with_quantized
    from pda.records import RunRecord

    def run(scenario, metric, q_metric, sparsity=None, mb=90.0):
        return RunRecord(
            run_id=f"mrpc-{scenario}-seed0", task="mrpc", scenario=scenario, prune=scenario.startswith("P"),
            distill=False, adapters=False, sparsity=sparsity, seed=0, model="m", main_metric="f1",
            main_metric_value=metric, metrics={"f1": metric}, params={"total": 22_700_000},
            bytes_on_disk=int(mb * 1e6), teacher_bytes_on_disk=90_000_000,
            speed={"by_batch": {"1": {"speedup": 1.0 if scenario == "FT" else 2.0}}},
            energy={"train": {"kwh": 1e-3, "kg_co2eq": 1e-4}, "inference": {"kwh": 1e-5, "kg_co2eq": 1e-6}},
            quantized={"main_metric_value": q_metric, "metrics": {"f1": q_metric}, "bytes_on_disk": int(mb * 0.25e6),
                       "speed": {"by_batch": {"1": {"speedup": 3.0 if scenario == "FT" else 5.0}}}})

    records = [run("FT", 87.0, 86.8), run("base", 81.2, 81.2), run("P", 86.5, 80.0, 0.6, mb=65.0)]
    frame = with_quantized(records_frame(records))
    q = frame.set_index("recipe")
    assert {"FT +Q", "P 60% +Q", "base +Q"} <= set(q.index)
    assert q.loc["FT +Q", "main_metric_value"] == 86.8 and q.loc["FT +Q", "bytes_on_disk"] == 22_500_000
    assert q.loc["FT +Q", "speedup_b1"] == 3.0 and math.isnan(q.loc["FT +Q", "total_kg_co2eq"])
    recs = recommendations(aggregate(frame), tolerance=1.0).set_index("priority")
    assert recs.loc["smallest on disk", "recipe"] == "FT +Q"  # P 60% +Q is smaller but lost 7 points
    assert recs.loc["fastest (batch 1)", "recipe"] == "FT +Q"
    assert recs.loc["least CO2 (training + inference)", "recipe"] in {"FT", "P 60%"}  # +Q has no energy


def test_time_table_sums_run_time_per_task_and_scenario_and_spans_overlapping_runs(tmp_path: Path) -> None:
    """Two workers: runs overlap, so the wall time is shorter than the run time it holds."""
    import json

    from pda.analysis.timing import run_times, time_sentence, time_table

    def run(rid, task, scenario, start, end, train):
        rec = RunRecord(run_id=rid, task=task, scenario=scenario, prune=False, distill=False, adapters=False,
                        sparsity=None, seed=0, model="m", train_time_s=train)
        write_record(rec, tmp_path / rid)
        meta = {"papermill": {"start_time": f"2026-11-27T03:{start:02d}:00.000000",
                              "end_time": f"2026-11-27T03:{end:02d}:00.000000"}}
        (tmp_path / rid / "notebook.ipynb").write_text(json.dumps({"metadata": meta, "cells": []}))
        return rec

    records = [run("mrpc-FT-seed0", "mrpc", "FT", 0, 4, 180), run("cola-FT-seed0", "cola", "FT", 0, 2, 60),
               run("cola-A-seed0", "cola", "A", 2, 6, 120), run("mrpc-A-seed0", "mrpc", "A", 4, 5, 30)]
    records.append(RunRecord(run_id="rte-FT-seed0", task="rte", scenario="FT", prune=False, distill=False,
                             adapters=False, sparsity=None, seed=0, model="m"))  # no notebook: not timed
    times = run_times(records, tmp_path)
    table = time_table(times).set_index("task")
    assert list(table.index) == sorted(["cola", "mrpc"], key=analysis.task_sort_key) + ["all"] and list(table.columns[1:3]) == ["FT", "A"]
    assert table.loc["cola", "FT"] == "2.0" and table.loc["mrpc", "A"] == "1.0" and table.loc["all", "FT"] == "6.0"
    assert table.loc["all", "run time (min)"] == "11.0" and table.loc["all", "span (min)"] == "6.0"
    assert table.loc["cola", "span (min)"] == "6.0" and table.loc["mrpc", "of which training"] == "70 %"
    assert time_sentence(times).startswith("4 runs in 6.0 min of wall time") and "1.83 runs at once" in time_sentence(times)
