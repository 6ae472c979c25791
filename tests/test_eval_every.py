"""--eval_every: validation inside the epoch, each validation exactly once whatever kills the run,
the best weights picked among all validations; a checkpoint of older code still resumes."""

import signal

import pytest
import torch
from helpers import read_events, read_results, run_cli, run_inprocess, tiny_run

import checkpoint
import config

# 256 train examples, batch 16: 16 steps per epoch; validations at steps 5, 10, 15, 16 (the epoch's
# end), 20, 25, 30, 32, each of 4 evaluation batches (64 examples, 16 a batch)
RUN = tiny_run(eval_batch_size=16, eval_every=5, save_every=100, log_every=1, run_name="r")
VALIDATIONS = [5, 10, 15, 16, 20, 25, 30, 32]


def validations(run_dir) -> list[dict]:
    return [e for e in read_events(run_dir, "eval") if e["split"] == "val"]


def assert_same_run(run_dir, reference_dir):
    """The same validations (each once, same numbers), train losses and results."""
    got, want = validations(run_dir), validations(reference_dir)
    assert [e["step"] for e in got] == [e["step"] for e in want]
    assert max(abs(a["loss"] - b["loss"]) for a, b in zip(got, want, strict=True)) <= 1e-6
    got_train, want_train = read_events(run_dir, "train"), read_events(reference_dir, "train")
    assert [e["step"] for e in got_train] == [e["step"] for e in want_train]
    assert max(abs(a["loss"] - b["loss"]) for a, b in zip(got_train, want_train, strict=True)) <= 1e-6
    got_results, want_results = read_results(run_dir), read_results(reference_dir)
    for key in ("val_acc", "val_loss", "test_acc", "test_loss", "best_step"):
        assert abs(got_results[key] - want_results[key]) <= 1e-6, key


@pytest.fixture(scope="module")
def reference(cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval-every-reference")
    ran = run_cli(*RUN, "--out_dir", out)
    assert ran.returncode == 0, ran.stderr[-2000:]
    return out / "r"


@pytest.mark.slow
def test_eval_every_validates_inside_the_epoch_and_picks_the_best_among_all(reference):
    val = validations(reference)
    assert [e["step"] for e in val] == VALIDATIONS  # the epoch's end validated once, also at 30 + 2
    assert [e["epoch"] for e in val] == [0, 0, 0, 0, 1, 1, 1, 1]
    best = max(val, key=lambda e: e["acc"])  # the first of the highest: only a rise improves
    assert [e["best"] for e in val] == [e["acc"] > max([0, *(p["acc"] for p in val[:i])]) for i, e in enumerate(val)]
    results = read_results(reference)
    assert results["best_step"] == best["step"] and results["val_acc"] == best["acc"]
    assert results["best_epoch"] == best["epoch"] and results["stopped_early"] is None
    log = (reference / "train.log").read_text()
    assert all(f"checkpoint (validation at step {s}): " in log for s in VALIDATIONS if s % 16)


@pytest.mark.slow
def test_kills_and_a_stop_in_mid_epoch_validations_neither_repeat_nor_skip_one(reference, tmp_path):
    """A SIGTERM inside the step-10 validation checkpoints the step unvalidated: the rerun
    validates it first. A kill -9 inside the step-15 validation resumes from step 10's validated
    checkpoint; a kill at step 17 from the epoch's end. The last rerun must match the run never
    interrupted: every validation once in metrics.jsonl, the same numbers."""
    args = [*RUN, "--out_dir", tmp_path]
    stopped = run_cli(*args, env={"FTKIT_KILL_AT": "eval:6:TERM"})  # the 2nd batch of the 2nd validation
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-2000:]
    assert "checkpointed at step 10" in stopped.stdout
    assert [e["step"] for e in validations(tmp_path / "r")] == [5]
    killed = run_cli(*args, env={"FTKIT_KILL_AT": "eval:6"})  # step 10 validated (4 batches), then 15's 2nd
    assert killed.returncode == -signal.SIGKILL
    assert "step_00000010.pt: epoch 0, step 10/32" in killed.stdout
    assert "eval: split val step 10 " in killed.stdout
    killed = run_cli(*args, env={"FTKIT_KILL_AT": "step:7"})  # steps 11-17 in this process
    assert killed.returncode == -signal.SIGKILL
    assert "step_00000010.pt: epoch 0, step 10/32" in killed.stdout
    final = run_cli(*args)
    assert final.returncode == 0, final.stderr[-2000:]
    assert "step_00000016.pt: epoch 1, step 16/32" in final.stdout
    assert_same_run(tmp_path / "r", reference)


@pytest.mark.slow
def test_a_checkpoint_written_before_eval_every_resumes_with_the_same_numbers(cache_dir, tmp_path):
    """Runs in flight when this code arrives: a checkpoint whose progress has no validation steps
    (one validation per epoch, at its end) resumes and ends as the run never interrupted."""
    args = [*RUN[: RUN.index("--eval_every")], *RUN[RUN.index("--eval_every") + 2 :]]
    assert run_inprocess(*args, "--out_dir", tmp_path / "ref") == 0
    killed = run_cli(*args, "--out_dir", tmp_path, env={"FTKIT_KILL_AT": "step:20"})
    assert killed.returncode == -signal.SIGKILL
    (path,) = checkpoint.list_checkpoints(str(tmp_path / "r" / "ckpt"))[:1]
    saved = torch.load(path, weights_only=True)
    progress = saved["progress"]
    for key in ("last_eval_step", "best_step", "train_loss_since_eval"):
        del progress[key]
    progress["history"] = [
        {k: v for k, v in h.items() if k not in ("step", "epoch", "train_loss", "ranking_z")}
        for h in progress["history"]
    ]
    torch.save(saved, path)
    assert run_inprocess(*args, "--out_dir", tmp_path) == 0
    got, want = read_results(tmp_path / "r"), read_results(tmp_path / "ref" / "r")
    for key in ("val_acc", "val_loss", "test_acc", "test_loss", "best_epoch", "best_step"):
        assert got[key] == pytest.approx(want[key], abs=1e-6), key
    assert [e["step"] for e in validations(tmp_path / "r")] == [16, 32]


def test_eval_every_and_early_stop_are_named_settings_and_change_the_fingerprint():
    args = config.parse_args(["--model", "tiny-bert", "--eval_every", "100", "--early_stop", "3"])
    assert args.run_name == "tiny-bert-cls-eval100-patience3-s42"
    saved = vars(config.parse_args(["--model", "tiny-bert"]))  # a run with neither: as if absent
    assert "eval_every" not in config.run_fingerprint(saved) and "early_stop" not in config.run_fingerprint(saved)
    assert config.differing_settings(saved, vars(args)) == ["early_stop", "eval_every"]
    operational = config.parse_args(["--model", "tiny-bert", "--on_collapse", "continue"])
    assert operational.run_name == "tiny-bert-cls-s42" and config.differing_settings(saved, vars(operational)) == []
