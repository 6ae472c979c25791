"""bench/gpu_check.py, the check a lent GPU runs first: its parts in order of value within one
budget, each reported the moment it ends, no process left running when a part ends, runs out of
time or the check is stopped or killed, and (slow) its dry run on the CPU under the lent image's
constraints, with the report files that come back from it."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import types

import pytest
from helpers import ROOT

sys.path.insert(0, os.path.join(ROOT, "bench"))
import gpu_check  # noqa: E402


def spawns(test):
    """A test that starts process groups (the slow marker's rule) and reads /proc to see which live."""
    return pytest.mark.slow(pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc")(test))


# A part that starts two processes, one in its group and one in a session of its own (as torchrun
# starts its workers), writes their pids and its own, then waits (argv[2] == "wait") or exits.
SPAWNER = """
import os, subprocess, sys, time
grand = [subprocess.Popen(["sleep", "600"]), subprocess.Popen(["sleep", "600"], start_new_session=True)]
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(" ".join(str(p) for p in [os.getpid()] + [g.pid for g in grand]))
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
print("spawned", flush=True)
if sys.argv[2] == "wait":
    time.sleep(600)
"""


def spawner(pid_file, then: str) -> list[str]:
    return [sys.executable, "-c", SPAWNER, str(pid_file), then]


def alive(pid: int) -> bool:
    """Running: a zombie (killed, not yet reaped by an init that may never reap it) counts as gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def wait_for(condition, what: str, within_s: float = 60) -> None:
    """Poll until condition() holds; the bound only stops a broken test from hanging."""
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def read_pids(pid_file) -> list[int]:
    return [int(x) for x in pid_file.read_text().split()]


def test_the_plan_puts_the_headline_first_the_compile_call_last_and_fits_the_budget(tmp_path):
    args = gpu_check.build_parser().parse_args(["--out_dir", str(tmp_path), "--imdb", str(tmp_path / "none")])
    args.out_dir = str(tmp_path)
    parts = gpu_check.plan(args, str(tmp_path), str(tmp_path / "report"))
    assert [p.name for p in parts] == [
        "prepare",
        "bert-base L128",
        "modernbert-base L128",
        "bert-base L512",
        "modernbert-base L512",
        "tests",
        "bert-base L128 --compile",
    ]
    assert sum(p.estimate_s for p in parts) <= args.budget == 300
    (tmp_path / "prepared.json").write_text('{"gpu": true}')
    headline, compiled = (p.argv() for p in (parts[1], parts[-1]))
    assert not any("--compile" in a for a in headline) and "--no_trainer" not in headline
    assert "--no_trainer" in compiled and f"--ours={gpu_check.IDENTICAL} --compile" in compiled
    assert headline[headline.index("--precision") + 1] == "bf16"
    tests = parts[5].argv
    assert "-rA" in tests and any(a.startswith("--junitxml=") and a.endswith("gpu_tests.xml") for a in tests)


@spawns
def test_a_part_past_its_limit_is_killed_with_every_process_it_started(tmp_path):
    said = []
    outcome = gpu_check.run_part(spawner(tmp_path / "pids", "wait"), 5, said.append)  # it spawns in well under 1 s
    assert outcome["status"] == "timed out after 5 s" and "spawned" in said
    pids = read_pids(tmp_path / "pids")
    assert not [p for p in pids if alive(p)]


@spawns
def test_a_part_that_ends_leaving_processes_behind_leaves_none(tmp_path):
    outcome = gpu_check.run_part(spawner(tmp_path / "pids", "exit"), 600, lambda line: None)
    assert outcome["status"] == "done"
    assert not [p for p in read_pids(tmp_path / "pids") if alive(p)]


@spawns
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_stopped_or_killed_check_kills_its_running_part_and_keeps_the_finished_ones(tmp_path, sig):
    """SIGTERM (as `timeout` sends): the check kills the running part and says so. SIGKILL: the
    part's guard gets the parent-death signal and kills it. Either way the first part's record
    and output are in the report files already."""
    report, pid_file = tmp_path / "report", tmp_path / "pids"
    code = (
        f"import sys; sys.path.insert(0, {os.path.join(ROOT, 'bench')!r}); import gpu_check as g\n"
        f"parts = [g.Part('first', [sys.executable, '-c', 'print(\"first part done\")'], 60, 0),\n"
        f"         g.Part('second', {spawner(pid_file, 'wait')!r}, 600, 0)]\n"
        f"sys.exit(g.run_parts(parts, 600, g.Report({str(report)!r}), []))\n"
    )
    check = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL)
    try:
        wait_for(pid_file.exists, "the second part never started")
        check.send_signal(sig)
        assert check.wait(timeout=60) == (128 + sig if sig == signal.SIGTERM else -sig)
    finally:
        check.kill()
    pids = read_pids(pid_file)
    wait_for(lambda: not [p for p in pids if alive(p)], f"still running: {[p for p in pids if alive(p)]}")
    records = [json.loads(line) for line in (report / "gpu_check.jsonl").read_text().splitlines()]
    assert records[0]["part"] == "first" and records[0]["status"] == "done"
    assert "first part done" in (report / "gpu_check.log").read_text()
    if sig == signal.SIGTERM:
        assert (records[1]["part"], records[1]["status"]) == ("second", "stopped by SIGTERM")


@pytest.mark.slow  # spawns a process group
def test_a_part_that_does_not_fit_in_what_is_left_of_the_budget_is_skipped_not_started(tmp_path):
    marker = tmp_path / "ran"
    parts = [
        gpu_check.Part("quick", [sys.executable, "-c", "print('ok')"], 60, estimate_s=0),
        gpu_check.Part("big", [sys.executable, "-c", f"open({str(marker)!r}, 'w')"], 60, estimate_s=10**6),
    ]
    report = gpu_check.Report(str(tmp_path / "report"))
    assert gpu_check.run_parts(parts, 300, report, []) == 0
    records = [json.loads(line) for line in (tmp_path / "report" / "gpu_check.jsonl").read_text().splitlines()]
    assert [r["part"] for r in records] == ["quick", "big"] and records[0]["status"] == "done"
    assert records[1]["status"].startswith("skipped:") and "budget" in records[1]["status"]
    assert not marker.exists()


def test_a_bench_call_without_trainer_is_set_against_the_trainer_of_an_earlier_call():
    trainer = {"model": "bert-base", "max_len": 128, "side": "HF Trainer (padding max_length)", "samples_per_s": 100.0}
    part = types.SimpleNamespace(model="bert-base", max_len=128, data="imdb-like")
    bench = {"rows": [{"side": "ours: --compile", "samples_per_s": 150.0}]}
    rows = gpu_check.bench_rows(part, ["other output", "BENCH_JSON " + json.dumps(bench)], summary := [trainer])
    assert rows[0]["speedup_across_calls"] == pytest.approx(1.5) and summary[-1] is rows[0]
    assert gpu_check.bench_rows(part, ["no figures: the call failed"], summary) == []


@pytest.mark.slow
def test_the_dry_run_without_datasets_or_wandb_reports_every_part_in_files_that_come_back(tmp_path):
    """The lent image has neither `datasets` nor `wandb`: hidden here the way Python hides a
    module. What comes back from a lent machine is at most 8 files, 2 folders down."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['datasets'] = sys.modules['wandb'] = None\n")
    out = tmp_path / "OUT"
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "gpu_check.py"), "--shapes", "tiny", "--lengths", "32"]
        + ["--steps", "4", "--skip_compile", "--imdb", str(tmp_path / "none"), "--out_dir", str(tmp_path / "work")],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(hide), HF_HUB_OFFLINE="1", OUT=str(out)),
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    files = sorted(os.listdir(out))
    assert files == ["bench_runs.jsonl", "gpu_check.jsonl", "gpu_check.log", "gpu_tests.xml"]
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", f) and (out / f).stat().st_size < 16 * 2**20 for f in files)
    records = {r["part"]: r for r in map(json.loads, (out / "gpu_check.jsonl").read_text().splitlines())}
    assert list(records) == ["prepare", "bert-tiny L32", "modernbert-tiny L32", "tests"]
    assert all(r["status"] == "done" for r in records.values()), records
    for name in ("bert-tiny L32", "modernbert-tiny L32"):
        sides = [row["side"] for row in records[name]["rows"]]
        assert sides[0].startswith("HF Trainer") and sides[1] == f"ours: {gpu_check.IDENTICAL}"
    assert records["tests"]["tests"] and records["tests"]["pytest"]  # each test's line (skipped on a CPU)
    runs = [(r["part"], r["run"]) for r in map(json.loads, (out / "bench_runs.jsonl").read_text().splitlines())]
    assert runs == [
        (p, run) for p in ("bert-tiny L32", "modernbert-tiny L32") for run in ("ours0-s42", "trainer-s42.json")
    ]
    log = (out / "gpu_check.log").read_text()
    assert "'datasets': False" in log and "'wandb': False" in log and "| bert-tiny | 32 | HF Trainer" in log
