"""Lipschitz-constrained 2-D convolutions.

As for the dense layers, each layer keeps a raw, unconstrained trainable
`kernel` of Keras layout `(k_h, k_w, c_in, c_out)` and derives the
constrained kernel $\\bar K$ from it inside `call`: gradients flow through
the normalization and nothing is ever assigned to a trainable weight. Only
non-trainable state (the power-iteration vector `u`) is written, and only
when `training` is true.

Two constructions are provided:

- `SpectralConv2D` normalizes by the norm of the convolution *as an operator
  on the layer's real input size, padding and stride*, estimated by power
  iteration (training) or Lanczos (inference) through `ops.conv` and its
  exact adjoint `ops.conv_transpose`. It is tight: the layer's Lipschitz
  constant is `lipschitz` (up to the estimation error).
- `BjorckConv2D` orthonormalizes the reshaped kernel (RKO) and applies the
  worst-case correction factor. It is size-independent and sound, but not
  tight (most singular values of the operator are below 1).

Both report a *guaranteed* bound with `lipschitz_upper_bound()`, computed on
the host in float64 from the inference-mode kernel
(`keras_lipschitz.bounds.conv_spectral_norm_upper_bound`).
"""

import math

import keras
import numpy as np
from keras import ops

from keras_lipschitz import bounds
from keras_lipschitz import normalizers
from keras_lipschitz.api_export import keras_lipschitz_export
from keras_lipschitz.layers import _kernel_arguments
from keras_lipschitz.layers import _validation

# Power iterations run at build so that the stored vector starts converged
# (BjorckConv2D, on the reshaped kernel).
INITIAL_POWER_ITERATIONS = 100
# Lanczos cycles of `eval_power_iterations` steps run at build
# (SpectralConv2D, on the conv operator).
INITIAL_LANCZOS_CYCLES = 2



