"""Every mistake a user can make ends in one clear line on stderr and a non-zero exit."""

import json
import os
import time
from pathlib import Path

import pandas as pd
import pytest
from helpers import run_cli, run_inprocess

pytestmark = pytest.mark.slow  # every test here trains or starts processes


def folder(tmp_path, train, test=None):
    pd.DataFrame(train).to_csv(tmp_path / "train.csv", index=False)
    if test is not None:
        pd.DataFrame(test).to_csv(tmp_path / "test.csv", index=False)
    return str(tmp_path)


GOOD = {"text": ["good", "bad"] * 20, "label": [1, 0] * 20}

CASES = {
    "unknown model": (lambda p: ["--model", "nosuchmodel"], "cannot load model 'nosuchmodel'"),
    "unknown pool": (lambda p: ["--pool", "max"], "invalid choice: 'max'"),
    "missing data": (lambda p: ["--data", str(p / "nope")], "no such file or folder"),
    "text column": (
        lambda p: ["--data", folder(p, {"review": ["a", "b"] * 5, "label": [0, 1] * 5})],
        "column(s) text not found in the data; columns are: review, label",
    ),
    "label column": (
        lambda p: ["--data", folder(p, GOOD), "--label_col", "sentiment"],
        "column(s) sentiment not found in the data; columns are: text, label",
    ),
    "max_len": (
        lambda p: ["--data", folder(p, GOOD), "--max_len", "1024"],
        "--max_len 1024 exceeds the model's limit of 512",
    ),
    "batch": (
        lambda p: ["--data", folder(p, GOOD), "--grad_accum", "3"],
        "--batch_size 16 is not divisible by world size 1 x grad_accum 3",
    ),
    "empty split": (lambda p: ["--data", folder(p, GOOD, {"text": [], "label": []})], "the file has no data rows"),
    "single class": (lambda p: ["--data", folder(p, {"text": ["a"] * 10, "label": [1] * 10})], "single class"),
    "float labels": (
        lambda p: ["--data", folder(p, {"text": ["a"] * 10, "label": [0.5, 1.5] * 5})],
        "labels must be integers or strings",
    ),
    # ranges: each of these once gave a traceback or a silently wrong run
    "lr nan": (lambda p: ["--lr", "nan"], "--lr must be a positive number (got nan)"),
    "lr negative": (lambda p: ["--lr=-1e-3"], "--lr must be a positive number"),
    "encoder dropout": (lambda p: ["--encoder_dropout", "2"], "--encoder_dropout must be in [0, 1) (got 2.0)"),
    "seed": (lambda p: ["--seed", "-1"], "--seed must be in [0, 2^31)"),
    "dist timeout": (lambda p: ["--dist_timeout", "0"], "--dist_timeout must be a positive number of minutes"),
    "no train samples": (lambda p: ["--max_train_samples", "0"], "--max_train_samples must be at least 1"),
    "no eval samples": (lambda p: ["--max_eval_samples", "0"], "--max_eval_samples must be at least 1"),
    "no eval samples, smoke": (
        lambda p: ["--max_eval_samples", "0", "--smoke"],
        "--max_eval_samples must be at least 1",
    ),
    "clip": (lambda p: ["--clip", "-1"], "--clip must be a number >= 0"),
    "weight decay": (lambda p: ["--weight_decay", "-1"], "--weight_decay must be a number >= 0"),
    "keep checkpoints": (lambda p: ["--keep_checkpoints", "0"], "--keep_checkpoints must be at least 1"),
    "label as text": (lambda p: ["--text_col", "label", "--label_col", "label"], "is also a --text_col"),
    "max_len 1": (lambda p: ["--data", folder(p, GOOD), "--max_len", "1"], "leaves no room for text"),
    "max_len 2 tail": (
        lambda p: ["--data", folder(p, GOOD), "--max_len", "2", "--truncation", "tail"],
        "--max_len 2 leaves no room for text after the model's 2 special tokens",
    ),
    "config {}": (lambda p: ["--model", model_folder(p, {})], "cannot load model"),
    "unknown model_type": (lambda p: ["--model", model_folder(p, {"model_type": "nosuch"})], "cannot load model"),
    "no weights": (
        lambda p: ["--data", folder(p, GOOD), "--model", model_folder(p, "tiny")],
        "cannot load the weights",
    ),
    "out_dir under a file": (
        lambda p: ["--data", folder(p, GOOD), "--out_dir", str(p / "train.csv" / "x")],
        "cannot write the run folder",
    ),
    "empty csv": (lambda p: ["--data", raw_file(p, "train.csv", b"")], "train.csv (train split): the file is empty"),
    "binary csv": (lambda p: ["--data", raw_file(p, "train.csv", bytes(range(256)) * 4)], "not UTF-8 text"),
    "bad jsonl line": (
        lambda p: ["--data", raw_file(p, "train.jsonl", b'{"text": "a", "label": 0}\n{"text": "b", label: 1}\n')],
        "train.jsonl (train split): line 2 is not valid JSON",
    ),
    "cache_dir is a file": (
        lambda p: ["--data", folder(p, GOOD), "--cache_dir", p / "train.csv"],
        "train.csv: cannot write there (Not a directory)",
    ),
    "cache_dir under a file": (
        lambda p: ["--data", folder(p, GOOD), "--cache_dir", p / "train.csv" / "cache"],
        "cache: cannot write there (Not a directory)",
    ),
    "dangling symlink": (lambda p: ["--data", dangling_train_link(p)], "is a broken symbolic link"),
    "corrupt run config": (
        lambda p: ["--data", folder(p, GOOD), "--run_name", "r", *run_config(p / "runs", "r", '{"model": "tiny-b')],
        "config.json is not valid JSON",
    ),
    "two train files": (lambda p: ["--data", two_train_files(p)], "train.csv and train.jsonl"),
    "empty label cell": (
        lambda p: ["--data", raw_file(p, "train.csv", b"text,label\n" + b"a,0\nb,1\n" * 5 + b"c,\n")],
        "label column 'label' of the train split: data row 11 is empty",
    ),
    # data edges (issue 28)
    "repeated text column": (
        lambda p: ["--text_col", "text", "text"],
        "--text_col text text names text more than once",
    ),
    "regression target beyond float32": (
        lambda p: [
            "--task",
            "regression",
            "--data",
            raw_file(p, "train.csv", b"text,label\n" + b"a,0.5\n" * 10 + b"c,1e39\n"),
        ],
        "label column 'label' of the train split: data row 11 is 1e+39, beyond",
    ),
    "a dev file": (
        lambda p: ["--data", with_file(folder(p, GOOD, GOOD), "dev.csv", "text,label\na,0\n")],
        "dev.csv not read: the validation split is read from validation.parquet/.csv/.jsonl",
    ),
    "unlabeled split ./test": (
        lambda p: ["--task", "mlm", "--data", folder(p, GOOD, GOOD), "--unlabeled_split", "./test"],
        "--unlabeled_split ./test is refused",
    ),
    "unlabeled split is the test scored on a glue folder": (
        lambda p: ["--task", "mlm", "--data", glue_folder(p), "--unlabeled_split", "validation"],
        "which fine-tuning runs on it score as their test",
    ),
    "unlabeled split without the text column": (
        lambda p: [
            "--task",
            "mlm",
            "--data",
            with_file(folder(p, GOOD), "extra.jsonl", '{"review": "a"}\n'),
            "--unlabeled_split",
            "extra",
        ],
        "extra.jsonl (--unlabeled_split); columns are: review",
    ),
    # validation inside the epoch, early stop, collapse (issue 30)
    "eval_every negative": (
        lambda p: ["--eval_every=-5"],
        "--eval_every must be 0 (off) or a positive number of steps (got -5)",
    ),
    "eval_every not a number": (lambda p: ["--eval_every", "epoch"], "argument --eval_every: invalid int value"),
    "early_stop negative": (
        lambda p: ["--early_stop=-1"],
        "--early_stop must be 0 (off) or a positive number of validations (got -1)",
    ),
    "early_stop not a number": (lambda p: ["--early_stop", "2.5"], "argument --early_stop: invalid int value"),
    "on_collapse": (lambda p: ["--on_collapse", "skip"], "argument --on_collapse: invalid choice: 'skip'"),
}


