"""Dummy data for tests: a tiny copy of the four Fashion-MNIST files, gzipped IDX.

The IDX writer here is independent of `mln_tf.data.sources.read_idx`, so tests that read
these files check the reader against the format itself.
"""

import gzip
import struct

import numpy as np

# Per class: the builder configs' meta set of 1,000 takes 100; the other 50 are enough for
# 20% symmetric noise to move floor(50 * 0.2 / 9) = 1 image to each other class.
TRAIN_PER_CLASS = 150
TEST_PER_CLASS = 3


def write_idx_gz(path, array):
    """Independent IDX writer (the format of yann.lecun.com/exdb/mnist)."""
    magic = 0x0801 if array.ndim == 1 else 0x0803
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", n) for n in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def fake_split(per_class, seed):
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(10), per_class)).astype(np.uint8)
    # A bright square whose position depends on the class, plus noise: learnable.
    images = rng.integers(0, 60, (labels.size, 28, 28)).astype(np.uint8)
    for i, label in enumerate(labels):
        row, column = divmod(int(label), 5)
        images[i, 4 + 10 * row : 12 + 10 * row, 1 + 5 * column : 5 + 5 * column] = 250
    return images, labels


def write_fashion_mnist(folder):
    """Writes the four files into `folder`; returns the arrays written."""
    folder.mkdir(parents=True, exist_ok=True)
    train_images, train_labels = fake_split(TRAIN_PER_CLASS, 0)
    test_images, test_labels = fake_split(TEST_PER_CLASS, 1)
    write_idx_gz(folder / "train-images-idx3-ubyte.gz", train_images)
    write_idx_gz(folder / "train-labels-idx1-ubyte.gz", train_labels)
    write_idx_gz(folder / "t10k-images-idx3-ubyte.gz", test_images)
    write_idx_gz(folder / "t10k-labels-idx1-ubyte.gz", test_labels)
    return {
        "train_images": train_images,
        "train_labels": train_labels,
        "test_images": test_images,
        "test_labels": test_labels,
    }
