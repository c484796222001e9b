"""`load_clothing1m` on a small copy of Clothing1M's official layout.

The copy is written by the builder test's `write_fixture`, with enough clean training
images for a class-balanced meta set. Every image a loader yields is identified by
comparing it with the fixture's JPEG, decoded by PIL and resized by a NumPy bilinear
resize in float64: this checks the resize and where each image came from at once.
"""

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from mln_tf import train
from mln_tf.data import load_clothing1m
from mln_tf.data.datasets.clothing1m import CLASS_NAMES
from mln_tf.data.datasets.clothing1m.clothing1m import Clothing1mFilesError
from mln_tf.data.datasets.clothing1m.clothing1m_test import write_fixture
from mln_tf.options import PAPER
from mln_tf.train_config import TrainConfig

NUM_CLASSES = len(CLASS_NAMES)
CLEAN_TRAIN = [f"images/0/{number:02d}/20000000{number:02d}.jpg" for number in range(28)]
NOISY_ONLY = [f"images/1/{number:02d}/30000000{number:02d}.jpg" for number in range(16)]
# Images with a web label and a checked label, in noisy_train and clean_train.
SHARED = CLEAN_TRAIN[:4]
CLEAN_VAL = [f"images/2/00/40000000{number:02d}.jpg" for number in range(3)]
CLEAN_TEST = [f"images/3/00/50000000{number:02d}.jpg" for number in range(5)]


