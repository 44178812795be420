"""Does a transfer set help a small distilled student? D distilled on its task's rows plus other tasks' pairs.

    python benchmarks/transfer_set.py parameters/default.yaml --teacher outputs/runs/mrpc-FT-seed0 \
        --transfer stsb rte --runs D P+D/0.6 P+D/0.9 --seed 0 --out /tmp/transfer-stsb-rte
    python benchmarks/transfer_set.py parameters/default.yaml --teacher outputs/runs/mrpc-FT-seed0 \
        --runs D P+D/0.6 --seed 1 --out /tmp/transfer-none    # the same runs without one

A transfer set (Hinton et al. 2015) is unlabelled input the teacher labels: here the training pairs of
other GLUE tasks (their labels dropped), renamed to the task's text fields. The study's option
``distill.transfer_tasks`` does it (``pda.pipeline.prepare_data``, ``label_transfer_rows``); this script
sets it for the D run only (``--transfer``, none by default, whatever the parameter file says) and
leaves the pruned runs on the task's own rows. The teacher (a finished FT run folder of the same
parameter file) is copied into ``--out`` and serves every seed, so seeds here vary the student, not the
teacher.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("params", type=Path)
    parser.add_argument("--teacher", type=Path, required=True, help="a finished FT run folder, e.g. outputs/runs/mrpc-FT-seed0")
    parser.add_argument("--transfer", nargs="*", default=[], help="pair tasks whose training pairs join D's rows")
    parser.add_argument("--runs", nargs="+", default=["D", "P+D/0.6"], help="SCENARIO or SCENARIO/SPARSITY, in order")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from pda import config, pipeline
    from pda.records import read_record

    teacher_record = read_record(args.teacher)
    if teacher_record.scenario != "FT":
        raise SystemExit(f"--teacher {args.teacher} is a {teacher_record.scenario} run; give an FT run folder")
    task_name, teacher_seed = teacher_record.task, teacher_record.seed
    runs = args.out.resolve() / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    if not (runs / args.teacher.name).exists():
        shutil.copytree(args.teacher, runs / args.teacher.name, ignore=shutil.ignore_patterns(pipeline.TEACHER_LOGITS_DIR))
    only_d = {"overrides": {f"{task_name}/D": {"distill": {"transfer_tasks": list(args.transfer)}}}}
    try:
        study = config.load_params(args.params, output_dir=str(args.out.resolve()), torch_threads=args.threads, **only_d)
    except config.ConfigError as err:
        raise SystemExit(f"error: {err}") from None
    own_teacher_of = pipeline.teacher_of

    def teacher_of(spec):  # every seed's student distils from the one teacher given
        found = own_teacher_of(spec)
        return dataclasses.replace(found, seed=teacher_seed) if found is not None else None

    pipeline.teacher_of = teacher_of
    results = []
    for item in args.runs:
        scenario, _, sparsity = item.partition("/")
        cfg = config.for_run(study, task_name, scenario, float(sparsity) if sparsity else None, args.seed)
        start = time.perf_counter()
        record = pipeline.run(cfg)
        results.append({"run": record.run_id, "transfer": args.transfer, "metrics": record.metrics,
                        "train_steps": record.train_steps, "train_time_s": record.train_time_s,
                        "wall_s": round(time.perf_counter() - start, 1)})
        print(json.dumps(results[-1]), flush=True)
    (args.out / "transfer_set.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
