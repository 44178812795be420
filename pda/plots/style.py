"""The figures' shared look: colours per scenario, panel grids, recipe axes, error bars only where n > 1."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure  # Figure without pyplot: no global figure registry, no backend switch

from pda.analysis import SCENARIO_ORDER, is_missing
from pda.analysis.frame import pct
from pda.tasks import get_task

SCENARIO_COLORS: dict[str, str] = dict(zip(SCENARIO_ORDER, (
    "#3d3d3d", "#8c8c8c", "#1f77b4", "#ff7f0e", "#d62728", "#2ca02c", "#17becf", "#9467bd", "#e377c2",
)))
STYLE: dict[str, Any] = {
    "font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "xtick.labelsize": 8.5, "ytick.labelsize": 9,
    "legend.fontsize": 8.5, "axes.spines.top": False, "axes.spines.right": False, "svg.fonttype": "none",
}


METRIC_LABELS: dict[str, str] = {
    "accuracy": "accuracy (%)", "f1": "F1 (%)", "f1_macro": "macro F1 (%)", "matthews": "Matthews correlation (×100)",
    "pearson": "Pearson r (×100)", "spearman": "Spearman ρ (×100)",
    "pearson_spearman_mean": "Pearson/Spearman mean (×100)",
}


def scenario_color(scenario: str) -> str:
    return SCENARIO_COLORS.get(scenario, "#8c564b")


def task_title(task: str) -> str:
    """The GLUE spelling readers know (``stsb`` -> ``STS-B``); an unknown task is shown upper-cased."""
    try:
        return get_task(task).folder
    except ValueError:
        return str(task).upper()


def metric_axis_label(metrics: pd.Series) -> str:
    """Axis label for a panel's main metric, with its unit; 'metric (%)' when the runs do not say which."""
    names = metrics.dropna()
    name = str(names.iloc[0]) if len(names) else ""
    return METRIC_LABELS.get(name, f"{name or 'metric'} (%)")


def describe_figure(fig: Figure) -> str:
    """A text description of ``fig`` for readers who cannot see it (HTML alt text): its title, then
    each panel's title and what its axes show, as the figure itself labels them."""
    def lines(text: str) -> str:  # a title's lines become sentences
        return ". ".join(" ".join(line.split()) for line in text.splitlines() if line.strip())

    panels = []
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        if ax.get_label() == "<colorbar>":  # its label says what the colours mean
            label = lines(ax.get_ylabel() or ax.get_xlabel())
            panels += [f"colour: {label}"] if label else []
            continue
        axes = " against ".join(lines(label) for label in (ax.get_ylabel(), ax.get_xlabel()) if label)
        panel = "; ".join(part for part in (lines(ax.get_title()), axes) if part)
        if panel:
            panels.append(panel)
    text = ". ".join(part for part in (lines(fig.get_suptitle()), " | ".join(panels)) if part)
    return text or "A figure without title or axis labels"


def save_figure(fig: Figure, out_dir: Path, stem: str, dpi: int = 150) -> list[Path]:
    """Save ``fig`` as ``<stem>.png`` (at ``dpi``) and ``<stem>.svg`` in ``out_dir``; both files carry
    ``describe_figure(fig)`` as their Description, which ``figure_alt_text`` reads back."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.svg"]
    description = describe_figure(fig)
    with mpl.rc_context(STYLE):
        fig.savefig(paths[0], dpi=dpi, bbox_inches="tight", metadata={"Description": description})
        fig.savefig(paths[1], bbox_inches="tight", metadata={"Description": description})
    return paths


def figure_alt_text(png: Path) -> str:
    """The Description ``save_figure`` wrote into a PNG (empty if it has none): the figure's alt text."""
    from PIL import Image

    with Image.open(png) as image:
        return str(getattr(image, "text", {}).get("Description", ""))


def col(df: pd.DataFrame, name: str) -> pd.Series:
    """Column ``name``, or an all-NaN column when the frame lacks it."""
    return df[name] if name in df.columns else pd.Series(np.nan, index=df.index, dtype=float)


def note(ax: Axes, text: str) -> None:
    """A panel that says why it has nothing to show."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=10, color="#555555", wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def grid(n: int, ncols: int, panel: tuple[float, float]) -> tuple[Figure, list[Axes]]:
    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows), layout="constrained")
    axes = list(np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel())
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[: max(n, 1)]


def single(message: str, title: str) -> Figure:
    fig = Figure(figsize=(6, 3), layout="constrained")
    ax = fig.subplots()
    ax.set_title(title)
    note(ax, message)
    return fig


def figure_legend(fig: Figure, axes: Sequence[Axes]) -> None:
    """One legend for the figure, below the panels, so that it never covers data."""
    handles: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=len(handles), frameon=False)


def finish(fig: Figure, out_dir: Path | None, stem: str) -> Figure:
    if out_dir is not None:
        save_figure(fig, out_dir, stem)
    return fig


def recipes_in(df: pd.DataFrame) -> list[tuple[str, float | None]]:
    return list(zip(df["scenario"], [None if is_missing(p) else float(p) for p in df["sparsity"]]))


def grouped_positions(recipes: Sequence[tuple[str, float | None]]) -> list[float]:
    """x positions with a gap between scenarios so that sparsities of one scenario sit together."""
    x, pos, prev = [], 0.0, None
    for scenario, _ in recipes:
        if prev is not None:
            pos += 1.0 if scenario == prev else 1.5
        x.append(pos)
        prev = scenario
    return x


def recipe_axis(ax: Axes, x: Sequence[float], recipes: Sequence[tuple[str, float | None]]) -> None:
    """Tick labels: target sparsity of pruned bars on the first line, scenario names centred under
    their bars on the second line (so that long names never collide)."""
    ax.set_xticks(list(x), ["" if is_missing(p) else f"{pct(p):g}" for _, p in recipes])
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


def spread(std: Sequence[float], n: Sequence[float]) -> np.ndarray:
    """The std where it exists (n > 1), NaN elsewhere: no zero-height error bar ever stands for n = 1."""
    std, n = np.asarray(std, dtype=float), np.asarray(n, dtype=float)
    return np.where((n > 1) & np.isfinite(std), std, np.nan)


def error_bars(ax: Axes, x: Sequence[float], y: Sequence[float], err: Sequence[float], **kwargs: Any) -> None:
    """Error bars only at the points with a spread (see ``spread``); nothing at the others."""
    x, y, err = (np.asarray(v, dtype=float) for v in (x, y, err))
    keep = np.isfinite(err) & np.isfinite(y)
    if keep.any():
        ax.errorbar(x[keep], y[keep], yerr=err[keep], fmt="none", ecolor=kwargs.pop("ecolor", "black"),
                    capsize=kwargs.pop("capsize", 3), elinewidth=kwargs.pop("elinewidth", 1), **kwargs)


def n_caption(ns: Sequence[float], unit: str, over: str = "") -> str:
    """What stands behind each mark: 'n = 1 seed each, no error bars' or
    'n = 2 runs (tasks × seeds) each; error bars = sample std'."""
    counts = sorted({int(v) for v in ns if not is_missing(v) and v > 0})
    if not counts:
        return ""
    what = f" ({over})" if over else ""
    if counts == [1]:
        return f"n = 1 {unit}{what} each, no error bars"
    span = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    return f"n = {span} {unit}s{what} each; error bars = sample std" + (" where n > 1" if counts[0] == 1 else "")
