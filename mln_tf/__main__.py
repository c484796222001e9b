"""Command line: `python -m mln_tf train [options]` (or `mln-tf train`)."""

import argparse
import dataclasses
import datetime
import glob
import json
import os
import shlex
import sys
import warnings

from mln_tf import classifiers, noise
from mln_tf import data as mln_data
from mln_tf import options as options_lib
from mln_tf.callbacks import NonFiniteLossError
from mln_tf.train import ConfigurationError, run
from mln_tf.train_config import (
    BASELINES,
    DATASETS,
    DEFAULT_RATE,
    DEPRECATED_FIELDS,
    LABEL_SETS,
    PRESETS,
    TrainConfig,
)

DEFAULTS = TrainConfig()
RUNS_DIR = "runs"
# A transition matrix cannot be given on the command line: use `mln_tf.noise` in Python.
NOISE_CHOICES = tuple(name for name in noise.NOISE_TYPES if name != "transition_matrix")
QUICK = {"warmup_epochs": 1, "meta_epochs": 1, "max_train_examples": 5000}


def build_parser():
    parser = argparse.ArgumentParser(prog="mln-tf", description="MetaLabelNet for Keras 3.")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser(
        "train",
        help="train cross-entropy and MetaLabelNet on noisy data and compare them",
        description="Trains a shared cross-entropy warm-up, then cross-entropy and "
        "MetaLabelNet from it, and reports their test accuracy. Running the same command "
        "again resumes an interrupted run.",
    )
    train.add_argument("--preset", choices=sorted(PRESETS),
                       help="paper: the authors' algorithm; cifar10, clothing1m: also the "
                       "paper's hyper-parameters for CIFAR-10 (on CIFAR-10N) or Clothing1M "
                       "(--data-dir: its TFDS folder, --backbone-weights: ImageNet ResNet-50 "
                       "weights)")  # fmt: skip

    data = train.add_argument_group("data").add_argument
    data("--dataset", choices=DATASETS, help=f"(default: {DEFAULTS.dataset})")
    data("--data-dir", dest="data_dir", help="folder of the dataset's files")
    data("--noise", choices=NOISE_CHOICES, metavar="NOISE",
         help=f"synthetic noise model: {', '.join(NOISE_CHOICES)} "
         f"(default: {DEFAULTS.noise})")  # fmt: skip
    data("--rate", type=float,
         help=f"noise rate in [0, 1) (default: {DEFAULT_RATE}; 0 for --noise none)")  # fmt: skip
    data("--label-set", dest="label_set",
         help="label set of a dataset with human noise: "
         + "; ".join(f"{name}: {', '.join(sets)}" for name, sets in LABEL_SETS.items())
         + " (default: the first)")  # fmt: skip
    data("--meta-size", dest="meta_size", type=int,
         help="clean meta images (default: 1000, 100 for digits)")  # fmt: skip
    data("--validation-size", dest="validation_size", type=int,
         help="clean validation images, disjoint from the meta set, that select each "
         f"method's epoch (default: {mln_data.DEFAULT_VALIDATION_SIZE}, "
         f"{mln_data.DEFAULT_VALIDATION_SIZES['digits']} for digits)")  # fmt: skip
    data("--augment", action="store_true", default=None,
         help="normalise by the meta set's channel statistics; random crops and flips of "
         "the training images (on in the cifar10 preset)")  # fmt: skip
    data("--max-train-examples", dest="max_train_examples", type=int,
         help="train on the first N noisy examples only")  # fmt: skip

    stages = train.add_argument_group("schedule").add_argument
    stages("--warmup-epochs", dest="warmup_epochs", type=int,
           help=f"cross-entropy warm-up epochs (default: {DEFAULTS.warmup_epochs})")  # fmt: skip
    stages("--meta-epochs", dest="meta_epochs", type=int,
           help="meta-stage epochs after the warm-up "
           f"(default: {DEFAULTS.meta_epochs})")  # fmt: skip
    stages("--stage1", type=int, help=argparse.SUPPRESS)  # deprecated: --warmup-epochs
    stages("--stage2", type=int, help=argparse.SUPPRESS)  # deprecated: the last epoch
    stages("--epochs", type=int, help=argparse.SUPPRESS)  # deprecated: the last epoch
    stages("--batch-size", dest="batch_size", type=int,
           help=f"batch size (default: {DEFAULTS.batch_size})")  # fmt: skip
    stages("--meta-batch-size", dest="meta_batch_size", type=int,
           help="meta batch size of the methods that take one at each step "
           "(default: the batch size)")  # fmt: skip
    stages("--learning-rate", dest="learning_rates", type=float, nargs="+",
           help="classifier SGD learning rate, or one rate per interval of --lr-boundaries "
           f"(default: {DEFAULTS.learning_rates[0]})")  # fmt: skip
    stages("--lr-boundaries", dest="lr_boundaries", type=int, nargs="*",
           help="0-based epochs where the next learning rate starts (default: none)")  # fmt: skip
    stages("--seed", type=int, help=f"random seed (default: {DEFAULTS.seed})")
    stages("--quick", action="store_true",
           help="a short run: 1 + 1 epochs on 5000 training examples")  # fmt: skip
    stages("--no-warm-up-cache", dest="warm_up_cache", action="store_false", default=None,
           help="train the warm-up again instead of reusing a cached one")  # fmt: skip

    method = train.add_argument_group(
        "method", "MetaLabelNet's options (mln_tf.options; docs/algorithm.md)"
    )
    options_lib.add_arguments(method, defaults=DEFAULTS.options)
    method.add_argument("--architecture", choices=sorted(classifiers.ARCHITECTURES),
                        help=f"classifier (default: {DEFAULTS.architecture})")  # fmt: skip
    method.add_argument("--backbone-weights", dest="backbone_weights",
                        help="weights file of a pre-trained ResNet-50 / InceptionResNetV2 "
                        "backbone")  # fmt: skip

    baselines = train.add_argument_group("baselines").add_argument
    baselines("--baselines", nargs="*", choices=BASELINES, default=None, metavar="METHOD",
              help="also train these baselines, or all of them without a name: "
              f"{', '.join(BASELINES)}")  # fmt: skip
    baselines("--with-clean-reference", dest="clean_reference", action="store_true",
              default=None,
              help="also train cross-entropy on the true labels, as a reference")  # fmt: skip

    hardware = train.add_argument_group("hardware").add_argument
    hardware("--jit", dest="jit_compile", action=argparse.BooleanOptionalAction, default=None,
             help="XLA (default: Keras' auto, on a GPU only)")  # fmt: skip
    hardware("--deterministic", action="store_true", default=None,
             help="TensorFlow's deterministic ops, for bit-identical reruns")  # fmt: skip
    hardware("--strategy", choices=["mirrored", "multiworker"],
             help="tf.distribute strategy; --batch-size is then the global batch")  # fmt: skip
    hardware("--devices", type=int,
             help="devices per machine for --strategy (without GPUs: logical CPU "
             "devices)")  # fmt: skip

    output = train.add_argument_group("output").add_argument
    output("--out", help=f"output directory (default: {RUNS_DIR}/<timestamp>, or the latest "
           "interrupted run there with the same settings)")  # fmt: skip
    output("--fresh", action="store_true",
           help="start a new run: never resume an interrupted one")  # fmt: skip
    loudness = train.add_mutually_exclusive_group()
    loudness.add_argument("--verbose", action="store_true",
                          help="a progress bar per epoch, even when the output is not a "
                          "terminal (default there: a line per epoch)")  # fmt: skip
    loudness.add_argument("--quiet", action="store_true",
                          help="no progress output; the report is written to the output "
                          "directory")  # fmt: skip
    return parser


