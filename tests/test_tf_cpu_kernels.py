"""The fused TensorFlow CPU kernels of `GroupSort2` and ℓ2-norm pooling.

On TensorFlow, training calls of both layers run compiled kernels
(`keras_lipschitz/_tf_cpu_kernels.cc`); every other call, and every other
backend, runs the `keras.ops` formulation. These tests check that the two
agree (values, gradients, second-order gradients, whole training steps),
that the kernels are used exactly where documented, and that a failed build
falls back with a warning.
"""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from keras_lipschitz import _backend
from keras_lipschitz.layers import GroupSort2
from keras_lipschitz.layers import ScaledL2NormPooling2D

ON_TF = keras.config.backend() == "tensorflow"
# Any float32 input: the kernels only take float32.
FLOAT32_INPUT = np.zeros((1, 2), "float32")
only_tf = pytest.mark.skipif(not ON_TF, reason="TensorFlow-only kernels")


def kernels_or_skip():
    from keras_lipschitz import _tf_cpu_kernels

    if _tf_cpu_kernels._compiler() is None:
        pytest.skip("no C++ compiler to build the TensorFlow kernels")
    module = _backend.fused_training_kernels(True, FLOAT32_INPUT)
    assert module is not None, "a compiler is present but the build failed"
    return module


def test_kernels_apply_only_to_tensorflow_training_calls():
    assert _backend.fused_training_kernels(False, FLOAT32_INPUT) is None
    assert _backend.fused_training_kernels(None, FLOAT32_INPUT) is None
    half = np.zeros((1, 2), "float16")
    assert _backend.fused_training_kernels(True, half) is None
    if not ON_TF:
        assert _backend.fused_training_kernels(True, FLOAT32_INPUT) is None
        return
    kernels_or_skip()


@only_tf
def test_kernels_can_be_disabled_by_environment(monkeypatch):
    kernels_or_skip()
    monkeypatch.setenv("KERAS_LIPSCHITZ_TF_KERNELS", "0")
    assert _backend.fused_training_kernels(True, FLOAT32_INPUT) is None


def pair_test_inputs():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 5, 7, 12)).astype("float32")
    # Ties, signed zeros, and pairs of very different magnitudes.
    x[0, 0, 0, :6] = [1.5, 1.5, 0.0, -0.0, 1e4, -1e-4]
    x[1] *= 1e3
    return {
        "rank4": x,
        "rank2": rng.normal(size=(64, 10)).astype("float32"),
        "rank3": rng.normal(size=(3, 9, 6)).astype("float32"),
    }


def gradients_through(layer, x, training):
    """Values, first- and second-order input gradients of a scalar loss."""
    import tensorflow as tf

    x = tf.constant(x)
    upstream = tf.constant(
        np.random.default_rng(1).normal(size=layer(x).shape), "float32"
    )
    with tf.GradientTape() as outer:
        outer.watch(x)
        with tf.GradientTape() as inner:
            inner.watch(x)
            y = layer(x, training=training)
            loss = tf.reduce_sum(upstream * y * tf.cos(y))
        grad = inner.gradient(loss, x)
        second = tf.reduce_sum(grad * tf.sin(x))
    hessian_vector = outer.gradient(second, x)
    return y.numpy(), grad.numpy(), hessian_vector.numpy(), upstream.numpy()


@only_tf
@pytest.mark.parametrize("name", ["rank4", "rank2", "rank3"])
def test_min_max_pairs_kernel_matches_keras_ops(name):
    kernels_or_skip()
    x = pair_test_inputs()[name]
    layer = GroupSort2()
    fused, fused_grad, fused_second, _ = gradients_through(layer, x, True)
    plain, plain_grad, plain_second, _ = gradients_through(layer, x, False)
    # Same arithmetic (a - r, b + r with r = relu(a - b)): same floats.
    np.testing.assert_array_equal(fused, plain)
    # Both are the sorted pair up to the documented rounding of a - b.
    pairs = x.reshape(-1, 2)
    error = np.abs(fused.reshape(-1, 2) - np.sort(pairs, axis=1))
    scale = np.abs(pairs).max(axis=1, keepdims=True)
    assert np.all(error <= 2 * np.finfo("float32").eps * scale)
    # The keras.ops gradient routes g through g_a + (g_b - g_a): two
    # roundings, at most 4 eps max(|g_a|, |g_b|) per pair; the kernel swaps.
    eps = np.finfo("float32").eps
    assert_close_per_pair(fused_grad, plain_grad, 4 * eps)
    assert_close_per_pair(fused_second, plain_second, 1e-5)


def assert_close_per_pair(actual, desired, relative):
    """|actual - desired| <= relative * max |desired| over each pair."""
    actual, desired = actual.reshape(-1, 2), desired.reshape(-1, 2)
    scale = np.abs(desired).max(axis=1, keepdims=True)
    error = np.abs(actual - desired)
    worst = np.max(error - relative * scale)
    assert worst <= 0.0, f"off by {worst} beyond {relative} x pair scale"


@only_tf
def test_min_max_pairs_gradient_is_the_pair_swap():
    import tensorflow as tf

    kernels = kernels_or_skip()
    x = pair_test_inputs()["rank4"]
    upstream = np.random.default_rng(2).normal(size=x.shape).astype("float32")
    x_t = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x_t)
        y = kernels.min_max_pairs(x_t)
    grad = tape.gradient(y, x_t, output_gradients=tf.constant(upstream))
    pairs, g = x.reshape(-1, 2), upstream.reshape(-1, 2)
    swap = (pairs[:, 0] - pairs[:, 1]) > 0
    expected = np.where(swap[:, None], g[:, ::-1], g)
    np.testing.assert_array_equal(grad.numpy().reshape(-1, 2), expected)


