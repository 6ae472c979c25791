"""GPU check for a lent machine: the CUDA tests, then throughput and MFU against HF Trainer.

    bash bench/gpu_check.sh                     # on the GPU machine; no network, under 6 minutes
    python bench/gpu_check.py --shapes tiny --lengths 32 --steps 4 --test_timeout 0 --skip_compile  # CPU dry run

bert-base and ModernBERT-base are built from their default configs (random init: throughput
does not depend on the weights) with a locally trained WordPiece tokenizer. Data: IMDb from
--imdb when the folder exists, else generated reviews with IMDb's token-length spread (median
~230, mean ~310 tokens). Both sides do identical work: every example padded to max_len, no length
grouping (what Trainer does with a pre-padded dataset), the same attention kernel, TF32 off.
Every part prints as it finishes and has its own time limit, so a timeout keeps what came before.
"""

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import data  # noqa: E402
import model as models  # noqa: E402
from bench import IDENTICAL  # noqa: E402  (bench/ is this script's folder)

SHAPES = {  # name -> (config class name, config overrides)
    "base": {"bert-base": ("BertConfig", {}), "modernbert-base": ("ModernBertConfig", {})},
    "tiny": {"bert-tiny": ("BertConfig", models._TINY), "modernbert-tiny": ("ModernBertConfig", models._TINY)},
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="base", choices=SHAPES, help="model shapes (default: %(default)s)")
    p.add_argument(
        "--imdb",
        default=os.path.join(ROOT, "..", "shared", "data", "imdb"),
        help="IMDb folder, used when it exists (default: ../shared/data/imdb)",
    )
    p.add_argument("--lengths", type=int, nargs="+", default=[128, 512], help="max_len values (default: 128 512)")
    p.add_argument("--batch_size", type=int, default=32, help="(default: %(default)s)")
    p.add_argument("--steps", type=int, default=40, help="training steps per run (default: %(default)s)")
    p.add_argument("--precision", default=None, help="default: bf16 on GPU, fp32 on CPU")
    p.add_argument(
        "--test_timeout", type=int, default=150, help="seconds for the CUDA tests; 0 skips them (default: %(default)s)"
    )
    p.add_argument(
        "--bench_timeout", type=int, default=100, help="seconds for each bench.py call (default: %(default)s)"
    )
    p.add_argument(
        "--skip_compile", action="store_true", help="no --compile variant (it is bert at the shortest length otherwise)"
    )
    p.add_argument("--out_dir", default=None, help="(default: a temporary folder)")
    args = p.parse_args()
    import importlib.util

    import torch
    import transformers

    on_gpu = torch.cuda.is_available()
    precision = args.precision or ("bf16" if on_gpu else "fp32")
    out = args.out_dir or tempfile.mkdtemp(prefix="gpu-check-")
    have = {m: importlib.util.find_spec(m) is not None for m in ("flash_attn", "datasets")}
    print(
        f"device: {torch.cuda.get_device_name() if on_gpu else 'CPU (dry run)'}; torch {torch.__version__}; "
        f"transformers {transformers.__version__}; installed: {have}",
        flush=True,
    )

    if args.test_timeout > 0:
        started = time.time()
        code = run_part(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-rs",
                "-p",
                "no:cacheprovider",
                os.path.join(ROOT, "tests", "test_gpu.py"),
            ],
            args.test_timeout,
        )
        print(f"== CUDA tests: {describe(code)} in {time.time() - started:.0f} s", flush=True)

    imdb = os.path.isdir(args.imdb)
    data_dir = os.path.abspath(args.imdb) if imdb else write_imdb_like(os.path.join(out, "data"))
    texts = data.load_splits(data_dir, ["text"], "label", 0.1, 2000, None)[0]["train"].texts
    summary = []
    for name, (config_name, overrides) in SHAPES[args.shapes].items():
        folder = models.write_model_folder(os.path.join(out, name), config_name, overrides, texts)
        for max_len in args.lengths:
            variants = [IDENTICAL]
            if max_len == min(args.lengths) and name.startswith("bert") and not args.skip_compile:
                variants.append(IDENTICAL + " --compile")
            started = time.time()
            report = bench(
                folder,
                data_dir,
                max_len,
                args.batch_size,
                args.steps,
                precision,
                variants,
                os.path.join(out, f"{name}-L{max_len}"),
                args.bench_timeout,
            )
            print(
                f"== {name} L{max_len}: {'done' if report else 'FAILED'} in {time.time() - started:.0f} s", flush=True
            )
            for row in (report or {}).get("rows", []):
                summary.append({"model": name, "max_len": max_len, "data": "imdb" if imdb else "imdb-like", **row})
            print_summary(summary)
    print("GPU_CHECK_JSON " + json.dumps(summary), flush=True)
    return 0


