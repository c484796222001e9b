"""Input validation for noise models and splits, in one place.

Every public function of `mln_tf.noise` and `mln_tf.data` checks its input here, so that
the same mistake always gets the same message. Messages have three parts: what was
invalid, what was received, and what is expected.
"""

from __future__ import annotations

import numbers
from fractions import Fraction

import numpy as np

# Rows of a transition matrix or of class probabilities may drift this far from 1 through
# float rounding (float32 softmax outputs drift by ~1e-7 per class).
ROW_SUM_TOLERANCE = 1e-4
# Fewest classes a noise model can act on: with one class no label can change.
MIN_CLASSES = 2


def check_rate(rate, *, name: str = "rate") -> float:
    """Checks that `rate` is a real number in [0, 1) and returns it as a float."""
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real):
        raise TypeError(
            f"Invalid type for argument `{name}`. Received: {name}={rate!r} "
            f"of type {type(rate).__name__}. Expected a float in [0, 1)."
        )
    rate = float(rate)
    if not (0.0 <= rate < 1.0):
        raise ValueError(
            f"Invalid value for argument `{name}`. Received: {name}={rate!r}. "
            "Expected a float in [0, 1)."
        )
    return rate


def check_seed(seed, *, name: str = "seed") -> int:
    """Checks that `seed` is a non-negative integer and returns it as an int."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise TypeError(
            f"Invalid value for argument `{name}`. Received: {name}={seed!r}. "
            "Expected a non-negative integer: every noise model and split is "
            "deterministic for a given seed."
        )
    return int(seed)


def check_count(value, *, name: str, minimum: int = 0) -> int:
    """Checks that `value` is an integer >= `minimum` and returns it as an int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(
            f"Invalid value for argument `{name}`. Received: {name}={value!r}. "
            f"Expected an integer >= {minimum}."
        )
    return int(value)


def check_num_classes(num_classes, *, name: str = "num_classes") -> int:
    """Checks that `num_classes` is an integer >= 2 and returns it."""
    if (
        isinstance(num_classes, bool)
        or not isinstance(num_classes, numbers.Integral)
        or num_classes < MIN_CLASSES
    ):
        raise ValueError(
            f"Invalid value for argument `{name}`. Received: {name}={num_classes!r}. "
            f"Expected an integer >= {MIN_CLASSES}: label noise needs at least two classes."
        )
    return int(num_classes)


def check_labels(labels, num_classes=None, *, name: str = "labels") -> tuple[np.ndarray, int]:
    """Checks a vector of class indices.

    Args:
        labels: array-like of shape `(N,)`, zero-indexed integer class indices.
        num_classes: optional int, the number of classes K. Defaults to `max(labels) + 1`.
        name: str, the argument name used in error messages. Defaults to `"labels"`.

    Returns:
        A tuple `(labels, num_classes)`: the labels as a new int64 array, and K.
    """
    array = np.asarray(labels)
    if array.ndim != 1:
        raise ValueError(
            f"Invalid shape for argument `{name}`. Received: shape {array.shape}. "
            "Expected a vector of shape (N,): labels must be zero-indexed integers "
            "corresponding to class indices."
        )
    if array.size == 0:
        raise ValueError(
            f"Invalid value for argument `{name}`. Received: an empty array. "
            "Expected at least one label."
        )
    if not np.issubdtype(array.dtype, np.integer):
        raise TypeError(
            f"Invalid dtype for argument `{name}`. Received: dtype {array.dtype}. "
            "Expected integers: labels must be zero-indexed integers corresponding to "
            "class indices."
        )
    low, high = int(array.min()), int(array.max())
    if num_classes is None and low >= 0:
        num_classes = high + 1
    num_classes = check_num_classes(num_classes if num_classes is not None else MIN_CLASSES)
    if low < 0 or high >= num_classes:
        raise ValueError(
            f"Invalid value for argument `{name}`. Received: labels with values in "
            f"[{low}, {high}]. Expected zero-indexed integers corresponding to class "
            f"indices, in [0, {num_classes})."
        )
    return array.astype(np.int64, copy=True), num_classes


def check_probabilities(probabilities, *, num_examples: int, num_classes: int) -> np.ndarray:
    """Checks an `(N, K)` array of class probabilities and returns it as float64."""
    array = np.asarray(probabilities)
    expected = (num_examples, num_classes)
    if array.shape != expected:
        raise ValueError(
            f"Invalid shape for argument `probabilities`. Received: shape {array.shape}. "
            f"Expected shape {expected}: one row of class probabilities per label "
            "(N examples, K classes)."
        )
    if not np.issubdtype(array.dtype, np.floating):
        raise TypeError(
            f"Invalid dtype for argument `probabilities`. Received: dtype {array.dtype}. "
            "Expected floats (for example softmax outputs)."
        )
    array = array.astype(np.float64)
    _check_stochastic_rows(
        array,
        name="probabilities",
        expected="class probabilities: non-negative rows that each sum to 1. If you have "
        "logits, apply a softmax first",
    )
    return array


def check_transition_matrix(matrix, *, num_classes: int | None = None) -> np.ndarray:
    """Checks a row-stochastic `(K, K)` transition matrix and returns it as float64."""
    array = np.asarray(matrix)
    if array.ndim != 2 or array.shape[0] != array.shape[1]:
        raise ValueError(
            f"Invalid shape for argument `transition_matrix`. Received: shape {array.shape}. "
            "Expected a square matrix of shape (K, K)."
        )
    if num_classes is not None and array.shape[0] != num_classes:
        raise ValueError(
            f"Invalid shape for argument `transition_matrix`. Received: shape {array.shape}. "
            f"Expected shape ({num_classes}, {num_classes}), one row and column per class."
        )
    check_num_classes(array.shape[0], name="transition_matrix.shape[0]")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise TypeError(
            f"Invalid dtype for argument `transition_matrix`. Received: dtype {array.dtype}. "
            "Expected real numbers."
        )
    array = array.astype(np.float64)
    _check_stochastic_rows(
        array,
        name="transition_matrix",
        expected="a row-stochastic matrix: non-negative entries, each row summing to 1 "
        "(row i is the distribution of the noisy label of an example of class i)",
    )
    return array


def _check_stochastic_rows(array: np.ndarray, *, name: str, expected: str) -> None:
    if not np.all(np.isfinite(array)):
        row = int(np.argwhere(~np.isfinite(array))[0][0])
        raise ValueError(
            f"Invalid value for argument `{name}`. Received: a non-finite value in row "
            f"{row}. Expected {expected}."
        )
    if np.any(array < 0):
        row, column = (int(i) for i in np.argwhere(array < 0)[0])
        raise ValueError(
            f"Invalid value for argument `{name}`. Received: a negative entry "
            f"{array[row, column]!r} at ({row}, {column}). Expected {expected}."
        )
    sums = array.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1.0) > ROW_SUM_TOLERANCE)
    if bad.size:
        row = int(bad[0])
        raise ValueError(
            f"Invalid value for argument `{name}`. Received: row {row} sums to "
            f"{sums[row]:.6g}. Expected {expected}."
        )


def floor_count(num_items: int, rate: float, divisor: int = 1) -> int:
    """Returns floor(num_items * rate / divisor), computed exactly from the decimal rate.

    In float arithmetic `int(100 * 0.29)` is 28, because the float nearest 0.29 lies just
    below it. The rate's shortest decimal representation is used instead, so counts match
    the definition as written with decimals: 29.
    """
    exact_rate = Fraction(repr(float(rate)))
    return int(exact_rate * num_items // divisor)
