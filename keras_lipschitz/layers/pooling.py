"""1-Lipschitz pooling and downsampling layers for 2D feature maps.

Plain average pooling over non-overlapping $p_h \\times p_w$ windows has
ℓ2 Lipschitz constant $1/\\sqrt{p_h p_w}$; the layers here rescale it to
exactly 1 (or use the ℓ2 norm of the window, or a permutation of the
coordinates) so that a 1-Lipschitz network does not lose signal at every
downsampling step.

The windowed layers only accept `strides` equal to `pool_size` and
`padding="valid"`:

- overlapping windows multiply the Lipschitz constant by
  $\\sqrt{\\lceil p_h/s_h\\rceil\\lceil p_w/s_w\\rceil}$;
- with `padding="same"`, Keras averages a border window over its $m < n$
  valid entries only, so the rescaled layer has gain $\\sqrt{n/m} > 1$ at
  the border.

With `padding="valid"` and a spatial size not divisible by the pool, the
trailing rows/columns are dropped, as in Keras: the layer stays 1-Lipschitz
but is then no longer gradient norm preserving.
"""

import math

import keras
from keras import ops

from keras_lipschitz import _backend
from keras_lipschitz.api_export import keras_lipschitz_export
from keras_lipschitz.layers._base import OneLipschitzLayer
from keras_lipschitz.layers._base import ScaledOneLipschitzLayer
from keras_lipschitz.layers import _validation

# Half-precision inputs are pooled in float32 (squares overflow float16 above
# 256 and the default epsilon is subnormal in float16), then cast back.
_HALF_DTYPES = ("float16", "bfloat16")


def _to_float32_if_half(x):
    if keras.backend.standardize_dtype(x.dtype) in _HALF_DTYPES:
        return ops.cast(x, "float32")
    return x


def _validate_valid_padding(padding):
    if isinstance(padding, str) and padding.lower() == "same":
        raise ValueError(
            '`padding` must be "valid": with "same" padding a border window '
            "is averaged over its valid entries only, so the rescaled pool "
            'is not 1-Lipschitz. Received: padding="same"'
        )
    return _validation.validate_choice("padding", padding, {"valid"})


def _spatial_axes(data_format):
    return (1, 2) if data_format == "channels_last" else (2, 3)


def _window_sum_by_slices(x, pool_size, data_format):
    """Window sums of a 4D tensor with static spatial sizes, by slicing.

    The width windows become `p_w` interleaved slices of a reshaped last
    (or width) axis and the height windows `p_h` slices of a new axis; the
    sums are element-wise adds, whose backward is cheap on every backend
    (unlike a reduction over two non-adjacent axes).
    """
    p_h, p_w = pool_size
    if data_format == "channels_last":
        _, h, w, c = x.shape
        h_out, w_out = h // p_h, w // p_w
        x = x[:, : h_out * p_h, : w_out * p_w, :]
        rows = ops.reshape(x, (-1, h_out * p_h, w_out, p_w * c))
        total = rows[..., :c]
        for k in range(1, p_w):
            total = total + rows[..., k * c : (k + 1) * c]
        columns = ops.reshape(total, (-1, h_out, p_h, w_out, c))
        total = columns[:, :, 0]
        for k in range(1, p_h):
            total = total + columns[:, :, k]
        return total
    _, c, h, w = x.shape
    h_out, w_out = h // p_h, w // p_w
    x = x[:, :, : h_out * p_h, : w_out * p_w]
    rows = ops.reshape(x, (-1, c, h_out * p_h, w_out, p_w))
    total = rows[..., 0]
    for k in range(1, p_w):
        total = total + rows[..., k]
    columns = ops.reshape(total, (-1, c, h_out, p_h, w_out))
    total = columns[:, :, :, 0]
    for k in range(1, p_h):
        total = total + columns[:, :, :, k]
    return total


def _validate_epsilon(epsilon):
    return _validation.validate_positive_number("epsilon", epsilon)


