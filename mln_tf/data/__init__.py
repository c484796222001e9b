"""Data for MetaLabelNet: noisy training sets, clean meta sets and their pipelines.

Notation (as in `mln_tf.noise`): N examples, K classes, the noisy training set D_n, the
small clean meta set D_m (class-balanced, drawn from the training split, disjoint from D_n
by index, never from a test split), the clean validation set D_v (drawn the same way,
disjoint from D_m: it alone selects models and hyper-parameters) and an optional
unlabeled set D_u.

- `load_noisy`: Fashion-MNIST (offline files) or scikit-learn's digits, with any noise
  model of `mln_tf.noise` at any rate, a meta set, a validation set and an unlabeled set.
- `load_cifar10_n`, `load_cifar100_n`, `load_controlled_noisy_web_labels`: real noisy
  datasets from TFDS, with meta and validation sets carved out of their training split.
- `load_clothing1m`: Clothing1M from its official files, with a meta set drawn from its
  clean training split and its clean validation split.
- `split_meta`: the one function that draws D_m, D_v and D_u from a training pool.
- `with_meta`, `cache_features`, `preprocess`, `batched`: `tf.data` pipelines for
  `MetaLabelNet.fit`.
- Importing this package registers the TFDS builders `noisy_fashion_mnist`,
  `noisy_digits` and `clothing1m`.

Example:

>>> data = load_noisy("digits", noise="pair", rate=0.45, meta_size=100, seed=0)
>>> train = with_meta(data.train, data.meta, batch_size=32)
"""

from mln_tf.data import datasets
from mln_tf.data.adapters import (
    CIFAR10N_LABEL_KEYS,
    CNWL_NOISE_LEVELS,
    DatasetNotPreparedError,
    load_cifar10_n,
    load_cifar100_n,
    load_clothing1m,
    load_controlled_noisy_web_labels,
)
from mln_tf.data.noisy_data import (
    NoisyData,
    NoisySplit,
    load_noisy,
    make_noisy_split,
)
from mln_tf.data.pipeline import UNLABELED, cache_features, with_meta
from mln_tf.data.preprocessing import (
    batched,
    channel_stats,
    normalize,
    normalize_and_augment,
    preprocess,
    random_crop_and_flip,
)
from mln_tf.data.sources import (
    DATASETS,
    DEFAULT_FASHION_MNIST_DIR,
    DEFAULT_META_SIZE,
    DEFAULT_META_SIZES,
    DEFAULT_VALIDATION_SIZE,
    DEFAULT_VALIDATION_SIZES,
    ArraySource,
    DatasetFilesNotFoundError,
    default_meta_size,
    default_validation_size,
    load_source,
)
from mln_tf.data.splits import MetaSplit, split_meta

__all__ = [
    "CIFAR10N_LABEL_KEYS",
    "CNWL_NOISE_LEVELS",
    "DATASETS",
    "DEFAULT_FASHION_MNIST_DIR",
    "DEFAULT_META_SIZE",
    "DEFAULT_META_SIZES",
    "DEFAULT_VALIDATION_SIZE",
    "DEFAULT_VALIDATION_SIZES",
    "UNLABELED",
    "ArraySource",
    "DatasetFilesNotFoundError",
    "DatasetNotPreparedError",
    "MetaSplit",
    "NoisyData",
    "NoisySplit",
    "batched",
    "cache_features",
    "channel_stats",
    "datasets",
    "default_meta_size",
    "default_validation_size",
    "load_cifar100_n",
    "load_cifar10_n",
    "load_clothing1m",
    "load_controlled_noisy_web_labels",
    "load_noisy",
    "load_source",
    "make_noisy_split",
    "normalize",
    "normalize_and_augment",
    "preprocess",
    "random_crop_and_flip",
    "split_meta",
    "with_meta",
]
