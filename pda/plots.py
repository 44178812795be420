"""Draw the seed paper's figures from the run frame, tolerating missing scenarios and measurements."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.ticker import FuncFormatter
from matplotlib.figure import Figure  # Figure without pyplot: no global figure registry, no backend switch

from pda.analysis import (
    SCENARIO_ORDER, aggregate, task_sort_key, energy_is_estimated, is_missing, recipe_label, recipe_sort_key, survival_matrix,
)
from pda.records import RunRecord

SCENARIO_COLORS: dict[str, str] = dict(zip(SCENARIO_ORDER, (
    "#3d3d3d", "#8c8c8c", "#1f77b4", "#ff7f0e", "#d62728", "#2ca02c", "#17becf", "#9467bd", "#e377c2",
)))
STYLE: dict[str, Any] = {
    "font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "xtick.labelsize": 8.5, "ytick.labelsize": 9,
    "legend.fontsize": 8.5, "axes.spines.top": False, "axes.spines.right": False, "svg.fonttype": "none",
}


def scenario_color(scenario: str) -> str:
    return SCENARIO_COLORS.get(scenario, "#8c564b")


def save_figure(fig: Figure, out_dir: Path, stem: str, dpi: int = 150) -> list[Path]:
    """Save ``fig`` as ``<stem>.png`` (at ``dpi``) and ``<stem>.svg`` in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.svg"]
    with mpl.rc_context(STYLE):
        fig.savefig(paths[0], dpi=dpi, bbox_inches="tight")
        fig.savefig(paths[1], bbox_inches="tight")
    return paths


def _col(df: pd.DataFrame, name: str) -> pd.Series:
    """Column ``name``, or an all-NaN column when the frame lacks it."""
    return df[name] if name in df.columns else pd.Series(np.nan, index=df.index, dtype=float)


def _note(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=10, color="#555555", wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def _grid(n: int, ncols: int, panel: tuple[float, float]) -> tuple[Figure, list[Axes]]:
    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows), layout="constrained")
    axes = list(np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel())
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[: max(n, 1)]


def _recipes(df: pd.DataFrame) -> list[tuple[str, float]]:
    """Distinct (scenario, sparsity) pairs in figure order."""
    pairs = {(s, None if is_missing(p) else float(p)) for s, p in zip(df["scenario"], df["sparsity"])}
    return sorted(pairs, key=lambda sp: recipe_sort_key(*sp))


def _select(df: pd.DataFrame, scenario: str, sparsity: float | None) -> pd.DataFrame:
    same = df["sparsity"].isna() if sparsity is None else df["sparsity"] == sparsity
    return df[(df["scenario"] == scenario) & same]


def _recipe_axis(ax: Axes, x: Sequence[float], recipes: Sequence[tuple[str, float | None]]) -> None:
    """Tick labels: target sparsity of pruned bars on the first line, scenario names centred under
    their bars on the second line (so that long names never collide)."""
    ax.set_xticks(list(x), ["" if is_missing(p) else f"{_pct(p):g}" for _, p in recipes])
    ax.tick_params(axis="x", length=0, pad=3)
    if any(not is_missing(p) for _, p in recipes):
        ax.set_xlabel("scenario; numbers = target sparsity (%)", labelpad=16, fontsize=8.5, color="#444444")
    groups: dict[str, list[float]] = {}
    for xi, (scenario, _) in zip(x, recipes):
        groups.setdefault(scenario, []).append(xi)
    for scenario, xs in groups.items():
        ax.annotate(scenario, (float(np.mean(xs)), 0), xycoords=ax.get_xaxis_transform(), xytext=(0, -17),
                    textcoords="offset points", ha="center", va="top", fontsize=9, fontweight="bold",
                    color=scenario_color(scenario))


def _per_recipe(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """Mean and sample std over all runs (all tasks and seeds) of ``column`` per recipe, in figure order."""
    rows = []
    for scenario, sparsity in _recipes(frame):
        values = _col(_select(frame, scenario, sparsity), column).dropna()
        rows.append({"scenario": scenario, "sparsity": sparsity, "mean": values.mean() if len(values) else np.nan,
                     "std": values.std(ddof=1) if len(values) > 1 else np.nan, "n": len(values)})
    return pd.DataFrame(rows, columns=["scenario", "sparsity", "mean", "std", "n"])


def _empty_frame(frame: pd.DataFrame | None) -> bool:
    return frame is None or frame.empty or "scenario" not in frame or "sparsity" not in frame


def _single(message: str, title: str) -> Figure:
    fig = Figure(figsize=(6, 3), layout="constrained")
    ax = fig.subplots()
    ax.set_title(title)
    _note(ax, message)
    return fig


def _figure_legend(fig: Figure, axes: Sequence[Axes]) -> None:
    """One legend for the figure, below the panels, so that it never covers data."""
    handles: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=len(handles), frameon=False)


