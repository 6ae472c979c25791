"""Shared helpers: distributed setup, seeding, test hooks, logging and file IO."""
import contextlib
import datetime
import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import random
import resource
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


from config import UserError  # noqa: F401  (raised by every module; defined where torch is not needed)


# ----------------------------------------------------------------------------- distributed

@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized()


def setup_distributed(timeout_minutes: float = 60) -> DistInfo:
    """Read torchrun's env vars (RANK, WORLD_SIZE, LOCAL_RANK); fall back to one process.
    Under torchrun the process group is set up even for one process, so
    `torchrun --nproc_per_node=1` runs the same DDP code path as N GPUs.

    timeout_minutes bounds how long a collective waits for a rank busy alone: the first
    download and tokenization, a multi-GB checkpoint write (NCCL's own default is 10 minutes).
    TF32 is left at PyTorch's default (off for matrix products): --precision fp32 means fp32."""
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size > 1 or "TORCHELASTIC_RUN_ID" in os.environ:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None,
                                timeout=datetime.timedelta(minutes=timeout_minutes))
    return DistInfo(rank, world_size, local_rank, device)


# Dense peaks (FLOP/s) from the vendors' data sheets, per precision: bf16 and fp16 on the tensor
# cores (V100 and T4 have none for bf16), fp32 without them (TF32 stays off, see
# setup_distributed). Matched in order against torch.cuda.get_device_name(), so "H200 NVL" comes
# before "H200"; MFU is reported only for devices and precisions listed here.
PEAK_FLOPS = [  # (name, bf16, fp16, fp32)
    ("H100 NVL", 835e12, 835e12, 60e12), ("H100 PCIe", 756e12, 756e12, 51e12), ("H100", 989e12, 989e12, 67e12),
    ("H200 NVL", 835e12, 835e12, 60e12), ("GH200", 989e12, 989e12, 67e12), ("H200", 989e12, 989e12, 67e12),
    ("B200", 2250e12, 2250e12, None), ("A100", 312e12, 312e12, 19.5e12), ("A800", 312e12, 312e12, 19.5e12),
    ("L40S", 362e12, 362e12, 91.6e12), ("L40", 181e12, 181e12, 90.5e12), ("L4", 121e12, 121e12, 30.3e12),
    ("A10", 125e12, 125e12, 31.2e12), ("RTX 4090", 165e12, 165e12, 82.6e12), ("RTX 3090", 71e12, 71e12, 35.6e12),
    ("V100-PCIE", None, 112e12, 14e12), ("V100", None, 125e12, 15.7e12), ("T4", None, 65e12, 8.1e12),
]
PRECISION_COLUMN = {"bf16": 1, "fp16": 2, "fp32": 3}


def device_peak_flops(device: torch.device, precision: str) -> float | None:
    """The data-sheet peak for this device at a run's precision (bf16 | fp16 | fp32), or None."""
    if device.type != "cuda":
        return None
    return peak_flops_for(torch.cuda.get_device_name(device), precision)


