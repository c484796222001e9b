"""The clean meta set: class balance, seeding, disjointness from the noisy set by index."""

import numpy as np
import pytest

from mln_tf.data import MetaSplit, split_meta
from mln_tf.data.splits import meta_quotas


def labels_with_sizes(sizes, seed=0):
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(len(sizes)), sizes))


def assert_partition(split: MetaSplit, num_examples):
    train = set(split.train_indices.tolist())
    meta = set(split.meta_indices.tolist())
    unlabeled = set(split.unlabeled_indices.tolist())
    assert not train & meta and not train & unlabeled and not meta & unlabeled
    assert train | meta | unlabeled == set(range(num_examples))
    for indices in (split.train_indices, split.meta_indices, split.unlabeled_indices):
        assert len(set(indices.tolist())) == indices.size  # no duplicates


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


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"meta_size": 3}, r"meta_size=3. Expected at least the number of classes, 4"),
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
