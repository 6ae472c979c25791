"""The training step: the epoch plan for any data size and world size, the loss divisor of a
short last batch (2 processes = 1 at odd example counts), the step's one host sync (mlm
included), the next step's batches built before that sync, and the masked-LM evaluation sums."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import ROOT, read_events, read_results, run_cli, run_inprocess

import data
import mlm
import train
from train import Hooks

# ----------------------------------------------------------------------------- the epoch plan


@pytest.mark.parametrize("world_size, grad_accum", [(1, 1), (2, 1), (2, 2), (3, 1), (4, 2)])
def test_every_data_size_trains_each_example_once_with_the_same_global_batches_on_any_world_size(
    world_size, grad_accum
):
    batch_size, micro = 24, 24 // (world_size * grad_accum)
    for n in [*range(1, 60), 203]:
        lengths = np.random.default_rng(n).integers(5, 300, size=n)
        for grouped in (False, True):
            global_batches = data.train_batches(lengths, batch_size, 1, 3, grouped)
            plans = [
                data.plan_epoch(lengths, batch_size, 1, 3, rank, world_size, micro, grouped)
                for rank in range(world_size)
            ]
            assert all(len(plan) == math.ceil(n / batch_size) for plan in plans)  # steps per epoch, every rank
            for step, batch in enumerate(global_batches):
                shares = [np.concatenate(list(plan[step]) or [np.zeros(0, int)]) for plan in plans]
                assert (np.concatenate(shares) == batch).all()  # each example on one rank, none repeated
                assert max(map(len, shares)) - min(map(len, shares)) <= 1
                for plan in plans:
                    assert (plan[step].global_batch == batch).all()
                    assert all(1 <= len(mb) <= micro for mb in plan[step])
                    assert plan[step].next_step is (plan[step + 1] if step + 1 < len(plan) else None)
            assert sorted(np.concatenate(global_batches).tolist()) == list(range(n))
            # the global batches are those of one process, whatever the world size
            one = data.plan_epoch(lengths, batch_size, 1, 3, 0, 1, batch_size, grouped)
            assert all((a.global_batch == b).all() for a, b in zip(one, global_batches, strict=True))


def test_a_rank_the_short_last_batch_leaves_empty_gets_no_micro_batch():
    lengths = np.full(17, 10)  # batch 16: the second step holds one example
    plans = [data.plan_epoch(lengths, 16, 0, 0, rank, 2, 8, False) for rank in range(2)]
    assert [len(p[1]) for p in plans] == [1, 0] and len(plans[0][1][0]) == 1
    assert train.step_micro_batches(plans[1][1]) == [plans[1][1].global_batch[:1]]  # run at weight 0


# ----------------------------------------------------------------------------- 2 processes = 1


def trained_losses(run_dir) -> tuple[list, dict]:
    return [e["loss"] for e in read_events(run_dir, "train")], read_results(run_dir)


def training_examples(run_dir) -> int:
    line = next(x for x in (run_dir / "train.log").read_text().splitlines() if "training: " in x)
    return int(line.split("training: ")[1].split()[0])


def assert_two_processes_match_one(args, tmp_path, keys, tol=1e-5):
    assert run_inprocess(*args, "--out_dir", tmp_path / "one", "--run_name", "r") == 0
    two = run_cli(*args, "--out_dir", tmp_path / "two", "--run_name", "r", nproc=2)
    assert two.returncode == 0, two.stderr[-2000:]
    assert training_examples(tmp_path / "two" / "r") % 16  # a short last batch
    (one_loss, one), (two_loss, two) = (trained_losses(tmp_path / d / "r") for d in ("one", "two"))
    np.testing.assert_allclose(two_loss, one_loss, rtol=0, atol=tol)
    for key in keys:
        assert abs(one[key] - two[key]) <= tol, (key, one[key], two[key])
    assert (
        one["train_samples_per_s"] > 0
        and json.loads((tmp_path / "two" / "r" / "config.json").read_text())["world_size"] == 2
    )


COMMON = ["--model", "tiny-bert", "--encoder_dropout", 0, "--precision", "fp32", "--log_every", 1]
COMMON += ["--batch_size", 16, "--wandb", "disabled"]


@pytest.mark.slow
def test_two_processes_match_one_on_a_classification_set_of_161(syn_folder, cache_dir, tmp_path):
    """161 = 10 x 16 + 1: the last step's one example is rank 0's; rank 1 runs a weight-0 example
    (and with --grad_accum 2, ranks take different numbers of micro-batches in one step)."""
    args = [*COMMON, "--data", syn_folder, "--dropout", 0, "--pool", "mean", "--grad_accum", 2, "--epochs", 2]
    args += ["--max_train_samples", 161, "--max_eval_samples", 64]
    assert_two_processes_match_one(args, tmp_path, ["val_loss", "test_loss"])
    assert training_examples(tmp_path / "one" / "r") == 161


@pytest.mark.slow
def test_two_processes_match_one_on_a_regression_set_of_195(tmp_path_factory, cache_dir, tmp_path):
    folder = tmp_path_factory.mktemp("regression")
    rng = np.random.default_rng(0)
    for split, n in (("train", 240), ("test", 40)):
        good = rng.integers(0, 4, n)
        rows = {
            "text": [" ".join(["great"] * g + ["the", "film"]) for g in good],
            "label": good + rng.normal(0, 0.1, n),
        }
        pd.DataFrame(rows).to_csv(folder / f"{split}.csv", index=False)
    args = [*COMMON, "--data", folder, "--task", "regression", "--dropout", 0, "--pool", "mean", "--epochs", 1]
    args += ["--max_train_samples", 195]
    assert_two_processes_match_one(args, tmp_path, ["val_mse", "test_mse"])


@pytest.mark.slow
def test_two_processes_match_one_for_packed_mlm_at_an_odd_count(syn_folder, cache_dir, tmp_path):
    args = [*COMMON, "--data", syn_folder, "--task", "mlm", "--pack", "--max_len", 32, "--epochs", 1]
    args += ["--max_train_samples", 150, "--grad_accum", 2]
    assert_two_processes_match_one(args, tmp_path, ["val_loss", "val_acc"])


# ----------------------------------------------------------------------------- host syncs, batch order


@pytest.mark.slow
@pytest.mark.parametrize("pack", [True, False])
def test_an_mlm_step_on_two_processes_waits_for_the_device_once(pack, syn_folder, cache_dir, tmp_path):
    """tests/sync_probe.py lists what would make the host wait for a GPU during one whole step
    (forward_backward, the optimizer step, counting) on each rank: ours is the figures' tolist.
    A padded batch adds transformers' own check of the attention mask (one per micro-batch);
    --pack batches have no padding and carry no mask."""
    args = [*COMMON, "--data", syn_folder, "--task", "mlm", "--max_train_samples", 96, "--epochs", 1]
    args += ["--grad_accum", 2, "--log_every", 100, "--out_dir", tmp_path, "--run_name", "r"]
    args += ["--pack", "--max_len", 32] if pack else []
    probe = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    done = subprocess.run(
        [*probe, os.path.join(ROOT, "tests", "sync_probe.py"), str(tmp_path / "syncs"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in range(2):
        counted = json.loads((tmp_path / f"syncs.{rank}").read_text())
        theirs = [s for s in counted["syncs"] if " in transformers/" in s]
        assert counted["step"] == 2 and [s for s in counted["syncs"] if s not in theirs] == ["Tensor.tolist"]
        assert all(s.endswith("masking_utils.py:_ignore_bidirectional_mask_sdpa") for s in theirs), theirs
        assert len(theirs) == (0 if pack else 2), theirs


class StepOrder(Hooks):
    def __init__(self, events):
        self.events = events

    def before_step(self, run, state, micro_batches):
        self.events.append(("step", state.step_in_epoch, [mb.tolist() for mb in micro_batches]))


@pytest.mark.slow
@pytest.mark.parametrize("task", ["classification", "mlm"])
def test_the_next_steps_batches_are_built_before_the_steps_host_sync(
    task, syn_folder, cache_dir, tmp_path, monkeypatch
):
    events = []
    real_batch, real_tolist = train.training_batch, torch.Tensor.tolist

    def training_batch(run, indices, epoch):
        events.append(("build", indices.tolist()))
        return real_batch(run, indices, epoch)

    def tolist(tensor):
        events.append(("sync",))
        return real_tolist(tensor)

    monkeypatch.setattr(train, "training_batch", training_batch)
    monkeypatch.setattr(torch.Tensor, "tolist", tolist)
    argv = [*COMMON, "--data", syn_folder, "--task", task, "--max_train_samples", 72, "--grad_accum", 2]
    argv += ["--epochs", 1, "--max_eval_samples", 16, "--out_dir", tmp_path, "--run_name", task]
    assert train.main([str(a) for a in argv], hooks=StepOrder(events)) == 0
    starts = [i for i, e in enumerate(events) if e[0] == "step"]
    assert len(starts) == 5  # 72 = 4 x 16 + 8
    for k, (start, end) in enumerate(zip(starts, [*starts[1:], len(events)], strict=True)):
        step = events[start:end]
        builds = [e[1] for e in step if e[0] == "build"]
        following = events[starts[k + 1]][2] if k + 1 < len(starts) else []
        if k == 0:  # the first step of the run builds its own batches, first
            assert builds[:2] == events[start][2] and step[1][0] == "build"
            builds = builds[2:]
        assert builds == following  # the next step's micro-batches, built once, during this step
        if following:
            first_sync = next(i for i, e in enumerate(step) if e[0] == "sync")
            last_build = max(i for i, e in enumerate(step) if e[0] == "build")
            assert last_build < first_sync  # before the step's one host sync


# ----------------------------------------------------------------------------- masked-LM evaluation sums


def test_masked_lm_eval_sums_do_not_depend_on_how_the_tokens_are_cut_into_batches():
    """The per-token losses, summed in float64: cutting the same tokens into other eval batches
    moves the sums only at float64 rounding (an fp32 sum per batch moved them from the 8th digit)."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6000, 500, generator=gen) * 3
    labels = torch.randint(0, 500, (6000,), generator=gen)
    whole = mlm.MaskedLMOutput(logits, labels).sums()
    for parts in (2, 7, 64):
        cut = sum(
            mlm.MaskedLMOutput(x, y).sums()
            for x, y in zip(logits.tensor_split(parts), labels.tensor_split(parts), strict=True)
        )
        assert cut[1:].tolist() == whole[1:].tolist()  # correct and masked: counts
        assert abs(float(cut[0] - whole[0])) <= 1e-12 * float(whole[0]), parts
