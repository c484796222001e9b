"""Pair (asymmetric, class-dependent) label noise: each class flips into one fixed class."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from mln_tf.noise.report import NoisyLabels, noise_report
from mln_tf.noise.seeding import make_rng
from mln_tf.noise.validation import check_labels, check_rate, floor_count

# CIFAR-10 class indices: 0 airplane, 1 automobile, 2 bird, 3 cat, 4 deer, 5 dog, 6 frog,
# 7 horse, 8 ship, 9 truck.
CIFAR10_NUM_CLASSES = 10
# The standard CIFAR-10 flips (Patrini et al. 2017): truck -> automobile, bird -> airplane,
# deer -> horse, cat <-> dog.
CIFAR10_FLIPS = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}


def class_flip_noise(
    labels,
    flips: Mapping[int, int],
    rate: float,
    *,
    num_classes: int | None = None,
    seed: int = 0,
    name: str = "class_flip",
):
    """Flips a fixed fraction of each listed class into its target class.

    For each `source -> target` in `flips`, exactly floor(n_source * r) examples of class
    `source`, drawn at random, get the label `target`. Classes not listed keep their labels.

    Args:
        labels: array-like of shape `(N,)`, the true class indices.
        flips: mapping from a source class to a different target class.
        rate: float in [0, 1), the fraction r of each source class that flips.
        num_classes: optional int, the number of classes K. Defaults to `max(labels) + 1`.
        seed: int, the random seed. Defaults to 0.
        name: str, the noise name stored in the report. Defaults to `"class_flip"`.

    Returns:
        `NoisyLabels(labels, report)`.

    Example:

    >>> noisy, report = class_flip_noise(np.repeat([0, 1, 2], 10), {0: 1}, 0.3)
    >>> report.confusion[0].tolist()
    [7, 3, 0]
    """
    labels, num_classes = check_labels(labels, num_classes)
    rate = check_rate(rate)
    if not isinstance(flips, Mapping):
        raise TypeError(
            f"Invalid type for argument `flips`. Received: {type(flips).__name__}. "
            "Expected a mapping from source class to target class, e.g. {3: 5, 5: 3}."
        )
    for source, target in flips.items():
        if not (0 <= source < num_classes and 0 <= target < num_classes) or source == target:
            raise ValueError(
                f"Invalid value for argument `flips`. Received: {source!r} -> {target!r}. "
                f"Expected two different class indices in [0, {num_classes})."
            )
    rng = make_rng(seed, f"noise.{name}")
    noisy = labels.copy()
    # Sorted, so that the draws do not depend on the mapping's insertion order.
    for source in sorted(flips):
        members = rng.permutation(np.flatnonzero(labels == source))
        noisy[members[: floor_count(members.size, rate)]] = flips[source]
    report = noise_report(labels, noisy, num_classes=num_classes, noise=name, rate=rate)
    return NoisyLabels(noisy, report)


def pair_noise(labels, rate: float, *, num_classes: int | None = None, seed: int = 0):
    """Generic pair flip: a fraction r of each class c moves to class (c + 1) mod K.

    Formula:

    ```
    T[i, i] = 1 - r,   T[i, (i + 1) mod K] = r     (r rounded down to whole examples)
    ```

    Args:
        labels: array-like of shape `(N,)`, the true class indices.
        rate: float in [0, 1), the fraction r of each class that flips.
        num_classes: optional int, the number of classes K. Defaults to `max(labels) + 1`.
        seed: int, the random seed. Defaults to 0.

    Returns:
        `NoisyLabels(labels, report)`.

    Example:

    >>> noisy, report = pair_noise(np.repeat([0, 1, 2], 20), 0.45)
    >>> report.confusion.tolist()
    [[11, 9, 0], [0, 11, 9], [9, 0, 11]]
    """
    labels, num_classes = check_labels(labels, num_classes)
    flips = {c: (c + 1) % num_classes for c in range(num_classes)}
    return class_flip_noise(labels, flips, rate, num_classes=num_classes, seed=seed, name="pair")


def cifar10_pair_noise(labels, rate: float, *, seed: int = 0):
    """The standard CIFAR-10 class-dependent flips, at rate r.

    truck -> automobile, bird -> airplane, deer -> horse, cat <-> dog: exactly
    floor(n_c * r) examples of each of these five classes flip; the other five classes are
    clean, so the overall achieved rate is about r / 2 on balanced data.

    Args:
        labels: array-like of shape `(N,)`, CIFAR-10 class indices (K = 10).
        rate: float in [0, 1), the fraction r of each flipping class that flips.
        seed: int, the random seed. Defaults to 0.

    Returns:
        `NoisyLabels(labels, report)`.

    Example:

    >>> noisy, report = cifar10_pair_noise(np.repeat(np.arange(10), 10), 0.4)
    >>> report.confusion[[9, 3, 0], [1, 5, 0]].tolist()  # truck->car, cat->dog, plane kept
    [4, 4, 10]
    """
    labels, _ = check_labels(labels, CIFAR10_NUM_CLASSES)
    return class_flip_noise(
        labels, CIFAR10_FLIPS, rate, num_classes=CIFAR10_NUM_CLASSES, seed=seed,
        name="cifar10_pair",
    )
