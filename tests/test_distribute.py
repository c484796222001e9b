"""MetaLabelNet under tf.distribute: N replicas against one device, on logical CPU devices.

Logical devices and multi-worker collectives need a fresh process (see distributed_runs.py).
The runs are float64 and deterministic: N replicas add the same terms as one device in
another order, so they agree to round-off. Tolerance: 1e-12 absolute, 1e-10 relative.
"""

import doctest
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

import mln_tf

RUNS_SCRIPT = Path(__file__).with_name("distributed_runs.py")
TOLERANCE = {"rtol": 1e-10, "atol": 1e-12}
# Two runs of the same float64 step take the same path bit for bit; "local" moves the
# weights by far more than round-off (about 3e-2 in these runs).
APPROXIMATION_MIN_DIFFERENCE = 1e-4
SUBPROCESS_TIMEOUT = 300


def _run(args, env=None):
    return subprocess.Popen(
        [sys.executable, str(RUNS_SCRIPT), *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait(process):
    output, _ = process.communicate(timeout=SUBPROCESS_TIMEOUT)
    assert process.returncode == 0, output[-4000:]


def _load(path):
    runs = {}
    with np.load(path) as arrays:
        for key in arrays.files:
            run, name = key.split("/", 1)
            runs.setdefault(run, {})[name] = arrays[key]
    return runs


@pytest.fixture(scope="module")
def two_replicas(tmp_path_factory):
    path = tmp_path_factory.mktemp("replicas") / "two.npz"
    _wait(_run(["replicas", "2", str(path)]))
    return _load(path)


@pytest.fixture(scope="module")
def four_replicas(tmp_path_factory):
    path = tmp_path_factory.mktemp("replicas") / "four.npz"
    _wait(_run(["replicas", "4", str(path), "--short"]))
    return _load(path)


def _weights(run, prefix="weight_"):
    return [
        run[key] for key in sorted(run) if key.startswith(prefix) and key[len(prefix) :].isdigit()
    ]


def _max_difference(run, other):
    return max(np.abs(a - b).max() for a, b in zip(_weights(run), _weights(other)))


# Equivalence with one device


@pytest.mark.parametrize("replicas", ["two_replicas", "four_replicas"])
def test_replicas_match_one_device_on_the_same_global_batch(replicas, request):
    runs = request.getfixturevalue(replicas)
    single, mirrored = runs["single"], runs["mirrored"]
    assert len(_weights(single)) == 16  # classifier, extractor, generator, BN statistics
    for expected, actual in zip(_weights(single), _weights(mirrored)):
        np.testing.assert_allclose(actual, expected, **TOLERANCE)
    # The weights moved: the comparison is not between two copies of the initial ones.
    moved = [np.abs(w - w0).max() for w, w0 in zip(_weights(single), _weights(single, "initial_"))]
    assert sorted(moved)[-1] > 1e-2


@pytest.mark.parametrize("replicas", ["two_replicas", "four_replicas"])
def test_metrics_are_aggregated_across_replicas(replicas, request):
    runs = request.getfixturevalue(replicas)
    single, mirrored = runs["single"], runs["mirrored"]
    # `label_agreement` counts labeled examples only, and the first batch's unlabeled ones
    # sit in the first shards; evaluation splits 10 examples unevenly over 4 replicas.
    # An average of per-replica results would differ from the global one in both.
    for key in ("history_loss", "history_meta_loss", "history_label_agreement"):
        np.testing.assert_allclose(mirrored[key], single[key], **TOLERANCE)
    for key in ("eval_loss", "eval_accuracy"):
        np.testing.assert_allclose(mirrored[key], single[key], **TOLERANCE)


# The meta-gradient's two computations and the "head" scope under a strategy


def test_forward_mode_matches_nested_tapes_under_a_strategy(two_replicas):
    forward, nested = two_replicas["unsynchronized"], two_replicas["unsynchronized_nested"]
    assert int(forward["fallback_warnings"]) == 0  # forward mode really ran on the replicas
    for expected, actual in zip(_weights(nested), _weights(forward)):
        np.testing.assert_allclose(actual, expected, **TOLERANCE)


def test_forward_mode_falls_back_to_nested_tapes_with_synchronized_batch_norm(two_replicas):
    # The "mirrored" run, equal to one device above, has a synchronised BN in its virtual step.
    assert int(two_replicas["mirrored"]["fallback_warnings"]) >= 1
    assert int(two_replicas["single"]["fallback_warnings"]) == 0
    # "head" moves the last dense layer only: no BN in its virtual step, no fallback.
    assert int(two_replicas["mirrored_head"]["fallback_warnings"]) == 0


def test_head_scope_on_replicas_matches_one_device(two_replicas):
    single, mirrored = two_replicas["single_head"], two_replicas["mirrored_head"]
    for expected, actual in zip(_weights(single), _weights(mirrored)):
        np.testing.assert_allclose(actual, expected, **TOLERANCE)
    # "head" is another step than "all": the comparison is not vacuous.
    assert _max_difference(single, two_replicas["single"]) > APPROXIMATION_MIN_DIFFERENCE


# The "local" approximation


def test_local_virtual_step_is_an_approximation(two_replicas):
    difference = _max_difference(two_replicas["local"], two_replicas["single"])
    assert difference > APPROXIMATION_MIN_DIFFERENCE


def test_local_virtual_step_averages_the_shards_meta_gradients(two_replicas):
    # The generator's optimizer is SGD(1) for one step, so its new weights are the initial
    # ones minus the meta-gradient: under "local", minus the mean of the gradients that
    # one device computes on each shard alone.
    local = two_replicas["local_sgd"]
    shards = [two_replicas[f"shard_{index}_sgd"] for index in range(2)]
    for key in ("generator_0", "generator_1"):
        expected = np.mean([shard[key] for shard in shards], axis=0)
        np.testing.assert_allclose(local[key], expected, **TOLERANCE)
    assert np.abs(shards[0]["generator_0"] - shards[1]["generator_0"]).max() > 1e-4


# Batch normalisation


def test_unsynchronized_batch_norm_keeps_per_replica_statistics_as_keras_does(two_replicas):
    # Keras' BatchNormalization(synchronized=False) under a strategy normalises each shard
    # by its own moments, and each replica moves its own copy of the moving mean.
    run = two_replicas["local_sgd"]
    hidden = run["x"] @ run["initial_dense_kernel"] + run["initial_dense_bias"]
    momentum = 0.99  # Keras' default; the moving mean starts at 0
    for index, shard in enumerate(np.split(hidden, 2)):
        expected = (1 - momentum) * shard.mean(axis=0)
        np.testing.assert_allclose(run["bn_moving_means"][index], expected, **TOLERANCE)
        one_device = two_replicas[f"shard_{index}_sgd"]["bn_moving_means"][0]
        np.testing.assert_allclose(run["bn_moving_means"][index], one_device, **TOLERANCE)
    assert np.abs(run["bn_moving_means"][0] - run["bn_moving_means"][1]).max() > 1e-4


# Several machines


def _free_port():
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def test_two_workers_reach_identical_weights_equal_to_one_device(tmp_path, two_replicas):
    # The pattern of TensorFlow's multi-worker tests: one process per worker on loopback,
    # each told the cluster and its own index through TF_CONFIG.
    workers = [f"localhost:{_free_port()}" for _ in range(2)]
    processes = []
    for index in range(2):
        config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        out = str(tmp_path / f"worker_{index}.npz")
        processes.append(_run(["worker", out], env={"TF_CONFIG": json.dumps(config)}))
    for process in processes:
        _wait(process)
    first, second = (_load(tmp_path / f"worker_{i}.npz")["worker"] for i in range(2))

    for a, b in zip(_weights(first), _weights(second)):
        np.testing.assert_array_equal(a, b)
    for expected, actual in zip(_weights(two_replicas["single"]), _weights(first)):
        np.testing.assert_allclose(actual, expected, **TOLERANCE)
    for key in ("history_loss", "history_meta_loss", "history_label_agreement"):
        np.testing.assert_allclose(first[key], two_replicas["single"][key], **TOLERANCE)


# In this process: one replica under MirroredStrategy, and errors


def small_classifier():
    inputs = keras.Input((4,))
    hidden = layers.Dense(8, activation="relu", name="features")(inputs)
    return keras.Model(inputs, layers.Dense(3)(hidden))


def _dataset(batches):
    return tf.data.Dataset.from_tensor_slices(
        tf.nest.map_structure(lambda *arrays: np.stack(arrays), *batches)
    )


def _batch(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(8, 4)).astype("float32")
    y = rng.integers(0, 3, 8).astype("int32")
    return (x, y), (x + 1, (y + 1) % 3)


def _model_in(strategy):
    keras.utils.set_random_seed(0)  # the same initial weights in every strategy
    with strategy.scope():
        classifier = small_classifier()
        model = mln_tf.MetaLabelNet(classifier, feature_layer="features")
        model.compile(optimizer=keras.optimizers.SGD(0.1), generator_optimizer="adam")
    return model


def test_one_replica_strategy_skips_a_non_finite_step_like_one_device():
    # MirroredStrategy synchronises through merge_call even for one replica, so the step's
    # skip-on-NaN takes its cross-replica path here.
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    (x, y), meta = _batch(1)
    x = x.copy()
    x[2, 0] = np.nan
    weights = {}
    for name, scope in (("default", tf.distribute.get_strategy()), ("mirrored", strategy)):
        model = _model_in(scope)
        model.fit(_dataset([_batch(0)]), verbose=0)
        before = [v.numpy() for v in model.weights]
        with pytest.raises(mln_tf.NonFiniteLossError, match="not applied"):
            model.fit(_dataset([((x, y), meta), _batch(2)]), verbose=0)
        after = [v.numpy() for v in model.weights]
        for b, a in zip(before, after):
            np.testing.assert_array_equal(a, b)
        weights[name] = after
    for a, b in zip(weights["default"], weights["mirrored"]):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)


def test_jit_compile_under_a_strategy_warns_and_is_disabled():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        model = mln_tf.MetaLabelNet(small_classifier(), feature_layer="features")
        with pytest.warns(UserWarning, match="does not compile steps with XLA under a distr"):
            model.compile(jit_compile=True)
    assert model.jit_compile is False


def test_classifier_created_outside_the_scope_is_rejected():
    classifier = small_classifier()
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        with pytest.raises(ValueError, match="created outside `strategy.scope\\(\\)`.*clone_model"):
            mln_tf.MetaLabelNet(classifier, feature_layer="features")


def test_virtual_batch_is_checked_and_kept_in_the_config():
    model = mln_tf.MetaLabelNet(small_classifier(), feature_layer="features")
    with pytest.raises(ValueError, match="Received: virtual_batch='all'. Expected one of 'global'"):
        model.compile(virtual_batch="all")
    with pytest.raises(ValueError, match="Invalid value for argument `virtual_batch`"):
        mln_tf.MetaLabelNet(small_classifier(), virtual_batch=None)
    model.compile(virtual_batch="replica")
    restored = mln_tf.MetaLabelNet.from_config(model.get_config())
    assert (model.virtual_batch, restored.virtual_batch) == ("replica", "replica")


def test_the_old_virtual_step_name_still_works_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match="`virtual_step='local'` is deprecated; use "
                      "`virtual_batch='replica'`"):  # fmt: skip
        model = mln_tf.MetaLabelNet(small_classifier(), virtual_step="local")
    assert model.virtual_batch == "replica"
    with pytest.warns(DeprecationWarning, match="use `virtual_batch='global'`"):
        model.compile(virtual_step="all")
    assert model.virtual_batch == "global"


