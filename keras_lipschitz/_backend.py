"""The library's single backend dispatch point.

Only what `keras.ops` cannot express lives here: input gradients, used by
attacks and empirical Lipschitz estimates, cross-replica sums, loops whose
iterations must not overlap (memory of the chunked ℓ∞ layers), which of
two formulations of the same maths is faster on a backend (eager
execution, small-image convolutions), the fused TensorFlow CPU kernels
of `GroupSort2` and `ScaledL2NormPooling2D`, and the compiled CPU kernels
of the ℓ∞-distance layers. Backends are imported lazily, inside the
functions.
"""

import os

import keras


def runs_eagerly():
    """Whether the backend runs op by op, without a graph compiler.

    On torch every op is its own kernel, so hand-fused gradients and
    slicing beat what autodiff and Keras's generic ops produce; TensorFlow
    and JAX compile the training step and fuse those ops themselves.
    """
    return keras.config.backend() == "torch"


def compile_host_function(fn):
    """`fn`, compiled as one program where eager ops compile one by one.

    For pure functions of tensors evaluated outside training (bounds,
    certification). Eager JAX compiles every op separately for every new
    shape (the ~40 ops of a `CayleyConv2D`'s frequency matrices take
    seconds); `jax.jit` compiles the whole function once. TensorFlow and
    torch run eager ops without compiling them: `fn` itself.
    """
    if keras.config.backend() != "jax":
        return fn
    import jax

    return jax.jit(fn)


def small_image_conv_is_slow(image_size, kernel_size):
    """Whether a "same" conv on an image smaller than its kernel is slow.

    XLA's CPU convolution (JAX on CPU) takes a slow generic path when the
    image is smaller than the kernel: a 3x3 conv of a 128x2x2x512 batch,
    with its gradients, runs 40x slower than the same arithmetic on a
    128x4x4x256 batch and 49x slower than as one matrix product
    (`normalizers.conv_same`; `benchmarks/fused_ops.py`). This
    happens in the last blocks of SOC networks (LipConvNet on CIFAR-10).
    TensorFlow (oneDNN), torch and GPUs have no such cliff.
    """
    if keras.config.backend() != "jax":
        return False
    if not any(n < k for n, k in zip(image_size, kernel_size)):
        return False
    import jax

    return jax.default_backend() == "cpu"


def _jax_on_cpu():
    if keras.config.backend() != "jax":
        return False
    import jax

    return jax.default_backend() == "cpu"


def fft_may_deadlock():
    """Whether several FFTs in one compiled step can hang the process.

    XLA's CPU FFT and jaxlib's batched LAPACK kernels (JAX on CPU, jax
    0.10) split their work over the intra-op thread pool they are running
    on and block until it is done; two such calls in flight at once (two
    `CayleyConv2D` layers in one training step, on a 2-core machine) leave
    every worker waiting for the others, forever. Seen here with gdb: the
    workers parked in `jax::ParallelBatchMap` under `lapack_sgetrf_ffi`;
    the same deadlock of XLA's `FftThunk` is reported upstream. Where this
    returns True, the layers use DFTs written as matrix products instead.
    """
    return _jax_on_cpu()


_GAUSS_JORDAN_SOLVE = []


def _gauss_jordan(a, b):
    """Unpivoted Gauss-Jordan elimination of `a x = b` (batched, JAX)."""
    import jax
    import jax.numpy as jnp

    n = a.shape[-1]
    eye = jnp.eye(n, dtype=a.dtype)
    augmented = jnp.concatenate([a, b], axis=-1)

    def eliminate(i, m):
        unit = eye[i]
        row = jnp.einsum("...jk,j->...k", m, unit)
        row = row / row[..., i][..., None]
        column = m[..., :, i]
        # Rows j != i lose column i; row i becomes the normalized row.
        return m - (column - unit)[..., :, None] * row[..., None, :]

    augmented = jax.lax.fori_loop(0, n, eliminate, augmented)
    return augmented[..., n:]


