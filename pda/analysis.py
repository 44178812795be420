"""Turn run records into the tables, recommendations and claim checks that the report needs."""

from __future__ import annotations

import math
import os
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from pda.records import RunRecord, atomic_write_text, read_all_records

SCENARIO_ORDER: tuple[str, ...] = ("FT", "base", "A", "D", "D+A", "P", "P+A", "P+D", "P+D+A")
TASK_GROUPS: dict[str, tuple[str, ...]] = {
    "GLUE low": ("mrpc", "rte", "stsb", "cola"),
    "GLUE high": ("mnli", "qqp", "qnli", "sst2"),
}
GROUP_KEYS: list[str] = ["task", "scenario", "sparsity"]
PRIORITIES: tuple[str, ...] = (
    "keep accuracy (within 1 point of FT)",
    "smallest size",
    "fastest (batch 1)",
    "fastest (batch 32)",
    "least CO2 (training + inference)",
)
ADAPTER_PAIRS: tuple[tuple[str, str], ...] = (("FT", "A"), ("D", "D+A"), ("P", "P+A"), ("P+D", "P+D+A"))
SURVIVAL_COLUMNS: tuple[str, ...] = ("heads kept (fraction)", "MHA kept", "FFN units kept (fraction)", "FFN kept")

# Numeric per-run columns of records_frame (metric_<name> columns are added per task).
NUMERIC_COLUMNS: tuple[str, ...] = (
    "sparsity", "main_metric_value",
    "params_total", "params_encoder", "params_embeddings", "params_trainable",
    "teacher_params_total", "teacher_params_encoder", "bytes_on_disk", "teacher_bytes_on_disk",
    "size_reduction_params", "size_reduction_bytes",
    "sparsity_achieved_encoder", "sparsity_achieved_total", "pruning_achieved_vs_input",
    "latency_ms_b1", "latency_ms_b32", "teacher_latency_ms_b1", "teacher_latency_ms_b32",
    "throughput_b1", "throughput_b32", "speedup_b1", "speedup_b32", "speed_threads",
    "flops_per_example", "teacher_flops_per_example", "flops_reduction_bound", "flops_speedup_bound",
    "train_kwh", "train_kg_co2eq", "inference_kwh", "inference_kg_co2eq", "total_kwh", "total_kg_co2eq",
    "train_time_s", "eval_time_s", "train_steps",
    "ffn_removed_frac", "mha_removed_frac", "first_third_kept", "last_third_kept",
)
TEXT_COLUMNS: tuple[str, ...] = (
    "run_id", "task", "scenario", "recipe", "model", "main_metric", "speed_device",
    "train_energy_mode", "inference_energy_mode", "energy_country",
)
FLAG_COLUMNS: tuple[str, ...] = ("prune", "distill", "adapters")


# ----------------------------------------------------------------------------- helpers

def _num(value: Any) -> float:
    """A float, or NaN for None/non-numbers (never a made-up value)."""
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _get(data: Any, *keys: Any) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key, data.get(str(key)) if not isinstance(key, str) else None)
    return data


def _ratio(num: float, den: float) -> float:
    return num / den if den and not math.isnan(num) and not math.isnan(den) else math.nan


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def recipe_label(scenario: str, sparsity: float | None) -> str:
    """'FT' for unpruned recipes, 'P+D+A 50%' for pruned ones (sparsity as fraction, or as percent if > 1)."""
    if is_missing(sparsity):
        return str(scenario)
    pct = float(sparsity) * 100 if float(sparsity) <= 1 else float(sparsity)
    return f"{scenario} {pct:g}%"


def task_sort_key(task: str) -> tuple[int, str]:
    """GLUE low tasks, then GLUE high tasks (in TASK_GROUPS order), then any other task alphabetically."""
    order = [t for members in TASK_GROUPS.values() for t in members]
    return (order.index(task), task) if task in order else (len(order), str(task))


def recipe_sort_key(scenario: str, sparsity: float | None) -> tuple[int, float]:
    """Scenario in SCENARIO_ORDER (unknown last), then sparsity (unpruned first)."""
    rank = SCENARIO_ORDER.index(scenario) if scenario in SCENARIO_ORDER else len(SCENARIO_ORDER)
    return rank, -1.0 if is_missing(sparsity) else float(sparsity)


def _sort_recipes(df: pd.DataFrame) -> pd.DataFrame:
    if df.empty:
        return df
    keys = [recipe_sort_key(s, p) for s, p in zip(df["scenario"], df["sparsity"])]
    order = sorted(range(len(df)), key=lambda i: (task_sort_key(df["task"].iloc[i]) if "task" in df else (0, ""), keys[i]))
    return df.iloc[order].reset_index(drop=True)


