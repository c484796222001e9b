"""Times one MetaLabelNet training step against one plain cross-entropy step.

All variants run in one process, interleaved step by step, on the same classifier
architecture, batch size and data, so that machine noise hits them alike. The result is the
median step time after warm-up and its ratio to the plain step of the same `jit_compile`
setting (the `*_fit` variants: to `plain_fit`). Peak memory is measured per variant in a
fresh subprocess, as the rise of the peak during the steps: host RSS (VmHWM) on the CPU,
`tf.config.experimental.get_memory_info` on a GPU.

Variants (`VARIANTS`): `plain` is Keras' own `train_step` with sparse cross-entropy;
`nested` and `forward` are the exact meta step with `meta_gradient="nested_tapes"` and
`"forward_mode"`; `+cache` feeds cached frozen features with the batch
(`mln_tf.data.cache_features`); `head` is `virtual_scope="head"` (nested tapes;
`head_forward` with forward mode); `+clean` adds the meta batch's cross-entropy to the
classifier's update (`clean_weight=1.0`); `+shared` does too, with the meta batch in the
noisy batch's forward pass (`meta_batch_pass="shared"`); `_half` with a meta batch half the
noisy batch's size (`meta_batch_size`); `+logits` has the generator read
the classifier's current logits (`generator_input="classifier_logits"`); `bf16` builds the
classifier under the `mixed_bfloat16` policy; `*_fit` runs the step the way `fit` does,
through `model.make_train_function()` on a dataset iterator. The others call a `tf.function` of
`train_step` on one batch.

Usage:

    python benchmarks/step_time.py --models fashion_cnn --steps 30 --out benchmarks/results
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
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
# name: (meta_gradient, cached features, virtual_scope, dtype policy, through fit's function);
# meta_gradient None is the plain cross-entropy step.
VARIANTS = {
    "plain": (None, False, None, "float32", False),
    "nested": ("nested_tapes", False, "all", "float32", False),
    "nested+cache": ("nested_tapes", True, "all", "float32", False),
    "forward": ("forward_mode", False, "all", "float32", False),
    "forward+cache": ("forward_mode", True, "all", "float32", False),
    "head": ("nested_tapes", False, "head", "float32", False),
    "head+cache": ("nested_tapes", True, "head", "float32", False),
    "head_forward+cache": ("forward_mode", True, "head", "float32", False),
    "head+cache+clean": ("nested_tapes", True, "head", "float32", False),
    "head+logits+clean": ("nested_tapes", False, "head", "float32", False),
    "head+cache+shared": ("nested_tapes", True, "head", "float32", False),
    "head+cache+clean_half": ("nested_tapes", True, "head", "float32", False),
    "head+cache+shared_half": ("nested_tapes", True, "head", "float32", False),
    "plain_bf16": (None, False, None, "mixed_bfloat16", False),
    "nested+cache_bf16": ("nested_tapes", True, "all", "mixed_bfloat16", False),
    "head+cache_bf16": ("nested_tapes", True, "head", "mixed_bfloat16", False),
    "plain_fit": (None, False, None, "float32", True),
    "nested+cache_fit": ("nested_tapes", True, "all", "float32", True),
    "head+cache_fit": ("nested_tapes", True, "head", "float32", True),
}
# The further MetaLabelNet options of a variant.
VARIANT_OPTIONS = {
    "head+cache+clean": {"clean_weight": 1.0},
    "head+logits+clean": {"generator_input": "classifier_logits", "clean_weight": 1.0},
    "head+cache+shared": {"clean_weight": 1.0, "meta_batch_pass": "shared"},
    "head+cache+clean_half": {"clean_weight": 1.0},
    "head+cache+shared_half": {"clean_weight": 1.0, "meta_batch_pass": "shared"},
}
# Variants whose meta batch is this fraction of the noisy batch (the others: the same size).
META_BATCH_FRACTION = {"head+cache+clean_half": 0.5, "head+cache+shared_half": 0.5}
DEFAULT_VARIANTS = tuple(VARIANTS)


def is_legal(variant, jit_compile):
    """XLA cannot compile max-pooling's second derivative outside float32."""
    meta_gradient, _, scope, policy, _ = VARIANTS[variant]
    return not (jit_compile and meta_gradient and scope == "all" and policy != "float32")


def baseline_of(variant):
    return "plain_fit" if VARIANTS[variant][4] else "plain"


def make_step(model_name, variant, jit_compile, batch_size, seed=0):
    """A compiled training step, as a function of no arguments that returns the loss."""
    meta_gradient, cached, scope, policy, through_fit = VARIANTS[variant]
    keras.utils.set_random_seed(seed)
    builder, input_shape = MODELS[model_name]
    rng = np.random.default_rng(seed)
    x = tf.constant(rng.random((batch_size, *input_shape), dtype=np.float32))
    y = tf.constant(rng.integers(0, NUM_CLASSES, batch_size).astype("int32"))
    keras.config.set_dtype_policy(policy)
    try:
        classifier = builder(num_classes=NUM_CLASSES)
    finally:
        keras.config.set_dtype_policy("float32")
    if meta_gradient is None:
        classifier.compile(
            optimizer=mln_tf.optimizers.paper_classifier_optimizer(),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=jit_compile,
        )
        model, batch = classifier, (x, y)
    else:
        model = mln_tf.MetaLabelNet(
            classifier,
            feature_layer=mln_tf.classifiers.FEATURE_LAYER,
            meta_gradient=meta_gradient,
            virtual_scope=scope,
            **VARIANT_OPTIONS.get(variant, {}),
        )
        model.compile(jit_compile=jit_compile)
        noisy = (x, y, model.feature_extractor(x, training=False)) if cached else (x, y)
        meta_size = int(batch_size * META_BATCH_FRACTION.get(variant, 1.0))
        batch = (noisy, (x[:meta_size], y[:meta_size]))
    if through_fit:
        model.make_train_function()
        iterator = iter(tf.data.Dataset.from_tensors(batch).repeat())
        return lambda: float(model.train_function(iterator)["loss"])
    step = tf.function(model.train_step, jit_compile=jit_compile)
    return lambda: float(step(batch)["loss"])


