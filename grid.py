"""Grid files: expand them into runs and check every run's flags with train.py's own parser.

Grid syntax (one run per non-comment line; the train.py flags that differ from the defaults):

    # comment
    --model bert --pool mean                   one run
    --model {bert,modernbert} --dropout 0.3    {a,b} expands: two runs
    --pool {cls,mean} --max_len {128,256}      braces multiply: four runs
    --task mlm --run_name pre                  a pretraining stage, and
    --model run:pre --max_train_samples 500    a run that starts from its model, after it

Text after '#' is a comment; quoting follows the shell (shlex), nothing is evaluated.

Used by run_grid.sh:
    python grid.py expand GRID [-- EXTRA ARGS]
        ->  one line per run: LINE_NO <US> RUN_NAME <US> STARTS_FROM <US> ARG <US> ARG ...  (<US> = \\x1f;
            STARTS_FROM: the run whose model it starts from, --model run:NAME, or empty)
        EXTRA ARGS are appended to every run (e.g. -- --epochs 1 for a quick pass).
    python grid.py smoke-skips GRID OUT_DIR [-- EXTRA ARGS]
        ->  one line per run whose smoke run the smoke phase skips: RUN_NAME <US> WHY (finished, or
            passed before: with these settings and this code); exit 2 as for finished
    python grid.py name GRID
        ->  the grid's name: its folder inside --out_dir (refused unless a plain folder name)
    python grid.py finished GRID OUT_DIR [-- EXTRA ARGS]
        ->  the run names finished in OUT_DIR with these settings; exit 2 naming the line and the
            differing settings if a run folder holds a run with other settings
    python grid.py progress GRID_OUT_DIR RUN_NAME...
        ->  per run: step/total, epoch, ETA (from its config.json and metrics.jsonl)
    python grid.py status GRID_OUT_DIR...
        ->  per grid: phase and running runs' progress, or how it ended (from grid.status), and
            for a grid sent to SLURM, its runs' states (as run_grid.sh --slurm --status counts them)
    python grid.py outcome RUN_DIR EXIT_STATUS
        ->  how that start of the run ended: "done", "stopped DETAIL" or "failed DETAIL" (from the
            exit status and the run's outcome.json; DETAIL as the grid shows it)
    python grid.py lock-holders GRID_OUT_DIR
        ->  the live processes holding the grid's lock, e.g. "pid 4242 (run NAME)"; nothing if none
    python grid.py defaults
        ->  the grid file and the --out_dir used when none is given (run_grid.sh, tmux_launch.sh, slurm.py)
"""

import contextlib
import glob
import itertools
import json
import os
import re
import shlex
import signal
import sys

BRACES = re.compile(r"\{([^{}]*,[^{}]*)\}")
SEP = "\x1f"
RESERVED = ("--out_dir", "--output_dir", "--wandb_group")
DEFAULT_GRID = "grids/exp1.grid"
DEFAULT_OUT_ROOT = "runs"  # a grid's runs go to DEFAULT_OUT_ROOT/<grid name>/<run name>/


class GridError(Exception):
    pass


def expand_token(token: str) -> list[str]:
    """'{a,b}' -> ['a', 'b']; 'x{1,2}y' -> ['x1y', 'x2y']; braces in one token multiply."""
    match = BRACES.search(token)
    if not match:
        return [token]
    head, tail = token[: match.start()], token[match.end() :]
    return [head + choice + rest for choice in match.group(1).split(",") for rest in expand_token(tail)]


def expand_line(line: str) -> list[list[str]]:
    tokens = shlex.split(line, comments=True)
    return [list(combo) for combo in itertools.product(*(expand_token(t) for t in tokens))] if tokens else []


def expand_file(path: str) -> list[tuple[int, list[str]]]:
    """(line number, train.py args) for every run of the grid, in file order."""
    runs = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            try:
                runs += [(number, args) for args in expand_line(line)]
            except ValueError as e:  # shlex: unbalanced quotes
                raise GridError(f"{path}:{number}: {e}") from None
    if not runs:
        raise GridError(f"{path}: no runs (every line is empty or a comment)")
    return runs


