"""Training throughput and peak memory of ℓ∞-distance layers vs a naive one.

Two measurements, each backend and each implementation in its own
subprocess (`KERAS_BACKEND` set before Keras is imported):

- **Throughput**: examples/s of compiled training steps (`fit`, Keras's
  default `jit_compile`) of the papers' MNIST model
  (`linf_dist_net`, depth 5, width 5120, batch 512; `--quick`: depth 3,
  width 256, batch 128), with our chunked `LinfDistDense` (custom
  recomputing backward) against the same model whose layers compute
  $\\|x - w_i\\|_p$ by a full $(B, D, N)$ broadcast differentiated by
  autodiff (`naive_pnorm_distances`). Training uses $p = 8$, the
  start of the papers' schedule.
- **Peak memory**: peak resident set size (`ru_maxrss`) of a process
  that runs one training step of a single distance layer on a $(B, D)$
  input, minus the RSS just before the step (imports, weights and data),
  so the ratio compares what the step itself needs. The target size of
  the issue, a 5120-unit layer on 512×5120 inputs, needs about 54 GB per
  broadcast tensor in the naive form, so the naive row is measured at a
  smaller size only.
- **Full-size training step** (`--full-memory`, the issue's memory goal:
  "a layer of 5120 units on a batch of 512 × 5120 inputs must train
  within 4 GiB of peak memory on CPU"): one fresh process per backend,
  run one after another, builds exactly one `LinfDistDense(5120)` (p = 8)
  in a model, compiles it with Adam and runs one `train_on_batch` on a
  512×5120 batch (forward, backward and optimizer update; the first call
  also compiles). Reported: the process's peak RSS (`ru_maxrss`, imports
  and framework included) and its increase over the RSS just before the
  step. The naive broadcast is not run at this size: its $(B, D, N)$
  difference tensor alone is $512\\cdot5120\\cdot5120\\cdot4$ B = 53.7 GB
  (50 GiB), and autodiff keeps several such tensors for the backward, so
  the reference column is that analytic lower bound.

- **Ratio to Dense** (`--vs-dense`, issue 18): in one fresh process per
  backend and per setting of `KERAS_LIPSCHITZ_LINF_KERNELS` (`on`: the
  compiled CPU kernels, `off`: the `keras.ops` reference), one Adam
  training step (`train_on_batch`, Keras's default `jit_compile`, MSE to
  random targets) of a model holding only `LinfDistDense(1024)` at
  p = 8, `LinfDistDense(1024)` at p = inf, `SortNetDense(1024)` (p = 8,
  q = 0.75 subsets) and `keras.layers.Dense(1024)`, all on the same
  512 × 1024 batch (`--vs-dense-shape`). After `--warmup` steps each,
  `--repeats` rounds interleave one step of every model; reported: the
  median step time of each, its min and max, the ratio of medians to
  Dense, the load average before and after, and how many times the
  compiled kernels ran. `--cpus 0` pins the child to one core (every
  framework and the kernels then run one thread).

Usage:

    python benchmarks/linf_throughput.py --quick --json linf.json
    python benchmarks/linf_throughput.py --full-memory --json linf_full.json
    python benchmarks/linf_throughput.py --vs-dense --json linf_dense.json

Rows follow the benchmarks' JSON convention (`ratio` = ours / naive for
throughput, ours / naive for memory).
"""

import argparse
import json
import os
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _child_throughput(args):
    import keras
    import numpy as np

    sys.path.insert(0, REPO_ROOT)
    from keras_lipschitz.layers import linf
    from keras_lipschitz.losses import LinfDistHinge
    from keras_lipschitz.models import linf_dist_net

    if args.impl == "naive":
        # Same layer, distances by a full broadcast (autodiff backward).
        def naive(self, x, training):
            p = 8.0 if training else float("inf")
            return linf.naive_pnorm_distances(
                x, keras.ops.cast(self.kernel, "float32"), p
            )

        linf.LinfDistDense._distances = naive
    keras.utils.set_random_seed(0)
    model = linf_dist_net(
        (784,), 10, depth=args.depth, width=args.width,
        chunk_size=args.chunk_size,
    )
    model.compile(keras.optimizers.Adam(1e-3), LinfDistHinge(0.45))
    rng = np.random.default_rng(0)
    n = args.batch_size * args.steps
    x = rng.uniform(size=(n, 784)).astype("float32")
    y = rng.integers(0, 10, size=n)
    model.fit(x[: args.batch_size], y[: args.batch_size],
              batch_size=args.batch_size, verbose=0)  # compile
    start = time.perf_counter()
    model.fit(x, y, batch_size=args.batch_size, verbose=0)
    elapsed = time.perf_counter() - start
    return {"examples_per_s": n / elapsed}


