"""`split_validation`: a clean validation set held out of the meta set."""

import numpy as np
import pytest

import mln_tf


@pytest.fixture(scope="module")
def digits():
    return mln_tf.data.load_noisy("digits", noise="symmetric", rate=0.4, meta_size=150, seed=0)


def test_validation_is_class_balanced_clean_and_disjoint_from_meta(digits):
    data, validation = mln_tf.data.split_validation(digits, 50, seed=3)
    images = np.stack([x for x, _ in validation.as_numpy_iterator()])
    labels = np.array([y for _, y in validation.as_numpy_iterator()])
    meta_images = np.stack([x for x, _ in data.meta.as_numpy_iterator()])
    meta_labels = np.array([y for _, y in data.meta.as_numpy_iterator()])

    assert labels.size == 50 and meta_labels.size == 100
    assert np.bincount(labels, minlength=10).tolist() == [5] * 10
    np.testing.assert_array_equal(meta_labels, data.meta_labels)
    # Together they are exactly the original meta set, each example once.
    original = {x.tobytes(): y for x, y in digits.meta.as_numpy_iterator()}
    held_out = {x.tobytes(): y for x, y in zip(images, labels)}
    kept = {x.tobytes(): y for x, y in zip(meta_images, meta_labels)}
    assert not held_out.keys() & kept.keys()
    assert held_out | kept == original
    # Indices: the kept meta indices are a subset of the original ones, train is unchanged.
    assert set(data.split.meta_indices) < set(digits.split.meta_indices)
    np.testing.assert_array_equal(data.split.train_indices, digits.split.train_indices)
    np.testing.assert_array_equal(data.meta_images, meta_images)
    assert int(validation.cardinality()) == 50 and int(data.meta.cardinality()) == 100


def test_split_is_seeded(digits):
    first = mln_tf.data.split_validation(digits, 20, seed=1)[0].split.meta_indices
    again = mln_tf.data.split_validation(digits, 20, seed=1)[0].split.meta_indices
    other = mln_tf.data.split_validation(digits, 20, seed=2)[0].split.meta_indices
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize("size", [0, 150, 200, 2.5, True])
def test_invalid_size_is_rejected(digits, size):
    with pytest.raises(ValueError, match=r"`validation_size`. Received: validation_size=.*"
                       r"less than the meta set's size 150"):
        mln_tf.data.split_validation(digits, size)


def test_size_below_class_count_is_rejected(digits):
    with pytest.raises(ValueError, match="Expected at least the number of classes, 10"):
        mln_tf.data.split_validation(digits, 5)
