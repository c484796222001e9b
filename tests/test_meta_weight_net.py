"""MetaWeightNet's step against independent float64 computations, and its Keras plumbing.

The weight net is updated with plain SGD, so the change of its weights in one
`train_on_batch` is the learning rate times the meta-gradient the step computed.
"""

import doctest

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

import mln_tf
from mln_tf import meta_weight_net
from mln_tf.meta_weight_net import MetaWeightNet, build_weight_net


def _batch(rng, batch_size=6, num_inputs=4, num_classes=3, dtype="float64"):
    x = rng.normal(size=(batch_size, num_inputs)).astype(dtype)
    x_meta = rng.normal(size=(batch_size, num_inputs)).astype(dtype)
    y = rng.integers(0, num_classes, batch_size)
    y_meta = rng.integers(0, num_classes, batch_size)
    return x, y, x_meta, y_meta


def _tanh_classifier(num_inputs=4, hidden=5, num_classes=3):
    inputs = keras.Input((num_inputs,))
    features = layers.Dense(hidden, activation="tanh")(inputs)
    return keras.Model(inputs, layers.Dense(num_classes)(features))


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _sigmoid(s):
    return 1.0 / (1.0 + np.exp(-s))


def _weights_numpy(losses, v1, c1, v2, c2):
    """V_ψ(ℓ) by hand, with its pre-activations."""
    a = losses[:, None] @ v1 + c1
    h = np.maximum(a, 0.0)
    s = (h @ v2 + c2)[:, 0]
    return _sigmoid(s), a, h


def test_meta_gradient_matches_central_finite_differences():
    keras.config.set_floatx("float64")
    x, y, x_meta, y_meta = _batch(np.random.default_rng(0))
    classifier = _tanh_classifier()
    alpha = 0.7
    model = MetaWeightNet(classifier, hidden_units=6, virtual_lr=alpha)
    model.compile(optimizer=keras.optimizers.SGD(0.1),
                  weight_net_optimizer=keras.optimizers.SGD(1.0))  # fmt: skip
    theta = [tf.constant(w) for w in classifier.get_weights()]
    psi = [v.numpy() for v in model.weight_net.trainable_variables]

    model.train_on_batch(((x, y), (x_meta, y_meta)))
    gradient = [b - a.numpy() for b, a in zip(psi, model.weight_net.trainable_variables)]

    # An independent L_m(ψ): the classifier's formula and the weight net's, by hand.
    def forward(params, inputs):
        return tf.tanh(inputs @ params[0] + params[1]) @ params[2] + params[3]

    one_hot = np.eye(3)[y]

    def meta_loss(psi):
        with tf.GradientTape() as tape:
            tape.watch(theta)
            losses = -tf.reduce_sum(one_hot * tf.nn.log_softmax(forward(theta, x)), axis=1)
            weights, _, _ = _weights_numpy(losses.numpy(), *psi)
            inner = tf.reduce_mean(weights * losses)
        grads = tape.gradient(inner, theta)
        fast = [w - alpha * g for w, g in zip(theta, grads)]
        log_p_meta = tf.nn.log_softmax(forward(fast, x_meta)).numpy()
        return -np.mean(log_p_meta[np.arange(len(y_meta)), y_meta])

    epsilon = 1e-6
    for which, param in enumerate(psi):
        numeric = np.zeros_like(param)
        for index in np.ndindex(param.shape):
            plus = [p.copy() for p in psi]
            minus = [p.copy() for p in psi]
            plus[which][index] += epsilon
            minus[which][index] -= epsilon
            numeric[index] = (meta_loss(plus) - meta_loss(minus)) / (2 * epsilon)
        np.testing.assert_allclose(gradient[which], numeric, rtol=1e-6, atol=1e-11)
    assert np.abs(gradient[2]).max() > 1e-5  # a real, non-zero gradient


