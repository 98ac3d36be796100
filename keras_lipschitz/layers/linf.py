"""ℓ∞-distance neurons: `LinfDistDense` and `SortNetDense`.

A unit computes a *distance* to its weight vector instead of a dot product,

$$u_i(x) = \\|x - w_i\\|_p ,$$

which is 1-Lipschitz with respect to $\\ell_\\infty$ when $p = \\infty$
(Zhang, Cai, Lu, He, Wang, "Towards Certifying ℓ∞ Robustness using Neural
Networks with ℓ∞-dist Neurons", ICML 2021; Zhang, Jiang, He, Wang,
"Boosting the Certified Robustness of L-infinity Distance Nets", ICLR 2022).
A network of such layers has every logit 1-Lipschitz in $\\ell_\\infty$, so
a margin $M$ certifies the $\\ell_\\infty$ radius $M/2$.

**Memory.** A naive broadcast materializes the $B\\times D\\times N$
difference tensor (54 GB for the papers' 512×5120×5120 layer). Here the
input dimension is cut into chunks of `chunk_size` coordinates, reduced
one after the other with a running maximum and a rescaled running $p$-sum
(fixed-count `ops.fori_loop`), and the backward pass is a custom gradient
that recomputes each chunk instead of storing it, so only $B\\times c\\times
N$ temporaries are alive at once.

**Speed.** On a CPU, training calls run fused C++ kernels instead
(`training_pnorm_distances`; compiled at first use, same values and
subgradients): the `keras.ops` form makes one pass over a chunk per
elementwise op and is hundreds of times slower than a `Dense` step of the
same shape. `KERAS_LIPSCHITZ_LINF_KERNELS=0` turns them off; inference
always uses `keras.ops`.
"""

import math
import numbers

import keras
from keras import ops

from keras_lipschitz import _backend
from keras_lipschitz.api_export import keras_lipschitz_export
from keras_lipschitz.layers import _validation

# Default number of input coordinates reduced per chunk.
DEFAULT_CHUNK_SIZE = 32

# Up to this many chunks the loops are unrolled in Python (cheap to trace,
# and no per-call loop compilation in eager JAX); beyond, `ops.fori_loop`
# and `ops.map` keep the traced graph small.
MAX_UNROLLED_CHUNKS = 8


# --------------------------------------------------------------------------
# Validation.
# --------------------------------------------------------------------------