class _LipschitzConv2D(keras.layers.Layer):
    """Shared machinery of the conv layers: weights, bias, shapes, config.

    Subclasses implement `_build_state(input_shape)` (non-trainable state)
    and `_constrain(kernel, training)`, which maps the raw float32 kernel to
    the constrained one (before the `lipschitz` factor).
    """

    # Whether the operator norm, hence the normalization, depends on the
    # input size (then the spatial dimensions must be known at build).
    _needs_static_spatial_shape = False

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
        kernel_initializer="orthogonal",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        power_iterations=1,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = _validation.validate_positive_int("filters", filters)
        self.kernel_size = _validation.validate_int_tuple(
            "kernel_size", kernel_size
        )
        self.strides = _validation.validate_int_tuple("strides", strides)
        self.padding = _validation.validate_choice(
            "padding", padding, {"same", "valid"}
        )
        self.data_format = _validation.validate_data_format(data_format)
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
        self.power_iterations = _validation.validate_positive_int(
            "power_iterations", power_iterations
        )
        # Spatial size the layer was built for (None entries: unknown).
        self.built_spatial_shape = None
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
        spatial = self._spatial_shape(input_shape)
        if self._needs_static_spatial_shape and any(d is None for d in spatial):
            raise ValueError(
                f"{type(self).__name__} needs known spatial dimensions at "
                "build: the operator norm of a zero-padded convolution "
                "depends on the input size (it grows with it), so the "
                "normalization is only valid up to the size it was computed "
                "for. Build the layer with the largest input size it will "
                f"see. Received: input_shape={input_shape}"
            )
        if self.padding == "valid":
            for n, k in zip(spatial, self.kernel_size):
                if n is not None and n < k:
                    raise ValueError(
                        "With padding='valid' the spatial input size must be "
                        f">= kernel_size={self.kernel_size}. "
                        f"Received: input_shape={input_shape}"
                    )
        self.built_spatial_shape = spatial
        _kernel_arguments.add_kernel_and_bias(
            self, self.kernel_size + (channels, self.filters)
        )
        self._build_state(input_shape)
        self.input_spec = keras.layers.InputSpec(
            ndim=4, axes={self._channel_axis: channels}
        )

    def _build_state(self, input_shape):
        """Creates the layer's non-trainable state, if any."""

    def compute_output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        spatial = []
        for n, k, s in zip(
            self._spatial_shape(input_shape), self.kernel_size, self.strides
        ):
            spatial.append(
                None if n is None else bounds.conv_output_size(
                    n, k, s, self.padding
                )
            )
        if self.data_format == "channels_last":
            return (input_shape[0], *spatial, self.filters)
        return (input_shape[0], self.filters, *spatial)

    def _check_input_size(self, inputs):
        built = self.built_spatial_shape
        if built is None:
            return
        for n, b in zip(self._spatial_shape(tuple(inputs.shape)), built):
            if n is not None and b is not None and n > b:
                raise ValueError(
                    f"{type(self).__name__} was built for spatial size "
                    f"{built} and its normalization (and "
                    "`lipschitz_upper_bound`) is only valid for inputs up to "
                    "that size: the norm of a zero-padded convolution grows "
                    "with the input size. Build the layer with the largest "
                    "input size it will see. Received input spatial size "
                    f"{self._spatial_shape(tuple(inputs.shape))}."
                )

    # ------------------------------------------------------------- the maths
    def _constrain(self, kernel, training):
        raise NotImplementedError

    def _constrained_kernel(self, training):
        kernel = ops.cast(self.kernel, "float32")
        return _kernel_arguments.scale_by_lipschitz(
            self, self._constrain(kernel, training)
        )

    def call(self, inputs, training=None):
        self._check_input_size(inputs)
        kernel = ops.cast(self._constrained_kernel(training), inputs.dtype)
        outputs = ops.conv(
            inputs,
            kernel,
            strides=self.strides,
            padding=self.padding,
            data_format=self.data_format,
        )
        if self.bias is not None:
            outputs = _kernel_arguments.add_channel_bias(
                outputs, self.bias, self.data_format
            )
        return self.activation(outputs)

    # ------------------------------------------------------ certification
    def effective_kernel(self):
        """The constrained kernel used in inference mode, as a NumPy array.

        Always of Keras layout `(k_h, k_w, c_in, c_out)`, whatever the
        `data_format`, and including the `lipschitz` factor: this is what an
        export copies into a plain `keras.layers.Conv2D`.
        """
        return ops.convert_to_numpy(self._constrained_kernel(training=False))

    def lipschitz_upper_bound(self, input_size=None):
        """Guaranteed upper bound on the layer's ℓ2 Lipschitz constant.

        Computed on the host in float64 from the inference-mode kernel
        (`effective_kernel()`) by
        `keras_lipschitz.bounds.conv_spectral_norm_upper_bound` on the
        built input size, padding and stride (the exact operator norm for
        small inputs, the FFT bound of Sedghi et al. (ICLR 2019) on a padded
        grid otherwise), times the activation's Lipschitz constant. It holds
        whatever the state of training or of the power iteration, for every
        input up to that size. It can be slightly above `lipschitz`.

        Args:
            input_size: optional `(h, w)`; defaults to the built spatial
                size. When neither is known (a `BjorckConv2D` built with
                `None` spatial dimensions), the size-independent bound
                $\\min(\\sqrt{\\nu}\\,\\|R\\|,
                \\sqrt{k_hk_w}\\min_i\\|R_i\\|)$ is used (reshaped kernel and
                "Fantastic Four" bounds, valid for every input size).

        Returns:
            A Python float.
        """
        if not self.built:
            raise ValueError(
                f"{type(self).__name__} must be built before its bound can "
                "be computed."
            )
        kernel = np.asarray(self.effective_kernel(), dtype=np.float64)
        if input_size is None:
            input_size = self.built_spatial_shape
        if input_size is None or any(d is None for d in input_size):
            bound = min(
                bounds.conv_reshaped_upper_bound(kernel),
                _reshaped_kernel_bound(kernel, self.strides),
            )
        else:
            bound = bounds.conv_spectral_norm_upper_bound(
                kernel, tuple(input_size), self.strides, self.padding
            )
        return bound * self._activation_lipschitz

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "kernel_size": self.kernel_size,
                "strides": self.strides,
                "padding": self.padding,
                "data_format": self.data_format,
                "power_iterations": self.power_iterations,
            }
        )
        config.update(_kernel_arguments.kernel_arguments_config(self))
        return config


def _reshaped_kernel_bound(kernel, strides):
    """$\\sqrt{\\nu}\\,\\|R\\|_2$ (exact SVD): sound for any size (§5)."""
    k_h, k_w, c_in, c_out = kernel.shape
    matrix = kernel.reshape(k_h * k_w * c_in, c_out)
    factor = normalizers.rko_correction_factor((k_h, k_w), strides)
    return bounds.dense_spectral_norm(matrix) / factor


