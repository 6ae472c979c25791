"""W&B: an offline run's history holds the metrics; a resumed run continues the same run;
an unreachable W&B never fails a run."""

import os

import pytest
from helpers import run_cli, tiny_run
from wandb_history import history, run_ids

pytestmark = pytest.mark.slow  # every test here trains or starts processes

RUN = tiny_run(save_every=5, log_every=4, wandb="offline", run_name="r")


def test_offline_run_logs_metrics_and_survives_a_kill_as_one_run(cache_dir, tmp_path):
    args = [*RUN, "--out_dir", tmp_path]
    killed = run_cli(*args, env={"FTKIT_KILL_AT": "step:22"})
    assert killed.returncode != 0
    first_id = (tmp_path / "r" / "wandb_id").read_text()
    resumed = run_cli(*args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert run_ids(tmp_path / "r") == {first_id}

    rows = history(tmp_path / "r")
    train_rows = [r for r in rows if "train/loss" in r]
    for key in ("train/loss", "train/lr", "train/grad_norm", "train/samples_per_s", "train/tokens_per_s"):
        assert all(key in r for r in train_rows), key
    # the killed process flushed nothing to W&B; the resumed one sends all of it, once, in order
    steps = [r["_step"] for r in train_rows]
    assert steps == list(range(4, 33, 4))
    val = [r for r in rows if "val/acc" in r]
    assert [r["_step"] for r in val] == [16, 32]
    assert all({"val/loss", "val/f1", "val/ece"} <= set(r) for r in val)
    final_keys = {k.split("/")[1] for r in rows for k in r if k.startswith("test/")}
    assert {"acc", "loss", "confusion_matrix_table", "reliability_table", "confidently_wrong"} <= final_keys


def test_unreachable_wandb_does_not_fail_the_run(cache_dir, tmp_path):
    env = {"WANDB_BASE_URL": "http://127.0.0.1:9", "WANDB_API_KEY": "x" * 40, "WANDB_INIT_TIMEOUT": "3"}
    args = [a if a != "offline" else "online" for a in RUN]
    out = run_cli(*args, "--out_dir", tmp_path, "--epochs", 1, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "W&B" in out.stdout and "warning" in out.stdout
    assert os.path.exists(tmp_path / "r" / "results.json")
