"""Edges of a run and of the model folders it starts from: a metric that is NaN at every epoch,
model folders (run:NAME or a path: one default lr, truncated weights, file modes, a deleted
folder, the smoke-run rule), mean pooling in 16-bit autocast, and a set-up failure on one node."""

import math
import os

import numpy as np
import pandas as pd
import pytest
from helpers import read_results, run_inprocess

FILLER = ["the", "movie", "was", "plot", "actor", "scene", "and", "a", "it", "story"]


@pytest.fixture(scope="module")
def constant_val_folder(tmp_path_factory):
    """A regression folder whose validation targets are all equal: Pearson is NaN at every epoch."""
    folder = tmp_path_factory.mktemp("constant-val")
    rng = np.random.default_rng(0)
    for split, n in (("train", 64), ("validation", 16), ("test", 32)):
        labels = np.ones(n) if split == "validation" else rng.normal(size=n)
        texts = [" ".join(rng.choice(FILLER, 8)) for _ in range(n)]
        pd.DataFrame({"text": texts, "label": labels}).to_csv(folder / f"{split}.csv", index=False)
    return str(folder)


# ----------------------------------------------------------------------------- a NaN metric


@pytest.mark.slow
def test_a_metric_nan_at_every_epoch_tests_the_last_weights_and_flags_the_run(constant_val_folder, cache_dir, tmp_path):
    args = ["--model", "tiny-bert", "--task", "regression", "--data", constant_val_folder, "--epochs", 2]
    args += ["--wandb", "disabled", "--out_dir", tmp_path, "--run_name", "r"]
    assert run_inprocess(*args) == 0
    run_dir = tmp_path / "r"
    results = read_results(run_dir)
    assert results["best_epoch"] is None and results["val_pearson"] is None  # NaN: JSON has none
    assert results["not_finite"]["val_pearson"] == "nan"
    assert results["collapsed"] is True and "validation targets are all equal" in results["collapsed_reason"]
    assert math.isfinite(results["test_mse"])
    first = np.load(run_dir / "test_predictions.npz")["predictions"]

    # a run that stopped before its results (the crash this fixes) resumes and tests the same last weights
    os.remove(run_dir / "results.json")
    assert run_inprocess(*args) == 0
    assert read_results(run_dir)["collapsed"] is True
    assert np.array_equal(np.load(run_dir / "test_predictions.npz")["predictions"], first)


# ----------------------------------------------------------------------------- model folders


@pytest.fixture(scope="module")
def pretrained_run(cache_dir, tmp_path_factory):
    """A finished --task mlm run of tiny-bert (default lr 1e-3): RUN_DIR/model is its model folder."""
    out = tmp_path_factory.mktemp("pretrained")
    args = ["--task", "mlm", "--model", "tiny-bert", "--data", "synthetic", "--max_train_samples", 64]
    args += ["--max_eval_samples", 16, "--epochs", 1, "--wandb", "disabled", "--out_dir", out, "--run_name", "pre"]
    assert run_inprocess(*args) == 0
    return out / "pre"


def default_lr(*argv) -> float:
    import train

    return train.parse_args([str(a) for a in argv]).lr


@pytest.mark.slow
def test_a_run_model_folder_has_one_default_lr_whichever_way_it_is_named(pretrained_run, tmp_path):
    import shutil

    import model as models

    by_run = default_lr("--model", "run:pre", "--out_dir", pretrained_run.parent)
    assert by_run == default_lr("--model", pretrained_run / "model") == 1e-3  # tiny-bert's, not 5e-5
    copied = shutil.copytree(pretrained_run / "model", tmp_path / "elsewhere")  # the folder carries it
    assert default_lr("--model", copied) == 1e-3
    # a folder written before the file existed: its run's config.json, whichever way it is named
    os.remove(pretrained_run / "model" / models.FINE_TUNING_FILE)
    try:
        assert default_lr("--model", "run:pre", "--out_dir", pretrained_run.parent) == 1e-3
        assert default_lr("--model", pretrained_run / "model") == 1e-3
    finally:
        shutil.copy(copied / models.FINE_TUNING_FILE, pretrained_run / "model")
    assert default_lr("--model", "tiny-bert") == 1e-3 and default_lr("--model", "bert") == 5e-5


@pytest.mark.slow
def test_every_file_of_the_model_folder_has_the_mode_of_the_other_outputs(pretrained_run):
    def mode(path):
        return oct(os.stat(path).st_mode & 0o777)

    expected = mode(pretrained_run / "results.json")  # 0o644 under the usual umask 022
    folder = pretrained_run / "model"
    modes = {name: mode(folder / name) for name in os.listdir(folder)}
    assert "model.safetensors" in modes and modes == dict.fromkeys(modes, expected)


@pytest.mark.slow
@pytest.mark.parametrize("spelling", ["run:NAME", "folder"])
def test_a_truncated_weights_file_in_a_model_folder_is_one_line_naming_it(spelling, pretrained_run, tmp_path, capsys):
    import shutil

    shutil.copytree(pretrained_run, tmp_path / "pre")
    weights = tmp_path / "pre" / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:50_000])  # a copy cut short
    model = "run:pre" if spelling == "run:NAME" else tmp_path / "pre" / "model"
    code = run_inprocess("--model", model, "--data", "synthetic", "--out_dir", tmp_path, "--wandb", "disabled")
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    assert f"{weights} is cut short (50,000 of " in err
    assert not (tmp_path / "pre-cls-synthetic-s42").exists()  # refused before the run folder


