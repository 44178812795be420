"""The fourth lever, Q: every run's INT8 variant as a recipe of its own ("P+D 90%+Q"), next to the recipe.

A run record's ``quantized`` field holds its ONNX Runtime dynamic-INT8 variant: the dev metric re-measured,
the INT8 file's bytes and the speed-up against the same eager fp32 reference as the run's own ``speed``.
``with_quantized`` adds one row per such run, so tables and recommendations rank "X+Q" beside X. The
variant's parameters are the run's (INT8 stores them in a quarter of the bytes); its training is the
run's; its inference energy was not measured, so it has no energy total and no CO2 ranking.
"""

from __future__ import annotations

import math

import pandas as pd

from pda.analysis.frame import recipe_label
from pda.analysis.values import ratio

SUFFIX = "+Q"


def quantized_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per run that recorded an INT8 variant, with that variant's metric, bytes and speed-ups."""
    if frame.empty or "q_main_metric_value" not in frame:
        return frame.iloc[0:0]
    runs = frame[frame["q_main_metric_value"].notna()].copy()
    if runs.empty:
        return runs
    runs["scenario"] = runs["scenario"] + SUFFIX
    runs["recipe"] = [recipe_label(s, p) for s, p in zip(runs["scenario"], runs["sparsity"])]
    runs["run_id"] = runs["run_id"] + SUFFIX
    runs["main_metric_value"] = runs["q_main_metric_value"]
    for col in [c for c in runs.columns if c.startswith("metric_")]:
        runs[col] = runs.get(f"q_{col}", math.nan)
    runs["bytes_on_disk"] = runs["q_bytes_on_disk"]
    runs["size_reduction_bytes"] = [ratio(t, b) for t, b in zip(runs["teacher_bytes_on_disk"], runs["bytes_on_disk"])]
    for col in [c for c in runs.columns if c.startswith(("speedup_b", "latency_ms_b", "throughput_b"))]:
        runs[col] = runs.get(f"q_{col}", math.nan) if col.startswith("speedup_b") else math.nan
    for col in [c for c in runs.columns if c.startswith(("speedup_eager_", "speedup_ort_"))]:
        runs[col] = math.nan
    for col in ("inference_kwh", "inference_kg_co2eq", "total_kwh", "total_kg_co2eq"):
        runs[col] = math.nan
    return runs


def with_quantized(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` plus ``quantized_rows``: what the tables and recommendations rank."""
    extra = quantized_rows(frame)
    return frame if extra.empty else pd.concat([frame, extra], ignore_index=True)
