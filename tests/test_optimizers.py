"""CoupledSGD and CoupledAdam against PyTorch's update rules, written again in NumPy.

The references follow the pseudo-code of the PyTorch documentation of `torch.optim.SGD` and
`torch.optim.Adam` (dampening 0, no Nesterov, no AMSGrad). Everything runs in float64, so
the optimizers and the references agree to round-off.
"""

import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from mln_tf import optimizers
from mln_tf.optimizers import CoupledAdam, CoupledSGD

STEPS = 5
TOLERANCE = {"rtol": 1e-10, "atol": 1e-13}
# Keras' rules differ from PyTorch's by far more than round-off in these runs.
MIN_DIFFERENCE = 1e-8
REPLICAS_SCRIPT = Path(__file__).with_name("optimizer_replicas_run.py")
SUBPROCESS_TIMEOUT = 300


def torch_sgd(params, grads, learning_rates, momentum, weight_decay):
    """`torch.optim.SGD`'s step, from its documentation; returns the params after each step."""
    params = [p.copy() for p in params]
    buffers = [None] * len(params)
    history = []
    for step_grads, lr in zip(grads, learning_rates):
        for i, (param, grad) in enumerate(zip(params, step_grads)):
            d = grad + weight_decay * param if weight_decay != 0 else grad
            if momentum != 0:
                buffers[i] = d.copy() if buffers[i] is None else momentum * buffers[i] + d
                d = buffers[i]
            params[i] = param - lr * d
        history.append([p.copy() for p in params])
    return history


def torch_adam(params, grads, learning_rates, weight_decay, beta_1=0.9, beta_2=0.999, eps=1e-8):
    """`torch.optim.Adam`'s step, from its documentation; returns the params after each step."""
    params = [p.copy() for p in params]
    first = [np.zeros_like(p) for p in params]
    second = [np.zeros_like(p) for p in params]
    history = []
    for t, (step_grads, lr) in enumerate(zip(grads, learning_rates), start=1):
        for i, (param, grad) in enumerate(zip(params, step_grads)):
            g = grad + weight_decay * param if weight_decay != 0 else grad
            first[i] = beta_1 * first[i] + (1 - beta_1) * g
            second[i] = beta_2 * second[i] + (1 - beta_2) * g**2
            m_hat = first[i] / (1 - beta_1**t)
            v_hat = second[i] / (1 - beta_2**t)
            params[i] = param - lr * m_hat / (np.sqrt(v_hat) + eps)
        history.append([p.copy() for p in params])
    return history


def initial_params(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(3, 2)), rng.normal(size=(2,))]


def gradient_sequence(seed=1, steps=STEPS, scale=1.0):
    """Gradients that change sign and size from step to step."""
    rng = np.random.default_rng(seed)
    return [[scale * rng.normal(size=(3, 2)), scale * rng.normal(size=(2,))] for _ in range(steps)]


def run_keras(optimizer, params, grads, apply_fn=None):
    """Applies `grads` step by step to float64 variables; returns the values after each step."""
    variables = [keras.Variable(p, dtype="float64") for p in params]
    optimizer.build(variables)
    apply_fn = apply_fn or (lambda step_grads: optimizer.apply(step_grads, variables))
    history = []
    for step_grads in grads:
        apply_fn([tf.constant(g) for g in step_grads])
        history.append([v.numpy() for v in variables])
    return history


def assert_same_history(actual, expected):
    for step, (actual_params, expected_params) in enumerate(zip(actual, expected)):
        for a, e in zip(actual_params, expected_params):
            np.testing.assert_allclose(a, e, err_msg=f"step {step + 1}", **TOLERANCE)


def max_difference(history, other):
    return max(np.abs(a - b).max() for x, y in zip(history, other) for a, b in zip(x, y))


@pytest.fixture(autouse=True)
def _float64():
    keras.config.set_floatx("float64")


# Update rules


