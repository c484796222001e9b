"""Per-example preprocessing and evaluation batching for `tf.data` pipelines.

Training data go through `preprocess` (augmentation, then normalisation) before
`with_meta`, which batches, shuffles and prefetches them; evaluation data go through
`preprocess` and `batched`:

```python
train = with_meta(preprocess(data.train, mean=mean, std=std, augment=True),
                  preprocess(data.meta, mean=mean, std=std), batch_size=128)
test = batched(preprocess(data.test, mean=mean, std=std), batch_size=512)
```
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

# Zero padding before the random crop, as in the standard CIFAR augmentation.
CROP_PADDING = 4
# Guards the division by the standard deviation of a constant channel.
MIN_STD = 1e-6


def channel_stats(images) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of images in [0, 1].

    Args:
        images: float array of shape `(N, H, W, channels)` in [0, 1], or a uint8 array
            (divided by 255 first).

    Returns:
        A tuple `(mean, std)` of float32 arrays of shape `(channels,)`.

    Example:

    >>> mean, std = channel_stats(np.full((2, 4, 4, 1), 51, np.uint8))
    >>> round(float(mean[0]), 6), float(std[0])
    (0.2, 0.0)
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(
            f"Invalid shape for argument `images`. Received: shape {images.shape}. "
            "Expected (N, H, W, channels)."
        )
    scale = 255.0 if np.issubdtype(images.dtype, np.integer) else 1.0
    pixels = images.reshape(-1, images.shape[-1]).astype(np.float64) / scale
    return pixels.mean(axis=0).astype(np.float32), pixels.std(axis=0).astype(np.float32)


def normalize(image, *, mean, std):
    """Returns `(image - mean) / std`, per channel.

    Args:
        image: float tensor of shape `(..., channels)`.
        mean: float or sequence of floats, one per channel.
        std: float or sequence of floats, one per channel, positive.

    Returns:
        A float32 tensor of the same shape.
    """
    mean = tf.constant(mean, tf.float32)
    std = tf.maximum(tf.constant(std, tf.float32), MIN_STD)
    return (tf.cast(image, tf.float32) - mean) / std


def random_crop_and_flip(image, *, padding: int = CROP_PADDING, flip: bool = True, seed=None):
    """The standard CIFAR augmentation: zero-pad, random crop back, random horizontal flip.

    Args:
        image: tensor of shape `(H, W, channels)` with a static shape.
        padding: int, pixels of zero padding on each side before the crop. Defaults to 4.
        flip: bool, whether to flip left-right with probability 1/2. Defaults to `True`.
        seed: optional int, the op-level seed. Defaults to `None`.

    Returns:
        A tensor of the same shape and dtype.
    """
    shape = image.shape
    if not shape.is_fully_defined() or shape.rank != 3:
        raise ValueError(
            f"Invalid shape for argument `image`. Received: {shape}. Expected a single "
            "image of static shape (H, W, channels): apply augmentation before batching."
        )
    padded = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]])
    image = tf.image.random_crop(padded, shape, seed=seed)
    if flip:
        image = tf.image.random_flip_left_right(image, seed=seed)
    return image


def preprocess(
    dataset: tf.data.Dataset,
    *,
    mean=None,
    std=None,
    augment: bool = False,
    padding: int = CROP_PADDING,
    flip: bool = True,
    seed=None,
) -> tf.data.Dataset:
    """Maps single `(image, label)` (or image-only) examples through augmentation and scaling.

    Args:
        dataset: `tf.data.Dataset` of single examples: `(image, label)` pairs or images.
        mean: optional per-channel mean; with `std`, normalises the images. Defaults to
            `None` (images stay in [0, 1]).
        std: optional per-channel standard deviation. Defaults to `None`.
        augment: bool, whether to apply `random_crop_and_flip` (for training data only).
            Defaults to `False`.
        padding: int, the crop padding. Defaults to 4.
        flip: bool, whether augmentation flips images. Defaults to `True`.
        seed: optional int, the augmentation seed. Defaults to `None`.

    Returns:
        A `tf.data.Dataset` with the same structure and float32 images.

    Example:

    >>> ds = tf.data.Dataset.from_tensor_slices((tf.ones((2, 8, 8, 1)), [0, 1]))
    >>> image, label = next(iter(preprocess(ds, mean=[0.5], std=[0.25], augment=True)))
    >>> image.shape
    TensorShape([8, 8, 1])
    """
    if not isinstance(dataset, tf.data.Dataset):
        raise TypeError(
            f"Invalid type for argument `dataset`. Received: {type(dataset).__name__}. "
            "Expected a `tf.data.Dataset` of single examples."
        )
    if (mean is None) != (std is None):
        raise ValueError(
            f"Invalid value for arguments `mean` and `std`. Received: mean={mean!r}, "
            f"std={std!r}. Expected both or neither."
        )

    def transform(image):
        image = tf.cast(image, tf.float32)
        if augment:
            image = random_crop_and_flip(image, padding=padding, flip=flip, seed=seed)
        if mean is not None:
            image = normalize(image, mean=mean, std=std)
        return image

    if isinstance(dataset.element_spec, tuple):
        return dataset.map(
            lambda image, *rest: (transform(image), *rest), num_parallel_calls=tf.data.AUTOTUNE
        )
    return dataset.map(transform, num_parallel_calls=tf.data.AUTOTUNE)


def normalize_and_augment(data, train, seed=None):
    """Normalises every split of `data` by its meta set's channel statistics, and augments
    the noisy training images with random crops and flips.

    Args:
        data: a `NoisyData`.
        train: the noisy training dataset to augment (`data.train`, or a part of it).
        seed: optional int, the augmentation seed. Defaults to `None`.

    Returns:
        `(data, train, (mean, std))`: a copy of `data` whose meta, validation and test sets
        are normalised, the augmented and normalised `train`, and the statistics.
    """
    meta_images = np.concatenate([x for x, _ in data.meta.batch(1024).as_numpy_iterator()])
    mean, std = channel_stats(meta_images)

    def normalized(dataset):
        return None if dataset is None else preprocess(dataset, mean=mean, std=std)

    data = dataclasses.replace(data, meta=normalized(data.meta), test=normalized(data.test),
                               validation=normalized(data.validation))  # fmt: skip
    train = preprocess(train, mean=mean, std=std, augment=True, seed=seed)
    return data, train, (mean, std)


def batched(
    dataset: tf.data.Dataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    shuffle_buffer: int = 10_000,
    drop_remainder: bool = False,
    prefetch: bool = True,
    seed=None,
) -> tf.data.Dataset:
    """Batches single examples for `model.fit`, `evaluate` or `predict`.

    Args:
        dataset: `tf.data.Dataset` of single examples.
        batch_size: int, the batch size.
        shuffle: bool, whether to shuffle each epoch. Defaults to `False`.
        shuffle_buffer: int, the shuffle buffer size. Defaults to 10000.
        drop_remainder: bool, whether to drop a last, smaller batch (XLA needs static
            shapes). Defaults to `False`.
        prefetch: bool, whether to prefetch. Defaults to `True`.
        seed: optional int, the shuffle seed. Defaults to `None`.

    Returns:
        A batched `tf.data.Dataset`.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(
            f"Invalid value for argument `batch_size`. Received: batch_size={batch_size!r}. "
            "Expected a positive integer."
        )
    if shuffle:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    if prefetch:
        dataset = dataset.prefetch(tf.data.AUTOTUNE)
    return dataset
