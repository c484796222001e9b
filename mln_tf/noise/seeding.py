"""Independent, reproducible random streams derived from one user seed."""

from __future__ import annotations

import zlib

import numpy as np

from mln_tf.noise.validation import check_seed


def make_rng(seed: int, stream: str) -> np.random.Generator:
    """Returns a NumPy generator for `seed`, independent of other `stream` names.

    The same seed is used for the meta split and for the noise, so each consumer names its
    stream: the noise model's draws are then unrelated to the split's draws.

    Args:
        seed: int, the user's seed.
        stream: str, the consumer's name, for example `"noise.symmetric"`.

    Returns:
        A `numpy.random.Generator`.
    """
    seed = check_seed(seed)
    return np.random.default_rng([seed, zlib.crc32(stream.encode("utf-8"))])
