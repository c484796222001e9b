"""What the noisy TFDS builders share: typed configs, features and example generation.

A noisy builder reads a clean `ArraySource` and writes three splits with
`mln_tf.data.make_noisy_split`, the function `load_noisy` uses (with `validation_size=0`:
the builders have no clean validation split):

- `train`: the noisy training set (`label` noisy, `clean_label` true);
- `meta`: the clean, class-balanced meta set, drawn from the training split;
- `test`: the test split, clean.

Each example also carries `index`, its position in the source's training (or test) split,
which is also its example key.
"""

from __future__ import annotations

import abc
import dataclasses
import io

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from mln_tf.data.noisy_data import make_noisy_split
from mln_tf.data.sources import ArraySource

# The configs every noisy builder offers: (name, noise, rate).
NOISE_CONFIGS = (
    ("clean", "none", 0.0),
    ("symmetric_20", "symmetric", 0.2),
    ("symmetric_40", "symmetric", 0.4),
    ("symmetric_60", "symmetric", 0.6),
    ("symmetric_80", "symmetric", 0.8),
    ("pair_45", "pair", 0.45),
    ("feature_dependent_40", "feature_dependent", 0.4),
)
# Fastest zlib level: the images are tiny and PNG is lossless at every level.
PNG_COMPRESS_LEVEL = 1


@dataclasses.dataclass
class NoisyConfig(tfds.core.BuilderConfig):
    """A noise model, its rate, the meta set size and the seed of one builder config.

    Attributes:
        noise: str, a name of `mln_tf.noise.NOISE_TYPES`.
        rate: float, the noise rate.
        meta_size: int, the clean meta set size.
        seed: int, the seed of the meta split and of the noise.
    """

    noise: str = "symmetric"
    rate: float = 0.4
    meta_size: int = 1000
    seed: int = 0


def make_configs(*, meta_size: int, seed: int = 0) -> list[NoisyConfig]:
    """Returns one `NoisyConfig` per entry of `NOISE_CONFIGS`."""
    return [
        NoisyConfig(
            name=name,
            description=f"{noise} noise at rate {rate}, a clean meta set of {meta_size}, "
            f"seed {seed}.",
            noise=noise,
            rate=rate,
            meta_size=meta_size,
            seed=seed,
        )
        for name, noise, rate in NOISE_CONFIGS
    ]


def encode_png(image: np.ndarray) -> bytes:
    """Encodes a uint8 `(H, W, 1)` or `(H, W, 3)` image as PNG bytes.

    PIL is about ten times faster than TFDS's own per-example TensorFlow encoder, which
    matters for the 70,000 Fashion-MNIST images.
    """
    pil_image = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    buffer = io.BytesIO()
    pil_image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


class NoisyImageBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base class of builders that add synthetic noise and a meta split to a clean source.

    Subclasses set `IMAGE_SHAPE`, `CLASS_NAMES`, `HOMEPAGE`, `BUILDER_CONFIGS`, `VERSION`
    and `RELEASE_NOTES`, and implement `_load_source`.
    """

    IMAGE_SHAPE: tuple = ()
    CLASS_NAMES: tuple = ()
    HOMEPAGE: str = ""

    @abc.abstractmethod
    def _load_source(self, dl_manager: tfds.download.DownloadManager) -> ArraySource:
        """Returns the clean dataset."""

    def _info(self) -> tfds.core.DatasetInfo:
        labels = tfds.features.ClassLabel(names=list(self.CLASS_NAMES))
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=self.IMAGE_SHAPE),
                    "label": labels,
                    "clean_label": tfds.features.ClassLabel(names=list(self.CLASS_NAMES)),
                    "index": tfds.features.Scalar(dtype=np.int64),
                }
            ),
            supervised_keys=("image", "label"),
            homepage=self.HOMEPAGE,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        source = self._load_source(dl_manager)
        config = self.builder_config
        noisy = make_noisy_split(
            source,
            noise=config.noise,
            rate=config.rate,
            meta_size=config.meta_size,
            seed=config.seed,
        )
        split = noisy.split
        train_clean = source.train_labels
        return {
            "train": self._generate_examples(
                source.train_images, noisy.train_noisy_labels, train_clean, split.train_indices
            ),
            "meta": self._generate_examples(
                source.train_images,
                train_clean[split.meta_indices],
                train_clean,
                split.meta_indices,
            ),
            "test": self._generate_examples(
                source.test_images,
                source.test_labels,
                source.test_labels,
                np.arange(source.test_labels.size),
            ),
        }

    def _generate_examples(self, images, labels, clean_labels, indices):
        """Yields `(index, example)`; `labels[i]` belongs to `indices[i]`."""
        for label, index in zip(labels, indices, strict=True):
            yield int(index), {
                "image": encode_png(images[index]),
                "label": int(label),
                "clean_label": int(clean_labels[index]),
                "index": int(index),
            }
