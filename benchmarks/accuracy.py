"""Runs the main job over a grid of noise settings and seeds, and tabulates test accuracy.

Each cell of the grid is one `mln_tf.train.run` in its own folder under `--out`, so an
interrupted grid resumes: finished cells are read back, unfinished ones resume from their
last epoch. Each method's epoch is selected on the clean validation split (disjoint from the
meta set) among the warm-up's last epoch and its own. The table gives, per setting and
method, the mean and sample standard deviation over seeds of the test accuracy at that
epoch and at the final epoch, and the paired difference to cross-entropy: the mean and
standard deviation of the per-seed differences (same seed, same warm-up, same data). A last
table names each setting's first and second method with their paired difference, and
MetaLabelNet's paired difference to the best of the others.

Usage:

    python benchmarks/accuracy.py --settings feature_dependent:0.4 symmetric:0.4 \\
        --seeds 0 1 --out benchmarks/results/accuracy
    python benchmarks/accuracy.py --settings symmetric:0.4 --seeds 0 1 \\
        --set virtual_lr=0.5 --out benchmarks/results/alpha_0.5   # an ablation

`--last-epoch N` tabulates a finished grid as if the meta stage had ended at epoch N: every method
is selected on the clean validation split among its epochs up to N. That is exactly a shorter
run, since no epoch depends on the epochs after it (the learning rate follows the epoch number).

`--tabulate-only` trains nothing: it tabulates the finished cells of the grid named and stops
with the names of the cells that are not finished. A grid run in parts (a seed per process,
say) is tabulated this way as a whole. With `--finished-only` as well it leaves the
unfinished cells out instead, and names them above the tables.

An ablation that changes MetaLabelNet's options only can take the cross-entropy baseline
from an earlier grid with `--baselines-from`: that stage depends on the warm-up's settings
and the last epoch alone, which are checked before its checkpoint is copied.
"""

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shutil
import statistics
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from mln_tf import options, selection, train  # noqa: E402
from mln_tf.report import METHOD_NAMES  # noqa: E402

DEFAULT_SETTINGS = ("feature_dependent:0.4", "symmetric:0.4", "symmetric:0.8", "pair:0.45")
DEFAULT_SEEDS = (0, 1, 2)
# The two test accuracies of each method that the grid tabulates (`mln_tf.selection.select_epochs`).
ACCURACY_KEYS = ("test_accuracy_best_on_validation", "test_accuracy_final")
BASELINE_METHOD = "cross_entropy"
MAIN_METHOD = "meta_label_net"
# The settings that decide the cross-entropy baseline's result.
BASELINE_FIELDS = (*train.WARM_UP_FIELDS, "meta_epochs")


def parse_setting(text):
    """`"noise:rate"` → `("noise", rate)`."""
    noise, separator, rate = text.partition(":")
    if not separator:
        raise argparse.ArgumentTypeError(
            f"Expected NOISE:RATE, e.g. symmetric:0.4. Received: {text!r}."
        )
    return noise, float(rate)


def parse_override(text):
    """`"name=value"` → `("name", value)`, the value typed like the `TrainConfig` field or
    the MetaLabelNet option of that name."""
    name, separator, value = text.partition("=")
    fields = [field.name for field in dataclasses.fields(train.TrainConfig)]
    fields = [name for name in fields if name != "options"]
    if not separator or name not in (*fields, *options.NAMES):
        raise argparse.ArgumentTypeError(
            f"Expected FIELD=VALUE with a field of TrainConfig ({', '.join(fields)}) or an "
            f"option of MetaLabelNet ({', '.join(options.NAMES)}). Received: {text!r}."
        )
    if name in options.NAMES:
        default = getattr(options.RECOMMENDED, name)
    elif name in ("meta_size", "validation_size", "max_train_examples", "meta_batch_size"):
        default = 0  # `None` stands for the dataset's default (or all): the value is an int
    else:
        default = getattr(train.TrainConfig(), name)
    if name == "baselines" and value.lower() not in ("1", "true", "yes", "0", "false", "no"):
        return name, tuple(item for item in value.split(",") if item)  # the names of some
    if isinstance(default, bool):
        return name, value.lower() in ("1", "true", "yes")
    if isinstance(default, tuple):
        return name, tuple(float(item) for item in value.split(",") if item)
    if isinstance(default, int) and not isinstance(default, bool):
        return name, int(value)
    if isinstance(default, float):
        return name, float(value)
    return name, value