class _ScaledWindowPooling2D(ScaledOneLipschitzLayer):
    """Argument checks, shapes and config of the windowed pooling layers."""

    def __init__(
        self,
        pool_size=(2, 2),
        strides=None,
        padding="valid",
        data_format=None,
        lipschitz=1.0,
        **kwargs,
    ):
        super().__init__(lipschitz=lipschitz, **kwargs)
        self.pool_size = _validation.validate_int_tuple("pool_size", pool_size)
        if strides is not None:
            strides = _validation.validate_int_tuple("strides", strides)
            if strides != self.pool_size:
                raise ValueError(
                    "`strides` must be None or equal to `pool_size` "
                    f"{self.pool_size}: overlapping or gapped windows are "
                    "not 1-Lipschitz after rescaling. "
                    f"Received: strides={strides}"
                )
        self.strides = self.pool_size
        self.padding = _validate_valid_padding(padding)
        self.data_format = _validation.validate_data_format(data_format)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def build(self, input_shape):
        for axis, pool in zip(_spatial_axes(self.data_format), self.pool_size):
            size = input_shape[axis]
            if size is not None and size < pool:
                raise ValueError(
                    f"`pool_size` {self.pool_size} is larger than the "
                    f"spatial input size (data_format={self.data_format!r}). "
                    f"Received: input_shape={input_shape}"
                )

    @property
    def _window_size(self):
        return self.pool_size[0] * self.pool_size[1]

    def _window_sum(self, x):
        """Sum over each non-overlapping window ('valid': remainders dropped).

        Two formulations of the same sum, chosen for speed: Keras's torch
        `average_pool` (a transpose to NCHW and back around the pooling op)
        is about 3x slower than adding strided slices on CPU, while on
        TensorFlow and JAX the pooling op is the fastest (see
        benchmarks/README.md).
        """
        h, w = (x.shape[a] for a in _spatial_axes(self.data_format))
        if not _backend.runs_eagerly() or h is None or w is None:
            return ops.multiply(
                ops.average_pool(
                    x,
                    pool_size=self.pool_size,
                    strides=self.strides,
                    padding="valid",
                    data_format=self.data_format,
                ),
                ops.cast(self._window_size, x.dtype),
            )
        return _window_sum_by_slices(x, self.pool_size, self.data_format)

    def _broadcast_windows(self, x, values):
        """`x * values` with each output value spread over its window.

        Needs static spatial and channel sizes. `values` has the pooled
        shape; entries of `x` dropped by 'valid' pooling (remainder rows
        and columns) get 0. This is the backward pass of window pooling, as
        one broadcast multiply instead of an upsampling.
        """
        p_h, p_w = self.pool_size
        if self.data_format == "channels_last":
            _, h, w, c = x.shape
        else:
            _, c, h, w = x.shape
        h_out, w_out = h // p_h, w // p_w
        if self.data_format == "channels_last":
            cropped = x[:, : h_out * p_h, : w_out * p_w, :]
            windows = (-1, h_out, p_h, w_out, p_w, c)
            spread = (-1, h_out, 1, w_out, 1, c)
            pad = [[0, 0], [0, h - h_out * p_h], [0, w - w_out * p_w], [0, 0]]
        else:
            cropped = x[:, :, : h_out * p_h, : w_out * p_w]
            windows = (-1, c, h_out, p_h, w_out, p_w)
            spread = (-1, c, h_out, 1, w_out, 1)
            pad = [[0, 0], [0, 0], [0, h - h_out * p_h], [0, w - w_out * p_w]]
        product = ops.reshape(
            ops.multiply(
                ops.reshape(cropped, windows), ops.reshape(values, spread)
            ),
            (-1,) + tuple(cropped.shape[1:]),
        )
        if h_out * p_h == h and w_out * p_w == w:
            return product
        return ops.pad(product, pad)

    def compute_output_shape(self, input_shape):
        output_shape = list(input_shape)
        for axis, pool in zip(_spatial_axes(self.data_format), self.pool_size):
            size = input_shape[axis]
            output_shape[axis] = None if size is None else size // pool
        return tuple(output_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "pool_size": self.pool_size,
                "strides": self.strides,
                "padding": self.padding,
                "data_format": self.data_format,
            }
        )
        return config


@keras_lipschitz_export
class ScaledAveragePooling2D(_ScaledWindowPooling2D):
    """Average pooling rescaled to be 1-Lipschitz: window sum over √n.

    Over each non-overlapping $p_h \\times p_w$ window $\\Omega$ of
    $n = p_h p_w$ pixels, per channel:

    $$y = \\sqrt{n}\\,\\operatorname{avg}_{\\Omega}(x)
    = \\frac{1}{\\sqrt{n}} \\sum_{(i,j)\\in\\Omega} x_{ij}.$$

    Each output is the inner product of its window with a unit vector, and
    windows are disjoint, so the layer is exactly 1-Lipschitz (ℓ2), and
    gradient norm preserving when the spatial sizes are divisible by the
    pool.

    Reference: deel-lip `ScaledAveragePooling2D`; Araujo et al., "A
    unified algebraic perspective on Lipschitz neural networks", ICLR 2023
    (SLL uses window sum / 4 on 4x4 windows).

    Args:
        pool_size: int or tuple of 2 ints, the window size.
        strides: None or equal to `pool_size` (anything else is rejected).
        padding: only `"valid"` is accepted (see the module docstring).
        data_format: `"channels_last"`, `"channels_first"`, or None for
            `keras.config.image_data_format()`.
        lipschitz: positive float $L$, multiplies the output (deel-lip's
            `k_coef_lip`): the layer is then $L$-Lipschitz.

    Input shape:
        4D tensor `(batch, H, W, C)` (channels_last) or `(batch, C, H, W)`.

    Output shape:
        4D tensor with `H // p_h` and `W // p_w` spatial sizes.

    Example:

    >>> import numpy as np
    >>> x = np.ones((1, 2, 2, 1), "float32")
    >>> layer = ScaledAveragePooling2D(data_format="channels_last")
    >>> ops.convert_to_numpy(layer(x)).ravel().tolist()  # 4 / sqrt(4)
    [2.0]
    """

    def call(self, inputs):
        scale = self.lipschitz / math.sqrt(self._window_size)
        return ops.multiply(
            self._window_sum(inputs), ops.cast(scale, inputs.dtype)
        )


