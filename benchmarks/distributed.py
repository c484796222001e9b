"""Steps per second of MetaLabelNet on one device with XLA against several without.

Keras compiles no step with XLA under a `tf.distribute` strategy, so a user who splits
the work over N devices gives XLA up. This measures the trade on one machine, with the
same global batch and data for every variant:

- one device, `jit_compile=True` and `False` (no strategy);
- N devices (`MirroredStrategy`; logical CPU devices on a machine without GPUs), without
  XLA, with `virtual_step="all"` and `"local"`.

All variants run in one process, interleaved step by step, so that machine noise hits them
alike. Each step is `strategy.run(model.train_step)` in a `tf.function` (with
`jit_compile` for the XLA variant), as benchmarks/step_time.py times it, on four global
batches held in memory. The result is the median step time after warm-up. The cost of
`"local"` is its largest weight difference from `"all"` on the same devices after all the
steps, from the same initial weights on the same batches.

Usage:

    python benchmarks/distributed.py --devices 2 --steps 20 --out benchmarks/results
"""

import argparse
import datetime
import itertools
import json
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import mln_tf  # noqa: E402

MODELS = {
    "fashion_cnn": (mln_tf.classifiers.fashion_cnn, (28, 28, 1)),
    "cifar10_cnn": (mln_tf.classifiers.cifar10_cnn, (32, 32, 3)),
}
NUM_CLASSES = 10


def make_dataset(model_name, batch_size, num_batches, seed=0):
    """`num_batches` fixed global batches `((x, y), (x_meta, y_meta))`, repeated."""
    _, input_shape = MODELS[model_name]
    rng = np.random.default_rng(seed)
    shape = (num_batches, batch_size, *input_shape)
    x = rng.random(shape, dtype=np.float32)
    x_meta = rng.random(shape, dtype=np.float32)
    y = rng.integers(0, NUM_CLASSES, (num_batches, batch_size)).astype("int32")
    y_meta = rng.integers(0, NUM_CLASSES, (num_batches, batch_size)).astype("int32")
    return tf.data.Dataset.from_tensor_slices(((x, y), (x_meta, y_meta))).repeat()


def make_step(model_name, strategy, jit_compile, virtual_step, dataset, seed=0):
    """A compiled training step of a fresh MetaLabelNet that cycles over 4 batches."""
    builder, _ = MODELS[model_name]
    keras.utils.set_random_seed(seed)  # the same initial weights in every variant
    with strategy.scope():
        classifier = builder(num_classes=NUM_CLASSES)
        model = mln_tf.MetaLabelNet(classifier, feature_layer=mln_tf.classifiers.FEATURE_LAYER)
        model.compile(jit_compile=jit_compile, virtual_step=virtual_step)
    if strategy.num_replicas_in_sync > 1:
        dataset = strategy.experimental_distribute_dataset(dataset)
    iterator = iter(dataset)
    batches = [next(iterator) for _ in range(4)]

    @tf.function(jit_compile=jit_compile)
    def train_step(batch):
        return strategy.run(model.train_step, args=(batch,))

    cycle = itertools.cycle(batches)

    def step():
        logs = train_step(next(cycle))
        return float(strategy.experimental_local_results(logs["loss"])[0])

    return step, model


def run(model_name, devices, batch_size, steps, warmup):
    strategy = mln_tf.distribute.build_strategy("mirrored", devices=devices)  # before any op
    default = mln_tf.distribute.build_strategy(None)
    dataset = make_dataset(model_name, batch_size, num_batches=4)
    settings = {
        (1, True, "all"): default,
        (1, False, "all"): default,
        (devices, False, "all"): strategy,
        (devices, False, "local"): strategy,
    }
    variants = {}
    for (num_devices, jit, virtual_step), scope in settings.items():
        variants[(num_devices, jit, virtual_step)] = make_step(
            model_name, scope, jit, virtual_step, dataset
        )
    for step, _ in variants.values():
        for _ in range(warmup):  # traces, compiles and warms caches
            step()
    times = {key: [] for key in variants}
    for _ in range(steps):
        for key, (step, _) in variants.items():
            start = time.perf_counter()
            step()
            times[key].append(time.perf_counter() - start)

    # Dropout draws other masks on N replicas than on one device: compare N with N only.
    reference = [w.numpy() for w in variants[(devices, False, "all")][1].weights]
    baseline = statistics.median(times[(1, True, "all")])
    rows = []
    for (num_devices, jit, virtual_step), samples in times.items():
        median = statistics.median(samples)
        weights = [w.numpy() for w in variants[(num_devices, jit, virtual_step)][1].weights]
        rows.append(
            {
                "model": model_name,
                "devices": num_devices,
                "jit_compile": jit,
                "virtual_step": virtual_step,
                "global_batch": batch_size,
                "median_ms": 1000 * median,
                "steps_per_s": 1 / median,
                "speed_vs_1_device_xla": baseline / median,
                "max_weight_difference_vs_all": max(
                    float(np.abs(a - b).max()) for a, b in zip(weights, reference)
                )
                if num_devices == devices
                else None,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown_table(rows, steps):
    lines = [
        "| devices | jit_compile | virtual_step | median ms | steps/s | × 1 device XLA "
        f'| max weight difference from "all" on as many devices, after {steps} steps |',
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['devices']} | {row['jit_compile']} | {row['virtual_step']} | "
            f"{row['median_ms']:.1f} | {row['steps_per_s']:.2f} | "
            f"{row['speed_vs_1_device_xla']:.2f} | {_format_difference(row)} |"
        )
    return "\n".join(lines)


def _format_difference(row):
    difference = row["max_weight_difference_vs_all"]
    return "—" if difference is None else f"{difference:.2e}"


def machine_description():
    gpus = tf.config.list_physical_devices("GPU")
    device = f"GPU: {gpus[0].name}" if gpus else f"CPU: {os.cpu_count()} cores"
    return f"{platform.machine()}, {device}, TensorFlow {tf.__version__}, Keras {keras.__version__}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fashion_cnn", choices=sorted(MODELS))
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128, help="the global batch")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    if args.devices < 2:
        parser.error(f"--devices must be at least 2. Received: {args.devices}")
    if args.batch_size % args.devices:
        parser.error(
            f"--batch-size {args.batch_size} must split evenly over --devices {args.devices}"
        )

    rows = run(args.model, args.devices, args.batch_size, args.steps, args.warmup)
    os.makedirs(args.out, exist_ok=True)
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": machine_description(),
        "command": "python " + " ".join([os.path.relpath(__file__), *(argv or sys.argv[1:])]),
        "steps": args.steps,
        "rows": rows,
    }
    with open(os.path.join(args.out, "distributed.json"), "w") as f:
        json.dump(result, f, indent=2)
    table = markdown_table(rows, args.warmup + args.steps)
    with open(os.path.join(args.out, "distributed.md"), "w") as f:
        f.write(f"{result['machine']}, {result['date']}\n\n`{result['command']}`\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
