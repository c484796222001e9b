"""MetaLabelNet's options beyond the paper: the label-aware generator, its initialisation
from the classifier's head, the loss scale and the cross-entropy label loss.

The meta-gradient with all of them on is checked against central finite differences of a
meta loss written again by hand, for both ways of computing it.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

import mln_tf
from mln_tf import losses, train

NUM_CLASSES = 3
OPTIONS = dict(
    label_input=True,
    generator_init="classifier_head",
    label_trust=1.5,
    loss_scale="sum_over_classes",
    label_loss="cross_entropy",
)


def tanh_classifier():
    inputs = keras.Input((4,))
    hidden = layers.Dense(5, activation="tanh", name="features")(inputs)
    return keras.Model(inputs, layers.Dense(NUM_CLASSES, name="logits")(hidden))


def _softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def test_sum_over_classes_is_num_classes_times_the_mean():
    rng = np.random.default_rng(0)
    logits = tf.constant(rng.normal(size=(4, 5)))
    soft = tf.constant(_softmax(rng.normal(size=(4, 5))))
    for loss in (losses.soft_label_reverse_kl, losses.soft_label_cross_entropy):
        np.testing.assert_allclose(loss(logits, soft, True), 5 * loss(logits, soft), rtol=1e-12)
    np.testing.assert_allclose(
        losses.entropy_loss(logits, True), 5 * losses.entropy_loss(logits), rtol=1e-12
    )


def test_soft_label_cross_entropy_matches_numpy_and_reaches_the_soft_labels():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(4, 3))
    soft = tf.Variable(_softmax(rng.normal(size=(4, 3))))
    p = _softmax(logits)
    expected = -np.mean(np.sum(soft.numpy() * np.log(p), axis=1))
    with tf.GradientTape() as tape:
        value = losses.soft_label_cross_entropy(tf.constant(logits), soft, sum_over_classes=True)
    np.testing.assert_allclose(value, expected, rtol=1e-12)
    np.testing.assert_allclose(tape.gradient(value, soft), -np.log(p) / 4, rtol=1e-12)


def test_classifier_head_init_makes_the_first_soft_labels_the_posterior_with_the_label():
    classifier = tanh_classifier()
    model = mln_tf.MetaLabelNet(classifier, feature_layer="features", **OPTIONS)
    w2, b2 = classifier.get_layer("logits").get_weights()
    kernel, bias = model.label_generator.get_weights()
    np.testing.assert_array_equal(kernel[:5], w2)
    np.testing.assert_array_equal(kernel[5:], 1.5 * np.eye(NUM_CLASSES))
    np.testing.assert_array_equal(bias, b2)

    x = np.random.default_rng(2).normal(size=(6, 4)).astype("float32")
    y = np.array([0, 1, 2, 2, 1, 0])
    logits = classifier.predict(x, verbose=0)
    expected = _softmax(logits + 1.5 * np.eye(NUM_CLASSES)[y])
    np.testing.assert_allclose(model.predict_soft_labels(x, y), expected, rtol=1e-5, atol=1e-6)


def test_an_unlabeled_example_gets_a_zero_label_input():
    model = mln_tf.MetaLabelNet(tanh_classifier(), feature_layer="features", **OPTIONS)
    features = tf.ones((3, 5))
    inputs = model.generator_inputs(features, tf.constant([2, -1, 0]))
    np.testing.assert_array_equal(
        inputs.numpy()[:, 5:], [[0, 0, 1], [0, 0, 0], [1, 0, 0]]
    )
    np.testing.assert_array_equal(model.generator_inputs(features).numpy()[:, 5:], 0)


@pytest.mark.parametrize("generator_input", ["frozen_features", "classifier_logits"])
@pytest.mark.parametrize("meta_gradient", ["forward_mode", "nested_tapes"])
def test_meta_gradient_with_every_option_matches_central_finite_differences(
    meta_gradient, generator_input
):
    keras.config.set_floatx("float64")
    try:
        rng = np.random.default_rng(3)
        x, x_meta = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
        y, y_meta = rng.integers(0, NUM_CLASSES, 6), rng.integers(0, NUM_CLASSES, 6)
        classifier = tanh_classifier()
        alpha = 0.7
        model = mln_tf.MetaLabelNet(
            classifier, feature_layer="features", meta_gradient=meta_gradient,
            generator_input=generator_input, **OPTIONS,
        )  # fmt: skip
        model.compile(
            optimizer=keras.optimizers.SGD(0.1),
            generator_optimizer=keras.optimizers.SGD(1.0),
            virtual_lr=alpha,
        )
        params = [tf.constant(w) for w in classifier.get_weights()]
        w_gen, b_gen = [v.numpy() for v in model.label_generator.trainable_variables]
        model.train_on_batch(((x, y), (x_meta, y_meta)))
        after = [v.numpy() for v in model.label_generator.trainable_variables]
        gradient = [w_gen - after[0], b_gen - after[1]]

        def forward(params, inputs):
            return tf.tanh(inputs @ params[0] + params[1]) @ params[2] + params[3]

        # The generator reads the frozen features, or the logits at θ as constants, and ỹ.
        if generator_input == "frozen_features":
            read = np.tanh(x @ params[0].numpy() + params[1].numpy())
        else:
            read = forward(params, x).numpy()
        inputs = np.concatenate([read, np.eye(NUM_CLASSES)[y]], axis=1)

        def meta_loss(w, b):
            soft = tf.nn.softmax(inputs @ w + b)
            with tf.GradientTape() as tape:
                tape.watch(params)
                log_p = tf.nn.log_softmax(forward(params, x))
                # cross-entropy on the soft labels, summed over classes
                loss = -tf.reduce_mean(tf.reduce_sum(soft * log_p, axis=1))
            fast = [w - alpha * g for w, g in zip(params, tape.gradient(loss, params))]
            log_p_meta = tf.nn.log_softmax(forward(fast, x_meta)).numpy()
            return -np.mean(log_p_meta[np.arange(6), y_meta])

        epsilon = 1e-6
        for which, (param, analytic) in enumerate(zip((w_gen, b_gen), gradient)):
            numeric = np.zeros_like(param)
            for index in np.ndindex(param.shape):
                plus, minus = param.copy(), param.copy()
                plus[index] += epsilon
                minus[index] -= epsilon
                args = [(plus, b_gen), (minus, b_gen)] if which == 0 else [
                    (w_gen, plus), (w_gen, minus)]  # fmt: skip
                numeric[index] = (meta_loss(*args[0]) - meta_loss(*args[1])) / (2 * epsilon)
            np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-10)
        # The label block V gets a real gradient: the meta-gradient learns the trust.
        assert np.abs(gradient[0][-NUM_CLASSES:]).max() > 1e-4
    finally:
        keras.config.set_floatx("float32")


def test_options_survive_saving(tmp_path):
    model = mln_tf.MetaLabelNet(tanh_classifier(), feature_layer="features", **OPTIONS)
    model.compile()
    path = tmp_path / "model.keras"
    model.save(path)
    restored = keras.models.load_model(path)
    for name, value in OPTIONS.items():
        assert getattr(restored, name) == value
    np.testing.assert_array_equal(
        restored.label_generator.get_weights()[0], model.label_generator.get_weights()[0]
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"generator_init": "zeros"}, "Received: generator_init='zeros'. Expected one of "
                                      "'random', 'classifier_head'"),  # fmt: skip
        ({"loss_scale": "sum"}, "Received: loss_scale='sum'. Expected one of 'mean', "
                                "'sum_over_classes'"),  # fmt: skip
        ({"label_loss": "kl"}, "Received: label_loss='kl'. Expected one of 'reverse_kl', "
                               "'cross_entropy'"),  # fmt: skip
    ],
)
def test_invalid_options_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        mln_tf.MetaLabelNet(tanh_classifier(), feature_layer="features", **kwargs)


def test_classifier_head_init_needs_a_linear_dense_head_on_the_features():
    inputs = keras.Input((4,))
    hidden = layers.Dense(5, activation="tanh", name="features")(inputs)
    # Logits, so that the model accepts the classifier, but not a linear function of the features
    outputs = layers.Dense(NUM_CLASSES, activation="relu", name="relu_head")(hidden)
    with pytest.raises(ValueError, match="last layer 'relu_head' is not a Dense layer"):
        mln_tf.MetaLabelNet(
            keras.Model(inputs, outputs), feature_layer="features",
            generator_init="classifier_head",
        )  # fmt: skip


def test_a_label_aware_generator_needs_the_labels_to_predict():
    model = mln_tf.MetaLabelNet(tanh_classifier(), feature_layer="features", label_input=True)
    with pytest.raises(ValueError, match="pass `labels=` to `predict_soft_labels`"):
        model.predict_soft_labels(np.zeros((2, 4), "float32"))


def test_paper_preset_is_the_authors_algorithm_and_the_defaults_are_the_projects():
    paper = train.TrainConfig.from_preset("paper", noise="symmetric", rate=0.8)
    assert (paper.noise, paper.rate, paper.preset) == ("symmetric", 0.8, "paper")
    options = paper.options
    assert (options.label_input, options.generator_init, options.loss_scale,
            options.label_loss) == (False, "random", "mean", "reverse_kl")  # fmt: skip
    assert (options.virtual_scope, options.entropy_weight, options.virtual_lr) == (
        "all", 1.0, 1.0)  # fmt: skip
    assert options == mln_tf.options.MetaLabelNetOptions()
    assert train.TrainConfig.from_preset("cifar10").options.label_loss == "reverse_kl"
    default = train.TrainConfig().options
    assert (default.label_input, default.generator_init, default.loss_scale,
            default.clean_weight) == (True, "clean_posterior", "sum_over_classes", 1.0)  # fmt: skip
    # Only stage 2 differs: the paper preset and the defaults share one cached warm-up.
    assert paper.warm_up_key() == train.TrainConfig(noise="symmetric", rate=0.8).warm_up_key()