# build_strategy


def test_build_strategy_default_is_one_device():
    strategy = mln_tf.distribute.build_strategy()
    assert strategy is tf.distribute.get_strategy()
    assert strategy.num_replicas_in_sync == 1
    result = doctest.testmod(mln_tf.distribute, extraglobs=vars(mln_tf.distribute))
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "horovod"}, 'Received: name=\'horovod\'. Expected "mirrored", "multiworker"'),
        ({"name": "mirrored", "devices": 0}, "Received: devices=0. Expected a positive integer"),
        ({"name": "mirrored", "devices": True}, "Received: devices=True"),
        ({"devices": 2}, "default strategy runs on one device"),
        ({"name": "multiworker", "devices": 64}, "Received: devices=64"),
        # TensorFlow has initialised its devices in this process: the CPU cannot be split.
        ({"name": "mirrored", "devices": 64}, "Received: devices=64"),
    ],
)
def test_build_strategy_rejects_bad_arguments(kwargs, message):
    tf.constant(0.0) + 1.0  # devices initialised
    with pytest.raises(ValueError, match=message):
        mln_tf.distribute.build_strategy(**kwargs)


def test_build_strategy_explains_a_cpu_that_cannot_be_split_anymore():
    tf.constant(0.0) + 1.0
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("splits the CPU only on a machine without GPUs")
    with pytest.raises(ValueError, match="already initialised 1 CPU device.*before any other"):
        mln_tf.distribute.build_strategy("mirrored", devices=3)
