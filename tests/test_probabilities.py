"""The feature-dependent helper: a small network trained once per dataset and seed, cached."""

import numpy as np
import pytest

from mln_tf import noise
from mln_tf.data import load_noisy, sources
from mln_tf.noise import probabilities as probabilities_module


@pytest.fixture
def digits():
    return sources.load_digits()


def test_trains_caches_and_reuses(digits, tmp_path, monkeypatch):
    probabilities = noise.class_probabilities(
        digits.train_images, digits.train_labels, seed=0, cache_key="digits", cache_dir=tmp_path
    )
    assert probabilities.shape == (1437, 10) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    # A real network on the clean labels: far better than chance on the digits.
    accuracy = np.mean(probabilities.argmax(axis=1) == digits.train_labels)
    assert accuracy > 0.85
    (cache_file,) = tmp_path.glob("digits-seed0-*.npy")

    def no_training(*args, **kwargs):
        raise AssertionError("the cached probabilities should have been used")

    monkeypatch.setattr(probabilities_module, "_train_and_predict", no_training)
    again = noise.class_probabilities(
        digits.train_images, digits.train_labels, seed=0, cache_key="digits", cache_dir=tmp_path
    )
    np.testing.assert_array_equal(again, probabilities)
    # Other data never reuse the file: the fingerprint covers the labels.
    changed = digits.train_labels.copy()
    changed[0] = (changed[0] + 1) % 10
    with pytest.raises(AssertionError, match="cached probabilities"):
        noise.class_probabilities(
            digits.train_images, changed, seed=0, cache_key="digits", cache_dir=tmp_path
        )
    assert cache_file.exists()


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(noise.CACHE_DIR_ENV, str(tmp_path / "env_cache"))
    assert noise.default_cache_dir() == tmp_path / "env_cache"
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (40, 8, 8), dtype=np.uint8)
    labels = np.arange(40) % 2
    noise.class_probabilities(images, labels, seed=3, cache_key="tiny", epochs=1)
    assert len(list((tmp_path / "env_cache").glob("tiny-seed3-*.npy"))) == 1
    monkeypatch.delenv(noise.CACHE_DIR_ENV)
    assert str(noise.default_cache_dir()).endswith(".cache/mln_tf")


def test_rejects_bad_input(tmp_path):
    images = np.zeros((10, 8, 8, 1), np.uint8)
    with pytest.raises(ValueError, match=r"Expected \(N, H, W\).*N = 9"):
        noise.class_probabilities(images, np.arange(9) % 2, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="names a file"):
        noise.class_probabilities(
            images, np.arange(10) % 2, cache_key="../escape", cache_dir=tmp_path
        )


def test_load_noisy_feature_dependent_is_exact_and_cached(tmp_path):
    data = load_noisy(
        "digits", noise="feature_dependent", rate=0.4, meta_size=100, validation_size=0,
        seed=0, cache_dir=tmp_path,
    )
    assert data.noise_report.changed_indices.size == int(1337 * 0.4)
    assert np.all(data.train_noisy_labels[data.noise_report.changed_indices]
                  != data.train_clean_labels[data.noise_report.changed_indices])
    assert len(list(tmp_path.glob("digits-seed0-*.npy"))) == 1
    again = load_noisy(
        "digits", noise="feature_dependent", rate=0.4, meta_size=100, validation_size=0,
        seed=0, cache_dir=tmp_path,
    )
    np.testing.assert_array_equal(again.train_noisy_labels, data.train_noisy_labels)


def test_same_seed_trains_the_same_network(digits, tmp_path):
    first = noise.class_probabilities(
        digits.train_images, digits.train_labels, seed=5, cache_dir=tmp_path / "a"
    )
    second = noise.class_probabilities(
        digits.train_images, digits.train_labels, seed=5, cache_dir=tmp_path / "b"
    )
    other = noise.class_probabilities(
        digits.train_images, digits.train_labels, seed=6, cache_dir=tmp_path / "a"
    )
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, other)
