"""End-to-end runs of the training loop on the generated task (CPU, offline)."""

import json
import os

import numpy as np
import pytest
import torch
from helpers import read_events, read_results, run_cli, run_inprocess

RESULT_FIELDS = {
    "val_acc",
    "val_loss",
    "test_acc",
    "test_loss",
    "test_f1",
    "test_ece",
    "best_epoch",
    "train_samples_per_s",
    "train_tokens_per_s",
    "train_padding_share",
    "train_tflops_per_s",
    "eval_samples_per_s",
    "wall_s",
    "collapsed",
}


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny-bert", "tiny-modernbert"])
@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_tiny_models_learn_the_generated_task(model, pool, syn_folder, cache_dir, tmp_path):
    code = run_inprocess(
        "--model",
        model,
        "--pool",
        pool,
        "--data",
        syn_folder,
        "--epochs",
        3,
        "--wandb",
        "disabled",
        "--out_dir",
        tmp_path,
    )
    assert code == 0
    run_dir = tmp_path / f"{model}-{pool}-{os.path.basename(syn_folder)}-s42"
    results = read_results(run_dir)
    assert results["test_acc"] >= 0.9
    assert RESULT_FIELDS <= set(results)
    assert results["collapsed"] is False

    config = json.loads((run_dir / "config.json").read_text())
    assert config["lr"] == 1e-3 and config["world_size"] == 1 and config["per_process_batch"] == 16
    assert config["label_names"] == ["0", "1"] and "torch" in config["env"]
    evals = read_events(run_dir, "eval")
    assert [e["epoch"] for e in evals if e["split"] == "val"] == [0, 1, 2]
    assert read_events(run_dir, "train")[-1]["step"] == 3 * config["steps_per_epoch"]
    preds = np.load(run_dir / "test_predictions.npz")
    assert preds["probs"].shape == (500, 2) and len(preds["labels"]) == len(preds["n_tokens"]) == 500
    assert np.isclose((preds["probs"].argmax(1) == preds["labels"]).mean(), results["test_acc"])
    log = (run_dir / "train.log").read_text()
    assert log.index("environment:") < log.index("config:") < log.index("train:")


SAME_RUN = [
    "--model",
    "tiny-bert",
    "--pool",
    "mean",
    "--dropout",
    0,
    "--encoder_dropout",
    0,
    "--max_train_samples",
    320,
    "--max_eval_samples",
    101,
    "--epochs",
    1,
    "--log_every",
    1,
    "--wandb",
    "disabled",
    "--run_name",
    "r",
]


@pytest.mark.slow
def test_two_process_torchrun_matches_one_process(syn_folder, cache_dir, tmp_path):
    """Same global batch (16 = 2 x 8 vs 1 x 16), dropout off: the loss curves agree to float
    reduction-order noise, and every eval example is counted once on an uneven split (101)."""
    assert run_inprocess(*SAME_RUN, "--data", syn_folder, "--out_dir", tmp_path / "one") == 0
    two = run_cli(*SAME_RUN, "--data", syn_folder, "--out_dir", tmp_path / "two", nproc=2)
    assert two.returncode == 0, two.stderr[-2000:]
    one_loss = [e["loss"] for e in read_events(tmp_path / "one" / "r", "train")]
    two_loss = [e["loss"] for e in read_events(tmp_path / "two" / "r", "train")]
    assert len(one_loss) == len(two_loss) == 20
    np.testing.assert_allclose(two_loss, one_loss, rtol=1e-3, atol=1e-4)
    config = json.loads((tmp_path / "two" / "r" / "config.json").read_text())
    assert config["world_size"] == 2 and config["per_process_batch"] == 8
    one, two = read_results(tmp_path / "one" / "r"), read_results(tmp_path / "two" / "r")
    assert abs(one["test_loss"] - two["test_loss"]) < 1e-3
    assert len(np.load(tmp_path / "two" / "r" / "test_predictions.npz")["labels"]) == 101


@pytest.mark.slow
def test_smoke_mode_uses_a_small_subset_and_its_own_name(syn_folder, cache_dir, tmp_path):
    assert run_inprocess("--model", "tiny-modernbert", "--data", syn_folder, "--smoke", "--out_dir", tmp_path) == 0
    (run_dir,) = tmp_path.iterdir()
    assert run_dir.name.endswith("-smoke")
    config = json.loads((run_dir / "config.json").read_text())
    assert config["epochs"] == 1 and config["max_train_samples"] == 64 and config["wandb"] == "disabled"
    assert len(np.load(run_dir / "test_predictions.npz")["labels"]) == 64


