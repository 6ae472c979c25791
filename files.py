"""What a run writes: the log, atomic files, JSON and JSONL records, content hashes."""

import contextlib
import hashlib
import json
import logging
import math
import os
import sys
import time

from config import UserError

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
