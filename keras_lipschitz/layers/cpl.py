"""Convex potential layers (CPL): 1-Lipschitz residual blocks.

Meunier, Delattre, Araujo, Allauzen, "A Dynamical System Perspective for
Lipschitz Neural Networks", ICML 2022 (arXiv 2110.12690; official code
github.com/MILES-PSL/Convex-Potential-Layer). With a linear operator $W$
(a matrix, or a zero-padded convolution) and ReLU $\\sigma$,

$$y = x - \\frac{2}{\\|W\\|_2^2}\\, W^T\\sigma(Wx + b).$$

$W^T\\sigma(Wx + b)$ is the gradient of the convex potential
$\\psi(x) = \\sum_i s(w_i^Tx + b_i)$ ($s' = \\sigma$); it is
$L$-Lipschitz and $1/L$-cocoercive with $L = \\|W\\|^2$
(Baillon–Haddad), so the explicit gradient step of size $h \\le 2/L$ is
1-Lipschitz: $\\|\\Delta x - h\\Delta g\\|^2 \\le \\|\\Delta x\\|^2 -
(2h/L - h^2)\\|\\Delta g\\|^2$. Any *over*-estimate of $\\|W\\|$ keeps the
layer 1-Lipschitz; an under-estimate does not.

**How $\\|W\\|$ is obtained.**

- **Training**: power iteration with a persistent vector `u` (a
  non-trainable float32 weight, written only when `training` is true, its
  gradient stopped), as in the paper: an estimate from below, so a
  training-mode layer can exceed 1 by the estimation error.
- **Inference**: a *guaranteed* upper bound. The host computes it in
  float64 (`refresh_inference_norm()`: the exact SVD for `CPLDense`, the
  conv bound of `keras_lipschitz.bounds` on the layer's real input size for
  `CPLConv2D`) and stores it, rounded up to float32, in the non-trainable
  weight `inference_norm`, together with a copy of the raw kernel it was
  computed for (`inference_norm_kernel`). Inside `call` (so inside
  compiled `predict` too, on every backend) the layer uses

  $$s = \\texttt{inference\\_norm} + \\rho(W - W_{ref}),$$

  with $\\rho$ a cheap size-free bound on the norm of the difference
  operator (its Frobenius norm for a matrix, the sum of the taps'
  Frobenius norms for a convolution). By the triangle inequality
  $s \\ge \\|W\\|$ whatever happened to the weights since the last refresh
  (an optimizer step, `set_weights`, a load): a stale value is never below
  the current norm. When nothing changed, $\\rho = 0$ exactly and $s$ is
  the tight host bound. A stale $s$ is sound but loose, so refresh after
  training: call `refresh_inference_norm()` on the layer, or pass
  `RefreshInferenceNorms()` to `fit`, `evaluate` and `predict`. Layers are
  refreshed when built.

`lipschitz_upper_bound()` is guaranteed whatever the state of the weights:
with $B$ a float64 upper bound of $\\|W\\|$ and $s$ the normalization the
inference-mode layer uses, the layer's Jacobians are $I - hW^TDW$ with
$0 \\preceq D \\preceq I$ and $h = 2/(s^2 + \\varepsilon)$, whose
eigenvalues lie in $[1 - hB^2, 1]$, so the layer is
$\\max(1, hB^2 - 1)$-Lipschitz. It is exactly 1 whenever $s \\ge B$.

The weights follow the official code: kernel
$\\mathcal{U}(\\pm 1/\\sqrt{\\mathrm{fan_{in}}})$ (PyTorch's Kaiming-uniform
with $a = \\sqrt5$), bias $\\mathcal{U}(\\pm 1/\\sqrt{\\mathrm{fan_{in}}})$,
$\\varepsilon = 10^{-4}$ added to $s^2$, one power-iteration step per
training call.

Numerically the layer computes $y = x - 2\\bar W^T\\sigma(\\bar Wx +
b/\\sqrt{s^2+\\varepsilon})$ with $\\bar W = W/\\sqrt{s^2+\\varepsilon}$,
the same function (ReLU is positively homogeneous) with a kernel of norm
at most 1, so that mixed precision does not overflow.
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

# Power iterations (dense) or Lanczos steps (conv) run at build so that `u`
# starts converged. Only the training estimate depends on it; inference
# uses the host bound.
INITIAL_POWER_ITERATIONS = 100
INITIAL_LANCZOS_STEPS = 50
# Official value of the term added to s^2.
DEFAULT_EPSILON = 1e-4
# Relative slack on host float64 bounds before rounding them up to float32
# (the SVD and eigensolvers are backward stable to ~1e-15).
HOST_BOUND_SLACK = 1e-9
# When the weights changed since the last refresh, the host recomputes the
# in-graph float32 normalization in float64; the graph's value can be lower
# by its rounding, which this relative margin covers (float32 reductions
# are tree sums, error ~ log2(n) * 6e-8).
STALE_ROUNDING_MARGIN = 1e-5


def _validate_epsilon(value):
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float, np.floating, np.integer))
        or not 0.0 <= float(value) < float("inf")
    ):
        raise ValueError(
            "`epsilon` must be a finite number >= 0. "
            f"Received: epsilon={value!r}"
        )
    return float(value)


def _validate_odd_kernel_size(kernel_size):
    sizes = _validation.validate_int_tuple("kernel_size", kernel_size)
    if any(k % 2 == 0 for k in sizes):
        raise ValueError(
            "`kernel_size` must be odd (an odd int or a tuple of 2 odd "
            "ints): zero 'same' padding is then symmetric, so the conv and "
            "its adjoint both map the input grid to itself. "
            f"Received: kernel_size={kernel_size!r}"
        )
    return sizes


def _round_up_to_float32(value):
    """The smallest float32 that is >= `value` (a finite float)."""
    rounded = np.float32(value)
    if float(rounded) < value:
        rounded = np.nextafter(rounded, np.float32(np.inf))
    return rounded


def _official_kernel_initializer():
    """PyTorch's `kaiming_uniform_(a=sqrt(5))`: U(+-1/sqrt(fan_in))."""
    return keras.initializers.VarianceScaling(
        scale=1.0 / 3.0, mode="fan_in", distribution="uniform"
    )


