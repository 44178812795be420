"""Start one run and SIGKILL it partway, as a preempted job would be (used by tests/test_resume.py).

    python tests/kill_run.py PARAMS TASK SCENARIO SPARSITY SEED [--save-at PHASE:STEP] --kill-at PHASE:STEP|evaluate

``--save-at`` forces a checkpoint after that step (the interval is minutes, too long for a test);
``--kill-at`` kills the process after that step, or when the trained model is first evaluated.
Exit status -9 (killed) is the expected outcome; 3 means the run finished without being killed.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from pda import config, pipeline, resume


def phase_step(text: str) -> tuple[str, int]:
    phase, _, step = text.partition(":")
    return phase, int(step)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("params")
    parser.add_argument("task")
    parser.add_argument("scenario")
    parser.add_argument("sparsity")
    parser.add_argument("seed", type=int)
    parser.add_argument("--save-at", type=phase_step)
    parser.add_argument("--kill-at", required=True)
    args = parser.parse_args()
    kill_at = None if args.kill_at == "evaluate" else phase_step(args.kill_at)
    step_done = resume.Phase.step_done

    def hooked(self: resume.Phase, state: resume.LoopState) -> None:
        if (self.name, state.step) == args.save_at:
            self.checkpointer.save(self.name, state)
        else:
            step_done(self, state)
        if (self.name, state.step) == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    resume.Phase.step_done = hooked
    if kill_at is None:  # after training, while the final model is evaluated
        pipeline.evaluate = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
    sparsity = None if args.sparsity == "none" else float(args.sparsity)
    study = config.load_params(args.params)
    pipeline.run(config.for_run(study, args.task, args.scenario, sparsity, args.seed))
    sys.exit(3)


if __name__ == "__main__":
    main()
