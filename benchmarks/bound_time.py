"""Time of `lipschitz_bound` (product vs LipLT) on ResNet-18-sized models.

Two CIFAR-size (32x32x3) models with ResNet-18's conv widths and strides
(64, 64, 128/2, 128, 256/2, 256, 512/2, 512, then Flatten -> Dense(10)),
ReLU activations:

- "chain": the 8 convs as one feed-forward chain (no skips), the kind of
  model LipLT applies to: both `method="product"` and `method="liplt"` are
  timed, and the bounds' values are reported too;
- "residual": the same convs in 4 residual blocks with identity / 1x1
  shortcuts (`Add`): only `method="product"` applies (LipLT needs a
  feed-forward chain).

The bounds run on the host in NumPy float64 whatever the backend; the
backend only matters for reading the weights. At this size no product of
conv operators can be formed explicitly, so LipLT bounds the products by
the best split into per-layer guaranteed conv bounds (FFT on a padded
grid) and adds the exact pairwise row norms of the last layer.

Usage:

    python benchmarks/bound_time.py --backend jax --json rows.json
    python benchmarks/bound_time.py --quick      # widths / 8, one repeat
"""

import argparse
import json
import os
import platform
import sys
import time


def _parse():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default=os.environ.get("KERAS_BACKEND", "jax"))
    p.add_argument("--quick", action="store_true",
                   help="widths / 8 and one repeat")
    p.add_argument("--repeats", type=int, default=None,
                   help="default 3 (1 with --quick)")
    p.add_argument("--json", default=None, help="write the result rows here")
    return p.parse_args()


def main():
    args = _parse()
    # A benchmark script (not the library) may pick the backend.
    os.environ["KERAS_BACKEND"] = args.backend
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
        __file__))))
    import keras

    import keras_lipschitz

    div = 8 if args.quick else 1
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    widths = [64, 64, 128, 128, 256, 256, 512, 512]
    strides = [1, 1, 2, 1, 2, 1, 2, 1]
    widths = [w // div for w in widths]

    def chain():
        stack = [keras.Input((32, 32, 3))]
        for w, s in zip(widths, strides):
            stack.append(keras.layers.Conv2D(w, 3, strides=s, padding="same",
                                             activation="relu"))
        stack += [keras.layers.Flatten(), keras.layers.Dense(10)]
        return keras.Sequential(stack)

    def residual():
        inputs = keras.Input((32, 32, 3))
        x = keras.layers.Conv2D(widths[0], 3, padding="same",
                                activation="relu")(inputs)
        for i in range(1, 8, 2):
            shortcut = x
            if strides[i - 1] != 1 or shortcut.shape[-1] != widths[i]:
                shortcut = keras.layers.Conv2D(widths[i], 1,
                                               strides=strides[i - 1])(x)
            y = keras.layers.Conv2D(widths[i], 3, strides=strides[i - 1],
                                    padding="same", activation="relu")(x)
            y = keras.layers.Conv2D(widths[i], 3, padding="same")(y)
            x = keras.layers.ReLU()(keras.layers.Add()([y, shortcut]))
        x = keras.layers.Flatten()(x)
        return keras.Model(inputs, keras.layers.Dense(10)(x))

    def timed(fn):
        best, value = float("inf"), None
        for _ in range(args.repeats):
            start = time.perf_counter()
            value = fn()
            best = min(best, time.perf_counter() - start)
        return best, value

    keras.utils.set_random_seed(0)
    model = chain()
    t_product, v_product = timed(lambda: keras_lipschitz.lipschitz_bound(model))
    t_liplt, v_liplt = timed(
        lambda: keras_lipschitz.lipschitz_bound(model, method="liplt")
    )
    res = residual()
    t_res, v_res = timed(lambda: keras_lipschitz.lipschitz_bound(res))
    machine = f"{platform.machine()} {os.cpu_count()}-core CPU, no GPU"
    size = "widths/8" if args.quick else "full widths"
    rows = [
        {
            "benchmark": "bound_time",
            "backend": args.backend,
            "metric": f"lipschitz_bound seconds, ResNet-18 chain ({size})",
            "unit": "s",
            "ours": t_liplt,
            "reference": t_product,
            "reference_name": "method='product' on the same model",
            "ratio": t_liplt / t_product,
            "notes": f"ours = method='liplt'; best of {args.repeats}; "
            f"bounds: liplt {v_liplt:.4g}, product {v_product:.4g}; "
            f"{machine}",
        },
        {
            "benchmark": "bound_time",
            "backend": args.backend,
            "metric": f"lipschitz_bound value ratio liplt/product ({size})",
            "unit": "ratio",
            "ours": v_liplt,
            "reference": v_product,
            "reference_name": "method='product' on the same model",
            "ratio": v_liplt / v_product,
            "notes": "random init (Glorot); smaller is tighter",
        },
        {
            "benchmark": "bound_time",
            "backend": args.backend,
            "metric": f"lipschitz_bound seconds, ResNet-18 residual ({size})",
            "unit": "s",
            "ours": t_res,
            "reference": None,
            "reference_name": "",
            "ratio": None,
            "notes": f"method='product' (LipLT needs a chain); bound "
            f"{v_res:.4g}; best of {args.repeats}; {machine}",
        },
    ]
    for row in rows:
        print(f"{row['metric']}: ours {row['ours']:.4g} {row['unit']}, "
              f"reference {row['reference']}, ratio {row['ratio']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
