"""Train the deel-lip MNIST tutorial model and certify it.

The model is 1-Lipschitz by construction:

    SpectralConv2D(16, 3) -> GroupSort2 -> ScaledL2NormPooling2D(2)
    -> SpectralConv2D(32, 3) -> GroupSort2 -> ScaledL2NormPooling2D(2)
    -> Flatten -> SpectralDense(64) -> GroupSort2 -> SpectralDense(10)

It is trained with a temperature-scaled cross-entropy
`CE(softmax(tau * z), y) / tau` (tau = 10), then evaluated:

- clean test accuracy;
- certified accuracy at eps in {0.1, 0.3, 0.5} (l2, pixels in [0, 1]): a
  test point counts if it is correctly classified and its certified radius
  `M / (sqrt(2) * L)` is strictly larger than eps, where
  `M = z_y - max_{j != y} z_j` is the margin of the *unscaled* logits
  (tau plays no part) and `L` is the product of every layer's guaranteed
  `lipschitz_upper_bound()` (float64, from the inference-mode weights).

Usage (pick the backend before Python starts):

    KERAS_BACKEND=jax python examples/mnist_spectral.py \\
        --data ../shared/data/mnist.npz --epochs 1

`--data` is a Keras-format `mnist.npz` (keys x_train, y_train, x_test,
y_test, as saved by `keras.datasets.mnist`). Without it the data comes from
`tensorflow_datasets` (`pip install tensorflow-datasets`, which needs
network access the first time).
"""

import argparse
import math
import os
import sys
import time

import numpy as np

# Run against the checkout this example lives in, installed or not.
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isdir(os.path.join(_REPO_ROOT, "keras_lipschitz")):
    sys.path.insert(0, _REPO_ROOT)

import keras  # noqa: E402

import keras_lipschitz  # noqa: E402
from keras_lipschitz import layers as kl  # noqa: E402

EPSILONS = (0.1, 0.3, 0.5)
TAU = 10.0

# Weightless layers that are 1-Lipschitz (l2) whatever their arguments.
_ONE_LIPSCHITZ_STRUCTURAL = (
    keras.layers.InputLayer,
    keras.layers.Flatten,
    keras.layers.Reshape,
    keras.layers.Permute,
    keras.layers.Dropout,
    keras.layers.Identity,
)


def tau_cce(y_true, y_pred, tau=TAU):
    """Temperature-scaled cross-entropy: CE(softmax(tau * z), y) / tau.

    Large tau approaches a zero-margin hinge (accuracy first); small tau
    pushes for larger margins, hence larger certified radii.
    """
    return (
        keras.losses.categorical_crossentropy(
            y_true, tau * y_pred, from_logits=True
        )
        / tau
    )


def build_model():
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            kl.SpectralConv2D(16, 3, padding="same"),
            kl.GroupSort2(),
            kl.ScaledL2NormPooling2D(pool_size=2),
            kl.SpectralConv2D(32, 3, padding="same"),
            kl.GroupSort2(),
            kl.ScaledL2NormPooling2D(pool_size=2),
            keras.layers.Flatten(),
            kl.SpectralDense(64),
            kl.GroupSort2(),
            kl.SpectralDense(10),
        ],
        name="mnist_spectral",
    )


def load_mnist(path):
    """Returns `(x_train, y_train, x_test, y_test)`, pixels in [0, 1]."""
    if path is not None:
        with np.load(path) as data:
            keys = ("x_train", "y_train", "x_test", "y_test")
            arrays = [data[k] for k in keys]
    else:
        try:
            import tensorflow_datasets as tfds
        except ImportError as err:
            raise SystemExit(
                "No --data given and tensorflow_datasets is not installed. "
                "Either pass --data path/to/mnist.npz (Keras format, keys "
                "x_train, y_train, x_test, y_test) or "
                "`pip install tensorflow-datasets`."
            ) from err
        train, test = tfds.as_numpy(
            tfds.load(
                "mnist",
                split=["train", "test"],
                batch_size=-1,
                as_supervised=True,
            )
        )
        arrays = [train[0], train[1], test[0], test[1]]
    x_train, y_train, x_test, y_test = arrays

    def images(x):
        return (np.asarray(x, "float32") / 255.0).reshape((-1, 28, 28, 1))

    def labels(y):
        return np.asarray(y).reshape(-1).astype("int64")

    return images(x_train), labels(y_train), images(x_test), labels(y_test)


