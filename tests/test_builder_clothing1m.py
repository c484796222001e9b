"""Runs the clothing1m builder's own test, kept beside the builder as TFDS does.

`python3 -m pytest tests` (and `make test`) thereby runs it exactly once; it also runs
alone with `python3 -m pytest mln_tf/data/datasets/clothing1m`.
"""

from mln_tf.data.datasets.clothing1m.clothing1m_test import *  # noqa: F403
