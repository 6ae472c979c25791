"""Loading, validation split, subsetting, cached tokenization and batching."""

import errno
import filecmp
import glob
import itertools
import json
import math
import os
import random
from dataclasses import dataclass

import numpy as np
import torch

import glue
from config import UserError, first_line
from utils import OFFLINE_DEMO, atomic_write, hash_texts, hub_unavailable

HUB_ALIASES = {"imdb": "stanfordnlp/imdb"}
FILE_TYPES = {".parquet": "parquet", ".csv": "csv", ".jsonl": "json", ".json": "json"}
SPLIT_SEED = 1234  # fixed, not --seed: every run of a grid sees the same val/test/subsets
HEAD_TAIL_HEAD = 128  # Sun et al. 2019: keep the first 128 tokens, fill the rest from the end
# the largest regression target whose square is finite in float32, as the MSE loss computes it
# (1e39 itself is infinite in float32)
MAX_REGRESSION_TARGET = float(np.sqrt(np.finfo(np.float32).max))


@dataclass
class Split:
    texts: list[str]  # the text columns joined with a space: the joined encoding, and what predictions show
    labels: np.ndarray  # int64 ids 0..K-1; float32 targets for --task regression
    # with two or more text columns, (A, B) per example for the pair encoding: A the first column,
    # B the others joined with a space
    segments: tuple[list[str], list[str]] | None = None
    source: str = ""  # the data's split these examples come from: "validation" for a test with hidden labels

    def encoder_inputs(self, pairs: bool) -> tuple[list[str], list[str] | None]:
        """(texts, text_pairs) for encode: the segments when pairs is on and there are two, else
        the joined texts."""
        if pairs and self.segments is not None:
            return self.segments
        return self.texts, None


# ----------------------------------------------------------------------------- loading


def load_splits(
    data: str,
    text_cols: list[str],
    label_col: str,
    val_ratio: float,
    max_train_samples: int | None,
    max_eval_samples: int | None,
    warn=print,
    task: str = "classification",
):
    """Return ({"train", "val", "test"} -> Split, label_names). With --task regression the labels
    are float32 as given (not rescaled), label_names is empty and the splits carved out of train
    are seeded random, not stratified."""
    raw, class_names = _load_raw(data, label_col)
    test_source = "test"
    if "test" in raw and label_col in raw["test"] and _labels_hidden(raw["test"][label_col]):
        if "validation" not in raw:
            raise UserError(
                f"the test split of {data} has hidden labels (all -1) and there is no validation "
                "split to evaluate on instead"
            )
        del raw["test"]
        raw["test"], test_source = raw.pop("validation"), "validation"
    for split, rows in raw.items():
        check_columns(rows, text_cols, label_col)
        for col in text_cols:
            check_texts(rows[col], f"column {col!r} of the {split} split of {data}")
    regression = task == "regression"
    if regression:
        values, label_names = None, []
        for split, rows in raw.items():
            rows[label_col] = regression_targets(rows[label_col], label_col, split)
    else:
        values, label_names = (
            (list(range(len(class_names))), class_names) if class_names else _label_values(raw, label_col, warn)
        )
    carve = _random_split if regression else _stratified_split
    if "test" not in raw:
        raw["train"], raw["test"] = carve(raw["train"], val_ratio, label_col)
    if "validation" in raw:
        raw["val"] = raw.pop("validation")
    else:
        raw["train"], raw["val"] = carve(raw["train"], val_ratio, label_col)
    for name, rows in raw.items():
        if len(rows[label_col]) == 0:
            raise UserError(f"the {name} split of {data} is empty")
    if regression and len(set(raw["train"][label_col])) < 2:
        raise UserError(
            f"column {label_col!r} holds a single value ({raw['train'][label_col][0]:g}) in train: nothing to regress"
        )
    if not regression and len(label_names) < 2:
        raise UserError(f"column {label_col!r} holds a single class ({label_names[0]}): nothing to classify")
    label_ids = None if regression else {v: i for i, v in enumerate(values)}
    splits = {}
    for name in ("train", "val", "test"):
        rows = raw[name]
        limit = max_train_samples if name == "train" else max_eval_samples
        if regression:
            labels = np.array(rows[label_col], dtype=np.float32)
            keep = random_subset(len(labels), limit)
        else:
            labels = np.array([label_ids[v] for v in rows[label_col]], dtype=np.int64)
            keep = balanced_subset(labels, limit)
        texts = [" ".join(str(rows[c][i]) for c in text_cols) for i in keep]
        segments = None
        if len(text_cols) >= 2:
            segments = (
                [str(rows[text_cols[0]][i]) for i in keep],
                [" ".join(str(rows[c][i]) for c in text_cols[1:]) for i in keep],
            )
        splits[name] = Split(texts, labels[keep], segments, test_source if name == "test" else name)
    return splits, label_names


