"""Label noise drawn from any user-given transition matrix, and its estimation."""

from __future__ import annotations

import numpy as np

from mln_tf.noise.report import NoisyLabels, noise_report
from mln_tf.noise.seeding import make_rng
from mln_tf.noise.validation import check_labels, check_transition_matrix


def transition_matrix_noise(labels, transition_matrix, *, seed: int = 0):
    """Draws each noisy label from the row of its true class in a transition matrix.

    Each example of class i independently gets the noisy label j with probability
    `transition_matrix[i, j]`, so the achieved transition matrix matches the given one up
    to sampling error.

    Args:
        labels: array-like of shape `(N,)`, the true class indices in [0, K).
        transition_matrix: array-like of shape `(K, K)`, row-stochastic: non-negative, each
            row summing to 1.
        seed: int, the random seed. Defaults to 0.

    Returns:
        `NoisyLabels(labels, report)`. The report's `rate` is the expected rate on these
        labels, the mean over examples of 1 - T[y_i, y_i].

    Example:

    >>> matrix = [[0.8, 0.2], [0.0, 1.0]]
    >>> noisy, report = transition_matrix_noise(np.zeros(1000, int), matrix, seed=0)
    >>> 0.15 < report.achieved_rate < 0.25
    True
    """
    matrix = check_transition_matrix(transition_matrix)
    num_classes = matrix.shape[0]
    labels, _ = check_labels(labels, num_classes)
    rng = make_rng(seed, "noise.transition_matrix")
    cumulative = np.cumsum(matrix, axis=1)
    # Rows sum to 1 only up to rounding: the last class of positive probability must catch
    # every draw above the rounded sum (never a class of probability 0 after it).
    last_possible = matrix.shape[1] - 1 - np.argmax(matrix[:, ::-1] > 0, axis=1)
    cumulative[np.arange(matrix.shape[1])[None, :] >= last_possible[:, None]] = np.inf
    draws = rng.random(labels.size)
    noisy = np.argmax(draws[:, None] < cumulative[labels], axis=1).astype(np.int64)
    expected_rate = float(np.mean(1.0 - matrix[labels, labels]))
    report = noise_report(
        labels, noisy, num_classes=num_classes, noise="transition_matrix", rate=expected_rate
    )
    return NoisyLabels(noisy, report)


# Patrini et al. take the 97th percentile rather than the maximum, to skip outliers.
ANCHOR_PERCENTILE = 97.0


def estimate_transition_matrix(probabilities, *, percentile: float = ANCHOR_PERCENTILE):
    """Estimates the noise transition matrix from a classifier trained on noisy labels.

    The estimator of Patrini et al. (CVPR 2017): for each class i, the anchor example is
    the one whose predicted probability of i sits at the given percentile over all
    examples (an almost certain member of i); row i of T is that example's predicted
    noisy-label distribution.

    Args:
        probabilities: array-like of shape `(N, K)`, the softmax outputs of a classifier
            trained on the noisy labels, on the (noisy) training set.
        percentile: float in (0, 100], where to pick the anchor in each class's
            probabilities; 100 takes the maximum. Defaults to 97.

    Returns:
        A `(K, K)` float64 row-stochastic array, `T[i, j] ≈ P(noisy j | true i)`.

    Example:

    >>> p = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    >>> estimate_transition_matrix(p, percentile=100).round(2).tolist()
    [[0.9, 0.1], [0.2, 0.8]]
    """
    probabilities = np.asarray(probabilities, dtype="float64")
    if probabilities.ndim != 2 or probabilities.shape[0] == 0 or probabilities.shape[1] < 2:
        raise ValueError(
            "Invalid value for argument `probabilities`. Received: an array of shape "
            f"{probabilities.shape}. Expected shape (N, K) with N >= 1 and K >= 2."
        )
    if not np.all(np.isfinite(probabilities)) or np.any(probabilities < 0):
        raise ValueError(
            "Invalid value for argument `probabilities`. Expected finite, non-negative "
            "probabilities (softmax outputs, not logits)."
        )
    if not 0 < percentile <= 100:
        raise ValueError(
            f"Invalid value for argument `percentile`. Received: percentile={percentile!r}. "
            "Expected a float in (0, 100]."
        )
    num_classes = probabilities.shape[1]
    matrix = np.empty((num_classes, num_classes))
    for i in range(num_classes):
        column = probabilities[:, i]
        threshold = np.percentile(column, percentile, method="lower")
        # Of the examples at the threshold, the first: deterministic for ties.
        anchor = int(np.flatnonzero(column == threshold)[0])
        matrix[i] = probabilities[anchor]
    return matrix / matrix.sum(axis=1, keepdims=True)
