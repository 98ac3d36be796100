"""The fused CPU kernels must stay off on a GPU.

`_backend.fused_training_kernels` (TensorFlow's GroupSort2 / ℓ2 pooling
kernels) and `_backend.native_linf_kernels` (the ℓ∞-distance kernels) are
CPU code: on a machine with a visible GPU they must return None, so that
the layers train through `keras.ops` on the device. CI has no GPU, so the
device is simulated: TensorFlow's device list and JAX's default backend are
patched, and torch gets a tensor that is not on the CPU (the `meta`
device). The same calls on the CPU must select the kernels (else these
tests would pass with kernels that are never used).
"""

import keras
import numpy as np
import pytest

from keras_lipschitz import _backend

BACKEND = keras.config.backend()


def _inputs():
    return keras.ops.convert_to_tensor(np.ones((2, 4), "float32"))


@pytest.fixture
def simulated_gpu(monkeypatch):
    """Makes the current backend report a GPU; yields the inputs to use."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        real = tf.config.list_logical_devices

        def list_logical_devices(device_type=None):
            if device_type == "GPU":
                return [
                    tf.config.LogicalDevice(
                        name="/device:GPU:0", device_type="GPU"
                    )
                ]
            return real(device_type)

        monkeypatch.setattr(
            tf.config, "list_logical_devices", list_logical_devices
        )
        yield _inputs()
    elif BACKEND == "jax":
        import jax

        monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
        yield _inputs()
    else:
        import torch

        yield torch.ones((2, 4), dtype=torch.float32, device="meta")


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow kernels")
def test_tf_fused_kernels_on_cpu(monkeypatch):
    monkeypatch.delenv("KERAS_LIPSCHITZ_TF_KERNELS", raising=False)
    from keras_lipschitz import _tf_cpu_kernels

    if _tf_cpu_kernels.load() is None:
        pytest.skip("the TensorFlow CPU kernels could not be built here")
    assert _backend.fused_training_kernels(True, _inputs()) is not None
    assert _backend.fused_training_kernels(False, _inputs()) is None


def test_linf_kernels_on_cpu(monkeypatch):
    monkeypatch.delenv("KERAS_LIPSCHITZ_LINF_KERNELS", raising=False)
    from keras_lipschitz import _linf_kernels

    if _linf_kernels.load() is None:
        pytest.skip("the ℓ∞ CPU kernels could not be built here")
    assert _backend.native_linf_kernels(True, _inputs()) is not None
    # Inference never uses them.
    assert _backend.native_linf_kernels(False, _inputs()) is None


def test_linf_kernels_off_on_gpu(monkeypatch, simulated_gpu):
    monkeypatch.delenv("KERAS_LIPSCHITZ_LINF_KERNELS", raising=False)
    assert _backend.native_linf_kernels(True, simulated_gpu) is None


def test_tf_fused_kernels_off_on_gpu(monkeypatch, simulated_gpu):
    monkeypatch.delenv("KERAS_LIPSCHITZ_TF_KERNELS", raising=False)
    # Off on every backend: only TensorFlow has them, and never on a GPU.
    assert _backend.fused_training_kernels(True, simulated_gpu) is None