def load_texts(
    data: str,
    text_cols: list[str],
    val_ratio: float,
    max_train_samples: int | None,
    max_eval_samples: int | None,
    unlabeled_split: str | None = None,
    label_col: str = "label",
    warn=print,
) -> dict[str, Split]:
    """The texts of masked-LM pretraining: {"train", "val"} -> Split (no labels). The train split's
    texts (the text columns joined with a space; a label column is not needed), plus those of the
    folder's `unlabeled_split` file, with a seeded random `val_ratio` of them held out for
    validation. The data's validation and test splits are not read as text; label_col (that of the
    fine-tuning runs) tells which of them those runs score as their test (unlabeled_check)."""
    path = None if unlabeled_split is None else unlabeled_file(data, unlabeled_split)
    rows = {"train": _load_raw(data, None)[0]["train"]}
    check_columns(rows["train"], text_cols, None)
    if path is not None:
        unlabeled_check(data, path, unlabeled_split, label_col, warn)
        rows[unlabeled_split] = _read_with_pyarrow(path, unlabeled_split)
        check_columns(rows[unlabeled_split], text_cols, None, where=f"{path} (--unlabeled_split)")
    texts = []
    for split, columns in rows.items():
        for col in text_cols:
            check_texts(columns[col], f"column {col!r} of the {split} split of {data}")
        texts += [" ".join(str(columns[c][i]) for c in text_cols) for i in range(len(columns[text_cols[0]]))]
    order = list(range(len(texts)))
    random.Random(SPLIT_SEED).shuffle(order)
    n_val = round(len(texts) * val_ratio)
    if n_val == 0 or n_val == len(texts):
        raise UserError(
            f"--val_ratio {val_ratio} of the {len(texts)} texts leaves "
            f"{'no validation' if n_val == 0 else 'no training'} texts; change --val_ratio or add text"
        )
    held_out = {"train": sorted(order[n_val:]), "val": sorted(order[:n_val])}
    splits = {}
    for name, limit in (("train", max_train_samples), ("val", max_eval_samples)):
        keep = [held_out[name][i] for i in random_subset(len(held_out[name]), limit)]
        splits[name] = Split([texts[i] for i in keep], np.zeros(0, np.int64), source=name)
    return splits


def unlabeled_file(data: str, unlabeled_split: str) -> str:
    """The file --unlabeled_split names in the --data folder."""
    if not os.path.isdir(data):
        raise UserError(
            f"--unlabeled_split {unlabeled_split} needs --data to be a local folder holding "
            f"{unlabeled_split}.parquet/.csv/.jsonl (got {data})"
        )
    found = [f for ext in FILE_TYPES for f in glob.glob(os.path.join(glob.escape(data), f"{unlabeled_split}{ext}"))]
    if len(found) != 1:
        raise UserError(
            f"--unlabeled_split {unlabeled_split}: the folder {data} holds "
            f"{'no' if not found else 'more than one'} {unlabeled_split}.parquet/.csv/.jsonl"
        )
    return found[0]


def unlabeled_check(data: str, path: str, unlabeled_split: str, label_col: str, warn) -> None:
    """Refuse an --unlabeled_split file that is (the same file as, or a byte-for-byte copy of) the
    test file of `data` or the file its fine-tuning runs score as their test (validation, where
    the test labels are hidden: GLUE); pretraining on those texts leaks their evaluation. Its
    validation file otherwise is allowed, with a warning: model selection then sees it."""
    files = _local_files(data)
    scored = "test"
    if "test" in files and "validation" in files:
        test_rows = _read_with_pyarrow(files["test"], "test")
        if label_col in test_rows and _labels_hidden(test_rows[label_col]):
            scored = "validation"
    for split in ("test", "validation"):
        if split not in files or not _same_content(path, files[split]):
            continue
        if split in ("test", scored):
            scored_as = (
                "" if split == "test" else ", which fine-tuning runs on it score as their test (hidden test labels)"
            )
            raise UserError(
                f"--unlabeled_split {unlabeled_split} is refused: {path} is the {split} file of {data}"
                f"{scored_as}; pretraining on those texts leaks the evaluation of the fine-tuning runs that "
                "start from this model"
            )
        warn(
            f"warning: --unlabeled_split {unlabeled_split} is the validation file of {data}: fine-tuning runs "
            "on it that start from this model pick their best epoch on texts it was pretrained on (their test "
            "is unaffected)"
        )


def _same_content(path: str, other: str) -> bool:
    """The same file (through a link or another spelling of its path) or the same bytes."""
    return os.path.samefile(path, other) or filecmp.cmp(path, other, shallow=False)


def _labels_hidden(labels) -> bool:
    """GLUE-style test files: every label -1 (or missing), withheld for the leaderboard."""
    return len(labels) > 0 and all(v is None or (not isinstance(v, str) and v == -1) for v in labels)


