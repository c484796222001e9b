"""Training entry points: the two-stage schedule, and MetaLabelNet against cross-entropy.

Stage 1 (warm-up) trains the classifier with plain cross-entropy on the noisy labels. Stage 2
continues from those weights twice, on the same data and seed: once with plain
cross-entropy (the baseline) and once with MetaLabelNet. Each epoch both are evaluated on
the clean meta set, for model selection as in the paper, and on the test set.
"""

import dataclasses
import json
import os
import time

import keras
import numpy as np

from mln_tf import data as mln_data
from mln_tf import models
from mln_tf.model import MetaLabelNet, paper_classifier_optimizer, paper_generator_optimizer

METHODS = ("cross_entropy", "meta_label_net")


@dataclasses.dataclass
class TrainConfig:
    """Every setting of one run of the main job.

    Attributes:
        dataset: str, a dataset of `mln_tf.data.load_noisy`. Defaults to `"fashion_mnist"`.
        noise: str, a noise model of `mln_tf.noise`. Defaults to `"feature_dependent"`.
        rate: float, the noise rate in [0, 1). Defaults to 0.4.
        meta_size: int, the size of the clean meta set. Defaults to 1000.
        stage1: int, warm-up epochs. Defaults to 3.
        stage2: int, the last epoch of stage 2 (so stage 2 runs `stage2 - stage1` epochs).
            Defaults to 6.
        batch_size: int. Defaults to 64.
        learning_rate: float, the classifier's SGD learning rate. Defaults to 1e-2.
        generator_learning_rate: float, β. Defaults to 1e-3.
        virtual_lr: float, α. Defaults to 1.0.
        entropy_weight: float. Defaults to 1.0.
        seed: int. Defaults to 0.
        jit_compile: bool or "auto". Defaults to "auto" (XLA on a GPU only).
        max_train_examples: optional int, to run on a subset. Defaults to `None`.
        data_dir: optional str, the folder of the dataset's original files. Defaults to
            `None` (Debian's folder for Fashion-MNIST).
    """

    dataset: str = "fashion_mnist"
    noise: str = "feature_dependent"
    rate: float = 0.4
    meta_size: int = 1000
    stage1: int = 3
    stage2: int = 6
    batch_size: int = 64
    learning_rate: float = 1e-2
    generator_learning_rate: float = 1e-3
    virtual_lr: float = 1.0
    entropy_weight: float = 1.0
    seed: int = 0
    jit_compile: object = "auto"
    max_train_examples: int | None = None
    data_dir: str | None = None

    def __post_init__(self):
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


class EvaluateEachEpoch(keras.callbacks.Callback):
    """Adds `meta_accuracy` and `test_accuracy` of the classifier to each epoch's logs."""

    def __init__(self, classifier, meta, test):
        super().__init__()
        self.classifier = classifier
        self.datasets = {"meta": meta, "test": test}
        # The labels do not change: read them once.
        self.labels = {
            name: np.concatenate([y for _, y in dataset.as_numpy_iterator()])
            for name, dataset in self.datasets.items()
        }

    def on_epoch_end(self, epoch, logs=None):
        for name, dataset in self.datasets.items():
            logits = self.classifier.predict(dataset, verbose=0)
            accuracy = np.mean(np.argmax(logits, axis=1) == self.labels[name])
            logs[f"{name}_accuracy"] = float(accuracy)


def build_classifier(config, data):
    return models.fashion_cnn(num_classes=data.num_classes, input_shape=data.image_shape)


