"""LiResNet's linear residual convolution, normalized to be 1-Lipschitz.

Hu, Zou, Wang, Leino, Fredrikson, "Unlocking Deterministic Robustness
Certification on ImageNet", NeurIPS 2023 (arXiv 2301.12549), and Hu,
Leino, Wang, Fredrikson, "Effectively Leveraging Capacity for Improved
Deterministic Robustness Certification", ICLR 2024 (arXiv 2310.02513;
official code github.com/hukkai/liresnet). A LiResNet block is the *linear*
residual $x + K \\star x$: a single convolution by the kernel $I + K$
(the Dirac kernel added at the centre tap), whose operator norm is what
the network's bound multiplies.
"""

import keras
import numpy as np
from keras import ops

from keras_lipschitz import bounds
from keras_lipschitz import normalizers
from keras_lipschitz.api_export import keras_lipschitz_export
from keras_lipschitz.layers import _validation
from keras_lipschitz.layers import conv


def _validate_odd_kernel_size(kernel_size):
    sizes = _validation.validate_int_tuple("kernel_size", kernel_size)
    if any(k % 2 == 0 for k in sizes):
        raise ValueError(
            "`kernel_size` must be odd (an odd int or a tuple of 2 odd "
            "ints): the identity of the residual is the centre tap, which "
            "only an odd kernel has under 'same' padding. "
            f"Received: kernel_size={kernel_size!r}"
        )
    return sizes


@keras_lipschitz_export
class LiResNetKernelInitializer(keras.initializers.Initializer):
    """The official LiResNet initialization of the residual kernel $K$.

    $K \\sim \\mathcal{N}(0, \\varsigma^2)$ with
    $\\varsigma = 1/(k_hk_wc_{in})$ (1/fan-in, not its square root), so
    that $I + K$ starts close to the identity (the official code draws
    `randn / (9 * width)` for its 3×3 kernels; its extra
    $\\gamma/\\sqrt{\\text{depth}}$ factor is left to the user).

    Args:
        seed: None or int, as for `keras.initializers.RandomNormal`.
    """

    def __init__(self, seed=None):
        self.seed = seed

    def __call__(self, shape, dtype=None):
        fan_in = 1
        for n in shape[:-1]:
            fan_in *= int(n)
        return keras.initializers.RandomNormal(
            stddev=1.0 / max(fan_in, 1), seed=self.seed
        )(shape, dtype=dtype)

    def get_config(self):
        return {"seed": self.seed}