def _finish(fig: Figure, out_dir: Path | None, stem: str) -> Figure:
    if out_dir is not None:
        save_figure(fig, out_dir, stem)
    return fig


# ----------------------------------------------------------------------------- Fig. 2

def plot_metric_by_scenario(frame: pd.DataFrame, out_dir: Path | None = None) -> Figure:
    """Fig. 2: main metric per recipe, one panel per task; bars = mean, error bars = std over seeds."""
    with mpl.rc_context(STYLE):
        title = "Main metric per scenario (mean ± std over seeds)"
        if _empty_frame(frame) or _col(frame, "main_metric_value").isna().all():
            return _finish(_single("no metric values", title), out_dir, "fig2_metric_by_scenario")
        agg = aggregate(frame)
        tasks = sorted(agg["task"].unique(), key=task_sort_key)
        fig, axes = _grid(len(tasks), 2, (7.0, 3.4))
        for ax, task in zip(axes, tasks):
            rows = agg[(agg["task"] == task) & agg["main_metric_value_mean"].notna()]
            recipes = _recipes(rows)
            means = [_select(rows, *r)["main_metric_value_mean"].iloc[0] for r in recipes]
            stds = np.nan_to_num([_select(rows, *r)["main_metric_value_std"].iloc[0] for r in recipes])
            x = _grouped_positions(recipes)
            ax.bar(x, means, yerr=stds, capsize=3, color=[scenario_color(s) for s, _ in recipes],
                   edgecolor="black", linewidth=0.5, error_kw={"elinewidth": 1})
            ft = rows[rows["scenario"] == "FT"]["main_metric_value_mean"]
            if len(ft):
                ax.axhline(ft.iloc[0], color="black", linestyle="--", linewidth=0.8)
                ax.annotate(f"FT\n{ft.iloc[0]:.1f}", (1.0, ft.iloc[0]), xycoords=("axes fraction", "data"),
                            xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
            lo = min(m - s for m, s in zip(means, stds))
            hi = max(m + s for m, s in zip(means, stds))
            floor = max(0.0, math.floor(lo - 0.25 * (hi - lo) - 2)) if lo >= 0 else lo - 2
            ax.set_ylim(floor, hi + 0.08 * (hi - floor) + 0.5)
            _recipe_axis(ax, x, recipes)
            metric = rows["main_metric"].dropna()
            ax.set_ylabel(f"{metric.iloc[0] if len(metric) else 'metric'} (%)")
            ax.set_title(task.upper() + (f"  (y-axis starts at {floor:g})" if floor > 0 else ""))
        fig.suptitle(title)
        return _finish(fig, out_dir, "fig2_metric_by_scenario")


def _grouped_positions(recipes: Sequence[tuple[str, float | None]]) -> list[float]:
    """x positions with a gap between scenarios so that sparsities of one scenario sit together."""
    x, pos, prev = [], 0.0, None
    for scenario, _ in recipes:
        if prev is not None:
            pos += 1.0 if scenario == prev else 1.5
        x.append(pos)
        prev = scenario
    return x


# ----------------------------------------------------------------------------- Fig. 3

def plot_size_vs_sparsity(frame: pd.DataFrame, out_dir: Path | None = None) -> Figure:
    """Fig. 3: total parameters (M) vs target sparsity per scenario (mean over tasks and seeds);
    unpruned scenarios at 0 %, teacher as a horizontal line."""
    with mpl.rc_context(STYLE):
        title = "Model size vs target sparsity (mean over tasks and seeds)"
        if _empty_frame(frame) or _col(frame, "params_total").isna().all():
            return _finish(_single("no parameter counts", title), out_dir, "fig3_size_vs_sparsity")
        stats = _per_recipe(frame, "params_total").dropna(subset=["mean"])
        fig = Figure(figsize=(7.5, 4.5), layout="constrained")
        ax = fig.subplots()
        teacher = _col(frame, "teacher_params_total").dropna()
        if len(teacher):
            ax.axhline(teacher.mean() / 1e6, color="black", linestyle="--", linewidth=1,
                       label=f"teacher {teacher.mean() / 1e6:.1f} M")
        unpruned = [s for s in SCENARIO_ORDER if s in set(stats.loc[stats["sparsity"].isna(), "scenario"])]
        unpruned += sorted(set(stats.loc[stats["sparsity"].isna(), "scenario"]) - set(unpruned))
        width = 10.0  # spread unpruned scenarios around x = 0 so that their markers do not hide each other
        for i, scenario in enumerate(unpruned):
            row = stats[(stats["scenario"] == scenario) & stats["sparsity"].isna()].iloc[0]
            xpos = (i - (len(unpruned) - 1) / 2) * width / max(len(unpruned), 1)
            ax.errorbar(xpos, row["mean"] / 1e6, yerr=np.nan_to_num(row["std"]) / 1e6, fmt="s", markersize=6,
                        color=scenario_color(scenario), label=f"{scenario} (unpruned)", capsize=3)
        pruned = stats[stats["sparsity"].notna()]
        for scenario in [s for s in SCENARIO_ORDER if s in set(pruned["scenario"])] + sorted(set(pruned["scenario"]) - set(SCENARIO_ORDER)):
            rows = pruned[pruned["scenario"] == scenario].sort_values("sparsity")
            xs = [_pct(p) for p in rows["sparsity"]]
            ax.errorbar(xs, rows["mean"] / 1e6, yerr=np.nan_to_num(rows["std"]) / 1e6, fmt="-o", markersize=5,
                        color=scenario_color(scenario), label=scenario, capsize=3)
        ax.set_xlabel("target sparsity (%)  — unpruned recipes drawn around 0 %")
        ax.set_ylabel("parameters (millions)")
        ax.set_ylim(bottom=0)
        ax.set_title(title)
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        return _finish(fig, out_dir, "fig3_size_vs_sparsity")


def _pct(sparsity: float) -> float:
    return float(sparsity) * 100 if float(sparsity) <= 1 else float(sparsity)


# ----------------------------------------------------------------------------- Fig. 4

def _speed_context(frame: pd.DataFrame) -> str:
    device = _col(frame, "speed_device").dropna().unique()
    threads = _col(frame, "speed_threads").dropna().unique()
    parts = [", ".join(map(str, device))] if len(device) else []
    if len(threads):
        parts.append(f"{', '.join(f'{t:g}' for t in threads)} thread(s)")
    return f" ({'; '.join(parts)})" if parts else ""


def plot_speedup(frame: pd.DataFrame, out_dir: Path | None = None) -> Figure:
    """Fig. 4: measured speed-up vs the teacher at batch 1 and 32 per recipe (mean ± std over tasks and
    seeds), with the FLOP-count bound (teacher FLOPs / model FLOPs) as a black diamond."""
    with mpl.rc_context(STYLE):
        title = "Inference speed-up vs teacher" + ("" if _empty_frame(frame) else _speed_context(frame))
        if _empty_frame(frame):
            return _finish(_single("no runs", title), out_dir, "fig4_speedup")
        fig, axes = _grid(2, 2, (6.5, 4.0))
        bound = _per_recipe(frame, "flops_speedup_bound")
        for ax, batch in zip(axes, (1, 32)):
            stats = _per_recipe(frame, f"speedup_b{batch}")
            ax.set_title(f"batch size {batch}")
            if stats["mean"].isna().all():
                _note(ax, f"no speed measurements at batch {batch}")
                continue
            x = _grouped_positions(list(zip(stats["scenario"], stats["sparsity"])))
            ax.bar(x, stats["mean"].fillna(0), yerr=np.nan_to_num(stats["std"]), capsize=3, edgecolor="black",
                   linewidth=0.5, color=[scenario_color(s) for s in stats["scenario"]])
            for xi, m in zip(x, stats["mean"]):
                if math.isnan(m):
                    ax.text(xi, 0.05, "n/a", ha="center", va="bottom", fontsize=8, rotation=90)
            if bound["mean"].notna().any():
                ax.plot(x, bound["mean"], "D", color="black", markersize=5, label="FLOP bound")
            ax.axhline(1.0, color="black", linestyle="--", linewidth=0.8, label="teacher = 1×")
            _recipe_axis(ax, x, list(zip(stats["scenario"], stats["sparsity"])))
            ax.set_ylabel("speed-up vs teacher (×, latency ratio)")
            ax.set_ylim(bottom=0)
        _figure_legend(fig, axes)
        fig.suptitle(title)
        return _finish(fig, out_dir, "fig4_speedup")


# ----------------------------------------------------------------------------- Fig. 5

def plot_emissions(frame: pd.DataFrame, out_dir: Path | None = None) -> Figure:
    """Fig. 5: energy (kWh) and emissions (kg CO2eq) per run, training (solid) vs inference (hatched),
    mean over tasks and seeds per recipe; the title says 'estimated' when the energy modes are estimates."""
    with mpl.rc_context(STYLE):
        modes = set(_col(frame, "train_energy_mode").dropna()) | set(_col(frame, "inference_energy_mode").dropna()) \
            if not _empty_frame(frame) else set()
        title = "Energy and emissions per run" + (" — ESTIMATED (" + "; ".join(sorted(modes)) + ")"
                                                   if energy_is_estimated(modes) else "")
        if _empty_frame(frame):
            return _finish(_single("no runs", title), out_dir, "fig5_emissions")
        fig, axes = _grid(2, 2, (6.5, 4.2))
        for ax, (unit, label) in zip(axes, (("kwh", "energy (kWh)"), ("kg_co2eq", "emissions (kg CO2eq)"))):
            train, infer = _per_recipe(frame, f"train_{unit}"), _per_recipe(frame, f"inference_{unit}")
            ax.set_title(label.split(" (")[0] + " per run")
            if train["mean"].isna().all() and infer["mean"].isna().all():
                _note(ax, f"no {label} recorded")
                continue
            x = np.array(_grouped_positions(list(zip(train["scenario"], train["sparsity"]))))
            colors = [scenario_color(s) for s in train["scenario"]]
            ax.bar(x - 0.2, train["mean"].fillna(0), 0.4, yerr=np.nan_to_num(train["std"]), color=colors,
                   edgecolor="black", linewidth=0.5, capsize=2, label="training")
            ax.bar(x + 0.2, infer["mean"].fillna(0), 0.4, yerr=np.nan_to_num(infer["std"]), color=colors, alpha=0.55,
                   hatch="///", edgecolor="black", linewidth=0.5, capsize=2, label="inference (hatched)")
            positive = pd.concat([train["mean"], infer["mean"]]).dropna()
            positive = positive[positive > 0]
            if len(positive) and positive.max() / positive.min() > 50:
                ax.set_yscale("log")
                label += ", log scale"
            _recipe_axis(ax, x, list(zip(train["scenario"], train["sparsity"])))
            ax.set_ylabel(label)
        _figure_legend(fig, axes)
        fig.suptitle(title, wrap=True)
        return _finish(fig, out_dir, "fig5_emissions")


# ----------------------------------------------------------------------------- Fig. 6

def plot_survival_heatmap(survival: dict[Any, dict[str, Any]], out_dir: Path | None = None) -> Figure:
    """Fig. 6: per pruned scenario, layers (y) x [heads, FFN units] kept fraction per sparsity (x),
    averaged over tasks and seeds (``survival`` from ``analysis.survival_matrix`` with average_seeds=True)."""
    with mpl.rc_context(STYLE):
        title = "Structure kept after pruning (fraction, mean over tasks and seeds)"
        keyed = {k: v for k, v in survival.items() if isinstance(k, tuple) and len(k) == 3}
        if not keyed:
            return _finish(_single("no pruned runs with a per-layer structure", title), out_dir, "fig6_survival")
        by_scenario: dict[str, dict[float | None, list[dict[str, Any]]]] = {}
        for (_, scenario, sparsity), item in keyed.items():
            by_scenario.setdefault(scenario, {}).setdefault(sparsity, []).append(item)
        scenarios = sorted(by_scenario, key=lambda s: recipe_sort_key(s, None))
        n_cols = max(len(v) for v in by_scenario.values()) * 2
        n_layers = max(len(it["layers"]) for it in keyed.values())
        fig, axes = _grid(len(scenarios), 4 if n_cols <= 4 else 2, (1.2 + 0.6 * n_cols, 1.2 + 0.3 * max(n_layers, 6)))
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
                        col = np.where(counts > 0, np.nansum(stack, axis=0) / np.maximum(counts, 1), np.nan)
                    columns.append(col)
                    labels.append(f"{name}\n{recipe_label('', p).strip() or 'unpruned'}")
            values = np.column_stack(columns)
            image = ax.imshow(values, vmin=0, vmax=1, cmap="viridis", aspect="auto", origin="lower")
            for (i, j), v in np.ndenumerate(values):
                if not np.isnan(v):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if v < 0.6 else "black")
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
        fig.suptitle(title)
        return _finish(fig, out_dir, "fig6_survival")