def copy_baseline(source_folder, folder, config):
    """Copies the finished cross-entropy stage of `source_folder` into `folder`.

    Raises:
        ValueError: if the source cell is missing, unfinished, or was run with settings
            that change the baseline.
    """
    source_stage = os.path.join(source_folder, "stages", "cross_entropy")
    config_path = os.path.join(source_folder, "config.json")
    if not os.path.exists(os.path.join(source_folder, "results.json")):
        raise ValueError(
            f"--baselines-from: {source_folder!r} holds no finished run. Run that grid first, "
            "or leave out --baselines-from."
        )
    with open(config_path) as f:
        source = json.load(f)
    wanted = json.loads(json.dumps(dataclasses.asdict(config)))
    changed = [name for name in BASELINE_FIELDS if source.get(name) != wanted[name]]
    if changed:
        raise ValueError(
            f"--baselines-from: {source_folder!r} ran the baseline with other settings (they "
            f"differ in: {', '.join(changed)}). Leave out --baselines-from to train it."
        )
    shutil.copytree(source_stage, os.path.join(folder, "stages", "cross_entropy"),
                    dirs_exist_ok=True)  # fmt: skip


def read_cell(folder):
    """The `results.json` of a finished cell, checked to hold the validation-selected keys.

    Raises:
        ValueError: for a cell run before selection moved to the clean validation split.
    """
    with open(os.path.join(folder, "results.json")) as f:
        results = json.load(f)
    for method, result in results["methods"].items():
        missing = [key for key in ACCURACY_KEYS if key not in result]
        if missing:
            raise ValueError(
                f"The cell {folder!r} was run before model selection moved to the clean "
                f"validation split: its results.json has no {', '.join(missing)} for "
                f"{method!r} (it selected epochs on the meta set). Tabulate it with an older "
                "release, or move it away (or pass another --out) to run it again."
            )
    return results


def selected_up_to(folder, results, last_epoch):
    """Each method's selection among the epochs up to `last_epoch`, as a shorter run makes
    it: from the warm-up's last epoch (in `results`) and the cell's stage histories."""
    warm_up = results["warm_up"]
    warm_up_history = {}
    if warm_up["epochs"]:
        warm_up_history = {"epoch": [warm_up["epochs"]],
                           "validation_accuracy": [warm_up["validation_accuracy"]],
                           "test_accuracy": [warm_up["test_accuracy"]]}  # fmt: skip
    histories = {}
    for method in results["methods"]:
        with open(os.path.join(folder, "stages", method, "state.json")) as f:
            histories[method] = json.load(f)["history"]
    return selection.select_epochs(warm_up_history, histories, last_epoch=last_epoch)


def cell_folder(out_dir, noise, rate, seed):
    """The folder of one cell of the grid."""
    return os.path.join(out_dir, f"{noise}_{rate:g}_seed{seed}")


def unfinished_cells(settings, seeds, out_dir):
    """The folders of the grid's cells that have no results yet."""
    folders = [cell_folder(out_dir, noise, rate, seed)
               for noise, rate in settings for seed in seeds]  # fmt: skip
    return [folder for folder in folders
            if not os.path.exists(os.path.join(folder, "results.json"))]  # fmt: skip


