"""Issue 21 groundwork: task metrics against sklearn/scipy, the --task / --metric_for_best flags,
sentence-pair encoding and regression labels."""

import math
import re

import numpy as np
import pandas as pd
import pytest
from helpers import run_inprocess

import config
import data
import glue
import metrics
import model as models
from config import UserError

try:  # the references for the metric tests (requirements-dev.txt); the other tests run without them
    import scipy.stats as scipy_stats
    import sklearn.metrics as sklearn_metrics
except ImportError:
    scipy_stats = sklearn_metrics = None
needs_references = pytest.mark.skipif(sklearn_metrics is None, reason="needs scikit-learn and scipy")


# ----------------------------------------------------------------------------- metrics


@needs_references
@pytest.mark.parametrize("num_classes", [2, 3, 5])
def test_classification_metrics_match_sklearn(num_classes):
    rng = np.random.default_rng(num_classes)
    labels = rng.integers(0, num_classes, 300)
    logits = rng.normal(size=(300, num_classes)) + 1.5 * np.eye(num_classes)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    pred = probs.argmax(1)
    out = metrics.task_metrics("classification", probs, labels)
    assert out["acc"] == pytest.approx(sklearn_metrics.accuracy_score(labels, pred))
    assert out["f1"] == pytest.approx(sklearn_metrics.f1_score(labels, pred, average="macro"))
    assert out["mcc"] == pytest.approx(sklearn_metrics.matthews_corrcoef(labels, pred))
    assert out["loss"] == pytest.approx(sklearn_metrics.log_loss(labels, probs, labels=range(num_classes)))
    if num_classes == 2:
        assert out["f1_positive"] == pytest.approx(sklearn_metrics.f1_score(labels, pred))
    else:
        assert "f1_positive" not in out
    # the existing metrics keep their values
    assert {k: out[k] for k in ("acc", "loss", "f1", "ece")} == metrics.classification_metrics(probs, labels)


@needs_references
def test_degenerate_classification_metrics_match_sklearn():
    labels = np.array([0, 1, 0, 1, 1])
    one_class_pred = np.zeros(5, dtype=int)
    assert metrics.matthews_correlation(one_class_pred, labels, 2) == 0
    assert sklearn_metrics.matthews_corrcoef(labels, one_class_pred) == 0
    assert metrics.f1_of_class(one_class_pred, labels, 1) == 0
    assert sklearn_metrics.f1_score(labels, one_class_pred, zero_division=0) == 0
    perfect = metrics.task_metrics("classification", np.eye(2)[labels], labels)
    assert perfect["mcc"] == 1 and perfect["f1_positive"] == 1


@needs_references
@pytest.mark.parametrize("ties", [False, True])
def test_regression_metrics_match_scipy(ties):
    rng = np.random.default_rng(7)
    target = rng.uniform(0, 5, 400)
    pred = target + rng.normal(0, 1, 400)
    if ties:  # STS-B scores come in steps of 0.2; rounded predictions tie too
        target, pred = np.round(target * 5) / 5, np.round(pred)
    out = metrics.task_metrics("regression", pred.reshape(-1, 1).astype(np.float32), target)
    pred = pred.astype(np.float32)  # what the model outputs
    assert out["mse"] == out["loss"] == pytest.approx(sklearn_metrics.mean_squared_error(target, pred))
    assert out["pearson"] == pytest.approx(scipy_stats.pearsonr(pred.astype(np.float32), target)[0])
    assert out["spearman"] == pytest.approx(scipy_stats.spearmanr(pred.astype(np.float32), target)[0])
    assert metrics.average_ranks(pred).tolist() == scipy_stats.rankdata(pred).tolist()


def test_constant_predictions_have_no_correlation_and_never_count_as_best():
    out = metrics.task_metrics("regression", np.ones(10), np.arange(10.0))
    assert math.isnan(out["pearson"]) and math.isnan(out["spearman"])
    assert out["mse"] == pytest.approx(np.mean((np.arange(10) - 1) ** 2))
    assert not metrics.is_improvement("pearson", math.nan, None)
    assert metrics.is_improvement("pearson", 0.1, math.nan)


