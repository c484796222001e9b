"""Baselines that use the clean meta set directly, each trained by Keras' own `fit`.

Notation: a classifier f_θ outputs logits over C classes; (x, ỹ) is a noisy batch of B
examples (ỹ = -1 marks an unlabeled one) and (x_m, y_m) a clean meta batch of B_m examples;
the meta set holds N_m clean examples. A practitioner who holds a small clean set would try:

- `NoisyPlusClean` with cross-entropy: train on the noisy and the clean data together
  (`cross_entropy_clean`);
- `NoisyPlusClean` with `mln_tf.losses.ForwardCorrection(gold_transition_matrix(...))`:
  Gold Loss Correction (GLC, Hendrycks et al., NeurIPS 2018);
- `fine_tune`: train on the noisy labels, then fine-tune the whole network on the clean set,
  with the settings chosen from `FINE_TUNE_GRID` on a validation split (`search_fine_tune`).
"""

import math

import keras
import numpy as np
import tensorflow as tf
from scipy.special import softmax

from mln_tf import distribute, losses, training_batch
from mln_tf.classifier_trainer import ClassifierTrainer, check_classifier, serialize_model
from mln_tf.optimizers import paper_classifier_optimizer

BATCH_STRUCTURE = (
    "Expected each training batch to be `((x, y), (x_meta, y_meta))`: a noisy batch with "
    "integer labels (-1 for unlabeled examples) and a clean meta batch; "
    "`mln_tf.data.with_meta(noisy, meta, batch_size)` builds such a dataset."
)

# Fine-tuning settings searched on the validation split: few epochs, because the meta set
# is small and the network overfits it quickly, and two learning rates below the
# classifier's usual 1e-2.
FINE_TUNE_GRID = tuple(
    {"epochs": epochs, "learning_rate": learning_rate}
    for epochs in (1, 3, 5)
    for learning_rate in (1e-3, 1e-2)
)


