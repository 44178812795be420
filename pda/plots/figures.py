"""The seed paper's figures, drawn from ``pda.analysis.FigureData``; missing scenarios and measurements show as notes.

Every figure says what stands behind a mark (n) and draws error bars only where n > 1.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from pda.analysis import FigureData, recipe_label, recipe_sort_key, task_sort_key
from pda.analysis.frame import pct
from pda.plots.labels import label_points, plain_log_axis
from pda.plots.style import (
    STYLE, col, error_bars, figure_legend, finish, grid, grouped_positions, n_caption, note, recipe_axis,
    metric_axis_label, recipes_in, scenario_color, single, spread, task_title,
)


def _title(text: str, caption: str) -> str:
    return f"{text}\n{caption}" if caption else text


# ----------------------------------------------------------------------------- Fig. 2

def plot_metric_by_scenario(data: FigureData, out_dir: Path | None = None) -> Figure:
    """Fig. 2: main metric per recipe, one panel per task; bars = mean over seeds, error bars = std when n > 1."""
    stem = "fig2_metric_by_scenario"
    with mpl.rc_context(STYLE):
        agg = data.by_task
        have = agg[col(agg, "main_metric_value_mean").notna()]
        title = "Main metric per scenario (mean over seeds)"
        if have.empty:
            return finish(single("no metric values", title), out_dir, stem)
        tasks = sorted(have["task"].unique(), key=task_sort_key)
        fig, axes = grid(len(tasks), 2, (7.0, 3.4))
        for ax, task in zip(axes, tasks):
            rows = have[have["task"] == task]
            recipes = recipes_in(rows)
            means = rows["main_metric_value_mean"].to_numpy(dtype=float)
            err = spread(col(rows, "main_metric_value_std"), rows["n_runs"])
            x = grouped_positions(recipes)
            ax.bar(x, means, color=[scenario_color(s) for s, _ in recipes], edgecolor="black", linewidth=0.5)
            error_bars(ax, x, means, err)
            e = np.nan_to_num(err)
            lo, hi = float(np.min(means - e)), float(np.max(means + e))
            floor = max(0.0, math.floor(lo - 0.25 * (hi - lo) - 2)) if lo >= 0 else lo - 2
            top = hi + 0.08 * (hi - floor) + 0.5
            ax.set_ylim(floor, top)
            ft = rows[rows["scenario"] == "FT"]["main_metric_value_mean"]
            majority = data.majority.get(task)
            if majority is not None and majority <= 0:
                majority = None  # a constant prediction's MCC or correlation is the 0 line
            majority_note = ""
            if majority is not None and majority < floor:  # every bar is above it: said in the title instead
                majority_note, majority = f"; majority class {majority:.1f} is below the axis", None
            # labels at the right edge; when the two lines nearly meet, FT's goes above and the majority's below
            close = len(ft) and majority is not None and abs(ft.iloc[0] - majority) < 0.08 * (top - floor)
            if len(ft):
                ax.axhline(ft.iloc[0], color="black", linestyle="--", linewidth=0.8)
                ax.annotate(f"FT\n{ft.iloc[0]:.1f}", (1.0, ft.iloc[0]), xycoords=("axes fraction", "data"),
                            xytext=(3, 0), textcoords="offset points", va="bottom" if close else "center", fontsize=8)
            if majority is not None:
                ax.axhline(majority, color="dimgray", linestyle=":", linewidth=1.0)
                ax.annotate(f"majority\nclass {majority:.1f}", (1.0, majority), xycoords=("axes fraction", "data"),
                            xytext=(3, 0), textcoords="offset points", va="top" if close else "center", fontsize=7,
                            color="dimgray")
            for xi, (scenario, sparsity), m, spread_i in zip(x, recipes, means, e):
                if k := data.collapsed.get((task, recipe_label(scenario, sparsity))):
                    # above the bar and its error bar; a negative bar (CoLA's MCC) ends at 0, not at its mean
                    ax.annotate(f"†{k}", (xi, min(max(m + spread_i, 0.0), top)), xytext=(0, 1), textcoords="offset points",
                                ha="center", va="bottom", fontsize=8, color="firebrick")
            recipe_axis(ax, x, recipes)
            ax.set_ylabel(metric_axis_label(rows["main_metric"]))
            ax.set_title(task_title(task) + (f"  (y-axis starts at {floor:g}{majority_note})" if floor > 0 else ""),
                         fontsize=10 if majority_note else None)
        caption = n_caption(have["n_runs"], "seed")
        if data.collapsed:
            caption += "; †k = k runs not significantly above the majority class (a constant prediction)"
        fig.suptitle(_title(title, caption))
        return finish(fig, out_dir, stem)


# ----------------------------------------------------------------------------- Fig. 3

def plot_size_vs_sparsity(data: FigureData, out_dir: Path | None = None) -> Figure:
    """Fig. 3: total parameters (M) vs target sparsity per scenario (mean over tasks and seeds);
    unpruned scenarios around 0 %, teacher as a horizontal line."""
    stem = "fig3_size_vs_sparsity"
    with mpl.rc_context(STYLE):
        stats = data.by_recipe[col(data.by_recipe, "params_total_mean").notna()]
        title = "Model size vs target sparsity (mean over tasks and seeds)"
        if stats.empty:
            return finish(single("no parameter counts", title), out_dir, stem)
        fig = Figure(figsize=(7.5, 4.5), layout="constrained")
        ax = fig.subplots()
        if not math.isnan(data.teacher_params):
            ax.axhline(data.teacher_params / 1e6, color="black", linestyle="--", linewidth=1,
                       label=f"teacher {data.teacher_params / 1e6:.1f} M")
        err = spread(col(stats, "params_total_std"), col(stats, "params_total_n")) / 1e6
        unpruned = stats[stats["sparsity"].isna()]
        width = 10.0  # spread unpruned scenarios around x = 0 so that their markers do not hide each other
        for i, (idx, row) in enumerate(unpruned.iterrows()):
            xpos = (i - (len(unpruned) - 1) / 2) * width / max(len(unpruned), 1)
            color = scenario_color(row["scenario"])
            ax.plot(xpos, row["params_total_mean"] / 1e6, "s", markersize=6, color=color,
                    label=f"{row['scenario']} (unpruned)")
            error_bars(ax, [xpos], [row["params_total_mean"] / 1e6], [err[stats.index.get_loc(idx)]], ecolor=color)
        pruned = stats[stats["sparsity"].notna()]
        for scenario in sorted(set(pruned["scenario"]), key=lambda s: recipe_sort_key(s, None)):
            rows = pruned[pruned["scenario"] == scenario].sort_values("sparsity")
            xs, ys = [pct(p) for p in rows["sparsity"]], rows["params_total_mean"].to_numpy() / 1e6
            color = scenario_color(scenario)
            ax.plot(xs, ys, "-o", markersize=5, color=color, label=scenario)
            error_bars(ax, xs, ys, [err[stats.index.get_loc(i)] for i in rows.index], ecolor=color)
        ax.set_xlabel("target sparsity (%)  — unpruned recipes drawn around 0 %")
        ax.set_ylabel("parameters (millions)")
        ax.set_ylim(bottom=0)
        ax.set_title(_title(title, n_caption(col(stats, "params_total_n"), "run", "tasks × seeds")))
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        return finish(fig, out_dir, stem)


# ----------------------------------------------------------------------------- Fig. 4

BACKEND_STYLE: dict[str, tuple[str, str]] = {  # backend -> (legend label, colour)
    "eager_fp32": ("torch eager fp32", "#4c72b0"), "eager_bf16": ("torch eager bf16 autocast", "#8172b3"),
    "ort_fp32": ("ONNX Runtime fp32", "#55a868"), "ort_int8": ("ONNX Runtime INT8", "#c44e52"),
}


def _backends_measured(stats: pd.DataFrame, batch: int) -> list[str]:
    return [b for b in BACKEND_STYLE if col(stats, f"speedup_{b}_b{batch}_mean").notna().any()]


def plot_speedup(data: FigureData, out_dir: Path | None = None) -> Figure:
    """Fig. 4: measured speed-up per recipe at each measured batch size, one bar per backend (each against
    the uncompressed model on the same backend, in the same process; mean over the runs that measured it),
    with the FLOP-count bound (teacher FLOPs / model FLOPs) as a black diamond. Records without
    per-backend numbers show their eager fp32 speed-up."""
    stem = "fig4_speedup"
    with mpl.rc_context(STYLE):
        title = "Inference speed-up vs the uncompressed model on the same backend" + (
            f" ({data.speed_context})" if data.speed_context else "")
        stats = data.by_recipe
        if stats.empty:
            return finish(single("no runs", title), out_dir, stem)
        fig, axes = grid(len(data.batch_sizes), 1, (max(7.0, 0.55 * len(stats) + 2), 4.0))
        recipes = recipes_in(stats)
        x = np.asarray(grouped_positions(recipes)) * 1.6
        bound = col(stats, "flops_speedup_bound_mean")
        ns: list[float] = []
        for ax, batch in zip(axes, data.batch_sizes):
            ax.set_title(f"batch size {batch}")
            measured = _backends_measured(stats, batch)
            columns = [(f"speedup_{b}_b{batch}", *BACKEND_STYLE[b]) for b in measured] or [
                (f"speedup_b{batch}", "eager fp32", BACKEND_STYLE["eager_fp32"][1])]
            if all(col(stats, f"{c}_mean").isna().all() for c, _, _ in columns):
                note(ax, f"no speed measurements at batch {batch}")
                continue
            width = 1.2 / len(columns)
            for k, (column, label, color) in enumerate(columns):
                mean, n = col(stats, f"{column}_mean"), col(stats, f"{column}_n")
                ns += list(n[mean.notna()])
                xs = x - 0.6 + width * (k + 0.5)
                ax.bar(xs, mean.fillna(0), width=width, edgecolor="black", linewidth=0.4, color=color, label=label)
                error_bars(ax, xs, mean, spread(col(stats, f"{column}_std"), n))
            if bound.notna().any():
                ax.plot(x, bound, "D", color="black", markersize=5, label="FLOP bound")
            ax.axhline(1.0, color="black", linestyle="--", linewidth=0.8, label="uncompressed = 1×")
            recipe_axis(ax, x, recipes)
            ax.set_ylabel("speed-up (×, latency ratio)")
            ax.set_ylim(bottom=0)
        figure_legend(fig, axes)
        fig.suptitle(_title(title, n_caption(ns, "run", "tasks × seeds")))
        return finish(fig, out_dir, stem)


# ----------------------------------------------------------------------------- Fig. 5

def plot_emissions(data: FigureData, out_dir: Path | None = None) -> Figure:
    """Fig. 5: energy (Wh) and emissions (g CO2eq) per run, training (solid) vs inference (hatched),
    mean over tasks and seeds per recipe; the title says 'estimated' when the energy modes are estimates."""
    stem = "fig5_emissions"
    with mpl.rc_context(STYLE):
        title = "Energy and emissions per run, mean over tasks and seeds" + (
            " — ESTIMATED (" + "; ".join(data.energy_modes) + ")" if data.energy_estimated else "")
        stats = data.by_recipe
        if stats.empty:
            return finish(single("no runs", title), out_dir, stem)
        fig, axes = grid(2, 2, (6.5, 4.2))
        recipes = recipes_in(stats)
        x = np.array(grouped_positions(recipes))
        colors = [scenario_color(s) for s, _ in recipes]
        ns: list[float] = []
        for ax, (unit, label) in zip(axes, (("kwh", "energy (Wh)"), ("kg_co2eq", "emissions (g CO2eq)"))):
            ax.set_title(label.split(" (")[0] + " per run")
            train, infer = col(stats, f"train_{unit}_mean") * 1e3, col(stats, f"inference_{unit}_mean") * 1e3
            if train.isna().all() and infer.isna().all():
                note(ax, f"no {label.split(' (')[0]} recorded")
                continue
            for phase, values, shift, style in (("train", train, -0.2, {"label": "training"}),
                                                 ("inference", infer, 0.2, {"alpha": 0.55, "hatch": "///",
                                                                            "label": "inference (hatched)"})):
                n = col(stats, f"{phase}_{unit}_n")
                ns += list(n[values.notna()])
                ax.bar(x + shift, values.fillna(0), 0.4, color=colors, edgecolor="black", linewidth=0.5, **style)
                error_bars(ax, x + shift, values, spread(col(stats, f"{phase}_{unit}_std") * 1e3, n), capsize=2)
            positive = pd.concat([train, infer]).dropna()
            positive = positive[positive > 0]
            if len(positive) and positive.max() / positive.min() > 50:
                ax.set_yscale("log")
                label += ", log scale"
            recipe_axis(ax, list(x), recipes)
            ax.set_ylabel(label)
        figure_legend(fig, axes)
        fig.suptitle(_title(title, n_caption(ns, "run", "tasks × seeds")), wrap=True)
        return finish(fig, out_dir, stem)


# ----------------------------------------------------------------------------- Fig. 6

def plot_survival_heatmap(data: FigureData, out_dir: Path | None = None) -> Figure:
    """Fig. 6: per pruned scenario, layers (y) x [heads, FFN units] kept fraction per sparsity (x),
    averaged over tasks and seeds."""
    stem = "fig6_survival"
    with mpl.rc_context(STYLE):
        keyed = {k: v for k, v in data.survival.items() if isinstance(k, tuple) and len(k) == 3}
        title = "Structure kept after pruning (fraction, mean over tasks and seeds)"
        if not keyed:
            return finish(single("no pruned runs with a per-layer structure", title), out_dir, stem)
        by_scenario: dict[str, dict[float | None, list[dict[str, Any]]]] = {}
        for (_, scenario, sparsity), item in keyed.items():
            by_scenario.setdefault(scenario, {}).setdefault(sparsity, []).append(item)
        scenarios = sorted(by_scenario, key=lambda s: recipe_sort_key(s, None))
        n_cols = max(len(v) for v in by_scenario.values()) * 2
        n_layers = max(len(it["layers"]) for it in keyed.values())
        fig, axes = grid(len(scenarios), 4 if n_cols <= 4 else 2, (1.2 + 0.6 * n_cols, 1.2 + 0.3 * max(n_layers, 6)))
        image = None
        for ax, scenario in zip(axes, scenarios):
            sparsities = sorted(by_scenario[scenario], key=lambda p: -1 if p is None else p)
            layers = sorted({l for items in by_scenario[scenario].values() for it in items for l in it["layers"]})
            columns, labels = [], []
            for p in sparsities:
                for j, name in ((0, "heads"), (2, "FFN")):
                    stack = np.array([[it["values"][it["layers"].index(l), j] if l in it["layers"] else np.nan
                                       for l in layers] for it in by_scenario[scenario][p]])
                    with np.errstate(all="ignore"):
                        counts = np.sum(~np.isnan(stack), axis=0)
                        columns.append(np.where(counts > 0, np.nansum(stack, axis=0) / np.maximum(counts, 1), np.nan))
                    labels.append(f"{name}\n{recipe_label('', p).strip() or 'unpruned'}")
            values = np.column_stack(columns)
            image = ax.imshow(values, vmin=0, vmax=1, cmap="viridis", aspect="auto", origin="lower")
            for (i, j), v in np.ndenumerate(values):
                if not np.isnan(v):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v < 0.6 else "black")
            for sep in range(2, len(labels), 2):
                ax.axvline(sep - 0.5, color="white", linewidth=3)
            ax.set_xticks(range(len(labels)), labels)
            ax.set_yticks(range(len(layers)), [str(l + 1) for l in layers])
            if ax.get_subplotspec().is_first_col():
                ax.set_ylabel("encoder layer (1 = bottom)")
            ax.set_title(scenario, color=scenario_color(scenario))
            ax.spines[:].set_visible(False)
        if image is not None:
            fig.colorbar(image, ax=axes, label="fraction of heads / FFN units kept", shrink=0.8)
        runs = sum(it["n_runs"] for it in keyed.values())
        fig.suptitle(_title(title, f"{runs} pruned run(s)"))
        return finish(fig, out_dir, stem)


# ----------------------------------------------------------------------------- Fig. 7

def plot_pareto(data: FigureData, out_dir: Path | None = None) -> Figure:
    """Accuracy vs size: mean main metric vs mean total parameters (M) per recipe, one panel per task,
    Pareto front (fewer parameters and higher metric) as a dashed step line; points labelled."""
    stem = "fig7_pareto"
    with mpl.rc_context(STYLE):
        title = "Accuracy vs model size (mean over seeds; dashed = Pareto front, bold = on the front)"
        if data.collapsed:
            title += "\nrecipes collapsed to the majority class in most seeds are kept off the front"
        agg = data.by_task
        agg = agg[col(agg, "main_metric_value_mean").notna() & col(agg, "params_total_mean").notna()]
        if agg.empty:
            return finish(single("no runs with both a metric and a parameter count", title), out_dir, stem)
        tasks = sorted(agg["task"].unique(), key=task_sort_key)
        fig, axes = grid(len(tasks), 2, (6.5, 4.4))
        panels = []
        for ax, task in zip(axes, tasks):
            rows = agg[agg["task"] == task].reset_index(drop=True)
            px, my = rows["params_total_mean"].to_numpy() / 1e6, rows["main_metric_value_mean"].to_numpy()
            err = spread(col(rows, "main_metric_value_std"), rows["n_runs"])
            front = sorted(np.flatnonzero(rows["on_front"].to_numpy(dtype=bool)), key=lambda i: px[i])
            for i, row in rows.iterrows():
                ax.plot(px[i], my[i], "o", markersize=6, color=scenario_color(row["scenario"]), zorder=3)
            error_bars(ax, px, my, err, capsize=2, ecolor="#555555", zorder=3)
            ax.step(px[front], my[front], where="post", color="black", linestyle="--", linewidth=1, zorder=2)
            if px.max() / max(px.min(), 1e-9) > 4:
                ax.set_xscale("log")
                plain_log_axis(ax)
            e = np.nan_to_num(err)
            low, high = (my - e).min(), (my + e).max()
            pad = 0.08 * max(high - low, 1.0)
            ax.set_ylim(low - pad, high + pad)
            ax.set_xlim(px.min() * 0.8, px.max() * 1.3)
            ax.set_xlabel("parameters (millions)")
            ax.set_ylabel(metric_axis_label(rows["main_metric"]))
            ax.set_title(task_title(task))
            panels.append((ax, px, my, e, list(rows["recipe"]), front))
        fig.suptitle(_title(title, n_caption(agg["n_runs"], "seed")))
        fig.draw_without_rendering()  # fix the layout: label placement works in display coordinates
        for ax, px, my, e, labels, front in panels:
            label_points(ax, px, my, e, labels, front)
        return finish(fig, out_dir, stem)
