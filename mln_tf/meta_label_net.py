"""MetaLabelNet: a classifier trained on soft labels that a meta-learned generator produces.

Notation (see ALGORITHM.md of the project): the classifier f_θ outputs logits over C classes;
the frozen feature extractor h is a copy of the warmed-up classifier cut at its penultimate
layer; the label generator g_φ = softmax(W·h(x) + b) produces soft labels ŷ; (x, ỹ) is a noisy
batch and (x_m, y_m) a clean meta batch.
"""

import math
import warnings

import keras
import numpy as np
import tensorflow as tf

from mln_tf import distribute, keras_compat, losses

# The authors' final code steps the virtual classifier by the full gradient (`param - grad`).
DEFAULT_VIRTUAL_LR = 1.0
DEFAULT_ENTROPY_WEIGHT = 1.0
# "all": the virtual step uses the global batch's gradient, all-reduced across replicas.
# "local": each replica steps on its own shard only (an approximation; one all-reduce less).
VIRTUAL_STEPS = ("all", "local")
DEFAULT_VIRTUAL_STEP = "all"
# How the second-order term of the meta-gradient is computed; both are exact.
# "nested_tapes": the reference, a reverse-mode derivative of the inner gradient. It reuses
# the noisy batch's forward pass, and was the faster on the CPU (docs/performance.md).
# "forward_mode": one Jacobian-vector product of the classifier's probabilities, which
# recomputes that forward pass unless XLA merges it with the first.
META_GRADIENTS = ("nested_tapes", "forward_mode")
DEFAULT_META_GRADIENT = "nested_tapes"
# Which weights the virtual step moves: "all" is exact; "head" moves only the last
# `head_layers` layers that have weights, a cheaper approximation of the meta-gradient.
VIRTUAL_SCOPES = ("all", "head")
DEFAULT_VIRTUAL_SCOPE = "all"
DEFAULT_HEAD_LAYERS = 1
# How the generator's weights start: "random" (the authors' code) or "classifier_head", the
# warmed-up classifier's last layer, so that the first soft labels are its predictions.
GENERATOR_INITS = ("random", "classifier_head")
DEFAULT_GENERATOR_INIT = "random"
# "mean": L_c and L_e averaged over B×C (the authors' code, C times smaller than ordinary
# cross-entropy); "sum_over_classes": summed over classes, averaged over the batch.
LOSS_SCALES = ("mean", "sum_over_classes")
DEFAULT_LOSS_SCALE = "mean"
# The classifier's loss on the soft labels: "reverse_kl", KL(p‖ŷ) as in the authors' code, or
# "cross_entropy", −Σ ŷ log p. Both the virtual step and the real update use it.
LABEL_LOSSES = {
    "reverse_kl": losses.soft_label_loss,
    "cross_entropy": losses.soft_label_cross_entropy,
}
DEFAULT_LABEL_LOSS = "reverse_kl"
# MetaLabelNet's own defaults are the authors' algorithm. These options measured better
# across four Fashion-MNIST noise settings (docs/accuracy.md); the main job's `TrainConfig`
# and the Keras Tuner hypermodel start from them.
RECOMMENDED_OPTIONS = dict(
    entropy_weight=0.0,
    virtual_scope="head",
    label_input=True,
    generator_init="classifier_head",
    label_trust=5.0,
    loss_scale="sum_over_classes",
    label_loss="cross_entropy",
)
MAX_POOLING_LAYERS = (
    keras.layers.MaxPooling1D,
    keras.layers.MaxPooling2D,
    keras.layers.MaxPooling3D,
)

BATCH_STRUCTURE = (
    "Expected each training batch to be `((x, y), (x_meta, y_meta))`, "
    "`((x, y, features), (x_meta, y_meta))` with cached frozen features, or "
    "`(x, (x_meta, y_meta))` for unlabeled noisy data; `mln_tf.data.with_meta(...)` "
    "builds such a dataset."
)


class NonFiniteLossError(FloatingPointError):
    """Raised when a training step produces a NaN or infinite loss.

    The step that produced it is not applied: the weights keep their last finite values.
    """


def paper_classifier_optimizer(learning_rate=1e-2):
    """The classifier optimizer of the authors' code: SGD, momentum 0.9, weight decay 1e-4.

    Args:
        learning_rate: float or `keras.optimizers.schedules.LearningRateSchedule`.
            Defaults to 1e-2.

    Returns:
        A `keras.optimizers.SGD`.
    """
    return keras.optimizers.SGD(learning_rate, momentum=0.9, weight_decay=1e-4)


def paper_generator_optimizer(learning_rate=1e-3):
    """The label generator's optimizer of the authors' code: Adam, weight decay 1e-4.

    Args:
        learning_rate: float, β in the paper: 1e-2 for CIFAR-10, 1e-3 otherwise.
            Defaults to 1e-3.

    Returns:
        A `keras.optimizers.Adam`.
    """
    return keras.optimizers.Adam(learning_rate, weight_decay=1e-4)


