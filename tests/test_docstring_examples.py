"""The `Example:` blocks of the data, noise, tuner and random-state modules run and are right."""

import doctest
import importlib

import numpy as np
import pytest
import tensorflow as tf

MODULES = [
    "mln_tf.noise",
    "mln_tf.noise.report",
    "mln_tf.noise.symmetric",
    "mln_tf.noise.pair",
    "mln_tf.noise.transition",
    "mln_tf.noise.feature_dependent",
    "mln_tf.noise.registry",
    "mln_tf.noise.probabilities",
    "mln_tf.data",
    "mln_tf.data.pipeline",
    "mln_tf.data.splits",
    "mln_tf.data.preprocessing",
    "mln_tf.data.sources",
    "mln_tf.data.noisy_data",
    "mln_tf.tuner",
    "mln_tf.options",
    "mln_tf.train_config",
    "mln_tf.selection",
    "mln_tf.random_state",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(
        module, extraglobs={"np": np, "tf": tf, **vars(module)}, optionflags=doctest.ELLIPSIS
    )
    assert result.attempted > 0 and result.failed == 0
