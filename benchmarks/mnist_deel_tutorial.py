"""One training epoch of the deel-lip MNIST tutorial model vs plain Keras.

The model is the one of the deel-lip MNIST tutorial, built from
keras-lipschitz layers:

    SpectralConv2D(16, 3) -> GroupSort2 -> ScaledL2NormPooling2D(2)
    -> SpectralConv2D(32, 3) -> GroupSort2 -> ScaledL2NormPooling2D(2)
    -> Flatten -> SpectralDense(64) -> GroupSort2 -> SpectralDense(10)

The baseline has the same shapes, built from plain Keras layers only:

    Conv2D(16, 3) -> ReLU -> AveragePooling2D(2)
    -> Conv2D(32, 3) -> ReLU -> AveragePooling2D(2)
    -> Flatten -> Dense(64) -> ReLU -> Dense(10)

Why these plain counterparts:

- `Conv2D` / `Dense` for the constrained layers: same kernels, same
  output shapes; the difference is exactly the cost of the normalization
  (power iteration in training).
- `ReLU` for `GroupSort2`: the cheapest standard element-wise activation
  with the same output shape. GroupSort2 is a pairwise min/max, in the same
  cost class (a few element-wise ops per entry); using one of our own
  layers in the baseline would hide its cost.
- `AveragePooling2D` for `ScaledL2NormPooling2D`: L2-norm pooling *is*
  `sqrt(n * avgpool(x**2))`, so average pooling is the plain layer it is
  built on. Max pooling would be an equally fair choice at the same cost.

Both models use the same convolution padding, `--padding same`
(28x28 -> 14x14 -> 7x7) or `--padding valid` (the deel-lip
tutorial's: 28 -> 26 -> 13 -> 11 -> 5, where the second pooling drops a
row and a column; the default, `--padding both`, runs the two), the same
optimizer (Adam, 1e-3), loss (categorical cross-entropy on logits)
and `jit_compile` setting, and are trained on the same data.

Method: for each backend, in a fresh subprocess with `KERAS_BACKEND` set,
both models are compiled and warmed up (a short `fit` that also compiles
the partial last batch), then one full epoch of each is timed, interleaved
ours/plain, `--repeats` times. The ratio reported is
median(ours) / median(plain) of wall-clock epoch times; min/min is printed
too, and so is the ratio of process CPU times (all threads), which is less
sensitive to other jobs on a shared machine. `--breakdown` adds a third
model (plain kernels with our activations and pooling) to split the
overhead into normalization and activation/pooling costs. Optionally
(`keras_lipschitz.vanilla_export` exists), inference throughput of the
exported model is compared with the plain model and with ours in
inference mode.

Usage:

    python benchmarks/mnist_deel_tutorial.py                   # all backends
    python benchmarks/mnist_deel_tutorial.py --backends jax --repeats 5
    python benchmarks/mnist_deel_tutorial.py --epoch-samples 10240  # quick
    python benchmarks/mnist_deel_tutorial.py --data ../shared/data/mnist.npz
    python benchmarks/mnist_deel_tutorial.py --quick --json rows.json
    python benchmarks/mnist_deel_tutorial.py --tf-kernels off  # TF: keras.ops
    python benchmarks/mnist_deel_tutorial.py --padding valid  # one padding

`--json PATH` writes the rows of the benchmark-suite convention
(benchmarks/run_all.py); `--raw-json PATH` writes the full per-backend
measurements.

Data is synthetic by default (uniform pixels, random labels): the timing
of one epoch does not depend on the pixel values.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ALL_BACKENDS = ("tensorflow", "jax", "torch")
# Benchmark the checkout this script lives in, installed or not.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isdir(os.path.join(REPO_ROOT, "keras_lipschitz")):
    sys.path.insert(0, REPO_ROOT)
RESULT_TAG = "BENCHMARK_RESULT_JSON:"
# --quick: samples per timed epoch, repeats, inference samples.
QUICK_SETTINGS = (2560, 2, 2048)
BENCHMARK_NAME = "mnist_deel_tutorial"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--backends",
        default=",".join(ALL_BACKENDS),
        help="comma-separated Keras backends, each run in its own "
        "subprocess (default: %(default)s)",
    )
    parser.add_argument(
        "--epoch-samples",
        "--epochs-samples",
        dest="epoch_samples",
        type=int,
        default=60000,
        help="samples in one timed epoch (default: %(default)s, MNIST)",
    )
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument(
        "--padding",
        default="both",
        choices=("same", "valid", "both"),
        help="padding of both convolutions, in both models; 'both' runs "
        "'same' then 'valid' (inference is measured for 'same' only) "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="timed epochs per model, interleaved (default: %(default)s)",
    )
    parser.add_argument(
        "--data",
        default=None,
        help="optional MNIST .npz (keys x_train, y_train); synthetic "
        "data otherwise",
    )
    parser.add_argument(
        "--jit-compile",
        default="auto",
        choices=("auto", "true", "false"),
        help="`jit_compile` passed to `compile` for both models "
        "(default: %(default)s, i.e. XLA on TF and JAX, eager on torch)",
    )
    parser.add_argument(
        "--tf-data-autotune",
        default="off",
        choices=("on", "off"),
        help="TensorFlow only. 'off' feeds every model the same shuffled, "
        "batched tf.data pipeline with tf.data autotuning disabled; 'on' "
        "passes the NumPy arrays to fit, whose Keras pipeline is "
        "autotuned. On a 2-core CPU the autotuner stalls whole epochs of "
        "either model at random (wall time up to 2x, see "
        "benchmarks/README.md), so 'off' is the default "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--tf-kernels",
        default="on",
        choices=("on", "off"),
        help="TensorFlow only. 'on' lets GroupSort2 and "
        "ScaledL2NormPooling2D train with keras-lipschitz's fused CPU "
        "kernels (compiled on first use; not under XLA); 'off' sets "
        "KERAS_LIPSCHITZ_TF_KERNELS=0, so they train through keras.ops "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="also time a third model, plain Conv2D/Dense with our "
        "GroupSort2 and ScaledL2NormPooling2D, to split the overhead into "
        "normalization and activation/pooling costs",
    )
    parser.add_argument(
        "--no-inference",
        action="store_true",
        help="skip the inference-throughput measurement",
    )
    parser.add_argument(
        "--inference-samples",
        type=int,
        default=10240,
        help="samples per timed predict (default: %(default)s)",
    )
    parser.add_argument(
        "--json",
        default=None,
        help="write the results as benchmark-suite rows (see "
        "benchmarks/README.md) to this JSON file",
    )
    parser.add_argument(
        "--raw-json",
        default=None,
        help="write the full per-backend measurements to this JSON file",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a short run: %d samples per epoch, %d repeats, %d inference "
        "samples (options given explicitly win)" % QUICK_SETTINGS,
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        for name, value in zip(
            ("epoch_samples", "repeats", "inference_samples"), QUICK_SETTINGS
        ):
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)
    return args


# --------------------------------------------------------------------------
# Child process: one backend.
# --------------------------------------------------------------------------


def build_models(keras, breakdown=False, padding="same"):
    from keras_lipschitz import layers as kl

    def ours():
        return keras.Sequential(
            [
                keras.Input((28, 28, 1)),
                kl.SpectralConv2D(16, 3, padding=padding),
                kl.GroupSort2(),
                kl.ScaledL2NormPooling2D(pool_size=2),
                kl.SpectralConv2D(32, 3, padding=padding),
                kl.GroupSort2(),
                kl.ScaledL2NormPooling2D(pool_size=2),
                keras.layers.Flatten(),
                kl.SpectralDense(64),
                kl.GroupSort2(),
                kl.SpectralDense(10),
            ],
            name="keras_lipschitz",
        )

    def plain():
        return keras.Sequential(
            [
                keras.Input((28, 28, 1)),
                keras.layers.Conv2D(16, 3, padding=padding),
                keras.layers.ReLU(),
                keras.layers.AveragePooling2D(pool_size=2),
                keras.layers.Conv2D(32, 3, padding=padding),
                keras.layers.ReLU(),
                keras.layers.AveragePooling2D(pool_size=2),
                keras.layers.Flatten(),
                keras.layers.Dense(64),
                keras.layers.ReLU(),
                keras.layers.Dense(10),
            ],
            name="plain_keras",
        )

    def hybrid():
        # Plain kernels, our activations and pooling.
        return keras.Sequential(
            [
                keras.Input((28, 28, 1)),
                keras.layers.Conv2D(16, 3, padding=padding),
                kl.GroupSort2(),
                kl.ScaledL2NormPooling2D(pool_size=2),
                keras.layers.Conv2D(32, 3, padding=padding),
                kl.GroupSort2(),
                kl.ScaledL2NormPooling2D(pool_size=2),
                keras.layers.Flatten(),
                keras.layers.Dense(64),
                kl.GroupSort2(),
                keras.layers.Dense(10),
            ],
            name="plain_kernels_our_activations",
        )

    models = {"ours": ours(), "plain": plain()}
    if breakdown:
        models["hybrid"] = hybrid()
    return models


def load_data(args, np):
    n = args.epoch_samples
    if args.data:
        with np.load(args.data) as data:
            x = data["x_train"].astype("float32") / 255.0
            y = data["y_train"].astype("int64")
        reps = -(-n // len(x))
        x = np.concatenate([x] * reps)[:n]
        y = np.concatenate([y] * reps)[:n]
        x = x.reshape((n, 28, 28, 1))
    else:
        rng = np.random.default_rng(0)
        x = rng.random((n, 28, 28, 1), dtype=np.float32)
        y = rng.integers(0, 10, size=n)
    y = np.eye(10, dtype="float32")[y]
    return x, y


def _jit(value):
    return {"auto": "auto", "true": True, "false": False}[value]


def time_fit(model, x, y, batch_size):
    """Wall-clock and process CPU seconds (all threads) of one epoch.

    `y` None means `x` is a dataset that yields shuffled batches.
    """
    wall, cpu = time.perf_counter(), time.process_time()
    if y is None:
        model.fit(x, epochs=1, verbose=0)
    else:
        model.fit(
            x, y, batch_size=batch_size, epochs=1, shuffle=True, verbose=0
        )
    return time.perf_counter() - wall, time.process_time() - cpu


def _tf_kernels_state(backend, jit_compile):
    """Whether our layers trained with the fused TF CPU kernels here."""
    if backend != "tensorflow":
        return "n/a"
    import numpy as np

    from keras_lipschitz import _backend

    float32_input = np.zeros((1, 2), "float32")
    if _backend.fused_training_kernels(True, float32_input) is None:
        return "off"
    return "off (XLA)" if jit_compile else "on"


def tf_dataset_without_autotune(x, y, batch_size):
    """The arrays as a reshuffled, batched tf.data pipeline, not autotuned."""
    import tensorflow as tf

    dataset = (
        tf.data.Dataset.from_tensor_slices((x, y))
        .shuffle(len(x), seed=0, reshuffle_each_iteration=True)
        .batch(batch_size)
        .prefetch(1)
    )
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def time_predict(model, x, batch_size):
    start = time.perf_counter()
    model.predict(x, batch_size=batch_size, verbose=0)
    return time.perf_counter() - start


def run_child(args):
    import keras
    import numpy as np

    import keras_lipschitz

    backend = keras.config.backend()
    keras.utils.set_random_seed(0)
    x, y = load_data(args, np)
    bs = args.batch_size
    models = build_models(
        keras, breakdown=args.breakdown, padding=args.padding
    )
    ours = models["ours"]
    for model in models.values():
        model.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            loss=keras.losses.CategoricalCrossentropy(from_logits=True),
            jit_compile=_jit(args.jit_compile),
        )

    # Warm-up: compile the full-batch step and, if the epoch ends with a
    # partial batch, that shape too (TF and JAX retrace on a new shape).
    rem = args.epoch_samples % bs
    warm = min(args.epoch_samples, 3 * bs + rem)
    use_dataset = backend == "tensorflow" and args.tf_data_autotune == "off"

    def fit_data(xs, ys):
        # The warm-up goes through the same input path as the timed epochs.
        if use_dataset:
            return tf_dataset_without_autotune(xs, ys, bs), None
        return xs, ys

    warm_x, warm_y = fit_data(x[:warm], y[:warm])
    for model in models.values():
        time_fit(model, warm_x, warm_y, bs)

    names = list(models)
    times = {name: [] for name in names}
    cpu_times = {name: [] for name in names}
    fit_x, fit_y = fit_data(x, y)
    for rep in range(args.repeats):
        # Rotate which model goes first so drifts in machine load hit all
        # of them equally.
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for name in order:
            wall, cpu = time_fit(models[name], fit_x, fit_y, bs)
            times[name].append(wall)
            cpu_times[name].append(cpu)
        print(
            f"[{backend}] repeat {rep + 1}/{args.repeats}: "
            + ", ".join(
                f"{n} {times[n][-1]:.2f}s (cpu {cpu_times[n][-1]:.1f}s)"
                for n in names
            ),
            file=sys.stderr,
            flush=True,
        )

    result = {
        "backend": backend,
        "keras": keras.__version__,
        "backend_version": _backend_version(backend),
        "keras_lipschitz": keras_lipschitz.__version__,
        "jit_compile": str(ours.jit_compile),
        "tf_data_autotune": args.tf_data_autotune,
        "tf_kernels": _tf_kernels_state(backend, ours.jit_compile),
        "epoch_samples": args.epoch_samples,
        "batch_size": bs,
        "padding": args.padding,
        "repeats": args.repeats,
        "ours_s": times["ours"],
        "plain_s": times["plain"],
        "ours_median_s": statistics.median(times["ours"]),
        "plain_median_s": statistics.median(times["plain"]),
    }
    result["ratio_median"] = result["ours_median_s"] / result["plain_median_s"]
    result["ratio_min"] = min(times["ours"]) / min(times["plain"])
    # Process CPU time (all threads): less sensitive to other jobs on a
    # shared machine than wall-clock time.
    result["ours_cpu_s"] = cpu_times["ours"]
    result["plain_cpu_s"] = cpu_times["plain"]
    result["cpu_ratio_median"] = statistics.median(
        cpu_times["ours"]
    ) / statistics.median(cpu_times["plain"])
    result["load_average"] = _load_average()
    if "hybrid" in times:
        result["hybrid_s"] = times["hybrid"]
        result["hybrid_median_s"] = statistics.median(times["hybrid"])
        result["hybrid_cpu_s"] = cpu_times["hybrid"]

    if not args.no_inference:
        result.update(measure_inference(args, keras_lipschitz, models, x))
    print(RESULT_TAG + json.dumps(result), flush=True)


def measure_inference(args, keras_lipschitz, models, x):
    """Throughput of predict: plain, ours (inference mode), exported."""
    n = min(args.inference_samples, len(x))
    xs = x[:n]
    bs = 1024
    candidates = {"ours": models["ours"], "plain": models["plain"]}
    if "hybrid" in models:
        # Same architecture and activations with plain kernels: the fair
        # reference for the exported model (it isolates normalization cost).
        candidates["hybrid"] = models["hybrid"]
    export = getattr(keras_lipschitz, "vanilla_export", None)
    if export is None:
        try:
            from keras_lipschitz.export import vanilla_export as export
        except ImportError:
            export = None
    if export is not None:
        candidates["exported"] = export(models["ours"])
    for model in candidates.values():
        model.predict(xs[: 2 * bs], batch_size=bs, verbose=0)  # warm-up
    out = {}
    for name, model in candidates.items():
        best = min(time_predict(model, xs, bs) for _ in range(3))
        out[f"predict_{name}_samples_per_s"] = n / best
    plain = out["predict_plain_samples_per_s"]
    for name in candidates:
        if name != "plain":
            out[f"predict_{name}_slowdown"] = (
                plain / out[f"predict_{name}_samples_per_s"]
            )
    return out


def _load_average():
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def _backend_version(backend):
    try:
        module = __import__(backend)
        return getattr(module, "__version__", "?")
    except ImportError:
        return "?"


# --------------------------------------------------------------------------
# Parent process: one subprocess per backend, then a table.
# --------------------------------------------------------------------------


def run_parent(args, argv):
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in backends if b not in ALL_BACKENDS]
    if unknown:
        raise SystemExit(f"Unknown backend(s): {unknown}")
    # Only the parent writes the JSON files.
    child_argv = _drop_option(_drop_option(argv, "--json"), "--raw-json")
    child_argv = _drop_option(child_argv, "--padding")
    paddings = ("same", "valid") if args.padding == "both" else (args.padding,)
    results = []
    for padding, backend in (
        (padding, backend) for padding in paddings for backend in backends
    ):
        env = dict(os.environ, KERAS_BACKEND=backend)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        if args.tf_kernels == "off":
            env["KERAS_LIPSCHITZ_TF_KERNELS"] = "0"
        cmd = [sys.executable, os.path.abspath(__file__), "--child"]
        cmd += child_argv + ["--padding", padding]
        if padding != paddings[0]:
            cmd.append("--no-inference")
        print(f"== {backend}, padding {padding} ==", flush=True)
        proc = subprocess.run(
            cmd, env=env, stdout=subprocess.PIPE, text=True, check=False
        )
        found = None
        for line in proc.stdout.splitlines():
            if line.startswith(RESULT_TAG):
                found = json.loads(line[len(RESULT_TAG) :])
            else:
                print(line)
        if proc.returncode != 0 or found is None:
            print(f"[{backend}] failed (exit code {proc.returncode})")
            results.append(
                {"backend": backend, "padding": padding,
                 "error": proc.returncode}
            )
            continue
        print(
            f"[{backend}, {padding}] ours {found['ours_median_s']:.2f}s, plain "
            f"{found['plain_median_s']:.2f}s per epoch, ratio "
            f"{found['ratio_median']:.2f}x (min/min "
            f"{found['ratio_min']:.2f}x; CPU time "
            f"{found['cpu_ratio_median']:.2f}x)",
            flush=True,
        )
        results.append(found)
    print()
    print(markdown_table(results))
    if any("hybrid_median_s" in r for r in results):
        print()
        print(breakdown_table(results))
    if any("predict_plain_samples_per_s" in r for r in results):
        print()
        print(inference_table(results))
    if args.raw_json:
        with open(args.raw_json, "w") as f:
            json.dump(results, f, indent=2)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result_rows(results), f, indent=2)
    if any("error" in r for r in results):
        raise SystemExit(1)


def _drop_option(argv, name):
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == name:
            skip = True
            continue
        if a.startswith(name + "="):
            continue
        out.append(a)
    return out


def result_rows(results):
    """Rows of the benchmark-suite convention (benchmarks/README.md).

    Every ratio is ours / reference of a time, so below 1 is faster.
    """
    rows = []
    for r in results:
        backend = r["backend"]
        # 'same' keeps the historical name (peer rows compare against it).
        name = BENCHMARK_NAME
        if r.get("padding", "same") != "same":
            name = f"{BENCHMARK_NAME}_{r['padding']}"
        if "error" in r:
            rows.append(
                {
                    "benchmark": name,
                    "backend": backend,
                    "metric": "train epoch time",
                    "unit": "s/epoch",
                    "ours": None,
                    "reference": None,
                    "reference_name": "plain Keras, same shapes",
                    "ratio": None,
                    "notes": f"failed (exit code {r['error']})",
                }
            )
            continue
        setting = (
            f"{r['epoch_samples']} samples, batch {r['batch_size']}, "
            f"padding {r.get('padding', 'same')}, "
            f"median of {r['repeats']}, {r['backend']} "
            f"{r['backend_version']}, jit_compile={r['jit_compile']}"
        )
        if r["backend"] == "tensorflow":
            setting += f", tf.data autotune {r.get('tf_data_autotune', 'on')}"
            setting += f", fused CPU kernels {r.get('tf_kernels', 'off')}"
        rows.append(
            {
                "benchmark": name,
                "backend": backend,
                "metric": "train epoch time",
                "unit": "s/epoch",
                "ours": r["ours_median_s"],
                "reference": r["plain_median_s"],
                "reference_name": "plain Keras Conv2D/ReLU/AvgPool/Dense",
                "ratio": r["ratio_median"],
                "notes": f"{setting}; min/min {r['ratio_min']:.2f}x",
            }
        )
        rows.append(
            {
                "benchmark": name,
                "backend": backend,
                "metric": "train epoch CPU time (all threads)",
                "unit": "s/epoch",
                "ours": statistics.median(r["ours_cpu_s"]),
                "reference": statistics.median(r["plain_cpu_s"]),
                "reference_name": "plain Keras Conv2D/ReLU/AvgPool/Dense",
                "ratio": r["cpu_ratio_median"],
                "notes": "process CPU time, less sensitive to machine load",
            }
        )
        if "hybrid_median_s" in r:
            rows.append(
                {
                    "benchmark": name,
                    "backend": backend,
                    "metric": "train epoch time, normalization only",
                    "unit": "s/epoch",
                    "ours": r["ours_median_s"],
                    "reference": r["hybrid_median_s"],
                    "reference_name": "plain kernels + our GroupSort2/pooling",
                    "ratio": r["ours_median_s"] / r["hybrid_median_s"],
                    "notes": setting,
                }
            )
        plain = r.get("predict_plain_samples_per_s")
        for name, label in (
            ("exported", "predict time, vanilla_export(model)"),
            ("ours", "predict time, inference mode (not exported)"),
        ):
            key = f"predict_{name}_samples_per_s"
            if plain is None or key not in r:
                continue
            rows.append(
                {
                    "benchmark": name,
                    "backend": backend,
                    "metric": label,
                    "unit": "ms per 1000 samples",
                    "ours": 1e6 / r[key],
                    "reference": 1e6 / plain,
                    "reference_name": "plain Keras, same shapes",
                    "ratio": plain / r[key],
                    "notes": "predict, batch 1024, best of 3",
                }
            )
    return rows


def markdown_table(results):
    lines = [
        "| backend | padding | ours: s/epoch (median) "
        "| plain: s/epoch (median) "
        "| ratio (median) | ratio (min/min) | CPU-time ratio (median) "
        "| runs ours / plain (s) | load average |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        padding = r.get("padding", "same")
        if "error" in r:
            lines.append(f"| {r['backend']} | {padding} | failed "
                         "| | | | | | |")
            continue
        load = r.get("load_average")
        load = " / ".join(f"{v:.1f}" for v in load) if load else "?"
        runs = (
            " ".join(f"{t:.1f}" for t in r["ours_s"])
            + " / "
            + " ".join(f"{t:.1f}" for t in r["plain_s"])
        )
        lines.append(
            f"| {r['backend']} {r['backend_version']} | {padding} "
            f"| {r['ours_median_s']:.2f} | {r['plain_median_s']:.2f} "
            f"| **{r['ratio_median']:.2f}x** | {r['ratio_min']:.2f}x "
            f"| {r['cpu_ratio_median']:.2f}x | {runs} | {load} |"
        )
    return "\n".join(lines)


def breakdown_table(results):
    lines = [
        "| backend | plain | hybrid: plain kernels + our activations/"
        "pooling | ours | activations/pooling: hybrid / plain "
        "| normalization: ours / hybrid |",
        "|---|---|---|---|---|---|",
    ]
    med = statistics.median
    for r in results:
        if "hybrid_median_s" not in r:
            continue
        p, h, o = r["plain_median_s"], r["hybrid_median_s"], r["ours_median_s"]
        pc, hc, oc = med(r["plain_cpu_s"]), med(r["hybrid_cpu_s"]), med(
            r["ours_cpu_s"]
        )
        lines.append(
            f"| {r['backend']} | {p:.2f}s (cpu {pc:.1f}s) "
            f"| {h:.2f}s (cpu {hc:.1f}s) | {o:.2f}s (cpu {oc:.1f}s) "
            f"| {h / p:.2f}x (cpu {hc / pc:.2f}x) "
            f"| {o / h:.2f}x (cpu {oc / hc:.2f}x) |"
        )
    return "\n".join(lines)


def inference_table(results):
    lines = [
        "| backend | plain (samples/s) | ours, inference mode | "
        "vanilla_export | hybrid (plain kernels, our activations) "
        "| vanilla_export time / hybrid time |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        if "predict_plain_samples_per_s" not in r:
            continue

        def cell(name):
            key = f"predict_{name}_samples_per_s"
            if key not in r:
                return "n/a"
            slow = r[f"predict_{name}_slowdown"]
            return f"{r[key]:.0f} ({slow:.2f}x slower)"

        export_vs_hybrid = "n/a"
        if "predict_exported_samples_per_s" in r and (
            "predict_hybrid_samples_per_s" in r
        ):
            export_vs_hybrid = "%.2fx" % (
                r["predict_hybrid_samples_per_s"]
                / r["predict_exported_samples_per_s"]
            )
        lines.append(
            f"| {r['backend']} | {r['predict_plain_samples_per_s']:.0f} "
            f"| {cell('ours')} | {cell('exported')} | {cell('hybrid')} "
            f"| {export_vs_hybrid} |"
        )
    return "\n".join(lines)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.child:
        run_child(args)
    else:
        run_parent(args, argv)


if __name__ == "__main__":
    main()