@keras.saving.register_keras_serializable(package="mln_tf")
class MetaLabelNet(keras.Model):
    """Trains a classifier on soft labels that a label generator meta-learns on clean data.

    The classifier must already be warmed up on the noisy labels (stage 1, plain Keras).
    `MetaLabelNet` freezes a copy of it, cut at `feature_layer`, as the feature extractor,
    and puts a single-layer softmax label generator on top. Each `fit` step (stage 2) then:

    1. computes the soft labels ŷ = g_φ(h(x)) of the noisy batch;
    2. takes a virtual SGD step θ̂ = θ − α·∇_θ L_c(θ; ŷ), kept differentiable in φ;
    3. measures the meta loss L_m = CE(f_θ̂(x_m), y_m) on the clean meta batch;
    4. updates φ with `generator_optimizer` on ∇_φ L_m (a second-order gradient);
    5. recomputes ŷ' = g_φ(h(x)) as a constant;
    6. updates θ with the main optimizer on L_c(θ; ŷ') + w·L_e(θ), reusing the forward
       pass of step 2.

    The given noisy label is not used by the step; it only feeds the `label_agreement`
    metric. The virtual pass never moves the real batch-normalisation statistics; the real
    pass updates them once per batch.

    Formula:

    ```
    L_c(θ; ŷ) = mean_{i,j} p_ij (log p_ij − log(ŷ_ij + 1e-10)),   p = softmax(f_θ(x))
    L_e(θ)    = − mean_{i,j} p_ij log p_ij
    θ̂(φ)     = θ − α ∇_θ L_c(θ; g_φ(h(x)))
    φ        ← generator_optimizer(φ, ∇_φ CE(f_θ̂(φ)(x_m), y_m))
    θ        ← optimizer(θ, ∇_θ [L_c(θ; stop_gradient(g_φ(h(x)))) + w L_e(θ)])
    ```

    Options beyond the paper (its behaviour is the default of each):

    - `label_input=True`: the generator also sees the given label, ŷ = softmax(W·h(x) +
      V·onehot(ỹ) + b), and the meta-gradient learns V, how far to trust each given label
      (V starts at `label_trust`·I). The authors' generator ignores ỹ, so under benign
      noise it can only reproduce the warm-up network's own predictions.
    - `generator_init="classifier_head"`: W and b start as the warmed-up classifier's last
      layer, so the first soft labels are its predictions rather than random ones.
    - `loss_scale="sum_over_classes"`: L_c and L_e are summed over classes (C times the
      mean over B×C), the scale of ordinary cross-entropy, for the classifier's update and
      the virtual step alike.
    - `label_loss="cross_entropy"`: L_c = −mean ŷ·log p instead of KL(p‖ŷ). The reverse KL
      with the entropy term is −Σ p log ŷ, whose gradient vanishes where p is already
      confident, right or wrong; cross-entropy's is p − ŷ.

    The meta-gradient's second-order term, with `meta_gradient="forward_mode"`: L_c
    depends on ŷ only through −mean(p · log(ŷ + ε)), so the derivative of the meta loss
    with respect to the soft labels is one Jacobian-vector product of the classifier's
    probabilities p at θ along v, computed in forward mode, instead of a reverse-mode
    derivative of the inner gradient (`meta_gradient="nested_tapes"`, the default and
    the reference). Both are exact. The nested tapes differentiate only through ŷ, so
    their second backward is the same tangent pass on the activations already recorded;
    the forward accumulator must run the forward pass again (1F), which made it the
    slower one on the CPU without XLA, and as fast with XLA.

    Formula:

    ```
    v           = ∇_θ̂ L_m(θ̂)                                   (on the meta batch)
    J_p v       = d/dε p(θ + ε v) at ε = 0                      (ForwardAccumulator)
    ∂L_m/∂ŷ_ij  = α (J_p v)_ij / ((ŷ_ij + 1e-10) · B · C)
    ∇_φ L_m     = (∂ŷ/∂φ)ᵀ ∂L_m/∂ŷ                              (the generator's backward)
    ```

    With `label_loss="cross_entropy"` L_c depends on ŷ through −mean(ŷ · log p) instead,
    and ∂L_m/∂ŷ_ij = α (J_log p v)_ij / (B · C); with `loss_scale="sum_over_classes"`,
    B replaces B · C in both.

    With `virtual_scope="head"`, θ̂ moves only the last layer(s) with weights, θ̂ =
    (θ_body, θ_head − α ∇_θ_head L_c), and v and the product J_p v are taken along θ_head
    only: an approximation of the meta-gradient that skips the body's backward passes. The
    classifier's own update still trains every weight.

    Training data: each element is `((x, y), (x_meta, y_meta))`, with integer labels and
    `y = -1` for unlabeled examples, or `(x, (x_meta, y_meta))` for a batch without labels.
    `mln_tf.data.with_meta` builds it. `evaluate` and `validation_data` take ordinary
    `(x, y)` batches and report the classifier's cross-entropy (`loss`) and `accuracy`.

    Distribution: create the classifier, the model and its optimizers, and call `compile`,
    inside a `tf.distribute.Strategy` scope (`MirroredStrategy`, `MultiWorkerMirroredStrategy`;
    `mln_tf.distribute.build_strategy` builds one), then call `fit` as usual. Each replica's
    losses count for 1/N of the global-batch mean, as Keras scales them; with
    `virtual_step="all"` the inner gradient is all-reduced before θ̂ is formed, so N replicas
    compute the single-device step on the same global batch. Keras compiles no step with XLA
    under a strategy.

    Args:
        classifier: a built functional or Sequential `keras.Model` that outputs logits of
            shape `(batch, C)`, warmed up on the noisy labels.
        feature_layer: str, the name of the layer whose output is the feature vector.
            Defaults to `None`, the input of the classifier's last layer.
        virtual_lr: float, α, the virtual step size. Usually set through `compile`.
            Defaults to 1.0, as in the authors' final code.
        entropy_weight: float, w, the weight of the entropy loss. Usually set through
            `compile`. Defaults to 1.0.
        virtual_step: `"all"` or `"local"`, the batch of the virtual step under a
            `tf.distribute` strategy. `"all"` takes the gradient of the global batch (an
            all-reduce across replicas, through which the meta-gradient flows back).
            `"local"` is an approximation: each replica steps on its own shard and skips
            that all-reduce. Without a strategy both are the same. Usually set through
            `compile`. Defaults to `"all"`.
        meta_gradient: `"forward_mode"` or `"nested_tapes"`, how the meta-gradient's
            second-order term is computed; both are exact (see the formula above).
            `"nested_tapes"` is the reference implementation. Under a strategy with
            several replicas and a synchronised `BatchNormalization` in the virtual step,
            `"forward_mode"` warns and takes the nested tapes: forward-mode derivatives do
            not cross replicas. Usually set through `compile`. Defaults to
            `"nested_tapes"`, the faster on the CPU.
        virtual_scope: `"all"` or `"head"`, the weights the virtual step moves. `"all"` is
            the exact meta-gradient; `"head"` moves only the last `head_layers` layers that
            have trainable weights, a cheaper approximation. Usually set through
            `compile`. Defaults to `"all"`.
        head_layers: int, the number of trailing layers with trainable weights that
            `virtual_scope="head"` moves. Defaults to 1, the last dense layer.
        label_input: bool, whether the generator also takes the one-hot given label.
            Defaults to `False`, the authors' generator.
        generator_init: `"random"` or `"classifier_head"`, how the generator's feature
            weights start. `"classifier_head"` needs the classifier's last layer to be a
            `Dense` layer on the feature layer's output. Defaults to `"random"`.
        label_trust: float, the initial logit bonus of the given label, V = label_trust·I
            (with `label_input=True` only). Defaults to 0.0.
        loss_scale: `"mean"` or `"sum_over_classes"`, the reduction of L_c and L_e.
            Defaults to `"mean"`, the authors' code.
        label_loss: `"reverse_kl"` or `"cross_entropy"`, L_c. Defaults to `"reverse_kl"`,
            the authors' code.
        generator_optimizer: the label generator's `keras.optimizers.Optimizer`. Usually
            set through `compile`. Defaults to Adam(1e-3, weight_decay=1e-4).
        feature_extractor: a `keras.Model` mapping images to features, to use instead of
            cutting a copy of `classifier`. Defaults to `None`.
        label_generator: a `keras.Model` mapping features to soft labels, to use instead of
            a fresh single-layer generator. Defaults to `None`.
        **kwargs: passed to `keras.Model` (`name`, ...).

    Example:

    >>> classifier = mln_tf.classifiers.fashion_cnn(num_classes=10)
    >>> model = MetaLabelNet(classifier, feature_layer="features")
    >>> model.compile(optimizer=keras.optimizers.SGD(1e-2, momentum=0.9),
    ...               generator_optimizer=keras.optimizers.Adam(1e-3))
    >>> model.label_generator.output_shape
    (None, 10)
    """

    def __init__(
        self,
        classifier,
        feature_layer=None,
        *,
        virtual_lr=DEFAULT_VIRTUAL_LR,
        entropy_weight=DEFAULT_ENTROPY_WEIGHT,
        virtual_step=DEFAULT_VIRTUAL_STEP,
        meta_gradient=DEFAULT_META_GRADIENT,
        virtual_scope=DEFAULT_VIRTUAL_SCOPE,
        head_layers=DEFAULT_HEAD_LAYERS,
        label_input=False,
        generator_init=DEFAULT_GENERATOR_INIT,
        label_trust=0.0,
        loss_scale=DEFAULT_LOSS_SCALE,
        label_loss=DEFAULT_LABEL_LOSS,
        generator_optimizer=None,
        feature_extractor=None,
        label_generator=None,
        **kwargs,
    ):
        kwargs.setdefault("name", "meta_label_net")
        super().__init__(**kwargs)
        _check_classifier(classifier)
        _check_created_in_scope(classifier)
        self.classifier = classifier
        self.feature_layer = feature_layer
        self.num_classes = int(classifier.output_shape[-1])
        self.virtual_lr = _check_virtual_lr(virtual_lr)
        self.entropy_weight = _check_entropy_weight(entropy_weight)
        self.virtual_step = _check_virtual_step(virtual_step)
        self.meta_gradient = _check_meta_gradient(meta_gradient)
        self.virtual_scope = _check_virtual_scope(virtual_scope)
        self.head_layers = _check_head_layers(head_layers, classifier)
        self.label_input = bool(label_input)
        self.generator_init = _check_choice("generator_init", generator_init, GENERATOR_INITS)
        self.label_trust = float(label_trust)
        self.loss_scale = _check_choice("loss_scale", loss_scale, LOSS_SCALES)
        self.label_loss = _check_choice("label_loss", label_loss, tuple(LABEL_LOSSES))

        if feature_extractor is None:
            feature_extractor = _freeze_feature_extractor(classifier, feature_layer)
        feature_extractor.trainable = False
        self.feature_extractor = feature_extractor

        feature_shape = feature_extractor.output_shape
        if len(feature_shape) != 2:
            raise ValueError(
                f"The feature layer {feature_layer!r} outputs shape {feature_shape}, but the "
                "label generator needs a flat feature vector of shape (batch, features). "
                "Choose a dense or global-pooling layer as `feature_layer`."
            )
        if label_generator is None:
            self.label_generator = _build_label_generator(
                feature_shape[-1], self.num_classes, self.label_input
            )
            self.initialize_label_generator()
        else:
            self.label_generator = label_generator

        self.generator_optimizer = keras.optimizers.get(
            generator_optimizer or paper_generator_optimizer()
        )
        # Built now so that its state exists when a saved model is loaded.
        if not self.generator_optimizer.built:
            self.generator_optimizer.build(self.label_generator.trainable_variables)

        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.meta_loss_tracker = keras.metrics.Mean(name="meta_loss")
        self.agreement_tracker = keras.metrics.Mean(name="label_agreement")
        self.accuracy_tracker = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        # Count skipped steps; `fit` stops on the first one with an error that says why.
        self.invalid_label_steps = keras.metrics.Sum(name="invalid_label_steps")
        self.non_finite_steps = keras.metrics.Sum(name="non_finite_steps")
        self.built = True

    # Configuration

    def compile(
        self,
        optimizer=None,
        generator_optimizer=None,
        virtual_lr=None,
        entropy_weight=None,
        virtual_step=None,
        meta_gradient=None,
        virtual_scope=None,
        *,
        loss=None,
        metrics=None,
        **kwargs,
    ):
        """Configures MetaLabelNet for training.

        Args:
            optimizer: the classifier's optimizer. Defaults to SGD(1e-2, momentum 0.9,
                weight_decay 1e-4), the authors' setting.
            generator_optimizer: the label generator's optimizer. Defaults to keeping the
                current one (Adam(1e-3, weight_decay=1e-4) unless set before).
            virtual_lr: float, α, the virtual step size. Defaults to keeping the current
                value (1.0 unless set before).
            entropy_weight: float, w, the entropy loss weight. Defaults to keeping the
                current value (1.0 unless set before).
            virtual_step: `"all"` or `"local"`, the virtual step's batch under a
                `tf.distribute` strategy (see the class docstring). Defaults to keeping the
                current value (`"all"` unless set before).
            meta_gradient: `"forward_mode"` or `"nested_tapes"` (see the class
                docstring). Defaults to keeping the current value (`"nested_tapes"` unless
                set before).
            virtual_scope: `"all"` or `"head"` (see the class docstring). Defaults to
                keeping the current value (`"all"` unless set before).
            loss: must be `None`: MetaLabelNet computes its own losses.
            metrics: must be `None`: MetaLabelNet reports its own metrics.
            **kwargs: passed to `keras.Model.compile` (`jit_compile`, `steps_per_execution`,
                `run_eagerly`, ...). `jit_compile` defaults to Keras' `"auto"`. Under a
                `tf.distribute` strategy Keras compiles no step with XLA: `jit_compile=True`
                then warns and proceeds with `jit_compile=False`. XLA compiles the
                second derivative of max-pooling in float32 only: with a float64 or
                mixed-precision classifier whose max-pooling lies in the virtual step,
                `jit_compile=True` raises a `ValueError`.
        """
        if loss is not None:
            raise ValueError(
                f"Invalid value for argument `loss`. Received: loss={loss!r}. MetaLabelNet "
                "computes its own losses; call `compile()` without `loss`."
            )
        if metrics:
            raise ValueError(
                f"Invalid value for argument `metrics`. Received: metrics={metrics!r}. "
                "MetaLabelNet reports `loss`, `meta_loss` and `label_agreement` in training "
                "and `loss` and `accuracy` in evaluation; call `compile()` without `metrics`."
            )
        if virtual_lr is not None:
            self.virtual_lr = _check_virtual_lr(virtual_lr)
        if entropy_weight is not None:
            self.entropy_weight = _check_entropy_weight(entropy_weight)
        if virtual_step is not None:
            self.virtual_step = _check_virtual_step(virtual_step)
        if meta_gradient is not None:
            self.meta_gradient = _check_meta_gradient(meta_gradient)
        if virtual_scope is not None:
            self.virtual_scope = _check_virtual_scope(virtual_scope)
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
        if generator_optimizer is not None:
            generator_optimizer = keras.optimizers.get(generator_optimizer)
            if not generator_optimizer.built:
                generator_optimizer.build(self.label_generator.trainable_variables)
            self.generator_optimizer = generator_optimizer
        optimizer = keras.optimizers.get(optimizer or paper_classifier_optimizer())
        super().compile(optimizer=optimizer, **kwargs)
        if self.jit_compile:
            self._check_xla_max_pooling()
        # Only the classifier's variables: Keras would otherwise build it on the generator's too.
        if not self.optimizer.built:
            self.optimizer.build(self.classifier.trainable_variables)

    def compile_from_config(self, config):
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "classifier": _serialize_model(self.classifier),
                "feature_layer": self.feature_layer,
                "virtual_lr": self.virtual_lr,
                "entropy_weight": self.entropy_weight,
                "virtual_step": self.virtual_step,
                "meta_gradient": self.meta_gradient,
                "virtual_scope": self.virtual_scope,
                "head_layers": self.head_layers,
                "label_input": self.label_input,
                "generator_init": self.generator_init,
                "label_trust": self.label_trust,
                "loss_scale": self.loss_scale,
                "label_loss": self.label_loss,
                "generator_optimizer": keras.saving.serialize_keras_object(
                    self.generator_optimizer
                ),
                "feature_extractor": _serialize_model(self.feature_extractor),
                "label_generator": _serialize_model(self.label_generator),
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("classifier", "feature_extractor", "label_generator", "generator_optimizer"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)

    def save_own_variables(self, store):
        # Keras does not save random-generator states; dropout needs them to resume exactly.
        super().save_own_variables(store)
        for index, state in enumerate(self._random_states()):
            store[f"random_state_{index}"] = state.numpy()

    def load_own_variables(self, store):
        for index, state in enumerate(self._random_states()):
            key = f"random_state_{index}"
            if key in store:
                state.assign(store[key])

    def _random_states(self):
        return random_state_variables(self.classifier)

    @property
    def metrics(self):
        return [
            self.loss_tracker,
            self.meta_loss_tracker,
            self.agreement_tracker,
            self.accuracy_tracker,
            self.invalid_label_steps,
            self.non_finite_steps,
        ]

    def call(self, inputs, training=None):
        return self.classifier(inputs, training=training)

    def fit(self, *args, callbacks=None, **kwargs):
        callbacks = [*(callbacks or []), _StopOnInvalidStep()]
        return super().fit(*args, callbacks=callbacks, **kwargs)

    def make_train_function(self, force=False):
        if self.train_function is not None and not force:
            return self.train_function
        super().make_train_function(force=True)
        if self.jit_compile and not self.run_eagerly:
            # Keras calls the XLA-compiled step from inside another tf.function; for this
            # step that nesting is about 20 times slower on the CPU than calling it from
            # Python. Handing Keras a list of batches makes it take the direct path.
            nested_call = self.train_function

            def train_function(iterator):
                if isinstance(iterator, tf.data.Iterator):
                    batches = [batch for _, batch in zip(range(self.steps_per_execution), iterator)]
                    if not batches:
                        raise StopIteration
                    return nested_call(batches)
                return nested_call(iterator)

            self.train_function = train_function
        return self.train_function

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Under a strategy, Keras 3.15 reduces the first batch across replicas here only to
        # build what is unbuilt; under MultiWorkerMirroredStrategy that reduction fails
        # (keras-team/keras#20585). MetaLabelNet builds everything in __init__ and compile.
        layers_built = all(layer.built for layer in self._flatten_layers())
        if layers_built and self.optimizer is not None and self.optimizer.built:
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def refresh_feature_extractor(self):
        """Copies the classifier's current weights into the frozen feature extractor.

        The extractor is frozen at the end of warm-up. Call this after training the
        classifier further (for example a warm-up run on `model.classifier`) to cut it
        again from the current weights. Features cached with
        `mln_tf.data.cache_features` are then stale: cache them again.

        Raises:
            ValueError: if the extractor was passed in as `feature_extractor=` rather than
                cut from the classifier.
        """
        names = {layer.name for layer in self.classifier.layers}
        for layer in self.feature_extractor.layers:
            if layer.weights and layer.name not in names:
                raise ValueError(
                    f"The feature extractor's layer {layer.name!r} is not a layer of the "
                    "classifier: only an extractor cut from the classifier can be refreshed."
                )
            if layer.weights:
                layer.set_weights(self.classifier.get_layer(layer.name).get_weights())

    def initialize_label_generator(self):
        """Sets the generator's weights as `generator_init` and `label_trust` say, now.

        With `generator_init="classifier_head"`, W and b are copied from the classifier's
        last layer as it is now: call this after warming up `model.classifier` when the
        model was built before the warm-up (the Keras Tuner hypermodel does). With
        `label_input`, V is set to `label_trust`·I. A random W and b are left as they are.

        Raises:
            ValueError: with `"classifier_head"`, if the classifier's last layer is not a
                linear Dense layer from the features to the classes.
        """
        head = self.classifier.layers[-1] if self.generator_init == "classifier_head" else None
        num_features = self.feature_extractor.output_shape[-1]
        _initialize_label_generator(
            self.label_generator, num_features, head, self.label_input, self.label_trust
        )

    def generator_inputs(self, features, labels=None):
        """The label generator's input: the features, and with `label_input` the one-hot
        given label (a zero row where the label is -1, unlabeled, or absent)."""
        if not self.label_input:
            return features
        if labels is None:
            zeros = tf.zeros([tf.shape(features)[0], self.num_classes], features.dtype)
            return tf.concat([features, zeros], axis=-1)
        one_hot = tf.one_hot(tf.reshape(tf.cast(labels, tf.int32), [-1]), self.num_classes)
        return tf.concat([features, tf.cast(one_hot, features.dtype)], axis=-1)

    def predict_soft_labels(self, images, labels=None, batch_size=512):
        """The generator's soft labels ŷ for images (and their given labels), as numpy.

        Args:
            images: array of images, shaped as the classifier's input.
            labels: int array of the given (noisy) labels; needed with `label_input=True`.
            batch_size: int. Defaults to 512.

        Returns:
            A float array of shape `(N, C)`.
        """
        if self.label_input and labels is None:
            raise ValueError(
                "This MetaLabelNet's generator takes the given labels (`label_input=True`): "
                "pass `labels=` to `predict_soft_labels`."
            )
        features = self.feature_extractor.predict(images, batch_size=batch_size, verbose=0)
        inputs = self.generator_inputs(tf.convert_to_tensor(features), labels)
        return self.label_generator.predict(inputs, batch_size=batch_size, verbose=0)

    # Training

    def _soft_label_loss(self, logits, soft_labels):
        """L_c, the configured loss at the configured scale."""
        sum_over_classes = self.loss_scale == "sum_over_classes"
        return LABEL_LOSSES[self.label_loss](logits, soft_labels, sum_over_classes)

    def _entropy_loss(self, logits):
        return losses.entropy_loss(logits, self.loss_scale == "sum_over_classes")

    def _virtual_indices(self):
        """Indices into the classifier's trainable variables that the virtual step moves."""
        trainable = self.classifier.trainable_variables
        if self.virtual_scope == "all":
            return list(range(len(trainable)))
        head = {id(v) for layer in self._head_layers() for v in layer.trainable_weights}
        return [index for index, variable in enumerate(trainable) if id(variable) in head]

    def _head_layers(self):
        weighted = [layer for layer in self.classifier.layers if layer.trainable_weights]
        return weighted[-self.head_layers :]

    def _virtual_path_layers(self):
        """The classifier's layers (nested ones flattened) from the first moved layer on."""
        layers = self.classifier.layers
        if self.virtual_scope == "head":
            layers = layers[layers.index(self._head_layers()[0]) :]
        return [inner for layer in layers for inner in layer._flatten_layers()]

    def _uses_forward_mode(self):
        """Whether this trace takes the forward-mode meta-gradient; warns where it cannot.

        TensorFlow's forward-mode autodiff does not carry tangents across replicas: through
        a synchronised batch normalisation, whose moments are all-reduced, the product J_p v
        would miss the other replicas' terms. There the nested tapes take over.
        """
        if self.meta_gradient != "forward_mode":
            return False
        if distribute.num_replicas() == 1:
            return True
        synchronized = [
            layer.name
            for layer in self._virtual_path_layers()
            if isinstance(layer, keras.layers.BatchNormalization) and layer.synchronized
        ]
        if not synchronized:
            return True
        warnings.warn(
            f'`meta_gradient="forward_mode"` falls back to "nested_tapes" under this '
            f"{distribute.num_replicas()}-replica strategy: the synchronised batch normalisation "
            f"{', '.join(repr(name) for name in synchronized)} all-reduces its moments, "
            "and forward-mode derivatives do not cross replicas. The meta-gradient stays "
            'exact. Pass `meta_gradient="nested_tapes"` to silence this warning.',
            stacklevel=2,
        )
        return False

    def _check_xla_max_pooling(self):
        for layer in self._virtual_path_layers():
            if isinstance(layer, MAX_POOLING_LAYERS) and layer.compute_dtype != "float32":
                raise ValueError(
                    f"Invalid value for argument `jit_compile`. Received: jit_compile=True "
                    f"with the max-pooling layer {layer.name!r} computing in "
                    f"{layer.compute_dtype} inside the virtual step. Expected "
                    "jit_compile=False: XLA compiles the second derivative of max-pooling "
                    "in float32 only. Compile with `jit_compile=False`, build the classifier "
                    'in float32, or use `virtual_scope="head"` so that the virtual step '
                    "stops after the max-pooling."
                )

    def _classifier_logits(self, weights, state, images):
        logits, new_state = self.classifier.stateless_call(weights, state, images, training=True)
        # A mixed-precision classifier's logits; the losses are computed in float32.
        if logits.dtype in (tf.float16, tf.bfloat16):
            logits = tf.cast(logits, "float32")
        return logits, new_state

    def _fast_weights(self, theta, grads, virtual_indices):
        """θ̂ = θ − α·g on the virtual step's variables, θ elsewhere."""
        fast_weights = list(theta)
        for index, grad in zip(virtual_indices, grads):
            fast_weights[index] = theta[index] - self.virtual_lr * grad
        return fast_weights

    def _meta_loss(self, fast_weights, state, x_meta, y_meta):
        """The meta loss at θ̂ and its share scaled for the replicas and the optimizer."""
        meta_logits, _ = self._classifier_logits(fast_weights, state, x_meta)
        meta_loss = losses.meta_loss(y_meta, meta_logits)
        scaled = self.generator_optimizer.scale_loss(distribute.scale_for_replicas(meta_loss))
        return meta_loss, scaled

    def _nested_tapes_meta_step(
        self, theta, state, x, x_meta, y_meta, features, virtual_indices, global_virtual_step
    ):
        """The reference meta-gradient: reverse mode through the inner gradient."""
        virtual_theta = [theta[index] for index in virtual_indices]
        with tf.GradientTape() as meta_tape:
            soft_labels = self.label_generator(features, training=True)
            with tf.GradientTape(persistent=True) as classifier_tape:
                classifier_tape.watch(theta)
                logits, new_state = self._classifier_logits(theta, state, x)
                label_loss = self._soft_label_loss(logits, soft_labels)
                virtual_loss = label_loss
                if global_virtual_step:
                    # This replica's share of the global-batch mean, as Keras scales losses
                    virtual_loss = distribute.scale_for_replicas(label_loss)
            # Virtual step, differentiable with respect to φ through the soft labels
            grads = classifier_tape.gradient(virtual_loss, virtual_theta)
            if global_virtual_step:
                # The global batch's gradient. The gradient of this all-reduce is the
                # all-reduce of the incoming gradient: φ's gradient gathers every replica's
                # meta loss.
                grads = tf.distribute.get_replica_context().all_reduce("sum", grads)
            fast_weights = self._fast_weights(theta, grads, virtual_indices)
            # Meta loss on the clean batch; the virtual pass's BN updates are discarded
            meta_loss, scaled_meta_loss = self._meta_loss(fast_weights, new_state, x_meta, y_meta)
        generator_grads = meta_tape.gradient(
            scaled_meta_loss, self.label_generator.trainable_variables
        )
        return {
            "logits": logits,
            "new_state": new_state,
            "tape": classifier_tape,
            "soft_labels": soft_labels,
            "label_loss": label_loss,
            "meta_loss": meta_loss,
            "generator_grads": generator_grads,
        }

    def _forward_mode_meta_step(
        self, theta, state, x, x_meta, y_meta, features, virtual_indices, global_virtual_step
    ):
        """The meta-gradient through one Jacobian-vector product (see the class formula)."""
        virtual_theta = [theta[index] for index in virtual_indices]
        with tf.GradientTape() as generator_tape:
            soft_labels = self.label_generator(features, training=True)
        with tf.GradientTape(persistent=True) as classifier_tape:
            classifier_tape.watch(theta)
            logits, new_state = self._classifier_logits(theta, state, x)
            label_loss = self._soft_label_loss(logits, tf.stop_gradient(soft_labels))
            virtual_loss = label_loss
            if global_virtual_step:
                # This replica's share of the global-batch mean, as Keras scales losses
                virtual_loss = distribute.scale_for_replicas(label_loss)
        # Virtual step, first order only: φ's gradient comes from the product below
        grads = classifier_tape.gradient(virtual_loss, virtual_theta)
        if global_virtual_step:
            grads = tf.distribute.get_replica_context().all_reduce("sum", grads)
        # Meta loss on the clean batch and v = ∇_θ̂ L_m; the virtual BN updates are discarded
        fast_weights = self._fast_weights(theta, grads, virtual_indices)
        virtual_fast_weights = [fast_weights[index] for index in virtual_indices]
        with tf.GradientTape() as fast_tape:
            fast_tape.watch(virtual_fast_weights)
            meta_loss, scaled_meta_loss = self._meta_loss(fast_weights, new_state, x_meta, y_meta)
        meta_grads = fast_tape.gradient(scaled_meta_loss, virtual_fast_weights)
        if global_virtual_step:
            # θ̂ is shared by the replicas: the meta loss of every replica moves it.
            meta_grads = tf.distribute.get_replica_context().all_reduce("sum", meta_grads)
        # J_p v at θ on the noisy batch: the same forward as above (same state, same
        # dropout masks), which XLA and grappler merge with it; only the tangents are new.
        with tf.autodiff.ForwardAccumulator(virtual_theta, meta_grads) as accumulator:
            jvp_theta = list(theta)
            for position, index in enumerate(virtual_indices):
                jvp_theta[index] = virtual_theta[position]
            jvp_logits, _ = self._classifier_logits(jvp_theta, state, x)
        tangent_logits = accumulator.jvp(jvp_logits, unconnected_gradients="zero")
        probs = tf.nn.softmax(logits, axis=-1)
        tangent_log_probs = tangent_logits - tf.reduce_sum(
            probs * tangent_logits, axis=-1, keepdims=True
        )
        # ∂L_m/∂ŷ = α·(J_p v)/((ŷ + ε)·B·C) for the reverse KL, α·(J_log p v)/(B·C) for
        # cross-entropy; B instead of B·C summed over classes; over N for a replica's share.
        size = tf.cast(tf.size(probs), probs.dtype)
        if self.loss_scale == "sum_over_classes":
            size = tf.cast(tf.shape(probs)[0], probs.dtype)
        if global_virtual_step:
            size = size * distribute.num_replicas()
        if self.label_loss == "cross_entropy":
            soft_label_grads = self.virtual_lr * tangent_log_probs / size
        else:
            soft_labels_in_loss = tf.cast(soft_labels, probs.dtype)
            soft_label_grads = (
                self.virtual_lr
                * probs
                * tangent_log_probs
                / ((soft_labels_in_loss + losses.LOG_EPSILON) * size)
            )
        generator_grads = generator_tape.gradient(
            soft_labels,
            self.label_generator.trainable_variables,
            output_gradients=tf.cast(soft_label_grads, soft_labels.dtype),
        )
        return {
            "logits": logits,
            "new_state": new_state,
            "tape": classifier_tape,
            "soft_labels": soft_labels,
            "label_loss": label_loss,
            "meta_loss": meta_loss,
            "generator_grads": generator_grads,
        }

    def train_step(self, data):
        x, y, features, x_meta, y_meta = self._unpack_batch(data)
        classifier = self.classifier
        trainable = classifier.trainable_variables
        non_trainable = classifier.non_trainable_variables
        theta = [variable.value for variable in trainable]
        state = [variable.value for variable in non_trainable]
        generator_variables = self.label_generator.trainable_variables
        global_virtual_step = distribute.num_replicas() > 1 and self.virtual_step == "all"
        virtual_indices = self._virtual_indices()

        # Frozen features of the noisy batch, unless the batch carries them
        if features is None:
            features = self.feature_extractor(x, training=False)
        else:
            features = tf.cast(features, self.label_generator.compute_dtype)
        features = self.generator_inputs(features, y)

        meta_step = (
            self._forward_mode_meta_step
            if self._uses_forward_mode()
            else self._nested_tapes_meta_step
        )
        result = meta_step(
            theta, state, x, x_meta, y_meta, features, virtual_indices, global_virtual_step
        )
        logits, new_state, classifier_tape = result["logits"], result["new_state"], result["tape"]
        soft_labels, label_loss = result["soft_labels"], result["label_loss"]
        meta_loss, generator_grads = result["meta_loss"], result["generator_grads"]

        labels_ok = distribute.on_all_replicas(self._labels_in_range(y, y_meta))
        step_ok = tf.logical_and(
            labels_ok,
            distribute.on_all_replicas(_all_finite([label_loss, meta_loss, *generator_grads])),
        )

        # Update generator
        def update_generator(grads):
            self.generator_optimizer.apply(grads, generator_variables)

        distribute.run_if(step_ok, update_generator, generator_grads)

        # Update classifier on the new soft labels, reusing the forward pass above
        new_soft_labels = tf.stop_gradient(self.label_generator(features, training=False))
        with tf.GradientTape() as logits_tape:
            logits_tape.watch(logits)
            loss = self._soft_label_loss(logits, new_soft_labels)
            if self.entropy_weight:
                loss = loss + self.entropy_weight * self._entropy_loss(logits)
            scaled_loss = self.optimizer.scale_loss(distribute.scale_for_replicas(loss))
        logits_grads = logits_tape.gradient(scaled_loss, logits)
        classifier_grads = classifier_tape.gradient(logits, theta, output_gradients=logits_grads)
        step_ok = tf.logical_and(step_ok, distribute.on_all_replicas(tf.math.is_finite(loss)))

        def update_classifier(grads, new_state):
            self.optimizer.apply(grads, trainable)
            # Under a strategy each replica keeps its own BN statistics, as Keras' layers do
            for variable, value in zip(non_trainable, new_state):
                variable.assign(value)

        distribute.run_if(step_ok, update_classifier, classifier_grads, new_state)

        self.loss_tracker.update_state(loss)
        self.meta_loss_tracker.update_state(meta_loss)
        if y is not None:
            agrees = tf.cast(
                tf.equal(tf.argmax(soft_labels, -1, output_type=y.dtype), y), "float32"
            )
            self.agreement_tracker.update_state(agrees, sample_weight=tf.cast(y >= 0, "float32"))
        # Once per step, not once per replica: the flags are the same on every replica.
        self.invalid_label_steps.update_state(distribute.count_once(tf.logical_not(labels_ok)))
        self.non_finite_steps.update_state(
            distribute.count_once(tf.logical_and(labels_ok, tf.logical_not(step_ok)))
        )
        return keras_compat.step_logs(
            {
                "loss": distribute.result_across_replicas(self.loss_tracker),
                "meta_loss": distribute.result_across_replicas(self.meta_loss_tracker),
                "label_agreement": distribute.result_across_replicas(self.agreement_tracker),
            }
        )

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if y is None:
            raise ValueError(
                "`evaluate` and `validation_data` need labelled batches `(x, y)`; "
                "the batch has no labels."
            )
        logits = self.classifier(x, training=False)
        self._check_labels_shape(y, "y")
        y = tf.reshape(tf.cast(y, tf.int32), [-1])
        cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
        self.loss_tracker.update_state(cross_entropy, sample_weight=sample_weight)
        self.accuracy_tracker.update_state(y, logits, sample_weight=sample_weight)
        return keras_compat.step_logs(
            {
                "loss": distribute.result_across_replicas(self.loss_tracker),
                "accuracy": distribute.result_across_replicas(self.accuracy_tracker),
            }
        )

    # Input checks, at trace time where shapes allow it

    def _unpack_batch(self, data):
        if isinstance(data, tuple) and len(data) == 3 and data[1] is None and data[2] is None:
            data = data[0]  # `train_on_batch(batch)` packs the batch as `(x, None, None)`.
        if not (isinstance(data, (tuple, list)) and len(data) == 2):
            raise ValueError(
                f"Invalid training batch of structure {_structure(data)}. {BATCH_STRUCTURE}"
            )
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
        self._check_images_shape(x, "x")
        self._check_images_shape(x_meta, "x_meta")
        if features is not None:
            self._check_features_shape(features)
        if y is not None:
            self._check_labels_shape(y, "y")
            y = tf.reshape(tf.cast(y, tf.int32), [-1])
        self._check_meta_labels(y_meta)
        if not (y_meta.dtype.is_floating and y_meta.shape.rank == 2 and y_meta.shape[-1] != 1):
            y_meta = tf.reshape(tf.cast(y_meta, tf.int32), [-1])
        return x, y, features, x_meta, y_meta

    def _check_features_shape(self, features):
        expected = tuple(self.feature_extractor.output_shape[1:])
        received = tuple(features.shape[1:])
        if received != expected or not features.dtype.is_floating:
            raise ValueError(
                f"The cached features of the noisy batch have shape {received} and dtype "
                f"{features.dtype.name}, but the frozen feature extractor outputs float "
                f"features of shape {expected}. Compute them with "
                "`mln_tf.data.cache_features(noisy, model.feature_extractor)`."
            )

    def _check_images_shape(self, images, name):
        expected = tuple(self.classifier.input_shape[1:])
        received = tuple(images.shape[1:])
        compatible = len(expected) == len(received) and all(
            e is None or r is None or e == r for e, r in zip(expected, received)
        )
        if not compatible:
            raise ValueError(
                f"The batch `{name}` has examples of shape {received}, but the classifier "
                f"expects {expected}."
            )

    def _check_labels_shape(self, labels, name):
        rank = labels.shape.rank
        if labels.dtype.is_floating or not (rank == 1 or (rank == 2 and labels.shape[-1] == 1)):
            raise ValueError(
                f"The labels `{name}` must be integer class indices of shape (batch,). "
                f"Received dtype {labels.dtype.name} and shape {tuple(labels.shape)}."
            )

    def _check_meta_labels(self, y_meta):
        if y_meta.dtype.is_floating and y_meta.shape.rank == 2 and y_meta.shape[-1] != 1:
            if y_meta.shape[-1] != self.num_classes:
                raise ValueError(
                    f"The meta labels have {y_meta.shape[-1]} classes (shape "
                    f"{tuple(y_meta.shape)}), but the classifier outputs {self.num_classes} "
                    "logits. The meta set and the classifier must have the same classes."
                )
            return
        self._check_labels_shape(y_meta, "y_meta")

    def _labels_in_range(self, y, y_meta):
        checks = []
        if y is not None:  # -1 marks unlabeled examples
            checks.append(tf.reduce_all((y >= -1) & (y < self.num_classes)))
        if not y_meta.dtype.is_floating:
            checks.append(tf.reduce_all((y_meta >= 0) & (y_meta < self.num_classes)))
        return tf.reduce_all(tf.stack(checks)) if checks else tf.constant(True)


