"""CoupledSGD and CoupledAdam under a MirroredStrategy of two logical CPUs, for
tests/test_optimizers.py, in a fresh process (logical devices must be set up before
TensorFlow initialises them):

    python tests/optimizer_replicas_run.py OUT.npz

The replicas apply a quarter and three quarters of each global gradient; Keras sums the
replicas' gradients, so the result must be the one-device update with the whole gradient.
Everything is float64.
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The package of this checkout, not an installed copy.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from mln_tf.optimizers import CoupledAdam, CoupledSGD  # noqa: E402

STEPS = 5
REPLICAS = 2
SHARES = (0.25, 0.75)


def distributed_step(strategy, optimizer, variables):
    @tf.function
    def step(per_replica_grads):
        strategy.run(lambda grads: optimizer.apply(grads, variables), args=(per_replica_grads,))

    return step


def split_over_replicas(strategy, step_grads):
    """Replica r gets SHARES[r] of each gradient; the shares are exact in binary."""
    return strategy.experimental_distribute_values_from_function(
        lambda context: [
            tf.constant(g * SHARES[context.replica_id_in_sync_group]) for g in step_grads
        ]
    )


def main(path):
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * REPLICAS
    )
    keras.config.set_floatx("float64")
    strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(REPLICAS)])
    assert strategy.num_replicas_in_sync == REPLICAS

    rng = np.random.default_rng(0)
    initial = [rng.normal(size=(3, 2)), rng.normal(size=(2,))]
    grads = [[rng.normal(size=(3, 2)), rng.normal(size=(2,))] for _ in range(STEPS)]
    arrays = {f"initial_{i}": p for i, p in enumerate(initial)}
    arrays.update(
        {f"grad_{step}_{i}": g for step, gs in enumerate(grads) for i, g in enumerate(gs)}
    )

    for name, make_optimizer in (
        ("sgd", lambda: CoupledSGD(0.05, momentum=0.9, coupled_weight_decay=0.1)),
        ("adam", lambda: CoupledAdam(0.05, coupled_weight_decay=0.1)),
    ):
        with strategy.scope():
            variables = [keras.Variable(p, dtype="float64") for p in initial]
            optimizer = make_optimizer()
            optimizer.build(variables)

        step = distributed_step(strategy, optimizer, variables)
        for step_grads in grads:
            step(split_over_replicas(strategy, step_grads))
        for i, variable in enumerate(variables):
            components = strategy.experimental_local_results(variable.value)
            assert len(components) == REPLICAS
            for replica, component in enumerate(components):
                arrays[f"{name}_{replica}_{i}"] = component.numpy()
    np.savez(path, **arrays)


if __name__ == "__main__":
    main(sys.argv[1])