@keras_lipschitz_export
class ScaledL2NormPooling2D(_ScaledWindowPooling2D):
    """ℓ2-norm pooling: the (smoothed) Euclidean norm of each window.

    Over each non-overlapping $p_h \\times p_w$ window $\\Omega$, per
    channel:

    $$y = \\sqrt{\\sum_{(i,j)\\in\\Omega} x_{ij}^2 + \\varepsilon}.$$

    $z \\mapsto \\sqrt{\\|z\\|^2 + \\varepsilon}$ has gradient
    $z/\\sqrt{\\|z\\|^2+\\varepsilon}$ of norm $< 1$, and windows are
    disjoint, so the layer is 1-Lipschitz (ℓ2) for every
    $\\varepsilon > 0$; as $\\varepsilon \\to 0$ it becomes gradient norm
    preserving. $\\varepsilon$ keeps the gradient finite (zero) at $x = 0$,
    where $\\sqrt{\\cdot}$ alone gives NaN (deel-lip issue #9), and shifts
    each output by at most $\\sqrt{\\varepsilon}$.

    Note: deel-lip computes $\\sqrt{n}\\sqrt{\\operatorname{avg}(x^2) +
    \\varepsilon} = \\sqrt{\\sum x^2 + n\\varepsilon}$; here $\\varepsilon$ is
    not multiplied by the window size $n$, consistently with
    `ScaledGlobalL2NormPooling2D`. Half-precision inputs are pooled in
    float32 and the result is cast back. Training calls on TensorFlow
    without a GPU or XLA (`channels_last`) run a fused C++ kernel that
    matches the `keras.ops` formulation (see "Fused TensorFlow CPU
    kernels" in the backends guide).

    Reference: deel-lip `ScaledL2NormPooling2D` (Serrurier et al.,
    "Achieving robustness in classification using optimal transport with
    hinge regularization", CVPR 2021).

    Args:
        pool_size: int or tuple of 2 ints, the window size.
        strides: None or equal to `pool_size` (anything else is rejected).
        padding: only `"valid"` is accepted.
        epsilon: float > 0 added under the square root.
        data_format: `"channels_last"`, `"channels_first"`, or None for
            `keras.config.image_data_format()`.
        lipschitz: positive float $L$, multiplies the output (deel-lip's
            `k_coef_lip`).

    Input shape:
        4D tensor `(batch, H, W, C)` (channels_last) or `(batch, C, H, W)`.

    Output shape:
        4D tensor with `H // p_h` and `W // p_w` spatial sizes.

    Example:

    >>> import numpy as np
    >>> x = np.array([3.0, 4.0, 0.0, 0.0], "float32").reshape(1, 2, 2, 1)
    >>> layer = ScaledL2NormPooling2D(data_format="channels_last")
    >>> round(float(ops.convert_to_numpy(layer(x)).ravel()[0]), 4)
    5.0
    """

    def __init__(
        self,
        pool_size=(2, 2),
        strides=None,
        padding="valid",
        epsilon=1e-6,
        data_format=None,
        lipschitz=1.0,
        **kwargs,
    ):
        super().__init__(
            pool_size=pool_size,
            strides=strides,
            padding=padding,
            data_format=data_format,
            lipschitz=lipschitz,
            **kwargs,
        )
        self.epsilon = _validate_epsilon(epsilon)

    def call(self, inputs, training=None):
        x = _to_float32_if_half(inputs)
        kernels = _backend.fused_training_kernels(training, x)
        if kernels is not None and self.data_format == "channels_last":
            # One pass each way on TensorFlow's CPU executor.
            outputs = kernels.l2_norm_pool(x, self.pool_size, self.epsilon)
        elif None in x.shape[1:] or not _backend.runs_eagerly():
            # The fused gradient reshapes with static sizes; compiled
            # backends fuse the autodiff gradient themselves.
            outputs = self._l2_norms(x)
        else:
            outputs = self._l2_norms_fused_gradient(x)
        return ops.cast(self._scale(outputs), inputs.dtype)

    def _l2_norms(self, x):
        window_sum = self._window_sum(ops.square(x))
        return ops.sqrt(ops.add(window_sum, self.epsilon))

    def _l2_norms_fused_gradient(self, x):
        """`_l2_norms` with its gradient $x \\cdot g/y$ in one multiply.

        The gradient of $y = \\sqrt{\\sum_\\Omega x^2 + \\varepsilon}$ is
        $x\\,g/y$ over each window; eager autodiff goes through the square,
        the window sum and the square root instead (2-3x slower on torch
        CPU).
        """

        @ops.custom_gradient
        def l2_norms(x):
            y = self._l2_norms(x)

            def grad(*args, upstream=None):
                if upstream is None:
                    (upstream,) = args
                return self._broadcast_windows(x, upstream / y)

            return y, grad

        return l2_norms(x)

    def get_config(self):
        config = super().get_config()
        config["epsilon"] = self.epsilon
        return config


