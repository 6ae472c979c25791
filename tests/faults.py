"""Crash-test injection, for the tests only: train.py with faults armed from the environment.

    python tests/faults.py TRAIN_ARGS...                     (what run_cli starts when a test arms one)
    torchrun --nproc_per_node=2 tests/faults.py TRAIN_ARGS...
    PYTHON=tests/python_with_faults bash run_grid.sh GRID    (every run of a grid)

FTKIT_KILL_AT=NAME:N[:SIG] sends the process SIGKILL (or SIG, e.g. TERM) at its N-th arrival at
point NAME: step (a step counted and logged), eval (an evaluation batch scored), epoch_end (before
validation), ckpt_write (after the first bytes of a checkpoint file). FTKIT_NAN_AT=N makes the
loss of step N+1 NaN. The product knows none of this: the faults come in through train.main's
hooks and a wrapped checkpoint write."""

import math
import os
import signal
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import checkpoint  # noqa: E402
import train  # noqa: E402
from train import Hooks  # noqa: E402

KILL_ENV, NAN_ENV = "FTKIT_KILL_AT", "FTKIT_NAN_AT"


class FaultHooks(Hooks):
    """The crash tests' points as loop hooks, and the NaN loss."""

    def __init__(self, kill_at: str = "", nan_at: int | None = None):
        point, count, signame = (kill_at.split(":") + ["", ""])[:3]
        self.kill_point, self.kill_count = point, int(count or 1)
        self.kill_signal = getattr(signal, f"SIG{signame}") if signame else signal.SIGKILL
        self.nan_at = nan_at
        self.arrivals: dict[str, int] = {}

    def point(self, name: str) -> None:
        if name == self.kill_point:
            self.arrivals[name] = self.arrivals.get(name, 0) + 1
            if self.arrivals[name] == self.kill_count:
                os.kill(os.getpid(), self.kill_signal)

    def after_forward_backward(self, run, state, figures: dict) -> None:
        if self.nan_at == state.global_step:
            figures["loss"] = math.nan

    def after_step(self, run, state, figures: dict) -> None:
        self.point("step")

    def after_eval_batch(self, run, split: str) -> None:
        self.point("eval")

    def before_validation(self, run, state) -> None:
        self.point("epoch_end")


class _KillAfterFirstWrite:
    """A file whose first write is followed by the fault point: the kill leaves a partial file."""

    def __init__(self, f, hooks: FaultHooks):
        self.f, self.hooks, self.written = f, hooks, False

    def write(self, data):
        count = self.f.write(data)
        if not self.written:
            self.written = True
            self.hooks.point("ckpt_write")
        return count

    def __getattr__(self, attr):
        return getattr(self.f, attr)


def arm_checkpoint_writes(hooks: FaultHooks) -> None:
    """checkpoint.py's atomic_write, with each checkpoint file passing the ckpt_write point."""
    atomic_write = checkpoint.atomic_write

    def write_with_fault(path, write):
        return atomic_write(path, lambda f: write(_KillAfterFirstWrite(f, hooks)))

    checkpoint.atomic_write = write_with_fault


def hooks_from_env() -> FaultHooks:
    nan_at = os.environ.get(NAN_ENV)
    return FaultHooks(os.environ.get(KILL_ENV, ""), int(nan_at) if nan_at else None)


if __name__ == "__main__":
    hooks = hooks_from_env()
    arm_checkpoint_writes(hooks)
    sys.exit(train.main(sys.argv[1:], hooks=hooks))
