"""Does bf16 autocast change what training learns? The same FT runs in fp32 and in bf16, several seeds.

    python benchmarks/bf16_vs_fp32.py parameters/default.yaml --task sst2 --seeds 0 1 2 --rows 2000 \
        --epochs 2 --out docs/bf16

Each run is ``pda.pipeline.run`` of the FT scenario with the parameter file's settings except
``precision`` (and the budget given here); it writes a markdown table of dev scores and training
time per precision, with mean ± sample std over seeds and the difference of the means in units of
its standard error.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("params", type=Path)
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--out", type=Path, default=Path("docs/bf16"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from pda.config import for_run, load_params
    from pda.pipeline import run

    results: dict[str, list[tuple[float, float]]] = {}
    for precision in ("fp32", "bf16"):
        study = load_params(args.params, precision=precision, output_dir=str((args.out / precision).resolve()),
                            max_train_samples=args.rows, overrides={},
                            training={"epochs": args.epochs},
                            measure={"speed": False, "energy": False, "flops": False, "quantize": False})
        for seed in args.seeds:
            record = run(for_run(study, args.task, "FT", None, seed))
            assert record.environment["precision"] == precision, record.environment
            results.setdefault(precision, []).append((record.main_metric_value, record.train_time_s))
            print(precision, seed, record.main_metric_value, record.train_time_s, flush=True)
    lines = [f"| precision | dev {args.task} main metric, per seed | mean ± std | training time (s), mean |",
             "|---|---|---|---|"]
    stats = {}
    for precision, rows in results.items():
        values = [v for v, _ in rows]
        mean, std = statistics.mean(values), statistics.stdev(values) if len(values) > 1 else math.nan
        stats[precision] = (mean, std, len(values))
        lines.append(f"| {precision} | {', '.join(f'{v:.2f}' for v in values)} | {mean:.2f} ± {std:.2f} | "
                     f"{statistics.mean(t for _, t in rows):.0f} |")
    (m1, s1, n1), (m2, s2, n2) = stats["fp32"], stats["bf16"]
    se = math.sqrt(s1 ** 2 / n1 + s2 ** 2 / n2)
    lines.append("")
    lines.append(f"bf16 − fp32 = {m2 - m1:+.2f} points; standard error of the difference {se:.2f} "
                 f"({(m2 - m1) / se:+.1f} SE)." if se > 0 else f"bf16 − fp32 = {m2 - m1:+.2f} points.")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"bf16-vs-fp32-{args.task}.md").write_text("\n".join(lines) + "\n")
    (args.out / f"bf16-vs-fp32-{args.task}.json").write_text(json.dumps(results, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
