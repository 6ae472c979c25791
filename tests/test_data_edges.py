"""Data edges (issue 28): which files pretraining may read, split files under other names,
regression targets float32 cannot hold, non-finite numbers in JSON, a cut-short tokenizer cache,
repeated text columns."""

import pandas as pd
import pytest

import config
import data
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


# ----------------------------------------------------------------------------- item 14


def test_a_repeated_text_column_is_refused():
    with pytest.raises(UserError, match="--text_col a b a names a more than once"):
        config.parse_args(["--text_col", "a", "b", "a"])