def solve_with_positive_definite_symmetric_part(a, b):
    """Solves $a x = b$ for matrices with $a + a^T \\succ 0$ (batched).

    `keras.ops.linalg.solve`, except with JAX on CPU, where jaxlib's batched
    LU can deadlock (see `fft_may_deadlock`): there, Gauss-Jordan
    elimination without pivoting, written with XLA ops (stable for such
    matrices: every pivot's Schur complement keeps a positive definite
    symmetric part), with the implicit gradient
    $\\bar b = a^{-T}\\bar x$, $\\bar a = -\\bar b\\,x^T$ (one more
    elimination, nothing stored per step).

    Args:
        a: float tensor `(..., n, n)` whose symmetric part is positive
            definite (e.g. $I + S$ with $S$ skew-symmetric).
        b: float tensor `(..., n, k)`.

    Returns:
        A tensor `(..., n, k)`.
    """
    if not _jax_on_cpu():
        return keras.ops.linalg.solve(a, b)
    if not _GAUSS_JORDAN_SOLVE:
        import jax
        import jax.numpy as jnp

        @jax.custom_vjp
        def solve(a, b):
            return _gauss_jordan(a, b)

        def forward(a, b):
            x = _gauss_jordan(a, b)
            return x, (a, x)

        def backward(residuals, grad):
            a, x = residuals
            grad_b = _gauss_jordan(jnp.swapaxes(a, -1, -2), grad)
            return -grad_b @ jnp.swapaxes(x, -1, -2), grad_b

        solve.defvjp(forward, backward)
        _GAUSS_JORDAN_SOLVE.append(solve)
    b = keras.ops.broadcast_to(b, tuple(a.shape[:-1]) + (b.shape[-1],))
    return _GAUSS_JORDAN_SOLVE[0](a, b)


def fused_training_kernels(training, inputs):
    """The compiled TensorFlow CPU kernels, when this call may use them.

    Returns the `keras_lipschitz._tf_cpu_kernels` module, or None (then the
    caller uses its `keras.ops` formulation, which the kernels reproduce).
    They apply only to training calls (`training` true, so inference,
    export and certification never depend on them) on float32 `inputs`, on
    the TensorFlow backend, on a machine without a visible GPU, outside XLA
    (`jit_compile`), unless the environment variable
    `KERAS_LIPSCHITZ_TF_KERNELS` is `0`, and once they built. The caller
    checks the layout its kernel needs.
    """
    try:
        if not bool(training):
            return None
    except (TypeError, ValueError):  # a symbolic flag: cannot tell
        return None
    if keras.config.backend() != "tensorflow":
        return None
    if keras.backend.standardize_dtype(inputs.dtype) != "float32":
        return None
    if os.environ.get("KERAS_LIPSCHITZ_TF_KERNELS", "1").strip() == "0":
        return None
    from keras_lipschitz import _tf_cpu_kernels

    if not _tf_cpu_kernels.applies_here() or _tf_cpu_kernels.load() is None:
        return None
    return _tf_cpu_kernels


def native_linf_kernels(training, inputs):
    """The compiled ℓ∞-distance CPU kernels, when this call may use them.

    Returns the `keras_lipschitz._linf_kernels` module (its
    `pnorm_distances` reproduces `layers.linf.pnorm_distances`), or None
    (then the caller uses that `keras.ops` reference). They apply only to
    training calls (`training` true, so inference and certification never
    depend on them) on float32 `inputs` on a CPU: torch CPU tensors outside
    `torch.compile`, JAX whose default backend is the CPU, TensorFlow
    without a visible GPU and outside XLA (`jit_compile`); unless the
    environment variable `KERAS_LIPSCHITZ_LINF_KERNELS` is `0`, and once
    they built.
    """
    try:
        if not bool(training):
            return None
    except (TypeError, ValueError):  # a symbolic flag: cannot tell
        return None
    if keras.backend.standardize_dtype(inputs.dtype) != "float32":
        return None
    if os.environ.get("KERAS_LIPSCHITZ_LINF_KERNELS", "1").strip() == "0":
        return None
    backend = keras.config.backend()
    if backend == "torch":
        import torch

        if not isinstance(inputs, torch.Tensor) or inputs.device.type != "cpu":
            return None
        compiling = getattr(getattr(torch, "compiler", None), "is_compiling",
                            None)
        if compiling is not None and compiling():  # (torch >= 2.3)
            return None
    elif backend == "jax":
        import jax

        if jax.default_backend() != "cpu":
            return None
    elif backend == "tensorflow":
        from keras_lipschitz import _tf_cpu_kernels

        if not _tf_cpu_kernels.applies_here():
            return None
    else:
        return None
    from keras_lipschitz import _linf_kernels

    if _linf_kernels.load() is None:
        return None
    return _linf_kernels


def sequential_fori_loop(lower, upper, body, init):
    """`keras.ops.fori_loop` whose iterations never overlap.

    TensorFlow's graph executor runs up to 10 iterations of a while loop
    at once (`parallel_iterations=10`) whenever their ops do not depend on
    the carry; for the chunked ℓ∞ distances that keeps 10 chunks' large
    temporaries alive (GBs at width 5120). Here TensorFlow runs one
    iteration at a time; other backends already do.
    """
    if keras.config.backend() == "tensorflow":
        import tensorflow as tf

        return tf.while_loop(
            lambda i, value: i < upper,
            lambda i, value: (i + 1, body(i, value)),
            (lower, init),
            parallel_iterations=1,
        )[1]
    return keras.ops.fori_loop(lower, upper, body, init)