def _structure_summary(structure: dict[str, Any] | None) -> dict[str, float]:
    """Fractions of MHA/FFN parameters removed and mean kept fraction of the first/last third of layers.

    MHA parameters are proportional to kept heads (each head: 4 * hidden * head_dim weights),
    FFN parameters to kept units (each unit: 2 * hidden weights); a module with
    ``mha_kept``/``ffn_kept`` False counts as fully removed. A layer's kept fraction weights
    its heads and units by those parameter counts (needs ``hidden_size``).
    """
    out = {k: math.nan for k in ("ffn_removed_frac", "mha_removed_frac", "first_third_kept", "last_third_kept")}
    layers = sorted((structure or {}).get("layers") or [], key=lambda l: l.get("layer", 0))
    if not layers:
        return out
    heads = [0.0 if l.get("mha_kept") is False else _heads_count(l.get("heads_kept")) for l in layers]
    units = [0.0 if l.get("ffn_kept") is False else _num(l.get("ffn_units_kept")) for l in layers]
    num_heads = [_num(l.get("num_heads")) for l in layers]
    ffn_size = [_num(l.get("ffn_size")) for l in layers]
    out["mha_removed_frac"] = 1 - _ratio(sum(heads), sum(num_heads))
    out["ffn_removed_frac"] = 1 - _ratio(sum(units), sum(ffn_size))
    hidden = _num(structure.get("hidden_size"))
    k = len(layers) // 3
    if k and not math.isnan(hidden):
        kept = []
        for h, u, nh, fs in zip(heads, units, num_heads, ffn_size):
            w_head = 4 * hidden / nh if nh else math.nan
            kept.append(_ratio(h * w_head + 2 * u, nh * w_head + 2 * fs))
        out["first_third_kept"] = float(np.mean(kept[:k]))
        out["last_third_kept"] = float(np.mean(kept[-k:]))
    return out


# ----------------------------------------------------------------------------- frame

def _record_row(r: RunRecord) -> dict[str, Any]:
    params, teacher = r.params or {}, r.teacher_params or {}
    row: dict[str, Any] = {
        "run_id": r.run_id, "task": r.task, "scenario": r.scenario,
        "recipe": recipe_label(r.scenario, r.sparsity), "prune": bool(r.prune), "distill": bool(r.distill),
        "adapters": bool(r.adapters), "sparsity": _num(r.sparsity), "seed": r.seed, "model": r.model,
        "main_metric": r.main_metric, "main_metric_value": _num(r.main_metric_value),
        "params_total": _num(params.get("total")), "params_encoder": _num(params.get("encoder")),
        "params_embeddings": _num(params.get("embeddings")), "params_trainable": _num(params.get("trainable")),
        "teacher_params_total": _num(teacher.get("total")), "teacher_params_encoder": _num(teacher.get("encoder")),
        "bytes_on_disk": _num(r.bytes_on_disk), "teacher_bytes_on_disk": _num(r.teacher_bytes_on_disk),
        "sparsity_achieved_encoder": _num(_get(r.sparsity_achieved, "encoder")),
        "sparsity_achieved_total": _num(_get(r.sparsity_achieved, "total")),
        "pruning_achieved_vs_input": _num(_get(getattr(r, "pruning", None), "achieved_vs_input")),
        "speed_device": _get(r.speed, "device"), "speed_threads": _num(_get(r.speed, "threads")),
        "flops_per_example": _num(_get(r.flops, "per_example")),
        "teacher_flops_per_example": _num(_get(r.flops, "teacher_per_example")),
        "flops_reduction_bound": _num(_get(r.flops, "reduction_bound")),
        "train_time_s": _num(r.train_time_s), "eval_time_s": _num(r.eval_time_s), "train_steps": _num(r.train_steps),
    }
    for name, value in (r.metrics or {}).items():
        row[f"metric_{name}"] = _num(value)
    row["size_reduction_params"] = _ratio(row["teacher_params_total"], row["params_total"])
    row["size_reduction_bytes"] = _ratio(row["teacher_bytes_on_disk"], row["bytes_on_disk"])
    # Speed-up bound from FLOPs: teacher FLOPs / model FLOPs; falls back to the recorded reduction_bound.
    bound = _ratio(row["teacher_flops_per_example"], row["flops_per_example"])
    row["flops_speedup_bound"] = row["flops_reduction_bound"] if math.isnan(bound) else bound
    for batch in (1, 32):
        by = _get(r.speed, "by_batch", batch) or {}
        row[f"latency_ms_b{batch}"] = _num(by.get("latency_ms_median"))
        row[f"teacher_latency_ms_b{batch}"] = _num(by.get("teacher_latency_ms_median"))
        row[f"throughput_b{batch}"] = _num(by.get("throughput_median"))
        row[f"speedup_b{batch}"] = _num(by.get("speedup"))
    for phase in ("train", "inference"):
        e = _get(r.energy, phase) or {}
        row[f"{phase}_kwh"] = _num(e.get("kwh"))
        row[f"{phase}_kg_co2eq"] = _num(e.get("kg_co2eq"))
        row[f"{phase}_energy_mode"] = e.get("mode")
    row["energy_country"] = _get(r.energy, "train", "country_iso_code") or _get(r.energy, "inference", "country_iso_code")
    # Totals only when both phases were measured (a missing phase is not counted as zero).
    row["total_kwh"] = row["train_kwh"] + row["inference_kwh"]
    row["total_kg_co2eq"] = row["train_kg_co2eq"] + row["inference_kg_co2eq"]
    row.update(_structure_summary(r.structure if r.prune else None))
    return row


def records_frame(records: Iterable[RunRecord]) -> pd.DataFrame:
    """One row per run with the flat columns the figures and tables use; missing values are NaN."""
    rows = [_record_row(r) for r in records]
    columns = list(dict.fromkeys([*TEXT_COLUMNS, *FLAG_COLUMNS, "seed", *NUMERIC_COLUMNS]))
    metric_cols = sorted({k for row in rows for k in row if k.startswith("metric_")})
    frame = pd.DataFrame(rows, columns=columns + metric_cols)
    for col in (*NUMERIC_COLUMNS, *metric_cols):
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype(float)
    for col in FLAG_COLUMNS:
        frame[col] = frame[col].astype(bool)
    return frame


