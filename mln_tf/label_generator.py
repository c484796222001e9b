"""The label generator g_φ and the frozen feature extractor h it reads.

h is a copy of the warmed-up classifier, cut at its feature layer and frozen. g_φ is a
single softmax layer: ŷ = softmax(W·h(x) + b), or with `label_input`
ŷ = softmax(W·h(x) + V·onehot(ỹ) + b), V starting at κ·I (`docs/algorithm.md`).
"""

import keras
import numpy as np
import tensorflow as tf
from scipy.special import softmax

from mln_tf import clean_baselines, training_batch


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


def check_cut_from(extractor, classifier):
    """Raises a `ValueError` naming the extractor's layers with weights that are not the
    classifier's: only an extractor cut from the classifier can be refreshed."""
    names = {layer.name for layer in classifier.layers}
    foreign = [layer.name for layer in extractor.layers
               if layer.weights and layer.name not in names]  # fmt: skip
    if foreign:
        raise ValueError(
            f"The feature extractor's layer {foreign[0]!r} is not a layer of the "
            "classifier: only an extractor cut from the classifier can be refreshed."
        )


def refresh_feature_extractor(extractor, classifier):
    """Copies `classifier`'s current weights into an extractor cut from it."""
    check_cut_from(extractor, classifier)
    for layer in extractor.layers:
        if layer.weights:
            layer.set_weights(classifier.get_layer(layer.name).get_weights())


# Layers that pass their input through unchanged in inference mode.
_INFERENCE_IDENTITIES = (keras.layers.Dropout, keras.layers.SpatialDropout1D,
                         keras.layers.SpatialDropout2D, keras.layers.SpatialDropout3D,
                         keras.layers.GaussianDropout, keras.layers.GaussianNoise,
                         keras.layers.AlphaDropout)  # fmt: skip


def feeds_head(classifier, feature_layer):
    """Whether `feature_layer`'s output is, in inference mode, the input of the
    classifier's last layer (dropout and noise layers between count as identities)."""
    layer = classifier.layers[-1].input._keras_history.operation
    while isinstance(layer, _INFERENCE_IDENTITIES):
        layer = layer.input._keras_history.operation
    return layer is classifier.get_layer(feature_layer)


def build_label_generator(num_features, num_classes, label_input=False):
    """The single-layer perceptron g_φ: Dense(C) with softmax, on [h(x), onehot(ỹ)] with
    `label_input`."""
    size = num_features + num_classes if label_input else num_features
    inputs = keras.Input((size,), name="features_and_label" if label_input else "features")
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="soft_labels")(inputs)
    return keras.Model(inputs, outputs, name="label_generator")


def initialize_label_generator(generator, num_features, weights=None, label_weights=None):
    """Sets the generator's W, b to `weights` and V to `label_weights`, where given.

    Args:
        generator: the label generator from `build_label_generator`.
        num_features: int, F, the width of the features.
        weights: optional `(W, b)`, arrays of shapes `(F, C)` and `(C,)`.
        label_weights: optional V, an array of shape `(C, C)`: row ỹ is added to the logits
            of an example whose given label is ỹ (with `label_input` only).
    """
    dense = generator.layers[-1]
    kernel = keras.ops.convert_to_numpy(dense.kernel).copy()
    bias = keras.ops.convert_to_numpy(dense.bias).copy()
    if weights is not None:
        kernel[:num_features], bias[:] = weights
    if label_weights is not None:
        kernel[num_features:] = label_weights
    dense.kernel.assign(kernel)
    dense.bias.assign(bias)


def head_weights(head, num_features, num_classes):
    """The `(W, b)` of the classifier's last layer `head`, for `generator_init="classifier_head"`.

    Raises:
        ValueError: if `head` is not a linear Dense layer from the features to the classes.
    """
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
    return keras.ops.convert_to_numpy(head_kernel), keras.ops.convert_to_numpy(head.bias)


