"""The meta-gradient of MetaLabelNet.train_step against two independent computations.

The generator is updated with SGD(learning_rate=1), so the change of its weights in one
`train_on_batch` is exactly minus the meta-gradient that the step computed. Both ways of
computing it, `meta_gradient="forward_mode"` and `"nested_tapes"`, are checked.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

import mln_tf

LOG_EPSILON = 1e-10  # the authors' epsilon inside log(q), written again here on purpose
META_GRADIENTS = ["forward_mode", "nested_tapes"]


def _meta_model(
    classifier, virtual_lr=1.0, feature_layer=None, meta_gradient="forward_mode", **kwargs
):
    model = mln_tf.MetaLabelNet(
        classifier, feature_layer=feature_layer, meta_gradient=meta_gradient, **kwargs
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        generator_optimizer=keras.optimizers.SGD(1.0),
        virtual_lr=virtual_lr,
    )
    return model


def _generator_gradient(model, batch):
    """Minus the generator's one-step change under SGD(1.0): the step's meta-gradient."""
    before = [v.numpy() for v in model.label_generator.trainable_variables]
    model.train_on_batch(batch)
    after = [v.numpy() for v in model.label_generator.trainable_variables]
    return [b - a for b, a in zip(before, after)]


def _float64_batch(rng, batch_size=6, num_inputs=4, num_classes=3):
    x = rng.normal(size=(batch_size, num_inputs))
    x_meta = rng.normal(size=(batch_size, num_inputs))
    y = rng.integers(0, num_classes, batch_size)
    y_meta = rng.integers(0, num_classes, batch_size)
    return x, y, x_meta, y_meta


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _finite_difference_gradient(meta_loss, w_gen, b_gen, epsilon=1e-6):
    numeric = [np.zeros_like(w_gen), np.zeros_like(b_gen)]
    for which, param in enumerate((w_gen, b_gen)):
        for index in np.ndindex(param.shape):
            plus, minus = param.copy(), param.copy()
            plus[index] += epsilon
            minus[index] -= epsilon
            args_plus = (plus, b_gen) if which == 0 else (w_gen, plus)
            args_minus = (minus, b_gen) if which == 0 else (w_gen, minus)
            numeric[which][index] = (meta_loss(*args_plus) - meta_loss(*args_minus)) / (2 * epsilon)
    return numeric


@pytest.mark.parametrize("meta_gradient", META_GRADIENTS)
def test_meta_gradient_matches_central_finite_differences(meta_gradient):
    keras.config.set_floatx("float64")
    rng = np.random.default_rng(0)
    x, y, x_meta, y_meta = _float64_batch(rng)
    inputs = keras.Input((4,))
    hidden = layers.Dense(5, activation="tanh", name="features")(inputs)
    classifier = keras.Model(inputs, layers.Dense(3)(hidden))
    alpha = 0.7
    model = _meta_model(
        classifier, virtual_lr=alpha, feature_layer="features", meta_gradient=meta_gradient
    )
    w1, b1, w2, b2 = [tf.constant(w) for w in classifier.get_weights()]
    w_gen, b_gen = [v.numpy() for v in model.label_generator.trainable_variables]

    gradient = _generator_gradient(model, ((x, y), (x_meta, y_meta)))

    # An independent meta loss L_m(φ), written with the classifier's formula by hand.
    def forward(params, inputs):
        return tf.tanh(inputs @ params[0] + params[1]) @ params[2] + params[3]

    features = tf.tanh(x @ w1 + b1)

    def meta_loss(w_gen, b_gen):
        soft_labels = tf.nn.softmax(features @ w_gen + b_gen)
        params = [w1, b1, w2, b2]
        with tf.GradientTape() as tape:
            tape.watch(params)
            p = tf.nn.softmax(forward(params, x))
            loss = tf.reduce_mean(p * (tf.math.log(p) - tf.math.log(soft_labels + LOG_EPSILON)))
        grads = tape.gradient(loss, params)
        fast = [w - alpha * g for w, g in zip(params, grads)]
        log_p_meta = tf.nn.log_softmax(forward(fast, x_meta))
        return -np.mean(log_p_meta.numpy()[np.arange(len(y_meta)), y_meta])

    numeric = _finite_difference_gradient(meta_loss, w_gen, b_gen)

    for analytic, finite_difference in zip(gradient, numeric):
        np.testing.assert_allclose(analytic, finite_difference, rtol=1e-6, atol=1e-10)
    assert np.abs(gradient[0]).max() > 1e-4  # a real, non-zero gradient


@pytest.mark.parametrize("meta_gradient", META_GRADIENTS)
def test_meta_gradient_matches_closed_form_for_softmax_regression(meta_gradient):
    keras.config.set_floatx("float64")
    rng = np.random.default_rng(1)
    x, y, x_meta, y_meta = _float64_batch(rng, batch_size=8)
    classifier = keras.Sequential([keras.Input((4,)), layers.Dense(3)])
    alpha = 1.0
    # features: the classifier's input
    model = _meta_model(classifier, virtual_lr=alpha, meta_gradient=meta_gradient)
    w, b = classifier.get_weights()
    w_gen, b_gen = [v.numpy() for v in model.label_generator.trainable_variables]

    gradient = _generator_gradient(model, ((x, y), (x_meta, y_meta)))

    # ∇_θ L_c and the chain rule back to φ, by hand.
    num_examples, num_classes = x.shape[0], w.shape[1]
    scale = num_examples * num_classes
    p = _softmax(x @ w + b)
    q = _softmax(x @ w_gen + b_gen)
    a = np.log(p) - np.log(q + LOG_EPSILON)
    dlogits = p * (a - np.sum(p * a, axis=1, keepdims=True))  # scale · ∂L_c/∂z
    w_fast = w - alpha * x.T @ dlogits / scale
    b_fast = b - alpha * dlogits.sum(axis=0) / scale
    p_meta = _softmax(x_meta @ w_fast + b_fast)
    dmeta_logits = (p_meta - np.eye(num_classes)[y_meta]) / len(y_meta)
    v_w = -alpha * x_meta.T @ dmeta_logits  # ∂L_m/∂(∇_W L_c)
    v_b = -alpha * dmeta_logits.sum(axis=0)
    h = (x @ v_w + v_b) / scale  # ∂L_m/∂dlogits
    d_a = p * h - p * np.sum(h * p, axis=1, keepdims=True)
    d_q = -d_a / (q + LOG_EPSILON)
    d_s = q * (d_q - np.sum(q * d_q, axis=1, keepdims=True))
    expected = [x.T @ d_s, d_s.sum(axis=0)]

    for analytic, closed_form in zip(gradient, expected):
        np.testing.assert_allclose(analytic, closed_form, rtol=1e-8, atol=1e-12)


def test_meta_gradient_is_nonzero_and_depends_on_meta_labels():
    rng = np.random.default_rng(2)
    x, y, x_meta, y_meta = _float64_batch(rng, batch_size=16)
    x, x_meta = x.astype("float32"), x_meta.astype("float32")
    inputs = keras.Input((4,))
    hidden = layers.Dense(8, activation="relu", name="features")(inputs)
    classifier = keras.Model(inputs, layers.Dense(3)(hidden))
    weights = classifier.get_weights()

    gradient = _generator_gradient(_meta_model(classifier), ((x, y), (x_meta, y_meta)))
    classifier.set_weights(weights)
    other_labels = (y_meta + 1) % 3
    other_gradient = _generator_gradient(_meta_model(classifier), ((x, y), (x_meta, other_labels)))

    assert np.linalg.norm(gradient[0]) > 1e-4
    assert np.abs(gradient[0] - other_gradient[0]).max() > 1e-4


def _bn_dropout_classifier():
    """Dense → BN → tanh (`features`) → dropout → Dense: state and randomness in the step."""
    inputs = keras.Input((4,))
    x = layers.Dense(6, name="dense")(inputs)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.Activation("tanh", name="features")(x)
    x = layers.Dropout(0.3, name="dropout")(x)
    return keras.Model(inputs, layers.Dense(3, name="logits")(x))


def _one_step(meta_gradient, virtual_scope, batch, steps=1):
    """The generator's and classifier's changes over `steps` steps from fixed weights."""
    keras.utils.set_random_seed(3)
    model = _meta_model(
        _bn_dropout_classifier(),
        virtual_lr=0.7,
        feature_layer="features",
        meta_gradient=meta_gradient,
        virtual_scope=virtual_scope,
    )
    generator_ids = {id(v) for v in model.label_generator.weights}
    before = [v.numpy() for v in model.weights]
    for _ in range(steps):
        model.train_on_batch(batch)
    changes = [b - v.numpy() for b, v in zip(before, model.weights)]
    generator = [c for c, v in zip(changes, model.weights) if id(v) in generator_ids]
    return changes, generator


@pytest.mark.parametrize("virtual_scope", ["all", "head"])
def test_forward_mode_equals_nested_tapes_in_float64(virtual_scope):
    keras.config.set_floatx("float64")
    x, y, x_meta, y_meta = _float64_batch(np.random.default_rng(4), batch_size=8)
    batch = ((x, y), (x_meta, y_meta))

    forward, _ = _one_step("forward_mode", virtual_scope, batch, steps=3)
    nested, _ = _one_step("nested_tapes", virtual_scope, batch, steps=3)

    for a, b in zip(forward, nested):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)
    assert max(np.abs(change).max() for change in forward) > 1e-3  # the weights moved


@pytest.mark.parametrize("meta_gradient", META_GRADIENTS)
def test_head_scope_matches_a_virtual_step_of_the_last_layer_only(meta_gradient):
    keras.config.set_floatx("float64")
    rng = np.random.default_rng(5)
    x, y, x_meta, y_meta = _float64_batch(rng)
    inputs = keras.Input((4,))
    hidden = layers.Dense(5, activation="tanh", name="features")(inputs)
    classifier = keras.Model(inputs, layers.Dense(3)(hidden))
    alpha = 0.7
    model = _meta_model(
        classifier,
        virtual_lr=alpha,
        feature_layer="features",
        meta_gradient=meta_gradient,
        virtual_scope="head",
    )
    w1, b1, w2, b2 = [tf.constant(w) for w in classifier.get_weights()]
    w_gen, b_gen = [v.numpy() for v in model.label_generator.trainable_variables]

    gradient = _generator_gradient(model, ((x, y), (x_meta, y_meta)))

    # By hand: the virtual step moves W2 and b2 only; W1 and b1 stay.
    hidden_noisy = tf.tanh(x @ w1 + b1)
    hidden_meta = tf.tanh(x_meta @ w1 + b1)

    def meta_loss(w_gen, b_gen):
        soft_labels = tf.nn.softmax(hidden_noisy @ w_gen + b_gen)
        with tf.GradientTape() as tape:
            tape.watch([w2, b2])
            p = tf.nn.softmax(hidden_noisy @ w2 + b2)
            loss = tf.reduce_mean(p * (tf.math.log(p) - tf.math.log(soft_labels + LOG_EPSILON)))
        grad_w2, grad_b2 = tape.gradient(loss, [w2, b2])
        logits = hidden_meta @ (w2 - alpha * grad_w2) + (b2 - alpha * grad_b2)
        log_p_meta = tf.nn.log_softmax(logits).numpy()
        return -np.mean(log_p_meta[np.arange(len(y_meta)), y_meta])

    numeric = _finite_difference_gradient(meta_loss, w_gen, b_gen)

    for analytic, finite_difference in zip(gradient, numeric):
        np.testing.assert_allclose(analytic, finite_difference, rtol=1e-6, atol=1e-10)
    assert np.abs(gradient[0]).max() > 1e-4


def test_head_scope_is_an_approximation_of_the_exact_meta_gradient():
    keras.config.set_floatx("float64")
    x, y, x_meta, y_meta = _float64_batch(np.random.default_rng(6), batch_size=8)
    batch = ((x, y), (x_meta, y_meta))
    _, exact = _one_step("forward_mode", "all", batch)
    _, head = _one_step("forward_mode", "head", batch)
    kernel_difference = np.abs(exact[0] - head[0]).max()
    assert kernel_difference > 1e-2 * np.abs(exact[0]).max()