def run_grid(settings, seeds, out_dir, overrides=None, verbose=0, preset=None,
             clean_reference=False, baselines_from=None, last_epoch=None,
             tabulate_only=False, finished_only=False):  # fmt: skip
    """Runs (or reads back) every cell.

    Returns `{setting: {method: {"seeds": [...], key: [value per seed]}}}` for each key of
    `ACCURACY_KEYS`.

    With `clean_reference`, cross-entropy on the true labels is trained in the first
    setting's cells only and reported for every setting: the split of the training images,
    and so their true labels, depends on the seed alone. With `baselines_from`, a grid
    folder, each cell copies its finished cross-entropy stage from the same cell there.
    With `last_epoch`, each method is selected among its epochs up to that one. With
    `tabulate_only`, every cell must be finished, or with `finished_only` as well, the
    unfinished ones are left out (a setting with none finished is left out whole).

    Raises:
        ValueError: with `tabulate_only` alone, naming the cells that are not finished.
    """
    unfinished = unfinished_cells(settings, seeds, out_dir) if tabulate_only else []
    if tabulate_only and not finished_only:
        if unfinished:
            raise ValueError(
                f"--tabulate-only: {len(unfinished)} cell(s) of the grid are not finished: "
                f"{', '.join(unfinished)}. Run the grid without --tabulate-only to train "
                "them, leave their settings or seeds out, or add --finished-only to leave "
                "them out of the table."
            )
    table = {}
    for index, (noise, rate) in enumerate(settings):
        cell_overrides = dict(overrides or {})
        if clean_reference and index == 0:
            cell_overrides["clean_reference"] = True
        key = f"{noise}:{rate:g}"
        table[key] = {}
        for seed in seeds:
            folder = cell_folder(out_dir, noise, rate, seed)
            if folder in unfinished:  # left out by `finished_only`
                continue
            results_path = os.path.join(folder, "results.json")
            if os.path.exists(results_path):
                results = read_cell(folder)
            else:
                fields = dict(noise=noise, rate=rate, seed=seed, **cell_overrides)
                config = train.TrainConfig.from_settings(preset=preset, **fields)
                if baselines_from:
                    copy_baseline(os.path.join(baselines_from, os.path.basename(folder)),
                                  folder, config)  # fmt: skip
                print(f"[{key}, seed {seed}] {folder}", flush=True)
                results = train.run(config, folder, verbose=verbose)
            selected = results["methods"]
            if last_epoch is not None:
                with open(os.path.join(folder, "config.json")) as f:
                    stages = json.load(f)
                first = stages["warmup_epochs"]
                last = first + stages["meta_epochs"]
                if not first < last_epoch <= last:
                    raise ValueError(
                        f"--last-epoch {last_epoch} is not an epoch of the meta stage in "
                        f"{folder!r}, which ran epochs {first + 1}–{last}."
                    )
                selected = selected_up_to(folder, results, last_epoch)
            for method, result in selected.items():
                empty = {"seeds": [], **{name: [] for name in ACCURACY_KEYS}}
                runs = table[key].setdefault(method, empty)
                runs["seeds"].append(seed)
                for accuracy_key in ACCURACY_KEYS:
                    runs[accuracy_key].append(result[accuracy_key])
    table = {key: methods for key, methods in table.items() if methods}
    if clean_reference:
        first = next(iter(table.values()))
        for methods in table.values():
            methods.setdefault("clean_reference", first["clean_reference"])
    return table


def describe(values):
    """Mean, sample standard deviation (`None` for one value), min and max of values in
    [0, 1], in percent."""
    percent = [100 * value for value in values]
    return {
        "mean": statistics.fmean(percent),
        "std": statistics.stdev(percent) if len(percent) > 1 else None,
        "min": min(percent),
        "max": max(percent),
        "runs": len(percent),
    }


def summarize(table):
    """Per setting and method: `describe` of each accuracy over seeds, and of its paired
    per-seed difference to cross-entropy (`difference_to_cross_entropy`)."""
    summary = {}
    for setting, methods in table.items():
        summary[setting] = {}
        baseline = methods.get(BASELINE_METHOD)
        for method, runs in methods.items():
            cell = {key: describe(runs[key]) for key in ACCURACY_KEYS}
            if baseline is not None and method != BASELINE_METHOD:
                by_seed = {key: dict(zip(baseline["seeds"], baseline[key], strict=True))
                           for key in ACCURACY_KEYS}  # fmt: skip
                cell["difference_to_cross_entropy"] = {
                    key: describe([value - by_seed[key][seed] for seed, value
                                   in zip(runs["seeds"], runs[key], strict=True)])
                    for key in ACCURACY_KEYS
                }  # fmt: skip
            summary[setting][method] = cell
    return summary


def spread(stats, sign=""):
    """`"mean ± std"`, or the mean alone for one seed."""
    if stats.get("std") is None:  # one seed: no spread to show
        return f"{stats['mean']:{sign}.2f}"
    return f"{stats['mean']:{sign}.2f} ± {stats['std']:.2f}"


