"""The virtual step and the meta-gradient, in two exact strategies (`docs/algorithm.md`).

Both strategies share `virtual_step`: the classifier's forward pass on the noisy batch
under a persistent tape, its inner gradient, and the fast weights θ̂ = θ − α·g. They differ
in how the derivative of the meta loss L_m(θ̂) reaches the generator's weights φ:

- `nested_tapes`, the reference: the soft labels, the virtual step and the meta loss are
  recorded on an outer tape, which differentiates through the inner gradient (reverse mode
  twice).
- `forward_mode`: v = ∇_θ̂ L_m, then one Jacobian-vector product J_p v of the classifier's
  probabilities at θ gives ∂L_m/∂ŷ in closed form, which the generator's backward pass
  carries to φ.

Each returns a `MetaStep`: the noisy pass (which the classifier's own update reuses), the
soft labels, the meta loss and the generator's gradients.
"""

import dataclasses
import warnings
import weakref

import keras
import tensorflow as tf

from mln_tf import distribute, losses, random_state


@dataclasses.dataclass
class VirtualStep:
    """The noisy batch's forward pass at θ and the fast weights θ̂ it gives.

    Attributes:
        logits: the classifier's float32 logits on the noisy batch at θ.
        new_state: the classifier's non-trainable variables after that pass.
        tape: the persistent `tf.GradientTape` that recorded the pass; the classifier's
            update takes its gradient through it.
        label_loss: L_c(θ; ŷ), the inner loss.
        fast_weights: θ̂, a list of tensors in the order of the trainable variables.
    """

    logits: tf.Tensor
    new_state: list
    tape: tf.GradientTape
    label_loss: tf.Tensor
    fast_weights: list


@dataclasses.dataclass
class MetaStep:
    """What a meta-gradient strategy returns: steps 1 to 4 of the algorithm.

    Attributes:
        virtual_step: the `VirtualStep`.
        soft_labels: ŷ, the generator's soft labels for the noisy batch.
        meta_loss: L_m(θ̂).
        generator_grads: ∇_φ L_m.
        new_state: the classifier's non-trainable values after the step: the noisy pass's
            batch-normalisation statistics, and random-generator states advanced by both
            the noisy and the meta pass, so that the next step draws fresh dropout masks.
        clean_logits: the meta batch's float32 logits at θ, recorded on the virtual step's
            tape, where the meta batch shared the noisy batch's pass (`shared_pass`);
            otherwise `None`.
    """

    virtual_step: VirtualStep
    soft_labels: tf.Tensor
    meta_loss: tf.Tensor
    generator_grads: list
    new_state: list
    clean_logits: tf.Tensor | None = None


def classifier_logits(classifier, weights, state, images):
    """The classifier's logits at `weights`, in float32, and its new state."""
    logits, new_state = classifier.stateless_call(weights, state, images, training=True)
    # A mixed-precision classifier's logits; the losses are computed in float32.
    if logits.dtype in (tf.float16, tf.bfloat16):
        logits = tf.cast(logits, "float32")
    return logits, new_state


def virtual_step(classifier, theta, state, images, inner_loss, virtual_indices, virtual_lr,
                 global_batch):  # fmt: skip
    """θ̂ = θ − α·∇_θ L_c on the variables at `virtual_indices`, θ elsewhere.

    Called under an outer tape, θ̂ stays differentiable through `inner_loss`'s inputs.

    Args:
        classifier: the `keras.Model`.
        theta: list of the trainable variables' values.
        state: list of the non-trainable variables' values.
        images: the noisy batch.
        inner_loss: callable `logits -> scalar`, L_c.
        virtual_indices: indices into `theta` that the virtual step moves.
        virtual_lr: float, α.
        global_batch: bool, whether to take the global batch's gradient across replicas.

    Returns:
        A `VirtualStep`.
    """
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(theta)
        logits, new_state = classifier_logits(classifier, theta, state, images)
        label_loss = inner_loss(logits)
        virtual_loss = _virtual_loss(label_loss, global_batch)
    fast_weights = _fast_weights(tape, virtual_loss, theta, virtual_indices, virtual_lr,
                                 global_batch)  # fmt: skip
    return VirtualStep(logits, new_state, tape, label_loss, fast_weights)


def _virtual_loss(label_loss, global_batch):
    """The loss the virtual step descends: with `global_batch`, this replica's share of the
    global-batch mean, as Keras scales losses."""
    return distribute.scale_for_replicas(label_loss) if global_batch else label_loss


