"""The run environment's helpers, in sections: processes and devices (torchrun's setup,
collectives, RNG state, out-of-memory attempts), files and the log (atomic writes, JSON records, hashes), the machine
(environment, peak FLOP/s, peak memory), the hub (can it answer?), and signals and the launcher
(a stop request finishes its step; a dead torchrun stops its workers)."""

import contextlib
import ctypes
import datetime
import functools
import gc
import hashlib
import importlib.metadata
import json
import logging
import math
import os
import platform
import random
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from config import UserError

# ----------------------------------------------------------------------------- processes and devices


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
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo",
            device_id=device if device.type == "cuda" else None,
            timeout=datetime.timedelta(minutes=timeout_minutes),
        )
    return DistInfo(rank, world_size, local_rank, device)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class PeerFailed(UserError):
    """Another rank failed in a step every rank takes in turn (its own error line says why)."""


def main_process_first(info: DistInfo, fn, *args, **kwargs):
    """Run fn on rank 0 first (the run folder: lock, checks, --fresh), then on the other ranks.
    A failure stops every rank at once: see _first_then_rest."""
    return _first_then_rest(info.is_main, info, fn, *args, **kwargs)


def node_main_first(info: DistInfo, fn, *args, **kwargs):
    """Run fn on each node's local rank 0 first (it fills that node's caches: a download, the
    tokenized data), then on the node's other ranks (they read them): nodes without a shared
    cache download once each, not once per GPU. Failures as in main_process_first."""
    return _first_then_rest(info.local_rank == 0, info, fn, *args, **kwargs)


def _first_then_rest(first: bool, info: DistInfo, fn, *args, **kwargs):
    """fn on the `first` ranks, then on the others; after each turn every rank learns which ranks
    failed. A rank whose fn raised passes its error on (its node prints it); the others raise
    PeerFailed, so none walks into a collective the failed rank will never join (NCCL would
    wait there for --dist_timeout)."""
    result = None
    for turn in (True, False):
        ok = False
        try:
            if first == turn:
                result = fn(*args, **kwargs)
            ok = True
        finally:
            failed = failed_ranks(ok, info)
        if failed:
            raise PeerFailed(
                f"rank {', '.join(map(str, failed))} failed during set-up (in {fn.__qualname__}); its own "
                "error line, in its node's output, says why"
            )
    return result


def failed_ranks(ok: bool, info: DistInfo) -> list[int]:
    """The ranks where `ok` is False, known to every rank (one all-gather)."""
    return [rank for rank, rank_ok in enumerate(all_gather_objects(ok, info)) if not rank_ok]


def all_gather_objects(obj, info: DistInfo) -> list:
    if not info.is_distributed:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


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


def torch_rng_state(device: torch.device) -> tuple:
    """The generators dropout draws from (CPU, and this process's GPU): cheap to take every step."""
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def set_torch_rng_state(state: tuple, device: torch.device) -> None:
    cpu, gpu = state
    torch.set_rng_state(cpu)
    if gpu is not None:
        torch.cuda.set_rng_state(gpu, device)


OUT_OF_MEMORY = object()  # what unless_out_of_memory returns when the attempt ran out


def unless_out_of_memory(device: torch.device, attempt, *args):
    """attempt(*args)'s result, or OUT_OF_MEMORY when the device ran out of memory in it. Then its
    tensors are freed before returning: they live in the traceback's frames, gone once the except
    block ends; gc collects any cycle through them, and the allocator's cache goes back to the GPU."""
    try:
        return attempt(*args)
    except torch.OutOfMemoryError:
        pass
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return OUT_OF_MEMORY


# ----------------------------------------------------------------------------- files and the log


LOGGER = "ftkit"


def get_logger(log_file: str | None, enabled: bool) -> logging.Logger:
    """Rank-0 logger to stdout and `log_file`; other ranks log warnings only."""
    logger = logging.getLogger(LOGGER)
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