def resolve(path: str, extra: list[str] = ()) -> list[tuple[int, str, list[str]]]:
    """Expand, append `extra`, and check each run with train.py's parser; (line, run name, args).
    A run may start from the model of a --task mlm run on an earlier line (--model run:NAME)."""
    from config import UserError, model_run, parse_args

    resolved, seen, pretraining = [], {}, set()
    for number, args in expand_file(path):
        for flag in RESERVED:  # run_grid.sh sets these for every run of the grid
            if any(a == flag or a.startswith(flag + "=") for a in args):
                raise GridError(
                    f"{path}:{number}: {flag} is set by run_grid.sh for the whole grid "
                    "(use run_grid.sh --out_dir; the W&B group is the grid's name)"
                )
        args = [*args, *extra]
        try:
            parsed = parse_args(args, on_error=GridError)
        except (GridError, UserError) as e:
            raise GridError(f"{path}:{number}: {e}") from None
        if parsed.run_name in seen:
            raise GridError(f"{path}:{number}: run {parsed.run_name} is already on line {seen[parsed.run_name]}")
        start = model_run(parsed.model)
        if start is not None and start not in pretraining:
            raise GridError(
                f"{path}:{number}: --model run:{start} names no --task mlm run on an earlier line of "
                f"this grid{' (run ' + start + ' is not --task mlm)' if start in seen else ''}; "
                "a run starts from a pretraining run listed before it"
            )
        seen[parsed.run_name] = number
        if parsed.task == "mlm":
            pretraining.add(parsed.run_name)
        resolved.append((number, parsed.run_name, args))
    return resolved


def starts_from(args: list[str]) -> str:
    """The run whose model a run of the grid starts from (--model run:NAME), or ""."""
    from config import model_run, parse_args

    return model_run(parse_args(args).model) or ""


def stages(runs) -> dict[str, int]:
    """{run name: stage}: 1 for a run that starts from no run of the grid, else 1 + its run's stage.
    The stages run in order: locally a run waits for the run it starts from; on SLURM each stage
    is an array that waits for the earlier ones (afterok)."""
    stage = {}
    for _, name, args in runs:  # resolve() put every run after the one it starts from
        start = starts_from(args)
        stage[name] = stage[start] + 1 if start else 1
    return stage


def grid_name(path: str) -> str:
    """The grid's name, from its file name: the folder its runs go to inside --out_dir, so one
    plain folder name (a file named '...grid' would otherwise put them in --out_dir/..)."""
    name = os.path.basename(path).removesuffix(".grid")
    if not re.fullmatch(r"\w[\w.+-]*", name):
        raise GridError(
            f"grid file {path}: its name {name!r} is the grid's folder inside --out_dir, so it must "
            "be a plain folder name (letters, digits, _ . + -, not starting with . or -); rename the file"
        )
    return name


def finished_runs(path: str, out_dir: str, runs) -> list[str]:
    """Names of the runs finished in out_dir with the settings of their grid line. A run folder
    holding a run with other settings is refused, naming the line and the settings: a grid never
    skips it as finished nor starts it; so are the folders of runs trained from an earlier model of
    the run they start from, all named in one line. Only what the line says is compared
    (config.finished); the tokenizer's and the data's hashes and the precision used are known once
    train.py runs, and it checks them against its checkpoint."""
    from config import StartModelChanged, UserError, finished, parse_args

    done, stale = [], []
    for number, name, args in runs:
        remedy = "give the line another --run_name, or move that folder away"
        try:
            if finished(os.path.join(out_dir, name), vars(parse_args(args)), remedy):
                done.append(name)
        except StartModelChanged as e:
            stale.append(f"{name} (line {number}: {e.why})")
        except UserError as e:
            raise GridError(f"{path}:{number}: {e}") from None
    if stale:
        raise GridError(
            f"{path}: {len(stale)} run(s) in {out_dir} were trained from an earlier model of the run they start "
            f"from: {', '.join(stale)}; move their folders away to rerun them from its current model"
        )
    return done


def fresh_note(out_dir: str, runs, done: list[str]) -> str | None:
    """What --fresh does in a grid, where a run given it is finished: nothing. Rerunning a grid's
    command resumes it, so --fresh that redid finished runs would redo them on every relaunch."""
    kept = [name for _, name, args in runs if name in done and "--fresh" in args]
    if not kept:
        return None
    one = len(kept) == 1
    return (
        f"note: --fresh restarts only the runs not finished; the {len(kept)} finished run{'' if one else 's'} "
        f"{'is' if one else 'are'} kept and skipped, not redone (to redo one, move its folder out of {out_dir} first)"
    )


