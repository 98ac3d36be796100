"""SDP-based Lipschitz layers (SLL): 1-Lipschitz residual blocks.

Araujo, Havens, Delattre, Allauzen, Hu, "A Unified Algebraic Perspective on
Lipschitz Neural Networks", ICLR 2023 (arXiv 2303.03169; official PyTorch
code github.com/araujoalexandre/Lipschitz-SLL-Networks). Each block is

$$y = x - 2\\,W\\,T^{-1}\\sigma(W^Tx + b),\\qquad
  T = \\mathrm{diag}(t),\\quad t_i = \\sum_j |W^TW|_{ij}\\,\\frac{q_j}{q_i},$$

with learnable $q > 0$ (stored as $\\log q$) and a monotone activation of
slope at most 1. $T$ is the weighted AOL bound
(`keras_lipschitz.normalizers.aol_rescaling_dense` / `aol_rescaling_conv`),
derived from the raw weights inside `call`; nothing is iterated or stored.

The blocks are nonlinear residual maps, not linear layers: they have no
`effective_kernel()` and `keras_lipschitz.vanilla_export` keeps them as they
are.
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
from keras_lipschitz.layers import _validation
from keras_lipschitz.layers.aol import _abs_conv_gram_float64
from keras_lipschitz.layers.aol import _schur_norm_bound
from keras_lipschitz.layers.orthogonal_conv import AOCConv2D

# Activations allowed inside the block: monotone, slope in [0, 1]
# everywhere (the proof needs sigma' in [0, 1]; GroupSort, GELU, SiLU do
# not qualify).
SLOPE_RESTRICTED_ACTIVATIONS = (
    "elu",
    "hard_sigmoid",
    "leaky_relu",
    "linear",
    "relu",
    "relu6",
    "sigmoid",
    "softplus",
    "softsign",
    "tanh",
)
# Relative slack on a float64 SVD norm (backward stable: ~1e-15).
_FLOAT64_SVD_SLACK = 1e-12


def _host_initializer(sample):
    """A Keras initializer drawn on the host by `sample(rng, shape)` (NumPy).

    For the official initializations, which depend on the fans known only
    at build: eager JAX would compile each random op for every new shape.
    The seed is drawn now from Python's `random`, like an unseeded Keras
    initializer, so it is reproducible under `keras.utils.set_random_seed`.
    """
    seed = python_random.randint(1, int(1e9))

    def initializer(shape, dtype=None):
        rng = np.random.default_rng(seed)
        return np.asarray(sample(rng, tuple(shape))).astype(dtype or "float32")

    return initializer


def _validate_activation(activation):
    try:
        fn = keras.activations.get(activation)
    except (ValueError, TypeError):
        fn = None
    name = getattr(fn, "__name__", None)
    if name not in SLOPE_RESTRICTED_ACTIVATIONS:
        raise ValueError(
            "`activation` must be one of "
            f"{list(SLOPE_RESTRICTED_ACTIVATIONS)} (or None for linear): "
            "an SLL block is 1-Lipschitz only for monotone activations of "
            f"slope at most 1. Received: activation={activation!r}"
        )
    return fn


def _validate_inner_dim(inner_dim):
    if inner_dim is None:
        return None
    return _validation.validate_positive_int("inner_dim", inner_dim)


def _validate_odd_kernel_size(kernel_size):
    sizes = _validation.validate_int_tuple("kernel_size", kernel_size)
    if any(k % 2 == 0 for k in sizes):
        raise ValueError(
            "`kernel_size` must be odd (or a tuple of odd ints): the block "
            "uses 'same' zero padding, and the flipped, transposed kernel is "
            "the exact adjoint of the convolution only for odd sizes. "
            f"Received: kernel_size={kernel_size!r}"
        )
    return sizes


def _keras_same_padding(size):
    """(before, after) of Keras's stride-1 "same" padding for a kernel size."""
    before = (size - 1) // 2
    return before, size - 1 - before


