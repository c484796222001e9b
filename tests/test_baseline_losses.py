"""The loss-based baselines against NumPy, and the transition-matrix estimator."""

import keras
import numpy as np
import pytest

from mln_tf import losses, noise

LOGITS = np.array([[2.0, 0.5, -1.0], [0.0, 0.0, 3.0], [1.0, -2.0, 0.5]], dtype="float32")
LABELS = np.array([0, 1, 2])


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


P = _softmax(LOGITS.astype("float64"))
P_TRUE = P[np.arange(3), LABELS]
ONE_HOT = np.eye(3)[LABELS]
MATRIX = np.array([[0.6, 0.4, 0.0], [0.0, 0.7, 0.3], [0.2, 0.0, 0.8]])

EXPECTED = {
    # alpha * CE + beta * RCE, with log 0 = -4 in the reverse term.
    "sce": 0.1 * -np.log(P_TRUE) + 1.0 * -np.sum(P * np.where(ONE_HOT > 0, 0.0, -4.0), axis=1),
    "gce": (1 - P_TRUE**0.7) / 0.7,
    "bootstrap": -np.sum((0.95 * ONE_HOT + 0.05 * P) * np.log(P), axis=1),
    "forward": -np.log((P @ MATRIX)[np.arange(3), LABELS]),
}
LOSSES = {
    "sce": lambda: losses.SymmetricCrossEntropy(),
    "gce": lambda: losses.GeneralizedCrossEntropy(),
    "bootstrap": lambda: losses.SoftBootstrapping(),
    "forward": lambda: losses.ForwardCorrection(MATRIX),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_baseline_loss_matches_numpy(name):
    loss = LOSSES[name]()
    assert float(loss(LABELS, LOGITS)) == pytest.approx(EXPECTED[name].mean(), rel=1e-5)
    per_example = LOSSES[name]().call(LABELS, LOGITS)
    np.testing.assert_allclose(per_example, EXPECTED[name], rtol=1e-5)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_baseline_loss_survives_serialization(name):
    loss = LOSSES[name]()
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(restored) is type(loss)
    assert float(restored(LABELS, LOGITS)) == pytest.approx(float(loss(LABELS, LOGITS)))


def test_baseline_loss_trains_a_model_with_fit():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss=losses.GeneralizedCrossEntropy())
    history = model.fit(x, y, epochs=5, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: losses.GeneralizedCrossEntropy(q=0.0), "Received: q=0.0. Expected a float in"),
        (lambda: losses.SoftBootstrapping(beta=1.5), "Received: beta=1.5"),
        (lambda: losses.SymmetricCrossEntropy(log_zero=1.0), "Expected a negative float"),
        (lambda: losses.SymmetricCrossEntropy(alpha=-1), "Received: alpha=-1"),
        (lambda: losses.ForwardCorrection(np.ones((2, 3))), "Expected a square"),
        (lambda: losses.ForwardCorrection([[0.5, 0.4], [0.0, 1.0]]), "row sums \\[0.9, 1.0\\]"),
    ],
)
def test_baseline_loss_rejects_invalid_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_forward_correction_rejects_a_matrix_of_another_class_count():
    with pytest.raises(ValueError, match="transition matrix is 2×2 but the classifier outputs 3"):
        losses.ForwardCorrection(np.eye(2))(LABELS, LOGITS)


def test_estimated_transition_matrix_recovers_the_true_one():
    # Noisy-label posteriors of a perfect clean classifier: rows of T for confident
    # examples, mixed for ambiguous ones.
    rng = np.random.default_rng(0)
    clean = rng.dirichlet(np.full(3, 0.05), size=3000)
    estimated = noise.estimate_transition_matrix(clean @ MATRIX, percentile=100)
    np.testing.assert_allclose(estimated, MATRIX, atol=0.02)
    at_97 = noise.estimate_transition_matrix(clean @ MATRIX)
    np.testing.assert_allclose(at_97.sum(axis=1), 1.0)
    np.testing.assert_allclose(at_97, MATRIX, atol=0.1)


def test_estimate_transition_matrix_rejects_logits():
    with pytest.raises(ValueError, match="softmax outputs, not logits"):
        noise.estimate_transition_matrix(LOGITS)
