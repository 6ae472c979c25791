"""Run a grid on a SLURM cluster: SLURM queues, places, limits and requeues; we write the jobs.

    bash run_grid.sh GRID --slurm [options] [-- TRAIN.PY ARGS]    (run_grid.sh hands --slurm here)
    bash run_grid.sh GRID --slurm --status                        per run: pending / running /
                                                                  requeued / done / collapsed / failed

Writes OUT_DIR/<grid>/slurm/: runs.grid (each run's flags, one run per line: line N is array
task N), smoke.sbatch, runs.sbatch (the job array), report.sbatch (slurm_jobs/'s templates with
their #SBATCH lines and settings filled in; they run grid_lib.sh's launcher from this checkout)
and, once submitted, jobs.json. Jobs: the smoke job runs every run still to do with --smoke; the array (one task per
unfinished run, at most --max-parallel at once) waits for it with afterok; a grid with stages
(--model run:NAME) gets one array per stage (runs-stage2.sbatch, ...), each waiting for the ones
before it (afterok); the report job runs report.py after the arrays, however they ended (afterany).

Preemption and time limits: SLURM sends the batch script USR1 --grace seconds before the end;
the script sends TERM to torchrun (which forwards TERM, not USR1), train.py checkpoints and exits,
and the script requeues its own task, which resumes from the checkpoint when it starts again.
"""

import argparse
import contextlib
import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from typing import NamedTuple

import config
import grid

ROOT = os.path.dirname(os.path.abspath(__file__))
JOBS = os.path.join(ROOT, "slurm_jobs")  # the jobs' bash, as templates; they source grid_lib.sh
NO_ID = {"smoke": "SMOKE_JOB_ID", "array": "ARRAY_JOB_ID"}  # stand-ins in scripts a dry run writes


class SlurmError(Exception):
    pass


class Place(NamedTuple):
    """Where a grid's jobs run from: the checkout, the Python that submitted, the grid's folder."""

    root: str
    python: str
    out: str
    name: str


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise SlurmError(f"{message} (see run_grid.sh --slurm --help)")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="run_grid.sh",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="-- ARGS: train.py flags appended to every run (as without --slurm)",
    )
    a = p.add_argument
    a(
        "grid",
        nargs="?",
        default=grid.DEFAULT_GRID,
        help="grid file (default: %(default)s); for --status its name is enough",
    )
    a("--slurm", action="store_true", help="send the grid to SLURM (what run_grid.sh hands over here)")
    a(
        "--status",
        action="store_true",
        help="per run: pending / running / requeued / done / failed, from squeue and the run folders; submits nothing",
    )
    a("--partition", help="SLURM partition (default: the cluster's default)")
    a(
        "--gpus-per-run",
        type=int,
        default=1,
        help="GPUs per node for each run, one process each; "
        "0 = a CPU partition, --nproc gloo processes (default: %(default)s)",
    )
    a(
        "--nodes-per-run",
        type=int,
        default=1,
        help="nodes per run; above 1, srun starts one torchrun "
        "per node with a c10d rendezvous on the first node (default: %(default)s)",
    )
    a("--nproc", type=int, default=None, help="with --gpus-per-run 0: gloo processes per run (default: 1)")
    a(
        "--cpus-per-task",
        type=int,
        default=None,
        help="CPUs per node for each run (default: --nproc on CPU partitions, else the cluster's default)",
    )
    a("--mem", help="memory per node, as sbatch takes it, e.g. 64G (default: the cluster's default)")
    a(
        "--time",
        help="time limit per run start, D-HH:MM:SS; a longer run is requeued and resumes "
        "(default: the partition's limit)",
    )
    a("--max-parallel", type=int, default=None, help="at most K runs at once (array %%K; default: no limit)")
    a("--account", help="SLURM account to charge")
    a("--qos", help="SLURM quality of service")
    a(
        "--sbatch-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more sbatch option for every job, written as --sbatch-arg=--constraint=a100 (repeatable)",
    )
    a(
        "--grace",
        type=int,
        default=180,
        help="seconds before the time limit (or preemption, where "
        "the cluster sends the signal then) at which a run is told to checkpoint (default: %(default)s)",
    )
    a(
        "--max-requeues",
        type=int,
        default=10,
        help="a task is not requeued again after this many "
        "restarts, so a run that never gets further cannot loop (default: %(default)s)",
    )
    a(
        "--smoke",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="a smoke job first: every run with --smoke; the runs start only if all pass (default: on)",
    )
    a("--dry-run", action="store_true", help="write and print the scripts; submit nothing (needs no sbatch)")
    a(
        "--out_dir",
        default=grid.DEFAULT_OUT_ROOT,
        help="runs go to OUT_DIR/<grid name>/<run name>/ (default: %(default)s)",
    )
    return p


