"""Data edges (issue 28): which files pretraining may read, split files under other names,
regression targets float32 cannot hold, non-finite numbers in JSON, a cut-short tokenizer cache,
repeated text columns."""

import json
import math
import os

import pandas as pd
import pytest

import config
import data
import files
import model as models
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
    files.write_json(str(path), {"test_pearson": math.nan, "test_mse": 0.5, "nested": {"x": [1.0, -math.inf]}})

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    written = json.loads(path.read_text(), parse_constant=refuse)  # strict JSON: no NaN, no Infinity
    assert written["test_pearson"] is None and written["nested"] == {"x": [1.0, None]}
    assert written["test_mse"] == 0.5
    assert written["not_finite"] == {"test_pearson": "nan", "nested.x.1": "-inf"}


def test_finite_json_is_written_as_before(tmp_path):
    path = tmp_path / "config.json"
    files.write_json(str(path), {"lr": 1e-3, "text_col": ["a", "b"]})
    assert json.loads(path.read_text()) == {"lr": 1e-3, "text_col": ["a", "b"]}


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
