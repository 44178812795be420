"""Flatten run records into one row per run, and aggregate rows per recipe (mean, sample std, n)."""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import pandas as pd

from pda.analysis.structure import structure_summary
from pda.analysis.values import as_float, dig, is_missing, ratio
from pda.records import RunRecord

SCENARIO_ORDER: tuple[str, ...] = ("FT", "base", "A", "D", "D+A", "P", "P+A", "P+D", "P+D+A")
TASK_GROUPS: dict[str, tuple[str, ...]] = {
    "GLUE low": ("mrpc", "rte", "stsb", "cola"),
    "GLUE high": ("mnli", "qqp", "qnli", "sst2"),
}
GROUP_KEYS: tuple[str, ...] = ("task", "scenario", "sparsity")
RECIPE_KEYS: tuple[str, ...] = ("scenario", "sparsity")

# Numeric per-run columns of records_frame. Per-task metrics (metric_<name>) and per-batch-size speed
# columns (<name>_b<batch>, SPEED_FIELDS) are added for whatever the records hold.
NUMERIC_COLUMNS: tuple[str, ...] = (
    "sparsity", "main_metric_value",
    "params_total", "params_encoder", "params_embeddings", "params_trainable",
    "teacher_params_total", "teacher_params_encoder", "bytes_on_disk", "teacher_bytes_on_disk",
    "size_reduction_params", "size_reduction_bytes",
    "sparsity_achieved_encoder", "sparsity_achieved_total", "pruning_achieved_vs_input", "speed_threads",
    "flops_per_example", "teacher_flops_per_example", "flops_reduction_bound", "flops_speedup_bound",
    "train_kwh", "train_kg_co2eq", "inference_kwh", "inference_kg_co2eq", "total_kwh", "total_kg_co2eq",
    "train_time_s", "eval_time_s", "train_steps",
    "ffn_removed_frac", "mha_removed_frac", "first_third_kept", "last_third_kept",
)
TEXT_COLUMNS: tuple[str, ...] = (
    "run_id", "task", "scenario", "recipe", "model", "main_metric", "speed_device", "speed_source",
    "train_energy_mode", "inference_energy_mode", "energy_country",
)
FLAG_COLUMNS: tuple[str, ...] = ("prune", "distill", "adapters")
# record key in speed.by_batch[<batch>] -> frame column prefix (column = f"{prefix}_b{batch}")
SPEED_FIELDS: dict[str, str] = {
    "latency_ms_median": "latency_ms", "teacher_latency_ms_median": "teacher_latency_ms",
    "throughput_median": "throughput", "speedup": "speedup",
}
DEFAULT_BATCH_SIZES: tuple[int, ...] = (1, 32)


# ----------------------------------------------------------------------------- small helpers

def pct(sparsity: float) -> float:
    """A sparsity as percent (values above 1 are taken as percent already)."""
    return float(sparsity) * 100 if float(sparsity) <= 1 else float(sparsity)


def recipe_label(scenario: str, sparsity: float | None) -> str:
    """'FT' for unpruned recipes, 'P+D+A 50%' for pruned ones, 'P+D+A 50% +Q' for an INT8 variant."""
    if str(scenario).endswith("+Q"):
        return f"{recipe_label(str(scenario)[:-2], sparsity)} +Q"
    return str(scenario) if is_missing(sparsity) else f"{scenario} {pct(sparsity):g}%"


def task_sort_key(task: str) -> tuple[int, str]:
    """GLUE low tasks, then GLUE high tasks (in TASK_GROUPS order), then any other task alphabetically."""
    order = [t for members in TASK_GROUPS.values() for t in members]
    return (order.index(task), task) if task in order else (len(order), str(task))


def recipe_sort_key(scenario: str, sparsity: float | None) -> tuple[int, float, bool]:
    """Scenario in SCENARIO_ORDER (unknown last), then sparsity (unpruned first); an INT8 variant
    ("X+Q", see ``pda.analysis.quantized``) right after its recipe."""
    base, quantized = (scenario[:-2], True) if str(scenario).endswith("+Q") else (scenario, False)
    rank = SCENARIO_ORDER.index(base) if base in SCENARIO_ORDER else len(SCENARIO_ORDER)
    return rank, -1.0 if is_missing(sparsity) else float(sparsity), quantized


def sort_recipes(df: pd.DataFrame) -> pd.DataFrame:
    """Rows by task (GLUE order, when there is a task column), then recipe order, then seed (per-run rows)."""
    if df.empty:
        return df
    keys = [recipe_sort_key(s, p) for s, p in zip(df["scenario"], df["sparsity"])]
    tasks = [task_sort_key(t) for t in df["task"]] if "task" in df else [(0, "")] * len(df)
    seeds = list(df["seed"]) if "seed" in df else [0] * len(df)
    order = sorted(range(len(df)), key=lambda i: (tasks[i], keys[i], seeds[i]))
    return df.iloc[order].reset_index(drop=True)