class _StopOnInvalidStep(keras.callbacks.Callback):
    """Stops `fit` with a clear error on the first step that `train_step` refused to apply."""

    def on_train_batch_end(self, batch, logs=None):
        model = self.model
        if float(model.invalid_label_steps.result()) > 0:
            raise ValueError(
                f"Training stopped at batch {batch}: a label is out of range. Labels must be "
                f"integer class indices in [0, {model.num_classes}), the classifier's "
                f"{model.num_classes} classes (or -1 for unlabeled noisy examples). Check that "
                "the meta set has the same classes as the classifier. The step was not "
                "applied; the weights are those before it."
            )
        if float(model.non_finite_steps.result()) > 0:
            raise NonFiniteLossError(
                f"Training stopped at batch {batch}: the loss or meta loss is NaN or infinite "
                f"(logs: {_format_logs(logs)}). The step was not applied; the weights are those "
                "before it. Lower the learning rates or the virtual step `virtual_lr`, and check "
                "the inputs for NaN values."
            )


def random_state_variables(model):
    """The random-generator states of a model (dropout seeds), which `save_weights` skips.

    Args:
        model: a `keras.Model`.

    Returns:
        A list of the model's non-trainable variables that are not among its weights.
    """
    weights = {id(variable) for variable in model.weights}
    return [v for v in model.non_trainable_variables if id(v) not in weights]


