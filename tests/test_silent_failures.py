"""Failures that used to pass silently in MetaLabelNet's step, each with its fix checked.

Also the classifier's own update (step 6) against an independent float64 computation.
"""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

import mln_tf
from mln_tf import meta_gradient

LOG_EPSILON = 1e-10  # the authors' epsilon inside log(ŷ), written again here on purpose


def dropout_classifier():
    inputs = keras.Input((6,))
    hidden = layers.Dropout(0.5, seed=3)(inputs)
    features = layers.Dense(8, activation="relu", name="features")(hidden)
    hidden = layers.Dropout(0.5, seed=4)(features)
    return keras.Model(inputs, layers.Dense(3)(hidden))


def dense_classifier(num_inputs=4, num_classes=3):
    inputs = keras.Input((num_inputs,))
    features = layers.Dense(5, activation="tanh", name="features")(inputs)
    return keras.Model(inputs, layers.Dense(num_classes)(features))


def batch(rng, size=6, num_inputs=6, num_classes=3, dtype="float32"):
    x = rng.normal(size=(size, num_inputs)).astype(dtype)
    x_meta = rng.normal(size=(size, num_inputs)).astype(dtype)
    return (x, rng.integers(0, num_classes, size)), (x_meta, rng.integers(0, num_classes, size))


def seed_positions(model):
    """The draw counters of the classifier's random generators (dropout's seeds)."""
    states = mln_tf.random_state.random_state_variables(model.classifier)
    return [int(keras.ops.convert_to_numpy(state)[1]) for state in states]


# Dropout masks


@pytest.mark.parametrize("strategy", ["nested_tapes", "forward_mode"])
def test_every_pass_draws_fresh_dropout_masks(strategy):
    model = mln_tf.MetaLabelNet(dropout_classifier(), feature_layer="features",
                                meta_gradient=strategy)  # fmt: skip
    model.compile(optimizer=keras.optimizers.SGD(0.1), jit_compile=False)
    before = seed_positions(model)
    model.train_on_batch(batch(np.random.default_rng(0)))
    after = seed_positions(model)
    # Each dropout layer draws one mask in the noisy pass and one in the meta pass: the next
    # step's noisy pass must not start where this step's meta pass drew (before: +1 only).
    assert [a - b for a, b in zip(after, before)] == [2, 2]


# Mixed precision and probabilities


def test_mixed_float16_is_refused_with_a_pointer_to_bfloat16():
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        classifier = dense_classifier()
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    with pytest.raises(ValueError, match="computes in float16.*underflow.*mixed_bfloat16"):
        mln_tf.MetaLabelNet(classifier, feature_layer="features")


def test_a_classifier_that_outputs_probabilities_is_refused():
    inputs = keras.Input((4,))
    features = layers.Dense(5, activation="tanh", name="features")(inputs)
    classifier = keras.Model(inputs, layers.Dense(3, activation="softmax")(features))
    with pytest.raises(ValueError, match="outputs probabilities, but MetaLabelNet needs logits"):
        mln_tf.MetaLabelNet(classifier, feature_layer="features")


# Settings changed after the step was traced


def trained_twice(change):
    """Two `fit` steps from the same start; `change(model)` between them."""
    keras.utils.set_random_seed(0)
    model = mln_tf.MetaLabelNet(dense_classifier(6), feature_layer="features")
    model.compile(optimizer=keras.optimizers.SGD(0.1),
                  generator_optimizer=keras.optimizers.SGD(0.5), entropy_weight=0.0)  # fmt: skip
    data = tf.data.Dataset.from_tensors(batch(np.random.default_rng(1)))
    model.fit(data, epochs=1, verbose=0)
    change(model)
    model.fit(data, epochs=1, verbose=0)
    return [keras.ops.convert_to_numpy(w) for w in model.weights]


def test_an_option_set_after_the_first_fit_takes_effect():
    def set_attribute(model):
        model.entropy_weight = 2.0
        model.virtual_lr = 0.3

    def recompile(model):  # the reference: a fresh trace with the new values
        model.compile(optimizer=keras.optimizers.SGD(0.1),
                      generator_optimizer=keras.optimizers.SGD(0.5),
                      entropy_weight=2.0, virtual_lr=0.3)  # fmt: skip

    changed, reference = trained_twice(set_attribute), trained_twice(recompile)
    unchanged = trained_twice(lambda model: None)
    for got, want in zip(changed, reference, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert max(np.abs(a - b).max() for a, b in zip(changed, unchanged)) > 1e-4


def test_an_option_that_shapes_the_generator_cannot_change_after_building():
    model = mln_tf.MetaLabelNet(dense_classifier(), feature_layer="features")
    with pytest.raises(ValueError, match="label_trust shape the label generator"):
        model.label_trust = 3.0
    with pytest.raises(ValueError, match="label_input shape the label generator"):
        model.compile(label_input=True)
    assert model.options == mln_tf.options.PAPER


# Skipped steps outside fit, and NumPy batches


def test_train_on_batch_raises_for_a_label_out_of_range_and_keeps_the_weights():
    model = mln_tf.MetaLabelNet(dense_classifier(6), feature_layer="features")
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    (x, y), (x_meta, y_meta) = batch(np.random.default_rng(2))
    before = [keras.ops.convert_to_numpy(w) for w in model.weights]
    with pytest.raises(ValueError, match="at train_on_batch: a label is out of range"):
        model.train_on_batch(((x, y), (x_meta, np.full_like(y_meta, 7))))
    for got, want in zip(model.weights, before):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(got), want)