@pytest.mark.parametrize("weight_decay", [0.0, 1e-4, 0.1])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_coupled_sgd_matches_torch_sgd(momentum, weight_decay):
    params, grads = initial_params(), gradient_sequence()
    expected = torch_sgd(params, grads, [0.05] * STEPS, momentum, weight_decay)

    optimizer = CoupledSGD(0.05, momentum=momentum, coupled_weight_decay=weight_decay)
    assert_same_history(run_keras(optimizer, params, grads), expected)


@pytest.mark.parametrize("weight_decay", [0.0, 1e-4, 0.1])
def test_coupled_adam_matches_torch_adam(weight_decay):
    params, grads = initial_params(), gradient_sequence()
    expected = torch_adam(params, grads, [0.05] * STEPS, weight_decay)

    optimizer = CoupledAdam(0.05, coupled_weight_decay=weight_decay)
    assert_same_history(run_keras(optimizer, params, grads), expected)


@pytest.mark.parametrize("weight_decay", [1e-4, 0.1])
def test_keras_sgd_with_weight_decay_is_not_torch_sgd(weight_decay):
    params, grads = initial_params(), gradient_sequence()
    expected = torch_sgd(params, grads, [0.05] * STEPS, 0.9, weight_decay)

    decoupled = run_keras(
        keras.optimizers.SGD(0.05, momentum=0.9, weight_decay=weight_decay), params, grads
    )
    assert max_difference(decoupled, expected) > MIN_DIFFERENCE


@pytest.mark.parametrize("weight_decay", [1e-4, 0.1])
def test_keras_adam_with_weight_decay_is_not_torch_adam(weight_decay):
    # Gradients of the size of a meta-gradient, so that the decay term weighs.
    params, grads = initial_params(), gradient_sequence(scale=1e-3)
    expected = torch_adam(params, grads, [0.05] * STEPS, weight_decay)

    decoupled = run_keras(
        keras.optimizers.Adam(0.05, weight_decay=weight_decay, epsilon=1e-8), params, grads
    )
    assert max_difference(decoupled, expected) > MIN_DIFFERENCE


def test_coupled_sgd_decay_is_about_ten_times_the_decoupled_one_at_momentum_0_9():
    # Zero gradients: all the movement is the decay's. After many steps the coupled buffer
    # reaches wd·θ / (1 − 0.9); the decoupled rule moves lr·wd·θ per step.
    params, steps, lr, weight_decay = [np.ones((2,))], 200, 0.01, 1e-3
    grads = [[np.zeros((2,))] for _ in range(steps)]
    coupled = torch_sgd(params, grads, [lr] * steps, 0.9, weight_decay)
    decoupled = run_keras(
        keras.optimizers.SGD(lr, momentum=0.9, weight_decay=weight_decay), params, grads
    )
    last_coupled_step = coupled[-2][0] - coupled[-1][0]
    last_decoupled_step = decoupled[-2][0] - decoupled[-1][0]
    np.testing.assert_allclose(last_coupled_step / last_decoupled_step, 10.0, rtol=0.02)


def test_adam_epsilon_after_bias_correction_with_tiny_gradients():
    params = [np.ones((2,))]
    grads = [[np.array([1e-9, -3e-9])]]
    expected = torch_adam(params, grads, [0.1], weight_decay=0.0)
    # PyTorch's first step: lr · g / (|g| + 1e-8), a tenth of lr and more.
    np.testing.assert_allclose(
        1 - expected[0][0], 0.1 * grads[0][0] / (np.abs(grads[0][0]) + 1e-8), rtol=1e-9
    )

    coupled = run_keras(CoupledAdam(0.1), params, grads)
    keras_adam = run_keras(keras.optimizers.Adam(0.1), params, grads)

    assert_same_history(coupled, expected)
    # Keras adds 1e-7 to √v before the bias correction: a step about 300 times smaller.
    keras_step = np.abs(1 - keras_adam[0][0])
    torch_step = np.abs(1 - expected[0][0])
    assert np.all(keras_step < torch_step / 100)


