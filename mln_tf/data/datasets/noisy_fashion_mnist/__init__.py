"""The noisy_fashion_mnist TFDS dataset."""

from mln_tf.data.datasets.noisy_fashion_mnist.noisy_fashion_mnist import NoisyFashionMnist

__all__ = ["NoisyFashionMnist"]
