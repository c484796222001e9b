"""MetaLabelNet: a classifier trained on soft labels that a meta-learned generator produces.

Notation (`docs/algorithm.md`): the classifier f_θ outputs logits over C classes; the frozen
feature extractor h is a copy of the warmed-up classifier cut at its penultimate layer; the
label generator g_φ = softmax(W·h(x) + b) produces soft labels ŷ; (x, ỹ) is a noisy batch and
(x_m, y_m) a clean meta batch.
"""

import keras
import numpy as np
import tensorflow as tf

from mln_tf import distribute, losses, meta_gradient, training_batch
from mln_tf import label_generator as generator_lib
from mln_tf import options as options_lib
from mln_tf.callbacks import RefreshLabelGenerator
from mln_tf.classifier_trainer import MetaTrainer, built_optimizer, serialize_model
from mln_tf.optimizers import paper_generator_optimizer

# The classifier's loss on the soft labels, for both the virtual step and the real update.
LABEL_LOSSES = {
    "reverse_kl": losses.soft_label_reverse_kl,
    "cross_entropy": losses.soft_label_cross_entropy,
}


@keras.saving.register_keras_serializable(package="mln_tf")
class MetaLabelNet(MetaTrainer):
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
       pass of step 2, plus λ·CE(f_θ(x_m), y_m) on the meta batch with `clean_weight`.

    With the authors' options the given noisy label is not used by the step; it only feeds
    the `label_agreement` metric (`label_input=True` gives it to the generator). The
    virtual pass never moves the real batch-normalisation statistics; the real pass updates
    them once per batch.

    Formula:

    ```
    L_c(θ; ŷ) = mean_{i,j} p_ij (log p_ij − log(ŷ_ij + 1e-10)),   p = softmax(f_θ(x))
    L_e(θ)    = − mean_{i,j} p_ij log p_ij
    θ̂(φ)     = θ − α ∇_θ L_c(θ; g_φ(h(x)))
    φ        ← generator_optimizer(φ, ∇_φ CE(f_θ̂(φ)(x_m), y_m))
    θ        ← optimizer(θ, ∇_θ [L_c(θ; stop_gradient(g_φ(h(x)))) + w L_e(θ)
                             + λ CE(f_θ(x_m), y_m)])
    ```

    The options beyond the paper (`label_input`, `generator_init`, `loss_scale`,
    `label_loss`, `virtual_scope`, `clean_weight`) and the forward-mode formula of the
    meta-gradient are in `docs/algorithm.md`; `mln_tf.meta_gradient` computes it.

    Training data: each element is `((x, y), (x_meta, y_meta))`, with integer labels and
    `y = -1` for unlabeled examples, or `(x, (x_meta, y_meta))` for a batch without labels.
    `mln_tf.data.with_meta` builds it. `evaluate` and `validation_data` take ordinary
    `(x, y)` batches and report the classifier's cross-entropy (`loss`) and `accuracy`.
    `fit` and `train_on_batch` stop on a step skipped for a label out of range or a
    non-finite loss (`mln_tf.classifier_trainer.MetaTrainer`).

    Distribution: create the classifier, the model and its optimizers, and call `compile`,
    inside a `tf.distribute.Strategy` scope (`MirroredStrategy`, `MultiWorkerMirroredStrategy`;
    `mln_tf.distribute.build_strategy` builds one), then call `fit` as usual. Each replica's
    losses count for 1/N of the global-batch mean, as Keras scales them; with
    `virtual_batch="global"` the inner gradient is all-reduced before θ̂ is formed, so N
    replicas compute the single-device step on the same global batch. Keras compiles no step
    with XLA under a strategy.

    Options: every setting of the method is a field of `mln_tf.options.MetaLabelNetOptions`
    (`docs/algorithm.md` has their formulas). Pass them as `options=` (for example
    `mln_tf.options.RECOMMENDED`) or one by one as keyword arguments, which override
    `options`. Each is also a property of the model; the step-only ones (`compile`'s) can be
    changed between `fit` calls, and the next `fit` traces the step again.

    Args:
        classifier: a built functional or Sequential `keras.Model` that outputs logits of
            shape `(batch, C)`, warmed up on the noisy labels, not in float16.
        feature_layer: str, the name of the layer whose output is the feature vector.
            Defaults to `None`, the input of the classifier's last layer.
        options: a `mln_tf.options.MetaLabelNetOptions`. Defaults to
            `mln_tf.options.PAPER`, the authors' algorithm.
        generator_optimizer: the label generator's `keras.optimizers.Optimizer`. Usually
            set through `compile`. Defaults to the authors' Adam at the options'
            `generator_learning_rate`.
        feature_extractor: a `keras.Model` mapping images to features, to use instead of
            cutting a copy of `classifier`. Defaults to `None`.
        label_generator: a `keras.Model` mapping features to soft labels, to use instead of
            a fresh single-layer generator. Defaults to `None`.
        meta_data: the clean meta set, for `generator_init="clean_posterior"`: a tuple
            `(images, labels)` of arrays, or a `tf.data.Dataset` of `(image, label)`
            pairs, batched or not. Without it, call `initialize_label_generator(meta_data)`
            before training. Defaults to `None`.
        **kwargs: options of `MetaLabelNetOptions` (`virtual_lr=`, `label_input=`, ...),
            and arguments of `keras.Model` (`name`, ...).

    Example:

    >>> classifier = mln_tf.classifiers.fashion_cnn(num_classes=10)
    >>> model = MetaLabelNet(classifier, feature_layer="features",
    ...                      options=mln_tf.options.RECOMMENDED)
    >>> model.compile(optimizer=keras.optimizers.SGD(1e-2, momentum=0.9))
    >>> model.label_generator.output_shape, model.label_loss
    ((None, 10), 'cross_entropy')
    """

    unbuilt_classifier_reason = "MetaLabelNet copies its weights, so they must exist"
    meta_learned_part = "generator"

    def __init__(
        self,
        classifier,
        feature_layer=None,
        *,
        options=None,
        generator_optimizer=None,
        feature_extractor=None,
        label_generator=None,
        meta_data=None,
        **kwargs,
    ):
        option_changes, kwargs = options_lib.split(kwargs)
        kwargs.setdefault("name", "meta_label_net")
        super().__init__(classifier, **kwargs)
        self.feature_layer = feature_layer
        self._options = (options or options_lib.PAPER).replace(**option_changes)
        _check_classifier_options(self._options, classifier)

        if self._options.generator_refresh != "never" and feature_extractor is not None:
            generator_lib.check_cut_from(feature_extractor, classifier)
        if self._options.generator_input == "classifier_logits":
            # The generator reads the classifier's own current logits, not a frozen copy.
            feature_extractor = classifier
        elif feature_extractor is None:
            feature_extractor = generator_lib.freeze_feature_extractor(classifier, feature_layer)
            feature_extractor.trainable = False
        else:
            feature_extractor.trainable = False
        self.feature_extractor = feature_extractor

        feature_shape = feature_extractor.output_shape
        if len(feature_shape) != 2:
            raise ValueError(
                f"The feature layer {feature_layer!r} outputs shape {feature_shape}, but the "
                "label generator needs a flat feature vector of shape (batch, features). "
                "Choose a dense or global-pooling layer as `feature_layer`."
            )
        # Set by `initialize_label_generator`; a restored generator is initialized.
        self._awaits_meta_data = False
        # The read-out's inverse L2 strength, once `"clean_posterior"` has fitted it.
        self.readout_c = None
        if label_generator is None:
            self.label_generator = generator_lib.build_label_generator(
                feature_shape[-1], self.num_classes, self.label_input
            )
            self.initialize_label_generator(meta_data)
        else:
            self.label_generator = label_generator

        if self._options.generator_refresh != "never":
            self._refreshed_head_weights()  # raises now if the head cannot seed W and b
        self.generator_optimizer = built_optimizer(
            generator_optimizer or paper_generator_optimizer(self.generator_learning_rate),
            self.label_generator.trainable_variables,
        )

        self.meta_loss_tracker = keras.metrics.Mean(name="meta_loss")
        self.agreement_tracker = keras.metrics.Mean(name="label_agreement")
        self.built = True

    # Configuration

    @property
    def options(self):
        """The `mln_tf.options.MetaLabelNetOptions` the model trains with."""
        return self._options

    def set_options(self, **changes):
        """Changes step options (those `compile` takes); the next `fit` traces the step again.

        Raises:
            ValueError: for an option that shapes the label generator, which is built with
                the model: build a new `MetaLabelNet` instead.
        """
        changes = options_lib.translate_deprecated(changes)
        fixed = sorted(
            name
            for name in changes
            if name in options_lib.FIELDS and name not in options_lib.COMPILE_NAMES
            and changes[name] != getattr(self._options, name)
        )  # fmt: skip
        if fixed:
            raise ValueError(
                f"The option(s) {', '.join(fixed)} shape the label generator, which is built "
                "with the model; they can only be passed to `MetaLabelNet(...)`. Build a new "
                "model to change them."
            )
        new_options = self._options.replace(**changes)
        _check_classifier_options(new_options, self.classifier)
        if new_options != self._options:
            self._options = new_options
            # Python values are constants of a traced step: trace it again.
            self.train_function = None

    def compile(self, optimizer=None, generator_optimizer=None, **kwargs):
        """Configures MetaLabelNet for training.

        Args:
            optimizer: the classifier's optimizer. Defaults to the authors' SGD(1e-2,
                momentum 0.9, weight decay 1e-4).
            generator_optimizer: the label generator's optimizer. Defaults to keeping the
                current one.
            **kwargs: step options of `mln_tf.options.MetaLabelNetOptions` (`virtual_lr`,
                `entropy_weight`, `virtual_scope`, `head_layers`, `meta_gradient`,
                `virtual_batch`, `loss_scale`, `label_loss`, `clean_weight`,
                `meta_batch_pass`), which replace the current values; and arguments of
                `keras.Model.compile` (`jit_compile`, `steps_per_execution`,
                `run_eagerly`, ...), but not `loss` or `metrics`:
                MetaLabelNet computes its own. `jit_compile` defaults to Keras'
                `"auto"`. Under a `tf.distribute` strategy Keras compiles no step with XLA:
                `jit_compile=True` then warns and proceeds with `jit_compile=False`. XLA
                compiles the second derivative of max-pooling in float32 only: with a
                float64 or mixed-precision classifier whose max-pooling lies in the virtual
                step, `jit_compile=True` raises a `ValueError`.
        """
        super().compile(optimizer, **kwargs)
        if generator_optimizer is not None:
            self.generator_optimizer = built_optimizer(
                generator_optimizer, self.label_generator.trainable_variables
            )

    def _take_step_options(self, compile_kwargs):
        option_changes, compile_kwargs = options_lib.split(compile_kwargs)
        self.set_options(**option_changes)
        return compile_kwargs

    def _check_jit_compile(self):
        meta_gradient.check_xla_max_pooling(self.classifier, self._options)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "classifier": serialize_model(self.classifier),
                "feature_layer": self.feature_layer,
                "options": self._options.to_dict(),
                "generator_optimizer": keras.saving.serialize_keras_object(
                    self.generator_optimizer
                ),
                # With the logits, the extractor is the classifier itself.
                "feature_extractor": None
                if self.generator_input == "classifier_logits"
                else serialize_model(self.feature_extractor),
                "label_generator": serialize_model(self.label_generator),
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("classifier", "feature_extractor", "label_generator", "generator_optimizer"):
            if config[key] is not None:
                config[key] = keras.saving.deserialize_keras_object(config[key])
        if isinstance(config.get("options"), dict):
            config["options"] = options_lib.MetaLabelNetOptions(**config["options"])
        return cls(**config)

    @property
    def training_trackers(self):
        return [self.meta_loss_tracker, self.agreement_tracker]

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
        if self.generator_input == "classifier_logits":
            return  # the generator reads the classifier itself
        generator_lib.refresh_feature_extractor(self.feature_extractor, self.classifier)

    def refresh_label_generator(self):
        """Restarts the generator from the classifier as it is now, keeping V.

        The frozen extractor is cut again from the classifier's current weights, and W and b
        become the classifier's last layer, so that softmax(W·h(x) + b) is the classifier's
        own prediction (in inference mode) and the soft labels its posterior with the given
        label's row of V. `generator_refresh="each_epoch"` calls this at the end of every
        epoch of `fit`. Features cached with `mln_tf.data.cache_features` are then stale.

        Raises:
            ValueError: if the extractor's features are not the input of the classifier's
                last layer, or that layer is not a linear Dense layer.
        """
        self.refresh_feature_extractor()
        num_features = self.feature_extractor.output_shape[-1]
        generator_lib.initialize_label_generator(
            self.label_generator, num_features, self._refreshed_head_weights()
        )

    def _refreshed_head_weights(self):
        """The classifier's last layer as the generator's `(W, b)`, checked to read the
        extractor's features."""
        head = self.classifier.layers[-1]
        if self.feature_layer is not None and not generator_lib.feeds_head(
            self.classifier, self.feature_layer
        ):
            raise ValueError(
                f"generator_refresh={self.generator_refresh!r} restarts the generator from the "
                f"classifier's last layer {head.name!r}, which must read the features the "
                f"generator reads, but feature_layer={self.feature_layer!r} is not its input. "
                "Pass the name of the layer that feeds the last layer, or leave "
                "`feature_layer` out."
            )
        return generator_lib.head_weights(
            head, self.feature_extractor.output_shape[-1], self.num_classes
        )

    def initialize_label_generator(self, meta_data=None, noisy_data=None):
        """Sets the generator's weights as `generator_init` and `label_trust` say, now.

        With `generator_init="classifier_head"`, W and b are copied from the classifier's
        last layer as it is now, and with `label_input` V = `label_trust`·I. With
        `"clean_posterior"`, W and b are fitted to `meta_data`'s clean labels on its frozen
        features, with the L2 strength that `readout_regularization` chooses (kept in
        `readout_c`), and V is the log of the noise matrix that the classifier's softmax
        gives on it (Gold Loss Correction's estimate). Call this after warming up
        `model.classifier` when the model was built before the warm-up (the Keras Tuner
        hypermodel does). A random W and b are left as they are.

        Args:
            meta_data: the clean meta set, needed with `"clean_posterior"`: `(images,
                labels)` arrays or a `tf.data.Dataset` of `(image, label)` pairs, batched
                or not. Defaults to `None`.
            noisy_data: the noisy training set (or a sample of it), in the same forms,
                with -1 for an unlabeled image; needed with
                `transition_estimate="noisy_labels"`. Defaults to `None`.

        Raises:
            ValueError: with `"classifier_head"`, if the classifier's last layer is not a
                linear Dense layer from the features to the classes; with
                `"clean_posterior"`, for meta data that is not images and labels in range.
        """
        num_features = self.feature_extractor.output_shape[-1]
        weights = label_weights = None
        if self.label_input:
            label_weights = self.label_trust * np.eye(self.num_classes)
        reads_logits = self.generator_input == "classifier_logits"
        if reads_logits and self.generator_init != "random":
            # softmax(I·z + 0) is the classifier's own prediction.
            weights = (np.eye(self.num_classes), np.zeros(self.num_classes))
        if self.generator_init == "classifier_head" and not reads_logits:
            weights = generator_lib.head_weights(
                self.classifier.layers[-1], num_features, self.num_classes
            )
        elif self.generator_init == "clean_posterior":
            if meta_data is None:
                # Built before the warm-up: `fit` refuses to start until this is called.
                self._awaits_meta_data = True
                return
            fitted, posterior_label_weights, self.readout_c = generator_lib.fit_clean_posterior(
                self.classifier, self.feature_extractor, meta_data, noisy_data,
                transition_estimate=self.transition_estimate,
                readout_regularization=self.readout_regularization,
            )  # fmt: skip
            if not reads_logits:
                weights = fitted
            if self.label_input:
                label_weights = posterior_label_weights
        generator_lib.initialize_label_generator(
            self.label_generator, num_features, weights, label_weights
        )
        self._awaits_meta_data = False

    def load_weights(self, *args, **kwargs):
        super().load_weights(*args, **kwargs)
        # Loaded weights set the generator, as a Keras Tuner trial that resumes loads them.
        self._awaits_meta_data = False

    def fit(self, *args, **kwargs):
        self._check_generator_initialized()
        if self.generator_refresh == "each_epoch":
            # First, so that a checkpoint at the epoch's end holds the refreshed generator.
            callbacks = kwargs.get("callbacks") or []
            if not any(isinstance(c, RefreshLabelGenerator) for c in callbacks):
                kwargs["callbacks"] = [RefreshLabelGenerator(), *callbacks]
        return super().fit(*args, **kwargs)

    def train_on_batch(self, *args, **kwargs):
        self._check_generator_initialized()
        return super().train_on_batch(*args, **kwargs)

    def _check_generator_initialized(self):
        if self._awaits_meta_data:
            raise ValueError(
                "This MetaLabelNet has generator_init='clean_posterior', which fits the label "
                "generator on the clean meta set, but it was built without it. Pass "
                "`meta_data=(images, labels)` to `MetaLabelNet(...)`, or call "
                "`model.initialize_label_generator(meta_data)` after the warm-up and before "
                "training."
            )

    def generator_inputs(self, features, labels=None):
        """The label generator's input: the features, and with `label_input` the one-hot
        given label (a zero row where the label is -1, unlabeled, or absent)."""
        return generator_lib.generator_inputs(features, labels, self.num_classes, self.label_input)

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

    def soft_label_loss(self, logits, soft_labels):
        """L_c, the configured loss at the configured scale."""
        sum_over_classes = self.loss_scale == "sum_over_classes"
        return LABEL_LOSSES[self.label_loss](logits, soft_labels, sum_over_classes)

    def train_step(self, data):
        batch = training_batch.unpack(
            data, self.classifier.input_shape, self.num_classes,
            self.feature_extractor.output_shape,
        )  # fmt: skip
        trainable = self.classifier.trainable_variables
        theta = [variable.value for variable in trainable]
        state = [variable.value for variable in self.classifier.non_trainable_variables]
        generator_inputs = self._generator_inputs(batch)
        global_batch = distribute.num_replicas() > 1 and self.virtual_batch == "global"

        # 1-3: soft labels ŷ, virtual step θ̂, meta loss at θ̂ and its gradient for φ
        strategy = meta_gradient.strategy_for(self.classifier, self._options)
        moved = meta_gradient.virtual_indices(self.classifier, self._options)
        meta_step = meta_gradient.STRATEGIES[strategy](
            self, generator_inputs, batch, theta, state, moved, global_batch
        )
        labels_ok, step_ok = self._step_checks(
            batch,
            [meta_step.virtual_step.label_loss, meta_step.meta_loss, *meta_step.generator_grads],
        )

        # 4: the generator's update
        distribute.run_if(step_ok, self._update_generator, meta_step.generator_grads)

        # 5: the new soft labels ŷ', constant
        new_soft_labels = tf.stop_gradient(self.label_generator(generator_inputs, training=False))

        # 6: the classifier's update, reusing the noisy batch's forward pass (and with a
        # shared pass, λ·CE on the meta batch at θ, in the same backward pass)
        clean = None
        if self.clean_weight and meta_step.clean_logits is not None:
            clean = (meta_step.clean_logits, batch.y_meta)
        loss, classifier_grads = self._classifier_gradients(
            meta_step.virtual_step, new_soft_labels, theta, clean
        )
        new_state = meta_step.new_state
        if self.clean_weight and clean is None:
            # ... plus λ·CE on the meta batch at θ, in a pass of its own
            clean_loss, clean_grads, new_state = self._clean_gradients(batch, theta, new_state)
            loss = loss + self.clean_weight * clean_loss
            classifier_grads = [a + b for a, b in zip(classifier_grads, clean_grads)]
        step_ok = tf.logical_and(step_ok, distribute.on_all_replicas(tf.math.is_finite(loss)))
        distribute.run_if(step_ok, self._update_classifier, classifier_grads, new_state)

        return self._update_metrics(batch, meta_step, loss, labels_ok, step_ok)

    def _generator_inputs(self, batch):
        """Frozen features of the noisy batch (unless the batch carries them), or the
        classifier's current logits as constants; and with `label_input` its one-hot
        labels."""
        if self.generator_input == "classifier_logits":
            if batch.features is not None:
                raise ValueError(
                    "The training batches carry cached frozen features, but this "
                    "MetaLabelNet's generator reads the classifier's current logits "
                    '(`generator_input="classifier_logits"`), which caching would freeze. '
                    "Train on batches without features (no `mln_tf.data.cache_features`)."
                )
            logits = self.classifier(batch.x, training=False)
            features = tf.stop_gradient(tf.cast(logits, self.label_generator.compute_dtype))
        elif batch.features is None:
            features = self.feature_extractor(batch.x, training=False)
        elif self.generator_refresh != "never":
            raise ValueError(
                "The training batches carry cached frozen features, but this MetaLabelNet "
                f"refreshes its feature extractor (generator_refresh="
                f"{self.generator_refresh!r}), which would leave them stale. Train on batches "
                "without features (no `mln_tf.data.cache_features`)."
            )
        else:
            features = tf.cast(batch.features, self.label_generator.compute_dtype)
        return self.generator_inputs(features, batch.y)

    def _update_generator(self, grads):
        self.generator_optimizer.apply(grads, self.label_generator.trainable_variables)

    def _classifier_gradients(self, virtual_step, soft_labels, theta, clean=None):
        """L_c(θ; ŷ') + w·L_e(θ) and its gradient, through the virtual step's forward pass;
        with `clean`, the meta batch's `(logits, labels)` from that pass, plus λ·CE."""
        logits = virtual_step.logits
        targets = [logits] if clean is None else [logits, clean[0]]
        with tf.GradientTape() as logits_tape:
            logits_tape.watch(targets)
            loss = self.soft_label_loss(logits, soft_labels)
            if self.entropy_weight:
                sum_over_classes = self.loss_scale == "sum_over_classes"
                loss = loss + self.entropy_weight * losses.entropy_loss(logits, sum_over_classes)
            if clean is not None:
                loss = loss + self.clean_weight * losses.meta_loss(clean[1], clean[0])
            scaled_loss = self.optimizer.scale_loss(distribute.scale_for_replicas(loss))
        logits_grads = logits_tape.gradient(scaled_loss, targets)
        grads = virtual_step.tape.gradient(targets, theta, output_gradients=logits_grads)
        return loss, grads

    def _clean_gradients(self, batch, theta, state):
        """CE(f_θ(x_m), y_m) and the gradient of λ times it; the state keeps the noisy pass's
        batch-normalisation statistics and draws this pass's dropout masks afresh."""
        with tf.GradientTape() as tape:
            tape.watch(theta)
            logits, clean_state = meta_gradient.classifier_logits(
                self.classifier, theta, state, batch.x_meta
            )
            clean_loss = losses.meta_loss(batch.y_meta, logits)
            scaled_loss = self.optimizer.scale_loss(
                distribute.scale_for_replicas(self.clean_weight * clean_loss)
            )
        grads = tape.gradient(scaled_loss, theta)
        new_state = meta_gradient.state_after_step(self.classifier, state, clean_state)
        return clean_loss, grads, new_state

    def _update_metrics(self, batch, meta_step, loss, labels_ok, step_ok):
        self.loss_tracker.update_state(loss)
        self.meta_loss_tracker.update_state(meta_step.meta_loss)
        y = batch.y
        if y is not None:
            predicted = tf.argmax(meta_step.soft_labels, -1, output_type=y.dtype)
            agrees = tf.cast(tf.equal(predicted, y), "float32")
            self.agreement_tracker.update_state(agrees, sample_weight=tf.cast(y >= 0, "float32"))
        self._count_skipped_steps(labels_ok, step_ok)
        return self._training_logs()


def _option_property(name):
    def get(self):
        return getattr(self._options, name)

    def set(self, value):
        self.set_options(**{name: value})

    return property(get, set, doc=f"The `{name}` option (`mln_tf.options`).")


for _name in options_lib.NAMES:
    setattr(MetaLabelNet, _name, _option_property(_name))


def _check_classifier_options(options, classifier):
    """Raises now, outside the traced step, for options this classifier cannot take; builds
    the classifier's split that `meta_batch_pass="shared"` runs."""
    meta_gradient.check_head_layers(options.head_layers, classifier)
    if options.meta_batch_pass == "shared":
        meta_gradient.features_and_logits(classifier)
