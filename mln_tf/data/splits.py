"""The clean meta set: class-balanced, seeded, disjoint from the noisy training set.

All indices refer to one pool of N training examples. `split_meta` partitions the pool
into three disjoint index sets: the meta set D_m (M clean examples, balanced over the K
classes), an optional unlabeled set D_u, and the noisy training set D_n (the rest). The
meta set is always taken from the training pool, never from a test split.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mln_tf.noise.seeding import make_rng
from mln_tf.noise.validation import check_count, check_labels


@dataclasses.dataclass(frozen=True)
class MetaSplit:
    """A partition of a training pool's indices into train, meta and unlabeled sets.

    Attributes:
        train_indices: sorted int64 array, the noisy training set D_n.
        meta_indices: sorted int64 array, the clean meta set D_m.
        unlabeled_indices: sorted int64 array, the unlabeled set D_u (may be empty).
    """

    train_indices: np.ndarray
    meta_indices: np.ndarray
    unlabeled_indices: np.ndarray


def meta_quotas(meta_size: int, num_classes: int, *, seed: int = 0) -> np.ndarray:
    """Returns how many meta examples each class gets: M // K, plus one for M mod K classes.

    The classes that get one more are drawn with the seed, so that no class is favoured.
    """
    quotas = np.full(num_classes, meta_size // num_classes, np.int64)
    extra = make_rng(seed, "data.meta_quotas").permutation(num_classes)[: meta_size % num_classes]
    quotas[extra] += 1
    return quotas


def split_meta(
    labels,
    *,
    meta_size: int,
    num_classes: int | None = None,
    unlabeled_size: int = 0,
    seed: int = 0,
    eligible=None,
) -> MetaSplit:
    """Draws a class-balanced clean meta set (and an unlabeled set) from a training pool.

    Each class c gets M // K meta examples (M mod K classes, drawn with the seed, get one
    more), drawn at random among the pool's examples of class c. The unlabeled set is then
    drawn at random from what is left, and the noisy training set is the rest. The three
    index sets are disjoint and cover the pool.

    Args:
        labels: array-like of shape `(N,)`, the pool's clean labels (for datasets with
            clean and noisy labels, such as CIFAR-10N, the clean ones).
        meta_size: int, the meta set size M, at least K.
        num_classes: optional int, the number of classes K. Defaults to `max(labels) + 1`.
        unlabeled_size: int, the size of the unlabeled set. Defaults to 0.
        seed: int, the random seed. Defaults to 0.
        eligible: optional boolean array of shape `(N,)`: only these examples may enter
            the meta set (for example those whose label is known to be correct). Defaults
            to all.

    Returns:
        A `MetaSplit`.

    Example:

    >>> split = split_meta(np.repeat(np.arange(3), 10), meta_size=6, seed=0)
    >>> split.meta_indices.size, split.train_indices.size
    (6, 24)
    """
    labels, num_classes = check_labels(labels, num_classes)
    meta_size = check_count(meta_size, name="meta_size", minimum=0)
    unlabeled_size = check_count(unlabeled_size, name="unlabeled_size", minimum=0)
    if eligible is None:
        eligible = np.ones(labels.size, bool)
    eligible = np.asarray(eligible)
    if eligible.shape != labels.shape or eligible.dtype != bool:
        raise ValueError(
            f"Invalid value for argument `eligible`. Received: dtype {eligible.dtype}, shape "
            f"{eligible.shape}. Expected a boolean mask of shape {labels.shape}."
        )
    pool_size = int(eligible.sum())
    if meta_size < num_classes:
        raise ValueError(
            f"Invalid value for argument `meta_size`. Received: meta_size={meta_size}. "
            f"Expected at least the number of classes, {num_classes}, so that the meta set "
            "holds a clean example of every class."
        )
    if meta_size > pool_size:
        raise ValueError(
            f"Invalid value for argument `meta_size`. Received: meta_size={meta_size}. "
            f"Expected at most the size of the clean pool, {pool_size}."
        )
    counts = np.bincount(labels[eligible], minlength=num_classes)
    quotas = meta_quotas(meta_size, num_classes, seed=seed)
    short = np.flatnonzero(quotas > counts)
    if short.size:
        largest = num_classes * int(counts.min())
        raise ValueError(
            f"Invalid value for argument `meta_size`. Received: meta_size={meta_size}, which "
            f"needs {int(quotas[short[0]])} clean examples of class {int(short[0])}, but the "
            f"clean pool holds only {int(counts[short[0]])}. Expected a class-balanced meta "
            f"set the pool can fill: meta_size <= {largest} (K times the smallest class)."
        )
    if meta_size + unlabeled_size >= labels.size:
        raise ValueError(
            f"Invalid value for argument `unlabeled_size`. Received: "
            f"unlabeled_size={unlabeled_size} with meta_size={meta_size}. Expected "
            f"meta_size + unlabeled_size < {labels.size}, the pool size, so that the noisy "
            "training set is not empty."
        )

    rng = make_rng(seed, "data.split_meta")
    in_meta = np.zeros(labels.size, bool)
    for label in range(num_classes):
        candidates = np.flatnonzero(eligible & (labels == label))
        in_meta[rng.choice(candidates, size=int(quotas[label]), replace=False)] = True
    rest = np.flatnonzero(~in_meta)
    unlabeled = np.sort(rng.choice(rest, size=unlabeled_size, replace=False))
    in_unlabeled = np.zeros(labels.size, bool)
    in_unlabeled[unlabeled] = True
    return MetaSplit(
        train_indices=np.flatnonzero(~in_meta & ~in_unlabeled).astype(np.int64),
        meta_indices=np.flatnonzero(in_meta).astype(np.int64),
        unlabeled_indices=unlabeled.astype(np.int64),
    )