def peak_flops_for(device_name: str, precision: str) -> float | None:
    row = next((row for row in PEAK_FLOPS if row[0] in device_name), None)
    return row[PRECISION_COLUMN[precision]] if row else None


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN has bf16 kernels for this CPU (AVX512 or newer); on AVX2-only CPUs bf16
    matrix products take a fallback path far slower than fp32 (measured: README.md, Speed)."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_ranks_ok(ok: bool, info: DistInfo) -> bool:
    """True on every rank only if `ok` is True on every rank (a MIN all-reduce)."""
    if not info.is_distributed:
        return ok
    flag = torch.tensor([1 if ok else 0], device=info.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def main_process_first(info: DistInfo, fn, *args, **kwargs):
    """Run fn on rank 0 first (the run folder: lock, checks, --fresh), then on the other ranks.

    If rank 0 fails, the other ranks exit quietly instead of waiting forever on a barrier:
    rank 0 reports the error once.
    """
    return _first_then_rest(info.is_main, info, fn, *args, **kwargs)


def node_main_first(info: DistInfo, fn, *args, **kwargs):
    """Run fn on each node's local rank 0 first (it fills that node's caches: a download, the
    tokenized data), then on the node's other ranks (they read them): nodes without a shared
    cache download once each, not once per GPU. Failures as in main_process_first."""
    return _first_then_rest(info.local_rank == 0, info, fn, *args, **kwargs)


def _first_then_rest(first: bool, info: DistInfo, fn, *args, **kwargs):
    if first:
        ok = False
        try:
            result = fn(*args, **kwargs)
            ok = True
        finally:
            if info.is_distributed:
                all_ranks_ok(ok, info)
        return result
    if not all_ranks_ok(True, info):
        raise SystemExit(1)
    return fn(*args, **kwargs)


def all_gather_objects(obj, info: DistInfo) -> list:
    if not info.is_distributed:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


# ----------------------------------------------------------------------------- seeding / RNG

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def get_rng_state() -> dict:
    """Every RNG this process draws from, as types torch.load(weights_only=True) accepts."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        # this process's own device only: a resume that sees fewer GPUs, or maps ranks to other
        # devices, restores each rank's stream onto the device that rank now uses
        state["cuda"] = torch.cuda.get_rng_state(torch.cuda.current_device())
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"], torch.cuda.current_device())


# ----------------------------------------------------------------------------- fault injection

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


# ----------------------------------------------------------------------------- logging / files

def get_logger(log_file: str | None, enabled: bool) -> logging.Logger:
    """Rank-0 logger to stdout and `log_file`; other ranks log warnings only."""
    logger = logging.getLogger("ftkit")
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO if enabled else logging.WARNING)
    fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    handlers = [logging.StreamHandler(sys.stdout)]
    if enabled and log_file:
        handlers.append(logging.FileHandler(log_file))
    for h in handlers:
        h.setFormatter(fmt)
        logger.addHandler(h)
    return logger


def atomic_write(path: str, write, fault_name: str | None = None) -> None:
    """write(f) into a temp file, fsync, rename: a reader never sees a half-written file, and a
    failed write (a full disk) leaves the previous file and no temp file behind."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(_KillMidWrite(f, fault_name) if fault_name == _KILL_POINT else f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(e, OSError) and e.filename is None:
            e.filename = path
        raise


def atomic_write_bytes(path: str, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def write_torchrun_error_file(message: str) -> None:
    """Under torchrun, its error file: torchrun's failure summary then shows `message` as the
    root cause instead of "<N/A>" (format of torch.distributed.elastic's ErrorHandler)."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path:
        with contextlib.suppress(OSError), open(path, "w") as f:
            json.dump({"message": {"message": message, "extraInfo": {
                "py_callstack": message, "timestamp": str(int(time.time()))}}}, f)


def write_json(path: str, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: str):
    with open(path) as f:
        return json.load(f)


def append_jsonl(path: str, obj) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(obj) + "\n")


def truncate_jsonl(path: str, max_step: int, warn=print) -> list[dict]:
    """Keep only the events at or before max_step, and return them. A last line cut short (a
    kill or a full disk during an append) is dropped with a warning."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    events = []
    for number, line in enumerate(lines, 1):
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            if number < len(lines):
                raise UserError(f"{path}: line {number} is not JSON; fix or delete that line") from None
            warn(f"warning: {path}: dropped its unreadable last line ({line.strip()[:60]!r})")
            continue
        if event["step"] <= max_step:
            events.append(event)
    atomic_write_bytes(path, "".join(json.dumps(e) + "\n" for e in events).encode())
    return events


def git_commit() -> str | None:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=here,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment_info(info: DistInfo) -> dict:
    import transformers
    env = {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "device": str(info.device),
        "device_name": torch.cuda.get_device_name(info.device) if info.device.type == "cuda"
        else platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "world_size": info.world_size,
        "backend": dist.get_backend() if info.is_distributed else None,
        "git_commit": git_commit(),
    }
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        env["datasets"] = importlib.metadata.version("datasets")  # importing it costs 1.5 s
    return env


def hash_texts(texts, *extra: str) -> str:
    """A hex digest of texts (and extra strings): cache keys for tokenizers and token ids."""
    digest = hashlib.sha256()
    for t in [*texts, *extra]:
        digest.update(t.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def peak_memory(device: torch.device) -> dict:
    """Peak memory of this process so far, in MiB: resident set on CPU; allocated and reserved
    by torch's caching allocator on CUDA."""
    if device.type == "cuda":
        return {"peak_mem_allocated_mb": torch.cuda.max_memory_allocated(device) / 2 ** 20,
                "peak_mem_reserved_mb": torch.cuda.max_memory_reserved(device) / 2 ** 20}
    return {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # Linux: KiB


def first_line(e: Exception) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]