def with_file(path, name, text):
    (Path(path) / name).write_text(text)
    return path


def glue_folder(tmp_path):
    """A local GLUE task folder (glue/rte): its test labels hidden, so its validation is scored as the test."""
    path = tmp_path / "glue" / "rte"
    path.mkdir(parents=True)
    pair = {"sentence1": ["a b", "c d"] * 10, "sentence2": ["e", "f"] * 10, "label": [0, 1] * 10}
    folder(path, pair, {**pair, "label": [-1] * 20})
    pd.DataFrame(pair).to_csv(path / "validation.csv", index=False)
    return str(path)


def dangling_train_link(tmp_path):
    (tmp_path / "train.csv").symlink_to(tmp_path / "moved-away.csv")
    return str(tmp_path)


def run_config(out_dir, run_name, text):
    (out_dir / run_name).mkdir(parents=True)
    (out_dir / run_name / "config.json").write_text(text)
    return []


def two_train_files(tmp_path):
    folder(tmp_path, GOOD)
    (tmp_path / "train.jsonl").write_text('{"text": "good", "label": 1}\n')
    return str(tmp_path)


def model_folder(tmp_path, config):
    """A model folder with this config.json ("tiny": a real tiny BERT config) and no weights."""
    path = tmp_path / "model"
    path.mkdir(exist_ok=True)
    if config == "tiny":
        import data
        import model as models

        models.write_model_folder(str(path), "BertConfig", models._TINY, data.make_synthetic()["train"]["text"][:200])
        for weights in path.glob("*.safetensors"):
            weights.unlink()
    else:
        (path / "config.json").write_text(json.dumps(config))
    return str(path)