def check_options(o) -> None:
    def at_least(flag, value, low):
        if value is not None and value < low:
            raise SlurmError(f"--{flag} must be at least {low} (got {value})")

    at_least("gpus-per-run", o.gpus_per_run, 0)
    at_least("nodes-per-run", o.nodes_per_run, 1)
    at_least("nproc", o.nproc, 1)
    at_least("cpus-per-task", o.cpus_per_task, 1)
    at_least("max-parallel", o.max_parallel, 1)
    at_least("grace", o.grace, 1)
    at_least("max-requeues", o.max_requeues, 0)
    if o.grace > 65535:
        raise SlurmError(f"--grace must be at most 65535 seconds (got {o.grace})")
    if o.nodes_per_run > 1 and o.gpus_per_run == 0:
        raise SlurmError("--nodes-per-run above 1 needs GPUs: CPU runs (--gpus-per-run 0) use one node")
    if o.nproc is not None and o.gpus_per_run > 0:
        raise SlurmError("--nproc is for CPU partitions (--gpus-per-run 0); with GPUs a run has one process per GPU")
    for arg in o.sbatch_arg:
        if not arg.startswith("-"):
            raise SlurmError(f"--sbatch-arg takes one sbatch option, e.g. --sbatch-arg=--constraint=a100 (got {arg!r})")
    for value in [o.partition, o.mem, o.time, o.account, o.qos, o.out_dir, *o.sbatch_arg]:
        if value is not None and re.search(r"\s", value):  # they go into #SBATCH lines
            raise SlurmError(f"{value!r}: SLURM options and --out_dir must not contain spaces")


# ---- the scripts


def array_spec(tasks: list[int], max_parallel: int | None) -> str:
    """[1, 2, 3, 5] -> '1-3,5' (+ '%K')."""
    ranges, start = [], None
    for i, task in enumerate(tasks):
        start = task if start is None else start
        if i + 1 == len(tasks) or tasks[i + 1] != task + 1:
            ranges.append(str(task) if start == task else f"{start}-{task}")
            start = None
    return ",".join(ranges) + (f"%{max_parallel}" if max_parallel else "")


def resource_lines(o) -> list[str]:
    """#SBATCH lines for where one run goes: nodes, GPUs, CPUs, memory, time, account."""
    cpus = o.cpus_per_task or ((o.nproc or 1) if o.gpus_per_run == 0 else None)
    lines = [f"--nodes={o.nodes_per_run}", "--ntasks-per-node=1"]
    lines += [f"--gres=gpu:{o.gpus_per_run}"] if o.gpus_per_run else []
    lines += [f"--cpus-per-task={cpus}"] if cpus else []
    lines += [f"--mem={o.mem}"] if o.mem else []
    lines += [f"--time={o.time}"] if o.time else []
    return lines + queue_lines(o)


def queue_lines(o) -> list[str]:
    return (
        ([f"--partition={o.partition}"] if o.partition else [])
        + ([f"--account={o.account}"] if o.account else [])
        + ([f"--qos={o.qos}"] if o.qos else [])
        + o.sbatch_arg
    )


def fill(template: str, script: str, sbatch: list[str], p: Place, o, **shell_values) -> str:
    """slurm_jobs/<template>, the job's bash, with its @KEY@ placeholders filled: the #SBATCH lines,
    where the job runs from, how a run starts, and shell_values (quoted for the shell)."""
    per_node = o.gpus_per_run or o.nproc or 1
    shell_values = {
        "ROOT": p.root,
        "PYTHON": p.python,
        "OUT": p.out,
        "PROCS_PER_NODE": per_node,
        "NODES": o.nodes_per_run,
        "SRUN_CPUS": o.cpus_per_task or "",
        **shell_values,
    }
    values = {k: shlex.quote(str(v)) for k, v in shell_values.items()}
    values |= {"NAME": p.name, "SCRIPT": shlex.quote(script), "GRACE": str(o.grace)}  # in comments only
    with open(os.path.join(JOBS, template)) as f:
        text = f.read().replace("# @SBATCH@", "\n".join(f"#SBATCH {line}" for line in sbatch), 1)
    return re.sub(r"@([A-Z_]+)@", lambda m: values[m.group(1)], text)