class _ScaledGlobalPooling2D(ScaledOneLipschitzLayer):
    """Config and shapes of the global pooling layers."""

    def __init__(
        self, data_format=None, keepdims=False, lipschitz=1.0, **kwargs
    ):
        super().__init__(lipschitz=lipschitz, **kwargs)
        self.data_format = _validation.validate_data_format(data_format)
        self.keepdims = bool(keepdims)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def compute_output_shape(self, input_shape):
        axes = _spatial_axes(self.data_format)
        if self.keepdims:
            return tuple(
                1 if i in axes else d for i, d in enumerate(input_shape)
            )
        return tuple(d for i, d in enumerate(input_shape) if i not in axes)

    def get_config(self):
        config = super().get_config()
        config.update(
            {"data_format": self.data_format, "keepdims": self.keepdims}
        )
        return config


@keras_lipschitz_export
class ScaledGlobalAveragePooling2D(_ScaledGlobalPooling2D):
    """Global average pooling rescaled to be 1-Lipschitz.

    Per channel, over the $H \\times W$ spatial positions:

    $$y = \\sqrt{HW}\\,\\operatorname{mean}_{ij}(x_{ij})
    = \\frac{1}{\\sqrt{HW}}\\sum_{i,j} x_{ij}.$$

    An inner product with a unit vector per channel: exactly 1-Lipschitz
    (ℓ2). The scale needs $H$ and $W$, so they must be known when the layer
    is built; the layer then only accepts inputs of that spatial size.

    Reference: deel-lip `ScaledGlobalAveragePooling2D`.

    Args:
        data_format: `"channels_last"`, `"channels_first"`, or None for
            `keras.config.image_data_format()`.
        keepdims: bool, keep the spatial axes with size 1.
        lipschitz: positive float $L$, multiplies the output (deel-lip's
            `k_coef_lip`).

    Input shape:
        4D tensor with static spatial sizes.

    Output shape:
        `(batch, C)`, or `(batch, 1, 1, C)` / `(batch, C, 1, 1)` with
        `keepdims=True`.

    Example:

    >>> import numpy as np
    >>> x = np.ones((1, 3, 3, 2), "float32")
    >>> layer = ScaledGlobalAveragePooling2D(data_format="channels_last")
    >>> ops.convert_to_numpy(layer(x)).tolist()  # 9 / sqrt(9)
    [[3.0, 3.0]]
    """

    def __init__(
        self, data_format=None, keepdims=False, lipschitz=1.0, **kwargs
    ):
        super().__init__(
            data_format=data_format,
            keepdims=keepdims,
            lipschitz=lipschitz,
            **kwargs,
        )
        self._inverse_sqrt_size = None

    def build(self, input_shape):
        axes = _spatial_axes(self.data_format)
        sizes = [input_shape[axis] for axis in axes]
        if any(size is None for size in sizes):
            raise ValueError(
                "ScaledGlobalAveragePooling2D needs static spatial sizes "
                "(its scale is 1/sqrt(H*W)); check `data_format` "
                f"({self.data_format!r}) and the input. "
                f"Received: input_shape={input_shape}"
            )
        self._inverse_sqrt_size = 1.0 / math.sqrt(sizes[0] * sizes[1])
        self.input_spec = keras.layers.InputSpec(
            ndim=4, axes={axes[0]: sizes[0], axes[1]: sizes[1]}
        )

    def call(self, inputs):
        total = ops.sum(
            inputs, axis=_spatial_axes(self.data_format), keepdims=self.keepdims
        )
        # `lipschitz` is read here, not at build, so it can still be set.
        scale = self.lipschitz * self._inverse_sqrt_size
        return ops.multiply(total, ops.cast(scale, inputs.dtype))


