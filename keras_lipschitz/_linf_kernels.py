"""Fused CPU kernels of the ℓ∞-distance layers and their backend bindings.

`keras_lipschitz.layers.linf.pnorm_distances` computes
$y_{bn} = \\|(x_b - w_n) \\odot k_b\\|_p$ with `keras.ops`, one pass over a
$B\\times c\\times N$ chunk per elementwise op and a general `pow`: on a CPU
a training step costs hundreds of times a `Dense` step of the same shape.
`_linf_kernels.cc` does the same maths in fused, cache-tiled, vectorized
C++ loops that recompute instead of storing (integer $p \\le 8$ by repeated
squaring, $p = \\infty$ with a stored argmax), on all CPU cores
(`$KERAS_LIPSCHITZ_LINF_THREADS` to override).

It has a plain C ABI, is compiled at first use with the machine's C++
compiler (`-O3 -march=native`) and cached like the TensorFlow kernels
(`_native_build`), and is bound to each backend here: a
`torch.autograd.Function` on torch, `jax.pure_callback` under
`jax.custom_vjp` on JAX (works inside `jit`), `tf.numpy_function` under
`tf.custom_gradient` on TensorFlow (graph or eager, not XLA).
`_backend.native_linf_kernels` decides when they apply; if the build fails,
the layers use `keras.ops` with one warning.

Only `_backend` imports this module, lazily; backends are imported inside
the functions.
"""

import collections
import ctypes
import os
import platform
import threading
import warnings

import keras
import numpy as np

from keras_lipschitz import _native_build

_SOURCE = os.path.join(os.path.dirname(__file__), "_linf_kernels.cc")
_ABI_VERSION = 1
_LOCK = threading.Lock()
# None: not tried yet; False: the build or load failed; else the library.
_LIBRARY = None

# Calls of the compiled kernels, by direction (tests check that the fast
# path really runs inside compiled training steps).
CALLS = collections.Counter()


# --------------------------------------------------------------------------
# Build and load.
# --------------------------------------------------------------------------


def _machine_key():
    """Identifies the CPU: `-march=native` code is only valid on its own."""
    parts = [platform.machine(), platform.processor()]
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "flags", "Features")):
                    parts.append(line.strip())
                    if len(parts) >= 4:
                        break
    except OSError:
        pass
    return "\n".join(parts).encode()


def _build(compiler):
    base = [compiler, "-std=c++17", "-shared", "-fPIC", "-O3", "-w"]
    # No errno from math functions; fused multiply-adds in the tiles.
    base += ["-fno-math-errno", "-ffp-contract=fast", "-pthread"]
    error = None
    for arch in (["-march=native"], []):
        try:
            return _native_build.build(
                _SOURCE,
                "linf_kernels",
                base + arch,
                key_parts=[_machine_key()],
                description="ℓ∞-distance CPU kernels",
            )
        except RuntimeError as failure:  # e.g. no -march=native here
            error = failure
    raise error


def _declare(library):
    pointer, size = ctypes.c_void_p, ctypes.c_int64
    library.keras_lipschitz_linf_abi_version.restype = ctypes.c_int
    library.keras_lipschitz_linf_forward.restype = ctypes.c_int
    library.keras_lipschitz_linf_forward.argtypes = [
        pointer, pointer, pointer, size, size, size, ctypes.c_double,
        pointer, pointer, ctypes.c_int,
    ]
    library.keras_lipschitz_linf_backward.restype = ctypes.c_int
    library.keras_lipschitz_linf_backward.argtypes = [
        pointer, pointer, pointer, size, size, size, ctypes.c_double,
        pointer, pointer, pointer, pointer, pointer, ctypes.c_int,
    ]


def load():
    """The compiled library (ctypes), or None if it cannot be built here."""
    global _LIBRARY
    if _LIBRARY is not None:
        return _LIBRARY or None
    with _LOCK:
        if _LIBRARY is None:
            try:
                compiler = _native_build.compiler()
                if compiler is None:
                    raise RuntimeError(
                        "no C++ compiler found ($CXX, g++, c++, clang++)"
                    )
                library = ctypes.CDLL(_build(compiler))
                _declare(library)
                version = library.keras_lipschitz_linf_abi_version()
                if version != _ABI_VERSION:
                    raise RuntimeError(f"ABI version {version}")
                _LIBRARY = library
            # Any failure (compiler, loader) means: use keras.ops.
            except Exception as error:  # noqa: BLE001
                _LIBRARY = False
                warnings.warn(
                    "keras_lipschitz could not build its ℓ∞-distance CPU "
                    f"kernels ({type(error).__name__}: {error}). "
                    "LinfDistDense and SortNetDense train through keras.ops "
                    "instead: same results, much slower. Set "
                    "KERAS_LIPSCHITZ_LINF_KERNELS=0 to skip the build.",
                    stacklevel=2,
                )
    return _LIBRARY or None


