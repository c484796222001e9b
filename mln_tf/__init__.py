"""mln_tf: MetaLabelNet for Keras 3 on TensorFlow."""

from mln_tf import classifiers, data, distribute, losses, noise, options
from mln_tf.meta_label_net import MetaLabelNet, NonFiniteLossError

__version__ = "0.1.0"

__all__ = [
    "MetaLabelNet",
    "NonFiniteLossError",
    "classifiers",
    "data",
    "distribute",
    "losses",
    "noise",
    "options",
]
