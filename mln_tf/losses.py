"""Losses of MetaLabelNet, written by hand from `log_softmax`.

Notation: B examples in a batch, C classes, logits z of shape (B, C), the classifier's
probabilities p = softmax(z), and the generator's soft labels q of shape (B, C).

Keras' categorical cross-entropy and `tf.nn.softmax_cross_entropy_with_logits` stop the
gradient with respect to the labels, so the meta-gradient that reaches the label generator
through q would be silently zero. These losses keep that path.
"""

import tensorflow as tf

# Added inside log(q) so that a soft label of exactly 0 stays finite (the authors' value).
LOG_EPSILON = 1e-10


def soft_label_loss(logits, soft_labels):
    """Reverse KL divergence from the classifier to the soft labels, averaged over B×C.

    Args:
        logits: float tensor of shape `(B, C)`, the classifier's logits.
        soft_labels: float tensor of shape `(B, C)`, probabilities per row.

    Returns:
        A scalar tensor. Its gradient reaches both `logits` and `soft_labels`.

    Formula:

    ```
    loss = mean_{i,j} p_ij * (log p_ij - log(q_ij + 1e-10)),   p = softmax(z)
    ```

    Example:

    >>> logits = tf.constant([[2.0, 0.0]])
    >>> float(soft_label_loss(logits, tf.nn.softmax(logits))) < 1e-6
    True
    """
    log_probs = tf.nn.log_softmax(logits, axis=-1)
    probs = tf.exp(log_probs)
    log_soft_labels = tf.math.log(tf.cast(soft_labels, log_probs.dtype) + LOG_EPSILON)
    return tf.reduce_mean(probs * (log_probs - log_soft_labels))


def entropy_loss(logits):
    """Entropy of the classifier's predictions, averaged over B×C.

    Args:
        logits: float tensor of shape `(B, C)`.

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
    return -tf.reduce_mean(tf.exp(log_probs) * log_probs)


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