def format_markdown(summary, command, unfinished=()):
    lines = [f"`{command}`", ""]
    if unfinished:
        names = ", ".join(os.path.basename(folder) for folder in unfinished)
        lines += [f"Not finished, so left out of every table: {names}.", ""]
    lines += [
        "Test accuracy (%) at the epoch of best accuracy on the clean validation split "
        "(disjoint from the meta set; candidates: the warm-up's last epoch and the method's "
        "own), and at the final epoch: mean ± sample standard deviation over seeds. Δ: the "
        "paired difference to cross-entropy (same seed, same warm-up): mean ± sample standard "
        "deviation of the per-seed differences, in points (no spread with one seed).",
        "",
        "| setting | method | best on validation | Δ | final | Δ | seeds |",
        "|---|---|---|---|---|---|---|",
    ]

    for setting, cells in summary.items():
        for method, cell in cells.items():
            difference = cell.get("difference_to_cross_entropy")
            best_difference = spread(difference[ACCURACY_KEYS[0]], "+") if difference else ""
            final_difference = spread(difference[ACCURACY_KEYS[1]], "+") if difference else ""
            lines.append(
                f"| {setting} | {METHOD_NAMES.get(method, method)} | "
                f"{spread(cell[ACCURACY_KEYS[0]])} | {best_difference} | "
                f"{spread(cell[ACCURACY_KEYS[1]])} | {final_difference} | "
                f"{cell[ACCURACY_KEYS[0]]['runs']} |"
            )
    return "\n".join(lines) + "\n"


