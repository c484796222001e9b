"""Feature-dependent label noise (Algan & Ulusoy, arXiv 2003.10471), from class probabilities.

The probabilities come from a network trained on the clean labels
(`mln_tf.noise.class_probabilities` trains and caches one), so the noisy label of an example
is the class that the network confuses it with: hard examples are relabelled first.
"""

from __future__ import annotations

import numpy as np

from mln_tf.noise.report import NoisyLabels, noise_report
from mln_tf.noise.seeding import make_rng
from mln_tf.noise.validation import check_labels, check_probabilities, check_rate, floor_count


def _ranked(indices: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """`indices` by decreasing score; equal scores in increasing index order.

    Ties are common (quantised or saturated probabilities) and must not be broken by the
    sort algorithm or by float noise: the example index decides.
    """
    # np.lexsort sorts by the last key first.
    return indices[np.lexsort((indices, -scores))]


def feature_dependent_noise(labels, probabilities, rate: float, *, seed: int = 0):
    """Relabels the n = floor(N * r) examples a network finds most confusable.

    With top-1 the most probable class of each example (ties: the lowest class index):

    - if at least n examples are misclassified (top-1 != true), the n misclassified ones
      with the highest top-1 probability get their top-1 class;
    - otherwise every misclassified example gets its top-1 class, and the remaining number
      are taken among the correctly classified, those with the highest second-class
      probability first, and get their second class (the most probable class other than
      the true one; a random other class where that probability is 0).

    The achieved rate is exactly floor(N * r) / N, and a noisy label never equals the true
    one. Ties in probability are broken by example index (lower first), so the result is a
    function of the probabilities' values only. The seed matters only for the random
    classes of the last case.

    Args:
        labels: array-like of shape `(N,)`, the true class indices in [0, K).
        probabilities: array-like of shape `(N, K)`, class probabilities for each example
            (softmax outputs of a network trained on the clean labels).
        rate: float in [0, 1), the noise rate r.
        seed: int, the random seed. Defaults to 0.

    Returns:
        `NoisyLabels(labels, report)`.

    Example:

    >>> labels = np.array([0, 0, 1, 1])
    >>> probabilities = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.2, 0.8]])
    >>> feature_dependent_noise(labels, probabilities, 0.5).labels.tolist()
    [0, 1, 0, 1]
    """
    probabilities = np.asarray(probabilities)
    if probabilities.ndim != 2:
        raise ValueError(
            "Invalid shape for argument `probabilities`. Received: shape "
            f"{probabilities.shape}. Expected shape (N, K): one row of class probabilities "
            "per label."
        )
    labels, num_classes = check_labels(labels, probabilities.shape[1])
    probabilities = check_probabilities(
        probabilities, num_examples=labels.size, num_classes=num_classes
    )
    rate = check_rate(rate)
    rng = make_rng(seed, "noise.feature_dependent")
    num_noisy = floor_count(labels.size, rate)

    top1 = np.argmax(probabilities, axis=1)
    noisy = labels.copy()
    misclassified = np.flatnonzero(top1 != labels)
    if misclassified.size >= num_noisy:
        chosen = _ranked(misclassified, probabilities[misclassified, top1[misclassified]])
        chosen = chosen[:num_noisy]
        noisy[chosen] = top1[chosen]
    else:
        noisy[misclassified] = top1[misclassified]
        correct = np.flatnonzero(top1 == labels)
        others = probabilities[correct].copy()
        others[np.arange(correct.size), labels[correct]] = -np.inf
        second = np.argmax(others, axis=1)
        second_probability = others[np.arange(correct.size), second]
        # Positions in `correct`, which is sorted, so ties still go to the lower index.
        order = _ranked(np.arange(correct.size), second_probability)
        order = order[: num_noisy - misclassified.size]
        chosen, targets = correct[order], second[order]
        # Where the network gives the other classes probability 0, draw one of them.
        no_second = second_probability[order] <= 0
        draws = rng.integers(0, num_classes - 1, size=int(no_second.sum()))
        true_classes = labels[chosen[no_second]]
        targets[no_second] = draws + (draws >= true_classes)
        noisy[chosen] = targets
    report = noise_report(
        labels, noisy, num_classes=num_classes, noise="feature_dependent", rate=rate
    )
    return NoisyLabels(noisy, report)
