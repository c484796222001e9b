"""The clean-set baselines: NoisyPlusClean's step, GLC's matrix and fine-tuning.

Steps are compared in float64 with a NumPy computation of the loss and its gradient for a
softmax regression (one Dense layer), where the gradient has a closed form.
"""

import doctest
import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from mln_tf import clean_baselines, losses
from mln_tf import data as mln_data
from mln_tf.clean_baselines import (
    FINE_TUNE_GRID,
    NoisyPlusClean,
    fine_tune,
    gold_transition_matrix,
    search_fine_tune,
)

NUM_FEATURES, NUM_CLASSES = 4, 3
LEARNING_RATE = 0.5
MATRIX = np.array([[0.6, 0.4, 0.0], [0.0, 0.7, 0.3], [0.2, 0.0, 0.8]])
TOLERANCE = {"rtol": 1e-10, "atol": 1e-12}


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _linear_classifier():
    rng = np.random.default_rng(3)
    classifier = keras.Sequential(
        [keras.Input((NUM_FEATURES,)), keras.layers.Dense(NUM_CLASSES, name="logits")]
    )
    kernel = rng.normal(size=(NUM_FEATURES, NUM_CLASSES))
    bias = rng.normal(size=(NUM_CLASSES,))
    classifier.set_weights([kernel, bias])
    return classifier


def _batch(noisy_labels=(0, -1, 2, 1, -1, 2), meta_labels=(1, 0, 2, 2), seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(len(noisy_labels), NUM_FEATURES))
    x_meta = rng.normal(size=(len(meta_labels), NUM_FEATURES))
    return (x, np.array(noisy_labels)), (x_meta, np.array(meta_labels))


def _numpy_step(kernel, bias, batch, clean_weight, matrix=None):
    """The loss and the weights after one SGD step, for softmax regression, in NumPy."""
    (x, y), (x_meta, y_meta) = batch
    labeled = y >= 0
    p = _softmax(x @ kernel + bias)
    p_meta = _softmax(x_meta @ kernel + bias)
    n_labeled = max(labeled.sum(), 1)
    y_safe = np.where(labeled, y, 0)
    if matrix is None:
        noisy_per_example = -np.log(p[np.arange(len(y)), y_safe])
        grad_logits = p - np.eye(NUM_CLASSES)[y_safe]
    else:
        # -log((p T)_y + eps); d/dp = -T[:, y] / ((p T)_y + eps); back through the softmax.
        noisy_p = (p @ matrix)[np.arange(len(y)), y_safe] + losses.LOG_EPSILON
        noisy_per_example = -np.log(noisy_p)
        grad_p = -matrix[:, y_safe].T / noisy_p[:, None]
        grad_logits = p * (grad_p - np.sum(p * grad_p, axis=1, keepdims=True))
    noisy_loss = np.sum(labeled * noisy_per_example) / n_labeled
    grad_logits = grad_logits * labeled[:, None] / n_labeled
    clean_loss = np.mean(-np.log(p_meta[np.arange(len(y_meta)), y_meta]))
    grad_meta_logits = clean_weight * (p_meta - np.eye(NUM_CLASSES)[y_meta]) / len(y_meta)
    grad_kernel = x.T @ grad_logits + x_meta.T @ grad_meta_logits
    grad_bias = grad_logits.sum(axis=0) + grad_meta_logits.sum(axis=0)
    loss = noisy_loss + clean_weight * clean_loss
    return (
        loss,
        noisy_loss,
        clean_loss,
        kernel - LEARNING_RATE * grad_kernel,
        bias - (LEARNING_RATE * grad_bias),
    )


def _model(noisy_loss=None, clean_weight=1.0, **compile_kwargs):
    model = NoisyPlusClean(_linear_classifier(), noisy_loss=noisy_loss, clean_weight=clean_weight)
    model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE), **compile_kwargs)
    return model