def smoke_script(o, p: Place) -> str:
    path = os.path.join(p.out, "slurm", "smoke.sbatch")
    sbatch = [f"--job-name={p.name}-smoke", f"--output={p.out}/logs/slurm-smoke-%j.log", *resource_lines(o)]
    return fill("smoke.sbatch", path, sbatch, p, o)


def runs_path(p: Place, stage: int) -> str:
    return os.path.join(p.out, "slurm", "runs.sbatch" if stage == 1 else f"runs-stage{stage}.sbatch")


def runs_script(o, p: Place, tasks: list[int], after: list[str], stage: int = 1) -> str:
    """The job array of `tasks` (one stage's); it starts once every job in `after` (the smoke job,
    the arrays of earlier stages) has ended successfully (afterok), and is cancelled if one has not."""
    path = runs_path(p, stage)
    sbatch = [
        f"--job-name={p.name}",
        f"--output={p.out}/logs/slurm-%A_%a.log",
        f"--array={array_spec(tasks, o.max_parallel)}",
        "--open-mode=append",
        "--requeue",
        f"--signal=B:USR1@{o.grace}",
        *resource_lines(o),
    ]
    if after:
        sbatch += [f"--dependency=afterok:{':'.join(after)}", "--kill-on-invalid-dep=yes"]
    return fill("runs.sbatch", path, sbatch, p, o, GRID_NAME=p.name, MAX_REQUEUES=o.max_requeues)


def report_script(o, p: Place, array_jobs: list[str]) -> str:
    path = os.path.join(p.out, "slurm", "report.sbatch")
    sbatch = [
        f"--job-name={p.name}-report",
        f"--output={p.out}/logs/slurm-report-%j.log",
        "--ntasks=1",
        "--time=00:30:00",
        *queue_lines(o),
        f"--dependency=afterany:{':'.join(array_jobs)}",
    ]
    return fill("report.sbatch", path, sbatch, p, o)


def stage_tasks(runs, tasks: list[int]) -> list[list[int]]:
    """The tasks to run, one list per stage in order (grid.stages): a run that starts from
    another's model (--model run:NAME) is in a later stage's array than that run."""
    stage = grid.stages(runs)
    of_task = {task: stage[runs[task - 1][1]] for task in tasks}
    return [[t for t in tasks if of_task[t] == k] for k in sorted(set(of_task.values()))]


def runs_file(runs: list[tuple[int, str, list[str]]]) -> str:
    """runs.grid: one run per line (the grid's flags plus the extras), its name as a comment."""
    return "".join(f"{shlex.join(args)}  # {name}\n" for _, name, args in runs)


# ---- submit


def sbatch(path: str) -> str:
    done = subprocess.run(["sbatch", "--parsable", path], capture_output=True, text=True)
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        raise SlurmError(f"sbatch refused {path}: {why}")
    return done.stdout.strip().split(";")[0]  # "id" or "id;cluster"