def _rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _child_memory(args):
    import resource

    import keras
    import numpy as np

    sys.path.insert(0, REPO_ROOT)
    from keras_lipschitz import _backend
    from keras_lipschitz.layers import linf

    rng = np.random.default_rng(0)
    x = keras.ops.convert_to_tensor(
        rng.uniform(size=(args.batch_size, args.dim)).astype("float32")
    )
    kernel = keras.ops.convert_to_tensor(
        rng.normal(size=(args.dim, args.width)).astype("float32")
    )
    p = keras.ops.convert_to_tensor(8.0)
    if args.impl == "naive":
        def fn(k):
            return keras.ops.sum(linf.naive_pnorm_distances(x, k, 8.0))
    else:
        def fn(k):
            return keras.ops.sum(
                linf.pnorm_distances(x, k, p, args.chunk_size)
            )
    before = _rss_mib()
    start = time.perf_counter()
    _, grad = _backend.value_and_input_gradient(fn, kernel)
    keras.ops.convert_to_numpy(grad)
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return {"peak_mib": peak, "before_mib": before,
            "step_mib": peak - before, "seconds": elapsed}


def _child_full_memory(args):
    """One training step of one LinfDistDense(width) on (batch, dim)."""
    import resource

    import keras
    import numpy as np

    sys.path.insert(0, REPO_ROOT)
    from keras_lipschitz.layers import LinfDistDense

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(args.batch_size, args.dim)).astype("float32")
    y = rng.normal(size=(args.batch_size, args.width)).astype("float32")
    model = keras.Sequential(
        [keras.Input((args.dim,)),
         LinfDistDense(args.width, p=8.0, chunk_size=args.chunk_size)]
    )
    model.compile(keras.optimizers.Adam(1e-3), "mse")
    before = _rss_mib()
    start = time.perf_counter()
    loss = model.train_on_batch(x, y)
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return {"peak_mib": peak, "before_mib": before,
            "step_mib": peak - before, "seconds": elapsed,
            "loss": float(loss)}


def _loadavg():
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "n/a"


VS_DENSE_MODELS = ("dense", "linf_p8", "linf_pinf", "sortnet_p8")


def _child_vs_dense(args):
    """Interleaved train steps of a Dense and of the distance layers."""
    import statistics

    if args.cpus:
        # Before any framework starts its thread pools: they, and the
        # kernels, size themselves from the affinity mask.
        os.sched_setaffinity(0, [int(c) for c in args.cpus.split(",")])

    import keras
    import numpy as np

    sys.path.insert(0, REPO_ROOT)
    from keras_lipschitz.layers import LinfDistDense
    from keras_lipschitz.layers import SortNetDense

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(args.batch_size, args.dim)).astype("float32")
    y = rng.normal(size=(args.batch_size, args.width)).astype("float32")
    layers = {
        "dense": lambda: keras.layers.Dense(args.width),
        "linf_p8": lambda: LinfDistDense(args.width, p=8.0),
        "linf_pinf": lambda: LinfDistDense(args.width, p=float("inf")),
        "sortnet_p8": lambda: SortNetDense(args.width, p=8.0),
    }
    models = {}
    for name in args.models.split(","):
        model = keras.Sequential([keras.Input((args.dim,)), layers[name]()])
        model.compile(keras.optimizers.Adam(1e-3), "mse")
        models[name] = model
    load_before = _loadavg()
    for model in models.values():
        for _ in range(args.warmup):
            model.train_on_batch(x, y)
    times = {name: [] for name in models}
    for _ in range(args.repeats):
        for name, model in models.items():
            start = time.perf_counter()
            model.train_on_batch(x, y)
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) for name, t in times.items()}
    calls = {}
    if "keras_lipschitz._linf_kernels" in sys.modules:
        calls = dict(sys.modules["keras_lipschitz._linf_kernels"].CALLS)
    dense = medians.get("dense")
    return {
        "median_s": medians,
        "min_s": {name: min(t) for name, t in times.items()},
        "max_s": {name: max(t) for name, t in times.items()},
        "ratio_to_dense": {
            name: (m / dense if dense else None)
            for name, m in medians.items()
        },
        "loadavg_before": load_before,
        "loadavg_after": _loadavg(),
        "kernel_calls": calls,
        "kernels_env": os.environ.get("KERAS_LIPSCHITZ_LINF_KERNELS", "1"),
        "cpus": sorted(os.sched_getaffinity(0)),
    }