def test_each_metric_says_whether_higher_is_better():
    assert metrics.is_improvement("acc", 0.8, 0.7) and not metrics.is_improvement("acc", 0.7, 0.8)
    assert metrics.is_improvement("loss", 0.3, 0.4) and not metrics.is_improvement("loss", 0.4, 0.3)
    assert metrics.is_improvement("mse", 0.3, 0.4) and metrics.is_improvement("spearman", 0.5, 0.4)
    assert metrics.is_improvement("accuracy", 0.8, None)  # HF's spelling
    assert not metrics.is_improvement("acc", 0.8, 0.8)  # a tie keeps the earlier epoch
    for table in metrics.TASK_METRICS.values():
        assert table.default in table.higher_is_better and table.higher_is_better["loss"] is False


def test_the_task_types_and_what_their_metrics_say_are_one_table():
    """metrics.TASK_METRICS names the task types: model.py's torch side has a rule for each and
    no other, and every GLUE task is of one of them, its headline metric one that type reports."""
    assert list(models.TASK_HEADS) == list(metrics.TASK_METRICS)
    for name, task in glue.GLUE_TASKS.items():
        assert task.metric in metrics.TASK_METRICS[task.task].higher_is_better, name
    sums = np.array([6.0, 2.0, 4.0])  # masked-LM evaluation keeps the split's loss, correct and masked sums
    assert metrics.task_metrics("mlm", sums, None) == metrics.masked_lm_metrics(6.0, 2.0, 4.0)
    with pytest.raises(ValueError, match="unknown task 'ner'"):
        metrics.task_metrics("ner", sums, None)


def test_metric_for_best_is_checked_against_the_task_and_the_classes():
    assert metrics.metric_problem("classification", "mcc") is None
    assert metrics.metric_problem("regression", "loss") is None
    assert "not a regression metric" in metrics.metric_problem("regression", "acc")
    assert "not a classification metric" in metrics.metric_problem("classification", "pearson")
    assert "needs two classes; the data has 3" in metrics.metric_problem("classification", "f1_positive", 3)
    assert metrics.metric_problem("classification", "f1_positive", 2) is None


# ----------------------------------------------------------------------------- flags


def parse(*argv):
    return config.parse_args(list(argv))


def test_new_flags_at_their_defaults_leave_run_names_and_fingerprints_as_before():
    # names and fingerprint keys as main made them before --task, --metric_for_best, --text_pairs
    assert parse().run_name == "bert-cls-s42"
    smoke = parse("--data", "synthetic", "--truncation", "tail", "--smoke")
    assert smoke.run_name == "bert-cls-tail-synthetic-s42-smoke"
    new_settings = {"task", "metric_for_best", "text_pairs"}
    args = parse()
    assert (args.task, args.metric_for_best, args.text_pairs) == ("classification", "acc", True)
    assert not new_settings & set(config.run_fingerprint(vars(args)))
    before = {k: v for k, v in vars(args).items() if k not in new_settings}  # an older run's config.json
    assert config.differing_settings(before, vars(args)) == []
    assert config.setting_labels(before) == config.setting_labels(vars(args)) == {}


def test_pairs_are_part_of_the_name_only_when_joined_and_of_the_fingerprint_only_when_in_effect():
    pair, joined = parse("--text_col", "a", "b"), parse("--text_col", "a", "b", "--no-text_pairs")
    assert pair.run_name == "bert-cls-a+b-s42" and joined.run_name == "bert-cls-a+b-nopair-s42"
    older_joined_run = {k: v for k, v in vars(joined).items() if k != "text_pairs"}
    assert config.differing_settings(older_joined_run, vars(joined)) == []
    # a folder holding a run that joined its columns is not resumed as a pair run
    assert config.differing_settings(older_joined_run, vars(pair)) == ["text_pairs"]