def _proc_status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def peak_memory_bytes():
    """Peak GPU memory on a GPU; otherwise the process's RSS high-water mark (VmHWM)."""
    if tf.config.list_physical_devices("GPU"):
        return int(tf.config.experimental.get_memory_info("GPU:0")["peak"])
    # VmHWM, unlike ru_maxrss, is not inherited from the parent across fork and exec.
    return _proc_status_kb("VmHWM") * 1024


def measure_memory(model_name, variant, jit_compile, batch_size, steps=5):
    """Peak memory of the steps alone, in a fresh process so that peaks do not mix.

    Returns the peak after the steps minus the peak before the first one (after the model,
    its optimizer state and the batch exist), in bytes.
    """
    command = [
        sys.executable, __file__, "--memory-of", f"{model_name}:{variant}:{int(jit_compile)}",
        "--batch-size", str(batch_size), "--steps", str(steps),
    ]  # fmt: skip
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    before, after = output.strip().splitlines()[-1].split()
    return int(after) - int(before)


def run(models, variants, jit_settings, batch_size, steps, warmup, memory=True):
    rows = []
    for model_name in models:
        steps_of = {
            (variant, jit): make_step(model_name, variant, jit, batch_size)
            for jit in jit_settings
            for variant in variants
            if is_legal(variant, jit)
        }
        for step in steps_of.values():
            for _ in range(warmup):  # traces, compiles and warms caches
                step()
        times = {key: [] for key in steps_of}
        for _ in range(steps):
            for key, step in steps_of.items():
                start = time.perf_counter()
                step()
                times[key].append(time.perf_counter() - start)
        for (variant, jit), samples in times.items():
            baseline = times.get((baseline_of(variant), jit))
            median = statistics.median(samples)
            row = {
                "model": model_name,
                "variant": variant,
                "jit_compile": jit,
                "batch_size": batch_size,
                "median_ms": 1000 * median,
                "ratio_to_plain": median / statistics.median(baseline) if baseline else None,
                # The fastest step, less sensitive to other processes on a shared machine
                "min_ms": 1000 * min(samples),
                "min_ratio_to_plain": min(samples) / min(baseline) if baseline else None,
            }
            if memory:
                row["step_memory_mb"] = measure_memory(model_name, variant, jit, batch_size) / 2**20
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def markdown_table(rows):
    memory = "step_memory_mb" in rows[0]
    lines = [
        "| model | variant | jit_compile | median ms | × plain | min ms | min × plain |"
        + (" step peak MB | memory × plain |" if memory else ""),
        "|---|---|---|---|---|---|---|" + ("---|---|" if memory else ""),
    ]
    peaks = {(r["model"], r["variant"], r["jit_compile"]): r.get("step_memory_mb") for r in rows}
    for row in rows:
        ratio, min_ratio = row["ratio_to_plain"], row["min_ratio_to_plain"]
        line = (
            f"| {row['model']} | {row['variant']} | {row['jit_compile']} | "
            f"{row['median_ms']:.1f} | {'—' if ratio is None else f'{ratio:.2f}'} | "
            f"{row['min_ms']:.1f} | {'—' if min_ratio is None else f'{min_ratio:.2f}'} |"
        )
        if memory:
            plain = peaks.get((row["model"], baseline_of(row["variant"]), row["jit_compile"]))
            relative = "—" if not plain or plain <= 0 else f"{row['step_memory_mb'] / plain:.2f}"
            line += f" {row['step_memory_mb']:.0f} | {relative} |"
        lines.append(line)
    return "\n".join(lines)


def machine_description():
    gpus = tf.config.list_physical_devices("GPU")
    device = f"GPU: {gpus[0].name}" if gpus else f"CPU: {os.cpu_count()} cores"
    return f"{platform.machine()}, {device}, TensorFlow {tf.__version__}, Keras {keras.__version__}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["fashion_cnn"], choices=sorted(MODELS))
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=VARIANTS)
    parser.add_argument("--jit", choices=["both", "on", "off"], default="both")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-memory", action="store_true", help="skip peak-memory runs")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.memory_of:
        model_name, variant, jit = args.memory_of.split(":")
        step = make_step(model_name, variant, bool(int(jit)), args.batch_size)
        before = peak_memory_bytes()
        for _ in range(args.steps):
            step()
        print(before, peak_memory_bytes())
        return

    jit_settings = {"both": (False, True), "on": (True,), "off": (False,)}[args.jit]
    rows = run(
        args.models,
        args.variants,
        jit_settings,
        args.batch_size,
        args.steps,
        args.warmup,
        not args.no_memory,
    )
    os.makedirs(args.out, exist_ok=True)
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": machine_description(),
        "command": "python " + " ".join([os.path.relpath(__file__), *(argv or sys.argv[1:])]),
        "steps": args.steps,
        "rows": rows,
    }
    with open(os.path.join(args.out, "step_time.json"), "w") as f:
        json.dump(result, f, indent=2)
    table = markdown_table(rows)
    with open(os.path.join(args.out, "step_time.md"), "w") as f:
        f.write(f"{result['machine']}, {result['date']}\n\n`{result['command']}`\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