def _fast_weights(tape, virtual_loss, theta, virtual_indices, virtual_lr, global_batch):
    """θ̂: θ − α·∇ of `virtual_loss` (recorded on `tape`) at `virtual_indices`, θ elsewhere."""
    grads = tape.gradient(virtual_loss, [theta[index] for index in virtual_indices])
    if global_batch:
        # The global batch's gradient. The gradient of this all-reduce is the all-reduce of
        # the incoming gradient: φ's gradient gathers every replica's meta loss.
        grads = tf.distribute.get_replica_context().all_reduce("sum", grads)
    fast_weights = list(theta)
    for index, grad in zip(virtual_indices, grads):
        fast_weights[index] = theta[index] - virtual_lr * grad
    return fast_weights


def meta_loss(classifier, optimizer, fast_weights, state, x_meta, y_meta):
    """The meta loss at θ̂; its share scaled for the replicas and for `optimizer`, the meta
    learner's (loss scaling); and the classifier's state after the meta pass."""
    meta_logits, meta_state = classifier_logits(classifier, fast_weights, state, x_meta)
    loss = losses.meta_loss(y_meta, meta_logits)
    scaled = optimizer.scale_loss(distribute.scale_for_replicas(loss))
    return loss, scaled, meta_state


def state_after_step(classifier, noisy_state, meta_state):
    """The noisy pass's batch-normalisation statistics (the virtual pass's are discarded),
    with the random-generator states the meta pass advanced further."""
    random_ids = {id(variable) for variable in random_state.random_state_variables(classifier)}
    return [
        meta if id(variable) in random_ids else noisy
        for variable, noisy, meta in zip(
            classifier.non_trainable_variables, noisy_state, meta_state, strict=True
        )
    ]


def nested_tapes(model, generator_inputs, batch, theta, state, virtual_indices, global_batch):
    """The reference meta-gradient: reverse mode through the inner gradient.

    Args:
        model: the `MetaLabelNet`.
        generator_inputs: the label generator's input for the noisy batch.
        batch: the `TrainingBatch`.
        theta, state: the classifier's trainable and non-trainable values.
        virtual_indices: indices into `theta` that the virtual step moves.
        global_batch: bool, whether the virtual step takes the global batch's gradient.

    Returns:
        A `MetaStep`.
    """
    with tf.GradientTape() as meta_tape:
        soft_labels = model.label_generator(generator_inputs, training=True)
        step = virtual_step(
            model.classifier, theta, state, batch.x,
            lambda logits: model.soft_label_loss(logits, soft_labels),
            virtual_indices, model.virtual_lr, global_batch,
        )  # fmt: skip
        # Meta loss on the clean batch; the virtual pass's BN updates are discarded
        loss, scaled, meta_state = meta_loss(
            model.classifier, model.generator_optimizer, step.fast_weights, step.new_state,
            batch.x_meta, batch.y_meta,
        )  # fmt: skip
    generator_grads = meta_tape.gradient(scaled, model.label_generator.trainable_variables)
    new_state = state_after_step(model.classifier, step.new_state, meta_state)
    return MetaStep(step, soft_labels, loss, generator_grads, new_state)


def forward_mode(model, generator_inputs, batch, theta, state, virtual_indices, global_batch):
    """The meta-gradient through one Jacobian-vector product; arguments as `nested_tapes`.

    ∂L_m/∂ŷ = α·(J_p v)/((ŷ + ε)·B·C) for the reverse KL, α·(J_log p v)/(B·C) for
    cross-entropy; B instead of B·C summed over classes; over N for a replica's share.
    """
    with tf.GradientTape() as generator_tape:
        soft_labels = model.label_generator(generator_inputs, training=True)
    # Virtual step, first order only: φ's gradient comes from the product below
    step = virtual_step(
        model.classifier, theta, state, batch.x,
        lambda logits: model.soft_label_loss(logits, tf.stop_gradient(soft_labels)),
        virtual_indices, model.virtual_lr, global_batch,
    )  # fmt: skip
    # Meta loss on the clean batch and v = ∇_θ̂ L_m; the virtual BN updates are discarded
    virtual_fast_weights = [step.fast_weights[index] for index in virtual_indices]
    with tf.GradientTape() as fast_tape:
        fast_tape.watch(virtual_fast_weights)
        loss, scaled, meta_state = meta_loss(
            model.classifier, model.generator_optimizer, step.fast_weights, step.new_state,
            batch.x_meta, batch.y_meta,
        )  # fmt: skip
    meta_grads = fast_tape.gradient(scaled, virtual_fast_weights)
    if global_batch:
        # θ̂ is shared by the replicas: the meta loss of every replica moves it.
        meta_grads = tf.distribute.get_replica_context().all_reduce("sum", meta_grads)
    # J_p v at θ on the noisy batch: the same forward as above (same state, same dropout
    # masks), which XLA and grappler merge with it; only the tangents are new.
    virtual_theta = [theta[index] for index in virtual_indices]
    with tf.autodiff.ForwardAccumulator(virtual_theta, meta_grads) as accumulator:
        jvp_theta = list(theta)
        for position, index in enumerate(virtual_indices):
            jvp_theta[index] = virtual_theta[position]
        jvp_logits, _ = classifier_logits(model.classifier, jvp_theta, state, batch.x)
    tangent_logits = accumulator.jvp(jvp_logits, unconnected_gradients="zero")
    probs = tf.nn.softmax(step.logits, axis=-1)
    tangent_log_probs = tangent_logits - tf.reduce_sum(
        probs * tangent_logits, axis=-1, keepdims=True
    )
    size = tf.cast(tf.size(probs), probs.dtype)
    if model.loss_scale == "sum_over_classes":
        size = tf.cast(tf.shape(probs)[0], probs.dtype)
    if global_batch:
        size = size * distribute.num_replicas()
    if model.label_loss == "cross_entropy":
        soft_label_grads = model.virtual_lr * tangent_log_probs / size
    else:
        soft_labels_in_loss = tf.cast(soft_labels, probs.dtype)
        soft_label_grads = (
            model.virtual_lr
            * probs
            * tangent_log_probs
            / ((soft_labels_in_loss + losses.LOG_EPSILON) * size)
        )
    generator_grads = generator_tape.gradient(
        soft_labels,
        model.label_generator.trainable_variables,
        output_gradients=tf.cast(soft_label_grads, soft_labels.dtype),
    )
    new_state = state_after_step(model.classifier, step.new_state, meta_state)
    return MetaStep(step, soft_labels, loss, generator_grads, new_state)


