"""How close each recipe's measured speed-up comes to its FLOP bound, per backend.

The FLOP bound (teacher FLOPs / model FLOPs, matmuls only) is the speed-up a model would get if time
followed its matrix products. What it leaves out (embeddings, LayerNorms, residual adds, softmax,
call overhead) does not shrink with pruning, so the share of the bound reached falls as sparsity
rises; this table shows by how much, per backend and for the best backend of each run.
"""

from __future__ import annotations

import pandas as pd

from pda.analysis.frame import SCENARIO_ORDER

GOAL = 0.8  # issue 13: the best backend reaches 0.8 of the FLOP bound at batch 32
BACKEND_ORDER = ("eager_fp32", "eager_bf16", "ort_fp32", "ort_int8")


def bound_shares(frame: pd.DataFrame, batch: int = 32) -> pd.DataFrame:
    """Per compressed run (FLOP bound above 1.05): each backend's speed-up over the bound, and the best one."""
    cols = [b for b in BACKEND_ORDER if f"speedup_{b}_b{batch}" in frame]
    if not cols:
        return pd.DataFrame()
    runs = frame[(frame["flops_speedup_bound"] > 1.05) & frame[[f"speedup_{b}_b{batch}" for b in cols]].notna().any(axis=1)]
    if runs.empty:
        return pd.DataFrame()
    runs = runs.copy()
    for b in cols:
        runs[b] = runs[f"speedup_{b}_b{batch}"] / runs["flops_speedup_bound"]
    runs["best"] = runs[cols].max(axis=1, skipna=True)
    return runs[["run_id", "task", "scenario", "sparsity", "recipe", "speed_source", "flops_speedup_bound",
                 *cols, "best"]]


def bound_table(frame: pd.DataFrame, batch: int = 32) -> pd.DataFrame:
    """Per recipe: runs, how they were timed, mean share of the bound per backend, and the best backend's
    mean, minimum and how many runs reach ``GOAL``."""
    shares = bound_shares(frame, batch)
    if shares.empty:
        return shares
    backends = [b for b in BACKEND_ORDER if b in shares]
    rank = {s: i for i, s in enumerate(SCENARIO_ORDER)}
    shares = shares.assign(_rank=shares["scenario"].map(rank).fillna(len(rank)), _sp=shares["sparsity"].fillna(0))
    rows = []
    for _, grp in shares.groupby(["_rank", "scenario", "_sp"], sort=True):
        best = grp["best"].dropna()
        timed = grp["speed_source"].value_counts()
        row = {"recipe": grp["recipe"].iloc[0], "runs": str(len(grp)),
               "timed": ", ".join(f"{n} {src}" for src, n in timed.items()) or "n/a",
               "FLOP bound (×)": f"{grp['flops_speedup_bound'].mean():.1f}"}
        for b in backends:
            have = grp[b].dropna()
            row[b] = f"{have.mean():.2f} ({len(have)})" if len(have) else "n/a"
        row["best backend, mean"] = f"{best.mean():.2f}" if len(best) else "n/a"
        row["best, lowest run"] = f"{best.min():.2f}" if len(best) else "n/a"
        row[f"runs ≥ {GOAL:g}"] = f"{int((best >= GOAL).sum())} / {len(best)}" if len(best) else "n/a"
        rows.append(row)
    return pd.DataFrame(rows)


def bound_sentence(frame: pd.DataFrame, batch: int = 32) -> str:
    """One line on how the speeds were timed: re-timed with the machine idle, or during the study."""
    shares = bound_shares(frame, batch)
    if shares.empty:
        return "No compressed run has a measured speed-up."
    timed = shares["speed_source"].value_counts()
    retimed, total = int(timed.get("retime", 0)), len(shares)
    if retimed == total:
        how = ("every run was timed after the study's training, with the machine to itself (`measure.timing: "
               "after_study`, or `python -m pda retime`)")
    elif retimed:
        how = (f"{retimed} of {total} runs were timed again with the machine to itself (`python -m pda retime`), "
               "the others during their run")
    else:
        how = ("every run was timed during its run, beside whatever else the study ran (in a parallel study, the "
               "other workers' training); memory-bound work, most of a small model's time, slows down more under "
               "that load than the reference's matrix products, so these shares can be low; `python -m pda retime` "
               "times them again on an idle machine")
    return (f"Speed-up at batch {batch} over the FLOP bound (teacher FLOPs / model FLOPs), per backend, against the "
            f"uncompressed model on the same backend (in brackets: runs measured); {how}.")
