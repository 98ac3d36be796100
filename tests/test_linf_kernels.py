"""The compiled CPU kernels of the ℓ∞-distance layers (issue 18).

Training calls of `LinfDistDense` and `SortNetDense` on a CPU run
`keras_lipschitz/_linf_kernels.cc` through `_backend.native_linf_kernels`;
`layers.linf.pnorm_distances` (keras.ops) is the reference. These tests
compare both (values, gradients w.r.t. x and the kernel, keep masks, ties
at p = inf, odd shapes), check that the kernels really run inside a
compiled `fit`, that `KERAS_LIPSCHITZ_LINF_KERNELS=0` and a failed build
give the reference, and that inference never uses them.
"""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from keras import ops

from keras_lipschitz import _backend
from keras_lipschitz.layers import LinfDistDense
from keras_lipschitz.layers import SortNetDense
from keras_lipschitz.layers import linf
from keras_lipschitz.losses import LinfDistHinge
from keras_lipschitz.models import linf_dist_net
from tests.helpers import to_numpy

INF = float("inf")
BACKEND = keras.config.backend()
FLOAT32_INPUT = ops.convert_to_tensor(np.zeros((1, 2), "float32"))


def kernels_or_skip():
    from keras_lipschitz import _native_build

    if _native_build.compiler() is None:
        pytest.skip("no C++ compiler to build the ℓ∞ kernels")
    module = _backend.native_linf_kernels(True, FLOAT32_INPUT)
    assert module is not None, "a compiler is present but the build failed"
    return module


def reference(x, kernel, p, keep=None):
    return linf.pnorm_distances(x, kernel, p, chunk_size=8, keep=keep)


def values_and_gradients(fn, x, kernel, upstream):
    """fn(x, kernel) and the gradients of sum(fn * upstream)."""
    x_t = ops.convert_to_tensor(x)
    kernel_t = ops.convert_to_tensor(kernel)
    g = ops.convert_to_tensor(upstream)
    y = to_numpy(fn(x_t, kernel_t))
    _, grad_x = _backend.value_and_input_gradient(
        lambda v: ops.sum(fn(v, kernel_t) * g), x_t
    )
    _, grad_kernel = _backend.value_and_input_gradient(
        lambda v: ops.sum(fn(x_t, v) * g), kernel_t
    )
    return y, to_numpy(grad_x), to_numpy(grad_kernel)


def np_pnorm_and_gradients(x, kernel, p, upstream, keep=None):
    """float64 values and gradients (the reference's subgradient at ties)."""
    z = x[:, :, None].astype(np.float64) - kernel[None].astype(np.float64)
    if keep is not None:
        z = z * keep[:, :, None]
    a = np.abs(z)
    m = a.max(axis=1)
    if np.isinf(p):
        y = m
        tied = (a == m[:, None]) & (m[:, None] > 0)
        slope = tied / np.maximum(tied.sum(axis=1), 1)[:, None]
    else:
        safe_m = np.where(m > 0, m, 1.0)[:, None]
        y = m * ((a / safe_m) ** p).sum(axis=1) ** (1 / p)
        slope = (a / np.where(y > 0, y, 1.0)[:, None]) ** (p - 1)
    terms = np.sign(z) * slope * upstream[:, None, :]
    return y, terms.sum(axis=2), -terms.sum(axis=0)


def assert_close(ours, ref, tolerance):
    """Entrywise within `tolerance` times the largest reference entry."""
    scale = max(np.abs(ref).max(), 1e-30)
    np.testing.assert_allclose(
        ours, ref, rtol=tolerance, atol=tolerance * scale
    )


# Shapes: D not a multiple of any vector width or tile; B and N not
# multiples of the register tile; B = 1, N = 1, D = 1.
SHAPES = [(5, 37, 6), (1, 1, 1), (1, 19, 1), (3, 33, 5), (9, 70, 13)]
# Float32 rounding of t = |z| / y is raised to the power p - 1 by any
# float32 implementation (ours and the reference alike): relative errors
# grow like p * 6e-8, hence the looser bound at p = 1000.
TOLERANCE = {1.0: 1e-5, 2.0: 1e-5, 8.0: 1e-5, 8.5: 1e-5, 16.0: 1e-5,
             32.0: 1e-5, 64.0: 2e-5, 1000.0: 3e-4,
             INF: 1e-6}


