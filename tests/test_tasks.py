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
