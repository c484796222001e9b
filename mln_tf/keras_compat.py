"""Workarounds for Keras 3.15 / TensorFlow 2.21 internals, kept apart from the algorithm.

Each works around an upstream behaviour of the versions in `TESTED_KERAS` and
`TESTED_TENSORFLOW`. `tests/test_keras_compat.py` fails when the installed versions differ,
so that an upgrade shows where to look again. After an upgrade, re-check each one below:
whether it is still needed (the upstream issue may be fixed) and whether the Keras
internals it relies on are unchanged.

- `step_logs` (here): under `MultiWorkerMirroredStrategy`, Keras averages a step's logs
  along axis 0, which a scalar does not have, and `fit` fails. Each value gets that axis.
  Upstream: keras-team/keras#20585 (tensorflow/tensorflow#72388).
- `ClassifierTrainer.make_train_function` (`mln_tf/classifier_trainer.py`, the base of
  MetaLabelNet, MetaWeightNet and NoisyPlusClean, with `call_xla_step_directly` here): with
  `jit_compile=True` Keras calls the XLA-compiled step from inside another `tf.function`.
  For the meta step that nesting is about 20 times slower on the CPU than calling the
  compiled step from Python, so the override hands it a list of batches, which takes the
  direct path. It relies
  on the private structure of Keras' TensorFlow trainer. Upstream: no issue for this case;
  keras-team/keras#18062 reports a similar gap between `compile(jit_compile=True)` and a
  direct XLA `tf.function`. `benchmarks/step_time.py`'s `*_fit` variants time this path.
- `ClassifierTrainer._maybe_symbolic_build` (`mln_tf/classifier_trainer.py`, with
  `needs_symbolic_build` here): under a strategy,
  Keras reduces the first batch across replicas only to build what is still unbuilt, and
  under `MultiWorkerMirroredStrategy` that reduction fails. The trainers build everything in
  `__init__` and `compile`, so the override skips it then. It overrides a private Keras
  method. Upstream: keras-team/keras#20585.
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