@pytest.mark.parametrize(
    "p", [1.0, 2.0, 8.0, 8.5, 16.0, 32.0, 64.0, 1000.0, INF]
)
@pytest.mark.parametrize("masked", [False, True])
def test_values_and_gradients_match_the_reference(p, masked):
    kernels = kernels_or_skip()
    rng = np.random.default_rng(int(min(p, 1e4) % 97) + 2 * masked)
    for batch, dim, units in SHAPES:
        x = rng.normal(size=(batch, dim)).astype("float32")
        kernel = rng.normal(size=(dim, units)).astype("float32")
        upstream = rng.normal(size=(batch, units)).astype("float32")
        keep = None
        if masked:
            keep = (rng.uniform(size=(batch, dim)) < 0.6).astype("float32")
        # p held in a tensor, as in the layers (train_p).
        p_tensor = ops.convert_to_tensor(p, "float32")
        ours = values_and_gradients(
            lambda a, b: kernels.pnorm_distances(a, b, p_tensor, keep=keep),
            x, kernel, upstream,
        )
        ref = values_and_gradients(
            lambda a, b: reference(a, b, p_tensor, keep), x, kernel, upstream
        )
        exact = np_pnorm_and_gradients(x, kernel, p, upstream, keep)
        # Float32 rounding of |z| / y, raised to p - 1, costs any float32
        # implementation about (p - 1) * 2^-24 relative.
        slack = 2e-6 + (0.0 if p == INF else 4 * (p - 1) * 2.0**-24)
        for name, a, b, c in zip(("y", "grad_x", "grad_kernel"), ours, ref,
                                 exact):
            assert_close(a, b, TOLERANCE[p])
            # And not much further from float64 than the reference.
            error = np.abs(a - c).max()
            ref_error = np.abs(b - c).max()
            scale = max(np.abs(c).max(), 1e-30)
            assert error <= 2 * ref_error + slack * scale, (name, p, error,
                                                            ref_error)


def test_python_float_p_and_a_larger_layer_on_several_threads(monkeypatch):
    """13M (b, d, n) triples: the kernels split the work over 3 threads."""
    kernels = kernels_or_skip()
    monkeypatch.setenv("KERAS_LIPSCHITZ_LINF_THREADS", "3")
    rng = np.random.default_rng(5)
    x = rng.uniform(size=(96, 520)).astype("float32")
    kernel = rng.normal(size=(520, 260)).astype("float32")
    upstream = rng.normal(size=(96, 260)).astype("float32")
    keep = (rng.uniform(size=(96, 520)) < 0.75).astype("float32")
    for p, mask in ((8.0, None), (8.0, keep), (INF, None)):
        ours = values_and_gradients(
            lambda a, b: kernels.pnorm_distances(a, b, p, keep=mask),
            x, kernel, upstream,
        )
        ref = values_and_gradients(
            lambda a, b: reference(a, b, p, mask), x, kernel, upstream
        )
        for a, b in zip(ours, ref):
            assert_close(a, b, 1e-5)


def test_max_distance_far_below_the_coordinates():
    """|z| tiny next to |x| and |w|: the one-pass scaling would underflow
    at p = 8, the kernels must fall back to the two-pass maximum."""
    kernels = kernels_or_skip()
    rng = np.random.default_rng(3)
    kernel = (1000.0 + rng.uniform(size=(40, 4))).astype("float32")
    x = kernel[:, :3].T + rng.normal(size=(3, 40)).astype("float32") * 1e-3
    x = np.concatenate([x, kernel[:, :1].T]).astype("float32")  # y = 0 too
    upstream = rng.normal(size=(4, 4)).astype("float32")
    ours = values_and_gradients(
        lambda a, b: kernels.pnorm_distances(a, b, 8.0), x, kernel, upstream
    )
    exact = np_pnorm_and_gradients(x, kernel, 8.0, upstream)
    assert ours[0][3, 0] == 0.0
    assert (ours[0][:3, :3].diagonal() < 0.01).all()
    for a, c in zip(ours, exact):
        assert_close(a, c, 1e-4)


