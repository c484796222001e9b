"""Meta-Weight-Net: a baseline that meta-learns a weight for each noisy example's loss.

Shu, Xie, Yi, Zhao, Zhou, Xu and Meng, "Meta-Weight-Net: Learning an Explicit Mapping For
Sample Weighting", NeurIPS 2019 (arXiv 1902.07379).

Notation: the classifier f_θ outputs logits over C classes; (x, ỹ) is a noisy batch of B
examples with cross-entropy losses ℓ_i = CE(f_θ(x_i), ỹ_i); (x_m, y_m) is a clean meta batch;
the weight net V_ψ, a 1-H-1 perceptron (ReLU, then a sigmoid), maps a loss to a weight in
(0, 1). The virtual step is `mln_tf.meta_gradient.virtual_step`, shared with MetaLabelNet.
"""

import dataclasses

import keras
import tensorflow as tf

from mln_tf import distribute, meta_gradient, training_batch
from mln_tf.classifier_trainer import MetaTrainer, built_optimizer, serialize_model
from mln_tf.optimizers import CoupledSGD, paper_generator_optimizer

# The authors' optimizers: SGD(0.1, momentum 0.9, weight decay 5e-4) for the classifier
# (CIFAR, ResNet-32), Adam(1e-3, weight decay 1e-4) for the weight net, both PyTorch's.
CLASSIFIER_LEARNING_RATE = 0.1
CLASSIFIER_MOMENTUM = 0.9
CLASSIFIER_WEIGHT_DECAY = 5e-4
WEIGHT_NET_LEARNING_RATE = 1e-3
VIRTUAL_SCOPES = ("all", "head")


@dataclasses.dataclass(frozen=True)
class _VirtualScope:
    """The two settings `mln_tf.meta_gradient`'s scope helpers read from options."""

    virtual_scope: str
    head_layers: int


def build_weight_net(hidden_units=100, name="weight_net"):
    """Builds V_ψ: loss → weight, a 1-`hidden_units`-1 perceptron with a sigmoid output.

    Weights and biases start uniform in ±1/√fan_in, PyTorch's default for a linear layer,
    as in the paper's experiments.

    Args:
        hidden_units: int, H. Defaults to 100 (the paper's).
        name: str. Defaults to `"weight_net"`.

    Returns:
        A `keras.Model` mapping losses of shape `(B, 1)` to weights of shape `(B, 1)`.

    Example:

    >>> weight_net = build_weight_net(hidden_units=8)
    >>> weight_net.output_shape
    (None, 1)
    """
    losses_input = keras.Input((1,), name="loss")
    hidden = keras.layers.Dense(hidden_units, activation="relu", name="hidden",
                                **_torch_linear_initializers(1))(losses_input)  # fmt: skip
    weights = keras.layers.Dense(1, activation="sigmoid", name="weight",
                                 **_torch_linear_initializers(hidden_units))(hidden)  # fmt: skip
    return keras.Model(losses_input, weights, name=name)


def _torch_linear_initializers(fan_in):
    limit = 1.0 / fan_in**0.5
    return {
        "kernel_initializer": keras.initializers.RandomUniform(-limit, limit),
        "bias_initializer": keras.initializers.RandomUniform(-limit, limit),
    }


def example_losses(labels, logits):
    """ℓ_i, each noisy example's cross-entropy; 0 where the label is -1 (unlabeled).

    A one-hot product, as `mln_tf.losses.meta_loss`: an out-of-range label gives a zero
    row, and the model's range check reports it.
    """
    log_probs = tf.nn.log_softmax(logits, axis=-1)
    targets = tf.one_hot(labels, tf.shape(logits)[-1], dtype=log_probs.dtype)
    return -tf.reduce_sum(targets * log_probs, axis=-1)


