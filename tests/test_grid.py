"""run_grid.sh and tmux_launch.sh, driven from pytest (CPU, offline)."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
from helpers import ROOT, run_grid, write_grid

import config
import grid

SMALL = "--model tiny-bert --data synthetic --max_train_samples 96 --max_eval_samples 32 --epochs 1 --wandb disabled"


def test_brace_expansion_multiplies_and_keeps_quotes():
    assert grid.expand_line("--pool {cls,mean} --dropout {0.1,0.3}  # four") == [
        ["--pool", "cls", "--dropout", "0.1"],
        ["--pool", "cls", "--dropout", "0.3"],
        ["--pool", "mean", "--dropout", "0.1"],
        ["--pool", "mean", "--dropout", "0.3"],
    ]
    assert grid.expand_line("--text_col 'a b' --run_name x{1,2}y") == [
        ["--text_col", "a b", "--run_name", "x1y"],
        ["--text_col", "a b", "--run_name", "x2y"],
    ]
    assert grid.expand_line("   # only a comment") == []
    assert grid.expand_line("--data $(rm -rf ~)") == [["--data", "$(rm", "-rf", "~)"]]  # never evaluated


def test_shipped_grids_expand_to_the_experiment():
    exp1 = grid.resolve(os.path.join(ROOT, "grids", "exp1.grid"))
    names = [name for _, name, _ in exp1]
    assert len(names) == len(set(names)) == 10
    assert "bert-cls-bs32-wd0.01-clip1-s42" in names and "modernbert-cls-L256-s42" in names
    assert len(grid.resolve(os.path.join(ROOT, "grids", "demo.grid"))) == 4
    glue_runs = grid.resolve(os.path.join(ROOT, "grids", "glue.grid"))
    assert len({name for _, name, _ in glue_runs}) == 54
    stsb = next(argv for _, name, argv in glue_runs if "stsb" in name)
    args = config.parse_args(stsb)
    assert (args.task, args.metric_for_best, args.data) == ("regression", "pearson", "glue/stsb")


@pytest.mark.slow
def test_dry_run_prints_only_the_commands(tmp_path):
    g = write_grid(tmp_path / "g.grid", f"{SMALL} --pool {{cls,mean}}")
    out = run_grid(g, "--dry-run", "--nproc", 2, "--out_dir", tmp_path / "runs")
    assert out.returncode == 0
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2 and all("--nproc_per_node=2 train.py --model tiny-bert" in line for line in lines)
    assert "--pool cls" in lines[0] and "--pool mean" in lines[1]
    queued = run_grid(
        g, "--dry-run", "--gpus", "0,1,2,3", "--nproc", 2, "--out_dir", tmp_path / "runs", "--", "--epochs", 2
    )
    assert "--rdzv-endpoint=localhost:" in queued.stdout and queued.stdout.count("--epochs 2") == 2
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_bad_line_is_reported_with_its_number_before_anything_runs(tmp_path):
    g = write_grid(tmp_path / "bad.grid", SMALL, f"{SMALL} --pool max")
    out = run_grid(g, "--out_dir", tmp_path / "runs")
    assert out.returncode == 2
    assert out.stderr.strip() == f"error: {g}:3: argument --pool: invalid choice: 'max' (choose from 'cls', 'mean')"
    missing = run_grid(tmp_path / "nope.grid")
    assert missing.returncode == 2 and missing.stderr.strip() == f"error: grid file {tmp_path / 'nope.grid'} not found"


@pytest.mark.slow
def test_a_failing_smoke_run_stops_the_grid_and_names_the_line(tmp_path):
    g = write_grid(tmp_path / "broken.grid", f"{SMALL} --data {tmp_path / 'missing'}", SMALL)
    out = run_grid(g, "--out_dir", tmp_path / "runs")
    assert out.returncode == 1
    assert f"smoke FAILED: {g} line 2" in out.stderr
    assert "no such file or folder" in out.stderr and "stopping before the real runs" in out.stderr
    assert "real runs" not in out.stdout
    assert not list((tmp_path / "runs" / "broken").glob("*/results.json"))


@pytest.mark.slow
def test_a_failed_run_shows_every_error_line_it_printed(tmp_path):
    """train.py reports an unavailable model and missing data together: the console shows both."""
    g = write_grid(tmp_path / "both.grid", f"{SMALL} --model nosuch/model --data {tmp_path / 'missing'}")
    out = run_grid(g, "--out_dir", tmp_path / "runs")  # conftest sets HF_HUB_OFFLINE=1
    assert out.returncode == 1
    assert "cannot load model 'nosuch/model'" in out.stderr and "no such file or folder" in out.stderr


@pytest.mark.slow
def test_demo_grid_runs_end_to_end_then_skips_and_resumes(tmp_path, cache_dir):
    out_dir = tmp_path / "runs"
    shrink = ["--", "--max_train_samples", 200, "--max_eval_samples", 100]  # the demo's path, smaller
    first = run_grid("grids/demo.grid", "--out_dir", out_dir, *shrink)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert first.stdout.index("smoke phase") < first.stdout.index("real runs")
    runs = sorted(p.parent.name for p in (out_dir / "demo").glob("*/results.json"))
    assert runs == [
        "tiny-bert-cls-ep2-ntr200-nev100-synthetic-s42",
        "tiny-bert-mean-ep2-ntr200-nev100-synthetic-s42",
        "tiny-modernbert-cls-ep2-ntr200-nev100-synthetic-s42",
        "tiny-modernbert-mean-ep2-ntr200-nev100-synthetic-s42",
    ]
    assert "| tiny-bert | cls |" in first.stdout and (out_dir / "demo" / "results.md").exists()
    assert "4 done, 0 skipped, 0 failed" in first.stdout

    # a rerun smokes nothing that finished
    again = run_grid("grids/demo.grid", "--out_dir", out_dir, *shrink)
    assert again.returncode == 0 and "0 done, 4 skipped, 0 failed" in again.stdout
    assert again.stdout.count("(finished)") == 8 and "smoke ok" not in again.stdout

    # a run killed mid-grid: its folder has checkpoints but no results.json -> rerun resumes it
    victim = out_dir / "demo" / "tiny-bert-mean-ep2-ntr200-nev100-synthetic-s42"
    (victim / "results.json").unlink()
    shutil.rmtree(victim / "ckpt")
    for p in victim.glob("best_step*.pt"):
        p.unlink()
    subprocess.run(
        [
            "python",
            "tests/faults.py",
            "--model",
            "tiny-bert",
            "--pool",
            "mean",
            "--data",
            "synthetic",
            "--epochs",
            "2",
            *map(str, shrink[1:]),
            "--out_dir",
            out_dir / "demo",
            "--wandb",
            "disabled",
            "--save_every",
            "5",
        ],
        cwd=ROOT,
        env=dict(os.environ, FTKIT_KILL_AT="step:18"),
        capture_output=True,
    )
    resumed = run_grid("grids/demo.grid", "--out_dir", out_dir, *shrink)
    assert resumed.returncode == 0 and "1 done, 3 skipped, 0 failed" in resumed.stdout
    # its smoke run passed with these settings and this code: not run again
    assert "smoke skipped: tiny-bert-mean-ep2-ntr200-nev100-synthetic-s42 (passed before)" in resumed.stdout
    assert "smoke ok" not in resumed.stdout
    assert (
        "resumed from" in (out_dir / "demo" / "logs" / "tiny-bert-mean-ep2-ntr200-nev100-synthetic-s42.log").read_text()
    )


@pytest.mark.slow
def test_failing_runs_do_not_stop_the_grid_and_the_exit_code_says_so(tmp_path, cache_dir):
    g = write_grid(tmp_path / "f.grid", f"{SMALL} --seed {{1,2}}")
    # every run diverges at its first step
    env_nan = dict(os.environ, FTKIT_NAN_AT="0", PYTHON=os.path.join(ROOT, "tests", "python_with_faults"))
    out = subprocess.run(
        ["bash", os.path.join(ROOT, "run_grid.sh"), g, "--no-smoke", "--out_dir", str(tmp_path / "runs")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env_nan,
        timeout=300,
    )
    assert out.returncode == 1
    assert out.stdout.count("[start]") == 2 and "0 done, 0 skipped, 2 failed" in out.stdout
    assert "exit 3, log" in out.stdout and "error: loss is not finite at step 1" in out.stdout


@pytest.mark.slow
def test_gpu_queue_never_shares_a_device_or_port(tmp_path, cache_dir):
    g = write_grid(tmp_path / "q.grid", f"{SMALL} --seed {{1,2,3}}")  # 2 slots: the third run waits
    out = run_grid(g, "--no-smoke", "--gpus", "0,1", "--out_dir", tmp_path / "runs")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    busy, max_concurrent = {}, 0
    for line in out.stdout.splitlines():
        if m := re.match(r"\[start\] (\S+) devices=(\S+) port=(\d+)", line):
            name, devices, port = m.groups()
            for other, (d, p) in busy.items():
                assert not set(devices.split(",")) & set(d.split(",")), (name, other)
                assert port != p, (name, other)
            busy[name] = (devices, port)
            max_concurrent = max(max_concurrent, len(busy))
        elif m := re.match(r"\[done\] (\S+)", line):
            busy.pop(m.group(1))
    assert max_concurrent == 2
    assert len(list((tmp_path / "runs" / "q").glob("*/results.json"))) == 3


def tmux(*args):
    return subprocess.run(["tmux", *args], capture_output=True, text=True)


def need_tmux():
    """Skip without tmux, except in CI, which installs it (.ci/run): there the tests must run."""
    if shutil.which("tmux") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI: tmux is not installed; .ci/run installs it")
        pytest.skip("tmux not installed")


@pytest.mark.slow
def test_tmux_launch_runs_detached_reports_status_and_stops(tmp_path, cache_dir):
    need_tmux()
    launch = os.path.join(ROOT, "tmux_launch.sh")
    name = f"t{os.getpid()}"
    quick = write_grid(tmp_path / f"{name}.grid", f"{SMALL} --seed {{1,2}}")
    try:
        out = subprocess.run(
            ["bash", launch, quick, "--no-smoke", "--out_dir", tmp_path / "runs"],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        assert out.returncode == 0 and f"grid-{name}" in out.stdout
        # the launching shell is gone; the session (no client attached) keeps running the grid
        assert tmux("has-session", "-t", f"grid-{name}").returncode == 0
        twice = subprocess.run(["bash", launch, quick], capture_output=True, text=True, cwd=ROOT)
        assert twice.returncode == 2 and "already running" in twice.stderr
        status = subprocess.run(["bash", launch, "--status"], capture_output=True, text=True, cwd=ROOT)
        assert re.search(rf"grid-{name}: [0-2]/2 runs done", status.stdout)
        deadline = time.time() + 180
        while tmux("has-session", "-t", f"grid-{name}").returncode == 0 and time.time() < deadline:
            time.sleep(1)
        log = (tmp_path / "runs" / name / "grid.log").read_text()
        assert "2 done, 0 skipped, 0 failed" in log and "grid exited with status 0" in log

        slow = write_grid(
            tmp_path / f"{name}s.grid", "--model tiny-bert --data synthetic --epochs 200 --wandb disabled"
        )
        # flags after -- reach every run, as with run_grid.sh
        subprocess.run(
            ["bash", launch, slow, "--no-smoke", "--out_dir", tmp_path / "runs", "--", "--log_every", "7"],
            check=True,
            cwd=ROOT,
        )
        run_dir = tmp_path / "runs" / f"{name}s" / "tiny-bert-cls-ep200-synthetic-s42"
        deadline = time.time() + 120
        while not ((run_dir / "train.log").exists() and "train:" in (run_dir / "train.log").read_text()):
            assert time.time() < deadline
            time.sleep(0.5)
        stop = subprocess.run(["bash", launch, "--stop", slow], capture_output=True, text=True, cwd=ROOT)
        assert stop.returncode == 0, stop.stderr
        assert (
            f"resume with: bash tmux_launch.sh {slow} --no-smoke" in stop.stdout and "-- --log_every 7" in stop.stdout
        )
        assert '"log_every": 7' in (run_dir / "config.json").read_text()
        assert "rerun the same command to resume" in (run_dir / "train.log").read_text()
        assert list((run_dir / "ckpt").glob("step_*.pt")) and not (run_dir / "results.json").exists()
        assert "interrupted" in (tmp_path / "runs" / f"{name}s" / "grid.log").read_text()
    finally:
        for session in (f"grid-{name}", f"grid-{name}s"):
            tmux("kill-session", "-t", session)


@pytest.mark.slow
@pytest.mark.parametrize(
    "options",
    [["--gpus", "--dry-run"], ["--out_dir", "--dry-run"], ["--nproc", "--no-smoke"], ["--gpus"], ["--gpus", "a,b"]],
)
def test_an_option_missing_its_value_is_one_error_line_and_nothing_runs(options, tmp_path):
    g = write_grid(tmp_path / "g.grid", f"{SMALL} --data {tmp_path / 'missing'}")  # a smoke run would fail fast
    out = subprocess.run(
        ["bash", os.path.join(ROOT, "run_grid.sh"), g, *options],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.count("\n") == 1 and out.stderr.startswith(f"error: {options[0]} ")
    assert out.stdout == "" and sorted(os.listdir(tmp_path)) == ["g.grid"]


@pytest.mark.slow
@pytest.mark.parametrize("file_name", ["...grid", "..grid", "-x.grid"])
def test_a_grid_whose_name_is_not_a_plain_folder_name_writes_nothing_outside_out_dir(file_name, tmp_path):
    g = write_grid(tmp_path / file_name, f"{SMALL} --data {tmp_path / 'missing'}")
    out_dir = tmp_path / "a" / "runs"
    for command in (
        ["run_grid.sh", g, "--out_dir", out_dir],
        ["run_grid.sh", g, "--slurm", "--dry-run", "--out_dir", out_dir],
        ["tmux_launch.sh", g, "--out_dir", out_dir],
    ):
        out = subprocess.run(
            ["bash", os.path.join(ROOT, command[0]), *map(str, command[1:])],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=300,
        )
        assert out.returncode == 2, (command, out.stdout + out.stderr)
        assert out.stderr.count("\n") == 1 and "must be a plain folder name" in out.stderr, out.stderr
        assert sorted(os.listdir(tmp_path)) == [file_name], command


@pytest.mark.slow
def test_a_finished_run_whose_settings_changed_is_refused_naming_the_setting_not_skipped(
    tmp_path, syn_folder, cache_dir
):
    for parent in ("a", "b"):  # two data folders with the same base name: the run name stays the same
        shutil.copytree(syn_folder, tmp_path / parent / "syn")
    quick = "--model tiny-bert --max_train_samples 32 --max_eval_samples 16 --epochs 1 --wandb disabled"
    out_dir = tmp_path / "runs"
    # a run trained outside the grid, into the grid's folder; --lr left to the model's default
    from helpers import run_inprocess

    assert run_inprocess(*quick.split(), "--data", tmp_path / "a" / "syn", "--out_dir", out_dir / "g") == 0
    same = write_grid(tmp_path / "g.grid", f"{quick} --data {tmp_path / 'a' / 'syn'}")
    again = run_grid(same, "--no-smoke", "--out_dir", out_dir)
    assert again.returncode == 0 and "0 done, 1 skipped, 0 failed" in again.stdout, again.stdout + again.stderr

    changed = write_grid(tmp_path / "g.grid", f"{quick} --data {tmp_path / 'b' / 'syn'}")
    for options in ([], ["--no-smoke"], ["--slurm", "--dry-run"]):
        out = run_grid(changed, *options, "--out_dir", out_dir)
        assert out.returncode == 2, (options, out.stdout + out.stderr)
        assert out.stderr.count("\n") == 1 and out.stderr.startswith(f"error: {changed}:2: ")
        assert "holds a run with other settings (data)" in out.stderr and "[skip]" not in out.stdout
        assert "[start]" not in out.stdout and not (out_dir / "g" / "slurm").exists()


def start_slow_grid(tmp_path, name, env=None):
    """run_grid.sh on a one-run grid that trains for many minutes (the tests stop it; under a loaded
    CI a shorter one could finish first), once its run has logged a train line."""
    g = write_grid(
        tmp_path / f"{name}.grid", "--model tiny-bert --data synthetic --epochs 200 --wandb disabled --log_every 5"
    )
    grid_run = subprocess.Popen(
        ["bash", os.path.join(ROOT, "run_grid.sh"), g, "--no-smoke", "--out_dir", tmp_path / "runs"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, WANDB_MODE="disabled", **(env or {})),
        # as from a terminal: a suite started in the background (`cmd &`) inherits SIGINT ignored,
        # and bash cannot trap a signal ignored at its start, so Ctrl-C would never reach the grid
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    run_dir = tmp_path / "runs" / name / "tiny-bert-cls-ep200-synthetic-s42"
    deadline = time.time() + 120
    while not ((run_dir / "train.log").exists() and "train:" in (run_dir / "train.log").read_text()):
        assert time.time() < deadline and grid_run.poll() is None, grid_run.communicate()
        time.sleep(0.5)
    return g, grid_run, run_dir


@pytest.mark.slow
def test_a_second_launch_is_refused_untouched_and_ctrl_c_reports_the_run_stopped(tmp_path, cache_dir):
    g, grid_run, run_dir = start_slow_grid(tmp_path, "live")
    try:
        console_log = tmp_path / "runs" / "live" / "logs" / f"{run_dir.name}.log"
        pid_file = tmp_path / "runs" / "live" / ".grid.pid"
        log_before, pid_before = console_log.read_bytes(), pid_file.read_text()
        second = run_grid(g, "--no-smoke", "--out_dir", tmp_path / "runs")
        assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stdout + second.stderr
        assert second.stderr.startswith("error: grid live is already running") and second.stdout == ""
        assert console_log.read_bytes().startswith(log_before) and pid_file.read_text() == pid_before
    finally:
        grid_run.send_signal(signal.SIGINT)  # Ctrl-C
        stdout, _ = grid_run.communicate(timeout=120)
    assert grid_run.returncode == 130, stdout
    assert re.search(rf"^\[stopped\] {run_dir.name} checkpointed at step \d+ \(log {console_log}\)$", stdout, re.M), (
        stdout
    )
    assert "0 done, 0 skipped, 0 failed, 1 stopped" in stdout and "[failed]" not in stdout


@pytest.mark.slow
def test_a_run_stopped_by_a_signal_is_counted_as_stopped_not_failed(tmp_path, cache_dir):
    _, grid_run, run_dir = start_slow_grid(tmp_path, "sig")
    train_pid = int((run_dir / ".lock").read_text().split()[1])
    os.kill(train_pid, signal.SIGTERM)  # not through the grid: a user, or a scheduler
    stdout, _ = grid_run.communicate(timeout=120)
    assert grid_run.returncode == 1, stdout
    step = re.search(rf"^\[stopped\] {run_dir.name} checkpointed at step (\d+) ", stdout, re.M)
    assert step and list((run_dir / "ckpt").glob(f"step_{int(step.group(1)):08d}.pt")), stdout
    assert "0 done, 0 skipped, 0 failed, 1 stopped" in stdout and "[failed]" not in stdout


@pytest.mark.slow
def test_console_and_status_show_the_runs_log_progress_phase_and_how_the_grid_ended(tmp_path, cache_dir):
    need_tmux()
    _, grid_run, run_dir = start_slow_grid(tmp_path, "prog", env={"GRID_PROGRESS_EVERY": "1"})
    status = [os.path.join(ROOT, "tmux_launch.sh"), "--status", "--out_dir", tmp_path / "runs"]
    # what the feature promises is a progress line (step, epoch, ETA), not how far a CPU gets in a
    # given time: poll until the status shows one
    progress = re.compile(rf"^  {run_dir.name}: step \d+/\d+, epoch \d+/200, ETA", re.M)
    deadline = time.time() + 60
    try:
        while True:
            running = subprocess.run(["bash", *status], capture_output=True, text=True, cwd=ROOT).stdout
            if progress.search(running) or time.time() > deadline:
                break
            time.sleep(0.5)
    finally:
        grid_run.send_signal(signal.SIGTERM)
        stdout, _ = grid_run.communicate(timeout=120)
    console_log = tmp_path / "runs" / "prog" / "logs" / f"{run_dir.name}.log"
    assert f"[start] {run_dir.name} devices=default port=auto log {console_log}" in stdout
    assert re.search(rf"^\[progress\] {run_dir.name}: step \d+/\d+, epoch \d+/200, ETA \S+ min$", stdout, re.M), stdout
    assert "prog: 0/1 runs done; real phase" in running, running
    assert progress.search(running), running
    ended = subprocess.run(["bash", *status], capture_output=True, text=True, cwd=ROOT).stdout
    assert f"prog: 0/1 runs done; ended: stopped (log {tmp_path / 'runs' / 'prog' / 'logs'})" in ended, ended
    assert "no grid sessions running" not in ended


@pytest.mark.slow
def test_sync_uploads_every_offline_start_of_every_run_with_one_wandb_sync(tmp_path):
    g = write_grid(tmp_path / "w.grid", f"{SMALL} --seed {{1,2}}")
    folder = tmp_path / "runs" / "w"
    starts = [
        folder / "a" / "wandb" / "offline-run-20260101_100000-id1",
        folder / "a" / "wandb" / "offline-run-20260101_110000-id1",  # the resumed start of run a
        folder / "b" / "wandb" / "offline-run-20260101_100500-id2",
    ]
    for path in [*starts, folder / "c" / "wandb" / "run-20260101_100000-id3"]:  # c was logged online
        path.mkdir(parents=True)
    bin_dir, calls = tmp_path / "bin", tmp_path / "wandb_calls"
    bin_dir.mkdir()
    (bin_dir / "wandb").write_text(f'#!/bin/bash\nprintf "%s\\n" "$@" > {calls}\n')
    (bin_dir / "wandb").chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    out = subprocess.run(
        ["bash", os.path.join(ROOT, "run_grid.sh"), g, "--sync", "--out_dir", tmp_path / "runs"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert calls.read_text().splitlines() == ["sync", "--yes", *map(str, starts)]
    nothing = subprocess.run(
        ["bash", os.path.join(ROOT, "run_grid.sh"), g, "--sync", "--out_dir", tmp_path / "empty"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
    )
    assert nothing.returncode == 2 and nothing.stderr.startswith("error: no offline W&B runs")


def hold_lock(path):
    """A process that takes the flock on path and keeps it, as a run started by the grid does."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(path)], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert holder.stdout.readline() == "locked\n"
    return holder


HOLD_LOCK = "import fcntl, sys, time; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); print('locked', "
HOLD_LOCK += "flush=True); time.sleep(600)"


def test_status_names_the_runs_that_outlive_a_killed_runner_and_what_to_do(tmp_path):
    out, run_name = tmp_path / "runs" / "orphan", "tiny-bert-cls-synthetic-s42"
    (out / run_name).mkdir(parents=True)
    runner = subprocess.Popen(["true"])
    runner.wait()  # killed with -9: its pid is gone, its grid.status stays
    (out / "grid.status").write_text(f"phase real\npid {runner.pid}\ngrid orphan.grid\nruns 1\ndone 0\n")
    holder = hold_lock(out / ".grid.lock")
    try:
        (out / run_name / ".lock").write_text(f"{socket.gethostname()} {holder.pid}")
        status = grid.grid_status(str(out))
        assert f"its runner (pid {runner.pid}) died in the real phase" in status and "not running" not in status
        assert f"still running and holding the grid's lock: pid {holder.pid} (run {run_name})" in status
        assert f"stop them with kill -TERM {holder.pid} (a run checkpoints first), then rerun the grid" in status
    finally:
        holder.kill()
        holder.wait()
    assert grid.grid_status(str(out)).endswith("rerun the grid to resume") and "not running" in grid.grid_status(
        str(out)
    )


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="the lock's holders are found in /proc (Linux)")
def test_after_kill_9_of_the_runner_a_relaunch_and_status_name_the_run_still_holding_the_lock(tmp_path, cache_dir):
    g, grid_run, run_dir = start_slow_grid(tmp_path, "orphan")
    train_pid = int((run_dir / ".lock").read_text().split()[1])
    try:
        grid_run.kill()  # kill -9 of run_grid.sh alone: the run it started lives on, holding the grid's lock
        grid_run.communicate(timeout=60)
        again = run_grid(g, "--no-smoke", "--out_dir", tmp_path / "runs")
        assert again.returncode == 2 and again.stderr.count("\n") == 1 and again.stdout == "", again.stderr
        assert again.stderr.startswith(f"error: grid orphan: its runner (pid {grid_run.pid}) is gone"), again.stderr
        assert f"pid {train_pid} (run {run_dir.name})" in again.stderr and f"kill -TERM {train_pid} " in again.stderr
        status = grid.grid_status(str(tmp_path / "runs" / "orphan"))
        assert f"pid {train_pid} (run {run_dir.name})" in status and "not running" not in status, status
    finally:
        os.kill(train_pid, signal.SIGTERM)  # it checkpoints and exits
        deadline = time.time() + 120
        while os.path.exists(f"/proc/{train_pid}") and time.time() < deadline:
            time.sleep(0.5)
    assert "rerun the same command to resume" in (run_dir / "train.log").read_text()


@pytest.mark.slow
def test_fresh_on_a_grid_says_it_does_not_redo_finished_runs(tmp_path):
    g = write_grid(tmp_path / "f.grid", SMALL)
    line = SMALL.split()
    run_dir = tmp_path / "runs" / "f" / config.parse_args(line).run_name
    run_dir.mkdir(parents=True)  # a finished run of that line, as train.py leaves it
    (run_dir / "config.json").write_text(json.dumps(vars(config.parse_args(line))))
    (run_dir / "results.json").write_text("{}")
    note = "note: --fresh restarts only the runs not finished; the 1 finished run is kept and skipped, not redone"
    for options in (["--no-smoke"], ["--slurm", "--dry-run"]):
        out = run_grid(g, *options, "--out_dir", tmp_path / "runs", "--", "--fresh")
        assert out.returncode == 0, out.stdout + out.stderr
        assert note in out.stdout + out.stderr and f"move its folder out of {run_dir.parent}" in out.stdout + out.stderr
        assert (run_dir / "results.json").exists()
    plain = run_grid(g, "--no-smoke", "--out_dir", tmp_path / "runs")
    assert "--fresh" not in plain.stdout + plain.stderr and f"[skip] {run_dir.name} (finished)" in plain.stdout


REWORDED = """#!/usr/bin/env bash
# PYTHON for run_grid.sh: tests/python_with_faults, with train.py's resume sentence reworded in
# what the grid's console log gets (train.log keeps it)
faults=@FAULTS@
case " $* " in
  *" train.py "*) set -o pipefail; "$faults" "$@" 2>&1 | sed -u 's/checkpointed at step/saved at step/' ;;
  *) exec "$faults" "$@" ;;
esac
"""


