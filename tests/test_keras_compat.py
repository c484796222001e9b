"""The Keras workarounds: the versions they were written for, and `step_logs`."""

import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from mln_tf import keras_compat
from mln_tf.classifier_trainer import ClassifierTrainer

# Each workaround, as the module docstring names it, and where it must still be defined.
WORKAROUNDS = {
    "`step_logs`": (keras_compat, "step_logs"),
    "`ClassifierTrainer.make_train_function`": (ClassifierTrainer, "make_train_function"),
    "`ClassifierTrainer._maybe_symbolic_build`": (ClassifierTrainer, "_maybe_symbolic_build"),
}


def major_minor(version):
    """The major.minor part of a version: "3.15.1" -> "3.15"."""
    return ".".join(version.split(".")[:2])


def upgrade_message(library, installed, tested):
    return (
        f"{library} {installed} is installed, but the workarounds of `mln_tf.keras_compat` "
        f"were written and tested for {library} {tested}. Re-check each workaround listed in "
        "the module docstring of `mln_tf/keras_compat.py`, and its upstream issue: remove it "
        "if the issue is fixed, adapt it if the internals it relies on changed. Then set "
        f"`TESTED_{library.upper()}` to {major_minor(installed)!r}.\n\n"
        f"{keras_compat.__doc__}"
    )


def test_major_minor():
    assert major_minor("3.15.1") == "3.15"
    assert major_minor("2.21.0rc1") == "2.21"
    assert major_minor("3.15") == "3.15"


def test_installed_keras_is_the_tested_version():
    installed = keras.__version__
    assert major_minor(installed) == keras_compat.TESTED_KERAS, upgrade_message(
        "Keras", installed, keras_compat.TESTED_KERAS
    )


def test_installed_tensorflow_is_the_tested_version():
    installed = tf.__version__
    assert major_minor(installed) == keras_compat.TESTED_TENSORFLOW, upgrade_message(
        "TensorFlow", installed, keras_compat.TESTED_TENSORFLOW
    )


def test_upgrade_message_lists_every_workaround_and_its_upstream_issue():
    message = upgrade_message("Keras", "3.16.0", "3.15")
    assert message.startswith("Keras 3.16.0 is installed, but the workarounds")
    assert "Then set `TESTED_KERAS` to '3.16'." in message
    for name in WORKAROUNDS:
        assert f"- {name}" in message
    assert "keras-team/keras#20585" in message


@pytest.mark.parametrize("name", list(WORKAROUNDS))
def test_each_listed_workaround_still_exists(name):
    owner, attribute = WORKAROUNDS[name]
    # Defined on ClassifierTrainer itself, not only inherited from keras.Model.
    assert attribute in vars(owner), f"{name} is listed in keras_compat's docstring but gone."


def test_docstring_lists_exactly_the_known_workarounds():
    listed = [
        line[2:].split(" ", 1)[0]
        for line in keras_compat.__doc__.splitlines()
        if line.startswith("- ")
    ]
    assert listed == list(WORKAROUNDS)


LOGS = {"loss": 0.25, "meta_loss": 1.5}


def _tensor_logs():
    return {key: tf.constant(value) for key, value in LOGS.items()}


def test_step_logs_without_a_strategy_returns_the_logs_unchanged():
    logs = _tensor_logs()
    assert keras_compat.step_logs(logs) is logs


def test_step_logs_under_a_single_worker_strategy_returns_the_logs_unchanged():
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with strategy.scope():
        logs = _tensor_logs()
        assert keras_compat.step_logs(logs) is logs


def _multi_worker_strategy(in_multi_worker_mode):
    """A MultiWorkerMirroredStrategy as `step_logs` sees it, without starting a cluster."""
    strategy = object.__new__(tf.distribute.MultiWorkerMirroredStrategy)
    strategy._extended = types.SimpleNamespace(_in_multi_worker_mode=lambda: in_multi_worker_mode)
    return strategy


def test_step_logs_with_several_workers_gives_each_value_an_axis_of_length_one(monkeypatch):
    strategy = _multi_worker_strategy(in_multi_worker_mode=True)
    monkeypatch.setattr(tf.distribute, "get_strategy", lambda: strategy)
    shaped = keras_compat.step_logs(_tensor_logs())
    assert sorted(shaped) == sorted(LOGS)
    for key, value in LOGS.items():
        assert tuple(shaped[key].shape) == (1,)
        np.testing.assert_array_equal(shaped[key].numpy(), np.array([value], "float32"))
    # The axis Keras averages over is now there.
    assert float(tf.reduce_mean(shaped["loss"], axis=0)) == LOGS["loss"]


def test_step_logs_with_one_worker_of_multi_worker_strategy_is_unchanged(monkeypatch):
    strategy = _multi_worker_strategy(in_multi_worker_mode=False)
    monkeypatch.setattr(tf.distribute, "get_strategy", lambda: strategy)
    logs = _tensor_logs()
    assert keras_compat.step_logs(logs) is logs
