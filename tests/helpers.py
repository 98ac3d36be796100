"""Backend-agnostic helpers for the Lipschitz tests.

Everything returns NumPy float64 so that checks are identical on every
backend.
"""

import keras
import numpy as np
from keras import ops

# The exact-norm tolerance of the foundation issue: sigma <= L (1 + 1e-3).
NORM_TOLERANCE = 1e-3


def to_numpy(x):
    return np.asarray(ops.convert_to_numpy(x), dtype=np.float64)


def linear_jacobian(fn, input_shape):
    """Exact Jacobian of an affine map `fn` on inputs of `input_shape`.

    The columns are `fn(e_i) - fn(0)` for every basis vector e_i, all in one
    batch, so the result is the operator's real matrix (no finite
    differences, no autodiff): shape `(out_dim, in_dim)`.
    """
    n = int(np.prod(input_shape))
    basis = np.eye(n, dtype="float32").reshape((n,) + tuple(input_shape))
    zero = np.zeros((1,) + tuple(input_shape), dtype="float32")
    out = to_numpy(fn(basis)) - to_numpy(fn(zero))
    return out.reshape(n, -1).T


def singular_values(matrix):
    return np.linalg.svd(np.asarray(matrix, np.float64), compute_uv=False)


def layer_singular_values(layer, input_shape):
    """Singular values of a linear layer's Jacobian in inference mode."""
    return singular_values(
        linear_jacobian(lambda x: layer(x, training=False), input_shape)
    )


def push_weights(layer, input_shape, steps=5, learning_rate=1.0, seed=0):
    """Runs a few large SGD steps through `fit` to move the raw weights.

    The layer is wrapped in a model whose loss pushes the outputs towards
    large random targets, so the raw kernel changes a lot. Returns the raw
    kernel's relative change, so tests can check the push really happened.
    """
    rng = np.random.default_rng(seed)
    inputs = keras.Input(shape=input_shape)
    outputs = layer(inputs)
    model = keras.Model(inputs, outputs)
    # The raw kernel (or first weight) is what the normalization acts on;
    # a bias starting at zero would make any relative change infinite.
    raw = getattr(layer, "kernel", None)
    if raw is None:
        raw = layer.trainable_weights[0]
    before = to_numpy(raw)
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=learning_rate),
        loss="mse",
    )
    x = rng.normal(size=(32,) + tuple(input_shape)).astype("float32")
    y = 10.0 * rng.normal(size=(32,) + tuple(outputs.shape[1:]))
    model.fit(x, y.astype("float32"), epochs=steps, batch_size=32, verbose=0)
    return float(
        np.linalg.norm(to_numpy(raw) - before)
        / max(np.linalg.norm(before), 1e-12)
    )


def random_pair_ratio(fn, input_shape, pairs=256, seed=0, scale=1.0):
    """Largest ||f(x) - f(y)|| / ||x - y|| over random pairs (ℓ2)."""
    rng = np.random.default_rng(seed)
    x = scale * rng.normal(size=(pairs,) + tuple(input_shape))
    # Mix nearby and far pairs.
    radius = np.exp(rng.uniform(-6, 1, size=(pairs,) + (1,) * len(input_shape)))
    y = x + radius * rng.normal(size=x.shape)
    fx = to_numpy(fn(x.astype("float32"))).reshape(pairs, -1)
    fy = to_numpy(fn(y.astype("float32"))).reshape(pairs, -1)
    num = np.linalg.norm(fx - fy, axis=1)
    den = np.linalg.norm(
        (x.astype("float32") - y.astype("float32")).reshape(pairs, -1), axis=1
    )
    return float(np.max(num / den))


def save_and_load(model, tmp_path, name="model.keras"):
    path = str(tmp_path / name)
    model.save(path)
    return keras.saving.load_model(path)


def blob_images(n=96, side=8, classes=3, seed=0):
    """Classes of noisy `side`x`side` images, one bright 2x2 blob per class
    at a class-specific place (for small certified-training tests)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = 0.1 * rng.normal(size=(n, side, side, 1))
    for i, label in enumerate(y):
        r = 2 * label + 1
        x[i, r : r + 2, r : r + 2, 0] += 1.0
    return x.astype("float32"), y