@keras_lipschitz_export
class SpectralConv2D(_LipschitzConv2D):
    """2-D convolution normalized by its operator norm on the input size.

    With $A_K$ the zero-padded, strided convolution by the raw kernel $K$
    acting on inputs of the layer's built size $H \\times W$,

    $$y = \\phi\\Big(\\mathrm{conv}\\big(x,\\, L\\,K/\\hat\\sigma(A_K)\\big)
      + b\\Big),$$

    where $L$ is `lipschitz` and $\\hat\\sigma(A_K)$ estimates
    $\\|A_K\\|_2$ by power iteration through the operator and its adjoint
    (Miyato et al., "Spectral Normalization for Generative Adversarial
    Networks", ICLR 2018, applied to the conv operator itself rather than to
    a reshaped kernel):

    $$v \\leftarrow A_Ku/\\|A_Ku\\|,\\quad
      u \\leftarrow A_K^Tv/\\|A_K^Tv\\|,\\quad \\hat\\sigma = \\|A_Ku\\|,$$

    with $A_K$ = `ops.conv` and $A_K^T$ = `ops.conv_transpose` (same kernel,
    strides and padding, with the `output_padding` that makes it the exact
    adjoint). The vector `u` has the input shape with batch size 1; it is a
    non-trainable float32 weight, warm-started across steps, written only
    when `training` is true, with its gradient stopped.

    - **Training**: `power_iterations` steps per call (differentiable
      through $\\hat\\sigma$ with `u` held constant, as in Miyato et al.);
      `u` is updated.
    - **Inference**: `eval_power_iterations` steps of Lanczos with full
      reorthogonalization on $A_K^TA_K$, started from the stored `u`, which
      is *not* written. The top Ritz vector $x$ gives
      $\\hat\\sigma = \\|A_Kx\\|$. The Krylov space contains the power
      iterates of `u`, so this is never worse than power iteration with as
      many operator applications, and it is much better on the clustered
      spectra of convolutions: from a stale `u` after large weight changes,
      power iteration (30 steps) left errors up to 1e-1 where Lanczos
      (50 steps) left 3e-4. It keeps `eval_power_iterations` vectors of the
      input size in memory.
    - **Build**: two Lanczos cycles from a random vector, so `u` starts
      converged.

    Because the norm is that of the real operator (padding, stride and
    size included), the layer's Lipschitz constant is `lipschitz`, not a
    loose upper bound of it. Any unit vector gives
    $\\|A_Kx\\| \\le \\|A_K\\|$, so the estimate can only *under*-estimate
    the norm and the constant can exceed `lipschitz` by the (small)
    remaining error; `lipschitz_upper_bound()` gives the guaranteed value,
    computed in float64 (the exact operator norm for small inputs, the FFT
    bound of Sedghi, Gupta, Long, "The Singular Values of Convolutional
    Layers", ICLR 2019, on a padded grid otherwise). Certify with that
    value, not with `lipschitz`.

    The norm of a zero-padded convolution grows with the input size, so
    the layer needs static spatial dimensions at build and refuses larger
    inputs; smaller inputs are fine (their operator is a compression of the
    built one).

    Args:
        filters: positive int, number of output channels.
        kernel_size: int or tuple of 2 ints (odd or even).
        strides: int or tuple of 2 ints.
        padding: `"same"` or `"valid"` (zero padding, Keras convention).
        data_format: `"channels_last"`, `"channels_first"` or None (the
            global image data format). The kernel layout is always
            `(k_h, k_w, c_in, c_out)`.
        lipschitz: positive float, the layer's Lipschitz constant (before
            the activation).
        activation: None or a Keras activation with a known Lipschitz
            constant (`relu`, `tanh`, ...).
        use_bias: bool.
        kernel_initializer: initializer of the raw kernel (default
            `"orthogonal"`).
        bias_initializer: initializer of the bias.
        kernel_regularizer, bias_regularizer: optional regularizers.
        kernel_constraint, bias_constraint: optional constraints.
        power_iterations: int >= 1, power-iteration steps per training call.
        eval_power_iterations: int >= 1, Lanczos steps (operator
            applications, from the stored `u`, without writing it) per
            inference call.

    Input shape:
        4-D tensor `(batch, H, W, c_in)` (channels_last) or
        `(batch, c_in, H, W)` (channels_first), with `H`, `W` at most the
        built size.

    Output shape:
        `(batch, H', W', filters)` or `(batch, filters, H', W')`, with
        `H' = ceil(H / s_h)` ("same") or `floor((H - k_h) / s_h) + 1`
        ("valid").

    Example:

    >>> layer = SpectralConv2D(4, 3, use_bias=False)
    >>> y = layer(np.ones((2, 8, 8, 3), "float32"))
    >>> tuple(y.shape)
    (2, 8, 8, 4)
    >>> bool(layer.lipschitz_upper_bound() <= 1.0 + 1e-3)
    True
    """

    _needs_static_spatial_shape = True

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
        kernel_initializer="orthogonal",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        power_iterations=1,
        eval_power_iterations=50,
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
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
            kernel_regularizer=kernel_regularizer,
            bias_regularizer=bias_regularizer,
            kernel_constraint=kernel_constraint,
            bias_constraint=bias_constraint,
            power_iterations=power_iterations,
            **kwargs,
        )
        self.eval_power_iterations = _validation.validate_positive_int(
            "eval_power_iterations", eval_power_iterations
        )
        self._output_padding = None

    def _build_state(self, input_shape):
        self._output_padding = normalizers.conv_transpose_output_padding(
            self.built_spatial_shape,
            self.kernel_size,
            self.strides,
            self.padding,
        )
        channels = input_shape[self._channel_axis]
        if self.data_format == "channels_last":
            u_shape = (1, *self.built_spatial_shape, channels)
        else:
            u_shape = (1, channels, *self.built_spatial_shape)
        self.u = self.add_weight(
            name="u",
            shape=u_shape,
            initializer=keras.initializers.RandomNormal(seed=0),
            trainable=False,
            autocast=False,
        )
        # Start from a converged vector so the first training steps are
        # already normalized by a tight estimate: restarted Lanczos, each
        # cycle from the previous Ritz vector (much more accurate than
        # power iteration with as many operator applications).
        kernel = ops.cast(self.kernel, "float32")
        u = ops.convert_to_tensor(self.u)
        for _ in range(INITIAL_LANCZOS_CYCLES):
            u = self._lanczos(kernel, u, self.eval_power_iterations)
        self.u.assign(ops.cast(u, self.u.dtype))

    def _forward(self, x, kernel):
        return ops.conv(
            x,
            kernel,
            strides=self.strides,
            padding=self.padding,
            data_format=self.data_format,
        )

    def _adjoint(self, y, kernel):
        return ops.conv_transpose(
            y,
            kernel,
            strides=self.strides,
            padding=self.padding,
            output_padding=self._output_padding,
            data_format=self.data_format,
        )

    def _power_iteration(self, kernel, u, iterations):
        return normalizers.power_iteration_conv(
            kernel,
            u,
            iterations,
            strides=self.strides,
            padding=self.padding,
            data_format=self.data_format,
            output_padding=self._output_padding,
        )

    def _lanczos(self, kernel, u, steps):
        kernel = ops.stop_gradient(kernel)
        return normalizers.lanczos_top_vector(
            lambda x: self._adjoint(self._forward(x, kernel), kernel),
            ops.stop_gradient(u),
            steps,
        )

    def _constrain(self, kernel, training):
        u = ops.convert_to_tensor(self.u)
        if training:
            u, sigma = self._power_iteration(
                kernel, u, self.power_iterations
            )
            self.u.assign(ops.cast(u, self.u.dtype))
        else:
            # Not written back: inference never mutates the layer.
            x = self._lanczos(kernel, u, self.eval_power_iterations)
            _, sigma = self._power_iteration(kernel, x, 0)
        # A multiply by the scalar 1/sigma has a cheaper gradient than a
        # kernel-sized division.
        return kernel * ops.reciprocal(sigma)

    def get_config(self):
        config = super().get_config()
        config["eval_power_iterations"] = self.eval_power_iterations
        return config


