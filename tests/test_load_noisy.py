"""`load_noisy`: the in-memory entry point, on scikit-learn's digits and Fashion-MNIST files."""

import numpy as np
import pytest
import tensorflow as tf

from mln_tf.data import (
    DEFAULT_META_SIZE,
    DEFAULT_VALIDATION_SIZE,
    DatasetFilesNotFoundError,
    default_meta_size,
    default_validation_size,
    load_noisy,
    sources,
    with_meta,
)
from mln_tf.data.datasets.noisy_fashion_mnist import dummy_data


def as_arrays(dataset):
    images, labels = zip(*dataset.as_numpy_iterator(), strict=True)
    return np.stack(images), np.array(labels)


def test_digits_symmetric():
    data = load_noisy("digits", noise="symmetric", rate=0.4, meta_size=100, validation_size=100,
                      seed=0)  # fmt: skip
    source = sources.load_digits()
    split = data.split
    assert split.train_indices.size == 1237 and split.meta_indices.size == 100
    assert split.validation_indices.size == 100
    # Train, meta and validation: disjoint by index and together the whole training split.
    assert np.array_equal(
        np.sort(np.concatenate([split.train_indices, split.meta_indices,
                                split.validation_indices])),
        np.arange(source.train_labels.size),
    )  # fmt: skip
    assert data.num_classes == 10 and data.image_shape == (8, 8, 1)
    # Meta: clean labels, 10 per class, taken from the training split.
    meta_images, meta_labels = as_arrays(data.meta)
    np.testing.assert_array_equal(meta_labels, source.train_labels[split.meta_indices])
    np.testing.assert_array_equal(meta_labels, data.meta_labels)
    assert np.bincount(meta_labels).tolist() == [10] * 10
    np.testing.assert_allclose(meta_images, source.train_images[split.meta_indices] / 255.0)
    # Validation: clean labels, 10 per class, from the training split, in index order.
    validation_images, validation_labels = as_arrays(data.validation)
    np.testing.assert_array_equal(validation_labels, source.train_labels[split.validation_indices])
    np.testing.assert_array_equal(validation_labels, data.validation_labels)
    assert np.bincount(validation_labels).tolist() == [10] * 10
    np.testing.assert_allclose(
        validation_images, source.train_images[split.validation_indices] / 255.0
    )
    np.testing.assert_allclose(validation_images, data.validation_images)
    # Train: noisy labels, in the order of train_indices.
    train_images, train_labels = as_arrays(data.train)
    np.testing.assert_array_equal(train_labels, data.train_noisy_labels)
    np.testing.assert_array_equal(data.train_clean_labels, source.train_labels[split.train_indices])
    assert train_images.dtype == np.float32 and 0 <= train_images.min() <= train_images.max() <= 1
    np.testing.assert_allclose(train_images, data.train_images)
    assert data.noise_rate == pytest.approx(np.mean(train_labels != data.train_clean_labels))
    assert data.noise_report.noise == "symmetric" and data.noise_rate > 0.35
    # Test: the whole test split, clean, untouched by the meta set.
    test_images, test_labels = as_arrays(data.test)
    np.testing.assert_array_equal(test_labels, source.test_labels)
    assert test_images.shape == (360, 8, 8, 1)
    assert "1237 noisy training, 100 clean meta, 100 clean validation" in data.summary()


def test_default_meta_and_validation_sizes_depend_on_the_dataset(tmp_path):
    # 100 + 100 of the 1,437 training digits, 10 per class each: as if asked explicitly.
    digits = load_noisy("digits", noise="symmetric", rate=0.4, seed=0)
    explicit = load_noisy("digits", noise="symmetric", rate=0.4, meta_size=100,
                          validation_size=100, seed=0)  # fmt: skip
    assert digits.split.meta_indices.size == 100 and digits.split.train_indices.size == 1237
    assert np.bincount(digits.meta_labels).tolist() == [10] * 10
    assert np.bincount(digits.validation_labels).tolist() == [10] * 10
    np.testing.assert_array_equal(digits.split.meta_indices, explicit.split.meta_indices)
    np.testing.assert_array_equal(
        digits.split.validation_indices, explicit.split.validation_indices
    )
    np.testing.assert_array_equal(digits.train_noisy_labels, explicit.train_noisy_labels)
    # Fashion-MNIST keeps 1,000 meta images, 100 per class of the dummy files' 150 per
    # class; its default 500 validation images would take the last 50 of each class.
    dummy_data.write_fashion_mnist(tmp_path)
    with pytest.raises(ValueError, match="meta_size=1000, validation_size=500, unlabeled_size=0"):
        load_noisy("fashion_mnist", noise="symmetric", rate=0.4, data_dir=tmp_path)
    fashion = load_noisy("fashion_mnist", noise="symmetric", rate=0.4, validation_size=200,
                         data_dir=tmp_path)  # fmt: skip
    assert np.bincount(fashion.meta_labels).tolist() == [100] * 10
    assert np.bincount(fashion.validation_labels).tolist() == [20] * 10
    assert fashion.split.train_indices.size == 10 * dummy_data.TRAIN_PER_CLASS - 1200
    # Other datasets get the general defaults.
    assert default_meta_size("cifar10_n") == DEFAULT_META_SIZE == 1000
    assert default_validation_size("fashion_mnist") == DEFAULT_VALIDATION_SIZE == 500


