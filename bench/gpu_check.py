"""GPU check for a lent machine: the CUDA tests, then throughput and MFU against HF Trainer.

    bash bench/gpu_check.sh                     # on the GPU machine; no network, under 8 minutes
    python bench/gpu_check.py --shapes tiny     # the same steps on CPU with tiny shapes (a dry run)

bert-base and ModernBERT-base are built from their default configs (random init: throughput
does not depend on the weights) with a locally trained WordPiece tokenizer. Data: IMDb from
--imdb when the folder exists, else generated reviews with IMDb's token-length spread (median
~230, mean ~310 tokens), so padding and length grouping matter as they do on IMDb.
"""
import argparse
import csv
import json
import os
import random
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import data  # noqa: E402
import model as models  # noqa: E402

SHAPES = {  # name -> (config class name, config overrides)
    "base": {"bert-base": ("BertConfig", {}), "modernbert-base": ("ModernBertConfig", {})},
    "tiny": {"bert-tiny": ("BertConfig", models._TINY), "modernbert-tiny": ("ModernBertConfig", models._TINY)},
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="base", choices=SHAPES, help="model shapes (default: %(default)s)")
    p.add_argument("--imdb", default=os.path.join(ROOT, "..", "shared", "data", "imdb"),
                   help="IMDb folder, used when it exists (default: ../shared/data/imdb)")
    p.add_argument("--lengths", type=int, nargs="+", default=[128, 512], help="max_len values (default: 128 512)")
    p.add_argument("--batch_size", type=int, default=32, help="(default: %(default)s)")
    p.add_argument("--steps", type=int, default=60, help="training steps per run (default: %(default)s)")
    p.add_argument("--precision", default=None, help="default: bf16 on GPU, fp32 on CPU")
    p.add_argument("--skip_tests", action="store_true", help="only the throughput part")
    p.add_argument("--out_dir", default=None, help="(default: a temporary folder)")
    args = p.parse_args()
    import torch
    on_gpu = torch.cuda.is_available()
    precision = args.precision or ("bf16" if on_gpu else "fp32")
    out = args.out_dir or tempfile.mkdtemp(prefix="gpu-check-")
    print(f"device: {torch.cuda.get_device_name() if on_gpu else 'CPU (dry run)'}; torch {torch.__version__}; "
          f"flash-attn installed: {__import__('importlib').util.find_spec('flash_attn') is not None}", flush=True)

    if not args.skip_tests:
        tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", os.path.join(ROOT, "tests", "test_gpu.py")])
        print(f"GPU tests: exit {tests.returncode}", flush=True)

    imdb = os.path.isdir(args.imdb)
    data_dir = os.path.abspath(args.imdb) if imdb else write_imdb_like(os.path.join(out, "data"))
    texts = data.load_splits(data_dir, ["text"], "label", 0.1, 2000, None)[0]["train"].texts
    summary = []
    for name, (config_name, overrides) in SHAPES[args.shapes].items():
        folder = write_model_folder(os.path.join(out, name), config_name, overrides, texts)
        for max_len in args.lengths:
            flags = ["", "--compile"] if max_len == min(args.lengths) and name.startswith("bert") else [""]
            report = bench(folder, data_dir, max_len, args.batch_size, args.steps, precision, flags,
                           os.path.join(out, f"{name}-L{max_len}"))
            for row in report["rows"]:
                summary.append({"model": name, "max_len": max_len, "data": "imdb" if imdb else "imdb-like", **row})
    print("\n| model | L | side | samples/s | real tokens/s | padding | MFU | vs Trainer | test acc |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in summary:
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "n/a"
        ratio = f"{r['speedup']:.2f}x" if "speedup" in r else ""
        print(f"| {r['model']} | {r['max_len']} | {r['side']} | {r['samples_per_s']:.1f} | {r['tokens_per_s']:.0f} | "
              f"{100 * r['padding_share']:.0f}% | {mfu} | {ratio} | {r['test_acc']:.3f} |")
    print("GPU_CHECK_JSON " + json.dumps(summary))
    return 0


def bench(folder, data_dir, max_len, batch_size, steps, precision, flags, out_dir) -> dict:
    train_samples = steps * batch_size
    argv = [sys.executable, os.path.join(ROOT, "bench", "bench.py"), "--model", folder, "--data", data_dir,
            "--train_samples", str(train_samples), "--eval_samples", str(min(1000, train_samples)),
            "--max_len", str(max_len), "--batch_size", str(batch_size), "--eval_batch_size", "128",
            "--precision", precision, "--bare_steps", "20", "--out_dir", out_dir]
    for f in flags:
        argv.append(f"--ours={f}")
    done = subprocess.run(argv, capture_output=True, text=True)
    print(done.stdout[done.stdout.find("\n| side"):].split("BENCH_JSON")[0].rstrip(), flush=True)
    if done.returncode != 0:
        sys.exit(f"bench failed: {done.stderr[-3000:]}")
    return json.loads(next(line for line in done.stdout.splitlines() if line.startswith("BENCH_JSON "))[11:])


def write_model_folder(folder: str, config_name: str, overrides: dict, texts: list[str]) -> str:
    """Random-init encoder of the given shape + a WordPiece tokenizer, saved like a hub checkpoint."""
    import transformers
    from transformers import AutoModel
    tokenizer = models.load_tokenizer(models.MODELS["tiny-bert"], texts, os.path.join(folder, "cache"))
    ids = {"pad_token_id": tokenizer.pad_token_id, "cls_token_id": tokenizer.cls_token_id,
           "sep_token_id": tokenizer.sep_token_id, "bos_token_id": tokenizer.cls_token_id,
           "eos_token_id": tokenizer.sep_token_id}
    config = getattr(transformers, config_name)(**{**overrides, **ids})
    AutoModel.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


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