# ----------------------------------------------------------------------------- aggregation

def aggregate(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (task, scenario, sparsity) — unpruned runs (NaN sparsity) form their own group — the
    mean, sample std (ddof=1, NaN when n=1) and count of non-missing values (``<col>_mean``,
    ``<col>_std``, ``<col>_n``) of every numeric column, plus ``n_runs`` and the recipe's text columns."""
    exclude = {*GROUP_KEYS, "seed", *FLAG_COLUMNS}
    numeric = [c for c in frame.columns if c not in exclude and pd.api.types.is_numeric_dtype(frame[c])
               and not pd.api.types.is_bool_dtype(frame[c])]
    if frame.empty:
        cols = GROUP_KEYS + ["recipe", "main_metric", *FLAG_COLUMNS, "n_runs"]
        return pd.DataFrame(columns=cols + [f"{c}_{s}" for c in numeric for s in ("mean", "std", "n")])
    grouped = frame.groupby(GROUP_KEYS, dropna=False, sort=False)
    stats = grouped[numeric].agg(["mean", "std", "count"])
    stats.columns = [f"{c}_{'n' if s == 'count' else s}" for c, s in stats.columns]
    first = grouped[["recipe", "main_metric", *FLAG_COLUMNS]].first()
    out = pd.concat([first, grouped.size().rename("n_runs"), stats], axis=1).reset_index()
    return _sort_recipes(out)


def _as_agg(data: pd.DataFrame) -> pd.DataFrame:
    return data if "main_metric_value_mean" in data.columns else aggregate(data)


def _val(row: pd.Series | None, col: str) -> float:
    return math.nan if row is None or col not in row.index else _num(row[col])


def _fmt(value: Any, digits: int = 2, suffix: str = "") -> str:
    v = _num(value)
    return "n/a" if math.isnan(v) else f"{v:.{digits}f}{suffix}"


def _mean_std(row: pd.Series, col: str = "main_metric_value", digits: int = 2) -> str:
    mean, std = _val(row, f"{col}_mean"), _val(row, f"{col}_std")
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}f}" + ("" if math.isnan(std) else f" ± {std:.{digits}f}")


# ----------------------------------------------------------------------------- recommendations

def _ft_row(task_rows: pd.DataFrame) -> pd.Series | None:
    ft = task_rows[(task_rows["scenario"] == "FT") & task_rows["main_metric_value_mean"].notna()]
    return None if ft.empty else ft.iloc[0]


def recommendations(data: pd.DataFrame, tolerance: float = 1.0) -> pd.DataFrame:
    """Best recipe (scenario + sparsity) per task for each priority in PRIORITIES (the first one's label
    carries the actual ``tolerance``).

    Eligible recipes on a task are those whose mean main metric is >= FT's mean on that task
    minus ``tolerance`` points and, when a ``base`` run exists, strictly above the base (linear
    probe) mean, so a model collapsed to the majority class never wins on size or speed (with
    F1 as MRPC's metric, predicting "paraphrase" everywhere scores 81.2). FT itself is
    eligible. Among eligible recipes:

    - keep accuracy: the non-FT recipe with the highest mean metric; if no non-FT recipe is
      eligible, FT is recommended and the note names the best other recipe and its gap;
    - smallest size: lowest mean ``params_total``;
    - fastest (batch 1 / 32): highest mean measured ``speedup_b1`` / ``speedup_b32`` (vs the teacher);
    - least CO2: lowest mean ``total_kg_co2eq`` = the run's own training + inference emissions
      (the teacher's training, which D recipes also need, is not added).

    Ties go to the higher mean metric. Recipes missing the ranked value are skipped (the note
    says how many); without FT runs or without any value the row says it cannot be computed.
    """
    agg = _as_agg(data)
    rows: list[dict[str, Any]] = []
    for task in sorted(agg["task"].dropna().unique(), key=task_sort_key):
        task_rows = agg[agg["task"] == task]
        ft = _ft_row(task_rows)
        if ft is None:
            rows += [_rec_row(task, p, None, None, f"cannot compute: no FT runs with a metric on {task}")
                     for p in (_keep_accuracy_label(tolerance), *PRIORITIES[1:])]
            continue
        ft_mean = _val(ft, "main_metric_value_mean")
        eligible = task_rows[task_rows["main_metric_value_mean"] >= ft_mean - tolerance]
        base = task_rows[task_rows["scenario"] == "base"]["main_metric_value_mean"].dropna()
        if not base.empty:  # a recipe no better than the untouched encoder's probe has learned nothing
            eligible = eligible[(eligible["scenario"] == "FT") | (eligible["main_metric_value_mean"] > base.iloc[0])]
        rows.append(_keep_accuracy(task, task_rows, eligible, ft, ft_mean, tolerance))
        for priority, column, best in (
            (PRIORITIES[1], "params_total_mean", "min"),
            (PRIORITIES[2], "speedup_b1_mean", "max"),
            (PRIORITIES[3], "speedup_b32_mean", "max"),
            (PRIORITIES[4], "total_kg_co2eq_mean", "min"),
        ):
            rows.append(_pick(task, priority, eligible, column, best, ft_mean))
    return pd.DataFrame(rows, columns=list(_rec_row("", "", None, None, "").keys()))


def _keep_accuracy_label(tolerance: float) -> str:
    return f"keep accuracy (within {tolerance:g} point{'' if tolerance == 1 else 's'} of FT)"