def _load_raw(data: str, label_col: str) -> tuple[dict, list[str] | None]:
    """Column dicts per split, from `synthetic`, a local folder or file, or the hub; and the class
    names when the labels are already ids 0..K-1 with names (a hub ClassLabel), else None."""
    if data == "synthetic":
        return make_synthetic(), list(SYNTHETIC_LABELS)
    datasets = _quiet_datasets()
    if os.path.exists(data) and datasets is None:  # local files load without it too
        return {split: _read_with_pyarrow(path, split) for split, path in _local_files(data).items()}, None
    if os.path.exists(data):
        loaded = {}
        for split, path in _local_files(data).items():
            try:
                loaded[split] = datasets.load_dataset(
                    FILE_TYPES[os.path.splitext(path)[1]], data_files={split: path}, split=split
                )
            except Exception as e:  # parser errors come in many types
                raise UserError(f"cannot read {path} ({split} split): {_read_error(path, e)}") from None
    elif _looks_like_path(data):
        raise UserError(f"--data {data}: no such file or folder")
    elif datasets is None:
        raise UserError(
            f"--data {data}: loading from the hub needs the datasets package "
            "(pip install -r requirements.txt), or pass a local folder"
        )
    else:
        try:
            loaded = datasets.load_dataset(_hub_name(data), glue.task_of(data))
            if glue.task_of(data):  # mnli: its matched validation and test are the GLUE ones
                loaded = {
                    split: next(loaded[name] for name in names if name in loaded)
                    for split, names in glue.split_names(data).items()
                    if any(name in loaded for name in names)
                }
        except Exception as e:  # hub errors come in many types; the first line says which
            raise UserError(
                f"cannot load dataset {data!r}: {first_line(e)} (offline? pass a local folder with --data)"
            ) from None
    out = {
        name: {c: loaded[name][c] for c in loaded[name].column_names}
        for name in ("train", "validation", "test")
        if name in loaded
    }
    if "train" not in out:
        raise UserError(f"--data {data}: no train split (found: {', '.join(loaded)})")
    feature = loaded["train"].features.get(label_col)
    return out, list(getattr(feature, "names", None) or []) or None


def _quiet_datasets():
    """The datasets package with its progress bars and logging off (errors are reported once, by
    us); None where it is not installed, as on the lent GPU machine's image."""
    try:
        import datasets
    except ImportError:
        return None
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    return datasets


def _read_with_pyarrow(path: str, split: str) -> dict:
    """One local file as columns, with pyarrow (a dependency of datasets, which reads files with
    it too), for machines without datasets; a .json file must hold one JSON object per line."""
    import pyarrow.csv
    import pyarrow.json
    import pyarrow.parquet

    read = {"csv": pyarrow.csv.read_csv, "json": pyarrow.json.read_json, "parquet": pyarrow.parquet.read_table}[
        FILE_TYPES[os.path.splitext(path)[1]]
    ]
    try:
        return read(path).to_pydict()
    except Exception as e:  # parser errors come in many types
        raise UserError(f"cannot read {path} ({split} split): {_read_error(path, e)}") from None


def _looks_like_path(data: str) -> bool:
    return data.startswith((".", "/", "~")) or data.count("/") > 1 or os.path.splitext(data)[1] in FILE_TYPES


def data_unavailable(data: str) -> str | None:
    """Why --data cannot be loaded, where that shows in a moment: a missing path, a folder without
    usable files, a hub dataset neither cached nor reachable. None: loading checks the rest."""
    if data == "synthetic":
        return None
    if os.path.exists(data):
        try:
            _local_files(data)
        except UserError as e:
            return str(e)
        return None
    if _looks_like_path(data):
        return f"--data {data}: no such file or folder"
    why = hub_unavailable()
    if why and not _in_hub_cache(_hub_name(data)):
        return (
            f"cannot load dataset {data!r}: not in the local cache and {why}; pass a local folder with --data, "
            f"or {OFFLINE_DEMO}"
        )
    return None


def _hub_name(data: str) -> str:
    return glue.HUB_NAME if glue.task_of(data) else HUB_ALIASES.get(data, data)


def _in_hub_cache(name: str) -> bool:
    from huggingface_hub import constants

    datasets_cache = os.environ.get("HF_DATASETS_CACHE", os.path.join(constants.HF_HOME, "datasets"))
    return any(
        os.path.isdir(path)
        for path in (
            os.path.join(constants.HF_HUB_CACHE, "datasets--" + name.replace("/", "--")),
            os.path.join(datasets_cache, name.replace("/", "___")),
            os.path.join(datasets_cache, name.split("/")[-1]),
        )
    )


def _read_error(path: str, e: Exception) -> str:
    """What is wrong with a data file datasets could not parse, with the row where known."""
    if os.path.getsize(path) == 0:
        return "the file is empty"
    with open(path, "rb") as f:
        head = f.read(1 << 20)
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as u:
        if u.start < len(head) - 4:  # not a character cut at the end of the 1 MiB read
            return f"not UTF-8 text (byte {u.start}); is it really a {os.path.splitext(path)[1]} file?"
    if path.endswith(".jsonl"):
        with open(path, encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, 1):
                try:
                    line.strip() and json.loads(line)
                except json.JSONDecodeError as j:
                    return f"line {number} is not valid JSON ({j.msg})"
    if "corresponds to no data" in str(e):  # datasets' words for a file with a header only
        return "the file has no data rows"
    while e.__cause__ is not None or e.__context__ is not None:  # the parser's own message
        e = e.__cause__ or e.__context__
    return first_line(e)


