"""Crash-safe run state: atomic checkpoints, resume from the newest valid one, a run-dir lock."""
import contextlib
import glob
import io
import os
import re
import socket

import torch

from utils import UserError, atomic_write_bytes

CKPT_PATTERN = re.compile(r"step_(\d+)\.pt$")


def save_checkpoint(ckpt_dir: str, step: int, state: dict, keep: int = 2) -> str:
    """Write state atomically and keep the newest `keep` checkpoint files."""
    os.makedirs(ckpt_dir, exist_ok=True)
    path = os.path.join(ckpt_dir, f"step_{step:08d}.pt")
    for stale in glob.glob(os.path.join(ckpt_dir, "*.tmp*")):  # left by a process killed mid-write
        os.remove(stale)
    atomic_write_bytes(path, _serialize(state), fault_name="ckpt_write")
    _fsync_dir(ckpt_dir)
    for old in list_checkpoints(ckpt_dir)[keep:]:
        os.remove(old)
    return path


def _serialize(obj) -> memoryview:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getbuffer()


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


def save_weights(path: str, state_dict: dict) -> None:
    atomic_write_bytes(path, _serialize(state_dict))


def remove_unreferenced_weights(run_dir: str, ckpt_dir: str) -> None:
    """Delete best-weights files that no kept checkpoint points to."""
    keep = set()
    for path in list_checkpoints(ckpt_dir):
        with contextlib.suppress(Exception):
            # mmap: only the small progress dict is read, not the tensors
            keep.add(torch.load(path, mmap=True, weights_only=True)["progress"]["best_file"])
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


# ----------------------------------------------------------------------------- lock

class RunLock:
    """One live process per run dir. The lock file holds host and pid; a lock left by a dead
    process on this host is taken over."""

    def __init__(self, run_dir: str, say):
        self.path = os.path.join(run_dir, ".lock")
        self.say = say
        self.held = False

    def acquire(self) -> None:
        me = f"{socket.gethostname()} {os.getpid()}"
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                owner = self._owner()
                if owner and owner[0] == socket.gethostname() and not _pid_alive(owner[1]):
                    self.say(f"taking over a stale lock left by dead process {owner[1]}")
                    os.remove(self.path)
                    continue
                who = f"process {owner[1]} on {owner[0]}" if owner else "another process"
                raise UserError(f"{os.path.dirname(self.path)} is in use by {who}; "
                                f"if that process is gone, delete {self.path}")
            with os.fdopen(fd, "w") as f:
                f.write(me)
            self.held = True
            return
        raise UserError(f"could not take the lock {self.path}")

    def release(self) -> None:
        if self.held:
            self.held = False
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass

    def _owner(self):
        try:
            host, pid = open(self.path).read().split()
            return host, int(pid)
        except (OSError, ValueError):
            return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