# ----------------------------------------------------------------------------- Pareto

def pareto_front(params: Sequence[float], metric: Sequence[float]) -> list[int]:
    """Indices of points not dominated (no other point has <= params and >= metric with one strict),
    ordered by params."""
    pts = [(p, m, i) for i, (p, m) in enumerate(zip(params, metric)) if not (math.isnan(p) or math.isnan(m))]
    front, best = [], -math.inf
    for p, m, i in sorted(pts, key=lambda t: (t[0], -t[1])):
        if m > best:
            front.append(i)
            best = m
    return front


def plot_pareto(frame: pd.DataFrame, out_dir: Path | None = None) -> Figure:
    """Accuracy vs size: mean main metric vs mean total parameters (M) per recipe, one panel per task,
    Pareto front (fewer parameters and higher metric) as a dashed step line; points labelled."""
    with mpl.rc_context(STYLE):
        title = "Accuracy vs model size (mean ± std over seeds; dashed = Pareto front, bold = on the front)"
        if _empty_frame(frame) or _col(frame, "main_metric_value").isna().all() or _col(frame, "params_total").isna().all():
            return _finish(_single("no runs with both a metric and a parameter count", title), out_dir, "fig7_pareto")
        agg = aggregate(frame)
        agg = agg[agg["main_metric_value_mean"].notna() & agg["params_total_mean"].notna()]
        tasks = sorted(agg["task"].unique(), key=task_sort_key)
        fig, axes = _grid(len(tasks), 2, (6.5, 4.4))
        for ax, task in zip(axes, tasks):
            rows = agg[agg["task"] == task].reset_index(drop=True)
            px, my = rows["params_total_mean"].to_numpy() / 1e6, rows["main_metric_value_mean"].to_numpy()
            for i, row in rows.iterrows():
                ax.errorbar(px[i], my[i], yerr=np.nan_to_num(row["main_metric_value_std"]), fmt="o", markersize=6,
                            color=scenario_color(row["scenario"]), capsize=2, zorder=3)
            front = pareto_front(list(px), list(my))
            ax.step(px[front], my[front], where="post", color="black", linestyle="--", linewidth=1, zorder=2)
            if px.max() / max(px.min(), 1e-9) > 4:
                ax.set_xscale("log")
                _plain_log_axis(ax)
            err = np.nan_to_num(rows["main_metric_value_std"].to_numpy())
            low, high = (my - err).min(), (my + err).max()
            pad = 0.08 * max(high - low, 1.0)
            ax.set_ylim(low - pad, high + pad)
            ax.set_xlim(px.min() * 0.8, px.max() * 1.3)
            metric = rows["main_metric"].dropna()
            ax.set_xlabel("parameters (millions)")
            ax.set_ylabel(f"{metric.iloc[0] if len(metric) else 'metric'} (%)")
            ax.set_title(task.upper())
        fig.suptitle(title)
        fig.draw_without_rendering()  # fix the layout: label placement works in display coordinates
        for ax, task in zip(axes, tasks):
            rows = agg[agg["task"] == task].reset_index(drop=True)
            px, my = rows["params_total_mean"].to_numpy() / 1e6, rows["main_metric_value_mean"].to_numpy()
            err = np.nan_to_num(rows["main_metric_value_std"].to_numpy())
            _label_points(ax, px, my, err, list(rows["recipe"]), pareto_front(list(px), list(my)))
        return _finish(fig, out_dir, "fig7_pareto")


