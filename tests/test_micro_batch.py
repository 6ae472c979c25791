"""--micro_batch auto|N and the out-of-memory back-off that keeps the numbers: the probe before the
first step, a step redone at half the micro-batch, evaluation backing off, a resume after a
back-off, and the errors where nothing can back off. CPU torch cannot run out of memory: the
memory cap of tests/faults.py raises torch.OutOfMemoryError above a number of padded positions."""

import numpy as np
import pytest
from faults import FaultHooks, arm_memory_cap
from helpers import read_events, read_results, run_cli, run_inprocess

import config
import data
import train

# --max_len 32: the widest batch is 32 positions a row, so a cap of 128 positions fits 4 rows
RUN = ["--model", "tiny-bert", "--pool", "mean", "--precision", "fp32", "--max_len", 32, "--batch_size", 16]
RUN += ["--max_train_samples", 320, "--max_eval_samples", 64, "--epochs", 2, "--log_every", 1, "--wandb", "disabled"]
DROPOUT_OFF = ["--dropout", 0, "--encoder_dropout", 0]
FITS_4_ROWS = "128"
BY_HAND = ["--micro_batch", 4, "--eval_batch_size", 4]


def run_capped(cap: str | None, *argv, monkeypatch=None) -> int:
    """train.main in this process, under the memory cap `cap` (tests/faults.py's FTKIT_OOM_ABOVE)."""
    hooks = FaultHooks()
    if cap is not None:
        arm_memory_cap(cap, hooks, monkeypatch.setattr)
    return train.main([str(a) for a in argv], hooks=hooks)


def back_offs(run_dir) -> list[tuple]:
    return [(e["step"], e["where"], e["batch"], e["from"], e["to"]) for e in read_events(run_dir, "back_off")]


def train_losses(run_dir) -> np.ndarray:
    return np.array([e["loss"] for e in read_events(run_dir, "train")])


# ----------------------------------------------------------------------------- the flag


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--micro_batch", "0"], "argument --micro_batch: must be auto or a whole number of examples >= 1 (got '0')"),
        (["--micro_batch", "half"], "argument --micro_batch: must be auto or a whole number"),
        (
            ["--micro_batch", "3"],
            "--micro_batch 3 must divide the per-process batch 16 (--batch_size 16 / world size 1)",
        ),
        (["--micro_batch", "32"], "--micro_batch 32 must divide the per-process batch 16"),
        (["--micro_batch", "4", "--grad_accum", "4"], "--grad_accum and --micro_batch both say how to cut"),
        (["--grad_accum", "0"], "--grad_accum must be at least 1"),
    ],
)
def test_a_bad_micro_batch_is_one_error_line(flags, message, syn_folder, cache_dir, tmp_path, capsys):
    code = run_inprocess("--model", "tiny-bert", "--data", syn_folder, "--out_dir", tmp_path, *flags)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not list(tmp_path.iterdir())  # refused before the run folder


def test_the_cut_is_operational_and_grad_accum_is_its_alias():
    """A run may resume with another cut: neither flag is in the run name or the fingerprint."""
    plain = config.parse_args(["--model", "tiny-bert"])
    for flags in (["--micro_batch", "4"], ["--micro_batch", "auto"], ["--grad_accum", "4"]):
        args = config.parse_args(["--model", "tiny-bert", *flags])
        assert args.run_name == plain.run_name
        assert config.run_fingerprint(vars(args)) == config.run_fingerprint(vars(plain))


def test_a_step_cut_again_keeps_its_examples_and_drops_its_built_batches():
    lengths = np.arange(40) % 13 + 3
    plan = data.plan_epoch(lengths, 16, 0, 1, 0, 1, 16, True)
    step = plan[0]
    step.prepared = ["built for the old cut"]
    step.cut(6)
    assert [len(mb) for mb in step] == [6, 6, 4] and step.prepared is None
    assert (np.concatenate(step) == step.global_batch).all()


# ----------------------------------------------------------------------------- the probe


