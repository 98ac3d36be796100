"""Orthogonal convolutions with an explicit kernel: BCOP and AOC.

- `BCOPConv2D`: block convolution orthogonal parametrization, Li, Haque,
  Anil, Lucas, Grosse, Jacobsen, "Preventing Gradient Attenuation in
  Lipschitz Constrained Convolutional Networks", NeurIPS 2019
  (arXiv 1911.00937; official code ColinQiyangLi/LConvNet).
- `AOCConv2D` and `AOCConv2DTranspose`: adaptive orthogonal convolution,
  Boissin, Mamalet, Fel, Picard, Massena, Serrurier, "An Adaptive
  Orthogonal Convolution Scheme for Efficient and Flexible CNN
  Architectures", ICML 2025 (arXiv 2501.07930; official code
  deel-ai/orthogonium, `orthogonium/layers/conv/AOC/`).

Both build, inside `call`, an explicit $k_h \\times k_w$ kernel whose
convolution is orthogonal (up to the Björck convergence of a few small
matrices), from raw trainable matrices that are never overwritten. The
forward pass is then one ordinary convolution.

**Kernel algebra** (Keras layout, $y = \\sum_a x[\\cdot + a]\\,W[a]$ with
taps $W[a] \\in \\mathbb{R}^{c_{in} \\times c_{out}}$). Applying the conv
of $A$ and then the conv of $B$ (stride 1) is the conv of the kernel
$C[p] = \\sum_{a + b = p} A[a]\\,B[b]$ of size $k_A + k_B - 1$. With a
symmetric projector $P$ ($P^2 = P = P^T$), the two-tap kernel
$[P,\\ I - P]$ along one spatial axis has the symbol
$P + (I - P)z$, unitary for $|z| = 1$; a 1x1 orthogonal $H$ is
orthogonal; products of unitary symbols are unitary. So

$$W = H \\circledast [P_1, I - P_1]_h \\circledast [Q_1, I - Q_1]_w
  \\circledast \\cdots$$

($k_h - 1$ factors along the height, $k_w - 1$ along the width) is the
kernel of a convolution that is orthogonal on the circular grid of every
size and norm-preserving on the infinite plane (BCOP). The layers use
$P = MM^T$ with $M \\in \\mathbb{R}^{c \\times \\lfloor c/2\\rfloor}$
column-orthonormal, obtained from a raw matrix by power-iteration
pre-scaling and Björck steps (`keras_lipschitz.normalizers`).
"""

import math
import random as python_random

import keras
import numpy as np
from keras import ops

from keras_lipschitz import _backend
from keras_lipschitz import bounds
from keras_lipschitz import normalizers
from keras_lipschitz.api_export import keras_lipschitz_export
from keras_lipschitz.layers import _kernel_arguments
from keras_lipschitz.layers import _validation
from keras_lipschitz.layers.aol import _orthogonal

# Power-iteration steps run on the host at build, so that the stored
# vectors start converged.
INITIAL_POWER_ITERATIONS = 50
# Defaults. Power iteration: orthogonium's `BatchedPowerIteration` (which
# always runs 3 steps). Björck: 12 in orthogonium, 20 in the BCOP paper's
# code; 20 keeps every singular value within 1e-4 of 1 after large SGD
# steps (tests/test_orthogonal_conv.py).
DEFAULT_POWER_ITERATIONS = 3
DEFAULT_BJORCK_ITERATIONS = 20
# Björck converges for singular values in (0, sqrt(3)) of the pre-scaled
# matrix. The power-iteration estimate can only under-estimate the norm; the
# pre-scale is never below the Schur bound (an upper bound) times this
# factor, so every singular value starts at most at sqrt(2).
_SCHUR_FLOOR = 1.0 / math.sqrt(2.0)
# Relative slack for float64 rounding in the guaranteed bound.
_FLOAT64_SLACK = 1e-12


# --------------------------------------------------------------- kernel maths
class _Backend:
    """The few array functions the kernel construction needs.

    The same construction runs in `keras.ops` (float32, in `call`) and in
    NumPy (float64, for the guaranteed bound), so the bound is computed
    for exactly the maths the layer runs.
    """

    def __init__(self, matmul, pad, transpose, reshape, eye):
        self.matmul = matmul
        self.pad = pad
        self.transpose = transpose
        self.reshape = reshape
        self.eye = eye


_OPS = _Backend(
    ops.matmul,
    ops.pad,
    ops.transpose,
    ops.reshape,
    lambda n: ops.eye(n, dtype="float32"),
)
_NUMPY = _Backend(np.matmul, np.pad, np.transpose, np.reshape, np.eye)


def _swap(xp, x):
    """Transposes the last two axes of a rank-4 batch of matrices."""
    return xp.transpose(x, (0, 1, 3, 2))


def _projectors(xp, bases):
    """$P = MM^T$ for a batch `(g, n, c, r)` of column-orthonormal $M$."""
    return xp.matmul(bases, _swap(xp, bases))


def _reflection_product(xp, bases):
    """$H = (I - 2P_0)(I - 2P_1)$ from two bases `(g, 2, c, r)` (AOC)."""
    p = _projectors(xp, bases)
    eye = xp.eye(bases.shape[2])
    return xp.matmul(eye - 2.0 * p[:, 0], eye - 2.0 * p[:, 1])


def _compose_projector(xp, kernel, projector, axis):
    """`kernel` followed by the two-tap factor $[P, I - P]$ along `axis`.

    `kernel` is `(g, m_h, m_w, c, c)` (Keras-layout taps) and `projector`
    `(g, c, c)`: the new taps are $W'[a] = W[a]P + W[a - 1](I - P)$.
    """
    x = xp.matmul(kernel, projector[:, None, None])
    after = [(0, 0)] * 5
    before = [(0, 0)] * 5
    after[axis] = (0, 1)
    before[axis] = (1, 0)
    return xp.pad(x, after) + xp.pad(kernel - x, before)