def queue(job_ids: list[str]) -> list[dict]:
    """squeue's view of these jobs (one row per array task); [] when SLURM no longer lists them."""
    fields = ["JobArrayID", "State", "RestartCnt", "Reason", "NodeList"]
    done = subprocess.run(
        ["squeue", "-h", "-r", "-j", ",".join(job_ids), "-O", ",".join(f + ":|" for f in fields)],
        capture_output=True,
        text=True,
    )  # -r: one row per array task; "|" after each field
    if done.returncode != 0:
        if "Invalid job id" in done.stderr:
            return []
        raise SlurmError(f"squeue failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    return [dict(zip(fields, line.split("|"), strict=False)) for line in done.stdout.splitlines() if line.strip()]


def submit(o, grid_path: str, extra: list[str]) -> int:
    if not o.dry_run and shutil.which("sbatch") is None:
        raise SlurmError("--slurm needs sbatch on PATH (run it on the cluster's login node), or use --dry-run")
    runs, name, out, finished = read_grid(o, grid_path, extra)
    if note := grid.fresh_note(out, runs, list(finished)):
        print(note)
    slurm_dir = os.path.join(out, "slurm")
    tasks = [i for i, (_, run_name, _) in enumerate(runs, 1) if run_name not in finished]
    if not tasks:
        print(f"all {len(runs)} runs of {grid_path} are finished (results in {out}); nothing submitted")
        return 0
    if shutil.which("squeue"):  # a dry run too: queued tasks read runs.grid and grid_lib.sh when they start
        earlier = read_jobs(slurm_dir)
        if earlier and queue(job_ids(earlier)):
            raise SlurmError(
                f"grid {name} still has jobs in the queue ({','.join(job_ids(earlier))}); "
                f"see run_grid.sh {grid_path} --slurm --status, or scancel them first"
            )

    os.makedirs(os.path.join(slurm_dir, "status"), exist_ok=True)
    os.makedirs(os.path.join(out, "logs"), exist_ok=True)
    for key in ["smoke", *map(str, tasks)]:  # the states an earlier submission left
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(slurm_dir, "status", key))
    for stale in glob.glob(os.path.join(slurm_dir, "runs-stage*.sbatch")):  # an earlier submission's
        os.remove(stale)
    write(os.path.join(slurm_dir, "runs.grid"), runs_file(runs))
    place = Place(ROOT, sys.executable, out, name)
    stages = stage_tasks(runs, tasks)
    paths = {
        "smoke": os.path.join(slurm_dir, "smoke.sbatch"),
        **{f"runs{i}": runs_path(place, i + 1) for i in range(len(stages))},
        "report": os.path.join(slurm_dir, "report.sbatch"),
    }
    jobs = {
        "grid": os.path.abspath(grid_path),
        "out": out,
        "runs": [n for _, n, _ in runs],
        "tasks": tasks,
        **submit_jobs(o, place, tasks, stages, paths),
    }

    if o.dry_run:
        for key, path in paths.items():
            if key != "smoke" or o.smoke:
                print(f"==> {path} <==\n{open(path).read()}")
        print(f"dry run: nothing submitted; scripts and runs.grid in {slurm_dir}")
    else:
        jobs["submitted"] = time.strftime("%Y-%m-%d %H:%M:%S")
        write(os.path.join(slurm_dir, "jobs.json"), json.dumps(jobs, indent=1) + "\n")
    left_out = len(runs) - len(tasks)
    print(
        f"grid {name}: {len(tasks)} runs as array tasks"
        + (f" ({left_out} finished ones left out)" if left_out else "")
        + (f", at most {o.max_parallel} at once" if o.max_parallel else "")
        + (f", in {len(stages)} stages, each waiting for the one before (afterok)" if len(stages) > 1 else "")
    )
    for i, stage_runs in enumerate(stages):
        for task in stage_runs:
            print(f"  task {task:<4} {runs[task - 1][1]}" + (f"  (stage {i + 1})" if len(stages) > 1 else ""))
    if not o.dry_run:
        print_how_to_follow(o, grid_path, jobs)
    return 0


def read_grid(o, grid_path: str, extra: list[str]) -> tuple[list, str, str, set[str]]:
    """The grid's runs (checked with train.py's parser), its name, its folder and the runs
    finished there; a SlurmError says what is wrong."""
    if not os.path.isfile(grid_path):
        raise SlurmError(f"grid file {grid_path} not found")
    try:
        runs = grid.resolve(grid_path, extra)
        for number, _, args in runs:  # runs.grid is expanded again in the jobs: nothing may expand twice
            if any(grid.BRACES.search(arg) for arg in args):
                raise SlurmError(f"{grid_path}:{number}: a flag still holds {{a,b}} after expansion (nested braces?)")
        name = grid.grid_name(grid_path)
        out = os.path.abspath(os.path.join(o.out_dir, name))
        return runs, name, out, set(grid.finished_runs(grid_path, out, runs))
    except OSError as e:
        raise SlurmError(f"cannot read grid {grid_path}: {e.strerror}") from None
    except grid.GridError as e:
        raise SlurmError(str(e)) from None


