"""Command line: `python -m mln_tf train [options]` (or `mln-tf train`)."""

import argparse
import dataclasses
import datetime
import os
import sys

from mln_tf.train import TrainConfig, run

DEFAULTS = TrainConfig()


def build_parser():
    parser = argparse.ArgumentParser(prog="mln-tf", description="MetaLabelNet for Keras 3.")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser(
        "train",
        help="train cross-entropy and MetaLabelNet on noisy data and compare them",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    train.add_argument("--dataset", default=DEFAULTS.dataset, help="fashion_mnist or digits")
    train.add_argument("--data-dir", default=None, help="folder of the original dataset files")
    train.add_argument("--noise", default=DEFAULTS.noise)
    train.add_argument("--rate", type=float, default=DEFAULTS.rate)
    train.add_argument("--meta-size", type=int, default=DEFAULTS.meta_size)
    train.add_argument("--stage1", type=int, default=DEFAULTS.stage1, help="warm-up epochs")
    train.add_argument("--stage2", type=int, default=DEFAULTS.stage2, help="last epoch")
    train.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size)
    train.add_argument("--seed", type=int, default=DEFAULTS.seed)
    train.add_argument("--jit", dest="jit_compile", action=argparse.BooleanOptionalAction,
                       default=None, help="XLA; default: Keras' auto (GPU only)")  # fmt: skip
    train.add_argument("--quick", action="store_true",
                       help="a short run: 1 + 1 epochs on 5000 training examples")  # fmt: skip
    train.add_argument("--out", default=None, help="output directory (default runs/<timestamp>)")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = {
        field.name: getattr(args, field.name)
        for field in dataclasses.fields(TrainConfig)
        if getattr(args, field.name, None) is not None
    }
    if args.quick:
        settings.update(stage1=1, stage2=2, max_train_examples=5000)
    out = args.out or os.path.join("runs", datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    try:
        run(TrainConfig(**settings), out)
    except (ValueError, TypeError, OSError) as error:
        # Bad options and missing files: a one-line message, not a traceback.
        parser.exit(2, f"mln-tf train: error: {error}\n")
    print(f"Results written to {out}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