@pytest.mark.parametrize("method", ["cross_entropy", "gold_loss_correction"])
@pytest.mark.parametrize("clean_weight", [1.0, 0.3])
def test_step_matches_numpy_loss_and_sgd_update(method, clean_weight):
    keras.config.set_floatx("float64")
    matrix = MATRIX if method == "gold_loss_correction" else None
    noisy_loss = None if matrix is None else losses.ForwardCorrection(matrix)
    model = _model(noisy_loss, clean_weight)
    kernel, bias = model.classifier.get_weights()
    batch = _batch()

    logs = model.train_on_batch(batch, return_dict=True)

    loss, noisy_loss, clean_loss, new_kernel, new_bias = _numpy_step(
        kernel, bias, batch, clean_weight, matrix
    )
    np.testing.assert_allclose(logs["loss"], loss, **TOLERANCE)
    np.testing.assert_allclose(logs["noisy_loss"], noisy_loss, **TOLERANCE)
    np.testing.assert_allclose(logs["clean_loss"], clean_loss, **TOLERANCE)
    np.testing.assert_allclose(model.classifier.get_weights()[0], new_kernel, **TOLERANCE)
    np.testing.assert_allclose(model.classifier.get_weights()[1], new_bias, **TOLERANCE)


def test_unlabeled_examples_are_ignored():
    keras.config.set_floatx("float64")
    (x, y), meta = _batch()
    labeled = y >= 0
    with_unlabeled, only_labeled = _model(), _model()

    with_unlabeled.train_on_batch(((x, y), meta))
    only_labeled.train_on_batch(((x[labeled], y[labeled]), meta))

    for a, b in zip(with_unlabeled.get_weights(), only_labeled.get_weights()):
        np.testing.assert_allclose(a, b, **TOLERANCE)


def test_a_batch_without_labels_trains_on_the_clean_term_only():
    keras.config.set_floatx("float64")
    model = _model()
    kernel, bias = model.classifier.get_weights()
    batch = _batch(noisy_labels=(-1, -1, -1))

    logs = model.train_on_batch(batch, return_dict=True)

    _, _, clean_loss, new_kernel, _ = _numpy_step(kernel, bias, batch, 1.0)
    assert logs["noisy_loss"] == 0.0
    np.testing.assert_allclose(logs["loss"], clean_loss, **TOLERANCE)
    np.testing.assert_allclose(model.classifier.get_weights()[0], new_kernel, **TOLERANCE)


def test_forward_correction_with_identity_matrix_is_cross_entropy():
    keras.config.set_floatx("float64")
    corrected = _model(losses.ForwardCorrection(np.eye(NUM_CLASSES)))
    plain = _model()
    batch = _batch()

    corrected_logs = corrected.train_on_batch(batch, return_dict=True)
    plain_logs = plain.train_on_batch(batch, return_dict=True)

    # Equal up to the 1e-10 inside ForwardCorrection's log.
    np.testing.assert_allclose(corrected_logs["loss"], plain_logs["loss"], rtol=1e-8)
    for a, b in zip(corrected.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10)


def test_one_forward_pass_moves_batch_norm_statistics_once_on_both_batches():
    keras.config.set_floatx("float64")
    classifier = keras.Sequential(
        [
            keras.Input((NUM_FEATURES,)),
            keras.layers.BatchNormalization(momentum=0.9, name="norm"),
            keras.layers.Dense(NUM_CLASSES),
        ]
    )
    model = NoisyPlusClean(classifier)
    model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE))
    (x, y), (x_meta, y_meta) = _batch()

    model.train_on_batch(((x, y), (x_meta, y_meta)))

    both = np.concatenate([x, x_meta])
    norm = classifier.get_layer("norm")
    np.testing.assert_allclose(norm.moving_mean.numpy(), 0.1 * both.mean(axis=0), **TOLERANCE)
    np.testing.assert_allclose(
        norm.moving_variance.numpy(), 0.9 + 0.1 * both.var(axis=0), **TOLERANCE
    )


def test_evaluate_reports_cross_entropy_and_accuracy():
    keras.config.set_floatx("float64")
    model = _model()
    (x, y), _ = _batch(noisy_labels=(0, 1, 2, 1, 0, 2))
    kernel, bias = model.classifier.get_weights()
    p = _softmax(x @ kernel + bias)

    logs = model.evaluate(x, y, batch_size=6, return_dict=True, verbose=0)

    np.testing.assert_allclose(logs["loss"], np.mean(-np.log(p[np.arange(6), y])), rtol=1e-10)
    assert logs["accuracy"] == pytest.approx(np.mean(p.argmax(axis=1) == y))


