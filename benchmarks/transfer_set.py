"""Does a transfer set help a small distilled student? D distilled on its task's rows plus other tasks' pairs.

    python benchmarks/transfer_set.py parameters/default.yaml --teacher outputs/runs/mrpc-FT-seed0 \
        --transfer stsb rte --runs D P+D/0.6 P+D/0.9 --seed 0 --out /tmp/transfer-stsb-rte
    python benchmarks/transfer_set.py parameters/default.yaml --teacher outputs/runs/mrpc-FT-seed0 \
        --runs D P+D/0.6 --seed 1 --out /tmp/transfer-none    # the same runs without one

A transfer set (Hinton et al. 2015) is unlabelled input the teacher labels: here the training pairs of
other GLUE tasks (their labels dropped), renamed to the task's text fields. The D student trains on its
task's rows plus these, against the teacher's logits (soft loss) and the teacher's predicted class
(hard loss, in place of the missing label); P+D and P+D+A then prune that student as usual, on the
task's own rows. An experiment, not yet an option of the study: it wraps ``pda.pipeline.prepare_data``
for the D run only. The teacher (a finished FT run folder of the same parameter file) is copied into
``--out`` and serves every seed, so seeds here vary the student, not the teacher.
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
    import datasets

    from pda import config, pipeline
    from pda.data import load_split, locate_task, tokenize
    from pda.precision import resolve_precision
    from pda.records import read_record
    from pda.tasks import get_task
    from pda.train import pick_device

    teacher_record = read_record(args.teacher)
    if teacher_record.scenario != "FT":
        raise SystemExit(f"--teacher {args.teacher} is a {teacher_record.scenario} run; give an FT run folder")
    task_name, teacher_seed = teacher_record.task, teacher_record.seed
    fields = len(get_task(task_name).text_fields)
    for name in args.transfer:
        if len(get_task(name).text_fields) != fields:
            raise SystemExit(f"--transfer {name}: its rows have {len(get_task(name).text_fields)} text field(s), "
                             f"{task_name}'s {fields}; give tasks of the same shape")
    runs = args.out.resolve() / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    if not (runs / args.teacher.name).exists():
        shutil.copytree(args.teacher, runs / args.teacher.name, ignore=shutil.ignore_patterns(pipeline.TEACHER_LOGITS_DIR))
    study = config.load_params(args.params, output_dir=str(args.out.resolve()), torch_threads=args.threads)
    own_prepare, own_teacher_of = pipeline.prepare_data, pipeline.teacher_of

    def teacher_of(spec):  # every seed's student distils from the one teacher given
        found = own_teacher_of(spec)
        return dataclasses.replace(found, seed=teacher_seed) if found is not None else None

    def prepare_with_transfer(cfg, tokenizer):
        data = own_prepare(cfg, tokenizer)
        if cfg.scenario != "D" or not args.transfer:
            return data
        task = data.task
        parts, first_idx = [], max(data.train["idx"]) + 1  # past every row of the task (and its swapped pairs)
        for name in args.transfer:
            other = get_task(name)
            rows = load_split(other, "train", locate_task(other, cfg.study.data_dir, cfg.study.online))
            rows = rows.rename_columns(dict(zip(other.text_fields, task.text_fields))).select_columns(list(task.text_fields))
            rows = rows.add_column("idx", list(range(first_idx, first_idx + len(rows))))
            parts.append(rows.add_column("label", [0] * len(rows)))  # replaced by the teacher's below
            first_idx += len(rows)
        extra = tokenize(datasets.concatenate_datasets(parts), task, tokenizer, cfg.study.max_seq_length)
        extra = extra.cast(data.train.features)
        # The teacher's logits for every row, through the study's own cache file: the run's distillation
        # loss then reads these rows from it instead of running the teacher over them a second time.
        device = pick_device(cfg.study.device)
        teacher = pipeline.load_run_model(cfg, teacher_of(pipeline.run_spec(cfg))).eval()
        with_extra = dataclasses.replace(data, train=datasets.concatenate_datasets([data.train, extra]))
        cache = pipeline.shared_teacher_logits(cfg, teacher, with_extra, device,
                                               resolve_precision(cfg.study.precision, device))
        logits = cache.get(extra["idx"])
        labels = logits.argmax(-1).tolist() if not task.is_regression else logits.reshape(-1).tolist()
        extra = extra.remove_columns("label").add_column("label", labels).cast(data.train.features)
        print(f"transfer set: {len(extra)} rows from {', '.join(args.transfer)}", flush=True)
        data.train = datasets.concatenate_datasets([data.train, extra])
        return data

    pipeline.prepare_data, pipeline.teacher_of = prepare_with_transfer, teacher_of
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
