"""Quick start: a certified binary classifier on two moons, in seconds.

Trains a 1-Lipschitz network `f: R^2 -> R` with the hinge-regularized
Kantorovich-Rubinstein loss (HKR, Serrurier et al., CVPR 2021) on a
two-moons data set generated here with NumPy (no download, no network):

    BjorckDense(64) -> GroupSort2 -> BjorckDense(64) -> GroupSort2
    -> SpectralDense(1)

The predicted class is `f(x) > 0`. With `L` a guaranteed bound on the
Lipschitz constant of `f` (`keras_lipschitz.lipschitz_bound`, float64), no
perturbation of l2 norm below `|f(x)| / L` can change the prediction:
`keras_lipschitz.certify` returns that radius (0 where the prediction is
wrong). The script prints clean and certified accuracy and draws the
decision boundary with the level sets of `f / L`: every point between the
boundary and the level set `f / L = +-r` is certified at most at radius r,
every point beyond it at least at r.

Usage (any backend):

    KERAS_BACKEND=jax python examples/quickstart.py
    KERAS_BACKEND=torch python examples/quickstart.py --plot moons.png
"""

import math
import time

from _common import parser
from _common import report

import keras  # noqa: E402  (after _common, which finds the checkout)
import numpy as np  # noqa: E402

import keras_lipschitz  # noqa: E402
from keras_lipschitz import layers  # noqa: E402
from keras_lipschitz import losses  # noqa: E402

RADII = (0.05, 0.1, 0.2)


def two_moons(n, noise=0.1, seed=0):
    """Two interleaved half circles (as sklearn's `make_moons`), labels 0/1."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    t = rng.uniform(0.0, math.pi, n)
    x = np.where(
        (y == 0)[:, None],
        np.stack([np.cos(t), np.sin(t)], axis=1),
        np.stack([1.0 - np.cos(t), 0.5 - np.sin(t)], axis=1),
    )
    x = x + noise * rng.normal(size=x.shape)
    # Centre the data set on the origin.
    return (x - [0.5, 0.25]).astype("float32"), y.astype("int64")


def build_model():
    return keras.Sequential(
        [
            keras.Input((2,)),
            layers.BjorckDense(64),
            layers.GroupSort2(),
            layers.BjorckDense(64),
            layers.GroupSort2(),
            layers.SpectralDense(1),
        ],
        name="moons_hkr",
    )


def plot(model, lipschitz, x, y, radius, path):
    """Decision boundary and certified-radius level sets of f / L."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot written.")
        return
    lo, hi = x.min(axis=0) - 0.4, x.max(axis=0) + 0.4
    gx, gy = np.meshgrid(
        np.linspace(lo[0], hi[0], 200), np.linspace(lo[1], hi[1], 200)
    )
    grid = np.stack([gx.ravel(), gy.ravel()], axis=1).astype("float32")
    f = model.predict(grid, batch_size=4096, verbose=0).reshape(gx.shape)
    scaled = f / lipschitz  # signed certified radius of every grid point

    fig, (ax, ax_curve) = plt.subplots(
        1, 2, figsize=(10, 4.2), gridspec_kw={"width_ratios": [1.3, 1]}
    )
    bound = max(abs(scaled.min()), abs(scaled.max()))
    filled = ax.contourf(
        gx, gy, scaled, levels=21, cmap="RdBu", vmin=-bound, vmax=bound
    )
    fig.colorbar(filled, ax=ax, label="f(x) / L  (signed certified radius)")
    levels = sorted({-r for r in RADII} | set(RADII))
    lines = ax.contour(
        gx, gy, scaled, levels=levels, colors="k", linewidths=0.6,
        linestyles="dashed",
    )
    ax.clabel(lines, fmt="%.2g", fontsize=7)
    ax.contour(gx, gy, scaled, levels=[0.0], colors="k", linewidths=1.8)
    ax.scatter(
        x[:, 0], x[:, 1], c=y, cmap="RdBu", vmin=-0.3, vmax=1.3, s=6,
        edgecolors="k", linewidths=0.2,
        alpha=0.8,
    )
    ax.set_aspect("equal")
    ax.set_title("decision boundary (f = 0) and level sets f/L = ±r")

    grid_r = np.linspace(0.0, max(max(RADII) * 1.5, radius.max()), 200)
    ax_curve.plot(grid_r, [np.mean(radius > r) for r in grid_r])
    for r in RADII:
        ax_curve.plot([r], [np.mean(radius > r)], "o", color="C1")
    ax_curve.set_xlabel("radius ε (l2)")
    ax_curve.set_ylabel("certified accuracy (test)")
    ax_curve.set_ylim(0, 1)
    ax_curve.grid(alpha=0.3)
    ax_curve.set_title("certified accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"plot written to {path}")


def main(argv=None):
    p = parser(__doc__.split("\n")[0], epochs=30, batch_size=128,
               plot="quickstart.png")
    p.add_argument("--alpha", type=float, default=50.0,
                   help="HKR hinge weight")
    p.add_argument("--min-margin", type=float, default=0.4,
                   help="HKR min_margin (deel-lip convention: the hinge "
                   "asks for |f| >= min_margin / 2)")
    args = p.parse_args(argv)
    if args.data is not None:
        print("--data is ignored: the quick start generates its data.")

    keras.utils.set_random_seed(args.seed)
    n_train, epochs = (256, 2) if args.smoke else (2000, args.epochs)
    x_train, y_train = two_moons(n_train, seed=args.seed)
    x_test, y_test = two_moons(1000, seed=args.seed + 1)
    print(f"backend {keras.config.backend()}, keras {keras.__version__}")

    model = build_model()
    model.compile(
        optimizer=keras.optimizers.Adam(5e-3),
        loss=losses.HKR(alpha=args.alpha, min_margin=args.min_margin),
        metrics=[keras.metrics.BinaryAccuracy(threshold=0.0)],
    )
    start = time.perf_counter()
    # HKR's KR term needs both classes in each batch: shuffle (the default).
    model.fit(
        x_train, y_train, batch_size=args.batch_size, epochs=epochs,
        verbose=1,
    )
    print(f"training time: {time.perf_counter() - start:.1f}s")

    # Sound certificates: inference-mode weights, guaranteed float64 bound.
    lipschitz = keras_lipschitz.lipschitz_bound(model)
    print(f"guaranteed Lipschitz bound of f: L = {lipschitz:.6f}")
    radius = keras_lipschitz.certify(model, x_test, y_test)
    scores = model.predict(x_test, verbose=0).reshape(-1)
    correct = (scores > 0) == (y_test > 0)
    report(radius, correct, RADII, plot_path="", title="", norm="l2")
    if args.plot:
        plot(model, lipschitz, x_test, y_test, radius, args.plot)


if __name__ == "__main__":
    main()
