"""Command line: `python -m mln_tf train [options]` (or `mln-tf train`)."""

import argparse
import dataclasses
import datetime
import glob
import json
import os
import sys

from mln_tf.train import DATASETS, PRESETS, TrainConfig, run

DEFAULTS = TrainConfig()
RUNS_DIR = "runs"
QUICK = {"stage1": 1, "stage2": 2, "max_train_examples": 5000}


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
    add = train.add_argument
    add("--preset", choices=sorted(PRESETS),
        help="paper: the authors' algorithm; cifar10, clothing1m, food101n, webvision: "
        "also the paper's hyper-parameters for that dataset")  # fmt: skip
    add("--dataset", help=f"one of {', '.join(DATASETS)} (default: {DEFAULTS.dataset})")
    add("--data-dir", dest="data_dir", help="folder of the dataset's files")
    add("--noise", help=f"noise model, or CIFAR-10N label set (default: {DEFAULTS.noise})")
    add("--rate", type=float, help=f"noise rate in [0, 1) (default: {DEFAULTS.rate})")
    add("--meta-size", dest="meta_size", type=int,
        help=f"clean meta images (default: {DEFAULTS.meta_size})")  # fmt: skip
    add("--architecture", help=f"classifier (default: {DEFAULTS.architecture})")
    add("--backbone-weights", dest="backbone_weights",
        help="weights file of a pre-trained ResNet-50 / InceptionResNetV2 backbone")  # fmt: skip
    add("--stage1", type=int, help=f"warm-up epochs (default: {DEFAULTS.stage1})")
    add("--stage2", type=int, help=f"the last epoch (default: {DEFAULTS.stage2})")
    add("--epochs", type=int, help="total epochs, the same as --stage2")
    add("--batch-size", dest="batch_size", type=int,
        help=f"batch size (default: {DEFAULTS.batch_size})")  # fmt: skip
    add("--learning-rate", dest="learning_rates", type=float, nargs="+",
        help="classifier SGD learning rate, or one rate per interval of --lr-boundaries "
        f"(default: {DEFAULTS.learning_rates[0]})")  # fmt: skip
    add("--lr-boundaries", dest="lr_boundaries", type=int, nargs="*",
        help="0-based epochs where the next learning rate starts (default: none)")  # fmt: skip
    add("--generator-lr", dest="generator_learning_rate", type=float,
        help=f"β, the generator's rate (default: {DEFAULTS.generator_learning_rate})")  # fmt: skip
    add("--virtual-lr", dest="virtual_lr", type=float,
        help=f"α, the virtual step size (default: {DEFAULTS.virtual_lr})")  # fmt: skip
    add("--entropy-weight", dest="entropy_weight", type=float,
        help=f"weight of the entropy loss (default: {DEFAULTS.entropy_weight})")  # fmt: skip
    add("--virtual-scope", dest="virtual_scope", choices=["all", "head"],
        help="the virtual step's weights: all (exact) or the last layer (cheaper; "
        f"default: {DEFAULTS.virtual_scope})")  # fmt: skip
    add("--label-input", dest="label_input", action=argparse.BooleanOptionalAction,
        default=None, help="the generator also sees the given label "
        f"(default: {DEFAULTS.label_input})")  # fmt: skip
    add("--generator-init", dest="generator_init", choices=["random", "classifier_head"],
        help=f"the generator's first weights (default: {DEFAULTS.generator_init})")  # fmt: skip
    add("--label-trust", dest="label_trust", type=float,
        help=f"the given label's first logit bonus (default: {DEFAULTS.label_trust})")  # fmt: skip
    add("--loss-scale", dest="loss_scale", choices=["mean", "sum_over_classes"],
        help=f"reduction of the soft-label losses (default: {DEFAULTS.loss_scale})")  # fmt: skip
    add("--label-loss", dest="label_loss", choices=["reverse_kl", "cross_entropy"],
        help=f"the classifier's soft-label loss (default: {DEFAULTS.label_loss})")  # fmt: skip
    add("--seed", type=int, help=f"random seed (default: {DEFAULTS.seed})")
    add("--jit", dest="jit_compile", action=argparse.BooleanOptionalAction, default=None,
        help="XLA (default: Keras' auto, on a GPU only)")  # fmt: skip
    add("--deterministic", action="store_true", default=None,
        help="TensorFlow's deterministic ops, for bit-identical reruns")  # fmt: skip
    add("--baselines", action="store_true", default=None,
        help="also train the loss-based baselines: SCE, GCE, bootstrapping, forward "
        "correction")  # fmt: skip
    add("--with-clean-reference", dest="clean_reference", action="store_true", default=None,
        help="also train cross-entropy on the true labels, as a reference")  # fmt: skip
    add("--strategy", choices=["mirrored", "multiworker"],
        help="tf.distribute strategy; --batch-size is then the global batch")  # fmt: skip
    add("--devices", type=int,
        help="devices per machine for --strategy (without GPUs: logical CPU devices)")  # fmt: skip
    add("--max-train-examples", dest="max_train_examples", type=int,
        help="train on the first N noisy examples only")  # fmt: skip
    add("--quick", action="store_true",
        help="a short run: 1 + 1 epochs on 5000 training examples")  # fmt: skip
    add("--out", help=f"output directory (default: {RUNS_DIR}/<timestamp>, or the latest "
        "interrupted run there with the same settings)")  # fmt: skip
    return parser


def config_from_args(args):
    """The `TrainConfig` of parsed command-line arguments."""
    fields = {field.name for field in dataclasses.fields(TrainConfig)}
    settings = {
        name: value
        for name, value in vars(args).items()
        if name in fields and name != "preset" and value is not None
    }
    if args.epochs is not None:
        if args.stage2 is not None and args.stage2 != args.epochs:
            raise ValueError(
                f"--epochs {args.epochs} and --stage2 {args.stage2} disagree: --epochs is the "
                "total number of epochs, the same as --stage2. Give one of them."
            )
        settings["stage2"] = args.epochs
    if args.learning_rates is not None:
        settings.setdefault("lr_boundaries", ())
    if args.quick:
        settings = {**QUICK, **settings}
    if args.preset:
        return TrainConfig.from_preset(args.preset, **settings)
    return TrainConfig(**settings)


def default_out_dir(config, runs_dir=RUNS_DIR):
    """The latest interrupted run in `runs_dir` with the same settings, else a new folder."""
    settings = json.loads(json.dumps(dataclasses.asdict(config)))
    for folder in sorted(glob.glob(os.path.join(runs_dir, "*")), reverse=True):
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
    try:
        config = config_from_args(args)
        out = args.out or default_out_dir(config)
        if os.path.exists(os.path.join(out, "config.json")):
            print(f"Resuming the run in {out}", flush=True)
        run(config, out)
    except (ValueError, TypeError, OSError) as error:
        # Bad options and missing files: a one-line message, not a traceback.
        parser.exit(2, f"mln-tf train: error: {error}\n")
    print(f"Results written to {out}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
