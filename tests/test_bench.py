"""The benchmark runs both sides end to end on a tiny model (its numbers here mean nothing)."""
import json
import os
import subprocess
import sys

from conftest import ROOT


def test_bench_runs_our_loop_and_hf_trainer_on_the_same_work(tiny_model_folder, syn_folder, tmp_path):
    argv = ["--model", tiny_model_folder, "--data", syn_folder, "--train_samples", 96, "--eval_samples", 48,
            "--max_len", 64, "--lr", 1e-3, "--out_dir", tmp_path]
    out = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "bench.py"), *map(str, argv)],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("BENCH_JSON "))[11:])
    trainer, identical, defaults = report["rows"]
    assert trainer["side"].startswith("HF Trainer") and identical["side"] == "ours: --padding max_len --no-group_by_length"
    assert report["work"]["n_train"] == 96 and report["work"]["n_test"] == 48
    for row in report["rows"]:
        assert len(row["samples_per_s_slices"]) == 3 and row["samples_per_s"] > 0 and 0 <= row["test_acc"] <= 1
    # pre-padded to max_len on both sides; our defaults pad far less on these short texts
    assert trainer["padding_share"] > 0.2 and abs(identical["padding_share"] - trainer["padding_share"]) < 0.02
    assert defaults["padding_share"] < identical["padding_share"] / 2
    assert identical["speedup"] == identical["samples_per_s"] / trainer["samples_per_s"]
    assert "| HF Trainer" in out.stdout and report["machine"]["matmul_peak_flops"] > 0
