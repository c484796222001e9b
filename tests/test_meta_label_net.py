"""MetaLabelNet as a Keras model: batch norm, XLA, metrics, saving and errors."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

import mln_tf

NUM_CLASSES = 3


def bn_classifier(num_inputs=4):
    """Dense → BatchNorm → ReLU (`features`) → Dense: small, deterministic, with BN state."""
    inputs = keras.Input((num_inputs,))
    x = layers.Dense(8, name="dense")(inputs)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.ReLU(name="features")(x)
    return keras.Model(inputs, layers.Dense(NUM_CLASSES, name="logits")(x))


def random_batch(seed, batch_size=16, num_inputs=4, meta_shift=0.0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch_size, num_inputs)).astype("float32")
    x_meta = (rng.normal(size=(batch_size, num_inputs)) + meta_shift).astype("float32")
    y = rng.integers(0, NUM_CLASSES, batch_size).astype("int32")
    y_meta = rng.integers(0, NUM_CLASSES, batch_size).astype("int32")
    return (x, y), (x_meta, y_meta)


def batches_dataset(batches):
    return tf.data.Dataset.from_tensor_slices(
        tf.nest.map_structure(lambda *arrays: np.stack(arrays), *batches)
    )


def compiled_model(classifier, **compile_kwargs):
    model = mln_tf.MetaLabelNet(classifier, feature_layer="features")
    model.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
        generator_optimizer=keras.optimizers.Adam(1e-2),
        **compile_kwargs,
    )
    return model


def all_weights(model):
    return [v.numpy() for v in model.weights]


# Batch normalisation


def test_virtual_pass_leaves_bn_statistics_and_real_pass_updates_them_once():
    classifier = bn_classifier()
    model = compiled_model(classifier)
    # The meta batch is far from the noisy one: had the virtual pass on it moved the
    # statistics, the moving mean would show it.
    (x, y), meta = random_batch(0, meta_shift=50.0)
    reference = keras.models.clone_model(classifier)
    reference.set_weights(classifier.get_weights())
    reference(x, training=True)  # one real forward pass on the noisy batch

    model.train_on_batch(((x, y), meta))

    bn, expected = classifier.get_layer("bn"), reference.get_layer("bn")
    np.testing.assert_allclose(bn.moving_mean.numpy(), expected.moving_mean.numpy(), rtol=1e-5)
    np.testing.assert_allclose(
        bn.moving_variance.numpy(), expected.moving_variance.numpy(), rtol=1e-5
    )
    assert np.abs(bn.moving_mean.numpy()).max() > 1e-4  # it did move, once


# XLA


def test_jit_compile_matches_eager_graph_within_tolerance():
    batches = [random_batch(seed) for seed in range(4)]
    classifier = bn_classifier()
    initial = classifier.get_weights()
    results = {}
    for jit_compile in (False, True):
        classifier.set_weights(initial)
        keras.utils.set_random_seed(7)
        model = compiled_model(keras.models.clone_model(classifier), jit_compile=jit_compile)
        model.classifier.set_weights(initial)
        assert model.jit_compile is jit_compile
        history = model.fit(batches_dataset(batches), epochs=2, verbose=0)
        results[jit_compile] = (history.history, all_weights(model))

    (history_graph, weights_graph), (history_xla, weights_xla) = results[False], results[True]
    # float32 with a different operation order: agreement to 1e-5 relative, 1e-6 absolute.
    for key in ("loss", "meta_loss", "label_agreement"):
        np.testing.assert_allclose(history_xla[key], history_graph[key], rtol=1e-5, atol=1e-6)
    for xla, graph in zip(weights_xla, weights_graph):
        np.testing.assert_allclose(xla, graph, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("steps_per_execution", [1, 3])
def test_jit_compile_fit_takes_every_batch_once(steps_per_execution):
    # MetaLabelNet feeds the XLA step from Python; 7 batches in groups of 3 end with 1.
    batches = [random_batch(seed) for seed in range(7)]
    classifier = bn_classifier()
    initial = classifier.get_weights()
    results = {}
    for jit_compile in (False, True):
        keras.utils.set_random_seed(7)
        model = compiled_model(keras.models.clone_model(classifier), jit_compile=jit_compile,
                               steps_per_execution=steps_per_execution)  # fmt: skip
        model.classifier.set_weights(initial)
        model.fit(batches_dataset(batches), epochs=2, verbose=0)
        assert int(model.optimizer.iterations) == 14
        assert int(model.generator_optimizer.iterations) == 14
        results[jit_compile] = all_weights(model)
    for xla, graph in zip(results[True], results[False]):
        np.testing.assert_allclose(xla, graph, rtol=1e-5, atol=1e-6)


def test_jit_compile_defaults_to_keras_auto():
    model = compiled_model(bn_classifier())
    # Keras resolves "auto" to False on a machine without a GPU.
    expected = bool(tf.config.list_physical_devices("GPU"))
    assert model.jit_compile is expected


# Metrics


def test_fit_and_evaluate_report_their_metrics():
    batches = [random_batch(seed) for seed in range(3)]
    model = compiled_model(bn_classifier())
    x_val, y_val = random_batch(10, batch_size=32)[0]

    history = model.fit(batches_dataset(batches), validation_data=(x_val, y_val), verbose=0)
    results = model.evaluate(x_val, y_val, verbose=0, return_dict=True)

    assert set(history.history) == {
        "loss",
        "meta_loss",
        "label_agreement",
        "val_loss",
        "val_accuracy",
    }
    logits = model.classifier.predict(x_val, verbose=0)
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    expected_loss = -log_probs[np.arange(len(y_val)), y_val].mean()
    expected_accuracy = np.mean(np.argmax(logits, axis=1) == y_val)
    assert results["loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert results["accuracy"] == pytest.approx(expected_accuracy)
    assert history.history["val_accuracy"][-1] == pytest.approx(expected_accuracy)


def test_label_agreement_counts_only_labeled_examples():
    model = compiled_model(bn_classifier())
    (x, y), meta = random_batch(3, batch_size=8)
    features = model.feature_extractor(x, training=False)
    generated = np.argmax(model.label_generator(features).numpy(), axis=1)
    y = y.copy()
    y[:4] = -1  # unlabeled
    expected = np.mean(generated[4:] == y[4:])

    logs = model.train_on_batch(((x, y), meta), return_dict=True)

    assert logs["label_agreement"] == pytest.approx(expected)


def test_unlabeled_batches_take_the_same_step():
    classifier = bn_classifier()
    model = compiled_model(classifier)
    (x, _), meta = random_batch(4)
    before = [w.copy() for w in classifier.get_weights()]

    logs = model.train_on_batch((x, meta), return_dict=True)

    assert np.isfinite(logs["meta_loss"])
    assert any(np.abs(b - a).max() > 0 for b, a in zip(before, classifier.get_weights()))


# Saving


def test_save_and_reload_then_two_steps_match_two_steps_without_reload(tmp_path):
    classifier = mln_tf.classifiers.fashion_cnn(num_classes=NUM_CLASSES)  # dropout: RNG state too
    model = mln_tf.MetaLabelNet(classifier, feature_layer="features")
    model.compile(
        optimizer=keras.optimizers.SGD(0.05, momentum=0.9, weight_decay=1e-4),
        generator_optimizer=keras.optimizers.Adam(1e-2, weight_decay=1e-4),
        virtual_lr=0.5,
        entropy_weight=0.3,
    )
    rng = np.random.default_rng(0)

    def batch():
        images = rng.random((8, 28, 28, 1), dtype=np.float32)
        labels = rng.integers(0, NUM_CLASSES, 8).astype("int32")
        return (images[:4], labels[:4]), (images[4:], labels[4:])

    for _ in range(2):
        model.train_on_batch(batch())
    path = tmp_path / "run.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    next_batches = [batch(), batch()]
    for b in next_batches:
        model.train_on_batch(b)
        loaded.train_on_batch(b)

    assert isinstance(loaded, mln_tf.MetaLabelNet)
    assert (loaded.virtual_lr, loaded.entropy_weight) == (0.5, 0.3)
    assert loaded.generator_optimizer.learning_rate.numpy() == pytest.approx(1e-2)
    assert int(loaded.optimizer.iterations.numpy()) == 4
    assert int(loaded.generator_optimizer.iterations.numpy()) == 4
    assert len(loaded.weights) == len(model.weights)
    for original, reloaded in zip(all_weights(model), all_weights(loaded)):
        np.testing.assert_allclose(reloaded, original, rtol=1e-6, atol=1e-7)
    for name in ("classifier", "feature_extractor", "label_generator"):
        assert getattr(loaded, name).name == getattr(model, name).name


def test_feature_extractor_is_a_frozen_copy():
    classifier = bn_classifier()
    model = compiled_model(classifier)
    extractor_before = [w.copy() for w in model.feature_extractor.get_weights()]
    model.fit(batches_dataset([random_batch(s) for s in range(3)]), verbose=0)

    assert model.feature_extractor.trainable_weights == []
    for before, after in zip(extractor_before, model.feature_extractor.get_weights()):
        np.testing.assert_array_equal(before, after)
    x = random_batch(9)[0][0]
    # The extractor is the classifier cut at `features`, with the warm-up weights.
    warm = keras.Model(classifier.input, classifier.get_layer("features").output)
    assert not np.allclose(warm(x).numpy(), model.feature_extractor(x).numpy())


def test_refresh_feature_extractor_cuts_the_current_classifier():
    classifier = bn_classifier()
    model = compiled_model(classifier)
    model.fit(batches_dataset([random_batch(s) for s in range(3)]), verbose=0)
    model.refresh_feature_extractor()

    x = random_batch(9)[0][0]
    current = keras.Model(classifier.input, classifier.get_layer("features").output)
    np.testing.assert_allclose(model.feature_extractor(x), current(x), rtol=1e-6, atol=1e-6)
    assert model.feature_extractor.trainable_weights == []


def test_refresh_feature_extractor_rejects_a_separate_extractor():
    classifier = bn_classifier()
    inputs = keras.Input((4,))
    extractor = keras.Model(inputs, layers.Dense(5, name="other")(inputs))
    model = mln_tf.MetaLabelNet(classifier, feature_extractor=extractor)
    with pytest.raises(ValueError, match="layer 'other' is not a layer of the classifier"):
        model.refresh_feature_extractor()


# Errors


def test_error_for_missing_feature_layer():
    with pytest.raises(ValueError, match="has no layer named 'penultimate'.*Its layers are"):
        mln_tf.MetaLabelNet(bn_classifier(), feature_layer="penultimate")


def test_error_for_unbuilt_classifier():
    with pytest.raises(ValueError, match="is not built.*calling it on a batch of data"):
        mln_tf.MetaLabelNet(keras.Sequential([layers.Dense(3)]))


def test_error_for_classifier_that_is_not_a_model():
    with pytest.raises(TypeError, match="Expected a `keras.Model`"):
        mln_tf.MetaLabelNet(layers.Dense(3))


def test_error_for_meta_labels_with_another_class_count():
    model = compiled_model(bn_classifier())
    (x, y), (x_meta, y_meta) = random_batch(0)
    one_hot_5 = np.eye(5, dtype="float32")[y_meta % 5]
    with pytest.raises(ValueError, match="meta labels have 5 classes.*outputs 3 logits"):
        model.train_on_batch(((x, y), (x_meta, one_hot_5)))


@pytest.mark.parametrize("jit_compile", [False, True])
def test_error_for_labels_out_of_range(jit_compile):
    model = compiled_model(bn_classifier(), jit_compile=jit_compile)
    (x, y), (x_meta, y_meta) = random_batch(0)
    y_meta = y_meta.copy()
    y_meta[0] = NUM_CLASSES + 2
    before = all_weights(model)
    with pytest.raises(ValueError, match=r"label is out of range.*\[0, 3\)"):
        model.fit(batches_dataset([((x, y), (x_meta, y_meta))]), verbose=0)
    for b, a in zip(before, all_weights(model)):
        np.testing.assert_array_equal(b, a)


def test_error_for_wrong_batch_structure():
    model = compiled_model(bn_classifier())
    (x, y), _ = random_batch(0)
    with pytest.raises(ValueError, match=r"Invalid meta batch.*\(\(x, y\), \(x_meta, y_meta\)\)"):
        model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(4), verbose=0)


def test_error_for_images_of_the_wrong_shape():
    model = compiled_model(bn_classifier())
    (x, y), (x_meta, y_meta) = random_batch(0)
    with pytest.raises(ValueError, match=r"`x_meta` has examples of shape \(5,\).*expects \(4,\)"):
        model.train_on_batch(((x, y), (np.zeros((16, 5), "float32"), y_meta)))


@pytest.mark.parametrize("jit_compile", [False, True])
def test_non_finite_loss_stops_training_and_keeps_finite_weights(jit_compile):
    model = compiled_model(bn_classifier(), jit_compile=jit_compile)
    good = random_batch(0)
    (x, y), meta = random_batch(1)
    x = x.copy()
    x[3, 1] = np.nan
    model.fit(batches_dataset([good]), verbose=0)
    before = all_weights(model)
    with pytest.raises(mln_tf.NonFiniteLossError, match="NaN or infinite.*not applied"):
        model.fit(batches_dataset([((x, y), meta), good]), verbose=0)
    for b, a in zip(before, all_weights(model)):
        np.testing.assert_array_equal(b, a)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"virtual_lr": -1.0}, "Received: virtual_lr=-1.0. Expected a positive float"),
        ({"entropy_weight": float("nan")}, "Expected a non-negative float"),
        ({"loss": "mse"}, "computes its own losses"),
        ({"metrics": ["accuracy"]}, "reports `loss`, `meta_loss`"),
    ],
)
def test_compile_rejects_invalid_arguments(kwargs, message):
    model = mln_tf.MetaLabelNet(bn_classifier(), feature_layer="features")
    with pytest.raises(ValueError, match=message):
        model.compile(**kwargs)