@keras_lipschitz_export
class BjorckConv2D(_LipschitzConv2D):
    """2-D convolution with an orthonormalized reshaped kernel (RKO).

    Reshaped kernel orthogonalization, as in deel-lip's `SpectralConv2D`
    (after Anil, Lucas, Grosse, "Sorting out Lipschitz function
    approximation", ICML 2019). With $R \\in \\mathbb{R}^{(k_hk_wc_{in})
    \\times c_{out}}$ the reshaped raw kernel,

    $$\\bar R = \\mathrm{Bjorck}\\big(R/\\hat\\sigma(R)\\big),\\qquad
      \\bar K = L\\,c\\,\\mathrm{reshape}^{-1}(\\bar R),\\qquad
      c = \\frac{1}{\\sqrt{\\lceil k_h/s_h\\rceil\\lceil k_w/s_w\\rceil}},$$

    where Björck is `bjorck_iterations` steps of
    $W \\leftarrow (1+\\beta)W - \\beta WW^TW$ (β = `bjorck_beta`), which
    drives every singular value of $\\bar R$ to 1.

    - **Training**: $\\hat\\sigma(R)$ comes from `power_iterations` steps of
      power iteration with a persistent vector `u` (shape `(1, c_out)`,
      non-trainable float32, written only in training, gradient stopped).
    - **Inference**: $\\hat\\sigma(R)$ is the Gram-iteration upper bound
      (Delattre et al., ICML 2023) with `eval_gram_iterations` squarings,
      so every singular value of $R/\\hat\\sigma$ is at most 1 and Björck
      keeps it there: $\\|\\bar R\\|_2 \\le 1$ without relying on
      convergence.

    **Why the factor c.** Each output pixel is a patch vector times
    $\\bar R$, so $\\|\\mathrm{conv}(x)\\|^2 \\le \\|\\bar R\\|^2
    \\sum_{patches}\\|patch\\|^2 \\le \\nu\\|x\\|^2$, with
    $\\nu = \\lceil k_h/s_h\\rceil\\lceil k_w/s_w\\rceil$ the largest number
    of patches containing one input pixel (any zero padding, any input
    size). $c = 1/\\sqrt\\nu$ therefore *guarantees* the layer is
    `lipschitz`-Lipschitz. deel-lip uses, at stride 1, the factor
    $1/\\sqrt{\\text{average patches per pixel}}$ on the input size, which is
    larger: with it the all-$1/3$ 3×3 kernel (reachable by RKO) gives an
    operator of norm up to 1.02. We use the worst case.

    The result is 1-Lipschitz but not orthogonal: most singular values of
    the operator are below `lipschitz`, and gradient-norm preservation is
    lost. The construction does not depend on the input size, so the
    layer can be built with `None` spatial dimensions. When built with a
    static size it refuses larger inputs, because `lipschitz_upper_bound()`
    (the same float64 bound as `SpectralConv2D`) is computed for that size.

    Args:
        filters: positive int, number of output channels.
        kernel_size: int or tuple of 2 ints (odd or even).
        strides: int or tuple of 2 ints.
        padding: `"same"` or `"valid"`.
        data_format: `"channels_last"`, `"channels_first"` or None.
        lipschitz: positive float.
        power_iterations: int >= 1, power-iteration steps per training call.
        bjorck_iterations: int >= 1, fixed number of Björck steps.
        bjorck_beta: float in (0, 0.5].
        eval_gram_iterations: int >= 1, Gram squarings at inference.
        **kwargs: the other `SpectralConv2D` arguments (activation, bias,
            initializers, regularizers, constraints, layer kwargs).

    Input shape:
        4-D tensor `(batch, H, W, c_in)` or `(batch, c_in, H, W)`.

    Output shape:
        `(batch, H', W', filters)` or `(batch, filters, H', W')`.

    Example:

    >>> layer = BjorckConv2D(4, 3)
    >>> y = layer(np.ones((1, 8, 8, 4), "float32"))
    >>> r = layer.effective_kernel().reshape(36, 4) * 3.0
    >>> s = np.linalg.svd(r, compute_uv=False)
    >>> bool(np.all(np.abs(s - 1.0) < 1e-2))
    True
    """

    def __init__(
        self,
        filters,
        kernel_size,
        strides=(1, 1),
        padding="same",
        data_format=None,
        lipschitz=1.0,
        power_iterations=1,
        bjorck_iterations=15,
        bjorck_beta=0.5,
        eval_gram_iterations=8,
        **kwargs,
    ):
        super().__init__(
            filters,
            kernel_size,
            strides=strides,
            padding=padding,
            data_format=data_format,
            lipschitz=lipschitz,
            power_iterations=power_iterations,
            **kwargs,
        )
        self.bjorck_iterations = _validation.validate_positive_int(
            "bjorck_iterations", bjorck_iterations
        )
        self.bjorck_beta = _validation.validate_bjorck_beta(bjorck_beta)
        self.eval_gram_iterations = _validation.validate_positive_int(
            "eval_gram_iterations", eval_gram_iterations
        )
        self.correction_factor = normalizers.rko_correction_factor(
            self.kernel_size, self.strides
        )

    def _reshape(self, kernel):
        k_h, k_w = self.kernel_size
        c_in = kernel.shape[2]
        return ops.reshape(kernel, (k_h * k_w * c_in, self.filters))

    def _build_state(self, input_shape):
        self.u = self.add_weight(
            name="u",
            shape=(1, self.filters),
            initializer=keras.initializers.RandomNormal(seed=0),
            trainable=False,
            autocast=False,
        )
        u, _ = normalizers.power_iteration_dense(
            self._reshape(ops.cast(self.kernel, "float32")),
            ops.convert_to_tensor(self.u),
            INITIAL_POWER_ITERATIONS,
        )
        self.u.assign(ops.cast(u, self.u.dtype))

    def _constrain(self, kernel, training):
        matrix = self._reshape(kernel)
        if training:
            u, sigma = normalizers.power_iteration_dense(
                matrix, ops.convert_to_tensor(self.u), self.power_iterations
            )
            self.u.assign(ops.cast(u, self.u.dtype))
        else:
            # A guaranteed upper bound: singular values start in [0, 1].
            sigma = normalizers.gram_spectral_norm_upper_bound(
                matrix, self.eval_gram_iterations
            )
        matrix = normalizers.bjorck_orthonormalize(
            matrix / sigma, self.bjorck_iterations, self.bjorck_beta
        )
        return ops.reshape(matrix, kernel.shape) * self.correction_factor

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "bjorck_iterations": self.bjorck_iterations,
                "bjorck_beta": self.bjorck_beta,
                "eval_gram_iterations": self.eval_gram_iterations,
            }
        )
        return config


