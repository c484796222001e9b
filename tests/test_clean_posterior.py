"""The generator started at the clean posterior (`generator_init="clean_posterior"`) and the
meta batch's cross-entropy in the classifier's update (`clean_weight`).

W and b are checked against the optimality condition of the regularised logistic
regression they solve, and V against a noise matrix computed again here in NumPy. The
meta-gradient with the generator on the logits is checked against finite differences in
test_label_options.py.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

import mln_tf
from mln_tf import label_generator

NUM_CLASSES = 3
NUM_FEATURES = 5


def tanh_classifier():
    inputs = keras.Input((4,))
    hidden = layers.Dense(NUM_FEATURES, activation="tanh", name="features")(inputs)
    return keras.Model(inputs, layers.Dense(NUM_CLASSES, name="logits")(hidden))


def meta_set(size=60, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(size) % NUM_CLASSES
    centres = rng.normal(size=(NUM_CLASSES, 4))
    images = (centres[labels] + 0.7 * rng.normal(size=(size, 4))).astype("float32")
    return images, labels


def softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def assert_soft_labels_are_the_posterior(model, x, clean_probabilities, matrix):
    """The model's soft labels for `x` are p(y | x)·T[y, ỹ], normalised, for given labels ỹ."""
    given = np.array([0, 1, 2, 2, 1, 0])
    expected = clean_probabilities * matrix[:, given].T
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(model.predict_soft_labels(x, given), expected, rtol=1e-4,
                               atol=1e-5)  # fmt: skip


def posterior_model(meta_data, **options):
    options = dict(label_input=True, generator_init="clean_posterior", **options)
    return mln_tf.MetaLabelNet(tanh_classifier(), feature_layer="features",
                               meta_data=meta_data, **options)  # fmt: skip


def test_w_and_b_solve_the_regularised_logistic_regression_on_the_meta_features():
    images, labels = meta_set()
    model = posterior_model((images, labels))
    kernel, bias = model.label_generator.get_weights()
    w, b = kernel[:NUM_FEATURES].astype("float64"), bias.astype("float64")
    features = model.feature_extractor.predict(images, verbose=0).astype("float64")

    # The fit is on standardised features with an L2 penalty ½‖W_s‖² against C = 1 times
    # the summed cross-entropy; at its optimum the gradient vanishes.
    mean, scale = features.mean(axis=0), features.std(axis=0)
    standardized = (features - mean) / scale
    w_standardized = w * scale[:, None]
    residual = softmax(features @ w + b) - np.eye(NUM_CLASSES)[labels]
    np.testing.assert_allclose(standardized.T @ residual + w_standardized, 0.0, atol=1e-2)
    np.testing.assert_allclose(residual.sum(axis=0), 0.0, atol=1e-2)
    # Not the classifier's head: that would leave a large gradient.
    head_w, head_b = model.classifier.get_layer("logits").get_weights()
    head_residual = softmax(features @ head_w + head_b) - np.eye(NUM_CLASSES)[labels]
    assert np.abs(standardized.T @ head_residual + head_w * scale[:, None]).max() > 0.1


def test_v_is_the_log_of_the_noise_matrix_the_warmed_up_classifier_gives():
    images, labels = meta_set()
    model = posterior_model((images, labels))
    kernel, _ = model.label_generator.get_weights()
    probabilities = softmax(model.classifier.predict(images, verbose=0).astype("float64"))
    matrix = np.stack([probabilities[labels == c].mean(axis=0) for c in range(NUM_CLASSES)])
    np.testing.assert_allclose(kernel[NUM_FEATURES:], np.log(matrix).T, rtol=1e-5, atol=1e-5)

    # The first soft labels are then p(y | x)·T[y, ỹ], normalised.
    x = images[:6]
    features = model.feature_extractor.predict(x, verbose=0)
    clean = softmax(features @ kernel[:NUM_FEATURES] + model.label_generator.get_weights()[1])
    assert_soft_labels_are_the_posterior(model, x, clean, matrix)