def test_without_a_validation_set_the_split_is_the_meta_split_alone():
    data = load_noisy("digits", noise="pair", rate=0.45, meta_size=100, validation_size=0, seed=3)
    with_validation = load_noisy("digits", noise="pair", rate=0.45, meta_size=100,
                                 validation_size=50, seed=3)  # fmt: skip
    assert data.validation is None and data.validation_labels.size == 0
    assert data.split.train_indices.size == 1337
    # The validation set only moves clean examples out of the noisy pool.
    np.testing.assert_array_equal(data.split.meta_indices, with_validation.split.meta_indices)
    np.testing.assert_array_equal(
        np.setdiff1d(data.split.train_indices, with_validation.split.train_indices),
        with_validation.split.validation_indices,
    )


def test_same_seed_same_data_other_seed_other_data():
    first = load_noisy("digits", noise="pair", rate=0.45, meta_size=50, seed=1)
    second = load_noisy("digits", noise="pair", rate=0.45, meta_size=50, seed=1)
    other = load_noisy("digits", noise="pair", rate=0.45, meta_size=50, seed=2)
    np.testing.assert_array_equal(first.split.meta_indices, second.split.meta_indices)
    np.testing.assert_array_equal(first.train_noisy_labels, second.train_noisy_labels)
    assert not np.array_equal(first.split.meta_indices, other.split.meta_indices)


def test_unlabeled_split_and_with_meta():
    data = load_noisy(
        "digits", noise="symmetric_uniform", rate=0.5, meta_size=50, unlabeled_size=200, seed=0
    )
    assert data.unlabeled.element_spec.shape == (8, 8, 1)
    assert len(list(data.unlabeled)) == 200 and data.unlabeled_images.shape == (200, 8, 8, 1)
    assert not set(data.split.unlabeled_indices) & set(data.split.train_indices)
    batches = with_meta(data.train, data.meta, batch_size=32, unlabeled=data.unlabeled, seed=0)
    (x, y), (x_meta, y_meta) = next(iter(batches))
    assert x.shape == (32, 8, 8, 1) and x_meta.shape == (32, 8, 8, 1)
    assert y.dtype == tf.int32 and y_meta.dtype == tf.int32
    # One epoch covers every noisy and unlabeled batch once.
    # (the default validation set holds 100 digits)
    assert sum(1 for _ in batches) == (1437 - 50 - 100 - 200) // 32 + 200 // 32


def test_no_noise_and_transition_matrix():
    clean = load_noisy("digits", noise="none", meta_size=50)
    np.testing.assert_array_equal(clean.train_noisy_labels, clean.train_clean_labels)
    matrix = np.full((10, 10), 0.02) + np.eye(10) * 0.8
    data = load_noisy("digits", noise="transition_matrix", transition_matrix=matrix, meta_size=50)
    assert 0.1 < data.noise_rate < 0.3


def test_fashion_mnist_from_a_user_folder(tmp_path):
    written = dummy_data.write_fashion_mnist(tmp_path / "fashion")
    data = load_noisy(
        "fashion_mnist", noise="symmetric", rate=0.6, meta_size=500, validation_size=0, seed=0,
        data_dir=tmp_path / "fashion",
    )
    assert data.class_names[0] == "T-shirt/top" and data.image_shape == (28, 28, 1)
    np.testing.assert_array_equal(
        data.train_clean_labels, written["train_labels"][data.split.train_indices]
    )
    np.testing.assert_array_equal(data.test_labels, written["test_labels"])
    np.testing.assert_allclose(data.test_images[..., 0], written["test_images"] / 255.0)
    # After 50 meta images per class, the pool holds 100 per class: floor(100 * 0.6 / 9) = 6
    # of them move to each other class.
    assert dummy_data.TRAIN_PER_CLASS - 50 == 100
    assert data.noise_report.confusion[0, 1] == 6