@only_tf
@pytest.mark.parametrize(
    "pool_size, spatial",
    [((2, 2), (8, 6)), ((2, 2), (7, 9)), ((3, 2), (7, 5)), ((1, 3), (4, 8))],
)
def test_l2_norm_pool_kernel_matches_keras_ops(pool_size, spatial):
    kernels_or_skip()
    rng = np.random.default_rng(3)
    x = rng.normal(size=(5, *spatial, 6)).astype("float32")
    x[0, : pool_size[0], : pool_size[1], :] = 0.0  # a window at exactly 0
    layer = ScaledL2NormPooling2D(pool_size, data_format="channels_last")
    fused, fused_grad, fused_second, _ = gradients_through(layer, x, True)
    plain, plain_grad, plain_second, _ = gradients_through(layer, x, False)
    np.testing.assert_allclose(fused, plain, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(fused_grad, plain_grad, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        fused_second, plain_second, rtol=1e-4, atol=1e-5
    )
    # The rows and columns dropped by "valid" pooling get exactly no
    # gradient, and the all-zero window a finite one (zero).
    kept_h = spatial[0] // pool_size[0] * pool_size[0]
    kept_w = spatial[1] // pool_size[1] * pool_size[1]
    assert np.all(fused_grad[:, kept_h:] == 0.0)
    assert np.all(fused_grad[:, :, kept_w:] == 0.0)
    assert np.all(np.isfinite(fused_grad))
    assert np.all(fused_grad[0, : pool_size[0], : pool_size[1]] == 0.0)


def small_model():
    return keras.Sequential(
        [
            keras.Input((10, 10, 3)),
            keras.layers.Conv2D(8, 3, padding="same"),
            GroupSort2(),
            ScaledL2NormPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(6),
            GroupSort2(),
            keras.layers.Dense(3),
        ]
    )


def regression_data(samples, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(samples, 10, 10, 3)).astype("float32")
    y = rng.normal(size=(samples, 3)).astype("float32")
    return x, y


class CountingKernels:
    """Wraps the kernel entry points to count the calls made while tracing."""

    def __init__(self, monkeypatch, module):
        self.calls = {"min_max_pairs": 0, "l2_norm_pool": 0}
        for name in self.calls:
            original = getattr(module, name)

            def counted(*args, _name=name, _original=original, **kwargs):
                self.calls[_name] += 1
                return _original(*args, **kwargs)

            monkeypatch.setattr(module, name, counted)


@only_tf
def test_training_uses_kernels_and_matches_keras_ops(monkeypatch):
    module = kernels_or_skip()
    counter = CountingKernels(monkeypatch, module)
    x, y = regression_data(32, seed=4)
    models = []
    for enabled in ("1", "0"):
        monkeypatch.setenv("KERAS_LIPSCHITZ_TF_KERNELS", enabled)
        keras.utils.set_random_seed(0)
        model = small_model()
        model.compile(keras.optimizers.SGD(0.1), "mse")
        model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
        models.append(model)
        if enabled == "1":
            assert counter.calls == {"min_max_pairs": 2, "l2_norm_pool": 1}
    assert counter.calls == {"min_max_pairs": 2, "l2_norm_pool": 1}
    for fused, plain in zip(models[0].weights, models[1].weights):
        np.testing.assert_allclose(
            fused.numpy(), plain.numpy(), rtol=1e-5, atol=1e-6
        )


@only_tf
def test_kernels_unused_in_inference_and_under_xla(monkeypatch):
    module = kernels_or_skip()
    counter = CountingKernels(monkeypatch, module)
    x, y = regression_data(16, seed=5)
    model = small_model()
    model.compile(keras.optimizers.SGD(0.01), "mse", jit_compile=True)
    model.fit(x, y, batch_size=8, verbose=0)
    model.predict(x, verbose=0)
    model.evaluate(x, y, verbose=0)
    assert counter.calls == {"min_max_pairs": 0, "l2_norm_pool": 0}
    # The same model without XLA does use them: the counter can fail.
    model.compile(keras.optimizers.SGD(0.01), "mse", jit_compile=False)
    model.fit(x, y, batch_size=8, verbose=0)
    assert counter.calls["min_max_pairs"] > 0


@only_tf
def test_failed_build_falls_back_with_one_warning(tmp_path):
    script = textwrap.dedent(
        """
        import warnings
        import numpy as np
        from keras_lipschitz import _backend
        from keras_lipschitz.layers import GroupSort2

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            x = np.zeros((1, 2), "float32")
            first = _backend.fused_training_kernels(True, x)
            second = _backend.fused_training_kernels(True, x)
        x = np.array([[3.0, 1.0, -2.0, 5.0]], "float32")
        y = np.asarray(GroupSort2()(x, training=True))
        print(first is None, second is None, len(caught), y.tolist())
        print(caught[0].message)
        """
    )
    env = dict(
        os.environ,
        KERAS_BACKEND="tensorflow",
        CXX=str(tmp_path / "no-such-compiler"),
        KERAS_LIPSCHITZ_CACHE=str(tmp_path / "cache"),
        TF_CPP_MIN_LOG_LEVEL="3",
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    first_line, message = result.stdout.strip().splitlines()[-2:]
    assert first_line == "True True 1 [[1.0, 3.0, -2.0, 5.0]]"
    assert "could not build its TensorFlow CPU kernels" in message
    assert "no C++ compiler" in message
