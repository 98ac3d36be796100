"""One training step of LipConvNet-5 (SOC) vs plain Conv2D, and fast backward.

Three models, CIFAR-10 shape (32x32x3), batch 128, SGD, cross-entropy on
logits, the same `jit_compile` setting (Keras's "auto"):

- **soc**: `keras_lipschitz.models.LipConvNet(depth=5, width=32)`: five
  stride-2 `SOCConv2D` (5 Taylor terms in training, plain autodiff
  backward), HH1 activations, LLN head;
- **soc_fast**: the same with `fast_backward=True` (Singla & Feizi,
  NeurIPS 2022: one conv weight gradient per layer instead of 5, only
  z_2 stored);
- **conv**: the same network with `keras.layers.Conv2D(filters, k,
  strides=2, padding="same")` in place of each SOC layer (same output
  channels and kernel sizes, same HH1 activations, a plain `Dense` head).

Reported ratios: soc / conv (the price of orthogonality at equal output
shapes; the SOC layers work on c = max(4 c_in, c_out) channels after
space-to-depth, so they do far more arithmetic than a strided Conv2D), and
soc_fast / soc (the NeurIPS'22 speed-up).

Method: each backend runs in its own subprocess (`KERAS_BACKEND` set). Each
model is compiled and warmed up with two `train_on_batch` calls, then
`--steps` steps are timed one by one, the models interleaved; the medians
of wall-clock and of process CPU time (all threads) are reported. CPU time
is less sensitive to other jobs on a shared machine.

Usage:

    python benchmarks/soc_step.py                     # all backends
    python benchmarks/soc_step.py --quick --json soc.json
    python benchmarks/soc_step.py --backends torch --steps 10
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ALL_BACKENDS = ("tensorflow", "jax", "torch")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isdir(os.path.join(REPO_ROOT, "keras_lipschitz")):
    sys.path.insert(0, REPO_ROOT)
RESULT_TAG = "BENCHMARK_RESULT_JSON:"
BATCH = 128


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--backends", default=",".join(ALL_BACKENDS))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument(
        "--quick", action="store_true", help="3 timed steps, width 16"
    )
    parser.add_argument("--json", default=None, help="write the rows here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.width = 3, 16
    return args


def _conv_model(width, num_classes=10):
    import keras

    from keras_lipschitz import layers

    inputs = keras.Input((32, 32, 3))
    x = inputs
    channels = width
    for block in range(5):
        x = keras.layers.Conv2D(
            2 * channels, 1 if block == 4 else 3, strides=2, padding="same"
        )(x)
        x = layers.Householder()(x)
        channels *= 2
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x))


def _child(backend, steps, width):
    import keras
    import numpy as np

    from keras_lipschitz.models import LipConvNet

    load_start = os.getloadavg()[0]
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(BATCH, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, BATCH)
    models = {
        "soc": LipConvNet(depth=5, width=width),
        "soc_fast": LipConvNet(depth=5, width=width, fast_backward=True),
        "conv": _conv_model(width),
    }
    for model in models.values():
        model.compile(
            optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        for _ in range(2):
            model.train_on_batch(x, y)
    wall = {name: [] for name in models}
    cpu = {name: [] for name in models}
    for _ in range(steps):
        for name, model in models.items():
            w0, c0 = time.perf_counter(), time.process_time()
            loss = model.train_on_batch(x, y)
            float(np.asarray(loss))  # wait for the step to finish
            wall[name].append(time.perf_counter() - w0)
            cpu[name].append(time.process_time() - c0)
    return {
        "backend": backend,
        "width": width,
        "steps": steps,
        "wall": {k: statistics.median(v) for k, v in wall.items()},
        "cpu": {k: statistics.median(v) for k, v in cpu.items()},
        "load": [load_start, os.getloadavg()[0]],
    }


def _rows(result):
    backend, wall, cpu = result["backend"], result["wall"], result["cpu"]
    note = (
        f"LipConvNet-5 width {result['width']}, CIFAR shape, batch {BATCH}, "
        f"median of {result['steps']} train_on_batch steps; CPU-time ratios "
        f"soc/conv {cpu['soc'] / cpu['conv']:.2f}, soc_fast/soc "
        f"{cpu['soc_fast'] / cpu['soc']:.2f}; 2-core CPU, no GPU"
    )
    if "load" in result:
        start, end = result["load"]
        note += (
            f", shared with other jobs (1-min load average {start:.1f} at "
            f"start, {end:.1f} at end)"
        )
    return [
        {
            "benchmark": "soc_step",
            "backend": backend,
            "metric": "train_step_seconds_soc_vs_conv2d",
            "unit": "s",
            "ours": wall["soc"],
            "reference": wall["conv"],
            "reference_name": "same network with keras.layers.Conv2D",
            "ratio": wall["soc"] / wall["conv"],
            "notes": note,
        },
        {
            "benchmark": "soc_step",
            "backend": backend,
            "metric": "train_step_seconds_fast_backward_vs_taylor",
            "unit": "s",
            "ours": wall["soc_fast"],
            "reference": wall["soc"],
            "reference_name": "SOCConv2D, autodiff through the Taylor series",
            "ratio": wall["soc_fast"] / wall["soc"],
            "notes": note,
        },
    ]


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        result = _child(args.child, args.steps, args.width)
        print(RESULT_TAG + json.dumps(result))
        return
    rows = []
    for backend in args.backends.split(","):
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
        command = [
            sys.executable, os.path.abspath(__file__), "--child", backend,
            "--steps", str(args.steps), "--width", str(args.width),
        ]
        proc = subprocess.run(command, env=env, capture_output=True, text=True)
        lines = [
            line for line in proc.stdout.splitlines()
            if line.startswith(RESULT_TAG)
        ]
        if proc.returncode or not lines:
            print(f"{backend}: failed\n{proc.stderr[-3000:]}")
            continue
        result = json.loads(lines[-1][len(RESULT_TAG):])
        wall, cpu = result["wall"], result["cpu"]
        print(
            f"{backend:>10}: soc {wall['soc']:.3f}s, soc_fast "
            f"{wall['soc_fast']:.3f}s, conv {wall['conv']:.3f}s | "
            f"soc/conv {wall['soc'] / wall['conv']:.2f}x "
            f"(cpu {cpu['soc'] / cpu['conv']:.2f}x), fast/soc "
            f"{wall['soc_fast'] / wall['soc']:.2f}x "
            f"(cpu {cpu['soc_fast'] / cpu['soc']:.2f}x)"
        )
        rows.extend(_rows(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
