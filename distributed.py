"""Processes and devices: torchrun's distributed setup, collectives between ranks, and the RNG
state a checkpoint carries."""

import datetime
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from config import UserError


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