@keras_lipschitz_export
class FrobeniusConv2D(_LipschitzConv2D):
    """2-D convolution normalized by the Frobenius norm of its kernel.

    $$\\bar K = \\frac{L\\,c\\,K}{\\|K\\|_F},\\qquad
      c = \\frac{1}{\\sqrt{\\lceil k_h/s_h\\rceil\\lceil k_w/s_w\\rceil}},$$

    with $L$ = `lipschitz`. With $R$ the reshaped kernel,
    $\\|\\mathrm{conv}_K\\| \\le \\sqrt\\nu\\,\\|R\\|_2 \\le
    \\sqrt\\nu\\,\\|K\\|_F$ ($\\nu = 1/c^2$ the largest number of patches
    containing one pixel, see `BjorckConv2D`), so the layer is
    $L$-Lipschitz for any input size, padding and stride. No iteration and
    no state: the normalization is exact. It is tight for a single output
    channel whose reshaped kernel is rank 1 (deel-lip's intended use: the
    last layer of a binary classifier); otherwise most of the norm budget
    is lost, and `BjorckConv2D` or `SpectralConv2D` are better.

    deel-lip's `FrobeniusConv2D` uses, at stride 1, the factor
    $1/\\sqrt{\\text{average patches per pixel}}$ (larger than $c$, and not
    a guarantee, see `BjorckConv2D`); weights ported from deel-lip give
    slightly smaller, sound, outputs here.

    Args:
        filters: positive int.
        kernel_size: int or tuple of 2 ints.
        strides: int or tuple of 2 ints.
        padding: `"same"` or `"valid"`.
        data_format: `"channels_last"`, `"channels_first"` or None.
        lipschitz: positive float.
        **kwargs: the other `SpectralConv2D` arguments (activation, bias,
            initializers, regularizers, constraints, layer kwargs).

    Example:

    >>> layer = FrobeniusConv2D(1, 3)
    >>> _ = layer(np.ones((1, 6, 6, 2), "float32"))
    >>> round(float(np.linalg.norm(layer.effective_kernel())), 4)  # 1/3
    0.3333
    >>> bool(layer.lipschitz_upper_bound() <= 1.0 + 1e-6)
    True
    """

    def __init__(
        self,
        filters,
        kernel_size,
        strides=(1, 1),
        padding="same",
        data_format=None,
        lipschitz=1.0,
        **kwargs,
    ):
        super().__init__(
            filters,
            kernel_size,
            strides=strides,
            padding=padding,
            data_format=data_format,
            lipschitz=lipschitz,
            **kwargs,
        )
        self.correction_factor = normalizers.rko_correction_factor(
            self.kernel_size, self.strides
        )

    def _constrain(self, kernel, training):
        norm = ops.sqrt(ops.sum(ops.square(kernel)))
        scale = self.correction_factor / ops.maximum(norm, normalizers.EPSILON)
        return kernel * scale

    def get_config(self):
        config = super().get_config()
        # No power iteration here.
        config.pop("power_iterations", None)
        return config