def _vs_dense_rows(args):
    rows = []
    for backend in args.backends.split(","):
        for setting in args.kernels.split(","):
            env = {"KERAS_LIPSCHITZ_LINF_KERNELS": "0" if setting == "off"
                   else "1"}
            result = _run_child(backend, [
                "--task", "vs_dense", "--batch-size", str(args.batch_size),
                "--dim", str(args.dim), "--width", str(args.width),
                "--repeats", str(args.repeats), "--warmup", str(args.warmup),
                "--models", args.models, "--cpus", args.cpus,
            ], args.timeout, env)
            print(backend, f"kernels {setting}", json.dumps(result),
                  flush=True)
            for name in args.models.split(","):
                if name == "dense":
                    continue
                median = result.get("median_s", {})
                rows.append({
                    "benchmark": "linf_vs_dense", "backend": backend,
                    "metric": f"{name} train step / Dense(1024) step",
                    "unit": "ratio", "kernels": setting,
                    "ours": median.get(name),
                    "reference": median.get("dense"),
                    "reference_name": "keras.layers.Dense, same shape, same "
                                      "process, interleaved",
                    "ratio": result.get("ratio_to_dense", {}).get(name),
                    "notes": (
                        f"batch {args.batch_size} x {args.dim} -> "
                        f"{args.width}, Adam, train_on_batch, median of "
                        f"{args.repeats} interleaved steps after "
                        f"{args.warmup} warm-up; min/max "
                        f"{result.get('min_s', {}).get(name)}/"
                        f"{result.get('max_s', {}).get(name)} s; Dense "
                        f"min/max {result.get('min_s', {}).get('dense')}/"
                        f"{result.get('max_s', {}).get('dense')} s; "
                        f"cpus {result.get('cpus')}; "
                        f"loadavg {result.get('loadavg_before')} -> "
                        f"{result.get('loadavg_after')}; kernel calls "
                        f"{result.get('kernel_calls')}; "
                        f"{result.get('error', '')}"
                    ).strip("; "),
                })
    return rows


def _run_child(backend, extra, timeout, env_extra=None):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    env.update(env_extra or {})
    cmd = [sys.executable, os.path.abspath(__file__), "--child"] + extra
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True,
                             timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout} s"}
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    return {"error": (out.stderr or out.stdout)[-500:]}


def _row(benchmark, backend, metric, unit, ours, ref, notes):
    ratio = None
    if ours is not None and ref is not None and ref > 0:
        ratio = ours / ref
    return {"benchmark": benchmark, "backend": backend, "metric": metric,
            "unit": unit, "ours": ours, "reference": ref,
            "reference_name": "naive broadcast LinfDistDense",
            "ratio": ratio, "notes": notes}


