"""clothing1m: Clothing1M (Xiao et al., CVPR 2015) read from its official files.

Clothing1M is a million clothing images from shopping websites, labelled by the text
around them (about 38% of these labels are wrong), plus smaller sets with labels checked
by people. It cannot be downloaded automatically: the authors give access on request.
This builder reads the official key lists and label files from the manual folder.

Example:

>>> import tensorflow_datasets as tfds
>>> import mln_tf  # registers the builder
>>> noisy_train = tfds.load("clothing1m", split="noisy_train", download_and_prepare_kwargs={
...     "download_config": tfds.download.DownloadConfig(manual_dir="/data/clothing1m")})
"""

from __future__ import annotations

import pathlib

import tensorflow_datasets as tfds

# The 14 classes, in the order of the official `category_names_eng.txt`.
CLASS_NAMES = (
    "T-Shirt", "Shirt", "Knitwear", "Chiffon", "Sweater", "Hoodie", "Windbreaker",
    "Jacket", "Down Coat", "Suit", "Shawl", "Dress", "Vest", "Underwear",
)
# Split name -> (key list file, label file).
SPLIT_FILES = {
    "noisy_train": ("noisy_train_key_list.txt", "noisy_label_kv.txt"),
    "clean_train": ("clean_train_key_list.txt", "clean_label_kv.txt"),
    "clean_val": ("clean_val_key_list.txt", "clean_label_kv.txt"),
    "clean_test": ("clean_test_key_list.txt", "clean_label_kv.txt"),
}
CATEGORY_NAMES_FILE = "category_names_eng.txt"
# The official archive keeps the text files in `annotations/`; some copies keep them at
# the top. Both are accepted.
ANNOTATION_FOLDERS = ("annotations", ".")


class Clothing1mFilesError(FileNotFoundError):
    """Raised when the manual folder lacks a Clothing1M file; says what goes where."""


class Clothing1m(tfds.core.GeneratorBasedBuilder):
    """Clothing1M: noisy_train (web labels) and clean_train/val/test (checked labels)."""

    name = "clothing1m"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Request Clothing1M from its authors (https://github.com/Cysu/noisy_label), then arrange
    the manual folder as:

        <manual_dir>/
          annotations/            (or these files directly in <manual_dir>)
            noisy_label_kv.txt        lines "images/0/00/1000000000.jpg 4"
            clean_label_kv.txt        same format
            noisy_train_key_list.txt  one image key per line
            clean_train_key_list.txt
            clean_val_key_list.txt
            clean_test_key_list.txt
            category_names_eng.txt    optional; 14 lines
          images/                 the ten archives images/0.tar ... images/9.tar,
            0/00/1000000000.jpg   extracted in place: each key is a path under
            ...                   <manual_dir>

    and pass it as `tfds.download.DownloadConfig(manual_dir=<manual_dir>)` (or use
    `<data_dir>/downloads/manual/`).
    """

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                    "label": tfds.features.ClassLabel(names=list(CLASS_NAMES)),
                    "key": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://github.com/Cysu/noisy_label",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        root = pathlib.Path(dl_manager.manual_dir)
        _check_category_names(root)
        labels = {
            name: read_label_file(_find_annotation(root, name))
            for name in {label_file for _, label_file in SPLIT_FILES.values()}
        }
        return {
            split: self._generate_examples(
                root, read_key_list(_find_annotation(root, key_file)), labels[label_file]
            )
            for split, (key_file, label_file) in SPLIT_FILES.items()
        }

    def _generate_examples(self, root: pathlib.Path, keys: list, labels: dict):
        for key in keys:
            if key not in labels:
                raise ValueError(
                    f"Invalid Clothing1M annotations in {root}. Received: the key {key!r} "
                    "with no label. Expected every key of a key list in its label file."
                )
            path = root / key
            if not path.is_file():
                raise Clothing1mFilesError(
                    f"Clothing1M image not found: {path}. Extract the archives "
                    "images/0.tar ... images/9.tar in place, so that every key is a path "
                    f"under {root}."
                )
            yield key, {"image": path, "label": labels[key], "key": key}


def read_label_file(path: pathlib.Path) -> dict:
    """Reads a `key label` file into a dict from image key to int label."""
    labels = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit() or int(parts[1]) >= len(CLASS_NAMES):
            raise ValueError(
                f"Invalid Clothing1M label file {path}, line {number}. Received: {line!r}. "
                f"Expected 'images/<...>.jpg <label>' with a label in [0, {len(CLASS_NAMES)})."
            )
        labels[parts[0]] = int(parts[1])
    return labels


def read_key_list(path: pathlib.Path) -> list:
    """Reads a key list: one image key per line."""
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _find_annotation(root: pathlib.Path, name: str) -> pathlib.Path:
    for folder in ANNOTATION_FOLDERS:
        if (root / folder / name).is_file():
            return root / folder / name
    raise Clothing1mFilesError(
        f"Clothing1M file {name} not found in {root} or {root / 'annotations'}. "
        + Clothing1m.MANUAL_DOWNLOAD_INSTRUCTIONS
    )


def _check_category_names(root: pathlib.Path) -> None:
    for folder in ANNOTATION_FOLDERS:
        path = root / folder / CATEGORY_NAMES_FILE
        if path.is_file():
            names = [line for line in path.read_text().splitlines() if line.strip()]
            if len(names) != len(CLASS_NAMES):
                raise ValueError(
                    f"Invalid Clothing1M category file {path}. Received: {len(names)} "
                    f"names. Expected {len(CLASS_NAMES)}."
                )
            return

