"""Crash-test injection, for the tests only: train.py with faults armed from the environment.

    python tests/faults.py TRAIN_ARGS...                     (what run_cli starts when a test arms one)
    torchrun --nproc_per_node=2 tests/faults.py TRAIN_ARGS...
    PYTHON=tests/python_with_faults bash run_grid.sh GRID    (every run of a grid)

FTKIT_KILL_AT=NAME:N[:SIG] sends the process SIGKILL (or SIG, e.g. TERM) at its N-th arrival at
point NAME: step (a step counted and logged), eval (an evaluation batch scored), epoch_end (before
validation), ckpt_write (after the first bytes of a checkpoint file). FTKIT_NAN_AT=N makes the
loss of step N+1 NaN. FTKIT_OOM_ABOVE=POSITIONS[:FROM_STEP[:RANK[:PHASE]]] stands in for a device
out of memory (CPU torch has none to run out of): a forward pass over more than POSITIONS padded
token positions (rows x width) raises torch.OutOfMemoryError, in the forward or (PHASE backward) in
its backward, from the run's step FROM_STEP on (default 0: the probe before the first step too), on
rank RANK (default: every rank). The product knows none of this: the faults come in through
train.main's hooks, the model classes' forward and a wrapped checkpoint write."""

import math
import os
import signal
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

import checkpoint  # noqa: E402
import mlm  # noqa: E402
import model  # noqa: E402
import train  # noqa: E402
from train import Hooks  # noqa: E402

KILL_ENV, NAN_ENV, OOM_ENV = "FTKIT_KILL_AT", "FTKIT_NAN_AT", "FTKIT_OOM_ABOVE"


class FaultHooks(Hooks):
    """The crash tests' points as loop hooks, and the NaN loss; `step` is the step under way (0
    before this process's first), for the out-of-memory cap."""

    def __init__(self, kill_at: str = "", nan_at: int | None = None):
        point, count, signame = (kill_at.split(":") + ["", ""])[:3]
        self.kill_point, self.kill_count = point, int(count or 1)
        self.kill_signal = getattr(signal, f"SIG{signame}") if signame else signal.SIGKILL
        self.nan_at = nan_at
        self.arrivals: dict[str, int] = {}
        self.step = 0

    def before_step(self, run, state, micro_batches: list) -> None:
        self.step = state.global_step + 1

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


class MemoryCap:
    """A device with room for `positions` padded token positions per forward pass (see the module's
    doc); armed on the model classes by arm_memory_cap, counting the run's steps through `hooks`."""

    def __init__(self, spec: str, hooks: FaultHooks):
        positions, from_step, rank, phase = (spec.split(":") + ["", "", ""])[:4]
        self.positions, self.from_step = int(positions), int(from_step or 0)
        self.rank = int(rank) if rank else None
        self.phase = phase or "forward"
        self.hooks = hooks

    def over(self, input_ids: torch.Tensor) -> bool:
        return (
            input_ids.numel() > self.positions
            and self.hooks.step >= self.from_step
            and self.rank in (None, int(os.environ.get("RANK", 0)))
        )

    def wrap(self, forward):
        def capped(module, input_ids, *args, **kwargs):
            over = self.over(input_ids)
            if over and self.phase == "forward":
                raise torch.OutOfMemoryError(f"injected: {input_ids.numel()} positions > {self.positions}")
            output = forward(module, input_ids, *args, **kwargs)
            logits = output if isinstance(output, torch.Tensor) else output.logits
            if over and logits.requires_grad:
                logits.register_hook(self.raise_in_backward)
            return output

        return capped

    def raise_in_backward(self, grad):
        raise torch.OutOfMemoryError(f"injected in the backward pass: more than {self.positions} positions")


def arm_memory_cap(spec: str, hooks: FaultHooks, patch=setattr) -> None:
    """The classifier's and the masked LM's forward, capped (patch: a test's monkeypatch.setattr)."""
    cap = MemoryCap(spec, hooks)
    for cls in (model.Classifier, mlm.MaskedLM):
        patch(cls, "forward", cap.wrap(cls.forward))


def hooks_from_env() -> FaultHooks:
    nan_at = os.environ.get(NAN_ENV)
    return FaultHooks(os.environ.get(KILL_ENV, ""), int(nan_at) if nan_at else None)


if __name__ == "__main__":
    hooks = hooks_from_env()
    arm_checkpoint_writes(hooks)
    if os.environ.get(OOM_ENV):
        arm_memory_cap(os.environ[OOM_ENV], hooks)
    sys.exit(train.main(sys.argv[1:], hooks=hooks))
