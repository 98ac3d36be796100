"""Orthogonal convolutions by the Cayley transform in the Fourier domain.

Trockman & Kolter, "Orthogonalizing Convolutional Layers with the Cayley
Transform", ICLR 2021 (arXiv 2104.07167; official code
locuslab/orthogonal-convolutions). A circular convolution on an
$H \\times W$ grid is block-diagonal in the 2-D DFT; the layer replaces each
frequency block by its (rectangular) Cayley transform, a matrix with
orthonormal columns or rows, and so is an exactly orthogonal map (up to
float32 rounding) for every value of its weights.

Everything is `keras.ops`: `rfft`/`fft`/`irfft` for the input (DFTs as
matrix products with JAX on CPU, where XLA's FFT can deadlock; see
`keras_lipschitz._backend.fft_may_deadlock`), a DFT table
for the small kernel, and the complex $c \\times c$ solves written in their
real block form $[[A_r, -A_i], [A_i, A_r]]$, so no backend code is needed.
The raw kernel and the scale $\\alpha$ are never overwritten: the frequency
matrices are derived from them inside `call`.
"""

import math
import random as python_random

import keras
import numpy as np
from keras import ops

from keras_lipschitz import _backend
from keras_lipschitz.api_export import keras_lipschitz_export
from keras_lipschitz.layers import _validation
from keras_lipschitz.layers._kernel_arguments import weight_arguments_config

# float32 unit roundoff.
_FLOAT32_UNIT_ROUNDOFF = 2.0**-24
# Added under the square root of the Frobenius norm: a zero kernel gives
# Q = identity instead of a division by zero.
_TINY = 1e-30


def _validate_stride(strides):
    error = ValueError(
        "`strides` must be 1 or 2 (or (1, 1) / (2, 2)): stride 2 is "
        "space-to-depth followed by a stride-1 Cayley convolution. "
        f"Received: strides={strides!r}"
    )
    try:
        values = _validation.validate_int_tuple("strides", strides)
    except ValueError:
        raise error from None
    if values[0] != values[1] or values[0] not in (1, 2):
        raise error
    return values[0]


class _HostUniform(keras.initializers.Initializer):
    """$\\mathcal{U}(\\pm$ `limit`$)$ drawn on the host with NumPy.

    The default of the official code (PyTorch's `Conv2d` init). Eager JAX
    would compile a random op for every new shape; the seed is drawn from
    Python's `random` when the initializer is made (in `build`), so it is
    reproducible under `keras.utils.set_random_seed`.
    """

    def __init__(self, limit):
        self.limit = float(limit)
        self._seed = python_random.randint(1, int(1e9))

    def __call__(self, shape, dtype=None):
        rng = np.random.default_rng(self._seed)
        values = rng.uniform(-self.limit, self.limit, size=shape)
        return values.astype(dtype or "float32")


def _dft_tables(grid, kernel_size):
    """`cos`/`sin` of the kernel's DFT phases, float32 `(W_f, H, k_h, k_w)`.

    $\\theta[v, u, a, b] = 2\\pi(u(a - p_h)/H + v(b - p_w)/W)$ with
    $p = (k - 1) // 2$ (Keras's "same" offset) and $v < W//2 + 1$ (the
    rfft half-spectrum). The integer products are reduced modulo the grid
    before scaling, so the phases are accurate to float64 rounding.
    """
    (height, width), (k_h, k_w) = grid, kernel_size
    freq_w = width // 2 + 1
    u = np.arange(height)[:, None]
    v = np.arange(freq_w)[:, None]
    a = np.arange(k_h)[None, :] - (k_h - 1) // 2
    b = np.arange(k_w)[None, :] - (k_w - 1) // 2
    phase_h = np.mod(u * a, height) / height  # (H, k_h)
    phase_w = np.mod(v * b, width) / width  # (W_f, k_w)
    theta = 2.0 * np.pi * (
        phase_h[None, :, :, None] + phase_w[:, None, None, :]
    )
    return np.cos(theta).astype("float32"), np.sin(theta).astype("float32")


