"""Two MetaLabelNet steps with the authors' settings against a float64 NumPy transcription.

The classifier is 4 inputs → Dense(3, tanh) (`features`) → Dense(3) logits; the frozen
feature extractor is its copy at construction. MetaLabelNet's defaults are the authors'
algorithm (α = 1, entropy weight 1, losses averaged over B×C, reverse KL, a randomly
initialised generator without the label input), and the optimizers are the authors'
PyTorch ones: SGD with momentum 0.9 and Adam, both with coupled weight decay 1e-4.

The reference writes every gradient by hand. The meta-gradient ∇_φ L_m, a second
derivative, is taken by the complex step, Im L_m(φ + i·h·e_k) / h with h = 1e-30: every
operation of the step is analytic, so this derivative is exact to round-off, without the
truncation error of finite differences.
"""

import keras
import numpy as np
import pytest
from keras import layers

import mln_tf
from mln_tf.optimizers import (
    CoupledAdam,
    CoupledSGD,
    paper_classifier_optimizer,
    paper_generator_optimizer,
)

NUM_INPUTS, NUM_HIDDEN, NUM_CLASSES = 4, 3, 3
NOISY_BATCH, META_BATCH = 5, 4
CLASSIFIER_LR, GENERATOR_LR = 0.1, 1e-2
# The authors' settings, written again here on purpose.
MOMENTUM, WEIGHT_DECAY = 0.9, 1e-4
ADAM_BETAS, ADAM_EPSILON = (0.9, 0.999), 1e-8
VIRTUAL_LR, ENTROPY_WEIGHT, LOG_EPSILON = 1.0, 1.0, 1e-10
COMPLEX_STEP = 1e-30
TOLERANCE = {"rtol": 1e-9, "atol": 1e-12}