@keras.saving.register_keras_serializable(package="mln_tf")
class NoisyPlusClean(ClassifierTrainer):
    """Trains a classifier on its noisy batch and a clean meta batch at once.

    Each `fit` step runs the classifier once, in training mode, on the noisy batch and the
    meta batch concatenated, and takes one step of the optimizer on the sum of a loss on
    the noisy labels and `clean_weight` times cross-entropy on the clean labels.

    With the default `noisy_loss` (cross-entropy) this is the `cross_entropy_clean`
    baseline. With `mln_tf.losses.ForwardCorrection(gold_transition_matrix(...))` it is Gold
    Loss Correction: the noisy labels are explained through the transition matrix
    estimated on the clean set, the clean labels are trusted as they are.

    Unlabeled noisy examples (ỹ = -1) have weight 0: the noisy term is the mean over the
    labeled examples of the batch (0 when there are none), as PyTorch's `ignore_index`
    does. `noisy_loss`'s own reduction is therefore not used, only its per-example values.
    Labels must lie in [-1, C) and meta labels in [0, C).

    Batch normalisation sees one batch of B + B_m examples, noisy and clean together: its
    batch statistics are those of the union, and its moving statistics move once per step.

    Formula:

    ```
    p = f_θ(concat(x, x_m))                      # one forward pass
    L(θ) = sum_i [ỹ_i ≥ 0] ℓ(ỹ_i, p_i) / max(1, sum_i [ỹ_i ≥ 0])
           + clean_weight · mean_j CE(y_m,j, p_B+j)
    θ ← optimizer(θ, ∇_θ L(θ))
    ```

    Training data: each element is `((x, y), (x_meta, y_meta))`, as `mln_tf.data.with_meta`
    builds it (without cached features). `evaluate` and `validation_data` take ordinary
    `(x, y)` batches and report the classifier's cross-entropy (`loss`) and `accuracy`.

    Distribution: create the classifier and the model, and call `compile`, inside a
    `tf.distribute.Strategy` scope. Each replica's loss counts for 1/N of the global-batch
    mean, as Keras scales it; the noisy term then matches the single-device mean when the
    replicas hold the same number of labeled examples (always, without unlabeled data).

    Args:
        classifier: a built `keras.Model` that outputs logits of shape `(batch, C)`.
        noisy_loss: a `keras.losses.Loss` taking integer labels and logits, applied to the
            noisy batch. Defaults to `keras.losses.SparseCategoricalCrossentropy(
            from_logits=True)`.
        clean_weight: non-negative float, the weight of cross-entropy on the meta batch.
            Defaults to 1.0.
        **kwargs: arguments of `keras.Model` (`name`, ...).

    Example:

    >>> classifier = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> model = NoisyPlusClean(classifier, clean_weight=0.5)
    >>> model.compile(optimizer=keras.optimizers.SGD(0.1))
    >>> x = np.zeros((2, 4), "float32")
    >>> batch = ((x, np.array([0, -1])), (x, np.array([1, 2])))
    >>> logs = model.train_on_batch(batch, return_dict=True)
    >>> sorted(logs)
    ['clean_loss', 'loss', 'noisy_loss']
    """

    loss_hint = (
        "takes its losses in the constructor: pass `noisy_loss=` there and call `compile()` "
        "without `loss`."
    )

    def __init__(self, classifier, noisy_loss=None, clean_weight=1.0, **kwargs):
        kwargs.setdefault("name", "noisy_plus_clean")
        super().__init__(classifier, **kwargs)
        if noisy_loss is None:
            noisy_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        self.noisy_loss = _check_noisy_loss(noisy_loss, self.num_classes)
        self.clean_weight = _check_clean_weight(clean_weight)

        self.noisy_loss_tracker = keras.metrics.Mean(name="noisy_loss")
        self.clean_loss_tracker = keras.metrics.Mean(name="clean_loss")
        self.built = True

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "classifier": serialize_model(self.classifier),
                "noisy_loss": keras.losses.serialize(self.noisy_loss),
                "clean_weight": self.clean_weight,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["classifier"] = keras.saving.deserialize_keras_object(config["classifier"])
        config["noisy_loss"] = keras.losses.deserialize(config["noisy_loss"])
        return cls(**config)

    @property
    def training_trackers(self):
        return [self.noisy_loss_tracker, self.clean_loss_tracker]

    def train_step(self, data):
        x, y, x_meta, y_meta = _unpack(data, self.classifier.input_shape)
        trainable = self.classifier.trainable_variables
        noisy_size = tf.shape(x)[0]

        with tf.GradientTape() as tape:
            # One forward pass over the noisy and the clean examples
            logits = self.classifier(tf.concat([x, tf.cast(x_meta, x.dtype)], 0), training=True)
            if logits.dtype in (tf.float16, tf.bfloat16):
                logits = tf.cast(logits, "float32")
            noisy_logits, clean_logits = logits[:noisy_size], logits[noisy_size:]
            # Noisy term: the mean over the labeled examples
            noisy_loss = self.noisy_loss_of(y, noisy_logits)
            # Clean term: cross-entropy on the meta batch
            clean_loss = losses.meta_loss(y_meta, clean_logits)
            # Not `tf.cast`: it would round a Python float to float32 first.
            clean_weight = tf.constant(self.clean_weight, dtype=logits.dtype)
            loss = noisy_loss + clean_weight * clean_loss
            if self.classifier.losses:  # weight regularizers, as Keras' own step adds them
                loss += tf.cast(tf.add_n(self.classifier.losses), loss.dtype)
            scaled_loss = self.optimizer.scale_loss(distribute.scale_for_replicas(loss))

        # Update the classifier
        grads = tape.gradient(scaled_loss, trainable)
        self.optimizer.apply(grads, trainable)

        self.loss_tracker.update_state(loss)
        self.noisy_loss_tracker.update_state(noisy_loss)
        self.clean_loss_tracker.update_state(clean_loss)
        return self._training_logs()

    def noisy_loss_of(self, labels, logits):
        """`noisy_loss` averaged over the examples whose label is not -1 (0 if none).

        Args:
            labels: int tensor of shape `(B,)`, noisy labels with -1 for unlabeled examples.
            logits: float tensor of shape `(B, C)`.

        Returns:
            A scalar tensor of the logits' dtype.
        """
        labeled = tf.cast(labels >= 0, logits.dtype)
        # The loss is evaluated on a valid class (0) where the label is -1, then weighted 0.
        per_example = self.noisy_loss.call(tf.maximum(labels, 0), logits)
        per_example = tf.reshape(tf.cast(per_example, logits.dtype), [-1])
        return tf.reduce_sum(labeled * per_example) / tf.maximum(tf.reduce_sum(labeled), 1.0)


