"""No data loss, no silently wrong result: each test reproduces one way a run could lose what was
written or finish with a wrong number and exit 0."""

import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from helpers import ROOT, read_events, read_results, run_cli, run_inprocess, tiny_run, train_command

import checkpoint
import config
import data

# 128 train examples, batch 16: 8 steps per epoch; dropout on (tiny-bert's encoder has 0.1 too)
BASE = tiny_run(max_train_samples=128, epochs=2, dropout=0.1, run_name="r")


def same_numbers(a, b, tol=1e-6):
    ra, rb = read_results(a), read_results(b)
    for key in ("val_acc", "val_loss", "test_acc", "test_loss"):
        assert abs(ra[key] - rb[key]) <= tol, (key, ra[key], rb[key])
    la = [e["loss"] for e in read_events(a, "train")]
    lb = [e["loss"] for e in read_events(b, "train")]
    assert len(la) == len(lb) and max(abs(x - y) for x, y in zip(la, lb, strict=True)) <= tol


@pytest.fixture(scope="module")
def reference(cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("hardening-reference")
    assert run_inprocess(*BASE, "--log_every", 1, "--out_dir", out) == 0
    return out / "r"


# ----------------------------------------------------------------------------- 1. run names


@pytest.mark.slow
@pytest.mark.parametrize("name", [".", "..", "../escape", "/abs", "", "a/b", " x"])
def test_run_name_must_be_one_plain_folder_name_and_fresh_deletes_nothing_outside(name, tmp_path, capsys):
    sibling = tmp_path / "out" / "other-run"
    sibling.mkdir(parents=True)
    (sibling / "results.json").write_text("{}")
    (tmp_path / "keep.txt").write_text("x")
    code = run_inprocess(*BASE, "--out_dir", tmp_path / "out", "--run_name", name, "--fresh")
    assert code == 2 and "must be one plain folder name" in capsys.readouterr().err
    assert (sibling / "results.json").exists() and (tmp_path / "keep.txt").exists()


@pytest.mark.slow
def test_fresh_refuses_a_folder_without_this_toolkits_config(tmp_path, cache_dir, capsys):
    foreign = tmp_path / "r"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("months of work")
    assert run_inprocess(*BASE, "--out_dir", tmp_path, "--fresh") == 2
    assert "no config.json of a run of this toolkit" in capsys.readouterr().err
    assert (foreign / "thesis.tex").exists()


# ----------------------------------------------------------------------------- 2. tokenizer


@pytest.mark.slow
def test_tiny_tokenizer_training_is_deterministic_across_processes(tmp_path):
    code = (
        f"import sys; sys.path.insert(0, {ROOT!r}); import data, model; "
        "model._train_wordpiece(data.make_synthetic()['train']['text'], sys.argv[1])"
    )
    for name in ("a.json", "b.json", "c.json"):  # each process has its own hash seed
        subprocess.run([sys.executable, "-c", code, str(tmp_path / name)], check=True)
    texts = [(tmp_path / n).read_text() for n in ("a.json", "b.json", "c.json")]
    assert texts[0] == texts[1] == texts[2]


@pytest.mark.slow
def test_resume_with_another_tokenizer_is_refused(tmp_path, capsys):
    cache = tmp_path / "cache"
    args = [*BASE, "--out_dir", tmp_path, "--cache_dir", cache, "--save_every", 3]
    killed = run_cli(*args, env={"FTKIT_KILL_AT": "step:5"})
    assert killed.returncode == -signal.SIGKILL
    (vocab_file,) = cache.glob("wordpiece-*.json")
    tok = json.loads(vocab_file.read_text())
    vocab = tok["model"]["vocab"]
    first, second = sorted(vocab, key=vocab.get)[10:12]  # two ordinary tokens swap ids
    vocab[first], vocab[second] = vocab[second], vocab[first]
    vocab_file.write_text(json.dumps(tok))
    for stale in cache.glob("tokens-*"):
        stale.unlink()
    assert run_inprocess(*args) == 2
    err = capsys.readouterr().err
    assert "was made with other settings (tokenizer_sha256" in err and "step_00000003.pt" in err


# ----------------------------------------------------------------------------- 3, 4. fingerprint

# Each operational setting (left out of the fingerprint) with a non-default value: with dropout on,
# the numbers must not change.
OPERATIONAL_VARIANTS = {
    "log_every": ["--log_every", 3],
    "save_every": ["--save_every", 3],
    "keep_checkpoints": ["--keep_checkpoints", 1],
    "eval_batch_size": ["--eval_batch_size", 7],
    "on_nan": ["--on_nan", "skip"],
    "on_collapse": ["--on_collapse", "continue"],
    "resume": ["--resume", "never"],
    "fresh": ["--fresh"],
    "cache_dir": ["--cache_dir", "{tmp}/other-cache"],
    "wandb_group": ["--wandb_group", "g"],
    "wandb_project": ["--wandb_project", "p"],
    "dist_timeout": ["--dist_timeout", 5],
    # the probe before the first step rewinds dropout's generators. Another cut (--micro_batch 8,
    # --grad_accum 2) draws other dropout masks (each pass draws its own), as another world size
    # does; with dropout off it keeps the numbers to fp32 rounding (tests/test_micro_batch.py)
    "micro_batch": ["--micro_batch", "auto"],
    "grad_accum": ["--grad_accum", 1],
}


def test_every_operational_setting_is_tested_below():
    assert set(OPERATIONAL_VARIANTS) | {"out_dir", "run_name", "wandb"} == config.OPERATIONAL


@pytest.mark.slow
@pytest.mark.parametrize("key", list(OPERATIONAL_VARIANTS))
def test_operational_settings_do_not_change_the_numbers(key, reference, tmp_path):
    extra = [str(a).format(tmp=tmp_path) for a in OPERATIONAL_VARIANTS[key]]
    log_every = [] if key == "log_every" else ["--log_every", 1]
    assert run_inprocess(*BASE, *log_every, *extra, "--out_dir", tmp_path) == 0
    if key == "log_every":  # the same steps' losses, every third logged: compare the results only
        ra, rb = read_results(tmp_path / "r"), read_results(reference)
        assert all(abs(ra[k] - rb[k]) <= 1e-6 for k in ("val_loss", "test_loss"))
    elif key == "eval_batch_size":  # other eval batches pad to other widths: the eval sums reorder
        same_numbers(tmp_path / "r", reference, tol=1e-5)  # 1.8e-6 measured on one 2-core CPU
    else:
        same_numbers(tmp_path / "r", reference, tol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("change", [["--padding", "max_len"], ["--compile"]])
def test_padding_and_compile_are_part_of_the_settings(change, tmp_path, cache_dir, capsys):
    """Both change the numbers with dropout on (masks over the padded width; compiled dropout),
    so a resume or an "already finished" with the other value is refused."""
    args = [*BASE, "--out_dir", tmp_path, "--epochs", 1]
    assert run_inprocess(*args) == 0
    assert run_inprocess(*args, *change) == 2
    assert f"holds a run with other settings ({change[0][2:]})" in capsys.readouterr().err


@pytest.mark.slow
def test_the_checkpoints_settings_are_compared_even_without_config_json(tmp_path, cache_dir, capsys):
    args = [*BASE, "--out_dir", tmp_path, "--save_every", 3]
    assert run_cli(*args, "--lr", 3e-3, env={"FTKIT_KILL_AT": "step:5"}).returncode == -signal.SIGKILL
    (tmp_path / "r" / "config.json").unlink()
    assert run_inprocess(*args, "--lr", 1e-4) == 2
    assert "was made with other settings (lr: 0.003 there, 0.0001 now)" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("split", ["validation", "test"])
def test_a_resume_after_a_data_file_changed_is_refused(split, tmp_path, cache_dir, capsys):
    folder = tmp_path / "d"
    folder.mkdir()
    raw = data.make_synthetic(n_train=128, n_test=64)
    raw["validation"] = data.make_synthetic(n_train=64, seed=1)["train"]
    for name, rows in raw.items():
        pd.DataFrame(rows).to_csv(folder / f"{name}.csv", index=False)
    args = [*BASE, "--data", folder, "--out_dir", tmp_path, "--save_every", 3]
    assert run_cli(*args, env={"FTKIT_KILL_AT": "step:5"}).returncode == -signal.SIGKILL
    edited = pd.read_csv(folder / f"{split}.csv")
    edited.loc[0, "text"] = "an edited review"
    edited.to_csv(folder / f"{split}.csv", index=False)
    assert run_inprocess(*args) == 2
    err = capsys.readouterr().err
    key = "val" if split == "validation" else split
    assert "was made with other settings" in err and f"{key}_data_sha256" in err
    assert not (tmp_path / "r" / "results.json").exists()


# ----------------------------------------------------------------------------- 5, 6. silently wrong data


def write_folder(folder, train_rows, test_rows=None, kind="csv"):
    folder.mkdir(exist_ok=True)
    for split, rows in (("train", train_rows), ("test", test_rows)):
        if rows is None:
            continue
        if kind == "csv":
            pd.DataFrame(rows).to_csv(folder / f"{split}.csv", index=False)
        else:
            (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(folder)


GOOD = {"text": ["good movie", "bad movie"] * 20, "label": [1, 0] * 20}


@pytest.mark.slow
@pytest.mark.parametrize("case", ["empty text", "null text", "list text", "unseen label"])
def test_bad_cells_and_labels_are_refused(case, tmp_path, cache_dir, capsys):
    if case == "empty text":
        folder = write_folder(tmp_path / "d", {"text": ["good", "  ", *GOOD["text"][2:]], "label": GOOD["label"]})
        want = "column 'text' of the train split of"
    elif case == "null text":
        folder = write_folder(tmp_path / "d", {"text": ["good", None, *GOOD["text"][2:]], "label": GOOD["label"]})
        want = "data row 2 is"
    elif case == "list text":
        rows = [{"text": ["a", "b"] if i == 3 else "fine", "label": i % 2} for i in range(40)]
        folder = write_folder(tmp_path / "d", rows, kind="jsonl")
        want = "data row 4 is a list, not text"
    else:
        folder = write_folder(tmp_path / "d", GOOD, {"text": ["x", "y", "z"], "label": [0, 1, 2]})
        want = "the test split has label(s) 2 that train does not have"
    assert run_inprocess(*BASE, "--data", folder, "--out_dir", tmp_path / "runs") == 2
    err = capsys.readouterr().err
    assert want in err and "Traceback" not in err


@pytest.mark.slow
def test_labels_differing_only_by_spaces_are_named_in_a_warning(tmp_path, cache_dir, capsys):
    folder = write_folder(tmp_path / "d", {"text": GOOD["text"], "label": ["pos", "neg", "pos ", "neg"] * 10})
    assert run_inprocess(*BASE, "--data", folder, "--epochs", 1, "--out_dir", tmp_path / "runs") == 0
    assert "differ only by surrounding spaces" in capsys.readouterr().out


# ----------------------------------------------------------------------------- 7. metrics.jsonl


@pytest.mark.slow
def test_a_half_written_last_metrics_line_is_dropped_with_a_warning(reference, tmp_path):
    args = [*BASE, "--log_every", 1, "--out_dir", tmp_path, "--save_every", 3]
    assert run_cli(*args, env={"FTKIT_KILL_AT": "step:7"}).returncode == -signal.SIGKILL
    with open(tmp_path / "r" / "metrics.jsonl", "a") as f:
        f.write('{"event": "train", "st')  # a full disk during the append
    rerun = run_cli(*args)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "dropped its unreadable last line" in rerun.stdout
    same_numbers(tmp_path / "r", reference)


# ----------------------------------------------------------------------------- 8. lock


def _contend(path, barrier, results):
    """Take the lock; report "won", "refused" (the user's one-line error naming the holder) or
    anything else that went wrong, which the test must see as a failure."""
    lock = checkpoint.RunLock(path, lambda message: None)
    try:
        lock.acquire()
        results.put("won")
    except config.UserError as e:
        refusal = rf"{re.escape(path)} is in use by process \d+ on \S+; wait for it, or stop it first"
        results.put("refused" if re.fullmatch(refusal, str(e)) else f"wrong message: {e}")
    except Exception as e:  # a crash in the lock is not a refusal
        results.put(f"{type(e).__name__}: {e}")
    barrier.wait()  # hold until both have tried
    lock.release()


def test_two_processes_never_both_take_a_stale_lock(tmp_path):
    context = multiprocessing.get_context("fork")
    for trial in range(25):
        run_dir = tmp_path / str(trial)
        run_dir.mkdir()
        (run_dir / ".lock").write_text("somehost 999999")  # left by a dead process
        barrier, results = context.Barrier(2), context.Queue()
        procs = [context.Process(target=_contend, args=(str(run_dir), barrier, results)) for _ in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
        assert sorted(results.get(timeout=5) for _ in procs) == ["refused", "won"], trial


# ----------------------------------------------------------------------------- 9, 10. torchrun


def _children(pid):
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


def _wait_for(predicate, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def _workers(launcher_pid):
    """torchrun's worker processes (children of its children, or its children)."""
    found = []
    for child in _children(launcher_pid):
        cmdline = open(f"/proc/{child}/cmdline").read()
        found += [child] if "train.py" in cmdline else [w for w in _children(child)]
    return found


LONG = [*BASE, "--max_train_samples", 1024, "--epochs", 3, "--save_every", 4]


@pytest.mark.slow
def test_killing_torchrun_stops_its_workers_and_the_rerun_resumes(tmp_path, cache_dir):
    run_dir = tmp_path / "r"
    launcher = subprocess.Popen(
        train_command([*LONG, "--out_dir", tmp_path], nproc=2),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert _wait_for(lambda: checkpoint.list_checkpoints(str(run_dir / "ckpt")))
    workers = _workers(launcher.pid)
    assert len(workers) == 2
    launcher.kill()  # kill -9: torchrun cannot forward anything
    launcher.wait()
    assert _wait_for(lambda: not any(os.path.exists(f"/proc/{w}") for w in workers), timeout=60), (
        "orphaned workers still running"
    )
    output = launcher.stdout.read()
    assert "launcher" in output and "is gone" in output and "checkpointed at step" in output
    rerun = run_cli(*LONG, "--out_dir", tmp_path, "--max_train_samples", 1024, nproc=2)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resumed from" in rerun.stdout


def _slow_start_command(argv, seconds):
    """torchrun whose workers sleep `seconds` before Python starts train.py (exec: the same pid):
    a launcher killed during the sleep dies before the workers' first line."""
    command = train_command(argv, nproc=2)
    script = command.index(os.path.join(ROOT, "train.py"))
    return [
        *command[:script],
        "--no-python",
        "bash",
        "-c",
        f'sleep {seconds}; exec "$0" "$@"',
        sys.executable,
        *command[script:],
    ]


@pytest.mark.slow
@pytest.mark.parametrize("when", ["before the first line", "importing", "after the rendezvous"])
def test_killing_torchrun_during_start_up_stops_its_workers_within_seconds(tmp_path, cache_dir, when):
    """Killed before any step (the workers not yet started, importing, or in set-up after the
    rendezvous): the workers must not wait out the process group's timeout (60 minutes)."""
    argv = [*LONG, "--out_dir", tmp_path]
    command = _slow_start_command(argv, 3) if when == "before the first line" else train_command(argv, nproc=2)
    launcher = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert _wait_for(lambda: len(_workers(launcher.pid)) == 2)
    if when == "after the rendezvous":
        assert _wait_for(lambda: (tmp_path / "r" / "train.log").exists())
    workers = _workers(launcher.pid)
    launcher.kill()
    launcher.wait()
    # within the seconds of their imports (a loaded CI's included), not the 60-minute rendezvous timeout
    assert _wait_for(lambda: not any(os.path.exists(f"/proc/{w}") for w in workers), timeout=60), (
        "orphaned workers still running"
    )
    output = launcher.stdout.read()
    if when == "before the first line":
        assert output.count("the launcher (torchrun) is gone before this worker started") == 2, output
    assert "Traceback" not in output, output
    assert not checkpoint.list_checkpoints(str(tmp_path / "r" / "ckpt"))  # it was stopped before training


@pytest.mark.slow
def test_sigterm_to_one_worker_stops_both_ranks_cleanly(tmp_path, cache_dir):
    run_dir = tmp_path / "r"
    launcher = subprocess.Popen(
        train_command([*LONG, "--out_dir", tmp_path], nproc=2),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert _wait_for(lambda: checkpoint.list_checkpoints(str(run_dir / "ckpt")))
    rank1 = next(w for w in _workers(launcher.pid) if b"RANK=1" in open(f"/proc/{w}/environ", "rb").read().split(b"\0"))
    os.kill(rank1, signal.SIGTERM)
    output, _ = launcher.communicate(timeout=120)
    assert "AttributeError" not in output and "checkpointed at step" in output
    rerun = run_cli(*LONG, "--out_dir", tmp_path, nproc=2)
    assert rerun.returncode == 0, rerun.stderr[-3000:]


# ----------------------------------------------------------------------------- 11, 12. errors


@pytest.mark.slow
def test_a_truncated_best_weights_file_falls_back_to_the_checkpoint(tmp_path, cache_dir, capsys):
    """Killed during the test evaluation, then the best-weights file damaged: with one epoch the best
    epoch is the last checkpointed one, whose checkpoint holds the same weights."""
    args = [*BASE, "--epochs", 1, "--log_every", 1]
    assert run_inprocess(*args, "--out_dir", tmp_path / "ref") == 0
    killed = run_cli(*args, "--out_dir", tmp_path, env={"FTKIT_KILL_AT": "eval:2"})  # in the test pass
    assert killed.returncode == -signal.SIGKILL
    (best_file,) = (tmp_path / "r").glob("best_step*.pt")
    best_file.write_bytes(best_file.read_bytes()[:100])
    assert run_inprocess(*args, "--out_dir", tmp_path) == 0
    assert "is unreadable" in capsys.readouterr().out
    same_numbers(tmp_path / "r", tmp_path / "ref" / "r")


@pytest.mark.slow
def test_a_full_disk_at_a_checkpoint_is_one_line_and_keeps_what_was_written(tmp_path, cache_dir, capsys, monkeypatch):
    import errno

    import torch

    args = [*BASE, "--out_dir", tmp_path, "--save_every", 3]
    real_save, saves = torch.save, []

    def save_until_full(obj, f, *a, **k):
        saves.append(1)
        if len(saves) == 2:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save_until_full)
    assert run_inprocess(*args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no space left on the device writing" in err[0] and "step_00000006.pt" in err[0]
    ckpts = os.listdir(tmp_path / "r" / "ckpt")
    assert ckpts == ["step_00000003.pt"]  # the earlier checkpoint kept, no temp file left


@pytest.mark.slow
def test_user_errors_under_torchrun_show_the_error_line_as_the_root_cause(tmp_path):
    out = run_cli(*BASE, "--out_dir", tmp_path, "--max_len", 2000, nproc=2)
    assert out.returncode != 0
    assert "error: --max_len 2000 exceeds the model's limit of 512 positions" in out.stderr
    summary = out.stderr[out.stderr.index("Root Cause") :]
    assert "error: --max_len 2000" in summary and "Traceback" not in summary


# ----------------------------------------------------------------------------- 14, 16, 17, 18


@pytest.mark.slow
@pytest.mark.parametrize("point,step", [("eval:1:TERM", 8), ("eval:3:TERM", 16)], ids=["validation", "test"])
def test_a_signal_during_evaluation_stops_the_run_and_the_rerun_finishes_it(point, step, reference, tmp_path):
    args = [*BASE, "--log_every", 1, "--out_dir", tmp_path]
    stopped = run_cli(*args, env={"FTKIT_KILL_AT": point})
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-2000:]
    assert f"checkpointed at step {step} — rerun the same command to resume" in stopped.stdout
    assert not (tmp_path / "r" / "results.json").exists()
    assert run_cli(*args).returncode == 0
    same_numbers(tmp_path / "r", reference)


@pytest.mark.slow
def test_the_resume_hint_after_fresh_or_resume_never_says_how_to_resume(tmp_path, cache_dir):
    args = [*BASE, "--out_dir", tmp_path, "--save_every", 3]
    assert run_cli(*args, "--epochs", 1).returncode == 0
    fresh = run_cli(*args, "--fresh", env={"FTKIT_KILL_AT": "step:4:TERM"})
    assert "rerun the same command without --fresh to resume" in fresh.stdout
    never = run_cli(*args, "--resume", "never", env={"FTKIT_KILL_AT": "step:1:TERM"})  # stops after step 2
    assert never.returncode == 128 + signal.SIGTERM
    line = next(x for x in never.stdout.splitlines() if "checkpointed at step" in x)
    assert "without --resume never to resume" in line
    named = line.rsplit("(", 1)[1].rstrip(")")
    assert os.path.exists(named) and named.endswith("step_00000002.pt")
    # the earlier run's later checkpoints are gone: a plain rerun continues this run, not that one
    assert [os.path.basename(p) for p in checkpoint.list_checkpoints(str(tmp_path / "r" / "ckpt"))] == [
        "step_00000002.pt"
    ]


@pytest.mark.slow
def test_stale_temp_files_in_the_run_folder_are_removed_on_the_next_start(tmp_path, cache_dir):
    args = [*BASE, "--out_dir", tmp_path, "--epochs", 1]
    assert run_inprocess(*args) == 0
    stale = tmp_path / "r" / "best_step8.pt.tmp12345"
    stale.write_bytes(b"x" * 1000)
    assert run_inprocess(*args) == 0  # already finished, but the leftover goes
    assert not stale.exists()
