"""What pruning kept: per-run summaries of the removed structure and per-layer survival matrices."""

from __future__ import annotations

import math
import warnings
from typing import Any, Iterable

import numpy as np

from pda.analysis.values import as_float as _num, ratio as _ratio
from pda.records import RunRecord

SURVIVAL_COLUMNS: tuple[str, ...] = ("heads kept (fraction)", "MHA kept", "FFN units kept (fraction)", "FFN kept")


def heads_count(kept: Any) -> float:
    """Run records list the kept head indices; a bare count is accepted too."""
    return float(len(kept)) if isinstance(kept, (list, tuple)) else _num(kept)


def structure_summary(structure: dict[str, Any] | None) -> dict[str, float]:
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
    heads = [0.0 if l.get("mha_kept") is False else heads_count(l.get("heads_kept")) for l in layers]
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
                0.0 if mha is False else _ratio(heads_count(l.get("heads_kept")), _num(l.get("num_heads"))),
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