def _fit_weights(model, steps=3):
    batches = [_batch(seed=seed) for seed in range(steps)]
    stacked = tf.nest.map_structure(lambda *arrays: np.stack(arrays), *batches)
    model.fit(tf.data.Dataset.from_tensor_slices(stacked), epochs=1, shuffle=False, verbose=0)
    return model.get_weights()


def test_jit_compile_matches_eager():
    eager = _fit_weights(_model(run_eagerly=True))
    compiled = _fit_weights(_model(jit_compile=True))

    for a, b in zip(eager, compiled):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_one_device_strategy_matches_no_strategy():
    keras.config.set_floatx("float64")
    expected = _fit_weights(_model())
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        model = _model()

    for a, b in zip(expected, _fit_weights(model)):
        np.testing.assert_allclose(a, b, **TOLERANCE)


# Two logical CPU devices need a fresh process: TensorFlow splits the CPU only before it runs.
TWO_REPLICAS_SCRIPT = """
import sys
import numpy as np
import tensorflow as tf
from mln_tf import distribute
strategy = distribute.build_strategy("mirrored", devices=2)
import keras
from tests import test_clean_baselines as t
keras.config.set_floatx("float64")
keras.utils.set_random_seed(0)
expected = t._fit_weights(t._model())
with strategy.scope():
    model = t._model()
np.savez(sys.argv[1], *expected, *t._fit_weights(model))
"""


def test_two_replicas_match_one_device(tmp_path):
    path = tmp_path / "weights.npz"
    process = subprocess.run(
        [sys.executable, "-c", TWO_REPLICAS_SCRIPT, str(path)],
        capture_output=True, text=True, timeout=300,
        cwd=Path(__file__).parents[1],
    )  # fmt: skip
    assert process.returncode == 0, process.stderr[-4000:]
    with np.load(path) as arrays:
        weights = [arrays[f"arr_{index}"] for index in range(len(arrays.files))]
    one_device, two_replicas = weights[:2], weights[2:]
    # Each replica holds 2 of the 4 labeled noisy examples: the global mean is exact.
    for a, b in zip(one_device, two_replicas):
        np.testing.assert_allclose(a, b, **TOLERANCE)


def test_config_round_trip_and_keras_file(tmp_path):
    keras.config.set_floatx("float64")
    model = _model(losses.ForwardCorrection(MATRIX), clean_weight=0.25)
    model.train_on_batch(_batch(seed=1))

    clone = NoisyPlusClean.from_config(model.get_config())
    assert clone.clean_weight == 0.25
    np.testing.assert_array_equal(clone.noisy_loss.transition_matrix, MATRIX)

    path = tmp_path / "noisy_plus_clean.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, NoisyPlusClean)
    # Through JSON: a loaded config holds lists where the original holds tuples.
    assert json.loads(json.dumps(loaded.get_config())) == json.loads(json.dumps(model.get_config()))
    assert isinstance(loaded.noisy_loss, losses.ForwardCorrection)
    # The optimizer is loaded too: the next step is the same.
    for reloaded in (model, loaded):
        reloaded.train_on_batch(_batch(seed=2))
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "batch",
    [
        (np.zeros((2, NUM_FEATURES)), np.zeros((2,), "int32")),
        ((np.zeros((2, NUM_FEATURES)), np.zeros((2,), "int32")), np.zeros((2, NUM_FEATURES))),
    ],
)
def test_error_for_wrong_batch_structure(batch):
    model = _model()
    with pytest.raises(ValueError, match=r"`\(\(x, y\), \(x_meta, y_meta\)\)`"):
        model.train_on_batch(batch)


