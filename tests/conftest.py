"""Shared fixtures: generated data folders, a shared cache, and ways to run train.py."""

import os
import sys

import numpy as np
import pandas as pd
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # helpers.py
# One thread per process, inherited by every run the tests start: with `pytest -n 2` two tests
# share the 2 cores, and more threads than cores makes torch's spinning threads crawl.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"  # tests never download: a hub name fails at once, not after retries

# torch, data and train are imported where a fixture or helper needs them: the grid, report and
# config tests run without torch (tests/test_config.py checks), and OMP_NUM_THREADS above already
# gives torch one thread.


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("cache"))
    os.environ["FTKIT_CACHE"] = path
    return path


@pytest.fixture(scope="session")
def syn_folder(tmp_path_factory):
    """The generated task as a local folder of train.csv / test.csv (columns text, label)."""
    import data

    folder = tmp_path_factory.mktemp("syn")
    for split, cols in data.make_synthetic().items():
        pd.DataFrame({"text": cols["text"], "label": cols["label"]}).to_csv(folder / f"{split}.csv", index=False)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_model_folder(tmp_path_factory, syn_folder):
    """A random-init tiny BERT saved like a hub checkpoint: config, weights and tokenizer."""
    import data
    import model as models

    folder = str(tmp_path_factory.mktemp("tiny-bert-folder"))
    return models.write_model_folder(folder, "BertConfig", models._TINY, data.make_synthetic()["train"]["text"])


# who does what to what: the object follows from the subject, so a masked word is predictable
PAIRS = {"cat": "fish", "dog": "bone", "cow": "grass", "bird": "seed", "bee": "honey", "fox": "egg"}
PLACES = ["home", "farm", "park", "yard"]


@pytest.fixture(scope="session")
def text_folder(tmp_path_factory):
    """Texts an MLM can learn (fixed phrases, each animal with its own food), in train.csv without a
    label column, an unlabeled extra split, and a test.csv that pretraining must never read."""
    folder = tmp_path_factory.mktemp("texts")
    rng = np.random.default_rng(0)

    def texts(n):
        out = []
        for _ in range(n):
            sentences = []
            for _ in range(rng.integers(2, 5)):
                animal = rng.choice(list(PAIRS))
                sentences.append(f"the {animal} eats the {PAIRS[animal]} at the {rng.choice(PLACES)} .")
            out.append(" ".join(sentences))
        return out

    pd.DataFrame({"text": texts(400)}).to_csv(folder / "train.csv", index=False)
    pd.DataFrame({"text": texts(100)}).to_csv(folder / "unsupervised.csv", index=False)
    pd.DataFrame({"text": ["never read"] * 8, "label": [0, 1] * 4}).to_csv(folder / "test.csv", index=False)
    return str(folder)


FILLER = ["the", "movie", "was", "plot", "actor", "scene", "and", "a", "it", "story", "film", "music"]


@pytest.fixture(scope="session")
def regression_folder(tmp_path_factory):
    """A target the text determines: (number of "great") - (number of "awful"), plus a little noise."""
    folder = tmp_path_factory.mktemp("regression")
    rng = np.random.default_rng(0)
    for split, n in (("train", 480), ("test", 120)):
        texts, labels = [], []
        for _ in range(n):
            good, bad = rng.integers(0, 4, 2)
            words = [*rng.choice(FILLER, rng.integers(6, 14)), *["great"] * good, *["awful"] * bad]
            rng.shuffle(words)
            texts.append(" ".join(words))
            labels.append(float(good - bad) + rng.normal(0, 0.1))
        pd.DataFrame({"text": texts, "label": labels}).to_csv(folder / f"{split}.csv", index=False)
    return str(folder)


@pytest.fixture(scope="session")
def pair_folder(tmp_path_factory):
    """Pairs whose label says whether the second sentence repeats the first's key word."""
    folder = tmp_path_factory.mktemp("pairs")
    rng = np.random.default_rng(1)
    keys = ["red", "blue", "green", "gold", "gray", "pink"]
    for split, n in (("train", 320), ("test", 96)):
        rows = []
        for _ in range(n):
            a, same = rng.choice(keys), rng.integers(0, 2)
            b = a if same else rng.choice([k for k in keys if k != a])
            rows.append(
                {
                    "sentence1": f"the {a} {' '.join(rng.choice(FILLER, 4))}",
                    "sentence2": f"{' '.join(rng.choice(FILLER, 3))} {b} one",
                    "label": int(same),
                }
            )
        pd.DataFrame(rows).to_csv(folder / f"{split}.csv", index=False)
    return str(folder)