class _ConvexPotentialLayer(keras.layers.Layer):
    """Weights, state, normalization and certification shared by CPLs.

    Subclasses define `_forward(x, kernel)` (the operator $W$),
    `_adjoint(y, kernel)` ($W^T$), `_estimate_norm(kernel, u, iterations)`
    (power iteration), `_drift_bound(delta)` (in-graph, size-free bound on
    the norm of the operator of a kernel change), `_host_drift_bound(delta)`
    (the same in float64 NumPy), `_host_norm_bound(kernel)` (guaranteed
    float64 bound) and `_reshape_bias(bias)`.
    """

    def __init__(
        self,
        power_iterations=1,
        epsilon=DEFAULT_EPSILON,
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
        self.power_iterations = _validation.validate_positive_int(
            "power_iterations", power_iterations
        )
        self.epsilon = _validate_epsilon(epsilon)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(
            kernel_initializer
            if kernel_initializer is not None
            else _official_kernel_initializer()
        )
        # None: the official U(+-1/sqrt(fan_in)), resolved at build.
        self.bias_initializer = (
            None
            if bias_initializer is None
            else keras.initializers.get(bias_initializer)
        )
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.kernel_constraint = keras.constraints.get(kernel_constraint)
        self.bias_constraint = keras.constraints.get(bias_constraint)
        # Last guaranteed host bound, keyed by the exact float32 kernel: a
        # refresh followed by `lipschitz_upper_bound` computes it once.
        self._norm_bound_key = None
        self._norm_bound_value = None

    # ------------------------------------------------------------ weights
    def _add_weights(self, kernel_shape, u_shape):
        self.kernel = self.add_weight(
            name="kernel",
            shape=kernel_shape,
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
            autocast=False,
        )
        self.bias = None
        if self.use_bias:
            bias_initializer = self.bias_initializer
            if bias_initializer is None:
                limit = 1.0 / math.sqrt(self._fan_in(kernel_shape))
                bias_initializer = keras.initializers.RandomUniform(
                    -limit, limit
                )
            self.bias = self.add_weight(
                name="bias",
                shape=(kernel_shape[-1],),
                initializer=bias_initializer,
                regularizer=self.bias_regularizer,
                constraint=self.bias_constraint,
                autocast=False,
            )
        self.u = self.add_weight(
            name="u",
            shape=u_shape,
            initializer=keras.initializers.RandomNormal(seed=0),
            trainable=False,
            autocast=False,
        )
        self.inference_norm = self.add_weight(
            name="inference_norm",
            shape=(),
            initializer="zeros",
            trainable=False,
            autocast=False,
        )
        # Zeros with a zero norm is a consistent (sound) state: the drift
        # term is then a bound on the whole kernel.
        self.inference_norm_kernel = self.add_weight(
            name="inference_norm_kernel",
            shape=kernel_shape,
            initializer="zeros",
            trainable=False,
            autocast=False,
        )

    def _fan_in(self, kernel_shape):
        return int(np.prod(kernel_shape[:-1]))

    # ---------------------------------------------------------- the maths
    def _normalization(self, kernel, training):
        """$s$: the estimate of $\\|W\\|$ (training) or a bound (inference)."""
        if training:
            u, sigma = self._estimate_norm(
                kernel, ops.convert_to_tensor(self.u), self.power_iterations
            )
            self.u.assign(ops.cast(u, self.u.dtype))
            return sigma
        reference = ops.convert_to_tensor(self.inference_norm_kernel)
        drift = self._drift_bound(ops.stop_gradient(kernel) - reference)
        return ops.convert_to_tensor(self.inference_norm) + drift

    def _normalized_weights(self, training):
        """$(W, b) / \\sqrt{s^2 + \\varepsilon}$, in float32."""
        kernel = ops.cast(self.kernel, "float32")
        sigma = self._normalization(kernel, training)
        scale = ops.rsqrt(ops.square(sigma) + self.epsilon)
        bias = None
        if self.bias is not None:
            bias = ops.cast(self.bias, "float32") * scale
        return kernel * scale, bias

    def call(self, inputs, training=None):
        self._check_input(inputs)
        kernel, bias = self._normalized_weights(training)
        kernel = ops.cast(kernel, inputs.dtype)
        hidden = self._forward(inputs, kernel)
        if bias is not None:
            # The backend's own broadcasting (`+`), not `ops.add`: on
            # TensorFlow, `ops.add` turns a (1, C, 1, 1) bias into
            # `tf.nn.bias_add` with data_format "NHWC" whenever the last
            # axis also has C entries (width == C), adding it on the wrong
            # axis (Keras 3.15).
            hidden = hidden + self._reshape_bias(
                ops.cast(bias, inputs.dtype)
            )
        # 2 W^T relu(.) with the factor 2 folded into the (small) kernel.
        return ops.subtract(
            inputs, self._adjoint(ops.relu(hidden), kernel * 2.0)
        )

    def _check_input(self, inputs):
        """Raises for inputs the normalization is not valid for."""

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    # ---------------------------------------------------- host-side bound
    def _kernel_numpy(self):
        return np.asarray(ops.convert_to_numpy(self.kernel), np.float32)

    def kernel_norm_upper_bound(self):
        """Guaranteed float64 upper bound on $\\|W\\|_2$ for the raw kernel.

        `CPLDense`: the exact SVD norm; `CPLConv2D`: the operator norm of
        the zero-padded convolution on the built input size
        (`keras_lipschitz.bounds.conv_spectral_norm_upper_bound`). Cached
        for an unchanged kernel.

        Returns:
            A Python float.
        """
        self._require_built()
        return self._kernel_norm_bound()

    def _kernel_norm_bound(self):
        kernel = self._kernel_numpy()
        key = hashlib.sha256(np.ascontiguousarray(kernel).tobytes()).digest()
        if key != self._norm_bound_key:
            self._norm_bound_value = float(
                self._host_norm_bound(kernel.astype(np.float64))
            )
            self._norm_bound_key = key
        return self._norm_bound_value

    def refresh_inference_norm(self):
        """Recomputes the inference normalization from the current kernel.

        Stores the guaranteed float64 bound `kernel_norm_upper_bound()`,
        rounded up to float32, in `inference_norm`, and the current raw
        kernel in `inference_norm_kernel`. Afterwards the inference-mode
        layer uses exactly that bound. Call it on the host (not inside a
        compiled function), e.g. after training; `RefreshInferenceNorms`
        does it around `fit`, `evaluate` and `predict`.

        Returns:
            The stored normalization, a Python float.
        """
        self._require_built()
        return self._refresh()

    def _refresh(self):
        kernel = self._kernel_numpy()
        value = self._kernel_norm_bound() * (1.0 + HOST_BOUND_SLACK)
        stored = _round_up_to_float32(value)
        self.inference_norm_kernel.assign(kernel)
        self.inference_norm.assign(stored)
        return float(stored)

    def _host_normalization(self):
        """A float64 lower bound on the $s$ the inference-mode graph uses."""
        kernel = self._kernel_numpy()
        reference = np.asarray(
            ops.convert_to_numpy(self.inference_norm_kernel), np.float32
        )
        stored = float(ops.convert_to_numpy(self.inference_norm))
        if np.array_equal(kernel, reference):
            # The graph adds an exact 0 to the stored value.
            return stored
        drift = self._host_drift_bound(
            kernel.astype(np.float64) - reference.astype(np.float64)
        )
        return (stored + drift) * (1.0 - STALE_ROUNDING_MARGIN)

    def lipschitz_upper_bound(self):
        """Guaranteed upper bound on the layer's ℓ2 Lipschitz constant.

        $\\max(1, hB^2 - 1)$ with $B$ = `kernel_norm_upper_bound()` and
        $h = 2/(s^2 + \\varepsilon)$ for the normalization $s$ the layer
        uses in inference mode (see the module docstring): 1.0 whenever
        $s \\ge B$, which holds after a refresh and, by construction, after
        any change of the weights. Computed on the host in float64; it does
        not depend on a power-iteration estimate and holds whatever the
        state of the weights. Valid in inference mode only.

        Returns:
            A Python float.
        """
        self._require_built()
        bound = self.kernel_norm_upper_bound()
        normalization = self._host_normalization()
        if not (math.isfinite(bound) and math.isfinite(normalization)):
            return float("inf")
        denominator = normalization * normalization + self.epsilon
        if denominator <= 0.0:
            return float("inf") if bound > 0.0 else 1.0
        return max(1.0, 2.0 * bound * bound / denominator - 1.0)

    def _require_built(self):
        if not self.built:
            raise ValueError(
                f"{type(self).__name__} must be built before its bound can "
                "be computed."
            )

    def get_config(self):
        config = super().get_config()

        def serialize(module, obj):
            return None if obj is None else module.serialize(obj)

        config.update(
            {
                "power_iterations": self.power_iterations,
                "epsilon": self.epsilon,
                "use_bias": self.use_bias,
                "kernel_initializer": serialize(
                    keras.initializers, self.kernel_initializer
                ),
                "bias_initializer": serialize(
                    keras.initializers, self.bias_initializer
                ),
                "kernel_regularizer": serialize(
                    keras.regularizers, self.kernel_regularizer
                ),
                "bias_regularizer": serialize(
                    keras.regularizers, self.bias_regularizer
                ),
                "kernel_constraint": serialize(
                    keras.constraints, self.kernel_constraint
                ),
                "bias_constraint": serialize(
                    keras.constraints, self.bias_constraint
                ),
            }
        )
        return config


@keras_lipschitz_export
class CPLDense(_ConvexPotentialLayer):
    """Dense convex potential layer (Meunier et al., ICML 2022).

    With the raw Keras kernel $W \\in \\mathbb{R}^{d \\times m}$ ($d$ the
    input size, $m$ = `inner_units`), row-vector inputs and ReLU $\\sigma$,

    $$y = x - \\frac{2}{\\|W\\|_2^2 + \\varepsilon}\\,
      \\sigma(xW + b)\\,W^T.$$

    The output has the input's shape. The layer is 1-Lipschitz whenever the
    norm it uses is at least $\\|W\\|_2$: in training it is a power-iteration
    estimate (persistent vector `u`, `power_iterations` steps per call),
    at inference the exact float64 SVD norm stored by
    `refresh_inference_norm()` plus the Frobenius norm of any change of
    the kernel since then, a guaranteed bound (see
    `keras_lipschitz.layers.cpl`).

    Args:
        inner_units: positive int $m$, the width of the hidden layer
            $\\sigma(xW + b)$ (2048 in the official CIFAR-10 script).
        power_iterations: int >= 1, power-iteration steps per training call.
        epsilon: float >= 0 added to the squared norm (official: 1e-4).
        use_bias: bool.
        kernel_initializer: None (default) for the official
            $\\mathcal{U}(\\pm 1/\\sqrt d)$, or a Keras initializer.
        bias_initializer: None (default) for the official
            $\\mathcal{U}(\\pm 1/\\sqrt d)$, or a Keras initializer.
        kernel_regularizer, bias_regularizer: optional regularizers.
        kernel_constraint, bias_constraint: optional constraints.

    Input shape:
        `(..., d)`.

    Output shape:
        `(..., d)`.

    Example:

    >>> layer = CPLDense(16)
    >>> y = layer(np.ones((2, 8), "float32"))
    >>> tuple(y.shape)
    (2, 8)
    >>> layer.lipschitz_upper_bound()
    1.0
    """

    def __init__(self, inner_units, **kwargs):
        super().__init__(**kwargs)
        self.inner_units = _validation.validate_positive_int(
            "inner_units", inner_units
        )
        self.input_spec = keras.layers.InputSpec(min_ndim=2)

    def build(self, input_shape):
        input_dim = input_shape[-1]
        if input_dim is None:
            raise ValueError(
                "CPLDense needs a known last input dimension. "
                f"Received: input_shape={input_shape}"
            )
        self._add_weights((input_dim, self.inner_units), (1, self.inner_units))
        u, _ = normalizers.power_iteration_dense(
            ops.cast(self.kernel, "float32"),
            ops.convert_to_tensor(self.u),
            INITIAL_POWER_ITERATIONS,
        )
        self.u.assign(ops.cast(u, self.u.dtype))
        self.input_spec = keras.layers.InputSpec(
            min_ndim=2, axes={-1: input_dim}
        )
        self._refresh()

    def _forward(self, x, kernel):
        return ops.matmul(x, kernel)

    def _adjoint(self, y, kernel):
        return ops.matmul(y, ops.transpose(kernel))

    def _reshape_bias(self, bias):
        return bias

    def _estimate_norm(self, kernel, u, iterations):
        return normalizers.power_iteration_dense(kernel, u, iterations)

    def _drift_bound(self, delta):
        # The Frobenius norm (>= the spectral norm), underflow-safe: a
        # matrix is a 1 x 1 conv kernel.
        return normalizers.conv_tap_norm_sum(
            ops.reshape(delta, (1, 1) + tuple(delta.shape))
        )

    def _host_drift_bound(self, delta):
        return float(np.linalg.norm(delta))

    def _host_norm_bound(self, kernel):
        return bounds.dense_spectral_norm(kernel)

    def get_config(self):
        config = super().get_config()
        config["inner_units"] = self.inner_units
        return config


@keras_lipschitz_export
class CPLConv2D(_ConvexPotentialLayer):
    """Convolutional convex potential layer (Meunier et al., ICML 2022).

    With $A_K$ the stride-1, zero "same"-padded convolution by the raw
    kernel $K$ of shape `(k_h, k_w, c, inner_channels)` (odd sizes), acting
    on inputs of the layer's built size $H \\times W \\times c$, and $A_K^T$
    its exact adjoint,

    $$y = x - \\frac{2}{\\|A_K\\|_2^2 + \\varepsilon}\\,
      A_K^T\\,\\sigma(A_Kx + b).$$

    Input and output have the same shape ($c$ channels); the hidden
    activation has `inner_channels` channels.

    - **Training**: $\\|A_K\\|$ is estimated by power iteration through
      `ops.conv` and `ops.conv_transpose` on a persistent vector `u` of the
      input shape (batch 1), `power_iterations` steps per call (the
      official code: one), updated only when `training` is true.
    - **Inference**: a guaranteed bound of the operator norm on the built
      size, computed on the host in float64 by
      `keras_lipschitz.bounds.conv_spectral_norm_upper_bound` (exact for
      small inputs, the padded-grid FFT bound otherwise) and stored by
      `refresh_inference_norm()`, plus $\\sum_{a,b}\\|\\Delta K[a,b]\\|_F$
      for any change $\\Delta K$ of the kernel since then (see
      `keras_lipschitz.layers.cpl`). The official code instead caches a
      100-step power-iteration estimate, which can be below the norm.

    The operator norm grows with the input size, so the spatial size must
    be known at build and larger inputs are refused (smaller ones are
    fine: their operator is a compression of the built one).

    Args:
        inner_channels: positive int, channels of the hidden activation
            (the official code's `--conv-size`, 5 by default, with 30
            input channels).
        kernel_size: odd int or tuple of 2 odd ints (default 3).
        data_format: `"channels_last"`, `"channels_first"` or None (the
            global image data format). The kernel layout is always
            `(k_h, k_w, c, inner_channels)`.
        power_iterations: int >= 1, power-iteration steps per training call.
        epsilon: float >= 0 added to the squared norm (official: 1e-4).
        use_bias: bool.
        kernel_initializer: None (default) for the official
            $\\mathcal{U}(\\pm 1/\\sqrt{k_hk_wc})$, or a Keras initializer.
        bias_initializer: None (default) for the official
            $\\mathcal{U}(\\pm 1/\\sqrt{k_hk_wc})$, or a Keras initializer.
        kernel_regularizer, bias_regularizer: optional regularizers.
        kernel_constraint, bias_constraint: optional constraints.

    Input shape:
        `(batch, H, W, c)` (channels_last) or `(batch, c, H, W)`, with
        `H`, `W` at most the built size.

    Output shape:
        The input shape.

    Example:

    >>> layer = CPLConv2D(6, 3)
    >>> y = layer(np.ones((2, 5, 5, 3), "float32"))
    >>> tuple(y.shape)
    (2, 5, 5, 3)
    >>> layer.lipschitz_upper_bound()
    1.0
    """

    def __init__(
        self, inner_channels, kernel_size=3, data_format=None, **kwargs
    ):
        super().__init__(**kwargs)
        self.inner_channels = _validation.validate_positive_int(
            "inner_channels", inner_channels
        )
        self.kernel_size = _validate_odd_kernel_size(kernel_size)
        self.data_format = _validation.validate_data_format(data_format)
        self.built_spatial_shape = None
        self._output_padding = None
        self.input_spec = keras.layers.InputSpec(ndim=4)

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
                "CPLConv2D expects inputs of rank 4. "
                f"Received: input_shape={input_shape}"
            )
        channels = input_shape[self._channel_axis]
        spatial = self._spatial_shape(input_shape)
        if channels is None or any(d is None for d in spatial):
            raise ValueError(
                "CPLConv2D needs known channel and spatial dimensions at "
                "build: the norm of a zero-padded convolution grows with "
                "the input size, so the normalization is only valid up to "
                "the size it was computed for. Build the layer with the "
                "largest input size it will see. "
                f"Received: input_shape={input_shape}"
            )
        self.built_spatial_shape = spatial
        self._output_padding = normalizers.conv_transpose_output_padding(
            spatial, self.kernel_size, (1, 1), "same"
        )
        if self.data_format == "channels_last":
            u_shape = (1, *spatial, channels)
        else:
            u_shape = (1, channels, *spatial)
        self._add_weights(
            self.kernel_size + (channels, self.inner_channels), u_shape
        )
        # Start the training estimate from a converged vector: Lanczos on
        # A^T A (power iteration converges slowly on the clustered spectra
        # of convolutions).
        kernel = ops.stop_gradient(ops.cast(self.kernel, "float32"))
        u = normalizers.lanczos_top_vector(
            lambda x: self._adjoint(self._forward(x, kernel), kernel),
            ops.convert_to_tensor(self.u),
            INITIAL_LANCZOS_STEPS,
        )
        self.u.assign(ops.cast(u, self.u.dtype))
        self.input_spec = keras.layers.InputSpec(
            ndim=4, axes={self._channel_axis: channels}
        )
        self._refresh()

    def _check_input(self, inputs):
        built = self.built_spatial_shape
        spatial = self._spatial_shape(tuple(inputs.shape))
        for n, b in zip(spatial, built):
            if n is not None and n > b:
                raise ValueError(
                    f"CPLConv2D was built for spatial size {built} and its "
                    "normalization is only valid for inputs up to that "
                    "size: the norm of a zero-padded convolution grows with "
                    "the input size. Build the layer with the largest input "
                    f"size it will see. Received input spatial size {spatial}."
                )

    def _forward(self, x, kernel):
        return ops.conv(
            x, kernel, strides=1, padding="same", data_format=self.data_format
        )

    def _adjoint(self, y, kernel):
        return ops.conv_transpose(
            y,
            kernel,
            strides=1,
            padding="same",
            output_padding=self._output_padding,
            data_format=self.data_format,
        )

    def _reshape_bias(self, bias):
        if self.data_format == "channels_first":
            return ops.reshape(bias, (1, self.inner_channels, 1, 1))
        return bias

    def _estimate_norm(self, kernel, u, iterations):
        return normalizers.power_iteration_conv(
            kernel,
            u,
            iterations,
            strides=(1, 1),
            padding="same",
            data_format=self.data_format,
            output_padding=self._output_padding,
        )

    def _drift_bound(self, delta):
        return normalizers.conv_tap_norm_sum(delta)

    def _host_drift_bound(self, delta):
        return float(np.sum(np.linalg.norm(delta, axis=(2, 3))))

    def _host_norm_bound(self, kernel):
        return bounds.conv_spectral_norm_upper_bound(
            kernel, self.built_spatial_shape, (1, 1), "same"
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "inner_channels": self.inner_channels,
                "kernel_size": self.kernel_size,
                "data_format": self.data_format,
            }
        )
        return config


