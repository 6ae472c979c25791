"""Fault injection for the crash tests: kill this process at a named point, or make a loss NaN."""

import math
import os
import signal

from hooks import Hooks

# Crash tests, read once at start:
# FTKIT_KILL_AT=NAME:N[:SIG] sends this process SIGKILL (or SIG, e.g. TERM) at its N-th arrival at
# point NAME (step, eval, epoch_end, ckpt_write); FTKIT_NAN_AT=N makes the loss of step N+1 NaN.
_KILL_POINT, _KILL_COUNT, _KILL_SIGNAL = (os.environ.get("FTKIT_KILL_AT", "").split(":") + ["", ""])[:3]
NAN_AT_STEP = int(os.environ["FTKIT_NAN_AT"]) if os.environ.get("FTKIT_NAN_AT") else None
_fault_counts: dict[str, int] = {}


def fault_point(name: str) -> None:
    if name == _KILL_POINT:
        _fault_counts[name] = _fault_counts.get(name, 0) + 1
        if _fault_counts[name] == int(_KILL_COUNT or 1):
            os.kill(os.getpid(), getattr(signal, f"SIG{_KILL_SIGNAL}") if _KILL_SIGNAL else signal.SIGKILL)


class FaultHooks(Hooks):
    """The crash tests' points as loop hooks: step (after a step is counted and logged), eval
    (after each evaluation batch), epoch_end (before validation); and the NaN loss."""

    def after_forward_backward(self, run, state, figures: dict) -> None:
        if NAN_AT_STEP == state.global_step:
            figures["loss"] = math.nan

    def after_step(self, run, state, figures: dict) -> None:
        fault_point("step")

    def after_eval_batch(self, run, split: str) -> None:
        fault_point("eval")

    def before_validation(self, run, state) -> None:
        fault_point("epoch_end")


def hooks_from_env() -> Hooks:
    """FaultHooks when a crash test arms FTKIT_KILL_AT or FTKIT_NAN_AT, else hooks that do nothing."""
    return FaultHooks() if _KILL_POINT or NAN_AT_STEP is not None else Hooks()


class _KillMidWrite:
    """A file whose first write is followed by the fault point: the kill leaves a partial file."""

    def __init__(self, f, name: str):
        self.f, self.name, self.arrived = f, name, False

    def write(self, data):
        written = self.f.write(data)
        if not self.arrived:
            self.arrived = True
            fault_point(self.name)
        return written

    def __getattr__(self, attr):
        return getattr(self.f, attr)


def kill_mid_write(f, name: str | None):
    """f itself, or, when the crash test arms point `name`, f wrapped to die after its first write."""
    return _KillMidWrite(f, name) if name is not None and name == _KILL_POINT else f
