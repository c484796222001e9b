"""The two-stage schedule that the main job, the tuner and the notebooks share."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

import mln_tf
from mln_tf import schedule


def classifier():
    inputs = keras.Input((6,))
    features = layers.Dense(8, activation="relu", name="features")(inputs)
    return keras.Model(inputs, layers.Dense(3)(features))


def noisy_and_meta(seed=0):
    rng = np.random.default_rng(seed)
    noisy = tf.data.Dataset.from_tensor_slices(
        (rng.normal(size=(64, 6)).astype("float32"), rng.integers(0, 3, 64))
    )
    meta = tf.data.Dataset.from_tensor_slices(
        (rng.normal(size=(32, 6)).astype("float32"), np.arange(32) % 3)
    )
    return noisy, meta


def test_the_meta_stage_continues_the_warm_up_weights_momentum_and_step_count():
    noisy, meta = noisy_and_meta()
    warm = schedule.compile_for_warm_up(classifier(), learning_rate=0.05)
    schedule.warm_up(warm, noisy.batch(16), epochs=2, verbose=0)
    model = mln_tf.MetaLabelNet(keras.models.clone_model(warm), feature_layer="features",
                                options=mln_tf.options.RECOMMENDED.replace(
                                    generator_init="classifier_head"))  # fmt: skip
    model.compile(optimizer=mln_tf.optimizers.paper_classifier_optimizer(0.05))
    schedule.start_meta_stage(model, warm)

    for got, want in zip(model.classifier.get_weights(), warm.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)
    assert int(model.optimizer.iterations) == 8  # 2 epochs × 4 batches
    for got, want in zip(model.optimizer.variables, warm.optimizer.variables, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(got),
                                      keras.ops.convert_to_numpy(want))  # fmt: skip
    # The extractor is cut from the warmed-up weights, the generator starts from its head.
    features = warm.get_layer("features")(np.ones((1, 6), "float32"))
    np.testing.assert_allclose(model.feature_extractor(np.ones((1, 6), "float32")), features)
    np.testing.assert_array_equal(model.label_generator.layers[-1].bias.numpy(),
                                  warm.layers[-1].bias.numpy())  # fmt: skip

    learning_rates = []
    history = schedule.meta_stage(
        model, mln_tf.data.with_meta(noisy, meta, 16), first_epoch=2, last_epoch=4,
        learning_rate=lambda epoch: 0.05 if epoch < 3 else 0.01, verbose=0,
        callbacks=[keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs:
                   learning_rates.append(float(model.optimizer.learning_rate)))],
    )  # fmt: skip
    assert history.epoch == [2, 3]
    assert learning_rates == pytest.approx([0.05, 0.01])


def test_optimizers_that_cannot_continue_each_other_are_refused():
    warm = schedule.compile_for_warm_up(classifier())
    model = mln_tf.MetaLabelNet(classifier(), feature_layer="features")
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    with pytest.raises(ValueError, match="cannot continue in the next stage's \\(Adam"):
        schedule.start_meta_stage(model, warm)