def config_from_args(args):
    """The `TrainConfig` of parsed command-line arguments."""
    fields = {field.name for field in dataclasses.fields(TrainConfig)}
    names = fields | set(options_lib.NAMES) | set(DEPRECATED_FIELDS)
    settings = {
        name: value
        for name, value in vars(args).items()
        if name in names and name not in ("preset", "options") and value is not None
    }
    if args.learning_rates is not None:
        settings.setdefault("lr_boundaries", ())
    if args.baselines == []:  # `--baselines` without a name: all of them
        settings["baselines"] = True
    if args.quick:
        settings = {**QUICK, **settings}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # said once below, as a note
        config = TrainConfig.from_settings(preset=args.preset, **settings)
    for old in DEPRECATED_FIELDS:
        if old in settings:
            print(f"mln-tf train: --{old} is deprecated: use --warmup-epochs and --meta-epochs",
                  file=sys.stderr)  # fmt: skip
    return config


def default_out_dir(config, runs_dir=RUNS_DIR, fresh=False):
    """The latest interrupted run in `runs_dir` with the same settings, else (or `fresh`) a
    new folder."""
    settings = config.to_dict()
    folders = [] if fresh else sorted(glob.glob(os.path.join(runs_dir, "*")), reverse=True)
    for folder in folders:
        config_path = os.path.join(folder, "config.json")
        if os.path.exists(os.path.join(folder, "results.json")) or not os.path.exists(
            config_path
        ):
            continue
        with open(config_path) as f:
            if json.load(f) == settings:
                return folder
    return os.path.join(runs_dir, datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    # A progress bar per epoch in a terminal; a line per epoch in a file or a pipe.
    verbose = 0 if args.quiet else 1 if args.verbose or sys.stdout.isatty() else 2
    try:
        config = config_from_args(args)
        out = args.out or default_out_dir(config, fresh=args.fresh)
        if os.path.exists(os.path.join(out, "config.json")):
            if args.fresh:
                raise ValueError(
                    f"--fresh: the output directory {out!r} already holds a run. Pass another "
                    "--out, or leave out --fresh to resume it."
                )
            print(f"Resuming the run in {out}", flush=True)
    except (ValueError, TypeError, OSError) as error:
        parser.exit(2, f"mln-tf train: error: {error}\n")
    try:
        words = sys.argv[1:] if argv is None else argv
        run(config, out, verbose=verbose, command=shlex.join(["mln-tf", *words]))
    except (ConfigurationError, NonFiniteLossError) as error:
        # Bad options, files and data: a one-line message. A bug keeps its traceback.
        parser.exit(2, f"mln-tf train: error: {error}\n")
    print(f"Results written to {out}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
