"""GPU check for a lent machine: the figures that matter most first, each part printed, logged and
written as a JSON line the moment it ends, all within one time budget, and nothing left running.

    bash bench/gpu_check.sh        # on the GPU machine: no network, about 270 s (docs/speed.md: the estimate)
    python bench/gpu_check.py --shapes tiny --lengths 32 --steps 4 --test_timeout 0 --skip_compile  # CPU dry run

Parts, in order of value:
  prepare               the data and the random-init model folders (bert-base and ModernBERT-base from
                        their default configs, initialised on the GPU, with a locally trained WordPiece)
  bert-base L128        our loop against HF Trainer, bf16: samples/s, MFU, peak memory (the headline)
  modernbert-base L128  the same; then bert-base L512 and modernbert-base L512
  tests                 tests/test_gpu.py, each test's outcome (pytest -rA), in parallel (pytest-xdist)
  bert-base L128 --compile   ours only, a cold Inductor compile: last, in a call of its own
A part that would not fit in what is left of --budget (by its estimate) is skipped; one that runs
stops at its own limit or at the budget's end, whichever comes first.

Data: IMDb from --imdb when the folder exists, else generated reviews with IMDb's token-length
spread (median ~230, mean ~310 tokens). Both sides do identical work: every example padded to
max_len, no length grouping (what Trainer does with a pre-padded dataset), the same attention
kernel, TF32 off.

Each part runs under a guard process in a session of its own. When the part ends, runs out of time
or the check is stopped (SIGTERM, SIGINT, SIGHUP), every process under the guard is killed,
including those that started sessions of their own (torchrun starts its workers so): the guard is
their subreaper, so none escapes to init. If the check itself is killed (SIGKILL), Linux's
parent-death signal tells the guard to do the same.

Reports, in --report_dir (default: $OUT, else the work folder): gpu_check.log (everything printed),
gpu_check.jsonl (one line per part, written when it ends), bench_runs.jsonl (each bench run's own
results: our results.json, the Trainer worker's figures), gpu_tests.xml (pytest's per-test outcomes
and times).
"""

