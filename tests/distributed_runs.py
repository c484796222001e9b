"""Training runs for tests/test_distribute.py, each in a fresh process.

Logical CPU devices and multi-worker collectives must be set up before TensorFlow
initialises its devices, which a pytest process has done long before. So the tests run
this script and compare the arrays it saves:

    python tests/distributed_runs.py replicas N OUT.npz [--short]  # 1 and N replicas, N CPUs
    python tests/distributed_runs.py worker OUT.npz                # one worker; TF_CONFIG set

`--short` runs the 1- and N-replica trainings only, not the "local" and per-shard ones.

One strategy per process: two mirrored strategies of different sizes in one process clash
in their collective groups.

Everything is float64 and deterministic, so the runs agree to round-off.
"""

import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The package of this checkout, not an installed copy.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import layers  # noqa: E402

import mln_tf  # noqa: E402

NUM_CLASSES = 3
NUM_INPUTS = 4
GLOBAL_BATCH = 16
STEPS = 3
# The first noisy batch has unlabeled examples in the first shards only, so that a
# per-replica average of `label_agreement` would differ from the global one.
UNLABELED_IN_FIRST_BATCH = 6
EVAL_SIZE = 10  # splits unevenly over 4 replicas: 3, 3, 2, 2


def classifier(synchronized=True):
    inputs = keras.Input((NUM_INPUTS,))
    x = layers.Dense(8, name="dense")(inputs)
    x = layers.BatchNormalization(synchronized=synchronized, name="bn")(x)
    x = layers.ReLU(name="features")(x)
    return keras.Model(inputs, layers.Dense(NUM_CLASSES, name="logits")(x))


