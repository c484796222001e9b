"""The clothing1m TFDS dataset."""

from mln_tf.data.datasets.clothing1m.clothing1m import CLASS_NAMES, Clothing1m

__all__ = ["CLASS_NAMES", "Clothing1m"]