def smoke_passed(out_dir: str, runs, extra: list[str] = ()) -> list[str]:
    """Names of the runs whose smoke run in out_dir/smoke finished with the same settings and the
    same code, after the smoke run of the run they start from, if any, passed too (else it is run
    again, and theirs must start from it): the smoke phase of a rerun skips them."""
    from config import UserError, code_sources, code_version, finished, parse_args

    version, passed = code_version()["sources_sha256"], []
    for _, name, args in runs:
        smoke = parse_args([*args, *extra, "--smoke"])
        folder = os.path.join(out_dir, "smoke", smoke.run_name)
        try:
            if not finished(folder, vars(smoke)):
                continue
            with open(os.path.join(folder, "config.json")) as f:
                saved_version = code_sources(json.load(f).get("code_version"))
        except (UserError, OSError, ValueError):  # other settings, or unreadable: run it again
            continue
        start = starts_from(args)
        if saved_version == version and (not start or start in passed):
            passed.append(name)
    return passed


def smoke_skips(out_dir: str, runs, finished: list[str]) -> dict[str, str]:
    """{run name: why the smoke phase skips its smoke run}, run_grid.sh's and the SLURM smoke job's
    alike: a finished run, unless a run still to do starts from it (that run's smoke run starts
    from this one's smoke run), and a run whose smoke run passed before (smoke_passed)."""
    needed = {starts_from(args) for _, name, args in runs if name not in finished}
    passed = set(smoke_passed(out_dir, runs))
    skips = {}
    for _, name, _ in runs:
        if name in finished and name not in needed:
            skips[name] = "finished"
        elif name in passed:
            skips[name] = "passed before"
    return skips


OUTCOME_FILE = "outcome.json"  # train.py writes it where a signal stopped the run (write_outcome)
EXIT_DIVERGED = 3  # train.py's exit codes: 0 done, 2 a user error, 3 diverged, 128+N stopped by signal N
STOP_SIGNALS = (signal.SIGHUP, signal.SIGINT, signal.SIGTERM)


def outcome(run_dir: str, exit_status: int) -> tuple[str, str]:
    """How a start of the run in run_dir ended: (done | collapsed | stopped | failed, what to show),
    from its exit status, the outcome.json train.py wrote when a signal stopped it (the launchers
    remove an earlier start's first) and results.json's early end (--early_stop, --on_collapse).
    The one place that reads a run's ending: run_grid.sh prints "[KIND] RUN DETAIL (log ...)" and a
    SLURM task its state from it; a new ending is one more case."""
    ended, where = early_end(run_dir)  # results.json is this start's: the launchers start unfinished runs
    if ended == "collapsed":  # exit 4 (torchrun: 1), results.json written
        return "collapsed", where
    if exit_status == 0:
        return "done", where
    recorded = _read_json_dict(os.path.join(run_dir, OUTCOME_FILE))
    if recorded.get("outcome") == "stopped":  # 128+N, or torchrun's 1 after it
        return "stopped", f"checkpointed at step {recorded.get('step', '?')}"
    if exit_status in [128 + s for s in STOP_SIGNALS]:
        return "stopped", f"exit {exit_status} before its first checkpoint"
    if exit_status == EXIT_DIVERGED:
        return "failed", f"diverged, exit {exit_status}"
    return "failed", f"exit {exit_status}"


def early_end(run_dir: str) -> tuple[str | None, str]:
    """How a finished run's training ended before its last step, from its results.json:
    ("collapsed", "at step N"), ("early_stop", "early-stopped at step N"), or (None, "")."""
    results = _read_json_dict(os.path.join(run_dir, "results.json"))
    where = f"at step {results.get('stopped_at_step', '?')}"
    if results.get("stopped_early") == "collapsed":
        return "collapsed", where
    if results.get("stopped_early") == "early_stop":
        return "early_stop", f"early-stopped {where}"
    return None, ""


def _read_json_dict(path: str) -> dict:
    """A JSON object from path; {} when it is missing, unreadable or not an object."""
    with contextlib.suppress(OSError, ValueError):
        with open(path) as f:
            found = json.load(f)
        return found if isinstance(found, dict) else {}
    return {}


