"""Train step time and peak memory of each 1-Lipschitz conv family vs Conv2D.

One CIFAR-shaped network per family (issue 15), batch 64 by default:

    Input(32, 32, 3) -> Conv2D(w, 1)            (the same plain stem in all)
    -> 5 x [BLOCK(w -> w, 3x3, stride 1) -> activation]
    -> GlobalAveragePooling2D -> Dense(10)

BLOCK is the family's layer: `SpectralConv2D`, `BjorckConv2D`, `AOLConv2D`,
`SOCConv2D`, `AOCConv2D`, `BCOPConv2D`, `CayleyConv2D` (orthogonal convs),
`SLLConv2D`, `CPLConv2D` (residual blocks, inner width w) or
`LiResConv2D`; the activation is `GroupSort2`. The reference, `plain`, has
`keras.layers.Conv2D(w, 3, padding="same")` blocks and `ReLU`. Everything
else (stem, head, SGD, cross-entropy on logits, `jit_compile="auto"`) is
the same.

Method: every (backend, family) runs in its own subprocess. Time: the
family's model and the plain one are compiled, warmed up with two steps,
then `--steps` steps of each are timed interleaved; the ratio is
median(family) / median(plain) of wall-clock step times (CPU-time ratio
too). Memory: two more subprocesses per (backend, family), one that only
builds and trains the family's model for three steps and one that does
the same with the plain model; the ratio of their peak resident set sizes
(`ru_maxrss`, whole process, framework included) is reported, so it
understates the ratio of activation memory.

Usage:

    python benchmarks/layer_families.py                    # all backends
    python benchmarks/layer_families.py --backends torch --families aol,sll
    python benchmarks/layer_families.py --quick --json rows.json

Peer: with `--orthogonium-python PATH` (default
`.venv-orthogonium/bin/python` when it exists; `benchmarks/setup_peers.sh
orthogonium` creates it), the torch rows of `aoc`, `aol` and `sll` are
followed by the same network built with orthogonium's layers in plain
PyTorch (`benchmarks/peers/orthogonium_families.py`), run right after ours:
its step time, its own ratio to a plain torch net, and our step time over
its. Without the peer the output says so.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ALL_BACKENDS = ("tensorflow", "jax", "torch")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isdir(os.path.join(REPO_ROOT, "keras_lipschitz")):
    sys.path.insert(0, REPO_ROOT)
RESULT_TAG = "BENCHMARK_RESULT_JSON:"
BENCHMARK_NAME = "layer_families"
FAMILIES = (
    "spectral", "bjorck", "aol", "soc", "aoc", "bcop", "cayley", "sll",
    "cpl", "liresnet",
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--backends", default=",".join(ALL_BACKENDS))
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--no-memory", action="store_true",
                        help="skip the peak-memory subprocesses")
    parser.add_argument("--quick", action="store_true",
                        help="width 16, 3 timed steps, no memory runs")
    parser.add_argument("--json", default=None)
    parser.add_argument(
        "--orthogonium-python",
        default=os.path.join(REPO_ROOT, ".venv-orthogonium", "bin", "python"),
        help="python of an environment with orthogonium (peer rows)",
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--memory-of", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.width, args.steps, args.no_memory = 16, 3, True
    return args


def block(family, width, layers):
    """The family's width -> width, 3x3, stride-1 layer."""
    if family == "spectral":
        return layers.SpectralConv2D(width, 3, padding="same")
    if family == "bjorck":
        return layers.BjorckConv2D(width, 3, padding="same")
    if family == "aol":
        return layers.AOLConv2D(width, 3, padding="same")
    if family == "soc":
        return layers.SOCConv2D(width, 3)
    if family == "aoc":
        return layers.AOCConv2D(width, 3)
    if family == "bcop":
        return layers.BCOPConv2D(width, 3)
    if family == "cayley":
        return layers.CayleyConv2D(width, 3)
    if family == "sll":
        return layers.SLLConv2D(3, inner_dim=width)
    if family == "cpl":
        return layers.CPLConv2D(width, 3)
    if family == "liresnet":
        return layers.LiResConv2D(3)
    raise ValueError(f"unknown family {family!r}; known: {FAMILIES}")


