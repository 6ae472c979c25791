"""Classification metrics: accuracy, cross-entropy, macro-F1, calibration, collapse."""
import math

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
    return {"acc": float(correct.mean()), "loss": float(loss), "f1": float(np.mean(f1s)),
            "ece": expected_calibration_error(probs.max(1), correct, n_bins)}


def calibration_bins(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> list[tuple]:
    """(mean confidence, accuracy, count) of each non-empty equal-width confidence bin."""
    bins = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    return [(float(confidence[bins == b].mean()), float(correct[bins == b].mean()), int((bins == b).sum()))
            for b in range(n_bins) if (bins == b).any()]


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> float:
    return float(sum(count / len(confidence) * abs(acc - conf)
                     for conf, acc, count in calibration_bins(confidence, correct, n_bins)))


def is_collapsed(history: list[dict], majority_rate: float, num_labels: int) -> bool:
    """After every epoch, val accuracy at the majority-class rate and loss near ln K or above:
    the model is no better than the label prior (the original BERT bs32 run, 0.5000 / 0.6944)."""
    chance_loss = math.log(num_labels)
    return bool(history) and all(abs(h["acc"] - majority_rate) <= 0.01 and
                                 h["loss"] >= 0.95 * chance_loss for h in history)