def raw_file(tmp_path, name, content: bytes):
    (tmp_path / name).write_bytes(content)
    return str(tmp_path)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gives_one_line(case, tmp_path, capsys, cache_dir):
    make_args, message = CASES[case]
    code = run_inprocess(
        "--model", "tiny-bert", "--wandb", "disabled", "--out_dir", tmp_path / "runs", *make_args(tmp_path)
    )
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert message in err
    assert "Traceback" not in err
    assert err.splitlines()[-1].startswith("error:")


def test_cli_error_has_no_traceback_and_keeps_written_runs(tmp_path):
    out = run_cli("--model", "tiny-bert", "--data", tmp_path / "missing", "--wandb", "disabled", "--out_dir", tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [f"error: --data {tmp_path / 'missing'}: no such file or folder"]


def test_an_unavailable_hub_model_and_missing_data_are_both_reported_fast(tmp_path):
    started = time.time()
    out = run_cli(
        "--model",
        "bert",
        "--data",
        tmp_path / "missing",
        "--wandb",
        "disabled",
        "--out_dir",
        tmp_path,
        env={"HF_HUB_OFFLINE": "1"},
    )
    assert out.returncode == 2 and time.time() - started < 30
    model_line, data_line = out.stderr.strip().splitlines()
    assert model_line.startswith(
        "error: cannot load model 'bert-base-uncased': not in the local cache and "
        "HF_HUB_OFFLINE=1 is set; pass a local model folder"
    )
    assert "bash run_grid.sh grids/demo.grid" in model_line
    assert data_line == f"error: --data {tmp_path / 'missing'}: no such file or folder"
    assert not os.listdir(tmp_path)


def test_an_unreachable_hub_is_found_in_seconds_without_retries(monkeypatch, capsys, tmp_path):
    from huggingface_hub import constants

    import utils

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    utils.hub_unavailable.cache_clear()
    started = time.time()
    try:
        assert (
            run_inprocess(
                "--model", "bert", "--data", "nosuch_org/nosuch_dataset", "--wandb", "disabled", "--out_dir", tmp_path
            )
            == 2
        )
    finally:
        utils.hub_unavailable.cache_clear()
    err = capsys.readouterr().err.strip().splitlines()
    assert time.time() - started < 10 and len(err) == 2
    assert "not in the local cache and 127.0.0.1 cannot be reached" in err[0]
    assert err[1].startswith("error: cannot load dataset 'nosuch_org/nosuch_dataset': not in the local cache")
