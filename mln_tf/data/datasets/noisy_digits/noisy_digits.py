"""noisy_digits: scikit-learn's bundled digits with synthetic label noise and a meta split.

The embedded fallback of `noisy_fashion_mnist`: the same noise configs on data that ships
with scikit-learn, so it builds anywhere, with no download and no system package.

Example:

>>> import tensorflow_datasets as tfds
>>> import mln_tf  # registers the builder
>>> train = tfds.load("noisy_digits/symmetric_40", split="train")
"""

from __future__ import annotations

import tensorflow_datasets as tfds

from mln_tf.data import sources
from mln_tf.data.datasets.noisy_builder import NoisyImageBuilder, make_configs

# Clean meta set size of every config: 100 of the 1,437 training digits (10 per class).
META_SIZE = sources.default_meta_size("digits")


class NoisyDigits(NoisyImageBuilder):
    """scikit-learn's 8x8 digits with synthetic label noise: noisy `train`, clean `meta`."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = make_configs(meta_size=META_SIZE)
    IMAGE_SHAPE = (8, 8, 1)
    CLASS_NAMES = tuple(str(digit) for digit in range(10))
    HOMEPAGE = "https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset"

    def _load_source(self, dl_manager: tfds.download.DownloadManager) -> sources.ArraySource:
        del dl_manager  # The digits ship with scikit-learn.
        return sources.load_digits()