def validate_p(name, value):
    """Returns `value` as a float in [1, inf], or raises `ValueError`."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or value != value
        or value < 1
    ):
        raise ValueError(
            f"`{name}` must be a number >= 1 or float('inf'). "
            f"Received: {name}={value!r}"
        )
    return float(value)


def _validate_keep_probability(q):
    if (
        isinstance(q, bool)
        or not isinstance(q, numbers.Real)
        or not 0.0 < q <= 1.0
    ):
        raise ValueError(
            "`q` must be a number in (0, 1] (the probability of keeping an "
            f"input coordinate). Received: q={q!r}"
        )
    return float(q)


def _validate_optional_number(name, value):
    if value is None:
        return None
    return _validation.validate_positive_number(name, value)


# --------------------------------------------------------------------------
# Chunked distance kernels (pure ops, no layer state).
# --------------------------------------------------------------------------


def _chunks(x, kernel, chunk_size):
    """Zero-pads the input dimension and splits it into chunks.

    Returns `(x_chunks (n, B, c), kernel_chunks (n, c, N), n)`. Padded
    coordinates hold 0 in both, so they add |0 - 0| = 0 to every distance.
    """
    dim = kernel.shape[0]
    size = min(chunk_size, dim)
    n = -(-dim // size)
    pad = n * size - dim
    if pad:
        kernel = ops.pad(kernel, [[0, pad], [0, 0]])
    kernel_chunks = ops.reshape(kernel, (n, size, kernel.shape[1]))
    return _row_chunks(x, n, size), kernel_chunks, n


def _row_chunks(x, n, size):
    """`(B, D)` -> `(n, B, size)`, zero-padding D up to `n * size`."""
    pad = n * size - x.shape[-1]
    if pad:
        x = ops.pad(x, [[0, 0], [0, pad]])
    return ops.transpose(ops.reshape(x, (-1, n, size)), (1, 0, 2))


def _abs_diff(x_chunk, kernel_chunk, keep_chunk=None):
    """|x - w| for one chunk: `(B, c)` and `(c, N)` -> `(B, c, N)`.

    With `keep_chunk` (`(B, c)` of 0/1), dropped coordinates give 0, which
    changes neither a maximum nor a p-sum of non-negative values.
    """
    a = ops.abs(
        ops.expand_dims(x_chunk, -1) - ops.expand_dims(kernel_chunk, 0)
    )
    if keep_chunk is not None:
        a = a * ops.expand_dims(keep_chunk, -1)
    return a


def _relative_power(a, m, p, p_is_inf):
    """`(a / m) ** p` for 0 <= a <= m, exactly 1 where `a == m`.

    The tie test compares `a` with `m`, not the ratio with 1: compilers may
    turn the division into a multiplication by a reciprocal (XLA on CPU
    does), after which `a / a` need not be exactly 1. With `p` a tensor
    holding `inf`, `pow(r, inf)` is 0 for `r < 1`.
    """
    tied = ops.equal(a, m)
    if p_is_inf:
        return ops.cast(tied, a.dtype)
    return ops.where(tied, 1.0, ops.power(a / _safe(m), p))


def _safe(m):
    return ops.where(m > 0, m, ops.ones_like(m))


def _pnorm_forward(x_chunks, kernel_chunks, n, p, p_is_inf, keep_chunks=None):
    """Returns `(m, s)`: the max |x - w| and sum((|x - w| / m) ** p)."""

    def keep(i):
        return None if keep_chunks is None else keep_chunks[i]

    def reduce_chunk(x_chunk, kernel_chunk, keep_chunk, m, s):
        a = _abs_diff(x_chunk, kernel_chunk, keep_chunk)
        m_new = ops.maximum(m, ops.max(a, axis=1))
        # Online rescaling: the sum so far was relative to the old maximum.
        s = s * _relative_power(m, m_new, p, p_is_inf) + ops.sum(
            _relative_power(a, ops.expand_dims(m_new, 1), p, p_is_inf),
            axis=1,
        )
        return m_new, s

    a0 = _abs_diff(x_chunks[0], kernel_chunks[0], keep(0))
    m = ops.max(a0, axis=1)
    s = ops.sum(
        _relative_power(a0, ops.expand_dims(m, 1), p, p_is_inf), axis=1
    )
    if n <= MAX_UNROLLED_CHUNKS:
        for i in range(1, n):
            m, s = reduce_chunk(x_chunks[i], kernel_chunks[i], keep(i), m, s)
        return m, s

    def body(i, state):
        return reduce_chunk(x_chunks[i], kernel_chunks[i], keep(i), *state)

    return _backend.sequential_fori_loop(1, n, body, (m, s))


def _pnorm_backward(
    x_chunks, kernel_chunks, y, s, upstream, p, p_is_inf, keep_chunks=None
):
    """Gradients of `y = ||x - w||_p` w.r.t. x and w, chunk by chunk.

    d y / d z_k = sign(z_k) (|z_k| / y) ** (p - 1); at p = inf the
    gradient is shared equally by the tied maximal coordinates (there are
    `s` of them), a valid subgradient. Dropped coordinates (`keep` 0) get
    no gradient.
    """
    safe_y = ops.expand_dims(y, 1)
    if p_is_inf:
        weight = upstream / _safe(s)
    else:
        is_inf = ops.isinf(p)
        weight = ops.where(is_inf, upstream / _safe(s), upstream)
    weight = ops.expand_dims(weight, 1)

    def chunk_gradients(chunk):
        x_chunk, kernel_chunk = chunk[:2]
        z = ops.expand_dims(x_chunk, -1) - ops.expand_dims(kernel_chunk, 0)
        a = ops.abs(z)
        sign = ops.sign(z)
        if keep_chunks is not None:
            keep_chunk = ops.expand_dims(chunk[2], -1)
            a = a * keep_chunk
            sign = sign * keep_chunk
        factor = _relative_power(
            a, safe_y, None if p_is_inf else p - 1.0, p_is_inf
        )
        terms = sign * factor * weight  # (B, c, N)
        return ops.sum(terms, axis=2), -ops.sum(terms, axis=0)

    chunks = (x_chunks, kernel_chunks)
    if keep_chunks is not None:
        chunks = chunks + (keep_chunks,)
    if x_chunks.shape[0] <= MAX_UNROLLED_CHUNKS:
        parts = [
            chunk_gradients(tuple(c[i] for c in chunks))
            for i in range(x_chunks.shape[0])
        ]
        return (
            ops.stack([part[0] for part in parts]),
            ops.stack([part[1] for part in parts]),
        )
    return _backend.sequential_map(chunk_gradients, chunks)


def pnorm_distances(x, kernel, p, chunk_size=DEFAULT_CHUNK_SIZE, keep=None):
    """$y_{bi} = \\|x_b - w_i\\|_p$, chunked, with a recomputing backward.

    Numerically $\\|z\\|_p = m\\,\\|z/m\\|_p$ with $m = \\max_k |z_k|$,
    which is exact by homogeneity and never overflows for large $p$. At
    $p = \\infty$ the result is exactly $\\max_k |z_k|$.

    Args:
        x: float32 inputs `(B, D)`.
        kernel: float32 weights `(D, N)`; column `i` is $w_i$.
        p: a Python float in $[1, \\infty]$ or a float32 scalar tensor
            (for instance a non-trainable variable changed during training;
            it may hold `inf`).
        chunk_size: number of input coordinates reduced at once.
        keep: None, or float32 `(B, D)` of 0/1: sample $b$ then uses only
            its kept coordinates, $y_{bi} = \\|(x_b - w_i)_{S_b}\\|_p$
            (0 if $S_b$ is empty). It gets no gradient.

    Returns:
        Tensor `(B, N)`.
    """
    p_is_inf = isinstance(p, numbers.Real) and math.isinf(p)
    x = ops.convert_to_tensor(x, "float32")
    kernel = ops.convert_to_tensor(kernel, "float32")
    dim = kernel.shape[0]
    if p_is_inf:
        p_tensor = ops.convert_to_tensor(0.0, "float32")
    else:
        p_tensor = ops.cast(ops.convert_to_tensor(p), "float32")
    inputs = [x, kernel, p_tensor]
    if keep is not None:
        inputs.append(ops.cast(keep, "float32"))

    @ops.custom_gradient
    def distances(*inputs):
        x, kernel, p_tensor = inputs[:3]
        p_value = None if p_is_inf else p_tensor
        x_chunks, kernel_chunks, n = _chunks(x, kernel, chunk_size)
        keep_chunks = None
        if len(inputs) == 4:
            keep_chunks = _row_chunks(inputs[3], n, x_chunks.shape[2])
        m, s = _pnorm_forward(
            x_chunks, kernel_chunks, n, p_value, p_is_inf, keep_chunks
        )
        if p_is_inf:
            y = m
        else:
            y = ops.where(m > 0, m * ops.power(_safe(s), 1.0 / p_value), 0.0)

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            grad_x, grad_kernel = _pnorm_backward(
                x_chunks,
                kernel_chunks,
                y,
                s,
                upstream,
                p_value,
                p_is_inf,
                keep_chunks,
            )
            # (n, B, c) -> (B, D) and (n, c, N) -> (D, N).
            grad_x = ops.reshape(
                ops.transpose(grad_x, (1, 0, 2)), (-1, n * grad_x.shape[2])
            )[:, :dim]
            grad_kernel = ops.reshape(grad_kernel, (-1, kernel.shape[1]))
            grads = (grad_x, grad_kernel[:dim], ops.zeros_like(p_tensor))
            if keep_chunks is not None:
                grads = grads + (ops.zeros_like(inputs[3]),)
            return grads

        return y, grad

    return distances(*inputs)


def training_pnorm_distances(x, kernel, p, chunk_size, training, keep=None):
    """`pnorm_distances` of a training call, by compiled kernels on a CPU.

    Where `keras_lipschitz._backend.native_linf_kernels` says they apply
    (training calls on float32 CPU tensors, every backend; not with
    `KERAS_LIPSCHITZ_LINF_KERNELS=0`), the fused C++ kernels of
    `keras_lipschitz/_linf_kernels.cc` compute the same values and
    subgradients (up to the order of floating-point sums) without any
    `(B, c, N)` temporary; `chunk_size` is then unused. Everything else
    runs `pnorm_distances`.
    """
    kernels = _backend.native_linf_kernels(training, x)
    if kernels is not None:
        return kernels.pnorm_distances(x, kernel, p, keep=keep)
    return pnorm_distances(x, kernel, p, chunk_size, keep=keep)


def naive_pnorm_distances(x, kernel, p):
    """Reference: the full `(B, D, N)` broadcast, differentiated by autodiff.

    Only for tests and benchmarks: its memory grows as $B\\cdot D\\cdot N$.
    """
    z = ops.abs(ops.expand_dims(x, -1) - ops.expand_dims(kernel, 0))
    if math.isinf(p):
        return ops.max(z, axis=1)
    m = ops.max(z, axis=1, keepdims=True)
    safe = ops.where(m > 0, m, ops.ones_like(m))
    norm = ops.power(ops.sum(ops.power(z / safe, p), axis=1), 1.0 / p)
    return ops.squeeze(m, 1) * norm


def sample_keep_masks(batch_size, dim, q, seed=None, group_size=32):
    """SortNet's random coordinate subsets, one per group of samples.

    As in the official code (zbh2047/SortNet, `core/models/norm_dist.py`,
    `sample_mask` with `SUB_BATCH = 32`): one count $c \\sim
    \\mathrm{Bin}(D, q)$ is drawn per call, then every group of
    `group_size` consecutive samples (the last one may be smaller) gets its
    own subset of $c$ coordinates, uniform among the subsets of that size.
    Per group, this is the same law as keeping each coordinate
    independently with probability $q$, so
    $\\mathbb E[\\max_{j\\in S}|z_j|] = \\sum_k q(1-q)^{k-1}|z|_{(k)}$
    ($|z|_{(k)}$ the $k$-th largest, the empty subset giving 0).

    Args:
        batch_size: int or scalar int tensor, $B$.
        dim: int, $D$.
        q: keep probability in (0, 1].
        seed: a `keras.random.SeedGenerator`, an int or None.
        group_size: int >= 1, samples sharing one subset.

    Returns:
        float32 `(B, D)` of 0/1; rows of the same group are equal.
    """
    count = ops.sum(
        ops.cast(keras.random.uniform((dim,), seed=seed) < q, "int32")
    )
    groups = (batch_size + (group_size - 1)) // group_size
    noise = keras.random.uniform((groups, dim), seed=seed)
    # Rank of each coordinate in its group's random order: the `count`
    # first ones form a uniform subset of that size.
    ranks = ops.argsort(ops.argsort(noise, axis=-1), axis=-1)
    keep = ops.cast(ranks < count, "float32")
    group_of_sample = ops.arange(batch_size) // group_size
    return ops.take(keep, group_of_sample, axis=0)


def sorted_distance_weights(q, truncate):
    """SortNet weights $q(1-q)^{k-1} / (1-(1-q)^K)$, $k = 1..K$ (sum 1)."""
    raw = [q * (1.0 - q) ** k for k in range(truncate)]
    total = sum(raw)
    return [w / total for w in raw]


def sorted_distances(x, kernel, weights, chunk_size=DEFAULT_CHUNK_SIZE):
    """$y_{bi} = \\sum_k \\nu_k\\,|x_b - w_i|_{(k)}$, the SortNet neuron.

    $|\\cdot|_{(k)}$ is the $k$-th largest coordinate. The top $K$ values
    are kept in a running `(B, N, K)` buffer merged with each chunk by
    `ops.top_k`; the gradient is the automatic one through `top_k`.

    Args:
        x: float32 inputs `(B, D)`.
        kernel: float32 weights `(D, N)`.
        weights: Python list of $K \\le D$ non-negative weights.
        chunk_size: number of input coordinates per chunk.

    Returns:
        Tensor `(B, N)`.
    """
    k = len(weights)
    x_chunks, kernel_chunks, n = _chunks(x, kernel, chunk_size)

    def merge(top, x_chunk, kernel_chunk):
        a = ops.transpose(_abs_diff(x_chunk, kernel_chunk), (0, 2, 1))
        values, _ = ops.top_k(ops.concatenate([top, a], axis=-1), k)
        return values

    a0 = ops.transpose(_abs_diff(x_chunks[0], kernel_chunks[0]), (0, 2, 1))
    # All values are >= 0 and D >= K, so zeros are a neutral start.
    top = ops.zeros_like(a0[:, :, :1]) * ops.zeros((k,), a0.dtype)
    top = ops.top_k(ops.concatenate([top, a0], axis=-1), k)[0]
    if n <= MAX_UNROLLED_CHUNKS:
        for i in range(1, n):
            top = merge(top, x_chunks[i], kernel_chunks[i])
    else:
        top = _backend.sequential_fori_loop(
            1,
            n,
            lambda i, t: merge(t, x_chunks[i], kernel_chunks[i]),
            top,
        )
    return ops.sum(top * ops.convert_to_tensor(weights, top.dtype), axis=-1)


# --------------------------------------------------------------------------
# Initializer.
# --------------------------------------------------------------------------


class _IdentityLike(keras.initializers.Initializer):
    """Base initializer, then $w_{i \\bmod D,\\,i} = -v$ for every unit i.

    With inputs of moderate size, unit $i$ then computes
    $\\|x - w_i\\|_\\infty \\approx x_{i \\bmod D} + v$: after the mean shift
    the layer starts near the identity (Zhang et al., 2021).
    """

    def __init__(self, base, value):
        self.base = base
        self.value = value

    def __call__(self, shape, dtype=None):
        kernel = self.base(shape, dtype=dtype)
        dim, units = shape
        rows = [i % dim for i in range(units)]
        mask = ops.one_hot(ops.convert_to_tensor(rows, "int32"), dim)
        mask = ops.cast(ops.transpose(mask), kernel.dtype)  # (D, N)
        return kernel * (1.0 - mask) - self.value * mask


# --------------------------------------------------------------------------
# Layers.
# --------------------------------------------------------------------------


class _DistanceDense(keras.layers.Layer):
    """Shared machinery: kernel, p variable, mean shift, bias, config."""

    def __init__(
        self,
        units,
        p=8.0,
        mean_shift=True,
        use_bias=False,
        negate=False,
        identity_value=10.0,
        kernel_initializer=None,
        bias_initializer="zeros",
        momentum=0.1,
        chunk_size=DEFAULT_CHUNK_SIZE,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.units = _validation.validate_positive_int("units", units)
        self.p = validate_p("p", p)
        self.mean_shift = bool(mean_shift)
        self.use_bias = bool(use_bias)
        self.negate = bool(negate)
        self.identity_value = _validate_optional_number(
            "identity_value", identity_value
        )
        if kernel_initializer is None:
            kernel_initializer = keras.initializers.RandomNormal(stddev=1.0)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        if (
            isinstance(momentum, bool)
            or not isinstance(momentum, numbers.Real)
            or not 0.0 < momentum <= 1.0
        ):
            raise ValueError(
                "`momentum` must be a number in (0, 1]. "
                f"Received: momentum={momentum!r}"
            )
        self.momentum = float(momentum)
        self.chunk_size = _validation.validate_positive_int(
            "chunk_size", chunk_size
        )
        self.input_spec = keras.layers.InputSpec(ndim=2)

    def build(self, input_shape):
        if len(input_shape) != 2:
            raise ValueError(
                f"{type(self).__name__} takes inputs of rank 2 "
                "(batch, features); flatten the input first (e.g. with "
                f"keras.layers.Flatten()). Received: input_shape="
                f"{tuple(input_shape)}"
            )
        dim = input_shape[-1]
        if dim is None:
            raise ValueError(
                f"{type(self).__name__} needs a known last input dimension. "
                f"Received: input_shape={tuple(input_shape)}"
            )
        initializer = self.kernel_initializer
        if self.identity_value is not None and dim <= self.units:
            initializer = _IdentityLike(initializer, self.identity_value)
        self.kernel = self.add_weight(
            name="kernel",
            shape=(dim, self.units),
            initializer=initializer,
            autocast=False,
        )
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias",
                shape=(self.units,),
                initializer=self.bias_initializer,
                autocast=False,
            )
        self.running_mean = None
        if self.mean_shift:
            self.running_mean = self.add_weight(
                name="running_mean",
                shape=(self.units,),
                initializer="zeros",
                trainable=False,
                autocast=False,
            )
        # The p used in training; changed by callbacks.PNormScheduler.
        self.train_p = self.add_weight(
            name="train_p",
            shape=(),
            initializer=keras.initializers.Constant(self.p),
            trainable=False,
            autocast=False,
        )
        self.input_spec = keras.layers.InputSpec(ndim=2, axes={-1: dim})

    def set_p(self, value):
        """Sets the training-time $p$ (a number >= 1 or `inf`)."""
        value = validate_p("p", value)
        self.train_p.assign(value)

    @property
    def current_p(self):
        """The training-time $p$ as a Python float."""
        return float(ops.convert_to_numpy(self.train_p))

    def _distances(self, inputs, training):
        raise NotImplementedError

    def distances(self, inputs):
        """Inference-mode distances before the shift, bias and sign."""
        x = ops.cast(inputs, "float32")
        return self._distances(x, training=False)

    def call(self, inputs, training=None):
        x = ops.cast(inputs, "float32")
        u = self._distances(x, training)
        if self.mean_shift:
            if training:
                mean = ops.mean(u, axis=0)
                u = u - mean
                old = ops.convert_to_tensor(self.running_mean)
                self.running_mean.assign(
                    (1.0 - self.momentum) * old
                    + self.momentum * ops.stop_gradient(mean)
                )
            else:
                u = u - self.running_mean
        if self.bias is not None:
            u = u + self.bias
        if self.negate:
            u = -u
        return ops.cast(u, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                "p": self.p,
                "mean_shift": self.mean_shift,
                "use_bias": self.use_bias,
                "negate": self.negate,
                "identity_value": self.identity_value,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
                "bias_initializer": keras.initializers.serialize(
                    self.bias_initializer
                ),
                "momentum": self.momentum,
                "chunk_size": self.chunk_size,
            }
        )
        return config


@keras_lipschitz_export
class LinfDistDense(_DistanceDense):
    """Dense layer of ℓ∞-distance neurons (Zhang et al., ICML 2021/ICLR 2022).

    $$y_i = \\pm\\big(\\|x - w_i\\|_p - \\mu_i + b_i\\big),$$

    - $p$ is `train_p` (a non-trainable float32 weight, initially `p`) in
      training, raised towards $\\infty$ by
      `keras_lipschitz.callbacks.PNormScheduler`; **inference always uses
      $p = \\infty$**, where each output is 1-Lipschitz w.r.t.
      $\\ell_\\infty$ (at finite $p$ it is $D^{1/p}$-Lipschitz).
    - **Mean shift** (`mean_shift=True`, hidden layers): in training
      $\\mu_i$ is the batch mean of $\\|x - w_i\\|_p$, and a running mean
      (momentum `momentum`, non-trainable float32, written only in
      training) is kept for inference, where subtracting a constant keeps
      the Lipschitz constant. If training stops at a finite $p$, call
      `keras_lipschitz.models.recompute_running_means(model, x)` before
      evaluating.
    - **Bias** (`use_bias=True`) and **sign** (`negate=True`): the papers'
      last layer has a bias, no mean shift, and logits $z = -y$ (a class
      scores high when $x$ is close to its prototype).
    - **Initialization**: $w \\sim \\mathcal N(0, 1)$ and, when
      $D \\le N$ and `identity_value` $= v$ is set,
      $w_{i \\bmod D,\\,i} = -v$, so that unit $i$ is about
      $x_{i \\bmod D} + v$ (identity-like after the mean shift).
    - **Numerics and memory**: see `pnorm_distances`; the difference
      tensor is reduced `chunk_size` input coordinates at a time and the
      backward pass recomputes chunks.

    Args:
        units: positive int, number of neurons $N$.
        p: initial training $p$, a number >= 1 or `inf` (the papers start
            at 8).
        mean_shift: bool, subtract the batch / running mean.
        use_bias: bool, add a trainable bias.
        negate: bool, return $-y$ (the papers' logits).
        identity_value: float > 0 or None, the identity-like init value.
        kernel_initializer: initializer of the $(D, N)$ kernel (column $i$
            is $w_i$); default $\\mathcal N(0, 1)$.
        bias_initializer: initializer of the bias.
        momentum: float in (0, 1], running-mean momentum.
        chunk_size: int >= 1, input coordinates reduced at once.

    Input shape:
        `(batch, D)`: flatten images first.

    Output shape:
        `(batch, units)`.

    Example:

    >>> import numpy as np
    >>> layer = LinfDistDense(3, mean_shift=False, identity_value=None)
    >>> x = np.zeros((1, 4), "float32")
    >>> y = keras.ops.convert_to_numpy(layer(x))
    >>> w = keras.ops.convert_to_numpy(layer.kernel)
    >>> bool(np.allclose(y[0], np.abs(w).max(axis=0)))
    True
    """

    def _distances(self, x, training):
        kernel = ops.cast(self.kernel, "float32")
        if not training:
            return pnorm_distances(x, kernel, float("inf"), self.chunk_size)
        return training_pnorm_distances(
            x,
            kernel,
            ops.convert_to_tensor(self.train_p),
            self.chunk_size,
            training,
        )


@keras_lipschitz_export
class SortNetDense(_DistanceDense):
    """Dense layer of SortNet neurons (Zhang, Jiang, He, Wang, NeurIPS 2022).

    $$y_i = \\sum_{k=1}^{K}\\nu_k\\,|x - w_i|_{(k)},\\qquad
    \\nu_k = \\frac{q(1-q)^{k-1}}{1-(1-q)^K},$$

    where $|z|_{(k)}$ is the $k$-th largest $|z_j|$ and $K$ = `truncate`
    (capped at the input dimension). The weights are non-negative and sum
    to 1, and each order statistic is 1-Lipschitz in $\\ell_\\infty$, so
    every output is **1-Lipschitz w.r.t. $\\ell_\\infty$**; $q = 1$ is the
    ℓ∞-distance neuron. Mean shift, bias, sign and initialization are as in
    `LinfDistDense`.

    - **Training** (the paper's stochastic trick): the $p$-distance
      ($p$ = `train_p` as in `LinfDistDense`) over a random subset of the
      input coordinates, drawn as in the official code (see
      `sample_keep_masks`): per call one count $c \\sim \\mathrm{Bin}(D,
      q)$, then one uniform subset of $c$ coordinates for each group of
      `group_size` = 32 consecutive samples. At $p = \\infty$,
      $\\mathbb E[\\max_{j\\in S}|z_j|] = \\sum_k q(1-q)^{k-1}|z|_{(k)}$,
      the untruncated neuron. The chunked kernel skips the dropped
      coordinates (a 0/1 mask inside each chunk, also in the recomputing
      backward), so memory is as in `LinfDistDense`. With
      `subsample=False` (the paper's first layer) no coordinate is dropped.
      The official code also has the previous layer compute only the units
      kept here, so its mean-shift statistics average each unit over the
      groups that keep it; here every unit is computed for every sample
      and averaged over the whole batch.
    - **Inference**: the deterministic truncated neuron above, computed
      with `ops.top_k` on chunks of `chunk_size` coordinates.

    Args:
        units: positive int.
        q: keep probability in (0, 1] (the official code's `dropout`;
            0.75 for MNIST at ε = 0.3).
        truncate: int >= 1, $K$.
        subsample: bool, use random coordinate subsets in training.
        seed: int or None, seed of the subsets.
        group_size: int >= 1, consecutive samples sharing one subset (the
            official code's `SUB_BATCH` = 32).
        **kwargs: the arguments of `LinfDistDense`.

    Input shape:
        `(batch, D)`.

    Output shape:
        `(batch, units)`.

    Example:

    >>> import numpy as np
    >>> layer = SortNetDense(2, q=0.5, truncate=2, mean_shift=False)
    >>> y = layer(np.zeros((1, 3), "float32"))
    >>> tuple(y.shape)
    (1, 2)
    """

    def __init__(
        self,
        units,
        q=0.75,
        truncate=10,
        subsample=True,
        seed=None,
        group_size=32,
        **kwargs,
    ):
        super().__init__(units, **kwargs)
        self.q = _validate_keep_probability(q)
        self.truncate = _validation.validate_positive_int("truncate", truncate)
        self.subsample = bool(subsample)
        self.group_size = _validation.validate_positive_int(
            "group_size", group_size
        )
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def sorted_weights(self, input_dim):
        """The weights $\\nu_k$ used at inference, for `input_dim` inputs."""
        return sorted_distance_weights(self.q, min(self.truncate, input_dim))

    def _distances(self, x, training):
        kernel = ops.cast(self.kernel, "float32")
        if not training:
            return sorted_distances(
                x,
                kernel,
                self.sorted_weights(kernel.shape[0]),
                self.chunk_size,
            )
        keep = None
        if self.subsample and self.q < 1.0:
            keep = sample_keep_masks(
                ops.shape(x)[0],
                kernel.shape[0],
                self.q,
                seed=self.seed_generator,
                group_size=self.group_size,
            )
        return training_pnorm_distances(
            x,
            kernel,
            ops.convert_to_tensor(self.train_p),
            self.chunk_size,
            training,
            keep=keep,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "q": self.q,
                "truncate": self.truncate,
                "subsample": self.subsample,
                "seed": self.seed,
                "group_size": self.group_size,
            }
        )
        return config


@keras_lipschitz_export
class LogitScale(keras.layers.Identity):
    """Identity layer holding the learned logit scale $s$ of the CE term.

    The papers' loss is hinge$(z)$ + λ·CE$(s\\,z, y)$ with $s$ a **learned**
    scalar: in the official code (zbh2047/L_inf-dist-net-v2,
    `ell_inf_models.py`, `MLPModel(scalar=True)`, used by every command in
    `command/`; zbh2047/SortNet, `SortMLPModel(scalar=True)`) it is
    `nn.Parameter(torch.ones(1))`, trained by Adam in its own parameter
    group at learning rate 0.006 (`--scalar-lr`, vs 0.03 for the rest),
    while the hinge and the certificate use the unscaled $z$.

    This layer returns its input unchanged in every mode, so the model's
    outputs, predictions and certificates are those of $z$: **$s$ never
    enters a certified margin**. It only owns the trainable weight;
    `keras_lipschitz.losses.LinfDistHinge(scale=layer)` reads $s$ inside
    the training step, where the optimizer sees it as a model weight. Being
    a `keras.layers.Identity`, it is accepted by the ℓ∞ certification.

    $s = m\\,\\theta$ with $\\theta$ the trainable weight (initially
    $s_0/m$, so $s = s_0$ = `initial_scale`, 1 in the papers) and $m$ =
    `lr_multiplier`: Adam's step on $\\theta$ is
    about the learning rate whatever the gradient's size, so $s$ moves
    about $m$ times the learning rate, as with a per-parameter learning
    rate. The default $m = 0.2 = 0.006 / 0.03$ reproduces the papers'
    ratio with Adam (a cosine schedule scales both alike).

    Inputs in pixel units ($[0, 1]$) instead of the papers' normalized
    $(x - \\mu)/\\sigma$ make every logit $\\sigma$ times smaller for the
    same function; `initial_scale` $= 1/\\sigma$ (and a matching
    `lr_multiplier`) then gives the papers' CE term exactly.

    Args:
        lr_multiplier: float > 0, $m$.
        initial_scale: float > 0, $s_0$.
        **kwargs: base layer arguments (`name`, ...).

    Example:

    >>> import numpy as np
    >>> layer = LogitScale()
    >>> z = np.ones((2, 3), "float32")
    >>> bool(np.all(keras.ops.convert_to_numpy(layer(z)) == z))
    True
    >>> round(float(keras.ops.convert_to_numpy(layer.scale)), 4)
    1.0
    """

    def __init__(self, lr_multiplier=0.2, initial_scale=1.0, **kwargs):
        super().__init__(**kwargs)
        self.lr_multiplier = _validation.validate_positive_number(
            "lr_multiplier", lr_multiplier
        )
        self.initial_scale = _validation.validate_positive_number(
            "initial_scale", initial_scale
        )

    def build(self, input_shape):
        self.raw_scale = self.add_weight(
            name="raw_scale",
            shape=(),
            initializer=keras.initializers.Constant(
                self.initial_scale / self.lr_multiplier
            ),
            autocast=False,
        )

    @property
    def scale(self):
        """$s = m\\,\\theta$, a float32 scalar tensor."""
        return self.lr_multiplier * ops.convert_to_tensor(self.raw_scale)

    def get_config(self):
        config = super().get_config()
        config["lr_multiplier"] = self.lr_multiplier
        config["initial_scale"] = self.initial_scale
        return config


DISTANCE_LAYERS = (LinfDistDense, SortNetDense)
