"""The markdown report: tables, recommendations, claims, carbon statement and links to figures already drawn."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

from pda.analysis.bound import bound_sentence, bound_table
from pda.analysis.carbon import carbon_statement
from pda.analysis.claims import claims
from pda.analysis.collapse import ALPHA, VERDICT, collapse_table, collapsed_recipes
from pda.baselines import MajorityBaseline
from pda.analysis.frame import aggregate, records_frame
from pda.analysis.quantized import with_quantized
from pda.analysis.recommendations import recommendations
from pda.analysis.timing import run_times, time_sentence, time_table
from pda.analysis.tracking import BAND, CEILING, tracking_frame
from pda.analysis.tables import accuracy_table, efficiency_table, markdown_table, recommendation_table
from pda.records import RunRecord, atomic_write_text, finished_run_dirs, read_all_records

RULES = (
    "Eligible recipes on a task are those whose mean main metric is at least FT's mean minus the tolerance "
    "and above the base (head-only probe) run's, so a collapsed model never wins. "
    "*Keep accuracy*: the eligible non-FT recipe with the highest mean metric (FT if none). "
    "*Smallest on disk*: eligible recipe with the fewest mean bytes of weights (INT8 variants included). "
    "*Fastest*: eligible recipe with the highest mean measured speed-up vs the teacher at that batch size. "
    "*Least CO2*: eligible recipe with the lowest mean training + inference CO2 of its own run "
    "(the teacher's training is not added). Ties go to the higher metric."
)

QUANTIZED = ("'+Q' rows: the same runs quantised to INT8 (ONNX Runtime dynamic quantisation), dev metric re-measured, "
             "bytes of the INT8 file, speed-up against the same fp32 reference; their inference energy was not measured.")


def _relative(path: Path, start: Path) -> str:
    """``path`` relative to ``start`` (POSIX), so the report names no machine's folders."""
    return Path(os.path.relpath(Path(path).resolve(), Path(start).resolve())).as_posix()


def write_report(records_dir: Path, out_path: Path, figures: Sequence[Path] = (), tolerance: float = 1.0,
                 loose_tolerance: float | None = 5.0, majority: Mapping[str, MajorityBaseline] | None = None,
                 records: Sequence[RunRecord] | None = None) -> Path:
    """Write the markdown report atomically; ``figures`` (already drawn, e.g. by
    ``pda.plots.save_all_figures``) are linked relative to the report; ``majority`` (task -> the
    majority-class baseline, ``pda.baselines.majority_baselines``) adds the collapse check.

    ``records`` (e.g. ``pda.runs.study_records``) limits the report to one study's runs; the report says
    how many other records ``records_dir`` holds. None: every record there."""
    if records is None:
        records, others = read_all_records(Path(records_dir)), 0
    else:
        records = list(records)
        others = len({d.name for d in finished_run_dirs(records_dir)} - {r.run_id for r in records})
    frame = records_frame(records)
    agg = aggregate(frame)
    with_q = aggregate(with_quantized(frame))  # every recipe next to its INT8 variant (+Q)
    collapsed = collapse_table(frame, majority or {})
    not_learned = collapsed_recipes(collapsed)  # never recommended
    out_path = Path(out_path)
    parts = [
        "# PDA results report", "",
        f"{len(records)} run(s) from `{_relative(records_dir, out_path.parent)}`; metrics are GLUE dev-set main "
        "metrics in percent, mean ± sample std over seeds with n = seeds (no ± when n = 1). "
        "'n/a': not measured; '—': does not apply." + (
            f" {others} other record(s) in that folder belong to other studies (other tasks, scenarios, "
            "sparsities or seeds) and are left out." if others else ""), "",
    ]
    if not records:
        parts += ["No finished runs were found.", ""]
    else:
        parts += [
            "## Main metric per task", "", QUANTIZED, "", markdown_table(accuracy_table(with_q)), "",
            "## Size, speed and energy per recipe (mean over tasks)", "", markdown_table(efficiency_table(with_q)), "",
            "## Speed against the FLOP bound", "", bound_sentence(frame), "", markdown_table(bound_table(frame)), "",
            f"## Recommendations (accuracy tolerance {tolerance:g} point(s))", "", RULES, "",
            markdown_table(recommendation_table(recommendations(with_q, tolerance, not_learned))), "",
        ]
        if loose_tolerance is not None:
            parts += [
                f"## Recommendations when up to {loose_tolerance:g} points of the main metric may be traded", "",
                "The same rules with a looser tolerance: what each priority buys when some accuracy can be spent.",
                "", markdown_table(recommendation_table(recommendations(with_q, loose_tolerance, not_learned))), "",
            ]
        if not collapsed.empty:
            bad = collapsed[collapsed[VERDICT] == "yes"]
            parts += [
                "## Runs at the majority class", "",
                "A run that is not significantly better than always predicting the training set's majority class "
                f"(one-sided, p ≥ {ALPHA:g}: an exact binomial test of its dev accuracy against the majority "
                "class's; for a task scored by Matthews correlation, such as CoLA, z = MCC·√n; for regression, such as "
                "STS-B, whose constant prediction has correlation 0, Fisher's z = atanh(r)·√(n−3) on Pearson's r) "
                "has collapsed, on a "
                f"task whose FT teacher is significantly better. {len(bad)} of {len(collapsed)} run(s) other than FT "
                "collapsed" + (": " + ", ".join(f"`{r}`" for r in bad["run"]) if len(bad) else "") + ".", "",
                markdown_table(collapsed), "",
            ]
        tracking = tracking_frame(records)
        if not tracking.empty:
            parts += [
                "## Does pruning follow its target?", "",
                f"Per pruned run: the largest gap between expected sparsity ŝ and the warmed-up target t over the last "
                f"quarter of the pruning steps (must be ≤ {100 * BAND:g} points) and the largest excess of ŝ over the "
                f"final target (must be ≤ {100 * CEILING:g} points); 'exported' is the sparsity of the structure "
                "actually cut out, against the model that was pruned.", "",
                markdown_table(tracking), "",
            ]
        parts += [
            "## Claims of the seed paper checked on these data", "",
            "An accuracy claim needs seed spread: with one seed it reads 'n = 1, not tested'. A claim that holds "
            "on the mean but fails on a task (or recipe) names it in its verdict.", "",
            markdown_table(claims(agg, tolerance)), "",
        ]
    parts += ["## Carbon footprint", "", carbon_statement(frame)["sentence"], ""]
    times = run_times(records, Path(records_dir))
    if not times.empty:
        parts += [
            "## Where the time went", "", time_sentence(times), "",
            "Minutes of run time (each run's executed notebook, start to end: loading, training, evaluation, "
            "INT8 variant, benchmarks) per task and scenario; 'span' runs from the task's first start to its "
            "last end, so tasks that overlap on parallel workers have spans that add up to more than the wall "
            "time.", "", markdown_table(time_table(times)), "",
        ]
    pngs = [Path(f) for f in figures if Path(f).suffix == ".png"]
    if pngs:
        parts += ["## Figures", ""]
        for f in pngs:
            rel = _relative(f, out_path.parent)
            parts += [f"![{f.stem}]({rel}) ([SVG]({Path(rel).with_suffix('.svg').as_posix()}))", ""]
    atomic_write_text(out_path, "\n".join(parts))
    return out_path
