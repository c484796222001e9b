"""noisy_fashion_mnist: Fashion-MNIST with synthetic label noise and a clean meta split.

Reads the four original Fashion-MNIST files offline, from the manual folder
(`tfds.download.DownloadConfig(manual_dir=...)`, else `<data_dir>/downloads/manual`) or,
when that holds no files, from where Debian's `dataset-fashion-mnist` package puts them.

Example:

>>> import tensorflow_datasets as tfds
>>> import mln_tf  # registers the builder
>>> train = tfds.load("noisy_fashion_mnist/symmetric_40", split="train")
"""

from __future__ import annotations

import tensorflow_datasets as tfds

from mln_tf.data import sources
from mln_tf.data.datasets.noisy_builder import NoisyImageBuilder, make_configs

# Clean meta set size of every config: 1,000 of the 60,000 training images (100 per class).
META_SIZE = sources.default_meta_size("fashion_mnist")


class NoisyFashionMnist(NoisyImageBuilder):
    """Fashion-MNIST with synthetic label noise: noisy `train`, clean `meta`, clean `test`."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
    This dataset reads the four original Fashion-MNIST files, gzipped or not:

        {", ".join(sources.FASHION_MNIST_FILES.values())}

    On Debian or Ubuntu, `sudo apt-get install dataset-fashion-mnist` puts them in
    {sources.DEFAULT_FASHION_MNIST_DIR}, which this builder reads by default.
    Otherwise copy the four files from any copy of Fashion-MNIST into one folder and pass it
    as `download_and_prepare_kwargs={{"download_config":
    tfds.download.DownloadConfig(manual_dir=FOLDER)}}` to `tfds.load`, or put them in
    `<data_dir>/downloads/manual/`. A manual folder holding the files takes precedence over
    the Debian folder.
    """
    BUILDER_CONFIGS = make_configs(meta_size=META_SIZE)
    IMAGE_SHAPE = (28, 28, 1)
    CLASS_NAMES = sources.FASHION_MNIST_CLASS_NAMES
    HOMEPAGE = "https://github.com/zalandoresearch/fashion-mnist"

    def _load_source(self, dl_manager: tfds.download.DownloadManager) -> sources.ArraySource:
        try:
            manual_dir = dl_manager.manual_dir
        except AssertionError:
            # TFDS raises AssertionError when the manual folder is absent or empty.
            manual_dir = None
        folder = sources.find_fashion_mnist_dir(manual_dir, sources.DEFAULT_FASHION_MNIST_DIR)
        return sources.load_fashion_mnist(folder)