@keras_lipschitz_export
class ScaledGlobalL2NormPooling2D(_ScaledGlobalPooling2D):
    """Global ℓ2-norm pooling: the smoothed norm of each channel's map.

    Per channel, over all spatial positions:

    $$y = \\sqrt{\\sum_{i,j} x_{ij}^2 + \\varepsilon}.$$

    1-Lipschitz (ℓ2) for every $\\varepsilon > 0$ and gradient norm
    preserving as $\\varepsilon \\to 0$; $\\varepsilon$ keeps the gradient
    finite at $x = 0$. Works with any (also unknown) spatial size.
    Half-precision inputs are pooled in float32 and cast back.

    Reference: deel-lip `ScaledGlobalL2NormPooling2D`.

    Args:
        data_format: `"channels_last"`, `"channels_first"`, or None for
            `keras.config.image_data_format()`.
        keepdims: bool, keep the spatial axes with size 1.
        epsilon: float > 0 added under the square root.
        lipschitz: positive float $L$, multiplies the output (deel-lip's
            `k_coef_lip`).

    Input shape:
        4D tensor.

    Output shape:
        `(batch, C)`, or `(batch, 1, 1, C)` / `(batch, C, 1, 1)` with
        `keepdims=True`.

    Example:

    >>> import numpy as np
    >>> x = np.array([3.0, 4.0], "float32").reshape(1, 1, 2, 1)
    >>> layer = ScaledGlobalL2NormPooling2D(data_format="channels_last")
    >>> round(float(ops.convert_to_numpy(layer(x)).ravel()[0]), 4)
    5.0
    """

    def __init__(
        self,
        data_format=None,
        keepdims=False,
        epsilon=1e-6,
        lipschitz=1.0,
        **kwargs,
    ):
        super().__init__(
            data_format=data_format,
            keepdims=keepdims,
            lipschitz=lipschitz,
            **kwargs,
        )
        self.epsilon = _validate_epsilon(epsilon)

    def call(self, inputs):
        x = _to_float32_if_half(inputs)
        total = ops.sum(
            ops.square(x),
            axis=_spatial_axes(self.data_format),
            keepdims=self.keepdims,
        )
        outputs = self._scale(ops.sqrt(ops.add(total, self.epsilon)))
        return ops.cast(outputs, inputs.dtype)

    def get_config(self):
        config = super().get_config()
        config["epsilon"] = self.epsilon
        return config


_CHANNEL_ORDERS = ("space_to_depth", "pixel_unshuffle")

# Permutations of the blocked tensors, by (data_format, channel_order).
# channels_last blocks (batch, H/ph, ph, W/pw, pw, C) and channels_first
# blocks (batch, C, H/ph, ph, W/pw, pw) are transposed to the output layout.
_DOWN_PERMUTATIONS = {
    ("channels_last", "space_to_depth"): (0, 1, 3, 2, 4, 5),
    ("channels_last", "pixel_unshuffle"): (0, 1, 3, 5, 2, 4),
    ("channels_first", "space_to_depth"): (0, 3, 5, 1, 2, 4),
    ("channels_first", "pixel_unshuffle"): (0, 1, 3, 5, 2, 4),
}
# The inverse permutations; their inputs are the down-sampled tensor with its
# depth split as (ph, pw, C) (space_to_depth) or (C, ph, pw) (pixel_unshuffle),
# after (channels_last) or before (channels_first) the spatial axes.
_UP_PERMUTATIONS = {
    ("channels_last", "space_to_depth"): (0, 1, 3, 2, 4, 5),
    ("channels_last", "pixel_unshuffle"): (0, 1, 4, 2, 5, 3),
    ("channels_first", "space_to_depth"): (0, 3, 4, 1, 5, 2),
    ("channels_first", "pixel_unshuffle"): (0, 1, 4, 2, 5, 3),
}


def _split_depth(pool_size, channels, channel_order):
    """The depth axis `ph pw C` as the three axes of `channel_order`."""
    ph, pw = pool_size
    if channel_order == "space_to_depth":
        return (ph, pw, channels)
    return (channels, ph, pw)


class _InvertibleResampling2D(OneLipschitzLayer):
    """Arguments, config and shape checks of the space/depth permutations."""

    def __init__(
        self,
        pool_size=2,
        data_format=None,
        channel_order="space_to_depth",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.pool_size = _validation.validate_int_tuple("pool_size", pool_size)
        self.data_format = _validation.validate_data_format(data_format)
        self.channel_order = _validation.validate_choice(
            "channel_order", channel_order, set(_CHANNEL_ORDERS)
        )
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def _image_axes(self, input_shape):
        """`(height, width, channels)` of a 4D shape and their axes."""
        if self.data_format == "channels_last":
            _, height, width, channels = input_shape
            axes = (1, 2, 3)
        else:
            _, channels, height, width = input_shape
            axes = (2, 3, 1)
        return (height, width, channels), axes

    def _check_known(self, input_shape, sizes):
        for name, size in zip(("H", "W", "channel dimension"), sizes):
            if size is None:
                raise ValueError(
                    f"{type(self).__name__} needs a known {name} "
                    f"(data_format={self.data_format!r}). "
                    f"Received: input_shape={input_shape}"
                )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "pool_size": self.pool_size,
                "data_format": self.data_format,
                "channel_order": self.channel_order,
            }
        )
        return config