def batch_sizes(data: pd.DataFrame) -> list[int]:
    """Batch sizes with a measured speed-up in a run frame or an aggregate (``DEFAULT_BATCH_SIZES`` if none)."""
    found = set()
    for col in data.columns:
        head, _, rest = col.partition("speedup_b")
        number = rest.removesuffix("_mean")
        if not head and number.isdigit() and data[col].notna().any():
            found.add(int(number))
    return sorted(found) or list(DEFAULT_BATCH_SIZES)


# ----------------------------------------------------------------------------- frame

def _record_row(r: RunRecord) -> dict[str, Any]:
    params, teacher = r.params or {}, r.teacher_params or {}
    # Speed from ``python -m pda retime`` (the model timed again with the machine to itself) when there is one.
    speed, backends = (r.retimed["speed"], r.retimed["backends"]) if r.retimed else (r.speed, r.backends)
    row: dict[str, Any] = {
        "run_id": r.run_id, "task": r.task, "scenario": r.scenario,
        "recipe": recipe_label(r.scenario, r.sparsity), "prune": bool(r.prune), "distill": bool(r.distill),
        "adapters": bool(r.adapters), "sparsity": as_float(r.sparsity), "seed": r.seed, "model": r.model,
        "main_metric": r.main_metric, "main_metric_value": as_float(r.main_metric_value),
        "params_total": as_float(params.get("total")), "params_encoder": as_float(params.get("encoder")),
        "params_embeddings": as_float(params.get("embeddings")), "params_trainable": as_float(params.get("trainable")),
        "teacher_params_total": as_float(teacher.get("total")), "teacher_params_encoder": as_float(teacher.get("encoder")),
        "bytes_on_disk": as_float(r.bytes_on_disk), "teacher_bytes_on_disk": as_float(r.teacher_bytes_on_disk),
        "sparsity_achieved_encoder": as_float(dig(r.sparsity_achieved, "encoder")),
        "sparsity_achieved_total": as_float(dig(r.sparsity_achieved, "total")),
        "pruning_achieved_vs_input": as_float(dig(r.pruning, "achieved_vs_input")),
        "speed_device": dig(speed, "device"), "speed_threads": as_float(dig(speed, "threads")),
        "speed_source": ("retime" if r.retimed else "in run") if speed else None,
        "flops_per_example": as_float(dig(r.flops, "per_example")),
        "teacher_flops_per_example": as_float(dig(r.flops, "teacher_per_example")),
        "flops_reduction_bound": as_float(dig(r.flops, "reduction_bound")),
        "train_time_s": as_float(r.train_time_s), "eval_time_s": as_float(r.eval_time_s),
        "train_steps": as_float(r.train_steps),
    }
    for name, value in (r.metrics or {}).items():
        row[f"metric_{name}"] = as_float(value)
    row["size_reduction_params"] = ratio(row["teacher_params_total"], row["params_total"])
    row["size_reduction_bytes"] = ratio(row["teacher_bytes_on_disk"], row["bytes_on_disk"])
    # Speed-up bound from FLOPs: teacher FLOPs / model FLOPs; falls back to the recorded reduction_bound.
    bound = ratio(row["teacher_flops_per_example"], row["flops_per_example"])
    row["flops_speedup_bound"] = row["flops_reduction_bound"] if math.isnan(bound) else bound
    for batch, stats in (dig(speed, "by_batch") or {}).items():
        for key, prefix in SPEED_FIELDS.items():
            row[f"{prefix}_b{int(batch)}"] = as_float((stats or {}).get(key))
    for backend, result in (backends or {}).items():  # speed-up against the reference on the same backend
        for batch, stats in ((result or {}).get("by_batch") or {}).items():
            row[f"speedup_{backend}_b{int(batch)}"] = as_float((stats or {}).get("speedup"))
    q = r.quantized or {}
    if q:  # the INT8 variant (lever Q): its own metric, bytes and speed-up against the eager fp32 reference
        row["q_main_metric_value"] = as_float(q.get("main_metric_value"))
        row["q_bytes_on_disk"] = as_float(q.get("bytes_on_disk"))
        for name, value in (q.get("metrics") or {}).items():
            row[f"q_metric_{name}"] = as_float(value)
        for batch, stats in (dig(q, "speed", "by_batch") or {}).items():
            row[f"q_speedup_b{int(batch)}"] = as_float((stats or {}).get("speedup"))
        if r.retimed:  # the INT8 model re-timed: ort_int8 against the eager fp32 reference is Q's speed-up
            for batch, stats in (dig(backends, "ort_int8", "by_batch") or {}).items():
                row[f"q_speedup_b{int(batch)}"] = as_float((stats or {}).get("speedup_vs_eager_fp32_teacher"))
    for phase in ("train", "inference"):
        e = dig(r.energy, phase) or {}
        row[f"{phase}_kwh"] = as_float(e.get("kwh"))
        row[f"{phase}_kg_co2eq"] = as_float(e.get("kg_co2eq"))
        row[f"{phase}_energy_mode"] = e.get("mode")
    row["energy_country"] = dig(r.energy, "train", "country_iso_code") or dig(r.energy, "inference", "country_iso_code")
    # Totals only when both phases were measured (a missing phase is not counted as zero).
    row["total_kwh"] = row["train_kwh"] + row["inference_kwh"]
    row["total_kg_co2eq"] = row["train_kg_co2eq"] + row["inference_kg_co2eq"]
    row.update(structure_summary(r.structure if r.prune else None))
    return row


