"""The study's energy and carbon footprint: totals over runs, the measurement modes, one sentence."""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable

import pandas as pd


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