# A class the meta set lacks starts this far below the lowest fitted logit.
MISSING_CLASS_OFFSET = 10.0
# The smallest noise-matrix entry whose log enters V: log(1e-4) ≈ −9.2 bounds the logits.
MIN_TRANSITION = 1e-4
# The inverse L2 strengths that `readout_regularization="cross_validated"` chooses among.
READOUT_CS = tuple(float(c) for c in np.logspace(-3, 1, 9))


def clean_posterior_weights(features, labels, num_classes, transition_matrix=None,
                            regularization=1.0, noisy=None):  # fmt: skip
    """`(W, b)` and V that make the generator's first soft labels the clean posterior.

    W and b are a multinomial logistic regression of the clean labels on the features
    (standardised for the fit, then folded back), so that softmax(W·h(x) + b) ≈ p(y | x).
    V is log Tᵀ: with the given label ỹ as input the logits gain log T[y, ỹ], and the soft
    labels become p(y | x, ỹ) ∝ p(y | x)·T[y, ỹ], the posterior under class-dependent noise.

    Args:
        features: float array `(N_m, F)`, the meta set's frozen features.
        labels: int array `(N_m,)`, its clean labels.
        num_classes: int, C.
        transition_matrix: optional `(C, C)` array, T[i, j] = P(ỹ = j | y = i), for V.
        regularization: float, the inverse L2 strength of the fit (scikit-learn's `C`).
            Defaults to 1.0.
        noisy: optional `(features, given_labels)` of the noisy training set: without
            `transition_matrix`, T is estimated from them (`noisy_label_transition_matrix`
            under the fitted read-out's posterior).

    Returns:
        `((W, b), V)`, with V `None` without `transition_matrix`.
    """
    from sklearn.linear_model import LogisticRegression

    features = np.asarray(features, dtype="float64")
    labels = np.asarray(labels)
    standardized, mean, scale = standardized_features(features)
    fit = LogisticRegression(C=regularization, max_iter=2000)
    fit.fit(standardized, labels)
    coef, intercept = fit.coef_, fit.intercept_
    if len(fit.classes_) == 2:  # scikit-learn keeps one row for two classes
        coef = np.concatenate([-coef / 2, coef / 2])
        intercept = np.concatenate([-intercept / 2, intercept / 2])
    kernel = np.zeros((features.shape[1], num_classes))
    fitted_bias = intercept - (coef / scale) @ mean
    bias = np.full(num_classes, fitted_bias.min() - MISSING_CLASS_OFFSET)
    kernel[:, fit.classes_] = (coef / scale).T
    bias[fit.classes_] = fitted_bias
    label_weights = None
    if transition_matrix is None and noisy is not None:
        noisy_features, noisy_labels = noisy
        posterior = softmax(np.asarray(noisy_features, "float64") @ kernel + bias, axis=1)
        transition_matrix = noisy_label_transition_matrix(posterior, noisy_labels, num_classes)
    if transition_matrix is not None:
        label_weights = np.log(np.maximum(np.asarray(transition_matrix), MIN_TRANSITION)).T
    return (kernel, bias), label_weights