def _check_classifier(classifier):
    if not isinstance(classifier, keras.Model):
        raise TypeError(
            f"Invalid type for argument `classifier`. Received: {type(classifier).__name__}. "
            "Expected a `keras.Model` that outputs logits."
        )
    if not classifier.built:
        raise ValueError(
            f"The classifier {classifier.name!r} is not built. MetaLabelNet copies its weights, "
            "so they must exist: build it beforehand by calling it on a batch of data, or give "
            "it a `keras.Input`."
        )
    output_shape = classifier.output_shape
    if not (isinstance(output_shape, tuple) and len(output_shape) == 2):
        raise ValueError(
            f"The classifier must output logits of shape (batch, classes). Received output "
            f"shape {output_shape}."
        )


def _check_virtual_lr(virtual_lr):
    if not isinstance(virtual_lr, (int, float)) or not virtual_lr > 0 or math.isinf(virtual_lr):
        raise ValueError(
            f"Invalid value for argument `virtual_lr`. Received: virtual_lr={virtual_lr!r}. "
            "Expected a positive float."
        )
    return float(virtual_lr)


def _check_entropy_weight(entropy_weight):
    if (
        not isinstance(entropy_weight, (int, float))
        or not entropy_weight >= 0
        or math.isinf(entropy_weight)
    ):
        raise ValueError(
            "Invalid value for argument `entropy_weight`. "
            f"Received: entropy_weight={entropy_weight!r}. Expected a non-negative float."
        )
    return float(entropy_weight)


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(
            f"Invalid value for argument `{name}`. Received: {name}={value!r}. Expected one "
            f"of {', '.join(repr(choice) for choice in choices)}."
        )
    return value