@keras_lipschitz_export
class LiResConv2D(conv._LipschitzConv2D):
    """Linear residual convolution $(x + K \\star x)/\\|I + K\\|$.

    The LiResNet block (Hu et al., NeurIPS 2023; ICLR 2024) without its
    activation, normalized by the norm of the whole residual operator:
    with $A = I + A_K$ the stride-1, zero "same"-padded convolution by
    $K + \\delta$ ($\\delta$ the Dirac kernel: the identity at the centre
    tap) acting on the layer's built input size,

    $$y = \\phi\\Big(L\\,\\frac{x + K \\star x}{\\hat\\sigma(A)} + b\\Big),$$

    with $L$ = `lipschitz` and $\\hat\\sigma(A)$ an estimate of
    $\\|A\\|_2$ computed as `SpectralConv2D` does for $A_K$:

    - **Training**: `power_iterations` steps of power iteration through
      $A$ and its adjoint (`ops.conv` and `ops.conv_transpose` by
      $K + \\delta$), from a persistent vector `u` of the input shape
      (non-trainable float32, written only when `training` is true, its
      gradient stopped); the gradient flows through $\\hat\\sigma$.
    - **Inference**: `eval_power_iterations` steps of Lanczos on $A^TA$
      from the stored `u` (not written): a tight estimate.

    The official code does not normalize: its network bound is the product
    of power-iteration estimates of the blocks' norms (10 steps per
    training step, 500 at evaluation). Here each block is normalized by its
    estimate, so its constant is `lipschitz` up to the estimation error,
    and **certificates use `lipschitz_upper_bound()`**: a guaranteed
    float64 bound of the operator the layer really applies in inference
    mode, $(I + A_K)/\\hat\\sigma$ on the built input size (the exact
    operator norm for small inputs, the padded-grid FFT bound of
    `keras_lipschitz.bounds` otherwise), never the estimate. The papers
    certify with the estimate itself, which is below the true norm until
    power iteration has converged.

    The effective kernel is an ordinary convolution kernel, so
    `effective_kernel()`, `keras_lipschitz.vanilla_export` (a plain
    `Conv2D` with "same" padding) and the bounds apply unchanged.

    Args:
        kernel_size: odd int or tuple of 2 odd ints (default 3).
        filters: None (default) or the number of input channels: the block
            keeps its channels, any other value is refused at build.
        strides: 1 only (kept for the config of the conv layers).
        padding: `"same"` only.
        data_format: `"channels_last"`, `"channels_first"` or None. The
            kernel layout is always `(k_h, k_w, c, c)`.
        lipschitz: positive float, the layer's Lipschitz constant (before
            the activation).
        activation: None (default; the official block applies MinMax
            after it) or a Keras activation with a known Lipschitz
            constant.
        use_bias: bool.
        kernel_initializer: None (default) for the official
            `LiResNetKernelInitializer`, or a Keras initializer of $K$.
        bias_initializer: initializer of the bias (official: zeros).
        kernel_regularizer, bias_regularizer: optional regularizers.
        kernel_constraint, bias_constraint: optional constraints.
        power_iterations: int >= 1, power-iteration steps per training call.
        eval_power_iterations: int >= 1, Lanczos steps per inference call.

    Input shape:
        `(batch, H, W, c)` or `(batch, c, H, W)`, with `H`, `W` at most the
        built size.

    Output shape:
        The input shape.

    Example:

    >>> layer = LiResConv2D(3, use_bias=False)
    >>> y = layer(np.ones((2, 6, 6, 4), "float32"))
    >>> tuple(y.shape)
    (2, 6, 6, 4)
    >>> bool(layer.lipschitz_upper_bound() <= 1.0 + 1e-3)
    True
    """

    _needs_static_spatial_shape = True

    def __init__(
        self,
        kernel_size=3,
        filters=None,
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
        power_iterations=1,
        eval_power_iterations=50,
        **kwargs,
    ):
        kernel_size = _validate_odd_kernel_size(kernel_size)
        if _validation.validate_int_tuple("strides", strides) != (1, 1):
            raise ValueError(
                "`strides` must be 1: the residual x + K*x needs the output "
                f"on the input grid. Received: strides={strides!r}"
            )
        if not isinstance(padding, str) or padding.lower() != "same":
            raise ValueError(
                "`padding` must be 'same': the residual x + K*x needs the "
                f"output on the input grid. Received: padding={padding!r}"
            )
        if filters is not None:
            filters = _validation.validate_positive_int("filters", filters)
        if kernel_initializer is None:
            kernel_initializer = LiResNetKernelInitializer()
        super().__init__(
            1 if filters is None else filters,
            kernel_size,
            strides=(1, 1),
            padding="same",
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
        # None until build: the block has as many channels as its input.
        self.filters = filters
        self.eval_power_iterations = _validation.validate_positive_int(
            "eval_power_iterations", eval_power_iterations
        )
        self._output_padding = None

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) == 4:
            channels = input_shape[self._channel_axis]
            if channels is not None:
                if self.filters is not None and self.filters != channels:
                    raise ValueError(
                        "`filters` must be None or equal to the number of "
                        f"input channels ({channels}): a residual block "
                        "keeps its channels. "
                        f"Received: filters={self.filters!r}"
                    )
                self.filters = int(channels)
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def _build_state(self, input_shape):
        self._output_padding = normalizers.conv_transpose_output_padding(
            self.built_spatial_shape, self.kernel_size, (1, 1), "same"
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
        # Start from a converged vector (restarted Lanczos on A^T A).
        operator = normalizers.add_conv_identity(
            ops.cast(self.kernel, "float32")
        )
        u = ops.convert_to_tensor(self.u)
        for _ in range(conv.INITIAL_LANCZOS_CYCLES):
            u = self._lanczos(operator, u, self.eval_power_iterations)
        self.u.assign(ops.cast(u, self.u.dtype))

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

    def _power_iteration(self, kernel, u, iterations):
        return normalizers.power_iteration_conv(
            kernel,
            u,
            iterations,
            strides=(1, 1),
            padding="same",
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
        operator = normalizers.add_conv_identity(kernel)
        u = ops.convert_to_tensor(self.u)
        if training:
            u, sigma = self._power_iteration(
                operator, u, self.power_iterations
            )
            self.u.assign(ops.cast(u, self.u.dtype))
        else:
            # Not written back: inference never mutates the layer.
            x = self._lanczos(operator, u, self.eval_power_iterations)
            _, sigma = self._power_iteration(operator, x, 0)
        return operator * ops.reciprocal(sigma)

    # ------------------------------------------------------ certification
    def residual_operator_norm_bound(self, input_size=None):
        """Guaranteed float64 upper bound on $\\|I + A_K\\|_2$.

        The norm of the raw residual operator (before normalization) on the
        built input size, by `keras_lipschitz.bounds` on the kernel
        $K + \\delta$: what an unnormalized LiResNet multiplies into its
        network bound.

        Args:
            input_size: optional `(h, w)`; defaults to the built size.

        Returns:
            A Python float.
        """
        if not self.built:
            raise ValueError(
                "LiResConv2D must be built before its bound can be computed."
            )
        # The identity is added in float64, where it is exact.
        kernel = np.asarray(ops.convert_to_numpy(self.kernel), np.float64)
        k_h, k_w, channels, _ = kernel.shape
        kernel[k_h // 2, k_w // 2] += np.eye(channels)
        if input_size is None:
            input_size = self.built_spatial_shape
        return bounds.conv_spectral_norm_upper_bound(
            kernel, tuple(input_size), (1, 1), "same"
        )

    def lipschitz_upper_bound(self, input_size=None):
        """Guaranteed upper bound on the layer's ℓ2 Lipschitz constant.

        The float64 bound of `keras_lipschitz.bounds` (exact operator norm
        for small inputs, padded-grid FFT bound otherwise) of the
        convolution by the inference-mode kernel
        $L(K + \\delta)/\\hat\\sigma$ (`effective_kernel()`) on the built
        input size: the bound of $I + A_K$ divided by the normalization the
        layer actually uses, times the activation's constant. It is about
        `lipschitz`, slightly above when the Lanczos estimate is below the
        true norm, and holds whatever the state of `u`.

        Args:
            input_size: optional `(h, w)`; defaults to the built size.

        Returns:
            A Python float.
        """
        return super().lipschitz_upper_bound(input_size)

    def get_config(self):
        config = super().get_config()
        config["eval_power_iterations"] = self.eval_power_iterations
        return config
