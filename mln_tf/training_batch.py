"""A MetaLabelNet training batch: its structure, unpacked and checked at trace time."""

import dataclasses

import numpy as np
import tensorflow as tf

BATCH_STRUCTURE = (
    "Expected each training batch to be `((x, y), (x_meta, y_meta))`, "
    "`((x, y, features), (x_meta, y_meta))` with cached frozen features, or "
    "`(x, (x_meta, y_meta))` for unlabeled noisy data; `mln_tf.data.with_meta(...)` "
    "builds such a dataset."
)


@dataclasses.dataclass
class TrainingBatch:
    """A noisy batch `(x, y)` with optional cached `features`, and a clean meta batch.

    `y` is `None` for unlabeled data, otherwise int32 of shape `(B,)` with -1 for an
    unlabeled example; `y_meta` is int32 of shape `(B_m,)` or one-hot float `(B_m, C)`.
    """

    x: tf.Tensor
    y: tf.Tensor | None
    features: tf.Tensor | None
    x_meta: tf.Tensor
    y_meta: tf.Tensor


def unpack(data, input_shape, num_classes, feature_shape):
    """Unpacks and checks a training batch.

    Args:
        data: the batch as `train_step` receives it; NumPy arrays are accepted.
        input_shape: the classifier's input shape, batch dimension included.
        num_classes: int, C.
        feature_shape: the frozen feature extractor's output shape.

    Returns:
        A `TrainingBatch`.

    Raises:
        ValueError: for a batch of another structure, shape or label dtype.
    """
    if isinstance(data, tuple) and len(data) == 3 and data[1] is None and data[2] is None:
        data = data[0]  # `train_on_batch(batch)` packs the batch as `(x, None, None)`.
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise ValueError(
            f"Invalid training batch of structure {_structure(data)}. {BATCH_STRUCTURE}"
        )
    # NumPy arrays, as Keras' own `train_step` accepts them.
    data = tf.nest.map_structure(_to_tensor, data)
    noisy, meta = data
    features = None
    if isinstance(noisy, (tuple, list)):
        if len(noisy) == 3:
            x, y, features = noisy
        elif len(noisy) == 2:
            x, y = noisy
        elif len(noisy) == 1:
            (x,), y = noisy, None
        else:
            raise ValueError(
                f"Invalid noisy batch of structure {_structure(noisy)}. {BATCH_STRUCTURE}"
            )
    else:
        x, y = noisy, None
    if not (isinstance(meta, (tuple, list)) and len(meta) == 2):
        raise ValueError(
            f"Invalid meta batch of structure {_structure(meta)}: the meta batch needs "
            f"clean labels. {BATCH_STRUCTURE}"
        )
    x_meta, y_meta = meta
    _check_images_shape(x, "x", input_shape)
    _check_images_shape(x_meta, "x_meta", input_shape)
    if features is not None:
        _check_features_shape(features, feature_shape)
    if y is not None:
        check_labels_shape(y, "y")
        y = tf.reshape(tf.cast(y, tf.int32), [-1])
    _check_meta_labels(y_meta, num_classes)
    if not is_one_hot(y_meta):
        y_meta = tf.reshape(tf.cast(y_meta, tf.int32), [-1])
    return TrainingBatch(x, y, features, x_meta, y_meta)


def labels_in_range(batch, num_classes):
    """A boolean tensor: every noisy label in [-1, C) and every meta label in [0, C)."""
    checks = []
    if batch.y is not None:  # -1 marks unlabeled examples
        checks.append(tf.reduce_all((batch.y >= -1) & (batch.y < num_classes)))
    if not batch.y_meta.dtype.is_floating:
        checks.append(tf.reduce_all((batch.y_meta >= 0) & (batch.y_meta < num_classes)))
    return tf.reduce_all(tf.stack(checks)) if checks else tf.constant(True)


def is_one_hot(labels):
    return labels.dtype.is_floating and labels.shape.rank == 2 and labels.shape[-1] != 1


def check_labels_shape(labels, name):
    rank = labels.shape.rank
    if labels.dtype.is_floating or not (rank == 1 or (rank == 2 and labels.shape[-1] == 1)):
        raise ValueError(
            f"The labels `{name}` must be integer class indices of shape (batch,). "
            f"Received dtype {labels.dtype.name} and shape {tuple(labels.shape)}."
        )