def shared_pass(model, generator_inputs, batch, theta, state, virtual_indices, global_batch):
    """The nested tapes with one forward pass of the noisy and the meta batch together.

    When the virtual step moves the output layer alone, the meta batch's features at θ̂ are
    its features at θ. One pass of [x; x_meta] at θ then gives the noisy logits (for the
    virtual step and the classifier's update), the meta batch's features (the meta loss
    applies the fast output layer to them) and its logits at θ (for the clean term, returned
    as `MetaStep.clean_logits`). Arguments as `nested_tapes`.
    """
    split = features_and_logits(model.classifier)
    trainable_order, state_order = split.variable_order
    head = model.classifier.layers[-1]
    count = tf.shape(batch.x)[0]
    images = tf.concat([batch.x, tf.cast(batch.x_meta, batch.x.dtype)], axis=0)
    with tf.GradientTape() as meta_tape:
        soft_labels = model.label_generator(generator_inputs, training=True)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(theta)
            (features, logits), split_state = split.stateless_call(
                [theta[index] for index in trainable_order],
                [state[index] for index in state_order], images, training=True,
            )  # fmt: skip
            logits = tf.cast(logits, "float32")  # losses in float32 under mixed precision
            noisy_logits, clean_logits = logits[:count], logits[count:]
            label_loss = model.soft_label_loss(noisy_logits, soft_labels)
            virtual_loss = _virtual_loss(label_loss, global_batch)
        fast_weights = _fast_weights(tape, virtual_loss, theta, virtual_indices,
                                     model.virtual_lr, global_batch)  # fmt: skip
        index_of = {id(variable): index for index, variable in
                    enumerate(model.classifier.trainable_variables)}  # fmt: skip
        head_weights = [fast_weights[index_of[id(v)]] for v in head.trainable_variables]
        meta_logits, _ = head.stateless_call(head_weights, [], tf.stop_gradient(features[count:]))
        loss = losses.meta_loss(batch.y_meta, tf.cast(meta_logits, "float32"))
        scaled = model.generator_optimizer.scale_loss(distribute.scale_for_replicas(loss))
    generator_grads = meta_tape.gradient(scaled, model.label_generator.trainable_variables)
    new_state = list(state)
    for index, value in zip(state_order, split_state):
        new_state[index] = value
    step = VirtualStep(noisy_logits, new_state, tape, label_loss, fast_weights)
    return MetaStep(step, soft_labels, loss, generator_grads, new_state, clean_logits)


