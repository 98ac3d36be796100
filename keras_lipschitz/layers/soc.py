"""Skew orthogonal convolutions (SOC) and their dense counterpart.

Singla & Feizi, "Skew Orthogonal Convolutions", ICML 2021, with the fast
backward pass of Singla & Feizi, "Improved techniques for deterministic l2
robustness", NeurIPS 2022. The exponential of a skew-symmetric operator is
orthogonal; the layers apply a truncated Taylor series of it, with a short
series in training and a long one at inference.

As everywhere in the library, the raw trainable kernel $M$ is never
overwritten: the skew-symmetric, rescaled kernel is derived from it inside
`call`. The only written state is the eight power-iteration vectors of the
rescaling (non-trainable float32, gradient stopped, written only when
`training` is true).
"""

import hashlib
import math

import keras
import numpy as np
from keras import ops

from keras_lipschitz import bounds
from keras_lipschitz import normalizers
from keras_lipschitz.api_export import keras_lipschitz_export
from keras_lipschitz.layers import _validation
from keras_lipschitz.layers._kernel_arguments import weight_arguments_config
from keras_lipschitz.layers.dense import _LipschitzDense

# Power-iteration steps run at build (official code: `init_iters=50`).
INITIAL_POWER_ITERATIONS = 50
# Defaults: the highest power of the Taylor series, identity not counted.
# ICML'21 uses n = 5 / 12, NeurIPS'22 n = 5 / 14 (its `train_terms=6`,
# `eval_terms=15` count the identity).
DEFAULT_TRAIN_TERMS = 5
DEFAULT_EVAL_TERMS = 14


def _validate_terms(name, value):
    return _validation.validate_positive_int(name, value)


def _validate_odd_kernel_size(kernel_size):
    sizes = _validation.validate_int_tuple("kernel_size", kernel_size)
    if any(k % 2 == 0 for k in sizes):
        raise ValueError(
            "`kernel_size` must be odd (SOC needs the transposed-and-flipped "
            "kernel to be the exact adjoint under zero 'same' padding). "
            f"Received: kernel_size={kernel_size!r}"
        )
    return sizes


def _validate_stride(strides):
    error = ValueError(
        "`strides` must be 1 or 2 (or (1, 1) / (2, 2)): stride 2 is "
        "space-to-depth followed by a stride-1 SOC. "
        f"Received: strides={strides!r}"
    )
    try:
        values = _validation.validate_int_tuple("strides", strides)
    except ValueError:
        raise error from None
    if values[0] != values[1] or values[0] not in (1, 2):
        raise error
    return values[0]


def _numpy_normal(seed):
    """A fixed N(0, 1) initializer drawn on the host.

    For the power-iteration vectors (their start only matters until they
    converge): unlike `keras.initializers.RandomNormal`, it compiles
    nothing on JAX, where every new shape would cost an XLA compilation.
    """

    def initializer(shape, dtype=None):
        rng = np.random.default_rng(seed)
        return rng.normal(size=shape).astype(dtype or "float32")

    return initializer


def _truncation_bound(operator_norm, terms):
    """$1 + \\rho^{n+1}/(n+1)!$, computed in float64, never below 1."""
    log_term = (terms + 1) * math.log(max(operator_norm, 1e-300)) - math.lgamma(
        terms + 2
    )
    if log_term > 700.0:
        return float("inf")
    return 1.0 + math.exp(log_term)