def _conv_padded(x, kernel, adjoint=False):
    """Stride-1 zero "same" conv of any kernel size, or its exact adjoint.

    Odd sizes use `_conv_same` (the flipped, channel-transposed kernel is
    the adjoint). Even sizes pad as Keras does, one more row and column
    after than before; the adjoint is the flipped kernel with that padding
    mirrored, written as explicit padding and a "valid" convolution.
    """
    k_h, k_w = int(kernel.shape[0]), int(kernel.shape[1])
    if adjoint:
        kernel = normalizers.conv_adjoint_kernel(kernel)
    if k_h % 2 and k_w % 2:
        return _conv_same(x, kernel)
    pads = [_keras_same_padding(k_h), _keras_same_padding(k_w)]
    if adjoint:
        pads = [pad[::-1] for pad in pads]
    x = ops.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    return ops.conv(
        x, kernel, strides=1, padding="valid", data_format="channels_last"
    )


def _conv_same(x, kernel):
    """Stride-1 zero "same" conv, channels last, whatever the global format.

    `normalizers.conv_same_by_matmul` where the image is smaller than the
    kernel and the backend's conv is slow there (XLA on CPU).
    """
    spatial = tuple(x.shape[1:3])
    if all(d is not None for d in spatial) and (
        _backend.small_image_conv_is_slow(spatial, tuple(kernel.shape[:2]))
    ):
        return normalizers.conv_same_by_matmul(x, kernel)
    return ops.conv(
        x, kernel, strides=1, padding="same", data_format="channels_last"
    )


def _residual_bound(rho_squared):
    """$\\max(1, 2\\rho^2 - 1)$: the block's bound given $\\|S^{1/2}W^T\\|^2
    \\le \\rho^2$.

    The Jacobian (or any difference quotient) is
    $J = I - 2\\,\\tilde W D\\tilde W^T$ with $\\tilde W = WS^{1/2}$,
    $S = T^{-1}$ and $D$ diagonal in $[0, 1]$ (the activation's slopes;
    $S$ and $D$ commute). $J$ is symmetric with eigenvalues in
    $[1 - 2\\rho^2, 1]$, so $\\|J\\| \\le \\max(1, 2\\rho^2 - 1)$.
    """
    return max(1.0, 2.0 * rho_squared - 1.0)


def _conv_inverse_t(kernel, log_q):
    """$T^{-1}$ of a conv SLL block, float32, from the raw weights."""
    kernel = ops.cast(kernel, "float32")
    # Output-side Gram of K = input-side Gram of K with its channel axes
    # swapped (the spatial flip does not change sums over shifts).
    scale = normalizers.aol_rescaling_conv(
        ops.transpose(kernel, (0, 1, 3, 2)), ops.cast(log_q, "float32")
    )
    return ops.square(scale)


def _conv_block_bound(kernel, inverse_t, log_q, input_size=None):
    """Guaranteed float64 bound of a conv SLL block (see `SLLConv2D`)."""
    kernel = np.asarray(ops.convert_to_numpy(kernel), np.float64)
    inverse_t = np.asarray(inverse_t, np.float64)
    scaled = kernel * np.sqrt(inverse_t)[None, None, None, :]
    log_q = np.clip(
        np.asarray(ops.convert_to_numpy(log_q), np.float64),
        -normalizers.LOG_Q_LIMIT,
        normalizers.LOG_Q_LIMIT,
    )
    # Channels with s = 0 are switched off: they drop out of the map.
    live = inverse_t > 0
    # Schur weights w = q / sqrt(s): then sum_j |N~_ij| w_j / w_i =
    # s_i sum_j |N_ij| q_j / q_i = s_i (t_i - eps) < 1 in exact
    # arithmetic, the SDP condition T >= K K^T (checked here in float64
    # for the rounded s; any w > 0 gives a valid bound).
    weights = np.exp(log_q[live]) / np.sqrt(inverse_t[live])
    # Output-side Gram: the input-side one of the transposed kernel.
    gram = _abs_conv_gram_float64(scaled[..., live].transpose(0, 1, 3, 2))
    rho = _schur_norm_bound(gram, weights)
    if input_size is not None:
        rho = min(
            rho,
            bounds.conv_spectral_norm_upper_bound(
                scaled, tuple(input_size), (1, 1), "same"
            ),
        )
    return _residual_bound(rho * rho)