def compile_cross_entropy(classifier, config):
    classifier.compile(
        optimizer=paper_classifier_optimizer(config.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=config.jit_compile,
    )


def run(config, out_dir, verbose=1):
    """Runs warm-up, then cross-entropy and MetaLabelNet from it, and writes the results.

    Args:
        config: `TrainConfig`.
        out_dir: str, the output directory. It receives `config.json`, `history.csv`,
            `results.json` and `report.md`.
        verbose: int, Keras verbosity. Defaults to 1 (a progress bar per epoch).

    Returns:
        The results dict written to `results.json`.
    """
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(dataclasses.asdict(config), f, indent=2)
    keras.utils.set_random_seed(config.seed)
    data = mln_data.load_noisy(
        config.dataset,
        noise=config.noise,
        rate=config.rate,
        meta_size=config.meta_size,
        seed=config.seed,
        data_dir=config.data_dir,
    )
    _log(verbose, data.summary())
    train = data.train
    if config.max_train_examples:
        train = train.take(config.max_train_examples)
    eval_batch = max(config.batch_size, 256)
    meta_eval = mln_data.batched(data.meta, eval_batch)
    test_eval = mln_data.batched(data.test, eval_batch)

    _log(verbose, f"Stage 1: warm-up with cross-entropy, {config.stage1} epochs")
    classifier = build_classifier(config, data)
    compile_cross_entropy(classifier, config)
    if config.stage1:
        classifier.fit(
            mln_data.batched(train, config.batch_size, shuffle=True, seed=config.seed),
            epochs=config.stage1,
            shuffle=False,  # the dataset is shuffled already
            verbose=verbose,
        )
    warm_weights = classifier.get_weights()
    stage2_epochs = config.stage2 - config.stage1
    histories = {}

    _log(verbose, f"Stage 2, cross-entropy: {stage2_epochs} epochs")
    keras.utils.set_random_seed(config.seed + 1)
    baseline = build_classifier(config, data)
    baseline.set_weights(warm_weights)
    compile_cross_entropy(baseline, config)
    start = time.perf_counter()
    history = baseline.fit(
        mln_data.batched(train, config.batch_size, shuffle=True, seed=config.seed),
        epochs=stage2_epochs,
        shuffle=False,
        callbacks=[EvaluateEachEpoch(baseline, meta_eval, test_eval)],
        verbose=verbose,
    )
    histories["cross_entropy"] = (history.history, time.perf_counter() - start)

    _log(verbose, f"Stage 2, MetaLabelNet: {stage2_epochs} epochs")
    keras.utils.set_random_seed(config.seed + 1)
    model = MetaLabelNet(classifier, feature_layer=models.FEATURE_LAYER)
    model.compile(
        optimizer=paper_classifier_optimizer(config.learning_rate),
        generator_optimizer=paper_generator_optimizer(config.generator_learning_rate),
        virtual_lr=config.virtual_lr,
        entropy_weight=config.entropy_weight,
        jit_compile=config.jit_compile,
    )
    start = time.perf_counter()
    history = model.fit(
        mln_data.with_meta(train, data.meta, config.batch_size, seed=config.seed),
        epochs=stage2_epochs,
        shuffle=False,
        callbacks=[EvaluateEachEpoch(model.classifier, meta_eval, test_eval)],
        verbose=verbose,
    )
    histories["meta_label_net"] = (history.history, time.perf_counter() - start)
    model.save(os.path.join(out_dir, "meta_label_net.keras"))

    results = {"noise_rate": data.noise_rate, "methods": {}}
    for method, (logs, seconds) in histories.items():
        best = int(np.argmax(logs["meta_accuracy"]))
        results["methods"][method] = {
            "test_accuracy_best_on_meta": logs["test_accuracy"][best],
            "best_epoch": config.stage1 + best + 1,
            "test_accuracy_final": logs["test_accuracy"][-1],
            "stage2_seconds": seconds,
        }
    _write_history(os.path.join(out_dir, "history.csv"), histories, config.stage1)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    report = format_report(config, results)
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write(report)
    _log(verbose, report)
    return results


def format_report(config, results):
    lines = [
        f"# {config.dataset}, {config.noise} noise at rate {config.rate} "
        f"(measured {results['noise_rate']:.3f}), {config.meta_size} clean meta images",
        "",
        f"Warm-up {config.stage1} epochs, stage 2 until epoch {config.stage2}, seed "
        f"{config.seed}. Model selection: the epoch with the best accuracy on the clean meta set.",
        "",
        "| method | test accuracy (best on meta) | best epoch | test accuracy (final) |",
        "|---|---|---|---|",
    ]
    for method, result in results["methods"].items():
        lines.append(
            f"| {method} | {100 * result['test_accuracy_best_on_meta']:.2f} | "
            f"{result['best_epoch']} | {100 * result['test_accuracy_final']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def _write_history(path, histories, stage1):
    keys = sorted({key for logs, _ in histories.values() for key in logs})
    with open(path, "w") as f:
        f.write(",".join(["method", "epoch", *keys]) + "\n")
        for method, (logs, _) in histories.items():
            for index in range(len(next(iter(logs.values())))):
                values = [f"{logs[key][index]:.6g}" if key in logs else "" for key in keys]
                f.write(",".join([method, str(stage1 + index + 1), *values]) + "\n")


def _log(verbose, message):
    if verbose:
        print(message, flush=True)