def test_ties_at_p_inf_share_the_gradient_like_the_reference():
    kernels = kernels_or_skip()
    # Row 0: |z| = (1, 1, 1, 0.5) for every unit (3 tied maximizers, signs
    # +, -, +); row 1: all z = 0 (y = 0, gradient 0); row 2: one maximizer.
    x = np.array(
        [[1.0, -1.0, 1.0, 0.5], [0.0, 0.0, 0.0, 0.0], [0.25, -2.0, 1.0, 0.0]],
        "float32",
    )
    kernel = np.zeros((4, 2), "float32")
    upstream = np.array([[3.0, 6.0], [1.0, 1.0], [1.0, 2.0]], "float32")
    for p in (INF, ops.convert_to_tensor(INF)):
        ours = values_and_gradients(
            lambda a, b: kernels.pnorm_distances(a, b, p), x, kernel, upstream
        )
        ref = values_and_gradients(
            lambda a, b: reference(a, b, p), x, kernel, upstream
        )
        for a, b in zip(ours, ref):
            np.testing.assert_array_equal(a, b)
    y, grad_x, grad_kernel = ours
    np.testing.assert_array_equal(y, [[1, 1], [0, 0], [2, 2]])
    # Row 0: each tied coordinate gets (3 + 6) / 3 with its sign; row 2:
    # coordinate 1 (z = -2) gets -(1 + 2).
    np.testing.assert_array_equal(
        grad_x, [[3, -3, 3, 0], [0, 0, 0, 0], [0, -3, 0, 0]]
    )
    # d y / d w = -d y / d z: row 0 gives -sign * (1, 2), row 2 (1, 2).
    np.testing.assert_array_equal(
        grad_kernel, [[-1, -2], [1 + 1, 2 + 2], [-1, -2], [0, 0]]
    )


def test_kernels_apply_only_to_float32_training_calls(monkeypatch):
    kernels_or_skip()
    assert _backend.native_linf_kernels(False, FLOAT32_INPUT) is None
    assert _backend.native_linf_kernels(None, FLOAT32_INPUT) is None
    half = ops.convert_to_tensor(np.zeros((1, 2), "float16"))
    assert _backend.native_linf_kernels(True, half) is None
    monkeypatch.setenv("KERAS_LIPSCHITZ_LINF_KERNELS", "0")
    assert _backend.native_linf_kernels(True, FLOAT32_INPUT) is None


def calls():
    from keras_lipschitz import _linf_kernels

    return dict(_linf_kernels.CALLS)


@pytest.mark.parametrize("cls", [LinfDistDense, SortNetDense])
def test_layers_train_through_the_kernels_and_infer_through_keras_ops(cls):
    kernels_or_skip()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 20)).astype("float32")
    layer = cls(8, p=8.0, mean_shift=False)
    layer.build((None, 20))
    before = calls()
    y_train = to_numpy(layer(x, training=True))
    after = calls()
    assert after.get("forward", 0) == before.get("forward", 0) + 1
    to_numpy(layer(x, training=False))
    assert calls() == after  # inference: keras.ops only
    if cls is LinfDistDense:
        kernel = ops.cast(layer.kernel, "float32")
        np.testing.assert_allclose(
            y_train, to_numpy(reference(x, kernel, 8.0)), rtol=1e-5
        )


