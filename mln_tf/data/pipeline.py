"""`tf.data` pipelines that feed `MetaLabelNet.fit`.

Each element of a MetaLabelNet training dataset is a pair of batches:

    ((x, y), (x_meta, y_meta))

- `(x, y)`: a batch of the noisy training set. `y` holds the given (noisy) integer labels;
  it is only used to report how often the generated soft labels agree with it. An
  unlabeled example carries `y = -1` (`UNLABELED`).
- `(x_meta, y_meta)`: a batch of the small clean meta set, with integer labels.

`MetaLabelNet.train_step` also accepts `(x, (x_meta, y_meta))`, a noisy batch without labels,
and `((x, y, features), (x_meta, y_meta))`, where `features` are the frozen extractor's
features of `x`, computed once per dataset by `cache_features` instead of once per step.
"""

import numpy as np
import tensorflow as tf

# Label value that marks an unlabeled example inside a labeled batch.
UNLABELED = -1
# Meta sets up to this size are read once to check that they hold several classes.
MAX_CHECKED_META_SIZE = 100_000


def _check_unbatched(dataset, name):
    if not isinstance(dataset, tf.data.Dataset):
        raise TypeError(
            f"Invalid type for argument `{name}`. Received: {type(dataset).__name__}. "
            "Expected a `tf.data.Dataset` of single examples."
        )
    spec = dataset.element_spec
    first = tf.nest.flatten(spec)[0]
    if first.shape.rank is not None and first.shape.rank > 0 and first.shape[0] is None:
        raise ValueError(
            f"`{name}` looks batched (its first dimension is None: {first.shape}). "
            f"`with_meta` batches the data itself: pass `{name}.unbatch()` instead."
        )


def _check_labeled(dataset, name, allow_features=False):
    spec = dataset.element_spec
    lengths = (2, 3) if allow_features else (2,)
    if not (isinstance(spec, tuple) and len(spec) in lengths):
        expected = "`(image, label)` pairs"
        if allow_features:
            expected += " or `(image, label, features)` triples from `cache_features`"
        raise ValueError(f"`{name}` must yield {expected}. Received elements of structure {spec}.")


def cache_features(dataset, feature_extractor, *, batch_size=256):
    """Computes the frozen features of every example once and carries them with it.

    Without augmentation, the frozen feature extractor maps each image to the same features
    at every step. Computing them once here saves `MetaLabelNet` one extractor forward pass
    per step (about one classifier forward). The features are held in memory: N examples
    times the feature size in float32 (59,000 × 128 floats, 30 MB, for Fashion-MNIST).

    Use it only when the images reach the model unchanged: random augmentation inside the
    pipeline would make the cached features those of other images. After
    `MetaLabelNet.refresh_feature_extractor()`, cache them again.

    Args:
        dataset: `tf.data.Dataset` of single `(image, label)` examples, in a fixed order
            (not shuffled): the features are matched to examples by position.
        feature_extractor: the frozen `keras.Model` mapping images to features, usually
            `model.feature_extractor` of a `MetaLabelNet`.
        batch_size: int, the batch size of the extraction. Defaults to 256.

    Returns:
        A `tf.data.Dataset` of single `(image, label, features)` examples, for `with_meta`.

    Example:

    >>> import keras
    >>> extractor = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> x = tf.zeros((8, 4)); y = tf.range(8) % 2
    >>> cached = cache_features(tf.data.Dataset.from_tensor_slices((x, y)), extractor)
    >>> [tuple(t.shape) for t in cached.element_spec]
    [(4,), (), (3,)]
    """
    _check_unbatched(dataset, "dataset")
    _check_labeled(dataset, "dataset")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(
            f"Invalid value for argument `batch_size`. Received: batch_size={batch_size!r}. "
            "Expected a positive integer."
        )
    extract = tf.function(lambda images: feature_extractor(images, training=False))
    chunks = [extract(images).numpy() for images, _ in dataset.batch(batch_size)]
    if not chunks:
        raise ValueError("`dataset` is empty: there are no features to cache.")
    features = tf.data.Dataset.from_tensor_slices(np.concatenate(chunks).astype("float32"))
    return tf.data.Dataset.zip((dataset, features)).map(
        lambda example, feature: (*example, feature)
    )


def _check_not_empty(dataset, name):
    cardinality = int(dataset.cardinality())
    if cardinality == 0 or (cardinality < 0 and not any(True for _ in dataset.take(1))):
        raise ValueError(
            f"`{name}` is empty. MetaLabelNet needs at least one example in it "
            "(for the meta set: a few clean examples of every class)."
        )


def _check_several_classes(meta):
    """A meta set of one class would teach the generator to predict that class everywhere."""
    cardinality = int(meta.cardinality())
    if cardinality < 0 or cardinality > MAX_CHECKED_META_SIZE:
        return  # unknown or very large: not read twice
    labels = meta.map(lambda image, label: label).batch(4096)
    classes = np.unique(np.concatenate([np.reshape(y, -1) for y in labels.as_numpy_iterator()]))
    if classes.size < 2:
        raise ValueError(
            f"The meta set holds only class {classes[0]}. Its meta loss would teach the label "
            "generator to predict that class for every image: the meta set needs clean "
            "examples of every class (`mln_tf.data.split_meta` picks them class-balanced)."
        )


