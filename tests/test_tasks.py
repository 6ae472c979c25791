"""Issue 21 groundwork: task metrics against sklearn/scipy, the --task / --metric_for_best flags,
sentence-pair encoding and regression labels."""
import math

import numpy as np
import pytest

import metrics

sklearn_metrics = pytest.importorskip("sklearn.metrics")
scipy_stats = pytest.importorskip("scipy.stats")


# ----------------------------------------------------------------------------- metrics

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


def test_degenerate_classification_metrics_match_sklearn():
    labels = np.array([0, 1, 0, 1, 1])
    one_class_pred = np.zeros(5, dtype=int)
    assert metrics.matthews_correlation(one_class_pred, labels, 2) == sklearn_metrics.matthews_corrcoef(labels, one_class_pred) == 0
    assert metrics.f1_of_class(one_class_pred, labels, 1) == sklearn_metrics.f1_score(labels, one_class_pred, zero_division=0)
    perfect = metrics.task_metrics("classification", np.eye(2)[labels], labels)
    assert perfect["mcc"] == 1 and perfect["f1_positive"] == 1


@pytest.mark.parametrize("ties", [False, True])
def test_regression_metrics_match_scipy(ties):
    rng = np.random.default_rng(7)
    target = rng.uniform(0, 5, 400)
    pred = target + rng.normal(0, 1, 400)
    if ties:  # STS-B scores come in steps of 0.2; rounded predictions tie too
        target, pred = np.round(target * 5) / 5, np.round(pred)
    out = metrics.task_metrics("regression", pred.reshape(-1, 1).astype(np.float32), target)
    assert out["mse"] == out["loss"] == pytest.approx(sklearn_metrics.mean_squared_error(target, pred.astype(np.float32)))
    assert out["pearson"] == pytest.approx(scipy_stats.pearsonr(pred.astype(np.float32), target)[0])
    assert out["spearman"] == pytest.approx(scipy_stats.spearmanr(pred.astype(np.float32), target)[0])
    assert metrics.average_ranks(pred).tolist() == scipy_stats.rankdata(pred).tolist()


def test_constant_predictions_have_no_correlation_and_never_count_as_best():
    out = metrics.task_metrics("regression", np.ones(10), np.arange(10.0))
    assert math.isnan(out["pearson"]) and math.isnan(out["spearman"]) and out["mse"] == pytest.approx(np.mean((np.arange(10) - 1) ** 2))
    assert not metrics.is_improvement("pearson", math.nan, None)
    assert metrics.is_improvement("pearson", 0.1, math.nan)


def test_each_metric_says_whether_higher_is_better():
    assert metrics.is_improvement("acc", 0.8, 0.7) and not metrics.is_improvement("acc", 0.7, 0.8)
    assert metrics.is_improvement("loss", 0.3, 0.4) and not metrics.is_improvement("loss", 0.4, 0.3)
    assert metrics.is_improvement("mse", 0.3, 0.4) and metrics.is_improvement("spearman", 0.5, 0.4)
    assert metrics.is_improvement("accuracy", 0.8, None)  # HF's spelling
    assert not metrics.is_improvement("acc", 0.8, 0.8)  # a tie keeps the earlier epoch
    for task, table in metrics.TASK_METRICS.items():
        assert metrics.DEFAULT_METRIC[task] in table and table["loss"] is False


def test_metric_for_best_is_checked_against_the_task_and_the_classes():
    assert metrics.metric_problem("classification", "mcc") is None
    assert metrics.metric_problem("regression", "loss") is None
    assert "not a regression metric" in metrics.metric_problem("regression", "acc")
    assert "not a classification metric" in metrics.metric_problem("classification", "pearson")
    assert "needs two classes; the data has 3" in metrics.metric_problem("classification", "f1_positive", 3)
    assert metrics.metric_problem("classification", "f1_positive", 2) is None


# ----------------------------------------------------------------------------- flags

import config  # noqa: E402
from conftest import run_inprocess  # noqa: E402


def parse(*argv):
    return config.parse_args(list(argv))


def test_new_flags_at_their_defaults_leave_run_names_and_fingerprints_as_before():
    # names and fingerprint keys as main made them before --task, --metric_for_best, --text_pairs
    assert parse().run_name == "bert-cls-s42"
    assert parse("--data", "synthetic", "--truncation", "tail", "--smoke").run_name == "bert-cls-tail-synthetic-s42-smoke"
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
    assert parse("--task", "regression", "--metric_for_best", "spearmanr").run_name == "bert-cls-regression-bestspearman-s42"
    by_mcc = parse("--metric_for_best", "matthews_correlation")
    assert by_mcc.metric_for_best == "mcc" and by_mcc.run_name == "bert-cls-bestmcc-s42"
    assert parse("--metric_for_best", "accuracy").run_name == "bert-cls-s42"
    assert config.differing_settings(vars(parse()), vars(by_mcc)) == ["metric_for_best"]


