"""Keras callbacks of the training entry points: evaluation, label correction and resuming."""

import json
import os
import time

import keras
import numpy as np
import tensorflow as tf

from mln_tf.random_state import load_random_states, save_random_states

STATE_FILE = "state.json"


class NonFiniteLossError(FloatingPointError):
    """Raised when a training step produces a NaN or infinite loss.

    The step that produced it is not applied: the weights keep their last finite values.
    """


def raise_if_a_step_was_skipped(model, where):
    """Raises if a meta-learning model's step refused a step since its metrics were reset.

    Args:
        model: the `MetaLabelNet`.
        where: str, where the step ran, for the message (`"batch 3"`, `"train_on_batch"`).

    Raises:
        ValueError: for a label out of range.
        NonFiniteLossError: for a NaN or infinite loss, meta loss or meta-gradient.
    """
    if float(model.invalid_label_steps.result()) > 0:
        raise ValueError(
            f"Training stopped at {where}: a label is out of range. Labels must be "
            f"integer class indices in [0, {model.num_classes}), the classifier's "
            f"{model.num_classes} classes (or -1 for unlabeled noisy examples). Check that "
            "the meta set has the same classes as the classifier. The step was not "
            "applied; the weights are those before it."
        )
    if float(model.non_finite_steps.result()) > 0:
        raise NonFiniteLossError(
            f"Training stopped at {where}: the loss, meta loss or meta-gradient is NaN or "
            "infinite. The step was not applied; the weights are those before it. Lower the "
            "learning rates or the virtual step `virtual_lr`, and check the inputs for NaN "
            "values."
        )


class StopOnSkippedStep(keras.callbacks.Callback):
    """Stops `fit` with a clear error on the first step that `train_step` refused to apply."""

    def on_train_batch_end(self, batch, logs=None):
        raise_if_a_step_was_skipped(self.model, f"batch {batch}")


class EvaluateEachEpoch(keras.callbacks.Callback):
    """Adds the classifier's accuracy on clean held-out sets to each epoch's logs.

    For each named dataset it logs `<name>_accuracy`, and `epoch_seconds`, the epoch's
    training time before this evaluation. With `predictions_dir`, it also saves the test
    predictions of every epoch as `test_predictions_epoch<N>.npy`, for confusion matrices.

    Args:
        classifier: the `keras.Model` whose logits are evaluated.
        datasets: dict of name to a batched `tf.data.Dataset` of `(image, label)`.
        predictions_dir: optional folder for the per-epoch predictions on `"test"`.
            Defaults to `None`.
    """

    def __init__(self, classifier, datasets, predictions_dir=None):
        super().__init__()
        self.classifier = classifier
        self.datasets = datasets
        self.predictions_dir = predictions_dir
        # The labels do not change: read them once.
        self.labels = {
            name: np.concatenate([y for _, y in dataset.as_numpy_iterator()])
            for name, dataset in datasets.items()
        }
        self._epoch_start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs["epoch_seconds"] = time.perf_counter() - self._epoch_start
        for name, dataset in self.datasets.items():
            predictions = np.argmax(self.classifier.predict(dataset, verbose=0), axis=1)
            logs[f"{name}_accuracy"] = float(np.mean(predictions == self.labels[name]))
            if name == "test" and self.predictions_dir is not None:
                path = os.path.join(self.predictions_dir, f"test_predictions_epoch{epoch + 1}.npy")
                np.save(path, predictions.astype(np.int16))


class RefreshLabelGenerator(keras.callbacks.Callback):
    """Restarts MetaLabelNet's label generator from its classifier at the end of every
    epoch (`MetaLabelNet.refresh_label_generator`).

    `MetaLabelNet.fit` puts it first in the callbacks when `generator_refresh="each_epoch"`,
    so that the callbacks after it, a checkpoint's among them, see the refreshed generator.
    """

    def on_epoch_end(self, epoch, logs=None):
        self.model.refresh_label_generator()


class LabelCorrection(keras.callbacks.Callback):
    """Logs what the label generator does to the given labels: the wrong ones it fixes and
    the right ones it breaks.

    `label_correction` is the fraction of the wrongly labelled examples whose generated soft
    label has its maximum at the true class; `labels_broken` the fraction of the correctly
    labelled ones whose soft label has its maximum elsewhere. `initial` holds both before
    the first epoch.

    Args:
        images: array of training images, wrongly and correctly labelled.
        true_labels: array of their true classes.
        given_labels: array of their given (noisy) labels.
        batch_size: int, the prediction batch size. Defaults to 512.
        log_dir: optional folder for TensorBoard histograms of the soft labels, per epoch:
            the probability of their top class and of the given label, for the wrongly
            and the correctly labelled examples. Defaults to `None`.
        initial_step: int, the step of the histograms before training: the epochs done
            before this `fit` (the warm-up's). Defaults to 0.
    """

    def __init__(self, images, true_labels, given_labels, batch_size=512, log_dir=None,
                 initial_step=0):  # fmt: skip
        super().__init__()
        self.images = images
        self.true_labels = np.asarray(true_labels)
        self.given_labels = np.asarray(given_labels)
        self.wrong = self.given_labels != self.true_labels
        self.batch_size = batch_size
        self.log_dir = log_dir
        self.initial_step = initial_step
        self.initial = None
        self._writer = None

    def measure(self, step=None):
        """`{"label_correction": ..., "labels_broken": ...}`, each `None` without examples;
        with `log_dir`, also writes the histograms at `step`."""
        soft_labels = self.model.predict_soft_labels(
            self.images, self.given_labels, batch_size=self.batch_size
        )
        right_class = np.argmax(soft_labels, axis=1) == self.true_labels
        if self.log_dir is not None and step is not None:
            self._write_histograms(soft_labels, step)
        return {
            "label_correction": _mean_or_none(right_class[self.wrong]),
            "labels_broken": _mean_or_none(~right_class[~self.wrong]),
        }

    def _write_histograms(self, soft_labels, step):
        given = soft_labels[np.arange(len(soft_labels)), self.given_labels]
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        with self._writer.as_default(step=step):
            for name, rows in (("wrong_labels", self.wrong), ("right_labels", ~self.wrong)):
                tf.summary.histogram(f"soft_labels/{name}/top_class_probability",
                                     soft_labels[rows].max(axis=1))  # fmt: skip
                tf.summary.histogram(f"soft_labels/{name}/given_label_probability", given[rows])
        self._writer.flush()

    def on_train_begin(self, logs=None):
        self.initial = self.measure(step=self.initial_step)

    def on_epoch_end(self, epoch, logs=None):
        logs.update(self.measure(step=epoch + 1))


