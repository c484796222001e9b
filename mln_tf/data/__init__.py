"""Data for MetaLabelNet: noisy training sets, clean meta sets and their pipelines."""

from mln_tf.data.pipeline import UNLABELED, with_meta

__all__ = ["UNLABELED", "with_meta"]
