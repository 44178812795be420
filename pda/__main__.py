"""Command line: ``python -m pda study PARAMS.yaml`` runs a study; ``plan`` shows it without running."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pda.config import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pda", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    study = sub.add_parser("study", help="run every run of a parameter file (resumes finished ones)")
    study.add_argument("params", type=Path)
    study.add_argument("--workers", type=int, default=0, help="parallel runs on a local Dask cluster")
    study.add_argument("--scheduler", default=None, help="address of an existing Dask scheduler")
    study.add_argument("--kernel", default="pda", help="Jupyter kernel that executes the notebooks")
    args = parser.parse_args(argv)
    try:
        if args.command == "study":
            from pda.study import run_study, summarize

            outcomes = run_study(args.params, args.workers, args.scheduler, args.kernel)
            print(summarize(outcomes))
            return 1 if any(o.status in ("failed", "skipped") for o in outcomes) else 0
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
