"""CUDA paths of every task: NCCL DDP under torchrun, bf16 / fp16 (loss scaling) / fp32,
torch.compile, masked-LM pretraining in bf16 and fp16 with its model folder written from CUDA
weights and loaded back, regression, sentence pairs, gradient accumulation, a kill and resume.
Tiny models, seconds each, every test independent of the others. Skipped without a GPU;
bench/gpu_check.sh runs them on a lent one with pytest -n 4, where each process starts with two
consecutive tests: the order below spreads the longest (several runs each) over the four."""

import json

import numpy as np
import pytest
import torch
from helpers import read_events, read_results, run_cli

import checkpoint

pytestmark = [pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"), pytest.mark.slow]

COMMON = ["--model", "tiny-bert", "--data", "synthetic", "--epochs", 2, "--wandb", "disabled", "--log_every", 5]
NPROC = 2 if torch.cuda.device_count() > 1 else 1  # torchrun sets up NCCL and DDP even for one process


def torchrun(*argv, env: dict | None = None, check: bool = True):
    """train.py under torchrun, to completion; with check, it must succeed."""
    done = run_cli(*argv, nproc=NPROC, torchrun=True, env=env)
    assert done.returncode == 0 or not check, done.stderr[-3000:]
    return done


def config_of(run_dir) -> dict:
    return json.loads((run_dir / "config.json").read_text())


def test_kill_then_rerun_resumes_from_the_cuda_checkpoint_and_matches_an_uninterrupted_run(cache_dir, tmp_path):
    """fp16 under torchrun: the checkpoint holds CUDA tensors, the loss scale and every rank's
    CUDA RNG (dropout on); killed mid-epoch, the rerun resumes from it and ends where a run that
    was never killed ends."""
    args = [
        *COMMON,
        *("--max_train_samples", 256, "--max_eval_samples", 64, "--batch_size", 16, "--precision", "fp16"),
        *("--save_every", 5, "--log_every", 1, "--run_name", "r"),
    ]
    torchrun(*args, "--out_dir", tmp_path / "reference")
    killed = torchrun(*args, "--out_dir", tmp_path / "killed", env={"FTKIT_KILL_AT": "step:7"}, check=False)
    assert killed.returncode != 0 and not (tmp_path / "killed" / "r" / "results.json").exists()
    resumed = torchrun(*args, "--out_dir", tmp_path / "killed")
    assert "resumed from" in resumed.stdout and "step_00000005.pt" in resumed.stdout, resumed.stdout[-2000:]
    got, want = read_results(tmp_path / "killed" / "r"), read_results(tmp_path / "reference" / "r")
    for key in ("val_acc", "val_loss", "test_acc", "test_loss"):
        assert abs(got[key] - want[key]) <= 1e-3, (key, got[key], want[key])
    got_loss, want_loss = (
        [(e["step"], e["loss"]) for e in read_events(tmp_path / d / "r", "train")] for d in ("killed", "reference")
    )
    assert [s for s, _ in got_loss] == [s for s, _ in want_loss]  # each step logged once
    np.testing.assert_allclose([x for _, x in got_loss], [x for _, x in want_loss], rtol=0, atol=1e-3)


def test_nccl_ddp_path_under_torchrun_learns_and_reports_mfu(cache_dir, tmp_path):
    torchrun(*COMMON, "--out_dir", tmp_path, "--run_name", "r")
    results = read_results(tmp_path / "r")
    assert results["test_acc"] >= 0.9 and results["train_mfu"] > 0
    config = config_of(tmp_path / "r")
    assert config["precision_used"] == ("bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16")
    assert config["env"]["backend"] == "nccl"


def test_compiled_training_matches_eager(cache_dir, tmp_path):
    common = [
        *COMMON,
        *("--epochs", 1, "--dropout", 0, "--encoder_dropout", 0, "--precision", "fp32"),
        *("--padding", "max_len", "--log_every", 1, "--max_train_samples", 320),
    ]
    for name, extra in (("eager", []), ("compiled", ["--compile"])):
        done = run_cli(*common, *extra, "--out_dir", tmp_path / name, "--run_name", "r")
        assert done.returncode == 0, done.stderr[-3000:]
    assert "cannot compile" not in (tmp_path / "compiled" / "r" / "train.log").read_text()
    compiled_report = read_results(tmp_path / "compiled" / "r")
    assert compiled_report["compiled_graphs"] >= 1 and compiled_report["frames_not_compiled"] == 0
    eager = [e["loss"] for e in read_events(tmp_path / "eager" / "r", "train")]
    compiled = [e["loss"] for e in read_events(tmp_path / "compiled" / "r", "train")]
    np.testing.assert_allclose(compiled, eager, rtol=2e-3, atol=2e-3)


def test_regression_learns_under_torchrun(regression_folder, cache_dir, tmp_path):  # noqa: F811
    regression = ["--model", "tiny-bert", "--task", "regression", "--pool", "mean", "--wandb", "disabled"]
    torchrun(*regression, "--data", regression_folder, "--epochs", 2, "--out_dir", tmp_path, "--run_name", "r")
    results = read_results(tmp_path / "r")
    assert results["test_pearson"] >= 0.8 and results["val_pearson"] >= 0.8
    predictions = np.load(tmp_path / "r" / "test_predictions.npz")["predictions"]
    assert predictions.dtype == np.float32 and np.isfinite(predictions).all()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mlm_learns_and_its_model_folder_holds_the_cuda_weights(precision, text_folder, cache_dir, tmp_path):  # noqa: F811
    """fp16: GradScaler with the masked-LM loss (a sum over the masked tokens, scaled then
    unscaled); the model folder is saved from CUDA weights and must load back as those weights."""
    from safetensors.torch import load_file
    from transformers import AutoModel

    mlm = ["--task", "mlm", "--model", "tiny-bert", "--max_len", 64, "--batch_size", 16, "--wandb", "disabled"]
    torchrun(
        *mlm, "--data", text_folder, "--epochs", 3, "--precision", precision, "--out_dir", tmp_path, "--run_name", "m"
    )
    run = tmp_path / "m"
    results = read_results(run)
    assert config_of(run)["precision_used"] == precision
    val = [e["loss"] for e in read_events(run, "eval") if e["split"] == "val"]
    assert val[-1] < val[0] and results["val_acc"] > 0.3  # the structure is learned
    assert all(np.isfinite(e["loss"]) for e in read_events(run, "train"))
    last = checkpoint.load_latest_checkpoint(str(run / "ckpt"), print)
    assert ("scale" in last["scaler"]) == (precision == "fp16")  # a GradScaler that ran, only for fp16
    if precision == "fp16":
        assert 0 < last["scaler"]["scale"] < float("inf")
    best = checkpoint.load_weights(str(run / last["progress"]["best_file"]))
    prefix = "hf_model.bert."  # the encoder's keys in the run's mlm.MaskedLM over BertForMaskedLM
    encoder = {k[len(prefix) :]: v for k, v in best.items() if k.startswith(prefix)}
    saved = load_file(run / "model" / "model.safetensors")
    assert set(saved) == set(encoder)
    loaded = AutoModel.from_pretrained(run / "model").state_dict()  # BertModel: its pooler is new
    for key, tensor in saved.items():
        assert torch.equal(tensor, encoder[key]) and torch.equal(loaded[key], tensor), key


def test_grad_accum_2_takes_the_same_steps_as_one_batch_with_loss_scaling(cache_dir, tmp_path):
    """fp16: two micro-batches' scaled gradients add up, are unscaled once and give the step of
    one batch of both (dropout off); the same losses and gradient norms, to fp16's rounding."""
    args = [
        *COMMON,
        *("--epochs", 1, "--max_train_samples", 320, "--batch_size", 32, "--precision", "fp16"),
        *("--dropout", 0, "--encoder_dropout", 0, "--log_every", 1),
    ]
    for accum in (1, 2):
        torchrun(*args, "--grad_accum", accum, "--out_dir", tmp_path, "--run_name", f"a{accum}")
    one, two = (read_events(tmp_path / f"a{accum}", "train") for accum in (1, 2))
    assert len(one) == len(two) == 10
    for key in ("loss", "grad_norm"):
        np.testing.assert_allclose([e[key] for e in two], [e[key] for e in one], rtol=1e-2, atol=1e-3, err_msg=key)


def test_sentence_pairs_on_the_gpu_take_the_steps_they_take_on_the_cpu(pair_folder, cache_dir, tmp_path):  # noqa: F811
    """Both texts and their segment ids reach the model on the GPU as on the CPU: fp32 (TF32 off)
    and dropout off, the two runs' losses agree to rounding."""
    args = [
        *("--model", "tiny-bert", "--data", pair_folder, "--text_col", "sentence1", "sentence2", "--epochs", 1),
        *("--max_train_samples", 160, "--precision", "fp32", "--dropout", 0, "--encoder_dropout", 0),
        *("--log_every", 1, "--wandb", "disabled"),
    ]
    torchrun(*args, "--out_dir", tmp_path / "gpu", "--run_name", "p")
    on_cpu = run_cli(*args, "--out_dir", tmp_path / "cpu", "--run_name", "p", env={"CUDA_VISIBLE_DEVICES": ""})
    assert on_cpu.returncode == 0, on_cpu.stderr[-3000:]
    assert config_of(tmp_path / "gpu" / "p")["text_pairs"] is True
    assert config_of(tmp_path / "cpu" / "p")["env"]["device"] == "cpu"
    gpu, cpu = ([e["loss"] for e in read_events(tmp_path / d / "p", "train")] for d in ("gpu", "cpu"))
    assert len(gpu) == 10
    np.testing.assert_allclose(gpu, cpu, rtol=1e-3, atol=1e-4)
    gpu, cpu = (read_results(tmp_path / d / "p") for d in ("gpu", "cpu"))
    assert abs(gpu["test_loss"] - cpu["test_loss"]) < 1e-3


@pytest.mark.parametrize("precision", ["bf16", "fp16", "fp32"])
def test_each_precision_learns(precision, cache_dir, tmp_path):
    done = run_cli(*COMMON, "--precision", precision, "--out_dir", tmp_path, "--run_name", "r")
    assert done.returncode == 0, done.stderr[-3000:]
    assert read_results(tmp_path / "r")["test_acc"] >= 0.9
