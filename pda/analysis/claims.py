"""The seed paper's claims checked on the runs: a verdict, the evidence in numbers, and the exact rule.

Verdicts respect the evidence. Accuracy claims compare means against the seed-to-seed spread; with
one seed there is no spread, so they read "n = 1, not tested" (the evidence still gives the
differences). A claim that holds on the mean over tasks but fails on one task says so in its
verdict ("confirmed on the mean; fails on mrpc"), and so does one refuted on the mean that holds
somewhere.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd

from pda.analysis.frame import as_aggregate, batch_sizes, recipe_label
from pda.analysis.tables import fixed
from pda.analysis.values import as_float, is_missing, value_of

ADAPTER_PAIRS: tuple[tuple[str, str], ...] = (("FT", "A"), ("D", "D+A"), ("P", "P+A"), ("P+D", "P+D+A"))
CONFIRMED, REFUTED, INCONCLUSIVE = "confirmed", "refuted", "inconclusive"
NOT_TESTED = "n = 1, not tested"
HOLDS, FAILS, UNCLEAR = "holds", "fails", "unclear"


def _claim(claim: str, verdict: str, evidence: str, rule: str) -> dict[str, str]:
    return {"claim": claim, "verdict": verdict, "evidence": evidence, "rule": rule}


def verdict_kind(verdict: str) -> str:
    """The leading word of a verdict: confirmed, refuted, inconclusive, or 'n = 1' for untested claims."""
    return "n = 1" if verdict.startswith(NOT_TESTED) else verdict.split(" ", 1)[0].rstrip(";")


def combine(overall: str, parts: dict[str, str]) -> str:
    """One verdict from the status over all tasks (or recipes) and the status of each one:
    a part that disagrees with the overall result is named in the verdict."""
    holds = [k for k, s in parts.items() if s == HOLDS]
    fails = [k for k, s in parts.items() if s == FAILS]
    if overall == HOLDS:
        return CONFIRMED if not fails else f"{CONFIRMED} on the mean; fails on {', '.join(fails)}"
    if overall == FAILS:
        return REFUTED if not holds else f"{REFUTED} on the mean; holds on {', '.join(holds)}"
    named = [f"holds on {', '.join(holds)}"] * bool(holds) + [f"fails on {', '.join(fails)}"] * bool(fails)
    return "; ".join([INCONCLUSIVE, *named])


def not_tested(parts: dict[str, str]) -> str:
    """The verdict without seed spread, with what the means alone show per task."""
    holds = [k for k, s in parts.items() if s == HOLDS]
    fails = [k for k, s in parts.items() if s == FAILS]
    named = [f"holds on {', '.join(holds)}"] * bool(holds) + [f"fails on {', '.join(fails)}"] * bool(fails)
    return NOT_TESTED + (f"; on the means alone it {'; '.join(named)}" if named else "")


@dataclasses.dataclass(frozen=True)
class TaskDiff:
    """Mean metric of scenario x minus scenario y on one task, and its standard error from the seeds."""

    task: str
    x: float
    y: float
    se: float  # NaN when either side has fewer than two runs

    @property
    def diff(self) -> float:
        return self.x - self.y


def _scenario_rows(agg: pd.DataFrame, scenario: str) -> pd.DataFrame:
    rows = agg[(agg["scenario"] == scenario) & agg["main_metric_value_mean"].notna()]
    return rows.drop_duplicates("task").set_index("task")


def task_diffs(agg: pd.DataFrame, x: str, y: str) -> list[TaskDiff]:
    """x − y of the main metric per task that has both (unpruned recipes of the two scenarios)."""
    xs, ys = _scenario_rows(agg, x), _scenario_rows(agg, y)
    out = []
    for task in sorted(set(xs.index) & set(ys.index)):
        var = 0.0
        for rows in (xs, ys):
            n, std = as_float(rows.loc[task, "main_metric_value_n"]), as_float(rows.loc[task, "main_metric_value_std"])
            var += std ** 2 / n if n >= 2 and not math.isnan(std) else math.nan
        out.append(TaskDiff(task, float(xs.loc[task, "main_metric_value_mean"]),
                            float(ys.loc[task, "main_metric_value_mean"]), math.sqrt(var)))
    return out


def _overall(diffs: list[TaskDiff]) -> tuple[float, float]:
    """Mean difference over tasks and its standard error (NaN when a task has no seed spread)."""
    return float(np.mean([d.diff for d in diffs])), math.sqrt(sum(d.se ** 2 for d in diffs)) / len(diffs)


def _claim_adapters_match_ft(agg: pd.DataFrame, tolerance: float) -> dict[str, str]:
    claim = "(1) Adapters reach FT accuracy (A ≈ FT)"
    rule = (f"per task d = A mean − FT mean, SE from the seed stds (sqrt(s_A²/n_A + s_FT²/n_FT)). A task holds when "
            f"d ≥ −{tolerance:g} point(s) and A is above the base (head-only probe) run; it fails when A is no better "
            f"than base or d < −{tolerance:g} − 2·SE. The same test on the mean over tasks gives the verdict; tasks "
            "that disagree are named. Any side with one seed: n = 1, not tested (the means are still shown)")
    diffs = task_diffs(agg, "A", "FT")
    if not diffs:
        return _claim(claim, INCONCLUSIVE, "no task has both A and FT runs", rule)
    base = _scenario_rows(agg, "base")
    parts, notes = {}, []
    for d in diffs:
        probe = as_float(base.loc[d.task, "main_metric_value_mean"]) if d.task in base.index else math.nan
        if not math.isnan(probe) and d.x <= probe:
            parts[d.task] = FAILS
            notes.append(f"{d.task}: A {d.x:.2f} is no better than the head-only probe (base {probe:.2f})")
        elif d.diff >= -tolerance:
            parts[d.task] = HOLDS
        else:
            parts[d.task] = FAILS if math.isnan(d.se) or d.diff < -tolerance - 2 * d.se else UNCLEAR
    mean, se = _overall(diffs)
    detail = ", ".join(f"{d.task} {d.diff:+.2f}" + ("" if math.isnan(d.se) else f" (SE {d.se:.2f})") for d in diffs)
    evidence = f"A − FT = {mean:+.2f} points on average over {len(diffs)} task(s) ({detail})"
    if mean > tolerance:
        evidence += f"; A is more than {tolerance:g} point(s) above FT"
    evidence += "".join(f"; {n}" for n in notes)
    if math.isnan(se):
        return _claim(claim, not_tested(parts), evidence + "; one seed: no spread to test against", rule)
    overall = HOLDS if mean >= -tolerance else FAILS if mean < -tolerance - 2 * se else UNCLEAR
    return _claim(claim, combine(overall, parts), evidence, rule)


def _claim_distillation_lowers(agg: pd.DataFrame) -> dict[str, str]:
    claim = "(2) Distillation lowers accuracy (D below FT)"
    rule = ("per task d = D mean − FT mean, SE = sqrt(s_D²/n_D + s_FT²/n_FT) from the seed stds; d < −2·SE holds, "
            "d > +2·SE fails, otherwise within seed noise. The same test on the mean over tasks (SE = sqrt(Σ SE_t²) / T) "
            "gives the verdict; tasks that disagree are named. Any side with one seed: n = 1, not tested")
    diffs = task_diffs(agg, "D", "FT")
    if not diffs:
        return _claim(claim, INCONCLUSIVE, "no task has both D and FT runs", rule)
    mean, se = _overall(diffs)
    detail = ", ".join(f"{d.task} {d.diff:+.2f}" for d in diffs)
    evidence = f"D − FT = {mean:+.2f} points on average over {len(diffs)} task(s) ({detail})"
    if math.isnan(se):
        parts = {d.task: HOLDS if d.diff < 0 else FAILS if d.diff > 0 else UNCLEAR for d in diffs}
        return _claim(claim, not_tested(parts), evidence + "; one seed: no spread to test against", rule)
    parts = {d.task: HOLDS if d.diff < -2 * d.se else FAILS if d.diff > 2 * d.se else UNCLEAR for d in diffs}
    overall = HOLDS if mean < -2 * se else FAILS if mean > 2 * se else UNCLEAR
    return _claim(claim, combine(overall, parts), f"{evidence}; 2·SE = {2 * se:.2f}", rule)


def _claim_pda_smallest_fastest(agg: pd.DataFrame) -> dict[str, str]:
    claim = "(3) P+D+A is the smallest and fastest recipe"
    rule = ("on every task, the lowest mean params_total and the highest mean measured speed-up at every measured "
            "batch size over all recipes (any sparsity) belong to P+D+A (ties count for P+D+A): confirmed; any task "
            "where another recipe wins a measured quantity: refuted; otherwise (P+D+A lacks a quantity) inconclusive")
    checks = (("params_total_mean", "min", "size"),
              *[(f"speedup_b{b}_mean", "max", f"speed-up b{b}") for b in batch_sizes(agg)])
    failures, passes, unknown = [], [], []
    tasks = sorted(agg.loc[agg["scenario"] == "P+D+A", "task"].unique())
    if not tasks:
        return _claim(claim, INCONCLUSIVE, "no P+D+A runs", rule)
    for task in tasks:
        rows = agg[agg["task"] == task]
        for col, how, name in checks:
            have = rows[rows[col].notna()] if col in rows else rows.iloc[0:0]
            mine = have[have["scenario"] == "P+D+A"]
            if mine.empty:
                unknown.append(f"{task} {name}")
                continue
            ext = have[col].min() if how == "min" else have[col].max()
            own = mine[col].min() if how == "min" else mine[col].max()
            winner = have.loc[have[col].idxmin() if how == "min" else have[col].idxmax()]
            show = (lambda v: f"{v / 1e6:.1f} M") if "params" in col else (lambda v: f"{v:.2f}×")
            if math.isclose(own, ext, rel_tol=1e-9):
                passes.append(f"{task} {name}: P+D+A {show(own)}")
            else:
                failures.append(f"{task} {name}: {winner['recipe']} {show(ext)} beats P+D+A {show(own)}")
    parts = []
    if failures:
        parts.append("other recipe wins — " + "; ".join(failures))
    if passes:
        parts.append("P+D+A wins — " + "; ".join(passes))
    if unknown:
        parts.append("no P+D+A measurement — " + ", ".join(unknown))
    verdict = REFUTED if failures else INCONCLUSIVE if unknown else CONFIRMED
    return _claim(claim, verdict, " | ".join(parts), rule)


def _claim_adapters_speed_up(agg: pd.DataFrame) -> dict[str, str]:
    claim = "(4) Adapters speed up inference (X+A faster than X)"
    rule = ("pairs (FT, A), (D, D+A), (P, P+A), (P+D, P+D+A) on the same task and sparsity, compared on their "
            "measured batch-1 speed-up vs the uncompressed model (mean over seeds); each speed-up is a ratio of "
            "latencies measured in one process, so runs measured at different times stay comparable, which raw "
            "latencies are not. Latency ratio X+A / X = speed-up(X) / speed-up(X+A). X+A faster in every pair: "
            "confirmed; X+A not faster in more than half of the pairs: refuted; mixed: inconclusive")
    if "speedup_b1_mean" not in agg.columns:
        return _claim(claim, INCONCLUSIVE, "no speed measurements", rule)
    pairs: dict[str, list[tuple[float, float]]] = {}  # "X+A vs X" -> [(latency ratio, params difference)]
    for x, xa in ADAPTER_PAIRS:
        for _, row_a in agg[agg["scenario"] == xa].iterrows():
            same = agg[(agg["scenario"] == x) & (agg["task"] == row_a["task"])]
            same = same[same["sparsity"].isna()] if is_missing(row_a["sparsity"]) else same[same["sparsity"] == row_a["sparsity"]]
            if same.empty:
                continue
            # normalised latency: 1 / speed-up (the uncompressed model measured in the same process = 1)
            lat_x, lat_xa = 1 / value_of(same.iloc[0], "speedup_b1_mean"), 1 / value_of(row_a, "speedup_b1_mean")
            if not (math.isnan(lat_x) or math.isnan(lat_xa)):
                diff = value_of(row_a, "params_total_mean") - value_of(same.iloc[0], "params_total_mean")
                pairs.setdefault(f"{xa} vs {x}", []).append((lat_xa / lat_x, diff))
    ratios = [r for items in pairs.values() for r, _ in items]
    if not ratios:
        return _claim(claim, INCONCLUSIVE, "no (X, X+A) pair with batch-1 latency on both sides", rule)
    faster = sum(r < 1 for r in ratios)
    verdict = CONFIRMED if faster == len(ratios) else REFUTED if len(ratios) - faster > len(ratios) / 2 else INCONCLUSIVE
    detail = "; ".join(
        f"{name}: faster in {sum(r < 1 for r, _ in items)}/{len(items)}, latency ratio {np.median([r for r, _ in items]):.3f}, "
        f"params {fixed(2)(np.nanmean([d for _, d in items]) / 1e6 if any(not math.isnan(d) for _, d in items) else math.nan)} M"
        for name, items in pairs.items())
    evidence = (f"X+A faster in {faster}/{len(ratios)} pair(s) (task, sparsity); median latency ratio X+A / X = "
                f"{np.median(ratios):.3f} ({detail}; ratio < 1 = X+A faster, params = X+A − X)")
    return _claim(claim, verdict, evidence, rule)


def _structure_claim(pruned: pd.DataFrame, claim: str, rule: str, cols: tuple[str, str], missing: str,
                     describe) -> dict[str, str]:
    """A structure claim holds for a pruned recipe when ``cols[0] > cols[1]``; the verdict is the
    comparison of their means over recipes, naming recipes that disagree."""
    have = pruned.dropna(subset=list(cols)) if set(cols) <= set(pruned.columns) else pruned.iloc[0:0]
    if have.empty:
        return _claim(claim, INCONCLUSIVE, missing, rule)
    a, b = have[cols[0]].mean(), have[cols[1]].mean()
    parts = {f"{t} {recipe_label(s, p)}": HOLDS if x > y else FAILS if x < y else UNCLEAR
             for t, s, p, x, y in zip(have["task"], have["scenario"], have["sparsity"], have[cols[0]], have[cols[1]])}
    overall = HOLDS if a > b else FAILS if a < b else UNCLEAR
    held = sum(s == HOLDS for s in parts.values())
    return _claim(claim, combine(overall, parts), describe(a, b, len(have), held), rule)


def _claims_structure(agg: pd.DataFrame) -> list[dict[str, str]]:
    pruned = agg[agg["prune"].astype(bool)] if "prune" in agg else agg.iloc[0:0]
    ffn = _structure_claim(
        pruned, "(5a) FFN units are pruned before attention (more FFN than MHA removed)",
        "per pruned recipe (task, scenario, sparsity), the fraction of FFN parameters removed vs of MHA parameters "
        "removed (from `structure`); their means over recipes decide: FFN > MHA: confirmed; FFN < MHA: refuted; "
        "equal or no structure: inconclusive. Recipes that disagree are named",
        ("ffn_removed_frac_mean", "mha_removed_frac_mean"), "no pruned run with a `structure`",
        lambda a, b, n, k: f"FFN removed {a:.1%} vs MHA removed {b:.1%} on average over {n} pruned recipe(s); "
                           f"FFN lost more in {k}/{n}")
    last = _structure_claim(
        pruned, "(5b) Last layers are pruned first (last third survives less than first third)",
        "per pruned recipe, the kept parameter fraction of the first third of layers vs the last third; their means "
        "over recipes decide: last < first: confirmed; last > first: refuted; equal or no structure: inconclusive. "
        "Recipes that disagree are named",
        ("first_third_kept_mean", "last_third_kept_mean"), "no pruned run with a per-layer `structure` (and hidden_size)",
        lambda a, b, n, k: f"last third keeps {b:.1%} vs first third {a:.1%} of its parameters on average over "
                           f"{n} pruned recipe(s); the last third kept less in {k}/{n}")
    return [ffn, last]


def claims(data: pd.DataFrame, tolerance: float = 1.0) -> pd.DataFrame:
    """Check the seed paper's claims on the data; columns claim, verdict, evidence, rule (the exact test)."""
    agg = as_aggregate(data)
    rows = [_claim_adapters_match_ft(agg, tolerance), _claim_distillation_lowers(agg),
            _claim_pda_smallest_fastest(agg), _claim_adapters_speed_up(agg), *_claims_structure(agg)]
    return pd.DataFrame(rows, columns=["claim", "verdict", "evidence", "rule"])
