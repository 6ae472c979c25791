"""The benchmark runs both sides end to end on a tiny model (its numbers here mean nothing)."""

import dataclasses
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import ROOT

import metrics

sys.path.insert(0, os.path.join(ROOT, "bench"))
import paired  # noqa: E402

import bench  # noqa: E402

pytestmark = pytest.mark.slow  # every test here trains or starts processes

IDENTICAL = "--padding max_len --no-group_by_length"


def test_bench_runs_our_loop_and_hf_trainer_per_seed_on_the_same_work(tiny_model_folder, syn_folder, tmp_path):
    # max_len 64 truncates the longer synthetic texts, so head_tail keeps other tokens than head
    argv = [
        "--model",
        tiny_model_folder,
        "--data",
        syn_folder,
        "--train_samples",
        96,
        "--eval_samples",
        48,
        "--max_len",
        64,
        "--lr",
        1e-3,
        "--seeds",
        "0,1",
        f"--ours={IDENTICAL}",
        "--ours=--truncation head_tail",
        "--out_dir",
        tmp_path,
    ]
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "bench.py"), *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("BENCH_JSON "))[11:])
    trainer, identical, head_tail = result["rows"]
    assert trainer["side"].startswith("HF Trainer") and identical["side"] == f"ours: {IDENTICAL}"
    assert head_tail["side"] == "ours: --truncation head_tail"
    assert result["work"]["n_train"] == 96 and result["work"]["n_test"] == 48 and result["work"]["seeds"] == [0, 1]

    for row in result["rows"]:
        # every side ran once per seed, with that seed
        runs = row["per_seed"]
        assert row["seeds"] == [0, 1] and [r["seed"] for r in runs] == [0, 1]
        for run in runs:
            assert len(run["samples_per_s_slices"]) == 3 and run["samples_per_s"] > 0 and 0 <= run["test_acc"] <= 1
            assert run["peak_rss_mb"] > 0 and run["eval_batch_size"] == 64 and run["train_batch_size"] == 16
        assert runs[0]["test_loss"] != runs[1]["test_loss"]  # the seed reached the run: another init and order
        # aggregates: medians of throughput, mean and sample std of test figures, the largest peak memory
        assert row["samples_per_s"] == np.median([r["samples_per_s"] for r in runs])
        assert row["samples_per_s_seeds"] == [r["samples_per_s"] for r in runs]
        for key in ("test_acc", "test_loss"):
            per_seed = [r[key] for r in runs]
            assert row[f"{key}_seeds"] == per_seed and np.isclose(row[key], np.mean(per_seed))
            assert np.isclose(row[f"{key}_std"], np.std(per_seed, ddof=1))
        assert row["peak_rss_mb"] == max(r["peak_rss_mb"] for r in runs)

    for index, row in enumerate((identical, head_tail)):
        for run in row["per_seed"]:
            with open(os.path.join(run["run_dir"], "config.json")) as f:
                config = json.load(f)
            assert run["run_dir"] == os.path.join(str(tmp_path), f"ours{index}-s{run['seed']}")
            assert config["seed"] == run["seed"] and config["eval_batch_size"] == 64
        assert row["speedup"] == row["samples_per_s"] / trainer["samples_per_s"]
        # the accuracy difference's CI: the report's bootstrap over both sides' seeds and the same test examples
        correct = {
            side: np.array([bench.test_correctness(run) for run in r["per_seed"]], dtype=float)
            for side, r in (("ours", row), ("trainer", trainer))
        }
        assert correct["ours"].shape == correct["trainer"].shape == (2, 48)
        assert np.allclose(correct["ours"].mean(1), [run["test_acc"] for run in row["per_seed"]])
        assert np.allclose(correct["trainer"].mean(1), [run["test_acc"] for run in trainer["per_seed"]])
        _, low, high = metrics.seed_and_example_bootstrap(correct["ours"], correct["trainer"])
        assert row["acc_diff_ci95_points"] == pytest.approx([100 * low, 100 * high])
        assert 100 * low <= row["acc_diff_points"] <= 100 * high
        assert row["eval_ratio"] == row["eval_samples_per_s"] / trainer["eval_samples_per_s"]
        assert (
            row["per_seed"][1]["speedup"]
            == row["per_seed"][1]["samples_per_s"] / trainer["per_seed"][1]["samples_per_s"]
        )
        # loop vs bare step: once per variant, paired on the first seed's steps after the 2 warm-up steps
        bare = row["bare_step"]
        assert bare["seed"] == 0 and bare["steps"] == 4 and bare["of_steps"] == 6
        assert len(bare["samples_per_s_slices"]) == len(bare["loop_share_slices"]) == 3
        assert bare["samples_per_s"] > 0 and bare["tflops_per_s"] > 0 and bare["useful_peak_share"] > 0
        assert row["bare_share"] == bare["loop_share"]
        assert set(bare["loop_share_by_order"]) == {"bare_after", "bare_before"}  # 4 pairs: 2 of each
        assert np.isclose(bare["loop_share"], bare["loop_samples_per_s"] / bare["samples_per_s"])
        assert bare["eval"]["max_prob_diff"] < 1e-5 and len(bare["eval"]["round_ratios"]) == paired.EVAL_ROUNDS
        assert np.isclose(bare["eval"]["ratio"], bare["eval"]["samples_per_s"] / bare["eval"]["trainer_samples_per_s"])
        assert all(
            bare["loop_ms"][k] > 0
            for k in ("step", "bare_step", "collate", "optimizer_step", "forward_backward_without_collate")
        )
        # its own run folder, stopped after the paired steps: the seed's real run is untouched
        bare_dir = os.path.join(str(tmp_path), f"bare{index}-s0")
        assert os.path.isdir(bare_dir) and not os.path.exists(os.path.join(bare_dir, "results.json"))
    with open(os.path.join(identical["per_seed"][0]["run_dir"], "config.json")) as f:
        assert json.load(f)["truncation"] == "head"
    with open(os.path.join(head_tail["per_seed"][0]["run_dir"], "config.json")) as f:
        assert json.load(f)["truncation"] == "head_tail"
    assert "bare_step" not in trainer and "speedup" not in trainer

    # pre-padded to max_len on both sides; our defaults (here with head_tail) pad far less on these short texts
    assert trainer["padding_share"] > 0.2 and abs(identical["padding_share"] - trainer["padding_share"]) < 0.02
    assert head_tail["padding_share"] < identical["padding_share"] / 2
    # the table: one summary line per side, one line per run, one loop-vs-bare-step line per variant
    assert result["machine"]["matmul_peak_flops"] > 0
    lines = out.stdout.splitlines()
    assert sum(line.startswith("| HF Trainer") for line in lines) == 1 + 2
    assert sum(line.startswith("| ours: --truncation head_tail |") for line in lines) == 1 + 2 + 1
    assert "loop / bare step" in out.stdout and "peak RSS MiB" in out.stdout and " ± " in out.stdout


