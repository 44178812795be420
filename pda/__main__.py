"""Command line: ``study`` runs a parameter file, ``plan`` shows it without running, ``retime`` times its models
again on an idle machine, ``export`` ships a run's model."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pda.config import ConfigError

STALE_HELP = "seconds without a heartbeat after which another run's lock counts as lost (default 600)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pda", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    study = sub.add_parser("study", help="run every run of a parameter file (resumes finished ones)")
    study.add_argument("params", type=Path)
    study.add_argument("--workers", type=int, default=0,
                       help="parallel runs on a local Dask cluster (default 0: serial, in this process)")
    study.add_argument("--scheduler", default=None, help="address of an existing Dask scheduler to run on instead")
    study.add_argument("--kernel", default="pda", help="Jupyter kernel that executes the notebooks")
    study.add_argument("--no-analysis", action="store_true", help="skip the analysis notebook at the end")
    study.add_argument("--fresh-kernels", action="store_true",
                       help="a new kernel per notebook (otherwise the study, or each Dask worker, reuses warm kernels)")
    study.add_argument("--stale-lock", type=float, default=600.0, help=STALE_HELP)
    plan = sub.add_parser("plan", help="show the runs, their dependencies, steps and projected time")
    plan.add_argument("params", type=Path)
    plan.add_argument("--workers", type=int, default=2, help="projected wall time for this many workers too")
    plan.add_argument("--step-seconds", type=float, default=None, help="seconds per training step, given")
    plan.add_argument("--measure", action="store_true", help="time a few training steps of the model here")
    plan.add_argument("--overhead-seconds", type=float, default=None, help="per-run overhead, given")
    plan.add_argument("--runs", action="store_true", help="also list every run")
    retime = sub.add_parser("retime", help="time a finished study's models again, every backend, with the machine "
                                           "to itself (writes runs/<id>/retime.json, then the analysis again)")
    retime.add_argument("params", type=Path)
    retime.add_argument("--rounds", type=int, default=5, help="timed rounds per backend (default 5)")
    retime.add_argument("--threads", type=int, default=None,
                        help="threads per timing (default: the parameter file's measure.threads)")
    retime.add_argument("--backends", nargs="+", default=None, metavar="BACKEND",
                        help="backends to time (default: all four; eager_fp32 is always one)")
    retime.add_argument("--runs", nargs="+", default=None, metavar="GLOB",
                        help="only the runs whose id matches one of these patterns, e.g. '*-sp90-*'")
    retime.add_argument("--force", action="store_true", help="time again runs already re-timed with these settings")
    retime.add_argument("--kernel", default="pda", help="Jupyter kernel that executes the analysis notebook")
    retime.add_argument("--no-analysis", action="store_true", help="skip the analysis notebook at the end")
    export = sub.add_parser("export", help="export a finished run's model: ONNX (exact), optional INT8, model card")
    export.add_argument("run_dir", type=Path, help="a run directory (with result.json and model/)")
    export.add_argument("--format", choices=["onnx"], default="onnx", help="export format (default onnx)")
    export.add_argument("--int8", action="store_true",
                        help="also ONNX Runtime dynamic INT8, with its dev metrics re-measured")
    export.add_argument("--out", type=Path, default=None, help="output directory (default RUN_DIR/export)")
    export.add_argument("--data-dir", type=Path, default=None,
                        help="GLUE folder for --int8's dev metrics (default: PDA_GLUE_DIR, then data/glue)")
    export.add_argument("--max-seq-length", type=int, default=128, help="tokenizer truncation for dev metrics")
    export.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (default: torch's)")
    args = parser.parse_args(argv)
    try:
        if args.command == "study":
            from pda.study import run_study, summarize

            start = time.perf_counter()
            outcomes = run_study(args.params, args.workers, args.scheduler, args.kernel,
                                 analysis=not args.no_analysis, stale_after=args.stale_lock,
                                 warm_kernel=not args.fresh_kernels)
            print(summarize(outcomes))
            print(f"wall time {(time.perf_counter() - start) / 60:.1f} min")
            return 1 if any(o.status in ("failed", "skipped") for o in outcomes) else 0
        if args.command == "plan":
            from pda.plan import plan as make_plan

            print(make_plan(args.params, args.workers, args.step_seconds, args.measure, args.overhead_seconds,
                            args.runs))
        if args.command == "retime":
            return retime_command(args)
        if args.command == "export":
            return export_command(args)
    except ConfigError as exc:
        for line in str(exc).splitlines() or [type(exc).__name__]:  # one fault per line, e.g. several bad rows
            print(f"error: {line}", file=sys.stderr)
        return 2
    return 0


def retime_command(args: argparse.Namespace) -> int:
    """``python -m pda retime``: every finished run's model timed again, then the analysis over the new numbers."""
    from pda import site
    from pda.config import load_params
    from pda.retime import retime_study
    from pda.study import run_analysis

    for name in ("rounds", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name}={value} must be a whole number >= 1")
    cfg = load_params(args.params)
    start = time.perf_counter()
    done = retime_study(cfg, args.rounds, args.threads, args.backends, args.runs, args.force)
    print(f"re-timed {len(done)} run(s) in {(time.perf_counter() - start) / 60:.1f} min")
    if args.no_analysis:
        return 0
    failed = run_analysis(args.params, cfg, args.kernel)
    print(site.site_note(Path(cfg.output_dir)))  # index.html again, with the new speeds
    return 1 if failed else 0


def export_command(args: argparse.Namespace) -> int:
    """``python -m pda export``: a missing run, model or data folder is a one-line error, not a traceback."""
    from pda.export import export_run
    from pda.pipeline import configure_environment

    configure_environment(online=False)
    for name in ("max_seq_length", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            print(f"error: --{name.replace('_', '-')}={value} must be a whole number >= 1", file=sys.stderr)
            return 2
    try:
        out = export_run(args.run_dir, args.out, int8=args.int8, data_dir=args.data_dir,
                         max_seq_length=args.max_seq_length, threads=args.threads)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"exported to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