def _mean_or_none(values):
    return float(np.mean(values)) if len(values) else None


class EpochCheckpoint(keras.callbacks.BackupAndRestore):
    """`keras.callbacks.BackupAndRestore` that resumes exactly and keeps the epoch logs.

    Keras' callback restores the weights, the optimizer and the epoch. This one also
    keeps the random-generator states (dropout), so that a resumed run continues exactly
    where the interrupted one stopped, and the logs of every epoch, so that it still knows
    its whole history. Files of epoch N are written first, then `state.json` is replaced
    atomically to point at them, so an interruption at any moment leaves the last complete
    checkpoint readable. The checkpoint is kept after training: the training job reads it.

    Call `restore` before `fit` to learn the epoch to resume from; `fit` restores the
    checkpoint itself too, as `BackupAndRestore` does.

    Args:
        directory: str, the checkpoint folder. It is created if needed.

    Example:

    >>> checkpoint = EpochCheckpoint(directory)                # doctest: +SKIP
    >>> initial_epoch, history = checkpoint.restore(model)     # doctest: +SKIP
    >>> model.fit(data, initial_epoch=initial_epoch, epochs=10,
    ...           callbacks=[checkpoint])                       # doctest: +SKIP
    """

    def __init__(self, directory):
        super().__init__(backup_dir=directory, delete_checkpoint=False)
        self.directory = directory
        # Keras reads the epoch to resume from in this file.
        self._training_metadata_path = os.path.join(directory, STATE_FILE)
        self.history = {}

    @property
    def state_path(self):
        return self._training_metadata_path

    def read_state(self):
        """Returns the saved `{"epoch": N, "history": {...}}`, or `None` before epoch 1."""
        if not os.path.exists(self.state_path):
            return None
        with open(self.state_path) as f:
            return json.load(f)

    def restore(self, model, initial_epoch=0):
        """Loads the last checkpoint into `model`, if there is one.

        Args:
            model: the `keras.Model` to restore, compiled and with its optimizer built.
            initial_epoch: int, the epoch to start from when there is no checkpoint.
                Defaults to 0.

        Returns:
            `(epoch, history)`: the epoch to resume from and the logs of the epochs before.
        """
        self.set_model(model)
        self.history = {}
        state = self.read_state()
        if state is None:
            return initial_epoch, {}
        self._load_model()
        return state["epoch"], self.history

    def save(self, model, epoch):
        """Writes the checkpoint of `model` after `epoch` epochs, with the history so far."""
        self.set_model(model)
        self._current_epoch = epoch
        self._save_model()

    def on_epoch_end(self, epoch, logs=None):
        self.history.setdefault("epoch", []).append(epoch + 1)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))
        super().on_epoch_end(epoch, logs)

    def _load_model(self):
        state = self.read_state()
        if state is None:
            return
        # Keras loads the weights (and optimizer) from `_weights_path`, and the epoch.
        self._weights_path = self._epoch_weights_path(state["epoch"])
        super()._load_model()
        with np.load(self._random_states_path(state["epoch"])) as store:
            load_random_states(self.model, store)
        self.history = {key: list(values) for key, values in state["history"].items()}

    def _save_model(self):
        # Replaces Keras' version, which overwrites one weights file in place: an
        # interruption while writing it would leave no complete checkpoint.
        epoch = self._current_epoch
        os.makedirs(self.directory, exist_ok=True)
        self.model.save_weights(self._epoch_weights_path(epoch))
        store = {}
        save_random_states(self.model, store)
        np.savez(self._random_states_path(epoch), **store)
        temporary = self.state_path + ".tmp"
        with open(temporary, "w") as f:
            json.dump({"epoch": epoch, "history": self.history}, f)
        os.replace(temporary, self.state_path)
        # Only now is the previous checkpoint no longer needed.
        for path in (self._epoch_weights_path(epoch - 1), self._random_states_path(epoch - 1)):
            if os.path.exists(path):
                os.remove(path)

    def _epoch_weights_path(self, epoch):
        return os.path.join(self.directory, f"epoch{epoch}.weights.h5")

    def _random_states_path(self, epoch):
        return os.path.join(self.directory, f"epoch{epoch}.random.npz")
