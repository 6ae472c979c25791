"""metrics.py's seed-and-example bootstrap, the 95% CI of a difference between two settings that
report.py's Δ column and bench.py's comparison with HF Trainer give."""

import numpy as np

import metrics


def test_a_difference_made_by_one_lucky_seed_is_not_significant():
    # a: seeds at 62%, 80% and 86% (one seed of luck); b: 70-72%. On 2000 shared examples the
    # test-set noise alone is small, so resampling only the examples would call +5 points real.
    rng = np.random.default_rng(0)
    a = np.array([rng.random(2000) < p for p in (0.62, 0.80, 0.86)], dtype=float)
    b = np.array([rng.random(2000) < p for p in (0.70, 0.71, 0.72)], dtype=float)
    diff = a.mean(0) - b.mean(0)
    examples_only = np.percentile(diff[rng.integers(0, 2000, size=(2000, 2000))].mean(1), [2.5, 97.5])
    assert examples_only[0] > 0
    d, low, high = metrics.seed_and_example_bootstrap(a, b)
    assert np.isclose(d, a.mean() - b.mean()) and low < 0 < high and high - low > 3 * np.ptp(examples_only)
    # no training randomness (the same seed run copied): only the examples remain
    d, low, high = metrics.seed_and_example_bootstrap(a[[1, 1, 1]], b[[1, 1, 1]])
    assert 0.5 < (high - low) / np.ptp(examples_only) < 2


def test_the_ci_pairs_the_two_rows_on_the_same_examples():
    # b answers like a except 2% of the examples: paired, the difference is known to within a
    # point; resampling each side's examples independently would make it several times wider
    rng = np.random.default_rng(1)
    a = np.array([rng.random(2000) < 0.75] * 3, dtype=float)
    flip = rng.random(2000) < 0.02
    b = np.where(flip, 1 - a, a)
    unpaired = [
        a[0][rng.integers(0, 2000, 2000)].mean() - b[0][rng.integers(0, 2000, 2000)].mean() for _ in range(2000)
    ]
    d, low, high = metrics.seed_and_example_bootstrap(a, b)
    assert np.isclose(d, a.mean() - b.mean()) and low <= d <= high
    assert high - low < np.ptp(np.percentile(unpaired, [2.5, 97.5])) / 3


def test_a_pearson_difference_of_one_lucky_seed_is_not_significant():
    rng = np.random.default_rng(1)
    labels = rng.normal(size=200)
    noisy = np.array([labels + rng.normal(scale=s, size=200) for s in (3.0, 3.0, 0.2)])  # one lucky seed
    base = np.array([labels + rng.normal(scale=2.0, size=200) for _ in range(3)])
    d, low, high = metrics.seed_and_example_bootstrap_of(metrics.pearson, noisy, base, labels)
    assert low < 0 < high
    d, low, high = metrics.seed_and_example_bootstrap_of(metrics.pearson, noisy[[2, 2, 2]], base, labels)
    assert low > 0  # the same gain on every seed is