def test_error_for_images_of_the_wrong_shape():
    model = _model()
    (x, y), (x_meta, y_meta) = _batch()
    with pytest.raises(ValueError, match=r"`x_meta` has examples of shape \(5,\)"):
        model.train_on_batch(((x, y), (np.zeros((4, 5)), y_meta)))


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"clean_weight": -1.0}, ValueError, "Received: clean_weight=-1.0. Expected a non-neg"),
        ({"clean_weight": float("nan")}, ValueError, "Received: clean_weight=nan"),
        (
            {"noisy_loss": losses.ForwardCorrection(np.eye(2))},
            ValueError,
            r"transition matrix of shape \(2, 2\). Expected \(3, 3\)",
        ),
        (
            {"noisy_loss": keras.losses.SparseCategoricalCrossentropy()},
            ValueError,
            "from_logits=False",
        ),
        ({"noisy_loss": "sparse_categorical_crossentropy"}, TypeError, "Received: str"),
    ],
)
def test_constructor_rejects_invalid_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        NoisyPlusClean(_linear_classifier(), **kwargs)


def test_compile_rejects_a_loss_and_metrics():
    model = NoisyPlusClean(_linear_classifier())
    with pytest.raises(ValueError, match="pass `noisy_loss=` there"):
        model.compile(loss="mse")
    with pytest.raises(ValueError, match="call `compile\\(\\)` without `metrics`"):
        model.compile(metrics=["accuracy"])


# Gold Loss Correction's matrix


def test_gold_transition_matrix_is_the_mean_softmax_per_true_class():
    classifier = _linear_classifier()
    kernel, bias = classifier.get_weights()
    rng = np.random.default_rng(5)
    images = rng.normal(size=(7, NUM_FEATURES)).astype("float32")
    labels = np.array([0, 2, 0, 2, 2, 0, 2])  # no image of class 1

    matrix = gold_transition_matrix(classifier, images, labels, NUM_CLASSES, batch_size=3)

    p = _softmax(images.astype("float64") @ kernel.astype("float64") + bias)
    expected = np.stack([p[labels == 0].mean(axis=0), [0.0, 1.0, 0.0], p[labels == 2].mean(axis=0)])
    assert matrix.dtype == np.float32 and matrix.shape == (3, 3)
    np.testing.assert_allclose(matrix, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0, atol=1e-6)
    # It is a valid matrix for ForwardCorrection, hence for GLC.
    NoisyPlusClean(classifier, noisy_loss=losses.ForwardCorrection(matrix))


@pytest.mark.parametrize(
    "labels, num_classes, message",
    [
        ([0, 3], NUM_CLASSES, r"Received labels from 0 to 3. Expected class indices in \[0, 3\)"),
        ([0, 1, 2], NUM_CLASSES, "Received 3 labels for 2 images"),
        ([0.0, 1.0], NUM_CLASSES, "Expected integer class indices"),
        ([0, 1], 4, "Received: num_classes=4, but the classifier outputs 3 logits"),
        ([0, 1], 0, "Received: num_classes=0. Expected a positive integer"),
    ],
)
def test_gold_transition_matrix_rejects_invalid_arguments(labels, num_classes, message):
    with pytest.raises(ValueError, match=message):
        gold_transition_matrix(_linear_classifier(), np.zeros((2, NUM_FEATURES)), labels,
                               num_classes)  # fmt: skip


# Fine-tuning


def _separable_data(n, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, size=n)
    centers = 3.0 * np.eye(NUM_CLASSES, NUM_FEATURES)
    images = (centers[labels] + 0.3 * rng.normal(size=(n, NUM_FEATURES))).astype("float32")
    return images, labels.astype("int32")


def _accuracy(classifier, images, labels):
    return float(np.mean(np.argmax(classifier.predict(images, verbose=0), axis=1) == labels))


def test_fine_tune_improves_meta_accuracy_on_a_copy():
    classifier = _linear_classifier()
    images, labels = _separable_data(60, seed=0)
    before = [w.copy() for w in classifier.get_weights()]
    accuracy_before = _accuracy(classifier, images, labels)
    batches = tf.data.Dataset.from_tensor_slices((images, labels)).batch(20)

    history = fine_tune(classifier, batches, epochs=5, learning_rate=0.1,
                        validation_data=batches, verbose=0)  # fmt: skip

    tuned = history.model
    assert tuned is not classifier
    assert accuracy_before < 0.7
    assert _accuracy(tuned, images, labels) == 1.0
    assert history.history["val_accuracy"][-1] == 1.0
    assert len(history.history["loss"]) == 5
    assert history.history["loss"][-1] < history.history["loss"][0]
    for original, now in zip(before, classifier.get_weights()):
        np.testing.assert_array_equal(original, now)
    assert tuned.optimizer.learning_rate.numpy() == pytest.approx(0.1)
    assert tuned.optimizer.coupled_weight_decay == 1e-4


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"epochs": 0, "learning_rate": 0.1}, "Received: epochs=0. Expected a positive integer"),
        ({"epochs": 1, "learning_rate": -1.0}, "Received: learning_rate=-1.0"),
    ],
)
def test_fine_tune_rejects_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        fine_tune(_linear_classifier(), None, **kwargs)


