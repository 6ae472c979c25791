"""Sentence pairs and regression through train.py: learning, exact resume, 2 processes = 1,
the report, and the bad inputs a user can give."""

import json
import signal

import numpy as np
import pandas as pd
import pytest
from helpers import read_events, read_results, run_cli, run_inprocess

import report

pytestmark = pytest.mark.slow  # every test here trains

REGRESSION = ["--model", "tiny-bert", "--task", "regression", "--pool", "mean", "--epochs", 2, "--wandb", "disabled"]


def test_regression_learns_a_learnable_target_and_writes_its_metrics(regression_folder, cache_dir, tmp_path):
    assert run_inprocess(*REGRESSION, "--data", regression_folder, "--out_dir", tmp_path, "--run_name", "r") == 0
    results = read_results(tmp_path / "r")
    assert results["test_pearson"] >= 0.8 and results["val_pearson"] >= 0.8
    assert results["task"] == "regression" and results["metric_for_best"] == "pearson"
    assert {"test_mse", "test_spearman", "val_loss"} <= set(results)
    assert not {"test_acc", "test_ece", "collapsed"} & set(results)  # no classification figures
    predictions = np.load(tmp_path / "r" / "test_predictions.npz")
    assert predictions["predictions"].shape == predictions["labels"].shape == (120,)
    assert predictions["labels"].dtype == np.float32  # the targets as given, not rescaled
    val = read_events(tmp_path / "r", "eval")
    best = max((e for e in val if e["split"] == "val"), key=lambda e: e["pearson"])
    assert results["best_epoch"] == best["epoch"]


def test_regression_resume_after_a_kill_is_exact(regression_folder, cache_dir, tmp_path):
    args = [
        *REGRESSION,
        "--data",
        regression_folder,
        "--max_train_samples",
        192,
        "--save_every",
        5,
        "--log_every",
        1,
        "--run_name",
        "r",
    ]
    reference = run_cli(*args, "--out_dir", tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr[-2000:]
    killed = run_cli(*args, "--out_dir", tmp_path / "killed", env={"FTKIT_KILL_AT": "step:8"})
    assert killed.returncode == -signal.SIGKILL
    resumed = run_cli(*args, "--out_dir", tmp_path / "killed")
    assert resumed.returncode == 0 and "resumed from" in resumed.stdout, resumed.stderr[-2000:]
    got, want = read_results(tmp_path / "killed" / "r"), read_results(tmp_path / "reference" / "r")
    for key in ("val_pearson", "val_loss", "test_pearson", "test_mse"):
        assert abs(got[key] - want[key]) <= 1e-6, key
    losses = [[e["loss"] for e in read_events(tmp_path / d / "r", "train")] for d in ("killed", "reference")]
    np.testing.assert_allclose(*losses, rtol=0, atol=1e-6)


def test_regression_and_pairs_on_two_processes_match_one(regression_folder, pair_folder, cache_dir, tmp_path):
    for name, folder, extra in (
        ("reg", regression_folder, REGRESSION[2:]),
        ("pair", pair_folder, ["--text_col", "sentence1", "sentence2", "--epochs", 1]),
    ):
        args = [
            "--model",
            "tiny-bert",
            *extra,
            "--data",
            folder,
            "--dropout",
            0,
            "--encoder_dropout",
            0,
            "--max_train_samples",
            160,
            "--log_every",
            1,
            "--wandb",
            "disabled",
            "--run_name",
            name,
        ]
        assert run_inprocess(*args, "--out_dir", tmp_path / "one") == 0
        two = run_cli(*args, "--out_dir", tmp_path / "two", nproc=2)
        assert two.returncode == 0, two.stderr[-2000:]
        one_loss, two_loss = ([e["loss"] for e in read_events(tmp_path / d / name, "train")] for d in ("one", "two"))
        np.testing.assert_allclose(two_loss, one_loss, rtol=1e-3, atol=1e-4)
        one, two = read_results(tmp_path / "one" / name), read_results(tmp_path / "two" / name)
        assert abs(one["test_loss"] - two["test_loss"]) < 1e-3


@pytest.mark.parametrize("model, segment_ids", [("tiny-bert", True), ("tiny-modernbert", False)])
def test_a_pair_run_feeds_segment_ids_only_to_a_model_that_has_them(
    pair_folder, cache_dir, tmp_path, model, segment_ids, monkeypatch
):
    import model as models

    seen = []
    forward = models.Classifier.forward

    def spy(self, input_ids, attention_mask, token_type_ids=None):
        seen.append(token_type_ids)
        return forward(self, input_ids, attention_mask, token_type_ids)

    monkeypatch.setattr(models.Classifier, "forward", spy)
    assert (
        run_inprocess(
            "--model",
            model,
            "--data",
            pair_folder,
            "--text_col",
            "sentence1",
            "sentence2",
            "--epochs",
            1,
            "--max_train_samples",
            64,
            "--wandb",
            "disabled",
            "--out_dir",
            tmp_path,
        )
        == 0
    )
    assert seen and all((t is not None) == segment_ids for t in seen)
    if segment_ids:
        assert any(t.max() == 1 for t in seen)  # segment B is there
    config = json.loads(next(tmp_path.glob("*/config.json")).read_text())
    assert config["text_pairs"] is True


def test_report_over_a_regression_grid(regression_folder, cache_dir, tmp_path, capsys):
    for seed in (1, 2):
        for pool in ("cls", "mean"):
            assert (
                run_inprocess(
                    *REGRESSION,
                    "--data",
                    regression_folder,
                    "--pool",
                    pool,
                    "--seed",
                    seed,
                    "--epochs",
                    1,
                    "--max_train_samples",
                    160,
                    "--out_dir",
                    tmp_path,
                )
                == 0
            )
    assert report.main([str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    rows = [line for line in printed.splitlines() if line.startswith("| tiny-bert")]
    assert len(rows) == 2 and "test_pearson" in printed and "test_ece" not in printed
    assert rows[0].endswith("| 2 | baseline |") and "†" in rows[1]  # 2 seeds: no conclusion drawn


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--task", "regression", "--metric_for_best", "acc"], "acc"),
        (["--text_col", "sentence1", "sentence2", "--max_len", 4], "max_len"),
    ],
)
def test_bad_task_settings_are_one_line(pair_folder, cache_dir, tmp_path, flags, message):
    done = run_cli("--model", "tiny-bert", "--data", pair_folder, "--wandb", "disabled", "--out_dir", tmp_path, *flags)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], done.stderr


def test_a_label_that_is_not_a_number_in_a_regression_is_one_line(tmp_path, cache_dir):
    pd.DataFrame({"text": ["a b", "c d", "e f"] * 10, "label": ["1.5", "2", "high"] * 10}).to_csv(
        tmp_path / "train.csv", index=False
    )
    done = run_cli(
        "--model",
        "tiny-bert",
        "--data",
        tmp_path,
        "--task",
        "regression",
        "--wandb",
        "disabled",
        "--out_dir",
        tmp_path / "runs",
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "row" in done.stderr, done.stderr