def held_out_log_loss(features, labels, c, folds=5):
    """The mean over stratified folds of the held-out log-loss of a read-out fitted with
    inverse L2 strength `c` on the other folds (standardised as the fit standardises)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    x = (features - features.mean(axis=0)) / features.std(axis=0)
    losses = []
    for train, held_out in StratifiedKFold(folds, shuffle=True, random_state=0).split(x, labels):
        fit = LogisticRegression(C=c, max_iter=2000).fit(x[train], labels[train])
        p = fit.predict_proba(x[held_out])
        losses.append(-np.log(p[np.arange(len(held_out)), labels[held_out]]).mean())
    return np.mean(losses)


def test_the_cross_validated_read_out_has_the_least_held_out_log_loss_and_solves_its_fit():
    images, labels = meta_set(size=150)
    model = posterior_model((images, labels), readout_regularization="cross_validated")
    features = model.feature_extractor.predict(images, verbose=0).astype("float64")

    scores = {c: held_out_log_loss(features, labels, c) for c in label_generator.READOUT_CS}
    assert model.readout_c == pytest.approx(min(scores, key=scores.get))
    assert model.readout_c != 1.0  # the test would not tell the two fits apart otherwise

    # W and b solve the fit with that C: W_s / C + X_sᵀ(P − Y) = 0 on standardised features.
    kernel, bias = model.label_generator.get_weights()
    w, b = kernel[:NUM_FEATURES].astype("float64"), bias.astype("float64")
    mean, scale = features.mean(axis=0), features.std(axis=0)
    residual = softmax(features @ w + b) - np.eye(NUM_CLASSES)[labels]
    gradient = ((features - mean) / scale).T @ residual + w * scale[:, None] / model.readout_c
    np.testing.assert_allclose(gradient / len(labels), 0.0, atol=1e-3)
    # The default keeps C = 1.
    assert posterior_model((images, labels)).readout_c == 1.0


def test_a_meta_set_too_small_to_cross_validate_keeps_c_at_one():
    images, labels = meta_set(size=4)  # one image of class 2, two of class 0
    model = posterior_model((images, labels), readout_regularization="cross_validated")
    assert model.readout_c == 1.0


def test_without_the_label_input_only_w_and_b_are_fitted():
    images, labels = meta_set()
    model = posterior_model((images, labels), label_trust=2.0).label_generator.get_weights()
    plain = mln_tf.MetaLabelNet(tanh_classifier(), feature_layer="features",
                                generator_init="clean_posterior",
                                meta_data=(images, labels))  # fmt: skip
    assert plain.label_generator.get_weights()[0].shape == (NUM_FEATURES, NUM_CLASSES)
    assert model[0].shape == (NUM_FEATURES + NUM_CLASSES, NUM_CLASSES)


def test_a_dataset_batched_or_not_gives_the_weights_the_arrays_give():
    images, labels = meta_set()
    classifier = tanh_classifier()
    expected = None
    for meta_data in [
        (images, labels),
        tf.data.Dataset.from_tensor_slices((images, labels)),
        tf.data.Dataset.from_tensor_slices((images, labels)).batch(7),
    ]:
        model = mln_tf.MetaLabelNet(classifier, feature_layer="features", label_input=True,
                                    generator_init="clean_posterior",
                                    meta_data=meta_data)  # fmt: skip
        weights = model.label_generator.get_weights()
        if expected is None:
            expected = weights
        for got, want in zip(weights, expected):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_a_class_missing_from_the_meta_set_starts_far_below_the_others():
    images, labels = meta_set()
    present = labels != 2
    model = posterior_model((images[present], labels[present]))
    kernel, bias = model.label_generator.get_weights()
    assert bias[2] <= min(bias[0], bias[1]) - label_generator.MISSING_CLASS_OFFSET + 1e-6
    np.testing.assert_array_equal(kernel[:NUM_FEATURES, 2], 0.0)


def test_training_without_the_meta_set_is_refused_until_it_is_given():
    images, labels = meta_set()
    model = posterior_model(None)
    model.compile(optimizer=keras.optimizers.SGD(0.1), jit_compile=False)
    batch = ((images[:6], labels[:6]), (images[6:12], labels[6:12]))
    message = "generator_init='clean_posterior'.*built without it"
    with pytest.raises(ValueError, match=message):
        model.train_on_batch(batch)
    dataset = tf.data.Dataset.from_tensors(batch)
    with pytest.raises(ValueError, match=message):
        model.fit(dataset, verbose=0)
    model.initialize_label_generator((images, labels))
    logs = model.train_on_batch(batch, return_dict=True)
    assert np.isfinite(logs["loss"])


@pytest.mark.parametrize(
    "meta_data, message",
    [
        ((np.zeros((4, 4), "float32"), np.array([0, 1, 2, 3])), "range from 0 to 3"),
        ((np.zeros((4, 4), "float32"), np.array([0, 1, 2])), "4 images and 3 labels"),
        ((np.zeros((4, 6), "float32"), np.array([0, 1, 2, 0])), r"shape \(6,\)"),
        ((np.zeros((4, 4), "float32"), np.zeros(4)), "must be integer class indices"),
        (np.zeros((4, 4), "float32"), "Expected a tuple `\\(images, labels\\)`"),
    ],
)
def test_bad_meta_data_is_named(meta_data, message):
    with pytest.raises(ValueError, match=message):
        posterior_model(meta_data)


def test_the_train_job_fits_the_generator_on_the_meta_set(tmp_path):
    config = mln_tf.train.TrainConfig(
        dataset="digits", noise="symmetric", rate=0.4, warmup_epochs=1, meta_epochs=1,
        batch_size=32, jit_compile=False, warm_up_cache=False,
        options=mln_tf.options.RECOMMENDED.replace(generator_init="clean_posterior",
                                                   clean_weight=1.0),
    )  # fmt: skip
    results = mln_tf.train.run(config, str(tmp_path), verbose=0)
    assert results["methods"]["meta_label_net"]["test_accuracy_final"] > 0.5
    model = keras.saving.load_model(tmp_path / "meta_label_net.keras")
    assert (model.generator_init, model.clean_weight) == ("clean_posterior", 1.0)


# The generator on the classifier's current logits (`generator_input="classifier_logits"`)


def logits_model(meta_data=None, **options):
    options = dict(generator_input="classifier_logits", label_input=True,
                   generator_init="clean_posterior", **options)  # fmt: skip
    return mln_tf.MetaLabelNet(tanh_classifier(), meta_data=meta_data, **options)


def test_on_the_logits_the_first_soft_labels_are_gold_loss_corrections_posterior():
    images, labels = meta_set()
    model = logits_model((images, labels))
    kernel, bias = model.label_generator.get_weights()
    np.testing.assert_array_equal(kernel[:NUM_CLASSES], np.eye(NUM_CLASSES))
    np.testing.assert_array_equal(bias, 0.0)
    # softmax(z + log T[:, ỹ]) ∝ p(y | x)·T[y, ỹ]: the soft labels whose cross-entropy has
    # the gradient of the forward-corrected loss −log Σ_y p(y | x)·T[y, ỹ].
    probabilities = softmax(model.classifier.predict(images, verbose=0).astype("float64"))
    matrix = np.stack([probabilities[labels == c].mean(axis=0) for c in range(NUM_CLASSES)])
    x = images[:6]
    p = softmax(model.classifier.predict(x, verbose=0).astype("float64"))
    assert_soft_labels_are_the_posterior(model, x, p, matrix)


def test_on_the_logits_the_classifier_is_not_frozen_and_cached_features_are_refused():
    images, labels = meta_set()
    model = logits_model((images, labels))
    assert model.feature_extractor is model.classifier and model.classifier.trainable
    model.compile(optimizer=keras.optimizers.SGD(0.1), jit_compile=False)
    before = model.predict_soft_labels(images[:6], labels[:6])
    model.train_on_batch(((images[:12], labels[:12]), (images[12:24], labels[12:24])))
    # The soft labels follow the classifier as it trains.
    assert np.abs(model.predict_soft_labels(images[:6], labels[:6]) - before).max() > 1e-4
    features = np.zeros((12, NUM_CLASSES), "float32")
    with pytest.raises(ValueError, match="cached frozen features"):
        model.train_on_batch(((images[:12], labels[:12], features),
                              (images[12:24], labels[12:24])))  # fmt: skip


def test_on_the_logits_the_model_saves_and_reloads(tmp_path):
    images, labels = meta_set()
    model = logits_model((images, labels), clean_weight=0.5)
    model.compile(optimizer=keras.optimizers.SGD(0.1), jit_compile=False)
    batch = ((images[:12], labels[:12]), (images[12:24], labels[12:24]))
    model.train_on_batch(batch)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert loaded.feature_extractor is loaded.classifier
    assert (loaded.generator_input, loaded.clean_weight) == ("classifier_logits", 0.5)
    for a, b in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(loaded.predict_soft_labels(images[:6], labels[:6]),
                               model.predict_soft_labels(images[:6], labels[:6]),
                               rtol=1e-6)  # fmt: skip


# The noise matrix counted on the noisy set (`transition_estimate="noisy_labels"`)


def test_the_noisy_label_estimate_is_the_empirical_matrix_under_a_certain_posterior():
    rng = np.random.default_rng(4)
    true = rng.integers(0, NUM_CLASSES, 300)
    given = np.where(rng.random(300) < 0.3, rng.integers(0, NUM_CLASSES, 300), true)
    given[:5] = -1  # unlabeled images do not count
    matrix = label_generator.noisy_label_transition_matrix(
        np.eye(NUM_CLASSES)[true], given, NUM_CLASSES
    )
    expected = np.zeros((NUM_CLASSES, NUM_CLASSES))
    for t, g in zip(true[5:], given[5:]):
        expected[t, g] += 1
    np.testing.assert_allclose(matrix, expected / expected.sum(axis=1, keepdims=True))


def test_noisy_labels_estimate_sets_v_from_the_read_outs_posterior_on_the_noisy_set():
    images, labels = meta_set()
    noisy_images, true = meta_set(size=90, seed=1)
    given = (true + (np.arange(90) % 3 == 0)) % NUM_CLASSES  # a third moved to the next class
    with pytest.raises(ValueError, match="pass `noisy_data=\\(images, labels\\)`"):
        posterior_model((images, labels), transition_estimate="noisy_labels")
    model = mln_tf.MetaLabelNet(tanh_classifier(), feature_layer="features", label_input=True,
                                generator_init="clean_posterior",
                                transition_estimate="noisy_labels")  # fmt: skip
    model.initialize_label_generator((images, labels), (noisy_images, given))
    kernel, bias = model.label_generator.get_weights()
    features = model.feature_extractor.predict(noisy_images, verbose=0).astype("float64")
    posterior = softmax(features @ kernel[:NUM_FEATURES] + bias)
    counts = posterior.T @ np.eye(NUM_CLASSES)[given]
    expected = np.log(np.maximum(counts / counts.sum(axis=1, keepdims=True), 1e-4)).T
    np.testing.assert_allclose(kernel[NUM_FEATURES:], expected, rtol=1e-4, atol=1e-4)


# The generator restarted from the classifier at each epoch's end (`generator_refresh`)


def test_each_epoch_ends_with_the_generator_at_the_classifiers_own_posterior():
    images, labels = meta_set(size=96)
    model = posterior_model((images, labels), generator_refresh="each_epoch",
                            generator_learning_rate=0.05)  # fmt: skip
    model.compile(optimizer=keras.optimizers.SGD(0.1), jit_compile=False)
    label_weights_before = model.label_generator.get_weights()[0][NUM_FEATURES:].copy()
    noisy = tf.data.Dataset.from_tensor_slices((images[:48], labels[:48])).batch(12)
    meta = tf.data.Dataset.from_tensor_slices((images[48:], labels[48:])).batch(12)
    model.fit(tf.data.Dataset.zip((noisy, meta)), epochs=1, verbose=0)

    # The extractor holds the classifier's weights again, W and b are its last layer ...
    for layer in [layer for layer in model.feature_extractor.layers if layer.weights]:
        for a, b in zip(layer.get_weights(), model.classifier.get_layer(layer.name).get_weights()):
            np.testing.assert_array_equal(a, b)
    kernel, bias = model.label_generator.get_weights()
    head_kernel, head_bias = model.classifier.get_layer("logits").get_weights()
    np.testing.assert_array_equal(kernel[:NUM_FEATURES], head_kernel)
    np.testing.assert_array_equal(bias, head_bias)
    # ... and V is what the meta-gradient made of it, not reset.
    label_weights = kernel[NUM_FEATURES:]
    assert np.abs(label_weights - label_weights_before).max() > 1e-4
    # The soft labels: softmax(f_θ(x) + V[ỹ]), the classifier's posterior, computed here.
    x, given = images[:6], np.array([0, 1, 2, 2, 1, 0])
    logits = model.classifier.predict(x, verbose=0).astype("float64")
    np.testing.assert_allclose(model.predict_soft_labels(x, given),
                               softmax(logits + label_weights[given]), rtol=1e-4,
                               atol=1e-6)  # fmt: skip


def test_a_refresh_is_in_the_checkpoint_and_a_resumed_run_trains_the_same_weights(tmp_path):
    from mln_tf.callbacks import EpochCheckpoint

    images, labels = meta_set(size=96)

    class StopAfterFirstEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.model.stop_training = True

    def run(directory, *callbacks):
        keras.utils.set_random_seed(3)
        model = posterior_model((images, labels), generator_refresh="each_epoch")
        model.compile(optimizer=keras.optimizers.SGD(0.1), jit_compile=False)
        checkpoint = EpochCheckpoint(str(directory))
        epoch, _ = checkpoint.restore(model)
        noisy = tf.data.Dataset.from_tensor_slices((images[:48], labels[:48])).batch(12)
        meta = tf.data.Dataset.from_tensor_slices((images[48:], labels[48:])).batch(12)
        model.fit(tf.data.Dataset.zip((noisy, meta)), epochs=2, initial_epoch=epoch,
                  callbacks=[checkpoint, *callbacks], verbose=0)  # fmt: skip
        return model

    straight = run(tmp_path / "straight")
    run(tmp_path / "interrupted", StopAfterFirstEpoch())
    resumed = run(tmp_path / "interrupted")
    for a, b in zip(resumed.get_weights(), straight.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_the_refresh_refuses_what_it_cannot_restart_from():
    images, labels = meta_set()
    with pytest.raises(ValueError, match="Expected generator_input='frozen_features'"):
        logits_model((images, labels), generator_refresh="each_epoch")
    inputs = keras.Input((4,))
    hidden = layers.Dense(NUM_FEATURES, activation="tanh", name="features")(inputs)
    more = layers.Dense(NUM_FEATURES, activation="tanh", name="more")(hidden)
    classifier = keras.Model(inputs, layers.Dense(NUM_CLASSES, name="logits")(more))
    with pytest.raises(ValueError, match="feature_layer='features' is not its input"):
        mln_tf.MetaLabelNet(classifier, feature_layer="features", generator_refresh="each_epoch")
    other = tanh_classifier()
    extractor = keras.Sequential([keras.Input((4,)), layers.Dense(NUM_FEATURES, name="other")])
    with pytest.raises(ValueError, match="layer 'other' is not a layer of the classifier: "
                       "only an extractor cut from the classifier can be refreshed"):
        mln_tf.MetaLabelNet(other, feature_extractor=extractor,
                            generator_refresh="each_epoch")  # fmt: skip

    model = posterior_model((images, labels), generator_refresh="each_epoch")
    model.compile(optimizer=keras.optimizers.SGD(0.1), jit_compile=False)
    features = np.zeros((12, NUM_FEATURES), "float32")
    with pytest.raises(ValueError, match="which would leave them stale"):
        model.train_on_batch(((images[:12], labels[:12], features),
                              (images[12:24], labels[12:24])))  # fmt: skip


def test_the_train_job_refreshes_the_generator_from_the_classifier_it_saves(tmp_path):
    config = mln_tf.train.TrainConfig(
        dataset="digits", noise="symmetric", rate=0.4, warmup_epochs=1, meta_epochs=2,
        batch_size=32, jit_compile=False, warm_up_cache=False,
        options=mln_tf.options.RECOMMENDED.replace(generator_refresh="each_epoch"),
    )  # fmt: skip
    results = mln_tf.train.run(config, str(tmp_path), verbose=0)
    assert results["methods"]["meta_label_net"]["test_accuracy_final"] > 0.5
    model = keras.saving.load_model(tmp_path / "meta_label_net.keras")
    assert model.generator_refresh == "each_epoch"
    num_features = model.feature_extractor.output_shape[-1]
    kernel, bias = model.label_generator.get_weights()
    head_kernel, head_bias = model.classifier.layers[-1].get_weights()
    np.testing.assert_array_equal(kernel[:num_features], head_kernel)
    np.testing.assert_array_equal(bias, head_bias)