def _local_files(path: str) -> dict:
    """{split: file} of a local file (train) or folder. A folder's split files are named train,
    validation and test (a GLUE task's folder may use the hub's names: glue.split_names). A file
    named like a validation or test split that is not read (dev.csv, test_matched.csv outside
    mnli) is refused while that split has no file: silently carving it out of train instead
    would evaluate on other examples than the user meant."""
    if os.path.isfile(path):
        if os.path.splitext(path)[1] not in FILE_TYPES:
            raise UserError(f"--data {path}: unsupported file type (use {', '.join(FILE_TYPES)})")
        return {"train": path}
    files = {}
    for split, names in glue.split_names(path).items():
        found = [
            f for name in names for ext in FILE_TYPES for f in glob.glob(os.path.join(glob.escape(path), name + ext))
        ]
        if len(found) > 1:
            raise UserError(
                f"--data {path}: {' and '.join(map(os.path.basename, found))} are both {split} files; keep one"
            )
        if found and not os.path.exists(found[0]):
            raise UserError(f"--data {path}: {found[0]} is a broken symbolic link (to {os.readlink(found[0])})")
        if found:
            files[split] = found[0]
    if "train" not in files:
        raise UserError(f"--data {path}: folder has no train.parquet/.csv/.jsonl")
    _refuse_unread_split_files(path, files)
    return files


# names (before the extension) that a reader takes for a validation or test split; followed by
# nothing or by _ - . and more (validation_matched, dev-2, test_matched)
SPLIT_LIKE = {"validation": ("validation", "valid", "val", "dev"), "test": ("test",)}


def _refuse_unread_split_files(folder: str, files: dict) -> None:
    for split, words in SPLIT_LIKE.items():
        if split in files:
            continue
        unread = sorted(
            name
            for name in os.listdir(folder)
            if os.path.splitext(name)[1] in FILE_TYPES and _starts_with_word(os.path.splitext(name)[0].lower(), words)
        )
        if unread:
            read = " or ".join(f"{name}.parquet/.csv/.jsonl" for name in glue.split_names(folder)[split])
            raise UserError(
                f"--data {folder}: {', '.join(unread)} not read: the {split} split is read from {read}; "
                f"rename the one to use, or move {'it' if len(unread) == 1 else 'them'} out of the folder "
                f"to have {split} carved out of train"
            )


def _starts_with_word(stem: str, words: tuple[str, ...]) -> bool:
    return any(stem == w or stem.startswith(w + sep) for w in words for sep in "_-.")


def _label_values(raw: dict, label_col: str, warn) -> tuple[list, list[str]]:
    """The label values in id order (those of train), and their names."""
    seen = {}
    for split, rows in raw.items():
        empty = next(
            (row for row, v in enumerate(rows[label_col]) if v is None or (isinstance(v, float) and math.isnan(v))),
            None,
        )
        if empty is not None:  # else an empty cell would be reported as the float column it makes
            raise UserError(
                f"label column {label_col!r} of the {split} split: data row {empty + 1} is empty; "
                "clean or drop such rows"
            )
        seen[split] = set()
        for v in rows[label_col]:
            if isinstance(v, bool) or not isinstance(v, (int, np.integer, str)):
                hint = "; for a regression target pass --task regression" if isinstance(v, (float, np.floating)) else ""
                raise UserError(
                    f"label column {label_col!r} holds {type(v).__name__} values like "
                    f"{v!r}: labels must be integers or strings{hint}"
                )
            seen[split].add(v)
    values = seen["train"]
    for split, found in seen.items():
        unseen = found - values
        if unseen:  # it would become a class the model never trains on
            raise UserError(
                f"the {split} split has label(s) {', '.join(map(repr, sorted(unseen, key=str)))} "
                f"that train does not have (train's: {', '.join(map(repr, sorted(values, key=str)))})"
            )
    if not (all(isinstance(v, str) for v in values) or all(not isinstance(v, str) for v in values)):
        raise UserError(f"label column {label_col!r} mixes integers and strings")
    stripped = {}
    for v in values:
        if isinstance(v, str):
            stripped.setdefault(v.strip(), []).append(v)
    twins = [sorted(group) for group in stripped.values() if len(group) > 1]
    if twins:
        warn(
            f"warning: labels that differ only by surrounding spaces are separate classes here: "
            f"{'; '.join(' / '.join(map(repr, group)) for group in twins)}"
        )
    ordered = sorted(values)
    return ordered, [str(v) for v in ordered]


