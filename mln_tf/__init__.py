"""mln_tf: MetaLabelNet for Keras 3 on TensorFlow."""

from mln_tf import data

__version__ = "0.1.0"
