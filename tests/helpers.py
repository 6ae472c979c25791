"""What the tests share besides fixtures (those are in conftest.py): ways to run train.py and a
grid, to read a run's outputs, and the argv of a tiny run."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

TINY_RUN = {  # a tiny random-init BERT on the generated task, offline: seconds per epoch
    "model": "tiny-bert",
    "data": "synthetic",
    "max_train_samples": 256,
    "max_eval_samples": 64,
    "epochs": 2,
    "wandb": "disabled",
}


def tiny_run(**flags) -> list:
    """train.py's argv for a tiny run: TINY_RUN with `flags` (name=value) changed or added."""
    return [item for name, value in {**TINY_RUN, **flags}.items() for item in (f"--{name}", value)]


def run_inprocess(*argv) -> int:
    """train.main in this process (fast: no re-import); returns its exit code."""
    import train

    try:
        return train.main([str(a) for a in argv])
    except SystemExit as e:  # argparse errors
        return e.code


FAULTS = ("FTKIT_KILL_AT", "FTKIT_NAN_AT", "FTKIT_OOM_ABOVE")  # tests/faults.py arms these


def train_command(argv, nproc: int = 1, torchrun: bool = False, faults: bool = False) -> list[str]:
    """python train.py ARGS, or torchrun (--standalone) when nproc > 1 or asked; with faults,
    tests/faults.py in its place (train.py with the crash tests' faults armed from the environment)."""
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        if nproc > 1 or torchrun
        else [sys.executable]
    )
    script = os.path.join(ROOT, "tests", "faults.py") if faults else os.path.join(ROOT, "train.py")
    return launcher + [script] + [str(a) for a in argv]


def run_cli(*argv, nproc: int = 1, torchrun: bool = False, env: dict | None = None, timeout: int = 300):
    """train.py in a fresh process, to completion (tests/faults.py when env arms a fault)."""
    return subprocess.run(
        train_command(argv, nproc, torchrun, faults=any(k in FAULTS for k in env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, **(env or {})),
        cwd=ROOT,
    )


def read_results(run_dir) -> dict:
    with open(os.path.join(run_dir, "results.json")) as f:
        return json.load(f)


def read_events(run_dir, kind=None) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        events = [json.loads(line) for line in f]
    return [e for e in events if kind is None or e["event"] == kind]


def write_grid(path, *lines):
    path.write_text("# test grid\n" + "\n".join(lines) + "\n")
    return str(path)


def run_grid(*args, timeout=600):
    env = dict(os.environ, WANDB_MODE="disabled", GRID_PORT_BASE=str(20000 + os.getpid() % 20000))
    return subprocess.run(
        ["bash", os.path.join(ROOT, "run_grid.sh"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )
