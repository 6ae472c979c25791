"""run_grid.sh --slurm: the scripts it writes (no cluster needed), and the real thing on a local
one-node SLURM (tests/slurm/start_local_cluster.sh; .ci/run starts it, and in CI these must run)."""

import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest
from helpers import ROOT, read_results
from wandb_history import run_ids

import config
import grid
import slurm

EXPECTED = os.path.join(ROOT, "tests", "slurm", "expected")
# the options the stored copies were written with; to change the design on purpose, rewrite them:
#   FTKIT_UPDATE_EXPECTED=1 python -m pytest -q tests/test_slurm.py -k expected
FIXED = [
    "--partition",
    "gpu",
    "--gpus-per-run",
    "2",
    "--cpus-per-task",
    "16",
    "--mem",
    "64G",
    "--time",
    "1-00:00:00",
    "--max-parallel",
    "4",
    "--account",
    "lab",
    "--qos",
    "normal",
    "--sbatch-arg=--constraint=a100",
]
PLACE = slurm.Place(root="/repo", python="/usr/bin/python3", out="/scratch/runs/exp1", name="exp1")
SMALL = "--model tiny-bert --data synthetic --max_train_samples 96 --max_eval_samples 32 --epochs 1 --wandb disabled"


def run_grid(*args, env=None, timeout=300):
    return subprocess.run(
        ["bash", os.path.join(ROOT, "run_grid.sh"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=dict(os.environ, WANDB_MODE="disabled", **(env or {})),
    )


@pytest.fixture
def fake_slurm(tmp_path):
    """sbatch / squeue / scancel stand-ins first on PATH: sbatch logs its calls and answers ids
    101, 102, ...; squeue prints the file `queue` (empty: nothing queued)."""
    bin_dir, calls, queue = tmp_path / "fakebin", tmp_path / "sbatch_calls", tmp_path / "queue"
    bin_dir.mkdir()
    queue.write_text("")
    (bin_dir / "sbatch").write_text(f'#!/bin/bash\necho "$*" >> {calls}\necho $((100 + $(wc -l < {calls})))\n')
    (bin_dir / "squeue").write_text(f"#!/bin/bash\ncat {queue}\n")
    (bin_dir / "scancel").write_text(f'#!/bin/bash\necho "scancel $*" >> {calls}\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    return env, calls, queue


def sbatch_calls(calls) -> list[str]:
    return calls.read_text().splitlines() if calls.exists() else []


def one_error_line(out, text: str):
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("error: ") and "Traceback" not in out.stderr
    assert text in out.stderr, out.stderr


# ---- unit: the scripts, without a cluster


@pytest.mark.slow
def test_scripts_for_exp1_equal_the_expected_copy(tmp_path):
    runs = grid.resolve(os.path.join(ROOT, "grids", "exp1.grid"))
    tasks = list(range(1, 11))
    one_node = slurm.build_parser().parse_args(["grids/exp1.grid", "--slurm", *FIXED])
    two_nodes = slurm.build_parser().parse_args(["grids/exp1.grid", "--slurm", *FIXED, "--nodes-per-run", "2"])
    written = {
        "runs.grid": slurm.runs_file(runs),
        "smoke.sbatch": slurm.smoke_script(one_node, PLACE),
        "runs.sbatch": slurm.runs_script(one_node, PLACE, tasks, after=["1001"]),
        "report.sbatch": slurm.report_script(one_node, PLACE, array_jobs=["1002"]),
        "runs-2nodes.sbatch": slurm.runs_script(two_nodes, PLACE, tasks, after=["1001"]),
    }
    for name, text in written.items():
        path = os.path.join(EXPECTED, name)
        if os.environ.get("FTKIT_UPDATE_EXPECTED"):
            os.makedirs(EXPECTED, exist_ok=True)
            with open(path, "w") as f:
                f.write(text)
        with open(path) as f:
            assert text == f.read(), f"{name} differs from {path} (FTKIT_UPDATE_EXPECTED=1 rewrites it on purpose)"
        if name.endswith(".sbatch"):
            (tmp_path / name).write_text(text)
            check = subprocess.run(["bash", "-n", tmp_path / name], capture_output=True, text=True)
            assert check.returncode == 0, f"{name}: {check.stderr}"
    assert "#SBATCH --array=1-10%4" in written["runs.sbatch"]
    assert "#SBATCH --signal=B:USR1@180" in written["runs.sbatch"] and "--requeue" in written["runs.sbatch"]
    assert "#SBATCH --dependency=afterok:1001" in written["runs.sbatch"]
    assert "#SBATCH --dependency=afterany:1002" in written["report.sbatch"]
    assert "--standalone --nproc_per_node=2" in launch_command(written["runs.sbatch"])
    two_nodes_launch = launch_command(written["runs-2nodes.sbatch"])
    assert "srun --nodes=2" in two_nodes_launch and "--rdzv-backend=c10d" in two_nodes_launch
    # runs.grid is itself a grid: the same 10 runs, the same names, in the same order
    (tmp_path / "again.grid").write_text(written["runs.grid"])
    assert grid.resolve(str(tmp_path / "again.grid")) == [(i, name, args) for i, (_, name, args) in enumerate(runs, 1)]


def launch_command(script: str) -> str:
    """The command a job script starts a run with: its settings line, through grid_lib.sh's launcher_words
    (on a pretend 2-node allocation)."""
    settings = next(line for line in script.splitlines() if line.startswith("PROCS_PER_NODE="))
    bash = (
        f"source ./grid_lib.sh; PYTHON=python SLURM_JOB_ID=7 SLURM_JOB_NODELIST='n[1-2]'; scontrol() {{ echo n1; }}; "
        f"{settings}\nlauncher_words"
    )
    words = subprocess.run(["bash", "-c", bash], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return " ".join(words.splitlines())


def test_array_spec_compresses_ranges():
    assert slurm.array_spec([1, 2, 3, 5, 7, 8], None) == "1-3,5,7-8"
    assert slurm.array_spec([4], 2) == "4%2"


@pytest.mark.slow
def test_dry_run_writes_and_prints_the_scripts_lists_10_tasks_and_submits_nothing(tmp_path, fake_slurm):
    env, calls, _ = fake_slurm
    out = run_grid("grids/exp1.grid", "--slurm", "--dry-run", "--out_dir", tmp_path / "runs", env=env)
    assert out.returncode == 0, out.stderr
    assert re.findall(r"^  task (\d+) ", out.stdout, re.M) == [str(i) for i in range(1, 11)]
    folder = tmp_path / "runs" / "exp1" / "slurm"
    for name in ("smoke.sbatch", "runs.sbatch", "report.sbatch"):
        assert f"==> {folder / name} <==" in out.stdout
        assert subprocess.run(["bash", "-n", folder / name]).returncode == 0
    assert len((folder / "runs.grid").read_text().splitlines()) == 10
    assert sbatch_calls(calls) == [] and not (folder / "jobs.json").exists()


def finish(run_dir, args):
    """A run folder as a finished run of these grid-line flags leaves it (settings and results)."""
    os.makedirs(run_dir, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(vars(config.parse_args(args))))
    (run_dir / "results.json").write_text("{}")


@pytest.mark.slow
def test_finished_runs_are_left_out_and_a_finished_grid_submits_nothing(tmp_path, fake_slurm):
    env, calls, _ = fake_slurm
    runs = grid.resolve(os.path.join(ROOT, "grids", "exp1.grid"))
    names = [name for _, name, _ in runs]
    for i in (0, 1, 4):  # tasks 1, 2 and 5 finished
        finish(tmp_path / "runs" / "exp1" / names[i], runs[i][2])
    out = run_grid(
        "grids/exp1.grid", "--slurm", "--dry-run", "--max-parallel", 3, "--out_dir", tmp_path / "runs", env=env
    )
    assert out.returncode == 0, out.stderr
    assert "7 runs as array tasks (3 finished ones left out)" in out.stdout
    assert re.findall(r"^  task (\d+) ", out.stdout, re.M) == ["3", "4", "6", "7", "8", "9", "10"]
    folder = tmp_path / "runs" / "exp1" / "slurm"
    assert "#SBATCH --array=3-4,6-10%3" in (folder / "runs.sbatch").read_text()
    smoke_skips = subprocess.run(  # what the smoke job asks: it skips the finished runs' smoke runs
        [sys.executable, "grid.py", "smoke-skips", folder / "runs.grid", tmp_path / "runs" / "exp1"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    ).stdout.splitlines()
    assert smoke_skips == [f"{names[i]}{grid.SEP}finished" for i in (0, 1, 4)]

    for _, name, args in runs:
        finish(tmp_path / "runs" / "exp1" / name, args)
    done = run_grid("grids/exp1.grid", "--slurm", "--out_dir", tmp_path / "runs", env=env)
    assert done.returncode == 0 and "all 10 runs of grids/exp1.grid are finished" in done.stdout
    assert "nothing submitted" in done.stdout and sbatch_calls(calls) == []


@pytest.mark.slow
def test_submission_chains_smoke_array_and_report_and_refuses_a_second_while_queued(tmp_path, fake_slurm):
    env, calls, queue = fake_slurm
    g = tmp_path / "two.grid"
    g.write_text(f"{SMALL} --seed {{1,2}}\n")
    out = run_grid(g, "--slurm", "--gpus-per-run", 0, "--out_dir", tmp_path / "runs", "--", "--epochs", 2, env=env)
    assert out.returncode == 0, out.stderr
    folder = tmp_path / "runs" / "two" / "slurm"
    assert sbatch_calls(calls) == [
        f"--parsable {folder / name}" for name in ("smoke.sbatch", "runs.sbatch", "report.sbatch")
    ]
    assert "submitted: smoke job 101, array job 102, report job 103" in out.stdout
    for line in (
        "squeue -j 101,102,103",
        "sacct -j 101,102,103",
        f"tail -f {tmp_path}/runs/two/logs/slurm-102_1.log",
        f"--slurm --status --out_dir {tmp_path / 'runs'}",
    ):
        assert line in out.stdout
    runs_sbatch = (folder / "runs.sbatch").read_text()
    assert "#SBATCH --dependency=afterok:101" in runs_sbatch and "--kill-on-invalid-dep=yes" in runs_sbatch
    assert "#SBATCH --cpus-per-task=1" in runs_sbatch and "--gres" not in runs_sbatch
    assert "#SBATCH --dependency=afterany:102" in (folder / "report.sbatch").read_text()
    assert all(
        line.endswith("--epochs 2  # " + name)
        for line, name in zip(
            (folder / "runs.grid").read_text().splitlines(),
            json.loads((folder / "jobs.json").read_text())["runs"],
            strict=True,
        )
    )

    queue.write_text("102_1|RUNNING|0|None|node1|\n")
    again = run_grid(g, "--slurm", "--gpus-per-run", 0, "--out_dir", tmp_path / "runs", env=env)
    one_error_line(again, "grid two still has jobs in the queue (101,102,103)")
    assert len(sbatch_calls(calls)) == 3


CHAIN = [
    "--task mlm --model tiny-bert --data synthetic --run_name pre --max_train_samples 96 --max_eval_samples 32 "
    "--epochs 1 --wandb disabled",
    "--model run:pre --data synthetic --max_train_samples 96 --max_eval_samples 32 --epochs 1 --wandb disabled "
    "--seed {1,2}",
]


@pytest.mark.slow
def test_a_chained_grid_is_one_array_per_stage_each_waiting_for_the_one_before(tmp_path, fake_slurm):
    env, calls, queue = fake_slurm
    g = tmp_path / "chain.grid"
    g.write_text("\n".join(CHAIN) + "\n")
    out = run_grid(g, "--slurm", "--gpus-per-run", 0, "--out_dir", tmp_path / "runs", env=env)
    assert out.returncode == 0, out.stderr
    folder = tmp_path / "runs" / "chain" / "slurm"
    assert sbatch_calls(calls) == [
        f"--parsable {folder / name}" for name in ("smoke.sbatch", "runs.sbatch", "runs-stage2.sbatch", "report.sbatch")
    ]
    assert "in 2 stages" in out.stdout and "array jobs 102, 103, report job 104" in out.stdout
    assert "#SBATCH --array=1\n" in (folder / "runs.sbatch").read_text()
    stage2 = (folder / "runs-stage2.sbatch").read_text()
    assert "#SBATCH --array=2-3\n" in stage2 and "#SBATCH --dependency=afterok:101:102\n" in stage2
    assert "--kill-on-invalid-dep=yes" in stage2
    assert "#SBATCH --dependency=afterany:102:103\n" in (folder / "report.sbatch").read_text()
    queue.write_text("102_1|RUNNING|0|None|node1|\n103_2|PENDING|0|Dependency||\n103_3|PENDING|0|Dependency||\n")
    status = run_grid("chain", "--slurm", "--status", "--out_dir", tmp_path / "runs", env=env)
    assert re.search(r"^  running +pre\b", status.stdout, re.M), status.stdout
    assert re.search(r"^  pending +pre-cls-\S+-s1 +\(task 2, pending: Dependency\)", status.stdout, re.M), status.stdout

    # the pretraining run finished: a resubmission is one array again, with no stage to wait for
    (tmp_path / "runs" / "chain" / "pre").mkdir()
    (tmp_path / "runs" / "chain" / "pre" / "results.json").write_text("{}")
    (tmp_path / "runs" / "chain" / "pre" / "config.json").write_text(
        json.dumps(vars(config.parse_args(CHAIN[0].split())))
    )
    queue.write_text("")
    again = run_grid(g, "--slurm", "--gpus-per-run", 0, "--out_dir", tmp_path / "runs", env=env)
    assert again.returncode == 0, again.stderr
    assert "2 runs as array tasks (1 finished ones left out)" in again.stdout and "stages" not in again.stdout
    assert not (folder / "runs-stage2.sbatch").exists()


def write_status_file(path, *lines):
    """A status record, written as the grid runner and the SLURM jobs write theirs (grid_lib.sh)."""
    bash = 'source ./grid_lib.sh; write_status_file "$@"'
    subprocess.run(["bash", "-c", bash, "bash", path, *lines], cwd=ROOT, check=True)


def test_the_runner_and_the_slurm_jobs_write_one_status_format_that_both_status_commands_read(tmp_path):
    runner, task = tmp_path / "grid.status", tmp_path / "slurm" / "status" / "7"
    task.parent.mkdir(parents=True)
    write_status_file(runner, "phase real", "pid 1", "grid g.grid", "runs 2", "done 0", "running a", "running b")
    assert grid.read_status(str(runner)) == {
        "phase": "real",
        "pid": "1",
        "grid": "g.grid",
        "runs": "2",
        "done": "0",
        "running": ["a", "b"],
    }
    write_status_file(task, "phase real", "running r2", "note job 8_7 on node1, start 1")
    assert slurm.read_state(str(tmp_path / "slurm"), "7") == "running: r2, job 8_7 on node1, start 1"
    write_status_file(task, "phase ended", "ended failed: r2 exit 2 (not requeued)")
    assert slurm.read_state(str(tmp_path / "slurm"), "7") == "failed: r2 exit 2 (not requeued)"
    assert os.listdir(task.parent) == ["7"]  # replaced whole: no temporary file left


@pytest.mark.slow
def test_status_says_pending_running_requeued_done_failed_collapsed(tmp_path, fake_slurm):
    env, _, queue = fake_slurm
    out, names = tmp_path / "runs" / "g", [f"r{i}" for i in range(1, 9)]
    (out / "slurm" / "status").mkdir(parents=True)
    (out / "slurm" / "jobs.json").write_text(
        json.dumps(
            {
                "grid": "g.grid",
                "out": str(out),
                "runs": names,
                "tasks": [2, 3, 4, 5, 6, 7, 8],
                "smoke": "7",
                "array": "8",
                "report": "9",
            }
        )
    )
    (out / "r1").mkdir()
    (out / "r1" / "results.json").write_text("{}")  # finished before: not in the array
    for name, how in (("r7", "collapsed"), ("r8", "early_stop")):  # train.py ended them early
        (out / name).mkdir()
        (out / name / "results.json").write_text(json.dumps({"stopped_early": how, "stopped_at_step": 64}))
    write_status_file(out / "slurm" / "status" / "smoke", "phase ended", "ended ok")
    write_status_file(out / "slurm" / "status" / "5", "phase ended", "ended failed: r5 exit 2 (not requeued)")
    queue.write_text(
        "8_2|RUNNING|0|None|node1|\n8_3|PENDING|1|BeginTime||\n8_4|PENDING|0|JobArrayTaskLimit||\n"
        "9|PENDING|0|Dependency||\n"
    )
    status = run_grid("g", "--slurm", "--status", "--out_dir", tmp_path / "runs", env=env)
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert "  smoke: ok" in lines and "  report: pending" in lines
    for state, name in [
        ("done", "r1"),
        ("running", "r2"),
        ("requeued", "r3"),
        ("pending", "r4"),
        ("failed", "r5"),
        ("failed", "r6"),
        ("collapsed", "r7"),
        ("done", "r8"),
    ]:
        assert any(re.match(rf"  {state} +{name}\b", line) for line in lines), (state, name, status.stdout)
    assert "r5 exit 2" in status.stdout and "task 6 never started" in status.stdout
    assert "r7  (at step 64)" in status.stdout and "r8  (early-stopped at step 64)" in status.stdout
    assert lines[-1] == "== g: 1 pending, 1 running, 1 requeued, 2 done, 2 failed, 1 collapsed"
    # what tmux_launch.sh --status shows of it: the same, read the same way
    summary = subprocess.run(
        [sys.executable, "grid.py", "status", out],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, **env),
    )
    assert summary.stdout == "slurm g: 1 pending, 1 running, 1 requeued, 2 done, 2 failed, 1 collapsed\n", (
        summary.stderr
    )
    if shutil.which("tmux"):
        tmux = subprocess.run(
            ["bash", os.path.join(ROOT, "tmux_launch.sh"), "--status", "--out_dir", tmp_path / "runs"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=dict(os.environ, **env),
        )
        summary = "slurm g: 1 pending, 1 running, 1 requeued, 2 done, 2 failed, 1 collapsed"
        assert summary in tmux.stdout, tmux.stdout + tmux.stderr


@pytest.mark.slow
def test_bad_input_ends_in_one_error_line(tmp_path, fake_slurm):
    env, calls, _ = fake_slurm
    runs = ["--out_dir", tmp_path / "runs"]
    one_error_line(
        run_grid("grids/demo.grid", "--slurm", "--partiton", "x", *runs, env=env), "unrecognized arguments: --partiton"
    )
    one_error_line(
        run_grid("grids/demo.grid", "--slurm", "--gpus-per-run", 0, "--nodes-per-run", 2, *runs, env=env),
        "--nodes-per-run above 1 needs GPUs",
    )
    one_error_line(
        run_grid("grids/demo.grid", "--slurm", "--nproc", 2, *runs, env=env), "--nproc is for CPU partitions"
    )
    one_error_line(
        run_grid("grids/demo.grid", "--slurm", "--max-parallel", 0, *runs, env=env), "--max-parallel must be at least 1"
    )
    one_error_line(run_grid(tmp_path / "nope.grid", "--slurm", *runs, env=env), "grid file")
    bad = tmp_path / "bad.grid"
    bad.write_text(f"{SMALL}\n{SMALL} --pool max\n")
    one_error_line(run_grid(bad, "--slurm", *runs, env=env), f"{bad}:2: argument --pool: invalid choice: 'max'")
    one_error_line(run_grid("g", "--slurm", "--status", *runs, env=env), "grid g was not sent to SLURM")
    assert sbatch_calls(calls) == []

    # no sbatch anywhere on PATH (only what run_grid.sh itself needs)
    bare = tmp_path / "bare"
    bare.mkdir()
    os.symlink(shutil.which("dirname"), bare / "dirname")
    no_sbatch = subprocess.run(
        ["/bin/bash", os.path.join(ROOT, "run_grid.sh"), "grids/demo.grid", "--slurm", *map(str, runs)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PATH": str(bare), "PYTHON": sys.executable},
    )
    one_error_line(no_sbatch, "--slurm needs sbatch on PATH")


def smoke_passed_before(smoke_dir, args):
    """A smoke run folder as a passed smoke run of these grid-line flags leaves it, with this code."""
    smoke = config.parse_args([*args, "--smoke"])
    os.makedirs(smoke_dir / smoke.run_name)
    recorded = dict(vars(smoke), code_version=config.code_version())
    (smoke_dir / smoke.run_name / "config.json").write_text(json.dumps(recorded))
    (smoke_dir / smoke.run_name / "results.json").write_text("{}")


def skipped_smoke_runs(output: str) -> list[str]:
    return re.findall(r"^smoke skipped: .*$", output, re.M)


@pytest.mark.slow
def test_the_smoke_job_skips_the_smoke_runs_the_local_smoke_phase_skips(tmp_path, fake_slurm):
    """One smoke-skip policy: a finished run that no run still to do starts from, and a run whose
    smoke run passed before with these settings and this code; the first failing smoke run stops both."""
    env, _, _ = fake_slurm
    gone, missing = tmp_path / "gone", tmp_path / "missing"  # a smoke run of either fails at once
    lines = [
        f"{SMALL} --seed 1",  # finished
        f"{SMALL} --seed 2 --data {gone}",  # its smoke run passed before
        CHAIN[0],  # finished, and the run on the last line starts from it; its smoke run passed before
        f"{SMALL} --seed 3 --data {missing}",  # to do: its smoke run fails
        CHAIN[1].replace(" --seed {1,2}", ""),
    ]
    g = tmp_path / "g.grid"
    g.write_text("\n".join(lines) + "\n")
    out = tmp_path / "runs" / "g"
    runs = grid.resolve(str(g))
    for i in (0, 2):
        finish(out / runs[i][1], runs[i][2])
    for i in (1, 2):
        smoke_passed_before(out / "smoke", runs[i][2])
    expected = [
        f"smoke skipped: {runs[0][1]} (finished)",
        f"smoke skipped: {runs[1][1]} (passed before)",
        "smoke skipped: pre (passed before)",
    ]

    local = run_grid(g, "--out_dir", tmp_path / "runs", env=env)
    assert local.returncode == 1 and f"smoke FAILED: {g} line 4 " in local.stderr, local.stdout + local.stderr
    assert skipped_smoke_runs(local.stdout) == expected, local.stdout

    written = run_grid(g, "--slurm", "--dry-run", "--gpus-per-run", 0, "--out_dir", tmp_path / "runs", env=env)
    assert written.returncode == 0, written.stdout + written.stderr
    job = subprocess.run(
        ["bash", out / "slurm" / "smoke.sbatch"],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, WANDB_MODE="disabled", **env),
    )
    assert job.returncode == 1 and "line 4 " in job.stderr, job.stdout + job.stderr
    assert skipped_smoke_runs(job.stdout) == expected, job.stdout


# ---- integration: a real SLURM on this machine


def _cluster_up() -> str | None:
    """None when a local SLURM answers with an idle (or busy) node, else why not."""
    if shutil.which("sbatch") is None:
        return "sbatch not installed"
    try:
        state = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer in 20 s"
    if not re.match(r"(idle|mix|alloc)", state.stdout.strip()):
        return f"no usable node (sinfo: {state.stdout.strip() or state.stderr.strip()})"
    return None


@pytest.fixture(scope="module")
def cluster():
    why = _cluster_up()
    if why and os.environ.get("CI") == "true":
        pytest.fail(f"CI: the local SLURM is not up ({why}); .ci/run starts it with tests/slurm/start_local_cluster.sh")
    if why:
        pytest.skip(f"no local SLURM ({why}); start one (as root) with: bash tests/slurm/start_local_cluster.sh")


def jobs_of(out) -> dict:
    return json.loads((out / "slurm" / "jobs.json").read_text())


def wait_for(condition, timeout, what, out):
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            logs = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted((out / "logs").glob("slurm-*")))
            raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{logs}")
        time.sleep(0.5)


def queued(job_ids) -> bool:
    return bool(slurm.queue(job_ids))


def scontrol_job(job: str) -> str:
    return subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout


@pytest.mark.slow
def test_demo_grid_on_slurm_smoke_array_report(cluster, tmp_path, cache_dir):
    out = tmp_path / "runs" / "demo"
    submit = run_grid(
        "grids/demo.grid",
        "--slurm",
        "--gpus-per-run",
        0,
        "--max-parallel",
        2,
        "--out_dir",
        tmp_path / "runs",
        "--",
        "--max_train_samples",
        200,
        "--max_eval_samples",
        100,
    )
    assert submit.returncode == 0, submit.stdout + submit.stderr
    ids = slurm.job_ids(jobs_of(out))
    try:
        wait_for(lambda: not queued(ids), 600, "the demo grid's jobs", out)
    finally:
        subprocess.run(["scancel", *ids])
    runs = sorted(p.parent.name for p in out.glob("*/results.json"))
    assert runs == [
        "tiny-bert-cls-ep2-ntr200-nev100-synthetic-s42",
        "tiny-bert-mean-ep2-ntr200-nev100-synthetic-s42",
        "tiny-modernbert-cls-ep2-ntr200-nev100-synthetic-s42",
        "tiny-modernbert-mean-ep2-ntr200-nev100-synthetic-s42",
    ]
    smoke_log = next((out / "logs").glob("slurm-smoke-*.log")).read_text()
    assert smoke_log.count("smoke ok:") == 4
    assert "| tiny-bert | cls |" in (out / "results.md").read_text() and (out / "results.csv").exists()
    status = run_grid("grids/demo.grid", "--slurm", "--status", "--out_dir", tmp_path / "runs")
    assert "  smoke: ok" in status.stdout and status.stdout.splitlines()[-1].endswith("4 done, 0 failed"), status.stdout
    again = run_grid(
        "grids/demo.grid",
        "--slurm",
        "--out_dir",
        tmp_path / "runs",
        "--",
        "--max_train_samples",
        200,
        "--max_eval_samples",
        100,
    )
    assert again.returncode == 0 and "all 4 runs" in again.stdout and "nothing submitted" in again.stdout


@pytest.mark.slow
def test_chained_grid_on_slurm_pretrains_then_fine_tunes_from_it(cluster, tmp_path, cache_dir):
    g = tmp_path / "chain.grid"
    g.write_text("\n".join(CHAIN) + "\n")
    out = tmp_path / "runs" / "chain"
    submit = run_grid(g, "--slurm", "--gpus-per-run", 0, "--out_dir", tmp_path / "runs")
    assert submit.returncode == 0, submit.stdout + submit.stderr
    ids = slurm.job_ids(jobs_of(out))
    try:
        wait_for(lambda: not queued(ids), 600, "the chained grid's jobs", out)
    finally:
        subprocess.run(["scancel", *ids])
    assert sorted(p.parent.name for p in out.glob("*/results.json")) == [
        "pre",
        "pre-cls-ep1-ntr96-nev32-synthetic-s1",
        "pre-cls-ep1-ntr96-nev32-synthetic-s2",
    ]
    assert next((out / "logs").glob("slurm-smoke-*.log")).read_text().count("smoke ok:") == 3
    tuned = json.loads((out / "pre-cls-ep1-ntr96-nev32-synthetic-s1" / "config.json").read_text())
    assert tuned["model_folder"] == str(out / "pre" / "model")
    table = (out / "results.md").read_text()
    assert "| tiny-bert | cls |" in table and "Shared by every fine-tuning row: from pre," in table


@pytest.mark.slow
def test_preempted_2_process_task_requeues_resumes_and_matches_the_uninterrupted_run(cluster, tmp_path, cache_dir):
    # two identical 2-process gloo runs (tasks 1 and 2); task 1 gets SLURM's warning signal mid-run
    g = tmp_path / "pre.grid"
    g.write_text(
        "--model tiny-bert --data synthetic --max_train_samples 1600 --max_eval_samples 64 --epochs 2 "
        "--save_every 10 --wandb offline --run_name {interrupted,reference}\n"
    )
    out = tmp_path / "runs" / "pre"
    submit = run_grid(g, "--slurm", "--gpus-per-run", 0, "--nproc", 2, "--no-smoke", "--out_dir", tmp_path / "runs")
    assert submit.returncode == 0, submit.stdout + submit.stderr
    jobs = jobs_of(out)
    ids, task = slurm.job_ids(jobs), f"{jobs['array']}_1"
    try:
        wait_for(lambda: list((out / "interrupted" / "ckpt").glob("step_*.pt")), 300, "the first checkpoint", out)
        subprocess.run(["scancel", "--batch", "--signal=USR1", task], check=True)
        wait_for(
            lambda: re.search(r"JobState=PENDING .*Restarts=1", scontrol_job(task).replace("\n", " ")),
            120,
            "the task back in the queue",
            out,
        )
        status = run_grid(g, "--slurm", "--status", "--out_dir", tmp_path / "runs")
        assert re.search(r"^  requeued +interrupted +\(task 1, 1 restart", status.stdout, re.M), status.stdout
        # skip SLURM's 2-minute hold, but not by less than a few seconds: slurmd refuses a start
        # whose credential dates from the second the old one was revoked ("Job credential revoked")
        time.sleep(5)
        subprocess.run(["scontrol", "update", f"JobId={task}", "StartTime=now"], check=True)
        wait_for(lambda: not queued(ids), 420, "both runs and the report", out)
    finally:
        subprocess.run(["scancel", *ids])

    assert "Restarts=1" in scontrol_job(task)
    log = (out / "logs" / f"slurm-{task}.log").read_text()
    assert "start 1" in log and "USR1: stopping the run" in log and "requeued: interrupted" in log, log
    assert "checkpointed at step" in log and "start 2" in log and "done: interrupted" in log, log
    assert "resumed from" in (out / "interrupted" / "train.log").read_text()
    first, reference = read_results(out / "interrupted"), read_results(out / "reference")
    for key in ("val_acc", "test_acc", "test_loss"):
        assert abs(first[key] - reference[key]) <= 1e-6, (key, first[key], reference[key])
    for run in ("interrupted", "reference"):
        assert json.loads((out / run / "config.json").read_text())["world_size"] == 2
    # W&B offline: the resumed start continued the first start's run
    assert len(list((out / "interrupted" / "wandb").glob("offline-run-*"))) == 2
    assert run_ids(out / "interrupted") == {(out / "interrupted" / "wandb_id").read_text().strip()}