def _threads():
    requested = os.environ.get("KERAS_LIPSCHITZ_LINF_THREADS", "").strip()
    if requested:
        return max(1, int(requested))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


# --------------------------------------------------------------------------
# NumPy-level calls.
# --------------------------------------------------------------------------


def _float32(array):
    return np.ascontiguousarray(array, dtype=np.float32)


def _keep_or_none(keep):
    """A keep mask, or None for the empty placeholder of the bindings."""
    if keep is None or np.size(keep) == 0 and np.ndim(keep) == 1:
        return None
    return _float32(keep)


def _pointer(array):
    return None if array is None else array.ctypes.data


def _check(code, p):
    if code == 1:
        raise ValueError(f"Invalid sizes or p for the ℓ∞ kernels (p={p}).")
    if code:
        raise MemoryError("The ℓ∞ kernels ran out of memory.")


def forward(x, kernel, p, keep=None):
    """`(y, aux)`: distances `(B, N)` and, at p = inf, the argmax record.

    Args:
        x: `(B, D)` array; kernel: `(D, N)`; p: float in [1, inf];
        keep: None or `(B, D)` of 0/1 (a `(0,)` array means None).

    Returns:
        float32 `y` and int32 `aux` (the maximizing coordinate of each
        `(b, n)`, or minus the number of tied maximizers; unused at finite
        p), both `(B, N)`.
    """
    x, kernel, keep = _float32(x), _float32(kernel), _keep_or_none(keep)
    p = float(p)
    batch, dim = x.shape
    units = kernel.shape[1]
    y = np.empty((batch, units), np.float32)
    aux = np.zeros((batch, units), np.int32)
    code = load().keras_lipschitz_linf_forward(
        _pointer(x), _pointer(kernel), _pointer(keep), batch, dim, units, p,
        _pointer(y), _pointer(aux), _threads(),
    )
    _check(code, p)
    CALLS["forward"] += 1
    return y, aux


def backward(x, kernel, p, keep, y, aux, upstream):
    """Gradients of `sum(upstream * y)` w.r.t. x and the kernel.

    Returns:
        float32 `(grad_x (B, D), grad_kernel (D, N))`.
    """
    x, kernel, keep = _float32(x), _float32(kernel), _keep_or_none(keep)
    y, upstream = _float32(y), _float32(upstream)
    aux = np.ascontiguousarray(aux, dtype=np.int32)
    p = float(p)
    batch, dim = x.shape
    units = kernel.shape[1]
    grad_x = np.empty((batch, dim), np.float32)
    grad_kernel = np.empty((dim, units), np.float32)
    code = load().keras_lipschitz_linf_backward(
        _pointer(x), _pointer(kernel), _pointer(keep), batch, dim, units, p,
        _pointer(y), _pointer(aux), _pointer(upstream), _pointer(grad_x),
        _pointer(grad_kernel), _threads(),
    )
    _check(code, p)
    CALLS["backward"] += 1
    return grad_x, grad_kernel


# --------------------------------------------------------------------------
# Backend bindings.
# --------------------------------------------------------------------------


def pnorm_distances(x, kernel, p, keep=None):
    """`linf.pnorm_distances(x, kernel, p, keep=keep)` by the kernels.

    Same arguments and result as the reference (any chunk size), for CPU
    float32 tensors of the current backend; `p` is a number or a scalar
    tensor (it may hold inf). No gradient flows to `p` or `keep`.
    """
    backend = keras.config.backend()
    if backend == "torch":
        return _torch_distances(x, kernel, p, keep)
    if backend == "jax":
        return _jax_distances(x, kernel, p, keep)
    if backend == "tensorflow":
        return _tf_distances(x, kernel, p, keep)
    raise ValueError(f"No ℓ∞ kernels binding for backend {backend!r}.")


_TORCH_FUNCTION = None