class _SLLBlock(keras.layers.Layer):
    """Shared arguments, weights and config of the SLL blocks."""

    def __init__(
        self,
        inner_dim=None,
        activation="relu",
        use_bias=True,
        kernel_initializer=None,
        bias_initializer=None,
        log_q_initializer=None,
        kernel_regularizer=None,
        bias_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.inner_dim = _validate_inner_dim(inner_dim)
        self.activation = _validate_activation(activation)
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
        self.log_q_initializer = (
            None
            if log_q_initializer is None
            else keras.initializers.get(log_q_initializer)
        )
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.kernel_constraint = keras.constraints.get(kernel_constraint)
        self.bias_constraint = keras.constraints.get(bias_constraint)
        self.supports_masking = True

    def _add_weights(self, kernel_shape, fan_in, fan_out):
        """Creates `kernel`, `bias` (or None) and `log_q` (official inits).

        The official defaults (PyTorch): Xavier-normal kernel
        $\\mathcal{N}(0, 2/(fan_{in} + fan_{out}))$, bias
        $\\mathcal{U}(\\pm 1/\\sqrt{fan_{in}})$,
        $\\log q \\sim \\mathcal{N}(0, 1)$.
        """
        inner = kernel_shape[-1]
        initializer = self.kernel_initializer
        if initializer is None:
            std = math.sqrt(2.0 / (fan_in + fan_out))
            initializer = _host_initializer(
                lambda rng, shape: std * rng.normal(size=shape)
            )
        self.kernel = self.add_weight(
            name="kernel",
            shape=kernel_shape,
            initializer=initializer,
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
            autocast=False,
        )
        self.bias = None
        if self.use_bias:
            initializer = self.bias_initializer
            if initializer is None:
                limit = 1.0 / math.sqrt(fan_in)
                initializer = _host_initializer(
                    lambda rng, shape: rng.uniform(-limit, limit, size=shape)
                )
            self.bias = self.add_weight(
                name="bias",
                shape=(inner,),
                initializer=initializer,
                regularizer=self.bias_regularizer,
                constraint=self.bias_constraint,
            )
        initializer = self.log_q_initializer
        if initializer is None:
            initializer = _host_initializer(
                lambda rng, shape: rng.normal(size=shape)
            )
        self.log_q = self.add_weight(
            name="log_q",
            shape=(inner,),
            initializer=initializer,
            autocast=False,
        )

    def _inverse_t(self):
        """$T^{-1}$ (the diagonal), float32, from the raw weights."""
        raise NotImplementedError

    def inverse_t(self):
        """The diagonal of $T^{-1}$ the block uses, as a float32 NumPy array.

        $T^{-1}_{ii} = 1 / (t_i + \\varepsilon)$, rounded in float32; the
        block computes $y = x - W\\,(2T^{-1})\\,\\sigma(W^Tx + b)$ with
        exactly these values, and `lipschitz_upper_bound()` uses them.
        """
        return ops.convert_to_numpy(self._inverse_t())

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()

        def serialize(module, obj):
            return None if obj is None else module.serialize(obj)

        config.update(
            {
                "inner_dim": self.inner_dim,
                "activation": keras.activations.serialize(self.activation),
                "use_bias": self.use_bias,
                "kernel_initializer": serialize(
                    keras.initializers, self.kernel_initializer
                ),
                "bias_initializer": serialize(
                    keras.initializers, self.bias_initializer
                ),
                "log_q_initializer": serialize(
                    keras.initializers, self.log_q_initializer
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


class _ConvSLLBlock(_SLLBlock):
    """Data format, channel axis and input checks of the conv SLL blocks."""

    def __init__(self, data_format=None, **kwargs):
        super().__init__(**kwargs)
        self.data_format = _validation.validate_data_format(data_format)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    @property
    def _channel_axis(self):
        return -1 if self.data_format == "channels_last" else 1

    def _input_channels(self, input_shape):
        """The known channel count of a rank-4 `input_shape`."""
        channels = _validation.known_channels(
            self, input_shape, 4, self._channel_axis
        )
        self.input_spec = keras.layers.InputSpec(
            ndim=4, axes={self._channel_axis: channels}
        )
        return channels

    def get_config(self):
        config = super().get_config()
        config["data_format"] = self.data_format
        return config


@keras_lipschitz_export
class SLLDense(_SLLBlock):
    """SDP-based Lipschitz dense residual block (SLL).

    Araujo, Havens, Delattre, Allauzen, Hu, "A Unified Algebraic Perspective
    on Lipschitz Neural Networks", ICLR 2023. With the raw kernel $W$ of
    shape `(d, inner_dim)`, bias $b$ and $q = e^{\\log q} > 0$ (one per
    inner unit, trainable),

    $$y = x - 2\\,W\\,T^{-1}\\sigma(W^Tx + b),\\qquad
      T = \\mathrm{diag}(t),\\qquad
      t_i = \\sum_j |W^TW|_{ij}\\,\\frac{q_j}{q_i} + \\varepsilon$$

    (written for column vectors; the layer computes $x W$ on rows). The
    weights enter as $q_j/q_i$, as in the official dense layer (the
    reverse ratio gives no valid bound). $T$ is computed inside `call` from
    the raw weights by `keras_lipschitz.normalizers.aol_rescaling_dense`
    on $W^T$ ($T^{-1} = \\mathrm{diag}(d^2)$); $\\varepsilon = 10^{-6}$ and
    the clipping of $\\log q$ to $[-20, 20]$ only keep it finite (the
    official code has no $\\varepsilon$ and sets $1/0$ to 0; both only
    enlarge $T$).

    **Why 1-Lipschitz.** The weighted Schur test gives
    $W^TW \\preceq T$, i.e. $\\tilde W = WT^{-1/2}$ has norm at most 1.
    For an activation with slopes in $[0, 1]$ every Jacobian (and every
    difference quotient) is $J = I - 2\\tilde WD\\tilde W^T$ with $D$
    diagonal in $[0, 1]$: symmetric, with eigenvalues in
    $[1 - 2\\|\\tilde W\\|^2, 1] \\subset [-1, 1]$.

    **Guaranteed bound.** `lipschitz_upper_bound()` returns
    $\\max(1, 2\\rho^2 - 1)$ with $\\rho = \\|W\\,\\mathrm{diag}(s)^{1/2}\\|_2$
    computed in float64 (exact SVD, plus rounding slack) from the float32
    kernel and the float32 $s = T^{-1}$ the block really uses
    (`inverse_t()`). This is 1.0 whenever $T \\succeq W^TW$ holds for those
    rounded values, and otherwise the block's true worst case, so it is
    guaranteed either way. (Mixed precision rounds $s$ and $W$ to float16
    in the forward pass, as for every layer; the bound is that of the
    float32 weights.)

    **Defaults** (official code): `inner_dim=None` is the input dimension;
    Xavier/Glorot-normal kernel, bias $\\mathcal{U}(\\pm 1/\\sqrt{d})$,
    $\\log q \\sim \\mathcal{N}(0, 1)$; ReLU.

    **Not exportable.** The block is nonlinear: it has no
    `effective_kernel()`, and `keras_lipschitz.vanilla_export` copies it
    unchanged into the exported model.

    Args:
        inner_dim: None (the input dimension) or positive int, the number
            of inner units (columns of $W$).
        activation: a monotone activation of slope at most 1:
            `"relu"` (default), `"leaky_relu"`, `"relu6"`, `"elu"`,
            `"tanh"`, `"sigmoid"`, `"hard_sigmoid"`, `"softplus"`,
            `"softsign"` or `"linear"`/None. GroupSort, GELU and SiLU are
            refused.
        use_bias: bool.
        kernel_initializer: None (default, the official Xavier-normal
            $\\mathcal{N}(0, 2/(d + \\text{inner\\_dim}))$) or a Keras
            initializer.
        bias_initializer: None (default, the official
            $\\mathcal{U}(\\pm 1/\\sqrt{d})$) or a Keras initializer.
        log_q_initializer: None (default, $\\mathcal{N}(0, 1)$) or a Keras
            initializer of $\\log q$.
        kernel_regularizer, bias_regularizer: optional regularizers.
        kernel_constraint, bias_constraint: optional constraints.

    Input shape:
        `(..., d)`.

    Output shape:
        `(..., d)`.

    Example:

    >>> layer = SLLDense(inner_dim=8)
    >>> y = layer(np.ones((2, 4), "float32"))
    >>> tuple(y.shape)
    (2, 4)
    >>> layer.lipschitz_upper_bound()
    1.0
    """

    def __init__(self, inner_dim=None, **kwargs):
        super().__init__(inner_dim=inner_dim, **kwargs)
        self.input_spec = keras.layers.InputSpec(min_ndim=2)

    def build(self, input_shape):
        dim = input_shape[-1]
        if dim is None:
            raise ValueError(
                "SLLDense needs a known last input dimension. "
                f"Received: input_shape={input_shape}"
            )
        dim = int(dim)
        inner = self.inner_dim if self.inner_dim is not None else dim
        self._add_weights((dim, inner), fan_in=dim, fan_out=inner)
        self.input_spec = keras.layers.InputSpec(min_ndim=2, axes={-1: dim})

    def _inverse_t(self):
        kernel = ops.cast(self.kernel, "float32")
        scale = normalizers.aol_rescaling_dense(
            ops.transpose(kernel), ops.cast(self.log_q, "float32")
        )
        return ops.square(scale)

    def call(self, inputs):
        # 2 T^-1 (exact doubling): the map is x - W diag(2s) sigma(...).
        scale = ops.cast(2.0 * self._inverse_t(), inputs.dtype)
        kernel = ops.cast(self.kernel, inputs.dtype)
        hidden = ops.matmul(inputs, kernel)
        if self.bias is not None:
            hidden = ops.add(hidden, ops.cast(self.bias, hidden.dtype))
        hidden = self.activation(hidden) * scale
        return inputs - ops.matmul(hidden, ops.transpose(kernel))

    def lipschitz_upper_bound(self):
        """Guaranteed ℓ2 Lipschitz bound of the block (float64).

        $\\max(1, 2\\rho^2 - 1)$ with $\\rho$ the exact float64 norm of
        $W\\,\\mathrm{diag}(s)^{1/2}$ for the float32 kernel and the float32
        $s$ = `inverse_t()` the block uses. Equal to 1.0 when
        $T \\succeq W^TW$ holds for those values.

        Returns:
            A Python float.
        """
        kernel = np.asarray(ops.convert_to_numpy(self.kernel), np.float64)
        inverse_t = np.asarray(self.inverse_t(), np.float64)
        scaled = kernel * np.sqrt(inverse_t)[None, :]
        if scaled.size == 0:
            return 1.0
        rho = float(np.linalg.norm(scaled, ord=2))
        return _residual_bound(rho * rho * (1.0 + _FLOAT64_SVD_SLACK))


@keras_lipschitz_export
class SLLConv2D(_ConvSLLBlock):
    """SDP-based Lipschitz convolutional residual block (SLL).

    Araujo et al. (ICLR 2023), convolutional form. With the raw kernel
    $K$ of shape `(k_h, k_w, c, inner_dim)` (odd sizes), bias $b$ and
    $q = e^{\\log q} > 0$ per inner channel,

    $$y = x - 2\\,K^T \\star \\big(t^{-1} \\odot \\sigma(K \\star x + b)\\big),
      \\qquad t_i = \\sum_j\\sum_s |N_{ij}(s)|\\,\\frac{q_j}{q_i} +
      \\varepsilon,$$

    where $K \\star$ is the stride-1 convolution with zero "same" padding,
    $K^T \\star$ its exact adjoint (the convolution by the flipped,
    channel-transposed kernel, `normalizers.conv_adjoint_kernel`), and
    $N_{ij}(s)$ the output-side Gram kernel of $K$, i.e. the kernel of
    $K \\circledast K^T$ over the $(2k-1)^2$ shifts $s$
    (`normalizers.aol_rescaling_conv` on the channel-transposed kernel,
    $t^{-1} = d^2$). The input and output have the same shape.

    **Why 1-Lipschitz.** The weighted Schur test on the block-Toeplitz
    operator $KK^T$ gives $\\|T^{-1/2}K\\| \\le 1$ on the infinite plane,
    hence under zero padding for every input size, and the argument of
    `SLLDense` applies. The official conv layer multiplies by $q$ and
    $1/q$ on the same axis, which cancels (effectively $q \\equiv 1$); here
    $q$ enters as $q_j/q_i$ and is live. The official code also hard-codes
    the padding for 3x3 kernels; here any odd size works.

    **Guaranteed bound.** `lipschitz_upper_bound()` returns
    $\\max(1, 2\\rho^2 - 1)$, with $\\rho^2$ the weighted Schur bound
    $\\max_i\\sum_j\\sum_s|\\tilde N_{ij}(s)|\\,w_j/w_i$ of
    $\\tilde K = K\\,\\mathrm{diag}(s)^{1/2}$, $w = q/\\sqrt{s}$, recomputed
    in float64 (with rounding slack) from the float32 kernel and the
    float32 $s = t^{-1}$ the block really uses. In exact arithmetic each row
    sum is $s_i(t_i - \\varepsilon) < 1$, which is the SDP condition
    $T \\succeq KK^T$; the float64 check makes it hold for the rounded
    values (result 1.0, or $1 + O(10^{-7})$ from float32 rounding of $s$),
    and whatever the weights the value is a true upper bound of the block,
    for every input size. With `input_size`, the exact operator norm
    (small sizes) or FFT bound of $\\tilde K$ on that size is also used, and
    the smaller value returned.

    **Defaults** (official code): `inner_dim=None` is the number of input
    channels; Xavier/Glorot-normal kernel, bias
    $\\mathcal{U}(\\pm 1/\\sqrt{c\\,k_hk_w})$,
    $\\log q \\sim \\mathcal{N}(0, 1)$; ReLU; $k = 3$.

    **Not exportable.** The block is nonlinear: it has no
    `effective_kernel()`, and `keras_lipschitz.vanilla_export` copies it
    unchanged.

    Args:
        kernel_size: odd int or tuple of 2 odd ints (default 3).
        inner_dim: None (the number of input channels) or positive int,
            the number of inner channels.
        activation: a monotone activation of slope at most 1 (see
            `SLLDense`); default `"relu"`.
        data_format: `"channels_last"`, `"channels_first"` or None. The
            kernel layout is always `(k_h, k_w, c, inner_dim)`.
        use_bias: bool.
        kernel_initializer: None (default, the official Xavier-normal
            $\\mathcal{N}(0, 2/((c + \\text{inner\\_dim})k_hk_w))$) or a
            Keras initializer.
        bias_initializer: None (default, the official uniform) or a Keras
            initializer.
        log_q_initializer: None (default, $\\mathcal{N}(0, 1)$) or a Keras
            initializer.
        kernel_regularizer, bias_regularizer: optional regularizers.
        kernel_constraint, bias_constraint: optional constraints.

    Input shape:
        4-D tensor `(batch, H, W, c)` or `(batch, c, H, W)`; any `H`, `W`.

    Output shape:
        The input shape.

    Example:

    >>> layer = SLLConv2D(3, inner_dim=6)
    >>> y = layer(np.ones((2, 5, 5, 4), "float32"))
    >>> tuple(y.shape)
    (2, 5, 5, 4)
    >>> bool(layer.lipschitz_upper_bound() <= 1.0 + 1e-6)
    True
    """

    def __init__(
        self, kernel_size=3, inner_dim=None, data_format=None, **kwargs
    ):
        super().__init__(
            inner_dim=inner_dim, data_format=data_format, **kwargs
        )
        self.kernel_size = _validate_odd_kernel_size(kernel_size)

    def build(self, input_shape):
        channels = self._input_channels(input_shape)
        inner = self.inner_dim if self.inner_dim is not None else channels
        k_h, k_w = self.kernel_size
        self._add_weights(
            (k_h, k_w, channels, inner),
            fan_in=channels * k_h * k_w,
            fan_out=inner * k_h * k_w,
        )

    def _inverse_t(self):
        return _conv_inverse_t(self.kernel, self.log_q)

    def call(self, inputs):
        x = inputs
        if self.data_format == "channels_first":
            x = ops.transpose(x, (0, 2, 3, 1))
        scale = ops.cast(2.0 * self._inverse_t(), x.dtype)
        kernel = ops.cast(self.kernel, x.dtype)
        hidden = _conv_same(x, kernel)
        if self.bias is not None:
            hidden = ops.add(hidden, ops.cast(self.bias, hidden.dtype))
        hidden = self.activation(hidden) * scale
        outputs = x - _conv_same(
            hidden, normalizers.conv_adjoint_kernel(kernel)
        )
        if self.data_format == "channels_first":
            outputs = ops.transpose(outputs, (0, 3, 1, 2))
        return outputs

    def lipschitz_upper_bound(self, input_size=None):
        """Guaranteed ℓ2 Lipschitz bound of the block (float64).

        $\\max(1, 2\\rho^2 - 1)$, with $\\rho^2$ the float64 weighted Schur
        bound on $\\|\\mathrm{diag}(s)^{1/2}K\\|^2$ (every input size) for
        the float32 kernel and $s$ = `inverse_t()` the block uses; with
        `input_size`, the smaller of that and the squared exact/FFT norm
        of the same convolution on inputs of that size
        (`keras_lipschitz.bounds.conv_spectral_norm_upper_bound`).

        Args:
            input_size: optional `(h, w)`: a bound valid only up to that
                size (never larger than the size-free one).

        Returns:
            A Python float.
        """
        return _conv_block_bound(
            self.kernel, self.inverse_t(), self.log_q, input_size
        )

    def get_config(self):
        config = super().get_config()
        config["kernel_size"] = self.kernel_size
        return config


@keras_lipschitz_export
class SLLAOCConv2D(_ConvSLLBlock):
    """Strided, channel-changing SLL block with AOC pre/post convolutions.

    The "SLL x AOC" block of Boissin, Mamalet, Fel, Picard, Massena,
    Serrurier, "An Adaptive Orthogonal Convolution Scheme for Efficient and
    Flexible CNN Architectures", ICML 2025 (arXiv 2501.07930; orthogonium's
    `SLLxAOCLipschitzResBlock`), which extends the SLL block of Araujo et
    al. (ICLR 2023) to strides and channel changes:

    $$y = Q\\Big(Px - 2\\,K^T \\star \\big(t^{-1} \\odot
      \\sigma(K \\star Px + b)\\big)\\Big),$$

    - $P$: an `AOCConv2D` from $c_{in}$ to $c_{in}$ channels, kernel
      `strides`, stride 1 (an orthogonal convolution; with zero padding
      its norm is at most 1);
    - the SLL core (as `SLLConv2D`) with kernel $K$ of size
      `kernel_size - strides + 1` from $c_{in}$ to `inner_dim` channels,
      zero "same" padding and its exact adjoint $K^T\\star$ (even sizes
      are padded as Keras does, the adjoint with the mirrored padding);
    - $Q$: an `AOCConv2D` from $c_{in}$ to `filters` channels with kernel
      and stride `strides` (RKO: space-to-depth and an orthonormal 1x1
      map, norm at most 1).

    The receptive field of $K\\star P$ is `kernel_size`, as in the official
    block, which fuses $K \\circledast P$, $Q \\circledast K^T$ and
    $Q \\circledast P$ into three convolutions. Here the three maps are
    applied one after the other: the same function on the infinite plane,
    and with zero padding an exact composition of three maps of norm at
    most 1, so the proof needs no alignment argument at the borders.

    **Guaranteed bound.** `lipschitz_upper_bound()` is the product of the
    float64 bounds of $P$, of the SLL core (as `SLLConv2D`) and of $Q$:
    about $1 + 4\\cdot 10^{-6}$, valid for every input size.

    **Defaults** (orthogonium): `kernel_size=3`, `strides=2`, ReLU,
    `inner_dim=None` = `filters` (orthogonium's `inner_dim_factor=1`);
    the SLL core as `SLLConv2D` (Xavier-normal kernel, uniform bias,
    $\\log q \\sim \\mathcal{N}(0, 1)$); $P$ and $Q$ as `AOCConv2D` with
    zero "same" padding and no bias. `groups` is not supported.

    **Not exportable.** The block is nonlinear; `vanilla_export` keeps it.

    Args:
        filters: positive int, the output channels.
        kernel_size: int or tuple of 2 ints, at least `strides`.
        strides: positive int or tuple of 2 ints.
        inner_dim: None (`filters`) or positive int, the SLL core's inner
            channels.
        activation: a monotone activation of slope at most 1 (see
            `SLLDense`); default `"relu"`.
        data_format: `"channels_last"`, `"channels_first"` or None.
        **kwargs: the SLL core's `use_bias`, initializers, regularizers
            and constraints, as in `SLLConv2D`.

    Input shape:
        4-D tensor `(batch, H, W, c_in)` or `(batch, c_in, H, W)`.

    Output shape:
        `(batch, ceil(H / s_h), ceil(W / s_w), filters)` (or channels
        first).

    Example:

    >>> layer = SLLAOCConv2D(8, kernel_size=3, strides=2)
    >>> y = layer(np.ones((2, 6, 6, 4), "float32"))
    >>> tuple(y.shape)
    (2, 3, 3, 8)
    >>> bool(layer.lipschitz_upper_bound() <= 1.0 + 1e-4)
    True
    """

    def __init__(
        self,
        filters,
        kernel_size=3,
        strides=2,
        inner_dim=None,
        data_format=None,
        **kwargs,
    ):
        super().__init__(
            inner_dim=inner_dim, data_format=data_format, **kwargs
        )
        self.filters = _validation.validate_positive_int("filters", filters)
        self.kernel_size = _validation.validate_int_tuple(
            "kernel_size", kernel_size
        )
        self.strides = _validation.validate_int_tuple("strides", strides)
        if any(k < s for k, s in zip(self.kernel_size, self.strides)):
            raise ValueError(
                "`kernel_size` must be at least `strides` on each axis: the "
                "SLL core's kernel has size kernel_size - strides + 1. "
                f"Received: kernel_size={kernel_size!r}, strides={strides!r}"
            )

    def build(self, input_shape):
        channels = self._input_channels(input_shape)
        input_shape = tuple(input_shape)
        inner = self.inner_dim if self.inner_dim is not None else self.filters
        k_h, k_w = (k - s + 1 for k, s in zip(self.kernel_size, self.strides))
        self._add_weights(
            (k_h, k_w, channels, inner),
            fan_in=channels * k_h * k_w,
            fan_out=inner * k_h * k_w,
        )
        if self.data_format == "channels_first":
            last = (input_shape[0], input_shape[2], input_shape[3], channels)
        else:
            last = input_shape
        # Zero padding and no bias, as orthogonium's block.
        self.pre_conv = AOCConv2D(
            channels,
            self.strides,
            strides=1,
            padding="same",
            data_format="channels_last",
            use_bias=False,
            dtype=self.dtype_policy,
            name="pre_conv",
        )
        self.pre_conv.build(last)
        self.post_conv = AOCConv2D(
            self.filters,
            self.strides,
            strides=self.strides,
            padding="same",
            data_format="channels_last",
            use_bias=False,
            dtype=self.dtype_policy,
            name="post_conv",
        )
        self.post_conv.build(last)

    def _inverse_t(self):
        return _conv_inverse_t(self.kernel, self.log_q)

    def call(self, inputs, training=None):
        x = inputs
        if self.data_format == "channels_first":
            x = ops.transpose(x, (0, 2, 3, 1))
        x = self.pre_conv(x, training=training)
        scale = ops.cast(2.0 * self._inverse_t(), x.dtype)
        kernel = ops.cast(self.kernel, x.dtype)
        hidden = _conv_padded(x, kernel)
        if self.bias is not None:
            hidden = ops.add(hidden, ops.cast(self.bias, hidden.dtype))
        hidden = self.activation(hidden) * scale
        x = x - _conv_padded(hidden, kernel, adjoint=True)
        outputs = self.post_conv(x, training=training)
        if self.data_format == "channels_first":
            outputs = ops.transpose(outputs, (0, 3, 1, 2))
        return outputs

    def compute_output_shape(self, input_shape):
        shape = list(input_shape)
        spatial = (1, 2) if self.data_format == "channels_last" else (2, 3)
        for axis, stride in zip(spatial, self.strides):
            if shape[axis] is not None:
                shape[axis] = -(-int(shape[axis]) // stride)
        shape[self._channel_axis] = self.filters
        return tuple(shape)

    def lipschitz_upper_bound(self):
        """Guaranteed ℓ2 Lipschitz bound of the block (float64).

        The product of `pre_conv.lipschitz_upper_bound()`, the SLL core's
        bound (as `SLLConv2D.lipschitz_upper_bound()`, every input size)
        and `post_conv.lipschitz_upper_bound()`.

        Returns:
            A Python float.
        """
        core = _conv_block_bound(self.kernel, self.inverse_t(), self.log_q)
        return (
            self.pre_conv.lipschitz_upper_bound()
            * core
            * self.post_conv.lipschitz_upper_bound()
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "kernel_size": self.kernel_size,
                "strides": self.strides,
            }
        )
        return config
