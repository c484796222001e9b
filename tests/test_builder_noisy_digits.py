"""Runs the noisy_digits builder's own test, kept beside the builder as TFDS does.

`python3 -m pytest tests` (and `make test`) thereby runs it exactly once; it also runs
alone with `python3 -m pytest mln_tf/data/datasets/noisy_digits`.
"""

from mln_tf.data.datasets.noisy_digits.noisy_digits_test import *  # noqa: F403
