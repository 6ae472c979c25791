import numpy as np
import pandas as pd
import pytest

import data
import model as models
from config import UserError


def test_head_tail_keeps_first_and_last_tokens():
    body = list(range(1000))
    kept = data.truncate(body, 510, "head_tail")
    assert len(kept) == 510
    assert kept[:128] == body[:128] and kept[128:] == body[-382:]
    assert data.truncate(body, 254, "head_tail") == body[:127] + body[-127:]
    assert data.truncate(body, 10, "head") == body[:10]
    assert data.truncate(body, 10, "tail") == body[-10:]
    assert data.truncate(body[:5], 10, "head_tail") == body[:5]


def test_encode_adds_special_tokens_and_caches(tmp_path):
    texts = [" ".join(f"w{i}" for i in range(300)), "short text"]
    tok = models.load_tokenizer(models.resolve_model("tiny-bert"), texts * 10, str(tmp_path))
    enc = data.encode(texts, tok, 32, "head_tail", str(tmp_path))
    full = tok(texts[0])["input_ids"]
    assert len(enc.ids[0]) == 32 and enc.n_tokens[0] == len(full)
    assert enc.ids[0][0] == tok.cls_token_id and enc.ids[0][-1] == tok.sep_token_id
    assert list(enc.ids[0][1:16]) == full[1:16] and list(enc.ids[0][-16:]) == full[-16:]
    cached = data.encode(texts, tok, 32, "head_tail", str(tmp_path))
    assert all((a == b).all() for a, b in zip(enc.ids, cached.ids, strict=True))
    assert len(list(tmp_path.glob("tokens-*.npz"))) == 1


def test_a_truncated_tokens_cache_file_is_rebuilt_with_a_warning(tmp_path, capsys):
    texts = ["a short text", "another short text"] * 10
    tok = models.load_tokenizer(models.resolve_model("tiny-bert"), texts, str(tmp_path))
    enc = data.encode(texts, tok, 32, "head", str(tmp_path))
    (cache_file,) = tmp_path.glob("tokens-*.npz")
    cache_file.write_bytes(cache_file.read_bytes()[:100])  # a full disk or an interrupted copy
    rebuilt = data.encode(texts, tok, 32, "head", str(tmp_path))
    assert all((a == b).all() for a, b in zip(enc.ids, rebuilt.ids, strict=True))
    assert f"the tokens cache {cache_file} is unreadable" in capsys.readouterr().out
    data.encode(texts, tok, 32, "head", str(tmp_path))
    assert capsys.readouterr().out == ""  # the rebuilt file reads


def test_collate_pads_to_a_multiple_of_8_with_mask():
    batch = data.collate([np.array([5, 6, 7]), np.array([5] * 10)], pad_id=0, max_len=128)
    assert batch["input_ids"].shape == (2, 16)
    assert batch["attention_mask"].sum(1).tolist() == [3, 10]
    assert batch["input_ids"][0, 3:].eq(0).all()
    assert data.collate([np.array([1] * 100)], 0, 100)["input_ids"].shape == (1, 100)
    assert data.collate([np.array([5, 6, 7])], 0, 128, pad_to_max=True)["input_ids"].shape == (1, 128)


def test_eval_shards_cover_every_example_exactly_once_on_uneven_split():
    lengths = np.random.default_rng(0).integers(5, 50, size=101)
    for world in (1, 2, 3, 4):
        shards = [data.eval_shard(lengths, r, world) for r in range(world)]
        assert sorted(np.concatenate(shards).tolist()) == list(range(101))
        for s in shards:
            assert (np.diff(lengths[s]) >= 0).all()


def test_train_batches_cover_each_example_once_and_split_across_ranks():
    lengths = np.random.default_rng(0).integers(5, 300, size=203)
    for grouped in (False, True):
        batches = data.train_batches(lengths, 16, epoch=1, seed=3, group_by_length=grouped)
        flat = np.concatenate(batches)
        assert len(flat) == 203 and sorted(flat.tolist()) == list(range(203))  # each once, none repeated
        assert sorted(len(b) for b in batches) == [11] + [16] * 12
        for b in batches:  # the ranks' shares partition the global batch
            shares = [data.rank_slice(b, r, 2) for r in range(2)]
            assert sorted(np.concatenate(shares).tolist()) == sorted(b.tolist())
        again = data.train_batches(lengths, 16, epoch=1, seed=3, group_by_length=grouped)
        assert all((a == b).all() for a, b in zip(batches, again, strict=True))
        other = data.train_batches(lengths, 16, epoch=2, seed=3, group_by_length=grouped)
        assert not all((a == b).all() for a, b in zip(batches, other, strict=True))