def submit_jobs(o, place: Place, tasks: list[int], stages: list[list[int]], paths: dict) -> dict:
    """Write the scripts to `paths` and submit them (a dry run: write only): the smoke job, one
    array per stage, the report job. Their ids; if sbatch refuses one, what was submitted is
    cancelled (its jobs would wait for nothing) and the SlurmError raised."""
    jobs = {"smoke": None, "arrays": [], "task_array": {}}
    if o.smoke:
        write(paths["smoke"], smoke_script(o, place))
        jobs["smoke"] = NO_ID["smoke"] if o.dry_run else sbatch(paths["smoke"])
    elif os.path.exists(paths["smoke"]):
        os.remove(paths["smoke"])
    try:
        for i, stage_runs in enumerate(stages):
            after = [j for j in (jobs["smoke"], *jobs["arrays"]) if j]
            write(paths[f"runs{i}"], runs_script(o, place, stage_runs, after, stage=i + 1))
            array = (NO_ID["array"] + (f"_STAGE{i + 1}" if i else "")) if o.dry_run else sbatch(paths[f"runs{i}"])
            jobs["arrays"].append(array)
            jobs["task_array"] |= {str(task): array for task in stage_runs}
        write(paths["report"], report_script(o, place, jobs["arrays"]))
        jobs["report"] = None if o.dry_run else sbatch(paths["report"])
    except SlurmError:
        submitted = [j for j in (jobs["smoke"], *jobs["arrays"]) if j and not o.dry_run]
        if submitted:
            subprocess.run(["scancel", *submitted], capture_output=True)
        raise
    return {**jobs, "array": jobs["arrays"][0]}


def print_how_to_follow(o, grid_path: str, jobs: dict) -> None:
    ids, logs, arrays = job_ids(jobs), os.path.join(jobs["out"], "logs"), jobs["arrays"]
    print(
        f"submitted: {'smoke job ' + jobs['smoke'] + ', ' if jobs['smoke'] else ''}"
        f"array job{'s' if len(arrays) > 1 else ''} {', '.join(arrays)}, report job {jobs['report']}"
    )
    print(
        f"logs: {logs}/slurm-<array job>_<task>.log (one per task, appended across restarts)"
        + (f", {logs}/slurm-smoke-{jobs['smoke']}.log" if jobs["smoke"] else "")
    )
    print("follow:")
    print(f"  squeue -j {','.join(ids)}")
    print(
        f"  sacct -j {','.join(ids)} --format=JobID,JobName,State,ExitCode,Elapsed"
        "   (where the cluster keeps accounting)"
    )
    first = jobs["tasks"][0]
    print(f"  tail -f {logs}/slurm-{jobs['task_array'][str(first)]}_{first}.log")
    print(
        f"  bash run_grid.sh {shlex.quote(grid_path)} --slurm --status"
        + (f" --out_dir {shlex.quote(o.out_dir)}" if o.out_dir != grid.DEFAULT_OUT_ROOT else "")
    )


def job_ids(jobs: dict) -> list[str]:
    arrays = jobs.get("arrays") or [jobs.get("array")]  # a jobs.json from before stages: one array
    return [j for j in (jobs.get("smoke"), *arrays, jobs.get("report")) if j]


