"""Adapters for real noisy TFDS datasets, offline with `tfds.testing.mock_data`."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from mln_tf.data import (
    DatasetNotPreparedError,
    load_cifar10_n,
    load_cifar100_n,
    load_controlled_noisy_web_labels,
)

NUM_EXAMPLES = 200


def raw_columns(name, split, keys):
    dataset = tfds.load(name, split=split, shuffle_files=False)
    dataset = dataset.map(lambda example: {key: example[key] for key in keys})
    batch = next(dataset.batch(100_000).as_numpy_iterator())
    return {key: batch[key] for key in keys}


def as_arrays(dataset):
    images, labels = zip(*dataset.as_numpy_iterator(), strict=True)
    return np.stack(images), np.array(labels)


@pytest.mark.parametrize(
    "label, key",
    [("aggre", "aggre_label"), ("worse", "worse_label"), ("random_label3", "random_label3")],
)
def test_cifar10_n_meta_from_train_by_clean_label(label, key):
    with tfds.testing.mock_data(num_examples=NUM_EXAMPLES):
        data = load_cifar10_n(label=label, meta_size=50, validation_size=30, seed=0)
        raw = raw_columns("cifar10_n", "train", ("image", "label", key))
        train_images, train_labels = as_arrays(data.train)
        meta_images, meta_labels = as_arrays(data.meta)
        validation_images, validation_labels = as_arrays(data.validation)
        _, test_labels = as_arrays(data.test)
    split = data.split
    assert split.meta_indices.size == 50 and split.train_indices.size == NUM_EXAMPLES - 80
    sets = [set(split.meta_indices), set(split.train_indices), set(split.validation_indices)]
    assert not sets[0] & sets[1] and not sets[0] & sets[2] and not sets[1] & sets[2]
    # Validation: clean labels from the training split, balanced, in index order.
    np.testing.assert_array_equal(validation_labels, raw["label"][split.validation_indices])
    np.testing.assert_array_equal(validation_labels, data.validation_labels)
    assert np.bincount(validation_labels, minlength=10).tolist() == [3] * 10
    np.testing.assert_allclose(validation_images, raw["image"][split.validation_indices] / 255.0)
    # Meta: clean labels from the training split, balanced, removed from the noisy set.
    np.testing.assert_array_equal(meta_labels, raw["label"][split.meta_indices])
    assert np.bincount(meta_labels, minlength=10).tolist() == [5] * 10
    np.testing.assert_allclose(meta_images, raw["image"][split.meta_indices] / 255.0)
    # Train: the chosen human labels, with their images, in index order.
    np.testing.assert_array_equal(train_labels, raw[key][split.train_indices])
    np.testing.assert_array_equal(train_labels, data.train_noisy_labels)
    np.testing.assert_allclose(train_images, raw["image"][split.train_indices] / 255.0)
    np.testing.assert_array_equal(data.train_clean_labels, raw["label"][split.train_indices])
    # The test split is whole, with clean labels: nothing was taken from it.
    assert test_labels.size == NUM_EXAMPLES
    assert data.noise_report.achieved_rate == pytest.approx(
        np.mean(raw[key][split.train_indices] != raw["label"][split.train_indices])
    )
    assert data.name == f"cifar10_n/{key}" and data.image_shape == (32, 32, 3)


def test_cifar10_n_unlabeled_split():
    with tfds.testing.mock_data(num_examples=NUM_EXAMPLES):
        data = load_cifar10_n(meta_size=20, unlabeled_size=100, validation_size=0, seed=1)
        unlabeled = list(data.unlabeled.as_numpy_iterator())
    assert len(unlabeled) == 100 and unlabeled[0].shape == (32, 32, 3)
    assert data.split.train_indices.size == NUM_EXAMPLES - 120
    assert data.validation is None and data.validation_labels.size == 0


def test_cifar100_n():
    with tfds.testing.mock_data(num_examples=1000):
        data = load_cifar100_n(meta_size=100, validation_size=0, seed=0)
        raw = raw_columns("cifar100_n", "train", ("label", "noise_label"))
        _, meta_labels = as_arrays(data.meta)
    assert np.bincount(meta_labels, minlength=100).tolist() == [1] * 100
    np.testing.assert_array_equal(
        data.train_noisy_labels, raw["noise_label"][data.split.train_indices]
    )
    assert data.num_classes == 100 and data.noise_report.num_classes == 100


@pytest.mark.parametrize("color, level", [("red", 40), ("blue", 80), ("red", 0)])
def test_controlled_noisy_web_labels_meta_from_clean_examples(color, level):
    with tfds.testing.mock_data(num_examples=2000):
        data = load_controlled_noisy_web_labels(
            color=color, noise_level=level, meta_size=100, validation_size=100, seed=0,
            image_size=16,
        )
        raw = raw_columns(
            f"controlled_noisy_web_labels/mini_imagenet_{color}", f"train_{level:02d}",
            ("label", "is_clean"),
        )
        meta_images, meta_labels = as_arrays(data.meta)
        _, validation_labels = as_arrays(data.validation)
        train_images, train_labels = as_arrays(data.train.take(5))
    split = data.split
    assert np.all(raw["is_clean"][split.meta_indices])  # only examples known to be clean
    assert np.all(raw["is_clean"][split.validation_indices])
    assert not set(split.validation_indices) & (set(split.meta_indices) | set(split.train_indices))
    np.testing.assert_array_equal(validation_labels, raw["label"][split.validation_indices])
    assert np.bincount(validation_labels, minlength=100).tolist() == [1] * 100
    assert np.bincount(meta_labels, minlength=100).tolist() == [1] * 100
    np.testing.assert_array_equal(meta_labels, raw["label"][split.meta_indices])
    np.testing.assert_array_equal(train_labels, raw["label"][split.train_indices[:5]])
    np.testing.assert_array_equal(data.train_label_is_correct, raw["is_clean"][split.train_indices])
    assert meta_images.shape[1:] == (16, 16, 3) and train_images.max() <= 1.0
    assert data.train_clean_labels is None and data.noise_report is None
    assert data.name.endswith(f"mini_imagenet_{color}/train_{level:02d}")


@pytest.mark.parametrize(
    "function, kwargs, message",
    [
        (load_cifar10_n, {"label": "best"}, "Expected one of 'aggre', 'worse'"),
        (load_controlled_noisy_web_labels, {"color": "green"}, "Expected one of 'red', 'blue'"),
        (load_controlled_noisy_web_labels, {"noise_level": 45}, r"Expected one of \(0, 5"),
    ],
)
def test_adapter_argument_errors(function, kwargs, message):
    with pytest.raises(ValueError, match=message):
        function(**kwargs)


def test_unprepared_dataset_is_not_downloaded(tmp_path):
    with pytest.raises(DatasetNotPreparedError, match="tfds build cifar10_n"):
        load_cifar10_n(data_dir=tmp_path)
