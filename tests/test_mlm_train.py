"""Masked-LM pretraining through train.py's loop (--task mlm): learning, the saved model folder
and fine-tuning from it, exact resume, 2 processes = 1, packing and static masks, the report,
and the bad inputs a user can give."""

import json
import os
import shutil
import signal

import numpy as np
import pandas as pd
import pytest
from helpers import read_events, read_results, run_cli, run_inprocess

import report

pytestmark = pytest.mark.slow  # every test here trains

MLM = ["--task", "mlm", "--model", "tiny-bert", "--max_len", 64, "--batch_size", 16, "--wandb", "disabled"]


@pytest.fixture(scope="module")
def pretrained(text_folder, cache_dir, tmp_path_factory):
    """A finished MLM run (3 epochs) and its folder."""
    out = tmp_path_factory.mktemp("mlm-runs")
    assert (
        run_inprocess(
            *MLM, "--data", text_folder, "--epochs", 3, "--log_every", 5, "--out_dir", out, "--run_name", "mlm"
        )
        == 0
    )
    return out / "mlm"


def test_an_mlm_run_learns_and_writes_a_model_folder_without_the_head(pretrained):
    results = read_results(pretrained)
    assert results["task"] == "mlm" and results["metric_for_best"] == "loss"
    assert {"val_loss", "val_acc", "val_perplexity", "best_epoch", "train_tokens_per_s"} <= set(results)
    assert not any(k.startswith("test_") for k in results)
    assert abs(results["val_perplexity"] - np.exp(results["val_loss"])) < 1e-6 * results["val_perplexity"]
    val = [e for e in read_events(pretrained, "eval") if e["split"] == "val"]
    assert val[-1]["loss"] < val[0]["loss"] and results["val_acc"] > 0.3  # the structure is learned
    assert results["best_epoch"] == min(range(len(val)), key=lambda i: val[i]["loss"])
    train_losses = [e["loss"] for e in read_events(pretrained, "train")]
    assert train_losses[-1] < train_losses[0] - 1.0
    assert not (pretrained / "test_predictions.npz").exists()
    from safetensors import safe_open

    with safe_open(pretrained / "model" / "model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert any(k.startswith("embeddings.") for k in keys)
    assert not any(k.startswith("cls.") or "predictions" in k for k in keys)  # BERT's MLM head left out
    assert {"config.json", "tokenizer.json"} <= set(os.listdir(pretrained / "model"))


def test_fine_tuning_starts_from_the_pretraining_run_folder(pretrained, cache_dir, tmp_path):
    done = run_cli(
        "--model",
        pretrained / "model",
        "--data",
        "synthetic",
        "--epochs",
        1,
        "--max_train_samples",
        64,
        "--max_eval_samples",
        64,
        "--wandb",
        "disabled",
        "--out_dir",
        tmp_path,
        "--run_name",
        "ft",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "test_acc" in read_results(tmp_path / "ft")


def test_mlm_resume_after_a_kill_mid_epoch_is_exact(text_folder, cache_dir, tmp_path):
    args = [
        *MLM,
        "--data",
        text_folder,
        "--epochs",
        2,
        "--max_train_samples",
        160,
        "--save_every",
        4,
        "--log_every",
        1,
        "--run_name",
        "r",
    ]
    reference = run_cli(*args, "--out_dir", tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr[-2000:]
    killed = run_cli(*args, "--out_dir", tmp_path / "killed", env={"FTKIT_KILL_AT": "step:6"})  # epoch 0 of 10 steps
    assert killed.returncode == -signal.SIGKILL
    resumed = run_cli(*args, "--out_dir", tmp_path / "killed")
    assert resumed.returncode == 0 and "resumed from" in resumed.stdout, resumed.stderr[-2000:]
    got, want = read_results(tmp_path / "killed" / "r"), read_results(tmp_path / "reference" / "r")
    for key in ("val_loss", "val_acc"):
        assert abs(got[key] - want[key]) <= 1e-6, key
    for kind in ("train", "eval"):
        losses = [[e["loss"] for e in read_events(tmp_path / d / "r", kind)] for d in ("killed", "reference")]
        np.testing.assert_allclose(*losses, rtol=0, atol=1e-6)


def test_mlm_on_two_processes_matches_one(text_folder, cache_dir, tmp_path):
    # --grad_accum 2: the masked count is the global step's, over ranks and micro-batches
    args = [
        *MLM,
        "--data",
        text_folder,
        "--epochs",
        1,
        "--max_train_samples",
        128,
        "--encoder_dropout",
        0,
        "--grad_accum",
        2,
        "--log_every",
        1,
        "--run_name",
        "m",
    ]
    assert run_inprocess(*args, "--out_dir", tmp_path / "one") == 0
    two = run_cli(*args, "--out_dir", tmp_path / "two", nproc=2)
    assert two.returncode == 0, two.stderr[-2000:]
    one_loss, two_loss = ([e["loss"] for e in read_events(tmp_path / d / "m", "train")] for d in ("one", "two"))
    assert len(one_loss) == 8
    np.testing.assert_allclose(two_loss, one_loss, rtol=1e-3, atol=1e-4)
    one, two = read_results(tmp_path / "one" / "m"), read_results(tmp_path / "two" / "m")
    assert abs(one["val_loss"] - two["val_loss"]) < 1e-3 and one["val_acc"] == pytest.approx(two["val_acc"], abs=1e-3)


def test_a_signal_on_two_processes_checkpoints_and_the_rerun_finishes_the_same_run_in_wandb(
    text_folder, cache_dir, tmp_path
):
    from test_resume import launch, wait_for_log
    from wandb_history import history, run_ids

    args = [
        *MLM,
        "--data",
        text_folder,
        "--epochs",
        2,
        "--max_train_samples",
        160,
        "--save_every",
        4,
        "--log_every",
        1,
        "--wandb",
        "offline",
        "--run_name",
        "s",
    ]
    reference = run_cli(*args, "--out_dir", tmp_path / "reference", nproc=2)
    assert reference.returncode == 0, reference.stderr[-2000:]
    proc = launch([*args, "--out_dir", tmp_path / "stopped"], 2)
    wait_for_log(tmp_path / "stopped" / "s", "train: step 3 ", proc)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode != 0 and "rerun the same command to resume" in output, output[-2000:]
    resumed = run_cli(*args, "--out_dir", tmp_path / "stopped", nproc=2)
    assert resumed.returncode == 0 and "resumed from" in resumed.stdout, resumed.stderr[-2000:]
    got, want = read_results(tmp_path / "stopped" / "s"), read_results(tmp_path / "reference" / "s")
    assert abs(got["val_loss"] - want["val_loss"]) <= 1e-6
    losses = [[e["loss"] for e in read_events(tmp_path / d / "s", "train")] for d in ("stopped", "reference")]
    np.testing.assert_allclose(*losses, rtol=0, atol=1e-6)
    assert len(run_ids(tmp_path / "stopped" / "s")) == 1
    val = [r for r in history(tmp_path / "stopped" / "s") if "val/loss" in r]
    assert len(val) == 2 and all({"val/acc", "val/perplexity"} <= set(r) for r in val)


def test_packed_static_whole_word_masking_with_an_unlabeled_split(text_folder, cache_dir, tmp_path):
    assert (
        run_inprocess(
            *MLM,
            "--data",
            text_folder,
            "--epochs",
            2,
            "--pack",
            "--masking",
            "static",
            "--whole_word_mask",
            "--unlabeled_split",
            "unsupervised",
            "--out_dir",
            tmp_path,
            "--run_name",
            "p",
        )
        == 0
    )
    results = read_results(tmp_path / "p")
    assert results["train_padding_share"] == 0  # full --max_len blocks
    config = json.loads((tmp_path / "p" / "config.json").read_text())
    assert config["pack"] and config["masking"] == "static" and config["unlabeled_split"] == "unsupervised"
    log = (tmp_path / "p" / "train.log").read_text()
    assert "data: train 450 texts" in log  # 90% of 400 train + 100 unlabeled texts


def test_mlm_settings_change_no_classification_run_name_or_fingerprint():
    import config as settings

    args = settings.parse_args(["--model", "tiny-bert"])
    assert args.run_name == "tiny-bert-cls-s42"
    fingerprint = settings.run_fingerprint(vars(args))
    assert not {"mlm_prob", "masking", "whole_word_mask", "pack", "init", "unlabeled_split"} & set(fingerprint)
    mlm_args = settings.parse_args(["--model", "tiny-bert", "--task", "mlm", "--pack", "--mlm_prob", "0.3"])
    assert mlm_args.run_name == "tiny-bert-cls-mlm-mp0.3-pack-s42"
    assert {"mlm_prob", "pack", "task"} <= set(settings.run_fingerprint(vars(mlm_args)))


def test_report_shows_mlm_runs_in_their_own_table(text_folder, cache_dir, tmp_path, capsys):
    for seed in (1, 2):
        assert (
            run_inprocess(
                *MLM,
                "--data",
                text_folder,
                "--epochs",
                1,
                "--max_train_samples",
                96,
                "--seed",
                seed,
                "--out_dir",
                tmp_path,
            )
            == 0
        )
    assert (
        run_inprocess(
            "--model",
            "tiny-bert",
            "--data",
            "synthetic",
            "--epochs",
            1,
            "--max_train_samples",
            64,
            "--max_eval_samples",
            64,
            "--wandb",
            "disabled",
            "--out_dir",
            tmp_path,
        )
        == 0
    )
    assert report.main([str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "Masked-LM pretraining runs" in printed and "val_perplexity" in printed and "test_acc" in printed
    mlm_rows = [line for line in printed.splitlines() if line.startswith("| tiny-bert") and "mlm" in line]
    assert len(mlm_rows) == 1 and mlm_rows[0].endswith("| 2 |") and " ± " in mlm_rows[0]


@pytest.fixture(scope="module")
def no_mask_token_folder(tiny_model_folder, tmp_path_factory):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("no-mask") / "model"
    shutil.copytree(tiny_model_folder, folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_folder)
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer.backend_tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
    ).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def albert_folder(tiny_model_folder, tmp_path_factory):
    """A model type whose masked-LM head is not in the registry, with a usable tokenizer."""
    from transformers import AlbertConfig, AutoTokenizer

    folder = tmp_path_factory.mktemp("albert")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_folder)
    AlbertConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        num_attention_heads=2,
        intermediate_size=16,
        num_hidden_layers=1,
        embedding_size=8,
    ).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def unknown_chars_folder(tmp_path_factory):
    """Texts the tiny model folder's tokenizer reads as [UNK] only: nothing to mask."""
    folder = tmp_path_factory.mktemp("unk")
    pd.DataFrame({"text": ["☃☃ ☃", "☂ ☂"] * 20}).to_csv(folder / "train.csv", index=False)
    return str(folder)


@pytest.mark.parametrize(
    "case, message",
    [
        ("--mlm_prob 1.5", "--mlm_prob must be in (0, 1)"),
        ("--mlm_prob 0", "--mlm_prob must be in (0, 1)"),
        ("--unlabeled_split test", "leaks the evaluation"),
        ("--unlabeled_split missing", "holds no missing"),
        ("no mask token", "has no mask token"),
        ("no masked-LM form", "has no masked-LM form here"),
        ("nothing to mask", "holds a token to mask"),
        ("--pack --max_len 512", "less than one block"),
        ("classification --pack", "applies to --task mlm only"),
    ],
)
def test_bad_mlm_input_is_one_line(
    case,
    message,
    text_folder,
    no_mask_token_folder,
    albert_folder,
    tiny_model_folder,
    unknown_chars_folder,
    cache_dir,
    tmp_path,
):
    argv = {
        "no mask token": ["--model", no_mask_token_folder],
        "no masked-LM form": ["--model", albert_folder],
        "nothing to mask": ["--model", tiny_model_folder, "--data", unknown_chars_folder],
        "--pack --max_len 512": ["--pack", "--max_len", 512, "--max_train_samples", 8],
        "classification --pack": ["--task", "classification", "--pack"],
    }.get(case, case.split())
    done = run_cli(*MLM, "--data", text_folder, "--out_dir", tmp_path, *argv)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], done.stderr
