"""Crash safety: whatever kills a run, rerunning the same command finishes it with the numbers
an uninterrupted run gets."""

import os
import signal
import subprocess
import sys
import time
import types

import pytest
import torch
from helpers import ROOT, read_events, read_results, run_cli, run_inprocess, tiny_run, train_command

import checkpoint

# 256 train examples, batch 16: 16 steps per epoch; checkpoints every 5 steps and at epoch ends
RUN = tiny_run(save_every=5, log_every=1, run_name="r")
KILL_POINTS = {  # in the order a chained run meets them (counts restart with each process)
    "early": "step:3",  # before the first checkpoint: starts over
    "during-checkpoint-write": "ckpt_write:2",  # the step-10 write; resumes from step 5
    "mid-epoch": "step:7",  # step 12; resumes from step 10 mid-epoch
    "during-eval": "eval:1",  # inside the first epoch's validation; resumes from 15
    "after-epoch-boundary": "step:3",  # step 18, after the epoch-end checkpoint at 16
}


def assert_same_run(run_dir, reference_dir):
    got, want = read_results(run_dir), read_results(reference_dir)
    for key in ("val_acc", "val_loss", "test_acc", "test_loss"):
        assert abs(got[key] - want[key]) <= 1e-6, (key, got[key], want[key])
    got_loss = [(e["step"], e["loss"]) for e in read_events(run_dir, "train")]
    want_loss = [(e["step"], e["loss"]) for e in read_events(reference_dir, "train")]
    assert [s for s, _ in got_loss] == [s for s, _ in want_loss]  # each step logged once
    assert max(abs(a[1] - b[1]) for a, b in zip(got_loss, want_loss, strict=True)) <= 1e-6


