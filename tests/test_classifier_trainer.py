"""The plumbing that MetaLabelNet, MetaWeightNet and NoisyPlusClean share (ClassifierTrainer)."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from mln_tf import MetaLabelNet, MetaWeightNet
from mln_tf.classifier_trainer import ClassifierTrainer, MetaTrainer
from mln_tf.clean_baselines import NoisyPlusClean

TRAINERS = [MetaLabelNet, MetaWeightNet, NoisyPlusClean]
TRAINING_LOGS = {
    MetaLabelNet: "`loss`, `meta_loss` and `label_agreement`",
    MetaWeightNet: "`loss`, `meta_loss` and `mean_weight`",
    NoisyPlusClean: "`loss`, `noisy_loss` and `clean_loss`",
}


def _classifier(activation=None):
    return keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(5, name="features"),
         keras.layers.Dense(3, activation=activation)]
    )  # fmt: skip


def test_the_meta_models_count_skipped_steps_and_the_baseline_does_not():
    assert issubclass(MetaLabelNet, MetaTrainer) and issubclass(MetaWeightNet, MetaTrainer)
    assert issubclass(NoisyPlusClean, ClassifierTrainer)
    assert not issubclass(NoisyPlusClean, MetaTrainer)
    names = {cls: [m.name for m in cls(_classifier()).metrics] for cls in TRAINERS}
    assert names[MetaLabelNet] == ["loss", "meta_loss", "label_agreement", "accuracy",
                                   "invalid_label_steps", "non_finite_steps"]  # fmt: skip
    assert names[MetaWeightNet] == ["loss", "meta_loss", "mean_weight", "accuracy",
                                    "invalid_label_steps", "non_finite_steps"]  # fmt: skip
    assert names[NoisyPlusClean] == ["loss", "noisy_loss", "clean_loss", "accuracy"]


@pytest.mark.parametrize("cls", TRAINERS)
def test_a_softmax_output_is_refused(cls):
    with pytest.raises(ValueError, match=f"outputs probabilities, but {cls.__name__} needs logits"):
        cls(_classifier(activation="softmax"))


@pytest.mark.parametrize("cls", TRAINERS)
def test_an_unbuilt_classifier_is_refused(cls):
    unbuilt = keras.Sequential([keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="is not built.*calling it on a batch of data"):
        cls(unbuilt)


@pytest.mark.parametrize("cls", TRAINERS)
def test_compile_refuses_a_loss_and_metrics_naming_the_model_and_its_logs(cls):
    model = cls(_classifier())
    with pytest.raises(ValueError, match=f"loss='mse'. {cls.__name__} "):
        model.compile(loss="mse")
    message = f"{cls.__name__} reports {TRAINING_LOGS[cls]} in training"
    with pytest.raises(ValueError, match=message):
        model.compile(metrics=["accuracy"])


@pytest.fixture
def float16_classifier():
    previous = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    classifier = _classifier()
    keras.mixed_precision.set_dtype_policy(previous)
    return classifier


@pytest.mark.parametrize("cls", [MetaLabelNet, MetaWeightNet])
def test_the_meta_models_refuse_float16(cls, float16_classifier):
    with pytest.raises(ValueError, match=f"computes in float16.*{cls.__name__} does not"):
        cls(float16_classifier)


def test_the_baseline_accepts_float16(float16_classifier):
    assert NoisyPlusClean(float16_classifier).classifier.compute_dtype == "float16"


@pytest.mark.parametrize("cls", TRAINERS)
def test_a_classifier_from_outside_the_strategy_scope_is_refused(cls):
    classifier = _classifier()
    with tf.distribute.MirroredStrategy(["/cpu:0"]).scope():
        with pytest.raises(ValueError, match="created outside `strategy.scope\\(\\)`"):
            cls(classifier)


@pytest.mark.parametrize("cls", TRAINERS)
def test_jit_compile_under_a_strategy_warns_and_is_disabled(cls):
    with tf.distribute.MirroredStrategy(["/cpu:0"]).scope():
        model = cls(_classifier())
        with pytest.warns(UserWarning, match="does not compile steps with XLA"):
            model.compile(jit_compile=True)
    assert model.jit_compile is False


@pytest.mark.parametrize("cls", TRAINERS)
def test_evaluate_reports_the_classifiers_cross_entropy_and_accuracy(cls):
    model = cls(_classifier())
    model.compile()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 4)).astype("float32")
    y = np.array([0, 1, 2, 2, 1, 0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logs = model.evaluate(x, y, batch_size=6, verbose=0, return_dict=True)
    logits = model.classifier.predict(x, verbose=0).astype("float64")
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    assert logs["loss"] == pytest.approx(-log_probs[np.arange(6), y].mean(), rel=1e-5)
    assert logs["accuracy"] == pytest.approx(np.mean(logits.argmax(axis=1) == y))
    assert set(logs) == {"loss", "accuracy"}
