"""orthogonium (PyTorch): the layer-family nets of benchmarks/layer_families.py.

Runs inside `.venv-orthogonium` (benchmarks/setup_peers.sh orthogonium),
called by `layer_families.py --orthogonium-python PATH`. Builds, in plain
PyTorch with orthogonium's layers, the same CIFAR-shaped network as
`layer_families.build_model` (NCHW):

    Conv2d(3, w, 1) -> 5 x [BLOCK(w -> w, 3x3) -> MaxMin] -> global average
    pool -> Linear(w, 10)

with BLOCK `AdaptiveOrthoConv2d(w, w, 3)` (its defaults: "same" padding,
circular, like our `AOCConv2D`), `AOLConv2D(w, w, 3, padding=1)` or
`SDPBasedLipschitzResBlock(w, inner_dim_factor=1, kernel_size=3)`, and
`plain` with `nn.Conv2d(w, w, 3, padding=1)` and ReLU. One SGD(0.01) step
on cross-entropy per batch of uniform noise; two warm-up steps, then
`--steps` steps of the family and of `plain` interleaved. Prints one line
`BENCHMARK_RESULT_JSON:{...}` with the medians in ms.

Usage: python orthogonium_families.py FAMILY [--width 32] [--batch-size 64]
       [--steps 5]
"""

import argparse
import json
import os
import statistics
import time

RESULT_TAG = "BENCHMARK_RESULT_JSON:"


def build(family, width):
    import torch
    from torch import nn

    from orthogonium.layers import AdaptiveOrthoConv2d
    from orthogonium.layers import MaxMin
    from orthogonium.layers.conv.AOL.aol import AOLConv2D
    from orthogonium.layers.conv.SLL.sll_layer import (
        SDPBasedLipschitzResBlock,
    )

    def block():
        if family == "aoc":
            return AdaptiveOrthoConv2d(width, width, 3)
        if family == "aol":
            return AOLConv2D(width, width, 3, padding=1)
        if family == "sll":
            return SDPBasedLipschitzResBlock(width, 1, kernel_size=3)
        if family == "plain":
            return nn.Conv2d(width, width, 3, padding=1)
        raise ValueError(f"unknown family {family!r}: aoc, aol, sll, plain")

    layers = [nn.Conv2d(3, width, 1)]
    for _ in range(5):
        layers.append(block())
        layers.append(nn.ReLU() if family == "plain" else MaxMin())
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10)]
    model = nn.Sequential(*layers)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    return model, optimizer


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("family")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()

    import torch
    from importlib.metadata import version

    torch.manual_seed(0)
    x = torch.rand(args.batch_size, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch_size,))
    loss_fn = torch.nn.CrossEntropyLoss()
    nets = {
        args.family: build(args.family, args.width),
        "plain": build("plain", args.width),
    }

    def step(name):
        model, optimizer = nets[name]
        model.train()
        start = time.perf_counter()
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        optimizer.step()
        return time.perf_counter() - start

    for name in nets:
        for _ in range(2):
            step(name)
    times = {name: [] for name in nets}
    for i in range(args.steps):
        order = list(nets) if i % 2 == 0 else list(nets)[::-1]
        for name in order:
            times[name].append(step(name))
    result = {
        "peer": f"orthogonium {version('orthogonium')}",
        "torch": torch.__version__,
        "family": args.family,
        "family_ms": [1000 * t for t in times[args.family]],
        "plain_ms": [1000 * t for t in times["plain"]],
        "family_median_ms": 1000 * statistics.median(times[args.family]),
        "plain_median_ms": 1000 * statistics.median(times["plain"]),
        "load_average": list(os.getloadavg()),
    }
    result["ratio"] = result["family_median_ms"] / result["plain_median_ms"]
    print(RESULT_TAG + json.dumps(result))


if __name__ == "__main__":
    main()