def regression_targets(values, label_col: str, split: str) -> list[float]:
    """The labels of one split as finite floats; numbers written as text (a CSV column with one
    stray word is read as text) are parsed. A UserError names the split and the data row."""
    targets = []
    for row, v in enumerate(values):
        number = None
        if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)):
            number = float(v)
        elif isinstance(v, str):
            try:
                number = float(v)
            except ValueError:
                pass
        if number is None or not math.isfinite(number):
            what = "empty" if v is None or (isinstance(v, float) and math.isnan(v)) else "not a finite number"
            raise UserError(
                f"label column {label_col!r} of the {split} split: data row {row + 1} is {what} "
                f"(value {v!r:.60}); --task regression needs a number in every row"
            )
        if abs(number) > MAX_REGRESSION_TARGET:
            raise UserError(
                f"label column {label_col!r} of the {split} split: data row {row + 1} is {number:g}, beyond "
                f"±{MAX_REGRESSION_TARGET:.1e}, where its squared error overflows the float32 MSE loss; "
                "rescale the column"
            )
        targets.append(number)
    return targets


def check_texts(values, where: str) -> None:
    """Every cell a non-empty string: None would train on the text "None", a list on its repr."""
    for row, v in enumerate(values):
        if not isinstance(v, str) or not v.strip():
            what = (
                "empty"
                if isinstance(v, str)
                else ("missing (null)" if v is None else f"a {type(v).__name__}, not text")
            )
            raise UserError(f"{where}: data row {row + 1} is {what} (value {v!r:.60}); clean or drop such rows")


def check_columns(columns, text_cols: list[str], label_col: str | None, where: str = "the data") -> None:
    missing = [c for c in [*text_cols, *([label_col] if label_col else [])] if c not in columns]
    if missing:
        raise UserError(f"column(s) {', '.join(missing)} not found in {where}; columns are: {', '.join(columns)}")


def _stratified_split(rows: dict, ratio: float, label_col: str):
    """Deterministically carve `ratio` of each class out of rows: (rest, carved)."""
    labels = [str(v) for v in rows[label_col]]
    rng = random.Random(SPLIT_SEED)
    carved = []
    for cls in sorted(set(labels)):
        idx = [i for i, v in enumerate(labels) if v == cls]
        rng.shuffle(idx)
        carved += idx[: round(len(idx) * ratio)]
    carved_set = set(carved)
    rest = [i for i in range(len(labels)) if i not in carved_set]
    return _take(rows, rest), _take(rows, sorted(carved))


def _random_split(rows: dict, ratio: float, label_col: str):
    """Deterministically carve a random `ratio` of rows (regression: no classes to stratify by):
    (rest, carved)."""
    n = len(rows[label_col])
    order = list(range(n))
    random.Random(SPLIT_SEED).shuffle(order)
    carved = set(order[: round(n * ratio)])
    return _take(rows, [i for i in range(n) if i not in carved]), _take(rows, sorted(carved))


def _take(rows: dict, idx: list[int]) -> dict:
    return {c: [v[i] for i in idx] for c, v in rows.items()}


def balanced_subset(labels: np.ndarray, limit: int | None) -> np.ndarray:
    """Indices of at most `limit` examples, as equal per class as the data allows, seeded."""
    if limit is None or limit >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(SPLIT_SEED)
    by_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    keep, remaining = [], limit
    for i, idx in enumerate(sorted(by_class, key=len)):  # small classes first, leftovers to the rest
        share = remaining // (len(by_class) - i)
        keep.append(idx[:share])
        remaining -= len(keep[-1])
    return np.sort(np.concatenate(keep))