def schedule():
    # Iterations 0–1 at 0.5, 2–3 at 0.125, then 0.03125 (exact in binary).
    return keras.optimizers.schedules.PiecewiseConstantDecay([1, 3], [0.5, 0.125, 0.03125])


SCHEDULED_RATES = [0.5, 0.5, 0.125, 0.125, 0.03125]


def test_coupled_sgd_follows_a_learning_rate_schedule_like_torch():
    params, grads = initial_params(), gradient_sequence()
    expected = torch_sgd(params, grads, SCHEDULED_RATES, 0.9, 0.1)

    coupled = run_keras(
        CoupledSGD(schedule(), momentum=0.9, coupled_weight_decay=0.1), params, grads
    )
    assert_same_history(coupled, expected)

    # Keras' SGD keeps the learning rate inside its velocity: even without decay, it
    # departs from PyTorch once the rate changes. (Momentum 0.5: Keras rounds its momentum
    # to float32, and 0.5 is exact there.)
    without_decay = torch_sgd(params, grads, SCHEDULED_RATES, 0.5, 0.0)
    keras_sgd = run_keras(keras.optimizers.SGD(schedule(), momentum=0.5), params, grads)
    assert_same_history(keras_sgd[:2], without_decay[:2])
    assert max_difference(keras_sgd[2:], without_decay[2:]) > MIN_DIFFERENCE


def test_coupled_adam_follows_a_learning_rate_schedule_like_torch():
    params, grads = initial_params(), gradient_sequence()
    expected = torch_adam(params, grads, SCHEDULED_RATES, 1e-4)
    coupled = run_keras(CoupledAdam(schedule(), coupled_weight_decay=1e-4), params, grads)
    assert_same_history(coupled, expected)


def test_exclude_from_weight_decay_applies_to_the_coupled_decay():
    params, grads = initial_params(), gradient_sequence()
    optimizer = CoupledSGD(0.05, momentum=0.9, coupled_weight_decay=0.1)
    variables = [keras.Variable(p, dtype="float64") for p in params]
    optimizer.exclude_from_weight_decay(var_list=variables[1:])
    for step_grads in grads:
        optimizer.apply([tf.constant(g) for g in step_grads], variables)

    decayed = torch_sgd(params[:1], [g[:1] for g in grads], [0.05] * STEPS, 0.9, 0.1)
    undecayed = torch_sgd(params[1:], [g[1:] for g in grads], [0.05] * STEPS, 0.9, 0.0)
    np.testing.assert_allclose(variables[0].numpy(), decayed[-1][0], **TOLERANCE)
    np.testing.assert_allclose(variables[1].numpy(), undecayed[-1][0], **TOLERANCE)


# XLA and replicas


@pytest.mark.parametrize(
    "make_optimizer, reference",
    [
        (
            lambda: CoupledSGD(0.05, momentum=0.9, coupled_weight_decay=0.1),
            lambda p, g: torch_sgd(p, g, [0.05] * STEPS, 0.9, 0.1),
        ),
        (
            lambda: CoupledAdam(schedule(), coupled_weight_decay=0.1),
            lambda p, g: torch_adam(p, g, SCHEDULED_RATES, 0.1),
        ),
    ],
    ids=["sgd", "adam_with_schedule"],
)
def test_jit_compiled_apply_matches_torch(make_optimizer, reference):
    params, grads = initial_params(), gradient_sequence()
    optimizer = make_optimizer()
    variables = [keras.Variable(p, dtype="float64") for p in params]
    optimizer.build(variables)

    @tf.function(jit_compile=True)
    def apply(step_grads):
        optimizer.apply(step_grads, variables)

    for step_grads in grads:
        apply([tf.constant(g) for g in step_grads])
    assert apply.experimental_get_tracing_count() == 1
    expected = reference(params, grads)[-1]
    for variable, e in zip(variables, expected):
        np.testing.assert_allclose(variable.numpy(), e, **TOLERANCE)


