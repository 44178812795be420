"""Compare sparsity controllers on one task and budget: how closely s follows t, and what the pruned model scores.

Each variant is a P run (``pda.pipeline.run``) on the same FT teacher, data, budget and seed; only
``pruning.controller`` / ``pruning.gate_init`` (and their learning rates) differ. Writes one figure
of expected sparsity vs target per variant and a markdown table of tracking and dev scores.

    python benchmarks/pruning_controllers.py parameters/default.yaml --task mrpc --sparsities 0.6 0.9 \
        --work outputs/controllers --out docs/controllers

The FT teacher must be in the study's output folder (run ``make study`` or the teacher notebook first).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

VARIANTS = {
    "CoFi (Lagrangian, saturated start)": {"controller": "lagrangian", "gate_init": "cofi"},
    "Lagrangian, importance start": {"controller": "lagrangian", "gate_init": "importance"},
    "projection, CoFi start": {"controller": "projection", "gate_init": "cofi"},
    "projection, importance start (default)": {"controller": "projection", "gate_init": "importance"},
}


def run_variants(params: Path, task: str, sparsities: list[float], work: Path, seed: int) -> list[dict]:
    from pda.config import for_run, load_params
    from pda.pipeline import run
    from pda.runs import run_dir

    base = load_params(params)
    teacher = run_dir(base, f"{task}-FT-seed{seed}")
    if not (teacher / "result.json").is_file():
        raise SystemExit(f"no FT teacher at {teacher}: run the study (or its teacher notebook) first")
    rows = []
    for name, pruning in VARIANTS.items():
        slug = pruning["controller"] + "-" + pruning["gate_init"]
        study_out = work / slug
        (study_out / "runs").mkdir(parents=True, exist_ok=True)
        link = study_out / "runs" / teacher.name
        if not link.exists():
            link.symlink_to(teacher.resolve())
        cfg_study = load_params(params, output_dir=str(study_out), pruning=pruning,
                                measure={"speed": False, "energy": False, "flops": False})
        for sparsity in sparsities:
            cfg = for_run(cfg_study, task, "P", sparsity, seed)
            done = run_dir(cfg.study, f"{task}-P-sp{round(sparsity * 100):02d}-seed{seed}") / "result.json"
            record = json.loads(done.read_text()) if done.is_file() else run(cfg).to_dict()
            rows.append({"variant": name, "sparsity": sparsity, "metric": record["main_metric"],
                         "value": record["main_metric_value"], "metrics": record["metrics"], "tracking": record["pruning"]["tracking"],
                         "trace": record["pruning"]["trace"], "achieved": record["pruning"]["achieved_vs_input"],
                         "teacher": json.loads((teacher / "result.json").read_text())["main_metric_value"]})
    return rows


def plot(rows: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure

    sparsities = sorted({r["sparsity"] for r in rows})
    fig = Figure(figsize=(4.6 * len(sparsities), 3.6), layout="constrained")
    axes = fig.subplots(1, len(sparsities), squeeze=False)[0]
    for ax, sp in zip(axes, sparsities):
        mine = [r for r in rows if r["sparsity"] == sp]
        steps, _, target = zip(*mine[0]["trace"])
        ax.plot(steps, target, color="#bbbbbb", linewidth=6, solid_capstyle="butt", label="target t (warm-up)")
        ax.axhspan(sp - 0.05, sp + 0.05, color="grey", alpha=0.12, linewidth=0, label="±5 points of the target")
        for r, style in zip(mine, ("-", "-", (0, (4, 2)), (0, (1, 1.5)))):  # projections on t: dashed / dotted
            steps, s_hat, _ = zip(*r["trace"])
            ax.plot(steps, s_hat, label=r["variant"], linestyle=style, linewidth=1.8)
        ax.set(title=f"target sparsity {sp:.0%}", xlabel="pruning step", ylabel="expected sparsity ŝ (encoder weights)",
               ylim=(0, 1))
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=3, fontsize=8, frameon=False)
    fig.suptitle("Expected sparsity ŝ against its warmed-up target t while pruning (one run per line)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=140)


def table(rows: list[dict]) -> str:
    lines = ["| controller | target | max abs(ŝ − t), last quarter | max ŝ − target | exported | dev metrics (%) | "
             "teacher's main metric |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        t = r["tracking"]
        metrics = ", ".join(f"{k} {v:.1f}" for k, v in r["metrics"].items())
        lines.append(f"| {r['variant']} | {r['sparsity']:.0%} | {t['max_abs_gap_last_quarter']:.3f} | "
                     f"{t['max_over_target']:+.3f} | {r['achieved']:.1%} | {metrics} | {r['metric']} {r['teacher']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("params", type=Path)
    parser.add_argument("--task", default="mrpc")
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.6, 0.9])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("outputs/controllers"), help="where the runs go")
    parser.add_argument("--out", type=Path, default=Path("docs/controllers"), help="where the figure and table go")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    rows = run_variants(args.params, args.task, args.sparsities, args.work.resolve(), args.seed)
    plot(rows, args.out / f"controllers-{args.task}.png")
    (args.out / f"controllers-{args.task}.md").write_text(table(rows) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
