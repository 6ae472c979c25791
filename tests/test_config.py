"""The settings module: one declaration per flag, the CLI users of HF and torchrun expect, and
tools that read tables and grids without loading torch."""

import os
import shutil
import subprocess
import sys

import pytest
from helpers import ROOT

import config
import grid


@pytest.mark.slow
@pytest.mark.parametrize(
    "module",
    ["report", "grid", "config", "metrics", "glue", "conftest, test_config, test_grid, test_report, test_shell"],
)
def test_tools_that_read_tables_and_grids_load_no_torch(module):
    """The tools, and the test modules of the fast subset that exercise them (pytest -m 'not slow')."""
    tests = os.path.join(ROOT, "tests")
    code = f"import sys; sys.path[:0] = [{ROOT!r}, {tests!r}]; import {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_each_flag_declares_its_name_label_and_whether_it_is_operational():
    assert list(config.NAME_LABELS)[:3] == ["max_len", "batch_size", "lr"]
    # how the batch is cut for the device changes no number: a run may resume with another cut
    assert {"out_dir", "log_every", "eval_batch_size", "micro_batch", "grad_accum"} <= config.OPERATIONAL
    assert not set(config.NAME_LABELS) & config.OPERATIONAL
    assert "padding" in config.NAME_LABELS and "padding" not in config.OPERATIONAL


def test_prefixes_are_refused_and_hf_spellings_accepted():
    with pytest.raises(config.UserError, match="unrecognized arguments: --drop"):
        config.parse_args(["--drop", "0.3"], on_error=config.UserError)
    hf = config.parse_args(
        [
            "--learning_rate",
            "3e-5",
            "--num_train_epochs",
            "2",
            "--output_dir",
            "o",
            "--max_seq_length",
            "256",
            "--warmup_ratio",
            "0.1",
            "--weight_decay",
            "0.01",
        ]
    )
    assert (hf.lr, hf.epochs, hf.out_dir, hf.max_len, hf.warmup_ratio, hf.weight_decay) == (
        3e-5,
        2,
        "o",
        256,
        0.1,
        0.01,
    )
    assert (
        hf.run_name
        == config.parse_args(
            ["--lr", "3e-5", "--epochs", "2", "--max_len", "256", "--warmup_ratio", "0.1", "--weight_decay", "0.01"]
        ).run_name
    )


@pytest.mark.slow
@pytest.mark.parametrize("flag", ["--out_dir x", "--output_dir=x", "--wandb_group g"])
def test_a_grid_line_setting_what_run_grid_sets_is_refused_naming_the_line(flag, tmp_path):
    path = tmp_path / "g.grid"
    path.write_text(f"--model tiny-bert\n--model tiny-bert --seed 1 {flag}\n")
    with pytest.raises(grid.GridError, match=f"g.grid:2: {flag.split('=')[0].split()[0]} is set by run_grid.sh"):
        grid.resolve(str(path))


@pytest.mark.slow
def test_tmux_launch_help_prints_help_and_starts_nothing(tmp_path):
    # no tmux on PATH, only what --help needs: help comes first, and nothing can start a session
    for tool in ("dirname", "sed"):
        os.symlink(shutil.which(tool), tmp_path / tool)
    out = subprocess.run(
        ["/bin/bash", os.path.join(ROOT, "tmux_launch.sh"), "--help"],
        capture_output=True,
        text=True,
        env={"PATH": str(tmp_path)},
    )
    assert out.returncode == 0 and "tmux_launch.sh --status" in out.stdout, out.stderr


def test_wandb_counts_a_self_hosted_servers_netrc_entry_as_logged_in(tmp_path, monkeypatch):
    import tracking

    netrc = tmp_path / "netrc"
    netrc.write_text("machine wandb.lab.example login user password secret\n")
    netrc.chmod(0o600)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.lab.example")
    assert tracking._wandb_logged_in()
    monkeypatch.setenv("WANDB_BASE_URL", "https://other.example")
    assert not tracking._wandb_logged_in()