@keras.saving.register_keras_serializable(package="mln_tf")
class MetaWeightNet(MetaTrainer):
    """Trains a classifier on noisy labels, weighting each loss by a meta-learned weight net.

    Each `fit` step:

    1. computes the losses ℓ_i of the noisy batch and their weights w_i = V_ψ(ℓ_i), the
       losses entering V_ψ as constants;
    2. takes a virtual SGD step θ̂ = θ − α·∇_θ (1/B) Σ_i w_i ℓ_i, kept differentiable in ψ;
    3. measures the meta loss L_m = CE(f_θ̂(x_m), y_m) on the clean meta batch;
    4. updates ψ with `weight_net_optimizer` on ∇_ψ L_m (a second-order gradient);
    5. recomputes the weights w'_i = V_ψ(ℓ_i) with the new ψ, as constants;
    6. updates θ with the main optimizer on (1/B) Σ_i w'_i ℓ_i, reusing the forward pass of
       step 2.

    The normaliser is the batch size B, as in the authors' final code (not Σ_i w_i). The
    virtual step's α defaults to the classifier optimizer's current learning rate, schedule
    included, as in the authors' code. The virtual pass never moves the real
    batch-normalisation statistics; the real pass updates them once per batch.

    Formula:

    ```
    ℓ_i(θ)  = CE(f_θ(x_i), ỹ_i),        w_i(ψ) = V_ψ(stop_gradient(ℓ_i))
    θ̂(ψ)   = θ − α ∇_θ (1/B) Σ_i w_i(ψ) ℓ_i(θ)
    ψ      ← weight_net_optimizer(ψ, ∇_ψ CE(f_θ̂(ψ)(x_m), y_m))
    θ      ← optimizer(θ, ∇_θ (1/B) Σ_i stop_gradient(w_i(ψ)) ℓ_i(θ))
    ```

    Training data: each element is `((x, y), (x_meta, y_meta))` with integer labels, as
    `mln_tf.data.with_meta` builds it. An example with `y = -1` (unlabeled) gets weight 0
    but still counts in B. `evaluate` and `validation_data` take ordinary `(x, y)` batches
    and report the classifier's cross-entropy (`loss`) and `accuracy`. `fit` and
    `train_on_batch` stop on a step skipped for a label out of range or a non-finite loss
    (`mln_tf.classifier_trainer.MetaTrainer`).

    Args:
        classifier: a built `keras.Model` that outputs logits of shape `(batch, C)`, not
            in float16.
        hidden_units: int, the weight net's hidden units H. Defaults to 100.
        virtual_lr: positive float α, or `None` for the classifier optimizer's current
            learning rate. Defaults to `None`.
        weight_net_optimizer: the weight net's `keras.optimizers.Optimizer`. Usually set
            through `compile`. Defaults to the authors' Adam(1e-3, coupled weight decay
            1e-4), `mln_tf.optimizers.CoupledAdam`.
        weight_net: a `keras.Model` mapping `(B, 1)` losses to `(B, 1)` weights, instead
            of a fresh `build_weight_net(hidden_units)`. Defaults to `None`.
        virtual_scope: `"all"` (the paper's) to move every trainable variable in the
            virtual step, or `"head"` for the last `head_layers` weighted layers only.
            Defaults to `"all"`.
        head_layers: int, the layers `virtual_scope="head"` moves. Defaults to 1.
        **kwargs: arguments of `keras.Model` (`name`, ...).

    Example:

    >>> classifier = mln_tf.classifiers.fashion_cnn(num_classes=10)
    >>> model = MetaWeightNet(classifier)
    >>> model.compile(optimizer=keras.optimizers.SGD(1e-2, momentum=0.9))
    >>> model.weight_net.count_params()
    301
    """

    meta_learned_part = "weight net"

    def __init__(
        self,
        classifier,
        *,
        hidden_units=100,
        virtual_lr=None,
        weight_net_optimizer=None,
        weight_net=None,
        virtual_scope="all",
        head_layers=1,
        **kwargs,
    ):
        kwargs.setdefault("name", "meta_weight_net")
        super().__init__(classifier, **kwargs)
        _check_positive_int("hidden_units", hidden_units)
        if virtual_lr is not None and (
            isinstance(virtual_lr, bool) or not isinstance(virtual_lr, (int, float))
            or not virtual_lr > 0
        ):  # fmt: skip
            raise ValueError(
                f"Invalid value for argument `virtual_lr`. Received: virtual_lr={virtual_lr!r}. "
                "Expected a positive float, or None for the classifier's learning rate."
            )
        if virtual_scope not in VIRTUAL_SCOPES:
            raise ValueError(
                f"Invalid value for argument `virtual_scope`. Received: "
                f"virtual_scope={virtual_scope!r}. Expected one of {VIRTUAL_SCOPES}."
            )
        meta_gradient.check_head_layers(head_layers, classifier)
        self.hidden_units = hidden_units
        self.virtual_lr = None if virtual_lr is None else float(virtual_lr)
        self.virtual_scope = virtual_scope
        self.head_layers = head_layers
        self.weight_net = build_weight_net(hidden_units) if weight_net is None else weight_net

        self.weight_net_optimizer = built_optimizer(
            weight_net_optimizer or paper_generator_optimizer(WEIGHT_NET_LEARNING_RATE),
            self.weight_net.trainable_variables,
        )

        self.meta_loss_tracker = keras.metrics.Mean(name="meta_loss")
        self.mean_weight_tracker = keras.metrics.Mean(name="mean_weight")
        self.built = True

    @property
    def _scope(self):
        return _VirtualScope(self.virtual_scope, self.head_layers)

    # Configuration

    def compile(self, optimizer=None, weight_net_optimizer=None, **kwargs):
        """Configures Meta-Weight-Net for training.

        Args:
            optimizer: the classifier's optimizer. Defaults to the authors' SGD(0.1,
                momentum 0.9, coupled weight decay 5e-4).
            weight_net_optimizer: the weight net's optimizer. Defaults to keeping the
                current one.
            **kwargs: arguments of `keras.Model.compile` (`jit_compile`,
                `steps_per_execution`, ...), but not `loss` or `metrics`: Meta-Weight-Net
                computes its own. Under a `tf.distribute` strategy Keras compiles no step
                with XLA: `jit_compile=True` then warns and proceeds without it.
        """
        super().compile(optimizer, **kwargs)
        if weight_net_optimizer is not None:
            self.weight_net_optimizer = built_optimizer(
                weight_net_optimizer, self.weight_net.trainable_variables
            )

    def _default_optimizer(self):
        return CoupledSGD(
            CLASSIFIER_LEARNING_RATE,
            momentum=CLASSIFIER_MOMENTUM,
            coupled_weight_decay=CLASSIFIER_WEIGHT_DECAY,
        )

    def _check_jit_compile(self):
        meta_gradient.check_xla_max_pooling(self.classifier, self._scope)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "classifier": serialize_model(self.classifier),
                "hidden_units": self.hidden_units,
                "virtual_lr": self.virtual_lr,
                "weight_net_optimizer": keras.saving.serialize_keras_object(
                    self.weight_net_optimizer
                ),
                "weight_net": serialize_model(self.weight_net),
                "virtual_scope": self.virtual_scope,
                "head_layers": self.head_layers,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("classifier", "weight_net", "weight_net_optimizer"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)

    @property
    def training_trackers(self):
        return [self.meta_loss_tracker, self.mean_weight_tracker]

    def predict_weights(self, losses_per_example):
        """The weight net's weights V_ψ(ℓ) for given losses, as numpy of shape `(N,)`."""
        losses_per_example = tf.reshape(
            tf.cast(losses_per_example, self.weight_net.compute_dtype), [-1, 1]
        )
        return keras.ops.convert_to_numpy(self.weight_net(losses_per_example))[:, 0]

    # Training

    def example_weights(self, losses_per_example, labels):
        """w_i = V_ψ(ℓ_i), with ℓ_i a constant; 0 for unlabeled examples (label -1)."""
        weight_net_input = tf.cast(
            tf.stop_gradient(losses_per_example)[:, None], self.weight_net.compute_dtype
        )
        weights = tf.cast(self.weight_net(weight_net_input, training=True)[:, 0],
                          losses_per_example.dtype)  # fmt: skip
        return weights * tf.cast(labels >= 0, weights.dtype)

    def weighted_loss(self, logits, labels):
        """(1/B) Σ_i w_i ℓ_i, differentiable in θ through ℓ_i and in ψ through w_i."""
        losses_per_example = example_losses(labels, logits)
        weights = self.example_weights(losses_per_example, labels)
        return tf.reduce_mean(weights * losses_per_example)

    def train_step(self, data):
        batch = self._unpack(data)
        trainable = self.classifier.trainable_variables
        theta = [variable.value for variable in trainable]
        state = [variable.value for variable in self.classifier.non_trainable_variables]
        moved = meta_gradient.virtual_indices(self.classifier, self._scope)
        global_batch = distribute.num_replicas() > 1

        # 1-3: weights w(ψ), virtual step θ̂(ψ), meta loss at θ̂ and its gradient for ψ
        with tf.GradientTape() as meta_tape:
            step = meta_gradient.virtual_step(
                self.classifier, theta, state, batch.x,
                lambda logits: self.weighted_loss(logits, batch.y),
                moved, self._virtual_learning_rate(trainable[moved[0]].dtype), global_batch,
            )  # fmt: skip
            # Meta loss on the clean batch; the virtual pass's BN updates are discarded
            meta_loss, scaled_meta_loss, meta_state = meta_gradient.meta_loss(
                self.classifier, self.weight_net_optimizer, step.fast_weights, step.new_state,
                batch.x_meta, batch.y_meta,
            )  # fmt: skip
        weight_net_grads = meta_tape.gradient(scaled_meta_loss, self.weight_net.trainable_variables)
        labels_ok, step_ok = self._step_checks(
            batch, [step.label_loss, meta_loss, *weight_net_grads]
        )

        # 4: the weight net's update
        distribute.run_if(step_ok, self._update_weight_net, weight_net_grads)

        # 5-6: the new weights, constant, and the classifier's update through the
        # virtual step's forward pass
        loss, weights, classifier_grads = self._classifier_gradients(step, batch.y, theta)
        step_ok = tf.logical_and(step_ok, distribute.on_all_replicas(tf.math.is_finite(loss)))
        # Fresh dropout masks next step: the meta pass's random draws are kept too
        new_state = meta_gradient.state_after_step(self.classifier, step.new_state, meta_state)
        distribute.run_if(step_ok, self._update_classifier, classifier_grads, new_state)

        return self._update_metrics(batch, loss, meta_loss, weights, labels_ok, step_ok)

    def _unpack(self, data):
        noisy = data[0] if isinstance(data, (tuple, list)) and data else None
        if isinstance(noisy, (tuple, list)) and len(noisy) == 3:
            raise ValueError(
                "MetaWeightNet does not use cached features: its training batches are "
                "`((x, y), (x_meta, y_meta))`. Build them with `mln_tf.data.with_meta` from "
                "the noisy `(x, y)` dataset."
            )
        batch = training_batch.unpack(data, self.classifier.input_shape, self.num_classes, None)
        if batch.y is None:
            raise ValueError(
                "MetaWeightNet weights the losses of the noisy labels, so its noisy batches "
                "need labels: `((x, y), (x_meta, y_meta))`. Received a batch without `y`."
            )
        return batch

    def _virtual_learning_rate(self, dtype):
        """α: the fixed `virtual_lr`, or the classifier optimizer's learning rate now."""
        if self.virtual_lr is not None:
            return tf.constant(self.virtual_lr, dtype)
        # Read at every step: a learning-rate schedule moves α with it.
        return tf.cast(self.optimizer.learning_rate, dtype)

    def _update_weight_net(self, grads):
        self.weight_net_optimizer.apply(grads, self.weight_net.trainable_variables)

    def _classifier_gradients(self, step, labels, theta):
        """(1/B) Σ_i w'_i ℓ_i with the new weights as constants, and its gradient for θ."""
        logits = step.logits
        with tf.GradientTape() as logits_tape:
            logits_tape.watch(logits)
            losses_per_example = example_losses(labels, logits)
            weights = tf.stop_gradient(self.example_weights(losses_per_example, labels))
            loss = tf.reduce_mean(weights * losses_per_example)
            scaled_loss = self.optimizer.scale_loss(distribute.scale_for_replicas(loss))
        logits_grads = logits_tape.gradient(scaled_loss, logits)
        grads = step.tape.gradient(logits, theta, output_gradients=logits_grads)
        return loss, weights, grads

    def _update_metrics(self, batch, loss, meta_loss, weights, labels_ok, step_ok):
        self.loss_tracker.update_state(loss)
        self.meta_loss_tracker.update_state(meta_loss)
        self.mean_weight_tracker.update_state(
            weights, sample_weight=tf.cast(batch.y >= 0, weights.dtype)
        )
        self._count_skipped_steps(labels_ok, step_ok)
        return self._training_logs()


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"Invalid value for argument `{name}`. Received: {name}={value!r}. "
            "Expected a positive integer."
        )
