"""Fault injection for the crash tests: kill this process at a named point, or make a loss NaN."""
import os
import signal


# Crash tests, read once at start so they cost nothing on the hot path:
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