def format_by_method(summary, key=ACCURACY_KEYS[0]):
    """The table again at one of `ACCURACY_KEYS`, a row per method and a column per setting:
    mean ± sd over seeds (paired Δ to cross-entropy, mean ± sd), the best mean of each
    setting in bold."""
    settings = list(summary)
    methods = list(dict.fromkeys(method for cells in summary.values() for method in cells))
    best = {setting: max(cell[key]["mean"] for cell in summary[setting].values())
            for setting in settings}  # fmt: skip
    epoch = {ACCURACY_KEYS[0]: "Best on validation", ACCURACY_KEYS[1]: "Final epoch"}[key]
    lines = [
        f"{epoch}, a row per method: mean ± sd over seeds (paired difference to "
        "cross-entropy, mean ± sd); the best mean of each setting in bold.",
        "",
        "| method | " + " | ".join(_with_seeds(setting, summary[setting], key)
                                    for setting in settings) + " |",
        "|---|" + "---|" * len(settings),
    ]
    for method in methods:
        cells = []
        for setting in settings:
            cell = summary[setting].get(method)
            if cell is None:
                cells.append("")
                continue
            text = spread(cell[key])
            difference = cell.get("difference_to_cross_entropy")
            if difference:
                text += f" ({spread(difference[key], '+')})"
            cells.append(f"**{text}**" if cell[key]["mean"] == best[setting] else text)
        lines.append(f"| {METHOD_NAMES.get(method, method)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def leaders(table, key=ACCURACY_KEYS[0], method=MAIN_METHOD):
    """Per setting, at one of `ACCURACY_KEYS`: the method of best mean (`first`), the next
    (`second`), `describe` of their paired per-seed difference (`margin`), and `method`'s
    paired difference to the best mean among the other methods (`method_to_best_other`).

    A paired difference is taken over the seeds both methods ran; its spread is what tells a
    margin from the seeds' noise.
    """
    result = {}
    for setting, methods in table.items():
        means = {name: statistics.fmean(runs[key]) for name, runs in methods.items()}
        ranked = sorted(means, key=means.get, reverse=True)
        entry = {"first": ranked[0], "second": ranked[1] if len(ranked) > 1 else None}
        if entry["second"] is not None:
            entry["margin"] = _paired(methods[ranked[0]], methods[ranked[1]], key)
        if method in methods and len(ranked) > 1:
            best_other = next(name for name in ranked if name != method)
            entry["best_other"] = best_other
            entry["method_to_best_other"] = _paired(methods[method], methods[best_other], key)
        result[setting] = entry
    return result


def _paired(runs, other, key):
    by_seed = dict(zip(other["seeds"], other[key], strict=True))
    return describe([value - by_seed[seed]
                     for seed, value in zip(runs["seeds"], runs[key], strict=True)
                     if seed in by_seed])  # fmt: skip


def format_leaders(table, key=ACCURACY_KEYS[0]):
    """`leaders` as a markdown table: each setting's winner and its paired margin, and
    MetaLabelNet against the best of the other methods."""
    epoch = {ACCURACY_KEYS[0]: "Best on validation", ACCURACY_KEYS[1]: "Final epoch"}[key]
    lines = [
        f"{epoch}: the first and second method of each setting by mean, the paired "
        "difference first − second (mean ± sd over seeds), and MetaLabelNet's paired "
        "difference to the best of the other methods.",
        "",
        "| setting | first | second | first − second | MetaLabelNet − best other | seeds |",
        "|---|---|---|---|---|---|",
    ]
    for setting, entry in leaders(table, key).items():
        names = [METHOD_NAMES.get(entry[name], entry[name]) if entry.get(name) else ""
                 for name in ("first", "second", "best_other")]  # fmt: skip
        margin = spread(entry["margin"], "+") if "margin" in entry else ""
        to_best = entry.get("method_to_best_other")
        ours = f"{spread(to_best, '+')} (against {names[2]})" if to_best else ""
        seeds = len(table[setting][entry["first"]]["seeds"])
        lines.append(f"| {setting} | {names[0]} | {names[1]} | {margin} | {ours} | {seeds} |")
    return "\n".join(lines) + "\n"


def _with_seeds(setting, cells, key):
    """The column's title: the setting, and its number of seeds where the summary has it."""
    runs = max((cell[key].get("runs", 0) for cell in cells.values()), default=0)
    return f"{setting} ({runs} seed{'s' if runs > 1 else ''})" if runs else setting


def build_parser():
    """The command line's parser."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", type=parse_setting,
                        default=[parse_setting(s) for s in DEFAULT_SETTINGS])  # fmt: skip
    parser.add_argument("--seeds", nargs="+", type=int, default=list(DEFAULT_SEEDS))
    parser.add_argument("--preset", choices=list(train.PRESETS),
                        help="start every cell from a preset, e.g. paper")  # fmt: skip
    parser.add_argument("--with-clean-reference", dest="clean_reference", action="store_true",
                        help="train cross-entropy on the true labels once per seed")  # fmt: skip
    parser.add_argument("--set", dest="overrides", nargs="*", type=parse_override, default=[],
                        help="TrainConfig fields for every cell, e.g. dataset=digits")  # fmt: skip
    parser.add_argument("--baselines-from", metavar="GRID",
                        help="take each cell's cross-entropy stage from that grid")  # fmt: skip
    parser.add_argument("--last-epoch", type=int,
                        help="select each method among its epochs up to this one")  # fmt: skip
    parser.add_argument("--tabulate-only", action="store_true",
                        help="train nothing: tabulate the grid's finished cells")  # fmt: skip
    parser.add_argument("--finished-only", action="store_true",
                        help="with --tabulate-only: leave unfinished cells out")  # fmt: skip
    parser.add_argument("--out", default=os.path.join("benchmarks", "results", "accuracy"))
    parser.add_argument("--verbose", type=int, default=0)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.finished_only and not args.tabulate_only:
        parser.error("--finished-only tabulates a grid without training: add --tabulate-only")
    os.makedirs(args.out, exist_ok=True)
    left_out = unfinished_cells(args.settings, args.seeds, args.out) if args.finished_only else []
    table = run_grid(args.settings, args.seeds, args.out, dict(args.overrides), args.verbose,
                     args.preset, args.clean_reference, args.baselines_from,
                     args.last_epoch, args.tabulate_only, args.finished_only)  # fmt: skip
    summary = summarize(table)
    command = "python benchmarks/accuracy.py " + " ".join(sys.argv[1:] if argv is None else argv)
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "command": command,
        "runs": table,
        "summary": summary,
        "unfinished": left_out,
    }
    # A table of shorter runs sits beside the grid's own table.
    name = "accuracy" if args.last_epoch is None else f"accuracy_up_to_epoch{args.last_epoch}"
    with open(os.path.join(args.out, f"{name}.json"), "w") as f:
        json.dump(result, f, indent=2)
    text = "\n".join([format_markdown(summary, command, left_out),
                      *(format_by_method(summary, key) for key in ACCURACY_KEYS),
                      *(format_leaders(table, key) for key in ACCURACY_KEYS)])  # fmt: skip
    with open(os.path.join(args.out, f"{name}.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
