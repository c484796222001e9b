"""mln_tf: MetaLabelNet for Keras 3 on TensorFlow."""

from mln_tf import data, noise

__all__ = ["data", "noise"]

__version__ = "0.1.0"