def test_one_step_matches_closed_form_for_softmax_regression():
    keras.config.set_floatx("float64")
    rng = np.random.default_rng(1)
    x, y, x_meta, y_meta = _batch(rng, batch_size=8)
    y[0] = -1  # an unlabeled example: weight 0, but counted in B
    classifier = keras.Sequential([keras.Input((4,)), layers.Dense(3)])
    classifier_lr, weight_net_lr = 0.3, 0.5
    # virtual_lr=None: α is the classifier's learning rate
    model = MetaWeightNet(classifier, hidden_units=5)
    model.compile(optimizer=keras.optimizers.SGD(classifier_lr),
                  weight_net_optimizer=keras.optimizers.SGD(weight_net_lr))  # fmt: skip
    w, b = classifier.get_weights()
    psi = [v.numpy() for v in model.weight_net.trainable_variables]

    logs = model.train_on_batch(((x, y), (x_meta, y_meta)), return_dict=True)

    # Forward pass, weights and virtual step, by hand
    batch_size, alpha = len(y), classifier_lr
    labelled = (y >= 0).astype("float64")
    targets = np.eye(3)[np.maximum(y, 0)] * labelled[:, None]
    p = _softmax(x @ w + b)
    losses = -np.sum(targets * np.log(p), axis=1)
    weights, a, h = _weights_numpy(losses, *psi)
    dlosses_dlogits = p * labelled[:, None] - targets  # zero rows where unlabeled
    inner_dlogits = (weights * labelled)[:, None] * dlosses_dlogits / batch_size
    w_fast = w - alpha * x.T @ inner_dlogits
    b_fast = b - alpha * inner_dlogits.sum(axis=0)
    p_meta = _softmax(x_meta @ w_fast + b_fast)
    meta_loss = -np.mean(np.log(p_meta[np.arange(len(y_meta)), y_meta]))
    meta_dlogits = (p_meta - np.eye(3)[y_meta]) / len(y_meta)
    grad_w_fast, grad_b_fast = x_meta.T @ meta_dlogits, meta_dlogits.sum(axis=0)
    # ∂L_m/∂w_i = −α/B ⟨∇_θ̂ L_m, ∇_θ ℓ_i⟩, then back through the sigmoid and the ReLU
    dmeta_dweights = (
        -alpha / batch_size
        * np.sum((x @ grad_w_fast + grad_b_fast) * dlosses_dlogits, axis=1) * labelled
    )  # fmt: skip
    delta_s = dmeta_dweights * weights * (1 - weights)
    delta_a = delta_s[:, None] * psi[2][:, 0][None, :] * (a > 0)
    psi_grads = [losses[None, :] @ delta_a, delta_a.sum(axis=0), h.T @ delta_s[:, None],
                 np.array([delta_s.sum()])]  # fmt: skip
    new_psi = [p_ - weight_net_lr * g for p_, g in zip(psi, psi_grads)]
    # The classifier's update with the new weights
    new_weights = _weights_numpy(losses, *new_psi)[0] * labelled
    dlogits = new_weights[:, None] * dlosses_dlogits / batch_size
    new_w = w - classifier_lr * x.T @ dlogits
    new_b = b - classifier_lr * dlogits.sum(axis=0)

    for actual, expected in zip(model.weight_net.get_weights(), new_psi):
        np.testing.assert_allclose(actual, expected, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(classifier.get_weights()[0], new_w, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(classifier.get_weights()[1], new_b, rtol=1e-10, atol=1e-13)
    assert np.abs(psi_grads[2]).max() > 1e-6
    np.testing.assert_allclose(logs["meta_loss"], meta_loss, rtol=1e-10)
    np.testing.assert_allclose(logs["loss"], np.mean(new_weights * losses), rtol=1e-10)
    np.testing.assert_allclose(logs["mean_weight"], new_weights[1:].mean(), rtol=1e-10)


def test_weights_lie_in_the_unit_interval_and_match_the_formula():
    weight_net = build_weight_net(hidden_units=100)
    model = MetaWeightNet(keras.Sequential([keras.Input((2,)), layers.Dense(2)]),
                          weight_net=weight_net)  # fmt: skip
    losses = np.array([0.0, 1e-3, 0.5, 2.3, 10.0, 50.0])
    weights = model.predict_weights(losses)
    v1, c1, v2, c2 = [np.asarray(v, "float64") for v in weight_net.get_weights()]
    np.testing.assert_allclose(weights, _weights_numpy(losses, v1, c1, v2, c2)[0], rtol=1e-5)
    assert np.all((weights > 0) & (weights < 1))
    # PyTorch's default initialisation: uniform in ±1/√fan_in
    assert np.abs(v1).max() <= 1.0 and np.abs(v2).max() <= 0.1 and np.abs(c2).max() <= 0.1
    assert weight_net.count_params() == 301


def _float32_model(jit_compile=False, seed=3):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4,))
    hidden = layers.Dense(8, name="dense")(inputs)
    hidden = layers.BatchNormalization(name="bn")(hidden)
    hidden = layers.Activation("relu")(hidden)
    classifier = keras.Model(inputs, layers.Dense(3, name="logits")(hidden))
    model = MetaWeightNet(classifier, hidden_units=16)
    model.compile(optimizer=mln_tf.optimizers.CoupledSGD(0.1, momentum=0.9),
                  weight_net_optimizer=mln_tf.optimizers.CoupledAdam(1e-2),
                  jit_compile=jit_compile)  # fmt: skip
    return model


