"""Clean labelled image arrays, read offline: Fashion-MNIST files and scikit-learn's digits.

A source is a clean dataset held in memory as uint8 images of shape `(N, H, W, channels)`
and int64 labels, with a fixed train/test split. Noise and the meta split are applied on
top of it (`mln_tf.data.load_noisy`, and the `noisy_fashion_mnist` / `noisy_digits` TFDS
builders).
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import pathlib

import numpy as np

# Where Debian's `dataset-fashion-mnist` package installs the four original files.
DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
FASHION_MNIST_CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
# Opt-in, outside Debian (macOS, Colab): with this variable set to 1, Keras downloads
# Fashion-MNIST once (`keras.datasets.fashion_mnist`, into ~/.keras/datasets) when the
# default folder lacks it. Nothing is downloaded without it.
DOWNLOAD_VARIABLE = "MLN_TF_DOWNLOAD_FASHION_MNIST"
FASHION_MNIST_INSTRUCTIONS = (
    "Install them with `sudo apt-get install dataset-fashion-mnist` (Debian and Ubuntu put "
    f"them in {DEFAULT_FASHION_MNIST_DIR}), or copy the four original Fashion-MNIST files "
    f"({', '.join(FASHION_MNIST_FILES.values())}; gzipped or not) from any copy of the "
    "dataset into a folder and pass that folder as `data_dir` (or, for the TFDS builder, "
    "as `tfds.download.DownloadConfig(manual_dir=...)`). Where there is network, set the "
    f"environment variable {DOWNLOAD_VARIABLE}=1 to let Keras download them instead."
)
# The IDX format's magic numbers: unsigned bytes, with 1 (labels) or 3 (images) dimensions.
IDX_UBYTE_LABELS = 0x00000801
IDX_UBYTE_IMAGES = 0x00000803
IDX_HEADER_BYTES = 4
# scikit-learn's digits are 8x8 images with pixel values 0..16.
DIGITS_MAX_VALUE = 16
UINT8_MAX = 255
# Every DIGITS_TEST_EVERY-th digit (by index) is a test image: a fixed, nearly stratified
# split of the 1797 digits into 1437 training and 360 test images.
DIGITS_TEST_EVERY = 5

DATASETS = ("fashion_mnist", "digits")
# The default size M of the clean meta set. 1,000 of the 1,437 training digits would leave
# 437 noisy images, too few to learn from (about 8 % test accuracy); 100 (10 per class)
# leave 1,337.
DEFAULT_META_SIZE = 1000
DEFAULT_META_SIZES = {"fashion_mnist": DEFAULT_META_SIZE, "digits": 100, "clothing1m": 5000}
# The default size V of the clean validation set, which selects models and is disjoint from
# the meta set. The digits keep 100 (10 per class), so that 1,237 noisy images remain.
DEFAULT_VALIDATION_SIZE = 500
DEFAULT_VALIDATION_SIZES = {"fashion_mnist": DEFAULT_VALIDATION_SIZE, "digits": 100}


class DatasetFilesNotFoundError(FileNotFoundError):
    """Raised when a dataset's files are missing; the message says how to get them."""