@keras_lipschitz_export
class SOCConv2D(keras.layers.Layer):
    """Skew orthogonal convolution (SOC): an orthogonal 2-D convolution.

    Singla & Feizi, "Skew Orthogonal Convolutions", ICML 2021. From a raw
    kernel $M \\in \\mathbb{R}^{k \\times k \\times c \\times c}$ (odd $k$),

    $$L = \\frac{\\mu}{\\hat\\sigma}\\cdot\\frac{M - T(M)}{2},\\qquad
      T(M)[a, b, i, o] = M[k-1-a,\\, k-1-b,\\, o,\\, i],$$

    so that $J = \\mathrm{conv}(\\cdot, L)$ (stride 1, zero "same" padding)
    is skew-symmetric, $J^T = -J$, on every input size, and
    $\\exp(J)$ is orthogonal. The layer computes

    $$y = S_n(J)\\,x + b,\\qquad S_n(J) = \\sum_{i=0}^{n}\\frac{J^i}{i!},$$

    with $n$ = `train_terms` in training and `eval_terms` at inference.
    **Both counts exclude the identity**: $n$ is the highest power, and
    the layer runs $n$ convolutions. The defaults, $n = 5$ and $n = 14$,
    are those of the official NeurIPS'22 code (whose `train_terms=6`,
    `eval_terms=15` count the identity); the ICML'21 code uses 5 and 12.

    **Rescaling** (official code, NeurIPS'22 `multiplier` $\\mu = 1$;
    ICML'21 used $0.7$): $\\hat\\sigma$ is the minimum over the four
    "Fantastic Four" reshapes $R_i$ of the skew kernel of a power-iteration
    estimate of $\\|R_i\\|$, with eight persistent vectors (non-trainable
    float32 weights, `INITIAL_POWER_ITERATIONS` = 50 steps at build, then
    `power_iterations` steps per training call, gradients stopped). It only
    keeps $\\|J\\|$ moderate (at most about $\\mu\\sqrt{k^2}$) so that the
    truncated series is accurate: orthogonality comes from skew-symmetry,
    not from the scale.

    **Channels and stride.** With stride 2 the input goes through
    space-to-depth first (`InvertibleDownSampling`'s channel order), so
    the SOC acts on $c_{in}s^2$ channels; $c = \\max(c_{in}s^2,$
    `filters`$)$. If `filters` $> c_{in}s^2$ the input channels are
    zero-padded (an isometry); if `filters` $< c_{in}s^2$ the first
    `filters` output channels are kept (a projection). Either way the
    layer is 1-Lipschitz up to the truncation error, and gradient norm
    preserving when `filters` $= c_{in}s^2$.

    **Certification.** `lipschitz_upper_bound()` is guaranteed: for a
    skew (normal, imaginary-spectrum) $J$,
    $\\|S_n(J)\\| \\le 1 + \\|J\\|^{n+1}/(n+1)!$, with $\\|J\\|$ a
    float64 upper bound of `keras_lipschitz.bounds` (never a
    power-iteration estimate) and $n$ = `eval_terms`. Never certify a
    network evaluated with training-mode terms.

    **Fast backward** (`fast_backward=True`, NeurIPS'22): in training
    the gradient goes through `keras.ops.custom_gradient`: the input
    gradient is exact (the Horner recursion with $-L$), the kernel
    gradient is one conv weight gradient between
    $z_2 = \\sum_{i<n}J^ix/(i+1)!$ and $g_2 = \\sum_{i<n}(-J)^ig/(i+1)!$,
    exact to first order in $\\|J\\|$ only, and only $z_2$ is stored.
    See `keras_lipschitz.normalizers.skew_conv_exponential`.

    Args:
        filters: positive int, number of output channels.
        kernel_size: odd int or tuple of 2 odd ints.
        strides: 1 or 2.
        train_terms: int >= 1, highest Taylor power in training.
        eval_terms: int >= 1, highest Taylor power at inference.
        multiplier: positive float $\\mu$, the scale of $L$ after division
            by $\\hat\\sigma$.
        power_iterations: int >= 1, power-iteration steps per training call.
        fast_backward: bool, the NeurIPS'22 backward pass in training.
        data_format: `"channels_last"`, `"channels_first"` or None. The
            kernel layout is always `(k_h, k_w, c, c)`.
        use_bias: bool.
        kernel_initializer: initializer of $M$; None (default) is the
            official $\\mathcal{N}(0, 1/c)$ (standard deviation
            $1/\\sqrt{c}$).
        bias_initializer: None (default) is the official
            $\\mathcal{U}(\\pm 1/\\sqrt{c})$ of NeurIPS'22.
        kernel_regularizer, bias_regularizer: optional regularizers.
        kernel_constraint, bias_constraint: optional constraints.

    Input shape:
        4-D tensor `(batch, H, W, c_in)` or `(batch, c_in, H, W)`. With
        stride 2, `H` and `W` must be known and even.

    Output shape:
        `(batch, H/s, W/s, filters)` or `(batch, filters, H/s, W/s)`.

    Example:

    >>> layer = SOCConv2D(4, 3, use_bias=False)
    >>> y = layer(np.ones((2, 6, 6, 4), "float32"))
    >>> tuple(y.shape)
    (2, 6, 6, 4)
    >>> bool(layer.lipschitz_upper_bound() <= 1.0 + 1e-4)
    True
    """

    def __init__(
        self,
        filters,
        kernel_size=3,
        strides=1,
        train_terms=DEFAULT_TRAIN_TERMS,
        eval_terms=DEFAULT_EVAL_TERMS,
        multiplier=1.0,
        power_iterations=1,
        fast_backward=False,
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
        self.kernel_size = _validate_odd_kernel_size(kernel_size)
        self.strides = _validate_stride(strides)
        self.train_terms = _validate_terms("train_terms", train_terms)
        self.eval_terms = _validate_terms("eval_terms", eval_terms)
        self.multiplier = _validation.validate_positive_number(
            "multiplier", multiplier
        )
        self.power_iterations = _validation.validate_positive_int(
            "power_iterations", power_iterations
        )
        if not isinstance(fast_backward, (bool, np.bool_)):
            raise ValueError(
                "`fast_backward` must be a bool. "
                f"Received: fast_backward={fast_backward!r}"
            )
        self.fast_backward = bool(fast_backward)
        self.data_format = _validation.validate_data_format(data_format)
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
        self.built_spatial_shape = None
        self.input_channels = None
        self.channels = None
        # The last guaranteed norm bound, keyed by the exact float32 skew
        # kernel and grid: `lipschitz_bound` and `certify` ask for it again
        # with unchanged weights, and the exact bound is an eigensolve.
        self._norm_bound_key = None
        self._norm_bound_value = None
        self.input_spec = keras.layers.InputSpec(ndim=4)

    # ------------------------------------------------------------------ shapes
    @property
    def _channel_axis(self):
        return -1 if self.data_format == "channels_last" else 1

    def _spatial_shape(self, shape):
        axes = (1, 2) if self.data_format == "channels_last" else (2, 3)
        return tuple(shape[a] for a in axes)

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) != 4:
            raise ValueError(
                "SOCConv2D expects inputs of rank 4. "
                f"Received: input_shape={input_shape}"
            )
        c_in = input_shape[self._channel_axis]
        if c_in is None:
            raise ValueError(
                "SOCConv2D needs a known channel dimension "
                f"(data_format={self.data_format!r}). "
                f"Received: input_shape={input_shape}"
            )
        spatial = self._spatial_shape(input_shape)
        if self.strides == 2 and any(
            n is None or n % 2 for n in spatial
        ):
            raise ValueError(
                "With strides=2, SOCConv2D needs known, even spatial sizes "
                "(space-to-depth by 2). "
                f"Received: input_shape={input_shape}"
            )
        self.built_spatial_shape = spatial
        self.input_channels = c_in
        inner = c_in * self.strides**2
        self.channels = max(inner, self.filters)
        c = self.channels
        k_h, k_w = self.kernel_size
        kernel_initializer = self.kernel_initializer
        if kernel_initializer is None:
            kernel_initializer = keras.initializers.RandomNormal(
                stddev=1.0 / math.sqrt(c)
            )
        self.kernel = self.add_weight(
            name="kernel",
            shape=(k_h, k_w, c, c),
            initializer=kernel_initializer,
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
            autocast=False,
        )
        self.bias = None
        if self.use_bias:
            bias_initializer = self.bias_initializer
            if bias_initializer is None:
                limit = 1.0 / math.sqrt(c)
                bias_initializer = keras.initializers.RandomUniform(
                    -limit, limit
                )
            self.bias = self.add_weight(
                name="bias",
                shape=(self.filters,),
                initializer=bias_initializer,
                regularizer=self.bias_regularizer,
                constraint=self.bias_constraint,
            )
        shapes = normalizers.fantastic_four_vector_shapes((k_h, k_w, c, c))
        self.power_vectors = []
        for index, (u_shape, v_shape) in enumerate(shapes, start=1):
            pair = []
            for name, shape in ((f"u{index}", u_shape), (f"v{index}", v_shape)):
                pair.append(
                    self.add_weight(
                        name=name,
                        shape=shape,
                        initializer=_numpy_normal(index),
                        trainable=False,
                        autocast=False,
                    )
                )
            self.power_vectors.append(tuple(pair))
        # Converged vectors from the start: the scale of the first training
        # steps and of an untrained layer is already the official one.
        self._update_power_vectors(INITIAL_POWER_ITERATIONS)
        self.input_spec = keras.layers.InputSpec(
            ndim=4, axes={self._channel_axis: c_in}
        )

    def compute_output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        spatial = tuple(
            None if n is None else n // self.strides
            for n in self._spatial_shape(input_shape)
        )
        if self.data_format == "channels_last":
            return (input_shape[0], *spatial, self.filters)
        return (input_shape[0], self.filters, *spatial)

    def _check_input_size(self, inputs):
        built = self.built_spatial_shape
        if built is None:
            return
        spatial = self._spatial_shape(tuple(inputs.shape))
        for n, b in zip(spatial, built):
            if n is not None and b is not None and n > b:
                raise ValueError(
                    f"SOCConv2D was built for spatial size {built} and its "
                    "`lipschitz_upper_bound` (the truncation term) is only "
                    "valid for inputs up to that size. Build the layer with "
                    "the largest input size it will see. Received input "
                    f"spatial size {spatial}."
                )

    # --------------------------------------------------------------- the maths
    def _skew_kernel(self, training):
        """$L$ in float32; updates the power vectors when training."""
        skew = normalizers.skew_symmetric_conv_kernel(
            ops.cast(self.kernel, "float32")
        )
        vectors = [
            (ops.convert_to_tensor(u), ops.convert_to_tensor(v))
            for u, v in self.power_vectors
        ]
        iterations = self.power_iterations if training else 0
        new_vectors, sigma = normalizers.fantastic_four_power_iteration(
            skew, vectors, iterations
        )
        if training:
            for (u_var, v_var), (u, v) in zip(self.power_vectors, new_vectors):
                u_var.assign(ops.cast(u, u_var.dtype))
                v_var.assign(ops.cast(v, v_var.dtype))
        # Multiplying by one scalar keeps L exactly skew in float32.
        return skew * (self.multiplier / sigma)

    def _update_power_vectors(self, iterations):
        # On the host in NumPy: no gradient is needed at build, and eager
        # JAX would compile every small op of the loop separately.
        kernel = np.asarray(ops.convert_to_numpy(self.kernel), np.float64)
        skew = 0.5 * (kernel - kernel[::-1, ::-1].transpose(0, 1, 3, 2))
        for u_var, v_var in self.power_vectors:
            u = np.asarray(ops.convert_to_numpy(u_var), np.float64)
            v = np.asarray(ops.convert_to_numpy(v_var), np.float64)
            u_axes = tuple(a for a in range(4) if u.shape[a] == 1)
            v_axes = tuple(a for a in range(4) if v.shape[a] == 1)
            u = u / max(np.linalg.norm(u), 1e-30)
            for _ in range(iterations):
                v = np.sum(skew * u, axis=v_axes, keepdims=True)
                v = v / max(np.linalg.norm(v), 1e-30)
                u = np.sum(skew * v, axis=u_axes, keepdims=True)
                u = u / max(np.linalg.norm(u), 1e-30)
            u_var.assign(u.astype("float32"))
            v_var.assign(v.astype("float32"))

    def _space_to_depth(self, x):
        _, height, width, channels = x.shape
        x = ops.reshape(x, (-1, height // 2, 2, width // 2, 2, channels))
        x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
        return ops.reshape(x, (-1, height // 2, width // 2, 4 * channels))

    def call(self, inputs, training=None):
        self._check_input_size(inputs)
        x = inputs
        if self.data_format == "channels_first":
            x = ops.transpose(x, (0, 2, 3, 1))
        if self.strides == 2:
            x = self._space_to_depth(x)
        inner = x.shape[-1]
        if self.channels > inner:
            x = ops.pad(
                x, ((0, 0), (0, 0), (0, 0), (0, self.channels - inner))
            )
        kernel = ops.cast(self._skew_kernel(training), x.dtype)
        terms = self.train_terms if training else self.eval_terms
        outputs = normalizers.skew_conv_exponential(
            x,
            kernel,
            terms,
            fast_backward=bool(training) and self.fast_backward,
        )
        if self.filters < self.channels:
            outputs = outputs[..., : self.filters]
        if self.bias is not None:
            outputs = ops.add(outputs, ops.cast(self.bias, outputs.dtype))
        if self.data_format == "channels_first":
            outputs = ops.transpose(outputs, (0, 3, 1, 2))
        return outputs

    # ---------------------------------------------------------- certification
    def skew_kernel(self):
        """The inference-mode skew kernel $L$ as a NumPy float32 array.

        Layout `(k_h, k_w, c, c)`; the conv by it is $J$.
        """
        return ops.convert_to_numpy(self._skew_kernel(training=False))

    def skew_operator_norm_bound(self, input_size=None):
        """Guaranteed float64 upper bound on $\\|J\\|$ (inference mode).

        On the SOC's own grid (the input size divided by the stride):
        `keras_lipschitz.bounds.conv_spectral_norm_upper_bound` (exact
        operator norm for small grids, padded-grid FFT bound otherwise);
        with unknown spatial sizes, the size-free "Fantastic Four" bound
        $\\sqrt{k_hk_w}\\min_i\\|R_i\\|$.

        Args:
            input_size: optional `(H, W)` of the layer's input; defaults
                to the built size.

        Returns:
            A Python float.
        """
        if not self.built:
            raise ValueError(
                "SOCConv2D must be built before its bound can be computed."
            )
        skew = np.ascontiguousarray(self.skew_kernel(), np.float32)
        if input_size is None:
            input_size = self.built_spatial_shape
        if input_size is None or any(d is None for d in input_size):
            grid = None
        else:
            grid = tuple(-(-int(d) // self.strides) for d in input_size)
        key = (skew.shape, hashlib.sha256(skew.tobytes()).hexdigest(), grid)
        if key == self._norm_bound_key:
            return self._norm_bound_value
        kernel = skew.astype(np.float64)
        if grid is None:
            value = bounds.conv_reshaped_upper_bound(kernel)
        else:
            value = bounds.conv_spectral_norm_upper_bound(
                kernel, grid, (1, 1), "same"
            )
        self._norm_bound_key = key
        self._norm_bound_value = value
        return value

    def lipschitz_upper_bound(self, input_size=None):
        """Guaranteed upper bound on the layer's ℓ2 Lipschitz constant.

        $1 + \\rho^{n+1}/(n+1)!$ with $\\rho$ =
        `skew_operator_norm_bound(input_size)` and $n$ = `eval_terms`:
        $\\|S_n(J)\\| \\le \\|\\exp(J)\\| + \\|\\exp(J) - S_n(J)\\|$, the
        first term is 1 (J skew) and the second is bounded by the Lagrange
        remainder on each eigenvalue $i\\theta$, $|\\theta| \\le \\rho$.
        Space-to-depth, channel padding and channel selection do not
        increase the norm. Valid in inference mode only (training uses
        `train_terms`).

        Args:
            input_size: optional `(H, W)`; defaults to the built size.

        Returns:
            A Python float.
        """
        return _truncation_bound(
            self.skew_operator_norm_bound(input_size), self.eval_terms
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "kernel_size": self.kernel_size,
                "strides": self.strides,
                "train_terms": self.train_terms,
                "eval_terms": self.eval_terms,
                "multiplier": self.multiplier,
                "power_iterations": self.power_iterations,
                "fast_backward": self.fast_backward,
                "data_format": self.data_format,
                "use_bias": self.use_bias,
            }
        )
        config.update(weight_arguments_config(self))
        return config


@keras_lipschitz_export
class SOCDense(_LipschitzDense):
    """Dense layer whose kernel is the exponential of a skew matrix.

    The dense analogue of `SOCConv2D`: with a raw square kernel
    $W \\in \\mathbb{R}^{d \\times d}$, $d = \\max(d_{in},$ `units`$)$,

    $$A = \\frac{\\mu}{\\hat\\sigma}\\cdot\\frac{W - W^T}{2},\\qquad
      \\bar W = L\\,S_n(A)[{:}d_{in},\\, {:}\\text{units}],\\qquad
      y = \\phi(x\\bar W + b),$$

    where $S_n$ is the Taylor series of `SOCConv2D` ($n$ = `train_terms`
    in training, `eval_terms` at inference; identity not counted),
    $\\hat\\sigma$ a power-iteration estimate of $\\|W - W^T\\|/2$ (vector
    `u`, updated in training only), $\\mu$ = `multiplier` and $L$ =
    `lipschitz`. $\\exp(A)$ is orthogonal; zero-padding the input
    ($d_{in} <$ `units`) or keeping the first `units` outputs
    ($d_{in} >$ `units`) keeps all singular values equal to $L$ up to the
    truncation error. The matrix is materialized ($n$ products of $d
    \\times d$ matrices), so `lipschitz_upper_bound()` is the exact float64
    SVD norm of the inference-mode kernel, like the other dense layers, and
    the layer can be exported as a plain `Dense`.

    Args:
        units: positive int.
        train_terms: int >= 1.
        eval_terms: int >= 1.
        multiplier: positive float.
        power_iterations: int >= 1, per training call.
        kernel_initializer: None (default) for $\\mathcal{N}(0, 1/d)$.
        **kwargs: the other `SpectralDense` arguments (`lipschitz`,
            `activation`, `use_bias`, `bias_initializer`, regularizers,
            constraints, layer kwargs).

    Input shape:
        Tensor `(..., d_in)`.

    Output shape:
        `(..., units)`.

    Example:

    >>> layer = SOCDense(3)
    >>> _ = layer(np.ones((1, 5), "float32"))
    >>> s = np.linalg.svd(layer.effective_kernel(), compute_uv=False)
    >>> bool(np.all(np.abs(s - 1.0) < 1e-4))
    True
    """

    def __init__(
        self,
        units,
        train_terms=DEFAULT_TRAIN_TERMS,
        eval_terms=DEFAULT_EVAL_TERMS,
        multiplier=1.0,
        power_iterations=1,
        kernel_initializer=None,
        **kwargs,
    ):
        super().__init__(
            units,
            kernel_initializer=(
                "zeros" if kernel_initializer is None else kernel_initializer
            ),
            **kwargs,
        )
        if kernel_initializer is None:
            self.kernel_initializer = None
        self.train_terms = _validate_terms("train_terms", train_terms)
        self.eval_terms = _validate_terms("eval_terms", eval_terms)
        self.multiplier = _validation.validate_positive_number(
            "multiplier", multiplier
        )
        self.power_iterations = _validation.validate_positive_int(
            "power_iterations", power_iterations
        )
        self.input_dim = None

    def build(self, input_shape):
        input_dim = input_shape[-1]
        if input_dim is None:
            raise ValueError(
                "SOCDense needs a known last input dimension. "
                f"Received: input_shape={input_shape}"
            )
        self.input_dim = int(input_dim)
        size = max(self.input_dim, self.units)
        initializer = self.kernel_initializer
        if initializer is None:
            initializer = keras.initializers.RandomNormal(
                stddev=1.0 / math.sqrt(size)
            )
        self.kernel = self.add_weight(
            name="kernel",
            shape=(size, size),
            initializer=initializer,
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
            autocast=False,
        )
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias",
                shape=(self.units,),
                initializer=self.bias_initializer,
                regularizer=self.bias_regularizer,
                constraint=self.bias_constraint,
            )
        self.u = self.add_weight(
            name="u",
            shape=(1, size),
            initializer=keras.initializers.RandomNormal(seed=0),
            trainable=False,
            autocast=False,
        )
        u, _ = normalizers.power_iteration_dense(
            self._skew(ops.cast(self.kernel, "float32")),
            ops.convert_to_tensor(self.u),
            INITIAL_POWER_ITERATIONS,
        )
        self.u.assign(u)
        self.input_spec = keras.layers.InputSpec(
            min_ndim=2, axes={-1: input_dim}
        )

    @staticmethod
    def _skew(kernel):
        """$(W - W^T)/2$."""
        return 0.5 * (kernel - ops.transpose(kernel))

    def _constrain(self, kernel, training):
        skew = self._skew(kernel)
        iterations = self.power_iterations if training else 0
        u, sigma = normalizers.power_iteration_dense(
            skew, ops.convert_to_tensor(self.u), iterations
        )
        if training:
            self.u.assign(ops.cast(u, self.u.dtype))
        skew = skew * (self.multiplier / sigma)
        size = kernel.shape[0]
        identity = ops.eye(size, dtype=kernel.dtype)
        terms = self.train_terms if training else self.eval_terms
        # Rows of S_n(A) applied to the identity: x S_n(A) for row vectors.
        exponential = normalizers.taylor_exponential(
            identity, lambda t: ops.matmul(t, skew), terms
        )
        return exponential[: self.input_dim, : self.units]

    def get_config(self):
        config = super().get_config()
        if self.kernel_initializer is None:
            config["kernel_initializer"] = None
        config.update(
            {
                "train_terms": self.train_terms,
                "eval_terms": self.eval_terms,
                "multiplier": self.multiplier,
                "power_iterations": self.power_iterations,
            }
        )
        return config