def _bcop_kernel(xp, h, projectors, size):
    """The BCOP kernel `(g, m_h, m_w, c, c)` (Li et al., NeurIPS 2019).

    Args:
        xp: `_OPS` or `_NUMPY`.
        h: `(g, c, c)` orthogonal 1x1 tap.
        projectors: `(g, (m_h - 1) + (m_w - 1), c, c)` symmetric
            projectors, the height factors first.
        size: `(m_h, m_w)`.
    """
    m_h, m_w = size
    kernel = h[:, None, None]
    for i in range(max(m_h, m_w) - 1):
        if i < m_h - 1:
            kernel = _compose_projector(xp, kernel, projectors[:, i], 1)
        if i < m_w - 1:
            kernel = _compose_projector(
                xp, kernel, projectors[:, m_h - 1 + i], 2
            )
    return kernel


def _compose_rko(xp, kernel, rko):
    """`kernel` `(g, m_h, m_w, c_in, c)` followed by `rko` `(g, s_h, s_w,
    c, c_out)`: $C[a + b] = \\sum W[a]R[b]$, size $m + s - 1$."""
    _, s_h, s_w, _, _ = rko.shape
    total = None
    for b_h in range(s_h):
        for b_w in range(s_w):
            x = xp.matmul(kernel, rko[:, b_h : b_h + 1, b_w : b_w + 1])
            x = xp.pad(
                x,
                [(0, 0), (b_h, s_h - 1 - b_h), (b_w, s_w - 1 - b_w), (0, 0),
                 (0, 0)],
            )
            total = x if total is None else total + x
    return total


def _orthonormalize(matrices, u, power_iterations, bjorck_iterations, beta):
    """Pre-scale by power iteration, then Björck; on a batch of matrices.

    The scale is $\\max(\\hat\\sigma, \\rho/\\sqrt2)$, with $\\hat\\sigma$
    from `normalizers.batched_power_iteration` (orthogonium's
    `BatchedPowerIteration`, differentiable, vectors gradient-stopped) and
    $\\rho = (\\max_i\\sum_j|G_{ij}|)^{1/2} \\ge \\sigma_{max}$ the Schur
    bound of the smaller Gram matrix $G$. The floor keeps every pre-scaled
    singular value below $\\sqrt2$, inside Björck's convergence domain,
    even from a stale vector (orthogonium's trap: a badly under-estimated
    norm makes Björck diverge).

    Returns:
        `(orthonormal, u_new)`.
    """
    u_new, sigma = normalizers.batched_power_iteration(
        matrices, u, power_iterations
    )
    rows, cols = matrices.shape[-2:]
    transposed = ops.swapaxes(matrices, -1, -2)
    if rows >= cols:
        gram = ops.matmul(transposed, matrices)
    else:
        gram = ops.matmul(matrices, transposed)
    schur = ops.sqrt(
        ops.max(ops.sum(ops.abs(gram), axis=-1), axis=-1, keepdims=True)
    )
    scale = ops.maximum(sigma, ops.expand_dims(schur, -1) * _SCHUR_FLOOR)
    # One loop body instead of `bjorck_iterations` unrolled copies: a
    # third of the XLA compile time (JAX, TensorFlow) of the construction.
    orthonormal = ops.fori_loop(
        0,
        bjorck_iterations,
        lambda _, w: normalizers.bjorck_orthonormalize(w, 1, beta),
        matrices / scale,
    )
    return orthonormal, u_new


def _dilated(xp, kernel, dilation):
    """The kernel `(k_h, k_w, ...)` with $d - 1$ zeros between taps."""
    for axis, d in enumerate(dilation):
        if d == 1:
            continue
        k = kernel.shape[axis]
        shape = tuple(kernel.shape)
        zeros = [(0, 0)] * (len(shape) + 1)
        zeros[axis + 1] = (0, d - 1)
        x = xp.reshape(kernel, shape[: axis + 1] + (1,) + shape[axis + 1 :])
        x = xp.pad(x, zeros)
        x = xp.reshape(x, shape[:axis] + (k * d,) + shape[axis + 1 :])
        index = [slice(None)] * len(shape)
        index[axis] = slice(0, d * (k - 1) + 1)
        kernel = x[tuple(index)]
    return kernel


def _take(x, axis, start, stop):
    """`x[..., start:stop, ...]` on `axis` (negative indices: no size
    needed, so dynamic spatial sizes work)."""
    index = [slice(None)] * len(x.shape)
    index[axis] = slice(start, stop)
    return x[tuple(index)]


def _circular_pad(x, axis, before, after):
    """Wraps `before` / `after` entries of `axis` around (by slicing)."""
    parts = []
    if before:
        parts.append(_take(x, axis, -before, None))
    parts.append(x)
    if after:
        parts.append(_take(x, axis, 0, after))
    return parts[0] if len(parts) == 1 else ops.concatenate(parts, axis=axis)


def _crop_or_fold(x, axis, before, after, circular):
    """The adjoint of zero (crop) or circular (fold) padding on `axis`.

    `x` has `before + n + after` entries on `axis`; the result has `n`.
    Circular: the entries outside are added back where circular padding
    copied them from (the last `before` and the first `after` entries).
    """
    core = _take(x, axis, before, -after if after else None)
    if not circular:
        return core
    if after:
        tail = _take(x, axis, -after, None)
        core = ops.concatenate(
            [
                _take(core, axis, 0, after) + tail,
                _take(core, axis, after, None),
            ],
            axis=axis,
        )
    if before:
        head = _take(x, axis, 0, before)
        core = ops.concatenate(
            [
                _take(core, axis, 0, -before),
                _take(core, axis, -before, None) + head,
            ],
            axis=axis,
        )
    return core


class _BatchedOrthogonal(keras.initializers.Initializer):
    """Every matrix on the last two axes with orthonormal rows or columns.

    Drawn on the host with NumPy (QR, as `keras.initializers.Orthogonal`,
    but per matrix rather than for the flattened tensor). The seed is drawn
    at construction from Python's `random`, so it is reproducible under
    `keras.utils.set_random_seed`.
    """

    def __init__(self):
        self._seed = python_random.randint(1, int(1e9))

    def __call__(self, shape, dtype=None):
        rng = np.random.default_rng(self._seed)
        *batch, rows, cols = shape
        count = int(math.prod(batch))
        matrices = [_orthogonal(rng, rows, cols) for _ in range(count)]
        array = np.stack(matrices).reshape(shape) if count else np.zeros(shape)
        return array.astype(dtype or "float32")