def _swap_last(x):
    axes = list(range(len(x.shape)))
    axes[-1], axes[-2] = axes[-2], axes[-1]
    return ops.transpose(x, axes)


def cayley_tall(z_real, z_imag):
    """Rectangular Cayley transform of complex matrices with rows >= cols.

    For $Z = [U; V]$ ($U$ its first $n$ rows, $m \\ge n$ rows in all),
    $A = U - U^H + V^HV$ and $B = (I + A)^{-1}$,

    $$Q = \\begin{bmatrix}(I + A)^{-1}(I - A)\\\\ -2VB\\end{bmatrix}
        = \\begin{bmatrix}2B - I\\\\ -2VB\\end{bmatrix},$$

    which has orthonormal columns: $A + A^H = 2V^HV$ gives
    $(I-A)^H(I-A) + 4V^HV = (I+A)^H(I+A)$. $\\mathrm{Re}(x^H(I+A)x) =
    \\|x\\|^2 + \\|Vx\\|^2$, so $\\sigma_{min}(I + A) \\ge 1$: the solve is
    never singular. $B$ is computed with one real solve of the block form
    $\\begin{bmatrix}I + A_r & -A_i\\\\ A_i & I + A_r\\end{bmatrix}
    \\begin{bmatrix}B_r\\\\ B_i\\end{bmatrix} =
    \\begin{bmatrix}I\\\\ 0\\end{bmatrix}$.

    Args:
        z_real: float tensor `(..., m, n)`, the real part of $Z$.
        z_imag: float tensor `(..., m, n)`, its imaginary part.

    Returns:
        `(q_real, q_imag)`, float tensors `(..., m, n)`.
    """
    m, n = z_real.shape[-2], z_real.shape[-1]
    u_r, u_i = z_real[..., :n, :], z_imag[..., :n, :]
    a_r = u_r - _swap_last(u_r)
    a_i = u_i + _swap_last(u_i)
    if m > n:
        v_r, v_i = z_real[..., n:, :], z_imag[..., n:, :]
        v_r_t, v_i_t = _swap_last(v_r), _swap_last(v_i)
        a_r = a_r + ops.matmul(v_r_t, v_r) + ops.matmul(v_i_t, v_i)
        a_i = a_i + ops.matmul(v_r_t, v_i) - ops.matmul(v_i_t, v_r)
    identity = ops.eye(n, dtype=z_real.dtype)
    top = ops.concatenate([identity + a_r, -a_i], axis=-1)
    bottom = ops.concatenate([a_i, identity + a_r], axis=-1)
    block = ops.concatenate([top, bottom], axis=-2)
    rhs = ops.concatenate(
        [identity, ops.zeros((n, n), dtype=z_real.dtype)], axis=0
    )
    rhs = ops.broadcast_to(rhs, tuple(block.shape[:-1]) + (n,))
    # I + A has a positive definite symmetric part (I + V^T V).
    solution = _backend.solve_with_positive_definite_symmetric_part(
        block, rhs
    )
    b_r, b_i = solution[..., :n, :], solution[..., n:, :]
    q_r, q_i = 2.0 * b_r - identity, 2.0 * b_i
    if m > n:
        q_r = ops.concatenate(
            [q_r, -2.0 * (ops.matmul(v_r, b_r) - ops.matmul(v_i, b_i))],
            axis=-2,
        )
        q_i = ops.concatenate(
            [q_i, -2.0 * (ops.matmul(v_r, b_i) + ops.matmul(v_i, b_r))],
            axis=-2,
        )
    return q_r, q_i


def cayley(z_real, z_imag):
    """Cayley transform of complex matrices of any shape.

    `cayley_tall` when rows >= columns (orthonormal columns); otherwise
    $\\mathrm{Cayley}(Z^T)^T$ (plain transpose, as in the official code),
    which has orthonormal rows. Conjugation commutes with both, so
    $\\mathrm{Cayley}(\\bar Z) = \\overline{\\mathrm{Cayley}(Z)}$: the
    Hermitian symmetry of a real kernel's spectrum is kept.

    Args:
        z_real: float tensor `(..., m, n)`.
        z_imag: float tensor `(..., m, n)`.

    Returns:
        `(q_real, q_imag)`, float tensors `(..., m, n)`.
    """
    if z_real.shape[-2] >= z_real.shape[-1]:
        return cayley_tall(z_real, z_imag)
    q_r, q_i = cayley_tall(_swap_last(z_real), _swap_last(z_imag))
    return _swap_last(q_r), _swap_last(q_i)