def build_model(keras, family, width):
    from keras_lipschitz import layers

    x = inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(width, 1)(x)
    for _ in range(5):
        if family == "plain":
            x = keras.layers.Conv2D(width, 3, padding="same")(x)
            x = keras.layers.ReLU()(x)
        else:
            x = block(family, width, layers)(x)
            x = layers.GroupSort2()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(10)(x)
    model = keras.Model(inputs, outputs, name=family)
    model.compile(
        optimizer=keras.optimizers.SGD(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def _data(args, np):
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(args.batch_size, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, size=(args.batch_size,))
    return x, y


def _step(model, x, y):
    start, cpu = time.perf_counter(), time.process_time()
    model.train_on_batch(x, y)
    return time.perf_counter() - start, time.process_time() - cpu


def run_memory_child(args):
    import keras
    import numpy as np

    x, y = _data(args, np)
    model = build_model(keras, args.memory_of, args.width)
    for _ in range(3):
        model.train_on_batch(x, y)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(RESULT_TAG + json.dumps({"peak_rss_mib": peak_kib / 1024}))


def run_time_child(args):
    import keras
    import numpy as np

    family = args.child
    keras.utils.set_random_seed(0)
    x, y = _data(args, np)
    models = {
        family: build_model(keras, family, args.width),
        "plain": build_model(keras, "plain", args.width),
    }
    for model in models.values():
        for _ in range(2):
            model.train_on_batch(x, y)
    wall = {name: [] for name in models}
    cpu = {name: [] for name in models}
    for i in range(args.steps):
        order = list(models) if i % 2 == 0 else list(models)[::-1]
        for name in order:
            w, c = _step(models[name], x, y)
            wall[name].append(w)
            cpu[name].append(c)
    result = {
        "backend": keras.config.backend(),
        "family": family,
        "width": args.width,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "family_ms": [1000 * t for t in wall[family]],
        "plain_ms": [1000 * t for t in wall["plain"]],
        "family_median_ms": 1000 * statistics.median(wall[family]),
        "plain_median_ms": 1000 * statistics.median(wall["plain"]),
        "cpu_ratio": statistics.median(cpu[family])
        / statistics.median(cpu["plain"]),
        "load_average": list(os.getloadavg()),
    }
    result["ratio"] = result["family_median_ms"] / result["plain_median_ms"]
    print(RESULT_TAG + json.dumps(result))


def _run(backend, extra):
    env = dict(os.environ, KERAS_BACKEND=backend)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    cmd = [sys.executable, os.path.abspath(__file__)] + extra
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):]), None
    tail = (proc.stderr or "").strip().splitlines()[-1:] or ["no output"]
    return None, f"exit {proc.returncode}: {tail[0][:160]}"


PEER_FAMILIES = ("aoc", "aol", "sll")


def _run_orthogonium(python, family, args):
    """orthogonium's version of the family's net, or (None, reason)."""
    if not python or not os.path.exists(python):
        return None, "not installed (benchmarks/setup_peers.sh orthogonium)"
    script = os.path.join(REPO_ROOT, "benchmarks", "peers",
                          "orthogonium_families.py")
    cmd = [python, script, family, "--width", str(args.width),
           "--batch-size", str(args.batch_size), "--steps", str(args.steps)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):]), None
    tail = (proc.stderr or "").strip().splitlines()[-1:] or ["no output"]
    return None, f"exit {proc.returncode}: {tail[0][:160]}"