def test_search_fine_tune_keeps_the_best_setting_on_validation():
    classifier = _linear_classifier()
    images, labels = _separable_data(60, seed=0)
    val_images, val_labels = _separable_data(30, seed=1)
    batches = tf.data.Dataset.from_tensor_slices((images, labels)).batch(20)
    validation = tf.data.Dataset.from_tensor_slices((val_images, val_labels)).batch(30)
    grid = ({"epochs": 1, "learning_rate": 1e-6}, {"epochs": 5, "learning_rate": 0.1})

    best, history, scores = search_fine_tune(classifier, batches, validation, grid=grid,
                                             verbose=0)  # fmt: skip

    assert best == grid[1]
    assert scores[0] == pytest.approx(_accuracy(classifier, val_images, val_labels), abs=1e-6)
    assert scores[1] == _accuracy(history.model, val_images, val_labels) == 1.0


def test_search_fine_tune_rejects_an_unknown_monitor():
    images, labels = _separable_data(6, seed=0)
    batches = tf.data.Dataset.from_tensor_slices((images, labels)).batch(6)
    with pytest.raises(ValueError, match="Received: monitor='val_auc'"):
        search_fine_tune(_linear_classifier(), batches, batches, monitor="val_auc",
                         grid=({"epochs": 1, "learning_rate": 0.1},), verbose=0)  # fmt: skip


def test_fine_tune_grid_holds_fine_tune_settings():
    assert len(FINE_TUNE_GRID) == 6
    assert {tuple(sorted(settings)) for settings in FINE_TUNE_GRID} == {("epochs", "learning_rate")}


def test_docstring_examples():
    result = doctest.testmod(
        clean_baselines,
        extraglobs={"np": np, "tf": tf, "keras": keras, **vars(clean_baselines)},
        optionflags=doctest.ELLIPSIS,
    )
    assert result.attempted > 0 and result.failed == 0


def test_gold_transition_matrix_takes_a_dataset_of_images():
    classifier = _linear_classifier()
    images, labels = _separable_data(9, seed=2)
    from_arrays = gold_transition_matrix(classifier, images, labels, NUM_CLASSES)
    dataset = tf.data.Dataset.from_tensor_slices(images).batch(4)

    from_dataset = gold_transition_matrix(classifier, dataset, labels, NUM_CLASSES)

    np.testing.assert_allclose(from_dataset, from_arrays, rtol=1e-6)


def test_fit_on_with_meta_batches_and_validation():
    images, labels = _separable_data(40, seed=0)
    noisy_labels = np.where(np.arange(40) % 4 == 0, (labels + 1) % NUM_CLASSES, labels)
    meta_images, meta_labels = _separable_data(12, seed=1)
    batches = mln_data.with_meta(
        tf.data.Dataset.from_tensor_slices((images, noisy_labels)),
        tf.data.Dataset.from_tensor_slices((meta_images, meta_labels)),
        batch_size=8,
        seed=0,
    )
    validation = tf.data.Dataset.from_tensor_slices((images, labels)).batch(20)
    model = NoisyPlusClean(_linear_classifier())
    model.compile(optimizer=keras.optimizers.SGD(0.1))

    history = model.fit(batches, validation_data=validation, epochs=3, shuffle=False, verbose=0)

    assert sorted(history.history) == [
        "clean_loss", "loss", "noisy_loss", "val_accuracy", "val_loss",
    ]  # fmt: skip
    assert history.history["loss"][-1] < history.history["loss"][0]
    accuracy = _accuracy(model.classifier, images, labels)
    assert history.history["val_accuracy"][-1] == pytest.approx(accuracy, abs=1e-6)