def test_length_grouping_cuts_padding_and_still_mixes_lengths_across_steps():
    lengths = np.random.default_rng(1).integers(20, 512, size=2000)

    def padding_share(batches):
        return 1 - sum(lengths[b].sum() for b in batches) / sum(len(b) * lengths[b].max() for b in batches)

    random_batches = data.train_batches(lengths, 16, 0, 0, group_by_length=False)
    grouped = data.train_batches(lengths, 16, 0, 0, group_by_length=True)
    assert padding_share(random_batches) > 0.3 and padding_share(grouped) < 0.05
    assert lengths[grouped[0]].max() == lengths.max()  # the longest batch first: OOM shows at step 1
    batch_means = [lengths[b].mean() for b in grouped[1:]]
    assert abs(np.corrcoef(np.arange(len(batch_means)), batch_means)[0, 1]) < 0.3  # not sorted over time


def write(folder, split, frame):
    folder.mkdir(exist_ok=True)
    pd.DataFrame(frame).to_csv(folder / f"{split}.csv", index=False)


def test_val_split_is_stratified_deterministic_and_string_labels_map_sorted(tmp_path):
    labels = ["pos", "neg", "neutral"] * 40
    write(tmp_path, "train", {"text": [f"t{i}" for i in range(120)], "label": labels})
    write(tmp_path, "test", {"text": ["a", "b", "c"], "label": ["neg", "pos", "neutral"]})
    splits, names = data.load_splits(str(tmp_path), ["text"], "label", 0.25, None, None)
    again, _ = data.load_splits(str(tmp_path), ["text"], "label", 0.25, None, None)
    assert names == ["neg", "neutral", "pos"]
    assert np.bincount(splits["val"].labels).tolist() == [10, 10, 10]
    assert splits["val"].texts == again["val"].texts
    assert not set(splits["val"].texts) & set(splits["train"].texts)
    assert splits["test"].labels.tolist() == [0, 2, 1]


def test_balanced_subset_is_balanced_and_seeded():
    labels = np.array([0] * 90 + [1] * 10)
    keep = data.balanced_subset(labels, 20)
    assert np.bincount(labels[keep]).tolist() == [10, 10]
    assert (keep == data.balanced_subset(labels, 20)).all()
    assert np.bincount(labels[data.balanced_subset(labels, 40)]).tolist() == [30, 10]


def test_multiple_text_columns_are_joined(tmp_path):
    write(tmp_path, "train", {"title": ["A", "B"] * 10, "body": ["x", "y"] * 10, "label": [0, 1] * 10})
    splits, _ = data.load_splits(str(tmp_path), ["title", "body"], "label", 0.2, None, None)
    assert set(splits["train"].texts) == {"A x", "B y"}


def test_synthetic_task_is_balanced_and_has_cues():
    raw = data.make_synthetic(n_train=200, n_test=50)
    assert sum(raw["train"]["label"]) == 100
    for text, label in zip(raw["train"]["text"], raw["train"]["label"], strict=True):
        words = text.split()
        own = sum(w in (data.POSITIVE if label else data.NEGATIVE) for w in words)
        other = sum(w in (data.NEGATIVE if label else data.POSITIVE) for w in words)
        assert own > other


@pytest.mark.parametrize(
    "labels, message",
    [
        ([0.5, 1.5] * 5, "must be integers or strings"),
        ([1] * 10, "single class"),
    ],
)
def test_bad_labels(tmp_path, labels, message):
    write(tmp_path, "train", {"text": ["a"] * 10, "label": labels})
    with pytest.raises(UserError, match=message):
        data.load_splits(str(tmp_path), ["text"], "label", 0.2, None, None)


def test_an_epoch_plan_cuts_each_ranks_share_of_every_global_batch_into_micro_batches():
    lengths = np.random.default_rng(0).integers(5, 300, size=203)
    batches = data.train_batches(lengths, 16, epoch=1, seed=3, group_by_length=True)
    plans = [data.plan_epoch(lengths, 16, 1, 3, rank, 2, micro_batch=3, group_by_length=True) for rank in range(2)]
    assert len(plans[0]) == len(plans[1]) == len(batches) == 13  # the steps per epoch
    for step, batch in enumerate(batches):
        for rank, plan in enumerate(plans):
            assert all(1 <= len(mb) <= 3 for mb in plan[step])
            assert (np.concatenate(plan[step]) == data.rank_slice(batch, rank, 2)).all()