def _check_virtual_step(virtual_step):
    if virtual_step not in VIRTUAL_STEPS:
        raise ValueError(
            "Invalid value for argument `virtual_step`. "
            f'Received: virtual_step={virtual_step!r}. Expected "all" (the global batch\'s '
            'gradient) or "local" (each replica\'s own shard, an approximation).'
        )
    return virtual_step


def _check_meta_gradient(meta_gradient):
    if meta_gradient not in META_GRADIENTS:
        raise ValueError(
            "Invalid value for argument `meta_gradient`. "
            f'Received: meta_gradient={meta_gradient!r}. Expected "nested_tapes" (the '
            'default, reverse mode) or "forward_mode" (one Jacobian-vector product).'
        )
    return meta_gradient


def _check_virtual_scope(virtual_scope):
    if virtual_scope not in VIRTUAL_SCOPES:
        raise ValueError(
            "Invalid value for argument `virtual_scope`. "
            f'Received: virtual_scope={virtual_scope!r}. Expected "all" (the exact '
            'meta-gradient) or "head" (the virtual step moves the last layer(s) only).'
        )
    return virtual_scope


def _check_head_layers(head_layers, classifier):
    weighted = [layer.name for layer in classifier.layers if layer.trainable_weights]
    if (
        not isinstance(head_layers, int)
        or isinstance(head_layers, bool)
        or not 1 <= head_layers <= len(weighted)
    ):
        raise ValueError(
            f"Invalid value for argument `head_layers`. Received: head_layers={head_layers!r}. "
            f"Expected an integer from 1 to {len(weighted)}, the number of the classifier's "
            f"layers with trainable weights ({', '.join(weighted)})."
        )
    return head_layers