def test_mirrored_strategy_on_two_cpus_matches_torch(tmp_path):
    # Logical CPUs must be configured before TensorFlow starts: a fresh process.
    path = tmp_path / "replicas.npz"
    process = subprocess.run(
        [sys.executable, str(REPLICAS_SCRIPT), str(path)],
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]

    with np.load(path) as arrays:
        params = [arrays["initial_0"], arrays["initial_1"]]
        # The replicas got 1/4 and 3/4 of each gradient; Keras sums them.
        grads = [[arrays[f"grad_{step}_0"], arrays[f"grad_{step}_1"]] for step in range(STEPS)]
        expected = {
            "sgd": torch_sgd(params, grads, [0.05] * STEPS, 0.9, 0.1)[-1],
            "adam": torch_adam(params, grads, [0.05] * STEPS, 0.1)[-1],
        }
        for name, values in expected.items():
            for i, e in enumerate(values):
                for replica in range(2):
                    actual = arrays[f"{name}_{replica}_{i}"]
                    np.testing.assert_allclose(actual, e, **TOLERANCE)


# Configuration and state


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda: CoupledSGD(
            0.03, momentum=0.5, coupled_weight_decay=1e-3, clipnorm=2.0, name="classifier"
        ),
        lambda: CoupledAdam(0.02, beta_1=0.8, beta_2=0.99, epsilon=1e-6, coupled_weight_decay=1e-3),
    ],
    ids=["sgd", "adam"],
)
def test_get_config_round_trip(make_optimizer):
    optimizer = make_optimizer()
    config = optimizer.get_config()
    restored = type(optimizer).from_config(config)
    assert restored.get_config() == config
    assert config["weight_decay"] is None

    serialized = keras.optimizers.serialize(optimizer)
    assert serialized["registered_name"] == f"mln_tf>{type(optimizer).__name__}"
    deserialized = keras.optimizers.deserialize(serialized)
    assert type(deserialized) is type(optimizer)
    assert deserialized.get_config() == config


def test_get_config_round_trip_with_a_schedule():
    optimizer = CoupledSGD(schedule(), momentum=0.9, coupled_weight_decay=1e-4)
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert restored.get_config()["learning_rate"]["class_name"] == "PiecewiseConstantDecay"
    assert restored.get_config() == optimizer.get_config()
    params, grads = initial_params(), gradient_sequence()
    assert_same_history(run_keras(restored, params, grads), run_keras(optimizer, params, grads))


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda: CoupledSGD(0.05, momentum=0.9, coupled_weight_decay=0.1),
        lambda: CoupledAdam(schedule(), coupled_weight_decay=0.1),
    ],
    ids=["sgd", "adam_with_schedule"],
)
def test_restored_optimizer_variables_continue_identically(make_optimizer):
    params, grads = initial_params(), gradient_sequence()
    original = make_optimizer()
    variables = [keras.Variable(p, dtype="float64") for p in params]
    original.build(variables)
    for step_grads in grads[:3]:
        original.apply([tf.constant(g) for g in step_grads], variables)

    # Resume: a new optimizer from the config, its variables set from the saved state.
    saved_state = [v.numpy() for v in original.variables]
    resumed = type(original).from_config(original.get_config())
    resumed_variables = [keras.Variable(v.numpy(), dtype="float64") for v in variables]
    resumed.build(resumed_variables)
    assert len(resumed.variables) == len(saved_state)
    for variable, value in zip(resumed.variables, saved_state):
        variable.assign(value)

    for step_grads in grads[3:]:
        original.apply([tf.constant(g) for g in step_grads], variables)
        resumed.apply([tf.constant(g) for g in step_grads], resumed_variables)
    for a, b in zip(variables, resumed_variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert int(resumed.iterations) == STEPS


@pytest.mark.parametrize(
    "optimizer_class, kwargs",
    [(CoupledSGD, {"momentum": 0.9}), (CoupledAdam, {})],
    ids=["sgd", "adam"],
)
def test_model_saved_as_keras_file_resumes_identically(tmp_path, optimizer_class, kwargs):
    def tiny_model():
        inputs = keras.Input((4,))
        hidden = keras.layers.Dense(3, activation="tanh")(inputs)
        model = keras.Model(inputs, keras.layers.Dense(2)(hidden))
        optimizer = optimizer_class(0.05, coupled_weight_decay=0.1, **kwargs)
        model.compile(optimizer=optimizer, loss="mse")
        return model

    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(6, 4)), rng.normal(size=(6, 2))
    model = tiny_model()
    for _ in range(3):
        model.train_on_batch(x, y)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)

    assert type(loaded.optimizer) is optimizer_class
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    for _ in range(2):
        model.train_on_batch(x, y)
        loaded.train_on_batch(x, y)
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_paper_optimizers_are_the_authors_settings():
    classifier_optimizer = optimizers.paper_classifier_optimizer()
    generator_optimizer = optimizers.paper_generator_optimizer(1e-2)

    assert isinstance(classifier_optimizer, CoupledSGD)
    assert classifier_optimizer.learning_rate.numpy() == pytest.approx(1e-2)
    assert (classifier_optimizer.momentum, classifier_optimizer.coupled_weight_decay) == (0.9, 1e-4)
    assert classifier_optimizer.weight_decay is None
    assert isinstance(generator_optimizer, CoupledAdam)
    assert generator_optimizer.learning_rate.numpy() == pytest.approx(1e-2)
    assert (generator_optimizer.beta_1, generator_optimizer.beta_2) == (0.9, 0.999)
    assert (generator_optimizer.epsilon, generator_optimizer.coupled_weight_decay) == (1e-8, 1e-4)
    assert generator_optimizer.weight_decay is None


