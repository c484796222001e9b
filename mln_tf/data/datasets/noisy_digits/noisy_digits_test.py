"""noisy_digits: built from scikit-learn's bundled digits, with no files at all."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from mln_tf.data import load_noisy, sources
from mln_tf.data.datasets import NOISE_CONFIGS


@pytest.fixture(autouse=True)
def cache_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MLN_TF_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "noise_cache"))


def read(dataset):
    return next(dataset.batch(10_000).as_numpy_iterator())


@pytest.mark.parametrize("config", ["symmetric_40", "pair_45", "feature_dependent_40"])
def test_builds_and_matches_load_noisy(config, tmp_path):
    splits = tfds.load(f"noisy_digits/{config}", data_dir=tmp_path)
    train, meta, test = (read(splits[name]) for name in ("train", "meta", "test"))
    assert (train["label"].size, meta["label"].size, test["label"].size) == (1337, 100, 360)
    assert not set(train["index"]) & set(meta["index"])
    assert np.bincount(meta["label"]).tolist() == [10] * 10
    np.testing.assert_array_equal(meta["label"], meta["clean_label"])
    source = sources.load_digits()
    np.testing.assert_array_equal(test["image"], source.test_images[test["index"]])
    np.testing.assert_array_equal(train["clean_label"], source.train_labels[train["index"]])
    _, noise, rate = next(entry for entry in NOISE_CONFIGS if entry[0] == config)
    # The builder has no validation split: it matches load_noisy with validation_size=0.
    data = load_noisy("digits", noise=noise, rate=rate, meta_size=100, validation_size=0, seed=0)
    expected = dict(zip(data.split.train_indices.tolist(), data.train_noisy_labels, strict=True))
    assert [expected[i] for i in train["index"]] == train["label"].tolist()
    assert np.mean(train["label"] != train["clean_label"]) == pytest.approx(data.noise_rate)
    assert data.noise_rate > 0.3


def test_same_configs_as_fashion_mnist():
    digits = {c.name for c in tfds.builder_cls("noisy_digits").BUILDER_CONFIGS}
    fashion = {c.name for c in tfds.builder_cls("noisy_fashion_mnist").BUILDER_CONFIGS}
    assert digits == fashion == {name for name, _, _ in NOISE_CONFIGS}
