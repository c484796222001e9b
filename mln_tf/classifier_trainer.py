"""The Keras plumbing shared by the models that train a classifier with their own step.

`MetaLabelNet`, `MetaWeightNet` and `NoisyPlusClean` each wrap a classifier f_θ that
outputs logits over C classes and train it with a `train_step` of their own. What they share
lives here, once:

- `ClassifierTrainer`: the classifier's checks, `call`, `compile` (no `loss` or `metrics`,
  the optimizer built on the classifier's variables only), loading from a config, an
  `evaluate` that reports the classifier's cross-entropy and accuracy, and the workarounds
  of `mln_tf.keras_compat`;
- `MetaTrainer`: for the two that meta-learn through a virtual step, the counters of skipped
  steps, with `fit` and `train_on_batch` stopping on the first one, the classifier's update,
  and the random-generator states saved with the model.

A subclass keeps its own step, its own options and its own training metrics.
"""

import warnings

import keras
import tensorflow as tf

from mln_tf import callbacks as callbacks_lib
from mln_tf import distribute, keras_compat, random_state, training_batch
from mln_tf.optimizers import paper_classifier_optimizer


class ClassifierTrainer(keras.Model):
    """A `keras.Model` that trains `classifier` with its own `train_step`.

    Subclasses define `train_step`, create their training metrics in `__init__` and list
    them in `training_trackers`. The model's output is the classifier's logits; `evaluate`
    and `validation_data` take ordinary `(x, y)` batches and report the classifier's
    cross-entropy (`loss`) and `accuracy`.

    Args:
        classifier: a built `keras.Model` that outputs logits of shape `(batch, C)`.
            Under a `tf.distribute` strategy, it must be created inside the scope.
        **kwargs: arguments of `keras.Model` (`name`, ...).

    Raises:
        TypeError: if `classifier` is not a `keras.Model`.
        ValueError: if it is not built, does not output `(batch, C)` logits, ends in a
            softmax or sigmoid, or was created outside the current strategy's scope.
    """

    # The end of the message that refuses `compile(loss=...)`, after the class name.
    loss_hint = "computes its own losses; call `compile()` without `loss`."
    # Why the classifier must be built, when there is more to say than that it must be.
    unbuilt_classifier_reason = None

    def __init__(self, classifier, **kwargs):
        super().__init__(**kwargs)
        self._check_classifier(classifier)
        self.classifier = classifier
        self.num_classes = int(classifier.output_shape[-1])
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy_tracker = keras.metrics.SparseCategoricalAccuracy(name="accuracy")

    def _check_classifier(self, classifier):
        check_classifier(classifier, type(self).__name__, self.unbuilt_classifier_reason)
        check_created_in_scope(classifier)

    @property
    def training_trackers(self):
        """The metrics `train_step` reports besides `loss`, in the order of its logs."""
        return []

    @property
    def metrics(self):
        return [self.loss_tracker, *self.training_trackers, self.accuracy_tracker]

    # Configuration

    def compile(self, optimizer=None, *, loss=None, metrics=None, **kwargs):
        """Configures the model for training.

        Args:
            optimizer: the classifier's optimizer. Defaults to the authors' SGD (1e-2,
                momentum 0.9, coupled weight decay 1e-4), unless the class says otherwise.
            loss: must be `None`: the model computes its own losses.
            metrics: must be `None`: the model reports its own metrics.
            **kwargs: arguments of `keras.Model.compile` (`jit_compile`,
                `steps_per_execution`, `run_eagerly`, ...). Under a `tf.distribute` strategy
                Keras compiles no step with XLA: `jit_compile=True` then warns and proceeds
                with `jit_compile=False`.
        """
        self._check_compile_arguments(loss, metrics)
        kwargs = self._take_step_options(kwargs)
        if kwargs.get("jit_compile") is True and (
            self._distribute_strategy is not None or tf.distribute.has_strategy()
        ):
            warnings.warn(
                "`jit_compile=True` was requested under a `tf.distribute` strategy, but Keras "
                "does not compile steps with XLA under a distribution strategy. Proceeding "
                "with `jit_compile=False`. For XLA, train on one device without a strategy.",
                stacklevel=2,
            )
            kwargs["jit_compile"] = False
        optimizer = keras.optimizers.get(optimizer or self._default_optimizer())
        super().compile(optimizer=optimizer, **kwargs)
        if self.jit_compile:
            self._check_jit_compile()
        # Only the classifier's variables: Keras would otherwise build it on all the model's.
        # Built now, so that a warm-up optimizer's state can be copied in, or a saved one loaded.
        if not self.optimizer.built:
            self.optimizer.build(self.classifier.trainable_variables)

    def _check_compile_arguments(self, loss, metrics):
        name = type(self).__name__
        if loss is not None:
            raise ValueError(
                f"Invalid value for argument `loss`. Received: loss={loss!r}. {name} "
                f"{self.loss_hint}"
            )
        if metrics:
            reported = [self.loss_tracker, *self.training_trackers]
            raise ValueError(
                f"Invalid value for argument `metrics`. Received: metrics={metrics!r}. "
                f"{name} reports {_in_words([tracker.name for tracker in reported])} in training "
                "and `loss` and `accuracy` in evaluation; call `compile()` without `metrics`."
            )

    def _take_step_options(self, compile_kwargs):
        """Applies the subclass's own options of `compile`; returns the rest, for Keras."""
        return compile_kwargs

    def _default_optimizer(self):
        return paper_classifier_optimizer()

    def _check_jit_compile(self):
        """Raises if the step cannot be compiled with XLA; called by `compile` when asked to."""

    def compile_from_config(self, config):
        # Keras skips an overridden `compile` on load; call it, optimizer included.
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)

    # Keras plumbing

    def call(self, inputs, training=None):
        return self.classifier(inputs, training=training)

    def make_train_function(self, force=False):
        if self.train_function is not None and not force:
            return self.train_function
        super().make_train_function(force=True)
        if self.jit_compile and not self.run_eagerly:
            self.train_function = keras_compat.call_xla_step_directly(self, self.train_function)
        return self.train_function

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # The model builds everything in __init__ and compile (keras_compat).
        if keras_compat.needs_symbolic_build(self):
            super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if y is None:
            raise ValueError(
                "`evaluate` and `validation_data` need labelled batches `(x, y)`; "
                "the batch has no labels."
            )
        logits = self.classifier(x, training=False)
        training_batch.check_labels_shape(y, "y")
        y = tf.reshape(tf.cast(y, tf.int32), [-1])
        cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
        self.loss_tracker.update_state(cross_entropy, sample_weight=sample_weight)
        self.accuracy_tracker.update_state(y, logits, sample_weight=sample_weight)
        return self._logs([self.loss_tracker, self.accuracy_tracker])

    def _training_logs(self):
        """`loss` and the `training_trackers`, as `train_step` returns them."""
        return self._logs([self.loss_tracker, *self.training_trackers])

    def _logs(self, trackers):
        return keras_compat.step_logs(
            {tracker.name: distribute.result_across_replicas(tracker) for tracker in trackers}
        )


