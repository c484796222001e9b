"""One entry point for every noise model, by name."""

from __future__ import annotations

import numpy as np

from mln_tf.noise.feature_dependent import feature_dependent_noise
from mln_tf.noise.pair import cifar10_pair_noise, pair_noise
from mln_tf.noise.report import NoisyLabels, noise_report
from mln_tf.noise.symmetric import symmetric_noise, symmetric_uniform_noise
from mln_tf.noise.transition import transition_matrix_noise
from mln_tf.noise.validation import check_labels, check_rate, check_seed

# The noise names `apply_noise` accepts. "asymmetric" is another name for "cifar10_pair".
NOISE_TYPES = (
    "none",
    "symmetric",
    "symmetric_uniform",
    "pair",
    "cifar10_pair",
    "asymmetric",
    "feature_dependent",
    "transition_matrix",
)
_ALIASES = {"asymmetric": "cifar10_pair"}


def check_noise(noise: str) -> str:
    """Checks a noise name and returns its canonical form (resolving aliases)."""
    if not isinstance(noise, str) or noise not in NOISE_TYPES:
        raise ValueError(
            f"Invalid value for argument `noise`. Received: noise={noise!r}. "
            f"Expected one of {', '.join(repr(n) for n in NOISE_TYPES)}."
        )
    return _ALIASES.get(noise, noise)


def check_noise_arguments(noise: str, rate, *, transition_matrix=None) -> tuple[str, float]:
    """Checks a noise name with its rate, before any expensive work.

    Returns:
        A tuple `(noise, rate)`: the canonical noise name and the rate as a float (0 for
        `"none"`, `None` for `"transition_matrix"`).
    """
    noise = check_noise(noise)
    if noise == "transition_matrix":
        if transition_matrix is None:
            raise ValueError(
                "Missing argument `transition_matrix`. Received: transition_matrix=None. "
                'Expected a (K, K) row-stochastic matrix for noise="transition_matrix".'
            )
        if rate is not None:
            raise ValueError(
                f"Invalid value for argument `rate`. Received: rate={rate!r}. Expected None "
                'for noise="transition_matrix": the matrix sets the rate.'
            )
        return noise, None
    if transition_matrix is not None:
        raise ValueError(
            "Invalid value for argument `transition_matrix`. Received: a matrix with "
            f'noise={noise!r}. Expected it only with noise="transition_matrix".'
        )
    if noise == "none":
        if rate not in (None, 0, 0.0):
            raise ValueError(
                f"Invalid value for argument `rate`. Received: rate={rate!r}. Expected 0 or "
                'None for noise="none".'
            )
        return noise, 0.0
    if rate is None:
        raise ValueError(
            f"Missing argument `rate`. Received: rate=None. Expected a float in [0, 1) for "
            f"noise={noise!r}."
        )
    return noise, check_rate(rate)


def apply_noise(
    labels,
    noise: str,
    rate: float | None = None,
    *,
    num_classes: int | None = None,
    seed: int = 0,
    probabilities=None,
    transition_matrix=None,
) -> NoisyLabels:
    """Applies the noise model called `noise` to `labels`.

    Args:
        labels: array-like of shape `(N,)`, the true class indices.
        noise: str, one of `NOISE_TYPES`: `"none"`, `"symmetric"` (exact counts, never the
            true class), `"symmetric_uniform"` (uniform over all classes), `"pair"` (class c
            to c + 1), `"cifar10_pair"` or `"asymmetric"` (CIFAR-10 flips),
            `"feature_dependent"` (needs `probabilities`) or `"transition_matrix"` (needs
            `transition_matrix`).
        rate: float in [0, 1), the noise rate. Required, except for `"none"` (where it must
            be 0 or `None`) and `"transition_matrix"` (where the matrix says it all).
        num_classes: optional int, the number of classes K. Defaults to `max(labels) + 1`.
        seed: int, the random seed. Defaults to 0.
        probabilities: array of shape `(N, K)`, for `"feature_dependent"`.
        transition_matrix: array of shape `(K, K)`, for `"transition_matrix"`.

    Returns:
        `NoisyLabels(labels, report)`.

    Example:

    >>> noisy, report = apply_noise(np.repeat(np.arange(4), 30), "symmetric", 0.3, seed=1)
    >>> report.achieved_rate
    0.3
    """
    noise, rate = check_noise_arguments(noise, rate, transition_matrix=transition_matrix)
    seed = check_seed(seed)
    if noise == "transition_matrix":
        return transition_matrix_noise(labels, transition_matrix, seed=seed)
    if noise == "none":
        labels, num_classes = check_labels(labels, num_classes)
        return NoisyLabels(
            labels, noise_report(labels, labels, num_classes=num_classes, noise="none")
        )
    if noise == "feature_dependent":
        if probabilities is None:
            raise ValueError(
                "Missing argument `probabilities`. Received: probabilities=None. Expected "
                'an (N, K) array of class probabilities for noise="feature_dependent" '
                "(see `mln_tf.noise.class_probabilities`)."
            )
        if num_classes is not None and np.shape(probabilities)[-1:] != (num_classes,):
            raise ValueError(
                "Invalid shape for argument `probabilities`. Received: shape "
                f"{np.shape(probabilities)}. Expected (N, {num_classes})."
            )
        return feature_dependent_noise(labels, probabilities, rate, seed=seed)
    if noise == "cifar10_pair":
        return cifar10_pair_noise(labels, rate, seed=seed)
    function = {
        "symmetric": symmetric_noise,
        "symmetric_uniform": symmetric_uniform_noise,
        "pair": pair_noise,
    }[noise]
    return function(labels, rate, num_classes=num_classes, seed=seed)