def run_part(argv: list[str], timeout: int) -> int | None:
    """argv with its output streamed to ours; its exit code, or None when it ran out of time."""
    try:
        return subprocess.run(argv, timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        return None


def describe(code: int | None) -> str:
    return "TIMED OUT" if code is None else ("passed" if code == 0 else f"FAILED (exit {code})")


def bench(folder, data_dir, max_len, batch_size, steps, precision, variants, out_dir, timeout) -> dict | None:
    """One bench.py call: HF Trainer and our variants on the same work; its BENCH_JSON, or None."""
    train_samples = steps * batch_size
    argv = [
        sys.executable,
        os.path.join(ROOT, "bench", "bench.py"),
        "--model",
        folder,
        "--data",
        data_dir,
        "--train_samples",
        str(train_samples),
        "--eval_samples",
        str(min(512, train_samples)),
        "--max_len",
        str(max_len),
        "--batch_size",
        str(batch_size),
        "--eval_batch_size",
        "128",
        "--precision",
        precision,
        "--bare_steps",
        "0",
        "--out_dir",
        out_dir,
        *[f"--ours={v}" for v in variants],
    ]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"bench timed out after {timeout} s: {' '.join(argv)}", flush=True)
        return None
    if done.returncode != 0:
        print(f"bench failed (exit {done.returncode}): {done.stderr[-3000:]}", flush=True)
        return None
    print(done.stdout[done.stdout.find("\n| side") :].split("BENCH_JSON")[0].rstrip(), flush=True)
    return json.loads(next(line for line in done.stdout.splitlines() if line.startswith("BENCH_JSON "))[11:])


def print_summary(summary: list[dict]) -> None:
    print(
        "\n| model | L | side | attention | samples/s | real tokens/s | MFU | vs Trainer | peak MiB "
        "(alloc / reserved) | compiled graphs / breaks | test acc |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in summary:
        r = {**r["per_seed"][0], **r}  # attention and compile figures are per run
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "n/a"
        ratio = f"{r['speedup']:.2f}x" if "speedup" in r else ""
        memory = (
            f"{r['peak_mem_allocated_mb']:.0f} / {r['peak_mem_reserved_mb']:.0f}"
            if "peak_mem_allocated_mb" in r
            else f"{r.get('peak_rss_mb', float('nan')):.0f} RSS"
        )
        compiled = f"{r['compiled_graphs']} / {r['graph_breaks']}" if "compiled_graphs" in r else ""
        print(
            f"| {r['model']} | {r['max_len']} | {r['side']} | {r.get('attention')} | {r['samples_per_s']:.1f} | "
            f"{r['tokens_per_s']:.0f} | {mfu} | {ratio} | {memory} | {compiled} | {r['test_acc']:.3f} |",
            flush=True,
        )


def write_imdb_like(folder: str, n_train: int = 6000, n_test: int = 1000) -> str:
    """Generated reviews (the synthetic cue-word task) with IMDb's long-tailed length spread."""
    rng = random.Random(0)
    lengths = np.random.default_rng(0).lognormal(np.log(225), 0.75, n_train + n_test).clip(10, 2400).astype(int)
    rows = []
    for i, n in enumerate(lengths):
        label = i % 2
        words = rng.choices(data.FILLER, k=int(n))
        for _ in range(rng.randint(2, 4)):
            words.insert(rng.randrange(len(words) + 1), rng.choice(data.POSITIVE if label else data.NEGATIVE))
        rows.append((" ".join(words), label))
    os.makedirs(folder, exist_ok=True)
    for split, part in (("train", rows[:n_train]), ("test", rows[n_train:])):
        with open(os.path.join(folder, f"{split}.csv"), "w", newline="") as f:
            csv.writer(f).writerows([("text", "label"), *part])
    return folder


if __name__ == "__main__":
    sys.exit(main())