class MetaTrainer(ClassifierTrainer):
    """A `ClassifierTrainer` whose step meta-learns through a virtual step, and may skip it.

    The step refuses to apply an update when a label is out of range or a loss or
    meta-gradient is not finite, and counts it in `invalid_label_steps` or
    `non_finite_steps`; `fit` and `train_on_batch` then stop with an error that says why.
    The classifier must not compute in float16: the meta-gradient underflows there. The
    classifier's random-generator states (dropout seeds) are saved with the model, so that
    a reloaded model draws the same masks.

    Args:
        classifier: as `ClassifierTrainer` takes it.
        **kwargs: arguments of `keras.Model` (`name`, ...).
    """

    # What stops learning when the meta-gradient underflows, for the float16 message.
    meta_learned_part = "meta-learned network"

    def __init__(self, classifier, **kwargs):
        super().__init__(classifier, **kwargs)
        # Count skipped steps; `fit` stops on the first one with an error that says why.
        self.invalid_label_steps = keras.metrics.Sum(name="invalid_label_steps")
        self.non_finite_steps = keras.metrics.Sum(name="non_finite_steps")

    def _check_classifier(self, classifier):
        super()._check_classifier(classifier)
        float16 = [
            layer.name for layer in classifier._flatten_layers() if layer.compute_dtype == "float16"
        ]
        if float16:
            raise ValueError(
                f"The classifier computes in float16 (layers {', '.join(float16[:3])}...), as "
                f"under the `mixed_float16` policy. {type(self).__name__} does not support it: "
                "the virtual step's gradient and the meta-gradient's second-order term, of "
                "order 1/(B·C), underflow to exactly 0 in float16 without loss scaling, and "
                f"the {self.meta_learned_part} would silently stop learning. Use "
                '`keras.mixed_precision.set_dtype_policy("mixed_bfloat16")`, which keeps '
                "float32's range, or float32."
            )

    @property
    def metrics(self):
        return [*super().metrics, self.invalid_label_steps, self.non_finite_steps]

    def fit(self, *args, callbacks=None, **kwargs):
        callbacks = [*(callbacks or []), callbacks_lib.StopOnSkippedStep()]
        return super().fit(*args, callbacks=callbacks, **kwargs)

    def train_on_batch(self, *args, **kwargs):
        logs = super().train_on_batch(*args, **kwargs)
        callbacks_lib.raise_if_a_step_was_skipped(self, "train_on_batch")
        return logs

    def save_own_variables(self, store):
        # Keras does not save random-generator states; dropout needs them to resume exactly.
        super().save_own_variables(store)
        random_state.save_random_states(self.classifier, store)

    def load_own_variables(self, store):
        # Not strict: a file saved without the states still loads, with fresh ones.
        random_state.load_random_states(self.classifier, store, strict=False)

    # Training

    def _step_checks(self, batch, tensors):
        """`(labels_ok, step_ok)`: the labels are in range, and also `tensors` are finite,
        on every replica."""
        labels_ok = distribute.on_all_replicas(
            training_batch.labels_in_range(batch, self.num_classes)
        )
        step_ok = tf.logical_and(labels_ok, distribute.on_all_replicas(all_finite(tensors)))
        return labels_ok, step_ok

    def _update_classifier(self, grads, new_state):
        self.optimizer.apply(grads, self.classifier.trainable_variables)
        # Under a strategy each replica keeps its own BN statistics, as Keras' layers do
        for variable, value in zip(self.classifier.non_trainable_variables, new_state):
            variable.assign(value)

    def _count_skipped_steps(self, labels_ok, step_ok):
        # Once per step, not once per replica: the flags are the same on every replica.
        self.invalid_label_steps.update_state(distribute.count_once(tf.logical_not(labels_ok)))
        self.non_finite_steps.update_state(
            distribute.count_once(tf.logical_and(labels_ok, tf.logical_not(step_ok)))
        )


