"""Training entry points: the two-stage schedule, and MetaLabelNet against its baselines.

The warm-up trains the classifier with plain cross-entropy on the noisy labels. It is
trained once, cached on disk keyed by everything that shapes it, and shared: the meta stage
continues from its weights and optimizer state once per method, on the same data and batch
order (`mln_tf.schedule`):

- `cross_entropy`: plain training goes on (the baseline);
- `meta_label_net`: MetaLabelNet;
- with `baselines=True`, the loss-based baselines of `mln_tf.losses`;
- with `clean_reference=True`, cross-entropy on the true labels for all epochs, from scratch.

After every epoch each method is evaluated on the clean validation set (for model
selection), on the clean meta set (a diagnostic: the method learns from it) and on the test
set (for reporting only), and a resumable checkpoint is written: running the same command
again resumes an interrupted run. Each method keeps the epoch of best validation accuracy
among its candidates: the warm-up's last epoch, which every method continuing from it
shares, and each of its own epochs.
"""

import dataclasses
import datetime
import json
import os
import shutil

import keras
import numpy as np
import tensorflow as tf

from mln_tf import classifiers, clean_baselines, distribute, losses, noise, report, schedule
from mln_tf import data as mln_data
from mln_tf import options as options_lib
from mln_tf.callbacks import EpochCheckpoint, EvaluateEachEpoch, LabelCorrection
from mln_tf.meta_label_net import MetaLabelNet
from mln_tf.meta_weight_net import MetaWeightNet
from mln_tf.optimizers import paper_classifier_optimizer
from mln_tf.selection import MODEL_SELECTION, select_epochs
from mln_tf.train_config import (  # noqa: F401  (the main job's names, kept here too)
    BASELINES,
    DATASETS,
    HUMAN_NOISE_DATASETS,
    LABEL_SETS,
    PRESETS,
    SYNTHETIC_DATASETS,
    WARM_UP_FIELDS,
    TrainConfig,
)

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
# Every baseline has its loss above or its own stage below.
assert set(BASELINES) - set(METHOD_LOSSES) == {
    "cross_entropy_clean", "gold_loss_correction", "fine_tune", "meta_weight_net",
    "meta_label_net_paper",
}  # fmt: skip


class ConfigurationError(ValueError):
    """A setting, file or folder the run cannot use, found before training; says which."""


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
    normalization: tuple | None = None


