"""Real noisy datasets from TFDS, with clean meta and validation sets from their train split.

- CIFAR-10N and CIFAR-100N carry the clean CIFAR label (`label`) beside human noisy labels.
  The meta and validation sets are drawn, class-balanced and disjoint, from the *training*
  split by its clean labels and removed from the noisy training set; the test split stays
  whole and unused.
- Controlled Noisy Web Labels (mini-ImageNet, red or blue noise, ten noise levels) marks
  each training example `is_clean`. The meta and validation sets are drawn from the
  examples marked clean of the chosen training split; the TFDS `validation` split is the
  test set.
- Clothing1M (the project's `clothing1m` builder) has no clean label for its web-labelled
  `noisy_train`. The meta set is drawn, class-balanced, from its separate `clean_train`
  split; `clean_val` is the validation split and `clean_test` the test set.

These builders need files that TFDS cannot download on its own: prepare them once with
`tfds build` and their manual files (see each builder's TFDS page). The loaders below never
download: they read the prepared data in `data_dir`, unless `download=True`.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from mln_tf.data.datasets.clothing1m.clothing1m import (
    CLASS_NAMES as CLOTHING1M_CLASS_NAMES,
)
from mln_tf.data.datasets.clothing1m.clothing1m import Clothing1m, Clothing1mFilesError
from mln_tf.data.noisy_data import PIXEL_SCALE, NoisyData
from mln_tf.data.sources import DEFAULT_VALIDATION_SIZE
from mln_tf.data.splits import MetaSplit, split_meta
from mln_tf.noise import noise_report

CIFAR10N_LABEL_KEYS = {
    "aggre": "aggre_label",
    "worse": "worse_label",
    "random1": "random_label1",
    "random2": "random_label2",
    "random3": "random_label3",
}
CIFAR100N_LABEL_KEY = "noise_label"
CNWL_COLORS = ("red", "blue")
CNWL_NOISE_LEVELS = (0, 5, 10, 15, 20, 30, 40, 50, 60, 80)
# Controlled Noisy Web Labels' images are 84x84; mocked or odd-sized ones are resized.
CNWL_IMAGE_SIZE = 84
# Batch size used to read label columns without decoding images.
LABEL_READ_BATCH = 4096


class DatasetNotPreparedError(FileNotFoundError):
    """Raised when a TFDS dataset is not prepared in `data_dir` and may not be downloaded."""


def load_cifar10_n(
    *,
    label: str = "aggre",
    meta_size: int = 1000,
    validation_size: int = DEFAULT_VALIDATION_SIZE,
    unlabeled_size: int = 0,
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
    manual_dir: str | os.PathLike | None = None,
    download: bool = False,
) -> NoisyData:
    """CIFAR-10N with one of its human label sets, and a clean meta set from train.

    Args:
        label: str, the noisy label set: `"aggre"`, `"worse"`, `"random1"`, `"random2"` or
            `"random3"` (or the TFDS key, e.g. `"aggre_label"`). Defaults to `"aggre"`.
        meta_size: int, the clean meta set size M, drawn class-balanced from the training
            split by the clean `label`. Defaults to 1000.
        validation_size: int, the clean validation set size V, drawn class-balanced from
            the training split and disjoint from the meta set, for model selection; 0
            for none. Defaults to 500.
        unlabeled_size: int, the size of an unlabeled set drawn from the training split.
            Defaults to 0.
        seed: int, the seed of the split. Defaults to 0.
        data_dir: optional TFDS data folder. Defaults to TFDS's default.
        manual_dir: optional folder with the CIFAR-10N label files, used when preparing.
        download: bool, whether TFDS may download and prepare the dataset if it is not
            prepared yet. Defaults to `False`.

    Returns:
        A `NoisyData` whose `test` is CIFAR-10's whole test split.

    Example:

    >>> data = load_cifar10_n(label="worse", meta_size=1000)
    >>> data.noise_report.achieved_rate  # about 0.40 for "worse"
    """
    key = _check_choice(
        label, {**CIFAR10N_LABEL_KEYS, **{v: v for v in CIFAR10N_LABEL_KEYS.values()}},
        name="label",
    )
    return _load_cifar_n(
        "cifar10_n", key, meta_size=meta_size, validation_size=validation_size,
        unlabeled_size=unlabeled_size, seed=seed, data_dir=data_dir, manual_dir=manual_dir,
        download=download,
    )


def load_cifar100_n(
    *,
    meta_size: int = 1000,
    validation_size: int = DEFAULT_VALIDATION_SIZE,
    unlabeled_size: int = 0,
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
    manual_dir: str | os.PathLike | None = None,
    download: bool = False,
) -> NoisyData:
    """CIFAR-100N (fine labels; human `noise_label`), with a clean meta set from train.

    Args:
        meta_size: int, the clean meta set size M (at least 100). Defaults to 1000.
        validation_size: int, the clean validation set size V, drawn class-balanced from
            the training split and disjoint from the meta set, for model selection; 0
            for none. Defaults to 500.
        unlabeled_size: int, the size of an unlabeled set. Defaults to 0.
        seed: int, the seed of the split. Defaults to 0.
        data_dir: optional TFDS data folder.
        manual_dir: optional folder with the CIFAR-100N label files, used when preparing.
        download: bool, whether TFDS may download and prepare. Defaults to `False`.

    Returns:
        A `NoisyData`.
    """
    return _load_cifar_n(
        "cifar100_n", CIFAR100N_LABEL_KEY, meta_size=meta_size,
        validation_size=validation_size, unlabeled_size=unlabeled_size, seed=seed,
        data_dir=data_dir, manual_dir=manual_dir, download=download,
    )


def load_controlled_noisy_web_labels(
    *,
    color: str = "red",
    noise_level: int = 40,
    meta_size: int = 1000,
    validation_size: int = DEFAULT_VALIDATION_SIZE,
    unlabeled_size: int = 0,
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
    manual_dir: str | os.PathLike | None = None,
    download: bool = False,
    image_size: int = CNWL_IMAGE_SIZE,
) -> NoisyData:
    """Controlled Noisy Web Labels (mini-ImageNet), with a clean meta set from train.

    Args:
        color: str, `"red"` (real web noise) or `"blue"` (synthetic). Defaults to `"red"`.
        noise_level: int, the percentage of wrong labels: one of 0, 5, 10, 15, 20, 30, 40,
            50, 60, 80. Defaults to 40.
        meta_size: int, the meta set size M, drawn class-balanced among the training
            examples marked `is_clean`. Defaults to 1000.
        validation_size: int, the clean validation set size V, drawn class-balanced from
            the examples marked `is_clean` and disjoint from the meta set, for model selection; 0
            for none. Defaults to 500.
        unlabeled_size: int, the size of an unlabeled set. Defaults to 0.
        seed: int, the seed of the split. Defaults to 0.
        data_dir: optional TFDS data folder.
        manual_dir: optional folder with the manual files, used when preparing.
        download: bool, whether TFDS may download and prepare. Defaults to `False`.
        image_size: int, images are resized to `(image_size, image_size)`. Defaults to 84.

    Returns:
        A `NoisyData` whose `test` is the clean `validation` split. The true labels of the
        noisy examples are unknown: `train_clean_labels` and `noise_report` are `None`, and
        `train_label_is_correct` comes from `is_clean`.
    """
    color = _check_choice(color, {c: c for c in CNWL_COLORS}, name="color")
    if noise_level not in CNWL_NOISE_LEVELS:
        raise ValueError(
            f"Invalid value for argument `noise_level`. Received: noise_level={noise_level!r}. "
            f"Expected one of {CNWL_NOISE_LEVELS} (percent)."
        )
    name = f"controlled_noisy_web_labels/mini_imagenet_{color}"
    train_split = f"train_{noise_level:02d}"
    load = _loader(name, data_dir=data_dir, manual_dir=manual_dir, download=download)
    columns, info = _read_columns(load, train_split, ("label", "is_clean"))
    labels, is_clean = columns["label"].astype(np.int64), columns["is_clean"].astype(bool)
    num_classes = info.features["label"].num_classes
    split = split_meta(
        labels, meta_size=meta_size, num_classes=num_classes, unlabeled_size=unlabeled_size,
        validation_size=validation_size, seed=seed, eligible=is_clean,
    )
    image_shape = (image_size, image_size, 3)

    def image_fn(image):
        image = tf.image.resize(tf.cast(image, tf.float32), (image_size, image_size))
        return image / PIXEL_SCALE

    train_stream, _ = load(train_split)
    test_stream, _ = load("validation")
    return NoisyData(
        name=f"{name}/{train_split}",
        train=_select(train_stream, split.train_indices, labels.size, "label", image_fn),
        meta=_select(train_stream, split.meta_indices, labels.size, "label", image_fn),
        validation=_select(train_stream, split.validation_indices, labels.size, "label",
                           image_fn) if validation_size else None,
        validation_labels=labels[split.validation_indices],
        test=_select(test_stream, None, None, "label", image_fn),
        unlabeled=_select(train_stream, split.unlabeled_indices, labels.size, None, image_fn)
        if unlabeled_size else None,
        class_names=tuple(info.features["label"].names),
        image_shape=image_shape,
        split=split,
        train_noisy_labels=labels[split.train_indices],
        train_clean_labels=None,
        train_label_is_correct=is_clean[split.train_indices],
        meta_labels=labels[split.meta_indices],
        noise_report=None,
    )


def _load_cifar_n(name, noisy_key, *, meta_size, validation_size, unlabeled_size, seed,
                  data_dir, manual_dir, download) -> NoisyData:
    load = _loader(name, data_dir=data_dir, manual_dir=manual_dir, download=download)
    columns, info = _read_columns(load, "train", ("label", noisy_key))
    clean = columns["label"].astype(np.int64)
    noisy = columns[noisy_key].astype(np.int64)
    num_classes = info.features["label"].num_classes
    split = split_meta(
        clean, meta_size=meta_size, num_classes=num_classes, unlabeled_size=unlabeled_size,
        validation_size=validation_size, seed=seed,
    )
    train_clean, train_noisy = clean[split.train_indices], noisy[split.train_indices]
    report = noise_report(
        train_clean, train_noisy, num_classes=num_classes, noise=f"{name}/{noisy_key}",
        rate=float(np.mean(train_clean != train_noisy)),
    )

    def image_fn(image):
        return tf.cast(image, tf.float32) / PIXEL_SCALE

    train_stream, _ = load("train")
    test_stream, _ = load("test")
    return NoisyData(
        name=f"{name}/{noisy_key}",
        train=_select(train_stream, split.train_indices, clean.size, noisy_key, image_fn),
        meta=_select(train_stream, split.meta_indices, clean.size, "label", image_fn),
        validation=_select(train_stream, split.validation_indices, clean.size, "label",
                           image_fn) if validation_size else None,
        validation_labels=clean[split.validation_indices],
        test=_select(test_stream, None, None, "label", image_fn),
        unlabeled=_select(train_stream, split.unlabeled_indices, clean.size, None, image_fn)
        if unlabeled_size else None,
        class_names=tuple(info.features["label"].names),
        image_shape=tuple(info.features["image"].shape),
        split=split,
        train_noisy_labels=train_noisy,
        train_clean_labels=train_clean,
        train_label_is_correct=train_clean == train_noisy,
        meta_labels=clean[split.meta_indices],
        noise_report=report,
    )


def _loader(name, *, data_dir, manual_dir, download):
    """Returns `load(split, decoders=None) -> (dataset, info)`, in the file order."""
    kwargs = {}
    if manual_dir is not None:
        kwargs["download_and_prepare_kwargs"] = {
            "download_config": tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir))
        }

    def load(split, decoders=None):
        try:
            return tfds.load(
                name, split=split, data_dir=data_dir, download=download,
                shuffle_files=False, decoders=decoders, with_info=True, **kwargs,
            )
        except AssertionError as error:
            # TFDS raises AssertionError when the data are not prepared and download=False.
            raise DatasetNotPreparedError(
                f"TFDS dataset {name!r} is not prepared in data_dir={data_dir!r}. Received: "
                f"download={download}. Expected a prepared dataset: build it once with "
                f"`tfds build {name.split('/')[0]} --manual_dir=<folder with its manual "
                "files>` (its TFDS catalog page lists them), or pass download=True to let "
                "TFDS download and prepare it."
            ) from error

    return load


def _read_columns(load, split, keys):
    """Reads scalar feature columns of a split as NumPy arrays, without decoding images."""
    dataset, info = load(split, decoders={"image": tfds.decode.SkipDecoding()})
    batches = dataset.map(lambda example: {key: example[key] for key in keys})
    batches = batches.batch(LABEL_READ_BATCH)
    columns = {key: [] for key in keys}
    for batch in batches.as_numpy_iterator():
        for key in keys:
            columns[key].append(batch[key])
    return {key: np.concatenate(values) for key, values in columns.items()}, info


def _select(dataset, indices, size, label_key, image_fn):
    """Keeps the examples at `indices` (all if None), as `(image, label)` or images."""
    dataset = dataset.enumerate()
    if indices is not None:
        mask = np.zeros(size, bool)
        mask[indices] = True
        mask = tf.constant(mask)
        dataset = dataset.filter(lambda position, example: tf.gather(mask, position))
    if label_key is None:
        return dataset.map(lambda position, example: image_fn(example["image"]))
    return dataset.map(
        lambda position, example: (
            image_fn(example["image"]),
            tf.cast(example[label_key], tf.int32),
        ),
        num_parallel_calls=tf.data.AUTOTUNE,
    )


def _check_choice(value, choices: dict, *, name: str):
    if not isinstance(value, str) or value not in choices:
        raise ValueError(
            f"Invalid value for argument `{name}`. Received: {name}={value!r}. Expected one "
            f"of {', '.join(repr(c) for c in choices)}."
        )
    return choices[value]


# The paper's Clothing1M meta set: 5,000 images of the clean training split.
CLOTHING1M_META_SIZE = 5000
# The paper's ResNet-50 input size.
CLOTHING1M_IMAGE_SIZE = 224


def load_clothing1m(
    *,
    meta_size: int = CLOTHING1M_META_SIZE,
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
    manual_dir: str | os.PathLike | None = None,
    image_size: int = CLOTHING1M_IMAGE_SIZE,
    max_noisy_examples: int | None = None,
) -> NoisyData:
    """Clothing1M: its web-labelled training set, and a clean meta set from `clean_train`.

    Clothing1M has no clean label for its million web-labelled images (`noisy_train`), and
    separate splits whose labels people checked. As in the paper, the noisy training set
    D_n is `noisy_train`, the meta set D_m is `meta_size` images drawn class-balanced from
    `clean_train`, and the test set is `clean_test`. An image of the meta set that is also
    in `noisy_train` (same key) leaves the noisy training set, so D_m and D_n stay disjoint.

    The data come from the `clothing1m` TFDS builder. If it is not prepared in `data_dir`
    yet, it is prepared once from the official files in `manual_dir` (default:
    `<data_dir>/downloads/manual`); nothing is downloaded. Reading the labels is one pass
    over the prepared `noisy_train` and `clean_train` files.

    Args:
        meta_size: int, the meta set size M: at least 14 (one image per class) and less
            than the size of `clean_train` (47,570 images). Defaults to 5000.
        seed: int, the seed of the meta set's draw. Defaults to 0.
        data_dir: optional TFDS data folder. Defaults to TFDS's default.
        manual_dir: optional folder with the official Clothing1M files (the layout of
            `Clothing1m.MANUAL_DOWNLOAD_INSTRUCTIONS`), used only to prepare the dataset.
            Defaults to `<data_dir>/downloads/manual`.
        image_size: int, every image is decoded (accurate inverse DCT, as PIL) and resized
            (bilinear) to `(image_size, image_size)`. Defaults to 224.
        max_noisy_examples: optional int, to use the first examples of `noisy_train` only
            (in the prepared files' order), for short runs. Defaults to `None`, all.

    Returns:
        A `NoisyData` of float32 images in [0, 1] of shape `(image_size, image_size, 3)`
        and 14 classes. `split.train_indices` index `noisy_train` and `split.meta_indices`
        index `clean_train`; there is no unlabeled set. The true labels of the noisy
        images are unknown: `train_clean_labels` and `noise_report` are `None`, and
        `train_label_is_correct` is a float array of NaN, so `noise_rate` is NaN.

    Raises:
        Clothing1mFilesError: if the dataset must be prepared and the manual folder, or a
            file in it, is missing.
        ValueError: if `meta_size`, `image_size` or `max_noisy_examples` is invalid.

    Example:

    >>> data = load_clothing1m(manual_dir="/data/clothing1m", data_dir="/data/tfds")
    >>> data.num_classes, data.meta_labels.size
    (14, 5000)
    """
    _check_positive_integer(image_size, "image_size")
    if max_noisy_examples is not None:
        _check_positive_integer(max_noisy_examples, "max_noisy_examples")
    _prepare_clothing1m(data_dir=data_dir, manual_dir=manual_dir)
    load = _loader(Clothing1m.name, data_dir=data_dir, manual_dir=None, download=False)

    clean, info = _read_columns(load, "clean_train", ("label", "key"))
    clean_labels = clean["label"].astype(np.int64)
    if isinstance(meta_size, (int, np.integer)) and meta_size >= clean_labels.size:
        raise ValueError(
            f"Invalid value for argument `meta_size`. Received: meta_size={meta_size}. "
            f"Expected less than {clean_labels.size}, the number of images in Clothing1M's "
            "`clean_train` split, from which the meta set is drawn."
        )
    meta_indices = split_meta(
        clean_labels, meta_size=meta_size, num_classes=len(CLOTHING1M_CLASS_NAMES), seed=seed
    ).meta_indices

    noisy_split = "noisy_train"
    if max_noisy_examples is not None:
        noisy_split = f"noisy_train[:{max_noisy_examples}]"
    noisy, _ = _read_columns(load, noisy_split, ("label", "key"))
    noisy_labels = noisy["label"].astype(np.int64)
    meta_keys = set(clean["key"][meta_indices].tolist())
    not_in_meta = np.fromiter(
        (key not in meta_keys for key in noisy["key"].tolist()), bool, count=noisy_labels.size
    )
    train_indices = np.flatnonzero(not_in_meta).astype(np.int64)

    image_fn = _decode_and_resize(image_size)
    encoded = {"image": tfds.decode.SkipDecoding()}
    train_stream, _ = load(noisy_split, decoders=encoded)
    meta_stream, _ = load("clean_train", decoders=encoded)
    test_stream, _ = load("clean_test", decoders=encoded)
    test_size = info.splits["clean_test"].num_examples
    validation_stream, _ = load("clean_val", decoders=encoded)
    validation_labels = _read_columns(load, "clean_val", ("label",))[0]["label"].astype(np.int64)
    return NoisyData(
        name=Clothing1m.name,
        # Known sizes, so that counting the examples never decodes the images.
        train=_select(train_stream, train_indices, noisy_labels.size, "label", image_fn).apply(
            tf.data.experimental.assert_cardinality(train_indices.size)
        ),
        meta=_select(meta_stream, meta_indices, clean_labels.size, "label", image_fn).apply(
            tf.data.experimental.assert_cardinality(meta_indices.size)
        ),
        test=_select(test_stream, None, None, "label", image_fn).apply(
            tf.data.experimental.assert_cardinality(test_size)
        ),
        unlabeled=None,
        # The clean validation split of Clothing1M, for model selection.
        validation=_select(validation_stream, None, None, "label", image_fn).apply(
            tf.data.experimental.assert_cardinality(validation_labels.size)
        ),
        validation_labels=validation_labels,
        class_names=tuple(info.features["label"].names),
        image_shape=(image_size, image_size, 3),
        split=MetaSplit(
            train_indices=train_indices,
            meta_indices=meta_indices,
            unlabeled_indices=np.zeros(0, np.int64),
        ),
        train_noisy_labels=noisy_labels[train_indices],
        train_clean_labels=None,
        train_label_is_correct=np.full(train_indices.size, np.nan),
        meta_labels=clean_labels[meta_indices],
        noise_report=None,
    )


def _prepare_clothing1m(*, data_dir, manual_dir) -> None:
    """Prepares the `clothing1m` builder from its manual folder, unless it is prepared."""
    builder = tfds.builder(Clothing1m.name, data_dir=data_dir)
    if builder.is_prepared():
        return
    if manual_dir is None:
        manual_dir = builder.data_dir_root / "downloads" / "manual"
    if not os.path.isdir(manual_dir) or not os.listdir(manual_dir):
        raise Clothing1mFilesError(
            f"Clothing1M is not prepared in {builder.data_dir_root} and its manual folder "
            f"{os.fspath(manual_dir)} does not exist or is empty. Pass manual_dir=<folder "
            "with the official files> to prepare it once."
            + Clothing1m.MANUAL_DOWNLOAD_INSTRUCTIONS
        )
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir))
    )


def _decode_and_resize(image_size):
    """Returns `image_fn(JPEG bytes) -> float32 image in [0, 1], image_size x image_size`."""

    def image_fn(encoded):
        # The accurate inverse DCT gives the pixels PIL gives, which the authors' PyTorch
        # code reads; TensorFlow's default, faster one differs by a few levels.
        image = tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE")
        image = tf.image.resize(tf.cast(image, tf.float32), (image_size, image_size))
        return image / PIXEL_SCALE

    return image_fn


def _check_positive_integer(value, name: str) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(
            f"Invalid value for argument `{name}`. Received: {name}={value!r}. Expected a "
            "positive integer."
        )