def _frequency_matrices(kernel, alpha, dft_cos, dft_sin):
    """$Q(\\omega) = \\mathrm{Cayley}(\\alpha\\hat K(\\omega)/\\|\\hat K\\|_F)$.

    A pure function, in float32.

    Args:
        kernel: raw kernel `(k_h, k_w, n, m)`.
        alpha: scalar $\\alpha$.
        dft_cos, dft_sin: the tables of `_dft_tables`, `(W_f, H, k_h, k_w)`.

    Returns:
        `(real, imag)`, float32 tensors `(W_f, H, m, n)`.
    """
    kernel = ops.cast(kernel, "float32")
    z_r = ops.einsum("vuab,abco->vuoc", dft_cos, kernel)
    z_i = ops.einsum("vuab,abco->vuoc", dft_sin, kernel)
    norm = ops.sqrt(ops.sum(z_r * z_r) + ops.sum(z_i * z_i) + _TINY)
    scale = ops.cast(alpha, "float32") / norm
    return cayley(z_r * scale, z_i * scale)


_COMPILED = {}


# One complex matrix-vector product per frequency (v: W_f, u: H).
_FREQUENCY_PRODUCT = "vuoc,bcvu->bovu"


def _frequency_product(q_r, q_i, x_r, x_i):
    eq = _FREQUENCY_PRODUCT
    y_r = ops.einsum(eq, q_r, x_r) - ops.einsum(eq, q_i, x_i)
    y_i = ops.einsum(eq, q_r, x_i) + ops.einsum(eq, q_i, x_r)
    return y_r, y_i


def _apply_by_fft(x, q_r, q_i, grid):
    """The layer's map on `x` `(b, c, H, W)` with `keras.ops` FFTs."""
    height, width = grid
    # Forward DFT: rfft along W, then fft along H (moved last).
    x_r, x_i = ops.rfft(x, fft_length=width)
    x_r = ops.transpose(x_r, (0, 1, 3, 2))
    x_i = ops.transpose(x_i, (0, 1, 3, 2))
    x_r, x_i = ops.fft((x_r, x_i))  # (batch, n, W_f, H)
    y_r, y_i = _frequency_product(q_r, q_i, x_r, x_i)
    # Inverse DFT along H as conj(fft(conj(.))) / H, then irfft along W.
    y_r, y_i = ops.fft((y_r, -y_i))
    y_r = ops.transpose(y_r, (0, 1, 3, 2)) / height
    y_i = ops.transpose(-y_i, (0, 1, 3, 2)) / height
    return ops.irfft((y_r, y_i), fft_length=width)  # (b, m, H, W)


def _input_dft_tables(height, width):
    """float32 tables of the DFTs of `_apply_by_dft_matrices`.

    `cos_w`, `sin_w` `(W, W_f)`: the rfft along W; `cos_h`, `sin_h`
    `(H, H)`: the full DFT along H (symmetric); `inv_cos_w`, `inv_sin_w`
    `(W_f, W)`: the irfft along W, with the weights 1 for the frequencies
    0 and W/2 and 2 for the others (Hermitian symmetry), divided by W. The
    angles are reduced modulo the grid in integers, then evaluated in
    float64.
    """
    half = width // 2 + 1
    w = np.arange(width)
    k = np.arange(half)
    angle_w = 2 * np.pi * ((np.outer(w, k) % width) / width)
    h = np.arange(height)
    angle_h = 2 * np.pi * ((np.outer(h, h) % height) / height)
    weights = np.full(half, 2.0)
    weights[0] = 1.0
    if width % 2 == 0:
        weights[-1] = 1.0
    inverse = weights[:, None] / width
    tables = dict(
        cos_w=np.cos(angle_w),
        sin_w=np.sin(angle_w),
        cos_h=np.cos(angle_h),
        sin_h=np.sin(angle_h),
        inv_cos_w=inverse * np.cos(angle_w).T,
        inv_sin_w=inverse * np.sin(angle_w).T,
    )
    return {key: value.astype(np.float32) for key, value in tables.items()}