def _in_words(names):
    quoted = [f"`{name}`" for name in names]
    return " and ".join(filter(None, [", ".join(quoted[:-1]), quoted[-1]]))


def check_classifier(classifier, owner, unbuilt_reason=None):
    """Checks that `classifier` is a built `keras.Model` that outputs `(batch, C)` logits.

    Args:
        classifier: the model to check.
        owner: str, what needs the logits, for the messages (`"MetaLabelNet"`).
        unbuilt_reason: str, why the classifier must be built, for the message. Defaults to
            `None`, no reason given.

    Raises:
        TypeError: if `classifier` is not a `keras.Model`.
        ValueError: if it is not built, its output is not of rank 2, or its last layer
            applies a softmax or a sigmoid.
    """
    if not isinstance(classifier, keras.Model):
        raise TypeError(
            f"Invalid type for argument `classifier`. Received: {type(classifier).__name__}. "
            "Expected a `keras.Model` that outputs logits."
        )
    if not classifier.built:
        build = f"{unbuilt_reason}: build" if unbuilt_reason else "Build"
        raise ValueError(
            f"The classifier {classifier.name!r} is not built. {build} it beforehand by "
            "calling it on a batch of data, or give it a `keras.Input`."
        )
    output_shape = classifier.output_shape
    if not (isinstance(output_shape, tuple) and len(output_shape) == 2):
        raise ValueError(
            f"The classifier must output logits of shape (batch, classes). Received output "
            f"shape {output_shape}."
        )
    last = classifier.layers[-1]
    if isinstance(last, keras.layers.Softmax) or getattr(last, "activation", None) in (
        keras.activations.softmax,
        keras.activations.sigmoid,
    ):
        raise ValueError(
            f"The classifier's last layer {last.name!r} applies a softmax (or sigmoid): it "
            f"outputs probabilities, but {owner} needs logits. Remove the activation "
            '(`Dense(num_classes)` without `activation="softmax"`); apply the softmax at '
            "prediction time."
        )


def check_created_in_scope(model):
    """Under a strategy, raises if the model's variables are not distributed ones."""
    if not tf.distribute.has_strategy():
        return
    strategy = tf.distribute.get_strategy()
    for variable in model.weights:
        if not strategy.extended.variable_created_in_scope(variable.value):
            raise ValueError(
                f"The classifier {model.name!r} was created outside `strategy.scope()`: its "
                f"variable {variable.path!r} is not distributed. Create the classifier inside "
                "the scope, or copy it there: `classifier = keras.models.clone_model(warm)` "
                "then `classifier.set_weights(warm.get_weights())`."
            )


def built_optimizer(optimizer, variables):
    """`keras.optimizers.get(optimizer)`, built on `variables` unless it already is.

    Built at once, so that its state exists when a saved model is loaded.
    """
    optimizer = keras.optimizers.get(optimizer)
    if not optimizer.built:
        optimizer.build(variables)
    return optimizer


def serialize_model(model):
    """`model`'s Keras config, without the compilation of its own (a warm-up's)."""
    config = keras.saving.serialize_keras_object(model)
    # The warm-up compilation is not part of the trainer's state.
    config.pop("compile_config", None)
    return config


def all_finite(tensors):
    """A boolean tensor: every value of every tensor is finite."""
    return tf.reduce_all(tf.stack([tf.reduce_all(tf.math.is_finite(t)) for t in tensors]))
