"""The clean meta set: class balance, seeding, disjointness from the noisy set by index."""

import numpy as np
import pytest

from mln_tf.data import MetaSplit, split_meta
from mln_tf.data.splits import meta_quotas


def labels_with_sizes(sizes, seed=0):
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(len(sizes)), sizes))


def assert_partition(split: MetaSplit, num_examples):
    parts = [
        split.train_indices, split.meta_indices, split.unlabeled_indices,
        split.validation_indices,
    ]
    for indices in parts:
        assert len(set(indices.tolist())) == indices.size  # no duplicates
        np.testing.assert_array_equal(indices, np.sort(indices))
    # Disjoint and covering: every index of the pool in exactly one part.
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(num_examples))


def test_meta_set_is_class_balanced_and_disjoint():
    labels = labels_with_sizes([300, 120, 50, 400])
    split = split_meta(labels, meta_size=100, seed=0)
    assert_partition(split, labels.size)
    assert np.bincount(labels[split.meta_indices]).tolist() == [25, 25, 25, 25]


def test_remainder_goes_to_seeded_classes():
    labels = labels_with_sizes([100] * 7)
    counts = np.bincount(labels[split_meta(labels, meta_size=24, seed=5).meta_indices])
    assert sorted(counts.tolist()) == [3, 3, 3, 3, 4, 4, 4]
    assert counts.tolist() == meta_quotas(24, 7, seed=5).tolist()


def test_unlabeled_split_is_disjoint_too():
    labels = labels_with_sizes([100, 100, 100])
    split = split_meta(labels, meta_size=30, unlabeled_size=50, seed=1)
    assert split.unlabeled_indices.size == 50 and split.train_indices.size == 220
    assert_partition(split, labels.size)


def test_meta_set_only_from_eligible_examples():
    labels = labels_with_sizes([50, 50])
    eligible = np.arange(100) % 3 == 0
    split = split_meta(labels, meta_size=20, seed=0, eligible=eligible)
    assert np.all(eligible[split.meta_indices])
    assert_partition(split, 100)


def test_split_is_deterministic_per_seed():
    labels = labels_with_sizes([200] * 5)
    first = split_meta(labels, meta_size=50, unlabeled_size=30, seed=3)
    second = split_meta(labels, meta_size=50, unlabeled_size=30, seed=3)
    other = split_meta(labels, meta_size=50, unlabeled_size=30, seed=4)
    np.testing.assert_array_equal(first.meta_indices, second.meta_indices)
    np.testing.assert_array_equal(first.unlabeled_indices, second.unlabeled_indices)
    assert not np.array_equal(first.meta_indices, other.meta_indices)


def test_two_classes():
    labels = labels_with_sizes([10, 4])
    split = split_meta(labels, meta_size=8, seed=0)
    assert np.bincount(labels[split.meta_indices]).tolist() == [4, 4]
    assert_partition(split, 14)


def test_validation_set_is_class_balanced_disjoint_and_leaves_the_meta_set_alone():
    labels = labels_with_sizes([300, 120, 50, 400])
    split = split_meta(labels, meta_size=100, validation_size=42, unlabeled_size=30, seed=2)
    without = split_meta(labels, meta_size=100, unlabeled_size=30, seed=2)
    assert_partition(split, labels.size)
    counts = np.bincount(labels[split.validation_indices], minlength=4)
    # 42 = 4 * 10 + 2: two classes get 11.
    assert sorted(counts.tolist()) == [10, 10, 11, 11]
    assert split.train_indices.size == labels.size - 100 - 42 - 30
    # The meta set does not depend on the validation size; without one, nothing changes.
    np.testing.assert_array_equal(split.meta_indices, without.meta_indices)
    assert without.validation_indices.size == 0
    np.testing.assert_array_equal(
        np.setdiff1d(without.train_indices, split.train_indices),
        np.setdiff1d(np.union1d(split.validation_indices, split.unlabeled_indices),
                     without.unlabeled_indices),
    )


def test_validation_set_only_from_eligible_examples_and_seeded():
    labels = labels_with_sizes([60, 60])
    eligible = np.arange(120) % 2 == 0
    split = split_meta(labels, meta_size=10, validation_size=20, seed=0, eligible=eligible)
    assert np.all(eligible[split.validation_indices]) and np.all(eligible[split.meta_indices])
    assert np.bincount(labels[split.validation_indices]).tolist() == [10, 10]
    again = split_meta(labels, meta_size=10, validation_size=20, seed=0, eligible=eligible)
    other = split_meta(labels, meta_size=10, validation_size=20, seed=1, eligible=eligible)
    np.testing.assert_array_equal(split.validation_indices, again.validation_indices)
    assert not np.array_equal(split.validation_indices, other.validation_indices)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"meta_size": 3}, r"meta_size=3. Expected at least the number of classes, 4"),
        ({"meta_size": 100, "validation_size": 100},
         r"arguments `meta_size` and `validation_size`. Received: meta_size=100, "
         r"validation_size=100. Expected meta_size \+ validation_size <= 170, the size of "
         r"the clean pool"),
        ({"meta_size": 20, "validation_size": 4},
         r"meta_size=20, validation_size=4, which need 5 \+ 1 clean examples of class 3, "
         r"but the clean pool holds only 5"),
        ({"meta_size": 8, "validation_size": 3},
         r"validation_size=3. Expected 0 \(no validation set\) or at least the number of "
         r"classes, 4"),
        ({"meta_size": 8, "validation_size": -1}, r"validation_size=-1. Expected an integer"),
        ({"meta_size": 8, "validation_size": 8, "unlabeled_size": 154},
         r"meta_size \+ validation_size \+ unlabeled_size < 170"),
        ({"meta_size": 1000}, r"Expected at most the size of the clean pool, 170"),
        ({"meta_size": 40}, r"class 3, but the clean pool holds only 5.*meta_size <= 20"),
        ({"meta_size": 20, "unlabeled_size": 150}, "noisy training set is not empty"),
        ({"meta_size": -1}, r"Expected an integer >= 0"),
        ({"meta_size": 8, "eligible": np.ones(3, bool)}, "Expected a boolean mask"),
    ],
)
def test_split_errors(kwargs, message):
    labels = labels_with_sizes([100, 40, 25, 5])
    with pytest.raises(ValueError, match=message):
        split_meta(labels, **kwargs)