def _examples():
    examples = {}
    for number, key in enumerate(CLEAN_TRAIN):
        # Two clean training images per class.
        noisy = (number * 5 + 1) % NUM_CLASSES if key in SHARED else None
        splits = ["noisy_train", "clean_train"] if key in SHARED else ["clean_train"]
        examples[key] = (noisy, number // 2, splits)
    for number, key in enumerate(NOISY_ONLY):
        examples[key] = ((number * 3) % NUM_CLASSES, None, ["noisy_train"])
    for number, key in enumerate(CLEAN_VAL):
        examples[key] = (None, number, ["clean_val"])
    for number, key in enumerate(CLEAN_TEST):
        examples[key] = (None, (number * 4 + 2) % NUM_CLASSES, ["clean_test"])
    return examples


EXAMPLES = _examples()
NOISY_TRAIN = SHARED + NOISY_ONLY


@pytest.fixture(scope="module")
def clothing1m(tmp_path_factory):
    """The manual folder, and a TFDS data folder where Clothing1M gets prepared."""
    root = tmp_path_factory.mktemp("clothing1m")
    write_fixture(root / "manual", examples=EXAMPLES)
    return root / "manual", root / "data"


def bilinear_resize(image, size):
    """TensorFlow's bilinear resize (half-pixel centres, no antialiasing), in float64."""
    image = image.astype(np.float64)
    for axis in (0, 1):
        in_size = image.shape[axis]
        source = np.clip((np.arange(size) + 0.5) * in_size / size - 0.5, 0, in_size - 1)
        lower = np.floor(source).astype(int)
        upper = np.minimum(lower + 1, in_size - 1)
        weight = (source - lower).reshape([-1 if a == axis else 1 for a in range(3)])
        image = (np.take(image, lower, axis=axis) * (1 - weight)
                 + np.take(image, upper, axis=axis) * weight)  # fmt: skip
    return image


def expected_images(manual_dir, size):
    return {
        key: bilinear_resize(np.asarray(Image.open(manual_dir / key).convert("RGB")), size) / 255
        for key in EXAMPLES
    }


def identify(dataset, references):
    """The fixture key of each image of `dataset`, with its label and largest error."""
    keys, labels, errors = [], [], []
    for image, label in dataset.as_numpy_iterator():
        distances = {key: np.abs(image - reference).max() for key, reference in references.items()}
        key = min(distances, key=distances.get)
        keys.append(key)
        labels.append(int(label))
        errors.append(distances[key])
    return keys, np.array(labels), max(errors)


# float32 against float64: the pixels themselves must agree exactly.
PIXEL_TOLERANCE = 1e-5


@pytest.mark.parametrize("meta_size, image_size", [(14, 16), (21, 8)])
def test_noisy_train_meta_from_clean_train_test_from_clean_test(clothing1m, meta_size,
                                                                image_size):
    manual_dir, data_dir = clothing1m
    data = load_clothing1m(meta_size=meta_size, seed=3, data_dir=data_dir,
                           manual_dir=manual_dir, image_size=image_size)  # fmt: skip
    references = expected_images(manual_dir, image_size)
    assert data.num_classes == NUM_CLASSES and data.class_names == CLASS_NAMES
    assert data.image_shape == (image_size, image_size, 3)
    image, label = next(data.train.as_numpy_iterator())
    assert image.shape == (image_size, image_size, 3) and image.dtype == np.float32
    assert label.dtype == np.int32

    # Meta: distinct clean_train images with their checked labels, M // K or one more
    # per class.
    meta_keys, meta_labels, error = identify(data.meta, references)
    assert error < PIXEL_TOLERANCE
    assert len(set(meta_keys)) == meta_size and set(meta_keys) <= set(CLEAN_TRAIN)
    np.testing.assert_array_equal(meta_labels, [EXAMPLES[key][1] for key in meta_keys])
    np.testing.assert_array_equal(meta_labels, data.meta_labels)
    counts = np.bincount(meta_labels, minlength=NUM_CLASSES)
    assert counts.sum() == meta_size and counts.max() - counts.min() <= 1
    assert counts.min() == meta_size // NUM_CLASSES
    np.testing.assert_array_equal(np.sort(data.split.meta_indices), data.split.meta_indices)

    # Train: noisy_train with its web labels, less the images the meta set took (every
    # class gives at least one image, so classes 0 and 1 take at least two shared ones).
    assert len(set(SHARED) & set(meta_keys)) >= 2
    train_keys, train_labels, error = identify(data.train, references)
    assert error < PIXEL_TOLERANCE
    assert sorted(train_keys) == sorted(set(NOISY_TRAIN) - set(meta_keys))
    np.testing.assert_array_equal(train_labels, [EXAMPLES[key][0] for key in train_keys])
    np.testing.assert_array_equal(train_labels, data.train_noisy_labels)
    assert data.split.train_indices.size == len(train_keys)
    assert data.split.unlabeled_indices.size == 0 and data.unlabeled is None

    # Test: the whole clean_test, with checked labels.
    test_keys, test_labels, error = identify(data.test, references)
    assert error < PIXEL_TOLERANCE
    assert sorted(test_keys) == sorted(CLEAN_TEST)
    np.testing.assert_array_equal(test_labels, [EXAMPLES[key][1] for key in test_keys])

    # Sizes are known without reading the images.
    assert [int(d.cardinality()) for d in (data.train, data.meta, data.test)] == [
        len(train_keys), meta_size, len(CLEAN_TEST)
    ]
    # The web labels' correctness is unknown.
    assert data.train_clean_labels is None and data.noise_report is None
    assert np.isnan(data.noise_rate)


def test_max_noisy_examples_reads_the_first_examples(clothing1m):
    manual_dir, data_dir = clothing1m
    data = load_clothing1m(meta_size=14, data_dir=data_dir, manual_dir=manual_dir,
                           image_size=8, max_noisy_examples=6)  # fmt: skip
    first = [example["key"].decode() for example in tfds.load(
        "clothing1m", split="noisy_train", data_dir=data_dir, shuffle_files=False
    ).take(6).as_numpy_iterator()]  # fmt: skip
    train_keys, train_labels, _ = identify(data.train, expected_images(manual_dir, 8))
    meta_keys, _, _ = identify(data.meta, expected_images(manual_dir, 8))
    assert train_keys == [key for key in first if key not in meta_keys]
    np.testing.assert_array_equal(train_labels, [EXAMPLES[key][0] for key in train_keys])


def test_prepared_data_need_no_manual_folder(clothing1m):
    manual_dir, data_dir = clothing1m
    load_clothing1m(meta_size=14, data_dir=data_dir, manual_dir=manual_dir, image_size=8)
    data = load_clothing1m(meta_size=14, data_dir=data_dir, image_size=8)
    assert int(data.test.cardinality()) == len(CLEAN_TEST)


@pytest.mark.parametrize("manual", ["missing", "empty"])
def test_missing_manual_folder(tmp_path, manual):
    manual_dir = tmp_path / "manual"
    if manual == "empty":
        manual_dir.mkdir()
    with pytest.raises(Clothing1mFilesError, match=(
        rf"(?s)not prepared in {tmp_path / 'data'} and its manual folder {manual_dir} does "
        r"not exist or is empty\. Pass manual_dir=.*clean_label_kv\.txt"
    )):  # fmt: skip
        load_clothing1m(data_dir=tmp_path / "data", manual_dir=manual_dir)


def test_default_manual_folder_is_under_data_dir(tmp_path):
    expected = tmp_path / "data" / "downloads" / "manual"
    with pytest.raises(Clothing1mFilesError, match=rf"manual folder {expected} does not"):
        load_clothing1m(data_dir=tmp_path / "data")


def test_missing_annotation_file_gets_the_builder_message(tmp_path):
    write_fixture(tmp_path / "manual", examples=EXAMPLES)
    (tmp_path / "manual" / "annotations" / "clean_test_key_list.txt").unlink()
    with pytest.raises(Clothing1mFilesError, match="clean_test_key_list.txt not found"):
        load_clothing1m(data_dir=tmp_path / "data", manual_dir=tmp_path / "manual")


@pytest.mark.parametrize("meta_size", [28, 5000])
def test_meta_set_larger_than_clean_train(clothing1m, meta_size):
    manual_dir, data_dir = clothing1m
    with pytest.raises(ValueError, match=(
        rf"Received: meta_size={meta_size}\. Expected less than 28, the number of images "
        r"in Clothing1M's `clean_train` split"
    )):  # fmt: skip
        load_clothing1m(meta_size=meta_size, data_dir=data_dir, manual_dir=manual_dir)


def test_meta_set_smaller_than_the_class_count(clothing1m):
    manual_dir, data_dir = clothing1m
    with pytest.raises(ValueError, match="meta_size=13. Expected at least the number of "
                                         "classes, 14"):  # fmt: skip
        load_clothing1m(meta_size=13, data_dir=data_dir, manual_dir=manual_dir)


@pytest.mark.parametrize("argument", ["image_size", "max_noisy_examples"])
@pytest.mark.parametrize("value", [0, 2.5, True])
def test_invalid_sizes(tmp_path, argument, value):
    with pytest.raises(ValueError, match=(
        rf"Invalid value for argument `{argument}`\. Received: {argument}={value!r}\. "
        "Expected a positive integer"
    )):  # fmt: skip
        load_clothing1m(data_dir=tmp_path, **{argument: value})


def test_the_clothing1m_preset_loads_the_clean_splits_for_meta_and_validation(clothing1m):
    manual_dir, data_dir = clothing1m
    load_clothing1m(meta_size=14, data_dir=data_dir, manual_dir=manual_dir, image_size=8)
    config = TrainConfig.from_preset("clothing1m", data_dir=str(data_dir), meta_size=14)
    assert (config.architecture, config.batch_size, config.warmup_epochs, config.last_epoch,
            config.noise, config.options) == ("resnet50", 32, 1, 10, "web", PAPER)  # fmt: skip
    data = train.load_data(config)  # prepared above: no manual folder needed
    references = expected_images(manual_dir, 224)
    validation_keys, validation_labels, error = identify(data.validation, references)
    assert error < PIXEL_TOLERANCE
    assert sorted(validation_keys) == sorted(CLEAN_VAL)
    assert list(data.validation_labels) == [EXAMPLES[key][1] for key in validation_keys]
    assert data.meta_labels.size == 14
    with pytest.raises(ValueError, match="has one set of web labels"):
        TrainConfig.from_preset("clothing1m", label_set="aggre")