def atomic_write(path: str, write) -> None:
    """write(f) into a temp file, fsync, rename: a reader never sees a half-written file, and a
    failed write (a full disk) leaves the previous file and no temp file behind."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
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
            json.dump(
                {
                    "message": {
                        "message": message,
                        "extraInfo": {"py_callstack": message, "timestamp": str(int(time.time()))},
                    }
                },
                f,
            )


def log_warning(message: str) -> None:
    """A warning in the run's log (stdout and train.log once get_logger has set it up), for code
    that is not handed the run's logger; before that, on stderr."""
    logging.getLogger(LOGGER).warning(message)


def write_json(path: str, obj) -> None:
    """obj as JSON, atomically. JSON has no NaN or infinity (json.dumps would write the bare words
    NaN / Infinity, which strict readers reject): such a number is written as null, and a dict
    gets a "not_finite" field naming each one with its value, so a null says why it is one."""
    obj, not_finite = without_non_finite(obj)
    if not_finite:
        if isinstance(obj, dict):
            obj["not_finite"] = not_finite
        log_warning(
            f"warning: {os.path.basename(path)}: {', '.join(f'{k} is {v}' for k, v in not_finite.items())}; "
            "written as null (JSON has no such numbers)"
        )
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n").encode())


def without_non_finite(obj, where: str = "") -> tuple:
    """(obj with every NaN or infinite float in its dicts and lists replaced by None, {where: "nan" |
    "inf" | "-inf"} of those), where is the dotted key path (list items by index)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None, {where or "value": str(obj)}
    children = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else None
    if children is None:
        return obj, {}
    cleaned, not_finite = {}, {}
    for key, value in children:
        cleaned[key], found = without_non_finite(value, f"{where}.{key}" if where else str(key))
        not_finite.update(found)
    return (cleaned if isinstance(obj, dict) else list(cleaned.values())), not_finite


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


def hash_texts(texts, *extra: str) -> str:
    """A hex digest of texts (and extra strings): cache keys for tokenizers and token ids."""
    digest = hashlib.sha256()
    for t in [*texts, *extra]:
        digest.update(t.encode())
        digest.update(b"\0")
    return digest.hexdigest()


# ----------------------------------------------------------------------------- the machine


# Dense peaks (FLOP/s) from the vendors' data sheets, per precision: bf16 and fp16 on the tensor
# cores (V100 and T4 have none for bf16), fp32 without them (TF32 stays off, see
# setup_distributed). Matched in order against torch.cuda.get_device_name(), so "H200 NVL" comes
# before "H200"; MFU is reported only for devices and precisions listed here.
PEAK_FLOPS = [  # (name, bf16, fp16, fp32)
    ("H100 NVL", 835e12, 835e12, 60e12),
    ("H100 PCIe", 756e12, 756e12, 51e12),
    ("H100", 989e12, 989e12, 67e12),
    ("H200 NVL", 835e12, 835e12, 60e12),
    ("GH200", 989e12, 989e12, 67e12),
    ("H200", 989e12, 989e12, 67e12),
    ("B200", 2250e12, 2250e12, None),
    ("A100", 312e12, 312e12, 19.5e12),
    ("A800", 312e12, 312e12, 19.5e12),
    ("L40S", 362e12, 362e12, 91.6e12),
    ("L40", 181e12, 181e12, 90.5e12),
    ("L4", 121e12, 121e12, 30.3e12),
    ("A10", 125e12, 125e12, 31.2e12),
    ("RTX 4090", 165e12, 165e12, 82.6e12),
    ("RTX 3090", 71e12, 71e12, 35.6e12),
    ("V100-PCIE", None, 112e12, 14e12),
    ("V100", None, 125e12, 15.7e12),
    ("T4", None, 65e12, 8.1e12),
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
    matrix products take a fallback path far slower than fp32 (measured: docs/speed.md, "What pays
    and what does not")."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def git_commit() -> str | None:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
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
        "device_name": torch.cuda.get_device_name(info.device)
        if info.device.type == "cuda"
        else platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "world_size": info.world_size,
        "backend": dist.get_backend() if info.is_distributed else None,
        "git_commit": git_commit(),
    }
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        env["datasets"] = importlib.metadata.version("datasets")  # importing it costs 1.5 s
    return env


def peak_memory(device: torch.device) -> dict:
    """Peak memory of this process so far, in MiB: resident set on CPU; allocated and reserved
    by torch's caching allocator on CUDA."""
    if device.type == "cuda":
        return {
            "peak_mem_allocated_mb": torch.cuda.max_memory_allocated(device) / 2**20,
            "peak_mem_reserved_mb": torch.cuda.max_memory_reserved(device) / 2**20,
        }
    return {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # Linux: KiB


# ----------------------------------------------------------------------------- the hub


OFFLINE_DEMO = "try the offline demo: bash run_grid.sh grids/demo.grid"


@functools.cache
def hub_unavailable() -> str | None:
    """Why the hub cannot serve a download now, found in at most 3 s (its client retries for
    ~40 s before it gives up); None when it may answer."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE=1 is set"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # connections go through the proxy: loading tells
    url = urllib.parse.urlsplit(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=3).close()
    except OSError:
        return f"{url.hostname} cannot be reached"
    return None


# ----------------------------------------------------------------------------- signals and the launcher


class Interrupted(Exception):
    def __init__(self, signum: int):
        super().__init__(f"signal {signum}")
        self.signum = signum


class StopRequest:
    """While active, SIGTERM / SIGINT / SIGHUP only set a flag: the loop finishes its step (the
    first one, if the signal came during set-up), checkpoints and exits. Except when the launcher
    died during set-up (possibly minutes of tokenizing): no one is left to rerun from that
    checkpoint's report, so set-up stops at once (Interrupted)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def __enter__(self):
        self.signum = 0
        self.training = False
        self.previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def poll(self) -> int:
        """The signal to stop for, or 0."""
        return self.signum

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        self.signum = signum
        if LAUNCHER_PID is not None and os.getppid() != LAUNCHER_PID:  # the kernel's parent-death signal
            _launcher_gone()
        if not self.training and LAUNCHER_GONE.is_set():
            raise Interrupted(signum)


def _launcher_gone() -> bool:
    """Say once that the launcher died; True the first time (the caller then stops the run). No
    lock: a signal handler calls it, and a second signal may arrive while it runs."""
    if LAUNCHER_GONE.is_set():
        return False
    LAUNCHER_GONE.set()
    print(f"the launcher (pid {LAUNCHER_PID}) is gone: stopping", file=sys.stderr, flush=True)
    return True


LAUNCHER_PID: int | None = None  # torchrun's pid, under torchrun (watch_launcher sets it)
LAUNCHER_GONE = threading.Event()
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def watch_launcher() -> bool:
    """Under torchrun, stop this worker when the launcher dies: a `kill -9` of torchrun cannot
    forward a signal (its workers run in sessions of their own), and orphans must not hold the run
    lock and the GPUs (a rendezvous with the dead launcher's store would wait out --dist_timeout).
    The kernel's parent-death signal (Linux) covers a death from now on; a launcher that died
    earlier has already re-parented this worker, which the check after it finds (False: stop);
    a thread watching the parent covers systems without the signal."""
    global LAUNCHER_PID
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return True
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    LAUNCHER_PID = os.getppid()
    if not _launcher_alive(LAUNCHER_PID):
        print("the launcher (torchrun) is gone before this worker started: stopping", file=sys.stderr, flush=True)
        return False

    def watch():
        while os.getppid() == LAUNCHER_PID:
            time.sleep(0.5)
        if _launcher_gone():
            os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="launcher-watch", daemon=True).start()
    return True


def _launcher_alive(pid: int) -> bool:
    """Whether process `pid` (this worker's parent) can still be torchrun: a worker whose launcher
    died is re-parented to init or a subreaper (systemd --user, tini), none of them a Python
    interpreter, while torchrun is one (pid 1 too, in a container that starts it)."""
    try:
        exe = os.path.basename(os.readlink(f"/proc/{pid}/exe"))
    except OSError:  # no /proc (macOS), or not ours to read: only init is known not to be torchrun
        return pid != 1
    return exe.startswith("python") or exe == os.path.basename(os.readlink("/proc/self/exe"))
