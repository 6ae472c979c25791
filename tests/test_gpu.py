"""CUDA paths: NCCL DDP, bf16 and fp16 (with loss scaling), torch.compile. Skipped without a GPU;
bench/gpu_check.sh runs them on a lent one."""

import json

import numpy as np
import pytest
import torch
from conftest import read_events, read_results, run_cli

pytestmark = [pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"), pytest.mark.slow]

COMMON = ["--model", "tiny-bert", "--data", "synthetic", "--epochs", 2, "--wandb", "disabled", "--log_every", 5]


def test_nccl_ddp_path_under_torchrun_learns_and_reports_mfu(tmp_path):
    """torchrun with one process still sets up NCCL and wraps the model in DDP."""
    done = run_cli(
        *COMMON,
        "--out_dir",
        tmp_path,
        "--run_name",
        "r",
        nproc=2 if torch.cuda.device_count() > 1 else 1,
        torchrun=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = read_results(tmp_path / "r")
    assert results["test_acc"] >= 0.9 and results["train_mfu"] > 0
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["precision_used"] == ("bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16")
    assert config["env"]["backend"] == "nccl"


@pytest.mark.parametrize("precision", ["bf16", "fp16", "fp32"])
def test_each_precision_learns(precision, tmp_path):
    done = run_cli(*COMMON, "--precision", precision, "--out_dir", tmp_path, "--run_name", "r")
    assert done.returncode == 0, done.stderr[-3000:]
    assert read_results(tmp_path / "r")["test_acc"] >= 0.9


def test_compiled_training_matches_eager(tmp_path):
    common = [
        *COMMON,
        "--epochs",
        1,
        "--dropout",
        0,
        "--encoder_dropout",
        0,
        "--precision",
        "fp32",
        "--padding",
        "max_len",
        "--log_every",
        1,
        "--max_train_samples",
        320,
    ]
    for name, extra in (("eager", []), ("compiled", ["--compile"])):
        done = run_cli(*common, *extra, "--out_dir", tmp_path / name, "--run_name", "r")
        assert done.returncode == 0, done.stderr[-3000:]
    assert "cannot compile" not in (tmp_path / "compiled" / "r" / "train.log").read_text()
    compiled_report = read_results(tmp_path / "compiled" / "r")
    assert compiled_report["compiled_graphs"] >= 1 and compiled_report["frames_not_compiled"] == 0
    eager = [e["loss"] for e in read_events(tmp_path / "eager" / "r", "train")]
    compiled = [e["loss"] for e in read_events(tmp_path / "compiled" / "r", "train")]
    np.testing.assert_allclose(compiled, eager, rtol=2e-3, atol=2e-3)
