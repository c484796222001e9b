"""A noisy training set, clean meta and validation sets and a test set, ready for MetaLabelNet.

`load_noisy` is the in-memory entry point: it reads a clean dataset, draws the meta and
validation sets, corrupts the remaining training labels with a noise model and wraps the
sets as `tf.data` datasets. The `noisy_fashion_mnist` and `noisy_digits` TFDS builders
call the same `make_noisy_split` without a validation set, so a builder config and
`load_noisy` with the same settings and `validation_size=0` give the same examples and
labels.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow as tf

from mln_tf.data.sources import (
    ArraySource,
    default_meta_size,
    default_validation_size,
    load_source,
)
from mln_tf.data.splits import MetaSplit, split_meta
from mln_tf.noise import NoiseReport, apply_noise, check_noise_arguments, class_probabilities

# Images are served as float32 in [0, 1].
PIXEL_SCALE = 255.0


@dataclasses.dataclass(frozen=True)
class NoisySplit:
    """The meta split of a clean training pool, and the noisy labels of its training set.

    Attributes:
        split: `MetaSplit`, the indices of the train, meta, validation and unlabeled sets
            in the pool.
        train_noisy_labels: int64 array, the noisy labels of `split.train_indices`.
        report: `NoiseReport` of the noise applied to the training set.
    """

    split: MetaSplit
    train_noisy_labels: np.ndarray
    report: NoiseReport


@dataclasses.dataclass(frozen=True, repr=False)
class NoisyData:
    """Noisy training, clean meta, clean validation and test sets, and what is known of the noise.

    The datasets yield single, unbatched examples `(image, label)`: float32 images of shape
    `image_shape` in [0, 1] and int32 labels. Feed them to `mln_tf.data.with_meta` (for
    training) or `mln_tf.data.batched` (for evaluation).

    Attributes:
        name: str, the dataset's name.
        train: `tf.data.Dataset`, the noisy training set D_n, with noisy labels.
        meta: `tf.data.Dataset`, the clean meta set D_m, with clean labels.
        test: `tf.data.Dataset`, the test set, with clean labels: for reporting only.
        unlabeled: `tf.data.Dataset` of images only, or `None` without an unlabeled split.
        class_names: tuple of K str.
        image_shape: tuple `(H, W, channels)`.
        split: `MetaSplit`, indices of the training subsets in the original training
            split (example i of `train` is example `split.train_indices[i]` there).
        train_noisy_labels: int64 array, the labels `train` yields, in its order.
        train_clean_labels: int64 array of the true labels of `train`, or `None` where they
            are unknown (Controlled Noisy Web Labels).
        train_label_is_correct: bool array, whether each label of `train` is correct.
        meta_labels: int64 array, the labels `meta` yields, in its order.
        noise_report: `NoiseReport`, or `None` where the true labels are unknown.
        source: the in-memory `ArraySource`, or `None` for data streamed from TFDS.
        validation: `tf.data.Dataset`, the clean validation set D_v, with clean labels,
            disjoint from the others (`split.validation_indices`): for model selection.
            `None` without a validation set (`validation_size=0`).
        validation_labels: int64 array, the labels `validation` yields, in its order
            (empty without a validation set).
    """

    name: str
    train: tf.data.Dataset
    meta: tf.data.Dataset
    test: tf.data.Dataset
    unlabeled: tf.data.Dataset | None
    class_names: tuple
    image_shape: tuple
    split: MetaSplit
    train_noisy_labels: np.ndarray
    train_clean_labels: np.ndarray | None
    train_label_is_correct: np.ndarray
    meta_labels: np.ndarray
    noise_report: NoiseReport | None
    source: ArraySource | None = None
    validation: tf.data.Dataset | None = None
    validation_labels: np.ndarray = dataclasses.field(
        default_factory=lambda: np.zeros(0, np.int64)
    )

    @property
    def num_classes(self) -> int:
        """The number of classes K."""
        return len(self.class_names)

    @property
    def noise_rate(self) -> float:
        """The fraction of wrong labels in the noisy training set."""
        return float(1.0 - self.train_label_is_correct.mean())

    @property
    def train_images(self) -> np.ndarray:
        """float32 images of `train`, in its order (a new array on each access)."""
        return self._images(self.split.train_indices)

    @property
    def train_clean(self) -> tf.data.Dataset:
        """`train` with its true labels instead of the noisy ones: for reference runs only."""
        self._require_source("train_clean")
        images = self.source.train_images[self.split.train_indices]
        return array_dataset(images, self.train_clean_labels)

    @property
    def meta_images(self) -> np.ndarray:
        """float32 images of `meta`, in its order (a new array on each access)."""
        return self._images(self.split.meta_indices)

    @property
    def validation_images(self) -> np.ndarray:
        """float32 images of `validation`, in its order (a new array on each access)."""
        return self._images(self.split.validation_indices)

    @property
    def unlabeled_images(self) -> np.ndarray:
        """float32 images of `unlabeled`, in its order (a new array on each access)."""
        return self._images(self.split.unlabeled_indices)

    @property
    def test_images(self) -> np.ndarray:
        """float32 images of `test` (a new array on each access)."""
        self._require_source("test_images")
        return self.source.test_images.astype(np.float32) / PIXEL_SCALE

    @property
    def test_labels(self) -> np.ndarray:
        """int64 labels of `test`."""
        self._require_source("test_labels")
        return self.source.test_labels

    def __repr__(self) -> str:
        return f"<NoisyData {self.summary()!r}>"

    def summary(self) -> str:
        """Returns a short human-readable description of the splits and the noise."""
        lines = [
            f"{self.name}: {self.split.train_indices.size} noisy training, "
            f"{self.split.meta_indices.size} clean meta, "
            f"{self.split.validation_indices.size} clean validation, "
            f"{self.split.unlabeled_indices.size} unlabeled examples; "
            f"{self.num_classes} classes; images {self.image_shape}; "
            f"noise rate {self.noise_rate:.4f}"
        ]
        if self.noise_report is not None:
            lines.append(self.noise_report.summary())
        return "\n".join(lines)

    def _images(self, indices) -> np.ndarray:
        self._require_source("images")
        return self.source.train_images[indices].astype(np.float32) / PIXEL_SCALE

    def _require_source(self, what: str) -> None:
        if self.source is None:
            raise ValueError(
                f"`{what}` is only available for in-memory data (`load_noisy`). "
                f"Received: {self.name!r}, streamed from TFDS. Iterate the `tf.data` "
                "datasets instead."
            )


def make_noisy_split(
    source: ArraySource,
    *,
    noise: str,
    rate: float | None = None,
    meta_size: int,
    unlabeled_size: int = 0,
    validation_size: int = 0,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    transition_matrix=None,
) -> NoisySplit:
    """Draws the meta (validation, unlabeled) sets from a clean pool, then corrupts the rest.

    The meta and validation sets are drawn first, class-balanced, from the clean training
    split (`split_meta`); the noise model then acts on the remaining training examples
    only, so these sets stay clean
    and the reported rate is the rate of the noisy training set. For feature-dependent
    noise, the class probabilities come from `mln_tf.noise.class_probabilities` trained on
    the whole clean training split with the same seed (cached per dataset and seed).

    Args:
        source: `ArraySource`, the clean dataset.
        noise: str, a noise name of `mln_tf.noise.NOISE_TYPES`.
        rate: float in [0, 1), the noise rate (see `mln_tf.noise.apply_noise`).
        meta_size: int, the meta set size M.
        unlabeled_size: int, the unlabeled set size. Defaults to 0.
        validation_size: int, the clean validation set size V. Defaults to 0.
        seed: int, the seed of the split and of the noise. Defaults to 0.
        cache_dir: optional cache folder for the class probabilities.
        transition_matrix: `(K, K)` array, for `noise="transition_matrix"`.

    Returns:
        A `NoisySplit`.
    """
    noise, rate = check_noise_arguments(noise, rate, transition_matrix=transition_matrix)
    split = split_meta(
        source.train_labels,
        meta_size=meta_size,
        num_classes=source.num_classes,
        unlabeled_size=unlabeled_size,
        validation_size=validation_size,
        seed=seed,
    )
    probabilities = None
    if noise == "feature_dependent":
        probabilities = class_probabilities(
            source.train_images,
            source.train_labels,
            num_classes=source.num_classes,
            seed=seed,
            cache_key=source.name,
            cache_dir=cache_dir,
        )[split.train_indices]
    noisy_labels, report = apply_noise(
        source.train_labels[split.train_indices],
        noise,
        rate,
        num_classes=source.num_classes,
        seed=seed,
        probabilities=probabilities,
        transition_matrix=transition_matrix,
    )
    return NoisySplit(split=split, train_noisy_labels=noisy_labels, report=report)


def load_noisy(
    dataset: str,
    *,
    noise: str,
    rate: float | None = None,
    meta_size: int | None = None,
    validation_size: int | None = None,
    unlabeled_size: int = 0,
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    transition_matrix=None,
) -> NoisyData:
    """Loads a clean dataset offline with synthetic noise, a meta set and a validation set.

    Args:
        dataset: str, `"fashion_mnist"` (the original files: Debian's
            `dataset-fashion-mnist` package, or any folder given as `data_dir`) or
            `"digits"` (scikit-learn's bundled 8x8 digits; always available).
        noise: str, one of `mln_tf.noise.NOISE_TYPES`: `"none"`, `"symmetric"`,
            `"symmetric_uniform"`, `"pair"`, `"cifar10_pair"`/`"asymmetric"`,
            `"feature_dependent"` or `"transition_matrix"`.
        rate: float in [0, 1), the noise rate; `None` (or 0) for `"none"` and
            `"transition_matrix"`.
        meta_size: optional int, the size M of the clean, class-balanced meta set taken
            from the training split. Defaults to `None`: the dataset's default,
            `mln_tf.data.default_meta_size(dataset)` (1000 for Fashion-MNIST, 100 for
            the digits).
        validation_size: optional int, the size V of the clean, class-balanced
            validation set taken from the training split, disjoint from the meta set: it
            selects models (epochs, hyper-parameters), so that neither the meta set nor
            the test split does. 0 for none. Defaults to `None`: the dataset's default,
            `mln_tf.data.default_validation_size(dataset)` (500, 100 for the digits).
        unlabeled_size: int, the size of an unlabeled set also taken from the training
            split. Defaults to 0.
        seed: int, the seed of the split and the noise. Defaults to 0.
        data_dir: optional folder holding the dataset's raw files. Defaults to Debian's
            `/usr/share/datasets/fashion-mnist` for Fashion-MNIST.
        cache_dir: optional folder for cached class probabilities (feature-dependent
            noise). Defaults to `$MLN_TF_CACHE_DIR`, else `~/.cache/mln_tf`.
        transition_matrix: `(K, K)` row-stochastic array, for
            `noise="transition_matrix"`.

    Returns:
        A `NoisyData`.

    Example:

    >>> data = load_noisy("digits", noise="symmetric", rate=0.4, meta_size=100,
    ...                   validation_size=100, seed=0)
    >>> data.split.train_indices.size, data.split.meta_indices.size, data.validation_labels.size
    (1237, 100, 100)
    >>> round(data.noise_report.achieved_rate, 3)
    0.364
    """
    check_noise_arguments(noise, rate, transition_matrix=transition_matrix)
    source = load_source(dataset, data_dir=data_dir)
    if meta_size is None:
        meta_size = default_meta_size(source.name)
    if validation_size is None:
        validation_size = default_validation_size(source.name)
    noisy = make_noisy_split(
        source,
        noise=noise,
        rate=rate,
        meta_size=meta_size,
        unlabeled_size=unlabeled_size,
        validation_size=validation_size,
        seed=seed,
        cache_dir=cache_dir,
        transition_matrix=transition_matrix,
    )
    split = noisy.split
    train_clean = source.train_labels[split.train_indices]
    meta_labels = source.train_labels[split.meta_indices]
    validation_labels = source.train_labels[split.validation_indices]
    validation = None
    if split.validation_indices.size:
        validation = array_dataset(
            source.train_images[split.validation_indices], validation_labels
        )
    unlabeled = None
    if split.unlabeled_indices.size:
        unlabeled = tf.data.Dataset.from_tensor_slices(
            source.train_images[split.unlabeled_indices]
        ).map(_to_float, num_parallel_calls=tf.data.AUTOTUNE)
    return NoisyData(
        name=source.name,
        train=array_dataset(source.train_images[split.train_indices], noisy.train_noisy_labels),
        meta=array_dataset(source.train_images[split.meta_indices], meta_labels),
        test=array_dataset(source.test_images, source.test_labels),
        unlabeled=unlabeled,
        class_names=source.class_names,
        image_shape=source.image_shape,
        split=split,
        train_noisy_labels=noisy.train_noisy_labels,
        train_clean_labels=train_clean,
        train_label_is_correct=train_clean == noisy.train_noisy_labels,
        meta_labels=meta_labels,
        noise_report=noisy.report,
        source=source,
        validation=validation,
        validation_labels=validation_labels,
    )


def array_dataset(images: np.ndarray, labels: np.ndarray) -> tf.data.Dataset:
    """A `tf.data.Dataset` of `(float32 image in [0, 1], int32 label)` from uint8 arrays."""
    dataset = tf.data.Dataset.from_tensor_slices((images, labels.astype(np.int32)))
    return dataset.map(
        lambda image, label: (_to_float(image), label), num_parallel_calls=tf.data.AUTOTUNE
    )


def _to_float(image):
    return tf.cast(image, tf.float32) / PIXEL_SCALE