def run(config, out_dir, verbose=1, command=None):
    """Runs warm-up, then every method from it, and writes the results and the report.

    Running it again with the same configuration and `out_dir` resumes an interrupted run
    from its last completed epoch.

    Args:
        config: `TrainConfig`.
        out_dir: str, the output directory. It receives `config.json`, `history.csv`,
            `results.json`, `report.md`, the plots and `meta_label_net.keras`.
        verbose: int, Keras verbosity. Defaults to 1 (a progress bar per epoch).
        command: optional str, the command line that started the run, for the report.
            Defaults to `None`.

    Returns:
        The results dict written to `results.json`.
    """
    try:
        report.prepare_out_dir(out_dir, config.to_dict(), as_now=TrainConfig.as_now)
        # First: splitting the CPU into logical devices must precede any TensorFlow op.
        strategy = distribute.build_strategy(config.strategy, devices=config.devices)
        if config.deterministic:
            tf.config.experimental.enable_op_determinism()
        data = load_data(config)
        train = data.train
        num_train = _cardinality(train)
        if config.max_train_examples:
            train = train.take(config.max_train_examples)
            num_train = min(num_train, config.max_train_examples)
        if num_train < config.batch_size:
            raise ValueError(
                "Invalid value for argument `batch_size`. Received: batch_size="
                f"{config.batch_size}, larger than the {num_train} noisy training examples."
            )
    except (ValueError, TypeError, OSError) as error:
        # Settings and files that cannot be used, found before any training.
        raise ConfigurationError(str(error)) from error
    normalization = None
    if config.augment:
        data, train, normalization = mln_data.normalize_and_augment(data, train, seed=config.seed)
    _log(verbose, data.summary())
    eval_batch = max(config.batch_size, 256)
    session = _Run(
        config=config,
        data=data,
        out_dir=out_dir,
        verbose=verbose,
        train=train,
        steps_per_epoch=num_train // config.batch_size,
        evaluation={
            "validation": mln_data.batched(data.validation, eval_batch),
            "meta": mln_data.batched(data.meta, eval_batch),
            "test": mln_data.batched(data.test, eval_batch),
        },
        strategy=strategy,
        normalization=normalization,
    )

    warm_up_dir, warm_up_history, warm_up_cached = _warm_up(session)
    histories = {}
    methods = ["cross_entropy", "meta_label_net", *config.baseline_methods()]
    label_correction = None
    for method in methods:
        if method == "meta_label_net":
            histories[method], label_correction = _meta_label_net_stage(session, warm_up_dir)
        elif method == "meta_label_net_paper":
            histories[method], _ = _meta_label_net_stage(
                session, warm_up_dir, method, options_lib.PAPER
            )
        elif method in ("cross_entropy_clean", "gold_loss_correction"):
            histories[method] = _noisy_plus_clean_stage(session, method, warm_up_dir)
        elif method == "meta_weight_net":
            histories[method] = _meta_weight_net_stage(session, warm_up_dir)
        elif method == "fine_tune":
            histories[method] = _fine_tune_stage(session)
        else:
            histories[method] = _plain_stage(session, method, warm_up_dir)
    if config.clean_reference:
        histories["clean_reference"] = _clean_reference_stage(session)

    results = _results(session, warm_up_history, warm_up_cached, histories, label_correction)
    results["methods"] = select_epochs(warm_up_history, histories)
    results["run"] = {
        "command": command,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__,
                     "mln_tf": mln_tf_version()},
    }  # fmt: skip
    if "fine_tune" in histories:
        with open(os.path.join(out_dir, "stages", "fine_tune", "settings.json")) as f:
            results["fine_tune"] = json.load(f)
    report.write_history(os.path.join(out_dir, "history.csv"), warm_up_history, histories)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    report.plot_test_accuracy(os.path.join(out_dir, "test_accuracy.png"), results, histories,
                              warm_up_history)  # fmt: skip
    report.plot_confusion_matrices(
        os.path.join(out_dir, "confusion_matrix.png"),
        {method: _confusion_matrix(session, method, results, warm_up_dir) for method in
         histories},
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
    """Loads the configured dataset with its noise, meta and validation sets (`NoisyData`)."""
    if config.dataset in SYNTHETIC_DATASETS:
        return mln_data.load_noisy(
            config.dataset,
            noise=config.noise,
            rate=config.rate,
            meta_size=config.meta_size,
            validation_size=config.validation_size,
            seed=config.seed,
            data_dir=config.data_dir,
        )
    if config.dataset == "clothing1m":
        # `data_dir` is the TFDS data folder: Clothing1M prepared there, or its official
        # files in `<data_dir>/downloads/manual`, prepared from on the first run.
        return mln_data.load_clothing1m(
            meta_size=config.meta_size, seed=config.seed, data_dir=config.data_dir,
            max_noisy_examples=config.max_train_examples,
        )  # fmt: skip
    if config.dataset == "cifar10_n":
        return mln_data.load_cifar10_n(
            label=config.label_set, meta_size=config.meta_size,
            validation_size=config.validation_size, seed=config.seed, data_dir=config.data_dir,
        )  # fmt: skip
    return mln_data.load_cifar100_n(
        meta_size=config.meta_size, validation_size=config.validation_size, seed=config.seed,
        data_dir=config.data_dir,
    )  # fmt: skip


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
        schedule.compile_for_warm_up(
            classifier, config.learning_rates[0], loss=loss, jit_compile=config.jit_compile
        )
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
    keras.utils.set_random_seed(config.seed)
    classifier = build_classifier(config, session.data, _cross_entropy(), session.strategy)
    cache_dir = noise.default_cache_dir() / "warm_up" / config.warm_up_key(
        json.loads(classifier.to_json())
    )
    if config.warm_up_cache and (cache_dir / "state.json").exists():
        history = EpochCheckpoint(str(cache_dir)).read_state()["history"]
        _log(session.verbose, f"Warm-up: {config.warmup_epochs} epochs, reused from the cache "
                              f"({cache_dir}; --no-warm-up-cache trains it again)")  # fmt: skip
        return str(cache_dir), history, True
    _log(session.verbose, f"Warm-up with cross-entropy: {config.warmup_epochs} epochs")
    stage_dir = os.path.join(session.out_dir, "stages", "warm_up")
    if config.warmup_epochs == 0:
        # Nothing to train: the checkpoint is the initial classifier.
        EpochCheckpoint(stage_dir).save(classifier, epoch=0)
        history = {}
    else:
        # Its test predictions are kept (and cached) too: its last epoch is a candidate.
        os.makedirs(stage_dir, exist_ok=True)
        history = _fit_stage(session, "warm_up", classifier, session.train, 0,
                             config.warmup_epochs,
                             EvaluateEachEpoch(classifier, session.evaluation,
                                               stage_dir))  # fmt: skip
    if not config.warm_up_cache:
        return stage_dir, history, False
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
    _log(session.verbose, f"Meta stage, {method}: {config.meta_epochs} epochs")
    keras.utils.set_random_seed(config.seed + 1)
    loss = METHOD_LOSSES[method](session, warm_up_dir)
    classifier = _warm_started_classifier(session, loss, warm_up_dir)
    return _fit_stage(session, method, classifier, session.train, config.warmup_epochs,
                      config.last_epoch,
                      _evaluate(session, classifier, method))  # fmt: skip


def _meta_label_net_stage(session, warm_up_dir, method="meta_label_net", options=None):
    """MetaLabelNet with the run's options, or `options` (the authors' for a baseline)."""
    config = session.config
    _log(session.verbose, f"Meta stage, {method}: {config.meta_epochs} epochs")
    keras.utils.set_random_seed(config.seed + 1)
    classifier = _warm_started_classifier(session, _cross_entropy(), warm_up_dir)
    with session.strategy.scope():
        model = MetaLabelNet(
            classifier, feature_layer=classifiers.FEATURE_LAYER,
            options=options or config.options,
        )  # fmt: skip
        model.compile(
            optimizer=paper_classifier_optimizer(config.learning_rates[0]),
            # Under a strategy Keras runs without XLA; MetaLabelNet warns if it was asked.
            jit_compile=config.jit_compile,
        )
    schedule.start_meta_stage(model, classifier, meta_data=session.data.meta,
                              noisy_data=session.train)  # fmt: skip
    callbacks = [_evaluate(session, model.classifier, method)]
    correction = None
    data = session.data
    has_true_labels = data.source is not None and data.train_clean_labels is not None
    if method == "meta_label_net" and has_true_labels:
        # Every wrongly labelled image, and as many correctly labelled ones at most
        measured = _label_correction_sample(data, config)
        images = data.train_images[measured]
        if session.normalization is not None:
            mean, std = session.normalization
            images = mln_data.normalize(images, mean=mean, std=std).numpy()
        correction = LabelCorrection(
            images, data.train_clean_labels[measured], data.train_noisy_labels[measured],
            log_dir=os.path.join(session.out_dir, "tensorboard", method),
            initial_step=config.warmup_epochs,
        )  # fmt: skip
        callbacks.insert(0, correction)
    # Without augmentation the frozen features are computed once, not at every step.
    train = session.train
    if (session.normalization is None and model.generator_input == "frozen_features"
            and model.generator_refresh == "never"):  # fmt: skip
        train = mln_data.cache_features(train, model.feature_extractor)
    stream = noisy_and_meta_batches(session, train)
    history = _fit_stage(session, method, model, stream, config.warmup_epochs,
                         config.last_epoch,
                         *callbacks)  # fmt: skip
    model.save(os.path.join(session.out_dir, f"{method}.keras"))
    initial = None
    if correction is not None:
        state_path = os.path.join(session.out_dir, "stages", "meta_label_net", "initial.json")
        if correction.initial is not None:
            with open(state_path, "w") as f:
                json.dump({"label_correction": correction.initial}, f)
        with open(state_path) as f:
            initial = json.load(f)["label_correction"]
    return history, initial


def _label_correction_sample(data, config):
    """Indices of the training images whose soft labels are followed: all the wrongly
    labelled ones, and a seeded sample of as many correctly labelled ones (or all)."""
    count = len(data.train_clean_labels)
    if config.max_train_examples:
        count = min(count, config.max_train_examples)
    wrong = np.flatnonzero(~data.train_label_is_correct[:count])
    right = np.flatnonzero(data.train_label_is_correct[:count])
    rng = np.random.default_rng(config.seed)
    right = rng.choice(right, size=min(len(right), max(len(wrong), 1)), replace=False)
    return np.sort(np.concatenate([wrong, right]))


def noisy_and_meta_batches(session, train):
    """The meta stage's stream of `((x, y[, features]), (x_meta, y_meta))` batches, for
    every method that takes a meta batch at each step: the same batches for each."""
    config = session.config
    return mln_data.with_meta(train, session.data.meta, config.batch_size,
                              meta_batch_size=config.meta_batch_size,
                              seed=config.seed + config.warmup_epochs)  # fmt: skip


def _noisy_plus_clean_stage(session, method, warm_up_dir):
    """Cross-entropy on the noisy and the meta batches together; for GLC the noisy loss is
    forward-corrected by the matrix the warm-up classifier gives on the meta set."""
    config, data = session.config, session.data
    _log(session.verbose, f"Meta stage, {method}: {config.meta_epochs} epochs")
    keras.utils.set_random_seed(config.seed + 1)
    classifier = _warm_started_classifier(session, _cross_entropy(), warm_up_dir)
    noisy_loss = _cross_entropy()
    if method == "gold_loss_correction":
        images = data.meta.map(lambda image, label: image).batch(512)
        labels = np.concatenate([y for _, y in data.meta.batch(4096).as_numpy_iterator()])
        noisy_loss = losses.ForwardCorrection(
            clean_baselines.gold_transition_matrix(classifier, images, labels, data.num_classes)
        )
    with session.strategy.scope():
        model = clean_baselines.NoisyPlusClean(classifier, noisy_loss=noisy_loss)
        model.compile(optimizer=paper_classifier_optimizer(config.learning_rates[0]),
                      jit_compile=config.jit_compile)  # fmt: skip
    schedule.continue_optimizer(classifier.optimizer, model.optimizer)
    stream = noisy_and_meta_batches(session, session.train)
    return _fit_stage(session, method, model, stream, config.warmup_epochs, config.last_epoch,
                      _evaluate(session, model.classifier, method))  # fmt: skip


def _meta_weight_net_stage(session, warm_up_dir):
    """Meta-Weight-Net from the warm-up, on the same batches and schedule as MetaLabelNet."""
    config, method = session.config, "meta_weight_net"
    _log(session.verbose, f"Meta stage, {method}: {config.meta_epochs} epochs")
    keras.utils.set_random_seed(config.seed + 1)
    classifier = _warm_started_classifier(session, _cross_entropy(), warm_up_dir)
    with session.strategy.scope():
        model = MetaWeightNet(classifier)  # α follows the classifier's learning rate
        model.compile(optimizer=paper_classifier_optimizer(config.learning_rates[0]),
                      jit_compile=config.jit_compile)  # fmt: skip
    schedule.start_meta_stage(model, classifier)
    stream = noisy_and_meta_batches(session, session.train)
    return _fit_stage(session, method, model, stream, config.warmup_epochs, config.last_epoch,
                      _evaluate(session, model.classifier, method))  # fmt: skip


def _fine_tune_stage(session):
    """The final cross-entropy model fine-tuned on the meta set; the epochs and learning
    rate of `clean_baselines.FINE_TUNE_GRID` are chosen on the validation split. Its history
    has one entry, at the last epoch of the schedule."""
    config, method = session.config, "fine_tune"
    stage_dir = os.path.join(session.out_dir, "stages", method)
    state_path = os.path.join(stage_dir, "history.json")
    if os.path.exists(state_path):
        with open(state_path) as f:
            return json.load(f)
    _log(session.verbose, f"{method}: the final cross-entropy model, fine-tuned on the meta "
                          "set; the setting chosen on the validation split")  # fmt: skip
    keras.utils.set_random_seed(config.seed + 2)
    start = _warm_started_classifier(
        session, _cross_entropy(), os.path.join(session.out_dir, "stages", "cross_entropy")
    )
    meta_batches = mln_data.batched(session.data.meta, config.batch_size, shuffle=True,
                                    seed=config.seed)  # fmt: skip
    settings, best, scores = clean_baselines.search_fine_tune(
        start, meta_batches, session.evaluation["validation"], verbose=0,
        jit_compile=config.jit_compile,
    )  # fmt: skip
    os.makedirs(stage_dir, exist_ok=True)
    evaluate = EvaluateEachEpoch(best.model, session.evaluation, stage_dir)
    logs = {"epoch_seconds": 0.0}
    evaluate.on_epoch_begin(config.last_epoch - 1)
    evaluate.on_epoch_end(config.last_epoch - 1, logs)
    logs["epoch_seconds"] = 0.0  # not comparable with an epoch on the noisy set
    history = {"epoch": [config.last_epoch], **{key: [value] for key, value in logs.items()}}
    grid = [{**setting, "validation_accuracy": score}
            for setting, score in zip(clean_baselines.FINE_TUNE_GRID, scores)]  # fmt: skip
    with open(os.path.join(stage_dir, "settings.json"), "w") as f:
        json.dump({"chosen": settings, "grid": grid}, f, indent=2)
    with open(state_path, "w") as f:
        json.dump(history, f, indent=2)
    return history


def _clean_reference_stage(session):
    config = session.config
    data = session.data
    if data.source is None or data.train_clean_labels is None:
        raise ValueError(
            f"The clean reference needs the true labels of the training images, which "
            f"{config.dataset!r} does not provide in memory. Run without it."
        )
    _log(session.verbose, f"Clean reference: cross-entropy on the true labels, {config.last_epoch} "
                          "epochs from scratch")  # fmt: skip
    keras.utils.set_random_seed(config.seed)
    classifier = build_classifier(config, data, _cross_entropy(), session.strategy)
    train = data.train_clean
    if session.normalization is not None:
        mean, std = session.normalization
        train = mln_data.preprocess(train, mean=mean, std=std, augment=True, seed=config.seed)
    if config.max_train_examples:
        train = train.take(config.max_train_examples)
    return _fit_stage(session, "clean_reference", classifier, train, 0, config.last_epoch,
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
    if isinstance(model, (MetaLabelNet, MetaWeightNet, clean_baselines.NoisyPlusClean)):
        stream = dataset  # with_meta has already batched and shuffled it
    else:
        stream = mln_data.batched(dataset, config.batch_size, shuffle=True, drop_remainder=True,
                                  seed=config.seed + first_epoch)  # fmt: skip
    # One endless stream, skipped to the resumed epoch: the batch order of each epoch is
    # then the same whether the run was interrupted or not.
    steps = session.steps_per_epoch
    stream = stream.repeat().skip((epoch - first_epoch) * steps)
    # Per-epoch scalars for TensorBoard: `tensorboard --logdir <out>/tensorboard`.
    tensorboard = keras.callbacks.TensorBoard(
        os.path.join(session.out_dir, "tensorboard", name), write_graph=False
    )
    schedule.fit_epochs(model, stream, epoch, last_epoch, config.learning_rate,
                        [*callbacks, checkpoint, tensorboard], steps_per_epoch=steps,
                        verbose=session.verbose)  # fmt: skip
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
        # Unknown (NaN) for web labels without per-image truth: null in the JSON.
        "noise_rate": float(rate) if np.isfinite(rate := session.data.noise_rate) else None,
        "model_selection": MODEL_SELECTION,
        "warm_up": {
            "epochs": config.warmup_epochs,
            "cached": warm_up_cached,
            "test_accuracy": (warm_up_history.get("test_accuracy") or [None])[-1],
            "validation_accuracy": (warm_up_history.get("validation_accuracy") or [None])[-1],
            "seconds": float(sum(warm_up_history.get("epoch_seconds", []))),
        },
        "methods": {},
    }
    if label_correction is not None:
        logs = histories["meta_label_net"]
        results["label_correction"] = {
            "epochs": [config.warmup_epochs, *logs["epoch"]],
            "fraction": [label_correction["label_correction"], *logs["label_correction"]],
            "broken": [label_correction["labels_broken"], *logs["labels_broken"]],
        }
    return results


def _confusion_matrix(session, method, results, warm_up_dir):
    epoch = results["methods"][method]["best_epoch"]
    stage_dir = os.path.join(session.out_dir, "stages", method)
    if method != "clean_reference" and epoch <= session.config.warmup_epochs:
        stage_dir = warm_up_dir  # the warm-up's last epoch was selected
    predictions = np.load(os.path.join(stage_dir, f"test_predictions_epoch{epoch}.npy"))
    labels = session.data.test_labels if session.data.source is not None else np.concatenate(
        [y for _, y in session.evaluation["test"].as_numpy_iterator()]
    )
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(labels, predictions, labels=range(session.data.num_classes))


# Helpers


def mln_tf_version():
    """The installed mln_tf's version."""
    import mln_tf

    return mln_tf.__version__


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
