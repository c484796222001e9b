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