def test_regression_and_metric_for_best_in_run_names_and_fingerprints():
    regression = parse("--task", "regression")
    assert regression.metric_for_best == "pearson" and regression.run_name == "bert-cls-regression-s42"
    assert {"task", "metric_for_best"} <= set(config.run_fingerprint(vars(regression)))
    by_spearman = parse("--task", "regression", "--metric_for_best", "spearmanr")
    assert by_spearman.run_name == "bert-cls-regression-bestspearman-s42"
    by_mcc = parse("--metric_for_best", "matthews_correlation")
    assert by_mcc.metric_for_best == "mcc" and by_mcc.run_name == "bert-cls-bestmcc-s42"
    assert parse("--metric_for_best", "accuracy").run_name == "bert-cls-s42"
    assert config.differing_settings(vars(parse()), vars(by_mcc)) == ["metric_for_best"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--task", "regression", "--metric_for_best", "acc"],
            "--metric_for_best acc is not a regression metric (use one of: pearson, spearman, mse, loss)",
        ),
        (["--metric_for_best", "pearson"], "--metric_for_best pearson is not a classification metric"),
        (["--metric_for_best", "bleu"], "--metric_for_best bleu is not a classification metric"),
        (
            ["--text_col", "a", "b", "--truncation", "tail"],
            "--truncation tail applies to single texts; a pair is truncated longest-first",
        ),
        (["--text_col", "a", "b", "--truncation", "head_tail"], "--truncation head_tail applies to single texts"),
        (["--no-text_pairs"], "--no-text_pairs joins two or more --text_col columns; there is one"),
        (["--task", "ordinal"], "invalid choice: 'ordinal'"),
    ],
)
def test_flags_the_task_does_not_define_end_in_one_error_line(argv, message, tmp_path, capsys):
    code = run_inprocess(
        "--model", "tiny-bert", "--data", "synthetic", "--wandb", "disabled", "--out_dir", tmp_path, *argv
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error:") and message in err, err


# ----------------------------------------------------------------------------- loading


def write(folder, split, frame):
    folder.mkdir(exist_ok=True)
    pd.DataFrame(frame).to_csv(folder / f"{split}.csv", index=False)


def test_regression_labels_are_floats_as_given_and_splits_are_seeded(tmp_path):
    scores = [round(i * 0.05, 2) for i in range(100)]
    write(tmp_path, "train", {"text": [f"t{i}" for i in range(100)], "label": scores})
    write(tmp_path, "test", {"text": ["a", "b"], "label": [0, 4.8]})
    splits, names = data.load_splits(str(tmp_path), ["text"], "label", 0.2, None, None, task="regression")
    again, _ = data.load_splits(str(tmp_path), ["text"], "label", 0.2, None, None, task="regression")
    assert names == [] and splits["test"].labels.tolist() == [0.0, 4.800000190734863]
    assert splits["train"].labels.dtype == np.float32
    assert (len(splits["train"].texts), len(splits["val"].texts)) == (80, 20)
    assert splits["val"].texts == again["val"].texts and not set(splits["val"].texts) & set(splits["train"].texts)
    carved_and_rest = np.concatenate([splits["train"].labels, splits["val"].labels])
    assert sorted(carved_and_rest.tolist()) == np.float32(scores).tolist()
    small, _ = data.load_splits(str(tmp_path), ["text"], "label", 0.2, 10, 1, task="regression")
    assert len(small["train"].labels) == 10 and len(small["test"].labels) == 1


@pytest.mark.parametrize(
    "labels, message",
    [
        (
            ["1.5", "x"] * 5,
            (
                "label column 'label' of the train split: data row 2 is not a finite number (value 'x'); "
                "--task regression needs a number in every row"
            ),
        ),
        ([1.0, None] * 5, "data row 2 is empty"),
        ([2.0] * 10, "holds a single value (2) in train: nothing to regress"),
    ],
)
def test_bad_regression_labels_name_split_and_row(tmp_path, labels, message):
    write(tmp_path, "train", {"text": ["a"] * 10, "label": labels})
    with pytest.raises(UserError, match=re.escape(message)):
        data.load_splits(str(tmp_path), ["text"], "label", 0.2, None, None, task="regression")


def test_a_bad_regression_label_in_test_names_the_test_split(tmp_path):
    write(tmp_path, "train", {"text": ["a"] * 10, "label": [0.5, 1.5] * 5})
    write(tmp_path, "test", {"text": ["a", "b", "c"], "label": ["1", "2", "high"]})
    with pytest.raises(UserError, match="of the test split: data row 3 is not a finite number"):
        data.load_splits(str(tmp_path), ["text"], "label", 0.2, None, None, task="regression")


def test_float_labels_without_regression_say_to_pass_task_regression(tmp_path):
    write(tmp_path, "train", {"text": ["a"] * 10, "label": [0.5, 1.5] * 5})
    with pytest.raises(UserError, match="must be integers or strings; for a regression target pass --task regression"):
        data.load_splits(str(tmp_path), ["text"], "label", 0.2, None, None)


def test_two_or_more_text_columns_give_segments_a_and_b(tmp_path):
    write(
        tmp_path,
        "train",
        {"q": ["Q1", "Q2"] * 10, "title": ["T1", "T2"] * 10, "body": ["b1", "b2"] * 10, "label": [0, 1] * 10},
    )
    splits, _ = data.load_splits(str(tmp_path), ["q", "title", "body"], "label", 0.2, None, None)
    train = splits["train"]
    assert set(zip(*train.segments, strict=True)) == {("Q1", "T1 b1"), ("Q2", "T2 b2")}  # first column A, the rest B
    assert set(train.texts) == {"Q1 T1 b1", "Q2 T2 b2"}
    assert train.encoder_inputs(pairs=True) == train.segments
    assert train.encoder_inputs(pairs=False) == (train.texts, None)
    single, _ = data.load_splits(str(tmp_path), ["q"], "label", 0.2, None, None)
    assert single["train"].segments is None
    assert single["train"].encoder_inputs(pairs=True) == (single["train"].texts, None)


def test_a_pair_row_with_one_empty_column_names_column_split_and_row(tmp_path):
    write(tmp_path, "train", {"s1": ["a", "b"] * 5, "s2": ["c", "d", "e", ""] + ["f"] * 6, "label": [0, 1] * 5})
    with pytest.raises(UserError, match="column 's2' of the train split of .*: data row 4 is missing"):
        data.load_splits(str(tmp_path), ["s1", "s2"], "label", 0.2, None, None)


# ----------------------------------------------------------------------------- pair encoding

PAIR_TEXTS_A = ["the cat sat on the mat", "a dog", " ".join(f"w{i}" for i in range(200)), "short one here"]
PAIR_TEXTS_B = [
    "it was a sunny day in the park",
    " ".join(f"v{i}" for i in range(150)),
    "tiny",
    " ".join(f"u{i}" for i in range(40)),
]


@pytest.fixture(scope="module")
def tiny_tokenizers(tmp_path_factory):
    """tiny-bert's and tiny-modernbert's tokenizers as train.py gets them (one WordPiece with
    bert-base-uncased's pair template: segment B gets token type 1)."""
    cache = str(tmp_path_factory.mktemp("tok"))
    corpus = (PAIR_TEXTS_A + PAIR_TEXTS_B) * 5
    return {
        name: models.load_tokenizer(models.resolve_model(name), corpus, cache)
        for name in ("tiny-bert", "tiny-modernbert")
    }


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-modernbert"])
@pytest.mark.parametrize("max_len", [512, 64, 17, 5])
def test_pairs_match_the_tokenizers_own_pair_encoding_and_truncation(tiny_tokenizers, name, max_len, tmp_path):
    tok = tiny_tokenizers[name]
    enc = data.encode(PAIR_TEXTS_A, tok, max_len, "head", str(tmp_path), text_pairs=PAIR_TEXTS_B)
    for i, (a, b) in enumerate(zip(PAIR_TEXTS_A, PAIR_TEXTS_B, strict=True)):
        hf = tok(a, b, truncation=True, max_length=max_len, return_token_type_ids=True)
        assert enc.ids[i].tolist() == hf["input_ids"]
        assert enc.n_tokens[i] == len(tok(a, b)["input_ids"])
        assert enc.token_types[i].tolist() == hf["token_type_ids"]
    sep = enc.ids[0].tolist().index(tok.sep_token_id)
    assert enc.token_types[0][: sep + 1].tolist() == [0] * (sep + 1) and set(enc.token_types[0][sep + 1 :]) == {1}


def test_a_pair_is_cls_a_sep_b_sep_and_kept_apart_from_the_joined_encoding(tiny_tokenizers, tmp_path):
    tok = tiny_tokenizers["tiny-bert"]
    a, b = ["the cat sat"], ["a dog"]
    pair = data.encode(a, tok, 64, "head", str(tmp_path), text_pairs=b)
    body_a, body_b = (tok(t, add_special_tokens=False)["input_ids"] for t in (a[0], b[0]))
    assert pair.ids[0].tolist() == [tok.cls_token_id, *body_a, tok.sep_token_id, *body_b, tok.sep_token_id]
    joined = data.encode(["the cat sat a dog"], tok, 64, "head", str(tmp_path))
    assert joined.ids[0].tolist() == [tok.cls_token_id, *body_a, *body_b, tok.sep_token_id]
    assert joined.token_types is None
    assert len(list(tmp_path.glob("tokens-*.npz"))) == 2
    # the pair's texts as two single texts hash the same strings: the key must still differ
    as_singles = data.encode(a + b, tok, 64, "head", str(tmp_path))
    assert len(as_singles.ids) == 2 and len(list(tmp_path.glob("tokens-*.npz"))) == 3


def test_pair_tokens_and_token_types_come_back_from_the_cache(tiny_tokenizers, tmp_path):
    tok = tiny_tokenizers["tiny-bert"]
    first = data.encode(PAIR_TEXTS_A, tok, 32, "head", str(tmp_path), text_pairs=PAIR_TEXTS_B)
    cached = data.encode(PAIR_TEXTS_A, tok, 32, "head", str(tmp_path), text_pairs=PAIR_TEXTS_B)
    assert len(list(tmp_path.glob("tokens-*.npz"))) == 1
    assert all((x == y).all() for x, y in zip(first.ids, cached.ids, strict=True))
    assert all((x == y).all() for x, y in zip(first.token_types, cached.token_types, strict=True))
    assert (first.n_tokens == cached.n_tokens).all()


@pytest.mark.parametrize(
    "len_a, len_b, budget, kept",
    [
        (3, 4, 10, (3, 4)),
        (2, 30, 10, (2, 8)),
        (30, 2, 10, (8, 2)),
        (30, 30, 10, (5, 5)),
        (30, 30, 9, (4, 5)),
        (40, 30, 9, (5, 4)),
        (6, 30, 10, (5, 5)),
        (5, 30, 10, (5, 5)),
    ],
)
def test_longest_first_truncation_cuts_the_longer_text_first(len_a, len_b, budget, kept):
    a, b = data.truncate_longest_first(list(range(len_a)), list(range(100, 100 + len_b)), budget)
    assert (len(a), len(b)) == kept and a == list(range(len(a))) and b == list(range(100, 100 + len(b)))


def test_a_max_len_that_cannot_hold_both_texts_is_one_user_error(tiny_tokenizers, tmp_path):
    tok = tiny_tokenizers["tiny-bert"]
    with pytest.raises(
        UserError,
        match=re.escape(
            "--max_len 4 cannot hold a sentence pair: the model's 3 special "
            "tokens and at least one token of each text need 5"
        ),
    ):
        data.encode(["a b"], tok, 4, "head", str(tmp_path), text_pairs=["c d"])
    enc = data.encode(["a b"], tok, 5, "head", str(tmp_path), text_pairs=["c d"])
    assert enc.ids[0].tolist() == tok("a b", "c d", truncation=True, max_length=5)["input_ids"]
    with pytest.raises(UserError, match="--truncation tail applies to single texts"):
        data.encode(["a b"], tok, 64, "tail", str(tmp_path), text_pairs=["c d"])


def test_collate_carries_token_types_only_when_given(tiny_tokenizers, tmp_path):
    tok = tiny_tokenizers["tiny-bert"]
    enc = data.encode(PAIR_TEXTS_A[:2], tok, 64, "head", str(tmp_path), text_pairs=PAIR_TEXTS_B[:2])
    batch = data.collate(enc.ids, tok.pad_token_id, 64, token_types=enc.token_types)
    assert batch["token_type_ids"].shape == batch["input_ids"].shape
    for row, types in enumerate(enc.token_types):
        assert batch["token_type_ids"][row, : len(types)].tolist() == types.tolist()
        assert batch["token_type_ids"][row, len(types) :].eq(0).all()
        # mean pooling averages over the attention mask: both segments' real tokens
        assert batch["attention_mask"][row].sum() == len(enc.ids[row])
    assert set(data.collate(enc.ids, tok.pad_token_id, 64)) == {"input_ids", "attention_mask"}


def test_segment_embeddings_are_used_by_bert_and_not_by_modernbert(tiny_tokenizers, tmp_path):
    from transformers import AutoModel

    bert_config = models.MODELS["tiny-bert"].tiny_config(vocab_size=2000, **models.MODELS["tiny-bert"].tiny_kwargs)
    modernbert_config = models.MODELS["tiny-modernbert"].tiny_config(
        vocab_size=2000, **models.MODELS["tiny-modernbert"].tiny_kwargs
    )
    assert data.uses_token_type_ids(bert_config) and not data.uses_token_type_ids(modernbert_config)
    tok = tiny_tokenizers["tiny-bert"]
    enc = data.encode(PAIR_TEXTS_A[:2], tok, 64, "head", str(tmp_path), text_pairs=PAIR_TEXTS_B[:2])
    bert = AutoModel.from_config(bert_config).eval()
    with_types = bert(**data.collate(enc.ids, 0, 64, token_types=enc.token_types)).last_hidden_state
    without = bert(**data.collate(enc.ids, 0, 64)).last_hidden_state
    assert not np.allclose(with_types.detach().numpy(), without.detach().numpy())


def test_a_template_whose_segment_ids_are_all_zero_carries_no_token_types(tiny_tokenizers, tmp_path):
    """ModernBERT's template gives both segments type 0: nothing to carry to the model."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    backend = tiny_tokenizers["tiny-bert"].backend_tokenizer
    backend = backend.__class__.from_str(backend.to_str())
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]"
    )
    enc = data.encode(PAIR_TEXTS_A, tok, 64, "head", str(tmp_path), text_pairs=PAIR_TEXTS_B)
    assert enc.token_types is None
    assert enc.ids[0].tolist() == tok(PAIR_TEXTS_A[0], PAIR_TEXTS_B[0], truncation=True, max_length=64)["input_ids"]


# ----------------------------------------------------------------------------- GLUE by name


def _glue_folder(root, task="mrpc", n=40):
    folder = root / "glue" / task
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, hidden in (("train", False), ("validation", False), ("test", True)):
        labels = [-1] * n if hidden else rng.integers(0, 2, n).tolist()
        pd.DataFrame(
            {
                "sentence1": [f"first {split} {i}" for i in range(n)],
                "sentence2": [f"second {split} {i}" for i in range(n)],
                "label": labels,
                "idx": range(n),
            }
        ).to_csv(folder / f"{split}.csv", index=False)
    return folder


def test_a_glue_folder_picks_the_tasks_columns_and_metric_and_evaluates_on_validation(tmp_path):
    folder = _glue_folder(tmp_path)
    args = config.parse_args(["--model", "tiny-bert", "--data", str(folder)])
    assert (args.text_col, args.task, args.metric_for_best) == (
        ["sentence1", "sentence2"],
        "classification",
        "f1_positive",
    )
    splits, names = data.load_splits(args.data, args.text_col, args.label_col, 0.1, None, None, task=args.task)
    assert splits["test"].source == "validation" and splits["test"].segments[0][0] == "first validation 0"
    assert len(splits["train"].labels) + len(splits["val"].labels) == 40  # val carved out of train
    assert splits["val"].source == "val" and len(names) == 2  # the hidden -1 is no class
    # flags given explicitly win over the task's defaults
    args = config.parse_args(["--model", "tiny-bert", "--data", str(folder), "--metric_for_best", "acc"])
    assert args.metric_for_best == "acc"


def test_stsb_by_name_is_a_regression_by_pearson():
    args = config.parse_args(["--model", "tiny-bert", "--data", "glue/stsb"])
    assert (args.task, args.metric_for_best, args.text_col) == ("regression", "pearson", ["sentence1", "sentence2"])


def test_hidden_test_labels_without_a_validation_split_are_one_error(tmp_path):
    folder = _glue_folder(tmp_path)
    (folder / "validation.csv").unlink()
    with pytest.raises(UserError, match="hidden labels"):
        data.load_splits(str(folder), ["sentence1", "sentence2"], "label", 0.1, None, None)