def _apply_by_dft_matrices(x, q_r, q_i, grid):
    """`_apply_by_fft` with the DFTs written as matrix products.

    For XLA on CPU (`_backend.fft_may_deadlock`). The same map up to
    float32 rounding; $O(HW(H + W))$ operations per channel instead of
    $O(HW\\log HW)$, as dense matrix products.
    """
    height, width = grid
    t = {k: ops.convert_to_tensor(v) for k, v in
         _input_dft_tables(height, width).items()}
    # rfft along W, the result already laid out (b, n, W_f, H).
    x_r = ops.einsum("bnhw,wk->bnkh", x, t["cos_w"])
    x_i = -ops.einsum("bnhw,wk->bnkh", x, t["sin_w"])
    # DFT along H: (a + ib)(cos - i sin).
    x_r, x_i = (
        ops.matmul(x_r, t["cos_h"]) + ops.matmul(x_i, t["sin_h"]),
        ops.matmul(x_i, t["cos_h"]) - ops.matmul(x_r, t["sin_h"]),
    )
    y_r, y_i = _frequency_product(q_r, q_i, x_r, x_i)
    # Inverse DFT along H: (a + ib)(cos + i sin) / H.
    y_r, y_i = (
        (ops.matmul(y_r, t["cos_h"]) - ops.matmul(y_i, t["sin_h"])) / height,
        (ops.matmul(y_i, t["cos_h"]) + ops.matmul(y_r, t["sin_h"])) / height,
    )
    # irfft along W (the imaginary parts at frequencies 0 and W/2 meet
    # sin = 0, as irfft ignores them).
    return ops.einsum("bokh,kw->bohw", y_r, t["inv_cos_w"]) - ops.einsum(
        "bokh,kw->bohw", y_i, t["inv_sin_w"]
    )


def _host_frequency_matrices():
    """`_frequency_matrices` compiled once per process (on JAX; itself
    elsewhere), so that layers of the same shapes share one compilation."""
    if "frequency_matrices" not in _COMPILED:
        _COMPILED["frequency_matrices"] = _backend.compile_host_function(
            _frequency_matrices
        )
    return _COMPILED["frequency_matrices"]


