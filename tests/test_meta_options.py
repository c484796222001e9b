"""MetaLabelNet's speed options: `meta_gradient`, `virtual_scope`, cached features, precision.

Their numbers are checked against independent computations in `test_meta_gradient.py`;
here: their checks, their configuration, cached features against the extractor, and the
XLA rule for max-pooling's second derivative.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

import mln_tf

NUM_CLASSES = 3


def classifier(num_inputs=4):
    """Dense → BN → ReLU (`features`) → Dense: deterministic, with BN state."""
    inputs = keras.Input((num_inputs,))
    x = layers.Dense(8, name="dense")(inputs)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.ReLU(name="features")(x)
    return keras.Model(inputs, layers.Dense(NUM_CLASSES, name="logits")(x))


def pooling_classifier():
    inputs = keras.Input((6, 6, 1))
    x = layers.Conv2D(2, 3, name="conv")(inputs)
    x = layers.MaxPooling2D(2, name="pool")(x)
    x = layers.Flatten()(x)
    x = layers.Dense(4, activation="relu", name="features")(x)
    return keras.Model(inputs, layers.Dense(NUM_CLASSES, name="logits")(x))


def examples(seed, size=32, num_inputs=4):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(size, num_inputs)).astype("float32")
    y = rng.integers(0, NUM_CLASSES, size).astype("int32")
    return tf.data.Dataset.from_tensor_slices((x, y))


def moved_indices(model):
    return mln_tf.meta_gradient.virtual_indices(model.classifier, model.options)


# Options: checks and configuration


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"meta_gradient": "double_backward"},
            "Invalid value for argument `meta_gradient`. Received: "
            "meta_gradient='double_backward'. Expected one of 'nested_tapes', 'forward_mode'",
        ),
        (
            {"virtual_scope": "last"},
            "Invalid value for argument `virtual_scope`. Received: virtual_scope='last'. "
            "Expected one of 'all', 'head'",
        ),
        (
            {"head_layers": 4},
            "Invalid value for argument `head_layers`. Received: head_layers=4. Expected an "
            "integer from 1 to 3.*\\(the last: dense, bn, logits\\)",
        ),
        ({"head_layers": 0}, "Received: head_layers=0. Expected a positive integer"),
    ],
)
def test_constructor_rejects_invalid_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        mln_tf.MetaLabelNet(classifier(), feature_layer="features", **kwargs)


def test_compile_rejects_invalid_options():
    model = mln_tf.MetaLabelNet(classifier(), feature_layer="features")
    with pytest.raises(ValueError, match="Received: meta_gradient=None|Received: virtual_scope"):
        model.compile(virtual_scope="body")
    with pytest.raises(ValueError, match="Received: meta_gradient='reverse'"):
        model.compile(meta_gradient="reverse")


def test_options_default_compile_and_survive_saving(tmp_path):
    model = mln_tf.MetaLabelNet(classifier(), feature_layer="features", head_layers=2)
    assert (model.meta_gradient, model.virtual_scope) == ("nested_tapes", "all")
    model.compile(meta_gradient="forward_mode", virtual_scope="head")
    path = tmp_path / "model.keras"
    model.save(path)
    restored = keras.models.load_model(path)
    assert (restored.meta_gradient, restored.virtual_scope, restored.head_layers) == (
        "forward_mode",
        "head",
        2,
    )


def test_head_layers_selects_the_last_weighted_layers():
    model = mln_tf.MetaLabelNet(classifier(), feature_layer="features", virtual_scope="head")
    trainable = model.classifier.trainable_variables
    assert [trainable[i].path for i in moved_indices(model)] == [
        "logits/kernel",
        "logits/bias",
    ]
    model = mln_tf.MetaLabelNet(
        classifier(), feature_layer="features", virtual_scope="head", head_layers=2
    )
    trainable = model.classifier.trainable_variables
    assert [trainable[i].path for i in moved_indices(model)] == [
        "bn/gamma",
        "bn/beta",
        "logits/kernel",
        "logits/bias",
    ]


# Cached features


def _fit_weights(cached, jit_compile=False):
    keras.utils.set_random_seed(0)
    model = mln_tf.MetaLabelNet(classifier(), feature_layer="features")
    model.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
        generator_optimizer=keras.optimizers.Adam(1e-2),
        jit_compile=jit_compile,
    )
    noisy = examples(0)
    if cached:
        noisy = mln_tf.data.cache_features(noisy, model.feature_extractor, batch_size=5)
    data = mln_tf.data.with_meta(noisy, examples(1), batch_size=8, seed=0)
    history = model.fit(data, epochs=2, verbose=0).history
    return [v.numpy() for v in model.weights], history


@pytest.mark.parametrize("jit_compile", [False, True])
def test_cached_features_train_the_same_weights_as_the_extractor(jit_compile):
    weights, history = _fit_weights(cached=False, jit_compile=jit_compile)
    cached_weights, cached_history = _fit_weights(cached=True, jit_compile=jit_compile)
    for a, b in zip(weights, cached_weights):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(history["meta_loss"], cached_history["meta_loss"], rtol=1e-5)
    assert history["label_agreement"] == cached_history["label_agreement"]


def test_cache_features_matches_the_extractor_example_by_example():
    model = mln_tf.MetaLabelNet(classifier(), feature_layer="features")
    noisy = examples(2, size=11)
    cached = list(mln_tf.data.cache_features(noisy, model.feature_extractor, batch_size=4))
    for (x, y), (x_cached, y_cached, features) in zip(noisy, cached):
        np.testing.assert_array_equal(x, x_cached)
        assert int(y) == int(y_cached)
        expected = model.feature_extractor(x[None], training=False)[0]
        np.testing.assert_allclose(features, expected, rtol=1e-6, atol=1e-6)
    assert len(cached) == 11


def test_cached_features_of_the_wrong_shape_are_rejected():
    model = mln_tf.MetaLabelNet(classifier(), feature_layer="features")
    model.compile()
    x = np.zeros((4, 4), "float32")
    y = np.zeros((4,), "int32")
    with pytest.raises(ValueError, match=r"have shape \(5,\).*outputs float features of shape"):
        model.train_on_batch(((x, y, np.zeros((4, 5), "float32")), (x, y)))


def test_with_meta_rejects_cached_features_with_an_unlabeled_set():
    model = mln_tf.MetaLabelNet(classifier(), feature_layer="features")
    noisy = mln_tf.data.cache_features(examples(0), model.feature_extractor)
    unlabeled = examples(3).map(lambda x, y: x)
    with pytest.raises(ValueError, match="carries cached features but `unlabeled` does not"):
        mln_tf.data.with_meta(noisy, examples(1), batch_size=8, unlabeled=unlabeled)


def test_cache_features_rejects_a_batched_dataset():
    model = mln_tf.MetaLabelNet(classifier(), feature_layer="features")
    with pytest.raises(ValueError, match="looks batched"):
        mln_tf.data.cache_features(examples(0).batch(4), model.feature_extractor)


# Precision and XLA


def test_xla_rejects_max_pooling_in_a_float64_virtual_step_but_not_after_it():
    keras.config.set_floatx("float64")
    model = mln_tf.MetaLabelNet(pooling_classifier(), feature_layer="features")
    with pytest.raises(
        ValueError,
        match="Received: jit_compile=True with the max-pooling layer 'pool' computing in "
        "float64 inside the virtual step",
    ):
        model.compile(jit_compile=True)
    model.compile(jit_compile=False)  # no XLA: legal
    head = mln_tf.MetaLabelNet(pooling_classifier(), feature_layer="features", virtual_scope="head")
    head.compile(jit_compile=True)  # the virtual step starts after the pooling
    x = np.random.default_rng(0).normal(size=(4, 6, 6, 1))
    y = np.array([0, 1, 2, 0], "int32")
    logs = head.train_on_batch(((x, y), (x, y)), return_dict=True)
    assert np.isfinite(logs["meta_loss"])


def test_mixed_bfloat16_meta_gradient_is_close_to_float32():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(16, 6, 6, 1)).astype("float32")
    y = rng.integers(0, NUM_CLASSES, 16).astype("int32")
    changes = {}
    for policy in ("float32", "mixed_bfloat16"):
        keras.utils.set_random_seed(0)
        keras.config.set_dtype_policy(policy)
        try:
            model_classifier = pooling_classifier()
        finally:
            keras.config.set_dtype_policy("float32")
        model = mln_tf.MetaLabelNet(model_classifier, feature_layer="features")
        model.compile(generator_optimizer=keras.optimizers.SGD(1.0))
        before = model.label_generator.get_weights()[0]
        model.train_on_batch(((x, y), (x, y)))
        changes[policy] = before - model.label_generator.get_weights()[0]
    exact, mixed = changes["float32"], changes["mixed_bfloat16"]
    assert np.abs(exact).max() > 1e-5
    # bfloat16 keeps 8 bits of mantissa: a few percent of the gradient's size.
    assert np.linalg.norm(mixed - exact) < 0.1 * np.linalg.norm(exact)


# `meta_batch_pass="shared"`: one forward pass of the noisy and the meta batch


def tanh_classifier():
    """No batch normalisation and no dropout: sharing the pass changes no number."""
    inputs = keras.Input((4,))
    x = layers.Dense(6, activation="tanh", name="features")(inputs)
    return keras.Model(inputs, layers.Dense(NUM_CLASSES, name="logits")(x))


def _fit_with_clean_term(meta_batch_pass, build=tanh_classifier, jit_compile=False, epochs=2):
    keras.utils.set_random_seed(0)
    model = mln_tf.MetaLabelNet(
        build(), feature_layer="features", virtual_scope="head", label_input=True,
        label_trust=2.0, generator_init="classifier_head", clean_weight=1.0,
        loss_scale="sum_over_classes", label_loss="cross_entropy",
        meta_batch_pass=meta_batch_pass,
    )  # fmt: skip
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                  generator_optimizer=keras.optimizers.Adam(1e-2),
                  jit_compile=jit_compile)  # fmt: skip
    data = mln_tf.data.with_meta(examples(0), examples(1), batch_size=8, seed=0)
    history = model.fit(data, epochs=epochs, verbose=0).history
    return model, history


@pytest.mark.parametrize("jit_compile", [False, True])
def test_the_shared_pass_trains_the_weights_the_separate_passes_train(jit_compile):
    separate, separate_history = _fit_with_clean_term("separate", jit_compile=jit_compile)
    shared, shared_history = _fit_with_clean_term("shared", jit_compile=jit_compile)
    for a, b in zip(separate.weights, shared.weights, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
    for name in ("loss", "meta_loss"):
        np.testing.assert_allclose(separate_history[name], shared_history[name], rtol=1e-5)
    # The weights moved: the comparison is not between two untrained models.
    start = tanh_classifier().get_layer("logits")
    assert not np.allclose(separate.classifier.get_layer("logits").kernel.numpy(),
                           start.kernel.numpy(), atol=1e-3)  # fmt: skip


def test_the_shared_pass_normalises_the_noisy_and_the_meta_batch_together():
    # One step; BN's moving mean then moves toward the mean of the dense layer's output
    # over both batches, which the separate passes take over the noisy batch alone.
    keras.utils.set_random_seed(0)
    model = mln_tf.MetaLabelNet(classifier(), feature_layer="features", virtual_scope="head",
                                clean_weight=1.0, meta_batch_pass="shared")  # fmt: skip
    model.compile(optimizer=keras.optimizers.SGD(0.1), jit_compile=False)
    noisy_x, noisy_y = next(iter(examples(0).batch(8)))
    meta_x, meta_y = next(iter(examples(1).batch(8)))
    dense = model.classifier.get_layer("dense")
    kernel, bias = dense.kernel.numpy(), dense.bias.numpy()
    bn = model.classifier.get_layer("bn")
    model.train_on_batch(((noisy_x, noisy_y), (meta_x, meta_y)))

    both = np.concatenate([noisy_x.numpy(), meta_x.numpy()]) @ kernel + bias
    expected = (1 - bn.momentum) * both.mean(axis=0)  # from a moving mean of 0
    np.testing.assert_allclose(bn.moving_mean.numpy(), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"virtual_scope": "all"}, "meta_batch_pass='shared' with virtual_scope='all'"),
        ({"virtual_scope": "head", "head_layers": 2}, "head_layers=2"),
        (
            {"virtual_scope": "head", "meta_gradient": "forward_mode"},
            "meta_gradient='forward_mode'. Expected virtual_scope='head', head_layers=1 and "
            "meta_gradient='nested_tapes'",
        ),
    ],
)
def test_the_shared_pass_needs_the_output_layer_alone_in_the_virtual_step(kwargs, message):
    with pytest.raises(ValueError, match=message):
        mln_tf.MetaLabelNet(classifier(), feature_layer="features", meta_batch_pass="shared",
                            **kwargs)  # fmt: skip


def test_the_shared_pass_refuses_a_classifier_not_ending_in_its_weighted_layer():
    inputs = keras.Input((4,))
    x = layers.Dense(6, activation="tanh", name="features")(inputs)
    x = layers.Dense(NUM_CLASSES, name="logits")(x)
    ends_in_scaling = keras.Model(inputs, layers.Rescaling(0.5, name="temperature")(x))
    with pytest.raises(ValueError, match="whose last layer is not its one output layer with "
                                         "trainable weights"):  # fmt: skip
        mln_tf.MetaLabelNet(ends_in_scaling, feature_layer="features", virtual_scope="head",
                            meta_batch_pass="shared")  # fmt: skip
    model = mln_tf.MetaLabelNet(ends_in_scaling, feature_layer="features", virtual_scope="head")
    with pytest.raises(ValueError, match="whose last layer is not its one output layer"):
        model.compile(optimizer=keras.optimizers.SGD(0.1), meta_batch_pass="shared")
