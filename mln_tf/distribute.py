"""Builds the `tf.distribute` strategy that `MetaLabelNet` trains under.

Notation: N replicas, each with a shard of the global batch. `MetaLabelNet.fit` under a
strategy's scope computes the single-device step on the global batch (see `MetaLabelNet`).
"""

import tensorflow as tf

STRATEGIES = ("mirrored", "multiworker")


def build_strategy(name=None, *, devices=None):
    """Builds a `tf.distribute.Strategy` from its name and a device count.

    Create the classifier and `MetaLabelNet`, and call `compile`, inside the returned
    strategy's `scope()`; then call `fit` as usual. The batch size of the dataset is the
    global batch, split evenly among the replicas.

    On a machine without GPUs, `devices=n` splits the CPU into n logical devices. TensorFlow
    allows that only before it has initialised its devices: call `build_strategy` before any
    other TensorFlow operation runs.

    Args:
        name: str or `None`. `"mirrored"`: `tf.distribute.MirroredStrategy`, one machine,
            several devices. `"multiworker"`: `tf.distribute.MultiWorkerMirroredStrategy`,
            several machines, each described by the `TF_CONFIG` environment variable (as a
            single worker without it). `None`: TensorFlow's default strategy, one device.
            Defaults to `None`.
        devices: int or `None`, the number of devices per machine. With GPUs, the first
            `devices` GPUs; without, `devices` logical CPU devices (with `"mirrored"` only:
            a multi-worker strategy uses one CPU device per worker). Defaults to `None`: all
            GPUs, or one CPU device.

    Returns:
        A `tf.distribute.Strategy`.

    Raises:
        ValueError: for an unknown strategy name, a device count that is not a positive
            integer, more devices than the machine has, or a CPU that can no longer be
            split because TensorFlow has already initialised it.

    Example:

    >>> strategy = build_strategy()  # the default strategy: one device
    >>> strategy.num_replicas_in_sync
    1
    """
    if name is not None and name not in STRATEGIES:
        raise ValueError(
            f"Invalid value for argument `name`. Received: name={name!r}. Expected "
            '"mirrored", "multiworker" or None (the default strategy, one device).'
        )
    if devices is not None and (
        isinstance(devices, bool) or not isinstance(devices, int) or devices < 1
    ):
        raise ValueError(
            f"Invalid value for argument `devices`. Received: devices={devices!r}. "
            "Expected a positive integer or None."
        )
    if name is None:
        if devices not in (None, 1):
            raise ValueError(
                f"Invalid value for argument `devices`. Received: devices={devices}. The "
                'default strategy runs on one device: pass name="mirrored" for several.'
            )
        return tf.distribute.get_strategy()

    gpus = tf.config.list_physical_devices("GPU")
    if name == "multiworker":
        if gpus:
            _use_gpus(gpus, devices)
        elif devices not in (None, 1):
            raise ValueError(
                f"Invalid value for argument `devices`. Received: devices={devices}. A "
                "multi-worker strategy uses one CPU device per worker; on CPUs, start one "
                "worker per device instead."
            )
        return tf.distribute.MultiWorkerMirroredStrategy()

    if gpus:
        return tf.distribute.MirroredStrategy(_use_gpus(gpus, devices))
    return tf.distribute.MirroredStrategy(_split_cpu(devices or 1))


def _use_gpus(gpus, devices):
    """The names of the first `devices` GPUs (all when `None`)."""
    if devices is None:
        devices = len(gpus)
    if devices > len(gpus):
        raise ValueError(
            f"Invalid value for argument `devices`. Received: devices={devices}, but this "
            f"machine has {len(gpus)} GPU(s)."
        )
    return [f"/gpu:{index}" for index in range(devices)]


def _split_cpu(devices):
    """The names of `devices` logical CPU devices, splitting the CPU if need be."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    configured = tf.config.get_logical_device_configuration(cpu)
    if configured is None or len(configured) < devices:
        if devices > 1:
            try:
                tf.config.set_logical_device_configuration(
                    cpu, [tf.config.LogicalDeviceConfiguration()] * devices
                )
            except RuntimeError as error:
                available = len(tf.config.list_logical_devices("CPU"))
                raise ValueError(
                    f"Invalid value for argument `devices`. Received: devices={devices}, but "
                    f"TensorFlow has already initialised {available} CPU device(s) and can no "
                    "longer split the CPU. Call `build_strategy` before any other TensorFlow "
                    "operation runs."
                ) from error
    return [f"/cpu:{index}" for index in range(devices)]


# Helpers for a train_step that runs in each replica.


def num_replicas():
    """The number of replicas in sync of the current strategy (1 without one)."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def scale_for_replicas(loss):
    """A replica's share of the global-batch mean: its local mean over N, as Keras scales it.

    Summed over the N replicas (the optimizers' all-reduce), the shares give the mean over
    the global batch when the replicas' batches are of one size.
    """
    replicas = num_replicas()
    if replicas == 1:
        return loss
    return loss * tf.cast(1.0 / replicas, loss.dtype)


def on_all_replicas(condition):
    """Whether `condition` holds on every replica; the same answer on each of them."""
    if num_replicas() == 1:
        return condition
    failures = tf.distribute.get_replica_context().all_reduce(
        "sum", tf.cast(tf.logical_not(condition), "int32")
    )
    return tf.equal(failures, 0)


def count_once(flag):
    """`flag` as a count on the first replica only, so that a Sum counts steps."""
    count = tf.cast(flag, "float32")
    if num_replicas() == 1:
        return count
    first = tf.equal(tf.distribute.get_replica_context().replica_id_in_sync_group, 0)
    return count * tf.cast(first, "float32")


def result_across_replicas(metric):
    """A mean metric's result over the global batch, from any replica."""
    if num_replicas() == 1:
        return metric.result()
    # Reading a metric's variable in a replica gives that replica's share.
    total, count = tf.distribute.get_replica_context().all_reduce(
        "sum", [tf.identity(metric.total.value), tf.identity(metric.count.value)]
    )
    return tf.math.divide_no_nan(total, tf.cast(count, total.dtype))


def run_if(condition, update, *args):
    """Runs `update(*args)` on every replica when `condition` (the same on all) holds.

    Without a strategy, or one that needs no `merge_call`, this is a `tf.cond`. Otherwise
    a `tf.cond` whose branch synchronises replicas (the optimizers' all-reduce) must run in
    the cross-replica context; Keras' `LossScaleOptimizer` skips steps in the same way.
    """
    if tf.__internal__.distribute.strategy_supports_no_merge_call():
        tf.cond(condition, lambda: update(*args), lambda: None)
        return

    def cross_replica(distribution, condition, *args):
        condition = distribution.experimental_local_results(condition)[0]

        def apply():
            distribution.extended.call_for_each_replica(update, args=args)

        tf.cond(condition, apply, lambda: None)

    tf.distribute.get_replica_context().merge_call(cross_replica, args=(condition, *args))
