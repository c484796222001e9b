"""The main job's outputs: the history table, the markdown report and the plots."""

import csv
import json
import os

import matplotlib.ticker
import numpy as np
from matplotlib.figure import Figure

from mln_tf import options as options_lib

METHOD_NAMES = {
    "warm_up": "warm-up (cross-entropy)",
    "cross_entropy": "cross-entropy",
    "meta_label_net": "MetaLabelNet",
    "symmetric_cross_entropy": "symmetric cross-entropy",
    "generalized_cross_entropy": "generalized cross-entropy",
    "soft_bootstrapping": "soft bootstrapping",
    "forward_correction": "forward correction (estimated T)",
    "clean_reference": "cross-entropy on the true labels (reference)",
    "cross_entropy_clean": "cross-entropy on the noisy and the meta set",
    "gold_loss_correction": "gold loss correction (GLC)",
    "fine_tune": "cross-entropy, then fine-tuned on the meta set",
    "meta_weight_net": "Meta-Weight-Net",
    "meta_label_net_paper": "MetaLabelNet, the authors' algorithm",
}


def write_history(path, warm_up_history, histories):
    """Writes one CSV row per method and epoch, warm-up first, with every logged value."""
    all_histories = {"warm_up": warm_up_history, **histories}
    keys = sorted({key for logs in all_histories.values() for key in logs} - {"epoch"})
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, ["method", "epoch", *keys], restval="", lineterminator="\n")
        writer.writeheader()
        for method, logs in all_histories.items():
            for index, epoch in enumerate(logs.get("epoch", [])):
                values = {key: f"{logs[key][index]:.6g}" for key in keys if key in logs}
                writer.writerow({"method": method, "epoch": epoch, **values})


def _describe_meta_label_net(config):
    """One sentence on which MetaLabelNet ran, and its options that differ from the paper's."""
    preset = f" (preset {config.preset!r})" if config.preset else ""
    changes = config.options.changes_from(options_lib.PAPER)
    if not changes:
        return f"MetaLabelNet{preset}: the authors' algorithm, with all their settings."
    listed = ", ".join(f"{name}={value!r}" for name, value in changes.items())
    return f"MetaLabelNet{preset}: the authors' algorithm, except {listed}."


