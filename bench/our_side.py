"""Our side of the benchmark: train.py runs (one per variant and seed, in their own processes) and
the loop paired with a bare step (bench/paired.py, in a bare-step worker)."""

import json
import os
import shlex
import sys
import time

from bench_tables import run_line
from both_sides import (
    MEMORY_KEYS,
    one_gpu_env,
    row_from_slices,
    run_offline,
    test_figures,
    trained_totals,
    val_figures,
    worker_cmd,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPILE_KEYS = ("compiled_graphs", "frames_not_compiled", "graph_breaks")  # model.compile_report's


def ours_argv(args, out_dir: str, name: str, flags: str, work: dict, seed: int) -> list[str]:
    task = (
        ["--task", "mlm", "--mlm_prob", str(args.mlm_prob), *(["--pack"] if args.pack else [])]
        if args.task == "mlm"
        else ["--label_col", args.label_col]
    )
    return [
        "--model",
        args.model,
        "--data",
        args.data,
        "--text_col",
        *args.text_col,
        *task,
        "--max_train_samples",
        str(args.train_samples),
        "--max_eval_samples",
        str(args.eval_samples),
        "--max_len",
        str(args.max_len),
        "--batch_size",
        str(args.batch_size),
        "--lr",
        str(args.lr),
        "--epochs",
        str(args.epochs),
        "--precision",
        args.precision,
        "--seed",
        str(seed),
        "--eval_batch_size",
        str(args.eval_batch_size),
        "--log_every",
        str(work["slice_steps"]),
        "--save_every",
        str(10**9),
        "--wandb",
        "disabled",
        "--out_dir",
        out_dir,
        "--run_name",
        name,
        "--fresh",
        *shlex.split(flags),
    ]


def run_ours(args, out_dir: str, index: int, flags: str, work: dict, flops: float, seed: int) -> dict:
    """One train.py run of a variant (its flags) with one seed, in its own process: its row."""
    name = f"ours{index}-s{seed}"
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), *ours_argv(args, out_dir, name, flags, work, seed)]
    print(f"\n[{name}] {' '.join(shlex.quote(c) for c in cmd)}", flush=True)
    started = time.time()
    run_offline(cmd, "our run")
    run_dir = os.path.join(out_dir, name)
    with open(os.path.join(run_dir, "results.json")) as f:
        results = json.load(f)
    with open(os.path.join(run_dir, "config.json")) as f:
        config = json.load(f)
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        events = [json.loads(line) for line in f]
    slices = logged_slices(events, work, args.batch_size)
    row = row_from_slices(slices, flops)
    if args.task == "mlm":  # the last epoch's validation: the model Trainer's side is scored with too
        val = [e for e in events if e["event"] == "eval" and e["split"] == "val"][-1]
        row.update(val_figures({"n": work["n_val"], **val}), **trained_totals(slices))
    else:
        test = {"n": work["n_test"], "acc": results["test_acc"], "loss": results["test_loss"]}
        row.update(test_figures(test, work["n_test"] / results["eval_samples_per_s"]))
    row.update(
        side=f"ours: {flags or 'defaults'}",
        seed=config["seed"],
        train_batch_size=config["effective_batch"],
        eval_batch_size=config["eval_batch_size"],
        attention=config.get("attention"),
        **{k: results[k] for k in (*MEMORY_KEYS, *COMPILE_KEYS) if k in results},
        wall_s=time.time() - started,
        run_dir=run_dir,
    )
    print(run_line(name, row), flush=True)
    return row


def logged_slices(events: list[dict], work: dict, batch_size: int) -> list[dict]:
    """The timed slices of a run from its metrics.jsonl: each logged train window holds its own
    wall-clock rates; turned back into examples, real tokens, positions and seconds."""
    windows = [e for e in events if e["event"] == "train"]
    per_epoch, slices = work["steps_per_epoch"], []
    for previous, e in zip([{"step": 0}] + windows, windows, strict=False):  # consecutive pairs
        first, last = (s - e["epoch"] * per_epoch for s in (previous["step"], e["step"]))
        samples = min(last * batch_size, work["n_train"]) - min(max(first, 0) * batch_size, work["n_train"])
        seconds = samples / e["samples_per_s"]
        tokens = e["tokens_per_s"] * seconds
        slices.append(
            {"samples": samples, "tokens": tokens, "positions": tokens / (1 - e["padding_share"]), "seconds": seconds}
        )
    return slices


def run_bare(args, out_dir: str, index: int, flags: str, work: dict, seed: int) -> dict:
    """Loop step against bare step, paired in one process (bench/paired.py), on the batches the
    variant's seed-`seed` run trains on, in a run folder of its own."""
    name = f"bare{index}-s{seed}"
    result_path = os.path.join(out_dir, f"{name}.json")
    # W&B off even if the variant's flags turn it on: this run stops mid-epoch, by design
    train_argv = ours_argv(args, out_dir, name, flags, work, seed) + ["--wandb", "disabled"]
    cmd = worker_cmd(args, "bare", result_path, seed, ("--worker_argv", json.dumps(train_argv)))
    print(
        f"\n[{name}] loop and bare step paired on {work['bare_steps']} of the first epoch's "
        f"{work['steps_per_epoch']} steps",
        flush=True,
    )
    started = time.time()
    run_offline(cmd, "the bare-step run", env=one_gpu_env())  # its eval rounds run Trainer too
    with open(result_path) as f:
        raw = json.load(f)
    raw["wall_s"] = time.time() - started
    return raw


def bare_worker(args) -> int:
    """In its own process: train.py's loop with a bare step on each picked step, then the eval
    rounds against Trainer's predict on the same model."""
    import paired

    raw, run = paired.measure(json.loads(args.worker_argv), args.bare_steps)
    raw["eval"] = paired.eval_rounds(
        run,
        args.trainer_padding == "max_length",
        os.path.join(os.path.dirname(args.worker), f"trainer-eval-s{args.seed}"),
    )
    with open(args.worker, "w") as f:
        json.dump(dict(raw, seed=args.seed), f)
    return 0


def bare_figures(raw: dict, machine: dict, chunks: int) -> dict:
    import paired

    figures = paired.figures(raw, chunks, machine["matmul_peak_flops"], machine.get("gpu_peak_flops"))
    return dict(figures, seed=raw["seed"], wall_s=raw["wall_s"])