def _dynamic_columns(rows: list[dict[str, Any]]) -> list[str]:
    """metric_<name> columns, then per-batch speed columns (for the default batch sizes at least)."""
    metrics = sorted({k for row in rows for k in row if k.startswith("metric_")})
    found = {int(k.rsplit("_b", 1)[1]) for row in rows for k in row if k.startswith("speedup_b")}
    speed = [f"{prefix}_b{b}" for b in sorted(found | set(DEFAULT_BATCH_SIZES)) for prefix in SPEED_FIELDS.values()]
    extra = sorted({k for row in rows for k in row
                    if k.startswith(("q_", "speedup_eager_", "speedup_ort_"))})  # INT8 variant, backends
    return metrics + speed + extra


def records_frame(records: Iterable[RunRecord]) -> pd.DataFrame:
    """One row per run with the flat columns the figures and tables use; missing values are NaN."""
    rows = [_record_row(r) for r in records]
    dynamic = _dynamic_columns(rows)
    columns = list(dict.fromkeys([*TEXT_COLUMNS, *FLAG_COLUMNS, "seed", *NUMERIC_COLUMNS, *dynamic]))
    frame = pd.DataFrame(rows, columns=columns)
    for col in (*NUMERIC_COLUMNS, *dynamic):
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype(float)
    for col in FLAG_COLUMNS:
        frame[col] = frame[col].astype(bool)
    return frame


# ----------------------------------------------------------------------------- aggregation

def aggregate(frame: pd.DataFrame, keys: Sequence[str] = GROUP_KEYS) -> pd.DataFrame:
    """Per group of ``keys`` (default: task, scenario, sparsity; unpruned runs, NaN sparsity, form their
    own group) the mean, sample std (ddof=1, NaN when n=1) and count of non-missing values
    (``<col>_mean``, ``<col>_std``, ``<col>_n``) of every numeric column, plus ``n_runs``, ``n_tasks``
    and the recipe's text columns."""
    keys = list(keys)
    exclude = {*keys, "seed", *FLAG_COLUMNS}
    numeric = [c for c in frame.columns if c not in exclude and pd.api.types.is_numeric_dtype(frame[c])
               and not pd.api.types.is_bool_dtype(frame[c])]
    firsts = [c for c in ("recipe", "main_metric", *FLAG_COLUMNS) if c in frame.columns and c not in keys]
    if frame.empty:
        cols = keys + firsts + ["n_runs", "n_tasks"]
        return pd.DataFrame(columns=cols + [f"{c}_{s}" for c in numeric for s in ("mean", "std", "n")])
    grouped = frame.groupby(keys, dropna=False, sort=False)
    # one reduction per statistic (a list of them inserts column by column: slow, and pandas warns)
    by_stat = {s: getattr(grouped[numeric], how)().add_suffix(f"_{s}")
               for s, how in (("mean", "mean"), ("std", "std"), ("n", "count"))}
    stats = pd.concat(by_stat.values(), axis=1)[[f"{c}_{s}" for c in numeric for s in by_stat]]
    tasks = grouped["task"].nunique().rename("n_tasks") if "task" in frame else None
    parts = [grouped[firsts].first(), grouped.size().rename("n_runs"), *([tasks] if tasks is not None else []), stats]
    return sort_recipes(pd.concat(parts, axis=1).copy().reset_index())  # copy: one block, no fragmentation


def as_aggregate(data: pd.DataFrame) -> pd.DataFrame:
    """``data`` if it is already a per-(task, recipe) aggregate, else its aggregate."""
    return data if "main_metric_value_mean" in data.columns else aggregate(data)


def recipes_of(df: pd.DataFrame) -> list[tuple[str, float | None]]:
    """Distinct (scenario, sparsity) pairs in recipe order (None for unpruned)."""
    pairs = {(s, None if is_missing(p) else float(p)) for s, p in zip(df["scenario"], df["sparsity"])}
    return sorted(pairs, key=lambda sp: recipe_sort_key(*sp))


def select_recipe(df: pd.DataFrame, scenario: str, sparsity: float | None) -> pd.DataFrame:
    """Rows of ``df`` of one recipe; ``sparsity`` None matches unpruned (NaN) rows."""
    same = df["sparsity"].isna() if is_missing(sparsity) else df["sparsity"] == sparsity
    return df[(df["scenario"] == scenario) & same]