def _keep_accuracy(task: str, task_rows: pd.DataFrame, eligible: pd.DataFrame, ft: pd.Series,
                   ft_mean: float, tolerance: float) -> dict[str, Any]:
    label = _keep_accuracy_label(tolerance)
    others = eligible[eligible["scenario"] != "FT"]
    if not others.empty:
        best = others.sort_values("main_metric_value_mean", ascending=False, kind="stable").iloc[0]
        return _rec_row(task, label, best, ft_mean, f"{len(others)} non-FT recipe(s) within {tolerance:g} point(s) of FT")
    rest = task_rows[(task_rows["scenario"] != "FT") & task_rows["main_metric_value_mean"].notna()]
    if rest.empty:
        note = "only FT has a metric on this task"
    else:
        b = rest.sort_values("main_metric_value_mean", ascending=False, kind="stable").iloc[0]
        note = (f"no other recipe within {tolerance:g} point(s) of FT; best other: {b['recipe']} "
                f"({_val(b, 'main_metric_value_mean') - ft_mean:+.2f} points)")
    return _rec_row(task, label, ft, ft_mean, note)


def _pick(task: str, priority: str, eligible: pd.DataFrame, column: str, best: str, ft_mean: float) -> dict[str, Any]:
    if column not in eligible.columns:
        return _rec_row(task, priority, None, ft_mean, f"cannot compute: no '{column[:-5]}' column")
    have = eligible[eligible[column].notna()]
    if have.empty:
        return _rec_row(task, priority, None, ft_mean, f"cannot compute: no eligible recipe has '{column[:-5]}'")
    ranked = have.sort_values([column, "main_metric_value_mean"], ascending=[best == "min", False], kind="stable")
    skipped = len(eligible) - len(have)
    note = f"{len(have)} eligible recipe(s) ranked" + (f"; {skipped} skipped (no '{column[:-5]}')" if skipped else "")
    return _rec_row(task, priority, ranked.iloc[0], ft_mean, note)


def _rec_row(task: str, priority: str, row: pd.Series | None, ft_mean: float | None, note: str) -> dict[str, Any]:
    mean = _val(row, "main_metric_value_mean")
    return {
        "task": task, "priority": priority,
        "recipe": None if row is None else row["recipe"],
        "scenario": None if row is None else row["scenario"],
        "sparsity": _val(row, "sparsity"),
        "metric": "n/a" if row is None else _mean_std(row),
        "metric_mean": mean, "metric_std": _val(row, "main_metric_value_std"),
        "delta_vs_ft": mean - ft_mean if ft_mean is not None else math.nan,
        "n_runs": _val(row, "n_runs"),
        "params_M": _val(row, "params_total_mean") / 1e6,
        "speedup_b1": _val(row, "speedup_b1_mean"), "speedup_b32": _val(row, "speedup_b32_mean"),
        "total_kwh": _val(row, "total_kwh_mean"), "total_kg_co2eq": _val(row, "total_kg_co2eq_mean"),
        "note": note,
    }


# ----------------------------------------------------------------------------- claims

def _scenario_rows(agg: pd.DataFrame, scenario: str) -> pd.DataFrame:
    rows = agg[(agg["scenario"] == scenario) & agg["main_metric_value_mean"].notna()]
    return rows.drop_duplicates("task").set_index("task")


def _claim(claim: str, verdict: str, evidence: str, rule: str) -> dict[str, str]:
    return {"claim": claim, "verdict": verdict, "evidence": evidence, "rule": rule}


def _claim_adapters_match_ft(agg: pd.DataFrame, tolerance: float) -> dict[str, str]:
    claim = "(1) Adapters reach FT accuracy (A ≈ FT)"
    rule = (f"mean over tasks of (A mean − FT mean) of the main metric ≥ −{tolerance:g} point(s): confirmed; "
            "below: refuted; no task with both: inconclusive")
    a, ft = _scenario_rows(agg, "A"), _scenario_rows(agg, "FT")
    tasks = sorted(set(a.index) & set(ft.index))
    if not tasks:
        return _claim(claim, "inconclusive", "no task has both A and FT runs", rule)
    diffs = {t: float(a.loc[t, "main_metric_value_mean"] - ft.loc[t, "main_metric_value_mean"]) for t in tasks}
    mean = float(np.mean(list(diffs.values())))
    detail = ", ".join(f"{t} {d:+.2f}" for t, d in diffs.items())
    evidence = f"A − FT = {mean:+.2f} points on average over {len(tasks)} task(s) ({detail})"
    if mean > tolerance:
        evidence += f"; A is more than {tolerance:g} point(s) above FT"
    return _claim(claim, "confirmed" if mean >= -tolerance else "refuted", evidence, rule)


