"""bench/'s parts that need no training run: the comparison with HF Trainer's side."""

import json
import os
import sys

import numpy as np
import pytest
from helpers import ROOT

import metrics

sys.path.insert(0, os.path.join(ROOT, "bench"))
import bench  # noqa: E402


def fake_side_runs(folder, labels, accuracies, ours, rng):
    """One run per seed as each side leaves it: our run folder's test predictions, or the Trainer
    worker's JSON with its per-example correctness; and the correctness, seeds x examples."""
    runs, correct = [], []
    for seed, acc in enumerate(accuracies):
        right = rng.random(len(labels)) < acc
        run = {"samples_per_s": 20.0 if ours else 10.0, "test_acc": float(right.mean()), "eval_samples_per_s": 5.0}
        if ours:
            run["run_dir"] = str(folder / f"ours0-s{seed}")
            os.makedirs(run["run_dir"])
            probs = np.eye(2)[np.where(right, labels, 1 - labels)]
            np.savez(os.path.join(run["run_dir"], "test_predictions.npz"), probs=probs, labels=labels)
        else:
            run["result_path"] = str(folder / f"trainer-s{seed}.json")
            with open(run["result_path"], "w") as f:
                json.dump({"test": {"correct": right.tolist()}}, f)
        runs.append(run)
        correct.append(right)
    return runs, np.array(correct, dtype=float)


def test_the_accuracy_ci_against_trainer_is_the_metrics_bootstrap_without_report_py(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "report", None)  # `import report` fails: bench must not need it
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    trainer_runs, trainer_correct = fake_side_runs(tmp_path, labels, (0.7, 0.72), False, rng)
    our_runs, our_correct = fake_side_runs(tmp_path, labels, (0.8, 0.78), True, rng)
    sides = [
        {"samples_per_s": 10.0, "test_acc": trainer_correct.mean(), "eval_samples_per_s": 5.0},
        {"samples_per_s": 20.0, "test_acc": our_correct.mean(), "eval_samples_per_s": 5.0, "per_seed": our_runs},
    ]
    bench.compare_with_trainer(sides, {"trainer": trainer_runs, "ours0": our_runs})
    ours = sides[1]
    d, low, high = metrics.seed_and_example_bootstrap(our_correct, trainer_correct)
    assert ours["acc_diff_ci95_points"] == pytest.approx([100 * low, 100 * high])
    assert ours["acc_diff_points"] == pytest.approx(100 * d) and 100 * low <= ours["acc_diff_points"] <= 100 * high
    assert ours["speedup"] == 2 and [run["speedup"] for run in our_runs] == [2, 2]
