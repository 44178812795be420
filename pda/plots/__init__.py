"""Draw the study's figures from the numbers ``pda.analysis.figure_data`` computed (plots never compute them)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from matplotlib.figure import Figure

from pda.analysis import FigureData
from pda.plots.figures import (
    plot_emissions, plot_metric_by_scenario, plot_pareto, plot_size_vs_sparsity, plot_speedup, plot_survival_heatmap,
)
from pda.plots.style import SCENARIO_COLORS, STYLE, describe_figure, figure_alt_text, save_figure, scenario_color

FIGURES: dict[str, Callable[[FigureData], Figure]] = {
    "fig2_metric_by_scenario": plot_metric_by_scenario,
    "fig3_size_vs_sparsity": plot_size_vs_sparsity,
    "fig4_speedup": plot_speedup,
    "fig5_emissions": plot_emissions,
    "fig6_survival": plot_survival_heatmap,
    "fig7_pareto": plot_pareto,
}


def save_all_figures(data: FigureData, figures_dir: Path, dpi: int = 150) -> list[Path]:
    """Render every figure to PNG + SVG in ``figures_dir``; returns the written paths."""
    paths: list[Path] = []
    for stem, draw in FIGURES.items():
        paths += save_figure(draw(data), Path(figures_dir), stem, dpi)
    return paths


__all__ = [
    "FIGURES", "SCENARIO_COLORS", "STYLE", "describe_figure", "figure_alt_text", "plot_emissions",
    "plot_metric_by_scenario", "plot_pareto",
    "plot_size_vs_sparsity", "plot_speedup", "plot_survival_heatmap", "save_all_figures", "save_figure",
    "scenario_color",
]