def _float32_batches(count=3):
    rng = np.random.default_rng(5)
    return [
        ((x, y), (x_meta, y_meta))
        for x, y, x_meta, y_meta in (_batch(rng, 16, dtype="float32") for _ in range(count))
    ]


def test_jit_compile_matches_the_graph_step():
    batches = _float32_batches()
    results = []
    for jit_compile in (False, True):
        model = _float32_model(jit_compile)
        for batch in batches:
            model.train_on_batch(batch)
        results.append([v.numpy() for v in model.weights])
    assert model.jit_compile is True
    for graph, xla in zip(*results):
        np.testing.assert_allclose(xla, graph, rtol=1e-4, atol=1e-5)


def test_save_and_reload_then_a_step_matches_a_step_without_reload(tmp_path):
    batches = _float32_batches()
    model = _float32_model()
    model.train_on_batch(batches[0])
    path = tmp_path / "mwn.keras"
    model.save(path)
    loaded = keras.models.load_model(path)

    assert isinstance(loaded, MetaWeightNet)
    assert (loaded.hidden_units, loaded.virtual_lr, loaded.virtual_scope) == (16, None, "all")
    assert isinstance(loaded.weight_net_optimizer, mln_tf.optimizers.CoupledAdam)
    for original, reloaded in zip(
        [*model.weights, *model.optimizer.variables, *model.weight_net_optimizer.variables],
        [*loaded.weights, *loaded.optimizer.variables, *loaded.weight_net_optimizer.variables],
    ):
        np.testing.assert_array_equal(reloaded.numpy(), original.numpy())
    model.train_on_batch(batches[1])
    loaded.train_on_batch(batches[1])
    for original, reloaded in zip(model.weights, loaded.weights):
        np.testing.assert_allclose(reloaded.numpy(), original.numpy(), rtol=1e-6, atol=1e-7)


def test_fit_on_a_tiny_dataset_has_finite_losses_and_evaluates():
    rng = np.random.default_rng(6)
    images = rng.normal(size=(64, 4)).astype("float32")
    labels = rng.integers(0, 3, 64)
    noisy = tf.data.Dataset.from_tensor_slices((images, labels))
    meta = tf.data.Dataset.from_tensor_slices((images[:16], labels[:16]))
    model = _float32_model(jit_compile=True)
    history = model.fit(mln_tf.data.with_meta(noisy, meta, 16, seed=0), epochs=2, verbose=0)

    assert sorted(history.history) == ["loss", "mean_weight", "meta_loss"]
    for values in history.history.values():
        assert len(values) == 2 and np.all(np.isfinite(values))
    assert 0 < history.history["mean_weight"][-1] < 1
    results = model.evaluate(images, labels, batch_size=16, return_dict=True, verbose=0)
    logits = model.classifier.predict(images, verbose=0)
    np.testing.assert_allclose(
        results["accuracy"], np.mean(np.argmax(logits, axis=1) == labels), rtol=1e-6
    )


