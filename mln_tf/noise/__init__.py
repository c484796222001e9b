"""Label noise models: symmetric, pair, transition-matrix and feature-dependent.

Notation, used throughout `mln_tf.noise` and `mln_tf.data`:

- N: the number of examples whose labels are corrupted; K (also written C): the number of
  classes; labels are zero-indexed integers in [0, K).
- y: the true (clean) labels; y~: the noisy labels; r: the noise rate.
- T: a K x K transition matrix, T[i, j] = P(y~ = j | y = i). Its rows sum to 1.
- The noisy set D_n is the training set with noisy labels; the meta set D_m is a small,
  class-balanced set of clean examples, disjoint from D_n (see `mln_tf.data`).

Every noise model takes the true labels, a rate and a seed, is deterministic for a seed,
and returns `NoisyLabels(labels, report)`: the noisy labels and a `NoiseReport` with the
achieved rate, the empirical transition matrix and the indices it changed.

Example:

>>> import numpy as np
>>> from mln_tf import noise
>>> labels = np.repeat(np.arange(10), 100)
>>> noisy_labels, report = noise.symmetric_noise(labels, 0.4, seed=0)
>>> report.achieved_rate
0.36
"""

from mln_tf.noise.feature_dependent import feature_dependent_noise
from mln_tf.noise.pair import CIFAR10_FLIPS, cifar10_pair_noise, class_flip_noise, pair_noise
from mln_tf.noise.probabilities import CACHE_DIR_ENV, class_probabilities, default_cache_dir
from mln_tf.noise.registry import NOISE_TYPES, apply_noise, check_noise, check_noise_arguments
from mln_tf.noise.report import NoiseReport, NoisyLabels, noise_report
from mln_tf.noise.symmetric import symmetric_noise, symmetric_uniform_noise
from mln_tf.noise.transition import estimate_transition_matrix, transition_matrix_noise

__all__ = [
    "CACHE_DIR_ENV",
    "CIFAR10_FLIPS",
    "NOISE_TYPES",
    "NoiseReport",
    "NoisyLabels",
    "apply_noise",
    "check_noise",
    "check_noise_arguments",
    "cifar10_pair_noise",
    "class_flip_noise",
    "class_probabilities",
    "default_cache_dir",
    "estimate_transition_matrix",
    "feature_dependent_noise",
    "noise_report",
    "pair_noise",
    "symmetric_noise",
    "symmetric_uniform_noise",
    "transition_matrix_noise",
]