import argparse
import functools
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bench import IDENTICAL  # bench/ is this script's folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THIS = os.path.abspath(__file__)
SHAPES = {  # name -> transformers config class; "tiny" shapes take model._TINY's overrides
    "base": {"bert-base": "BertConfig", "modernbert-base": "ModernBertConfig"},
    "tiny": {"bert-tiny": "BertConfig", "modernbert-tiny": "ModernBertConfig"},
}
# Seconds each part takes on an H100 by docs/speed.md's estimate; other shapes and lengths: DEFAULT_ESTIMATE_S
ESTIMATE_S = {
    "prepare": 15,
    "bert-base L128": 29,
    "modernbert-base L128": 31,
    "bert-base L512": 32,
    "modernbert-base L512": 34,
    "tests": 45,
    "bert-base L128 --compile": 85,
}
DEFAULT_ESTIMATE_S = 30
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Stopped(Exception):
    """This process got one of STOP_SIGNALS."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def raise_stopped(signum, frame):
    raise Stopped(signum)


@dataclass
class Part:
    name: str
    argv: list[str] | Callable[[], list[str]]  # a callable: argv known only once the parts before have run
    limit_s: float  # its own limit; what is left of the budget may cut it shorter
    estimate_s: float
    kind: str = "command"  # command | bench | tests
    needs: list[str] = field(default_factory=list)  # paths that must exist, else it is skipped
    run_dir: str | None = None  # bench: its --out_dir, and what its rows are labelled with
    model: str | None = None
    max_len: int | None = None
    data: str | None = None


class Report:
    """What the check prints, also appended to gpu_check.log; one JSON line per part in gpu_check.jsonl."""

    def __init__(self, folder: str):
        os.makedirs(folder, exist_ok=True)
        self.folder = folder
        self.lock = threading.Lock()
        self.log = open(os.path.join(folder, "gpu_check.log"), "a", encoding="utf-8")

    def say(self, text: str) -> None:
        with self.lock:
            print(text, flush=True)
            self.log.write(text + "\n")
            self.log.flush()

    def append(self, file_name: str, record: dict) -> None:
        with self.lock, open(os.path.join(self.folder, file_name), "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


# ----------------------------------------------------------------------------- the plan


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="base", choices=SHAPES, help="model shapes (default: %(default)s)")
    p.add_argument(
        "--imdb",
        default=os.path.join(ROOT, "..", "shared", "data", "imdb"),
        help="IMDb folder, used when it exists (default: ../shared/data/imdb)",
    )
    p.add_argument("--lengths", type=int, nargs="+", default=[128, 512], help="max_len values (default: 128 512)")
    p.add_argument("--batch_size", type=int, default=32, help="(default: %(default)s)")
    p.add_argument("--steps", type=int, default=120, help="training steps per run (default: %(default)s)")
    p.add_argument("--precision", default=None, help="default: bf16 on GPU, fp32 on CPU")
    p.add_argument("--budget", type=float, default=300, help="seconds for the whole check (default: %(default)s)")
    p.add_argument(
        "--bench_timeout", type=float, default=90, help="seconds for each bench.py call (default: %(default)s)"
    )
    p.add_argument(
        "--test_timeout",
        type=float,
        default=120,
        help="seconds for the CUDA tests; 0 skips them (default: %(default)s)",
    )
    p.add_argument(
        "--compile_timeout", type=float, default=150, help="seconds for the --compile call (default: %(default)s)"
    )
    p.add_argument("--skip_compile", action="store_true", help="no --compile call")
    p.add_argument("--out_dir", default=None, help="work folder: data, models, runs (default: a temporary folder)")
    p.add_argument("--report_dir", default=None, help="where the reports go (default: $OUT when set, else --out_dir)")
    p.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)  # internal: the prepare part itself
    return p


def plan(args, out: str, report_dir: str) -> list[Part]:
    """The parts in order of value: prepare, each length's bench calls (bert first), the CUDA
    tests, the --compile call."""
    models = list(SHAPES[args.shapes])
    data_dir = data_folder(args, out)
    parts = [
        Part(
            "prepare",
            [
                sys.executable,
                THIS,
                "--prepare",
                *passed_on(args, ("shapes", "imdb", "steps", "batch_size", "out_dir"), out),
            ],
            limit_s=90,
            estimate_s=ESTIMATE_S["prepare"],
        )
    ]
    for max_len in args.lengths:
        parts += [bench_part(args, out, data_dir, name, max_len, [IDENTICAL], trainer=True) for name in models]
    if args.test_timeout > 0:
        parts.append(tests_part(args.test_timeout, report_dir))
    if not args.skip_compile:
        compiled = bench_part(args, out, data_dir, models[0], min(args.lengths), [IDENTICAL + " --compile"], False)
        parts.append(compiled)
    return parts


def passed_on(args, keys, out: str) -> list[str]:
    return [x for key in keys for x in (f"--{key}", str(out if key == "out_dir" else getattr(args, key)))]


def data_folder(args, out: str) -> str:
    return os.path.abspath(args.imdb) if os.path.isdir(args.imdb) else os.path.join(out, "data")


def prepared_file(out: str) -> str:
    """What the prepare part saw ({"gpu": bool}): the check itself never imports torch."""
    return os.path.join(out, "prepared.json")


def precision_of(args) -> str:
    """--precision, else bf16 where the prepare part saw a GPU and fp32 on a CPU dry run."""
    if args.precision:
        return args.precision
    with open(prepared_file(args.out_dir)) as f:
        return "bf16" if json.load(f)["gpu"] else "fp32"


def bench_part(args, out, data_dir, model, max_len, variants, trainer: bool) -> Part:
    """One bench.py call: HF Trainer (unless not asked) and our variants on the same work."""
    name = f"{model} L{max_len}" + ("" if trainer else " --compile")
    run_dir = os.path.join(out, name.replace(" --", "-").replace(" ", "-"))
    argv = functools.partial(bench_argv, args, os.path.join(out, model), data_dir, max_len, variants, trainer, run_dir)
    limit = args.bench_timeout if trainer else args.compile_timeout
    estimate = ESTIMATE_S.get(name, DEFAULT_ESTIMATE_S)
    needs = [os.path.join(out, model, "config.json"), data_dir, prepared_file(out)]
    data = "imdb" if os.path.isdir(args.imdb) else "imdb-like"
    return Part(name, argv, limit, estimate, "bench", needs, run_dir, model, max_len, data)


def bench_argv(args, model_dir, data_dir, max_len, variants, trainer: bool, run_dir) -> list[str]:
    train_samples = args.steps * args.batch_size
    return [
        sys.executable,
        os.path.join(ROOT, "bench", "bench.py"),
        *("--model", model_dir, "--data", data_dir),
        *("--train_samples", str(train_samples), "--eval_samples", str(min(512, train_samples))),
        *("--max_len", str(max_len), "--batch_size", str(args.batch_size), "--eval_batch_size", "128"),
        *("--precision", precision_of(args), "--bare_steps", "0", "--out_dir", run_dir),
        *([] if trainer else ["--no_trainer"]),
        *[f"--ours={v}" for v in variants],
    ]


def tests_part(limit: float, report_dir: str) -> Part:
    """tests/test_gpu.py with each test's outcome (-rA) and slowest times; in 4 processes when
    pytest-xdist is there (the tests are independent, tiny models: 4 share one GPU easily)."""
    import importlib.util

    parallel = ["-n", "4"] if importlib.util.find_spec("xdist") else []
    argv = [
        *(sys.executable, "-m", "pytest", "-q", "-rA", "--durations=0", "--durations-min=1", "-p", "no:cacheprovider"),
        *("-p", "no:benchmark"),  # pytest-benchmark, where installed, warns under xdist
        f"--junitxml={os.path.join(report_dir, 'gpu_tests.xml')}",
        *parallel,
        os.path.join(ROOT, "tests", "test_gpu.py"),
    ]
    return Part("tests", argv, limit, ESTIMATE_S["tests"], kind="tests")


# ----------------------------------------------------------------------------- running parts


def run_parts(parts: list[Part], budget_s: float, report: Report, summary: list[dict]) -> int:
    """Each part in turn within budget_s; its record (and a bench part's figures) reported as it
    ends. 0 when every part that ran is done (exit 0), 1 when one failed or timed out, 128 + N when signal
    N stopped the check (the running part killed first)."""
    deadline = time.monotonic() + budget_s
    handlers = {sig: signal.signal(sig, raise_stopped) for sig in STOP_SIGNALS}
    try:
        statuses = [run_planned(part, deadline, report, summary) for part in parts]
        return 0 if all(s == "done" or s.startswith("skipped") for s in statuses) else 1
    except Stopped as e:
        report.say(f"== stopped by {e}: the running part was killed; the finished parts are reported above")
        return 128 + e.signum
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def run_planned(part: Part, deadline: float, report: Report, summary: list[dict]) -> str:
    """Run the part, or skip it (its inputs missing, or too little budget left); its status."""
    left = deadline - time.monotonic()
    record = {"part": part.name, "estimate_s": part.estimate_s}
    skipped = why_skip(part, left)
    if skipped:
        record["status"] = f"skipped: {skipped}"
        report.say(f"== {part.name}: {record['status']}")
        report.append("gpu_check.jsonl", record)
        return record["status"]
    limit = min(part.limit_s, left)
    report.say(f"\n== {part.name}: started (limit {limit:.0f} s, estimate {part.estimate_s:.0f} s)")
    try:
        outcome = run_part(part.argv() if callable(part.argv) else part.argv, limit, report.say)
    except Stopped as e:
        record.update(status=f"stopped by {e}", limit_s=limit)
        report.append("gpu_check.jsonl", record)
        raise
    record.update(status=outcome["status"], seconds=round(outcome["seconds"], 1), limit_s=limit)
    if part.kind == "bench":
        record["rows"] = bench_rows(part, outcome["lines"], summary)
        gather_runs(part, report)
    elif part.kind == "tests":
        record.update(test_outcomes(outcome["lines"]))
    report.append("gpu_check.jsonl", record)
    report.say(f"== {part.name}: {outcome['status']} in {outcome['seconds']:.0f} s")
    if part.kind == "bench":
        print_summary(summary, report.say)
    return outcome["status"]


def why_skip(part: Part, left_s: float) -> str | None:
    missing = [path for path in part.needs if not os.path.exists(path)]
    if missing:
        return f"{', '.join(missing)} missing (see prepare)"
    if left_s < part.estimate_s:
        return f"{left_s:.0f} s of the budget left, it needs ~{part.estimate_s:.0f} s"
    return None


def run_part(argv: list[str], limit_s: float, say) -> dict:
    """argv under a guard in a session of its own, its output streamed to say(); every process
    under the guard killed when argv ends, runs past limit_s or this process is stopped.
    {status, code, seconds, lines}."""
    started = time.monotonic()
    guard = subprocess.Popen(
        [sys.executable, THIS, "--guard", str(os.getpid()), "--", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
        cwd=ROOT,
    )
    lines = []
    reader = threading.Thread(target=stream, args=(guard.stdout, lines, say), daemon=True)
    reader.start()
    code = None
    try:
        code = guard.wait(timeout=max(limit_s, 0))
    except subprocess.TimeoutExpired:
        pass
    finally:
        stop_guard(guard)
        reader.join(timeout=10)
    seconds = time.monotonic() - started
    status = f"timed out after {limit_s:.0f} s" if code is None else describe(code)
    return {"status": status, "code": code, "seconds": seconds, "lines": lines}


def stream(pipe, lines: list[str], say) -> None:
    for line in pipe:
        line = line.rstrip("\n")
        lines.append(line)
        if not line.startswith("BENCH_JSON "):  # its figures go to gpu_check.jsonl
            say(line)


def stop_guard(guard: subprocess.Popen) -> None:
    """SIGTERM: the guard kills everything under it and exits; then SIGKILL to its whole process
    group, for a guard that did not (or anything its group still holds). A second signal to the
    check waits until this is done."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        if guard.poll() is None:
            send(lambda: os.kill(guard.pid, signal.SIGTERM))
            try:
                guard.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        send(lambda: os.killpg(guard.pid, signal.SIGKILL))
        guard.wait()
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def send(kill) -> None:
    try:
        kill()
    except (ProcessLookupError, PermissionError):
        pass  # gone already


def describe(code: int) -> str:
    return "done" if code == 0 else f"failed (exit {code})"


# ----------------------------------------------------------------------------- the guard


def guard(parent_pid: int, argv: list[str]) -> int:
    """Run argv as this process's child; when it ends, or this process is stopped, or the check
    (parent_pid) dies, kill every process under this one. Returns argv's exit code."""
    become_subreaper_that_dies_with_parent()
    for sig in STOP_SIGNALS:
        signal.signal(sig, raise_stopped)
    code = 128 + signal.SIGTERM
    try:
        if os.getppid() == parent_pid:  # else the check died before the parent-death signal was armed
            code = subprocess.Popen(argv).wait()
            code = code if code >= 0 else 128 - code
    except Stopped as e:
        code = 128 + e.signum
    except OSError as e:  # the command cannot start
        print(f"error: {argv[0]}: {e.strerror}", flush=True)
        code = 127
    finally:
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)  # nothing interrupts the sweep
        kill_descendants()
    return code