def _numpy_normal(seed):
    """A fixed N(0, 1) initializer drawn on the host (no JAX compile)."""

    def initializer(shape, dtype=None):
        rng = np.random.default_rng(seed)
        return rng.normal(size=shape).astype(dtype or "float32")

    return initializer


def _host_power_iteration(matrices, u, iterations):
    """`batched_power_iteration` in float64 NumPy (the start at build)."""
    matrices = np.asarray(matrices, np.float64)
    u = np.asarray(u, np.float64)

    def normalize(x):
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-30)

    u = normalize(u)
    for _ in range(iterations):
        v = normalize(u @ np.swapaxes(matrices, -1, -2))
        u = normalize(v @ matrices)
    return u


def _spectral_norms(matrices):
    """Largest singular value of each matrix (float64 SVD), with slack."""
    matrices = np.asarray(matrices, np.float64)
    if matrices.size == 0:
        return np.zeros(matrices.shape[:-2])
    norms = np.linalg.norm(matrices, ord=2, axis=(-2, -1))
    return norms * (1.0 + _FLOAT64_SLACK)


# --------------------------------------------------------------------- layers
class _OrthogonalConv(keras.layers.Layer):
    """Shared machinery: arguments, padding, the conv, bound, config.

    Subclasses define `_plan(c_in, c_out)` (sets the construction's
    sizes), `_build_parameters()` (raw weights and power-iteration
    vectors, with `_add_matrices`), `_named_parts(orthonormal)` (names the
    orthonormalized raw weights) and `_assemble(xp, parts)` (the kernel
    from them, in `keras.ops` or NumPy), plus `_factor_bound(parts)` (a
    float64 bound on the product of the factors' norms per group).
    """

    _transpose = False

    def __init__(
        self,
        filters,
        kernel_size,
        strides=(1, 1),
        padding="circular",
        data_format=None,
        dilation_rate=(1, 1),
        groups=1,
        lipschitz=1.0,
        activation=None,
        use_bias=True,
        kernel_initializer=None,
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        power_iterations=DEFAULT_POWER_ITERATIONS,
        bjorck_iterations=DEFAULT_BJORCK_ITERATIONS,
        bjorck_beta=0.5,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = _validation.validate_positive_int("filters", filters)
        self.kernel_size = _validation.validate_int_tuple(
            "kernel_size", kernel_size
        )
        self.strides = _validation.validate_int_tuple("strides", strides)
        self.padding = _validation.validate_choice(
            "padding", padding, {"circular", "same", "valid"}
        )
        self.data_format = _validation.validate_data_format(data_format)
        self.dilation_rate = _validation.validate_int_tuple(
            "dilation_rate", dilation_rate
        )
        self.groups = _validation.validate_positive_int("groups", groups)
        if self.filters % self.groups:
            raise ValueError(
                "`groups` must divide `filters`. "
                f"Received: groups={groups}, filters={filters}"
            )
        for k, s in zip(self.kernel_size, self.strides):
            if k < s:
                raise ValueError(
                    "`kernel_size` must be at least `strides` on each axis: "
                    "with a smaller kernel some input pixels are never read "
                    "and no orthogonal convolution exists. Received: "
                    f"kernel_size={kernel_size!r}, strides={strides!r}"
                )
        for d, s in zip(self.dilation_rate, self.strides):
            if s > 1 and math.gcd(d, s) > 1:
                raise ValueError(
                    "`dilation_rate` must be coprime with `strides` on each "
                    "axis with a stride > 1: otherwise the strided taps read "
                    "some pixels several times and others never, and no "
                    "orthogonal convolution exists. Received: "
                    f"dilation_rate={dilation_rate!r}, strides={strides!r}"
                )
        _kernel_arguments.set_kernel_arguments(
            self,
            lipschitz,
            activation,
            use_bias,
            kernel_initializer,
            bias_initializer,
            kernel_regularizer,
            bias_regularizer,
            kernel_constraint,
            bias_constraint,
        )
        # The config keeps None (the per-matrix orthogonal initializer).
        self._default_initializer = kernel_initializer is None
        if self._default_initializer:
            self.kernel_initializer = _BatchedOrthogonal()
        self.power_iterations = _validation.validate_positive_int(
            "power_iterations", power_iterations
        )
        self.bjorck_iterations = _validation.validate_positive_int(
            "bjorck_iterations", bjorck_iterations
        )
        self.bjorck_beta = _validation.validate_bjorck_beta(bjorck_beta)
        self.built_spatial_shape = None
        self._matrix_names = []
        self._derive_fn = None
        self.input_spec = keras.layers.InputSpec(ndim=4)

    # ---------------------------------------------------------------- shapes
    @property
    def _channel_axis(self):
        return -1 if self.data_format == "channels_last" else 1

    @property
    def _spatial_axes(self):
        return (1, 2) if self.data_format == "channels_last" else (2, 3)

    def _spatial_shape(self, shape):
        return tuple(shape[a] for a in self._spatial_axes)

    @property
    def _effective_kernel_size(self):
        return tuple(
            d * (k - 1) + 1
            for k, d in zip(self.kernel_size, self.dilation_rate)
        )

    @property
    def _inflate(self):
        """Whether the dilated kernel is inflated (stride and dilation > 1).

        TensorFlow's convolutions refuse strides and dilations above 1
        together; the inflated kernel (zeros between taps) is the same
        operator on every backend.
        """
        return max(self.strides) > 1 and max(self.dilation_rate) > 1

    def _pads(self):
        """Circular / "same" padding `(before, after)` per axis (n % s = 0)."""
        return tuple(
            ((k - s) // 2, k - s - (k - s) // 2)
            for k, s in zip(self._effective_kernel_size, self.strides)
        )

    def _check_spatial(self, spatial, what):
        """Circular padding needs sizes divisible by the stride, >= pads."""
        if self.padding == "circular":
            for n, s, (before, after) in zip(
                spatial, self.strides, self._pads()
            ):
                if n is None:
                    continue
                if n % s or before > n or after > n:
                    raise ValueError(
                        f"{type(self).__name__} with padding='circular' "
                        "needs spatial sizes that are multiples of the "
                        f"strides {self.strides} and at least the circular "
                        f"padding {self._pads()}. Received: {what}"
                    )
        if self.padding == "valid" and not self._transpose:
            for n, k in zip(spatial, self._effective_kernel_size):
                if n is not None and n < k:
                    raise ValueError(
                        "With padding='valid' the spatial input size must be "
                        "at least the (dilated) kernel size "
                        f"{self._effective_kernel_size}. Received: {what}"
                    )

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) != 4:
            raise ValueError(
                f"{type(self).__name__} expects inputs of rank 4. "
                f"Received: input_shape={input_shape}"
            )
        channels = input_shape[self._channel_axis]
        if channels is None:
            raise ValueError(
                f"{type(self).__name__} needs a known channel dimension "
                f"(data_format={self.data_format!r}). "
                f"Received: input_shape={input_shape}"
            )
        if channels % self.groups:
            raise ValueError(
                "`groups` must divide the number of input channels. "
                f"Received: groups={self.groups}, input_shape={input_shape}"
            )
        spatial = self._spatial_shape(input_shape)
        check = spatial
        if self._transpose:
            check = tuple(None if n is None else n * s
                          for n, s in zip(spatial, self.strides))
        self._check_spatial(check, f"input_shape={input_shape}")
        self.built_spatial_shape = spatial
        self.input_channels = int(channels)
        if self._transpose:
            # The kernel is that of the forward conv filters -> channels.
            self._plan(self.filters, self.input_channels)
        else:
            self._plan(self.input_channels, self.filters)
        self._build_parameters()
        self._derive_fn = _backend.compile_host_function(self._derive)
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias",
                shape=(self.filters,),
                initializer=self.bias_initializer,
                regularizer=self.bias_regularizer,
                constraint=self.bias_constraint,
            )
        self.input_spec = keras.layers.InputSpec(
            ndim=4, axes={self._channel_axis: channels}
        )

    def compute_output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        spatial = []
        for n, k, s in zip(
            self._spatial_shape(input_shape),
            self._effective_kernel_size,
            self.strides,
        ):
            if n is None:
                spatial.append(None)
            elif self._transpose:
                spatial.append(
                    n * s if self.padding != "valid" else (n - 1) * s + k
                )
            elif self.padding == "valid":
                spatial.append((n - k) // s + 1)
            else:
                spatial.append(-(-n // s))
        if self.data_format == "channels_last":
            return (input_shape[0], *spatial, self.filters)
        return (input_shape[0], self.filters, *spatial)

    # ---------------------------------------------------------- the kernel
    def _kernel_from_parts(self, xp, parts):
        """The grouped Keras kernel `(k_h, k_w, c_in / g, c_out)` (no L)."""
        kernel = self._assemble(xp, parts)  # (g, k_h, k_w, ci, co)
        groups, k_h, k_w, ci, co = kernel.shape
        kernel = xp.transpose(kernel, (1, 2, 3, 0, 4))
        return xp.reshape(kernel, (k_h, k_w, ci, groups * co))

    def _derive(self, raws, vectors):
        """Pure function of the raw matrices and power-iteration vectors:
        `(kernel, parts, new_vectors)` (float32, kernel with L)."""
        orthonormal, new_vectors = [], []
        for raw, u in zip(raws, vectors):
            matrices, u_new = _orthonormalize(
                ops.cast(raw, "float32"),
                u,
                self.power_iterations,
                self.bjorck_iterations,
                self.bjorck_beta,
            )
            orthonormal.append(matrices)
            new_vectors.append(u_new)
        parts = self._named_parts(orthonormal)
        kernel = self._kernel_from_parts(_OPS, parts)
        kernel = _kernel_arguments.scale_by_lipschitz(self, kernel)
        return kernel, parts, tuple(new_vectors)

    def _constrained_kernel(self, training):
        """The kernel (with L) and its parts; writes the vectors only when
        `training`. Eager JAX runs `_derive` as one compiled program
        (`_backend.compile_host_function`) instead of compiling each op."""
        raws = tuple(
            ops.convert_to_tensor(getattr(self, name))
            for name in self._matrix_names
        )
        variables = [getattr(self, f"{name}_u") for name in self._matrix_names]
        vectors = tuple(ops.convert_to_tensor(u) for u in variables)
        kernel, parts, new_vectors = self._derive_fn(raws, vectors)
        if training:
            for variable, value in zip(variables, new_vectors):
                variable.assign(ops.cast(value, variable.dtype))
        return kernel, parts

    def _conv_kernel(self, kernel):
        """The kernel and dilation the convolution is run with."""
        if self._inflate:
            return _dilated(_OPS, kernel, self.dilation_rate), (1, 1)
        return kernel, self.dilation_rate

    def call(self, inputs, training=None):
        kernel, _ = self._constrained_kernel(training)
        kernel, dilation = self._conv_kernel(ops.cast(kernel, inputs.dtype))
        if self._transpose:
            outputs = self._transposed_conv(inputs, kernel, dilation)
        else:
            outputs = self._forward_conv(inputs, kernel, dilation)
        if self.bias is not None:
            outputs = _kernel_arguments.add_channel_bias(
                outputs, self.bias, self.data_format
            )
        return self.activation(outputs)

    def _forward_conv(self, inputs, kernel, dilation):
        padding = self.padding
        x = inputs
        if padding == "circular":
            spatial = self._spatial_shape(tuple(inputs.shape))
            self._check_spatial(spatial, f"input spatial size {spatial}")
            for axis, (before, after) in zip(self._spatial_axes, self._pads()):
                x = _circular_pad(x, axis, before, after)
            padding = "valid"
        return ops.conv(
            x,
            kernel,
            strides=self.strides,
            padding=padding,
            data_format=self.data_format,
            dilation_rate=dilation,
        )

    def _transposed_conv(self, inputs, kernel, dilation):
        """The adjoint of the forward conv: "valid" transpose, then the
        adjoint of the padding (crop for zeros, fold for circular)."""
        groups = self.groups
        channel_axis = 3 if self.data_format == "channels_last" else 1
        size = kernel.shape[3] // groups

        def transpose(x, k):
            return ops.conv_transpose(
                x,
                k,
                strides=self.strides,
                padding="valid",
                data_format=self.data_format,
                dilation_rate=dilation,
            )

        if groups == 1:
            outputs = transpose(inputs, kernel)
        else:
            pieces = []
            for g in range(groups):
                index = [slice(None)] * 4
                index[channel_axis] = slice(g * size, (g + 1) * size)
                pieces.append(
                    transpose(
                        inputs[tuple(index)],
                        kernel[:, :, :, g * size : (g + 1) * size],
                    )
                )
            outputs = ops.concatenate(pieces, axis=channel_axis)
        if self.padding == "valid":
            return outputs
        circular = self.padding == "circular"
        if circular:
            full = tuple(
                None if n is None else n * s
                for n, s in zip(
                    self._spatial_shape(tuple(inputs.shape)), self.strides
                )
            )
            self._check_spatial(full, f"output spatial size {full}")
        for axis, (before, after) in zip(self._spatial_axes, self._pads()):
            outputs = _crop_or_fold(outputs, axis, before, after, circular)
        return outputs

    # -------------------------------------------------------- certification
    def _numpy_parts(self):
        if not self.built:
            raise ValueError(
                f"{type(self).__name__} must be built before its kernel or "
                "bound can be computed."
            )
        kernel, parts = self._constrained_kernel(training=False)
        return (
            np.asarray(ops.convert_to_numpy(kernel)),
            {
                name: np.asarray(ops.convert_to_numpy(value), np.float64)
                for name, value in parts.items()
            },
        )

    def effective_kernel(self):
        """The inference-mode kernel as a NumPy float32 array.

        Keras layout `(k_h, k_w, c_in / groups, filters)` for the
        convolution, and `(k_h, k_w, filters / groups, c_in)` (the layout
        of `keras.layers.Conv2DTranspose`) for the transposed layer, with
        the `lipschitz` factor and without inflation for dilation.
        """
        return self._numpy_parts()[0]

    def lipschitz_upper_bound(self, input_size=None):
        """Guaranteed upper bound on the layer's ℓ2 Lipschitz constant.

        Computed in float64 from the float32 orthonormal matrices the
        inference-mode kernel is built from, valid for **every input size**
        and for zero and circular padding alike:

        - the product of the factors' norms, per group: each projector
          factor $P + (I - P)z$ with $P = MM^T$ symmetric has norm
          $\\max_\\lambda|\\lambda + (1 - \\lambda)z| \\le
          \\max(1, 2\\sigma_{max}(M)^2 - 1)$ on the whole torus, the 1x1 part
          its exact SVD norm, the RKO part the SVD norm of its reshaped
          matrix (disjoint patches); zero padding, strides, dilation and
          channel slicing only restrict these operators;
        - plus $\\sum_a\\|W[a] - L\\,W_{64}[a]\\|_F$, where $W_{64}$ is the
          same construction redone in float64 from those matrices: it covers
          the float32 rounding of the kernel the layer really uses (the
          convolution is $\\sum_a S_aW[a]$ with shifts $\\|S_a\\| \\le 1$).

        With `input_size`, the minimum with the size-specific bound of
        `keras_lipschitz.bounds` (the exact norm of the circular
        convolution, `circular_conv_spectral_norm`, or the zero-padded bound
        `conv_layer_upper_bound`) on that input size.

        Args:
            input_size: optional `(h, w)` of the layer's input.

        Returns:
            A Python float (times the activation's Lipschitz constant).
        """
        kernel32, parts = self._numpy_parts()
        exact = self._kernel_from_parts(_NUMPY, parts)
        used = np.asarray(kernel32, np.float64)
        delta = used - self.lipschitz * exact
        rounding = float(np.sum(np.linalg.norm(delta, axis=(2, 3))))
        bound = (
            self.lipschitz * float(np.max(self._factor_bound(parts)))
            + rounding * (1.0 + _FLOAT64_SLACK)
        ) * (1.0 + _FLOAT64_SLACK)
        if input_size is not None:
            bound = min(bound, self._size_bound(used, tuple(input_size)))
        return bound * self._activation_lipschitz

    def _size_bound(self, kernel, input_size):
        if self._transpose:
            grid = tuple(
                int(n) * s if self.padding != "valid"
                else (int(n) - 1) * s + k
                for n, s, k in zip(
                    input_size, self.strides, self._effective_kernel_size
                )
            )
        else:
            grid = tuple(int(n) for n in input_size)
        if self.padding == "circular":
            return float(max(
                bounds.circular_conv_spectral_norm(part, grid, self.strides)
                for part in bounds.conv_kernel_parts(
                    bounds.dilate_kernel(kernel, self.dilation_rate),
                    self.groups,
                )
            ))
        return bounds.conv_layer_upper_bound(
            kernel,
            grid,
            strides=self.strides,
            padding=self.padding,
            dilation=self.dilation_rate,
            groups=self.groups,
            transpose=self._transpose,
        )

    # ----------------------------------------------------------------- export
    @property
    def _vanilla_exportable(self):
        """Whether `vanilla_export` can use a plain Keras conv layer.

        Keras has no circular padding, and `Conv2DTranspose` no groups: those
        layers stay as they are in an exported model.
        """
        if self.padding == "circular":
            return False
        return not (self._transpose and self.groups > 1)

    def _vanilla_twin(self):
        """`(plain_layer, kernel)` for `keras_lipschitz.vanilla_export`."""
        kernel = self.effective_kernel()
        dilation = self.dilation_rate
        if self._inflate:
            kernel = _dilated(_NUMPY, kernel, dilation)
            dilation = (1, 1)
        common = dict(
            kernel_size=tuple(kernel.shape[:2]),
            strides=self.strides,
            padding=self.padding,
            data_format=self.data_format,
            dilation_rate=dilation,
            activation=self.activation,
            use_bias=self.use_bias,
            name=self.name,
            dtype=self.dtype_policy,
        )
        if self._transpose:
            plain = keras.layers.Conv2DTranspose(self.filters, **common)
        else:
            plain = keras.layers.Conv2D(
                self.filters, groups=self.groups, **common
            )
        channels = self.input_channels
        if self.data_format == "channels_first":
            plain.build((None, channels, None, None))
        else:
            plain.build((None, None, None, channels))
        return plain, kernel

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "kernel_size": self.kernel_size,
                "strides": self.strides,
                "padding": self.padding,
                "data_format": self.data_format,
                "dilation_rate": self.dilation_rate,
                "groups": self.groups,
                "power_iterations": self.power_iterations,
                "bjorck_iterations": self.bjorck_iterations,
                "bjorck_beta": self.bjorck_beta,
            }
        )
        config.update(_kernel_arguments.kernel_arguments_config(self))
        if self._default_initializer:
            config["kernel_initializer"] = None
        return config

    # ------------------------------------------------------------- helpers
    def _add_matrices(self, name, shape):
        """A raw weight `shape` and its power-iteration vectors, converged
        on the host; registered (in order) for `_derive`."""
        raw = self.add_weight(
            name=name,
            shape=shape,
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
            autocast=False,
        )
        u = self.add_weight(
            name=f"{name}_u",
            shape=tuple(shape[:-2]) + (1, shape[-1]),
            initializer=_numpy_normal(len(self.weights)),
            trainable=False,
            autocast=False,
        )
        u.assign(
            _host_power_iteration(
                ops.convert_to_numpy(raw),
                ops.convert_to_numpy(u),
                INITIAL_POWER_ITERATIONS,
            ).astype("float32")
        )
        self._matrix_names.append(name)
        return raw, u


def _projector_rank(channels):
    return max(1, channels // 2)


def _projector_factor_bounds(bases):
    """$\\max(1, 2\\sigma_{max}(M)^2 - 1)$ per basis, product per group."""
    sigma = _spectral_norms(bases)
    return np.prod(np.maximum(1.0, 2.0 * sigma**2 - 1.0), axis=-1)


@keras_lipschitz_export
class BCOPConv2D(_OrthogonalConv):
    """Block convolution orthogonal parametrization (BCOP), stride 1.

    Li, Haque, Anil, Lucas, Grosse, Jacobsen, "Preventing Gradient
    Attenuation in Lipschitz Constrained Convolutional Networks", NeurIPS
    2019. With $c = \\max(c_{in}, \\text{filters})$, the layer holds
    $k_h + k_w - 1$ raw $c \\times c$ matrices. Each is orthogonalized by
    power-iteration pre-scaling and Björck steps
    (`keras_lipschitz.normalizers.batched_power_iteration`,
    `bjorck_orthonormalize`): the first is the 1x1 part $H$, the others
    keep their first $\\lfloor c/2\\rfloor$ columns $M_i$ and give the
    symmetric projectors $P_i = M_iM_i^T$. The kernel is

    $$W = H \\circledast [P_1, I - P_1]_h \\circledast [P_2, I - P_2]_w
      \\circledast \\cdots \\in \\mathbb{R}^{k_h \\times k_w \\times c
      \\times c},$$

    two-tap factors along the height and the width in turn (the symbol of
    $[P, I - P]$ is $P + (I - P)z$, unitary on $|z| = 1$), sliced to its
    first $c_{in}$ input and `filters` output channels. With
    `padding="circular"` the convolution is orthogonal when
    $c_{in} =$ `filters` (an isometry when `filters` $> c_{in}$, a
    co-isometry when smaller), for every input size. With zero padding
    (`"same"`, `"valid"`) it is 1-Lipschitz and orthogonal away from the
    borders.

    **Differences from the official code.** The power-iteration vectors are
    persistent (non-trainable float32, written only in training, gradients
    stopped; the official code restarts 10-20 steps from a random vector
    at each call), and the pre-scale is never below $\\rho/\\sqrt2$ with
    $\\rho$ the Schur bound of the Gram matrix, so Björck cannot diverge.
    Björck runs `bjorck_iterations` = 20 steps (official: 20), in training
    and inference. The default padding is `"circular"` as in the paper
    (the layer is orthogonal only with it). Strides: use
    `InvertibleDownSampling` first (as the paper does), or `AOCConv2D`.
    The bias starts at zero (Keras convention; official
    $\\mathcal{U}(\\pm 1/\\sqrt{c_{out}})$).

    **Certification and export.** `lipschitz_upper_bound()` is a guaranteed
    float64 bound valid for every input size (see
    `_OrthogonalConv.lipschitz_upper_bound`: the product of the factors'
    norms plus the float32 rounding of the kernel), typically
    $1 + 10^{-6}$. `vanilla_export` turns a zero-padded layer into a plain
    `keras.layers.Conv2D` carrying `effective_kernel()`; Keras has no
    circular padding, so a circular layer stays as it is.

    Args:
        filters: positive int, number of output channels.
        kernel_size: int or tuple of 2 ints (odd or even).
        padding: `"circular"` (default), `"same"` or `"valid"` (zero
            padding, Keras conventions).
        data_format: `"channels_last"`, `"channels_first"` or None. The
            kernel layout is always `(k_h, k_w, c_in, filters)`.
        lipschitz: positive float, a factor on the kernel.
        activation: None or a Keras activation with a known Lipschitz
            constant.
        use_bias: bool.
        kernel_initializer: None (default: every raw matrix orthogonal) or a
            Keras initializer for the raw matrices.
        bias_initializer: initializer of the bias (default zeros).
        kernel_regularizer, bias_regularizer: optional regularizers (the
            kernel regularizer acts on the raw matrices).
        kernel_constraint, bias_constraint: optional constraints.
        power_iterations: int >= 1, power-iteration steps per call.
        bjorck_iterations: int >= 1, Björck steps per call.
        bjorck_beta: float in (0, 0.5].

    Input shape:
        4-D tensor `(batch, H, W, c_in)` or `(batch, c_in, H, W)`.

    Output shape:
        `(batch, H', W', filters)` or `(batch, filters, H', W')`, with
        $H' = H$ for `"circular"` and `"same"`.

    Example:

    >>> layer = BCOPConv2D(4, 3, use_bias=False)
    >>> y = layer(np.ones((2, 6, 6, 4), "float32"))
    >>> tuple(y.shape)
    (2, 6, 6, 4)
    >>> bool(abs(layer.lipschitz_upper_bound() - 1.0) < 1e-4)
    True
    """

    def __init__(
        self,
        filters,
        kernel_size=3,
        padding="circular",
        data_format=None,
        lipschitz=1.0,
        activation=None,
        use_bias=True,
        kernel_initializer=None,
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        power_iterations=DEFAULT_POWER_ITERATIONS,
        bjorck_iterations=DEFAULT_BJORCK_ITERATIONS,
        bjorck_beta=0.5,
        **kwargs,
    ):
        super().__init__(
            filters,
            kernel_size,
            padding=padding,
            data_format=data_format,
            lipschitz=lipschitz,
            activation=activation,
            use_bias=use_bias,
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
            kernel_regularizer=kernel_regularizer,
            bias_regularizer=bias_regularizer,
            kernel_constraint=kernel_constraint,
            bias_constraint=bias_constraint,
            power_iterations=power_iterations,
            bjorck_iterations=bjorck_iterations,
            bjorck_beta=bjorck_beta,
            **kwargs,
        )

    def _plan(self, c_in, c_out):
        self.c_in, self.c_out = c_in, c_out
        self.channels = max(c_in, c_out)

    def _build_parameters(self):
        k_h, k_w = self.kernel_size
        c = self.channels
        self.matrices, self.matrices_u = self._add_matrices(
            "matrices", (1, k_h + k_w - 1, c, c)
        )

    def _named_parts(self, orthonormal):
        (ortho,) = orthonormal
        rank = _projector_rank(self.channels)
        return {"h": ortho[:, 0], "bases": ortho[:, 1:, :, :rank]}

    def _assemble(self, xp, parts):
        kernel = _bcop_kernel(
            xp, parts["h"], _projectors(xp, parts["bases"]), self.kernel_size
        )
        return kernel[:, :, :, : self.c_in, : self.c_out]

    def _factor_bound(self, parts):
        return _spectral_norms(parts["h"]) * _projector_factor_bounds(
            parts["bases"]
        )

    def get_config(self):
        config = super().get_config()
        for name in ("strides", "dilation_rate", "groups"):
            config.pop(name)
        return config


@keras_lipschitz_export
class AOCConv2D(_OrthogonalConv):
    """Adaptive orthogonal convolution (AOC): strides, groups, dilation.

    Boissin, Mamalet, Fel, Picard, Massena, Serrurier, "An Adaptive
    Orthogonal Convolution Scheme for Efficient and Flexible CNN
    Architectures", ICML 2025 (arXiv 2501.07930). An explicit kernel
    whose convolution is orthogonal (row- or column-orthogonal when the
    channels change), built per group ($g$ = `groups`, $c_i = c_{in}/g$,
    $c_o = $ `filters`$/g$) from:

    - **BCOP** (stride 1, Li et al., NeurIPS 2019): the kernel of
      `BCOPConv2D`, $c = \\max(c_i, c_o)$ channels, except that as in
      the official code the 1x1 part is $H = (I - 2P_0)(I - 2P_1)$ and
      every projector comes from a raw $c \\times \\lfloor c/2\\rfloor$
      matrix, so $2 + (k_h - 1) + (k_w - 1)$ matrices per group, each
      made column-orthonormal by power-iteration pre-scaling and Björck
      steps (batched);
    - **RKO** ($k = s$): a $(s_hs_wc_i) \\times c_o$ matrix made row- or
      column-orthonormal, i.e. space-to-depth followed by an orthonormal
      1x1 map: exactly orthogonal on disjoint patches;
    - **BCOP∘RKO** (otherwise): the kernel of size $k$ composed from a
      stride-1 BCOP of size $k - s + 1$ from $c_i$ to
      $c_m = \\max(c_i, \\lfloor c_o/(s_hs_w)\\rfloor)$ channels and an RKO
      of size $s$ from $c_m$ to $c_o$ (stride $s$):
      $W[p] = \\sum_{a + b = p} W_B[a]W_R[b]$. An isometry followed by an
      isometry, or an orthogonal map followed by a co-isometry.

    Dilation is passed to the convolution (the dilated orthogonal kernel
    is orthogonal). Combinations for which no orthogonal convolution exists
    are refused with a `ValueError`: `kernel_size` smaller than `strides`,
    and `dilation_rate` sharing a factor with a stride above 1 (then some
    pixels are read by several taps and others by none; the official code
    refuses dilation divisible by the stride only). With strides and
    dilations both above 1 the dilated kernel is inflated (zeros between
    taps), which TensorFlow requires.

    **Padding.** `"circular"` (default, as the official `padding="same",
    padding_mode="circular"`): the layer is orthogonal on every input size
    whose sides are multiples of the strides. `"same"` / `"valid"`: zero
    padding (Keras conventions), 1-Lipschitz, orthogonal away from the
    borders, exportable to a plain `keras.layers.Conv2D`.

    **State and defaults.** The power-iteration vectors are non-trainable
    float32 weights, converged on the host at build, updated by
    `power_iterations` = 3 steps in training only (gradients stopped); the
    pre-scale is never below $\\rho/\\sqrt2$ ($\\rho$ the Schur bound of
    the Gram matrix) so that Björck stays in its convergence domain.
    `bjorck_iterations` = 20 (official: 12; 20 keeps every singular value
    within $10^{-4}$ of 1 after large SGD steps). The raw matrices start
    orthogonal (official `orthogonal_`); the bias at zero.

    **Certification and export.** As `BCOPConv2D`: a guaranteed float64
    `lipschitz_upper_bound()` valid for every input size (product of the
    factors' norms, the RKO part's exact SVD norm, plus the float32
    rounding of the kernel); `vanilla_export` gives a plain `Conv2D` for
    zero padding, and keeps circular layers as they are.

    Args:
        filters: positive int, number of output channels (divisible by
            `groups`).
        kernel_size: int or tuple of 2 ints, at least `strides`.
        strides: int or tuple of 2 ints.
        padding: `"circular"` (default), `"same"` or `"valid"`.
        data_format: `"channels_last"`, `"channels_first"` or None. The
            kernel layout is always `(k_h, k_w, c_in / groups, filters)`.
        dilation_rate: int or tuple of 2 ints (coprime with strides above 1).
        groups: positive int dividing the input channels and `filters`.
        lipschitz: positive float, a factor on the kernel.
        activation: None or a Keras activation with a known Lipschitz
            constant.
        use_bias: bool.
        kernel_initializer: None (default: every raw matrix orthogonal) or a
            Keras initializer for the raw matrices.
        bias_initializer: initializer of the bias (default zeros).
        kernel_regularizer, bias_regularizer: optional regularizers.
        kernel_constraint, bias_constraint: optional constraints.
        power_iterations: int >= 1, power-iteration steps per call.
        bjorck_iterations: int >= 1, Björck steps per call.
        bjorck_beta: float in (0, 0.5].

    Input shape:
        4-D tensor `(batch, H, W, c_in)` or `(batch, c_in, H, W)`.

    Output shape:
        `(batch, H / s_h, W / s_w, filters)` for `"circular"` (and
        `"same"`, rounded up), as `keras.layers.Conv2D`.

    Example:

    >>> layer = AOCConv2D(8, 3, strides=2, use_bias=False)
    >>> y = layer(np.ones((2, 8, 8, 4), "float32"))
    >>> tuple(y.shape)
    (2, 4, 4, 8)
    >>> bool(abs(layer.lipschitz_upper_bound() - 1.0) < 1e-4)
    True
    """

    def __init__(
        self,
        filters,
        kernel_size=3,
        strides=(1, 1),
        padding="circular",
        data_format=None,
        dilation_rate=(1, 1),
        groups=1,
        **kwargs,
    ):
        super().__init__(
            filters,
            kernel_size,
            strides=strides,
            padding=padding,
            data_format=data_format,
            dilation_rate=dilation_rate,
            groups=groups,
            **kwargs,
        )

    def _plan(self, c_in, c_out):
        g = self.groups
        self.c_in, self.c_out = c_in // g, c_out // g
        s_h, s_w = self.strides
        k_h, k_w = self.kernel_size
        self.rko_size = None if (s_h, s_w) == (1, 1) else (s_h, s_w)
        self.bcop_size = (k_h - s_h + 1, k_w - s_w + 1)
        if self.rko_size is not None and self.bcop_size == (1, 1):
            self.bcop_size = None  # k = s: RKO alone
        if self.rko_size is None:
            self.mid_channels = self.c_out
            self.channels = max(self.c_in, self.c_out)
        else:
            self.mid_channels = max(self.c_in, self.c_out // (s_h * s_w))
            self.channels = self.mid_channels
            if self.bcop_size is None:
                self.mid_channels = self.c_in

    def _build_parameters(self):
        g = self.groups
        if self.bcop_size is not None:
            m_h, m_w = self.bcop_size
            c = self.channels
            self.projectors, self.projectors_u = self._add_matrices(
                "projectors", (g, m_h + m_w, c, _projector_rank(c))
            )
        if self.rko_size is not None:
            s_h, s_w = self.rko_size
            self.rko_kernel, self.rko_kernel_u = self._add_matrices(
                "rko_kernel", (g, s_h * s_w * self.mid_channels, self.c_out)
            )

    def _named_parts(self, orthonormal):
        orthonormal = list(orthonormal)
        parts = {}
        if self.bcop_size is not None:
            parts["bases"] = orthonormal.pop(0)
        if self.rko_size is not None:
            parts["rko"] = orthonormal.pop(0)
        return parts

    def _assemble(self, xp, parts):
        kernel = None
        if self.bcop_size is not None:
            bases = parts["bases"]
            kernel = _bcop_kernel(
                xp,
                _reflection_product(xp, bases[:, :2]),
                _projectors(xp, bases[:, 2:]),
                self.bcop_size,
            )
            out = self.c_out if self.rko_size is None else self.mid_channels
            kernel = kernel[:, :, :, : self.c_in, :out]
        if self.rko_size is None:
            return kernel
        s_h, s_w = self.rko_size
        rko = xp.reshape(
            parts["rko"],
            (self.groups, s_h, s_w, self.mid_channels, self.c_out),
        )
        if kernel is None:
            return rko
        return _compose_rko(xp, kernel, rko)

    def _factor_bound(self, parts):
        bound = np.ones(self.groups)
        if self.bcop_size is not None:
            bases = parts["bases"]
            h = _reflection_product(_NUMPY, bases[:, :2])
            bound = bound * _spectral_norms(h) * _projector_factor_bounds(
                bases[:, 2:]
            )
        if self.rko_size is not None:
            bound = bound * _spectral_norms(parts["rko"])
        return bound


@keras_lipschitz_export
class AOCConv2DTranspose(AOCConv2D):
    """Transposed adaptive orthogonal convolution (AOC).

    The adjoint of the `AOCConv2D` convolution from `filters` to $c_{in}$
    channels (same kernel construction, strides, dilation and groups;
    Boissin et al., ICML 2025): its kernel has the layout
    `(k_h, k_w, filters / groups, c_in)` of `keras.layers.Conv2DTranspose`
    and the layer computes

    $$y = A_W^T x + b,$$

    with $A_W$ the forward convolution on the output size. The adjoint of
    an isometry is a co-isometry and conversely, so the layer is
    orthogonal in the same sense: with `filters` $= c_{in}$ and stride $s$
    it maps $n \\times n$ images isometrically to $sn \\times sn$ ones
    (circular padding). It is computed as a `"valid"` transposed
    convolution (`keras.ops.conv_transpose`, per group) followed by the
    adjoint of the forward padding: a crop for `"same"` (equal to Keras's
    `Conv2DTranspose(padding="same")`), a fold (the wrapped borders added
    back) for `"circular"`, nothing for `"valid"`. The official torch code
    has no circular transposed convolution; here it is the default.

    Export: zero padding without groups becomes a plain
    `keras.layers.Conv2DTranspose`; circular or grouped layers stay as
    they are.

    Args:
        filters: positive int, number of output channels.
        kernel_size, strides, padding, data_format, dilation_rate, groups:
            as in `AOCConv2D`, for the forward convolution this layer is the
            adjoint of.
        **kwargs: the other `AOCConv2D` arguments.

    Input shape:
        4-D tensor `(batch, H, W, c_in)` or `(batch, c_in, H, W)`.

    Output shape:
        `(batch, s_hH, s_wW, filters)` for `"circular"` and `"same"`;
        `(s_h(H - 1) + k_h, ...)` for `"valid"` (undilated kernel).

    Example:

    >>> layer = AOCConv2DTranspose(4, 3, strides=2, use_bias=False)
    >>> y = layer(np.ones((2, 4, 4, 4), "float32"))
    >>> tuple(y.shape)
    (2, 8, 8, 4)
    """

    _transpose = True
