"""Symmetric (uniform) label noise, in the authors' variant and in the common one."""

from __future__ import annotations

import numpy as np

from mln_tf.noise.report import NoisyLabels, noise_report
from mln_tf.noise.seeding import make_rng
from mln_tf.noise.validation import check_labels, check_rate, floor_count


def symmetric_noise(labels, rate: float, *, num_classes: int | None = None, seed: int = 0):
    """Symmetric noise as in MetaLabelNet's code: exact counts, never the true class.

    For each class c with n_c examples, exactly floor(n_c * r / (K - 1)) examples, drawn at
    random, are moved to each of the K - 1 other classes. A noisy label never equals the
    true one, and the achieved rate is at most r (below it by the rounding of the counts,
    and where a class has fewer than (K - 1) / r examples, none of them move).

    Formula:

    ```
    T[i, j] = r / (K - 1)   for j != i      (up to the rounding of the counts)
    T[i, i] = 1 - r
    ```

    Args:
        labels: array-like of shape `(N,)`, the true class indices.
        rate: float in [0, 1), the noise rate r.
        num_classes: optional int, the number of classes K. Defaults to `max(labels) + 1`.
        seed: int, the random seed. Defaults to 0.

    Returns:
        `NoisyLabels(labels, report)`: the noisy labels (int64, shape `(N,)`) and a
        `NoiseReport`.

    Example:

    >>> noisy, report = symmetric_noise(np.repeat(np.arange(3), 10), 0.4, seed=0)
    >>> report.achieved_rate  # 2 of the 10 examples of each class move to each other class
    0.4
    """
    labels, num_classes = check_labels(labels, num_classes)
    rate = check_rate(rate)
    rng = make_rng(seed, "noise.symmetric")
    noisy = labels.copy()
    for source in range(num_classes):
        members = np.flatnonzero(labels == source)
        per_target = floor_count(members.size, rate, num_classes - 1)
        if per_target == 0:
            continue
        members = rng.permutation(members)
        targets = [c for c in range(num_classes) if c != source]
        for position, target in enumerate(targets):
            noisy[members[position * per_target : (position + 1) * per_target]] = target
    report = noise_report(labels, noisy, num_classes=num_classes, noise="symmetric", rate=rate)
    return NoisyLabels(noisy, report)


def symmetric_uniform_noise(
    labels, rate: float, *, num_classes: int | None = None, seed: int = 0
):
    """Symmetric noise, "uniform over all classes, true class included" (as in DivideMix).

    Exactly floor(N * r) examples, drawn at random, receive a label drawn uniformly from
    all K classes, so about one in K of them keeps its true label: the expected achieved
    rate is r * (K - 1) / K.

    Formula:

    ```
    T[i, j] = r / K            for j != i
    T[i, i] = 1 - r + r / K
    ```

    Args:
        labels: array-like of shape `(N,)`, the true class indices.
        rate: float in [0, 1), the fraction r of labels that are resampled.
        num_classes: optional int, the number of classes K. Defaults to `max(labels) + 1`.
        seed: int, the random seed. Defaults to 0.

    Returns:
        `NoisyLabels(labels, report)`.

    Example:

    >>> noisy, report = symmetric_uniform_noise(np.zeros(1000, int), 0.5, num_classes=2)
    >>> 0.2 < report.achieved_rate < 0.3
    True
    """
    labels, num_classes = check_labels(labels, num_classes)
    rate = check_rate(rate)
    rng = make_rng(seed, "noise.symmetric_uniform")
    noisy = labels.copy()
    resampled = rng.permutation(labels.size)[: floor_count(labels.size, rate)]
    noisy[resampled] = rng.integers(0, num_classes, size=resampled.size)
    report = noise_report(
        labels, noisy, num_classes=num_classes, noise="symmetric_uniform", rate=rate
    )
    return NoisyLabels(noisy, report)
