"""Saves MetaLabelNet's weights after three steps of several variants, or compares two saves.

A refactoring of the step must leave these weights bitwise equal: run it before and after,
then compare.

Usage:

    python benchmarks/step_fingerprint.py save before.npz      # on the old commit
    python benchmarks/step_fingerprint.py save after.npz       # on the new one
    python benchmarks/step_fingerprint.py compare before.npz after.npz

The variants: the authors' options, `virtual_scope="head"`, forward mode with each scope,
and `mln_tf.options.RECOMMENDED`, each with and without XLA, on a small convolutional
classifier with batch normalisation and max-pooling (no dropout), with Keras' SGD and Adam.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import mln_tf  # noqa: E402

VARIANTS = {
    "paper": {},
    "head": dict(virtual_scope="head"),
    "forward": dict(meta_gradient="forward_mode"),
    "forward_head": dict(meta_gradient="forward_mode", virtual_scope="head"),
    "recommended": dict(entropy_weight=0.0, virtual_scope="head", label_input=True,
                        generator_init="classifier_head", label_trust=5.0,
                        loss_scale="sum_over_classes", label_loss="cross_entropy"),
}  # fmt: skip
# Passed to compile, as an older MetaLabelNet took them there.
COMPILE_OPTIONS = ("virtual_lr", "entropy_weight", "meta_gradient", "virtual_scope")


def classifier():
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(16, activation="relu", name="features")(h)
    return keras.Model(inputs, keras.layers.Dense(5, name="logits")(h))


def batches():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(48, 8, 8, 1)).astype("float32"), rng.integers(0, 5, 48)
    x_meta, y_meta = rng.normal(size=(48, 8, 8, 1)).astype("float32"), rng.integers(0, 5, 48)
    noisy = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    return tf.data.Dataset.zip((noisy, tf.data.Dataset.from_tensor_slices((x_meta, y_meta))
                                .batch(16)))  # fmt: skip


def fingerprint():
    weights = {}
    for name, options in VARIANTS.items():
        for jit_compile in (False, True):
            keras.utils.set_random_seed(1)
            compiled = {k: v for k, v in options.items() if k in COMPILE_OPTIONS}
            built = {k: v for k, v in options.items() if k not in COMPILE_OPTIONS}
            model = mln_tf.MetaLabelNet(classifier(), feature_layer="features", **built)
            model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                          generator_optimizer=keras.optimizers.Adam(1e-2),
                          jit_compile=jit_compile, **compiled)  # fmt: skip
            model.fit(batches(), epochs=1, verbose=0)
            for index, weight in enumerate(model.weights):
                weights[f"{name}_{jit_compile}_{index}"] = keras.ops.convert_to_numpy(weight)
    return weights


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["save", "compare"])
    parser.add_argument("paths", nargs="+")
    args = parser.parse_args(argv)
    if args.command == "save":
        np.savez(args.paths[0], **fingerprint())
        print(f"{len(VARIANTS) * 2} variants saved to {args.paths[0]}")
        return 0
    before, after = (np.load(path) for path in args.paths[:2])
    if set(before) != set(after):
        print("The two files hold different variables.")
        return 1
    largest = max(float(np.max(np.abs(before[key] - after[key]))) for key in before)
    print(f"{len(before)} arrays, largest absolute difference {largest:.3g}")
    return 0 if largest == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
