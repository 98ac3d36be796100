"""MNIST, l2: train a 1-Lipschitz CNN and certify it.

The model is the deel-lip MNIST tutorial model, 1-Lipschitz by
construction (`--layers spectral`, the default, uses pure spectral
normalization; `--layers bjorck` uses the orthonormalized layers, which
are what deel-lip's `SpectralConv2D`/`SpectralDense` compute):

    Conv(16, 3) -> GroupSort2 -> ScaledL2NormPooling2D(2)
    -> Conv(32, 3) -> GroupSort2 -> ScaledL2NormPooling2D(2)
    -> Flatten -> Dense(64) -> GroupSort2 -> Dense(10)

Losses (`--loss`):

- `hkr`: `MulticlassHKR(alpha, min_margin)` (Serrurier et al., CVPR 2021,
  deel-lip convention: `min_margin` is twice the paper's margin);
- `cll`: `CLL.for_model(model, epsilon, slack)`, the Calibrated
  Lipschitz-Margin loss (Losch et al., GCPR 2023), which reads the last
  layer's kernel to use the pairwise certificate during training;
- `tau_cce`: `TauCategoricalCrossentropy(tau)`.

`--recipe NAME` trains a recipe of `examples/recipes.py` instead (its
model, loss, optimizer, batch size and learning-rate schedule, over
`--epochs`; the other model and loss options are then ignored).
`--recipe recommended` is the library's pick for MNIST at ε = 1.58: AOL
convolutions, Björck dense layers, `CLL(epsilon=0.55)`, Adam 3e-3 decayed
linearly to 0 (measured in `benchmarks/README.md`); `--recipe
deel_tutorial` is deel-lip's tutorial (Björck layers, HKR(50, 0.2)).

Then, in inference mode and in float64, `keras_lipschitz.certify` gives
every test point its certified l2 radius (pixels in [0, 1]): the pairwise
certificate `min_j (z_y - z_j) / (L_body * ||w_y - w_j||)` over all
classes, with a guaranteed bound `L_body` of the layers before the last
one. The script prints clean accuracy and certified accuracy at
eps in {0.1, 0.3, 0.5, 1.58} and writes a PNG of certified accuracy
against eps.

Usage (pick the backend before Python starts):

    KERAS_BACKEND=jax python examples/mnist_l2.py --loss hkr --epochs 3
    KERAS_BACKEND=tensorflow python examples/mnist_l2.py \
        --recipe recommended --epochs 6
    KERAS_BACKEND=torch python examples/mnist_l2.py --loss cll \\
        --data path/to/mnist.npz --plot mnist_cll.png

`--data` is a Keras-format `mnist.npz` (keys x_train, y_train, x_test,
y_test). Without it the project's shared copy is used when present, else
`tensorflow_datasets`.
"""

import os
import time

import numpy as np
from _common import DEFAULT_MNIST
from _common import SMOKE_SAMPLES
from _common import load_mnist
from _common import parser
from _common import report

import keras  # noqa: E402  (after _common, which finds the checkout)

import keras_lipschitz  # noqa: E402
from keras_lipschitz import layers  # noqa: E402
from keras_lipschitz import losses  # noqa: E402
from keras_lipschitz import metrics  # noqa: E402

EPSILONS = (0.1, 0.3, 0.5, 1.58)


def build_model(kind="spectral"):
    """The deel-lip tutorial architecture, with spectral or Björck layers."""
    conv, dense = {
        "spectral": (layers.SpectralConv2D, layers.SpectralDense),
        "bjorck": (layers.BjorckConv2D, layers.BjorckDense),
    }[kind]
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            conv(16, 3, padding="same"),
            layers.GroupSort2(),
            layers.ScaledL2NormPooling2D(pool_size=2),
            conv(32, 3, padding="same"),
            layers.GroupSort2(),
            layers.ScaledL2NormPooling2D(pool_size=2),
            keras.layers.Flatten(),
            dense(64),
            layers.GroupSort2(),
            dense(10),
        ],
        name=f"mnist_l2_{kind}",
    )


def make_loss(args, model):
    if args.loss == "hkr":
        return losses.MulticlassHKR(alpha=args.alpha, min_margin=args.min_margin)
    if args.loss == "cll":
        return losses.CLL.for_model(
            model, epsilon=args.cll_epsilon, slack=args.slack
        )
    return losses.TauCategoricalCrossentropy(tau=args.tau)