def test_paper_optimizers_step_like_torch():
    params, grads = initial_params(), gradient_sequence(scale=1e-3)
    assert_same_history(
        run_keras(optimizers.paper_classifier_optimizer(), params, grads),
        torch_sgd(params, grads, [1e-2] * STEPS, 0.9, 1e-4),
    )
    assert_same_history(
        run_keras(optimizers.paper_generator_optimizer(), params, grads),
        torch_adam(params, grads, [1e-3] * STEPS, 1e-4),
    )


# Errors


@pytest.mark.parametrize(
    "make_optimizer, message",
    [
        (
            lambda: CoupledSGD(weight_decay=1e-4),
            "Invalid value for argument `weight_decay`. Received: weight_decay=0.0001. "
            "Expected None: CoupledSGD applies PyTorch's coupled weight decay; pass "
            "`coupled_weight_decay` instead",
        ),
        (
            lambda: CoupledAdam(weight_decay=1e-4),
            "Expected None: CoupledAdam applies PyTorch's coupled weight decay",
        ),
        (
            lambda: CoupledSGD(coupled_weight_decay=-1e-4),
            "Invalid value for argument `coupled_weight_decay`. "
            "Received: coupled_weight_decay=-0.0001. Expected a non-negative float.",
        ),
        (
            lambda: CoupledSGD(momentum=1.5),
            "Invalid value for argument `momentum`. Received: momentum=1.5. "
            "Expected a float in [0, 1].",
        ),
        (
            lambda: CoupledAdam(beta_2=1.0),
            "Invalid value for argument `beta_2`. Received: beta_2=1.0. "
            "Expected a float in [0, 1).",
        ),
        (
            lambda: CoupledAdam(epsilon="small"),
            "Invalid value for argument `epsilon`. Received: epsilon='small'. "
            "Expected a non-negative float.",
        ),
    ],
)
def test_invalid_arguments_are_rejected(make_optimizer, message):
    with pytest.raises(ValueError) as error:
        make_optimizer()
    assert message in str(error.value)


def test_docstring_examples():
    import doctest

    result = doctest.testmod(optimizers, extraglobs={"keras": keras})
    assert result.attempted > 0 and result.failed == 0