@dataclasses.dataclass(frozen=True)
class ArraySource:
    """A clean labelled dataset in memory, with a fixed train/test split.

    Attributes:
        name: str, the dataset name.
        train_images: uint8 array of shape `(N, H, W, channels)`.
        train_labels: int64 array of shape `(N,)`.
        test_images: uint8 array of shape `(N_test, H, W, channels)`.
        test_labels: int64 array of shape `(N_test,)`.
        class_names: tuple of K str.
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple

    @property
    def num_classes(self) -> int:
        """The number of classes K."""
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple:
        """The shape of one image, `(H, W, channels)`."""
        return tuple(self.train_images.shape[1:])


def load_source(name: str, *, data_dir: str | os.PathLike | None = None) -> ArraySource:
    """Loads a clean dataset by name.

    Args:
        name: str, `"fashion_mnist"` or `"digits"`.
        data_dir: optional folder holding the dataset's raw files, for `"fashion_mnist"`.
            Defaults to Debian's folder, `/usr/share/datasets/fashion-mnist`. Must be
            `None` for `"digits"`, which ships with scikit-learn.

    Returns:
        An `ArraySource`.

    Example:

    >>> source = load_source("digits")
    >>> source.train_images.shape, source.num_classes
    ((1437, 8, 8, 1), 10)
    """
    if name == "fashion_mnist":
        return load_fashion_mnist(data_dir)
    if name == "digits":
        if data_dir is not None:
            raise ValueError(
                f"Invalid value for argument `data_dir`. Received: data_dir={data_dir!r}. "
                'Expected None for dataset="digits": it ships with scikit-learn.'
            )
        return load_digits()
    raise ValueError(
        f"Invalid value for argument `dataset`. Received: dataset={name!r}. Expected one "
        f"of {', '.join(repr(d) for d in DATASETS)}. Real noisy datasets have their own "
        "loaders: `load_cifar10_n`, `load_cifar100_n`, `load_controlled_noisy_web_labels`."
    )


def default_meta_size(name: str) -> int:
    """The default size M of a dataset's clean meta set.

    Args:
        name: str, a dataset name: one of `DATASETS`, or another dataset (such as
            `"cifar10_n"`), which gets `DEFAULT_META_SIZE`.

    Returns:
        An int: `DEFAULT_META_SIZES[name]`, else `DEFAULT_META_SIZE`.

    Example:

    >>> default_meta_size("digits"), default_meta_size("fashion_mnist")
    (100, 1000)
    """
    return DEFAULT_META_SIZES.get(name, DEFAULT_META_SIZE)


def default_validation_size(name: str) -> int:
    """The default size V of a dataset's clean validation set (for model selection).

    Args:
        name: str, a dataset name: one of `DATASETS`, or another dataset (such as
            `"cifar10_n"`), which gets `DEFAULT_VALIDATION_SIZE`.

    Returns:
        An int: `DEFAULT_VALIDATION_SIZES[name]`, else `DEFAULT_VALIDATION_SIZE`.

    Example:

    >>> default_validation_size("digits"), default_validation_size("cifar10_n")
    (100, 500)
    """
    return DEFAULT_VALIDATION_SIZES.get(name, DEFAULT_VALIDATION_SIZE)


def find_fashion_mnist_dir(*candidates: str | os.PathLike | None) -> pathlib.Path:
    """Returns the first folder among `candidates` that holds the four Fashion-MNIST files.

    `None` candidates are skipped. A folder holding only some of the files is an error
    (naming the missing ones), not a reason to look further.

    Raises:
        DatasetFilesNotFoundError: if no candidate holds the files; the message says how to
            get them.
    """
    searched = []
    for candidate in candidates:
        if candidate is None:
            continue
        folder = pathlib.Path(candidate).expanduser()
        searched.append(str(folder))
        present = {key: _find_file(folder, file) for key, file in FASHION_MNIST_FILES.items()}
        if all(present.values()):
            return folder
        if any(present.values()):
            missing = [FASHION_MNIST_FILES[key] for key, path in present.items() if not path]
            raise DatasetFilesNotFoundError(
                f"The Fashion-MNIST folder {folder} is incomplete. Received: a folder "
                f"without {', '.join(missing)}. Expected all four original files. "
                + FASHION_MNIST_INSTRUCTIONS
            )
    raise DatasetFilesNotFoundError(
        f"Fashion-MNIST files not found. Looked in: {', '.join(searched) or 'nowhere'}. "
        + FASHION_MNIST_INSTRUCTIONS
    )


def load_fashion_mnist(data_dir: str | os.PathLike | None = None) -> ArraySource:
    """Reads Fashion-MNIST from the four original IDX files.

    Args:
        data_dir: optional folder holding the files (gzipped or not). Defaults to Debian's
            `/usr/share/datasets/fashion-mnist`; where that folder lacks them and the
            environment variable `MLN_TF_DOWNLOAD_FASHION_MNIST` is `1`, Keras downloads
            them (`keras.datasets.fashion_mnist.load_data`).

    Returns:
        An `ArraySource` of 60,000 training and 10,000 test images of shape `(28, 28, 1)`.

    Raises:
        DatasetFilesNotFoundError: if the files are not found (and not downloaded).
    """
    try:
        folder = find_fashion_mnist_dir(
            data_dir if data_dir is not None else DEFAULT_FASHION_MNIST_DIR
        )
    except DatasetFilesNotFoundError:
        if data_dir is not None or os.environ.get(DOWNLOAD_VARIABLE) != "1":
            raise
        import keras

        (train_images, train_labels), (test_images, test_labels) = (
            keras.datasets.fashion_mnist.load_data()
        )
        arrays = {"train_images": train_images, "train_labels": train_labels,
                  "test_images": test_images, "test_labels": test_labels}  # fmt: skip
        return _fashion_mnist_source(arrays, "keras.datasets.fashion_mnist")
    arrays = {key: read_idx(_find_file(folder, file)) for key, file in FASHION_MNIST_FILES.items()}
    return _fashion_mnist_source(arrays, folder)


def _fashion_mnist_source(arrays, where):
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"Invalid Fashion-MNIST {split} files in {where}. Received: images of shape "
                f"{images.shape} and labels of shape {labels.shape}. Expected (N, 28, 28) "
                "and (N,)."
            )
        if labels.max() >= len(FASHION_MNIST_CLASS_NAMES):
            raise ValueError(
                f"Invalid Fashion-MNIST {split} labels in {where}. Received: a label "
                f"{int(labels.max())}. Expected labels in [0, 10)."
            )
    return ArraySource(
        name="fashion_mnist",
        train_images=arrays["train_images"][..., None],
        train_labels=arrays["train_labels"].astype(np.int64),
        test_images=arrays["test_images"][..., None],
        test_labels=arrays["test_labels"].astype(np.int64),
        class_names=FASHION_MNIST_CLASS_NAMES,
    )


def load_digits() -> ArraySource:
    """scikit-learn's bundled 8x8 digits (no download), as uint8 images scaled to 0..255.

    Every fifth image (index divisible by 5) is a test image: 1437 train, 360 test.

    Returns:
        An `ArraySource` with images of shape `(8, 8, 1)` and K = 10.
    """
    from sklearn.datasets import load_digits as sklearn_load_digits

    digits = sklearn_load_digits()
    images = np.round(digits.images * (UINT8_MAX / DIGITS_MAX_VALUE)).astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int64)
    is_test = np.arange(labels.size) % DIGITS_TEST_EVERY == 0
    return ArraySource(
        name="digits",
        train_images=images[~is_test],
        train_labels=labels[~is_test],
        test_images=images[is_test],
        test_labels=labels[is_test],
        class_names=tuple(str(d) for d in range(10)),
    )


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads an IDX file of unsigned bytes (the MNIST format), gzipped or not.

    Args:
        path: path of the file. Names ending in `.gz` are decompressed.

    Returns:
        uint8 array with the file's dimensions.
    """
    path = pathlib.Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    magic = int.from_bytes(data[:IDX_HEADER_BYTES], "big")
    if magic not in (IDX_UBYTE_LABELS, IDX_UBYTE_IMAGES):
        raise ValueError(
            f"Invalid IDX file {path}. Received: magic number {magic:#010x}. Expected "
            f"{IDX_UBYTE_LABELS:#010x} (labels) or {IDX_UBYTE_IMAGES:#010x} (images)."
        )
    num_dims = magic & 0xFF
    header = IDX_HEADER_BYTES * (1 + num_dims)
    shape = tuple(
        int.from_bytes(data[IDX_HEADER_BYTES * (1 + i) : IDX_HEADER_BYTES * (2 + i)], "big")
        for i in range(num_dims)
    )
    expected = header + int(np.prod(shape))
    if len(data) != expected:
        raise ValueError(
            f"Invalid IDX file {path}. Received: {len(data)} bytes. Expected {expected} "
            f"bytes for shape {shape}: the file is truncated or corrupt."
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy()


def _find_file(folder: pathlib.Path, gz_name: str) -> pathlib.Path | None:
    """Returns `folder/gz_name`, or its uncompressed twin, or None."""
    for name in (gz_name, gz_name.removesuffix(".gz")):
        if (folder / name).is_file():
            return folder / name
    return None