@pytest.fixture(scope="module")
def reference(cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    ran = run_cli(*RUN, "--out_dir", out)
    assert ran.returncode == 0, ran.stderr[-2000:]
    return out / "r"


@pytest.mark.slow
def test_kill_9_at_five_points_then_rerun_gives_identical_results(reference, tmp_path):
    """One run killed at five points in turn, each rerun resuming and then being killed at the
    next point; the last rerun must finish with the uninterrupted run's numbers. Any resume
    that was not exact would carry its difference to the end."""
    args = [*RUN, "--out_dir", tmp_path]
    resumed_from = []
    for point, spec in KILL_POINTS.items():
        killed = run_cli(*args, env={"FTKIT_KILL_AT": spec})
        assert killed.returncode == -signal.SIGKILL, (point, killed.stderr[-1000:])
        assert not (tmp_path / "r" / "results.json").exists()
        resumed_from.append(
            next(
                (
                    line.split("resumed from ")[1].split(":")[0]
                    for line in killed.stdout.splitlines()
                    if "resumed from" in line
                ),
                None,
            )
        )
    final = run_cli(*args)
    assert final.returncode == 0, final.stderr[-2000:]
    assert "taking over a stale lock" in final.stdout
    assert [os.path.basename(p) if p else None for p in resumed_from] == [
        None,
        None,
        "step_00000005.pt",
        "step_00000010.pt",
        "step_00000015.pt",
    ]
    assert "step_00000016.pt: epoch 1, step 16/32" in final.stdout
    assert_same_run(tmp_path / "r", reference)


@pytest.fixture(scope="module")
def reference_2proc(cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference2")
    ran = run_cli(*RUN, "--out_dir", out, nproc=2)
    assert ran.returncode == 0, ran.stderr[-2000:]
    return out / "r"


@pytest.mark.slow
def test_kill_9_under_torchrun_at_three_points_then_rerun_gives_identical_results(reference_2proc, tmp_path):
    """One 2-process run killed at three points in turn (each rerun resumes, then is killed at the
    next point); the last rerun finishes with the uninterrupted run's numbers."""
    args = [*RUN, "--out_dir", tmp_path]
    for point in ("mid-epoch", "during-checkpoint-write", "during-eval"):
        killed = run_cli(*args, nproc=2, env={"FTKIT_KILL_AT": KILL_POINTS[point]})
        assert killed.returncode != 0 and not (tmp_path / "r" / "results.json").exists(), point
    resumed = run_cli(*args, nproc=2)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout
    assert_same_run(tmp_path / "r", reference_2proc)


def launch(args, nproc):
    return subprocess.Popen(
        train_command(args, nproc), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT
    )


def wait_for_log(run_dir, text, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        path = run_dir / "train.log"
        if path.exists() and text in path.read_text():
            return
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.1)
    raise TimeoutError(text)


@pytest.mark.slow
@pytest.mark.parametrize("sig, nproc", [(signal.SIGTERM, 2), (signal.SIGHUP, 2), (signal.SIGINT, 1)])
def test_signal_checkpoints_and_the_same_command_resumes(sig, nproc, cache_dir, tmp_path, request):
    args = [*RUN, "--out_dir", tmp_path]
    proc = launch(args, nproc)
    # logged once every rank holds its handler (the run lock is taken collectively first)
    wait_for_log(tmp_path / "r", "environment:", proc)
    proc.send_signal(sig)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode != 0
    assert "rerun the same command to resume" in output
    (ckpt,) = checkpoint.list_checkpoints(str(tmp_path / "r" / "ckpt"))
    step = int(ckpt.split("_")[-1].split(".")[0])
    assert step >= 1 and f"checkpointed at step {step}" in output
    if sig == signal.SIGHUP:
        return  # the same checkpoint path as SIGTERM; its resume is checked there
    resumed = run_cli(*args, nproc=nproc)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[:5000]
    assert f"step {step}/32" in resumed.stdout
    assert_same_run(tmp_path / "r", request.getfixturevalue("reference_2proc" if nproc > 1 else "reference"))


@pytest.mark.slow
def test_the_first_train_log_line_after_a_resume_averages_the_same_steps(cache_dir, tmp_path):
    """A log line every 4 steps, killed at step 7, resumed from step 5: the step-8 line must still
    average steps 5-8, as the uninterrupted run's does (the log window is in the checkpoint)."""
    args = [*RUN, "--log_every", 4]
    assert run_cli(*args, "--out_dir", tmp_path / "whole").returncode == 0
    assert run_cli(*args, "--out_dir", tmp_path / "killed", env={"FTKIT_KILL_AT": "step:7"}).returncode != 0
    resumed = run_cli(*args, "--out_dir", tmp_path / "killed")
    assert resumed.returncode == 0 and "resumed from" in resumed.stdout
    assert_same_run(tmp_path / "killed" / "r", tmp_path / "whole" / "r")


def test_corrupt_newest_checkpoint_falls_back_to_the_previous(tmp_path):
    for step in (5, 10):
        checkpoint.save_checkpoint(str(tmp_path), step, {"progress": {"global_step": step}, "w": torch.ones(100)})
    newest = tmp_path / "step_00000010.pt"
    newest.write_bytes(newest.read_bytes()[:200])
    warnings = []
    state = checkpoint.load_latest_checkpoint(str(tmp_path), warnings.append)
    assert state["progress"]["global_step"] == 5
    assert "step_00000010.pt is unreadable" in warnings[0]


@pytest.mark.slow
def test_checkpoints_keep_the_newest_two_and_load_without_running_code(tmp_path):
    for step in (1, 2, 3):
        checkpoint.save_checkpoint(str(tmp_path), step, {"progress": {"global_step": step}})
    assert [os.path.basename(p) for p in checkpoint.list_checkpoints(str(tmp_path))] == [
        "step_00000003.pt",
        "step_00000002.pt",
    ]
    torch.save({"progress": {"global_step": 9}, "code": subprocess.Popen}, tmp_path / "step_00000009.pt")
    warnings = []
    state = checkpoint.load_latest_checkpoint(str(tmp_path), warnings.append)
    assert state["progress"]["global_step"] == 3 and "step_00000009.pt is unreadable" in warnings[0]


def test_the_checkpointer_decides_when_to_save_and_keeps_only_named_best_weights(tmp_path):
    said = []
    keeper = checkpoint.Checkpointer(
        str(tmp_path), every=3, keep=2, is_main=True, log=types.SimpleNamespace(info=said.append, warning=said.append)
    )
    snapshots = []

    def snapshot():
        snapshots.append(1)
        return {"progress": {"global_step": len(snapshots)}}

    for step in range(1, 5):  # an epoch of 4 steps: every 3, not at the epoch's last step
        keeper.step_done(step, validation_follows=step == 4, snapshot=snapshot)
    assert [os.path.basename(p) for p in checkpoint.list_checkpoints(keeper.ckpt_dir)] == ["step_00000003.pt"]
    assert keeper.new_best(4, {"w": torch.ones(2)}) == "best_step4.pt"
    keeper.epoch_done(4, 0, snapshot)
    for step in (5, 6):
        keeper.step_done(step, validation_follows=False, snapshot=snapshot)
    keeper.new_best(8, {"w": torch.zeros(2)})
    keeper.epoch_done(8, 1, snapshot)  # keeps steps 8 and 6, which name best_step8 and best_step4
    assert sorted(p.name for p in tmp_path.glob("best_step*.pt")) == ["best_step4.pt", "best_step8.pt"]
    keeper.step_done(9, validation_follows=False, snapshot=snapshot)
    assert keeper.stop(9, snapshot).endswith("step_00000009.pt") and len(snapshots) == 5  # nothing new to save
    assert sorted(p.name for p in tmp_path.glob("best_step*.pt")) == ["best_step8.pt"]
    assert torch.equal(keeper.load_best(9, None)["w"], torch.zeros(2))
    assert "checkpoint (end of epoch 1): " in " ".join(said)


@pytest.mark.slow
def test_config_mismatch_is_refused_naming_the_keys(syn_folder, cache_dir, tmp_path, capsys):
    args = [
        "--model",
        "tiny-bert",
        "--max_train_samples",
        64,
        "--max_eval_samples",
        32,
        "--epochs",
        1,
        "--wandb",
        "disabled",
        "--run_name",
        "r",
        "--data",
        syn_folder,
        "--out_dir",
        tmp_path,
    ]
    assert run_inprocess(*args) == 0
    assert run_inprocess(*args) == 0 and "already finished" in capsys.readouterr().out
    assert run_inprocess(*args, "--lr", 0.01, "--dropout", 0.2) == 2
    assert "holds a run with other settings (dropout, lr)" in capsys.readouterr().err
    assert run_inprocess(*args, "--lr", 0.01, "--fresh") == 0
    assert read_results(tmp_path / "r")  # rerun from scratch with the new settings


@pytest.mark.slow
def test_concurrent_launch_is_refused_and_a_stale_lock_taken_over(syn_folder, cache_dir, tmp_path, capsys):
    import socket

    args = [
        "--model",
        "tiny-bert",
        "--max_train_samples",
        64,
        "--max_eval_samples",
        32,
        "--epochs",
        1,
        "--wandb",
        "disabled",
        "--run_name",
        "r",
        "--data",
        syn_folder,
        "--out_dir",
        tmp_path,
    ]
    (tmp_path / "r").mkdir()
    lock = tmp_path / "r" / ".lock"
    with checkpoint.RunLock(str(tmp_path / "r"), print) as held:  # a live process: this test
        held.acquire()
        assert run_inprocess(*args) == 2
    assert f"is in use by process {os.getpid()} on {socket.gethostname()}" in capsys.readouterr().err
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.write_text(f"{socket.gethostname()} {dead.stdout.strip()}")
    assert run_inprocess(*args) == 0
    assert "taking over a stale lock" in capsys.readouterr().out
    assert not lock.exists()


@pytest.mark.slow
def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(cache_dir, tmp_path):
    args = [*RUN, "--out_dir", tmp_path]
    out = run_cli(*args, env={"FTKIT_NAN_AT": "7"})
    assert out.returncode == 3
    assert "loss is not finite at step 8" in out.stdout + out.stderr
    assert [os.path.basename(p) for p in checkpoint.list_checkpoints(str(tmp_path / "r" / "ckpt"))] == [
        "step_00000005.pt"
    ]
    skipped = run_cli(*args, "--on_nan", "skip", "--run_name", "s", env={"FTKIT_NAN_AT": "7"})
    assert skipped.returncode == 0 and "step skipped" in skipped.stdout + skipped.stderr


@pytest.mark.slow
def test_a_collapsing_run_is_marked(syn_folder, cache_dir, tmp_path, capsys):
    assert (
        run_inprocess(
            "--model",
            "tiny-bert",
            "--lr",
            0.1,
            "--max_train_samples",
            512,
            "--max_eval_samples",
            200,
            "--epochs",
            1,
            "--wandb",
            "disabled",
            "--run_name",
            "r",
            "--data",
            syn_folder,
            "--out_dir",
            tmp_path,
        )
        == 0
    )
    assert read_results(tmp_path / "r")["collapsed"] is True
    assert "COLLAPSED RUN" in capsys.readouterr().out
