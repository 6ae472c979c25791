"""Read the history an offline W&B run wrote (its run-ID.wandb file) without the network.

The file is W&B's LevelDB-style log: a 7-byte header, then 32 KiB blocks of records
(crc32: 4 bytes, length: 2, type: 1 = full, 2 = first, 3 = middle, 4 = last) holding
protobuf `Record` messages.
"""

import glob
import json
import os
import struct

from wandb.proto import wandb_internal_pb2

BLOCK = 32 * 1024
HEADER = 7


def records(path: str):
    raw = open(path, "rb").read()
    assert raw[:4] == b":W&B", "not a W&B log"
    pos, pending = HEADER, b""
    while pos + HEADER <= len(raw):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < HEADER:
            pos += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos : pos + HEADER])
        data = raw[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == 0:  # padding
            continue
        pending = data if kind in (1, 2) else pending + data
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def history(run_dir: str) -> list[dict]:
    """Every history row logged by the run(s) under run_dir/wandb, in order."""
    rows = []
    for path in sorted(glob.glob(os.path.join(run_dir, "wandb", "offline-run-*", "run-*.wandb"))):
        by_step = {}  # the log can hold a row twice
        for record in records(path):
            if record.WhichOneof("record_type") == "history":
                row = {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item
                }
                by_step[row["_step"]] = row
        rows += [by_step[step] for step in sorted(by_step)]
    return rows


def run_ids(run_dir: str) -> set[str]:
    ids = set()
    for path in glob.glob(os.path.join(run_dir, "wandb", "*", "run-*.wandb")):
        for record in records(path):
            if record.WhichOneof("record_type") == "run":
                ids.add(record.run.run_id)
    return ids