def test_train_on_batch_raises_for_nan_images():
    model = mln_tf.MetaLabelNet(dense_classifier(6), feature_layer="features")
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    (x, y), meta = batch(np.random.default_rng(3))
    x[0, 0] = np.nan
    with pytest.raises(mln_tf.NonFiniteLossError, match="at train_on_batch: the loss"):
        model.train_on_batch(((x, y), meta))


def test_train_step_accepts_numpy_batches_as_keras_does():
    model = mln_tf.MetaLabelNet(dense_classifier(6), feature_layer="features")
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    logs = model.train_step(batch(np.random.default_rng(4)))
    assert np.isfinite(float(logs["loss"])) and np.isfinite(float(logs["meta_loss"]))


# head_layers on a nested backbone


def test_head_layers_counts_the_innermost_layers_of_a_nested_backbone():
    classifier = mln_tf.classifiers.resnet50(5, input_shape=(32, 32, 3))
    assert any(isinstance(layer, keras.Model) for layer in classifier.layers)  # nested
    model = mln_tf.MetaLabelNet(classifier, virtual_scope="head", head_layers=2)
    trainable = classifier.trainable_variables
    moved = [trainable[i] for i in meta_gradient.virtual_indices(classifier, model.options)]
    # The head Dense and the backbone's last batch normalisation, not the whole backbone.
    assert len(moved) == 4 and len(trainable) > 100
    last_bn, head = meta_gradient.weighted_layers(classifier)[-2:]
    assert isinstance(last_bn, layers.BatchNormalization) and isinstance(head, layers.Dense)
    assert {id(v) for v in moved} == {id(v) for v in [*last_bn.trainable_weights,
                                                      *head.trainable_weights]}  # fmt: skip


def test_head_layers_beyond_the_classifier_are_refused_at_construction_and_in_compile():
    classifier = keras.Sequential(
        [keras.Input((4,)), layers.Dense(5, name="hidden"), layers.Dense(3, name="out")]
    )
    message = (
        "Received: head_layers=3. Expected an integer from 1 to 2, the number of the "
        "classifier's innermost layers with trainable weights \\(the last: hidden, out\\)"
    )
    with pytest.raises(ValueError, match=message):
        mln_tf.MetaLabelNet(classifier, virtual_scope="head", head_layers=3)
    model = mln_tf.MetaLabelNet(classifier, virtual_scope="head", head_layers=2)
    with pytest.raises(ValueError, match=message):
        model.compile(head_layers=3)
    assert model.head_layers == 2  # the refused change left the model as it was


# Step 6, the classifier's own update


def softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def classifier_loss(params, x, soft_labels, label_loss, loss_scale, entropy_weight,
                    clean_weight=0.0, meta=None):  # fmt: skip
    """L_c(θ; ŷ') + w·L_e(θ) + λ·CE(θ; meta) of the 4 → 5 (tanh) → 3 classifier, in NumPy."""
    w1, b1, w2, b2 = params

    def probabilities(images):
        return softmax(np.tanh(images @ w1 + b1) @ w2 + b2)

    p = probabilities(x)
    if label_loss == "reverse_kl":
        elementwise = p * (np.log(p) - np.log(soft_labels + LOG_EPSILON))
    else:
        elementwise = -soft_labels * np.log(p)
    entropy = -p * np.log(p)
    reduce = (lambda e: e.sum(axis=1).mean()) if loss_scale == "sum_over_classes" else np.mean
    loss = reduce(elementwise) + entropy_weight * reduce(entropy)
    if clean_weight:
        x_meta, y_meta = meta
        p_meta = probabilities(x_meta)
        loss += clean_weight * -np.log(p_meta[np.arange(len(y_meta)), y_meta]).mean()
    return loss