def softmax(z):
    # The real part's maximum: a constant shift that keeps the complex step analytic.
    e = np.exp(z - z.real.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def log_softmax(z):
    shifted = z - z.real.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def forward(theta, x):
    """The classifier: its hidden activations and logits."""
    w1, b1, w2, b2 = theta
    hidden = np.tanh(x @ w1 + b1)
    return hidden, hidden @ w2 + b2


def backward(theta, x, hidden, logits_grad):
    """∇_θ of a loss whose gradient with respect to the logits is `logits_grad`."""
    _, _, w2, _ = theta
    pre_activation_grad = (logits_grad @ w2.T) * (1 - hidden**2)
    return [
        x.T @ pre_activation_grad,
        pre_activation_grad.sum(axis=0),
        hidden.T @ logits_grad,
        logits_grad.sum(axis=0),
    ]


def label_loss_logits_grad(logits, soft_labels):
    """∂L_c/∂z for L_c = mean_{i,j} p (log p − log(ŷ + ε)), with ŷ held constant."""
    p = softmax(logits)
    a = log_softmax(logits) - np.log(soft_labels + LOG_EPSILON)
    return p * (a - np.sum(p * a, axis=1, keepdims=True)) / logits.size


def entropy_logits_grad(logits):
    """∂L_e/∂z for L_e = −mean_{i,j} p log p."""
    p, log_p = softmax(logits), log_softmax(logits)
    return -p * (log_p - np.sum(p * log_p, axis=1, keepdims=True)) / logits.size


def meta_loss(generator, theta, features, x, x_meta, y_meta):
    """L_m(φ) = mean CE(f_θ̂(x_m), y_m), θ̂ = θ − α ∇_θ L_c(θ; g_φ(h(x)))."""
    kernel, bias = generator
    soft_labels = softmax(features @ kernel + bias)
    hidden, logits = forward(theta, x)
    grads = backward(theta, x, hidden, label_loss_logits_grad(logits, soft_labels))
    fast_theta = [w - VIRTUAL_LR * g for w, g in zip(theta, grads)]
    _, meta_logits = forward(fast_theta, x_meta)
    return -np.mean(log_softmax(meta_logits)[np.arange(len(y_meta)), y_meta])


def complex_step_gradient(function, params):
    """∇ of a real-analytic `function(params)`, one complex step per parameter."""
    gradient = [np.zeros_like(p) for p in params]
    for which, param in enumerate(params):
        for index in np.ndindex(param.shape):
            shifted = [p.astype(complex) for p in params]
            shifted[which][index] += 1j * COMPLEX_STEP
            gradient[which][index] = function(shifted).imag / COMPLEX_STEP
    return gradient


class TorchSGD:
    """`torch.optim.SGD(lr, momentum, weight_decay)`'s step (dampening 0, no Nesterov)."""

    def __init__(self, lr):
        self.lr, self.buffers = lr, None

    def step(self, params, grads):
        directions = [g + WEIGHT_DECAY * p for p, g in zip(params, grads)]
        if self.buffers is None:
            self.buffers = [d.copy() for d in directions]
        else:
            self.buffers = [MOMENTUM * b + d for b, d in zip(self.buffers, directions)]
        return [p - self.lr * b for p, b in zip(params, self.buffers)]


class TorchAdam:
    """`torch.optim.Adam(lr, weight_decay)`'s step (no AMSGrad)."""

    def __init__(self, lr):
        self.lr, self.t, self.first, self.second = lr, 0, None, None

    def step(self, params, grads):
        beta_1, beta_2 = ADAM_BETAS
        self.t += 1
        directions = [g + WEIGHT_DECAY * p for p, g in zip(params, grads)]
        if self.first is None:
            self.first = [np.zeros_like(p) for p in params]
            self.second = [np.zeros_like(p) for p in params]
        self.first = [beta_1 * m + (1 - beta_1) * d for m, d in zip(self.first, directions)]
        self.second = [beta_2 * v + (1 - beta_2) * d**2 for v, d in zip(self.second, directions)]
        updated = []
        for p, m, v in zip(params, self.first, self.second):
            m_hat, v_hat = m / (1 - beta_1**self.t), v / (1 - beta_2**self.t)
            updated.append(p - self.lr * m_hat / (np.sqrt(v_hat) + ADAM_EPSILON))
        return updated


def reference_step(theta, generator, features, batch, classifier_sgd, generator_adam):
    """The authors' step in NumPy: returns θ and φ after it."""
    (x, _), (x_meta, y_meta) = batch
    # Meta-gradient and generator update
    generator_grads = complex_step_gradient(
        lambda g: meta_loss(g, theta, features, x, x_meta, y_meta), generator
    )
    generator = generator_adam.step(generator, generator_grads)
    # Classifier update on the new soft labels, at θ
    new_soft_labels = softmax(features @ generator[0] + generator[1])
    hidden, logits = forward(theta, x)
    logits_grad = label_loss_logits_grad(logits, new_soft_labels)
    logits_grad = logits_grad + ENTROPY_WEIGHT * entropy_logits_grad(logits)
    theta = classifier_sgd.step(theta, backward(theta, x, hidden, logits_grad))
    return theta, generator, generator_grads


def random_batch(rng):
    x = rng.normal(size=(NOISY_BATCH, NUM_INPUTS))
    y = rng.integers(0, NUM_CLASSES, NOISY_BATCH).astype("int32")
    x_meta = rng.normal(size=(META_BATCH, NUM_INPUTS))
    y_meta = rng.integers(0, NUM_CLASSES, META_BATCH).astype("int32")
    return (x, y), (x_meta, y_meta)


@pytest.fixture(autouse=True)
def _float64():
    # Before the optimizers are created: their learning-rate variables take the floatx.
    keras.config.set_floatx("float64")


def tiny_meta_label_net(optimizer, generator_optimizer, meta_gradient="nested_tapes"):
    inputs = keras.Input((NUM_INPUTS,))
    hidden = layers.Dense(NUM_HIDDEN, activation="tanh", name="features")(inputs)
    classifier = keras.Model(inputs, layers.Dense(NUM_CLASSES, name="logits")(hidden))
    model = mln_tf.MetaLabelNet(classifier, feature_layer="features", meta_gradient=meta_gradient)
    model.compile(optimizer=optimizer, generator_optimizer=generator_optimizer, jit_compile=False)
    return model


def steps_against_reference(model, steps=2):
    """Trains `model` and the reference side by side; yields both weights after each step."""
    classifier = model.classifier
    theta = [w.copy() for w in classifier.get_weights()]
    generator = [v.numpy().copy() for v in model.label_generator.trainable_variables]
    frozen_w1, frozen_b1 = theta[0].copy(), theta[1].copy()
    classifier_sgd, generator_adam = TorchSGD(CLASSIFIER_LR), TorchAdam(GENERATOR_LR)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        batch = random_batch(rng)
        (x, _), _ = batch
        features = np.tanh(x @ frozen_w1 + frozen_b1)  # the warm-up copy, never trained
        theta, generator, generator_grads = reference_step(
            theta, generator, features, batch, classifier_sgd, generator_adam
        )
        model.train_on_batch(batch)
        actual = {
            "generator": [v.numpy() for v in model.label_generator.trainable_variables],
            "classifier": classifier.get_weights(),
        }
        expected = {"generator": generator, "classifier": theta}
        yield actual, expected, generator_grads


@pytest.mark.parametrize("meta_gradient", ["nested_tapes", "forward_mode"])
def test_two_steps_with_the_authors_settings_match_numpy(meta_gradient):
    model = tiny_meta_label_net(
        paper_classifier_optimizer(CLASSIFIER_LR),
        paper_generator_optimizer(GENERATOR_LR),
        meta_gradient=meta_gradient,
    )
    # The class defaults are the authors' algorithm.
    assert (model.virtual_lr, model.entropy_weight) == (VIRTUAL_LR, ENTROPY_WEIGHT)
    assert (model.loss_scale, model.label_loss) == ("mean", "reverse_kl")
    assert (model.label_input, model.generator_init) == (False, "random")
    frozen_w1 = model.classifier.get_weights()[0]

    for step, (actual, expected, generator_grads) in enumerate(steps_against_reference(model)):
        for part in ("generator", "classifier"):
            for a, e in zip(actual[part], expected[part]):
                np.testing.assert_allclose(a, e, err_msg=f"{part}, step {step + 1}", **TOLERANCE)
        assert np.abs(generator_grads[0]).max() > 1e-3  # a real, non-zero meta-gradient
    assert int(model.optimizer.iterations) == int(model.generator_optimizer.iterations) == 2
    # The classifier moved away from the frozen copy, which kept its weights.
    assert np.abs(model.classifier.get_weights()[0] - frozen_w1).max() > 1e-4
    np.testing.assert_array_equal(model.feature_extractor.get_weights()[0], frozen_w1)


def test_keras_sgd_and_adam_with_decoupled_decay_miss_the_authors_step():
    model = tiny_meta_label_net(
        keras.optimizers.SGD(CLASSIFIER_LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY),
        keras.optimizers.Adam(GENERATOR_LR, weight_decay=WEIGHT_DECAY),
    )
    differences = {"generator": 0.0, "classifier": 0.0}
    for actual, expected, _ in steps_against_reference(model):
        for part in differences:
            difference = max(np.abs(a - e).max() for a, e in zip(actual[part], expected[part]))
            differences[part] = max(differences[part], difference)
    # Far beyond the 1e-9 agreement above, in both updates.
    assert differences["generator"] > 1e-6
    assert differences["classifier"] > 1e-7


def test_saved_model_keeps_the_authors_optimizers_and_resumes_identically(tmp_path):
    model = tiny_meta_label_net(
        paper_classifier_optimizer(CLASSIFIER_LR), paper_generator_optimizer(GENERATOR_LR)
    )
    rng = np.random.default_rng(1)
    for _ in range(2):
        model.train_on_batch(random_batch(rng))
    path = tmp_path / "paper.keras"
    model.save(path)
    loaded = keras.models.load_model(path)

    assert isinstance(loaded.optimizer, CoupledSGD)
    assert isinstance(loaded.generator_optimizer, CoupledAdam)
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    assert loaded.generator_optimizer.get_config() == model.generator_optimizer.get_config()
    for original, reloaded in (
        (model.optimizer, loaded.optimizer),
        (model.generator_optimizer, loaded.generator_optimizer),
    ):
        for a, b in zip(original.variables, reloaded.variables):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    for _ in range(2):
        batch = random_batch(rng)
        model.train_on_batch(batch)
        loaded.train_on_batch(batch)
    for a, b in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