@pytest.mark.parametrize("argv, message", [
    (["--task", "regression", "--metric_for_best", "acc"],
     "--metric_for_best acc is not a regression metric (use one of: pearson, spearman, mse, loss)"),
    (["--metric_for_best", "pearson"], "--metric_for_best pearson is not a classification metric"),
    (["--metric_for_best", "bleu"], "--metric_for_best bleu is not a classification metric"),
    (["--text_col", "a", "b", "--truncation", "tail"],
     "--truncation tail applies to single texts; a pair is truncated longest-first"),
    (["--text_col", "a", "b", "--truncation", "head_tail"], "--truncation head_tail applies to single texts"),
    (["--no-text_pairs"], "--no-text_pairs joins two or more --text_col columns; there is one"),
    (["--task", "ordinal"], "invalid choice: 'ordinal'"),
])
def test_flags_the_task_does_not_define_end_in_one_error_line(argv, message, tmp_path, capsys):
    code = run_inprocess("--model", "tiny-bert", "--data", "synthetic", "--wandb", "disabled",
                         "--out_dir", tmp_path, *argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error:") and message in err, err


# ----------------------------------------------------------------------------- loading

import pandas as pd  # noqa: E402

import data  # noqa: E402
from utils import UserError  # noqa: E402


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
    assert splits["train"].labels.dtype == np.float32 and (len(splits["train"].texts), len(splits["val"].texts)) == (80, 20)
    assert splits["val"].texts == again["val"].texts and not set(splits["val"].texts) & set(splits["train"].texts)
    assert sorted(np.concatenate([splits["train"].labels, splits["val"].labels]).tolist()) == np.float32(scores).tolist()
    small, _ = data.load_splits(str(tmp_path), ["text"], "label", 0.2, 10, 1, task="regression")
    assert len(small["train"].labels) == 10 and len(small["test"].labels) == 1


@pytest.mark.parametrize("labels, message", [
    (["1.5", "x"] * 5, "label column 'label' of the train split: data row 2 is not a finite number (value 'x'); "
                       "--task regression needs a number in every row"),
    ([1.0, None] * 5, "data row 2 is empty"),
    ([2.0] * 10, "holds a single value (2) in train: nothing to regress"),
])
def test_bad_regression_labels_name_split_and_row(tmp_path, labels, message):
    write(tmp_path, "train", {"text": ["a"] * 10, "label": labels})
    with pytest.raises(UserError, match=re_escape(message)):
        data.load_splits(str(tmp_path), ["text"], "label", 0.2, None, None, task="regression")


def test_a_bad_regression_label_in_test_names_the_test_split(tmp_path):
    write(tmp_path, "train", {"text": ["a"] * 10, "label": [0.5, 1.5] * 5})
    write(tmp_path, "test", {"text": ["a", "b", "c"], "label": ["1", "2", "high"]})
    with pytest.raises(UserError, match="of the test split: data row 3 is not a finite number"):
        data.load_splits(str(tmp_path), ["text"], "label", 0.2, None, None, task="regression")


def test_float_labels_without_regression_say_to_pass_task_regression(tmp_path):
    write(tmp_path, "train", {"text": ["a"] * 10, "label": [0.5, 1.5] * 5})
    with pytest.raises(UserError, match="labels must be integers or strings; for a regression target pass --task regression"):
        data.load_splits(str(tmp_path), ["text"], "label", 0.2, None, None)


def test_two_or_more_text_columns_give_segments_a_and_b(tmp_path):
    write(tmp_path, "train", {"q": ["Q1", "Q2"] * 10, "title": ["T1", "T2"] * 10, "body": ["b1", "b2"] * 10,
                              "label": [0, 1] * 10})
    splits, _ = data.load_splits(str(tmp_path), ["q", "title", "body"], "label", 0.2, None, None)
    train = splits["train"]
    assert set(zip(*train.segments)) == {("Q1", "T1 b1"), ("Q2", "T2 b2")}  # first column A, the rest B
    assert set(train.texts) == {"Q1 T1 b1", "Q2 T2 b2"}
    assert train.encoder_inputs(pairs=True) == train.segments
    assert train.encoder_inputs(pairs=False) == (train.texts, None)
    single, _ = data.load_splits(str(tmp_path), ["q"], "label", 0.2, None, None)
    assert single["train"].segments is None and single["train"].encoder_inputs(pairs=True) == (single["train"].texts, None)


def test_a_pair_row_with_one_empty_column_names_column_split_and_row(tmp_path):
    write(tmp_path, "train", {"s1": ["a", "b"] * 5, "s2": ["c", "d", "e", ""] + ["f"] * 6, "label": [0, 1] * 5})
    with pytest.raises(UserError, match="column 's2' of the train split of .*: data row 4 is missing"):
        data.load_splits(str(tmp_path), ["s1", "s2"], "label", 0.2, None, None)


def re_escape(text):
    import re
    return re.escape(text)