def _claim_distillation_lowers(agg: pd.DataFrame) -> dict[str, str]:
    claim = "(2) Distillation lowers accuracy (D below FT)"
    rule = ("d = mean over tasks of (D mean − FT mean); SE = sqrt(Σ_t (s_D²/n_D + s_FT²/n_FT)) / T from seed stds; "
            "d < −2·SE: confirmed; d > +2·SE: refuted; otherwise inconclusive (within seed noise). "
            "Without seed spread (n=1) SE is taken as 0")
    d, ft = _scenario_rows(agg, "D"), _scenario_rows(agg, "FT")
    tasks = sorted(set(d.index) & set(ft.index))
    if not tasks:
        return _claim(claim, "inconclusive", "no task has both D and FT runs", rule)
    diffs, var = {}, []
    for t in tasks:
        diffs[t] = float(d.loc[t, "main_metric_value_mean"] - ft.loc[t, "main_metric_value_mean"])
        var.append(sum(_num(x.loc[t, "main_metric_value_std"]) ** 2 / _num(x.loc[t, "main_metric_value_n"]) for x in (d, ft)))
    mean = float(np.mean(list(diffs.values())))
    se = math.sqrt(sum(var)) / len(tasks)
    noise = "no seed spread available" if math.isnan(se) else f"2·SE = {2 * se:.2f}"
    se = 0.0 if math.isnan(se) else se
    verdict = "confirmed" if mean < -2 * se else "refuted" if mean > 2 * se else "inconclusive"
    detail = ", ".join(f"{t} {v:+.2f}" for t, v in diffs.items())
    return _claim(claim, verdict, f"D − FT = {mean:+.2f} points on average over {len(tasks)} task(s) ({detail}); {noise}", rule)


def _claim_pda_smallest_fastest(agg: pd.DataFrame) -> dict[str, str]:
    claim = "(3) P+D+A is the smallest and fastest recipe"
    rule = ("on every task, the lowest mean params_total and the highest mean measured speed-up at batch 1 and at "
            "batch 32 over all recipes (any sparsity) belong to P+D+A (ties count for P+D+A): confirmed; any task "
            "where another recipe wins a measured quantity: refuted; otherwise (P+D+A lacks a quantity) inconclusive")
    checks = (("params_total_mean", "min", "size"), ("speedup_b1_mean", "max", "speed-up b1"),
              ("speedup_b32_mean", "max", "speed-up b32"))
    failures, passes, unknown = [], [], []
    tasks = sorted(agg.loc[agg["scenario"] == "P+D+A", "task"].unique())
    if not tasks:
        return _claim(claim, "inconclusive", "no P+D+A runs", rule)
    for task in tasks:
        rows = agg[agg["task"] == task]
        for col, how, name in checks:
            have = rows[rows[col].notna()] if col in rows else rows.iloc[0:0]
            mine = have[have["scenario"] == "P+D+A"]
            if mine.empty:
                unknown.append(f"{task} {name}")
                continue
            ext = have[col].min() if how == "min" else have[col].max()
            own = mine[col].min() if how == "min" else mine[col].max()
            winner = have.loc[have[col].idxmin() if how == "min" else have[col].idxmax()]
            show = (lambda v: f"{v / 1e6:.1f} M") if "params" in col else (lambda v: f"{v:.2f}×")
            if math.isclose(own, ext, rel_tol=1e-9):
                passes.append(f"{task} {name}: P+D+A {show(own)}")
            else:
                failures.append(f"{task} {name}: {winner['recipe']} {show(ext)} beats P+D+A {show(own)}")
    parts = []
    if failures:
        parts.append("other recipe wins — " + "; ".join(failures))
    if passes:
        parts.append("P+D+A wins — " + "; ".join(passes))
    if unknown:
        parts.append("no P+D+A measurement — " + ", ".join(unknown))
    verdict = "refuted" if failures else "inconclusive" if unknown else "confirmed"
    return _claim(claim, verdict, " | ".join(parts), rule)


def _claim_adapters_speed_up(agg: pd.DataFrame) -> dict[str, str]:
    claim = "(4) Adapters speed up inference (X+A faster than X)"
    rule = ("pairs (FT, A), (D, D+A), (P, P+A), (P+D, P+D+A) on the same task and sparsity, compared on their "
            "measured batch-1 speed-up vs the uncompressed model (mean over seeds); each speed-up is a ratio of "
            "latencies measured in one process, so runs measured at different times stay comparable, which raw "
            "latencies are not. Latency ratio X+A / X = speed-up(X) / speed-up(X+A). X+A faster in every pair: "
            "confirmed; X+A not faster in more than half of the pairs: refuted; mixed: inconclusive")
    if "speedup_b1_mean" not in agg.columns:
        return _claim(claim, "inconclusive", "no speed measurements", rule)
    pairs: dict[str, list[tuple[float, float]]] = {}  # "X+A vs X" -> [(latency ratio, params difference)]
    for x, xa in ADAPTER_PAIRS:
        for _, row_a in agg[agg["scenario"] == xa].iterrows():
            same = agg[(agg["scenario"] == x) & (agg["task"] == row_a["task"])]
            same = same[same["sparsity"].isna()] if is_missing(row_a["sparsity"]) else same[same["sparsity"] == row_a["sparsity"]]
            if same.empty:
                continue
            # normalised latency: 1 / speed-up (the uncompressed model measured in the same process = 1)
            lat_x, lat_xa = 1 / _val(same.iloc[0], "speedup_b1_mean"), 1 / _val(row_a, "speedup_b1_mean")
            if not (math.isnan(lat_x) or math.isnan(lat_xa)):
                diff = _val(row_a, "params_total_mean") - _val(same.iloc[0], "params_total_mean")
                pairs.setdefault(f"{xa} vs {x}", []).append((lat_xa / lat_x, diff))
    ratios = [r for items in pairs.values() for r, _ in items]
    if not ratios:
        return _claim(claim, "inconclusive", "no (X, X+A) pair with batch-1 latency on both sides", rule)
    faster = sum(r < 1 for r in ratios)
    verdict = "confirmed" if faster == len(ratios) else "refuted" if len(ratios) - faster > len(ratios) / 2 else "inconclusive"
    detail = "; ".join(
        f"{name}: faster in {sum(r < 1 for r, _ in items)}/{len(items)}, latency ratio {np.median([r for r, _ in items]):.3f}, "
        f"params {_fmt(np.nanmean([d for _, d in items]) / 1e6 if any(not math.isnan(d) for _, d in items) else math.nan, 2)} M"
        for name, items in pairs.items())
    evidence = (f"X+A faster in {faster}/{len(ratios)} pair(s) (task, sparsity); median latency ratio X+A / X = "
                f"{np.median(ratios):.3f} ({detail}; ratio < 1 = X+A faster, params = X+A − X)")
    return _claim(claim, verdict, evidence, rule)


