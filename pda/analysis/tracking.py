"""Did pruning follow its target? Per pruned run, how far the expected sparsity strayed from the warmed-up target."""

from __future__ import annotations

from typing import Iterable

import pandas as pd

from pda.records import RunRecord

BAND = 0.05  # |ŝ − t| allowed over the last quarter of the pruning steps
CEILING = 0.10  # ŝ may never exceed the target by more than this


def tracking_frame(records: Iterable[RunRecord]) -> pd.DataFrame:
    """One row per pruned run: controller, steps, the two tracking numbers and whether both hold."""
    rows = []
    for r in records:
        tracking = (r.pruning or {}).get("tracking") or {}
        if not r.prune or not tracking:
            continue
        gap, over = tracking.get("max_abs_gap_last_quarter"), tracking.get("max_over_target")
        rows.append({
            "run": r.run_id, "controller": f"{r.pruning.get('controller')}, {r.pruning.get('gate_init')} start",
            "target (%)": f"{100 * r.sparsity:g}", "pruning steps": tracking.get("steps"),
            "max |ŝ − t|, last quarter (pp)": f"{100 * gap:.1f}",
            "max ŝ − target (pp)": f"{100 * over:+.1f}",
            "exported (%)": f"{100 * r.pruning['achieved_vs_input']:.1f}",
            "tracks its target": "yes" if gap <= BAND and over <= CEILING else "no",
        })
    return pd.DataFrame(rows)