def become_subreaper_that_dies_with_parent() -> None:
    """Linux: orphans below re-parent to this process rather than to init (so a process that
    started its own session is still found), and this process gets SIGTERM when its parent dies.
    Elsewhere nothing: the check's SIGKILL to the process group is the only sweep."""
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return
    pr_set_pdeathsig, pr_set_child_subreaper = 1, 36
    prctl(pr_set_child_subreaper, 1)
    prctl(pr_set_pdeathsig, signal.SIGTERM)


def kill_descendants() -> None:
    """SIGKILL every process below this one, until none is left, reaping them."""
    for _ in range(100):  # a process forking while we kill it may leave a new child: sweep again
        pids = descendants(os.getpid())
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        reap_children()
        if not pids:
            return
        time.sleep(0.05)


def descendants(pid: int) -> list[int]:
    """Live (not zombie) processes below pid, from /proc's parent links; [] without /proc."""
    children: dict[int, list[int]] = {}
    zombies = set()
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                state, ppid = f.read().rsplit(")", 1)[1].split()[:2]
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        children.setdefault(int(ppid), []).append(int(entry))
        if state == "Z":
            zombies.add(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return [p for p in found if p not in zombies]


def reap_children() -> None:
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return


# ----------------------------------------------------------------------------- what parts report


def bench_rows(part: Part, lines: list[str], summary: list[dict]) -> list[dict]:
    """The bench call's rows from its BENCH_JSON line, added to the check's summary; [] without one.
    A call without Trainer (--compile) is set against the Trainer row of an earlier call."""
    found = [line for line in lines if line.startswith("BENCH_JSON ")]
    if not found:
        return []
    rows = [
        {"model": part.model, "max_len": part.max_len, "data": part.data, **row}
        for row in json.loads(found[-1][len("BENCH_JSON ") :])["rows"]
    ]
    earlier = [r for r in summary if (r["model"], r["max_len"]) == (part.model, part.max_len)]
    trainer = next((r for r in earlier if r["side"].startswith("HF Trainer")), None)
    for row in rows:
        if trainer and not row["side"].startswith("HF Trainer") and "speedup" not in row:
            row["speedup_across_calls"] = row["samples_per_s"] / trainer["samples_per_s"]
    summary.extend(rows)
    return rows


def gather_runs(part: Part, report: Report) -> None:
    """Each run's own results in the part's folder (our results.json, the Trainer worker's JSON),
    one line each in bench_runs.jsonl: what a timed-out call finished is kept too."""
    if not part.run_dir or not os.path.isdir(part.run_dir):
        return
    for entry in sorted(os.listdir(part.run_dir)):
        path = os.path.join(part.run_dir, entry, "results.json")
        if not os.path.exists(path):
            path = os.path.join(part.run_dir, entry)
            if not (entry.startswith("trainer-") and entry.endswith(".json")):
                continue
        try:
            with open(path) as f:
                results = json.load(f)
        except (OSError, ValueError) as e:
            results = {"unreadable": str(e)}
        report.append("bench_runs.jsonl", {"part": part.name, "run": entry, "results": results})


def test_outcomes(lines: list[str]) -> dict:
    """pytest -rA's line for each test (PASSED / FAILED / ERROR / SKIPPED ...) and its closing count."""
    outcomes = [line for line in lines if re.match(r"(PASSED|FAILED|ERROR|XFAIL|XPASS|SKIPPED) ", line)]
    counts = [line.strip("= ") for line in lines if re.search(r"\d+ (passed|failed|skipped|error)", line)]
    return {"tests": outcomes, "pytest": counts[-1] if counts else None}


def print_summary(summary: list[dict], say) -> None:
    say(
        "\n| model | L | side | attention | samples/s | real tokens/s | MFU | vs Trainer | peak MiB "
        "(alloc / reserved) | compiled graphs / breaks | test acc |"
    )
    say("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in summary:
        r = {**r["per_seed"][0], **r}  # attention and compile figures are per run
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "n/a"
        ratio = f"{r['speedup']:.2f}x" if "speedup" in r else ""
        if "speedup_across_calls" in r:
            ratio = f"{r['speedup_across_calls']:.2f}x (Trainer's earlier call)"
        memory = (
            f"{r['peak_mem_allocated_mb']:.0f} / {r['peak_mem_reserved_mb']:.0f}"
            if "peak_mem_allocated_mb" in r
            else f"{r.get('peak_rss_mb', float('nan')):.0f} RSS"
        )
        compiled = f"{r['compiled_graphs']} / {r['graph_breaks']}" if "compiled_graphs" in r else ""
        say(
            f"| {r['model']} | {r['max_len']} | {r['side']} | {r.get('attention')} | {r['samples_per_s']:.1f} | "
            f"{r['tokens_per_s']:.0f} | {mfu} | {ratio} | {memory} | {compiled} | {r['test_acc']:.3f} |"
        )


# ----------------------------------------------------------------------------- the prepare part


def prepare(args) -> int:
    """The prepare part, in a process of its own (the check itself never imports torch): the
    device line, the data folder unless --imdb exists, and a model folder per shape, weights
    initialised on the GPU (ModernBERT's truncated-normal init takes tens of seconds on a CPU)."""
    import importlib.util
    import math

    import torch
    import transformers

    sys.path.insert(0, ROOT)
    import data
    import model as models

    transformers.utils.logging.disable_progress_bar()
    on_gpu = torch.cuda.is_available()
    have = {m: importlib.util.find_spec(m) is not None for m in ("flash_attn", "datasets", "wandb", "xdist")}
    print(
        f"device: {torch.cuda.get_device_name() if on_gpu else 'CPU (dry run)'}; torch {torch.__version__}; "
        f"transformers {transformers.__version__}; installed: {have}",
        flush=True,
    )
    with open(prepared_file(args.out_dir), "w") as f:
        json.dump({"gpu": on_gpu}, f)
    data_dir = data_folder(args, args.out_dir)
    if not os.path.isdir(args.imdb):  # enough for --steps of --batch_size after the 10% validation split
        write_imdb_like(data_dir, n_train=max(6000, math.ceil(args.steps * args.batch_size / 0.9) + 100))
    texts = data.load_splits(data_dir, ["text"], "label", 0.1, 2000, None)[0]["train"].texts
    overrides = models._TINY if args.shapes == "tiny" else {}
    written = [
        write_model(
            os.path.join(args.out_dir, name), config_name, overrides, texts, ["cuda", "cpu"] if on_gpu else ["cpu"]
        )
        for name, config_name in SHAPES[args.shapes].items()
    ]
    return 0 if all(written) else 1


def write_model(folder: str, config_name: str, overrides: dict, texts: list[str], devices: list[str]) -> bool:
    """model.write_model_folder with the weights initialised on the first device that works."""
    import torch

    import model as models

    for device in devices:
        started = time.time()
        try:
            with torch.device(device):
                models.write_model_folder(folder, config_name, overrides, texts)
            print(f"model folder {os.path.basename(folder)}: written in {time.time() - started:.1f} s", flush=True)
            return True
        except Exception as e:  # the other shape's parts can still run
            print(f"model folder {os.path.basename(folder)} on {device}: FAILED ({type(e).__name__}: {e})", flush=True)
    return False


def write_imdb_like(folder: str, n_train: int = 6000, n_test: int = 1000) -> str:
    """Generated reviews (the synthetic cue-word task) with IMDb's long-tailed length spread."""
    import csv
    import random

    import numpy as np

    import data

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


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--guard"]:
        return guard(int(argv[1]), argv[3:])  # --guard PARENT_PID -- COMMAND...
    args = build_parser().parse_args(argv)
    out = os.path.abspath(args.out_dir or tempfile.mkdtemp(prefix="gpu-check-"))
    args.out_dir = out
    os.makedirs(out, exist_ok=True)
    if args.prepare:
        return prepare(args)
    report_dir = os.path.abspath(args.report_dir or os.environ.get("OUT") or out)
    report = Report(report_dir)
    parts = plan(args, out, report_dir)
    total = sum(p.estimate_s for p in parts)
    report.say(
        f"gpu_check: {len(parts)} parts, estimated {total:.0f} s on an H100 within a budget of {args.budget:.0f} s: "
        + ", ".join(f"{p.name} ~{p.estimate_s:.0f} s" for p in parts)
        + f"; reports in {report_dir}"
    )
    summary: list[dict] = []
    code = run_parts(parts, args.budget, report, summary)
    report.say("GPU_CHECK_JSON " + json.dumps(summary))
    return code


if __name__ == "__main__":
    sys.exit(main())
