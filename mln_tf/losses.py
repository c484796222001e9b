"""Losses of MetaLabelNet, written by hand from `log_softmax`.

Notation: B examples in a batch, C classes, logits z of shape (B, C), the classifier's
probabilities p = softmax(z), and the generator's soft labels q of shape (B, C).

Keras' categorical cross-entropy and `tf.nn.softmax_cross_entropy_with_logits` stop the
gradient with respect to the labels, so the meta-gradient that reaches the label generator
through q would be silently zero. These losses keep that path.

The loss-based baselines the authors compare against are Keras losses for plain
`model.fit` on the noisy labels: `SymmetricCrossEntropy`, `GeneralizedCrossEntropy`,
`SoftBootstrapping` and `ForwardCorrection`. Each takes integer labels and logits.
"""

import keras
import numpy as np
import tensorflow as tf

# Added inside log(q) so that a soft label of exactly 0 stays finite (the authors' value).
LOG_EPSILON = 1e-10


def soft_label_reverse_kl(logits, soft_labels, sum_over_classes=False):
    """Reverse KL divergence from the classifier to the soft labels, averaged over B×C.

    Args:
        logits: float tensor of shape `(B, C)`, the classifier's logits.
        soft_labels: float tensor of shape `(B, C)`, probabilities per row.
        sum_over_classes: bool, whether to sum over the classes and average over the batch
            only (C times the authors' mean over B×C, the scale of ordinary
            cross-entropy). Defaults to `False`.

    Returns:
        A scalar tensor. Its gradient reaches both `logits` and `soft_labels`.

    Formula:

    ```
    loss = mean_{i,j} p_ij * (log p_ij - log(q_ij + 1e-10)),   p = softmax(z)
    ```

    Example:

    >>> logits = tf.constant([[2.0, 0.0]])
    >>> float(soft_label_reverse_kl(logits, tf.nn.softmax(logits))) < 1e-6
    True
    """
    log_probs = tf.nn.log_softmax(logits, axis=-1)
    probs = tf.exp(log_probs)
    log_soft_labels = tf.math.log(tf.cast(soft_labels, log_probs.dtype) + LOG_EPSILON)
    return _reduce(probs * (log_probs - log_soft_labels), sum_over_classes)


def soft_label_cross_entropy(logits, soft_labels, sum_over_classes=False):
    """Cross-entropy of the classifier against the soft labels, averaged over B×C.

    Unlike `soft_label_reverse_kl`, the soft label comes first: its gradient with respect to
    the logits is p − ŷ (over C), as for ordinary cross-entropy, so a confident wrong
    prediction is still pulled towards the soft label.

    Args:
        logits: float tensor of shape `(B, C)`, the classifier's logits.
        soft_labels: float tensor of shape `(B, C)`, probabilities per row.
        sum_over_classes: bool, as in `soft_label_reverse_kl`. Defaults to `False`.

    Returns:
        A scalar tensor. Its gradient reaches both `logits` and `soft_labels`.

    Formula:

    ```
    loss = - mean_{i,j} q_ij * log p_ij,   p = softmax(z)
    ```

    Example:

    >>> round(float(soft_label_cross_entropy(tf.zeros((1, 2)), tf.constant([[1.0, 0.0]]),
    ...                                      sum_over_classes=True)), 4)  # log(2)
    0.6931
    """
    log_probs = tf.nn.log_softmax(logits, axis=-1)
    return -_reduce(tf.cast(soft_labels, log_probs.dtype) * log_probs, sum_over_classes)


def entropy_loss(logits, sum_over_classes=False):
    """Entropy of the classifier's predictions, averaged over B×C.

    Args:
        logits: float tensor of shape `(B, C)`.
        sum_over_classes: bool, as in `soft_label_reverse_kl`. Defaults to `False`.

    Returns:
        A scalar tensor.

    Formula:

    ```
    loss = - mean_{i,j} p_ij * log p_ij,   p = softmax(z)
    ```

    Example:

    >>> round(float(entropy_loss(tf.zeros((1, 2)))), 4)  # log(2) / 2
    0.3466
    """
    log_probs = tf.nn.log_softmax(logits, axis=-1)
    return -_reduce(tf.exp(log_probs) * log_probs, sum_over_classes)


def _reduce(elementwise, sum_over_classes):
    """The mean over B×C, or the batch mean of the sum over classes (C times larger)."""
    if sum_over_classes:
        return tf.reduce_mean(tf.reduce_sum(elementwise, axis=-1))
    return tf.reduce_mean(elementwise)