def finished_run(out_dir, name: str, task: str):
    """A run folder as a finished run of `task` leaves it, without its model folder."""
    (out_dir / name).mkdir()
    (out_dir / name / "results.json").write_text(f'{{"task": "{task}"}}')
    return out_dir / name


def test_a_run_model_whose_model_folder_was_deleted_says_the_folder_is_missing(tmp_path):
    import config

    args = config.parse_args(["--model", "run:pre", "--out_dir", str(tmp_path)])
    run_dir = finished_run(tmp_path, "pre", "mlm")
    problem = config.model_run_unfinished(args)
    assert f"the model folder of run pre, {run_dir / 'model'}, is missing" in problem and "only" not in problem
    finished_run(tmp_path, "cls", "classification")
    problem = config.model_run_unfinished(config.parse_args(["--model", "run:cls", "--out_dir", str(tmp_path)]))
    assert "run cls is a classification run, which writes no model folder; only --task mlm runs do" in problem
    (run_dir / "model").mkdir()
    assert f"{run_dir / 'model'} has no config.json" in config.model_run_unfinished(args)


def test_a_smoke_run_from_a_run_model_explains_that_it_starts_from_the_smoke_run(tmp_path):
    import config

    finished_run(tmp_path, "pre", "mlm")  # the real run finished; its smoke run never ran
    smoke = config.parse_args(["--model", "run:pre", "--out_dir", str(tmp_path), "--smoke"])
    problem = config.model_run_unfinished(smoke)
    assert "--smoke starts from the smoke run of pre, pre-smoke" in problem
    assert f"has not finished (no results.json in {tmp_path / 'pre-smoke'})" in problem
    assert "run pre's command with --smoke first" in problem


# ----------------------------------------------------------------------------- mean pooling


def fixed_encoder(hidden):
    """An encoder whose last hidden states are `hidden`, as they come out of a 16-bit autocast."""
    import types

    import torch

    class Fixed(torch.nn.Module):
        config = types.SimpleNamespace(hidden_size=hidden.shape[-1])

        def forward(self, **inputs):
            return types.SimpleNamespace(last_hidden_state=hidden)

    return Fixed()


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_mean_pooling_sums_and_divides_in_fp32(dtype):
    """bf16 rounds a count of 301 real tokens to 300 (and loses bits in the sum); fp16 overflows
    a sum of 301 values of 300 (90,300 > 65,504) to inf."""
    import torch

    import model as models

    torch.manual_seed(0)
    hidden = (300 + torch.randn(2, 512, 8)).to(getattr(torch, dtype))
    mask = torch.zeros(2, 512, dtype=torch.long)
    mask[0, :301], mask[1, :77] = 1, 1
    pooler = models.Classifier(fixed_encoder(hidden), 8, "mean", 0.0)
    pooler.head = torch.nn.Identity()
    pooled = pooler(input_ids=mask, attention_mask=mask)
    exact = torch.stack([hidden[0, :301].double().mean(0), hidden[1, :77].double().mean(0)])
    torch.testing.assert_close(pooled.double(), exact, rtol=1e-6, atol=0)


# ----------------------------------------------------------------------------- a failing node


@pytest.mark.slow
def test_a_set_up_failure_on_one_node_stops_every_rank_and_prints_its_error(syn_folder, cache_dir, tmp_path):
    """Two processes, each its node's local rank 0 (two nodes of one GPU): node 1's data lacks the
    label column, so its data load (node_main_first) fails while node 0's succeeds. Node 1 prints
    its error; node 0 says which rank failed; neither waits for a collective (--dist_timeout 3
    minutes, the test's limit 90 s)."""
    import socket
    import subprocess

    from helpers import train_command

    bad = tmp_path / "bad"
    bad.mkdir()
    for split in ("train", "test"):
        pd.DataFrame({"text": ["a good film", "a bad film"] * 8, "other": [0, 1] * 8}).to_csv(
            bad / f"{split}.csv", index=False
        )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    common = ["--model", "tiny-bert", "--max_train_samples", 64, "--max_eval_samples", 32, "--epochs", 1]
    common += ["--wandb", "disabled", "--out_dir", tmp_path / "runs", "--run_name", "r", "--dist_timeout", 3]
    env = dict(os.environ, WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    ranks = [
        subprocess.Popen(
            train_command([*common, "--data", data]),
            env=dict(env, RANK=str(rank)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank, data in enumerate([syn_folder, bad])
    ]
    try:
        outputs = [rank.communicate(timeout=90) for rank in ranks]
    finally:
        for rank in ranks:
            rank.kill()
    codes = [rank.returncode for rank in ranks]
    assert codes == [2, 2], outputs
    (node0_err, node1_err) = [err for _, err in outputs]
    assert node1_err == "error: column(s) label not found in the data; columns are: text, other\n", node1_err
    assert node0_err.startswith("error: rank 1 failed") and node0_err.count("\n") == 1, node0_err
