"""The clean meta and validation sets: class-balanced, seeded, disjoint from the noisy set.

All indices refer to one pool of N training examples. `split_meta` partitions the pool
into four disjoint index sets: the meta set D_m (M clean examples, balanced over the K
classes), an optional clean validation set D_v (V examples, balanced too), an optional
unlabeled set D_u, and the noisy training set D_n (the rest). The meta set teaches the
method; the validation set only selects models, so that neither the meta set (which the
method has fitted) nor the test split (which stays unseen) decides which epoch is kept.
Both are always taken from the training pool, never from a test split.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mln_tf.noise.seeding import make_rng
from mln_tf.noise.validation import check_count, check_labels


@dataclasses.dataclass(frozen=True)
class MetaSplit:
    """A partition of a training pool's indices into train, meta, validation and unlabeled sets.

    Attributes:
        train_indices: sorted int64 array, the noisy training set D_n.
        meta_indices: sorted int64 array, the clean meta set D_m.
        unlabeled_indices: sorted int64 array, the unlabeled set D_u (may be empty).
        validation_indices: sorted int64 array, the clean validation set D_v (may be
            empty).
    """

    train_indices: np.ndarray
    meta_indices: np.ndarray
    unlabeled_indices: np.ndarray
    validation_indices: np.ndarray = dataclasses.field(
        default_factory=lambda: np.zeros(0, np.int64)
    )


def meta_quotas(meta_size: int, num_classes: int, *, seed: int = 0) -> np.ndarray:
    """Returns how many meta examples each class gets: M // K, plus one for M mod K classes.

    The classes that get one more are drawn with the seed, so that no class is favoured.
    """
    return _class_quotas(meta_size, num_classes, make_rng(seed, "data.meta_quotas"))


def _class_quotas(size: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    quotas = np.full(num_classes, size // num_classes, np.int64)
    quotas[rng.permutation(num_classes)[: size % num_classes]] += 1
    return quotas


def split_meta(
    labels,
    *,
    meta_size: int,
    num_classes: int | None = None,
    unlabeled_size: int = 0,
    validation_size: int = 0,
    seed: int = 0,
    eligible=None,
) -> MetaSplit:
    """Draws class-balanced clean meta and validation sets (and an unlabeled set) from a pool.

    Each class c gets M // K meta examples (M mod K classes, drawn with the seed, get one
    more), drawn at random among the pool's examples of class c. The validation set is
    drawn the same way, V // K per class, from the clean examples left; the unlabeled set
    is then drawn at random from what is left, and the noisy training set is the rest. The
    four index sets are disjoint and cover the pool. The meta set does not depend on
    `validation_size`, and with `validation_size=0` the split is that of earlier releases.

    Args:
        labels: array-like of shape `(N,)`, the pool's clean labels (for datasets with
            clean and noisy labels, such as CIFAR-10N, the clean ones).
        meta_size: int, the meta set size M, at least K.
        num_classes: optional int, the number of classes K. Defaults to `max(labels) + 1`.
        unlabeled_size: int, the size of the unlabeled set. Defaults to 0.
        validation_size: int, the size V of the clean validation set: 0 (none) or at
            least K. Defaults to 0.
        seed: int, the random seed. Defaults to 0.
        eligible: optional boolean array of shape `(N,)`: only these examples may enter
            the meta and validation sets (for example those whose label is known to be
            correct). Defaults to all.

    Returns:
        A `MetaSplit`.

    Example:

    >>> split = split_meta(np.repeat(np.arange(3), 10), meta_size=6, validation_size=3)
    >>> split.meta_indices.size, split.validation_indices.size, split.train_indices.size
    (6, 3, 21)
    """
    labels, num_classes = check_labels(labels, num_classes)
    meta_size = check_count(meta_size, name="meta_size", minimum=0)
    unlabeled_size = check_count(unlabeled_size, name="unlabeled_size", minimum=0)
    validation_size = check_count(validation_size, name="validation_size", minimum=0)
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
    if 0 < validation_size < num_classes:
        raise ValueError(
            f"Invalid value for argument `validation_size`. Received: validation_size="
            f"{validation_size}. Expected 0 (no validation set) or at least the number of "
            f"classes, {num_classes}, so that it holds a clean example of every class."
        )
    if meta_size + validation_size > pool_size:
        raise ValueError(
            f"Invalid values for arguments `meta_size` and `validation_size`. Received: "
            f"meta_size={meta_size}, validation_size={validation_size}. Expected "
            f"meta_size + validation_size <= {pool_size}, the size of the clean pool both "
            "are drawn from, disjointly. Lower one of them."
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
    validation_quotas = _class_quotas(
        validation_size, num_classes, make_rng(seed, "data.validation_quotas")
    )
    short = np.flatnonzero(quotas + validation_quotas > counts)
    if short.size:
        label = int(short[0])
        raise ValueError(
            f"Invalid values for arguments `meta_size` and `validation_size`. Received: "
            f"meta_size={meta_size}, validation_size={validation_size}, which need "
            f"{int(quotas[label])} + {int(validation_quotas[label])} clean examples of class "
            f"{label}, but the clean pool holds only {int(counts[label])}. Expected "
            "class-balanced meta and validation sets the pool can fill: lower one of them."
        )
    if meta_size + validation_size + unlabeled_size >= labels.size:
        raise ValueError(
            "Invalid values for arguments `meta_size`, `validation_size` and "
            f"`unlabeled_size`. Received: meta_size={meta_size}, validation_size="
            f"{validation_size}, unlabeled_size={unlabeled_size}. Expected meta_size + "
            f"validation_size + unlabeled_size < {labels.size}, the pool size, so that the "
            "noisy training set is not empty."
        )

    rng = make_rng(seed, "data.split_meta")
    in_meta = np.zeros(labels.size, bool)
    for label in range(num_classes):
        candidates = np.flatnonzero(eligible & (labels == label))
        in_meta[rng.choice(candidates, size=int(quotas[label]), replace=False)] = True
    # A stream of its own, so that the meta and unlabeled draws do not depend on V.
    validation_rng = make_rng(seed, "data.split_validation")
    in_validation = np.zeros(labels.size, bool)
    for label in range(num_classes):
        candidates = np.flatnonzero(eligible & ~in_meta & (labels == label))
        chosen = validation_rng.choice(candidates, size=int(validation_quotas[label]),
                                       replace=False)  # fmt: skip
        in_validation[chosen] = True
    rest = np.flatnonzero(~in_meta & ~in_validation)
    unlabeled = np.sort(rng.choice(rest, size=unlabeled_size, replace=False))
    in_unlabeled = np.zeros(labels.size, bool)
    in_unlabeled[unlabeled] = True
    return MetaSplit(
        train_indices=np.flatnonzero(~in_meta & ~in_validation & ~in_unlabeled).astype(np.int64),
        meta_indices=np.flatnonzero(in_meta).astype(np.int64),
        unlabeled_indices=unlabeled.astype(np.int64),
        validation_indices=np.flatnonzero(in_validation).astype(np.int64),
    )
