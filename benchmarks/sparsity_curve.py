"""Where does a task break? Dev score against the encoder weights kept, over a sparsity sweep.

    make study PARAMS=parameters/sparsity_curve.yaml        # MRPC: P and P+D at 60 ... 90 %, seeds 0-2
    .venv/bin/python benchmarks/sparsity_curve.py outputs/sparsity-curve --task mrpc --out docs/capacity

A study's 60 % and 90 % points say whether a recipe holds at those two budgets, not where between
them it stops learning. This script reads a finished study's run records for one task (its FT, D and pruned runs,
at every sparsity and seed it has) and draws each recipe's dev score against the encoder weights its models
keep (Q, K, V, O and the FFN matrices, CoFi's count), against the two lines that decide whether a run
collapsed (``pda.analysis.collapse``): the majority class, and the least score that is significantly
above it on this dev set (one-sided, 5 %). For a classification task the score is accuracy over the
majority class's, so published models scored on another split (for MRPC the compact BERTs of Turc et al.
2019, GLUE test set over its own majority class; ``--no-published`` leaves them out) can be drawn for
scale; for CoLA and STS-B it is the main metric.
It writes ``<task>-sparsity-curve.png`` and ``.md`` (the table behind it, every run's p-value) into
``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path

from pda.analysis.collapse import ALPHA, p_value  # the study's test of "above a constant prediction"
from pda.analysis.frame import recipe_sort_key

# Turc et al. 2019 (Well-Read Students Learn Better, arXiv:1908.08962), GLUE test set, MRPC accuracy of
# pre-trained compact BERTs (model card of google/bert_uncased_L-2_H-128_A-2): name, layers, hidden, accuracy.
# MRPC's test set is 66.5 % paraphrases (1,147 of 1,725), the accuracy of the constant answer.
TURC_2019_MRPC_TEST = {"majority_accuracy": 66.5, "models": [
    ("BERT-Tiny", 2, 128, 71.1), ("BERT-Mini", 4, 256, 71.8), ("BERT-Small", 4, 512, 76.2), ("BERT-Medium", 8, 512, 81.6)]}


def load_runs(output_dir: Path, task: str) -> list[dict]:
    """Every finished run of ``task`` in a study's output folder, as the fields this script uses."""
    from transformers import AutoConfig

    from pda.pruning.sparsity import full_encoder_weights, structure_weights  # CoFi's count: Q, K, V, O, FFN

    rows = []
    for result in sorted((output_dir / "runs").glob(f"{task}-*/result.json")):
        record = json.loads(result.read_text(encoding="utf-8"))
        if record["task"] != task or record["scenario"] not in ("FT", "D") and not record.get("structure"):
            continue
        if record.get("structure"):
            weights = structure_weights(record["structure"])
        else:  # an unpruned model keeps every weight of its (maybe distilled, shallower) configuration
            weights = full_encoder_weights(AutoConfig.from_pretrained(result.parent / "model"))
        rows.append({"run_id": record["run_id"], "scenario": record["scenario"], "sparsity": record.get("sparsity"),
                     "seed": record["seed"], "metrics": record["metrics"],
                     "weights": weights, "precision": record.get("environment", {}).get("precision", "unknown")})
    if not rows:
        raise SystemExit(f"no finished {task} runs under {output_dir / 'runs'}: run the study first")
    return rows


def score_and_threshold(task: str, baseline) -> tuple[str, str, float, float]:
    """(the collapse test's kind, the metric the y axis shows, the majority class's score on it, the least
    score significantly above it): the test of ``pda.analysis.collapse``, solved for its threshold."""
    from scipy.stats import norm

    n, z = baseline.dev_examples, norm.ppf(1 - ALPHA)
    if task == "cola":  # Matthews: 0 for any constant prediction
        return "matthews", "matthews", 0.0, 100 * z / math.sqrt(n)
    if baseline.accuracy is None:  # regression: a constant has no correlation
        return "pearson", "pearson", 0.0, 100 * math.tanh(z / math.sqrt(n - 3))
    least = next(k for k in range(n + 1) if p_value("accuracy", 100 * k / n, baseline) < ALPHA)
    return "accuracy", ("accuracy_m" if task == "mnli" else "accuracy"), baseline.accuracy, 100 * least / n


