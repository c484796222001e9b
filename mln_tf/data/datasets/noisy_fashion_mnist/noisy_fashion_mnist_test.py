"""noisy_fashion_mnist on dummy files written by the test, and on Debian's real files."""

import pathlib

import numpy as np
import pytest
import tensorflow_datasets as tfds

from mln_tf.data import DatasetFilesNotFoundError, load_noisy, sources
from mln_tf.data.datasets import NOISE_CONFIGS
from mln_tf.data.datasets.noisy_fashion_mnist import dummy_data

NUM_TRAIN = 10 * dummy_data.TRAIN_PER_CLASS
NUM_TEST = 10 * dummy_data.TEST_PER_CLASS
META_SIZE = 1000


@pytest.fixture(scope="module")
def manual_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fashion_manual")
    return folder, dummy_data.write_fashion_mnist(folder)


@pytest.fixture(autouse=True)
def cache_dir(tmp_path_factory, monkeypatch):
    folder = tmp_path_factory.getbasetemp() / "noise_cache"
    monkeypatch.setenv("MLN_TF_CACHE_DIR", str(folder))
    return folder


def read_split(builder, split):
    columns = {"image": [], "label": [], "clean_label": [], "index": []}
    for batch in builder.as_dataset(split=split, batch_size=2048).as_numpy_iterator():
        for key, values in columns.items():
            values.append(batch[key])
    return {key: np.concatenate(values) for key, values in columns.items()}


def prepare(config, data_dir, manual):
    builder = tfds.builder(f"noisy_fashion_mnist/{config}", data_dir=data_dir)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual))
    )
    return builder


@pytest.mark.parametrize("config", [name for name, _, _ in NOISE_CONFIGS])
def test_config_on_dummy_files(config, manual_dir, tmp_path):
    folder, written = manual_dir
    builder = prepare(config, tmp_path, folder)
    splits = {split: read_split(builder, split) for split in ("train", "meta", "test")}
    assert {s: v["label"].size for s, v in splits.items()} == {
        "train": NUM_TRAIN - META_SIZE, "meta": META_SIZE, "test": NUM_TEST,
    }
    train, meta, test = splits["train"], splits["meta"], splits["test"]
    # Meta and train partition the training file, by index.
    assert not set(train["index"]) & set(meta["index"])
    assert sorted(np.concatenate([train["index"], meta["index"]])) == list(range(NUM_TRAIN))
    # Meta is clean and balanced; every example keeps its image and true label.
    np.testing.assert_array_equal(meta["label"], meta["clean_label"])
    assert np.bincount(meta["label"]).tolist() == [100] * 10
    np.testing.assert_array_equal(test["label"], written["test_labels"][test["index"]])
    for split, images, labels in (
        (train, written["train_images"], written["train_labels"]),
        (meta, written["train_images"], written["train_labels"]),
        (test, written["test_images"], written["test_labels"]),
    ):
        np.testing.assert_array_equal(split["image"][..., 0], images[split["index"]])
        np.testing.assert_array_equal(split["clean_label"], labels[split["index"]])
    # The builder and load_noisy (without a validation set, as the builder) are one
    # implementation: same noisy labels by index.
    _, noise, rate = next(entry for entry in NOISE_CONFIGS if entry[0] == config)
    data = load_noisy(
        "fashion_mnist", noise=noise, rate=rate, meta_size=META_SIZE, validation_size=0,
        seed=0, data_dir=folder,
    )
    expected = dict(zip(data.split.train_indices.tolist(), data.train_noisy_labels, strict=True))
    assert [expected[i] for i in train["index"]] == train["label"].tolist()
    changed = np.sum(train["label"] != train["clean_label"])
    assert changed == data.noise_report.changed_indices.size
    if noise in ("symmetric", "feature_dependent") and rate > 0:
        assert changed > 0


def test_keys_are_stable_across_builds(manual_dir, tmp_path):
    folder, _ = manual_dir
    first = read_split(prepare("pair_45", tmp_path / "a", folder), "train")
    second = read_split(prepare("pair_45", tmp_path / "b", folder), "train")
    np.testing.assert_array_equal(first["index"], second["index"])
    np.testing.assert_array_equal(first["label"], second["label"])


def test_info(manual_dir, tmp_path):
    builder = tfds.builder("noisy_fashion_mnist/symmetric_40", data_dir=tmp_path)
    assert builder.builder_config.noise == "symmetric" and builder.builder_config.rate == 0.4
    assert builder.info.features["label"].names[0] == "T-shirt/top"
    assert "Xiao" in builder.info.citation and "meta" in builder.info.description
    assert "apt-get install dataset-fashion-mnist" in builder.MANUAL_DOWNLOAD_INSTRUCTIONS
    assert {c.name for c in builder.BUILDER_CONFIGS} >= {
        "symmetric_20", "symmetric_40", "symmetric_60", "symmetric_80", "pair_45",
        "feature_dependent_40",
    }


def test_missing_files_say_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "DEFAULT_FASHION_MNIST_DIR", str(tmp_path / "absent"))
    with pytest.raises(DatasetFilesNotFoundError) as error:
        tfds.load("noisy_fashion_mnist/symmetric_40", data_dir=tmp_path / "data")
    assert "apt-get install dataset-fashion-mnist" in str(error.value)
    assert str(tmp_path / "absent") in str(error.value)


DEBIAN_FILES_PRESENT = all(
    (pathlib.Path(sources.DEFAULT_FASHION_MNIST_DIR) / name).is_file()
    for name in sources.FASHION_MNIST_FILES.values()
)


@pytest.mark.slow
@pytest.mark.skipif(
    not DEBIAN_FILES_PRESENT,
    reason=f"Fashion-MNIST files absent from {sources.DEFAULT_FASHION_MNIST_DIR}: run "
    "scripts/setup.sh (it installs dataset-fashion-mnist)",
)
def test_loads_debian_files_by_name(tmp_path):
    splits = tfds.load("noisy_fashion_mnist/symmetric_40", data_dir=tmp_path)
    counts = {name: int(split.cardinality()) for name, split in splits.items()}
    assert counts == {"train": 59_000, "meta": 1_000, "test": 10_000}
    labels = []
    for batch in splits["train"].batch(10_000).as_numpy_iterator():
        labels.append(batch["label"] != batch["clean_label"])
    # Authors' symmetric noise: 9 * floor(n_c * 0.4 / 9) of each class's ~5,900 images.
    assert np.concatenate(labels).mean() == pytest.approx(0.3997, abs=0.0005)
    meta = next(splits["meta"].batch(1_000).as_numpy_iterator())
    assert np.bincount(meta["label"]).tolist() == [100] * 10