def test_a_non_finite_step_is_not_applied():
    model = _float32_model()
    x, y, x_meta, y_meta = _batch(np.random.default_rng(7), 16, dtype="float32")
    x[0, 0] = np.nan
    before = [v.numpy() for v in model.weights]
    with pytest.raises(mln_tf.NonFiniteLossError, match="NaN or infinite"):
        model.train_on_batch(((x, y), (x_meta, y_meta)))
    for original, after in zip(before, model.weights):
        np.testing.assert_array_equal(after.numpy(), original)


def test_a_label_out_of_range_is_reported():
    model = _float32_model()
    x, y, x_meta, y_meta = _batch(np.random.default_rng(8), 16, dtype="float32")
    y_meta[0] = 3
    with pytest.raises(ValueError, match="a label is out of range"):
        model.train_on_batch(((x, y), (x_meta, y_meta)))


def test_a_batch_without_noisy_labels_is_rejected():
    model = _float32_model()
    x, _, x_meta, y_meta = _batch(np.random.default_rng(9), 16, dtype="float32")
    with pytest.raises(ValueError, match="its noisy batches need labels"):
        model.train_on_batch((x, (x_meta, y_meta)))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"virtual_lr": -1.0}, "Received: virtual_lr=-1.0. Expected a positive float"),
        ({"hidden_units": 0}, "Received: hidden_units=0. Expected a positive integer"),
        ({"virtual_scope": "last"}, "Received: virtual_scope='last'"),
        ({"head_layers": 3}, "Received: head_layers=3. Expected an integer from 1 to 1"),
    ],
)
def test_invalid_arguments_raise(kwargs, message):
    classifier = keras.Sequential([keras.Input((2,)), layers.Dense(2)])
    with pytest.raises(ValueError, match=message):
        MetaWeightNet(classifier, **kwargs)


def test_compile_rejects_a_loss():
    model = MetaWeightNet(keras.Sequential([keras.Input((2,)), layers.Dense(2)]))
    with pytest.raises(ValueError, match="Invalid value for argument `loss`"):
        model.compile(loss="mse")


def test_docstring_examples():
    result = doctest.testmod(
        meta_weight_net, extraglobs={"mln_tf": mln_tf, **vars(meta_weight_net)}
    )
    assert result.attempted > 0 and result.failed == 0


def test_default_virtual_lr_follows_the_learning_rate_schedule():
    x, y, x_meta, y_meta = _batch(np.random.default_rng(10), 16, dtype="float32")
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([5], [0.3, 0.05])
    changes = []
    for optimizer, virtual_lr in [
        (keras.optimizers.SGD(schedule), None),  # at step 10: α = 0.05
        (keras.optimizers.SGD(0.05), None),
        (keras.optimizers.SGD(0.05), 0.3),
    ]:
        keras.utils.set_random_seed(11)
        model = MetaWeightNet(_tanh_classifier(), hidden_units=8, virtual_lr=virtual_lr)
        model.compile(optimizer=optimizer, weight_net_optimizer=keras.optimizers.SGD(1.0))
        model.optimizer.iterations.assign(10)
        before = [v.numpy() for v in model.weight_net.weights]
        model.train_on_batch(((x, y), (x_meta, y_meta)))
        changes.append([b - v.numpy() for b, v in zip(before, model.weight_net.weights)])
    for scheduled, constant in zip(changes[0], changes[1]):
        np.testing.assert_allclose(scheduled, constant, rtol=1e-6, atol=1e-9)
    assert np.abs(changes[1][2] - changes[2][2]).max() > 1e-6