def _torch_function():
    global _TORCH_FUNCTION
    if _TORCH_FUNCTION is not None:
        return _TORCH_FUNCTION
    import torch

    def arrays(*tensors):
        return [
            None if t is None else t.detach().contiguous().numpy()
            for t in tensors
        ]

    class PNormDistances(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, kernel, p, keep):
            p_value = float(p)
            y, aux = forward(*arrays(x, kernel), p_value, *arrays(keep))
            y, aux = torch.from_numpy(y), torch.from_numpy(aux)
            ctx.save_for_backward(x, kernel, keep, y, aux)
            ctx.p = p_value
            return y

        @staticmethod
        @torch.autograd.function.once_differentiable
        def backward(ctx, upstream):
            x, kernel, keep, y, aux = ctx.saved_tensors
            grad_x, grad_kernel = backward(
                *arrays(x, kernel), ctx.p, *arrays(keep, y, aux, upstream)
            )
            return (
                torch.from_numpy(grad_x),
                torch.from_numpy(grad_kernel),
                None,
                None,
            )

    _TORCH_FUNCTION = PNormDistances
    return PNormDistances


def _torch_distances(x, kernel, p, keep):
    import torch

    x = torch.as_tensor(x, dtype=torch.float32)
    kernel = torch.as_tensor(kernel, dtype=torch.float32)
    if keep is not None:
        keep = torch.as_tensor(keep, dtype=torch.float32)
    if isinstance(p, torch.Tensor):
        p = p.detach()
    return _torch_function().apply(x, kernel, p, keep)


def _pure_callback(function, shapes, *args):
    import jax

    try:
        return jax.pure_callback(
            function, shapes, *args, vmap_method="sequential"
        )
    except TypeError:  # JAX < 0.4.34: no vmap_method
        return jax.pure_callback(function, shapes, *args)


def _jax_distances(x, kernel, p, keep):
    import jax
    import jax.numpy as jnp

    batch, units = x.shape[0], kernel.shape[1]
    p = jnp.asarray(p, jnp.float32)
    if keep is None:
        keep = jnp.zeros((0,), jnp.float32)
    y_shape = jax.ShapeDtypeStruct((batch, units), jnp.float32)
    aux_shape = jax.ShapeDtypeStruct((batch, units), jnp.int32)
    gradient_shapes = (
        jax.ShapeDtypeStruct(x.shape, jnp.float32),
        jax.ShapeDtypeStruct(kernel.shape, jnp.float32),
    )

    def call_forward(x, kernel, p, keep):
        return _pure_callback(forward, (y_shape, aux_shape), x, kernel, p, keep)

    @jax.custom_vjp
    def distances(x, kernel, p, keep):
        return call_forward(x, kernel, p, keep)[0]

    def distances_forward(x, kernel, p, keep):
        y, aux = call_forward(x, kernel, p, keep)
        return y, (x, kernel, p, keep, y, aux)

    def distances_backward(saved, upstream):
        x, kernel, p, keep, y, aux = saved
        grad_x, grad_kernel = _pure_callback(
            backward, gradient_shapes, x, kernel, p, keep, y, aux, upstream
        )
        return grad_x, grad_kernel, jnp.zeros_like(p), jnp.zeros_like(keep)

    distances.defvjp(distances_forward, distances_backward)
    return distances(x, kernel, p, keep)


def _tf_distances(x, kernel, p, keep):
    import tensorflow as tf

    x = tf.convert_to_tensor(x, tf.float32)
    kernel = tf.convert_to_tensor(kernel, tf.float32)
    p = tf.cast(tf.convert_to_tensor(p), tf.float32)
    if keep is None:
        keep = tf.zeros((0,), tf.float32)
    keep = tf.convert_to_tensor(keep, tf.float32)
    y_shape = tf.TensorShape([x.shape[0], kernel.shape[1]])

    @tf.custom_gradient
    def distances(x, kernel, p, keep):
        y, aux = tf.numpy_function(
            forward, [x, kernel, p, keep], [tf.float32, tf.int32],
            stateful=False,
        )
        y.set_shape(y_shape)
        aux.set_shape(y_shape)

        def gradient(upstream):
            grad_x, grad_kernel = tf.numpy_function(
                backward,
                [x, kernel, p, keep, y, aux, upstream],
                [tf.float32, tf.float32],
                stateful=False,
            )
            grad_x.set_shape(x.shape)
            grad_kernel.set_shape(kernel.shape)
            return grad_x, grad_kernel, tf.zeros_like(p), tf.zeros_like(keep)

        return y, gradient

    return distances(x, kernel, p, keep)