def _claim_structure(agg: pd.DataFrame) -> list[dict[str, str]]:
    pruned = agg[agg["prune"].astype(bool)] if "prune" in agg else agg.iloc[0:0]
    out = []
    claim = "(5a) FFN units are pruned before attention (more FFN than MHA removed)"
    rule = ("mean over pruned recipes (task, scenario, sparsity) of the fraction of FFN parameters removed vs of MHA "
            "parameters removed (from `structure`): FFN > MHA: confirmed; FFN < MHA: refuted; equal or no structure: inconclusive")
    have = pruned.dropna(subset=["ffn_removed_frac_mean", "mha_removed_frac_mean"]) if "ffn_removed_frac_mean" in pruned else pruned.iloc[0:0]
    if have.empty:
        out.append(_claim(claim, "inconclusive", "no pruned run with a `structure`", rule))
    else:
        ffn, mha = have["ffn_removed_frac_mean"].mean(), have["mha_removed_frac_mean"].mean()
        more = int((have["ffn_removed_frac_mean"] > have["mha_removed_frac_mean"]).sum())
        verdict = "confirmed" if ffn > mha else "refuted" if ffn < mha else "inconclusive"
        out.append(_claim(claim, verdict, f"FFN removed {ffn:.1%} vs MHA removed {mha:.1%} on average over "
                          f"{len(have)} pruned recipe(s); FFN lost more in {more}/{len(have)}", rule))
    claim = "(5b) Last layers are pruned first (last third survives less than first third)"
    rule = ("mean over pruned recipes of the kept parameter fraction of the last third of layers vs the first third: "
            "last < first: confirmed; last > first: refuted; equal or no structure: inconclusive")
    have = pruned.dropna(subset=["first_third_kept_mean", "last_third_kept_mean"]) if "first_third_kept_mean" in pruned else pruned.iloc[0:0]
    if have.empty:
        out.append(_claim(claim, "inconclusive", "no pruned run with a per-layer `structure` (and hidden_size)", rule))
    else:
        first, last = have["first_third_kept_mean"].mean(), have["last_third_kept_mean"].mean()
        verdict = "confirmed" if last < first else "refuted" if last > first else "inconclusive"
        out.append(_claim(claim, verdict, f"last third keeps {last:.1%} vs first third {first:.1%} of its parameters "
                          f"on average over {len(have)} pruned recipe(s)", rule))
    return out


def claims(data: pd.DataFrame, tolerance: float = 1.0) -> pd.DataFrame:
    """Check the seed paper's claims on the data; columns claim, verdict, evidence, rule (the exact test)."""
    agg = _as_agg(data)
    rows = [_claim_adapters_match_ft(agg, tolerance), _claim_distillation_lowers(agg),
            _claim_pda_smallest_fastest(agg), _claim_adapters_speed_up(agg), *_claim_structure(agg)]
    return pd.DataFrame(rows, columns=["claim", "verdict", "evidence", "rule"])


# ----------------------------------------------------------------------------- carbon

def energy_is_estimated(modes: Iterable[str]) -> bool:
    """True when any energy mode says it is an estimate (mentions 'estimat' or 'TDP')."""
    return any("estimat" in m.lower() or "tdp" in m.lower() for m in modes if isinstance(m, str))


def carbon_statement(frame: pd.DataFrame) -> dict[str, Any]:
    """Totals over all runs of training and inference kWh / kg CO2eq (sums of the measured values;
    a run's missing phase is not counted and is reported), the energy modes seen, and a sentence."""
    out: dict[str, Any] = {"n_runs": int(len(frame))}
    for phase in ("train", "inference"):
        for unit in ("kwh", "kg_co2eq"):
            col = frame.get(f"{phase}_{unit}", pd.Series(dtype=float))
            out[f"{phase}_{unit}"] = float(col.sum()) if col.notna().any() else None
        out[f"n_runs_with_{phase}_energy"] = int(frame.get(f"{phase}_kwh", pd.Series(dtype=float)).notna().sum())
    for unit in ("kwh", "kg_co2eq"):
        parts = [out[f"{p}_{unit}"] for p in ("train", "inference") if out[f"{p}_{unit}"] is not None]
        out[f"total_{unit}"] = float(sum(parts)) if parts else None
    modes: Counter[str] = Counter()
    for phase in ("train", "inference"):
        modes.update(m for m in frame.get(f"{phase}_energy_mode", pd.Series(dtype=object)).dropna())
    out["modes"] = dict(modes)
    out["estimated"] = energy_is_estimated(modes)
    out["sentence"] = _carbon_sentence(out)
    return out


