"""The paper's architectures."""

import keras
import numpy as np
import pytest

from mln_tf import classifiers


def test_fashion_cnn_matches_the_authors_architecture():
    model = classifiers.fashion_cnn(num_classes=10)
    kinds = [type(layer).__name__ for layer in model.layers[1:]]
    assert kinds == [
        "Conv2D",
        "Conv2D",
        "MaxPooling2D",
        "Dropout",
        "Flatten",
        "Dense",
        "Dropout",
        "Dense",
    ]
    assert [model.get_layer(n).filters for n in ("conv1", "conv2")] == [32, 64]
    assert model.get_layer("features").units == 128
    assert [model.get_layer(n).rate for n in ("dropout1", "dropout2")] == [0.25, 0.5]
    assert model.output_shape == (None, 10)
    # 3·3·1·32+32 + 3·3·32·64+64 + 12·12·64·128+128 + 128·10+10
    assert model.count_params() == 320 + 18_496 + 1_179_776 + 1_290


def test_cifar10_cnn_matches_the_paper():
    model = classifiers.cifar10_cnn(num_classes=10)
    convs = [layer.filters for layer in model.layers if type(layer).__name__ == "Conv2D"]
    assert convs == [64, 64, 128, 128, 196, 196]
    batch_norms = [layer for layer in model.layers if type(layer).__name__ == "BatchNormalization"]
    assert len(batch_norms) == 7  # one per convolution and one on the 256-unit layer
    assert model.get_layer("features").output.shape == (None, 256)
    assert model(np.zeros((2, 32, 32, 3), "float32")).shape == (2, 10)


def test_resnet50_random_init_and_user_weights_file(tmp_path):
    model = classifiers.resnet50(num_classes=5, input_shape=(32, 32, 3))
    assert model.get_layer("features").output.shape == (None, 2048)
    backbone = model.get_layer("resnet50")
    path = tmp_path / "backbone.weights.h5"
    backbone.save_weights(path)
    loaded = classifiers.resnet50(num_classes=5, input_shape=(32, 32, 3), weights=str(path))
    for a, b in zip(backbone.get_weights(), loaded.get_layer("resnet50").get_weights()):
        np.testing.assert_array_equal(a, b)


def test_resnet50_rejects_a_missing_weights_file():
    with pytest.raises(ValueError, match="never downloads weights"):
        classifiers.resnet50(num_classes=5, weights="imagenet")


def test_invalid_class_count():
    with pytest.raises(
        ValueError, match="Received: num_classes=1. Expected an integer of at least 2"
    ):
        classifiers.fashion_cnn(num_classes=1)


def test_builders_return_uncompiled_built_models():
    model = classifiers.fashion_cnn()
    assert model.built and not model.compiled
    assert isinstance(model, keras.Model)


def test_pretrained_backbones_get_the_input_scaling_of_their_imagenet_weights():
    images = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype("float32")
    resnet = classifiers.resnet50(3, input_shape=(32, 32, 3))
    caffe = resnet.get_layer("caffe_preprocessing")(images)
    expected = keras.applications.resnet50.preprocess_input(images * 255.0)
    np.testing.assert_allclose(caffe, expected, rtol=1e-5, atol=1e-3)
    inception = classifiers.inception_resnet_v2(3, input_shape=(75, 75, 3))
    scaled = inception.get_layer("inception_preprocessing")(images)
    np.testing.assert_allclose(scaled, images * 2.0 - 1.0, rtol=1e-6, atol=1e-6)
