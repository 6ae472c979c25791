"""train.py in this process, with the process's memory after every optimizer step (CPU, Linux).

    python bench/memory_steps.py --model M --data D --task mlm ... (any train.py flags)

Prints one JSON line per step: resident set now (rss_mb), the peak resident set during the step
(step_peak_mb: the kernel's VmHWM, reset through /proc/self/clear_refs when the step begins), and
glibc's own view of its heap (mallinfo2): bytes in live allocations (heap_used_mb, mmapped_mb) and
bytes it holds free (heap_free_mb); with --task mlm also the step's masked tokens. A resident set
that grows while heap_used_mb stays flat is memory the allocator keeps, not memory the run holds.
The last line is the peak over the whole run (run_peak_mb), start-up included; results.json's
peak_rss_mb is not, because resetting VmHWM also resets what getrusage reports.
The loop is observed through its hooks (train.Hooks), nothing in it is replaced.
"""

import ctypes
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import mlm  # noqa: E402
import train  # noqa: E402
from train import Hooks  # noqa: E402

MIB = 2**20


class MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
    ]


def glibc():
    """The C library, when it is glibc 2.33 or later (mallinfo2); else None."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = MallInfo2
    except (OSError, AttributeError):
        return None
    return libc


def heap_figures(libc) -> dict:
    """glibc's malloc statistics over all its arenas, in MiB."""
    info = libc.mallinfo2()
    return {"heap_used_mb": info.uordblks / MIB, "heap_free_mb": info.fordblks / MIB, "mmapped_mb": info.hblkhd / MIB}


def status_mb(field: str) -> float:
    """A memory line of /proc/self/status (VmRSS, VmHWM), in MiB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith(field + ":"))


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS


class MemoryPerStep(Hooks):
    def __init__(self, libc):
        self.libc = libc
        self.run_peak = 0.0
        self.masked = None

    def before_step(self, run, state, micro_batches):
        if run.masker is not None:  # the same masks the step draws: they are a pure function of the indices
            batches = [train.masked_batch(run, run.masker, "train", mb, state.epoch) for mb in micro_batches]
            self.masked = sum(int((b["masked_labels"] != mlm.IGNORE).sum()) for b in batches)
        self.run_peak = max(self.run_peak, status_mb("VmHWM"))
        reset_peak()

    def after_step(self, run, state, figures):
        row = {"step": state.global_step, "rss_mb": status_mb("VmRSS"), "step_peak_mb": status_mb("VmHWM")}
        row.update(heap_figures(self.libc), **({"masked": self.masked} if self.masked is not None else {}))
        self.run_peak = max(self.run_peak, row["step_peak_mb"])
        print(json.dumps({k: round(v, 1) for k, v in row.items()}), flush=True)


def main(argv=None) -> int:
    libc = glibc()
    if libc is None or not os.path.exists("/proc/self/clear_refs"):
        print("error: bench/memory_steps.py reads Linux's /proc and glibc's mallinfo2 (glibc 2.33+)", file=sys.stderr)
        return 2
    probe = MemoryPerStep(libc)
    code = train.main(argv, hooks=probe)
    print(json.dumps({"run_peak_mb": round(max(probe.run_peak, status_mb("VmHWM")), 1)}), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