def test_run_name_lists_only_settings_that_differ(tmp_path):
    import train

    args = train.parse_args(["--model", "bert", "--batch_size", "32", "--weight_decay", "0.01", "--clip", "1.0"])
    assert args.run_name == "bert-cls-bs32-wd0.01-clip1-s42"
    assert train.parse_args(["--model", "modernbert", "--pool", "mean"]).run_name == "modernbert-mean-s42"
    assert train.parse_args([]).lr == 5e-5
    # padding and compile change the numbers with dropout on (tests/test_hardening.py): named too
    assert train.parse_args(["--no-group_by_length", "--compile"]).run_name == "bert-cls-nogroup-compile-s42"
    assert train.parse_args(["--padding", "max_len"]).run_name == "bert-cls-padmax_len-s42"


@pytest.mark.slow
def test_grad_accumulation_matches_a_full_batch(syn_folder, cache_dir, tmp_path):
    common = [
        "--model",
        "tiny-bert",
        "--dropout",
        0,
        "--encoder_dropout",
        0,
        "--max_train_samples",
        160,
        "--max_eval_samples",
        50,
        "--epochs",
        1,
        "--log_every",
        1,
        "--wandb",
        "disabled",
        "--data",
        syn_folder,
    ]
    assert run_inprocess(*common, "--out_dir", tmp_path / "a", "--run_name", "r") == 0
    assert run_inprocess(*common, "--grad_accum", 4, "--out_dir", tmp_path / "b", "--run_name", "r") == 0
    a = [e["loss"] for e in read_events(tmp_path / "a" / "r", "train")]
    b = [e["loss"] for e in read_events(tmp_path / "b" / "r", "train")]
    # 4 summed micro-batch gradients differ from one batch's in the last bits; Adam turns that into
    # a relative loss difference of up to 3.4e-4 after 10 steps on one 2-core CPU (another passed
    # at 1e-4). Other examples in a step would move the losses by 1e-2 and more.
    np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-5)


@pytest.mark.slow
def test_padding_and_length_grouping_change_speed_not_results(syn_folder, cache_dir, tmp_path):
    """With dropout OFF, padding to max_len or to the longest in the batch computes the same losses:
    the attention mask and the mean pooling hide the padding. (With dropout on they differ, since
    the masks are drawn over the padded width: --padding is therefore a setting of the run, see
    tests/test_hardening.py.) Grouping by length changes the order (so the losses), and cuts the
    padding."""
    runs = {
        "max_len": ["--no-group_by_length", "--padding", "max_len"],
        "longest": ["--no-group_by_length"],
        "grouped": [],
    }
    for name, extra in runs.items():
        assert run_inprocess(*SAME_RUN, *extra, "--data", syn_folder, "--out_dir", tmp_path / name) == 0
    loss = {name: [e["loss"] for e in read_events(tmp_path / name / "r", "train")] for name in runs}
    # other padding widths sum in another order: Adam turns the last-bit differences into up to
    # 2.1e-4 relative after 20 steps on one 2-core CPU (see the grad_accum test)
    np.testing.assert_allclose(loss["longest"], loss["max_len"], rtol=1e-3, atol=1e-5)
    results = {name: read_results(tmp_path / name / "r") for name in runs}
    assert abs(results["longest"]["test_loss"] - results["max_len"]["test_loss"]) < 1e-4  # 2.4e-5 measured
    share = {name: r["train_padding_share"] for name, r in results.items()}
    assert (
        share["max_len"] > 0.4 and share["grouped"] < 0.1 and share["grouped"] < share["longest"] / 2 < share["max_len"]
    )


def test_precision_auto_picks_bf16_only_where_the_cpu_has_fast_kernels(monkeypatch):
    import train
    import utils

    cpu, warnings = torch.device("cpu"), []
    monkeypatch.setattr(utils, "cpu_has_native_bf16", lambda: True)
    assert train.resolve_precision("auto", cpu, warnings.append) == "bf16" and not warnings
    monkeypatch.setattr(utils, "cpu_has_native_bf16", lambda: False)
    assert train.resolve_precision("auto", cpu, warnings.append) == "fp32" and not warnings
    assert train.resolve_precision("bf16", cpu, warnings.append) == "bf16"
    assert len(warnings) == 1 and "slower" in warnings[0]