def _label_points(ax: Axes, x: np.ndarray, y: np.ndarray, yerr: np.ndarray, labels: Sequence[str],
                  front: list[int], fontsize: float = 7.5) -> None:
    """Label each point, greedily choosing among offsets the first whose text box hits no earlier label,
    marker, error bar or front segment (least overlap otherwise); far offsets get a leader line.
    Call after the layout is final (``fig.draw_without_rendering()``); labels stay out of the layout."""
    fig = ax.get_figure()
    scale = fig.dpi / 72  # display pixels per point
    to_px = ax.transData.transform
    pts = to_px(np.column_stack([x, y]))
    lo, hi = to_px(np.column_stack([x, y - yerr])), to_px(np.column_stack([x, y + yerr]))
    boxes = [(px - 5 * scale, py - 5 * scale, px + 5 * scale, py + 5 * scale) for px, py in pts]
    boxes += [(a[0] - scale, a[1], a[0] + scale, b[1]) for a, b in zip(lo, hi)]
    fp = to_px(np.column_stack([x[front], y[front]]))
    for (x0, y0), (x1, y1) in zip(fp[:-1], fp[1:]):  # the 'post' step: across, then up
        boxes += [(x0, y0 - scale, x1, y0 + scale), (x1 - scale, y0, x1 + scale, y1)]
    frame = ax.bbox.extents
    offsets = [(dx * r, dy * r) for r in (7, 14, 24, 36)
               for dx, dy in ((1, 0), (-1, 0), (1, 1), (-1, 1), (1, -1), (-1, -1), (0, 1), (0, -1))]

    def overlap(a: Sequence[float], b: Sequence[float]) -> float:
        return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))

    for i in sorted(range(len(x)), key=lambda i: (i not in front, -y[i])):
        tw, th = 0.62 * fontsize * len(labels[i]) * scale, 1.3 * fontsize * scale
        best, best_cost, best_box = offsets[0], math.inf, boxes[0]
        for dx, dy in offsets:
            x0 = pts[i][0] + dx * scale - (tw if dx < 0 else tw / 2 if dx == 0 else 0)
            y0 = pts[i][1] + dy * scale - (th if dy < 0 else th / 2 if dy == 0 else 0)
            box = (x0, y0, x0 + tw, y0 + th)
            outside = sum(max(0.0, v) for v in (frame[0] - box[0], box[2] - frame[2], frame[1] - box[1], box[3] - frame[3]))
            cost = sum(overlap(box, b) for b in boxes) + 100 * outside * th
            centre = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
            dist = np.hypot(*(pts - centre).T)
            if np.any(np.delete(dist, i) < dist[i]):  # the label would sit nearer another point: ambiguous
                cost += 0.5 * tw * th
            if cost < best_cost:
                best, best_cost, best_box = (dx, dy), cost, box
            if cost == 0:
                break
        boxes.append(best_box)
        dx, dy = best
        text = ax.annotate(labels[i], (x[i], y[i]), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize,
                    ha="left" if dx > 0 else "right" if dx < 0 else "center",
                    va="bottom" if dy > 0 else "top" if dy < 0 else "center",
                    fontweight="bold" if i in front else "normal", zorder=4,
                    arrowprops={"arrowstyle": "-", "color": "#777777", "linewidth": 0.6, "shrinkA": 0, "shrinkB": 4}
                    if max(abs(dx), abs(dy)) > 10 else None)
        text.set_in_layout(False)