def _carbon_sentence(c: dict[str, Any]) -> str:
    if c["total_kwh"] is None:
        return f"No energy was recorded for the {c['n_runs']} run(s)."
    wh = lambda kwh: "n/a" if kwh is None else f"{kwh * 1e3:.3g} Wh"  # noqa: E731 - CPU runs are Wh-scale
    g = lambda kg: "n/a" if kg is None else f"{kg * 1e3:.3g} g CO2eq"  # noqa: E731
    s = (f"The {c['n_runs']} run(s) used {wh(c['total_kwh'])} and emitted {g(c['total_kg_co2eq'])} in total "
         f"(training {wh(c['train_kwh'])} / {g(c['train_kg_co2eq'])} over {c['n_runs_with_train_energy']} run(s), "
         f"inference {wh(c['inference_kwh'])} / {g(c['inference_kg_co2eq'])} over "
         f"{c['n_runs_with_inference_energy']} run(s)).")
    missing = [f"{c['n_runs'] - c[f'n_runs_with_{p}_energy']} without {p} energy" for p in ("train", "inference")
               if c[f"n_runs_with_{p}_energy"] < c["n_runs"]]
    if missing:
        s += " Not counted: " + ", ".join(missing) + "."
    if c["modes"]:
        s += " Energy measurement modes: " + "; ".join(f"'{m}' ({n} training/inference measurement(s))"
                                                      for m, n in c["modes"].items()) + "."
    if c["estimated"]:
        s += " These figures are estimates, not metered measurements."
    return s


# ----------------------------------------------------------------------------- survival

def _heads_count(kept: Any) -> float:
    """Run records list the kept head indices; a bare count is accepted too."""
    return float(len(kept)) if isinstance(kept, (list, tuple)) else _num(kept)


def survival_matrix(records: Iterable[RunRecord], average_seeds: bool = True) -> dict[Any, dict[str, Any]]:
    """Per pruned run (key run_id) or per (task, scenario, sparsity) averaged over seeds: a layers x
    SURVIVAL_COLUMNS matrix (heads kept / num_heads, MHA kept 0/1, FFN units kept / ffn_size, FFN kept 0/1).

    Values: ``{"layers": [...], "columns": [...], "values": ndarray, "n_runs": int, "run_ids": [...]}``;
    a layer absent from a run's structure is NaN for that run (means ignore NaN)."""
    groups: dict[Any, list[tuple[str, dict[int, list[float]]]]] = {}
    for r in records:
        layers = (r.structure or {}).get("layers") or []
        if not r.prune or not layers:
            continue
        per_layer = {}
        for l in layers:
            mha, ffn = l.get("mha_kept"), l.get("ffn_kept")
            per_layer[int(l.get("layer", len(per_layer)))] = [
                0.0 if mha is False else _ratio(_heads_count(l.get("heads_kept")), _num(l.get("num_heads"))),
                math.nan if mha is None else float(bool(mha)),
                0.0 if ffn is False else _ratio(_num(l.get("ffn_units_kept")), _num(l.get("ffn_size"))),
                math.nan if ffn is None else float(bool(ffn)),
            ]
        key = (r.task, r.scenario, r.sparsity) if average_seeds else r.run_id
        groups.setdefault(key, []).append((r.run_id, per_layer))
    out = {}
    for key, runs in groups.items():
        idx = sorted({i for _, pl in runs for i in pl})
        stack = np.array([[pl.get(i, [math.nan] * 4) for i in idx] for _, pl in runs], dtype=float)
        with warnings.catch_warnings():  # an all-NaN cell stays NaN without a warning
            warnings.simplefilter("ignore", RuntimeWarning)
            values = np.nanmean(stack, axis=0)
        out[key] = {"layers": idx, "columns": list(SURVIVAL_COLUMNS), "values": values,
                    "n_runs": len(runs), "run_ids": [rid for rid, _ in runs]}
    return out


# ----------------------------------------------------------------------------- report

