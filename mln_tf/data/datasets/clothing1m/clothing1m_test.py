"""clothing1m on a tiny copy of the official layout, written by the test."""

import io

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from mln_tf.data.datasets.clothing1m import CLASS_NAMES
from mln_tf.data.datasets.clothing1m.clothing1m import Clothing1mFilesError

# key -> (noisy label or None, clean label or None, splits)
FIXTURE = {
    "images/0/00/1000000000.jpg": (3, None, ["noisy_train"]),
    "images/0/00/1000000001.jpg": (5, 5, ["noisy_train", "clean_train"]),
    "images/1/17/1000000002.jpg": (13, 0, ["noisy_train"]),
    "images/2/42/1000000003.jpg": (None, 7, ["clean_train"]),
    "images/3/03/1000000004.jpg": (None, 11, ["clean_val"]),
    "images/9/99/1000000005.jpg": (None, 2, ["clean_test"]),
    "images/9/99/1000000006.jpg": (None, 13, ["clean_test"]),
}


def write_fixture(root, *, annotations="annotations", examples=None):
    """Writes the official layout under `root`: random JPEGs and the annotation files.

    Args:
        root: `pathlib.Path`, the manual folder to write.
        annotations: str, the folder of the text files under `root`. Defaults to
            `"annotations"`.
        examples: optional dict from image key to `(noisy label or None, clean label or
            None, splits)`. Defaults to `FIXTURE`. Image i (in the dict's order) is
            `(12 + i, 10, 3)` pixels.
    """
    examples = FIXTURE if examples is None else examples
    rng = np.random.default_rng(0)
    notes = root / annotations
    notes.mkdir(parents=True, exist_ok=True)
    noisy_lines, clean_lines, lists = [], [], {s: [] for s in
                                              ("noisy_train", "clean_train", "clean_val",
                                               "clean_test")}
    for number, (key, (noisy, clean, splits)) in enumerate(examples.items()):
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 255, (12 + number, 10, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG")
        path.write_bytes(buffer.getvalue())
        if noisy is not None:
            noisy_lines.append(f"{key} {noisy}")
        if clean is not None:
            clean_lines.append(f"{key} {clean}")
        for split in splits:
            lists[split].append(key)
    (notes / "noisy_label_kv.txt").write_text("\n".join(noisy_lines) + "\n")
    (notes / "clean_label_kv.txt").write_text("\n".join(clean_lines) + "\n")
    for split, keys in lists.items():
        (notes / f"{split}_key_list.txt").write_text("\n".join(keys) + "\n")
    (notes / "category_names_eng.txt").write_text("\n".join(CLASS_NAMES) + "\n")


def build(root, data_dir):
    builder = tfds.builder("clothing1m", data_dir=data_dir)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(root))
    )
    return builder


@pytest.mark.parametrize("annotations", ["annotations", "."])
def test_reads_the_official_layout(tmp_path, annotations):
    write_fixture(tmp_path / "manual", annotations=annotations)
    builder = build(tmp_path / "manual", tmp_path / "data")
    assert set(builder.info.splits) == {"noisy_train", "clean_train", "clean_val", "clean_test"}
    for split in builder.info.splits:
        examples = list(builder.as_dataset(split=split).as_numpy_iterator())
        expected = {k: v for k, v in FIXTURE.items() if split in v[2]}
        assert {e["key"].decode() for e in examples} == set(expected)
        for example in examples:
            noisy, clean, _ = expected[example["key"].decode()]
            assert example["label"] == (noisy if split == "noisy_train" else clean)
            # The original JPEG, decoded: its size is the fixture's.
            number = list(FIXTURE).index(example["key"].decode())
            assert example["image"].shape == (12 + number, 10, 3)
    assert builder.info.features["label"].names == list(CLASS_NAMES)


def test_missing_image_says_to_extract_the_archives(tmp_path):
    write_fixture(tmp_path / "manual")
    (tmp_path / "manual" / "images/9/99/1000000005.jpg").unlink()
    with pytest.raises(Clothing1mFilesError, match="Extract the archives"):
        build(tmp_path / "manual", tmp_path / "data")


def test_missing_annotation_file(tmp_path):
    write_fixture(tmp_path / "manual")
    (tmp_path / "manual" / "annotations" / "clean_val_key_list.txt").unlink()
    with pytest.raises(Clothing1mFilesError, match="clean_val_key_list.txt not found"):
        build(tmp_path / "manual", tmp_path / "data")


def test_bad_label_line(tmp_path):
    write_fixture(tmp_path / "manual")
    path = tmp_path / "manual" / "annotations" / "clean_label_kv.txt"
    path.write_text(path.read_text() + "images/0/00/x.jpg 14\n")
    with pytest.raises(ValueError, match=r"line 7.*label in \[0, 14\)"):
        build(tmp_path / "manual", tmp_path / "data")


def test_key_without_label(tmp_path):
    write_fixture(tmp_path / "manual")
    path = tmp_path / "manual" / "annotations" / "clean_test_key_list.txt"
    path.write_text(path.read_text() + "images/0/00/1000000000.jpg\n")
    with pytest.raises(ValueError, match="with no label"):
        build(tmp_path / "manual", tmp_path / "data")
