"""Data edges (issue 28): which files pretraining may read, split files under other names,
regression targets float32 cannot hold, non-finite numbers in JSON, a cut-short tokenizer cache,
repeated text columns."""

import json
import math
import os
import re
import shutil

import pandas as pd
import pytest
from helpers import run_inprocess

import config
import data
import model as models
import utils
from config import UserError


def write(folder, split, frame, ext="csv"):
    folder.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(frame)
    if ext == "csv":
        frame.to_csv(folder / f"{split}.csv", index=False)
    else:
        frame.to_json(folder / f"{split}.{ext}", orient="records", lines=True)


TRAIN = {"text": [f"train text {i}" for i in range(20)], "label": [0, 1] * 10}
TEST = {"text": [f"test text {i}" for i in range(6)], "label": [0, 1] * 3}
HIDDEN = {"text": [f"hidden text {i}" for i in range(6)], "label": [-1] * 6}
VALIDATION = {"text": [f"validation text {i}" for i in range(6)], "label": [0, 1] * 3}


def texts(folder, unlabeled_split, warn=print):
    return data.load_texts(str(folder), ["text"], 0.2, None, None, unlabeled_split, warn=warn)


# ----------------------------------------------------------------------------- item 1: test text in pretraining


@pytest.mark.parametrize("spelling", ["./test", "../{name}/test", "heldout"])
def test_the_test_file_under_another_name_is_refused_as_unlabeled_split(tmp_path, spelling):
    folder = tmp_path / "task"
    write(folder, "train", TRAIN)
    write(folder, "test", TEST)
    shutil.copy(folder / "test.csv", folder / "heldout.csv")  # a byte-for-byte copy
    with pytest.raises(UserError, match=r"is the test file of .*leaks the evaluation"):
        texts(folder, spelling.format(name=folder.name))


def test_a_symlink_to_the_test_file_is_refused(tmp_path):
    write(tmp_path, "train", TRAIN)
    write(tmp_path, "test", TEST)
    (tmp_path / "extra.csv").symlink_to(tmp_path / "test.csv")
    with pytest.raises(UserError, match="is the test file of"):
        texts(tmp_path, "extra")


def test_validation_scored_as_the_test_is_refused_on_a_glue_folder(tmp_path):
    folder = tmp_path / "glue" / "mrpc"
    write(folder, "train", TRAIN)
    write(folder, "validation", VALIDATION)
    write(folder, "test", HIDDEN)
    with pytest.raises(UserError, match="score as their test .*leaks the evaluation"):
        texts(folder, "validation")
    assert data.load_splits(str(folder), ["text"], "label", 0.2, None, None)[0]["test"].source == "validation"


def test_a_validation_file_that_is_only_validation_is_read_with_a_warning(tmp_path):
    write(tmp_path, "train", TRAIN)
    write(tmp_path, "validation", VALIDATION)
    write(tmp_path, "test", TEST)
    warnings = []
    splits = texts(tmp_path, "validation", warn=warnings.append)
    assert len(splits["train"].texts) + len(splits["val"].texts) == 26
    (warning,) = warnings
    assert "validation file" in warning and "pick their best epoch on texts it was pretrained on" in warning


def test_an_unlabeled_split_spelled_as_test_is_refused_with_the_flags():
    with pytest.raises(UserError, match=r"--unlabeled_split \./test is refused"):
        config.parse_args(["--task", "mlm", "--unlabeled_split", "./test"])


@pytest.mark.slow
def test_pretraining_on_a_validation_file_says_so_in_the_run_log(tmp_path, cache_dir):
    write(tmp_path, "train", {"text": [f"the cat eats fish number {i}" for i in range(40)]})
    write(tmp_path, "validation", {"text": [f"the dog eats a bone {i}" for i in range(10)], "label": [0, 1] * 5})
    argv = ["--task", "mlm", "--model", "tiny-bert", "--data", tmp_path, "--unlabeled_split", "validation"]
    argv += ["--epochs", 1, "--max_len", 32, "--wandb", "disabled", "--out_dir", tmp_path / "runs", "--run_name", "r"]
    assert run_inprocess(*argv) == 0
    log = (tmp_path / "runs" / "r" / "train.log").read_text()
    assert "--unlabeled_split validation is the validation file of" in log
    assert "data: train 45 texts" in log  # 90% of 40 train + 10 validation texts


# ----------------------------------------------------------------------------- item 16


def test_an_unlabeled_file_without_the_text_column_is_named(tmp_path):
    write(tmp_path, "train", TRAIN)
    write(tmp_path, "unsupervised", {"review": ["a", "b"]}, ext="jsonl")
    with pytest.raises(UserError) as e:
        texts(tmp_path, "unsupervised")
    assert str(e.value) == (
        f"column(s) text not found in {tmp_path / 'unsupervised.jsonl'} (--unlabeled_split); columns are: review"
    )


# ----------------------------------------------------------------------------- item 3: float32 targets


@pytest.mark.parametrize("split", ["train", "test"])
def test_a_regression_target_float32_cannot_hold_is_refused_naming_the_row(tmp_path, split):
    frames = {
        "train": {"text": [f"t{i}" for i in range(10)], "label": [0.5, 1.5] * 5},
        "test": {"text": ["a", "b", "c"], "label": [1.0, 2.0, 3.0]},
    }
    frames[split]["label"][2] = 1e39  # finite in float64, infinite in float32
    for name, frame in frames.items():
        write(tmp_path, name, frame)
    with pytest.raises(UserError, match=rf"label column 'label' of the {split} split: data row 3 is 1e\+39, beyond"):
        data.load_splits(str(tmp_path), ["text"], "label", 0.2, None, None, task="regression")


