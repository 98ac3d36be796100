"""Single ops, side by side: the backend-specific fast paths vs `keras.ops`.

- **TensorFlow** (CPU, `tf.function` graph, no XLA): forward + input
  gradient of `GroupSort2` and `ScaledL2NormPooling2D(2)` on a
  256x28x28x16 batch (the first block of the deel-lip MNIST tutorial
  model), through the fused C++ kernels (`training=True`) and through the
  layers' `keras.ops` formulation, and, for scale, of `ReLU` and
  `AveragePooling2D(2)`.
- **JAX** (CPU, jit): forward + both gradients of a 3x3 "same" conv on a
  128x2x2x512 batch (LipConvNet's fourth SOC layer on CIFAR-10), as
  `ops.conv` and as `normalizers.conv_same` (one im2col matmul there);
  and on a 128x4x4x256 batch, where both use `ops.conv`.

Each case is timed as the median of interleaved repeats after a warm-up;
ratios are ours / reference (below 1: ours is faster).

Usage:

    python benchmarks/fused_ops.py                 # both backends
    python benchmarks/fused_ops.py --quick --json rows.json
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULT_TAG = "BENCHMARK_RESULT_JSON:"
BACKENDS = ("tensorflow", "jax")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="5 repeats")
    parser.add_argument("--json", default=None, help="write the rows here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = 5
    return args


def median_times(functions, repeats):
    """Median seconds per call of each function, calls interleaved."""
    for f in functions.values():
        f()
        f()
    times = {name: [] for name in functions}
    for _ in range(repeats):
        for name, f in functions.items():
            start = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def tensorflow_cases(repeats):
    import keras
    import numpy as np
    import tensorflow as tf

    from keras_lipschitz import _backend
    from keras_lipschitz.layers import GroupSort2
    from keras_lipschitz.layers import ScaledL2NormPooling2D

    x = tf.constant(
        np.random.default_rng(0).normal(size=(256, 28, 28, 16)), "float32"
    )
    if _backend.fused_training_kernels(True, x) is None:
        return [], "fused kernels unavailable (no compiler?)"
    group_sort = GroupSort2()
    pool = ScaledL2NormPooling2D(2)
    relu = keras.layers.ReLU()
    average = keras.layers.AveragePooling2D(2)

    def forward_and_gradient(fn):
        @tf.function
        def step():
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = fn(x)
            return tape.gradient(y, x, output_gradients=tf.ones_like(y))

        return lambda: step().numpy()

    functions = {
        "group_sort_fused": forward_and_gradient(
            lambda t: group_sort(t, training=True)
        ),
        "group_sort_ops": forward_and_gradient(group_sort._sort_pairs),
        "relu": forward_and_gradient(relu),
        "pool_fused": forward_and_gradient(lambda t: pool(t, training=True)),
        "pool_ops": forward_and_gradient(pool._l2_norms),
        "average": forward_and_gradient(average),
    }
    t = median_times(functions, repeats)
    shape = "256x28x28x16, forward + input gradient, tf.function, no XLA"
    rows = [
        ("GroupSort2, fused kernel vs keras.ops", "group_sort_fused",
         "group_sort_ops", "GroupSort2 through keras.ops"),
        ("GroupSort2 fused kernel vs ReLU", "group_sort_fused", "relu",
         "keras.layers.ReLU"),
        ("ScaledL2NormPooling2D(2), fused kernel vs keras.ops", "pool_fused",
         "pool_ops", "ScaledL2NormPooling2D through keras.ops"),
        ("ScaledL2NormPooling2D(2) fused kernel vs AveragePooling2D(2)",
         "pool_fused", "average", "keras.layers.AveragePooling2D"),
    ]
    return [
        {
            "metric": metric,
            "unit": "ms",
            "ours": t[ours] * 1e3,
            "reference": t[ref] * 1e3,
            "reference_name": name,
            "ratio": t[ours] / t[ref],
            "notes": f"{shape}; median of {repeats}",
        }
        for metric, ours, ref, name in rows
    ], None


def value_and_grads(conv, x, k):
    """A timed call: the jitted loss of `conv` and both its gradients."""
    import jax
    import jax.numpy as jnp

    step = jax.jit(
        jax.value_and_grad(
            lambda x, k: jnp.sum(conv(x, k) ** 2), argnums=(0, 1)
        )
    )
    return lambda: jax.block_until_ready(step(x, k))


def jax_cases(repeats):
    import jax
    import jax.numpy as jnp
    import numpy as np
    from keras import ops

    from keras_lipschitz import normalizers

    rng = np.random.default_rng(0)
    rows = []
    for size, channels in ((2, 512), (4, 256)):
        x = jnp.asarray(rng.normal(size=(128, size, size, channels)), "float32")
        k = jnp.asarray(
            0.01 * rng.normal(size=(3, 3, channels, channels)), "float32"
        )

        t = median_times(
            {
                "ours": value_and_grads(normalizers.conv_same, x, k),
                "ops": value_and_grads(
                    lambda x, k: ops.conv(x, k, strides=1, padding="same"),
                    x,
                    k,
                ),
            },
            repeats,
        )
        path = (
            "one im2col matmul" if size < 3 else "ops.conv (image >= kernel)"
        )
        rows.append(
            {
                "metric": f"3x3 same conv, 128x{size}x{size}x{channels}, "
                "normalizers.conv_same vs ops.conv",
                "unit": "ms",
                "ours": t["ours"] * 1e3,
                "reference": t["ops"] * 1e3,
                "reference_name": "keras.ops.conv",
                "ratio": t["ours"] / t["ops"],
                "notes": "value and both gradients, jit, "
                f"{jax.default_backend()}; ours = {path}; "
                f"median of {repeats}",
            }
        )
    return rows, None


def run_child(args):
    backend = os.environ["KERAS_BACKEND"]
    sys.path.insert(0, REPO_ROOT)
    cases = tensorflow_cases if backend == "tensorflow" else jax_cases
    rows, skipped = cases(args.repeats)
    for row in rows:
        row.update({"benchmark": "fused_ops", "backend": backend})
    print(RESULT_TAG + json.dumps({"rows": rows, "skipped": skipped}))


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        run_child(args)
        return
    rows = []
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        env = dict(os.environ, KERAS_BACKEND=backend)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        command = [sys.executable, os.path.abspath(__file__), "--child"]
        command += ["--repeats", str(args.repeats)]
        proc = subprocess.run(
            command, env=env, stdout=subprocess.PIPE, text=True, check=False
        )
        found = [
            json.loads(line[len(RESULT_TAG):])
            for line in proc.stdout.splitlines()
            if line.startswith(RESULT_TAG)
        ]
        if proc.returncode or not found:
            print(f"{backend}: failed (exit code {proc.returncode})")
            continue
        if found[0]["skipped"]:
            print(f"{backend}: skipped, {found[0]['skipped']}")
        for row in found[0]["rows"]:
            rows.append(row)
            print(
                f"{backend:10s} {row['metric']}: {row['ours']:.2f} ms vs "
                f"{row['reference']:.2f} ms, ratio {row['ratio']:.2f}x"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
