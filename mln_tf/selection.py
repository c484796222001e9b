"""Model selection: each method's epoch, chosen on the clean validation split.

The test split is read only to report the chosen epoch's accuracy and the final one's.
"""

import numpy as np

MODEL_SELECTION = "best accuracy on the clean validation split"


def select_epochs(warm_up_history, histories, last_epoch=None):
    """Each method's epoch of best accuracy on the clean validation set, and its final one.

    A method that continues from the warm-up has as candidates the warm-up's last epoch
    (its starting point, shared by all of them) and each of its own epochs; the clean
    reference, trained from scratch, has its own epochs only. Among equal validation
    accuracies the earliest epoch wins.

    Args:
        warm_up_history: dict of the warm-up's per-epoch logs (`epoch`,
            `validation_accuracy`, `test_accuracy`); empty without warm-up epochs.
        histories: dict of method name to its per-epoch logs, which also hold
            `epoch_seconds`.
        last_epoch: optional int: select among the epochs up to this one, as if the run
            had ended there. Defaults to `None`, all epochs.

    Returns:
        A dict of method name to `{"test_accuracy_best_on_validation",
        "validation_accuracy", "best_epoch", "test_accuracy_final", "final_epoch",
        "seconds_per_epoch"}`.

    Example:

    >>> warm_up = {"epoch": [1], "validation_accuracy": [0.6], "test_accuracy": [0.55]}
    >>> method = {"epoch": [2, 3], "validation_accuracy": [0.5, 0.7],
    ...           "test_accuracy": [0.45, 0.65], "epoch_seconds": [1.0, 1.0]}
    >>> selected = select_epochs(warm_up, {"cross_entropy": method})["cross_entropy"]
    >>> selected["best_epoch"], selected["test_accuracy_best_on_validation"]
    (3, 0.65)
    """
    selected = {}
    for method, logs in histories.items():
        if "validation_accuracy" not in logs:
            raise ValueError(
                f"The history of {method!r} has no `validation_accuracy`: it was trained "
                "before model selection moved to the clean validation set. Train it again "
                "(with a new output folder)."
            )
        keep = [i for i, epoch in enumerate(logs["epoch"])
                if last_epoch is None or epoch <= last_epoch]  # fmt: skip
        if not keep:
            raise ValueError(
                f"Invalid value for argument `last_epoch`. Received: last_epoch={last_epoch}. "
                f"Expected at least the first epoch of {method!r}, {logs['epoch'][0]}."
            )
        candidates = [(logs["epoch"][i], logs["validation_accuracy"][i],
                       logs["test_accuracy"][i]) for i in keep]  # fmt: skip
        if method != "clean_reference" and warm_up_history.get("epoch"):
            candidates.insert(0, (warm_up_history["epoch"][-1],
                                  warm_up_history["validation_accuracy"][-1],
                                  warm_up_history["test_accuracy"][-1]))  # fmt: skip
        best = int(np.argmax([validation for _, validation, _ in candidates]))
        selected[method] = {
            "test_accuracy_best_on_validation": candidates[best][2],
            "validation_accuracy": candidates[best][1],
            "best_epoch": candidates[best][0],
            "test_accuracy_final": candidates[-1][2],
            "final_epoch": candidates[-1][0],
            "seconds_per_epoch": float(np.mean([logs["epoch_seconds"][i] for i in keep])),
        }
    return selected
