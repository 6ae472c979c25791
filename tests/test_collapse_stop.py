"""Collapsed runs stopped (--on_collapse stop, the default): the seed-like collapse ends early with
its best weights tested, results.json written and exit code 4; a slow starter that sits at chance
for its first validations is not stopped; run_grid.sh shows both outcomes."""

import math

import numpy as np
import pytest
from helpers import read_events, read_results, run_cli
from test_grid import run_grid, write_grid

import metrics
import train

# 512 train examples, batch 16: 32 steps per epoch, 6 epochs = 192 steps
SYNTHETIC = ["--model", "tiny-bert", "--data", "synthetic", "--max_train_samples", 512, "--max_eval_samples", 200]
SMALL = [*SYNTHETIC, "--wandb", "disabled", "--run_name", "r"]
COLLAPSING = ["--lr", 3e-2, "--epochs", 6]  # the original bs32 row's failure: chance from the first epoch on


def val_events(run_dir) -> list[dict]:
    return [e for e in read_events(run_dir, "eval") if e["split"] == "val"]


@pytest.mark.slow
def test_the_seed_like_collapse_is_stopped_within_the_first_half_and_tests_its_best_weights(cache_dir, tmp_path):
    args = [*SMALL, *COLLAPSING, "--out_dir", tmp_path]
    ran = run_cli(*args)
    assert ran.returncode == train.EXIT_COLLAPSED == 4, ran.stderr[-2000:]
    assert "stopped as collapsed at step 64 of 192: val accuracy at the majority rate 0.5000" in ran.stdout
    results = read_results(tmp_path / "r")
    assert results["collapsed"] is True and results["stopped_early"] == "collapsed"
    assert results["stopped_at_step"] == 64 <= 192 // 2 and results["total_steps"] == 192
    assert results["collapsed_reason"] == results["stop_reason"] and "(1.0 epochs)" in results["stop_reason"]
    assert results["best_step"] == 32 and results["test_acc"] == 0.5  # the best (first) validation's weights
    assert [e["step"] for e in val_events(tmp_path / "r")] == [32, 64]
    assert read_events(tmp_path / "r", "train")[-1]["step"] == 64
    again = run_cli(*args)
    assert again.returncode == 0 and "is already finished" in again.stdout  # not trained again


@pytest.mark.slow
def test_on_collapse_continue_trains_the_collapsed_run_to_its_end(cache_dir, tmp_path):
    ran = run_cli(*SMALL, *COLLAPSING, "--on_collapse", "continue", "--out_dir", tmp_path)
    assert ran.returncode == 0, ran.stderr[-2000:]
    results = read_results(tmp_path / "r")
    assert results["global_step"] == 192 and results["stopped_early"] is None
    assert results["collapsed"] is True and results["test_acc"] == 0.5  # flagged as before: at chance throughout


@pytest.mark.slow
def test_a_slow_starter_at_chance_for_its_first_validations_is_not_stopped(cache_dir, tmp_path):
    """At lr 3e-4 the tiny model's first two validations, one epoch apart, are at chance by accuracy
    and loss (the report's rule), with the training loss near ln 2 too; it learns in its third
    epoch. Its scores already rank the classes (AUC 0.80 at step 32): it is not stopped."""
    ran = run_cli(*SMALL, "--lr", 3e-4, "--epochs", 4, "--log_every", 32, "--out_dir", tmp_path)
    assert ran.returncode == 0, ran.stderr[-2000:]
    val = val_events(tmp_path / "r")
    assert [e["step"] for e in val[:2]] == [32, 64]
    assert metrics.is_collapsed(val[:2], majority_rate=0.5, num_labels=2)
    train_losses = [e["loss"] for e in read_events(tmp_path / "r", "train")]
    assert train_losses[1] >= 0.95 * math.log(2)
    results = read_results(tmp_path / "r")
    assert results["stopped_early"] is None and results["global_step"] == 128
    assert results["val_acc"] >= 0.8 and results["collapsed"] is False


def test_ranking_z_is_zero_for_one_output_everywhere_and_large_for_a_ranking():
    labels = np.array([0, 1] * 50)
    constant = np.tile([0.4, 0.6], (100, 1))
    assert train.ranking_z(constant, labels) == 0.0
    ranked = np.stack([1 - (0.5 + labels * 0.01), 0.5 + labels * 0.01], axis=1)  # class 1 always, ranked right
    z = train.ranking_z(ranked, labels)
    assert type(z) is float and z > 8  # AUC 1.0 is 0.5 / 0.058 standard errors from chance
    noise = np.random.default_rng(0).random(100)
    assert train.ranking_z(np.stack([1 - noise, noise], axis=1), labels) < train.COLLAPSE_RANKING_Z


@pytest.mark.slow
def test_the_grid_shows_a_collapsed_run_and_an_early_stopped_run_and_the_report_marks_it(cache_dir, tmp_path):
    spec = " ".join(map(str, [*SYNTHETIC, "--wandb", "disabled"]))
    grid_file = write_grid(
        tmp_path / "outcomes.grid",
        f"{spec} {' '.join(map(str, COLLAPSING))} --run_name col",
        f"{spec} --max_train_samples 256 --max_eval_samples 64 --epochs 8 --eval_every 8 --early_stop 2 "
        "--metric_for_best loss --run_name es",
    )
    out = run_grid(grid_file, "--no-smoke", "--out_dir", tmp_path / "runs")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "[collapsed] col at step 64" in out.stdout and "[failed]" not in out.stdout
    assert "[done] es early-stopped at step 32\n" in out.stdout
    assert "1 done, 0 skipped, 0 failed, 0 stopped, 1 collapsed" in out.stdout
    assert "COLLAPSED" in out.stdout  # the report's mark
    again = run_grid(grid_file, "--no-smoke", "--out_dir", tmp_path / "runs")
    assert again.returncode == 0 and "0 done, 2 skipped, 0 failed" in again.stdout
