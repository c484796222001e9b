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




def call_xla_step_directly(model, nested_call):
    """Wraps Keras' train function so that an XLA step is called from Python.

    Keras 3.15 calls an XLA-compiled step from inside another `tf.function`; for
    MetaLabelNet's step that nesting is about 20 times slower on the CPU than calling it
    directly. Handing Keras' function a list of batches makes it take the direct path.
    """

    def train_function(iterator):
        if isinstance(iterator, tf.data.Iterator):
            batches = [batch for _, batch in zip(range(model.steps_per_execution), iterator)]
            if not batches:
                raise StopIteration
            return nested_call(batches)
        return nested_call(iterator)

    return train_function


def needs_symbolic_build(model):
    """Whether Keras' `_maybe_symbolic_build` has anything to build.

    Under a strategy, Keras 3.15 reduces the first batch across replicas there only to build
    what is unbuilt; under `MultiWorkerMirroredStrategy` that reduction fails
    (keras-team/keras#20585). A model that builds its layers and optimizer itself skips it.
    """
    layers_built = all(layer.built for layer in model._flatten_layers())
    return not (layers_built and model.optimizer is not None and model.optimizer.built)