def _check_created_in_scope(model):
    """Under a strategy, the classifier's variables must be distributed ones."""
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


def _freeze_feature_extractor(classifier, feature_layer):
    """A frozen copy of `classifier` that outputs `feature_layer`'s activations."""
    layer_names = [layer.name for layer in classifier.layers]
    if feature_layer is not None and feature_layer not in layer_names:
        raise ValueError(
            f"The classifier {classifier.name!r} has no layer named {feature_layer!r}. "
            f"Its layers are: {', '.join(layer_names)}. Pass `feature_layer=` the name of "
            "its penultimate (feature) layer."
        )
    try:
        copy = keras.models.clone_model(classifier)
    except ValueError as error:
        raise ValueError(
            "MetaLabelNet cuts the feature extractor from a copy of the classifier, which "
            "needs a functional or Sequential model. For a subclassed classifier, pass "
            "`feature_extractor=` a model that maps images to features."
        ) from error
    copy.set_weights(classifier.get_weights())
    if feature_layer is None:
        features = copy.layers[-1].input
    else:
        features = copy.get_layer(feature_layer).output
    inputs = copy.inputs[0] if len(copy.inputs) == 1 else copy.inputs
    extractor = keras.Model(inputs, features, name="feature_extractor")
    extractor.trainable = False
    return extractor