@pytest.mark.parametrize(
    "label_loss, loss_scale, entropy_weight, clean_weight",
    [*itertools.product(["reverse_kl", "cross_entropy"], ["mean", "sum_over_classes"],
                        [0.0, 0.7], [0.0]),
     ("cross_entropy", "sum_over_classes", 0.0, 0.8),
     ("reverse_kl", "mean", 0.7, 0.8)],
)  # fmt: skip
def test_classifier_update_matches_finite_differences_on_the_new_soft_labels(
    label_loss, loss_scale, entropy_weight, clean_weight
):
    keras.config.set_floatx("float64")
    rng = np.random.default_rng(5)
    (x, y), (x_meta, y_meta) = batch(rng, num_inputs=4, dtype="float64")
    classifier = dense_classifier()
    model = mln_tf.MetaLabelNet(classifier, feature_layer="features", label_loss=label_loss,
                                loss_scale=loss_scale)  # fmt: skip
    learning_rate = 0.3
    model.compile(optimizer=keras.optimizers.SGD(learning_rate),
                  generator_optimizer=keras.optimizers.SGD(2.0),
                  entropy_weight=entropy_weight, virtual_lr=0.5,
                  clean_weight=clean_weight)  # fmt: skip
    before = [w.copy() for w in classifier.get_weights()]
    generator_before = model.label_generator.get_weights()
    features = model.feature_extractor.predict(x, verbose=0)

    model.train_on_batch(((x, y), (x_meta, y_meta)))

    # ŷ' from the generator after its own update (checked in test_meta_gradient.py).
    w_gen, b_gen = model.label_generator.get_weights()
    new_soft_labels = softmax(features @ w_gen + b_gen)
    old_soft_labels = softmax(features @ generator_before[0] + generator_before[1])
    assert np.abs(new_soft_labels - old_soft_labels).max() > 1e-6  # ŷ' is not ŷ
    expected = []
    for index, param in enumerate(before):
        gradient = np.zeros_like(param)
        for position in np.ndindex(param.shape):
            shifted = [p.copy() for p in before]
            shifted[index][position] += 1e-6
            plus = classifier_loss(shifted, x, new_soft_labels, label_loss, loss_scale,
                                   entropy_weight, clean_weight, (x_meta, y_meta))  # fmt: skip
            shifted[index][position] -= 2e-6
            minus = classifier_loss(shifted, x, new_soft_labels, label_loss, loss_scale,
                                    entropy_weight, clean_weight, (x_meta, y_meta))  # fmt: skip
            gradient[position] = (plus - minus) / 2e-6
        expected.append(param - learning_rate * gradient)
    for got, want in zip(classifier.get_weights(), expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-9)


# Bad input: each gets a clear error (docs/bad_input.md)


def noisy_and_meta(meta_labels):
    rng = np.random.default_rng(6)
    noisy = tf.data.Dataset.from_tensor_slices(
        (rng.normal(size=(8, 6)).astype("float32"), rng.integers(0, 3, 8))
    )
    meta = tf.data.Dataset.from_tensor_slices(
        (rng.normal(size=(len(meta_labels), 6)).astype("float32"), np.asarray(meta_labels))
    )
    return noisy, meta


def test_a_meta_set_of_one_class_is_refused():
    noisy, meta = noisy_and_meta([2, 2, 2, 2])
    with pytest.raises(ValueError, match="The meta set holds only class 2"):
        mln_tf.data.with_meta(noisy, meta, batch_size=4)
    noisy, meta = noisy_and_meta([])
    with pytest.raises(ValueError, match="`meta` is empty"):
        mln_tf.data.with_meta(noisy, meta.take(0), batch_size=4)


@pytest.mark.parametrize(
    "corrupt, error, message",
    [
        (lambda x, y, xm, ym: (x, y.astype("float32"), xm, ym), ValueError,
         "The labels `y` must be integer class indices"),
        (lambda x, y, xm, ym: (x, np.where(np.arange(6) == 0, 3, y), xm, ym), ValueError,
         "a label is out of range"),
        (lambda x, y, xm, ym: (x, y, xm, np.where(np.arange(6) == 0, -1, ym)), ValueError,
         "a label is out of range"),
        (lambda x, y, xm, ym: (x[:, :5], y, xm, ym), ValueError,
         r"has examples of shape \(5,\), but the classifier expects \(6,\)"),
        (lambda x, y, xm, ym: (x, y, xm, np.eye(4)[ym]), ValueError,
         "The meta labels have 4 classes"),
    ],
)
def test_bad_batches_get_an_error_that_names_the_problem(corrupt, error, message):
    model = mln_tf.MetaLabelNet(dense_classifier(6), feature_layer="features")
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    (x, y), (x_meta, y_meta) = batch(np.random.default_rng(7))
    x, y, x_meta, y_meta = corrupt(x, y, x_meta, y_meta)
    data = tf.data.Dataset.from_tensors(((x, y), (x_meta, y_meta)))
    with pytest.raises(error, match=message):
        model.fit(data, verbose=0)