def random_subset(n: int, limit: int | None) -> np.ndarray:
    """Indices of at most `limit` of n examples, seeded (regression: no classes to balance)."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(SPLIT_SEED).permutation(n)[:limit])


# ----------------------------------------------------------------------------- synthetic data

SYNTHETIC_LABELS = ("neg", "pos")
POSITIVE = ["great", "excellent", "wonderful", "superb", "loved", "brilliant", "delightful", "moving"]
NEGATIVE = ["awful", "terrible", "boring", "worst", "hated", "dull", "painful", "clumsy"]
FILLER = [
    f"{a}{b}"
    for a in ["ka", "lo", "mi", "nu", "pe", "ro", "si", "ta", "vu", "ze"]
    for b in ["x", "y", "z", "q", "w", "n", "m", "r", "d", "b"]
]


def make_synthetic(n_train: int = 2000, n_test: int = 500, seed: int = 0) -> dict:
    """A learnable sentiment-like task that needs no network: among 10-80 filler words each
    text holds 2-4 cue words of its class and fewer of the other, so the label is a vote that
    must be counted, not one keyword; 0 = negative, 1 = positive."""
    rng = random.Random(seed)

    def make(n):
        texts, labels = [], []
        for i in range(n):
            label = i % 2
            words = rng.choices(FILLER, k=rng.randint(10, 80))
            own = rng.randint(2, 4)
            cues = [rng.choice(POSITIVE if label else NEGATIVE) for _ in range(own)]
            cues += [rng.choice(NEGATIVE if label else POSITIVE) for _ in range(rng.randint(0, own - 1))]
            for cue in cues:
                words.insert(rng.randrange(len(words) + 1), cue)
            texts.append(" ".join(words))
            labels.append(label)
        return {"text": texts, "label": labels}

    return {"train": make(n_train), "test": make(n_test)}


# ----------------------------------------------------------------------------- tokenization


@dataclass
class Encoded:
    ids: list[np.ndarray]  # token ids per example, truncated, with special tokens
    n_tokens: np.ndarray  # untruncated length in tokens (with special tokens)
    # segment ids per example where the pair template gives segment B its own (BERT: 0 for
    # [CLS] A [SEP], 1 for B [SEP]); None for single texts and templates that are all 0 (ModernBERT)
    token_types: list[np.ndarray] | None = None


def make_cache_dir(cache_dir: str) -> None:
    """Create --cache_dir, or say in one line why it cannot be written."""
    try:
        if os.path.exists(cache_dir) and not os.path.isdir(cache_dir):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        os.makedirs(cache_dir, exist_ok=True)
        if not os.access(cache_dir, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
    except OSError as e:
        raise UserError(
            f"--cache_dir {cache_dir}: cannot write there ({e.strerror}); pass a writable folder or set $FTKIT_CACHE"
        ) from None


def encode(
    texts: list[str],
    tokenizer,
    max_len: int,
    truncation: str,
    cache_dir: str,
    warn=print,
    text_pairs: list[str] | None = None,
) -> Encoded:
    """Tokenize once; cached on disk by (texts, text_pairs, tokenizer, max_len, truncation). An
    unreadable cache file (cut short by a full disk or a copy) is rebuilt.

    With text_pairs (segment B of each example, as in tokenizer(text, text_pair)) each example is
    encoded with the tokenizer's pair template, both segments truncated longest-first (HF's
    default) to fit max_len."""
    pairs = text_pairs is not None
    if pairs and truncation != "head":
        raise UserError(
            f"--truncation {truncation} applies to single texts; a pair is truncated longest-first (--truncation head)"
        )
    if pairs and len(text_pairs) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(text_pairs)} text_pairs")
    key = (
        hash_texts([*texts, *text_pairs], tokenizer_fingerprint(tokenizer), f"{max_len}/{truncation}/pair")
        if pairs
        else hash_texts(texts, tokenizer_fingerprint(tokenizer), f"{max_len}/{truncation}")
    )
    path = os.path.join(cache_dir, f"tokens-{key[:24]}.npz")
    if os.path.exists(path):
        try:
            with np.load(path) as f:
                flat, offsets, n_tokens = f["flat"], f["offsets"], f["n_tokens"]
                flat_types = f["token_types"] if "token_types" in f.files else None
            cut = [slice(offsets[i], offsets[i + 1]) for i in range(len(n_tokens))]
            types = None if flat_types is None else [flat_types[c] for c in cut]
            return Encoded([flat[c] for c in cut], n_tokens, types)
        except Exception as e:  # zip, pickle and key errors come in many types
            warn(f"warning: the tokens cache {path} is unreadable ({type(e).__name__}); rebuilding it")

    if pairs:
        encoded = _encode_pairs(texts, text_pairs, tokenizer, max_len)
        _write_tokens_cache(path, cache_dir, encoded)
        return encoded
    prefix, suffix = _special_tokens(tokenizer)
    budget = max_len - len(prefix) - len(suffix)
    if budget < 1:
        raise UserError(
            f"--max_len {max_len} leaves no room for text after the model's "
            f"{len(prefix) + len(suffix)} special tokens; use at least {len(prefix) + len(suffix) + 1}"
        )
    ids, n_tokens = [], []
    for start in range(0, len(texts), 1000):
        for body in tokenizer(texts[start : start + 1000], add_special_tokens=False)["input_ids"]:
            n_tokens.append(len(body) + len(prefix) + len(suffix))
            ids.append(np.array(prefix + truncate(body, budget, truncation) + suffix, dtype=np.int32))
    encoded = Encoded(ids, np.array(n_tokens, dtype=np.int64))
    _write_tokens_cache(path, cache_dir, encoded)
    return encoded


def _write_tokens_cache(path: str, cache_dir: str, encoded: Encoded) -> None:
    offsets = np.concatenate([[0], np.cumsum([len(x) for x in encoded.ids])]).astype(np.int64)
    os.makedirs(cache_dir, exist_ok=True)
    flat = np.concatenate(encoded.ids) if encoded.ids else np.zeros(0, np.int32)
    arrays = {"flat": flat, "offsets": offsets, "n_tokens": encoded.n_tokens}
    if encoded.token_types is not None:
        arrays["token_types"] = np.concatenate(encoded.token_types) if encoded.ids else np.zeros(0, np.int8)
    atomic_write(path, lambda f: np.savez(f, **arrays))


@dataclass(frozen=True)
class PairTemplate:
    """Where a tokenizer's pair template puts its special tokens: prefix A middle B suffix, each
    part with its segment (token type) id."""

    prefix: list[int]
    middle: list[int]
    suffix: list[int]
    prefix_types: list[int]
    middle_types: list[int]
    suffix_types: list[int]
    type_a: int
    type_b: int

    @property
    def n_special(self) -> int:
        return len(self.prefix) + len(self.middle) + len(self.suffix)

    @property
    def has_types(self) -> bool:
        return any([*self.prefix_types, *self.middle_types, *self.suffix_types, self.type_a, self.type_b])

    def build(self, a: list[int], b: list[int]) -> tuple[list[int], list[int]]:
        ids = self.prefix + a + self.middle + b + self.suffix
        types = (
            self.prefix_types + [self.type_a] * len(a) + self.middle_types + [self.type_b] * len(b) + self.suffix_types
        )
        return ids, types


def pair_template(tokenizer) -> PairTemplate:
    """The tokenizer's own pair template, found by encoding a probe pair (as _special_tokens does
    for single texts)."""
    a = tokenizer("hello", add_special_tokens=False)["input_ids"]
    b = tokenizer("world", add_special_tokens=False)["input_ids"]
    full = tokenizer("hello", "world", return_token_type_ids=True)
    ids, types = full["input_ids"], full.get("token_type_ids") or [0] * len(full["input_ids"])
    for i in range(len(ids) - len(a) + 1):
        if ids[i : i + len(a)] != a:
            continue
        for j in range(i + len(a), len(ids) - len(b) + 1):
            if ids[j : j + len(b)] == b:
                end = j + len(b)
                return PairTemplate(
                    ids[:i],
                    ids[i + len(a) : j],
                    ids[end:],
                    types[:i],
                    types[i + len(a) : j],
                    types[end:],
                    types[i],
                    types[j],
                )
    raise RuntimeError(f"cannot find where {tokenizer.name_or_path} puts the special tokens of a pair")


def _encode_pairs(texts: list[str], text_pairs: list[str], tokenizer, max_len: int) -> Encoded:
    template = pair_template(tokenizer)
    budget = max_len - template.n_special
    if budget < 2:
        raise UserError(
            f"--max_len {max_len} cannot hold a sentence pair: the model's {template.n_special} special "
            f"tokens and at least one token of each text need {template.n_special + 2}"
        )
    ids, types, n_tokens = [], [], []
    for start in range(0, len(texts), 1000):
        bodies_a = tokenizer(texts[start : start + 1000], add_special_tokens=False)["input_ids"]
        bodies_b = tokenizer(text_pairs[start : start + 1000], add_special_tokens=False)["input_ids"]
        for a, b in zip(bodies_a, bodies_b, strict=True):
            n_tokens.append(len(a) + len(b) + template.n_special)
            example_ids, example_types = template.build(*truncate_longest_first(a, b, budget))
            ids.append(np.array(example_ids, dtype=np.int32))
            types.append(np.array(example_types, dtype=np.int8))
    return Encoded(ids, np.array(n_tokens, dtype=np.int64), types if template.has_types else None)


def truncate_longest_first(a: list[int], b: list[int], budget: int) -> tuple[list[int], list[int]]:
    """Cut a pair to `budget` tokens from the ends, as HF tokenizers' longest_first does: the
    shorter text is kept whole when it fits in half the budget and the longer gets the rest;
    otherwise each gets half, the odd token going to the longer one (to B on a tie)."""
    if len(a) + len(b) <= budget:
        return a, b
    n_short, n_long = sorted((len(a), len(b)))
    n_long = max(n_short, budget - n_short)
    if n_short + n_long > budget:
        n_short, n_long = budget // 2, budget // 2 + budget % 2
    n_a, n_b = (n_long, n_short) if len(a) > len(b) else (n_short, n_long)
    return a[:n_a], b[:n_b]


def truncate(body: list[int], budget: int, mode: str) -> list[int]:
    if len(body) <= budget:
        return body
    if mode == "head":
        return body[:budget]
    if mode == "tail":
        return body[-budget:]
    head = min(HEAD_TAIL_HEAD, budget // 2)
    return body[:head] + body[len(body) - (budget - head) :]


def _special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a single sequence (e.g. [CLS] / [SEP])."""
    body = tokenizer("hello", add_special_tokens=False)["input_ids"]
    full = tokenizer("hello")["input_ids"]
    for at in range(len(full) - len(body) + 1):
        if full[at : at + len(body)] == body:
            return full[:at], full[at + len(body) :]
    raise RuntimeError(f"cannot find where {tokenizer.name_or_path} puts its special tokens")