def fit_clean_posterior(
    classifier,
    feature_extractor,
    meta_data,
    noisy_data=None,
    *,
    transition_estimate="meta_softmax",
    readout_regularization="fixed",
):
    """The weights of `generator_init="clean_posterior"`, fitted on the meta set.

    Args:
        classifier: the warmed-up classifier, whose softmax on the meta images estimates
            the noise matrix (`transition_estimate="meta_softmax"`).
        feature_extractor: the frozen extractor h the generator reads.
        meta_data: `(images, labels)` arrays or a dataset of pairs: the clean meta set.
        noisy_data: the same for the noisy training set, -1 for unlabeled; needed with
            `transition_estimate="noisy_labels"`. Defaults to `None`.
        transition_estimate: `"meta_softmax"` or `"noisy_labels"`.
        readout_regularization: `"fixed"` (C = 1) or `"cross_validated"`.

    Returns:
        `((W, b), V, C)`: as `clean_posterior_weights` returns, and the read-out's inverse
        L2 strength.

    Raises:
        ValueError: for meta data that is not images and labels in range, and for
            `"noisy_labels"` without `noisy_data`.
    """
    num_classes = int(classifier.output_shape[-1])
    images, labels = training_batch.labelled_arrays(
        meta_data, classifier.input_shape, num_classes, "meta_data"
    )
    features = feature_extractor.predict(images, batch_size=512, verbose=0)
    matrix = noisy = None
    if transition_estimate == "meta_softmax":
        matrix = clean_baselines.gold_transition_matrix(classifier, images, labels, num_classes)
    elif noisy_data is None:
        raise ValueError(
            "transition_estimate='noisy_labels' counts the given labels of the noisy "
            "training set: pass `noisy_data=(images, labels)` (or a dataset of "
            "pairs) to `initialize_label_generator` or `start_meta_stage`."
        )
    else:
        noisy_images, noisy_labels = training_batch.labelled_arrays(
            noisy_data, classifier.input_shape, num_classes, "noisy_data", allow_unlabeled=True
        )
        noisy_features = feature_extractor.predict(noisy_images, batch_size=512, verbose=0)
        noisy = (noisy_features, noisy_labels)
    regularization = 1.0
    if readout_regularization == "cross_validated":
        regularization = cross_validated_regularization(features, labels)
    weights, label_weights = clean_posterior_weights(
        features, labels, num_classes, matrix, regularization, noisy=noisy
    )
    return weights, label_weights, regularization


def cross_validated_regularization(features, labels, cs=READOUT_CS, folds=5, seed=0):
    """The inverse L2 strength C of `cs` whose read-out has the lowest log-loss in
    stratified k-fold cross-validation on `(features, labels)`, the meta set.

    A read-out fitted with too little regularisation on a thousand images is over-confident,
    and its posterior then overrules given labels that are right. With fewer than two images
    in some class there is nothing to validate on, and C is 1.

    Args:
        features: float array `(N_m, F)`, the meta set's frozen features.
        labels: int array `(N_m,)`, its clean labels.
        cs: the candidate values of C. Defaults to `READOUT_CS`.
        folds: int, at most this many folds (fewer if a class has fewer images).
            Defaults to 5.
        seed: int, the seed of the folds' shuffle. Defaults to 0.

    Returns:
        A float, the chosen C.
    """
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold

    labels = np.asarray(labels)
    _, counts = np.unique(labels, return_counts=True)
    folds = min(folds, int(counts.min()))
    if folds < 2 or len(counts) < 2:
        return 1.0
    standardized, _, _ = standardized_features(np.asarray(features, dtype="float64"))
    fit = LogisticRegressionCV(
        Cs=list(cs), cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
        scoring="neg_log_loss", max_iter=2000, l1_ratios=(0.0,), use_legacy_attributes=False,
    )  # fmt: skip
    fit.fit(standardized, labels)
    return float(np.ravel(fit.C_)[0])


def standardized_features(features):
    """Features scaled to mean 0 and standard deviation 1 per column (constant columns
    unscaled), with the mean and scale."""
    mean, scale = features.mean(axis=0), features.std(axis=0)
    scale[scale == 0] = 1.0
    return (features - mean) / scale, mean, scale


def noisy_label_transition_matrix(posterior, given_labels, num_classes):
    """T[i, j] = Σ_n q_n(i)·[ỹ_n = j] / Σ_n q_n(i): how the given labels fall, counted
    under a clean posterior q_n(i) ≈ p(y = i | x_n) of each noisy example.

    A class that no example is likely to be gets the identity row.
    """
    given_labels = np.asarray(given_labels)
    labeled = given_labels >= 0
    posterior = np.asarray(posterior, "float64")[labeled]
    counts = posterior.T @ np.eye(num_classes)[given_labels[labeled]]
    totals = counts.sum(axis=1, keepdims=True)
    return np.where(totals > 0, counts / np.maximum(totals, 1e-12), np.eye(num_classes))


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
