"""What both sides of the benchmark share: the examples as both encode them, a side started in
its own process (bench.py in worker mode), and a run's figures from its timed slices."""

import math
import os
import subprocess
import sys

import numpy as np

BENCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench.py")
MEMORY_KEYS = ("peak_rss_mb", "peak_mem_allocated_mb", "peak_mem_reserved_mb")  # utils.peak_memory's


def example_ids(args, split, tokenizer) -> list:
    """Each example's token ids as both sides train on them: the text (or pair) truncated to
    max_len with its special tokens, or (mlm --pack) the split's blocks of max_len (mlm.pack)."""
    if args.task == "mlm" and args.pack:
        import mlm

        return mlm.encode_packed(split.texts, tokenizer, args.max_len).ids
    # run_glue's / run_mlm's encoding: tokenizer(sentence1, sentence2) for a pair
    return tokenizer(*split.encoder_inputs(pairs=args.task != "mlm"), truncation=True, max_length=args.max_len)[
        "input_ids"
    ]


def row_from_slices(slices: list[dict], flops_per_sample: float) -> dict:
    """A run's training figures from timed slices [{samples, tokens, positions, seconds}] of the epoch(s)."""
    rates = [s["samples"] / s["seconds"] for s in slices]
    total = {k: sum(s[k] for s in slices) for k in ("samples", "tokens", "positions", "seconds")}
    return {
        "samples_per_s": float(np.median(rates)),
        "samples_per_s_slices": rates,
        "tokens_per_s": float(np.median([s["tokens"] / s["seconds"] for s in slices])),
        "epoch_samples_per_s": total["samples"] / total["seconds"],
        "padding_share": 1 - total["tokens"] / total["positions"],
        "tflops_per_s": float(np.median(rates)) * flops_per_sample / 1e12,
    }


def test_figures(test: dict, eval_seconds: float) -> dict:
    return {"eval_samples_per_s": test["n"] / eval_seconds, "test_acc": test["acc"], "test_loss": test["loss"]}


def trained_totals(slices: list[dict]) -> dict:
    """Examples and real tokens trained on in all (mlm: both sides must have done the same work)."""
    return {"trained_examples": sum(s["samples"] for s in slices), "trained_tokens": sum(s["tokens"] for s in slices)}


def val_figures(val: dict) -> dict:
    """A masked-LM run's validation on the fixed masks: loss and accuracy per masked token."""
    return {"val_loss": val["loss"], "val_acc": val["acc"], "val_perplexity": math.exp(val["loss"]), "n_val": val["n"]}


def one_gpu_env() -> dict:
    """One GPU, as train.py uses: with more visible, Trainer would wrap the model in DataParallel
    and multiply both batch sizes by the GPU count."""
    return {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]}


def run_offline(cmd: list[str], what: str, env: dict | None = None) -> None:
    """One side in its own process, never touching the hub; its stderr tail if it fails."""
    done = subprocess.run(cmd, env=dict(os.environ, HF_HUB_OFFLINE="1", **(env or {})), capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"error: {what} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")


def worker_cmd(args, kind: str, result_path: str, seed: int, extra: tuple = ()) -> list[str]:
    """bench.py in worker mode: one side, in its own process, with this invocation's settings."""
    keep = (
        "model",
        "data",
        "label_col",
        "train_samples",
        "eval_samples",
        "max_len",
        "batch_size",
        "eval_batch_size",
        "lr",
        "epochs",
        "precision",
        "chunks",
        "bare_steps",
        "trainer_padding",
        "task",
        "mlm_prob",
    )
    return [
        sys.executable,
        BENCH,
        "--worker",
        result_path,
        "--worker_kind",
        kind,
        "--seed",
        str(seed),
        *[x for key in keep if getattr(args, key) is not None for x in (f"--{key}", str(getattr(args, key)))],
        *(["--pack"] if args.pack else []),
        "--text_col",
        *args.text_col,
        *extra,
    ]
