"""bench.py --task mlm runs both sides end to end on a tiny model (its numbers here mean nothing)."""

import json
import math
import os
import subprocess
import sys

import pytest
from helpers import ROOT

pytestmark = pytest.mark.slow  # trains and starts processes


def run_bench(*argv) -> tuple[dict, str]:
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "bench.py"), *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(next(line for line in out.stdout.splitlines() if line.startswith("BENCH_JSON "))[11:]), out.stdout


def packed_blocks(model_folder: str, data_folder: str) -> int:
    """How many blocks of 32 train.py --pack cuts the 96 training texts into."""
    from transformers import AutoTokenizer

    import data
    import mlm

    texts = data.load_texts(data_folder, ["text"], 0.1, 96, 32)["train"].texts
    return len(mlm.encode_packed(texts, AutoTokenizer.from_pretrained(model_folder), 32).ids)


@pytest.mark.parametrize("pack", [False, True])
def test_mlm_bench_runs_our_loop_and_trainer_with_the_mlm_collator_on_the_same_work(
    tiny_model_folder, syn_folder, tmp_path, pack
):
    # max_len 32 truncates the longer synthetic texts; --pack cuts the same texts into blocks of 32
    result, stdout = run_bench(
        "--task",
        "mlm",
        "--model",
        tiny_model_folder,
        "--data",
        syn_folder,
        "--train_samples",
        96,
        "--eval_samples",
        32,
        "--max_len",
        32,
        "--lr",
        1e-3,
        "--seed",
        3,
        "--out_dir",
        tmp_path,
        "--ours=--no-group_by_length",
        *(["--pack"] if pack else []),
    )
    work = result["work"]
    assert work["task"] == "mlm" and work["mlm_prob"] == 0.15 and work["pack"] is pack and work["bare_steps"] == 0
    assert work["n_texts"] == 96 and work["n_train"] == (packed_blocks(tiny_model_folder, syn_folder) if pack else 96)
    trainer, ours = result["rows"]
    assert trainer["side"].startswith("HF Trainer + DataCollatorForLanguageModeling (padding longest")
    assert ours["side"] == "ours: --no-group_by_length"
    for row in (trainer, ours):
        (run,) = row["per_seed"]
        assert run["seed"] == 3 and run["train_batch_size"] == 16 and run["n_val"] == work["n_val"] > 0
        assert len(run["samples_per_s_slices"]) == 3 and run["samples_per_s"] > 0 and run["tokens_per_s"] > 0
        assert run["peak_rss_mb"] > 0 and 0 < run["val_loss"] < 20 and 0 <= run["val_acc"] <= 1
        assert math.isclose(run["val_perplexity"], math.exp(run["val_loss"]))
        # the same work: every example once per epoch, the same real tokens (ours: rebuilt from its rates)
        assert run["trained_examples"] == work["n_train"]
        assert math.isclose(run["trained_tokens"], work["train_tokens_per_epoch"], rel_tol=1e-6)
    assert ours["speedup"] == ours["samples_per_s"] / trainer["samples_per_s"]
    assert ours["val_loss_diff"] == ours["val_loss"] - trainer["val_loss"]
    assert ours["memory_ratio"] == ours["peak_rss_mb"] / trainer["peak_rss_mb"]
    if pack:  # full blocks: no padding on either side
        assert trainer["padding_share"] == ours["padding_share"] == 0
    with open(os.path.join(ours["per_seed"][0]["run_dir"], "config.json")) as f:
        config = json.load(f)
    assert config["task"] == "mlm" and config["mlm_prob"] == 0.15 and config["pack"] is pack
    assert sum(line.startswith("| HF Trainer") for line in stdout.splitlines()) == 2
    assert "val perplexity" in stdout and "peak RSS MiB" in stdout


def test_mlm_bench_flags_are_checked(tiny_model_folder, syn_folder, tmp_path, capsys):
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import bench

    for argv, message in (
        (["--task", "mlm", "--mlm_prob", "1.5"], "error: --mlm_prob must be in (0, 1) (got 1.5)"),
        (["--pack"], "error: --mlm_prob and --pack apply to --task mlm only"),
    ):
        code = bench.main(["--model", tiny_model_folder, "--data", syn_folder, "--out_dir", str(tmp_path), *argv])
        assert code == 2 and capsys.readouterr().err.strip() == message and not os.listdir(tmp_path)


def test_memory_steps_prints_each_steps_memory_and_the_masked_tokens(tiny_model_folder, syn_folder, tmp_path):
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "memory_steps.py"), "--model", tiny_model_folder]
        + ["--data", syn_folder, "--task", "mlm", "--max_train_samples", "64", "--max_eval_samples", "16"]
        + ["--max_len", "32", "--batch_size", "16", "--epochs", "1", "--wandb", "disabled", "--out_dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    steps, (last,) = rows[:-1], rows[-1:]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]  # 64 examples, batch 16, 1 epoch
    for r in steps:
        assert r["heap_used_mb"] > 0 and r["heap_free_mb"] >= 0 and r["mmapped_mb"] >= 0
        assert 0 < r["rss_mb"] <= r["step_peak_mb"]  # the step's peak is at least where it ended
        assert 0 < r["masked"] < 16 * 32  # masked tokens of the step's batch, not its positions
    assert last["run_peak_mb"] >= max(r["step_peak_mb"] for r in steps)