def split_fingerprint(split: Split, label_names: list[str]) -> str:
    """A digest of a split's texts and labels, as the run uses them: a resume with an edited
    data file is refused like one with other settings."""
    return hash_texts(split.texts, *map(str, split.labels.tolist()), *label_names)[:16]


def tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else f"{tokenizer.name_or_path}/{len(tokenizer)}"
    return hash_texts([text])


# ----------------------------------------------------------------------------- batching


def collate(
    ids: list[np.ndarray],
    pad_id: int,
    max_len: int,
    pad_to_max: bool = False,
    token_types: list[np.ndarray] | None = None,
) -> dict:
    """Pad to the longest in the batch, rounded up to a multiple of 8 (tensor-core friendly),
    or with pad_to_max to max_len (what a pre-padded dataset does; for comparisons). With
    token_types (pass them only for a model that uses them: uses_token_type_ids) the batch also
    holds token_type_ids, padded with 0."""
    longest = max(len(x) for x in ids)
    width = max_len if pad_to_max else min(math.ceil(longest / 8) * 8, max(max_len, longest))
    input_ids = np.full((len(ids), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(ids), width), dtype=np.int64)
    for row, x in enumerate(ids):
        input_ids[row, : len(x)] = x
        mask[row, : len(x)] = 1
    batch = {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(mask)}
    if token_types is not None:
        types = np.zeros((len(ids), width), dtype=np.int64)
        for row, x in enumerate(token_types):
            types[row, : len(x)] = x
        batch["token_type_ids"] = torch.from_numpy(types)
    return batch