@pytest.mark.parametrize("task", ["classification", "mlm"])
def test_the_probe_backs_off_to_a_size_that_fits_and_changes_no_number(
    task, syn_folder, cache_dir, tmp_path, monkeypatch
):
    """Dropout on: the probe rewinds the generators it drew from, so the run is the hand-set run's,
    to the bit. Training probes 16 -> 8 -> 4 rows, evaluation 64 -> ... -> 4."""
    argv = [*RUN, "--data", syn_folder, "--task", task, "--epochs", 1, "--run_name", "r"]
    assert run_inprocess(*argv, *BY_HAND, "--out_dir", tmp_path / "hand") == 0
    assert (
        run_capped(FITS_4_ROWS, *argv, "--micro_batch", "auto", "--out_dir", tmp_path / "auto", monkeypatch=monkeypatch)
        == 0
    )
    hand, auto = read_results(tmp_path / "hand" / "r"), read_results(tmp_path / "auto" / "r")
    assert (auto["micro_batch"], auto["eval_batch"]) == (hand["micro_batch"], hand["eval_batch"]) == (4, 4)
    probe = [(1, "probe", "train", 16, 8), (1, "probe", "train", 8, 4)]
    probe += [(1, "probe", "eval", size, size // 2) for size in (64, 32, 16, 8)]
    assert back_offs(tmp_path / "auto" / "r") == probe and len(auto["back_offs"]) == 6 and hand["back_offs"] == []
    assert (train_losses(tmp_path / "auto" / "r") == train_losses(tmp_path / "hand" / "r")).all()
    for key in [k for k in hand if k.startswith(("val_", "test_"))]:
        assert auto[key] == hand[key], key
    log = (tmp_path / "auto" / "r" / "train.log").read_text()
    assert "micro-batches: training 4 of each process's 16 per step, evaluation 4 (--micro_batch auto" in log


# ----------------------------------------------------------------------------- back-off inside a step


class StepExamples(FaultHooks):
    """The cap's step count, and each step's examples in order, as the step is planned."""

    def __init__(self):
        super().__init__()
        self.examples = []

    def before_step(self, run, state, micro_batches):
        super().before_step(run, state, micro_batches)
        self.examples.append(np.concatenate(micro_batches).tolist())


@pytest.fixture(scope="module")
def backed_off(syn_folder, cache_dir, tmp_path_factory):
    """The cap from step 4 on: steps 1-3 at 16 rows, step 4 backs off to 4 and is redone, the first
    validation backs off 64 -> 4; and the same run by hand at 4 rows throughout. Dropout off: a
    micro-batch draws its own dropout masks, so with dropout another cut draws other masks (as
    another world size does)."""
    out = tmp_path_factory.mktemp("backed_off")
    argv = [str(a) for a in (*RUN, *DROPOUT_OFF, "--data", syn_folder, "--run_name", "r")]
    runs = {}
    with pytest.MonkeyPatch.context() as monkeypatch:
        runs["auto"] = StepExamples()
        arm_memory_cap(f"{FITS_4_ROWS}:4", runs["auto"], monkeypatch.setattr)
        assert train.main([*argv, "--micro_batch", "auto", "--out_dir", str(out / "auto")], hooks=runs["auto"]) == 0
    runs["hand"] = StepExamples()
    assert train.main([*argv, *map(str, BY_HAND), "--out_dir", str(out / "hand")], hooks=runs["hand"]) == 0
    return out, argv, runs


def test_a_step_out_of_memory_is_redone_at_half_the_micro_batch_with_the_same_examples(backed_off):
    out, _, runs = backed_off
    auto, hand = read_results(out / "auto" / "r"), read_results(out / "hand" / "r")
    assert back_offs(out / "auto" / "r") == [
        (4, "step", "train", 16, 8),
        (4, "step", "train", 8, 4),
        *[(20, "val", "eval", size, size // 2) for size in (64, 32, 16, 8)],
    ]
    assert auto["back_offs"] == [
        {"step": s, "where": w, "batch": b, "from": f, "to": t} for s, w, b, f, t in back_offs(out / "auto" / "r")
    ]
    assert runs["auto"].examples == runs["hand"].examples  # every step's examples, in order
    assert [e["step"] for e in read_events(out / "auto" / "r", "train")] == list(range(1, 41))  # step 4 once
    # Steps 1-3 summed 16 rows' gradients at once where the hand-set run summed 4 x 4: the same
    # terms in another order, so fp32 rounding (~1e-7 relative), which Adam carries along. Measured:
    # 1.1e-7 relative in the train losses, 1e-8 in val/test loss. Another example in a step, or
    # another divisor, moves the losses by 1e-2.
    np.testing.assert_allclose(train_losses(out / "auto" / "r"), train_losses(out / "hand" / "r"), rtol=1e-5)
    for key in ("val_loss", "test_loss"):
        assert abs(auto[key] - hand[key]) <= 1e-5, key
    assert auto["val_acc"] == hand["val_acc"] and auto["test_acc"] == hand["test_acc"]


@pytest.mark.slow
def test_a_resume_after_a_back_off_is_exact(backed_off):
    """Killed at step 7 (checkpoint at 5, after the back-off at step 4) and rerun under the same
    cap: the resumed run cuts as the checkpoint says and ends with the uninterrupted run's numbers."""
    out, argv, _ = backed_off
    args = [*argv, "--micro_batch", "auto", "--save_every", 5, "--out_dir", out / "killed"]
    cap = {"FTKIT_OOM_ABOVE": f"{FITS_4_ROWS}:4"}
    killed = run_cli(*args, env={**cap, "FTKIT_KILL_AT": "step:7"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    resumed = run_cli(*args, env=cap)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout and "step 5/40" in resumed.stdout
    got, want = read_results(out / "killed" / "r"), read_results(out / "auto" / "r")
    for key in ("val_loss", "val_acc", "test_loss", "test_acc", "micro_batch", "eval_batch", "back_offs"):
        assert got[key] == want[key], key
    assert (train_losses(out / "killed" / "r") == train_losses(out / "auto" / "r")).all()
    assert back_offs(out / "killed" / "r") == back_offs(out / "auto" / "r")  # each logged once


# ----------------------------------------------------------------------------- nothing left to halve


def test_out_of_memory_at_one_example_is_one_error_line(syn_folder, cache_dir, tmp_path, monkeypatch, capsys):
    argv = [*RUN, "--data", syn_folder, "--micro_batch", "auto", "--out_dir", tmp_path, "--run_name", "r"]
    assert run_capped("8", *argv, monkeypatch=monkeypatch) == 2  # no room for one row
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: the device ran out of memory with a training micro-batch of one example; lower --max_len, "
        "or use a device with more memory"
    ]
    assert back_offs(tmp_path / "r") == [(1, "probe", "train", size, size // 2) for size in (16, 8, 4, 2)]


def test_a_fixed_micro_batch_out_of_memory_stops_and_a_smaller_one_resumes(
    syn_folder, cache_dir, tmp_path, monkeypatch, capsys
):
    """--micro_batch 8 does not back off: one error line naming the size to rerun with; the
    checkpoint of step 2 is kept, and the rerun with --micro_batch 4 continues from it."""
    argv = [*RUN, *DROPOUT_OFF, "--data", syn_folder, "--save_every", 2, "--out_dir", tmp_path, "--run_name", "r"]
    assert run_capped(f"{FITS_4_ROWS}:3", *argv, "--micro_batch", 8, monkeypatch=monkeypatch) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: the device ran out of memory with a training micro-batch of 8 examples (--micro_batch 8); "
        "rerun with --micro_batch auto, or --micro_batch 4 (a rerun resumes from the last checkpoint)"
    ]
    monkeypatch.undo()
    assert run_inprocess(*argv, "--micro_batch", 4) == 0
    log = (tmp_path / "r" / "train.log").read_text()
    assert "resumed from" in log and "epoch 0, step 2/40" in log
    assert read_results(tmp_path / "r")["micro_batch"] == 4


# ----------------------------------------------------------------------------- two processes


@pytest.mark.slow
def test_when_one_rank_runs_out_both_back_off_and_match_the_hand_set_run(syn_folder, cache_dir, tmp_path):
    """Rank 1 alone runs out at step 4, in the forward pass of its step's last (only) micro-batch:
    it takes part in DDP's gradient all-reduce with one example at weight 0, the step's figures
    tell rank 0, and both redo the step at 4 rows."""
    argv = [*RUN, *DROPOUT_OFF, "--data", syn_folder, "--max_train_samples", 161, "--run_name", "r"]
    hand = run_cli(*argv, "--micro_batch", 4, "--out_dir", tmp_path / "hand", nproc=2)
    assert hand.returncode == 0, hand.stderr[-2000:]
    auto = run_cli(
        *argv, "--micro_batch", "auto", "--out_dir", tmp_path / "auto", nproc=2, env={"FTKIT_OOM_ABOVE": "128:4:1"}
    )
    assert auto.returncode == 0, auto.stderr[-2000:]
    assert back_offs(tmp_path / "auto" / "r")[:1] == [(4, "step", "train", 8, 4)]
    got, want = read_results(tmp_path / "auto" / "r"), read_results(tmp_path / "hand" / "r")
    assert got["micro_batch"] == want["micro_batch"] == 4
    np.testing.assert_allclose(train_losses(tmp_path / "auto" / "r"), train_losses(tmp_path / "hand" / "r"), rtol=1e-5)
    for key in ("val_loss", "test_loss"):  # the tolerance of the one-process test
        assert abs(got[key] - want[key]) <= 1e-5, key


@pytest.mark.slow
def test_out_of_memory_in_the_synced_backward_is_one_error_line_not_a_hang(syn_folder, cache_dir, tmp_path):
    """There DDP's gradient all-reduce has begun on rank 0: rank 1 cannot back off, says so in one
    line (torchrun's summary shows it as the root cause) and exits; torchrun then stops rank 0,
    which waits in that all-reduce (on gloo it fails there first, the peer gone)."""
    argv = [*RUN, "--data", syn_folder, "--micro_batch", "auto", "--out_dir", tmp_path, "--run_name", "r"]
    done = run_cli(*argv, nproc=2, env={"FTKIT_OOM_ABOVE": "128:4:1:backward"}, timeout=240)
    assert done.returncode != 0
    line = (
        "error: rank 1 ran out of device memory in the backward pass of its step's last micro-batch (8 examples), "
        "after DDP's gradient all-reduce had begun on the other ranks; that cannot be undone. Rerun with "
        "--micro_batch 4: it resumes from the last checkpoint"
    )
    assert [x for x in done.stderr.splitlines() if x.startswith("error: ")] == [line], done.stderr[-3000:]
    assert f"traceback : {line}" in done.stderr  # torchrun's root cause