def test_each_picked_loop_step_is_paired_with_a_bare_step_on_the_same_batch(
    syn_folder, cache_dir, tmp_path, monkeypatch
):
    import torch

    import data
    import train

    loop_batches, bare_calls = [], []  # the loop's batches, step after step
    real_forward_backward, real_bare, real_collate = train.forward_backward, paired._bare_step, data.collate
    bare_seconds = 0.5  # far longer than a tiny model's loop step: shows which side holds it

    def forward_backward(run, micro_batches, epoch, stop):
        loop_batches.append(np.concatenate(micro_batches))
        return real_forward_backward(run, micro_batches, epoch, stop)

    def bare(run, micro, examples):
        before = [p.detach().clone() for p in run.model.parameters()]
        real_bare(run, micro, examples)
        changed = any(not torch.equal(b, p) for b, p in zip(before, run.model.parameters(), strict=True))
        bare_calls.append((run, micro, examples, changed))
        time.sleep(bare_seconds)

    monkeypatch.setattr(train, "forward_backward", forward_backward)
    monkeypatch.setattr(paired, "_bare_step", bare)
    # fp32: on CPUs with fast bf16 (AVX512), --precision auto is bf16, and Trainer's autocast and
    # ours then differ by 2e-4 in the probabilities this test compares exactly
    argv = [
        "--model",
        "tiny-bert",
        "--data",
        syn_folder,
        "--precision",
        "fp32",
        "--max_train_samples",
        "96",
        "--epochs",
        "2",
        "--batch_size",
        "16",
        "--grad_accum",
        "2",
        "--wandb",
        "disabled",
        "--out_dir",
        str(tmp_path),
        "--run_name",
        "paired",
        "--fresh",
    ]
    raw, run = paired.measure(argv, wanted_steps=2)

    assert [s["step"] for s in raw["steps"]] == paired.pick_steps(6, 2) == [2, 5] and raw["of_steps"] == 6
    assert [s["bare_first"] for s in raw["steps"]] == [False, True] and len(bare_calls) == 2
    for s, (run, micro, examples, changed) in zip(raw["steps"], bare_calls, strict=True):
        batch = loop_batches[s["step"]]  # epoch 0
        assert examples == s["samples"] == 16 and len(micro) == 2  # cut like the loop: 2 x 8, accumulated
        for half, (inputs, target) in zip((batch[:8], batch[8:]), micro, strict=True):
            expected = real_collate([run.encoded["train"].ids[i] for i in half], run.pad_id, run.args.max_len)
            assert torch.equal(inputs["input_ids"], expected["input_ids"])
            assert torch.equal(target, torch.from_numpy(run.labels["train"][half]))
        assert changed  # a real optimizer step
        # the bare step's time is its own, before or after the loop's step, never the loop's
        assert s["bare_s"] >= bare_seconds > s["loop_s"] > s["forward_backward_s"] > s["collate_s"] > 0
    # stopped after the last picked step of epoch 0 (of 6): no validation, no results; the loop is intact
    assert len(loop_batches) == 6
    assert not os.path.exists(os.path.join(str(tmp_path), "paired", "results.json"))
    assert train.forward_backward is forward_backward and data.collate is real_collate
    assert train.count_step.__module__ == "train" and train.optimizer_step.__module__ == "train"

    # our predict and Trainer's predict on the same model score the same examples in the same
    # order, a last batch of one example included
    n_test = len(run.labels["test"])
    run = dataclasses.replace(run, eval_batch_size=n_test - 1)
    evaluated = paired.eval_rounds(run, pad_to_max_len=True, output_dir=str(tmp_path / "trainer"), rounds=2)
    assert evaluated["n"] == n_test > 2 and evaluated["max_prob_diff"] < 1e-5
    assert [len(evaluated["seconds"][side]) for side in ("ours", "trainer")] == [2, 2]
    assert all(t > 0 for side in ("ours", "trainer") for t in evaluated["seconds"][side])


