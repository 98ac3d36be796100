"""Shared plumbing of the examples: arguments, data loading, reporting.

Every example takes the same core options (`--data`, `--epochs`,
`--batch-size`, `--smoke`, `--plot`), loads its data set through
`tensorflow_datasets` or from a local file given with `--data`, and ends by
printing clean and certified accuracy and writing a PNG of certified
accuracy against the radius. With no data available it exits with a message
that says how to provide it, not a stack trace.

This module is not part of the library: examples import it as a sibling.
"""

import argparse
import os
import sys

import numpy as np

# Run against the checkout the examples live in, installed or not.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isdir(os.path.join(REPO_ROOT, "keras_lipschitz")):
    sys.path.insert(0, REPO_ROOT)

# Where the shared MNIST file sits in this project's checkouts.
DEFAULT_MNIST = os.path.join(REPO_ROOT, "..", "shared", "data", "mnist.npz")

SMOKE_SAMPLES = 256


def parser(description, epochs, batch_size, plot):
    """An `argparse.ArgumentParser` with the options every example takes.

    Args:
        description: the example's one-line description.
        epochs: default number of epochs.
        batch_size: default batch size.
        plot: default path of the PNG written at the end.
    """
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--data",
        default=None,
        help="local data: a Keras-format .npz file (keys x_train, y_train, "
        "x_test, y_test) or, for CIFAR-10, the extracted "
        "cifar-10-batches-py directory. Default: tensorflow_datasets.",
    )
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--smoke",
        action="store_true",
        help=f"a few steps on {SMOKE_SAMPLES} examples: checks that the "
        "example runs, says nothing about accuracy",
    )
    p.add_argument("--plot", default=plot, help="output PNG ('' for none)")
    return p


def _no_data(name, hint):
    raise SystemExit(
        f"No {name} data available. Either pass --data {hint}, or install "
        "tensorflow-datasets (`pip install tensorflow-datasets`) on a "
        "machine with network access so that it can download the data set "
        "the first time."
    )


def _from_tfds(name):
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        return None
    try:
        train, test = tfds.as_numpy(
            tfds.load(
                name,
                split=["train", "test"],
                batch_size=-1,
                as_supervised=True,
            )
        )
    except Exception as err:  # offline, or a download that failed
        print(f"tensorflow_datasets could not load {name!r}: {err}")
        return None
    return train[0], train[1], test[0], test[1]


def _from_npz(path):
    with np.load(path) as data:
        missing = [
            k for k in ("x_train", "y_train", "x_test", "y_test")
            if k not in data
        ]
        if missing:
            raise SystemExit(
                f"{path} lacks the keys {missing}: expected a Keras-format "
                ".npz with x_train, y_train, x_test, y_test."
            )
        return data["x_train"], data["y_train"], data["x_test"], data["y_test"]


def _from_cifar_batches(directory):
    import pickle

    def read(name):
        with open(os.path.join(directory, name), "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        x = batch[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return x, np.asarray(batch[b"labels"])

    parts = [read(f"data_batch_{i}") for i in range(1, 6)]
    x_test, y_test = read("test_batch")
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    return x_train, y_train, x_test, y_test


def _random_images(shape):
    """Smoke mode without data: random pixels and labels (says so)."""
    print("smoke mode: no data available, using random images and labels")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(2 * SMOKE_SAMPLES,) + shape)
    y = rng.integers(0, 10, size=(2 * SMOKE_SAMPLES,))
    return x[:SMOKE_SAMPLES], y[:SMOKE_SAMPLES], x[SMOKE_SAMPLES:], y[
        SMOKE_SAMPLES:
    ]


def _finish(arrays, shape, smoke):
    x_train, y_train, x_test, y_test = arrays

    def images(x):
        return (np.asarray(x, "float32") / 255.0).reshape((-1,) + shape)

    def labels(y):
        return np.asarray(y).reshape(-1).astype("int64")

    out = [images(x_train), labels(y_train), images(x_test), labels(y_test)]
    if smoke:
        out = [a[:SMOKE_SAMPLES] for a in out]
    return tuple(out)


