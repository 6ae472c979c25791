"""Crash-safe run state: atomic checkpoints, resume from the newest valid one, the run folder's
checks (finished, same settings, --fresh) and its lock."""
import contextlib
import fcntl
import glob
import os
import re
import shutil
import socket

import torch

import config as settings
from config import UserError
from distributed import all_gather_objects
from files import atomic_write, read_json

CKPT_PATTERN = re.compile(r"step_(\d+)\.pt$")


def save_checkpoint(ckpt_dir: str, step: int, state: dict, keep: int = 2, drop_newer: bool = False) -> str:
    """Write state atomically and keep the newest `keep` checkpoint files. drop_newer: first
    delete checkpoints of later steps (left by an earlier run that this one started over)."""
    os.makedirs(ckpt_dir, exist_ok=True)
    path = os.path.join(ckpt_dir, f"step_{step:08d}.pt")
    for stale in glob.glob(os.path.join(ckpt_dir, "*.tmp*")):  # left by a process killed mid-write
        os.remove(stale)
    if drop_newer:
        for newer in list_checkpoints(ckpt_dir):
            if int(CKPT_PATTERN.search(newer).group(1)) > step:
                os.remove(newer)
    atomic_write(path, lambda f: torch.save(state, f), fault_name="ckpt_write")  # streamed, no copy in RAM
    _fsync_dir(ckpt_dir)
    for old in list_checkpoints(ckpt_dir)[keep:]:
        os.remove(old)
    return path


def list_checkpoints(ckpt_dir: str) -> list[str]:
    """Checkpoint files, newest first."""
    found = [(int(m.group(1)), p) for p in glob.glob(os.path.join(ckpt_dir, "step_*.pt"))
             if (m := CKPT_PATTERN.search(p))]
    return [p for _, p in sorted(found, reverse=True)]


def load_latest_checkpoint(ckpt_dir: str, warn) -> dict | None:
    """The newest checkpoint that loads; a truncated or corrupt one is skipped with a warning."""
    for path in list_checkpoints(ckpt_dir):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            state["path"] = path
            return state
        except Exception as e:  # any unpickling/zip error means the file is unusable
            warn(f"warning: checkpoint {path} is unreadable ({type(e).__name__}); trying the previous one")
    return None


def check_ranks_resume_alike(step: int | None, info) -> None:
    """Every rank must resume from the same step (None: from scratch). Without storage that all
    nodes share, each node reads its own folder, and ranks resumed at different steps would train
    different models (or hang at a collective): refused on every rank, before training."""
    steps = all_gather_objects(step, info)
    if len(set(steps)) > 1:
        shown = ", ".join(f"rank {r}: {'none' if s is None else f'step {s}'}" for r, s in enumerate(steps))
        raise UserError(f"the ranks found different newest checkpoints ({shown}); put --out_dir on storage "
                        "every node shares, or copy the run folder to every node, then rerun")


def save_weights(path: str, state_dict: dict) -> None:
    atomic_write(path, lambda f: torch.save(state_dict, f))


def remove_unreferenced_weights(run_dir: str, ckpt_dir: str, warn) -> None:
    """Delete best-weights files that no kept checkpoint points to. If any kept checkpoint cannot
    be read, nothing is deleted: the file it points to is unknown, and may be the one it needs."""
    keep = set()
    for path in list_checkpoints(ckpt_dir):
        try:
            # mmap: only the small progress dict is read; map_location: a checkpoint written on a
            # GPU is read to the CPU, never onto rank 0's GPU (nor failing where there is none)
            keep.add(torch.load(path, map_location="cpu", mmap=True, weights_only=True)["progress"]["best_file"])
        except Exception as e:  # unpickling/zip errors have many types
            warn(f"warning: cannot read {path} ({type(e).__name__}); keeping every best-weights file")
            return
    for path in glob.glob(os.path.join(run_dir, "best_step*.pt")):
        if os.path.basename(path) not in keep:
            os.remove(path)