def uses_token_type_ids(model_config) -> bool:
    """Whether the encoder has learned segment embeddings to feed token_type_ids into: BERT (2
    types) does; RoBERTa (1), ModernBERT and DistilBERT (none) do not."""
    return getattr(model_config, "type_vocab_size", 0) > 1


MEGABATCH = 50  # batches per length-sorted group, as in HF's LengthGroupedSampler


def train_batches(
    lengths: np.ndarray, batch_size: int, epoch: int, seed: int, group_by_length: bool
) -> list[np.ndarray]:
    """The GLOBAL batches of one epoch (example indices), the same for every rank and every world
    size: each example once, the last batch short when the data is not a multiple of batch_size.

    Seeded shuffle. With group_by_length, the shuffled order is cut into mega-batches of 50
    batches, each sorted by length and cut into batches (so a batch holds similar lengths and
    little padding), the batches are shuffled, and the one holding the longest example goes first
    (an out-of-memory error shows at step 1, not hours in).
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    if not group_by_length:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    batches = []
    for start in range(0, len(order), MEGABATCH * batch_size):
        mega = order[start : start + MEGABATCH * batch_size]
        mega = mega[np.argsort(-lengths[mega], kind="stable")]
        batches += [mega[i : i + batch_size] for i in range(0, len(mega), batch_size)]
    batches = [batches[i] for i in rng.permutation(len(batches))]
    longest = max(range(len(batches)), key=lambda i: lengths[batches[i]].max())
    batches.insert(0, batches.pop(longest))
    return batches


def rank_slice(batch: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """This rank's share of a global batch: contiguous, equal for a full batch; of a short last
    batch the first ranks get one example more, and a rank may get none."""
    return np.array_split(batch, world_size)[rank]


class StepPlan(list):
    """One optimizer step of a rank: its share of the global batch (`share`, empty when a short last
    batch leaves the rank none) cut into micro-batches (the list: example-index arrays), the global
    batch it is cut from (all ranks' examples: the loss divides by its size), and the next step of
    the epoch (None for the last), whose host batches the loop builds while this step runs on the
    device (`prepared`)."""

    def __init__(self, share: np.ndarray, global_batch: np.ndarray, micro_batch: int):
        super().__init__()
        self.share, self.global_batch = share, global_batch
        self.next_step: StepPlan | None = None
        self.cut(micro_batch)

    def cut(self, micro_batch: int) -> None:
        """Cut the share into micro-batches of at most micro_batch examples; again after an
        out-of-memory back-off, when host batches built for the old cut no longer apply."""
        self[:] = [self.share[i : i + micro_batch] for i in range(0, len(self.share), micro_batch)]
        self.prepared: list | None = None


def plan_epoch(
    lengths: np.ndarray,
    batch_size: int,
    epoch: int,
    seed: int,
    rank: int,
    world_size: int,
    micro_batch: int,
    group_by_length: bool,
) -> list[StepPlan]:
    """This rank's work in one epoch: for each optimizer step, its share of the global batch
    (train_batches, rank_slice) cut into micro-batches of at most micro_batch examples, whose
    gradients the step accumulates. Its length is the number of steps per epoch, the same on
    every rank; a resume mid-epoch picks up at its step_in_epoch-th entry."""
    plan = [
        StepPlan(rank_slice(batch, rank, world_size), batch, micro_batch)
        for batch in train_batches(lengths, batch_size, epoch, seed, group_by_length)
    ]
    for step, following in itertools.pairwise(plan):
        step.next_step = following
    return plan


def eval_shard(lengths: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """This rank's share of an eval split, every example on exactly one rank (no padding
    duplicates), sorted by length so batches waste little on padding."""
    idx = np.arange(rank, len(lengths), world_size)
    return idx[np.argsort(lengths[idx], kind="stable")]
