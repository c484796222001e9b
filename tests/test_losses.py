"""Golden values of the losses, and the silent-zero trap they avoid."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from mln_tf import losses

LOGITS = np.array([[2.0, 0.5, -1.0], [0.0, 0.0, 3.0]], dtype="float32")
SOFT_LABELS = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], dtype="float32")


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_soft_label_loss_golden_value():
    p = _softmax(LOGITS.astype("float64"))
    expected = np.mean(p * (np.log(p) - np.log(SOFT_LABELS + 1e-10)))  # over B×C = 6 entries
    loss = float(losses.soft_label_reverse_kl(LOGITS, SOFT_LABELS))
    assert loss == pytest.approx(expected, rel=1e-5)


def test_entropy_loss_golden_value():
    p = _softmax(LOGITS.astype("float64"))
    expected = -np.mean(p * np.log(p))
    assert float(losses.entropy_loss(LOGITS)) == pytest.approx(expected, rel=1e-5)


def test_meta_loss_sparse_and_one_hot_agree_with_numpy():
    labels = np.array([0, 2])
    p = _softmax(LOGITS.astype("float64"))
    expected = -np.mean(np.log(p[np.arange(2), labels]))
    sparse = float(losses.meta_loss(tf.constant(labels), LOGITS))
    one_hot = float(losses.meta_loss(tf.constant(np.eye(3, dtype="float32")[labels]), LOGITS))
    assert sparse == pytest.approx(expected, rel=1e-5)
    assert one_hot == pytest.approx(expected, rel=1e-5)


def _second_order_label_gradient(loss_fn, direction):
    """∂/∂q of ⟨∂L/∂z, v⟩: the path by which the meta-gradient reaches the soft labels."""
    logits, soft_labels = tf.constant(LOGITS), tf.constant(SOFT_LABELS)
    with tf.GradientTape() as outer:
        outer.watch(soft_labels)
        with tf.GradientTape() as inner:
            inner.watch(logits)
            loss = loss_fn(soft_labels, logits)
        logits_gradient = inner.gradient(loss, logits)
        projection = tf.reduce_sum(logits_gradient * direction)
    gradient = outer.gradient(projection, soft_labels)
    return np.zeros_like(SOFT_LABELS) if gradient is None else gradient.numpy()


def test_soft_label_loss_keeps_the_second_order_term_that_fused_cross_entropy_drops():
    direction = np.array([[1.0, -2.0, 0.5], [0.3, 0.2, -1.0]], dtype="float32")

    def fused(q, z):
        return tf.reduce_mean(keras.losses.categorical_crossentropy(q, z, from_logits=True))

    def ours(q, z):
        return losses.soft_label_reverse_kl(z, q)

    # The trap: the fused kernel's gradient treats the labels as constants at second order.
    np.testing.assert_array_equal(_second_order_label_gradient(fused, direction), 0.0)
    # By hand: ∂/∂q_il ⟨∂L/∂z, v⟩ = -p_il (v_il - Σ_k v_ik p_ik) / (B·C·(q_il + ε)).
    p = _softmax(LOGITS.astype("float64"))
    centred = direction - np.sum(direction * p, axis=1, keepdims=True)
    expected = -p * centred / (LOGITS.size * (SOFT_LABELS + 1e-10))
    np.testing.assert_allclose(
        _second_order_label_gradient(ours, direction), expected, rtol=1e-5, atol=1e-7
    )
