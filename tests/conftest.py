"""Shared fixtures: generated data folders, a shared cache, and ways to run train.py."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# One thread per process, inherited by every run the tests start: with `pytest -n 2` two tests
# share the 2 cores, and more threads than cores makes torch's spinning threads crawl.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"  # tests never download: a hub name fails at once, not after retries

# torch, data and train are imported where a fixture or helper needs them: the grid, report and
# config tests run without torch (tests/test_config.py checks), and OMP_NUM_THREADS above already
# gives torch one thread.


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("cache"))
    os.environ["FTKIT_CACHE"] = path
    return path


@pytest.fixture(scope="session")
def syn_folder(tmp_path_factory):
    """The generated task as a local folder of train.csv / test.csv (columns text, label)."""
    import data

    folder = tmp_path_factory.mktemp("syn")
    for split, cols in data.make_synthetic().items():
        pd.DataFrame({"text": cols["text"], "label": cols["label"]}).to_csv(folder / f"{split}.csv", index=False)
    return str(folder)


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


@pytest.fixture(scope="session")
def tiny_model_folder(tmp_path_factory, syn_folder):
    """A random-init tiny BERT saved like a hub checkpoint: config, weights and tokenizer."""
    import data
    import model as models

    folder = str(tmp_path_factory.mktemp("tiny-bert-folder"))
    return models.write_model_folder(folder, "BertConfig", models._TINY, data.make_synthetic()["train"]["text"])