def run_progress(run_dir: str) -> str:
    """'step 120/600, epoch 1/3, ETA 4 min' from a run's config.json and its last train line in
    metrics.jsonl; the ETA is for the training steps left, at the last logged speed."""
    try:
        with open(os.path.join(run_dir, "config.json")) as f:
            config = json.load(f)
        total = config["steps_per_epoch"] * config["epochs"]
    except (OSError, ValueError, KeyError, TypeError):
        return "setting up"
    last = None
    with contextlib.suppress(OSError):
        with open(os.path.join(run_dir, "metrics.jsonl")) as f:
            for line in f:
                with contextlib.suppress(ValueError):
                    event = json.loads(line)
                    last = event if event.get("event") == "train" else last
    if last is None:
        return f"step 0/{total}, epoch 1/{config['epochs']}"
    shown = f"step {last['step']}/{total}, epoch {min(last['epoch'] + 1, config['epochs'])}/{config['epochs']}"
    steps_per_s = last.get("samples_per_s", 0) / config.get("effective_batch", config.get("batch_size", 1))
    if steps_per_s > 0:
        minutes = (total - last["step"]) / steps_per_s / 60
        shown += f", ETA {minutes:.0f} min" if minutes >= 1 else ", ETA <1 min"
    return shown


def lock_holders(out_dir: str) -> list[tuple[int, str]]:
    """(pid, what it is) of this host's processes holding out_dir/.grid.lock open: the runner, and
    every process it started, which inherit the lock and keep it after the runner dies (kill -9).
    Read from /proc (Linux); a process is named by the run whose .lock records its pid."""
    holders = _pids_holding(os.path.realpath(os.path.join(out_dir, ".grid.lock")))
    runs = {}
    for lock in [
        *glob.glob(os.path.join(glob.escape(out_dir), "*", ".lock")),
        *glob.glob(os.path.join(glob.escape(out_dir), "smoke", "*", ".lock")),
    ]:
        with contextlib.suppress(OSError, ValueError, IndexError), open(lock) as f:
            runs[int(f.read().split()[1])] = os.path.basename(os.path.dirname(lock))
    return [(pid, f"run {runs[pid]}" if pid in runs else _command_of(pid)) for pid in holders]


def _pids_holding(path: str) -> list[int]:
    try:
        pids = [int(pid) for pid in os.listdir("/proc") if pid.isdigit()]
    except OSError:  # no /proc: not Linux
        return []
    holders = []
    for pid in pids:
        fds = f"/proc/{pid}/fd"
        with contextlib.suppress(OSError):  # gone meanwhile, or another user's
            if any(os.readlink(os.path.join(fds, fd)) == path for fd in os.listdir(fds)):
                holders.append(pid)
    return sorted(holders)


