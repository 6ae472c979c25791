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
from utils import all_gather_objects, atomic_write, read_json

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
    atomic_write(path, lambda f: torch.save(state, f))  # streamed, no copy in RAM
    _fsync_dir(ckpt_dir)
    for old in list_checkpoints(ckpt_dir)[keep:]:
        os.remove(old)
    return path


def list_checkpoints(ckpt_dir: str) -> list[str]:
    """Checkpoint files, newest first."""
    found = [
        (int(m.group(1)), p) for p in glob.glob(os.path.join(ckpt_dir, "step_*.pt")) if (m := CKPT_PATTERN.search(p))
    ]
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
        raise UserError(
            f"the ranks found different newest checkpoints ({shown}); put --out_dir on storage "
            "every node shares, or copy the run folder to every node, then rerun"
        )


def save_weights(path: str, state_dict: dict) -> None:
    atomic_write(path, lambda f: torch.save(state_dict, f))


def load_weights(path: str) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Checkpointer:
    """When to checkpoint and what to keep, for one run. The loop reports its steps, validations
    and stops, with `snapshot`, a function that returns the state to save (called on every rank:
    it gathers the ranks' RNG states); the checkpointer saves every `every` steps, after each
    validation (at each epoch's end, and every --eval_every steps) and on a stop, keeps the `keep`
    newest checkpoints, writes the best validation's weights (best_step<N>.pt in the run folder)
    and deletes those no kept checkpoint names. Files are written by rank 0 only."""

    def __init__(self, run_dir: str, every: int, keep: int, is_main: bool, log, start_over: bool = False):
        self.run_dir, self.ckpt_dir = run_dir, os.path.join(run_dir, "ckpt")
        self.every, self.keep, self.is_main, self.log = every, keep, is_main, log
        self.drop_newer = start_over  # a run started over: the old run's later checkpoints go at the first save
        self.saved_step = 0
        self.best_file: str | None = None
        # the best-weights file each kept checkpoint names; those written by an earlier process are
        # unknown until they age out, and while any is kept no best-weights file is deleted
        self.names: dict[str, str | None] = {}
        self.unknown = set(list_checkpoints(self.ckpt_dir)) if is_main else set()

    def resume(self) -> dict | None:
        """The newest checkpoint that loads (see load_latest_checkpoint), or None."""
        saved = load_latest_checkpoint(self.ckpt_dir, self.log.warning)
        if saved is not None:
            self.saved_step, self.best_file = saved["progress"]["global_step"], saved["progress"]["best_file"]
            self.unknown.discard(saved["path"])
            self.names[saved["path"]] = self.best_file
        return saved

    def step_done(self, step: int, validation_follows: bool, snapshot) -> None:
        """Every `every` steps, except where a validation follows (an epoch's last step, or
        --eval_every's): the validation saves the step validated."""
        if step % self.every == 0 and not validation_follows:
            self.save(step, snapshot, "every")

    def epoch_done(self, step: int, epoch: int, snapshot) -> None:
        self.save(step, snapshot, f"end of epoch {epoch}")

    def validated(self, step: int, snapshot) -> None:
        """A validation inside an epoch: saved at once, so the validation history and the best
        weights are never ahead of the newest checkpoint."""
        self.save(step, snapshot, f"validation at step {step}")

    def stop(self, step: int, snapshot) -> str:
        """Checkpoint unless the last one is of this step; the newest checkpoint ("" on other ranks)."""
        path = self.save(step, snapshot, "signal") if step > self.saved_step else ""
        if self.is_main and not path:
            path = next(iter(list_checkpoints(self.ckpt_dir)), "")
        return path

    def save(self, step: int, snapshot, reason: str) -> str:
        saved = snapshot()
        self.saved_step = step
        if not self.is_main:
            return ""
        path = save_checkpoint(self.ckpt_dir, step, saved, keep=self.keep, drop_newer=self.drop_newer)
        self.drop_newer = False
        self.names[path] = self.best_file
        self.unknown.discard(path)  # an earlier run's checkpoint of this step was overwritten
        kept = set(list_checkpoints(self.ckpt_dir))
        self.names = {p: name for p, name in self.names.items() if p in kept}
        self.unknown &= kept
        if not self.unknown:
            named = set(self.names.values()) | {self.best_file}
            for weights in glob.glob(os.path.join(glob.escape(self.run_dir), "best_step*.pt")):
                if os.path.basename(weights) not in named:
                    os.remove(weights)
        self.log.info(f"checkpoint ({reason}): {path}")
        return path

    def new_best(self, step: int, weights: dict) -> str:
        """Write the new best validation's weights (rank 0); their file's name, for the run's progress."""
        self.best_file = f"best_step{step}.pt"
        if self.is_main:
            save_weights(os.path.join(self.run_dir, self.best_file), weights)
        return self.best_file

    def load_best(self, global_step: int, model) -> dict:
        """The best validation's weights from their file; if that file is unreadable and the best
        validation is the last checkpointed one, the model (just resumed from that checkpoint) holds them."""
        path = os.path.join(self.run_dir, self.best_file)
        try:
            return load_weights(path)
        except Exception as e:  # truncated, corrupt or missing: the unpickler raises many types
            if self.best_file == f"best_step{global_step}.pt":
                self.log.warning(
                    f"warning: {path} is unreadable ({type(e).__name__}); using the same weights "
                    "from the last checkpoint"
                )
                return {k: v.detach().clone() for k, v in model.state_dict().items()}
            raise UserError(
                f"the best weights {path} are unreadable ({type(e).__name__}) and no checkpoint "
                "holds them; rerun with --fresh to train again"
            ) from None


# ----------------------------------------------------------------------------- run folder


def prepare_run_dir(args, config: dict, run_dir: str, is_main: bool, log) -> bool:
    """Apply --fresh, refuse a run dir that holds other settings; True if already finished."""
    config_path = os.path.join(run_dir, "config.json")
    if is_main:
        for stale in glob.glob(os.path.join(glob.escape(run_dir), "*.tmp*")):  # from a kill mid-write
            shutil.rmtree(stale) if os.path.isdir(stale) else os.remove(stale)  # a dir: mlm's model folder
    if args.fresh and is_main:
        ours = {"train.log", ".lock"}
        if not _is_our_config(config_path) and set(os.listdir(run_dir)) - ours:
            raise UserError(
                f"--fresh: {run_dir} holds files but no config.json of a run of this "
                "toolkit; not deleting anything there"
            )
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
        raise UserError(
            f"checkpoint {state['path']} was made with other settings ({shown}); rerun with "
            "its settings, or use --fresh / another --run_name"
        )


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
                raise UserError(
                    f"{os.path.dirname(self.path)} is in use by {owner or 'another process'}; "
                    "wait for it, or stop it first"
                ) from None
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
