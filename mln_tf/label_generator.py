"""The label generator g_φ and the frozen feature extractor h it reads.

h is a copy of the warmed-up classifier, cut at its feature layer and frozen. g_φ is a
single softmax layer: ŷ = softmax(W·h(x) + b), or with `label_input`
ŷ = softmax(W·h(x) + V·onehot(ỹ) + b), V starting at κ·I (`docs/algorithm.md`).
"""

import keras
import numpy as np
import tensorflow as tf


def freeze_feature_extractor(classifier, feature_layer):
    """A frozen copy of `classifier` that outputs `feature_layer`'s activations.

    Args:
        classifier: a functional or Sequential `keras.Model`.
        feature_layer: str, the layer whose output is the feature vector, or `None` for the
            input of the classifier's last layer.

    Returns:
        A `keras.Model` named `"feature_extractor"`, not trainable.
    """
    layer_names = [layer.name for layer in classifier.layers]
    if feature_layer is not None and feature_layer not in layer_names:
        raise ValueError(
            f"The classifier {classifier.name!r} has no layer named {feature_layer!r}. "
            f"Its layers are: {', '.join(layer_names)}. Pass `feature_layer=` the name of "
            "its penultimate (feature) layer."
        )
    try:
        copy = keras.models.clone_model(classifier)
    except ValueError as error:
        raise ValueError(
            "MetaLabelNet cuts the feature extractor from a copy of the classifier, which "
            "needs a functional or Sequential model. For a subclassed classifier, pass "
            "`feature_extractor=` a model that maps images to features."
        ) from error
    copy.set_weights(classifier.get_weights())
    if feature_layer is None:
        features = copy.layers[-1].input
    else:
        features = copy.get_layer(feature_layer).output
    inputs = copy.inputs[0] if len(copy.inputs) == 1 else copy.inputs
    extractor = keras.Model(inputs, features, name="feature_extractor")
    extractor.trainable = False
    return extractor


def refresh_feature_extractor(extractor, classifier):
    """Copies `classifier`'s current weights into an extractor cut from it."""
    names = {layer.name for layer in classifier.layers}
    for layer in extractor.layers:
        if layer.weights and layer.name not in names:
            raise ValueError(
                f"The feature extractor's layer {layer.name!r} is not a layer of the "
                "classifier: only an extractor cut from the classifier can be refreshed."
            )
        if layer.weights:
            layer.set_weights(classifier.get_layer(layer.name).get_weights())


def build_label_generator(num_features, num_classes, label_input=False):
    """The single-layer perceptron g_φ: Dense(C) with softmax, on [h(x), onehot(ỹ)] with
    `label_input`."""
    size = num_features + num_classes if label_input else num_features
    inputs = keras.Input((size,), name="features_and_label" if label_input else "features")
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="soft_labels")(inputs)
    return keras.Model(inputs, outputs, name="label_generator")


def initialize_label_generator(generator, num_features, head, label_input, label_trust):
    """Sets W, b from the classifier's last layer `head` (if given) and V = κ·I.

    Raises:
        ValueError: if `head` is not a linear Dense layer from the features to the classes.
    """
    dense = generator.layers[-1]
    kernel = keras.ops.convert_to_numpy(dense.kernel).copy()
    bias = keras.ops.convert_to_numpy(dense.bias).copy()
    num_classes = kernel.shape[1]
    if head is not None:
        expected = (num_features, num_classes)
        head_kernel = getattr(head, "kernel", None)
        if (
            not isinstance(head, keras.layers.Dense)
            or tuple(head_kernel.shape) != expected
            or head.bias is None
            or head.activation not in (keras.activations.linear, None)
        ):
            raise ValueError(
                "Invalid value for argument `generator_init`. Received: generator_init="
                f"'classifier_head', but the classifier's last layer {head.name!r} is not a "
                f"Dense layer with a bias and no activation whose kernel has the shape "
                f"{expected} of (features, classes). Use generator_init='random'."
            )
        kernel[:num_features] = keras.ops.convert_to_numpy(head_kernel)
        bias[:] = keras.ops.convert_to_numpy(head.bias)
    if label_input:
        kernel[num_features:] = label_trust * np.eye(num_classes, dtype=kernel.dtype)
    dense.kernel.assign(kernel)
    dense.bias.assign(bias)


def generator_inputs(features, labels, num_classes, label_input):
    """g_φ's input: the features, and with `label_input` the one-hot given label (a zero row
    where the label is -1, unlabeled, or absent)."""
    if not label_input:
        return features
    if labels is None:
        zeros = tf.zeros([tf.shape(features)[0], num_classes], features.dtype)
        return tf.concat([features, zeros], axis=-1)
    one_hot = tf.one_hot(tf.reshape(tf.cast(labels, tf.int32), [-1]), num_classes)
    return tf.concat([features, tf.cast(one_hot, features.dtype)], axis=-1)
