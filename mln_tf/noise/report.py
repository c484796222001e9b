"""What a noise model did: achieved rate, empirical transition matrix, changed indices."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np
from sklearn.metrics import confusion_matrix

from mln_tf.noise.validation import check_labels


@dataclasses.dataclass(frozen=True)
class NoiseReport:
    """The measured effect of a noise model on a label vector.

    Attributes:
        noise: str, the noise model's name (for example `"symmetric"`).
        rate: float, the requested noise rate r (0 for `"none"` and transition matrices).
        achieved_rate: float, the fraction of the N labels that the model changed.
        confusion: int64 array of shape `(K, K)`; entry `(i, j)` counts the examples of true
            class i whose noisy label is j.
        transition_matrix: float64 array of shape `(K, K)`, the empirical transition matrix
            P(noisy = j | true = i): `confusion` with each row divided by its sum. The row of
            a class with no examples is all zeros.
        changed_indices: sorted int64 array of the indices i where the noisy label differs
            from the true one.
    """

    noise: str
    rate: float
    achieved_rate: float
    confusion: np.ndarray
    transition_matrix: np.ndarray
    changed_indices: np.ndarray

    @property
    def num_classes(self) -> int:
        """The number of classes K."""
        return int(self.confusion.shape[0])

    @property
    def num_examples(self) -> int:
        """The number of labels N."""
        return int(self.confusion.sum())

    def summary(self) -> str:
        """Returns a one-line human-readable summary."""
        return (
            f"{self.noise} noise: requested rate {self.rate:.4f}, achieved "
            f"{self.achieved_rate:.4f} ({self.changed_indices.size} of {self.num_examples} "
            f"labels changed, {self.num_classes} classes)"
        )


class NoisyLabels(NamedTuple):
    """What every noise model returns: unpack it as `noisy_labels, report = ...`.

    Attributes:
        labels: int64 array of shape `(N,)`, the noisy labels.
        report: `NoiseReport`, what the noise model did.
    """

    labels: np.ndarray
    report: NoiseReport


def noise_report(
    clean_labels, noisy_labels, *, num_classes: int | None = None, noise: str, rate: float = 0.0
) -> NoiseReport:
    """Measures label noise from matching clean and noisy label vectors.

    Also works for real noisy datasets that carry both (CIFAR-10N, CIFAR-100N).

    Args:
        clean_labels: array-like of shape `(N,)`, the true class indices.
        noisy_labels: array-like of shape `(N,)`, the given (noisy) class indices.
        num_classes: optional int, the number of classes K. Defaults to the largest label
            plus one.
        noise: str, the name of the noise, stored in the report.
        rate: float, the requested rate, stored in the report. Defaults to 0.

    Returns:
        A `NoiseReport`.

    Example:

    >>> report = noise_report([0, 0, 1, 1], [0, 1, 1, 1], noise="handmade")
    >>> report.achieved_rate, report.changed_indices.tolist()
    (0.25, [1])
    """
    if num_classes is None:
        num_classes = int(max(np.max(clean_labels), np.max(noisy_labels))) + 1
    clean, num_classes = check_labels(clean_labels, num_classes, name="clean_labels")
    noisy, _ = check_labels(noisy_labels, num_classes, name="noisy_labels")
    if clean.shape != noisy.shape:
        raise ValueError(
            "Invalid value for argument `noisy_labels`. Received: shape "
            f"{noisy.shape}. Expected the shape of `clean_labels`, {clean.shape}."
        )
    confusion = confusion_matrix(clean, noisy, labels=range(num_classes))
    row_sums = confusion.sum(axis=1, keepdims=True)
    transition = np.divide(
        confusion, row_sums, out=np.zeros(confusion.shape, np.float64), where=row_sums > 0
    )
    changed = np.flatnonzero(clean != noisy).astype(np.int64)
    return NoiseReport(
        noise=noise,
        rate=float(rate),
        achieved_rate=changed.size / clean.size,
        confusion=confusion,
        transition_matrix=transition,
        changed_indices=changed,
    )