def batches():
    """`STEPS` global batches `((x, y), (x_meta, y_meta))` and an evaluation set."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(STEPS, GLOBAL_BATCH, NUM_INPUTS))
    y = rng.integers(0, NUM_CLASSES, (STEPS, GLOBAL_BATCH)).astype("int32")
    y[0, :UNLABELED_IN_FIRST_BATCH] = -1
    x_meta = rng.normal(size=(STEPS, GLOBAL_BATCH, NUM_INPUTS)) + 0.5
    y_meta = rng.integers(0, NUM_CLASSES, (STEPS, GLOBAL_BATCH)).astype("int32")
    x_eval = rng.normal(size=(EVAL_SIZE, NUM_INPUTS))
    y_eval = rng.integers(0, NUM_CLASSES, EVAL_SIZE).astype("int32")
    return ((x, y), (x_meta, y_meta)), (x_eval, y_eval)


def initial_weights():
    keras.utils.set_random_seed(0)
    model = mln_tf.MetaLabelNet(classifier(), feature_layer="features")
    return model.classifier.get_weights(), model.label_generator.get_weights()


def train(
    strategy,
    virtual_batch="global",
    sgd_generator=False,
    synchronized=True,
    data=None,
    steps=STEPS,
    evaluate=True,
    meta_gradient="forward_mode",
    virtual_scope="all",
):
    """Trains from `initial_weights()`; returns weights, history and evaluation results.

    With `sgd_generator`, the generator's optimizer is SGD(1): its change in one step is
    minus the meta-gradient. `synchronized` is the BN layer's: False is Keras' default,
    where each replica normalises its shard by the shard's own moments.
    """
    classifier_weights, generator_weights = initial_weights()
    train_data, (x_eval, y_eval) = data or batches()
    with strategy.scope():
        model_classifier = classifier(synchronized)
        model_classifier.set_weights(classifier_weights)
        model = mln_tf.MetaLabelNet(
            model_classifier,
            feature_layer="features",
            meta_gradient=meta_gradient,
            virtual_scope=virtual_scope,
        )
        model.label_generator.set_weights(generator_weights)
        model.compile(
            optimizer=keras.optimizers.SGD(0.1, momentum=0.9, weight_decay=1e-3),
            generator_optimizer=keras.optimizers.SGD(1.0)
            if sgd_generator
            else keras.optimizers.Adam(1e-2, weight_decay=1e-3),
            virtual_lr=0.5,
            virtual_batch=virtual_batch,
        )
    dataset = tf.data.Dataset.from_tensor_slices(train_data).take(steps)
    result = {f"initial_{i}": w.numpy() for i, w in enumerate(model.weights)}
    result["initial_dense_kernel"], result["initial_dense_bias"] = classifier_weights[:2]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(dataset, epochs=1, verbose=0).history
    result["fallback_warnings"] = np.array(
        sum('falls back to "nested_tapes"' in str(w.message) for w in caught)
    )
    result.update({f"weight_{i}": w.numpy() for i, w in enumerate(model.weights)})
    # Each replica's copy of the BN moving mean (one copy on one device)
    moving_mean = model_classifier.get_layer("bn").moving_mean.value
    result["bn_moving_means"] = np.stack(
        [v.numpy() for v in strategy.experimental_local_results(moving_mean)]
    )
    result.update({f"generator_{i}": w for i, w in enumerate(model.label_generator.get_weights())})
    result.update({f"history_{key}": np.array(values) for key, values in history.items()})
    if evaluate:
        evaluation = model.evaluate(
            tf.data.Dataset.from_tensor_slices((x_eval, y_eval)).batch(EVAL_SIZE),
            verbose=0,
            return_dict=True,
        )
        result.update({f"eval_{key}": np.array(value) for key, value in evaluation.items()})
    return result


def shard(array, index, count):
    size = array.shape[1] // count
    return array[:, index * size : (index + 1) * size]


def save(path, runs):
    arrays = {f"{run}/{key}": v for run, values in runs.items() for key, v in values.items()}
    np.savez(path, **arrays)


def replicas_main(devices, path, short=False):
    strategy = mln_tf.distribute.build_strategy("mirrored", devices=devices)  # before any op
    default = mln_tf.distribute.build_strategy(None)
    keras.config.set_floatx("float64")
    runs = {
        "single": train(default),
        "mirrored": train(strategy),
    }
    if short:
        save(path, runs)
        return
    runs["local"] = train(strategy, virtual_batch="replica", evaluate=False)
    # Forward mode against the reference under the strategy. With synchronised BN,
    # forward mode falls back to the nested tapes; without, it runs on each replica.
    runs["unsynchronized"] = train(strategy, synchronized=False, evaluate=False)
    runs["unsynchronized_nested"] = train(
        strategy, synchronized=False, meta_gradient="nested_tapes", evaluate=False
    )
    runs["single_head"] = train(default, virtual_scope="head", evaluate=False)
    runs["mirrored_head"] = train(strategy, virtual_scope="head", evaluate=False)
    # With Keras' default unsynchronised BN, one "local" step on N replicas is N one-device
    # steps on the shards: the generator's step is the mean of theirs.
    runs["local_sgd"] = train(
        strategy, "replica", sgd_generator=True, synchronized=False, steps=1, evaluate=False
    )
    ((x, y), (x_meta, y_meta)), evaluation = batches()
    for index in range(devices):
        x_r, y_r, x_meta_r, y_meta_r = [shard(a, index, devices) for a in (x, y, x_meta, y_meta)]
        data = (((x_r, y_r), (x_meta_r, y_meta_r)), evaluation)
        runs[f"shard_{index}_sgd"] = train(
            default, sgd_generator=True, synchronized=False, data=data, steps=1, evaluate=False
        )
    runs["local_sgd"]["x"] = x[0]
    save(path, runs)


def worker_main(path):
    strategy = mln_tf.distribute.build_strategy("multiworker")  # reads TF_CONFIG
    keras.config.set_floatx("float64")
    save(path, {"worker": train(strategy, evaluate=False)})


if __name__ == "__main__":
    if sys.argv[1] == "replicas":
        replicas_main(int(sys.argv[2]), sys.argv[3], short="--short" in sys.argv)
    else:
        worker_main(sys.argv[2])
