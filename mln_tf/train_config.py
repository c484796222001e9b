"""The main job's configuration: `TrainConfig`, its presets and the names it accepts."""

import bisect
import dataclasses
import hashlib
import json
import warnings

import keras
import tensorflow as tf

from mln_tf import classifiers, noise
from mln_tf import data as mln_data
from mln_tf import options as options_lib

SYNTHETIC_DATASETS = ("fashion_mnist", "digits")
HUMAN_NOISE_DATASETS = ("cifar10_n", "cifar100_n")
# The synthetic noise rate when none is given (0 for `noise="none"`).
DEFAULT_RATE = 0.4
# Datasets whose noisy labels came from the web, with no per-image truth.
WEB_NOISE_DATASETS = ("clothing1m",)
DATASETS = SYNTHETIC_DATASETS + HUMAN_NOISE_DATASETS + WEB_NOISE_DATASETS
# The label sets of the datasets with human noise; the first is the default.
LABEL_SETS = {
    "cifar10_n": tuple(mln_data.CIFAR10N_LABEL_KEYS),
    "cifar100_n": ("noisy_fine",),
}

# The paper's hyper-parameters (`docs/algorithm.md`). Learning-rate boundaries are 0-based
# epochs. "paper" is the authors' algorithm on the default data and schedule. Those of
# Food-101N and WebVision are in `docs/algorithm.md`: mln_tf has no loader for them.
PRESETS = {
    "paper": dict(options=options_lib.PAPER),
    "cifar10": dict(
        options=options_lib.PAPER.replace(generator_learning_rate=1e-2),
        dataset="cifar10_n", label_set="worse", architecture="cifar10_cnn", batch_size=128,
        warmup_epochs=44, meta_epochs=76, learning_rates=(1e-2, 1e-3, 1e-4),
        lr_boundaries=(40, 80), meta_size=5000, augment=True,
    ),
    # ImageNet-pretrained ResNet-50: pass its backbone weights file as `backbone_weights`.
    "clothing1m": dict(
        options=options_lib.PAPER, dataset="clothing1m", architecture="resnet50",
        batch_size=32, warmup_epochs=1, meta_epochs=9, learning_rates=(1e-3, 1e-4),
        lr_boundaries=(5,), meta_size=5000,
    ),
}  # fmt: skip

# The fields that decide the warm-up's result, and so its cache key, besides the versions
# and the classifier's architecture (`TrainConfig.warm_up_key`).
WARM_UP_FIELDS = (
    "dataset", "noise", "rate", "label_set", "meta_size", "validation_size", "architecture",
    "backbone_weights",
    "warmup_epochs", "batch_size", "learning_rates", "lr_boundaries", "seed",
    "max_train_examples", "data_dir", "deterministic", "strategy", "devices", "augment",
)  # fmt: skip
# Names of an earlier release: `stage1` is `warmup_epochs`; `stage2` (and `epochs`) was the
# last epoch, `warmup_epochs + meta_epochs`.
DEPRECATED_FIELDS = ("stage1", "stage2", "epochs")
# The baselines that `baselines=True` trains besides cross-entropy, in this order: the
# loss-based ones, then those that also learn from the clean meta set.
BASELINES = (
    "symmetric_cross_entropy", "generalized_cross_entropy", "soft_bootstrapping",
    "forward_correction", "cross_entropy_clean", "gold_loss_correction", "fine_tune",
    "meta_weight_net", "meta_label_net_paper",
)  # fmt: skip


