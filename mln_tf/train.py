"""Training entry points: the two-stage schedule, and MetaLabelNet against its baselines.

Stage 1 (warm-up) trains the classifier with plain cross-entropy on the noisy labels. It is
trained once, cached on disk keyed by its settings, and shared: stage 2 continues from its
weights and optimizer state once per method, on the same data and batch order:

- `cross_entropy`: plain training goes on (the baseline);
- `meta_label_net`: MetaLabelNet;
- with `baselines=True`, the loss-based baselines of `mln_tf.losses`;
- with `clean_reference=True`, cross-entropy on the true labels for all epochs, from scratch.

After every epoch each method is evaluated on the clean meta set (for model selection, as in
the paper) and on the test set (for reporting only), and a resumable checkpoint is written:
running the same command again resumes an interrupted run.
"""

import bisect
import dataclasses
import hashlib
import json
import os
import shutil

import keras
import numpy as np
import tensorflow as tf

from mln_tf import classifiers, distribute, losses, noise, report
from mln_tf import data as mln_data
from mln_tf.callbacks import EpochCheckpoint, EvaluateEachEpoch, LabelCorrection
from mln_tf.meta_label_net import (
    RECOMMENDED_OPTIONS,
    MetaLabelNet,
    paper_classifier_optimizer,
    paper_generator_optimizer,
)

SYNTHETIC_DATASETS = ("fashion_mnist", "digits")
HUMAN_NOISE_DATASETS = ("cifar10_n", "cifar100_n")
DATASETS = SYNTHETIC_DATASETS + HUMAN_NOISE_DATASETS

# The authors' algorithm, as their code runs it (ALGORITHM.md): a randomly initialised
# generator that ignores the given label, losses averaged over B×C, α = 1, β = 1e-3.
PAPER_ALGORITHM = dict(
    generator_learning_rate=1e-3, virtual_lr=1.0, entropy_weight=1.0, virtual_scope="all",
    label_input=False, generator_init="random", label_trust=0.0, loss_scale="mean",
    label_loss="reverse_kl",
)  # fmt: skip

# The paper's hyper-parameters (ALGORITHM.md). Learning-rate boundaries are 0-based epochs.
# "paper" is the authors' algorithm on the default data and schedule.
PRESETS = {
    "paper": PAPER_ALGORITHM,
    "cifar10": PAPER_ALGORITHM | dict(
        dataset="cifar10_n", noise="worse", architecture="cifar10_cnn", batch_size=128,
        stage1=44, stage2=120, learning_rates=(1e-2, 1e-3, 1e-4), lr_boundaries=(40, 80),
        generator_learning_rate=1e-2, meta_size=5000,
    ),
    "clothing1m": PAPER_ALGORITHM | dict(
        dataset="clothing1m", noise="human", architecture="resnet50", batch_size=32,
        stage1=1, stage2=10, learning_rates=(1e-3, 1e-4), lr_boundaries=(5,),
        generator_learning_rate=1e-3, meta_size=5000,
    ),
    "food101n": PAPER_ALGORITHM | dict(
        dataset="food101n", noise="human", architecture="resnet50", batch_size=32,
        stage1=6, stage2=20, learning_rates=(1e-3, 1e-4, 1e-5), lr_boundaries=(5, 10),
        generator_learning_rate=1e-3, meta_size=10000,
    ),
    "webvision": PAPER_ALGORITHM | dict(
        dataset="webvision", noise="human", architecture="inception_resnet_v2",
        batch_size=25, stage1=14, stage2=30, learning_rates=(1e-2, 1e-3, 1e-4),
        lr_boundaries=(12, 30), generator_learning_rate=1e-3, meta_size=1000,
    ),
}  # fmt: skip

# The fields that decide the warm-up's result, and so its cache key.
WARM_UP_FIELDS = (
    "dataset", "noise", "rate", "meta_size", "architecture", "backbone_weights", "stage1",
    "batch_size", "learning_rates", "lr_boundaries", "seed", "max_train_examples",
    "data_dir", "deterministic", "strategy", "devices",
)  # fmt: skip