def test_bare_step_figures_are_the_paired_totals():
    step = dict(samples=16, flops=1e9, collate_s=0.1, optimizer_step_s=0.2, bare_first=False)
    raw = {
        "of_steps": 6,
        "warmup_steps": 2,
        "steps": [
            dict(step, loop_s=2.0, bare_s=1.0, forward_backward_s=1.5),
            dict(step, loop_s=4.0, bare_s=1.0, forward_backward_s=3.0, bare_first=True),
        ],
    }
    out = paired.figures(raw, chunks=3, matmul_peak_flops=2e9, gpu_peak_flops=None)
    assert out["steps"] == 2 and out["samples_per_s_slices"] == [16.0, 16.0]
    assert np.isclose(out["loop_share"], 2 / 6) and np.allclose(out["loop_share_slices"], [0.5, 0.25])
    assert out["loop_share_by_order"] == {"bare_after": 0.5, "bare_before": 0.25}
    assert np.isclose(out["samples_per_s"], 16) and np.isclose(out["loop_samples_per_s"], 32 / 6)
    assert np.isclose(out["tflops_per_s"], 1e-3) and np.isclose(out["useful_peak_share"], 0.5)
    assert np.isclose(out["loop_ms"]["rest"], 550) and np.isclose(out["loop_ms"]["collate"], 100)
    assert np.isclose(out["loop_ms"]["forward_backward_without_collate"], 2150) and "mfu" not in out
    raw["eval"] = {"n": 100, "seconds": {"ours": [1.0, 2.0, 4.0], "trainer": [2.0, 2.0, 2.0]}, "max_prob_diff": 0.0}
    evaluated = paired.figures(raw, chunks=3, matmul_peak_flops=2e9, gpu_peak_flops=None)["eval"]
    assert evaluated["samples_per_s"] == 50 and evaluated["trainer_samples_per_s"] == 50 and evaluated["ratio"] == 1
    assert evaluated["round_ratios"] == [2.0, 1.0, 0.5]


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--chunks", "0", "error: --chunks must be at least 1 (got 0)"),
        ("--train_samples", "0", "error: --train_samples must be at least 1 (got 0)"),
        ("--batch_size", "0", "error: --batch_size must be at least 1 (got 0)"),
        ("--eval_samples", "-3", "error: --eval_samples must be at least 1 (got -3)"),
        ("--lr", "nan", "error: --lr must be a positive number (got nan)"),
        ("--bare_steps", "-1", "error: --bare_steps must be at least 0 (got -1)"),
        ("--seeds", "1,1", "error: --seeds 1,1: give distinct integers in [0, 2^31), e.g. 0,1,2"),
    ],
)
def test_bad_bench_flags_end_in_one_error_line(tiny_model_folder, syn_folder, tmp_path, capsys, flag, value, message):
    code = bench.main(["--model", tiny_model_folder, "--data", syn_folder, "--out_dir", str(tmp_path), flag, value])
    captured = capsys.readouterr()
    assert code == 2 and captured.err.strip() == message and not os.listdir(tmp_path)