def features_and_logits(classifier):
    """The classifier with its output layer's input as a first output, for `shared_pass`.

    It shares the classifier's layers and variables; its `variable_order` holds, for its
    trainable and non-trainable variables, their indices among the classifier's.

    Raises:
        ValueError: if the classifier's last layer is not its one output layer with
            trainable weights, or the classifier is not a functional or Sequential model.
    """
    if classifier in _SPLITS:
        return _SPLITS[classifier]
    head = classifier.layers[-1] if classifier.layers else None
    outputs = getattr(classifier, "outputs", None)
    if (
        head is None or not head.trainable_weights or not outputs or len(outputs) != 1
        or weighted_layers(classifier)[-1] is not head
    ):  # fmt: skip
        raise ValueError(
            "Invalid value for argument `meta_batch_pass`. Received: "
            f"meta_batch_pass='shared' with the classifier {classifier.name!r}, whose last "
            "layer is not its one output layer with trainable weights (a Dense layer, say). "
            "Expected a functional or Sequential classifier that ends in that layer. Use "
            "meta_batch_pass='separate'."
        )
    inputs = classifier.inputs[0] if len(classifier.inputs) == 1 else classifier.inputs
    split = keras.Model(inputs, [head.input, outputs[0]], name="features_and_logits")
    trainable = {id(v): i for i, v in enumerate(classifier.trainable_variables)}
    state = {id(v): i for i, v in enumerate(classifier.non_trainable_variables)}
    split.variable_order = (
        [trainable[id(v)] for v in split.trainable_variables],
        [state[id(v)] for v in split.non_trainable_variables],
    )
    _SPLITS[classifier] = split
    return split


# Each classifier's `features_and_logits`, built once, outside the traced step, and kept
# out of the models' tracked attributes (they would enter saved weights).
_SPLITS = weakref.WeakKeyDictionary()


STRATEGIES = {"nested_tapes": nested_tapes, "forward_mode": forward_mode,
              "shared_pass": shared_pass}  # fmt: skip
MAX_POOLING_LAYERS = (
    keras.layers.MaxPooling1D,
    keras.layers.MaxPooling2D,
    keras.layers.MaxPooling3D,
)


# The virtual step's scope


def virtual_indices(classifier, options):
    """Indices into the classifier's trainable variables that the virtual step moves."""
    trainable = classifier.trainable_variables
    if options.virtual_scope == "all":
        return list(range(len(trainable)))
    head = {id(v) for layer in _head_layers(classifier, options) for v in layer.trainable_weights}
    return [index for index, variable in enumerate(trainable) if id(variable) in head]


def _head_layers(classifier, options):
    return weighted_layers(classifier)[-options.head_layers :]


def check_head_layers(head_layers, classifier):
    """Raises unless `head_layers` counts 1 to all of the classifier's weighted layers."""
    weighted = [layer.name for layer in weighted_layers(classifier)]
    if isinstance(head_layers, bool) or not isinstance(head_layers, int) or not (
        1 <= head_layers <= len(weighted)
    ):
        shown = ", ".join(weighted[-5:])
        raise ValueError(
            f"Invalid value for argument `head_layers`. Received: head_layers={head_layers!r}. "
            f"Expected an integer from 1 to {len(weighted)}, the number of the classifier's "
            f"innermost layers with trainable weights (the last: {shown})."
        )


def virtual_path_layers(classifier, options):
    """The classifier's innermost layers from the first one the virtual step moves on."""
    layers = leaf_layers(classifier)
    if options.virtual_scope == "head":
        layers = layers[layers.index(_head_layers(classifier, options)[0]) :]
    return layers


def strategy_for(classifier, options):
    """The name of the strategy this trace takes; warns where forward mode cannot be used.

    TensorFlow's forward-mode autodiff does not carry tangents across replicas: through a
    synchronised batch normalisation, whose moments are all-reduced, the product J_p v would
    miss the other replicas' terms. There the nested tapes take over.
    """
    if options.meta_batch_pass == "shared":
        return "shared_pass"
    if options.meta_gradient != "forward_mode" or distribute.num_replicas() == 1:
        return options.meta_gradient
    synchronized = [
        layer.name
        for layer in virtual_path_layers(classifier, options)
        if isinstance(layer, keras.layers.BatchNormalization) and layer.synchronized
    ]
    if not synchronized:
        return "forward_mode"
    warnings.warn(
        f'`meta_gradient="forward_mode"` falls back to "nested_tapes" under this '
        f"{distribute.num_replicas()}-replica strategy: the synchronised batch normalisation "
        f"{', '.join(repr(name) for name in synchronized)} all-reduces its moments, "
        "and forward-mode derivatives do not cross replicas. The meta-gradient stays "
        'exact. Pass `meta_gradient="nested_tapes"` to silence this warning.',
        stacklevel=3,
    )
    return "nested_tapes"


def check_xla_max_pooling(classifier, options):
    """Raises if XLA would have to compile max-pooling's second derivative below float32."""
    for layer in virtual_path_layers(classifier, options):
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


def weighted_layers(classifier):
    """The classifier's innermost layers that have trainable weights, in order.

    A nested model (a ResNet-50 backbone, say) counts its own layers, not itself.
    """
    return [layer for layer in leaf_layers(classifier) if layer.trainable_weights]


def leaf_layers(model):
    leaves = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            leaves.extend(leaf_layers(layer))
        else:
            leaves.append(layer)
    return leaves
