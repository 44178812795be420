"""Did a run learn anything? A one-sided test of its dev score against always predicting the majority class.

A fixed margin on the main metric cannot tell: on MRPC, F1 flatters the constant "paraphrase"
(81.2) so a run that learned is within a point of it, and on RTE's 277 dev examples three points of
accuracy are noise. Two tests, both against "no better than a constant prediction":

- accuracy (every classification task but CoLA): exact binomial. If the run were right on each dev
  example with the majority class's accuracy, how likely would it be right this often?
- Matthews correlation (CoLA, whose majority class is 69 % of dev and scores 0): a constant or
  label-blind prediction has MCC 0, and n * MCC^2 is then chi-square with one degree of freedom,
  so z = MCC * sqrt(n).
- Pearson correlation (STS-B, regression: the constant is any single score, correlation 0):
  Fisher's z = atanh(r) * sqrt(n - 3) is standard normal when the predictions are unrelated to the
  labels.

A run that is not significantly better (p >= ``ALPHA``) has collapsed, on a task whose FT teacher is
significantly better (otherwise the task is not learned at this budget, and the table says so).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import pandas as pd
from scipy.stats import binomtest, norm

from pda.analysis.frame import recipe_label, sort_recipes
from pda.analysis.values import is_missing
from pda.baselines import MajorityBaseline

ALPHA = 0.05  # one-sided significance level of "above the majority class"
VERDICT = "collapsed to the majority class"
NOT_LEARNED = "teacher not above the majority class"


def p_above_majority(accuracy: float, baseline: MajorityBaseline) -> float:
    """P(at least this many dev examples right | each right with the majority class's accuracy), exact binomial."""
    if baseline.accuracy is None:
        raise ValueError("a regression task has no majority class to test accuracy against; test its Pearson r")
    n = baseline.dev_examples
    right = round(accuracy / 100 * n)
    return float(binomtest(right, n, baseline.accuracy / 100, alternative="greater").pvalue)


def p_positive_matthews(matthews: float, dev_examples: int) -> float:
    """P(MCC at least this high | predictions independent of the labels): z = MCC * sqrt(n), one-sided."""
    return float(norm.sf(matthews / 100 * dev_examples ** 0.5))


def p_positive_pearson(pearson: float, dev_examples: int) -> float:
    """P(r at least this high | predictions unrelated to the labels): Fisher's z = atanh(r) * sqrt(n - 3), one-sided."""
    r = min(max(pearson / 100, -0.999999), 0.999999)
    return float(norm.sf(math.atanh(r) * max(dev_examples - 3, 1) ** 0.5))


def tested_score(row: pd.Series) -> tuple[str, float] | None:
    """('matthews', MCC) when the run's main metric is Matthews, ('pearson', r) for regression, else
    ('accuracy', dev accuracy; MNLI: matched); None if the record has none of them."""
    main = row.get("main_metric")
    columns = (("metric_matthews",) if main == "matthews"
               else ("metric_pearson",) if main in ("pearson", "spearman", "pearson_spearman_mean")
               else ("metric_accuracy", "metric_accuracy_m"))
    for column in columns:
        if column in row.index and not is_missing(row[column]):
            return column.removeprefix("metric_").removesuffix("_m"), float(row[column])
    return None


def p_value(kind: str, value: float, baseline: MajorityBaseline) -> float:
    if kind == "matthews":
        return p_positive_matthews(value, baseline.dev_examples)
    if kind == "pearson":
        return p_positive_pearson(value, baseline.dev_examples)
    return p_above_majority(value, baseline)


def collapse_table(frame: pd.DataFrame, majority: Mapping[str, MajorityBaseline], alpha: float = ALPHA) -> pd.DataFrame:
    """One row per run other than FT on a task with a majority baseline: 'yes' when it is not significantly
    better than a constant prediction (p >= ``alpha``, see the module) while its task's FT teacher (mean
    over seeds) is."""
    teachers: dict[tuple[str, str], list[float]] = {}  # (task, tested score) -> the FT runs' values, one per seed
    for _, r in frame[frame["scenario"] == "FT"].iterrows():
        if (tested := tested_score(r)) is not None:
            teachers.setdefault((r["task"], tested[0]), []).append(tested[1])
    rows = []
    for _, r in sort_recipes(frame).iterrows():
        tested = tested_score(r)
        if r["scenario"] == "FT" or r["task"] not in majority or tested is None:
            continue
        kind, value = tested
        base = majority[r["task"]]
        teacher_values = teachers.get((r["task"], kind))
        teacher = sum(teacher_values) / len(teacher_values) if teacher_values else None
        teacher_p = None if teacher is None else p_value(kind, teacher, base)
        p = p_value(kind, value, base)
        if teacher_p is not None and teacher_p < alpha:
            verdict = "yes" if p >= alpha else "no"
        else:
            verdict = NOT_LEARNED + ("" if teacher_p is None else f" (p = {teacher_p:.2f})")
        rows.append({
            "run": r["run_id"], "task": r["task"], "recipe": recipe_label(r["scenario"], r["sparsity"]),
            "main metric": f"{r['main_metric']} {r['main_metric_value']:.2f}", "tested": kind,
            "run (%)": f"{value:.2f}", "constant prediction (%)": f"{base.accuracy if kind == 'accuracy' else 0.0:.2f}",
            "dev examples": base.dev_examples, "p (better than constant)": f"{p:.3f}",
            "FT teacher (%)": "—" if teacher is None else f"{teacher:.2f}", VERDICT: verdict,
        })
    return pd.DataFrame(rows)


def _collapsed_by_recipe(table: pd.DataFrame) -> pd.core.groupby.SeriesGroupBy:
    """A ``collapse_table``'s verdicts as booleans (collapsed or not), grouped by (task, recipe label)."""
    return (table[VERDICT] == "yes").groupby([table["task"], table["recipe"]])


def collapsed_recipes(table: pd.DataFrame) -> set[tuple[str, str]]:
    """(task, recipe label) of the recipes that collapsed in more than half of their runs (seeds) in a
    ``collapse_table``: the recommendations leave them, and their INT8 variants, out."""
    if table.empty:
        return set()
    return {key for key, share in _collapsed_by_recipe(table).mean().items() if share > 0.5}


def collapsed_counts(table: pd.DataFrame) -> dict[tuple[str, str], int]:
    """(task, recipe label) -> how many of its runs a ``collapse_table`` found collapsed (only those with any)."""
    if table.empty:
        return {}
    return {key: int(n) for key, n in _collapsed_by_recipe(table).sum().items() if n}