def meta_loss(labels, logits):
    """Cross-entropy of the classifier on the clean meta batch, averaged over the batch.

    The meta labels are constants: the gradient that matters flows through the logits.

    Args:
        labels: int tensor of shape `(B,)` or `(B, 1)`, hard clean labels in `[0, C)`;
            or a float tensor of shape `(B, C)` of one-hot or soft labels.
        logits: float tensor of shape `(B, C)`.

    Returns:
        A scalar tensor.

    Example:

    >>> round(float(meta_loss(tf.constant([0]), tf.zeros((1, 2)))), 4)  # log(2)
    0.6931
    """
    log_probs = tf.nn.log_softmax(logits, axis=-1)
    if labels.dtype.is_floating and labels.shape.rank == 2 and labels.shape[-1] != 1:
        targets = tf.cast(labels, log_probs.dtype)
    else:
        # A one-hot product rather than the sparse kernel: an out-of-range label then gives
        # a zero row instead of an error on one device and NaN on another, and the model's
        # own range check reports it.
        labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
        targets = tf.one_hot(labels, tf.shape(logits)[-1], dtype=log_probs.dtype)
    return -tf.reduce_mean(tf.reduce_sum(targets * log_probs, axis=-1))


# Loss-based baselines


def _sparse_probabilities(y_true, y_pred):
    """Integer labels of shape (B,) and the log-probabilities and probabilities of logits."""
    log_probs = tf.nn.log_softmax(tf.convert_to_tensor(y_pred), axis=-1)
    labels = tf.reshape(tf.cast(y_true, tf.int32), [-1])
    return labels, log_probs, tf.exp(log_probs)


def _check_positive(value, name):
    if not value > 0:
        raise ValueError(
            f"Invalid value for argument `{name}`. Received: {name}={value!r}. "
            "Expected a positive float."
        )
    return float(value)


@keras.saving.register_keras_serializable(package="mln_tf")
class SymmetricCrossEntropy(keras.losses.Loss):
    """Symmetric cross-entropy (Wang et al., ICCV 2019): CE plus reverse CE.

    The reverse term treats the given label as the prediction, with log 0 clipped to
    `log_zero`, so a confidently predicted class that disagrees with the label costs a
    bounded amount.

    Args:
        alpha: float, the weight of cross-entropy. Defaults to 0.1 (CIFAR-10 in the paper).
        beta: float, the weight of reverse cross-entropy. Defaults to 1.0.
        log_zero: float, the value taken for log 0 in the reverse term. Defaults to -4.
        **kwargs: passed to `keras.losses.Loss` (`name`, `reduction`).

    Formula:

    ```
    loss = alpha * -log p_y  +  beta * -log_zero * (1 - p_y),   p = softmax(logits)
    ```

    Example:

    >>> loss = SymmetricCrossEntropy()
    >>> round(float(loss([0], [[0.0, 0.0]])), 4)  # 0.1 * log 2 + 4 * 0.5
    2.0693
    """

    def __init__(self, alpha=0.1, beta=1.0, log_zero=-4.0, name="symmetric_cross_entropy",
                 **kwargs):  # fmt: skip
        super().__init__(name=name, **kwargs)
        self.alpha = _check_positive(alpha, "alpha")
        self.beta = _check_positive(beta, "beta")
        if not log_zero < 0:
            raise ValueError(
                f"Invalid value for argument `log_zero`. Received: log_zero={log_zero!r}. "
                "Expected a negative float (the clipped value of log 0)."
            )
        self.log_zero = float(log_zero)

    def call(self, y_true, y_pred):
        labels, log_probs, probs = _sparse_probabilities(y_true, y_pred)
        log_p_true = tf.gather(log_probs, labels, axis=-1, batch_dims=1)
        p_true = tf.exp(log_p_true)
        return self.alpha * -log_p_true + self.beta * -self.log_zero * (1.0 - p_true)

    def get_config(self):
        config = super().get_config()
        config.update(alpha=self.alpha, beta=self.beta, log_zero=self.log_zero)
        return config


@keras.saving.register_keras_serializable(package="mln_tf")
class GeneralizedCrossEntropy(keras.losses.Loss):
    """Generalized cross-entropy (Zhang & Sabuncu, NeurIPS 2018), the L_q loss.

    It moves from cross-entropy (q → 0) to the noise-robust mean absolute error (q = 1).

    Args:
        q: float in (0, 1]. Defaults to 0.7, the paper's value.
        **kwargs: passed to `keras.losses.Loss`.

    Formula:

    ```
    loss = (1 - p_y ** q) / q,   p = softmax(logits)
    ```

    Example:

    >>> round(float(GeneralizedCrossEntropy(q=1.0)([0], [[0.0, 0.0]])), 4)  # 1 - 0.5
    0.5
    """

    def __init__(self, q=0.7, name="generalized_cross_entropy", **kwargs):
        super().__init__(name=name, **kwargs)
        if not 0 < q <= 1:
            raise ValueError(
                f"Invalid value for argument `q`. Received: q={q!r}. Expected a float in (0, 1]."
            )
        self.q = float(q)

    def call(self, y_true, y_pred):
        labels, log_probs, _ = _sparse_probabilities(y_true, y_pred)
        log_p_true = tf.gather(log_probs, labels, axis=-1, batch_dims=1)
        return (1.0 - tf.exp(self.q * log_p_true)) / self.q

    def get_config(self):
        config = super().get_config()
        config.update(q=self.q)
        return config


