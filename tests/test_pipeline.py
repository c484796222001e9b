"""`with_meta`: the element structure MetaLabelNet trains on."""

import numpy as np
import pytest
import tensorflow as tf

from mln_tf.data import UNLABELED, with_meta


def _examples(n, offset=0):
    x = np.arange(offset, offset + n, dtype="float32")[:, None] * np.ones((1, 2), "float32")
    y = (np.arange(n) % 3).astype("int64")
    return tf.data.Dataset.from_tensor_slices((x, y))


def test_structure_static_batches_and_epoch_length():
    ds = with_meta(_examples(10), _examples(3, offset=100), batch_size=4, seed=0)
    (x, y), (x_meta, y_meta) = ds.element_spec
    assert x.shape == (4, 2) and y.shape == (4,) and y.dtype == tf.int32
    assert x_meta.shape == (4, 2) and y_meta.shape == (4,)
    batches = list(ds)
    assert len(batches) == 2  # 10 // 4: the remainder is dropped
    noisy_seen = np.concatenate([b[0][0].numpy()[:, 0] for b in batches])
    assert len(set(noisy_seen)) == 8 and set(noisy_seen) <= set(range(10))
    # The 3-example meta set is repeated to fill meta batches of 4.
    meta_seen = np.concatenate([b[1][0].numpy()[:, 0] for b in batches])
    assert set(meta_seen) == {100.0, 101.0, 102.0}


def test_meta_batch_size_and_unlabeled_interleaving():
    unlabeled = tf.data.Dataset.from_tensor_slices(np.full((8, 2), -5.0, "float32"))
    ds = with_meta(
        _examples(8), _examples(5), batch_size=4, meta_batch_size=2, unlabeled=unlabeled, seed=1
    )
    batches = list(ds)
    assert len(batches) == 4  # 2 noisy + 2 unlabeled batches
    labels = [b[0][1].numpy() for b in batches]
    unlabeled_batches = [lab for lab, b in zip(labels, batches) if b[0][0].numpy()[0, 0] == -5.0]
    assert len(unlabeled_batches) == 2
    assert all((lab == UNLABELED).all() for lab in unlabeled_batches)
    assert all(b[1][0].shape == (2, 2) for b in batches)


def test_empty_meta_set_is_an_error():
    with pytest.raises(ValueError, match="`meta` is empty"):
        with_meta(_examples(8), _examples(8).take(0), batch_size=4)


def test_batched_input_is_an_error():
    with pytest.raises(ValueError, match=r"`noisy` looks batched.*noisy.unbatch\(\)"):
        with_meta(_examples(8).batch(2), _examples(8), batch_size=4)


def test_unlabeled_meta_set_is_an_error():
    images_only = tf.data.Dataset.from_tensor_slices(np.zeros((4, 2), "float32"))
    with pytest.raises(ValueError, match=r"`meta` must yield `\(image, label\)` pairs"):
        with_meta(_examples(8), images_only, batch_size=4)


def test_invalid_batch_size():
    with pytest.raises(ValueError, match="Received: batch_size=0. Expected a positive integer"):
        with_meta(_examples(8), _examples(8), batch_size=0)