def load_weights(path: str) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- run folder

def prepare_run_dir(args, config: dict, run_dir: str, is_main: bool, log) -> bool:
    """Apply --fresh, refuse a run dir that holds other settings; True if already finished."""
    config_path = os.path.join(run_dir, "config.json")
    if is_main:
        for stale in glob.glob(os.path.join(glob.escape(run_dir), "*.tmp*")):  # from a kill mid-write
            os.remove(stale)
    if args.fresh and is_main:
        ours = {"train.log", ".lock"}
        if not _is_our_config(config_path) and set(os.listdir(run_dir)) - ours:
            raise UserError(f"--fresh: {run_dir} holds files but no config.json of a run of this "
                            "toolkit; not deleting anything there")
        log.info(f"--fresh: deleting earlier checkpoints and results in {run_dir}")
        for name in set(os.listdir(run_dir)) - ours:
            path = os.path.join(run_dir, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    return settings.finished(run_dir, config)


def _is_our_config(path: str) -> bool:
    try:
        config = read_json(path)
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and {"run_name", "model", "pool", "seed"} <= set(config)


def check_same_settings(state: dict, fingerprint: dict) -> None:
    """The checkpoint's settings must be this run's (config.json may be gone or edited)."""
    saved = state.get("fingerprint", {})
    differing = sorted(k for k in saved if k in fingerprint and saved[k] != fingerprint[k])
    if differing:
        shown = ", ".join(f"{k}: {saved[k]!r} there, {fingerprint[k]!r} now" for k in differing)
        raise UserError(f"checkpoint {state['path']} was made with other settings ({shown}); rerun with "
                        "its settings, or use --fresh / another --run_name")


def load_best_weights(run_dir: str, best_file: str, global_step: int, model, log) -> dict:
    """The best epoch's weights from their file; if that file is unreadable and the best epoch is
    the last checkpointed one, the model (just resumed from that checkpoint) holds them."""
    path = os.path.join(run_dir, best_file)
    try:
        return load_weights(path)
    except Exception as e:  # truncated, corrupt or missing: the unpickler raises many types
        if best_file == f"best_step{global_step}.pt":
            log.warning(f"warning: {path} is unreadable ({type(e).__name__}); using the same weights "
                        "from the last checkpoint")
            return {k: v.detach().clone() for k, v in model.state_dict().items()}
        raise UserError(f"the best weights {path} are unreadable ({type(e).__name__}) and no checkpoint "
                        "holds them; rerun with --fresh to train again") from None


# ----------------------------------------------------------------------------- lock

class RunLock:
    """One live process per run dir, as a context manager. Held with flock on `.lock` (which
    also records host and pid for the message): the kernel releases it when its owner dies, so a
    dead owner's lock is simply taken, and two processes can never both take it. `active=False`
    (ranks other than 0) makes it a no-op. flock is per host: on a shared file system, runs of
    one folder from two machines are not excluded (use one --run_name per run there)."""

    def __init__(self, run_dir: str, say, active: bool = True):
        self.path = os.path.join(run_dir, ".lock")
        self.say = say
        self.active = active
        self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()

    def acquire(self) -> None:
        if not self.active:
            return
        while True:
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _read_owner(fd)
                os.close(fd)
                raise UserError(f"{os.path.dirname(self.path)} is in use by {owner or 'another process'}; "
                                "wait for it, or stop it first") from None
            try:  # a releasing owner may have unlinked the file we locked: lock the current one
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = _read_owner(fd)
        if previous:
            self.say(f"taking over a stale lock left by dead {previous}")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{socket.gethostname()} {os.getpid()}".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path)  # while still holding it: see the inode check in acquire
            os.close(self.fd)
            self.fd = None


def _read_owner(fd: int) -> str | None:
    try:
        host, pid = os.pread(fd, 200, 0).decode().split()
        return f"process {int(pid)} on {host}"
    except (OSError, ValueError, UnicodeDecodeError):
        return None