@keras_lipschitz_export
class RefreshInferenceNorms(keras.callbacks.Callback):
    """Refreshes the inference normalization of the model's CPL layers.

    Calls `refresh_inference_norm()` on every layer of the model (nested
    models included) that has it, before each evaluation (`evaluate`, and
    the validation inside `fit`), before `predict`, and at the end of
    `fit`. Without it, a `CPLDense`/`CPLConv2D` whose weights changed since
    its last refresh stays 1-Lipschitz at inference but uses a looser
    normalization (a smaller step), which lowers its accuracy. Each refresh
    is a host computation (an SVD, or a conv bound on the layer's input
    size), skipped for a kernel whose bound is cached.

    Example:

    >>> import keras
    >>> model = keras.Sequential([keras.Input((4,)), CPLDense(8)])
    >>> model.compile("sgd", "mse")
    >>> x = np.ones((8, 4), "float32")
    >>> _ = model.fit(x, x, verbose=0, callbacks=[RefreshInferenceNorms()])
    >>> layer = model.layers[0]
    >>> bool(np.array_equal(keras.ops.convert_to_numpy(layer.kernel),
    ...      keras.ops.convert_to_numpy(layer.inference_norm_kernel)))
    True
    """

    def _refresh(self):
        # Looked up at every event: on JAX, `fit` holds the state outside
        # the model between synchronizations, so nothing is cached.
        for layer in _layers_with_inference_norm(self.model):
            layer.refresh_inference_norm()

    def on_test_begin(self, logs=None):
        self._refresh()

    def on_predict_begin(self, logs=None):
        self._refresh()

    def on_train_end(self, logs=None):
        self._refresh()

    def get_config(self):
        """No arguments (callbacks are not saved with models)."""
        return {}


def _layers_with_inference_norm(model):
    found = []
    for layer in getattr(model, "layers", ()):
        if hasattr(layer, "refresh_inference_norm"):
            found.append(layer)
        elif isinstance(layer, keras.Model):
            found.extend(_layers_with_inference_norm(layer))
    return found