def test_json_files_never_hold_a_non_finite_number(tmp_path):
    path = tmp_path / "results.json"
    utils.write_json(str(path), {"test_pearson": math.nan, "test_mse": 0.5, "nested": {"x": [1.0, -math.inf]}})

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    written = json.loads(path.read_text(), parse_constant=refuse)  # strict JSON: no NaN, no Infinity
    assert written["test_pearson"] is None and written["nested"] == {"x": [1.0, None]}
    assert written["test_mse"] == 0.5
    assert written["not_finite"] == {"test_pearson": "nan", "nested.x.1": "-inf"}


def test_finite_json_is_written_as_before(tmp_path):
    path = tmp_path / "config.json"
    utils.write_json(str(path), {"lr": 1e-3, "text_col": ["a", "b"]})
    assert json.loads(path.read_text()) == {"lr": 1e-3, "text_col": ["a", "b"]}


# ----------------------------------------------------------------------------- item 4: split files under other names


def test_a_local_mnli_folder_with_the_hubs_split_names_is_read_as_the_hub_is(tmp_path):
    folder = tmp_path / "glue" / "mnli"
    pair = {
        "premise": [f"p{i}" for i in range(30)],
        "hypothesis": [f"h{i}" for i in range(30)],
        "label": [0, 1, 2] * 10,
    }
    write(folder, "train", pair)
    write(folder, "validation_matched", {**pair, "premise": [f"matched {i}" for i in range(30)]})
    write(folder, "validation_mismatched", {**pair, "premise": [f"mismatched {i}" for i in range(30)]})
    write(folder, "test_matched", {**pair, "label": [-1] * 30})
    splits, _ = data.load_splits(str(folder), ["premise", "hypothesis"], "label", 0.1, None, None)
    assert splits["test"].source == "validation"
    assert splits["test"].segments[0] == [f"matched {i}" for i in range(30)]  # not carved out of train
    assert len(splits["train"].texts) + len(splits["val"].texts) == 30


def test_mnli_from_the_hub_is_read_by_the_same_split_names(monkeypatch):
    datasets = pytest.importorskip("datasets")
    pair = {"premise": ["p", "q"] * 5, "hypothesis": ["h", "i"] * 5, "label": [0, 1] * 5}
    hub = {
        name: datasets.Dataset.from_dict({**pair, "premise": [name] * 10})
        for name in ("train", "validation_matched", "validation_mismatched", "test_matched", "test_mismatched")
    }
    hub["test_matched"] = datasets.Dataset.from_dict({**pair, "label": [-1] * 10})

    class Hub:
        @staticmethod
        def load_dataset(name, task):
            assert (name, task) == ("nyu-mll/glue", "mnli")
            return hub

    monkeypatch.setattr(data, "_quiet_datasets", lambda: Hub)
    splits, _ = data.load_splits("glue/mnli", ["premise", "hypothesis"], "label", 0.2, None, None)
    assert splits["test"].source == "validation" and set(splits["test"].segments[0]) == {"validation_matched"}


@pytest.mark.parametrize(
    "name, split",
    [("dev", "validation"), ("validation_matched", "validation"), ("test_matched", "test"), ("val-2", "validation")],
)
def test_split_files_under_names_that_are_not_read_are_refused(tmp_path, name, split):
    write(tmp_path, "train", TRAIN)
    write(tmp_path, name, VALIDATION)
    message = f"--data {tmp_path}: {name}.csv not read: the {split} split is read from {split}.parquet/.csv/.jsonl"
    assert data.data_unavailable(str(tmp_path)).startswith(message)  # before the run starts
    with pytest.raises(UserError, match=re.escape(message)):
        data.load_splits(str(tmp_path), ["text"], "label", 0.2, None, None)


def test_files_named_like_a_split_that_has_its_file_are_left_alone(tmp_path):
    write(tmp_path, "train", TRAIN)
    write(tmp_path, "validation", VALIDATION)
    write(tmp_path, "test", TEST)
    for other in ("dev", "test_matched", "devices", "unsupervised"):
        write(tmp_path, other, VALIDATION)
    splits, _ = data.load_splits(str(tmp_path), ["text"], "label", 0.2, None, None)
    assert splits["val"].texts == VALIDATION["text"] and splits["test"].texts == TEST["text"]


# ----------------------------------------------------------------------------- item 9: tokenizer cache


def test_a_truncated_tokenizer_cache_is_rebuilt_with_a_warning(tmp_path):
    texts_ = ["a short text", "another short text"] * 10
    tiny = models.resolve_model("tiny-bert")
    tokenizer = models.load_tokenizer(tiny, texts_, str(tmp_path))
    (cache_file,) = tmp_path.glob("wordpiece-*.json")
    cache_file.write_bytes(cache_file.read_bytes()[:300])  # a full disk or an interrupted copy
    warnings = []
    rebuilt = models.load_tokenizer(tiny, texts_, str(tmp_path), warn=warnings.append)
    assert rebuilt("another short text")["input_ids"] == tokenizer("another short text")["input_ids"]
    assert len(warnings) == 1 and f"the tokenizer cache {cache_file} is unreadable" in warnings[0]
    models.load_tokenizer(tiny, texts_, str(tmp_path), warn=warnings.append)
    assert len(warnings) == 1  # the rebuilt file reads
    assert os.listdir(tmp_path) == [cache_file.name]


# ----------------------------------------------------------------------------- item 14


def test_a_repeated_text_column_is_refused():
    with pytest.raises(UserError, match="--text_col a b a names a more than once"):
        config.parse_args(["--text_col", "a", "b", "a"])