@keras.saving.register_keras_serializable(package="mln_tf")
class SoftBootstrapping(keras.losses.Loss):
    """Soft bootstrapping (Reed et al., 2015): the target mixes the label and the prediction.

    The gradient flows through the prediction in the target too, as in the paper, so the
    loss is `beta` times cross-entropy plus `1 - beta` times the prediction's entropy.

    Args:
        beta: float in (0, 1], the weight of the given label. Defaults to 0.95.
        **kwargs: passed to `keras.losses.Loss`.

    Formula:

    ```
    loss = - sum_k (beta * y_k + (1 - beta) * p_k) * log p_k,   p = softmax(logits)
    ```

    Example:

    >>> round(float(SoftBootstrapping(beta=1.0)([0], [[0.0, 0.0]])), 4)  # log 2
    0.6931
    """

    def __init__(self, beta=0.95, name="soft_bootstrapping", **kwargs):
        super().__init__(name=name, **kwargs)
        if not 0 < beta <= 1:
            raise ValueError(
                f"Invalid value for argument `beta`. Received: beta={beta!r}. "
                "Expected a float in (0, 1]."
            )
        self.beta = float(beta)

    def call(self, y_true, y_pred):
        labels, log_probs, probs = _sparse_probabilities(y_true, y_pred)
        targets = self.beta * tf.one_hot(labels, tf.shape(log_probs)[-1], dtype=probs.dtype)
        targets += (1.0 - self.beta) * probs
        return -tf.reduce_sum(targets * log_probs, axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update(beta=self.beta)
        return config


@keras.saving.register_keras_serializable(package="mln_tf")
class ForwardCorrection(keras.losses.Loss):
    """Forward loss correction (Patrini et al., CVPR 2017) with a noise transition matrix.

    The classifier's clean-class probabilities are pushed through T, so the loss compares
    the predicted *noisy*-label distribution with the noisy label. Estimate T with
    `mln_tf.noise.estimate_transition_matrix`.

    Args:
        transition_matrix: array-like of shape `(C, C)`, row-stochastic:
            `T[i, j] = P(noisy label j | true class i)`.
        **kwargs: passed to `keras.losses.Loss`.

    Formula:

    ```
    loss = -log (p @ T)_y,   p = softmax(logits)
    ```

    Example:

    >>> loss = ForwardCorrection([[1.0, 0.0], [0.5, 0.5]])
    >>> round(float(loss([1], [[0.0, 0.0]])), 4)  # -log(0.5 * 0 + 0.5 * 0.5)
    1.3863
    """

    def __init__(self, transition_matrix, name="forward_correction", **kwargs):
        super().__init__(name=name, **kwargs)
        matrix = np.asarray(transition_matrix, dtype="float64")
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(
                "Invalid value for argument `transition_matrix`. "
                f"Received: an array of shape {matrix.shape}. Expected a square (C, C) matrix."
            )
        if np.any(matrix < 0) or not np.allclose(matrix.sum(axis=1), 1.0, atol=1e-4):
            raise ValueError(
                "Invalid value for argument `transition_matrix`. Expected a row-stochastic "
                "matrix: non-negative entries and every row summing to 1. Received row sums "
                f"{np.round(matrix.sum(axis=1), 4).tolist()}."
            )
        self.transition_matrix = matrix

    def call(self, y_true, y_pred):
        labels, _, probs = _sparse_probabilities(y_true, y_pred)
        matrix = tf.constant(self.transition_matrix, dtype=probs.dtype)
        if probs.shape[-1] is not None and probs.shape[-1] != matrix.shape[0]:
            raise ValueError(
                f"The transition matrix is {matrix.shape[0]}×{matrix.shape[0]} but the "
                f"classifier outputs {probs.shape[-1]} classes."
            )
        noisy_probs = tf.matmul(probs, matrix)
        p_label = tf.gather(noisy_probs, labels, axis=-1, batch_dims=1)
        return -tf.math.log(p_label + LOG_EPSILON)

    def get_config(self):
        config = super().get_config()
        config.update(transition_matrix=self.transition_matrix.tolist())
        return config