def sequential_map(f, xs):
    """`keras.ops.map` over the leading axis, one element at a time.

    Same reason as `sequential_fori_loop`: `tf.map_fn` otherwise runs 10
    elements at once in graph mode. JAX's `lax.map` and torch already run
    one at a time.
    """
    if keras.config.backend() == "tensorflow":
        import tensorflow as tf

        first = tf.nest.map_structure(lambda x: x[0], xs)
        signature = tf.nest.map_structure(tf.TensorSpec.from_tensor, f(first))
        return tf.map_fn(
            f, xs, fn_output_signature=signature, parallel_iterations=1
        )
    return keras.ops.map(f, xs)


def value_and_input_gradient(fn, x):
    """Returns `(fn(x), d fn / d x)` for a scalar-valued `fn`.

    Args:
        fn: callable mapping a backend tensor to a scalar tensor.
        x: array-like input.

    Returns:
        A pair of backend tensors.
    """
    backend = keras.config.backend()
    x = keras.ops.convert_to_tensor(x, "float32")
    if backend == "jax":
        import jax

        return jax.value_and_grad(fn)(x)
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(x)
            value = fn(x)
        return value, tape.gradient(value, x)
    if backend == "torch":
        import torch

        x = x.detach().clone().requires_grad_(True)
        value = fn(x)
        (grad,) = torch.autograd.grad(value, x)
        return value.detach(), grad
    raise ValueError(
        f"Input gradients are not supported on backend {backend!r}; "
        "use tensorflow, jax or torch."
    )


def compiled_input_gradient(fn):
    """`x -> (aux, d value / d x)` for `fn(x) = (scalar value, aux)`.

    For loops that evaluate the same function at many inputs of one shape
    (attacks): JAX compiles value and gradient as one program
    (`jax.jit`; eager JAX would compile op by op), TensorFlow traces one
    graph (`tf.function`), torch runs eagerly. The model's weights are
    read when the function is traced, so it must not change while the
    returned function is in use.

    Args:
        fn: callable mapping a float32 backend tensor to a pair
            `(scalar tensor, auxiliary tensor)`.

    Returns:
        A callable mapping an array-like input to `(aux, gradient)`,
        backend tensors.
    """
    backend = keras.config.backend()
    if backend == "jax":
        import jax

        value_and_grad = jax.jit(jax.value_and_grad(fn, has_aux=True))

        def run_jax(x):
            (_, aux), grad = value_and_grad(
                keras.ops.convert_to_tensor(x, "float32")
            )
            return aux, grad

        return run_jax
    if backend == "tensorflow":
        import tensorflow as tf

        @tf.function(autograph=False)
        def traced(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                value, aux = fn(x)
            return aux, tape.gradient(value, x)

        return lambda x: traced(tf.convert_to_tensor(x, tf.float32))

    def run_eagerly(x):
        value, aux = None, None

        def scalar(v):
            nonlocal value, aux
            value, aux = fn(v)
            return value

        _, grad = value_and_input_gradient(scalar, x)
        return _detach(aux), grad

    return run_eagerly


def _detach(x):
    return x.detach() if hasattr(x, "detach") else x


def cross_replica_sum(x):
    """Sums `x` over the data-parallel replicas that share one global batch.

    Batch statistics (the class counts of the KR losses) must be those of
    the *global* batch when the batch is split across replicas:

    - TensorFlow, inside a `tf.distribute` replica context with more than
      one replica (`MirroredStrategy`, `MultiWorkerMirroredStrategy`,
      `TPUStrategy`, as used by `fit`): an all-reduce over the replicas.
    - torch, when a `torch.distributed` process group with more than one
      rank is initialized (DDP): an all-reduce over the ranks. It is a
      collective: every rank must compute the loss.
    - JAX: `keras.distribution` runs one program on global (sharded)
      arrays, so a sum over the batch axis is already global.

    Args:
        x: a tensor computed from the local slice of the batch; no gradient
            flows through the reduction (use it for label statistics).

    Returns:
        The sum of `x` over the replicas (`x` itself without replicas).
    """
    backend = keras.config.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        if tf.distribute.has_strategy() and (
            not tf.distribute.in_cross_replica_context()
        ):
            context = tf.distribute.get_replica_context()
            if context is not None and context.num_replicas_in_sync > 1:
                return context.all_reduce(tf.distribute.ReduceOp.SUM, x)
        return x
    if backend == "torch":
        import torch.distributed as dist

        if (
            dist.is_available()
            and dist.is_initialized()
            and dist.get_world_size() > 1
        ):
            x = x.detach().clone()
            dist.all_reduce(x, op=dist.ReduceOp.SUM)
        return x
    return x