def _command_of(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            words = f.read().decode(errors="replace").split("\0")
    except OSError:
        return "?"
    return " ".join([os.path.basename(words[0]), *words[1:3]]).strip()


def described_holders(out_dir: str) -> str:
    """The lock's holders and what to do, or "" if no live process holds it."""
    holders = lock_holders(out_dir)
    if not holders:
        return ""
    listed = ", ".join(f"pid {pid} ({what})" for pid, what in holders)
    pids = " ".join(str(pid) for pid, _ in holders)
    return (
        f"still running and holding the grid's lock: {listed}; wait for them to end, or stop them "
        f"with kill -TERM {pids} (a run checkpoints first), then rerun the grid to resume"
    )


def read_status(path: str) -> dict | None:
    """A status file, as grid_lib.sh's write_status_file writes the grid runner's grid.status and
    the SLURM jobs' slurm/status/<task | smoke>: {key: value}, with "running" a list (one line
    each); None if there is none."""
    state = {"running": []}
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.rstrip("\n").partition(" ")
                if key == "running":
                    state["running"].append(value)
                elif key:
                    state[key] = value
    except OSError:
        return None
    return state


def described_state(state: dict) -> str:
    """A status file of a SLURM job in one line: how it ended, or what it runs."""
    if state.get("phase") == "ended":
        return state.get("ended", "ended")
    return ", ".join(
        filter(None, ["running" + (f": {', '.join(state['running'])}" if state["running"] else ""), state.get("note")])
    )


def grid_status(out_dir: str) -> str | None:
    """What run_grid.sh wrote in out_dir/grid.status, as lines: the phase and each running run's
    progress, or how the grid ended; None if no grid ran there."""
    state = read_status(os.path.join(out_dir, "grid.status"))
    if state is None:
        return None
    running = state["running"]
    console = os.path.join(out_dir, "grid.log")
    log = console if os.path.exists(console) else os.path.join(out_dir, "logs")
    head = f"{os.path.basename(os.path.normpath(out_dir))}: {state.get('done', '?')}/{state.get('runs', '?')} runs done"
    if state.get("phase") == "ended":
        return f"{head}; ended: {state.get('ended', '?')} (log {log})"
    try:
        os.kill(int(state["pid"]), 0)
    except (KeyError, ValueError, ProcessLookupError):
        died = f"its runner (pid {state.get('pid', '?')}) died in the {state.get('phase')} phase (log {log})"
        orphans = described_holders(out_dir)
        if orphans:  # the runs it started outlive it, and a rerun is refused while they hold the lock
            return f"{head}; {died}; processes it started are {orphans}"
        return f"{head}; not running: {died}; rerun the grid to resume"
    except PermissionError:  # alive, another user's
        pass
    lines = [f"{head}; {state.get('phase')} phase (grid {state.get('grid', '?')}, log {log})"]
    if state.get("phase") == "real":
        lines += [f"  {name}: {run_progress(os.path.join(out_dir, name))}" for name in running]
    return "\n".join(lines)


def statuses(out_dir: str) -> str | None:
    """A grid folder's status lines, for tmux_launch.sh --status: its grid runner's (grid_status),
    and if it was sent to SLURM from here, the summary of run_grid.sh --slurm --status."""
    import slurm

    return "\n".join(filter(None, [grid_status(out_dir), slurm.summary(out_dir)])) or None


def main(argv: list[str]) -> int:
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    if argv[:1] == ["progress"] and len(argv) >= 3:
        print("\n".join(f"{name}: {run_progress(os.path.join(argv[1], name))}" for name in argv[2:]))
        return 0
    if argv == ["defaults"]:
        print(DEFAULT_GRID, DEFAULT_OUT_ROOT)
        return 0
    if argv[:1] == ["status"]:
        print("\n".join(filter(None, map(statuses, argv[1:]))))
        return 0
    if argv[:1] == ["outcome"] and len(argv) == 3 and argv[2].isdigit():
        print(" ".join(filter(None, outcome(argv[1], int(argv[2])))))
        return 0
    if argv[:1] == ["lock-holders"] and len(argv) == 2:
        print(described_holders(argv[1]))
        return 0
    if not (
        len(argv) == 2 and argv[0] in ("expand", "name") or len(argv) == 3 and argv[0] in ("smoke-skips", "finished")
    ):
        print(
            "usage: python grid.py expand GRID [-- EXTRA TRAIN.PY ARGS]\n"
            "       python grid.py smoke-skips GRID OUT_DIR [-- EXTRA TRAIN.PY ARGS]\n"
            "       python grid.py name GRID\n"
            "       python grid.py finished GRID OUT_DIR [-- EXTRA TRAIN.PY ARGS]\n"
            "       python grid.py progress GRID_OUT_DIR RUN_NAME...\n"
            "       python grid.py status GRID_OUT_DIR...\n"
            "       python grid.py outcome RUN_DIR EXIT_STATUS\n"
            "       python grid.py lock-holders GRID_OUT_DIR\n"
            "       python grid.py defaults",
            file=sys.stderr,
        )
        return 2
    try:
        if argv[0] == "name":
            print(grid_name(argv[1]))
            return 0
        runs = resolve(argv[1], extra)
        if argv[0] == "finished":
            done = finished_runs(argv[1], argv[2], runs)
            if note := fresh_note(argv[2], runs, done):
                print(note, file=sys.stderr)  # run_grid.sh reads the names on stdout
            print("\n".join(done))
            return 0
        if argv[0] == "smoke-skips":
            skips = smoke_skips(argv[2], runs, finished_runs(argv[1], argv[2], runs))
            print("\n".join(f"{name}{SEP}{why}" for name, why in skips.items()))
            return 0
    except OSError as e:
        print(f"error: cannot read grid {argv[1]}: {e.strerror}", file=sys.stderr)
        return 2
    except GridError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for number, name, args in runs:
        print(SEP.join([str(number), name, starts_from(args), *args]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