def with_meta(
    noisy,
    meta,
    batch_size,
    *,
    meta_batch_size=None,
    unlabeled=None,
    shuffle=True,
    shuffle_buffer=10_000,
    seed=None,
    prefetch=True,
):
    """Zips a noisy training set with a repeated clean meta set, for `MetaLabelNet.fit`.

    One pass over the result is one epoch over the noisy set (plus the unlabeled set, if
    given). The meta set is repeated and reshuffled, so it never runs out.

    Args:
        noisy: `tf.data.Dataset` of single `(image, label)` examples with noisy labels, or
            `(image, label, features)` examples from `cache_features`.
        meta: `tf.data.Dataset` of single `(image, label)` examples with clean labels.
        batch_size: int, the noisy batch size.
        meta_batch_size: int, the meta batch size. Defaults to `batch_size`, as in the paper.
        unlabeled: optional `tf.data.Dataset` of single images. Its batches are interleaved
            with the noisy batches, with labels set to `UNLABELED` (-1). Defaults to `None`.
        shuffle: bool, whether to shuffle the noisy (and unlabeled) examples each epoch.
            The meta set is always shuffled. Defaults to `True`.
        shuffle_buffer: int, the shuffle buffer size. Defaults to 10000.
        seed: optional int seed for shuffling and interleaving. Defaults to `None`.
        prefetch: bool, whether to prefetch batches. Defaults to `True`.

    Returns:
        A `tf.data.Dataset` of `((x, y), (x_meta, y_meta))`, or of
        `((x, y, features), (x_meta, y_meta))` for cached features, with static batch
        dimensions (`drop_remainder=True`, which XLA needs).

    Example:

    >>> x = tf.zeros((8, 4)); y = tf.range(8) % 2
    >>> ds = with_meta(tf.data.Dataset.from_tensor_slices((x, y)),
    ...                tf.data.Dataset.from_tensor_slices((x, y)), batch_size=4)
    >>> [tuple(t.shape) for t in tf.nest.flatten(next(iter(ds)))]
    [(4, 4), (4,), (4, 4), (4,)]
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(
            f"Invalid value for argument `batch_size`. Received: batch_size={batch_size!r}. "
            "Expected a positive integer."
        )
    meta_batch_size = batch_size if meta_batch_size is None else meta_batch_size
    if not isinstance(meta_batch_size, int) or meta_batch_size < 1:
        raise ValueError(
            "Invalid value for argument `meta_batch_size`. "
            f"Received: meta_batch_size={meta_batch_size!r}. Expected a positive integer."
        )
    for name, dataset in (("noisy", noisy), ("meta", meta)):
        _check_unbatched(dataset, name)
        _check_labeled(dataset, name, allow_features=name == "noisy")
        _check_not_empty(dataset, name)
    _check_several_classes(meta)
    cached = len(noisy.element_spec) == 3
    if cached and unlabeled is not None:
        raise ValueError(
            "`noisy` carries cached features but `unlabeled` does not: mixing the two would "
            "give batches of two structures. Pass `unlabeled` with labels set to -1 "
            "(`mln_tf.data.UNLABELED`) inside `noisy` before `cache_features`, or do not "
            "cache the features."
        )

    noisy = noisy.map(lambda x, y, *features: (x, tf.cast(y, tf.int32), *features))
    if shuffle:
        noisy = noisy.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    noisy_batches = noisy.batch(batch_size, drop_remainder=True)

    if unlabeled is not None:
        _check_unbatched(unlabeled, "unlabeled")
        _check_not_empty(unlabeled, "unlabeled")
        if isinstance(unlabeled.element_spec, tuple):
            unlabeled = unlabeled.map(lambda x, *_: x)
        unlabeled = unlabeled.map(lambda x: (x, tf.constant(UNLABELED, tf.int32)))
        if shuffle:
            unlabeled = unlabeled.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        unlabeled_batches = unlabeled.batch(batch_size, drop_remainder=True)
        num_noisy = max(int(noisy_batches.cardinality()), 1)
        num_unlabeled = max(int(unlabeled_batches.cardinality()), 1)
        total = num_noisy + num_unlabeled
        weights = [num_noisy / total, num_unlabeled / total]
        noisy_batches = tf.data.Dataset.sample_from_datasets(
            [noisy_batches, unlabeled_batches],
            weights=weights,
            seed=seed,
            stop_on_empty_dataset=False,
        )

    meta = meta.map(lambda x, y: (x, tf.cast(y, tf.int32)))
    meta_batches = (
        meta.repeat()
        .shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        .batch(meta_batch_size, drop_remainder=True)
    )
    dataset = tf.data.Dataset.zip((noisy_batches, meta_batches))
    if prefetch:
        dataset = dataset.prefetch(tf.data.AUTOTUNE)
    return dataset
