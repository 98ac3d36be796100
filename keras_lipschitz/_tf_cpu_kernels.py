"""Fused TensorFlow CPU kernels for `GroupSort2` and `ScaledL2NormPooling2D`.

Without XLA, TensorFlow's CPU graph executor runs every op of a layer as
its own pass over the activations, and has no kernel for a pairwise sort:
`GroupSort2` costs two matmuls, a ReLU and an add each way where ReLU's
forward is fused into the preceding convolution, and the ℓ2 pooling five
kernels each way. The two C++ kernels in `_tf_cpu_kernels.cc` do each layer
in one pass forward and one backward, and their gradients work in place
when TensorFlow allows it (benchmarks/README.md has the measurements).

They are compiled once per TensorFlow version and source, with the C++
compiler of the machine (`$CXX` if set, else `g++`, `c++` or `clang++`)
against TensorFlow's own headers, cached under `$KERAS_LIPSCHITZ_CACHE`
(default `~/.cache/keras_lipschitz`), and used only when
`_backend.fused_training_kernels` says so: on the TensorFlow backend, for a
training call (`training=True`), on a machine without a visible GPU,
outside XLA (`jit_compile`), and unless `KERAS_LIPSCHITZ_TF_KERNELS=0`.
Inference, export, certification and every other backend use the
`keras.ops` formulation, which the kernels reproduce (bit for bit for
`GroupSort2`; tests compare both, gradients and second-order gradients
included). If the build fails the layers fall back to `keras.ops`, with
one warning.

This module imports TensorFlow; only `_backend` imports it, lazily.
"""

import os
import threading
import warnings

import tensorflow as tf

from keras_lipschitz import _native_build

_SOURCE = os.path.join(os.path.dirname(__file__), "_tf_cpu_kernels.cc")
_LOCK = threading.Lock()
# None: not tried yet; False: the build or load failed; else the op module.
_LIBRARY = None
_compiler = _native_build.compiler


def _build(compiler, rebuild=False):
    """Compiles the kernels (or finds them cached); returns the .so path."""
    compile_flags = [compiler, "-std=c++17", "-shared", "-fPIC", "-O3", "-w"]
    # Vectorizable square roots (no errno).
    compile_flags += ["-fno-math-errno"]
    compile_flags += tf.sysconfig.get_compile_flags()
    return _native_build.build(
        _SOURCE,
        "tf_cpu_kernels",
        compile_flags,
        tf.sysconfig.get_link_flags(),
        key_parts=[tf.__version__.encode()],
        rebuild=rebuild,
        description="TensorFlow CPU kernels",
    )


def _register_gradients(ops_module):
    pairs_grad = ops_module.keras_lipschitz_min_max_pairs_grad
    pool_grad = ops_module.keras_lipschitz_l2_norm_pool_grad

    @tf.RegisterGradient("KerasLipschitzMinMaxPairs")
    def _min_max_pairs_gradient(op, upstream):
        return pairs_grad(op.inputs[0], upstream)

    @tf.RegisterGradient("KerasLipschitzMinMaxPairsGrad")
    def _min_max_pairs_second_gradient(op, upstream):
        # Linear in `upstream` through a pair swap (its own transpose), and
        # piecewise constant in x.
        return None, pairs_grad(op.inputs[0], upstream)

    @tf.RegisterGradient("KerasLipschitzL2NormPool")
    def _l2_norm_pool_gradient(op, upstream):
        return pool_grad(
            op.inputs[0],
            op.outputs[0],
            upstream,
            pool_h=op.get_attr("pool_h"),
            pool_w=op.get_attr("pool_w"),
        )

    @tf.RegisterGradient("KerasLipschitzL2NormPoolGrad")
    def _l2_norm_pool_second_gradient(op, upstream):
        # grad = x * spread(g / y): differentiate in x, y and g.
        x, y, g = op.inputs
        size = (op.get_attr("pool_h"), op.get_attr("pool_w"))
        window = [1, size[0], size[1], 1]
        count = float(size[0] * size[1])
        ratio = g / y
        spread = tf.raw_ops.AvgPoolGrad(
            orig_input_shape=tf.shape(x),
            grad=ratio * count,
            ksize=window,
            strides=window,
            padding="VALID",
        )
        window_sums = (
            tf.nn.avg_pool2d(upstream * x, size, size, "VALID") * count
        )
        return upstream * spread, -window_sums * ratio / y, window_sums / y


def load():
    """The compiled op module, or None if it cannot be built here."""
    global _LIBRARY
    if _LIBRARY is not None:
        return _LIBRARY or None
    with _LOCK:
        if _LIBRARY is None:
            try:
                compiler = _compiler()
                if compiler is None:
                    raise RuntimeError(
                        "no C++ compiler found ($CXX, g++, c++, clang++)"
                    )
                try:
                    module = tf.load_op_library(_build(compiler))
                except tf.errors.OpError:
                    # A cached library that no longer loads: build afresh.
                    module = tf.load_op_library(_build(compiler, True))
                _register_gradients(module)
                _LIBRARY = module
            # Any failure (compiler, headers, ABI) means: use keras.ops.
            except Exception as error:  # noqa: BLE001
                _LIBRARY = False
                warnings.warn(
                    "keras_lipschitz could not build its TensorFlow CPU "
                    f"kernels ({type(error).__name__}: {error}). GroupSort2 "
                    "and ScaledL2NormPooling2D train through keras.ops "
                    "instead: same results, slower. Set "
                    "KERAS_LIPSCHITZ_TF_KERNELS=0 to skip the build.",
                    stacklevel=2,
                )
    return _LIBRARY or None


def applies_here():
    """Whether the current trace may use the kernels (CPU, outside XLA)."""
    if tf.config.list_logical_devices("GPU"):
        return False
    if tf.executing_eagerly():
        return True
    try:
        from tensorflow.python.ops import control_flow_util
    except ImportError:  # cannot tell whether XLA compiles this trace
        return False
    graph = tf.compat.v1.get_default_graph()
    return not control_flow_util.GraphOrParentsInXlaContext(graph)


def min_max_pairs(x):
    """`(min, max)` of adjacent pairs of the last axis (float32)."""
    return load().keras_lipschitz_min_max_pairs(x)


def l2_norm_pool(x, pool_size, epsilon):
    """`sqrt(window sum of x**2 + epsilon)`, NHWC float32, valid windows."""
    return load().keras_lipschitz_l2_norm_pool(
        x, pool_h=pool_size[0], pool_w=pool_size[1], epsilon=float(epsilon)
    )