_PAD_MODES = ("same", "valid", "constant", "reflect", "symmetric", "circular")


def _pad_axis(x, axis, pad, mode):
    """Pads one spatial axis by `pad` on both sides, by slicing (exact)."""
    if pad == 0:
        return x
    size = x.shape[axis]

    def take(start, stop):
        index = [slice(None)] * len(x.shape)
        index[axis] = slice(start, stop)
        return x[tuple(index)]

    if mode == "constant":
        widths = [(0, 0)] * len(x.shape)
        widths[axis] = (pad, pad)
        return ops.pad(x, widths)
    if mode == "circular":
        before, after = take(size - pad, size), take(0, pad)
    elif mode == "reflect":
        before = ops.flip(take(1, pad + 1), axis=axis)
        after = ops.flip(take(size - pad - 1, size - 1), axis=axis)
    else:  # symmetric
        before = ops.flip(take(0, pad), axis=axis)
        after = ops.flip(take(size - pad, size), axis=axis)
    return ops.concatenate([before, x, after], axis=axis)


def _padding_matrix(size, pad, mode):
    """The 0/1 matrix `(size + 2 pad, size)` of one axis's padding."""
    rows = []
    for i in range(-pad, size + pad):
        row = np.zeros(size)
        if 0 <= i < size:
            row[i] = 1.0
        elif mode == "circular":
            row[i % size] = 1.0
        elif mode == "reflect":
            row[-i if i < 0 else 2 * (size - 1) - i] = 1.0
        elif mode == "symmetric":
            row[-i - 1 if i < 0 else 2 * size - 1 - i] = 1.0
        rows.append(row)
    return np.stack(rows)


