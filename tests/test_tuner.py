"""Keras Tuner searches over MetaLabelNet, end to end on scikit-learn's digits."""

import keras
import keras_tuner as kt
import numpy as np
import pytest
from keras import layers

import mln_tf
from mln_tf.tuner import MetaLabelNetHyperModel

OBJECTIVE = kt.Objective("val_accuracy", "max")


def tiny_classifier(num_classes, input_shape):
    inputs = keras.Input(input_shape)
    x = layers.Flatten()(inputs)
    x = layers.Dense(32, activation="relu", name="features")(x)
    return keras.Model(inputs, layers.Dense(num_classes)(x))


class CountingHyperModel(MetaLabelNetHyperModel):
    """Records the trials whose warm-up ran."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.warmed_up = []

    def fit(self, hp, model, *args, **kwargs):
        self.current = dict(hp.values)
        return super().fit(hp, model, *args, **kwargs)

    def warm_up(self, model, x, **kwargs):
        self.warmed_up.append(self.current)
        return super().warm_up(model, x, **kwargs)


@pytest.fixture(scope="module")
def digits():
    data = mln_tf.data.load_noisy(
        "digits", noise="symmetric", rate=0.4, meta_size=100, validation_size=100, seed=0
    )
    validation = data.validation
    # 20 batches an epoch keep each trial to a few seconds.
    train = mln_tf.data.with_meta(data.train, data.meta, batch_size=64, seed=0).take(20)
    return data, train, mln_tf.data.batched(validation, 256)


def hypermodel(data, cls=MetaLabelNetHyperModel, **kwargs):
    kwargs.setdefault("warmup_epochs", (1, 2))
    return cls(
        data.num_classes,
        data.image_shape,
        classifier_builder=tiny_classifier,
        learning_rate=0.1,
        seed=0,
        **kwargs,
    )


def validation_accuracy(model, validation):
    """Accuracy of the classifier's argmax, computed outside Keras' metrics."""
    images = np.concatenate([x.numpy() for x, _ in validation])
    labels = np.concatenate([y.numpy() for _, y in validation])
    logits = model.predict(images, verbose=0)
    assert logits.shape == (labels.size, 10)
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def test_random_search_runs_two_trials_and_best_model_reloads(digits, tmp_path):
    data, train, validation = digits
    tuner = kt.RandomSearch(
        hypermodel(data), objective=OBJECTIVE, max_trials=2, seed=1,
        directory=tmp_path, project_name="random",
    )
    tuner.search(train, validation_data=validation, epochs=2, verbose=0)

    trials = tuner.oracle.get_best_trials(2)
    assert [t.status for t in trials] == ["COMPLETED", "COMPLETED"]
    values = [t.hyperparameters.values for t in trials]
    assert values[0] != values[1]
    for value in values:
        assert set(value) == {
            "generator_learning_rate", "virtual_lr", "warmup_epochs", "entropy_weight"
        }
    best_model = tuner.get_best_models(1)[0]
    assert isinstance(best_model, mln_tf.MetaLabelNet)
    # The recorded objective is the reloaded best model's accuracy on the validation set.
    accuracy = validation_accuracy(best_model, validation)
    assert trials[0].score == pytest.approx(accuracy, abs=1e-6)
    assert accuracy > 0.3  # well above chance (0.1), after 3 or 4 short epochs
    assert best_model.evaluate(validation, verbose=0, return_dict=True)["accuracy"] == (
        pytest.approx(accuracy, abs=1e-6)
    )


def test_hyperband_counts_meta_epochs_and_does_not_warm_up_resumed_trials(digits, tmp_path):
    data, train, validation = digits
    counting = hypermodel(data, cls=CountingHyperModel, warmup_epochs=1)
    tuner = kt.Hyperband(
        counting, objective=OBJECTIVE, max_epochs=2, factor=2, seed=0,
        directory=tmp_path, project_name="hyperband",
    )
    # The first bracket: two 1-epoch trials, then the better one continued to epoch 2.
    tuner.oracle.max_trials = 3
    tuner.search(train, validation_data=validation, verbose=0)

    trials = list(tuner.oracle.trials.values())
    resumed = [t for t in trials if "tuner/trial_id" in t.hyperparameters.values]
    assert resumed, "Hyperband should continue at least one earlier trial"
    assert len(counting.warmed_up) == len(trials) - len(resumed)
    assert all("tuner/trial_id" not in values for values in counting.warmed_up)
    for trial in trials:
        assert trial.status == "COMPLETED"
        assert 0.0 <= trial.score <= 1.0
    # The best trial's score is its reloaded model's validation accuracy.
    best_trial = tuner.oracle.get_best_trials(1)[0]
    best_model = tuner.get_best_models(1)[0]
    assert best_trial.score == pytest.approx(validation_accuracy(best_model, validation), abs=1e-6)


def test_bayesian_optimization_records_validation_accuracy(digits, tmp_path):
    data, train, validation = digits
    tuner = kt.BayesianOptimization(
        hypermodel(data, warmup_epochs=1), objective=OBJECTIVE, max_trials=2,
        num_initial_points=1, seed=0, directory=tmp_path, project_name="bayes",
    )
    tuner.search(train, validation_data=validation, epochs=1, verbose=0)

    trials = tuner.oracle.get_best_trials(2)
    assert len(trials) == 2
    best_model = tuner.get_best_models(1)[0]
    assert trials[0].score == pytest.approx(validation_accuracy(best_model, validation), abs=1e-6)


def test_fixed_values_are_not_searched():
    model = hypermodel(
        _FakeData(), generator_learning_rate=0.02, virtual_lr=0.5, warmup_epochs=3,
        entropy_weight=0.0,
    )
    hp = kt.HyperParameters()
    built = model.build(hp)
    assert hp.values == {
        "generator_learning_rate": 0.02, "virtual_lr": 0.5, "warmup_epochs": 3,
        "entropy_weight": 0.0,
    }
    assert built.virtual_lr == 0.5 and built.entropy_weight == 0.0
    assert float(built.generator_optimizer.learning_rate) == pytest.approx(0.02)
    assert built.optimizer.built and built.compiled


def test_a_label_trust_range_is_searched_and_reaches_the_generator():
    with pytest.raises(ValueError, match="the generator does not start from κ·I"):
        hypermodel(_FakeData(), label_trust=(1.0, 20.0))  # the defaults start at the posterior
    head_start = mln_tf.options.RECOMMENDED.replace(generator_init="classifier_head")
    builder = hypermodel(_FakeData(), label_trust=(1.0, 20.0), options=head_start)
    hp = kt.HyperParameters()
    assert builder.declare_hyperparameters(hp)["label_trust"] == 5.0  # the project's κ
    space = {p.name: p for p in hp.space}["label_trust"]
    assert isinstance(space, kt.engine.hyperparameters.Float)
    assert (space.min_value, space.max_value) == (1.0, 20.0)

    hp.values["label_trust"] = 12.0  # as a trial would sample it
    built = builder.build(hp)
    assert built.label_trust == 12.0
    kernel = built.label_generator.layers[-1].kernel.numpy()
    np.testing.assert_array_equal(kernel[-10:], 12.0 * np.eye(10, dtype="float32"))


class _FakeData:
    num_classes = 10
    image_shape = (8, 8, 1)


def test_wrong_class_count_is_a_fatal_error_naming_it(digits, tmp_path):
    data, train, validation = digits
    wrong = MetaLabelNetHyperModel(
        5, data.image_shape, classifier_builder=tiny_classifier, warmup_epochs=1
    )
    tuner = kt.RandomSearch(
        wrong, objective=OBJECTIVE, max_trials=1, directory=tmp_path, project_name="wrong"
    )
    with pytest.raises(kt.errors.FatalValueError, match=r"outside \[0, 5\).*num_classes=5"):
        tuner.search(train, validation_data=validation, epochs=1, verbose=0)


def test_validation_data_is_required_and_not_empty(digits):
    data, train, validation = digits
    model_builder = hypermodel(data, warmup_epochs=1)
    hp = kt.HyperParameters()
    model = model_builder.build(hp)
    with pytest.raises(ValueError, match="`validation_data`. Received: None"):
        model_builder.fit(hp, model, train)
    with pytest.raises(ValueError, match="the dataset is empty"):
        model_builder.fit(hp, model, train, validation_data=validation.take(0))
    with pytest.raises(TypeError, match="Expected a `tf.data.Dataset`"):
        model_builder.fit(hp, model, train, validation_data=(np.zeros((2, 8, 8, 1)), [0, 1]))
    with pytest.raises(ValueError, match=r"examples of shape \(8, 1\).*input_shape=\(8, 8, 1\)"):
        model_builder.fit(hp, model, train, validation_data=validation.unbatch())
    with pytest.raises(ValueError, match=r"Expected `\(\(x, y\), \(x_meta, y_meta\)\)`"):
        model_builder.fit(hp, model, validation, validation_data=validation)


@pytest.mark.parametrize(
    "argument, value, message",
    [
        ("virtual_lr", -1.0, r"virtual_lr=-1.0. Expected a number greater than 0.0"),
        ("generator_learning_rate", (0.1, 0.01), r"generator_learning_rate=\(0.1, 0.01\).*<"),
        ("warmup_epochs", 0, r"warmup_epochs=0. Expected an integer at least 1"),
        ("entropy_weight", "high", r"entropy_weight='high'"),
        ("label_trust", -1.0, r"label_trust=-1.0. Expected a number at least 0.0"),
    ],
)
def test_invalid_search_space_is_rejected(argument, value, message):
    prefix = f"Invalid value for argument `{argument}`. Received: "
    with pytest.raises(ValueError, match=prefix + message):
        MetaLabelNetHyperModel(10, (8, 8, 1), **{argument: value})


def test_warm_up_starts_the_generator_from_the_warmed_up_head(digits):
    data, train, _ = digits
    head_start = mln_tf.options.RECOMMENDED.replace(generator_init="classifier_head",
                                                    clean_weight=0.0)
    model_builder = hypermodel(data, warmup_epochs=1, options=head_start)
    model = model_builder.build(kt.HyperParameters())
    assert (model.label_input, model.generator_init, model.label_trust) == (
        True, "classifier_head", 5.0)  # fmt: skip
    untrained_kernel = model.classifier.layers[-1].kernel.numpy().copy()
    model_builder.warm_up(model, train, epochs=1, verbose=0)

    head = model.classifier.layers[-1]
    kernel, bias = (w.numpy() for w in model.label_generator.layers[-1].weights)
    num_features = head.kernel.shape[0]
    assert not np.allclose(head.kernel.numpy(), untrained_kernel)
    np.testing.assert_array_equal(kernel[:num_features], head.kernel.numpy())
    np.testing.assert_array_equal(bias, head.bias.numpy())
    np.testing.assert_array_equal(kernel[num_features:], 5.0 * np.eye(10, dtype="float32"))
    # The first soft labels are the warmed-up classifier's predictions, shifted to ỹ.
    (images, labels), _ = next(iter(train))
    logits = model.classifier.predict(images, verbose=0)
    expected = keras.ops.convert_to_numpy(
        keras.ops.softmax(logits + 5.0 * np.eye(10, dtype="float32")[labels.numpy()])
    )
    soft = model.predict_soft_labels(images.numpy(), labels.numpy())
    np.testing.assert_allclose(soft, expected, atol=1e-5)


def test_warm_up_fits_a_clean_posterior_generator_on_the_meta_batches(digits):
    data, train, validation = digits
    options = mln_tf.options.RECOMMENDED.replace(generator_init="clean_posterior",
                                                 clean_weight=1.0)  # fmt: skip
    model_builder = hypermodel(data, warmup_epochs=1, options=options)
    hp = kt.HyperParameters()
    model = model_builder.build(hp)
    with pytest.raises(ValueError, match="built without it"):
        model.fit(train, verbose=0)
    model_builder.fit(hp, model, train, validation_data=validation, verbose=0)

    # V is the log of a noise matrix (its values: test_clean_posterior.py), not κ·I.
    num_features = model.feature_extractor.output_shape[-1]
    kernel = model.label_generator.layers[-1].kernel.numpy()
    assert kernel[num_features:].shape == (10, 10)
    assert not np.allclose(kernel[num_features:], 5.0 * np.eye(10))
    assert validation_accuracy(model, validation) > 0.5


def test_the_authors_algorithm_is_their_options_with_the_dimensions_fixed():
    hp = kt.HyperParameters()
    built = hypermodel(
        _FakeData(), options=mln_tf.options.PAPER, generator_learning_rate=None,
        virtual_lr=None, entropy_weight=None,
    ).build(hp)  # fmt: skip
    assert built.options == mln_tf.options.PAPER
    assert (built.label_input, built.generator_init, built.loss_scale, built.label_loss) == (
        False, "random", "mean", "reverse_kl")  # fmt: skip
    assert (built.virtual_scope, built.entropy_weight) == ("all", 1.0)
    assert hp.values["generator_learning_rate"] == 1e-3 and hp.values["virtual_lr"] == 1.0


def test_a_head_the_generator_cannot_start_from_is_a_fatal_error():
    def biasless_classifier(num_classes, input_shape):
        inputs = keras.Input(input_shape)
        x = layers.Dense(16, activation="relu", name="features")(layers.Flatten()(inputs))
        return keras.Model(inputs, layers.Dense(num_classes, use_bias=False)(x))

    head_start = mln_tf.options.RECOMMENDED.replace(generator_init="classifier_head")
    builder = MetaLabelNetHyperModel(10, (8, 8, 1), classifier_builder=biasless_classifier,
                                     options=head_start)  # fmt: skip
    with pytest.raises(kt.errors.FatalValueError, match="Use generator_init='random'"):
        builder.build(kt.HyperParameters())
    options = mln_tf.options.RECOMMENDED.replace(generator_init="random")
    built = MetaLabelNetHyperModel(10, (8, 8, 1), classifier_builder=biasless_classifier,
                                   options=options).build(kt.HyperParameters())  # fmt: skip
    assert built.generator_init == "random"


def test_a_classifier_that_outputs_probabilities_is_a_fatal_error():
    def softmax_classifier(num_classes, input_shape):
        inputs = keras.Input(input_shape)
        x = layers.Dense(16, activation="relu", name="features")(layers.Flatten()(inputs))
        return keras.Model(inputs, layers.Dense(num_classes, activation="softmax")(x))

    builder = MetaLabelNetHyperModel(10, (8, 8, 1), classifier_builder=softmax_classifier)
    with pytest.raises(kt.errors.FatalValueError, match="outputs probabilities, but"):
        builder.build(kt.HyperParameters())
