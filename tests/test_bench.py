"""The benchmark runs both sides end to end on a tiny model (its numbers here mean nothing)."""
import json
import os
import subprocess
import sys

import numpy as np

from conftest import ROOT

IDENTICAL = "--padding max_len --no-group_by_length"


def test_bench_runs_our_loop_and_hf_trainer_per_seed_on_the_same_work(tiny_model_folder, syn_folder, tmp_path):
    # max_len 64 truncates the longer synthetic texts, so head_tail keeps other tokens than head
    argv = ["--model", tiny_model_folder, "--data", syn_folder, "--train_samples", 96, "--eval_samples", 48,
            "--max_len", 64, "--lr", 1e-3, "--seeds", "0,1", f"--ours={IDENTICAL}", "--ours=--truncation head_tail",
            "--out_dir", tmp_path]
    out = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "bench.py"), *map(str, argv)],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("BENCH_JSON "))[11:])
    trainer, identical, head_tail = report["rows"]
    assert trainer["side"].startswith("HF Trainer") and identical["side"] == f"ours: {IDENTICAL}"
    assert head_tail["side"] == "ours: --truncation head_tail"
    assert report["work"]["n_train"] == 96 and report["work"]["n_test"] == 48 and report["work"]["seeds"] == [0, 1]

    for row in report["rows"]:
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
        assert row["eval_ratio"] == row["eval_samples_per_s"] / trainer["eval_samples_per_s"]
        assert row["per_seed"][1]["speedup"] == row["per_seed"][1]["samples_per_s"] / \
            trainer["per_seed"][1]["samples_per_s"]
        # the bare step: once per variant, on the first seed's batches (all 6 steps of the epoch)
        bare = row["bare_step"]
        assert bare["seed"] == 0 and bare["steps"] == bare["of_steps"] == 6 and len(bare["samples_per_s_slices"]) == 3
        assert bare["samples_per_s"] > 0 and bare["tflops_per_s"] > 0 and bare["useful_peak_share"] > 0
        assert bare["loop_samples_per_s"] == row["per_seed"][0]["samples_per_s"]
        assert row["bare_share"] == bare["loop_share"] == bare["loop_samples_per_s"] / bare["samples_per_s"]
        assert bare["peak_rss_mb"] > 0
    with open(os.path.join(identical["per_seed"][0]["run_dir"], "config.json")) as f:
        assert json.load(f)["truncation"] == "head"
    with open(os.path.join(head_tail["per_seed"][0]["run_dir"], "config.json")) as f:
        assert json.load(f)["truncation"] == "head_tail"
    assert "bare_step" not in trainer and "speedup" not in trainer

    # pre-padded to max_len on both sides; our defaults (here with head_tail) pad far less on these short texts
    assert trainer["padding_share"] > 0.2 and abs(identical["padding_share"] - trainer["padding_share"]) < 0.02
    assert head_tail["padding_share"] < identical["padding_share"] / 2
    # the table: one summary line per side, one line per run, one bare-step line per variant
    assert report["machine"]["matmul_peak_flops"] > 0
    lines = out.stdout.splitlines()
    assert sum(line.startswith("| HF Trainer") for line in lines) == 1 + 2
    assert sum(line.startswith("| ours: --truncation head_tail |") for line in lines) == 1 + 2 + 1
    assert "loop / bare step" in out.stdout and "peak RSS MiB" in out.stdout and " ± " in out.stdout