@keras_lipschitz_export
class InvertibleDownSampling(_InvertibleResampling2D):
    """Space-to-depth: moves each $p_h \\times p_w$ block into the channels.

    `(batch, H, W, C)` becomes `(batch, H/p_h, W/p_w, p_h p_w C)` (or the
    `channels_first` equivalent). Output pixel $(i, j)$ gathers the block of
    input pixels $(i p_h + a, j p_w + b)$, $0 \\le a < p_h$,
    $0 \\le b < p_w$; input channel $c$ of block pixel $(a, b)$ becomes
    output channel

    - $(a\\,p_w + b)\\,C + c$ with `channel_order="space_to_depth"` (the
      default; the order of `tf.nn.space_to_depth`);
    - $c\\,p_h p_w + a\\,p_w + b$ with `channel_order="pixel_unshuffle"`
      (the order of PyTorch's `PixelUnshuffle` and of deel-lip's
      `InvertibleDownSampling`: use it for weights ported from deel-lip or
      PyTorch).

    The order is the same for both data formats.

    A permutation of the coordinates: orthogonal, hence 1-Lipschitz,
    gradient norm preserving and exactly invertible (`InvertibleUpSampling`
    with the same arguments is its inverse). $H$, $W$ and $C$ must be known
    and $H$, $W$ divisible by the pool.

    Reference: Jacobsen, Smeulders, Oyallon, "i-RevNet: Deep invertible
    networks", ICLR 2018; used for downsampling in orthogonal networks by
    SOC (Singla & Feizi, ICML 2021) and AOL (Prach & Lampert, ECCV 2022).

    Args:
        pool_size: int or tuple of 2 ints $(p_h, p_w)$.
        data_format: `"channels_last"`, `"channels_first"`, or None for
            `keras.config.image_data_format()`.
        channel_order: `"space_to_depth"` (default) or `"pixel_unshuffle"`
            (deel-lip, PyTorch), see above.

    Input shape:
        4D tensor with static H, W, C; H divisible by $p_h$, W by $p_w$.

    Output shape:
        `(batch, H/p_h, W/p_w, p_h p_w C)` (channels_last) or
        `(batch, p_h p_w C, H/p_h, W/p_w)` (channels_first).

    Example:

    >>> import numpy as np
    >>> x = np.arange(8, dtype="float32").reshape(1, 2, 2, 2)
    >>> layer = InvertibleDownSampling(2, data_format="channels_last")
    >>> ops.convert_to_numpy(layer(x)).tolist()
    [[[[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]]]]
    >>> layer = InvertibleDownSampling(
    ...     2, data_format="channels_last", channel_order="pixel_unshuffle"
    ... )
    >>> ops.convert_to_numpy(layer(x)).tolist()
    [[[[0.0, 2.0, 4.0, 6.0, 1.0, 3.0, 5.0, 7.0]]]]
    """

    def build(self, input_shape):
        (height, width, channels), axes = self._image_axes(input_shape)
        for name, size, pool in (
            ("H", height, self.pool_size[0]),
            ("W", width, self.pool_size[1]),
        ):
            if size is None or size % pool:
                raise ValueError(
                    f"`pool_size` {self.pool_size} must divide the spatial "
                    f"sizes, and {name} must be known "
                    f"(data_format={self.data_format!r}). "
                    f"Received: {name}={size}, input_shape={input_shape}"
                )
        if channels is None:
            raise ValueError(
                "InvertibleDownSampling needs a known channel dimension "
                f"(data_format={self.data_format!r}). "
                f"Received: input_shape={input_shape}"
            )
        self.input_spec = keras.layers.InputSpec(
            ndim=4, axes=dict(zip(axes, (height, width, channels)))
        )

    def call(self, inputs):
        ph, pw = self.pool_size
        (height, width, channels), _ = self._image_axes(inputs.shape)
        ho, wo = height // ph, width // pw
        depth = ph * pw * channels
        permutation = _DOWN_PERMUTATIONS[(self.data_format, self.channel_order)]
        if self.data_format == "channels_last":
            x = ops.reshape(inputs, (-1, ho, ph, wo, pw, channels))
            x = ops.transpose(x, permutation)
            return ops.reshape(x, (-1, ho, wo, depth))
        x = ops.reshape(inputs, (-1, channels, ho, ph, wo, pw))
        x = ops.transpose(x, permutation)
        return ops.reshape(x, (-1, depth, ho, wo))

    def compute_output_shape(self, input_shape):
        ph, pw = self.pool_size

        def div(size, pool):
            return None if size is None else size // pool

        if self.data_format == "channels_last":
            batch, height, width, channels = input_shape
            depth = None if channels is None else ph * pw * channels
            return (batch, div(height, ph), div(width, pw), depth)
        batch, channels, height, width = input_shape
        depth = None if channels is None else ph * pw * channels
        return (batch, depth, div(height, ph), div(width, pw))