def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub markdown table of ``df`` as shown (no index); '|' in cells is escaped."""
    def cell(v: Any) -> str:
        return "" if is_missing(v) else str(v).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(map(cell, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def accuracy_table(agg: pd.DataFrame) -> pd.DataFrame:
    """Recipes x tasks of 'mean ± std (n)' of the main metric, plus GLUE low/high averages of the task
    means (over the group's tasks present for that recipe; the count is shown when some are missing)."""
    tasks = sorted(agg["task"].dropna().unique(), key=task_sort_key)
    recipes = agg.drop_duplicates(["scenario", "sparsity"])[["scenario", "sparsity", "recipe"]]
    recipes = recipes.iloc[sorted(range(len(recipes)), key=lambda i: recipe_sort_key(*recipes.iloc[i][["scenario", "sparsity"]]))]
    rows = []
    for _, rec in recipes.iterrows():
        mine = agg[(agg["scenario"] == rec["scenario"]) & (
            agg["sparsity"].isna() if is_missing(rec["sparsity"]) else agg["sparsity"] == rec["sparsity"])]
        row = {"recipe": rec["recipe"]}
        means = {}
        for task in tasks:
            hit = mine[mine["task"] == task]
            if hit.empty or math.isnan(_val(hit.iloc[0], "main_metric_value_mean")):
                row[task] = ""
                continue
            means[task] = _val(hit.iloc[0], "main_metric_value_mean")
            row[task] = f"{_mean_std(hit.iloc[0])} ({int(hit.iloc[0]['n_runs'])})"
        for group, members in TASK_GROUPS.items():
            got = [means[t] for t in members if t in means]
            if any(t in tasks for t in members):
                row[group] = "" if not got else f"{np.mean(got):.2f}" + ("" if len(got) == len(members) else f" ({len(got)}/{len(members)} tasks)")
        rows.append(row)
    return pd.DataFrame(rows)


def efficiency_table(agg: pd.DataFrame) -> pd.DataFrame:
    """Per recipe, the mean over tasks of the per-task means of size, speed-up and energy."""
    cols = {"params (M)": ("params_total_mean", 1e-6, 2), "size reduction (×)": ("size_reduction_params_mean", 1, 2),
            "speed-up b1 (×)": ("speedup_b1_mean", 1, 2), "speed-up b32 (×)": ("speedup_b32_mean", 1, 2),
            "FLOP bound (×)": ("flops_speedup_bound_mean", 1, 2), "train kWh": ("train_kwh_mean", 1, 4),
            "inference kWh": ("inference_kwh_mean", 1, 5), "kg CO2eq (train+inf.)": ("total_kg_co2eq_mean", 1, 5)}
    rows = []
    for (scenario, sparsity), grp in agg.groupby(["scenario", "sparsity"], dropna=False, sort=False):
        row = {"recipe": grp["recipe"].iloc[0], "_key": recipe_sort_key(scenario, sparsity), "tasks": grp["task"].nunique()}
        for name, (col, scale, digits) in cols.items():
            row[name] = _fmt(grp[col].mean() * scale, digits) if col in grp and grp[col].notna().any() else "n/a"
        rows.append(row)
    return pd.DataFrame(sorted(rows, key=lambda r: r["_key"])).drop(columns="_key") if rows else pd.DataFrame()


def _recommendation_table(recs: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "task": recs["task"], "priority": recs["priority"], "recipe": recs["recipe"].fillna("—"),
        "metric (mean ± std)": recs["metric"], "Δ vs FT": recs["delta_vs_ft"].map(lambda v: _fmt(v, 2)),
        "params (M)": recs["params_M"].map(lambda v: _fmt(v, 2)),
        "speed-up b1 (×)": recs["speedup_b1"].map(lambda v: _fmt(v, 2)),
        "speed-up b32 (×)": recs["speedup_b32"].map(lambda v: _fmt(v, 2)),
        "kWh": recs["total_kwh"].map(lambda v: _fmt(v, 4)),
        "kg CO2eq": recs["total_kg_co2eq"].map(lambda v: _fmt(v, 5)), "note": recs["note"],
    })


def write_report(records_dir: Path, out_path: Path, figures_dir: Path, tolerance: float = 1.0,
                 make_figures: bool = True, loose_tolerance: float | None = 5.0) -> Path:
    """Write the markdown report (tables, recommendations, claims, carbon, figure links) atomically."""
    records = read_all_records(Path(records_dir))
    frame = records_frame(records)
    agg = aggregate(frame)
    figures: Sequence[Path] = []
    if make_figures and records:
        from pda.plots import save_all_figures  # local import: plots imports this module
        figures = save_all_figures(frame, records, Path(figures_dir))
    carbon = carbon_statement(frame)
    out_path = Path(out_path)
    parts = [
        "# PDA results report", "",
        f"{len(records)} run(s) from `{records_dir}`; metrics are GLUE dev-set main metrics in percent, "
        "mean ± sample std over seeds (n = runs).", "",
    ]
    if not records:
        parts += ["No finished runs were found.", ""]
    else:
        recs = recommendations(agg, tolerance)
        parts += [
            "## Main metric per task", "", markdown_table(accuracy_table(agg)), "",
            "## Size, speed and energy per recipe (mean over tasks)", "", markdown_table(efficiency_table(agg)), "",
            f"## Recommendations (accuracy tolerance {tolerance:g} point(s))", "",
            "Eligible recipes on a task are those whose mean main metric is at least FT's mean minus the tolerance "
            "and above the base (linear probe) run's, so a collapsed model never wins. "
            "*Keep accuracy*: the eligible non-FT recipe with the highest mean metric (FT if none). "
            "*Smallest size*: eligible recipe with the fewest mean total parameters. "
            "*Fastest*: eligible recipe with the highest mean measured speed-up vs the teacher at that batch size. "
            "*Least CO2*: eligible recipe with the lowest mean training + inference kg CO2eq of its own run "
            "(the teacher's training is not added). Ties go to the higher metric.", "",
            markdown_table(_recommendation_table(recs)), "",
        ]
        if loose_tolerance is not None:
            parts += [
                f"## Recommendations when up to {loose_tolerance:g} points of the main metric may be traded", "",
                "The same rules with a looser tolerance: what each priority buys when some accuracy can be spent.",
                "", markdown_table(_recommendation_table(recommendations(agg, loose_tolerance))), "",
            ]
        parts += [
            "## Claims of the seed paper checked on these data", "",
            markdown_table(claims(agg, tolerance)), "",
        ]
    parts += ["## Carbon footprint", "", carbon["sentence"], ""]
    pngs = [f for f in figures if f.suffix == ".png"]
    if pngs:
        parts += ["## Figures", ""]
        for f in pngs:
            rel = Path(os.path.relpath(f, out_path.parent)).as_posix()
            parts += [f"![{f.stem}]({rel}) ([SVG]({Path(rel).with_suffix('.svg').as_posix()}))", ""]
    atomic_write_text(out_path, "\n".join(parts))
    return out_path
