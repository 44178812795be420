"""Command line: ``python -m pda study PARAMS.yaml`` runs a study; ``plan`` shows it without running."""

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
    study.add_argument("--stale-lock", type=float, default=600.0, help=STALE_HELP)
    plan = sub.add_parser("plan", help="show the runs, their dependencies, steps and projected time")
    plan.add_argument("params", type=Path)
    plan.add_argument("--workers", type=int, default=2, help="projected wall time for this many workers too")
    plan.add_argument("--step-seconds", type=float, default=None, help="seconds per training step, given")
    plan.add_argument("--measure", action="store_true", help="time a few training steps of the model here")
    plan.add_argument("--overhead-seconds", type=float, default=None, help="per-run overhead, given")
    plan.add_argument("--runs", action="store_true", help="also list every run")
    args = parser.parse_args(argv)
    try:
        if args.command == "study":
            from pda.study import run_study, summarize

            start = time.perf_counter()
            outcomes = run_study(args.params, args.workers, args.scheduler, args.kernel,
                                 analysis=not args.no_analysis, stale_after=args.stale_lock)
            print(summarize(outcomes))
            print(f"wall time {(time.perf_counter() - start) / 60:.1f} min")
            return 1 if any(o.status in ("failed", "skipped") for o in outcomes) else 0
        if args.command == "plan":
            from pda.plan import plan as make_plan

            print(make_plan(args.params, args.workers, args.step_seconds, args.measure, args.overhead_seconds,
                            args.runs))
    except ConfigError as exc:
        for line in str(exc).splitlines() or [type(exc).__name__]:  # one fault per line, e.g. several bad rows
            print(f"error: {line}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