@dataclasses.dataclass
class TrainConfig:
    """Every setting of one run of the main job.

    Attributes:
        dataset: str, one of `DATASETS`. Defaults to `"fashion_mnist"`.
        noise: str, a noise model of `mln_tf.noise` (synthetic datasets only; `"human"`
            for the others). Defaults to `"feature_dependent"`.
        rate: optional float, the noise rate in [0, 1) (synthetic noise only). Defaults to
            `None`, which is 0.4, or 0 with `noise="none"`.
        label_set: optional str, the label set of a dataset with human noise (`LABEL_SETS`:
            CIFAR-10N's `"aggre"`, `"worse"`, `"random1"`…). Defaults to `None`, the first.
        meta_size: optional int, the size of the clean meta set. Defaults to `None`, the
            dataset's default: 1,000, or 100 for the 1,437 training images of `"digits"`.
        validation_size: optional int, the size of the clean validation set, disjoint from
            the meta set, that alone selects each method's epoch (at least the number of
            classes). Defaults to `None`, the dataset's default: 500, or 100 for
            `"digits"`.
        architecture: str, a key of `mln_tf.classifiers.ARCHITECTURES`. Defaults to
            `"fashion_cnn"`.
        backbone_weights: optional path of pre-trained backbone weights (ResNet-50 and
            InceptionResNetV2). Defaults to `None`.
        warmup_epochs: int, the cross-entropy warm-up's epochs. Defaults to 3.
        meta_epochs: int, the meta stage's epochs, after the warm-up. Defaults to 3.
        batch_size: int. Defaults to 64.
        meta_batch_size: optional int, the clean meta batch that each step of MetaLabelNet,
            Meta-Weight-Net, GLC and cross-entropy on noisy + meta takes. Defaults to
            `None`, `batch_size`.
        learning_rates: tuple of the classifier's SGD learning rates, one per interval of
            `lr_boundaries`. Defaults to `(1e-2,)`, constant.
        lr_boundaries: tuple of the 0-based epochs (counted from the warm-up's first)
            where the next learning rate starts. Defaults to `()`.
        augment: bool, whether every split is normalised by the meta set's channel
            statistics and the noisy training images randomly cropped and flipped
            (`mln_tf.data.preprocess`; the frozen features are then computed at every
            step, not cached). Defaults to `False` (the `cifar10` preset: `True`).
        options: `mln_tf.options.MetaLabelNetOptions`. Defaults to
            `mln_tf.options.RECOMMENDED` (the paper: `mln_tf.options.PAPER`).
        seed: int. Defaults to 0.
        jit_compile: bool or `"auto"`. Defaults to `"auto"` (XLA on a GPU only).
        deterministic: bool, whether to enable TensorFlow's deterministic ops. Defaults to
            `False`.
        max_train_examples: optional int, to train on the first examples only.
            Defaults to `None`.
        data_dir: optional str, the folder of the dataset's files. Defaults to `None`.
        baselines: bool, or a sequence of names from `BASELINES`: the baselines to train
            besides cross-entropy and MetaLabelNet, all of them with `True`. Defaults to
            `False`.
        clean_reference: bool, whether to also train cross-entropy on the true labels.
            Defaults to `False`.
        strategy: optional str, `"mirrored"` or `"multiworker"`: train every stage under
            that `tf.distribute` strategy (`mln_tf.distribute.build_strategy`), with
            `batch_size` as the global batch. Defaults to `None`, one device.
        devices: optional int, the number of devices per machine for `strategy`.
            Defaults to `None` (all GPUs, or one CPU device).
        warm_up_cache: bool, whether to reuse a cached warm-up with the same key, and cache
            this one. Defaults to `True`.
        preset: optional str, the key of `PRESETS` this configuration started from.
            Defaults to `None`.
    """

    dataset: str = "fashion_mnist"
    noise: str | None = "feature_dependent"
    rate: float | None = None
    label_set: str | None = None
    meta_size: int | None = None
    validation_size: int | None = None
    architecture: str = "fashion_cnn"
    backbone_weights: str | None = None
    warmup_epochs: int = 3
    meta_epochs: int = 3
    batch_size: int = 64
    meta_batch_size: int | None = None
    learning_rates: tuple = (1e-2,)
    lr_boundaries: tuple = ()
    augment: bool = False
    options: options_lib.MetaLabelNetOptions = options_lib.RECOMMENDED
    seed: int = 0
    jit_compile: object = "auto"
    deterministic: bool = False
    max_train_examples: int | None = None
    data_dir: str | None = None
    baselines: bool | tuple = False
    clean_reference: bool = False
    strategy: str | None = None
    devices: int | None = None
    warm_up_cache: bool = True
    preset: str | None = None

    @classmethod
    def from_settings(cls, preset=None, **settings):
        """A configuration from flat settings: its fields, MetaLabelNet's options by name,
        and the names of an earlier release (with a `DeprecationWarning`).

        Args:
            preset: optional str, one of `PRESETS`, the starting point.
            **settings: fields of `TrainConfig` and of `mln_tf.options.MetaLabelNetOptions`.

        Returns:
            A `TrainConfig`.

        Example:

        >>> config = TrainConfig.from_settings(label_trust=10.0, warmup_epochs=2)
        >>> config.options.label_trust, config.options.label_loss, config.warmup_epochs
        (10.0, 'cross_entropy', 2)
        """
        base = {}
        if preset is not None:
            if preset not in PRESETS:
                raise ValueError(
                    f"Invalid value for argument `preset`. Received: preset={preset!r}. "
                    f"Expected one of {', '.join(repr(key) for key in PRESETS)}."
                )
            base = {**PRESETS[preset], "preset": preset}
        option_changes, settings = options_lib.split(settings)
        settings = _translate_deprecated_fields(settings, base)
        options = settings.pop("options", None) or base.pop("options", options_lib.RECOMMENDED)
        base.pop("options", None)
        unknown = sorted(set(settings) - {field.name for field in dataclasses.fields(cls)})
        if unknown:
            raise TypeError(
                f"Unknown setting(s): {', '.join(unknown)}. Expected fields of TrainConfig or "
                "options of MetaLabelNet (mln_tf.options)."
            )
        return cls(**{**base, **settings, "options": options.replace(**option_changes)})

    @classmethod
    def from_preset(cls, name, **overrides):
        """The paper's hyper-parameters for a dataset, with optional overrides.

        Args:
            name: str, one of `PRESETS`: `"paper"` or `"cifar10"`.
            **overrides: any other field of `TrainConfig` or option of MetaLabelNet.

        Returns:
            A `TrainConfig`.

        Example:

        >>> TrainConfig.from_preset("cifar10").lr_boundaries
        (40, 80)
        """
        return cls.from_settings(preset=name, **overrides)

    def baseline_methods(self):
        """The names of the baselines this run trains, in `BASELINES`' order."""
        if self.baselines is True:
            return BASELINES
        return tuple(name for name in BASELINES if name in (self.baselines or ()))

    def __post_init__(self):
        if isinstance(self.options, dict):  # read back from config.json
            self.options = options_lib.MetaLabelNetOptions(**self.options)
        if not isinstance(self.options, options_lib.MetaLabelNetOptions):
            raise TypeError(
                f"Invalid type for argument `options`. Received: {type(self.options).__name__}."
                " Expected a `mln_tf.options.MetaLabelNetOptions`."
            )
        self.learning_rates = tuple(float(rate) for rate in self.learning_rates)
        self.lr_boundaries = tuple(int(epoch) for epoch in self.lr_boundaries)
        if not isinstance(self.baselines, bool):
            self.baselines = tuple(self.baselines)
            unknown = [name for name in self.baselines if name not in BASELINES]
            if unknown:
                raise ValueError(
                    f"Invalid value for argument `baselines`. Received: {unknown[0]!r}. "
                    f"Expected True, False or names from: {', '.join(BASELINES)}."
                )
        if self.dataset not in DATASETS:
            raise ValueError(
                f"Invalid value for argument `dataset`. Received: dataset={self.dataset!r}. "
                f"Expected one of {', '.join(repr(name) for name in DATASETS)}."
            )
        if self.meta_size is None:
            self.meta_size = mln_data.default_meta_size(self.dataset)
        if self.validation_size is None:
            self.validation_size = mln_data.default_validation_size(self.dataset)
        if (
            not isinstance(self.validation_size, int)
            or isinstance(self.validation_size, bool)
            or self.validation_size < 1
        ):
            raise ValueError(
                f"Invalid value for argument `validation_size`. Received: validation_size="
                f"{self.validation_size!r}. Expected a positive integer: each method's epoch "
                "is selected on the clean validation set, never on the meta set it learns "
                "from nor on the test set."
            )
        if self.dataset in SYNTHETIC_DATASETS:
            if self.label_set is not None:
                raise ValueError(
                    f"Invalid value for argument `label_set`. Received: label_set="
                    f"{self.label_set!r}. {self.dataset!r} has synthetic noise: choose it with "
                    "`noise` and `rate` instead."
                )
            rate = self.rate
            if rate is None:
                rate = 0.0 if self.noise == "none" else DEFAULT_RATE
            self.noise, self.rate = noise.check_noise_arguments(self.noise, rate)
        elif self.dataset in WEB_NOISE_DATASETS:
            if self.label_set is not None:
                raise ValueError(
                    f"Invalid value for argument `label_set`. Received: label_set="
                    f"{self.label_set!r}. {self.dataset!r} has one set of web labels: "
                    "leave `label_set` unset."
                )
            self.noise, self.rate = "web", None
        else:
            self.noise, self.rate = "human", None
            label_sets = LABEL_SETS[self.dataset]
            if self.label_set is None:
                self.label_set = label_sets[0]
            if self.label_set not in label_sets:
                raise ValueError(
                    f"Invalid value for argument `label_set`. Received: label_set="
                    f"{self.label_set!r}. Expected one of {self.dataset}'s label sets: "
                    f"{', '.join(repr(key) for key in label_sets)}."
                )
        for name in ("warmup_epochs", "meta_epochs"):
            value = getattr(self, name)
            minimum = 0 if name == "warmup_epochs" else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ValueError(
                    f"Invalid value for argument `{name}`. Received: {name}={value!r}. "
                    f"Expected an integer of at least {minimum}."
                )
        if self.batch_size < 1:
            raise ValueError(
                f"Invalid value for argument `batch_size`. Received: batch_size="
                f"{self.batch_size}. Expected a positive integer."
            )
        if self.meta_batch_size is not None and (
            not isinstance(self.meta_batch_size, int) or isinstance(self.meta_batch_size, bool)
            or not 1 <= self.meta_batch_size <= self.meta_size
        ):  # fmt: skip
            raise ValueError(
                f"Invalid value for argument `meta_batch_size`. Received: meta_batch_size="
                f"{self.meta_batch_size!r}. Expected a positive integer no larger than the "
                f"{self.meta_size} images of the meta set, or None for batch_size."
            )
        if len(self.learning_rates) != len(self.lr_boundaries) + 1 or list(
            self.lr_boundaries
        ) != sorted(set(self.lr_boundaries)):
            raise ValueError(
                "Invalid values for arguments `learning_rates`/`lr_boundaries`. Received: "
                f"learning_rates={self.learning_rates}, lr_boundaries={self.lr_boundaries}. "
                "Expected increasing boundaries and one more rate than boundaries."
            )
        if self.architecture not in classifiers.ARCHITECTURES:
            raise ValueError(
                f"Invalid value for argument `architecture`. Received: architecture="
                f"{self.architecture!r}. Expected one of "
                f"{', '.join(repr(name) for name in classifiers.ARCHITECTURES)}."
            )

    @property
    def last_epoch(self):
        """The number of epochs of the whole schedule, warm-up included."""
        return self.warmup_epochs + self.meta_epochs

    def learning_rate(self, epoch):
        """The classifier's learning rate in a 0-based epoch: a piecewise-constant schedule.

        Example:

        >>> config = TrainConfig(learning_rates=(1e-2, 1e-3), lr_boundaries=(40,))
        >>> config.learning_rate(39), config.learning_rate(40)
        (0.01, 0.001)
        """
        return self.learning_rates[bisect.bisect_right(self.lr_boundaries, epoch)]

    def to_dict(self):
        """The settings as plain JSON values (`config.json`)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @staticmethod
    def as_now(saved):
        """A `config.json` of an earlier release with the fields and options added since,
        at the values that keep that release's behaviour: a field's default, an option's
        value in the authors' algorithm (`mln_tf.options.PAPER`). A run started before an
        upgrade then resumes after it."""
        saved = dict(saved)
        for field in dataclasses.fields(TrainConfig):
            if field.name not in saved and field.default is not dataclasses.MISSING:
                saved[field.name] = json.loads(json.dumps(field.default))
        if isinstance(saved.get("options"), dict):
            saved["options"] = {**options_lib.PAPER.to_dict(), **saved["options"]}
        return saved

    def warm_up_key(self, classifier_config=None):
        """A hash of everything that shapes the warm-up's result: its settings, the
        classifier's architecture (its Keras config), and the TensorFlow, Keras and mln_tf
        versions."""
        import mln_tf

        settings = {name: getattr(self, name) for name in WARM_UP_FIELDS}
        settings["classifier"] = classifier_config
        settings["versions"] = (tf.__version__, keras.__version__, mln_tf.__version__)
        text = json.dumps(settings, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _translate_deprecated_fields(settings, base):
    settings = dict(settings)
    old = {name: settings.pop(name) for name in DEPRECATED_FIELDS if name in settings}
    if not old:
        return settings
    if "stage2" in old and "epochs" in old and old["stage2"] != old["epochs"]:
        raise ValueError(
            f"epochs={old['epochs']} and stage2={old['stage2']} disagree: both are the last "
            "epoch. Give `warmup_epochs` and `meta_epochs` instead."
        )
    warnings.warn(
        f"{', '.join(sorted(old))} are deprecated: use `warmup_epochs` (the warm-up's "
        "epochs) and `meta_epochs` (the meta stage's epochs after it).",
        DeprecationWarning,
        stacklevel=3,
    )
    if "stage1" in old:
        settings["warmup_epochs"] = old["stage1"]
    last = old.get("stage2", old.get("epochs"))
    if last is not None:
        warmup = settings.get("warmup_epochs", base.get("warmup_epochs", TrainConfig.warmup_epochs))
        if not last > warmup:
            raise ValueError(
                f"Invalid value for the last epoch (stage2/epochs). Received: {last}, with "
                f"{warmup} warm-up epochs. Expected more than the warm-up's epochs."
            )
        settings["meta_epochs"] = last - warmup
    return settings