@keras_lipschitz_export
class PadConv2D(keras.layers.Layer):
    """Unconstrained 2-D convolution with reflect/symmetric/circular padding.

    The input is padded by $\\lfloor k/2\\rfloor$ on each side with `padding`
    (`"constant"` is zero padding, `"reflect"` mirrors without repeating
    the border, `"symmetric"` mirrors it, `"circular"` wraps around), then
    convolved with `padding="valid"`; `"same"` and `"valid"` are Keras's
    (deel-lip's `PadConv2D`, a building block, not a constrained layer).

    The kernel is **not** constrained. `lipschitz_upper_bound()` is
    guaranteed: the padding is $P = P_h \\otimes P_w \\otimes I$, where
    each $P_a$ selects one input row per padded row, so
    $\\|P\\|_2 = \\sqrt{m_hm_w}$ with $m_a$ the largest number of copies of
    one input row (1 for zero padding, up to 2 for the others); the bound
    is the exact norm of the padded convolution for small inputs, and
    $\\|P\\|_2$ times the bound of the valid convolution on the padded size
    otherwise (`keras_lipschitz.bounds`).

    Args:
        filters: positive int.
        kernel_size: int or tuple of 2 ints.
        strides: int or tuple of 2 ints.
        padding: one of `"same"`, `"valid"`, `"constant"`, `"reflect"`,
            `"symmetric"`, `"circular"`.
        data_format: `"channels_last"`, `"channels_first"` or None.
        activation: None or a Keras activation with a known constant.
        use_bias: bool.
        kernel_initializer, bias_initializer, kernel_regularizer,
        bias_regularizer, kernel_constraint, bias_constraint: as in
            `keras.layers.Conv2D`.

    Example:

    >>> layer = PadConv2D(2, 3, padding="circular")
    >>> tuple(layer(np.ones((1, 5, 5, 3), "float32")).shape)
    (1, 5, 5, 2)
    """

    def __init__(
        self,
        filters,
        kernel_size,
        strides=(1, 1),
        padding="same",
        data_format=None,
        activation=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
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
        self.strides = _validation.validate_int_tuple("strides", strides)
        self.padding = _validation.validate_choice(
            "padding", padding, set(_PAD_MODES)
        )
        self.data_format = _validation.validate_data_format(data_format)
        _kernel_arguments.set_kernel_arguments(
            self,
            1.0,
            activation,
            use_bias,
            kernel_initializer,
            bias_initializer,
            kernel_regularizer,
            bias_regularizer,
            kernel_constraint,
            bias_constraint,
        )
        if self.padding in ("same", "valid"):
            self._pad_sizes = (0, 0)
            self._conv_padding = self.padding
        else:
            self._pad_sizes = tuple(k // 2 for k in self.kernel_size)
            self._conv_padding = "valid"
        self.built_spatial_shape = None
        self.input_spec = keras.layers.InputSpec(ndim=4)

    @property
    def _spatial_axes(self):
        return (1, 2) if self.data_format == "channels_last" else (2, 3)

    def _padded_size(self, spatial):
        return tuple(
            None if n is None else n + 2 * p
            for n, p in zip(spatial, self._pad_sizes)
        )

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        channel_axis = -1 if self.data_format == "channels_last" else 1
        channels = input_shape[channel_axis]
        if channels is None:
            raise ValueError(
                "PadConv2D needs a known channel dimension. "
                f"Received: input_shape={input_shape}"
            )
        spatial = tuple(input_shape[a] for a in self._spatial_axes)
        for n, p in zip(spatial, self._pad_sizes):
            if n is not None and (
                (self.padding == "reflect" and p >= n)
                or (self.padding in ("symmetric", "circular") and p > n)
            ):
                raise ValueError(
                    f"padding={self.padding!r} of {p} pixels needs a larger "
                    f"input. Received: input_shape={input_shape}"
                )
        self.built_spatial_shape = spatial
        _kernel_arguments.add_kernel_and_bias(
            self, self.kernel_size + (channels, self.filters)
        )
        self.input_spec = keras.layers.InputSpec(
            ndim=4, axes={channel_axis: channels}
        )

    def _pad(self, inputs):
        x = inputs
        for axis, pad in zip(self._spatial_axes, self._pad_sizes):
            x = _pad_axis(x, axis, pad, self.padding)
        return x

    def call(self, inputs):
        kernel = ops.cast(self.kernel, inputs.dtype)
        outputs = ops.conv(
            self._pad(inputs),
            kernel,
            strides=self.strides,
            padding=self._conv_padding,
            data_format=self.data_format,
        )
        if self.bias is not None:
            outputs = _kernel_arguments.add_channel_bias(
                outputs, self.bias, self.data_format
            )
        return self.activation(outputs)

    def compute_output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        spatial = self._padded_size(
            tuple(input_shape[a] for a in self._spatial_axes)
        )
        out = [
            None if n is None else bounds.conv_output_size(
                n, k, s, self._conv_padding
            )
            for n, k, s in zip(spatial, self.kernel_size, self.strides)
        ]
        if self.data_format == "channels_last":
            return (input_shape[0], *out, self.filters)
        return (input_shape[0], self.filters, *out)

    def _kernel_float64(self):
        # Not named `effective_kernel`: tools that find that method treat
        # the layer as a zero-padded convolution, which it is not.
        return np.asarray(ops.convert_to_numpy(self.kernel), np.float64)

    def _padding_factors(self, size):
        return [
            _padding_matrix(n, p, self.padding)
            for n, p in zip(size, self._pad_sizes)
        ]

    def operator_matrix(self, input_size):
        """The explicit float64 matrix of padding then convolution.

        It maps the flattened `(h, w, c_in)` input to the flattened
        `(h', w', c_out)` output (channels-last order, whatever the
        `data_format`; singular values do not depend on the order).

        Args:
            input_size: `(h, w)`.

        Returns:
            A NumPy array.
        """
        kernel = self._kernel_float64()
        size = tuple(input_size)
        factors = self._padding_factors(size)
        conv = bounds.conv_operator_matrix(
            kernel, self._padded_size(size), self.strides, self._conv_padding
        )
        pad = np.kron(np.kron(factors[0], factors[1]), np.eye(kernel.shape[2]))
        return conv @ pad

    def lipschitz_upper_bound(self, input_size=None):
        """Guaranteed upper bound on the layer's ℓ2 Lipschitz constant.

        Args:
            input_size: optional `(h, w)`; defaults to the built size.

        Returns:
            A Python float.
        """
        if not self.built:
            raise ValueError("PadConv2D must be built before its bound.")
        kernel = self._kernel_float64()
        size = tuple(input_size or self.built_spatial_shape)
        if any(n is None for n in size):
            raise ValueError(
                "PadConv2D's bound needs the spatial input size; pass "
                "`input_size=(h, w)`."
            )
        c_in = kernel.shape[2]
        if size[0] * size[1] * c_in <= bounds.EXPLICIT_OPERATOR_MAX_INPUT_DIM:
            operator = self.operator_matrix(size)
            norm = 0.0
            if operator.size:
                norm = float(np.linalg.norm(operator, ord=2))
            # Relative slack above the rounding of the float64 SVD.
            bound = norm * (1.0 + 1e-12)
        else:
            factors = self._padding_factors(size)
            pad_norm = math.sqrt(
                np.max(np.sum(factors[0], axis=0))
                * np.max(np.sum(factors[1], axis=0))
            )
            bound = pad_norm * bounds.conv_spectral_norm_upper_bound(
                kernel,
                self._padded_size(size),
                self.strides,
                self._conv_padding,
            )
        return bound * self._activation_lipschitz

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "kernel_size": self.kernel_size,
                "strides": self.strides,
                "padding": self.padding,
                "data_format": self.data_format,
            }
        )
        config.update(_kernel_arguments.kernel_arguments_config(self))
        config.pop("lipschitz")
        return config