def gold_transition_matrix(classifier, meta_images, meta_labels, num_classes, batch_size=512):
    """Gold Loss Correction's estimate of the noise transition matrix from clean data.

    Row i is the mean of the classifier's softmax over the meta images of true class i
    (Hendrycks et al., NeurIPS 2018). The classifier should be the one trained on the
    noisy labels (the warm-up), so that its softmax estimates p(ỹ | x) and row i estimates
    T[i, j] = P(ỹ = j | y = i). A class without a meta image gets the identity row: its
    labels are taken as clean.

    Args:
        classifier: a `keras.Model` that outputs logits over `num_classes` classes.
        meta_images: the clean images, as an array (or anything `classifier.predict`
            takes, such as a batched `tf.data.Dataset` of images), in the order of
            `meta_labels`.
        meta_labels: int array of shape `(N_m,)`, the clean labels in `[0, num_classes)`.
        num_classes: int, C.
        batch_size: int, the prediction batch size for arrays. Defaults to 512.

    Returns:
        A float32 NumPy array of shape `(C, C)` whose rows sum to 1.

    Raises:
        ValueError: for a class count that is not a positive integer or differs from the
            classifier's, labels out of range or not one per image.

    Formula:

    ```
    T[i, :] = mean_{n : y_m,n = i} softmax(f(x_m,n))     (e_i if class i has no image)
    ```

    Example:

    >>> classifier = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    >>> matrix = gold_transition_matrix(classifier, np.zeros((3, 2)), [0, 0, 1], 2)
    >>> matrix.shape, np.allclose(matrix.sum(axis=1), 1.0)
    ((2, 2), True)
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(
            f"Invalid value for argument `num_classes`. Received: num_classes={num_classes!r}. "
            "Expected a positive integer."
        )
    outputs = int(classifier.output_shape[-1])
    if outputs != num_classes:
        raise ValueError(
            f"Invalid value for argument `num_classes`. Received: num_classes={num_classes}, "
            f"but the classifier outputs {outputs} logits. Expected the classifier's class count."
        )
    labels = np.asarray(meta_labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            "Invalid value for argument `meta_labels`. Received: an array of dtype "
            f"{labels.dtype} and shape {labels.shape}. Expected integer class indices of "
            "shape (N_m,)."
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            "Invalid value for argument `meta_labels`. Received labels from "
            f"{labels.min()} to {labels.max()}. Expected class indices in [0, {num_classes})."
        )
    logits = classifier.predict(meta_images, batch_size=batch_size, verbose=0)
    if len(logits) != len(labels):
        raise ValueError(
            f"Invalid value for argument `meta_labels`. Received {len(labels)} labels for "
            f"{len(logits)} images. Expected one label per meta image, in the same order."
        )
    probabilities = softmax(np.asarray(logits, dtype="float64"), axis=-1)
    matrix = np.eye(num_classes)
    for true_class in np.unique(labels):
        matrix[true_class] = probabilities[labels == true_class].mean(axis=0)
    # Exact in float64; renormalised so that float32 rounding leaves the rows summing to 1.
    matrix /= matrix.sum(axis=1, keepdims=True)
    return matrix.astype("float32")


def fine_tune(classifier, meta_batches, *, epochs, learning_rate, validation_data=None,
              callbacks=(), jit_compile="auto", **fit_kwargs):  # fmt: skip
    """Fine-tunes a copy of a classifier, the whole network, on the clean meta set.

    The copy (`keras.models.clone_model` with the classifier's weights, batch-normalisation
    statistics included) is compiled with plain cross-entropy and a fresh
    `paper_classifier_optimizer(learning_rate)`, and trained with `fit`. The classifier
    passed in is left untouched, so that several settings can start from the same one.
    Under a `tf.distribute` strategy, call it inside the strategy's scope: the copy is
    created there.

    Args:
        classifier: a built functional or Sequential `keras.Model` that outputs logits.
        meta_batches: the clean training data, as `fit` takes it: usually a batched,
            shuffled `tf.data.Dataset` of `(x, y)` with integer labels.
        epochs: int, the number of epochs.
        learning_rate: float, the SGD learning rate.
        validation_data: optional data for `fit`'s validation (`val_loss`,
            `val_accuracy`). Defaults to `None`.
        callbacks: Keras callbacks. Defaults to none.
        jit_compile: bool or `"auto"`, passed to `compile`. Defaults to `"auto"`.
        **fit_kwargs: passed to `fit` (`verbose`, `steps_per_epoch`, ...).

    Returns:
        The `keras.callbacks.History`; `history.model` is the fine-tuned copy.

    Raises:
        ValueError: for a number of epochs that is not a positive integer, or a learning
            rate that is not a positive float.

    Example:

    >>> classifier = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    >>> data = tf.data.Dataset.from_tensor_slices((np.eye(2), [0, 1])).batch(2)
    >>> history = fine_tune(classifier, data, epochs=2, learning_rate=0.1, verbose=0)
    >>> history.model is classifier, len(history.history["loss"])
    (False, 2)
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(
            f"Invalid value for argument `epochs`. Received: epochs={epochs!r}. "
            "Expected a positive integer."
        )
    if (
        isinstance(learning_rate, bool)
        or not isinstance(learning_rate, (int, float))
        or not (learning_rate > 0 and math.isfinite(learning_rate))
    ):
        raise ValueError(
            f"Invalid value for argument `learning_rate`. Received: "
            f"learning_rate={learning_rate!r}. Expected a positive float."
        )
    check_classifier(classifier, "`fine_tune`")
    copy = keras.models.clone_model(classifier)
    copy.set_weights(classifier.get_weights())
    copy.compile(
        optimizer=paper_classifier_optimizer(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=jit_compile,
    )
    if isinstance(meta_batches, tf.data.Dataset):
        fit_kwargs.setdefault("shuffle", False)  # a dataset is shuffled by its pipeline
    return copy.fit(meta_batches, epochs=epochs, validation_data=validation_data,
                    callbacks=list(callbacks), **fit_kwargs)  # fmt: skip


def search_fine_tune(classifier, meta_batches, validation_data, *, grid=FINE_TUNE_GRID,
                     monitor="val_accuracy", **fine_tune_kwargs):  # fmt: skip
    """Runs `fine_tune` for each setting of `grid` and keeps the best on validation.

    Each setting starts from the same `classifier`, which is left untouched. A setting is
    scored by `monitor` after its last epoch.

    Args:
        classifier: the classifier to fine-tune.
        meta_batches: the clean training data, as `fine_tune` takes it.
        validation_data: the held-out data the settings are compared on.
        grid: a sequence of dicts of `fine_tune` arguments (`epochs`, `learning_rate`).
            Defaults to `FINE_TUNE_GRID`.
        monitor: str, the validation log to maximise. Defaults to `"val_accuracy"`.
        **fine_tune_kwargs: passed to every `fine_tune` call (`verbose`, ...).

    Returns:
        `(best_settings, best_history, scores)`: the winning dict of `grid`, its History
        (`best_history.model` is the fine-tuned classifier), and each setting's score, in
        the order of `grid`. Ties go to the first setting.

    Raises:
        ValueError: for an empty grid, or a `monitor` that the History does not log.
    """
    if not grid:
        raise ValueError(
            f"Invalid value for argument `grid`. Received: grid={grid!r}. Expected at least "
            "one dict of `fine_tune` settings."
        )
    best_settings, best_history, scores = None, None, []
    for settings in grid:
        history = fine_tune(classifier, meta_batches, validation_data=validation_data,
                            **settings, **fine_tune_kwargs)  # fmt: skip
        if monitor not in history.history:
            raise ValueError(
                f"Invalid value for argument `monitor`. Received: monitor={monitor!r}. "
                f"Expected one of the logs of `fit`: {sorted(history.history)}."
            )
        score = float(history.history[monitor][-1])
        scores.append(score)
        if best_history is None or score > max(scores[:-1]):
            best_settings, best_history = dict(settings), history
    return best_settings, best_history, scores


def _check_noisy_loss(noisy_loss, num_classes):
    if not isinstance(noisy_loss, keras.losses.Loss):
        raise TypeError(
            "Invalid type for argument `noisy_loss`. Received: "
            f"{type(noisy_loss).__name__}. Expected a `keras.losses.Loss` instance taking "
            "integer labels and logits, such as "
            "`keras.losses.SparseCategoricalCrossentropy(from_logits=True)`."
        )
    if noisy_loss.get_config().get("from_logits") is False:
        raise ValueError(
            f"Invalid value for argument `noisy_loss`. Received: {noisy_loss.name} with "
            "from_logits=False. The classifier outputs logits: pass `from_logits=True`."
        )
    matrix = getattr(noisy_loss, "transition_matrix", None)
    if matrix is not None and np.shape(matrix) != (num_classes, num_classes):
        raise ValueError(
            "Invalid value for argument `noisy_loss`. Received a transition matrix of shape "
            f"{np.shape(matrix)}. Expected ({num_classes}, {num_classes}): the classifier "
            f"outputs {num_classes} logits."
        )
    return noisy_loss


def _check_clean_weight(clean_weight):
    if (
        isinstance(clean_weight, bool)
        or not isinstance(clean_weight, (int, float))
        or not (clean_weight >= 0 and math.isfinite(clean_weight))
    ):
        raise ValueError(
            f"Invalid value for argument `clean_weight`. Received: clean_weight={clean_weight!r}"
            ". Expected a non-negative float."
        )
    return float(clean_weight)


def _unpack(data, input_shape):
    """`(x, y, x_meta, y_meta)` of a training batch, checked."""
    if isinstance(data, tuple) and len(data) == 3 and data[1] is None and data[2] is None:
        data = data[0]  # `train_on_batch(batch)` packs the batch as `(x, None, None)`.
    valid = (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and all(isinstance(part, (tuple, list)) and len(part) == 2 for part in data)
    )
    if not valid:
        raise ValueError(
            f"Invalid training batch of structure {_structure(data)}. {BATCH_STRUCTURE}"
        )
    (x, y), (x_meta, y_meta) = tf.nest.map_structure(tf.convert_to_tensor, data)
    expected = tuple(input_shape[1:])
    for name, images in (("x", x), ("x_meta", x_meta)):
        received = tuple(images.shape[1:])
        if len(received) != len(expected) or any(
            e is not None and r is not None and e != r for e, r in zip(expected, received)
        ):
            raise ValueError(
                f"The batch `{name}` has examples of shape {received}, but the classifier "
                f"expects {expected}."
            )
    training_batch.check_labels_shape(y, "y")
    training_batch.check_labels_shape(y_meta, "y_meta")
    y = tf.reshape(tf.cast(y, tf.int32), [-1])
    y_meta = tf.reshape(tf.cast(y_meta, tf.int32), [-1])
    return x, y, x_meta, y_meta


def _structure(data):
    return tf.nest.map_structure(lambda t: getattr(t, "shape", type(t).__name__), data)