def _check_meta_labels(y_meta, num_classes):
    if is_one_hot(y_meta):
        if y_meta.shape[-1] != num_classes:
            raise ValueError(
                f"The meta labels have {y_meta.shape[-1]} classes (shape "
                f"{tuple(y_meta.shape)}), but the classifier outputs {num_classes} "
                "logits. The meta set and the classifier must have the same classes."
            )
        return
    check_labels_shape(y_meta, "y_meta")


def _check_features_shape(features, feature_shape):
    expected = tuple(feature_shape[1:])
    received = tuple(features.shape[1:])
    if received != expected or not features.dtype.is_floating:
        raise ValueError(
            f"The cached features of the noisy batch have shape {received} and dtype "
            f"{features.dtype.name}, but the frozen feature extractor outputs float "
            f"features of shape {expected}. Compute them with "
            "`mln_tf.data.cache_features(noisy, model.feature_extractor)`."
        )


def _check_images_shape(images, name, input_shape):
    expected = tuple(input_shape[1:])
    received = tuple(images.shape[1:])
    compatible = len(expected) == len(received) and all(
        e is None or r is None or e == r for e, r in zip(expected, received)
    )
    if not compatible:
        raise ValueError(
            f"The batch `{name}` has examples of shape {received}, but the classifier "
            f"expects {expected}."
        )


def _to_tensor(value):
    return tf.convert_to_tensor(value) if isinstance(value, np.ndarray) else value


def _structure(data):
    return tf.nest.map_structure(lambda t: getattr(t, "shape", type(t).__name__), data)


def labelled_arrays(data, input_shape, num_classes, name, allow_unlabeled=False):
    """`(images, labels)` as NumPy arrays from arrays or a `tf.data.Dataset` of pairs.

    Args:
        data: a tuple `(images, labels)`, or a `tf.data.Dataset` of `(image, label)`
            pairs, batched or not.
        input_shape: the classifier's input shape, batch dimension included.
        num_classes: int, C.
        name: str, the argument's name for the error messages.
        allow_unlabeled: bool, whether -1 (an unlabeled image) is a valid label. Defaults
            to `False`.

    Raises:
        ValueError: for another structure, images of another shape, labels that are not
            integers in [0, C) or not one per image, or no example at all.
    """
    if isinstance(data, tf.data.Dataset):
        spec = data.element_spec
        if not (isinstance(spec, tuple) and len(spec) == 2):
            raise ValueError(
                f"Invalid value for argument `{name}`: a dataset of elements {spec}. "
                "Expected `(image, label)` pairs."
            )
        if spec[0].shape.rank == len(input_shape) - 1:
            data = data.batch(512)
        pairs = list(data.as_numpy_iterator())
        if not pairs:
            raise ValueError(f"Invalid value for argument `{name}`: the dataset is empty.")
        data = tuple(np.concatenate(part) for part in zip(*pairs))
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise ValueError(
            f"Invalid value for argument `{name}`. Received: {type(data).__name__}. Expected "
            "a tuple `(images, labels)` or a `tf.data.Dataset` of `(image, label)` pairs."
        )
    images, labels = (np.asarray(part) for part in data)
    _check_images_shape(images, name, input_shape)
    labels = labels.reshape(-1) if labels.ndim == 2 and labels.shape[1] == 1 else labels
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"The labels of `{name}` must be integer class indices of shape (N,). Received "
            f"dtype {labels.dtype} and shape {labels.shape}."
        )
    if len(labels) != len(images) or not len(labels):
        raise ValueError(
            f"Invalid value for argument `{name}`: {len(images)} images and {len(labels)} "
            "labels. Expected one label per image, and at least one image."
        )
    lowest = -1 if allow_unlabeled else 0
    if labels.min() < lowest or labels.max() >= num_classes:
        raise ValueError(
            f"The labels of `{name}` range from {labels.min()} to {labels.max()}. Expected "
            f"class indices in [{lowest}, {num_classes})."
        )
    return images, labels
