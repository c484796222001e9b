"""mln_tf: MetaLabelNet for Keras 3 on TensorFlow."""

from mln_tf import (
    classifiers,
    clean_baselines,
    data,
    distribute,
    losses,
    noise,
    optimizers,
    options,
    schedule,
    train,
    tuner,
)
from mln_tf.callbacks import NonFiniteLossError
from mln_tf.meta_label_net import MetaLabelNet
from mln_tf.meta_weight_net import MetaWeightNet

__version__ = "0.1.0"

__all__ = [
    "MetaLabelNet",
    "MetaWeightNet",
    "NonFiniteLossError",
    "classifiers",
    "clean_baselines",
    "data",
    "distribute",
    "losses",
    "noise",
    "optimizers",
    "options",
    "schedule",
    "train",
    "tuner",
]