def recipe_model(args):
    """`(compiled model, fit kwargs, description)` of `--recipe`, its
    schedules following the epochs of `fit`."""
    import argparse

    import recipes

    try:
        recipe_fn = recipes.get_recipe("mnist_l2", args.recipe)
    except ValueError as err:
        raise SystemExit(f"--recipe: {err}")
    recipe = recipe_fn(
        recipes.TASKS["mnist_l2"],
        argparse.Namespace(seed=args.seed, progress=None, overrides={}),
    )
    recipe.model.compile(
        **recipe.compile_kwargs,
        metrics=["accuracy",
                 metrics.CertifiedAccuracy(1.58, name="cert_1.58")],
    )
    return recipe.model, dict(recipe.fit_kwargs), f"recipe {args.recipe}"


def load_data(args):
    """MNIST; in smoke mode without any local copy, random data instead."""
    if args.smoke and args.data is None and not os.path.isfile(DEFAULT_MNIST):
        print("--smoke without MNIST at hand: random data of MNIST's shape.")
        rng = np.random.default_rng(args.seed)
        x = rng.uniform(size=(2, SMOKE_SAMPLES, 28, 28, 1)).astype("float32")
        y = rng.integers(0, 10, (2, SMOKE_SAMPLES))
        return x[0], y[0], x[1], y[1]
    return load_mnist(args.data, smoke=args.smoke)


def main(argv=None):
    p = parser(__doc__.split("\n")[0], epochs=3, batch_size=256,
               plot="mnist_l2.png")
    p.add_argument("--loss", choices=("hkr", "cll", "tau_cce"),
                   default="hkr")
    p.add_argument("--layers", choices=("spectral", "bjorck"),
                   default="spectral")
    p.add_argument("--recipe", default=None,
                   help="train a recipe of examples/recipes.py (e.g. "
                   "recommended, deel_tutorial) instead of --layers/--loss")
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--alpha", type=float, default=50.0,
                   help="MulticlassHKR hinge weight")
    p.add_argument("--min-margin", type=float, default=1.0,
                   help="MulticlassHKR min_margin (deel-lip convention)")
    p.add_argument("--cll-epsilon", type=float, default=1.0,
                   help="CLL target radius")
    p.add_argument("--slack", type=float, default=0.05, help="CLL slack p")
    p.add_argument("--tau", type=float, default=10.0,
                   help="TauCategoricalCrossentropy temperature")
    args = p.parse_args(argv)

    keras.utils.set_random_seed(args.seed)
    x_train, y_train, x_test, y_test = load_data(args)
    epochs = 1 if args.smoke else args.epochs
    print(
        f"backend {keras.config.backend()}, keras {keras.__version__}; "
        f"train {x_train.shape}, test {x_test.shape}; "
        + (f"recipe {args.recipe}" if args.recipe else
           f"loss {args.loss}, layers {args.layers}")
    )

    if args.recipe is not None:
        model, fit_kwargs, described = recipe_model(args)
        y_fit = y_train  # recipes take integer labels
    else:
        model = build_model(args.layers)
        model.compile(
            optimizer=keras.optimizers.Adam(args.learning_rate),
            loss=make_loss(args, model),
            # Training-time view: M / sqrt(2) against a 1-Lipschitz model.
            metrics=["accuracy",
                     metrics.CertifiedAccuracy(1.58, name="cert_1.58")],
        )
        fit_kwargs = dict(batch_size=args.batch_size)
        described = f"{args.loss} ({args.layers}"
        y_fit = keras.utils.to_categorical(y_train, 10)
    start = time.perf_counter()
    # No per-epoch validation: the test set is evaluated once, at the end,
    # by the certification below.
    model.fit(x_train, y_fit, epochs=epochs, verbose=1, **fit_kwargs)
    print(f"training time: {time.perf_counter() - start:.1f}s")

    # Sound certificates: inference-mode weights, guaranteed float64 bounds.
    lipschitz = keras_lipschitz.lipschitz_bound(model)
    print(f"guaranteed Lipschitz bound of the model: L = {lipschitz:.6f}")
    radius = keras_lipschitz.certify(model, x_test, y_test, batch_size=1024)
    # certify gives radius 0 exactly to the misclassified points (ties
    # included), so this is the clean accuracy without a second forward pass.
    correct = radius > 0
    print(f"mean certified radius (l2): {radius.mean():.4f}")
    report(
        radius, correct, EPSILONS, args.plot,
        title=f"MNIST, {described}, {epochs} epochs)",
    )


if __name__ == "__main__":
    main()
