"""Test configuration shared by every backend run.

The backend is chosen by `KERAS_BACKEND` before pytest starts; the README's
test command runs the suite once per backend.
"""

import os

import pytest

try:  # Importing torch before TF avoids symbol clashes on some platforms.
    import torch  # noqa: F401
except ImportError:  # pragma: no cover
    pass

import keras


def pytest_configure(config):
    backend = keras.config.backend()
    if backend == "jax":
        import jax

        jax.config.update("jax_default_matmul_precision", "float32")
    elif backend == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_tensor_float_32_execution(False)
    elif backend == "torch":
        import torch

        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    config.addinivalue_line(
        "markers", "slow: long-running test (skipped with -m 'not slow')"
    )


def pytest_report_header(config):
    return f"keras backend: {keras.config.backend()} (keras {keras.__version__})"


@pytest.fixture(autouse=True)
def _reset_keras_state():
    keras.utils.clear_session()
    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy("float32")
    yield
    keras.config.set_dtype_policy("float32")


MNIST_PATH = os.path.join(
    os.path.dirname(__file__), "..", "..", "shared", "data", "mnist.npz"
)


@pytest.fixture
def mnist_path():
    """Path to real MNIST (Keras's mnist.npz format); skips when absent."""
    path = os.environ.get("KERAS_LIPSCHITZ_MNIST", MNIST_PATH)
    if not os.path.exists(path):
        pytest.skip(f"MNIST not found at {path}")
    return path