@keras_lipschitz_export
class InvertibleUpSampling(_InvertibleResampling2D):
    """Depth-to-space: the inverse of `InvertibleDownSampling`.

    `(batch, h, w, p_h p_w C)` becomes `(batch, h p_h, w p_w, C)` (or the
    `channels_first` equivalent): output pixel $(i p_h + a, j p_w + b)$,
    channel $c$, is input pixel $(i, j)$, channel

    - $(a\\,p_w + b)\\,C + c$ with `channel_order="space_to_depth"` (the
      default; the order of `tf.nn.depth_to_space`);
    - $c\\,p_h p_w + a\\,p_w + b$ with `channel_order="pixel_unshuffle"`
      (PyTorch's `PixelShuffle`, deel-lip's `InvertibleUpSampling`).

    With the same `pool_size`, `data_format` and `channel_order`,
    `InvertibleUpSampling` and `InvertibleDownSampling` are inverse to
    each other. A permutation of the coordinates: orthogonal, hence
    1-Lipschitz and gradient norm preserving.

    Reference: Jacobsen, Smeulders, Oyallon, "i-RevNet: Deep invertible
    networks", ICLR 2018; Shi et al., "Real-time single image and video
    super-resolution using an efficient sub-pixel convolutional neural
    network", CVPR 2016 (pixel shuffle).

    Args:
        pool_size: int or tuple of 2 ints $(p_h, p_w)$.
        data_format: `"channels_last"`, `"channels_first"`, or None for
            `keras.config.image_data_format()`.
        channel_order: `"space_to_depth"` (default) or `"pixel_unshuffle"`
            (deel-lip, PyTorch), see above.

    Input shape:
        4D tensor with static h, w and a static channel dimension divisible
        by $p_h p_w$.

    Output shape:
        `(batch, h p_h, w p_w, C)` (channels_last) or
        `(batch, C, h p_h, w p_w)` (channels_first), with $C$ the input
        channels divided by $p_h p_w$.

    Example:

    >>> import numpy as np
    >>> y = np.arange(4, dtype="float32").reshape(1, 1, 1, 4)
    >>> layer = InvertibleUpSampling(2, data_format="channels_last")
    >>> ops.convert_to_numpy(layer(y))[0, :, :, 0].tolist()
    [[0.0, 1.0], [2.0, 3.0]]
    """

    def build(self, input_shape):
        sizes, axes = self._image_axes(input_shape)
        self._check_known(input_shape, sizes)
        ph, pw = self.pool_size
        if sizes[2] % (ph * pw):
            raise ValueError(
                f"`pool_size` {self.pool_size} must be such that "
                f"p_h * p_w = {ph * pw} divides the channel dimension "
                f"(data_format={self.data_format!r}). "
                f"Received: channels={sizes[2]}, input_shape={input_shape}"
            )
        self.input_spec = keras.layers.InputSpec(
            ndim=4, axes=dict(zip(axes, sizes))
        )

    def call(self, inputs):
        ph, pw = self.pool_size
        (height, width, depth), _ = self._image_axes(inputs.shape)
        channels = depth // (ph * pw)
        split = _split_depth(self.pool_size, channels, self.channel_order)
        permutation = _UP_PERMUTATIONS[(self.data_format, self.channel_order)]
        if self.data_format == "channels_last":
            x = ops.reshape(inputs, (-1, height, width) + split)
            x = ops.transpose(x, permutation)
            return ops.reshape(x, (-1, height * ph, width * pw, channels))
        x = ops.reshape(inputs, (-1,) + split + (height, width))
        x = ops.transpose(x, permutation)
        return ops.reshape(x, (-1, channels, height * ph, width * pw))

    def compute_output_shape(self, input_shape):
        ph, pw = self.pool_size

        def times(size, pool):
            return None if size is None else size * pool

        (height, width, depth), _ = self._image_axes(input_shape)
        channels = None if depth is None else depth // (ph * pw)
        batch = input_shape[0]
        out_h, out_w = times(height, ph), times(width, pw)
        if self.data_format == "channels_last":
            return (batch, out_h, out_w, channels)
        return (batch, channels, out_h, out_w)