def format_report(config, results):
    """The markdown report: test accuracy of each method, best-on-validation and final epoch,
    and its difference to cross-entropy's in the same run."""
    rate = results["noise_rate"]
    measured = "rate unknown" if rate is None else f"measured {rate:.3f}"
    if config.label_set is not None:
        noise = f"human noise, label set {config.label_set!r}"
    else:
        noise = f"{config.noise} noise" + (f" at rate {config.rate}" if config.rate else "")
    warm_up = results["warm_up"]
    lines = [
        f"# {config.dataset}, {noise} ({measured})"
        f", {config.meta_size} clean meta images, {config.validation_size} clean validation "
        "images",
        "",
        f"Warm-up {config.warmup_epochs} epochs"
        f"{' (reused from the cache)' if warm_up['cached'] else ''}"
        f", then {config.meta_epochs} meta-stage epochs, batch {config.batch_size}, "
        f"seed {config.seed}. "
        f"Model selection: the epoch with the {results['model_selection']}, among the "
        "warm-up's last epoch and the method's own; the final epoch is shown too. The "
        "validation split is disjoint from the meta set; the test set is used for reporting "
        "only. Δ: the difference to cross-entropy in this run, in points.",
        "",
        _describe_meta_label_net(config),
        "",
        "| method | test accuracy (best on validation) | Δ | validation accuracy | "
        "chosen epoch | test accuracy (final) | Δ | s per epoch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    baseline = results["methods"].get("cross_entropy")
    for method, result in results["methods"].items():
        best, final = result["test_accuracy_best_on_validation"], result["test_accuracy_final"]
        if baseline is None:
            best_difference = final_difference = ""
        else:
            best_difference = _points(best - baseline["test_accuracy_best_on_validation"])
            final_difference = _points(final - baseline["test_accuracy_final"])
        # Fine-tuning has no epochs on the noisy set to time.
        seconds = "—" if method == "fine_tune" else f"{result['seconds_per_epoch']:.0f}"
        lines.append(
            f"| {METHOD_NAMES.get(method, method)} | {100 * best:.2f} | {best_difference} | "
            f"{100 * result['validation_accuracy']:.2f} | {result['best_epoch']} | "
            f"{100 * final:.2f} | {final_difference} | {seconds} |"
        )
    lines.append("")
    if warm_up["test_accuracy"] is not None:
        lines.append(f"The warm-up ended at {100 * warm_up['test_accuracy']:.2f} % test accuracy.")
    correction = results.get("label_correction")
    if correction:
        before, after = correction["fraction"][0], correction["fraction"][-1]
        text = (
            f"Of the wrongly labelled training images, the label generator gives the true "
            f"class to {100 * after:.1f} % after the meta stage ({100 * before:.1f} % before)"
        )
        broken = correction.get("broken")
        if broken and broken[-1] is not None:
            text += (
                f"; of the correctly labelled ones, it moves {100 * broken[-1]:.1f} % away "
                f"from their label ({100 * broken[0]:.1f} % before)"
            )
        lines.append(text + ".")
    run = results.get("run")
    if run:
        versions = run["versions"]
        command = f"`{run['command']}`, " if run["command"] else ""
        lines += ["", f"Run: {command}{run['date']}; TensorFlow {versions['tensorflow']}, "
                  f"Keras {versions['keras']}, mln_tf {versions['mln_tf']}."]  # fmt: skip
    return "\n".join(lines) + "\n"


def _points(difference):
    """A difference of accuracies, in percentage points with its sign."""
    return f"{100 * difference:+.2f}"


def plot_test_accuracy(path, results, histories, warm_up_history):
    """Test accuracy per epoch for every method, with each method's selected epoch marked."""
    figure = Figure(figsize=(7, 4.5))
    axes = figure.subplots()
    if warm_up_history.get("epoch"):
        axes.plot(warm_up_history["epoch"], 100 * np.asarray(warm_up_history["test_accuracy"]),
                  color="gray", marker="o", label=METHOD_NAMES["warm_up"])  # fmt: skip
    for method, logs in histories.items():
        epochs, accuracy = list(logs["epoch"]), list(100 * np.asarray(logs["test_accuracy"]))
        if method != "clean_reference" and warm_up_history.get("epoch"):
            # Stage 2 continues from the last warm-up epoch.
            epochs = [warm_up_history["epoch"][-1], *epochs]
            accuracy = [100 * warm_up_history["test_accuracy"][-1], *accuracy]
        style = "--" if method == "clean_reference" else "-"
        (line,) = axes.plot(epochs, accuracy, style, marker="o",
                            label=METHOD_NAMES.get(method, method))  # fmt: skip
        best = results["methods"][method]
        axes.plot(best["best_epoch"], 100 * best["test_accuracy_best_on_validation"], marker="*",
                  markersize=14, color=line.get_color())  # fmt: skip
    axes.set_xlabel("epoch")
    axes.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axes.set_ylabel("test accuracy (%)")
    axes.set_title("Test accuracy per epoch (★: selected on the clean validation split)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    _save(figure, path)


def plot_confusion_matrices(path, matrices, class_names):
    """Row-normalised confusion matrices of the selected models, side by side."""
    columns = min(len(matrices), 4)
    rows = -(-len(matrices) // columns)
    figure = Figure(figsize=(5.5 * columns, 5 * rows))
    axes = figure.subplots(rows, columns, squeeze=False)
    axes = axes.ravel()
    for axis in axes[len(matrices) :]:
        axis.axis("off")
    for axis, (method, matrix) in zip(axes, matrices.items()):
        normalised = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
        axis.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
        for (row, column), value in np.ndenumerate(normalised):
            if value >= 0.005:
                axis.text(column, row, f"{100 * value:.0f}", ha="center", va="center",
                          fontsize=7, color="white" if value > 0.5 else "black")  # fmt: skip
        ticks = np.arange(len(class_names))
        axis.set_xticks(ticks, class_names, rotation=90, fontsize=7)
        axis.set_yticks(ticks, class_names, fontsize=7)
        axis.set_xlabel("predicted")
        axis.set_ylabel("true")
        accuracy = np.trace(matrix) / matrix.sum()
        axis.set_title(f"{METHOD_NAMES.get(method, method)} ({100 * accuracy:.1f} %)")
    figure.suptitle("Test confusion matrices (% of each true class)")
    _save(figure, path)


def plot_label_correction(path, correction):
    """The wrong labels the generator fixes and the right labels it breaks, per epoch."""
    figure = Figure(figsize=(6, 4))
    axes = figure.subplots()
    axes.plot(correction["epochs"], 100 * np.asarray(correction["fraction"]), marker="o",
              label="wrong labels fixed (true class on top)")  # fmt: skip
    broken = correction.get("broken")
    if broken and broken[-1] is not None:
        axes.plot(correction["epochs"], 100 * np.asarray(broken, dtype=float), marker="s",
                  label="right labels broken (another class on top)")  # fmt: skip
    axes.legend()
    axes.set_xlabel("epoch (the first point: before the meta stage)")
    axes.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axes.set_ylabel("% of the training images")
    axes.set_title("What the generated soft labels do to the given labels")
    axes.set_ylim(0, 100)
    axes.grid(alpha=0.3)
    _save(figure, path)


def _save(figure, path):
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def prepare_out_dir(out_dir, settings, as_now=None):
    """Creates `out_dir`, checks that it is writable and that it holds no run with other
    `settings` (a dict of JSON values), and writes them to its `config.json`. `as_now`, if
    given, maps the `config.json` of an earlier release to today's fields first."""
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
        if as_now is not None:
            previous = as_now(previous)
        changed = sorted(key for key in settings if previous.get(key) != settings[key])
        if changed:
            raise ValueError(
                f"The output directory {out_dir!r} holds a run with other settings (they "
                f"differ in: {', '.join(changed)}). Pass the same options to resume it, or "
                "another `--out` for a new run."
            )
    with open(path, "w") as f:
        json.dump(settings, f, indent=2)