@pytest.mark.slow
def test_the_stopped_line_takes_its_step_from_the_runs_outcome_not_from_the_log(tmp_path, cache_dir):
    python = tmp_path / "python_reworded"
    python.write_text(REWORDED.replace("@FAULTS@", os.path.join(ROOT, "tests", "python_with_faults")))
    python.chmod(0o755)
    g = write_grid(tmp_path / "o.grid", f"{SMALL} --max_train_samples 400 --log_every 1")
    out = subprocess.run(
        ["bash", os.path.join(ROOT, "run_grid.sh"), g, "--no-smoke", "--out_dir", str(tmp_path / "runs")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, PYTHON=str(python), FTKIT_KILL_AT="step:3:TERM", WANDB_MODE="disabled"),
        timeout=300,
    )
    name = config.parse_args([*SMALL.split(), "--max_train_samples", "400", "--log_every", "1"]).run_name
    console_log = tmp_path / "runs" / "o" / "logs" / f"{name}.log"
    assert "saved at step" in console_log.read_text() and "checkpointed at step" not in console_log.read_text()
    checkpoints = sorted((tmp_path / "runs" / "o" / name / "ckpt").glob("step_*.pt"))
    step = int(checkpoints[-1].stem.split("_")[1])
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"[stopped] {name} checkpointed at step {step} (log {console_log})\n" in out.stdout, out.stdout
    assert "0 done, 0 skipped, 0 failed, 1 stopped" in out.stdout
    outcome = json.loads((tmp_path / "runs" / "o" / name / "outcome.json").read_text())
    assert outcome == {"outcome": "stopped", "step": step, "checkpoint": str(checkpoints[-1]), "signal": 15}


def test_outcome_maps_the_exit_code_and_the_outcome_file_to_the_grids_line(tmp_path):
    stopped = {"outcome": "stopped", "step": 12, "checkpoint": "ckpt/step_00000012.pt", "signal": 15}
    (tmp_path / "outcome.json").write_text(json.dumps(stopped))
    assert grid.outcome(str(tmp_path), 0) == ("done", "")
    assert grid.outcome(str(tmp_path), 143) == ("stopped", "checkpointed at step 12")
    assert grid.outcome(str(tmp_path), 1) == ("stopped", "checkpointed at step 12")  # torchrun, after its workers
    (tmp_path / "outcome.json").unlink()
    assert grid.outcome(str(tmp_path), 130) == ("stopped", "exit 130 before its first checkpoint")
    assert grid.outcome(str(tmp_path), 3) == ("failed", "diverged, exit 3")
    assert grid.outcome(str(tmp_path), 2) == ("failed", "exit 2")
    assert grid.outcome(str(tmp_path / "never-started"), 1) == ("failed", "exit 1")