def test_fashion_mnist_files_uncompressed(tmp_path):
    folder = tmp_path / "raw"
    dummy_data.write_fashion_mnist(folder)
    import gzip

    for path in list(folder.iterdir()):
        path.with_suffix("").write_bytes(gzip.decompress(path.read_bytes()))
        path.unlink()
    source = sources.load_fashion_mnist(folder)
    assert source.train_images.shape == (10 * dummy_data.TRAIN_PER_CLASS, 28, 28, 1)


def test_missing_fashion_mnist_folder_says_how_to_get_the_files(tmp_path):
    with pytest.raises(DatasetFilesNotFoundError) as error:
        load_noisy("fashion_mnist", noise="symmetric", rate=0.4, data_dir=tmp_path / "nowhere")
    message = str(error.value)
    assert str(tmp_path / "nowhere") in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "train-images-idx3-ubyte.gz" in message and "data_dir" in message


def test_keras_downloads_fashion_mnist_only_when_opted_in(tmp_path, monkeypatch):
    import keras

    rng = np.random.default_rng(0)
    train = (rng.integers(0, 256, (30, 28, 28), dtype=np.uint8), np.arange(30) % 10)
    test = (rng.integers(0, 256, (10, 28, 28), dtype=np.uint8), np.arange(10))
    calls = []

    def fake_load_data():  # stands for the download: the tests stay offline
        calls.append(1)
        return train, test

    monkeypatch.setattr(keras.datasets.fashion_mnist, "load_data", fake_load_data)
    monkeypatch.setattr(sources, "DEFAULT_FASHION_MNIST_DIR", str(tmp_path / "absent"))
    monkeypatch.delenv(sources.DOWNLOAD_VARIABLE, raising=False)
    with pytest.raises(DatasetFilesNotFoundError, match="MLN_TF_DOWNLOAD_FASHION_MNIST=1"):
        sources.load_fashion_mnist()
    assert not calls

    monkeypatch.setenv(sources.DOWNLOAD_VARIABLE, "1")
    source = sources.load_fashion_mnist()
    assert calls == [1]
    np.testing.assert_array_equal(source.train_images[..., 0], train[0])
    np.testing.assert_array_equal(source.test_labels, test[1])
    assert source.train_images.shape == (30, 28, 28, 1)
    # A folder the user names is never replaced by a download.
    with pytest.raises(DatasetFilesNotFoundError):
        sources.load_fashion_mnist(tmp_path / "nowhere")
    assert calls == [1]


def test_incomplete_fashion_mnist_folder_names_the_missing_file(tmp_path):
    dummy_data.write_fashion_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetFilesNotFoundError, match="without t10k-labels-idx1-ubyte.gz"):
        load_noisy("fashion_mnist", noise="symmetric", rate=0.4, data_dir=tmp_path)


def test_corrupt_idx_file(tmp_path):
    dummy_data.write_fashion_mnist(tmp_path)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    import gzip

    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-5]))
    with pytest.raises(ValueError, match="truncated or corrupt"):
        sources.load_fashion_mnist(tmp_path)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"dataset": "mnist", "noise": "symmetric", "rate": 0.4}, ValueError,
         "Expected one of 'fashion_mnist', 'digits'"),
        ({"dataset": "digits", "noise": "salt", "rate": 0.4}, ValueError,
         "Invalid value for argument `noise`"),
        ({"dataset": "digits", "noise": "symmetric", "rate": 1.0}, ValueError,
         r"rate=1.0. Expected a float in \[0, 1\)"),
        ({"dataset": "digits", "noise": "symmetric", "rate": 0.4, "meta_size": 5}, ValueError,
         "Expected at least the number of classes, 10"),
        ({"dataset": "digits", "noise": "symmetric", "rate": 0.4, "meta_size": 5000},
         ValueError, "Expected at most the size of the clean pool, 1437"),
        ({"dataset": "digits", "noise": "symmetric", "rate": 0.4, "meta_size": 1000,
          "validation_size": 500}, ValueError,
         r"Received: meta_size=1000, validation_size=500. Expected meta_size \+ "
         r"validation_size <= 1437"),
        ({"dataset": "digits", "noise": "symmetric", "rate": 0.4, "validation_size": 5},
         ValueError, r"validation_size=5. Expected 0 \(no validation set\) or at least"),
        ({"dataset": "digits", "noise": "symmetric", "rate": 0.4, "data_dir": "/tmp"},
         ValueError, "it ships with scikit-learn"),
    ],
)
def test_load_noisy_errors(kwargs, error, message):
    dataset = kwargs.pop("dataset")
    with pytest.raises(error, match=message):
        load_noisy(dataset, **kwargs)


def test_bad_rate_fails_before_any_work(tmp_path):
    # The missing folder would raise too: the rate is checked first.
    with pytest.raises(ValueError, match="Expected a float"):
        load_noisy("fashion_mnist", noise="feature_dependent", rate=1.5, data_dir=tmp_path)