def layer_lipschitz_bounds(model):
    """Guaranteed l2 Lipschitz bound of each layer of a sequential model.

    Each layer's `lipschitz_upper_bound()` (float64); weightless layers
    without that method count as 1 if they are structural Keras layers
    (Flatten, Reshape, ...) or keras-lipschitz layers. Any other layer is
    refused rather than silently assumed 1-Lipschitz.

    Returns:
        A list of `(layer_name, bound)`.
    """
    out = []
    for layer in model.layers:
        method = getattr(layer, "lipschitz_upper_bound", None)
        if method is not None:
            out.append((layer.name, float(method())))
        elif not layer.weights and (
            isinstance(layer, _ONE_LIPSCHITZ_STRUCTURAL)
            or type(layer).__module__.startswith("keras_lipschitz.")
        ):
            out.append((layer.name, 1.0))
        else:
            raise ValueError(
                f"No Lipschitz bound known for layer {layer.name!r} "
                f"({type(layer).__name__}): it has no "
                "`lipschitz_upper_bound()` method."
            )
    return out


def model_lipschitz_bound(model):
    """Product of the layer bounds: a bound for the composition."""
    return math.prod(bound for _, bound in layer_lipschitz_bounds(model))


def certified_accuracy(logits, labels, lipschitz, epsilons):
    """Clean and certified accuracy, computed in NumPy float64."""
    z = np.asarray(logits, dtype=np.float64)
    n = len(z)
    z_true = z[np.arange(n), labels]
    others = z.copy()
    others[np.arange(n), labels] = -np.inf
    margin = z_true - others.max(axis=1)
    correct = margin > 0  # ties count as errors
    radius = np.where(correct, margin, 0.0) / (math.sqrt(2.0) * lipschitz)
    certified = {
        eps: float(np.mean(correct & (radius > eps))) for eps in epsilons
    }
    return float(np.mean(correct)), certified, radius


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=None, help="Keras-format mnist.npz")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    keras.utils.set_random_seed(args.seed)
    x_train, y_train, x_test, y_test = load_mnist(args.data)
    print(
        f"backend {keras.config.backend()}, keras {keras.__version__}; "
        f"train {x_train.shape}, test {x_test.shape}"
    )

    model = build_model()
    model.compile(
        optimizer=keras.optimizers.Adam(args.learning_rate),
        loss=tau_cce,
        metrics=["categorical_accuracy"],
    )
    start = time.perf_counter()
    model.fit(
        x_train,
        keras.utils.to_categorical(y_train, 10),
        batch_size=args.batch_size,
        epochs=args.epochs,
        validation_data=(x_test, keras.utils.to_categorical(y_test, 10)),
        verbose=2,
    )
    print(f"training time: {time.perf_counter() - start:.1f}s")

    # Inference mode: the layers divide by guaranteed bounds, and the
    # certificate uses the same weights.
    logits = keras.ops.convert_to_numpy(
        model.predict(x_test, batch_size=1024, verbose=0)
    )
    for name, bound in layer_lipschitz_bounds(model):
        if bound != 1.0:
            print(f"  {name}: lipschitz_upper_bound() = {bound:.6f}")
    lipschitz = model_lipschitz_bound(model)
    clean, certified, radius = certified_accuracy(
        logits, y_test, lipschitz, EPSILONS
    )
    print(f"guaranteed Lipschitz bound of the model: L = {lipschitz:.6f}")
    library_bound = getattr(keras_lipschitz, "lipschitz_bound", None)
    if library_bound is not None:
        # The library's graph-aware bound; equal to the product here.
        print(
            "keras_lipschitz.lipschitz_bound(model) = "
            f"{library_bound(model):.6f}"
        )
    print(f"clean test accuracy: {clean:.4f}")
    print(f"mean certified radius (l2): {radius.mean():.4f}")
    for eps in EPSILONS:
        print(f"certified accuracy at eps={eps}: {certified[eps]:.4f}")


if __name__ == "__main__":
    main()