def test_environment_variable_gives_the_reference(monkeypatch):
    kernels_or_skip()
    rng = np.random.default_rng(1)
    x = rng.normal(size=(16, 10)).astype("float32")
    layer = LinfDistDense(6, p=8.0, mean_shift=False)
    layer.build((None, 10))
    fast = to_numpy(layer(x, training=True))
    monkeypatch.setenv("KERAS_LIPSCHITZ_LINF_KERNELS", "0")
    before = calls()
    slow = to_numpy(layer(x, training=True))
    assert calls() == before
    np.testing.assert_allclose(fast, slow, rtol=1e-5)


def blobs(samples=64, dim=6, classes=3):
    rng = np.random.default_rng(0)
    centers = rng.uniform(-1, 1, size=(classes, dim))
    y = rng.integers(0, classes, size=samples)
    x = centers[y] + 0.1 * rng.normal(size=(samples, dim))
    return x.astype("float32"), y


def fit_distance_net(x, y, epochs, neuron="linf"):
    """Losses of `epochs` epochs of a compiled fit (default jit_compile)."""
    keras.utils.set_random_seed(0)
    model = linf_dist_net(
        x.shape[1:], 3, depth=3, width=12, neuron=neuron, q=0.9, seed=1
    )
    model.compile(
        keras.optimizers.Adam(0.1), LinfDistHinge(epsilon=0.3, ce_weight=0.1)
    )
    history = model.fit(x, y, batch_size=32, epochs=epochs, verbose=0)
    return history.history["loss"]


def test_compiled_fit_uses_the_kernels_and_learns(monkeypatch):
    kernels_or_skip()
    x, y = blobs()
    before = calls()
    losses = fit_distance_net(x, y, epochs=20)
    after = calls()
    steps = 20 * 2
    # Three distance layers per step, forward and backward.
    assert after["forward"] - before.get("forward", 0) >= 3 * steps
    assert after["backward"] - before.get("backward", 0) >= 3 * steps
    assert losses[-1] < 0.5 * losses[0], losses
    # The same training through keras.ops (same initial weights) follows
    # the same losses.
    monkeypatch.setenv("KERAS_LIPSCHITZ_LINF_KERNELS", "0")
    np.testing.assert_allclose(
        losses[:3], fit_distance_net(x, y, epochs=3), rtol=1e-3
    )
    assert calls() == after


def test_compiled_sortnet_fit_follows_the_reference(monkeypatch):
    """SortNet trains on random coordinate subsets: same subsets, same
    losses with and without the kernels."""
    kernels_or_skip()
    x, y = blobs()
    before = calls()
    losses = fit_distance_net(x, y, epochs=3, neuron="sortnet")
    assert calls()["backward"] - before.get("backward", 0) >= 3 * 3 * 2
    monkeypatch.setenv("KERAS_LIPSCHITZ_LINF_KERNELS", "0")
    np.testing.assert_allclose(
        losses, fit_distance_net(x, y, epochs=3, neuron="sortnet"), rtol=1e-3
    )


def test_failed_build_falls_back_with_one_warning(tmp_path):
    script = textwrap.dedent(
        """
        import warnings
        import numpy as np
        from keras import ops
        from keras_lipschitz import _backend
        from keras_lipschitz.layers import LinfDistDense, linf

        x = ops.convert_to_tensor(np.ones((3, 4), "float32"))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            first = _backend.native_linf_kernels(True, x)
            second = _backend.native_linf_kernels(True, x)
        layer = LinfDistDense(2, p=8.0, mean_shift=False)
        layer.build((None, 4))
        y = ops.convert_to_numpy(layer(x, training=True))
        kernel = ops.convert_to_numpy(layer.kernel)
        ref = ops.convert_to_numpy(linf.pnorm_distances(x, kernel, 8.0))
        print(first is None, second is None, len(caught),
              bool(np.allclose(y, ref, rtol=1e-6)))
        print(caught[0].message)
        """
    )
    env = dict(
        os.environ,
        KERAS_BACKEND=BACKEND,
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
    assert first_line == "True True 1 True"
    assert "could not build its ℓ∞-distance CPU kernels" in message
    assert "no C++ compiler" in message