@keras_lipschitz_export
class CayleyConv2D(keras.layers.Layer):
    """Orthogonal 2-D convolution by the Cayley transform (circular padding).

    Trockman & Kolter, "Orthogonalizing Convolutional Layers with the
    Cayley Transform", ICLR 2021 (arXiv 2104.07167). A circular
    convolution of a raw kernel $K$ (`(k_h, k_w, c_in, filters)`, Keras
    cross-correlation, offset $p = (k-1)//2$ as in `"same"`) on an
    $H \\times W$ grid is block-diagonal in the 2-D DFT, with one
    `filters` $\\times$ `c_in` complex matrix per frequency
    $\\omega = (u, v)$:

    $$\\hat K(\\omega) = \\sum_{a, b} K[a, b]^T\\,
      e^{2\\pi i\\,(u(a - p_h)/H + v(b - p_w)/W)}.$$

    The layer replaces every block by the Cayley transform of a scaled
    copy and applies the result in the Fourier domain:

    $$Q(\\omega) = \\mathrm{Cayley}\\Big(\\frac{\\alpha}{\\|\\hat K\\|_F}
      \\hat K(\\omega)\\Big),\\qquad
      y = \\mathcal{F}^{-1}\\big(Q(\\omega)\\,\\mathcal{F}(x)(\\omega)\\big)
      + b,$$

    with $\\|\\hat K\\|_F$ the Frobenius norm over all the rfft
    frequencies and $\\alpha$ a learnable scalar, created in `build` and
    initialised to $\\|\\hat K\\|_F$ of the initial kernel (as in the
    official code, which creates it lazily in the first forward pass). For
    $m \\ge n$ rows and columns, with $Z = [U; V]$ ($U$ the first $n$
    rows), $A = U - U^H + V^HV$ and
    $\\mathrm{Cayley}(Z) = [(I+A)^{-1}(I-A);\\ -2V(I+A)^{-1}]$, which has
    orthonormal columns; for $m < n$ it is $\\mathrm{Cayley}(Z^T)^T$, with
    orthonormal rows (`cayley`). So the layer is exactly (up to float32
    rounding) an isometry when `filters` $\\ge$ `c_in`, orthogonal when
    they are equal, and a co-isometry (all `filters`$\\cdot HW$ singular
    values 1) when `filters` $<$ `c_in`, for every value of the weights.
    The effective operator is a circular convolution whose kernel is
    dense on the whole $H \\times W$ grid: the raw $K$ only parametrises
    it. Since $\\hat K(-\\omega) = \\overline{\\hat K(\\omega)}$ and the
    transform commutes with conjugation, the output is real; only the
    rfft half-spectrum ($H(W//2 + 1)$ frequencies) is computed.

    **Stride 2** (as in the paper's code): the input goes through
    space-to-depth first (`InvertibleDownSampling`'s channel order,
    channel $(2r + t)c_{in} + c$ of output pixel $(i, j)$ is input pixel
    $(2i + r, 2j + t)$, channel $c$), and a stride-1 Cayley convolution
    with kernel size $\\max(1, k//2)$ maps its $4c_{in}$ channels to
    `filters` on the $H/2 \\times W/2$ grid. So a 3x3 stride-2 layer has a
    1x1 raw kernel on $4c_{in}$ channels (one Cayley matrix for all
    frequencies). Space-to-depth is a permutation, so the layer is
    orthogonal when `filters` $= 4c_{in}$, an isometry when larger, a
    co-isometry when smaller.

    **Cost.** One rfft/irfft of the input and $H(W//2+1)$ real solves of
    size $2n \\times 2n$ with $n$ right-hand sides, $n = \\min(c_{in}s^2,$
    `filters`$)$, per call (the frequency matrices do not depend on the
    input). The spatial size is part of the layer: it must be known at
    build, and the layer only accepts inputs of that size. Non-square
    sizes and kernels, odd and even, are supported (the kernel must fit in
    the grid).

    **Certification.** `lipschitz_upper_bound()` is the float64 maximum
    over frequencies of the spectral norm of the float32 matrices
    $Q(\\omega)$ the layer really applies (`frequency_matrices()`), plus a
    relative slack for the float32 rounding of the transforms and of the
    per-frequency products (a priori bounds, e.g. Higham, *Accuracy and
    Stability of Numerical Algorithms*, Thm 24.2). It is about
    $1 + 10^{-5}$.

    **Export.** The effective kernel is dense and circular, which a plain
    `keras.layers.Conv2D` cannot express: `keras_lipschitz.vanilla_export`
    keeps the layer as it is (a clone with the same weights).

    Args:
        filters: positive int, number of output channels.
        kernel_size: int or tuple of 2 ints, the raw kernel size (before
            the halving of stride 2); at most the (strided) input size.
        strides: 1 or 2.
        data_format: `"channels_last"`, `"channels_first"` or None. The
            kernel layout is always `(k_h, k_w, c_in s^2, filters)`.
        use_bias: bool.
        kernel_initializer: None (default) for PyTorch's `Conv2d` default
            of the official code,
            $\\mathcal{U}(\\pm 1/\\sqrt{\\text{fan\\_in}})$ (drawn on the
            host); or any Keras initializer. Only the kernel's direction
            matters: $\\alpha$ sets the scale.
        bias_initializer: None (default) for the same uniform law, or any
            Keras initializer.
        kernel_regularizer, bias_regularizer: optional regularizers.
        kernel_constraint, bias_constraint: optional constraints.

    Input shape:
        4-D tensor `(batch, H, W, c_in)` or `(batch, c_in, H, W)` with
        known `H`, `W` (even for stride 2).

    Output shape:
        `(batch, H/s, W/s, filters)` or `(batch, filters, H/s, W/s)`.

    Example:

    >>> layer = CayleyConv2D(4, 3, use_bias=False)
    >>> y = layer(np.ones((2, 6, 6, 4), "float32"))
    >>> tuple(y.shape)
    (2, 6, 6, 4)
    >>> bool(1.0 <= layer.lipschitz_upper_bound() <= 1.0 + 1e-4)
    True

    Reference:
        A. Trockman, J. Z. Kolter, "Orthogonalizing Convolutional Layers
        with the Cayley Transform", ICLR 2021.
    """

    def __init__(
        self,
        filters,
        kernel_size=3,
        strides=1,
        data_format=None,
        use_bias=True,
        kernel_initializer=None,
        bias_initializer=None,
        kernel_regularizer=None,
        bias_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = _validation.validate_positive_int("filters", filters)
        self.kernel_size = _validation.validate_int_tuple(
            "kernel_size", kernel_size
        )
        self.strides = _validate_stride(strides)
        self.data_format = _validation.validate_data_format(data_format)
        if not isinstance(use_bias, (bool, np.bool_)):
            raise ValueError(
                f"`use_bias` must be a bool. Received: use_bias={use_bias!r}"
            )
        self.use_bias = bool(use_bias)
        self.kernel_initializer = (
            None
            if kernel_initializer is None
            else keras.initializers.get(kernel_initializer)
        )
        self.bias_initializer = (
            None
            if bias_initializer is None
            else keras.initializers.get(bias_initializer)
        )
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.kernel_constraint = keras.constraints.get(kernel_constraint)
        self.bias_constraint = keras.constraints.get(bias_constraint)
        # The raw kernel size of the stride-1 convolution after
        # space-to-depth (halved for stride 2, as in the paper's code).
        self.inner_kernel_size = tuple(
            k if self.strides == 1 else max(1, k // 2)
            for k in self.kernel_size
        )
        self.built_spatial_shape = None
        self.input_channels = None
        self._dft_cos = None
        self._dft_sin = None
        self.input_spec = keras.layers.InputSpec(ndim=4)

    # ------------------------------------------------------------------ shapes
    @property
    def _channel_axis(self):
        return -1 if self.data_format == "channels_last" else 1

    @property
    def _spatial_axes(self):
        return (1, 2) if self.data_format == "channels_last" else (2, 3)

    def _spatial_shape(self, shape):
        return tuple(shape[a] for a in self._spatial_axes)

    @property
    def grid(self):
        """`(H/s, W/s)`: the grid of the inner stride-1 convolution."""
        if self.built_spatial_shape is None:
            return None
        return tuple(n // self.strides for n in self.built_spatial_shape)

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) != 4:
            raise ValueError(
                "CayleyConv2D expects inputs of rank 4. "
                f"Received: input_shape={input_shape}"
            )
        c_in = input_shape[self._channel_axis]
        if c_in is None:
            raise ValueError(
                "CayleyConv2D needs a known channel dimension "
                f"(data_format={self.data_format!r}). "
                f"Received: input_shape={input_shape}"
            )
        spatial = self._spatial_shape(input_shape)
        if any(n is None for n in spatial):
            raise ValueError(
                "CayleyConv2D needs the input's spatial size at build: the "
                "circular convolution is computed in the DFT of that grid. "
                "Give the Input a full shape, e.g. keras.Input((32, 32, 3)). "
                f"Received: input_shape={input_shape}"
            )
        if self.strides == 2 and any(n % 2 for n in spatial):
            raise ValueError(
                "With strides=2, CayleyConv2D needs even spatial sizes "
                f"(space-to-depth by 2). Received: input_shape={input_shape}"
            )
        grid = tuple(n // self.strides for n in spatial)
        if any(k > n for k, n in zip(self.inner_kernel_size, grid)):
            raise ValueError(
                "`kernel_size` must fit in the (strided) input grid "
                f"{grid}: the inner kernel is {self.inner_kernel_size}. "
                f"Received: kernel_size={self.kernel_size}, "
                f"input_shape={input_shape}"
            )
        self.built_spatial_shape = tuple(int(n) for n in spatial)
        self.input_channels = int(c_in)
        inner = self.input_channels * self.strides**2
        k_h, k_w = self.inner_kernel_size
        fan_in = k_h * k_w * inner
        limit = 1.0 / math.sqrt(fan_in)
        kernel_initializer = self.kernel_initializer
        if kernel_initializer is None:
            kernel_initializer = _HostUniform(limit)
        self.kernel = self.add_weight(
            name="kernel",
            shape=(k_h, k_w, inner, self.filters),
            initializer=kernel_initializer,
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
            autocast=False,
        )
        self._dft_cos, self._dft_sin = _dft_tables(grid, (k_h, k_w))
        # alpha = ||K^||_F of the initial kernel (official), so that the
        # first Cayley input is K^ itself. On the host: no compilation.
        kernel = np.asarray(ops.convert_to_numpy(self.kernel), np.float64)
        spectrum_r, spectrum_i = self._spectrum_float64(kernel)
        alpha = math.sqrt(
            float(np.sum(spectrum_r**2) + np.sum(spectrum_i**2))
        )
        self.alpha = self.add_weight(
            name="alpha",
            shape=(),
            initializer=keras.initializers.Constant(alpha),
            autocast=False,
        )
        self.bias = None
        if self.use_bias:
            bias_initializer = self.bias_initializer
            if bias_initializer is None:
                bias_initializer = _HostUniform(limit)
            self.bias = self.add_weight(
                name="bias",
                shape=(self.filters,),
                initializer=bias_initializer,
                regularizer=self.bias_regularizer,
                constraint=self.bias_constraint,
            )
        # The spatial size is checked by `_check_input_size`, whose message
        # says why it is fixed.
        self.input_spec = keras.layers.InputSpec(
            ndim=4, axes={self._channel_axis: self.input_channels}
        )

    def compute_output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        self._check_input_size(input_shape)
        spatial = tuple(
            None if n is None else n // self.strides
            for n in self._spatial_shape(input_shape)
        )
        if self.data_format == "channels_last":
            return (input_shape[0], *spatial, self.filters)
        return (input_shape[0], self.filters, *spatial)

    # --------------------------------------------------------------- the maths
    def _spectrum_float64(self, kernel):
        """$\\hat K$ in float64 NumPy: `(real, imag)`, `(W_f, H, m, n)`."""
        cos = self._dft_cos.astype(np.float64)
        sin = self._dft_sin.astype(np.float64)
        return (
            np.einsum("vuab,abco->vuoc", cos, kernel),
            np.einsum("vuab,abco->vuoc", sin, kernel),
        )

    def _frequency_matrices(self, kernel, alpha):
        """The float32 $Q(\\omega)$, `(real, imag)`, `(W_f, H, m, n)`."""
        return _frequency_matrices(
            kernel,
            alpha,
            ops.convert_to_tensor(self._dft_cos),
            ops.convert_to_tensor(self._dft_sin),
        )

    def _space_to_depth(self, x):
        """Channels-first space-to-depth in `InvertibleDownSampling`'s order."""
        _, channels, height, width = x.shape
        x = ops.reshape(x, (-1, channels, height // 2, 2, width // 2, 2))
        x = ops.transpose(x, (0, 3, 5, 1, 2, 4))
        return ops.reshape(x, (-1, 4 * channels, height // 2, width // 2))

    def _check_input_size(self, input_shape):
        if self.built_spatial_shape is None:
            return
        spatial = self._spatial_shape(tuple(input_shape))
        for n, b in zip(spatial, self.built_spatial_shape):
            if n is not None and n != b:
                raise ValueError(
                    f"CayleyConv2D was built for spatial size "
                    f"{self.built_spatial_shape} (its circular convolution "
                    "lives in the DFT of that grid) and only accepts that "
                    f"size. Received input spatial size {spatial}."
                )

    def call(self, inputs, training=None):
        self._check_input_size(inputs.shape)
        x = ops.cast(inputs, "float32")
        if self.data_format == "channels_last":
            x = ops.transpose(x, (0, 3, 1, 2))
        if self.strides == 2:
            x = self._space_to_depth(x)
        q_r, q_i = self._frequency_matrices(self.kernel, self.alpha)
        if _backend.fft_may_deadlock():
            outputs = _apply_by_dft_matrices(x, q_r, q_i, self.grid)
        else:
            outputs = _apply_by_fft(x, q_r, q_i, self.grid)
        if self.data_format == "channels_last":
            outputs = ops.transpose(outputs, (0, 2, 3, 1))
        outputs = ops.cast(outputs, inputs.dtype)
        if self.bias is not None:
            bias = ops.cast(self.bias, outputs.dtype)
            if self.data_format == "channels_first":
                bias = ops.reshape(bias, (-1, 1, 1))
            outputs = ops.add(outputs, bias)
        return outputs

    # ---------------------------------------------------------- certification
    def frequency_matrices(self):
        """The per-frequency matrices $Q(\\omega)$ the layer applies.

        Computed by the layer's own float32 code (compiled as one function
        on JAX; another compilation of it may differ by float32 rounding),
        returned as a NumPy
        complex128 array of shape `(W//2 + 1, H, filters, c_in s^2)`
        (frequency $(u, v)$ at `[v, u]`, on the grid of the inner stride-1
        convolution). $Q(-\\omega) = \\overline{Q(\\omega)}$ gives the
        other half of the spectrum.

        Returns:
            complex128 NumPy array.
        """
        if not self.built:
            raise ValueError(
                "CayleyConv2D must be built before its frequency matrices "
                "can be computed."
            )
        q_r, q_i = _host_frequency_matrices()(
            ops.convert_to_tensor(self.kernel),
            ops.convert_to_tensor(self.alpha),
            ops.convert_to_tensor(self._dft_cos),
            ops.convert_to_tensor(self._dft_sin),
        )
        q_r = np.asarray(ops.convert_to_numpy(q_r), np.float64)
        q_i = np.asarray(ops.convert_to_numpy(q_i), np.float64)
        return q_r + 1j * q_i

    def rounding_slack(self):
        """Relative slack for the float32 rounding outside $Q(\\omega)$.

        $16u(\\lceil\\log_2 H\\rceil + \\lceil\\log_2 W\\rceil + n + 1)$
        with $u = 2^{-24}$ and $n = c_{in}s^2$: the forward and inverse
        FFTs (error $O(u\\log_2 N)$ each, Higham Thm 24.2), the
        $n$-term complex products ($\\gamma_{2n}$) and the final rounding,
        with a margin of several units.

        Returns:
            A Python float.
        """
        height, width = self.grid
        inner = self.input_channels * self.strides**2
        logs = math.ceil(math.log2(max(height, 2))) + math.ceil(
            math.log2(max(width, 2))
        )
        return 16.0 * _FLOAT32_UNIT_ROUNDOFF * (logs + inner + 1)

    def lipschitz_upper_bound(self):
        """Guaranteed upper bound on the layer's ℓ2 Lipschitz constant.

        $\\max_\\omega\\|Q(\\omega)\\|_2$ over the float32 matrices the layer
        applies (`frequency_matrices()`), by float64 SVD with a $10^{-12}$
        margin for its own rounding, times $1 +$ `rounding_slack()`. The
        layer is $\\mathcal{F}^{-1}\\,\\mathrm{diag}_\\omega Q(\\omega)\\,
        \\mathcal{F}$ with a unitary (normalised) DFT, so its norm is the
        largest norm of a block; space-to-depth is a permutation and the
        bias does not change the constant. About $1 + 10^{-5}$ whatever
        the weights.

        Returns:
            A Python float.
        """
        q = self.frequency_matrices()
        q = q.reshape((-1,) + q.shape[-2:])
        top = float(np.max(np.linalg.svd(q, compute_uv=False)[:, 0]))
        return (top + 1e-12) * (1.0 + self.rounding_slack())

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "kernel_size": self.kernel_size,
                "strides": self.strides,
                "data_format": self.data_format,
                "use_bias": self.use_bias,
            }
        )
        config.update(weight_arguments_config(self))
        return config
