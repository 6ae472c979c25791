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
