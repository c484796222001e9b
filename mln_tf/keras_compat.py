"""Workarounds for Keras 3.15 / TensorFlow 2.21 internals, kept apart from the algorithm.

Each names the upstream behaviour it works around; `tests/test_keras_compat.py` checks the
versions they were written for, so that an upgrade shows where to look again.
"""

import tensorflow as tf

# The versions these workarounds were written and tested against.
TESTED_KERAS = "3.15"
TESTED_TENSORFLOW = "2.21"


def step_logs(logs):
    """The step's logs, shaped for Keras' reduction across replicas.

    Keras 3.15 averages a multi-worker step's logs along axis 0, which a scalar lacks
    (keras-team/keras#20585): there each value gets that axis, of length 1.
    """
    strategy = tf.distribute.get_strategy()
    multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and (
        strategy.extended._in_multi_worker_mode()
    )
    if not multi_worker:
        return logs
    return {key: tf.reshape(value, [1]) for key, value in logs.items()}