def _full_memory_rows(args):
    batch, dim, width = 512, args.full_dim, 5120
    naive_bytes = batch * 5120 * width * 4
    rows = []
    for backend in args.backends.split(","):
        full = _run_child(backend, [
            "--task", "full", "--batch-size", str(batch), "--dim", str(dim),
            "--width", str(width), "--chunk-size", str(args.chunk_size),
        ], args.timeout)
        print(backend, "full-size train step", full, flush=True)
        peak = full.get("peak_mib")
        rows.append({
            "benchmark": "linf_memory_full", "backend": backend,
            "metric": "train step peak RSS", "unit": "MiB", "ours": peak,
            "reference": naive_bytes / 2**20,
            "reference_name": "naive broadcast: one (B, D, N) float32 "
                              "tensor, analytic (not run)",
            "ratio": None if peak is None else peak / (naive_bytes / 2**20),
            "notes": (
                f"one LinfDistDense({width}), batch {batch} x {dim}, p = 8, "
                + ("" if dim == 5120 else
                   f"(D reduced from 5120 to {dim}: the chunked step's "
                   f"temporaries do not depend on D; add "
                   f"{4 * 4 * (5120 - dim) * width / 2**20:.0f} MiB for the "
                   f"larger kernel, its gradient and 2 Adam slots) ")
                + f"chunk {args.chunk_size}, Adam, one train_on_batch "
                f"(includes compilation) in a fresh process; peak RSS "
                f"includes imports; increase over pre-step RSS "
                f"{full.get('step_mib')} MiB; step {full.get('seconds')} s; "
                f"goal < 4096 MiB; naive = {naive_bytes / 1e9:.1f} GB per "
                f"broadcast tensor (lower bound); {full.get('error', '')}"
            ).strip("; "),
        })
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="tensorflow,jax,torch")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default=None)
    parser.add_argument("--full-memory", "--memory-full",
                        dest="full_memory", action="store_true",
                        help="only measure one training step of one "
                             "LinfDistDense(5120) on 512x5120 per backend")
    parser.add_argument("--full-dim", type=int, default=5120,
                        help="input dimension of --full-memory (5120; a "
                             "smaller one keeps B and N but fewer chunks)")
    parser.add_argument("--vs-dense", action="store_true",
                        help="ratio of LinfDistDense / SortNetDense train "
                             "steps to a Dense step of the same shape")
    parser.add_argument("--kernels", default="on,off",
                        help="--vs-dense: KERAS_LIPSCHITZ_LINF_KERNELS "
                             "settings to run (on, off)")
    parser.add_argument("--vs-dense-shape", default="512,1024,1024",
                        help="--vs-dense: batch,input dim,units")
    parser.add_argument("--models", default=",".join(VS_DENSE_MODELS))
    parser.add_argument("--cpus", default="",
                        help="--vs-dense: comma-separated CPU ids the child "
                             "may use (default: all); '0' compares single "
                             "threads, robust to a busy second core")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--timeout", type=int, default=1800)
    # Child-process options.
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--task", default="throughput")
    parser.add_argument("--impl", default="ours")
    parser.add_argument("--depth", type=int, default=5)
    parser.add_argument("--width", type=int, default=5120)
    parser.add_argument("--dim", type=int, default=5120)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--chunk-size", type=int, default=32)
    args = parser.parse_args()

    if args.child:
        task = {"memory": _child_memory, "full": _child_full_memory,
                "vs_dense": _child_vs_dense}.get(args.task, _child_throughput)
        print("RESULT " + json.dumps(task(args)), flush=True)
        return

    if args.vs_dense or args.full_memory:
        if args.vs_dense:
            args.batch_size, args.dim, args.width = (
                int(v) for v in args.vs_dense_shape.split(","))
            rows = _vs_dense_rows(args)
        else:
            rows = _full_memory_rows(args)
        for row in rows:
            print(json.dumps(row))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
        return

    if args.quick:
        model = dict(depth=3, width=256, batch=128, steps=3)
        memory = dict(batch=128, dim=512, width=512)
    else:
        model = dict(depth=5, width=5120, batch=512, steps=2)
        memory = dict(batch=256, dim=1024, width=1024)
    rows = []
    for backend in args.backends.split(","):
        results = {}
        for impl in ("ours", "naive"):
            results[impl] = _run_child(backend, [
                "--task", "throughput", "--impl", impl,
                "--depth", str(model["depth"]),
                "--width", str(model["width"]),
                "--batch-size", str(model["batch"]),
                "--steps", str(model["steps"]),
            ], args.timeout)
            print(backend, "throughput", impl, results[impl], flush=True)
        shape = (f"depth {model['depth']}, width {model['width']}, batch "
                 f"{model['batch']}, p = 8")
        rows.append(_row(
            "linf_throughput", backend, "train examples/s", "examples/s",
            results["ours"].get("examples_per_s"),
            results["naive"].get("examples_per_s"),
            f"{shape}; {results['ours'].get('error', '')}"
            f"{results['naive'].get('error', '')}".strip("; ")))
        mem = {}
        for impl in ("ours", "naive"):
            mem[impl] = _run_child(backend, [
                "--task", "memory", "--impl", impl,
                "--batch-size", str(memory["batch"]),
                "--dim", str(memory["dim"]),
                "--width", str(memory["width"]),
            ], args.timeout)
            print(backend, "memory", impl, mem[impl], flush=True)
        rows.append(_row(
            "linf_memory", backend, "train step peak RSS increase", "MiB",
            mem["ours"].get("step_mib"), mem["naive"].get("step_mib"),
            f"one layer, B x D -> N = {memory['batch']} x {memory['dim']} "
            f"-> {memory['width']}, p = 8; peak RSS "
            f"{mem['ours'].get('peak_mib')} vs "
            f"{mem['naive'].get('peak_mib')} MiB"))
    for row in rows:
        print(json.dumps(row))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
