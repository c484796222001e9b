"""TFDS builders of mln_tf. Importing this package registers them with TFDS.

- `noisy_fashion_mnist`: Fashion-MNIST with synthetic noise and a clean meta split.
- `noisy_digits`: the same on scikit-learn's bundled digits (needs nothing installed).
- `clothing1m`: Clothing1M from its official files (manual download).
"""

from mln_tf.data.datasets.clothing1m import Clothing1m
from mln_tf.data.datasets.noisy_builder import NOISE_CONFIGS, NoisyConfig
from mln_tf.data.datasets.noisy_digits import NoisyDigits
from mln_tf.data.datasets.noisy_fashion_mnist import NoisyFashionMnist

__all__ = ["NOISE_CONFIGS", "Clothing1m", "NoisyConfig", "NoisyDigits", "NoisyFashionMnist"]