def main(argv=None):
    args = parse_args(argv)
    if args.memory_of:
        return run_memory_child(args)
    if args.child:
        return run_time_child(args)
    common = ["--width", str(args.width), "--batch-size",
              str(args.batch_size), "--steps", str(args.steps)]
    rows, lines, peer_lines = [], [], []
    peer_status = None
    lines.append("| backend | family | step ms (median) | plain ms | ratio "
                 "| CPU-time ratio | peak RSS ratio | load |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for backend in [b for b in args.backends.split(",") if b]:
        plain_rss = None
        if not args.no_memory:
            found, _ = _run(backend, ["--memory-of", "plain"] + common)
            plain_rss = found and found["peak_rss_mib"]
        for family in [f for f in args.families.split(",") if f]:
            found, error = _run(backend, ["--child", family] + common)
            if found is None:
                print(f"[{backend}] {family}: failed ({error})", flush=True)
                lines.append(f"| {backend} | {family} | failed: {error} "
                             "| | | | | |")
                rows.append({
                    "benchmark": BENCHMARK_NAME, "backend": backend,
                    "metric": f"{family} train step", "unit": "ms",
                    "ours": None, "reference": None,
                    "reference_name": "plain Conv2D net", "ratio": None,
                    "notes": f"failed ({error})",
                })
                continue
            rss_ratio = None
            if plain_rss:
                mem, _ = _run(backend, ["--memory-of", family] + common)
                if mem:
                    rss_ratio = mem["peak_rss_mib"] / plain_rss
            load = found["load_average"][0]
            print(f"[{backend}] {family}: {found['family_median_ms']:.1f} ms "
                  f"vs plain {found['plain_median_ms']:.1f} ms, "
                  f"{found['ratio']:.2f}x", flush=True)
            lines.append(
                f"| {backend} | {family} | {found['family_median_ms']:.1f} "
                f"| {found['plain_median_ms']:.1f} | **{found['ratio']:.2f}x** "
                f"| {found['cpu_ratio']:.2f}x | "
                + (f"{rss_ratio:.2f}x" if rss_ratio else "—")
                + f" | {load:.1f} |"
            )
            rows.append({
                "benchmark": BENCHMARK_NAME, "backend": backend,
                "metric": f"{family} train step (5 blocks, width "
                f"{args.width}, batch {args.batch_size})",
                "unit": "ms", "ours": found["family_median_ms"],
                "reference": found["plain_median_ms"],
                "reference_name": "plain Conv2D net, same shapes",
                "ratio": found["ratio"],
                "notes": f"median of {args.steps}, interleaved; CPU-time "
                f"ratio {found['cpu_ratio']:.2f}x"
                + (f"; peak RSS ratio {rss_ratio:.2f}x" if rss_ratio else ""),
            })
            if backend != "torch" or family not in PEER_FAMILIES:
                continue
            peer, reason = _run_orthogonium(
                args.orthogonium_python, family, args
            )
            if peer is None:
                peer_status = reason
                continue
            versus = found["family_median_ms"] / peer["family_median_ms"]
            print(f"[orthogonium] {family}: {peer['family_median_ms']:.1f} ms "
                  f"({peer['ratio']:.2f}x its plain torch net); ours / "
                  f"theirs {versus:.2f}x", flush=True)
            peer_lines.append(
                f"| {family} | {found['family_median_ms']:.1f} "
                f"| {found['ratio']:.2f}x | {peer['family_median_ms']:.1f} "
                f"| {peer['ratio']:.2f}x | **{versus:.2f}x** "
                f"| {peer['load_average'][0]:.1f} |"
            )
            rows.append({
                "benchmark": BENCHMARK_NAME, "backend": "torch",
                "metric": f"{family} train step vs orthogonium (5 blocks, "
                f"width {args.width}, batch {args.batch_size})",
                "unit": "ms", "ours": found["family_median_ms"],
                "reference": peer["family_median_ms"],
                "reference_name": f"{peer['peer']}, same net in plain torch",
                "ratio": versus,
                "notes": f"orthogonium's own ratio to plain torch "
                f"{peer['ratio']:.2f}x; medians of {args.steps}",
            })
    print()
    print("\n".join(lines))
    if peer_lines:
        print("\n| family (torch) | ours ms | ours / plain Keras | orthogonium "
              "ms | orthogonium / plain torch | ours / orthogonium | load |")
        print("|---|---|---|---|---|---|---|")
        print("\n".join(peer_lines))
    elif peer_status or "torch" in args.backends:
        print(f"\northogonium (peer): {peer_status or 'not run'}, "
              "not measured.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    if any(r["ratio"] is None for r in rows):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
