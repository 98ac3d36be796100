"""Almost-orthogonal layers (AOL).

Prach & Lampert, "Almost-Orthogonal Layers for Efficient General-Purpose
Lipschitz Networks", ECCV 2022 (arXiv 2208.03160; official TensorFlow code
github.com/berndprach/AOL). The raw trainable kernel is rescaled inside
`call` by a diagonal that makes it 1-Lipschitz by an exact inequality (the
Schur test): no iteration, no state, nothing that has to converge. The
rescaled kernel is a plain kernel, so both layers export to
`keras.layers.Dense` / `keras.layers.Conv2D` (`keras_lipschitz.vanilla_export`)
and are certified like the other dense and conv layers.
"""

import math
import random as python_random

import keras
import numpy as np
from keras import ops

from keras_lipschitz import normalizers
from keras_lipschitz.api_export import keras_lipschitz_export
from keras_lipschitz.layers.conv import _LipschitzConv2D
from keras_lipschitz.layers.dense import _LipschitzDense

# Relative slack on float64 sums of non-negative terms (their rounding is
# below 1e-13 for any kernel a layer can hold).
_FLOAT64_SUM_SLACK = 1e-10


def _orthogonal(rng, rows, cols):
    """A `rows x cols` matrix with orthonormal rows or columns (NumPy).

    The QR construction of `keras.initializers.Orthogonal` (Saxe et al.,
    2014), signs fixed by the diagonal of R.
    """
    a = rng.normal(size=(max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q = q * np.sign(np.diag(r))
    return q if rows >= cols else q.T


class _RepeatedOrthogonal(keras.initializers.Initializer):
    """The official AOL dense initializer ("repeated orthogonal").

    For a kernel flattened to `rows x cols` (all axes but the last are
    rows): with `rows <= cols`, an orthogonal matrix (orthonormal rows).
    With `rows > cols`, each row is a basis vector of a random orthonormal
    basis of $\\mathbb{R}^{cols}$, drawn uniformly, divided by the square
    root of the number of rows that drew it. Any two rows are then equal or
    orthogonal, so $|WW^T|$ has row sums exactly 1: the AOL rescaling is the
    identity and the layer starts with spectral norm 1.

    Drawn on the host with NumPy: eager JAX would compile every small op of
    the construction for every new shape. The seed is drawn at construction
    from Python's `random`, as for unseeded Keras initializers, so it is
    reproducible under `keras.utils.set_random_seed`.
    """

    def __init__(self):
        self._seed = python_random.randint(1, int(1e9))

    def matrix(self, rows, cols):
        """The `rows x cols` float64 matrix described above."""
        rng = np.random.default_rng(self._seed)
        if rows <= cols:
            return _orthogonal(rng, rows, cols)
        basis = _orthogonal(rng, cols, cols)
        choice = rng.integers(0, cols, size=rows)
        counts = np.bincount(choice, minlength=cols)
        return basis[choice] / np.sqrt(counts[choice])[:, None]

    def __call__(self, shape, dtype=None):
        rows = int(math.prod(shape[:-1]))
        matrix = self.matrix(rows, int(shape[-1]))
        return matrix.reshape(shape).astype(dtype or "float32")


class _OrthogonalCenter(keras.initializers.Initializer):
    """The official AOL conv initializer: an orthogonal centre tap.

    The kernel is zero except its centre tap `[(k_h - 1) // 2,
    (k_w - 1) // 2]`, a `c_in x c_out` matrix from `_RepeatedOrthogonal`
    (the official code uses a plain orthogonal matrix; both agree when
    `c_in <= c_out`). At stride 1 the AOL rescaling is then the identity:
    the layer starts as an isometry (`c_in <= c_out`) or with norm 1.
    """

    def __init__(self):
        self._center = _RepeatedOrthogonal()

    def __call__(self, shape, dtype=None):
        k_h, k_w, c_in, c_out = shape
        kernel = np.zeros(shape)
        kernel[(k_h - 1) // 2, (k_w - 1) // 2] = self._center.matrix(
            c_in, c_out
        )
        return kernel.astype(dtype or "float32")


def _abs_conv_gram_float64(kernel):
    """$A_{ij} = \\sum_s |M_{ij}(s)|$ of `normalizers.conv_input_gram`, float64.

    On the host, shift by shift, for guaranteed bounds.

    Args:
        kernel: array `(k_h, k_w, c_in, c_out)`.

    Returns:
        float64 array `(c_in, c_in)`.
    """
    kernel = np.asarray(kernel, np.float64)
    k_h, k_w, c_in, _ = kernel.shape
    total = np.zeros((c_in, c_in))
    for u in range(1 - k_h, k_h):
        for v in range(1 - k_w, k_w):
            a0, a1 = max(0, -u), min(k_h, k_h - u)
            b0, b1 = max(0, -v), min(k_w, k_w - v)
            shifted = kernel[a0 + u : a1 + u, b0 + v : b1 + v]
            total += np.abs(
                np.einsum("abio,abjo->ij", shifted, kernel[a0:a1, b0:b1])
            )
    return total


def _schur_norm_bound(abs_gram, weights=None):
    """Guaranteed $\\sqrt{\\max_i\\sum_j A_{ij}w_j/w_i}$ (float64).

    The weighted Schur test: for a symmetric operator whose entries (or
    blocks, summed over shifts) have absolute values $A$, and any weights
    $w > 0$, the largest eigenvalue is at most
    $\\max_i\\sum_jA_{ij}w_j/w_i$. With $A$ from a Gram matrix this bounds
    the squared norm of the underlying map.

    Args:
        abs_gram: float64 array `(n, n)` of absolute Gram entries.
        weights: None (all ones) or positive float64 array `(n,)`.

    Returns:
        A Python float.
    """
    abs_gram = np.asarray(abs_gram, np.float64)
    if abs_gram.size == 0:
        return 0.0
    if weights is None:
        sums = abs_gram.sum(axis=1)
    else:
        weights = np.asarray(weights, np.float64)
        sums = (abs_gram @ weights) / weights
    return float(np.sqrt(np.max(sums) * (1.0 + _FLOAT64_SUM_SLACK)))


@keras_lipschitz_export
class AOLDense(_LipschitzDense):
    """Almost-orthogonal dense layer (AOL).

    Prach & Lampert, "Almost-Orthogonal Layers for Efficient
    General-Purpose Lipschitz Networks", ECCV 2022. With the raw Keras
    kernel $W$ of shape `(d_in, units)` (so $y = xW$) and $G = WW^T$,

    $$\\bar W = L\\,\\mathrm{diag}(d)\\,W,\\qquad
      d_i = \\Big(\\sum_j |G_{ij}| + \\varepsilon\\Big)^{-1/2},\\qquad
      y = \\phi(x\\bar W + b),$$

    where $L$ is `lipschitz` and $\\varepsilon = 10^{-6}$ (as in the
    official code; it keeps a dead input finite and only shrinks $d$).
    $\\|\\mathrm{diag}(d)W\\|_2 \\le 1$ for *every* $W$: by the Schur test,
    $G \\preceq \\mathrm{diag}(\\sum_j|G_{ij}|)$. The bound is an exact
    inequality, not a converged estimate, so the layer is `lipschitz`-Lipschitz
    in training and inference alike, after any update. The rescaling is
    $O(d_{in}^2\\,\\text{units})$ per call and has no state
    (`keras_lipschitz.normalizers.aol_rescaling_dense`).

    AOL is *almost* orthogonal: exactly orthogonal when the rows of $W$
    are orthogonal, below 1 otherwise, never above.

    **Initialization** (official default): `kernel_initializer=None`
    draws the "repeated orthogonal" kernel of the official code: an
    orthogonal matrix when `d_in <= units`; otherwise every row is a
    randomly chosen vector of an orthonormal basis, divided by the square
    root of how often it was chosen. In both cases the rescaling starts as
    the identity and the layer with norm exactly 1.

    `lipschitz_upper_bound()` is the exact float64 SVD norm of the
    inference kernel (times the activation's constant), and the layer
    exports to a plain `keras.layers.Dense` (`effective_kernel()`).

    Args:
        units: positive int, output dimension.
        lipschitz: positive float, the layer's Lipschitz bound (before the
            activation).
        activation: None or a Keras activation with a known Lipschitz
            constant.
        use_bias: bool.
        kernel_initializer: None (default, the official repeated-orthogonal
            initialization) or any Keras initializer.
        bias_initializer: initializer of the bias (default zeros, as in the
            official code).
        kernel_regularizer, bias_regularizer: optional regularizers (the
            kernel regularizer acts on the raw kernel, as officially).
        kernel_constraint, bias_constraint: optional constraints.

    Input shape:
        `(..., input_dim)`.

    Output shape:
        `(..., units)`.

    Example:

    >>> layer = AOLDense(4)
    >>> y = layer(np.ones((2, 3), "float32"))
    >>> tuple(y.shape)
    (2, 4)
    >>> bool(layer.lipschitz_upper_bound() <= 1.0)
    True
    """

    def __init__(self, units, kernel_initializer=None, **kwargs):
        super().__init__(
            units,
            kernel_initializer=(
                _RepeatedOrthogonal()
                if kernel_initializer is None
                else kernel_initializer
            ),
            **kwargs,
        )
        # The config keeps None (the official initializer), not the object.
        self._official_initializer = kernel_initializer is None

    def _constrain(self, kernel, training):
        scale = normalizers.aol_rescaling_dense(kernel)
        return kernel * ops.expand_dims(scale, 1)

    def get_config(self):
        config = super().get_config()
        if self._official_initializer:
            config["kernel_initializer"] = None
        return config


@keras_lipschitz_export
class AOLConv2D(_LipschitzConv2D):
    """Almost-orthogonal 2-D convolution (AOL).

    Prach & Lampert (ECCV 2022), convolutional form. With the raw kernel
    $K$ of shape `(k_h, k_w, c_in, filters)` and the kernel of
    $K^T \\circledast K$,

    $$M_{ij}(s) = \\sum_{a, b, o} K[a + s, i, o]\\,K[a, j, o],\\qquad
      s \\in \\{-(k-1), \\dots, k-1\\}^2,$$

    (a $(2k_h-1)\\times(2k_w-1)\\times c_{in}\\times c_{in}$ kernel, computed
    with one convolution of the kernel with itself,
    `keras_lipschitz.normalizers.conv_input_gram`), the input channels of
    $K$ are rescaled:

    $$\\bar K[:, :, i, :] = L\\,d_i\\,K[:, :, i, :],\\qquad
      d_i = \\Big(\\sum_j\\sum_s |M_{ij}(s)| + \\varepsilon\\Big)^{-1/2},$$

    with $L$ = `lipschitz` and $\\varepsilon = 10^{-6}$ (official code).
    The Schur test on the block-Toeplitz operator $K^TK$ gives
    $\\|\\mathrm{conv}(\\cdot, \\bar K)\\| \\le L$ on the infinite plane;
    zero padding (`"same"` or `"valid"`), any input size and any stride
    only restrict or subsample it, so the layer is `lipschitz`-Lipschitz for
    all of them, in training and inference, with no iteration and no state.
    Strides are allowed but make the bound loose (the official code refuses
    them and recommends space-to-depth, e.g. `InvertibleDownSampling`, then
    a stride-1 AOL).

    **Circular padding** (`padding="circular"`, spatial sizes multiples of
    the strides): the Gram operator of a circular conv on the torus has the
    blocks $\\sum_{s' \\equiv s}M_{ij}(s')$ (shifts taken modulo the size),
    whose absolute row sums are at most $\\sum_j\\sum_s|M_{ij}(s)|$, so the
    same Schur test holds on every torus, and a stride only subsamples the
    rows. The input is wrapped around (Keras's "same" amounts) and then
    convolved with "valid" padding; a layer built with a static size
    accepts only that size (its float64 bound is the exact circular norm
    there), a layer built with `None` spatial dimensions any size.

    **Initialization** (official default): `kernel_initializer=None` sets
    the centre tap to an orthogonal (`c_in <= filters`) or repeated-orthogonal
    matrix and every other tap to zero, so at stride 1 the layer starts with
    norm 1 (an isometry when `c_in <= filters`).

    `lipschitz_upper_bound()` is the smaller of the shared conv bound
    (exact operator norm for small built sizes, padded-grid FFT otherwise;
    see `SpectralConv2D`) and the Schur bound recomputed in float64 from the
    inference kernel, which holds for every input size. As for the other
    conv layers, a layer built with a static spatial size refuses larger
    inputs (its bound is computed for that size); build it with `None`
    spatial dimensions to accept any size. It exports to a plain
    `keras.layers.Conv2D`.

    Args:
        filters: positive int, number of output channels.
        kernel_size: int or tuple of 2 ints.
        strides: int or tuple of 2 ints.
        padding: `"same"`, `"valid"` (zero padding) or `"circular"`.
        data_format: `"channels_last"`, `"channels_first"` or None. The
            kernel layout is always `(k_h, k_w, c_in, filters)`.
        lipschitz: positive float.
        activation: None or a Keras activation with a known Lipschitz
            constant.
        use_bias: bool.
        kernel_initializer: None (default, the official orthogonal-centre
            initialization) or any Keras initializer.
        bias_initializer: initializer of the bias (default zeros).
        kernel_regularizer, bias_regularizer: optional regularizers.
        kernel_constraint, bias_constraint: optional constraints.

    Input shape:
        4-D tensor `(batch, H, W, c_in)` or `(batch, c_in, H, W)`.

    Output shape:
        `(batch, H', W', filters)` or `(batch, filters, H', W')`, as
        `keras.layers.Conv2D`.

    Example:

    >>> layer = AOLConv2D(4, 3, use_bias=False)
    >>> y = layer(np.ones((2, 6, 6, 4), "float32"))
    >>> tuple(y.shape)
    (2, 6, 6, 4)
    >>> bool(layer.lipschitz_upper_bound() <= 1.0 + 1e-6)
    True
    """

    _paddings = ("same", "valid", "circular")

    def __init__(
        self,
        filters,
        kernel_size,
        strides=(1, 1),
        padding="same",
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
        **kwargs,
    ):
        super().__init__(
            filters,
            kernel_size,
            strides=strides,
            padding=padding,
            data_format=data_format,
            lipschitz=lipschitz,
            activation=activation,
            use_bias=use_bias,
            kernel_initializer=(
                _OrthogonalCenter()
                if kernel_initializer is None
                else kernel_initializer
            ),
            bias_initializer=bias_initializer,
            kernel_regularizer=kernel_regularizer,
            bias_regularizer=bias_regularizer,
            kernel_constraint=kernel_constraint,
            bias_constraint=bias_constraint,
            **kwargs,
        )
        self._official_initializer = kernel_initializer is None

    def _constrain(self, kernel, training):
        scale = normalizers.aol_rescaling_conv(kernel)
        return kernel * ops.reshape(scale, (1, 1, -1, 1))

    def lipschitz_upper_bound(self, input_size=None):
        """Guaranteed upper bound on the layer's ℓ2 Lipschitz constant.

        The minimum of the shared conv bound (`SpectralConv2D`'s, on the
        built or given input size) and the float64 weighted Schur bound
        $\\sqrt{\\max_i\\sum_j\\sum_s|\\bar M_{ij}(s)|\\,w_j/w_i}$ of the
        inference kernel $\\bar K$, with $w = 1/d$ recomputed in float64
        from the raw kernel (valid for every input size, padding and
        stride), times the activation's Lipschitz constant.

        Args:
            input_size: optional `(h, w)`; defaults to the built size.

        Returns:
            A Python float.
        """
        bound = super().lipschitz_upper_bound(input_size)
        # Schur weights 1/d, with d the AOL rescaling recomputed in float64
        # from the raw kernel: row i of the rescaled Gram then sums to
        # d_i^2 sum_j |M_ij| < 1 (any positive weights give a valid bound).
        raw = np.asarray(ops.convert_to_numpy(self.kernel), np.float64)
        sums = _abs_conv_gram_float64(raw).sum(axis=1)
        weights = np.sqrt(sums + normalizers.AOL_EPSILON)
        schur = _schur_norm_bound(
            _abs_conv_gram_float64(self.effective_kernel()), weights
        )
        return min(bound, schur * self._activation_lipschitz)

    def get_config(self):
        config = super().get_config()
        # No power iteration: the base's argument is not AOL's.
        config.pop("power_iterations", None)
        if self._official_initializer:
            config["kernel_initializer"] = None
        return config
