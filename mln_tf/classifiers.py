"""Classifier architectures of the MetaLabelNet paper and its code.

Each builder returns an uncompiled, built `keras.Model` that outputs logits. The penultimate
representation is a layer named `features`, the layer `MetaLabelNet` cuts the frozen feature
extractor at.
"""

import os

import keras
from keras import layers

# Name of the penultimate layer in every builder here.
FEATURE_LAYER = "features"


def fashion_cnn(num_classes=10, input_shape=(28, 28, 1), name="fashion_cnn"):
    """The Fashion-MNIST CNN of the authors' code.

    conv32 → conv64 → max-pool → dropout 0.25 → dense 128 (`features`) → dropout 0.5 →
    dense C (logits).

    Args:
        num_classes: int, the number of classes C. Defaults to 10.
        input_shape: tuple, the image shape. Defaults to `(28, 28, 1)`.
        name: str, the model name. Defaults to `"fashion_cnn"`.

    Returns:
        A built `keras.Model` mapping images to logits of shape `(batch, num_classes)`.

    Example:

    >>> model = fashion_cnn(num_classes=10)
    >>> model.output_shape
    (None, 10)
    """
    _check_num_classes(num_classes)
    inputs = keras.Input(input_shape, name="image")
    x = layers.Conv2D(32, 3, activation="relu", name="conv1")(inputs)
    x = layers.Conv2D(64, 3, activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(2, name="pool")(x)
    x = layers.Dropout(0.25, name="dropout1")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(128, activation="relu", name=FEATURE_LAYER)(x)
    x = layers.Dropout(0.5, name="dropout2")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def cifar10_cnn(num_classes=10, input_shape=(32, 32, 3), name="cifar10_cnn"):
    """The paper's CIFAR-10 network, trained from scratch.

    Six 3×3 convolutions (64, 64, 128, 128, 196, 196), each with batch normalisation and
    ReLU, a max-pool after each pair, then dense 256 with batch normalisation and ReLU
    (`features`) and dense C (logits).

    Args:
        num_classes: int, the number of classes C. Defaults to 10.
        input_shape: tuple, the image shape. Defaults to `(32, 32, 3)`.
        name: str, the model name. Defaults to `"cifar10_cnn"`.

    Returns:
        A built `keras.Model` mapping images to logits.

    Example:

    >>> cifar10_cnn().get_layer("features").output.shape
    (None, 256)
    """
    _check_num_classes(num_classes)
    inputs = keras.Input(input_shape, name="image")
    x = inputs
    for block, filters in enumerate((64, 128, 196), start=1):
        for conv in (1, 2):
            prefix = f"block{block}_conv{conv}"
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=prefix)(x)
            x = layers.BatchNormalization(name=f"{prefix}_bn")(x)
            x = layers.ReLU(name=f"{prefix}_relu")(x)
        x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(256, use_bias=False, name="features_dense")(x)
    x = layers.BatchNormalization(name="features_bn")(x)
    x = layers.ReLU(name=FEATURE_LAYER)(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def resnet50(num_classes, input_shape=(224, 224, 3), weights=None, name="resnet50"):
    """ResNet-50 from `keras.applications` with a fresh C-way head (Clothing1M, Food-101N).

    Nothing is downloaded: pass `weights=None` for random initialisation, or the path of a
    weights file you already have (for example ImageNet weights of
    `keras.applications.ResNet50(include_top=False)` saved with `save_weights`).

    Args:
        num_classes: int, the number of classes C.
        input_shape: tuple, the image shape. Defaults to `(224, 224, 3)`.
        weights: `None` or the path of a `.weights.h5` file for the backbone
            (`include_top=False`). Defaults to `None`.
        name: str, the model name. Defaults to `"resnet50"`.

    Returns:
        A built `keras.Model` whose global-average-pool layer is named `features`.

    Example:

    >>> resnet50(num_classes=14, input_shape=(64, 64, 3)).output_shape
    (None, 14)
    """
    return _application(keras.applications.ResNet50, num_classes, input_shape, weights, name,
                        preprocessing=CaffePreprocessing(name="caffe_preprocessing"))  # fmt: skip


def inception_resnet_v2(
    num_classes, input_shape=(299, 299, 3), weights=None, name="inception_resnet_v2"
):
    """InceptionResNetV2 from `keras.applications` with a fresh C-way head (WebVision).

    Nothing is downloaded; `weights` works as in `resnet50`.

    Args:
        num_classes: int, the number of classes C.
        input_shape: tuple, the image shape, at least 75×75. Defaults to `(299, 299, 3)`.
        weights: `None` or the path of a `.weights.h5` file for the backbone
            (`include_top=False`). Defaults to `None`.
        name: str, the model name. Defaults to `"inception_resnet_v2"`.

    Returns:
        A built `keras.Model` whose global-average-pool layer is named `features`.

    Example:

    >>> inception_resnet_v2(num_classes=50, input_shape=(75, 75, 3)).output_shape
    (None, 50)
    """
    # Its ImageNet weights expect images in [-1, 1].
    scale = layers.Rescaling(2.0, offset=-1.0, name="inception_preprocessing")
    return _application(
        keras.applications.InceptionResNetV2, num_classes, input_shape, weights, name, scale
    )


ARCHITECTURES = {
    "fashion_cnn": fashion_cnn,
    "cifar10_cnn": cifar10_cnn,
    "resnet50": resnet50,
    "inception_resnet_v2": inception_resnet_v2,
}


def build(architecture, num_classes, input_shape, weights=None):
    """Builds one of `ARCHITECTURES` by name.

    Args:
        architecture: str, a key of `ARCHITECTURES`.
        num_classes: int, the number of classes C.
        input_shape: tuple, the image shape.
        weights: optional path of backbone weights (ResNet-50 and InceptionResNetV2 only).
            Defaults to `None`.

    Returns:
        A built `keras.Model` that outputs logits, with a `features` layer.

    Example:

    >>> build("fashion_cnn", 10, (28, 28, 1)).output_shape
    (None, 10)
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(
            f"Invalid value for argument `architecture`. Received: architecture={architecture!r}."
            f" Expected one of {', '.join(repr(name) for name in ARCHITECTURES)}."
        )
    builder = ARCHITECTURES[architecture]
    if weights is not None:
        if architecture not in ("resnet50", "inception_resnet_v2"):
            raise ValueError(
                f"The architecture {architecture!r} is trained from scratch: it takes no "
                f"`weights`. Received: weights={weights!r}."
            )
        return builder(num_classes, input_shape=tuple(input_shape), weights=weights)
    return builder(num_classes, input_shape=tuple(input_shape))


@keras.saving.register_keras_serializable(package="mln_tf")
class CaffePreprocessing(layers.Layer):
    """ImageNet "caffe" preprocessing of images in [0, 1]: RGB to BGR, 0–255, mean removed.

    Keras' ResNet-50 ImageNet weights expect it (`keras.applications.resnet50.preprocess_input`).
    """

    MEAN_BGR = (103.939, 116.779, 123.68)

    def call(self, images):
        bgr = keras.ops.flip(images, axis=-1) * 255.0
        return bgr - keras.ops.convert_to_tensor(self.MEAN_BGR, dtype=bgr.dtype)


def _application(application, num_classes, input_shape, weights, name, preprocessing):
    _check_num_classes(num_classes)
    if weights is not None and not os.path.isfile(weights):
        raise ValueError(
            f"Invalid value for argument `weights`. Received: weights={weights!r}. "
            "Expected None or the path of an existing weights file; mln_tf never downloads "
            "weights at run time."
        )
    backbone = application(include_top=False, weights=None, input_shape=input_shape)
    if weights is not None:
        backbone.load_weights(weights)
    inputs = keras.Input(input_shape, name="image")
    # The scaling the backbone's ImageNet weights were trained with; images come in [0, 1].
    x = backbone(preprocessing(inputs))
    x = layers.GlobalAveragePooling2D(name=FEATURE_LAYER)(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def _check_num_classes(num_classes):
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(
            f"Invalid value for argument `num_classes`. Received: num_classes={num_classes!r}. "
            "Expected an integer of at least 2."
        )
