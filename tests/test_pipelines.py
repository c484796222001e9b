"""Per-example preprocessing and batching around `with_meta`."""

import numpy as np
import pytest
import tensorflow as tf

from mln_tf.data import batched, channel_stats, normalize, preprocess, random_crop_and_flip


def labelled(images, labels=None):
    labels = np.arange(len(images)) if labels is None else labels
    return tf.data.Dataset.from_tensor_slices((images.astype(np.float32), labels))


def test_channel_stats_and_normalize():
    images = np.zeros((2, 2, 2, 3), np.uint8)
    images[0] = [51, 102, 255]
    mean, std = channel_stats(images)
    np.testing.assert_allclose(mean, [0.1, 0.2, 0.5], atol=1e-6)
    np.testing.assert_allclose(std, [0.1, 0.2, 0.5], atol=1e-6)
    normalized = normalize(images / 255.0, mean=mean, std=std).numpy()
    np.testing.assert_allclose(normalized.reshape(-1, 3).mean(axis=0), 0, atol=1e-6)
    np.testing.assert_allclose(normalized.reshape(-1, 3).std(axis=0), 1, atol=1e-5)


def test_preprocess_normalizes_pairs_and_images():
    images = np.full((4, 3, 3, 1), 0.75, np.float32)
    (image, label) = next(iter(preprocess(labelled(images), mean=[0.25], std=[0.5])))
    np.testing.assert_allclose(image.numpy(), 1.0)
    assert int(label) == 0
    only_images = tf.data.Dataset.from_tensor_slices(images)
    image = next(iter(preprocess(only_images, mean=[0.25], std=[0.5])))
    np.testing.assert_allclose(image.numpy(), 1.0)


def test_augmentation_crops_a_shifted_window_and_flips():
    image = np.arange(36, dtype=np.float32).reshape(6, 6, 1) + 1
    padded = np.pad(image[..., 0], 2)
    windows = set()
    for seed in range(40):
        out = random_crop_and_flip(tf.constant(image), padding=2, seed=seed).numpy()[..., 0]
        assert out.shape == (6, 6)
        # The output is a 6x6 window of the padded image, possibly mirrored.
        found = False
        for top in range(5):
            for left in range(5):
                window = padded[top : top + 6, left : left + 6]
                for mirrored, candidate in ((False, window), (True, window[:, ::-1])):
                    if np.array_equal(out, candidate):
                        windows.add((top, left, mirrored))
                        found = True
        assert found
    assert len(windows) > 5  # it really is random
    assert any(mirrored for _, _, mirrored in windows)


def test_augmentation_needs_single_static_images():
    with pytest.raises(ValueError, match="apply augmentation before batching"):
        random_crop_and_flip(tf.zeros((2, 4, 4, 1)))


def test_preprocess_with_augmentation_keeps_shape():
    images = np.random.default_rng(0).random((8, 32, 32, 3))
    dataset = preprocess(labelled(images), augment=True, seed=0)
    assert dataset.element_spec[0].shape == (32, 32, 3)
    assert len(list(dataset)) == 8


def test_preprocess_errors():
    with pytest.raises(ValueError, match="Expected both or neither"):
        preprocess(labelled(np.zeros((2, 2, 2, 1))), mean=[0.5])
    with pytest.raises(TypeError, match="Expected a `tf.data.Dataset`"):
        preprocess(np.zeros((2, 2, 2, 1)))


def test_batched_drop_remainder_and_shuffle():
    dataset = labelled(np.zeros((10, 2, 2, 1)))
    kept = batched(dataset, 4)
    assert [int(labels.shape[0]) for _, labels in kept] == [4, 4, 2]
    static = batched(dataset, 4, drop_remainder=True)
    assert static.element_spec[0].shape == (4, 2, 2, 1)
    assert len(list(static)) == 2
    shuffled = batched(dataset, 10, shuffle=True, seed=0)
    labels = next(iter(shuffled))[1].numpy()
    assert sorted(labels.tolist()) == list(range(10)) and labels.tolist() != list(range(10))
    with pytest.raises(ValueError, match="Expected a positive integer"):
        batched(dataset, 0)
