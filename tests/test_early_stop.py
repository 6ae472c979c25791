"""--early_stop PATIENCE: training ends after PATIENCE validations without improvement, the test
scores the best weights, results.json says where and why, and a rerun never trains again."""

import signal

import pytest
from helpers import read_events, read_results, run_cli, run_inprocess

# 256 train examples, batch 16: 16 steps per epoch, a validation every 8 steps; val loss improves
# at steps 8 and 16, not at 24 and 32: with patience 2 training ends at step 32 of 128
RUN = [
    "--model",
    "tiny-bert",
    "--data",
    "synthetic",
    "--max_train_samples",
    256,
    "--max_eval_samples",
    64,
    "--eval_batch_size",
    16,
    "--eval_every",
    8,
    "--metric_for_best",
    "loss",
    "--log_every",
    1,
    "--wandb",
    "disabled",
]
STOPPED = [*RUN, "--epochs", 8, "--early_stop", 2, "--run_name", "r"]


@pytest.fixture(scope="module")
def stopped(cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("early-stop")
    ran = run_cli(*STOPPED, "--out_dir", out)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert "early-stopped at step 32 of 128: val loss did not improve in 2 validations" in ran.stdout
    return out / "r"


@pytest.mark.slow
def test_training_ends_after_patience_validations_and_the_test_scores_the_best_weights(stopped, tmp_path):
    val = [e for e in read_events(stopped, "eval") if e["split"] == "val"]
    assert [(e["step"], e["best"]) for e in val] == [(8, True), (16, True), (24, False), (32, False)]
    assert read_events(stopped, "train")[-1]["step"] == 32
    results = read_results(stopped)
    assert results["stopped_early"] == "early_stop" and results["stopped_at_step"] == 32
    assert results["stopped_at_epoch"] == 1 and results["total_steps"] == 128 and results["global_step"] == 32
    assert "did not improve in 2 validations (best " in results["stop_reason"]
    assert results["best_step"] == 16 and results["val_loss"] == val[1]["loss"]
    # the model at step 16 is what a one-epoch run of the same settings ends with (validation
    # draws no random numbers): the early-stopped run's test must score exactly those weights
    assert run_inprocess(*RUN, "--epochs", 1, "--run_name", "one", "--out_dir", tmp_path) == 0
    one_epoch = read_results(tmp_path / "one")
    assert one_epoch["best_step"] == 16
    for key in ("test_acc", "test_loss", "test_ece"):
        assert results[key] == pytest.approx(one_epoch[key], abs=1e-6), key


@pytest.mark.slow
def test_a_kill_during_the_test_after_an_early_stop_resumes_without_training(stopped, tmp_path):
    args = [*STOPPED, "--out_dir", tmp_path]
    killed = run_cli(*args, env={"FTKIT_KILL_AT": "eval:17"})  # 4 validations x 4 batches, then the test's first
    assert killed.returncode == -signal.SIGKILL and not (tmp_path / "r" / "results.json").exists()
    rerun = run_cli(*args)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "step_00000032.pt: epoch 2, step 32/128" in rerun.stdout and "early-stopped at step 32" in rerun.stdout
    assert " train: " not in rerun.stdout and " eval: split val " not in rerun.stdout  # nothing trained or validated
    got, want = read_results(tmp_path / "r"), read_results(stopped)
    for key in ("val_loss", "test_acc", "test_loss", "best_step", "stopped_at_step"):
        assert got[key] == pytest.approx(want[key], abs=1e-6), key
    again = run_cli(*args)
    assert again.returncode == 0 and "is already finished" in again.stdout
    assert len(read_events(tmp_path / "r", "train")) == 32  # each step logged once, nothing added
