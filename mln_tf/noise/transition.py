"""Label noise drawn from any user-given transition matrix."""

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
