"""`tf.data` pipelines that feed `MetaLabelNet.fit`.

Each element of a MetaLabelNet training dataset is a pair of batches:

    ((x, y), (x_meta, y_meta))

- `(x, y)`: a batch of the noisy training set. `y` holds the given (noisy) integer labels;
  it is only used to report how often the generated soft labels agree with it. An
  unlabeled example carries `y = -1` (`UNLABELED`).
- `(x_meta, y_meta)`: a batch of the small clean meta set, with integer labels.

`MetaLabelNet.train_step` also accepts `(x, (x_meta, y_meta))`, a noisy batch without labels.
"""

import tensorflow as tf

# Label value that marks an unlabeled example inside a labeled batch.
UNLABELED = -1


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


def _check_labeled(dataset, name):
    spec = dataset.element_spec
    if not (isinstance(spec, tuple) and len(spec) == 2):
        raise ValueError(
            f"`{name}` must yield `(image, label)` pairs. Received elements of structure {spec}."
        )


def _check_not_empty(dataset, name):
    cardinality = int(dataset.cardinality())
    if cardinality == 0 or (cardinality < 0 and not any(True for _ in dataset.take(1))):
        raise ValueError(
            f"`{name}` is empty. MetaLabelNet needs at least one example in it "
            "(for the meta set: a few clean examples of every class)."
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
        noisy: `tf.data.Dataset` of single `(image, label)` examples with noisy labels.
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
        A `tf.data.Dataset` of `((x, y), (x_meta, y_meta))` with static batch dimensions
        (`drop_remainder=True`, which XLA needs).

    Example:

    >>> x = tf.zeros((8, 4)); y = tf.zeros((8,), tf.int32)
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
        _check_labeled(dataset, name)
        _check_not_empty(dataset, name)

    noisy = noisy.map(lambda x, y: (x, tf.cast(y, tf.int32)))
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
