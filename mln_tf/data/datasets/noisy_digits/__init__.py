"""The noisy_digits TFDS dataset."""

from mln_tf.data.datasets.noisy_digits.noisy_digits import NoisyDigits

__all__ = ["NoisyDigits"]