def _build_label_generator(num_features, num_classes, label_input=False):
    """The single-layer perceptron g_φ: Dense(C) with softmax, on [h(x), onehot(ỹ)] with
    `label_input`."""
    size = num_features + num_classes if label_input else num_features
    inputs = keras.Input((size,), name="features_and_label" if label_input else "features")
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="soft_labels")(inputs)
    return keras.Model(inputs, outputs, name="label_generator")


def _initialize_label_generator(generator, num_features, head, label_input, label_trust):
    """W, b from the classifier's last layer `head` (if given); V = label_trust·I."""
    dense = generator.layers[-1]
    kernel = keras.ops.convert_to_numpy(dense.kernel).copy()
    bias = keras.ops.convert_to_numpy(dense.bias).copy()
    num_classes = kernel.shape[1]
    if head is not None:
        expected = (num_features, num_classes)
        head_kernel = getattr(head, "kernel", None)
        if (
            not isinstance(head, keras.layers.Dense)
            or tuple(head_kernel.shape) != expected
            or head.bias is None
            or head.activation not in (keras.activations.linear, None)
        ):
            raise ValueError(
                "Invalid value for argument `generator_init`. Received: generator_init="
                f"'classifier_head', but the classifier's last layer {head.name!r} is not a "
                f"Dense layer with a bias and no activation whose kernel has the shape "
                f"{expected} of (features, classes). Use generator_init='random'."
            )
        kernel[:num_features] = keras.ops.convert_to_numpy(head_kernel)
        bias[:] = keras.ops.convert_to_numpy(head.bias)
    if label_input:
        kernel[num_features:] = label_trust * np.eye(num_classes, dtype=kernel.dtype)
    dense.kernel.assign(kernel)
    dense.bias.assign(bias)


def _serialize_model(model):
    config = keras.saving.serialize_keras_object(model)
    # The warm-up compilation is not part of MetaLabelNet's state.
    config.pop("compile_config", None)
    return config


def _all_finite(tensors):
    return tf.reduce_all(tf.stack([tf.reduce_all(tf.math.is_finite(t)) for t in tensors]))


def _structure(data):
    return tf.nest.map_structure(lambda t: getattr(t, "shape", type(t).__name__), data)


def _format_logs(logs):
    return ", ".join(f"{key}={float(value):.4g}" for key, value in (logs or {}).items())