def load_mnist(data=None, smoke=False):
    """MNIST as `(x_train, y_train, x_test, y_test)`, pixels in [0, 1].

    Images are `(N, 28, 28, 1)` float32, labels `(N,)` int64. The data comes
    from `data` (a Keras-format `mnist.npz`), else from the project's shared
    copy when present, else from `tensorflow_datasets`.
    """
    if data is not None:
        if not os.path.isfile(data):
            raise SystemExit(f"--data {data}: no such file.")
        arrays = _from_npz(data)
    elif os.path.isfile(DEFAULT_MNIST):
        arrays = _from_npz(DEFAULT_MNIST)
    else:
        arrays = _from_tfds("mnist")
        if arrays is None and smoke:
            arrays = _random_images((28, 28))
        if arrays is None:
            _no_data("MNIST", "path/to/mnist.npz (Keras format)")
    return _finish(arrays, (28, 28, 1), smoke)


def load_cifar10(data=None, smoke=False):
    """CIFAR-10 as `(x_train, y_train, x_test, y_test)`, pixels in [0, 1].

    Images are `(N, 32, 32, 3)` float32, labels `(N,)` int64. `data` is a
    Keras-format `.npz` or the extracted `cifar-10-batches-py` directory;
    without it the data comes from `tensorflow_datasets`.
    """
    if data is not None:
        if os.path.isdir(data):
            arrays = _from_cifar_batches(data)
        elif os.path.isfile(data):
            arrays = _from_npz(data)
        else:
            raise SystemExit(f"--data {data}: no such file or directory.")
    else:
        arrays = _from_tfds("cifar10")
        if arrays is None and smoke:
            arrays = _random_images((32, 32, 3))
        if arrays is None:
            _no_data(
                "CIFAR-10",
                "path/to/cifar-10-batches-py (or a Keras-format .npz)",
            )
    return _finish(arrays, (32, 32, 3), smoke)


def report(radius, correct, epsilons, plot_path, title, norm="l2"):
    """Prints clean and certified accuracy and plots certified accuracy.

    Args:
        radius: per-example certified radii, 0 where not certified.
        correct: per-example booleans, the prediction equals the label.
        epsilons: the standard radii to print.
        plot_path: PNG path, or `""`/`None` for no plot.
        title: plot title.
        norm: `"l2"` or `"linf"`, for the labels.

    Returns:
        A dict `{"clean": float, "certified": {eps: float}}`.
    """
    radius = np.asarray(radius, np.float64)
    correct = np.asarray(correct, bool)
    clean = float(np.mean(correct))
    certified = {
        float(e): float(np.mean(correct & (radius > e))) for e in epsilons
    }
    print(f"clean accuracy: {clean:.4f}")
    for e, acc in certified.items():
        print(f"certified accuracy ({norm}) at eps={e:.4g}: {acc:.4f}")
    if plot_path:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("matplotlib is not installed: no plot written.")
        else:
            top = max(max(epsilons) * 1.5, float(radius.max(initial=0.0)))
            grid = np.linspace(0.0, top if top > 0 else 1.0, 200)
            curve = [np.mean(correct & (radius > e)) for e in grid]
            fig, ax = plt.subplots(figsize=(5, 3.5))
            ax.plot(grid, curve)
            for e, acc in certified.items():
                ax.plot([e], [acc], "o", color="C1")
            ax.set_xlabel(f"radius ε ({norm})")
            ax.set_ylabel("certified accuracy")
            ax.set_ylim(0, 1)
            ax.set_title(title)
            ax.grid(alpha=0.3)
            fig.tight_layout()
            fig.savefig(plot_path, dpi=120)
            plt.close(fig)
            print(f"plot written to {plot_path}")
    return {"clean": clean, "certified": certified}