def _plain_log_axis(ax: Axes) -> None:
    """Log x axis labelled with plain numbers (1, 2, 3, 5 x 10^k)."""
    fmt = FuncFormatter(lambda v, _: f"{v:g}" if v > 0 and f"{v:e}"[0] in "1235" else "")
    ax.xaxis.set_major_formatter(fmt)
    ax.xaxis.set_minor_formatter(fmt)


# ----------------------------------------------------------------------------- all

def save_all_figures(frame: pd.DataFrame, records: Iterable[RunRecord], figures_dir: Path, dpi: int = 150) -> list[Path]:
    """Render every figure to PNG + SVG in ``figures_dir``; returns the written paths."""
    figures_dir = Path(figures_dir)
    makers: list[tuple[str, Callable[[], Figure]]] = [
        ("fig2_metric_by_scenario", lambda: plot_metric_by_scenario(frame)),
        ("fig3_size_vs_sparsity", lambda: plot_size_vs_sparsity(frame)),
        ("fig4_speedup", lambda: plot_speedup(frame)),
        ("fig5_emissions", lambda: plot_emissions(frame)),
        ("fig6_survival", lambda: plot_survival_heatmap(survival_matrix(records))),
        ("fig7_pareto", lambda: plot_pareto(frame)),
    ]
    paths: list[Path] = []
    for stem, make in makers:
        paths += save_figure(make(), figures_dir, stem, dpi)
    return paths
