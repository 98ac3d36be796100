"""Shared by the peer scripts: arguments, data, the timing loop, output.

The peer scripts run inside a peer library's own virtual environment
(see benchmarks/setup_peers.sh), so they import neither keras_lipschitz
nor Keras 3. Settings match benchmarks/mnist_deel_tutorial.py, so
benchmarks/run_all.py can put the peer's epoch time next to ours.
"""

import argparse
import json
import os
import statistics
import sys
import time

# Same as mnist_deel_tutorial.py: full run, and --quick.
FULL_SETTINGS = (60000, 3)
QUICK_SETTINGS = (2560, 2)
BATCH_SIZE = 256


def parse_args(description, argv=None):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="short run")
    parser.add_argument("--epoch-samples", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument(
        "--json", default=None, help="write [result] to this JSON file"
    )
    args = parser.parse_args(argv)
    samples, repeats = QUICK_SETTINGS if args.quick else FULL_SETTINGS
    if args.epoch_samples is None:
        args.epoch_samples = samples
    if args.repeats is None:
        args.repeats = repeats
    return args


def synthetic_mnist(n, channels_last=True):
    import numpy as np

    rng = np.random.default_rng(0)
    shape = (n, 28, 28, 1) if channels_last else (n, 1, 28, 28)
    x = rng.random(shape, dtype=np.float32)
    y = rng.integers(0, 10, size=n)
    return x, y


def time_interleaved(epoch_fns, repeats):
    """Wall-clock and process CPU seconds of one epoch of each model.

    Returns `{name: [wall, ...], name + "_cpu": [cpu, ...]}`; the models
    are interleaved, rotating which goes first.
    """
    names = list(epoch_fns)
    times = {name: [] for name in names}
    times.update({name + "_cpu": [] for name in names})
    for rep in range(repeats):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for name in order:
            start, cpu = time.perf_counter(), time.process_time()
            epoch_fns[name]()
            times[name].append(time.perf_counter() - start)
            times[name + "_cpu"].append(time.process_time() - cpu)
        print(
            f"repeat {rep + 1}/{repeats}: "
            + ", ".join(f"{n} {times[n][-1]:.2f}s" for n in names),
            file=sys.stderr,
            flush=True,
        )
    return times


def emit(args, result, times):
    result.update(
        {
            "epoch_samples": args.epoch_samples,
            "batch_size": args.batch_size,
            "repeats": args.repeats,
            "peer_s": times["peer"],
            "plain_s": times["plain"],
            "peer_median_s": statistics.median(times["peer"]),
            "plain_median_s": statistics.median(times["plain"]),
            "peer_cpu_median_s": statistics.median(times["peer_cpu"]),
            "plain_cpu_median_s": statistics.median(times["plain_cpu"]),
            "load_average": list(os.getloadavg()),
        }
    )
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([result], f)