def read_jobs(slurm_dir: str) -> dict | None:
    try:
        with open(os.path.join(slurm_dir, "jobs.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


# ---- status


def status(o) -> int:
    try:
        name = grid.grid_name(o.grid)
    except grid.GridError as e:
        raise SlurmError(str(e)) from None
    slurm_dir = os.path.join(o.out_dir, name, "slurm")
    jobs = read_jobs(slurm_dir)
    if jobs is None:
        raise SlurmError(f"grid {name} was not sent to SLURM from here (no {slurm_dir}/jobs.json)")
    print("\n".join(status_lines(name, slurm_dir, jobs)))
    return 0


def summary(out_dir: str) -> str | None:
    """For tmux_launch.sh --status: "slurm NAME: " and the runs counted by state, as --status ends;
    None if the grid in out_dir was not sent to SLURM from here."""
    slurm_dir = os.path.join(out_dir, "slurm")
    jobs = read_jobs(slurm_dir)
    if jobs is None:
        return None
    name = os.path.basename(os.path.normpath(out_dir))
    try:
        return "slurm " + status_lines(name, slurm_dir, jobs)[-1].removeprefix("== ")
    except SlurmError as e:
        return f"slurm {name}: error: {e}"


def status_lines(name: str, slurm_dir: str, jobs: dict) -> list[str]:
    """--status: the jobs, the smoke job's state, each run's (from squeue, the jobs' status files
    and the run folders), the report; the last line counts the runs by state."""
    if shutil.which("squeue") is None:
        raise SlurmError("--status needs squeue on PATH (run it on the cluster's login node)")
    out = jobs["out"]
    live = {row["JobArrayID"]: row for row in queue(job_ids(jobs))}
    arrays = jobs.get("arrays") or [jobs["array"]]
    lines = [
        f"grid {name} ({out}), submitted {jobs.get('submitted', '?')}: "
        + ", ".join(
            [
                *([f"smoke job {jobs['smoke']}"] if jobs.get("smoke") else []),
                f"array job{'s' if len(arrays) > 1 else ''} {', '.join(arrays)}",
                *([f"report job {jobs['report']}"] if jobs.get("report") else []),
            ]
        )
    ]
    if jobs.get("smoke"):
        smoke = live.get(jobs["smoke"])
        lines.append(f"  smoke: {smoke['State'].lower() if smoke else read_state(slurm_dir, 'smoke') or 'not run'}")
    counts = dict.fromkeys(["pending", "running", "requeued", "done", "failed", "collapsed"], 0)
    for task, run_name in enumerate(jobs["runs"], 1):
        state, detail = run_state(
            out,
            slurm_dir,
            run_name,
            task,
            task in jobs["tasks"],
            live.get(f"{jobs.get('task_array', {}).get(str(task), jobs['array'])}_{task}"),
        )
        counts[state] += 1
        lines.append(f"  {state:<9} {run_name}" + (f"  ({detail})" if detail else ""))
    report = live.get(jobs["report"]) if jobs.get("report") else None
    if report:
        lines.append(f"  report: {report['State'].lower()}")
    elif os.path.exists(os.path.join(out, "results.md")):
        lines.append(f"  report: {os.path.join(out, 'results.md')}")
    shown = {state: n for state, n in counts.items() if n or state != "collapsed"}  # collapsed: when any
    return [*lines, f"== {name}: " + ", ".join(f"{n} {state}" for state, n in shown.items())]


def run_state(out, slurm_dir, run_name, task, submitted, row) -> tuple[str, str]:
    """One run: (pending | running | requeued | done | collapsed | failed, detail)."""
    if config.has_results(os.path.join(out, run_name)):
        return finished_state(os.path.join(out, run_name), submitted)
    if row is not None:
        restarts = int(row["RestartCnt"] or 0)
        if row["State"] in ("RUNNING", "COMPLETING", "CONFIGURING"):
            return "running", f"task {task} on {row['NodeList']}" + (f", restart {restarts}" if restarts else "")
        waiting = f"{row['State'].lower()}" + (f": {row['Reason']}" if row["Reason"] not in ("", "None") else "")
        if restarts:
            return "requeued", f"task {task}, {restarts} restart(s), {waiting}"
        return "pending", f"task {task}, {waiting}"
    note = read_state(slurm_dir, str(task))
    if not submitted:
        return "failed", "not finished and not in this submission"
    if note is None:
        return (
            "failed",
            f"task {task} never started (cancelled, the smoke job failed, or a run of an earlier stage did not finish)",
        )
    if note.startswith(("running", "requeued")):  # but SLURM no longer lists it
        return "failed", f"task {task} ended outside the script (killed, or not started again): {note}"
    return "failed", f"task {task}: {note}"


def finished_state(run_dir: str, submitted: bool) -> tuple[str, str]:
    """A finished run: ("collapsed", where) when train.py stopped it as collapsed, else ("done", and
    where it early-stopped, or that it finished before this submission)."""
    ended, where = grid.early_end(run_dir)
    earlier = "" if submitted else "finished before this submission"
    return ("collapsed" if ended == "collapsed" else "done"), ", ".join(filter(None, [where, earlier]))


def read_state(slurm_dir: str, key: str) -> str | None:
    """The state the smoke job or task `key` wrote in slurm/status/, in one line; None if none."""
    state = grid.read_status(os.path.join(slurm_dir, "status", key))
    return None if state is None else grid.described_state(state)


def main(argv: list[str]) -> int:
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    try:
        o = build_parser().parse_args(argv)
        check_options(o)
        return status(o) if o.status else submit(o, o.grid, extra)
    except SlurmError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
