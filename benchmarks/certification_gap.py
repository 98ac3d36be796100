"""Where certified accuracy is lost: assumed vs guaranteed Lipschitz bounds.

deel-lip reports certified accuracy with the margin certificate
$r = (z_y - z_{j^*})/\\sqrt2$ of a network *assumed* 1-Lipschitz; we
certify with guaranteed float64 bounds. This script takes trained models
and, on the MNIST test set, reports for each:

- the guaranteed bound of every layer with weights (`layer_lipschitz_bound`
  at the layer's real input size: exact operator norms of the convolutions
  on small inputs, the padded-grid FFT bound otherwise) and of the whole
  model (`lipschitz_bound`, the product), and a *lower* bound on its true
  constant from `empirical_lipschitz` (pairs found by gradient ascent);
- certified accuracy at ε = 0.5, 1.0, 1.58 with (a) deel-lip's certificate,
  $L = 1$ assumed, which is not sound when the true constant is above 1;
  (b) the sound global certificate $r = (z_y - z_{j^*})/(\\sqrt2\\,L)$ with
  the guaranteed $L$; (c) `keras_lipschitz.certify` (the pairwise
  certificate of the last layer over a guaranteed bound of the body).

Models:

- `--deel-npz PATH`: weights exported by
  `benchmarks/peers/deel_lip_certified.py --export` (deel-lip's
  `vanilla_export`: plain conv and dense kernels, RKO and its correction
  factor included), loaded into the same architecture built from
  `keras.layers.Conv2D`/`Dense` and our `GroupSort2` and
  `ScaledL2NormPooling2D`, which compute what deel-lip's do;
- `--model PATH`: a `.keras` file, e.g. written by
  `benchmarks/certified.py --save-model`.

The last line printed is one JSON object with every number.

Usage:

    KERAS_BACKEND=tensorflow python benchmarks/certification_gap.py \\
        --deel-npz deel.npz --model ours.keras --data ../shared/data/mnist.npz
"""

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.join(os.path.dirname(HERE), "examples")
EPSILONS = (0.5, 1.0, 1.58)


def deel_tutorial_plain(npz_path):
    """The deel-lip tutorial architecture with plain Keras layers, holding
    the weights deel-lip exported."""
    import keras
    import numpy as np

    from keras_lipschitz import layers

    model = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(16, 3, padding="same"),
            layers.GroupSort2(),
            layers.ScaledL2NormPooling2D(pool_size=2),
            keras.layers.Conv2D(32, 3, padding="same"),
            layers.GroupSort2(),
            layers.ScaledL2NormPooling2D(pool_size=2),
            keras.layers.Flatten(),
            keras.layers.Dense(64),
            layers.GroupSort2(),
            keras.layers.Dense(10),
        ],
        name="deel_lip_tutorial_export",
    )
    with np.load(npz_path) as f:
        names = sorted(f.files, key=lambda n: (int(n.split("_")[0]), n))
        kernels = [f[n] for n in names if "_kernel_" in n]
        biases = [f[n] for n in names if "_bias_" in n]
    with_weights = [layer for layer in model.layers if layer.weights]
    if len(with_weights) != len(kernels):
        raise SystemExit(
            f"{npz_path}: {len(kernels)} kernels for {len(with_weights)} "
            "layers with weights"
        )
    for layer, kernel, bias in zip(with_weights, kernels, biases):
        layer.set_weights([kernel, bias])
    return model


def analyse(name, model, x_test, y_test, empirical_points=64):
    """Per-layer bounds, global bound, empirical lower bound, and certified
    accuracy under the three certificates."""
    import keras
    import numpy as np

    import keras_lipschitz
    from keras_lipschitz.certification.composition import (
        layer_lipschitz_bound,
    )
    from keras_lipschitz.empirical import empirical_lipschitz

    per_layer = []
    for layer in model.layers:
        if not layer.weights:
            continue
        shape = tuple(layer.input.shape)
        per_layer.append({
            "layer": f"{type(layer).__name__} {layer.name}",
            "bound": layer_lipschitz_bound(layer, shape),
        })
    lipschitz = float(keras_lipschitz.lipschitz_bound(model))
    lower = float(empirical_lipschitz(model, x_test[:empirical_points]))
    logits = np.asarray(
        model.predict(x_test, batch_size=1024, verbose=0), dtype=np.float64
    )
    top2 = np.sort(logits, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    correct = np.argmax(logits, axis=1) == y_test
    radii = {
        "assumed_l1_margin": np.where(correct, margin / np.sqrt(2.0), 0.0),
        "guaranteed_global": np.where(
            correct, margin / (np.sqrt(2.0) * lipschitz), 0.0
        ),
    }
    radius, method = keras_lipschitz.certify(
        model, x_test, y_test, batch_size=1024, return_method=True
    )
    radii[f"certify ({method})"] = np.asarray(radius)
    certified = {
        kind: {str(e): float(np.mean(r > e)) for e in EPSILONS}
        for kind, r in radii.items()
    }
    print(f"\n== {name}: clean {correct.mean():.4f}")
    for row in per_layer:
        print(f"  {row['layer']:<40} guaranteed bound {row['bound']:.6f}")
    print(f"  whole model: guaranteed bound L = {lipschitz:.6f}; empirical "
          f"lower bound {lower:.6f}")
    for kind, values in certified.items():
        cells = ", ".join(f"eps {e}: {v:.4f}" for e, v in values.items())
        print(f"  {kind:<28} {cells}")
    return {
        "model": name,
        "clean": float(correct.mean()),
        "layers": per_layer,
        "lipschitz_bound": lipschitz,
        "empirical_lower_bound": lower,
        "certified": certified,
        "backend": keras.config.backend(),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--deel-npz", default=None)
    p.add_argument("--model", action="append", default=[],
                   help="a .keras file (repeatable)")
    p.add_argument("--data", default=None, help="Keras-format mnist.npz")
    p.add_argument("--test-samples", type=int, default=None)
    args = p.parse_args(argv)
    if not args.deel_npz and not args.model:
        p.error("give --deel-npz and/or --model")
    sys.path.insert(0, EXAMPLES)
    import _common

    import keras

    import keras_lipschitz  # noqa: F401  (registers the layers)

    _, _, x_test, y_test = _common.load_mnist(args.data)
    if args.test_samples:
        x_test, y_test = x_test[: args.test_samples], y_test[
            : args.test_samples]
    results = []
    if args.deel_npz:
        results.append(analyse(
            f"deel-lip export ({os.path.basename(args.deel_npz)})",
            deel_tutorial_plain(args.deel_npz), x_test, y_test,
        ))
    for path in args.model:
        results.append(analyse(
            os.path.basename(path), keras.saving.load_model(path, compile=False),
            x_test, y_test,
        ))
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
