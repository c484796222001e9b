"""Importing mln_tf registers its TFDS builders, in a fresh interpreter."""

import subprocess
import sys

import numpy as np

from mln_tf.data import load_noisy


def test_import_registers_builders():
    code = (
        "import tensorflow_datasets as tfds, mln_tf\n"
        "names = set(tfds.list_builders())\n"
        "print(sorted(n for n in ('noisy_fashion_mnist', 'noisy_digits', 'clothing1m')"
        " if n in names))\n"
        "print(tfds.builder('noisy_fashion_mnist/feature_dependent_40').builder_config.rate)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    lines = result.stdout.strip().splitlines()
    assert lines == ["['clothing1m', 'noisy_digits', 'noisy_fashion_mnist']", "0.4"]


def test_repr_is_short():
    data = load_noisy("digits", noise="symmetric", rate=0.2, meta_size=50, validation_size=100)
    assert len(repr(data)) < 400 and "1287 noisy training" in repr(data)
    assert isinstance(data.train_noisy_labels, np.ndarray)