@dataclasses.dataclass
class TrainConfig:
    """Every setting of one run of the main job.

    Attributes:
        dataset: str, one of `DATASETS`. Defaults to `"fashion_mnist"`.
        noise: str, a noise model of `mln_tf.noise` for synthetic datasets; for CIFAR-10N
            the label set (`"aggre"`, `"worse"`, `"random1"`…). Defaults to
            `"feature_dependent"`.
        rate: float, the noise rate in [0, 1) (synthetic noise only). Defaults to 0.4.
        meta_size: int, the size of the clean meta set. Defaults to 1000.
        architecture: str, a key of `mln_tf.classifiers.ARCHITECTURES`. Defaults to
            `"fashion_cnn"`.
        backbone_weights: optional path of pre-trained backbone weights (ResNet-50 and
            InceptionResNetV2). Defaults to `None`.
        stage1: int, warm-up epochs. Defaults to 3.
        stage2: int, the last epoch: stage 2 runs `stage2 - stage1` epochs. Defaults to 6.
        batch_size: int. Defaults to 64.
        learning_rates: tuple of the classifier's SGD learning rates, one per interval of
            `lr_boundaries`. Defaults to `(1e-2,)`, constant.
        lr_boundaries: tuple of the 0-based epochs where the next learning rate starts.
            Defaults to `()`.
        generator_learning_rate: float, β. Defaults to 1e-3.
        virtual_lr: float, α. Defaults to 1.0.
        entropy_weight: float. Defaults to 0.0 (the paper: 1.0).
        virtual_scope: str, `"all"` (the exact meta-gradient) or `"head"` (the virtual step
            moves the classifier's last layer only; `MetaLabelNet`). Defaults to `"head"`
            (the paper: `"all"`).
        label_input: bool, whether the generator also sees the given label
            (`MetaLabelNet`). Defaults to `True` (the paper: `False`).
        generator_init: str, `"random"` or `"classifier_head"` (`MetaLabelNet`).
            Defaults to `"classifier_head"` (the paper: `"random"`).
        label_trust: float, the given label's initial logit bonus with `label_input`.
            Defaults to 5.0.
        loss_scale: str, `"mean"` or `"sum_over_classes"` (`MetaLabelNet`). Defaults to
            `"sum_over_classes"` (the paper: `"mean"`).
        label_loss: str, `"reverse_kl"` or `"cross_entropy"` (`MetaLabelNet`). Defaults
            to `"cross_entropy"` (the paper: `"reverse_kl"`).
        seed: int. Defaults to 0.
        jit_compile: bool or `"auto"`. Defaults to `"auto"` (XLA on a GPU only).
        deterministic: bool, whether to enable TensorFlow's deterministic ops. Defaults to
            `False`.
        max_train_examples: optional int, to train on the first examples only.
            Defaults to `None`.
        data_dir: optional str, the folder of the dataset's files. Defaults to `None`.
        baselines: bool, whether to also train the loss-based baselines. Defaults to
            `False`.
        clean_reference: bool, whether to also train cross-entropy on the true labels.
            Defaults to `False`.
        strategy: optional str, `"mirrored"` or `"multiworker"`: train every stage under
            that `tf.distribute` strategy (`mln_tf.distribute.build_strategy`), with
            `batch_size` as the global batch. Defaults to `None`, one device.
        devices: optional int, the number of devices per machine for `strategy`.
            Defaults to `None` (all GPUs, or one CPU device).
        preset: optional str, the key of `PRESETS` this configuration started from.
            Defaults to `None`.
    """

    dataset: str = "fashion_mnist"
    noise: str = "feature_dependent"
    rate: float | None = 0.4
    meta_size: int = 1000
    architecture: str = "fashion_cnn"
    backbone_weights: str | None = None
    stage1: int = 3
    stage2: int = 6
    batch_size: int = 64
    learning_rates: tuple = (1e-2,)
    lr_boundaries: tuple = ()
    generator_learning_rate: float = 1e-3
    virtual_lr: float = 1.0
    entropy_weight: float = RECOMMENDED_OPTIONS["entropy_weight"]
    virtual_scope: str = RECOMMENDED_OPTIONS["virtual_scope"]
    label_input: bool = RECOMMENDED_OPTIONS["label_input"]
    generator_init: str = RECOMMENDED_OPTIONS["generator_init"]
    label_trust: float = RECOMMENDED_OPTIONS["label_trust"]
    loss_scale: str = RECOMMENDED_OPTIONS["loss_scale"]
    label_loss: str = RECOMMENDED_OPTIONS["label_loss"]
    seed: int = 0
    jit_compile: object = "auto"
    deterministic: bool = False
    max_train_examples: int | None = None
    data_dir: str | None = None
    baselines: bool = False
    clean_reference: bool = False
    strategy: str | None = None
    devices: int | None = None
    preset: str | None = None

    @classmethod
    def from_preset(cls, name, **overrides):
        """The paper's hyper-parameters for a dataset, with optional overrides.

        Args:
            name: str, one of `PRESETS`: `"cifar10"`, `"clothing1m"`, `"food101n"` or
                `"webvision"`.
            **overrides: any other field of `TrainConfig`.

        Returns:
            A `TrainConfig`.

        Example:

        >>> TrainConfig.from_preset("cifar10").lr_boundaries
        (40, 80)
        """
        if name not in PRESETS:
            raise ValueError(
                f"Invalid value for argument `preset`. Received: preset={name!r}. Expected one "
                f"of {', '.join(repr(key) for key in PRESETS)}."
            )
        return cls(**{**PRESETS[name], "preset": name, **overrides})

    def __post_init__(self):
        self.learning_rates = tuple(float(rate) for rate in self.learning_rates)
        self.lr_boundaries = tuple(int(epoch) for epoch in self.lr_boundaries)
        if self.dataset not in DATASETS:
            raise ValueError(
                f"Invalid value for argument `dataset`. Received: dataset={self.dataset!r}. "
                f"Expected one of {', '.join(repr(name) for name in DATASETS)}."
                + _MISSING_LOADERS.get(self.dataset, "")
            )
        if self.dataset in SYNTHETIC_DATASETS:
            self.noise, self.rate = noise.check_noise_arguments(self.noise, self.rate)
        elif self.dataset == "cifar10_n" and self.noise not in mln_data.CIFAR10N_LABEL_KEYS:
            raise ValueError(
                f"Invalid value for argument `noise`. Received: noise={self.noise!r}. Expected "
                "one of CIFAR-10N's label sets: "
                f"{', '.join(repr(key) for key in mln_data.CIFAR10N_LABEL_KEYS)}."
            )
        if not 0 <= self.stage1 < self.stage2:
            raise ValueError(
                f"Invalid value for arguments `stage1`/`stage2`. Received: stage1={self.stage1}, "
                f"stage2={self.stage2}. Expected 0 <= stage1 < stage2."
            )
        if self.batch_size < 1:
            raise ValueError(
                f"Invalid value for argument `batch_size`. Received: batch_size="
                f"{self.batch_size}. Expected a positive integer."
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

    def learning_rate(self, epoch):
        """The classifier's learning rate in a 0-based epoch: a piecewise-constant schedule.

        Example:

        >>> config = TrainConfig(learning_rates=(1e-2, 1e-3), lr_boundaries=(40,))
        >>> config.learning_rate(39), config.learning_rate(40)
        (0.01, 0.001)
        """
        return self.learning_rates[bisect.bisect_right(self.lr_boundaries, epoch)]

    def warm_up_key(self):
        """A hash of every setting that decides the warm-up's result."""
        settings = {name: getattr(self, name) for name in WARM_UP_FIELDS}
        text = json.dumps(settings, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


_MISSING_LOADERS = {
    name: f" {name!r} has the paper's hyper-parameters as a preset, but mln_tf has no "
    "loader for it yet: use `TrainConfig.from_preset(...)` with your own pipeline."
    for name in ("clothing1m", "food101n", "webvision")
}

# Each plain method's loss, made from the run and the warm-up checkpoint.
METHOD_LOSSES = {
    "cross_entropy": lambda session, warm_up_dir: _cross_entropy(),
    "symmetric_cross_entropy": lambda session, warm_up_dir: losses.SymmetricCrossEntropy(),
    "generalized_cross_entropy": lambda session, warm_up_dir: losses.GeneralizedCrossEntropy(),
    "soft_bootstrapping": lambda session, warm_up_dir: losses.SoftBootstrapping(),
    "forward_correction": lambda session, warm_up_dir: losses.ForwardCorrection(
        _estimate_transition_matrix(session, warm_up_dir)
    ),
}
BASELINES = tuple(name for name in METHOD_LOSSES if name != "cross_entropy")


@dataclasses.dataclass
class _Run:
    """What the stages of one run share."""

    config: TrainConfig
    data: object
    out_dir: str
    verbose: int
    train: tf.data.Dataset
    steps_per_epoch: int
    evaluation: dict
    strategy: tf.distribute.Strategy


def run(config, out_dir, verbose=1):
    """Runs warm-up, then every method from it, and writes the results and the report.

    Running it again with the same configuration and `out_dir` resumes an interrupted run
    from its last completed epoch.

    Args:
        config: `TrainConfig`.
        out_dir: str, the output directory. It receives `config.json`, `history.csv`,
            `results.json`, `report.md`, the plots and `meta_label_net.keras`.
        verbose: int, Keras verbosity. Defaults to 1 (a progress bar per epoch).

    Returns:
        The results dict written to `results.json`.
    """
    _prepare_out_dir(out_dir, config)
    # First: splitting the CPU into logical devices must precede any TensorFlow operation.
    strategy = distribute.build_strategy(config.strategy, devices=config.devices)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    data = load_data(config)
    _log(verbose, data.summary())
    train = data.train
    num_train = _cardinality(train)
    if config.max_train_examples:
        train = train.take(config.max_train_examples)
        num_train = min(num_train, config.max_train_examples)
    if num_train < config.batch_size:
        raise ValueError(
            f"Invalid value for argument `batch_size`. Received: batch_size={config.batch_size}"
            f", larger than the {num_train} noisy training examples."
        )
    eval_batch = max(config.batch_size, 256)
    session = _Run(
        config=config,
        data=data,
        out_dir=out_dir,
        verbose=verbose,
        train=train,
        steps_per_epoch=num_train // config.batch_size,
        evaluation={
            "meta": mln_data.batched(data.meta, eval_batch),
            "test": mln_data.batched(data.test, eval_batch),
        },
        strategy=strategy,
    )

    warm_up_dir, warm_up_history, warm_up_cached = _warm_up(session)
    histories = {}
    methods = ["cross_entropy", "meta_label_net", *(BASELINES if config.baselines else ())]
    label_correction = None
    for method in methods:
        if method == "meta_label_net":
            histories[method], label_correction = _meta_label_net_stage(session, warm_up_dir)
        else:
            histories[method] = _plain_stage(session, method, warm_up_dir)
    if config.clean_reference:
        histories["clean_reference"] = _clean_reference_stage(session)

    results = _results(session, warm_up_history, warm_up_cached, histories, label_correction)
    report.write_history(os.path.join(out_dir, "history.csv"), warm_up_history, histories)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    report.plot_test_accuracy(os.path.join(out_dir, "test_accuracy.png"), results, histories,
                              warm_up_history)  # fmt: skip
    report.plot_confusion_matrices(
        os.path.join(out_dir, "confusion_matrix.png"),
        {method: _confusion_matrix(session, method, results) for method in
         ("cross_entropy", "meta_label_net")},
        data.class_names,
    )  # fmt: skip
    if label_correction is not None:
        report.plot_label_correction(
            os.path.join(out_dir, "label_correction.png"), results["label_correction"]
        )
    text = report.format_report(config, results)
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write(text)
    _log(verbose, text)
    return results


def load_data(config):
    """Loads the configured dataset with its noise and meta set, as a `NoisyData`."""
    if config.dataset in SYNTHETIC_DATASETS:
        return mln_data.load_noisy(
            config.dataset,
            noise=config.noise,
            rate=config.rate,
            meta_size=config.meta_size,
            seed=config.seed,
            data_dir=config.data_dir,
        )
    if config.dataset == "cifar10_n":
        return mln_data.load_cifar10_n(
            label=config.noise, meta_size=config.meta_size, seed=config.seed,
            data_dir=config.data_dir,
        )  # fmt: skip
    return mln_data.load_cifar100_n(
        meta_size=config.meta_size, seed=config.seed, data_dir=config.data_dir
    )


def build_classifier(config, data, loss, strategy=None):
    """A fresh classifier of the configured architecture, compiled with `loss` and SGD.

    Args:
        config: `TrainConfig`.
        data: the `NoisyData` it trains on (for the class count and image shape).
        loss: a Keras loss, or `None` for prediction only.
        strategy: optional `tf.distribute.Strategy` whose scope holds the variables.
            Defaults to `None`, the current strategy.

    Returns:
        A compiled `keras.Model` with its optimizer built.
    """
    with (strategy or tf.distribute.get_strategy()).scope():
        classifier = classifiers.build(
            config.architecture, data.num_classes, data.image_shape, config.backbone_weights
        )
        classifier.compile(
            optimizer=paper_classifier_optimizer(config.learning_rates[0]),
            loss=loss,
            metrics=["accuracy"],
            jit_compile=config.jit_compile,
        )
        # Built now so that a checkpoint's optimizer state can be loaded into it.
        classifier.optimizer.build(classifier.trainable_variables)
    return classifier


def _warm_started_classifier(session, loss, warm_up_dir):
    """A classifier with the warm-up's weights, optimizer state and random state."""
    classifier = build_classifier(session.config, session.data, loss, session.strategy)
    EpochCheckpoint(warm_up_dir).restore(classifier)
    return classifier


# Stages


def _warm_up(session):
    """Trains stage 1 once per configuration; returns its checkpoint folder and history."""
    config = session.config
    cache_dir = noise.default_cache_dir() / "warm_up" / config.warm_up_key()
    if (cache_dir / "state.json").exists():
        history = EpochCheckpoint(str(cache_dir)).read_state()["history"]
        _log(session.verbose, f"Stage 1: warm-up, {config.stage1} epochs, reused from the cache")
        return str(cache_dir), history, True
    _log(session.verbose, f"Stage 1: warm-up with cross-entropy, {config.stage1} epochs")
    keras.utils.set_random_seed(config.seed)
    classifier = build_classifier(config, session.data, _cross_entropy(), session.strategy)
    stage_dir = os.path.join(session.out_dir, "stages", "warm_up")
    if config.stage1 == 0:
        # Nothing to train: the checkpoint is the initial classifier.
        EpochCheckpoint(stage_dir).save(classifier, epoch=0)
        history = {}
    else:
        history = _fit_stage(session, "warm_up", classifier, session.train, 0, config.stage1,
                             EvaluateEachEpoch(classifier, session.evaluation))  # fmt: skip
    # Publish the finished warm-up atomically, for every later run with these settings.
    temporary = cache_dir.with_name(cache_dir.name + f".tmp{os.getpid()}")
    shutil.copytree(stage_dir, temporary, dirs_exist_ok=True)
    if cache_dir.exists():  # another run with these settings published it first
        shutil.rmtree(temporary)
    else:
        os.replace(temporary, cache_dir)
    return stage_dir, history, False


def _plain_stage(session, method, warm_up_dir):
    config = session.config
    _log(session.verbose, f"Stage 2, {method}: {config.stage2 - config.stage1} epochs")
    keras.utils.set_random_seed(config.seed + 1)
    loss = METHOD_LOSSES[method](session, warm_up_dir)
    classifier = _warm_started_classifier(session, loss, warm_up_dir)
    return _fit_stage(session, method, classifier, session.train, config.stage1, config.stage2,
                      _evaluate(session, classifier, method))  # fmt: skip


def _meta_label_net_stage(session, warm_up_dir):
    config = session.config
    _log(session.verbose, f"Stage 2, meta_label_net: {config.stage2 - config.stage1} epochs")
    keras.utils.set_random_seed(config.seed + 1)
    classifier = _warm_started_classifier(session, _cross_entropy(), warm_up_dir)
    with session.strategy.scope():
        model = MetaLabelNet(
            classifier,
            feature_layer=classifiers.FEATURE_LAYER,
            label_input=config.label_input,
            generator_init=config.generator_init,
            label_trust=config.label_trust,
            loss_scale=config.loss_scale,
            label_loss=config.label_loss,
        )
        model.compile(
            optimizer=paper_classifier_optimizer(config.learning_rates[0]),
            generator_optimizer=paper_generator_optimizer(config.generator_learning_rate),
            virtual_lr=config.virtual_lr,
            entropy_weight=config.entropy_weight,
            virtual_scope=config.virtual_scope,
            # Under a strategy Keras runs without XLA; MetaLabelNet warns if it was asked.
            jit_compile=config.jit_compile,
        )
    # The warm-up's optimizer state, momentum included: the classifier continues training.
    for variable, warm_up_value in zip(
        model.optimizer.variables, classifier.optimizer.variables, strict=True
    ):
        variable.assign(warm_up_value)
    callbacks = [_evaluate(session, model.classifier, "meta_label_net")]
    correction = None
    data = session.data
    if data.source is not None and data.train_clean_labels is not None:
        wrong = ~data.train_label_is_correct
        if config.max_train_examples:
            wrong[config.max_train_examples :] = False
        correction = LabelCorrection(
            data.train_images[wrong], data.train_clean_labels[wrong],
            data.train_noisy_labels[wrong],
        )  # fmt: skip
        callbacks.insert(0, correction)
    # No augmentation here: the frozen features are computed once, not at every step.
    train = mln_data.cache_features(session.train, model.feature_extractor)
    stream = mln_data.with_meta(
        train, data.meta, config.batch_size, seed=config.seed + config.stage1
    )
    history = _fit_stage(session, "meta_label_net", model, stream, config.stage1, config.stage2,
                         *callbacks)  # fmt: skip
    model.save(os.path.join(session.out_dir, "meta_label_net.keras"))
    initial = None
    if correction is not None:
        state_path = os.path.join(session.out_dir, "stages", "meta_label_net", "initial.json")
        if correction.initial is not None:
            with open(state_path, "w") as f:
                json.dump({"label_correction": correction.initial}, f)
        with open(state_path) as f:
            initial = json.load(f)["label_correction"]
    return history, initial


def _clean_reference_stage(session):
    config = session.config
    data = session.data
    if data.source is None or data.train_clean_labels is None:
        raise ValueError(
            f"The clean reference needs the true labels of the training images, which "
            f"{config.dataset!r} does not provide in memory. Run without it."
        )
    _log(session.verbose, f"Clean reference: cross-entropy on the true labels, {config.stage2} "
                          "epochs from scratch")  # fmt: skip
    keras.utils.set_random_seed(config.seed)
    classifier = build_classifier(config, data, _cross_entropy(), session.strategy)
    train = data.train_clean
    if config.max_train_examples:
        train = train.take(config.max_train_examples)
    return _fit_stage(session, "clean_reference", classifier, train, 0, config.stage2,
                      _evaluate(session, classifier, "clean_reference"))  # fmt: skip


def _fit_stage(session, name, model, dataset, first_epoch, last_epoch, *callbacks):
    """Fits epochs [first_epoch, last_epoch), resuming from the stage's own checkpoint."""
    config = session.config
    checkpoint = EpochCheckpoint(os.path.join(session.out_dir, "stages", name))
    epoch, history = checkpoint.restore(model, initial_epoch=first_epoch)
    if epoch >= last_epoch:
        _log(session.verbose, f"  {name}: already complete, restored from its checkpoint")
        return history
    if epoch > first_epoch:
        _log(session.verbose, f"  {name}: resuming at epoch {epoch + 1}")
    if isinstance(model, MetaLabelNet):
        stream = dataset  # with_meta has already batched and shuffled it
    else:
        stream = mln_data.batched(dataset, config.batch_size, shuffle=True, drop_remainder=True,
                                  seed=config.seed + first_epoch)  # fmt: skip
    # One endless stream, skipped to the resumed epoch: the batch order of each epoch is
    # then the same whether the run was interrupted or not.
    steps = session.steps_per_epoch
    stream = stream.repeat().skip((epoch - first_epoch) * steps)
    model.fit(
        stream,
        steps_per_epoch=steps,
        initial_epoch=epoch,
        epochs=last_epoch,
        shuffle=False,  # the stream is shuffled already
        callbacks=[
            *callbacks,
            keras.callbacks.LearningRateScheduler(config.learning_rate),
            checkpoint,
        ],
        verbose=session.verbose,
    )
    return checkpoint.history


def _evaluate(session, classifier, method):
    predictions_dir = os.path.join(session.out_dir, "stages", method)
    os.makedirs(predictions_dir, exist_ok=True)
    return EvaluateEachEpoch(classifier, session.evaluation, predictions_dir)


def _estimate_transition_matrix(session, warm_up_dir):
    """Forward correction's T, from the warm-up classifier's predictions on the noisy set."""
    classifier = _warm_started_classifier(session, None, warm_up_dir)
    images = session.train.map(lambda image, label: image).batch(512)
    logits = classifier.predict(images, verbose=0)
    return noise.estimate_transition_matrix(keras.ops.convert_to_numpy(keras.ops.softmax(logits)))


# Results


def _results(session, warm_up_history, warm_up_cached, histories, label_correction):
    config = session.config
    results = {
        "dataset": config.dataset,
        "noise_rate": session.data.noise_rate,
        "model_selection": "best accuracy on the clean meta set",
        "warm_up": {
            "epochs": config.stage1,
            "cached": warm_up_cached,
            "test_accuracy": (warm_up_history.get("test_accuracy") or [None])[-1],
            "seconds": float(sum(warm_up_history.get("epoch_seconds", []))),
        },
        "methods": {},
    }
    for method, logs in histories.items():
        best = int(np.argmax(logs["meta_accuracy"]))
        results["methods"][method] = {
            "test_accuracy_best_on_meta": logs["test_accuracy"][best],
            "best_epoch": logs["epoch"][best],
            "test_accuracy_final": logs["test_accuracy"][-1],
            "final_epoch": logs["epoch"][-1],
            "seconds_per_epoch": float(np.mean(logs["epoch_seconds"])),
        }
    if label_correction is not None:
        logs = histories["meta_label_net"]
        results["label_correction"] = {
            "epochs": [config.stage1, *logs["epoch"]],
            "fraction": [label_correction, *logs["label_correction"]],
        }
    return results


def _confusion_matrix(session, method, results):
    epoch = results["methods"][method]["best_epoch"]
    path = os.path.join(session.out_dir, "stages", method, f"test_predictions_epoch{epoch}.npy")
    predictions = np.load(path)
    labels = session.data.test_labels if session.data.source is not None else np.concatenate(
        [y for _, y in session.evaluation["test"].as_numpy_iterator()]
    )
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(labels, predictions, labels=range(session.data.num_classes))


# Helpers


def _prepare_out_dir(out_dir, config):
    """Creates `out_dir`, checks that it is writable and that it holds no other run."""
    settings = json.loads(json.dumps(dataclasses.asdict(config)))
    try:
        os.makedirs(out_dir, exist_ok=True)
        probe = os.path.join(out_dir, ".write_test")
        with open(probe, "w") as f:
            f.write("")
        os.remove(probe)
    except OSError as error:
        raise OSError(
            f"Cannot write to the output directory {out_dir!r} ({error.strerror}). "
            "Pass `--out` a folder you can write to."
        ) from error
    path = os.path.join(out_dir, "config.json")
    if os.path.exists(path):
        with open(path) as f:
            previous = json.load(f)
        changed = sorted(key for key in settings if previous.get(key) != settings[key])
        if changed:
            raise ValueError(
                f"The output directory {out_dir!r} holds a run with other settings (they "
                f"differ in: {', '.join(changed)}). Pass the same options to resume it, or "
                "another `--out` for a new run."
            )
    with open(path, "w") as f:
        json.dump(settings, f, indent=2)


def _cross_entropy():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _cardinality(dataset):
    cardinality = int(dataset.cardinality())
    if cardinality < 0:
        cardinality = sum(1 for _ in dataset)
    return cardinality


def _log(verbose, message):
    if verbose:
        print(message, flush=True)