def summarise(rows: list[dict], metric: str) -> list[dict]:
    """One line per (scenario, target sparsity): mean ± sample std over seeds of the score and weights."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["scenario"], r["sparsity"])].append(r)
    out = []
    for (scenario, sparsity), runs in sorted(groups.items(), key=lambda kv: recipe_sort_key(*kv[0])):
        values = [r["metrics"][metric] for r in runs]
        out.append({"scenario": scenario, "sparsity": sparsity, "n": len(runs), "weights": statistics.mean(r["weights"] for r in runs),
                    "mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
                    "passed": sum(r["p"] < ALPHA for r in runs)})
    return out


def plot(lines: list[dict], task: str, metric: str, majority: float, threshold: float, published: dict | None, path: Path) -> None:
    from matplotlib.figure import Figure

    over = metric.startswith("accuracy")  # accuracy is drawn over the majority class's, so other splits can join
    shift = majority if over else 0.0
    fig = Figure(figsize=(7.2, 5.2), layout="constrained")
    ax = fig.subplots()
    ax.axhline(majority - shift, color="black", linestyle=":", linewidth=1, label="majority class")
    ax.axhline(threshold - shift, color="firebrick", linestyle="--", linewidth=1,
               label=f"least score significantly above it (p < {ALPHA:g}, this dev set)")
    pruned = sorted({l["scenario"] for l in lines if l["sparsity"] is not None})
    offsets = [(6, -3), (-24, 5), (4, 5), (4, 5), (4, 5)]  # labels right of P, above-left of P+D: no overlap
    for scenario, marker, offset in zip(pruned, "osD^v", offsets):
        mine = sorted((l for l in lines if l["scenario"] == scenario), key=lambda l: -l["weights"])
        x = [l["weights"] / 1e6 for l in mine]
        y = [l["mean"] - shift for l in mine]
        err = [l["std"] or 0.0 for l in mine]
        low, n = min(l["n"] for l in mine), max(l["n"] for l in mine)
        seeds = f"{n} seed{'s' * (n > 1)}" if low == n else f"{low} to {n} seeds"
        ax.errorbar(x, y, yerr=err if n > 1 else None, marker=marker, capsize=3, label=f"{scenario} (mean ± std of {seeds})")
        for l, xi, yi in zip(mine, x, y):
            ax.annotate(f"{l['sparsity']:.0%}", (xi, yi), textcoords="offset points", xytext=offset, fontsize=7)
    for l in (l for l in lines if l["sparsity"] is None):
        ax.errorbar([l["weights"] / 1e6], [l["mean"] - shift], yerr=[l["std"]] if l["std"] else None, marker="*",
                    markersize=11, linestyle="none", capsize=3, label=f"{l['scenario']} (unpruned, {l['n']} seeds)")
    if published and over:
        xs = [layers * 12 * hidden ** 2 / 1e6 for _, layers, hidden, _ in published["models"]]
        ys = [acc - published["majority_accuracy"] for *_, acc in published["models"]]
        ax.scatter(xs, ys, marker="x", color="grey", label="compact BERTs, GLUE test set (Turc et al. 2019), for scale")
        for (name, *_), xi, yi in zip(published["models"], xs, ys):
            ax.annotate(name, (xi, yi), textcoords="offset points", xytext=(5, 4), fontsize=7, color="grey")
    ax.set_xscale("log")
    ax.set_xticks([0.25, 0.5, 1, 2, 5, 10, 20], labels=["0.25", "0.5", "1", "2", "5", "10", "20"])
    ax.set_xlabel("encoder weights kept (millions: Q, K, V, O and FFN matrices; log scale)")
    ax.set_ylabel("dev accuracy over the majority class (points)" if over else f"dev {metric} (%)")
    ax.set_title(f"{task.upper()}: where pruning stops learning (labels: target sparsity)")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=2, fontsize=7, frameon=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=140)


def table(lines: list[dict], rows: list[dict], metric: str, majority: float, threshold: float) -> str:
    precisions = ", ".join(sorted({r["precision"] for r in rows}))
    out = [f"`benchmarks/sparsity_curve.py` over {len(rows)} runs (training precision: {precisions}). Dev {metric} in "
           f"percent; majority class {majority:.1f}; significantly above it (p < {ALPHA:g}) from {threshold:.1f}.", "",
           f"| recipe | target sparsity | encoder weights (M) | dev {metric}, mean ± std | seeds | runs above the majority class (p < {ALPHA:g}) |",
           "|---|---|---|---|---|---|"]
    for l in lines:
        spread = f" ± {l['std']:.1f}" if l["std"] is not None else ""
        target = f"{l['sparsity']:.0%}" if l["sparsity"] is not None else "—"
        out.append(f"| {l['scenario']} | {target} | {l['weights'] / 1e6:.2f} | {l['mean']:.1f}{spread} | {l['n']} | {l['passed']} of {l['n']} |")
    out += ["", "| run | " + " | ".join(sorted(rows[0]["metrics"])) + " | p |", "|---|" + "---|" * (len(rows[0]["metrics"]) + 1)]
    for r in sorted(rows, key=lambda r: (recipe_sort_key(r["scenario"], r["sparsity"]), r["seed"])):
        p = f"{r['p']:.3f}" if r["p"] >= 0.001 else "< 0.001"
        out.append(f"| {r['run_id']} | " + " | ".join(f"{r['metrics'][k]:.1f}" for k in sorted(r["metrics"])) + f" | {p} |")
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output_dir", type=Path, help="a study's output folder (with runs/)")
    parser.add_argument("--task", default="mrpc")
    parser.add_argument("--data-dir", default=None, help="where the task's data is (default: as a study finds it)")
    parser.add_argument("--out", type=Path, default=Path("docs/capacity"), help="where the figure and table go")
    parser.add_argument("--no-published", action="store_true", help="do not draw Turc et al.'s compact BERTs (MRPC)")
    args = parser.parse_args()
    from pda.baselines import majority_baselines

    baseline = majority_baselines([args.task], args.data_dir, online=False)[args.task]
    kind, metric, majority, threshold = score_and_threshold(args.task, baseline)
    rows = load_runs(args.output_dir, args.task)
    for r in rows:
        r["p"] = p_value(kind, r["metrics"][metric], baseline)
    lines = summarise(rows, metric)
    published = TURC_2019_MRPC_TEST if args.task == "mrpc" and not args.no_published else None
    plot(lines, args.task, metric, majority, threshold, published, args.out / f"{args.task}-sparsity-curve.png")
    text = table(lines, rows, metric, majority, threshold)
    (args.out / f"{args.task}-sparsity-curve.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
