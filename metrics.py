"""Task metrics: accuracy, cross-entropy, F1, Matthews correlation, calibration and collapse for
classification; MSE, Pearson and Spearman for regression; masked-token loss, accuracy and
perplexity for masked-LM pretraining; the table of what each task type reports (TASK_METRICS);
the seed-and-example bootstrap of a difference between two settings (report.py, bench.py).
numpy only (report.py and config.py import this without torch)."""

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np


def classification_metrics(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> dict:
    """Accuracy, mean cross-entropy, macro-F1 and expected calibration error (equal-width bins)."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    n, num_classes = probs.shape
    pred = probs.argmax(1)
    correct = pred == labels
    loss = -np.log(np.clip(probs[np.arange(n), labels], 1e-12, None)).mean()
    f1s = []
    for c in range(num_classes):
        tp = np.sum((pred == c) & (labels == c))
        fp = np.sum((pred == c) & (labels != c))
        fn = np.sum((pred != c) & (labels == c))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return {
        "acc": float(correct.mean()),
        "loss": float(loss),
        "f1": float(np.mean(f1s)),
        "ece": expected_calibration_error(probs.max(1), correct, n_bins),
    }


def calibration_bins(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> list[tuple]:
    """(mean confidence, accuracy, count) of each non-empty equal-width confidence bin."""
    bins = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    return [
        (float(confidence[bins == b].mean()), float(correct[bins == b].mean()), int((bins == b).sum()))
        for b in range(n_bins)
        if (bins == b).any()
    ]


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> float:
    return float(
        sum(
            count / len(confidence) * abs(acc - conf)
            for conf, acc, count in calibration_bins(confidence, correct, n_bins)
        )
    )


def majority_rate(labels: np.ndarray, num_labels: int) -> float:
    """The share of the commonest class: the accuracy of always answering it."""
    return float(np.bincount(labels, minlength=num_labels).max() / len(labels))


def is_collapsed(history: list[dict], majority_rate: float, num_labels: int) -> bool:
    """After every epoch, val accuracy at the majority-class rate and loss near ln K or above:
    the model is no better than the label prior (the original BERT bs32 run, 0.5000 / 0.6944)."""
    chance_loss = math.log(num_labels)
    return bool(history) and all(
        abs(h["acc"] - majority_rate) <= 0.01 and h["loss"] >= 0.95 * chance_loss for h in history
    )


# ----------------------------------------------------------------------------- per-task metrics


def classification_task_metrics(probs: np.ndarray, labels: np.ndarray) -> dict:
    """`probs`: class probabilities (n, K), labels ids. classification_metrics, Matthews
    correlation and, for two classes, the F1 of class 1."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    pred = probs.argmax(1)
    out = classification_metrics(probs, labels)
    out["mcc"] = matthews_correlation(pred, labels, probs.shape[1])
    if probs.shape[1] == 2:
        out["f1_positive"] = f1_of_class(pred, labels, 1)
    return out


def regression_metrics(predictions: np.ndarray, targets: np.ndarray) -> dict:
    """`predictions`: (n,) or (n, 1), targets floats; loss is the MSE, the training objective."""
    pred = np.asarray(predictions, dtype=np.float64).reshape(-1)
    target = np.asarray(targets, dtype=np.float64).reshape(-1)
    mse = mean_squared_error(pred, target)
    return {"loss": mse, "mse": mse, "pearson": pearson(pred, target), "spearman": spearman(pred, target)}


class TaskMetrics(NamedTuple):
    higher_is_better: dict[str, bool]  # every metric it reports that --metric_for_best may select
    default: str  # the metric that picks the best epoch when --metric_for_best is not given
    score: Callable[[np.ndarray, np.ndarray], dict]  # (evaluation's outputs, labels) -> the metrics


# The task types (--task) and what their evaluation reports; model.py's task table holds the
# torch side (head width, loss, what evaluation keeps of each example).
TASK_METRICS = {
    "classification": TaskMetrics(
        higher_is_better={"acc": True, "f1": True, "f1_positive": True, "mcc": True, "loss": False},
        default="acc",
        score=classification_task_metrics,
    ),
    "regression": TaskMetrics(
        higher_is_better={"pearson": True, "spearman": True, "mse": False, "loss": False},
        default="pearson",
        score=regression_metrics,
    ),
    # of the masked tokens, from the split's sums (loss, correct, masked): no per-example labels
    "mlm": TaskMetrics(
        higher_is_better={"loss": False, "acc": True, "perplexity": False},
        default="loss",
        score=lambda sums, _labels: masked_lm_metrics(*sums),
    ),
}
HIGHER_IS_BETTER = {name: higher for table in TASK_METRICS.values() for name, higher in table.higher_is_better.items()}
METRIC_ALIASES = {"accuracy": "acc", "macro_f1": "f1", "matthews_correlation": "mcc", "spearmanr": "spearman"}
BINARY_ONLY = {"f1_positive"}  # F1 of class id 1, defined for two classes


def task_metrics(task: str, outputs: np.ndarray, labels: np.ndarray) -> dict:
    """The validation/test metrics of a task type from what evaluation kept (TASK_METRICS' score)."""
    if task not in TASK_METRICS:
        raise ValueError(f"unknown task {task!r}")
    return TASK_METRICS[task].score(outputs, labels)


def masked_lm_metrics(loss_sum: float, correct: float, masked: float) -> dict:
    """Mean cross-entropy per masked token, the accuracy of the masked tokens and the perplexity
    exp(loss), from sums over the split (mlm.MaskedLMOutput.sums, added over batches and ranks)."""
    loss = float(loss_sum) / max(float(masked), 1.0)
    return {"loss": loss, "acc": float(correct) / max(float(masked), 1.0), "perplexity": math.exp(min(loss, 700.0))}


def metric_name(name: str) -> str:
    """The canonical name of a metric, accepting HF run_glue's spellings (accuracy, ...)."""
    return METRIC_ALIASES.get(name, name)


def metric_problem(task: str, metric: str, num_labels: int | None = None) -> str | None:
    """Why `metric` cannot select the best epoch of `task` (num_labels: the data's classes, when
    known); None when it can."""
    defined = TASK_METRICS[task].higher_is_better if task in TASK_METRICS else {}
    if metric_name(metric) not in defined:
        return f"--metric_for_best {metric} is not a {task} metric (use one of: {', '.join(defined)})"
    if metric_name(metric) in BINARY_ONLY and num_labels is not None and num_labels != 2:
        return f"--metric_for_best {metric} needs two classes; the data has {num_labels}"
    return None


def is_improvement(metric: str, value: float, best: float | None) -> bool:
    """Whether `value` beats `best` (None: nothing yet) on `metric`; a NaN (a Pearson of constant
    predictions) never does."""
    if math.isnan(value):
        return False
    if best is None or math.isnan(best):
        return True
    return value > best if HIGHER_IS_BETTER[metric_name(metric)] else value < best


def f1_of_class(pred: np.ndarray, labels: np.ndarray, positive: int) -> float:
    tp = np.sum((pred == positive) & (labels == positive))
    fp = np.sum((pred == positive) & (labels != positive))
    fn = np.sum((pred != positive) & (labels == positive))
    return float(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn else 0.0


def matthews_correlation(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """Multiclass MCC (Gorodkin 2004) from the confusion matrix, as sklearn's matthews_corrcoef;
    0 when either side holds a single class."""
    confusion = np.zeros((num_classes, num_classes), dtype=np.float64)
    np.add.at(confusion, (np.asarray(labels), np.asarray(pred)), 1)
    true_counts, pred_counts = confusion.sum(1), confusion.sum(0)
    n, correct = confusion.sum(), np.trace(confusion)
    denominator = math.sqrt((n * n - pred_counts @ pred_counts) * (n * n - true_counts @ true_counts))
    return float((correct * n - pred_counts @ true_counts) / denominator) if denominator else 0.0


def mean_squared_error(pred: np.ndarray, target: np.ndarray) -> float:
    return float(np.mean((np.asarray(pred, np.float64) - np.asarray(target, np.float64)) ** 2))


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson's r; NaN when either side is constant (as scipy)."""
    x = np.asarray(x, np.float64) - np.mean(x)
    y = np.asarray(y, np.float64) - np.mean(y)
    denominator = math.sqrt(float(x @ x) * float(y @ y))
    return float(np.clip(x @ y / denominator, -1.0, 1.0)) if denominator else math.nan


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho: Pearson's r of the ranks, ties given their average rank."""
    return pearson(average_ranks(x), average_ranks(y))


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, tied values sharing the mean of their ranks (scipy.stats.rankdata's 'average')."""
    values = np.asarray(values)
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    mean_rank = (starts + ends + 1) / 2.0  # 1-based ranks starts+1 .. ends, averaged
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


# ----------------------------------------------------------------------------- the difference of two settings

BOOTSTRAP_SAMPLES = 2000


def seed_and_example_bootstrap(
    correct_a: np.ndarray, correct_b: np.ndarray, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0
) -> tuple[float, float, float]:
    """Mean test accuracy of a minus b and its 95% percentile CI. Inputs: per-example correctness,
    one row per seed, over the same test examples. Each replicate resamples each side's seeds
    (seed-to-seed spread is often larger than test-set noise) and then the examples, the same
    examples for both sides (paired). With one seed a side, only the examples vary. In a
    simulation with no true difference (seed sd 5 points, 500 examples, 200 trials each) the
    interval held 0 in 90% of trials with 2 seeds a side and 93-94% with 3, 5 and 7."""
    a, b = np.asarray(correct_a, float), np.asarray(correct_b, float)
    rng = np.random.default_rng(seed)
    n = a.shape[1]

    def resampled_seeds(runs):
        # the mean of k resampled seeds varies (k-1)/k as much as the mean of k new seeds would:
        # stretched back, or 3 seeds would give a CI a fifth too narrow
        mean = runs.mean(0)
        stretch = np.sqrt(len(runs) / (len(runs) - 1)) if len(runs) > 1 else 0.0
        return mean + stretch * (runs[rng.integers(0, len(runs), len(runs))].mean(0) - mean)

    means = np.empty(samples)
    for i in range(samples):
        means[i] = (resampled_seeds(a) - resampled_seeds(b))[rng.integers(0, n, n)].mean()
    low, high = np.percentile(means, [2.5, 97.5])
    return float(a.mean() - b.mean()), float(low), float(high)


def seed_and_example_bootstrap_of(
    metric,
    outputs_a: np.ndarray,
    outputs_b: np.ndarray,
    labels: np.ndarray,
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
) -> tuple[float, float, float]:
    """seed_and_example_bootstrap for a metric that is not a mean over examples (Pearson): each
    replicate resamples the shared examples (paired), scores every seed on them, then resamples
    each side's seeds with the same stretch. Inputs: per-example outputs, one row per seed."""
    a, b = np.asarray(outputs_a, float), np.asarray(outputs_b, float)
    rng = np.random.default_rng(seed)
    n = a.shape[1]

    def resampled_seeds(scores):
        mean = scores.mean()
        stretch = np.sqrt(len(scores) / (len(scores) - 1)) if len(scores) > 1 else 0.0
        return mean + stretch * (scores[rng.integers(0, len(scores), len(scores))].mean() - mean)

    differences = np.empty(samples)
    for i in range(samples):
        idx = rng.integers(0, n, n)
        scores_a, scores_b = (np.array([metric(run[idx], labels[idx]) for run in side]) for side in (a, b))
        differences[i] = resampled_seeds(scores_a) - resampled_seeds(scores_b)
    low, high = np.nanpercentile(differences, [2.5, 97.5])
    mean_a, mean_b = (np.mean([metric(run, labels) for run in side]) for side in (a, b))
    return float(mean_a - mean_b), float(low), float(high)
