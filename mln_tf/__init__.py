"""mln_tf: MetaLabelNet for Keras 3 on TensorFlow."""

from mln_tf import data, distribute, losses, models, noise
from mln_tf.model import MetaLabelNet, NonFiniteLossError

__version__ = "0.1.0"

__all__ = ["MetaLabelNet", "NonFiniteLossError", "data", "distribute", "losses", "models", "noise"]