@keras_lipschitz_export
class LipPool(OneLipschitzLayer):
    """Signed distance of channel pairs to a learnable wedge ("LipPool").

    Halves the channels: the input's channels are split into two halves
    $x$ (first) and $y$ (second), and output channel $c$ is the signed
    distance of the point $(x_c, y_c) \\in \\mathbb{R}^2$ to the wedge
    $\\{|\\operatorname{angle}| \\le \\theta_c/2\\}$ around the $+x$ axis
    (negative inside), with one learnable angle $\\theta_c \\in [0, \\pi]$
    per pair, shared over space. With $\\varphi = \\operatorname{atan2}(y,
    x) \\bmod 2\\pi$, $s = \\sin(\\theta/2)$, $k = \\cos(\\theta/2)$:

    $$d(x, y) = \\begin{cases}
    -s\\,x + k\\,y & \\varphi < (\\theta + \\pi)/2,\\\\
    \\sqrt{x^2 + y^2} & (\\theta+\\pi)/2 \\le \\varphi < (3\\pi-\\theta)/2,\\\\
    -s\\,x - k\\,y & \\text{otherwise,}
    \\end{cases}$$

    computed without `atan2` as $-s\\,x + k\\,|y|$ where
    $k\\,x + s\\,|y| \\ge 0$ (the foot of the perpendicular lies on a
    boundary ray) and $\\sqrt{x^2 + y^2}$ (the apex is closest) elsewhere.
    $\\theta = \\pi$ gives $-x$ (a half-plane), $\\theta = 0$ the distance
    to the ray $\\{y = 0, x \\ge 0\\}$.

    A signed distance to a convex set is 1-Lipschitz, and each output
    channel reads its own pair of input channels, so the layer is
    1-Lipschitz (ℓ2). It replaces $\\max(x, y)$ in the channel-halving
    downsampling of Singla & Feizi, "Improved techniques for deterministic
    l2 robustness" (NeurIPS 2022; "lip1" pooling in the official code).

    The raw angles are trainable and clipped to $[0, \\pi]$ in `call`
    (initialised uniformly in $[0, \\pi]$). The norm uses a safe square
    root, so the gradient is finite at $(0, 0)$ (where the value is 0).
    Half-precision inputs are computed in float32 and cast back.

    Args:
        data_format: `"channels_last"`, `"channels_first"`, or None for
            `keras.config.image_data_format()`; the channel axis is -1 or
            1 (inputs of any rank >= 2).
        theta_initializer: initializer of the raw angles (default
            uniform in $[0, \\pi]$).
        seed: seed of the default initializer.

    Input shape:
        `(batch, ..., 2c)` (channels_last) or `(batch, 2c, ...)`, with a
        known even channel count.

    Output shape:
        The same with `c` channels.

    Example:

    >>> import numpy as np
    >>> layer = LipPool(theta_initializer="zeros", data_format="channels_last")
    >>> x = np.array([[3.0, -4.0]], "float32")  # (x, y) = (3, -4)
    >>> round(float(ops.convert_to_numpy(layer(x))[0, 0]), 4)  # |y|
    4.0
    """

    def __init__(
        self, data_format=None, theta_initializer=None, seed=None, **kwargs
    ):
        super().__init__(**kwargs)
        self.data_format = _validation.validate_data_format(data_format)
        if seed is not None:
            seed = _validation.validate_positive_int("seed", seed, minimum=0)
        self.seed = seed
        if theta_initializer is None:
            theta_initializer = keras.initializers.RandomUniform(
                0.0, math.pi, seed=seed
            )
        self.theta_initializer = keras.initializers.get(theta_initializer)
        self.input_spec = keras.layers.InputSpec(min_ndim=2)

    def _channel_axis(self, rank):
        return rank - 1 if self.data_format == "channels_last" else 1

    def build(self, input_shape):
        axis = self._channel_axis(len(input_shape))
        channels = input_shape[axis]
        if channels is None or channels % 2:
            raise ValueError(
                "LipPool needs a known, even number of channels (it pairs "
                "the first half with the second half; "
                f"data_format={self.data_format!r}). "
                f"Received: input_shape={input_shape}"
            )
        self.theta = self.add_weight(
            name="theta",
            shape=(channels // 2,),
            initializer=self.theta_initializer,
            autocast=False,
        )
        self.input_spec = keras.layers.InputSpec(
            min_ndim=2, axes={axis: channels}
        )

    def call(self, inputs):
        x = _to_float32_if_half(inputs)
        rank = len(x.shape)
        axis = self._channel_axis(rank)
        first, second = ops.split(x, 2, axis=axis)
        theta = ops.clip(ops.cast(self.theta, x.dtype), 0.0, math.pi)
        shape = [1] * rank
        shape[axis] = -1
        theta = ops.reshape(theta, shape)
        sin, cos = ops.sin(theta / 2.0), ops.cos(theta / 2.0)
        abs_second = ops.abs(second)
        to_ray = -sin * first + cos * abs_second
        squared = ops.square(first) + ops.square(second)
        # Safe norm: sqrt only of positive values, so d/dx is finite at 0.
        positive = squared > 0
        norm = ops.where(
            positive, ops.sqrt(ops.where(positive, squared, 1.0)), 0.0
        )
        on_ray = cos * first + sin * abs_second >= 0
        outputs = ops.where(on_ray, to_ray, norm)
        return ops.cast(outputs, inputs.dtype)

    def compute_output_shape(self, input_shape):
        axis = self._channel_axis(len(input_shape))
        output_shape = list(input_shape)
        if output_shape[axis] is not None:
            output_shape[axis] //= 2
        return tuple(output_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "data_format": self.data_format,
                "theta_initializer": keras.initializers.serialize(
                    self.theta_initializer
                ),
                "seed": self.seed,
            }
        )
        return config
