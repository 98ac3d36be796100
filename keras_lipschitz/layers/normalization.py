"""Centering and Lipschitz batch normalization layers.

Plain batch normalization divides each channel by its own standard
deviation, so a channel with a tiny variance is amplified without limit and
the network's Lipschitz constant is unbounded. The layers here keep a known
constant at inference:

- `BatchCentering`: $y = x - \\mu + \\beta$ with the batch mean in training
  and a running mean at inference (a translation: exactly 1-Lipschitz);
- `LayerCentering`: subtracts each sample's mean over the spatial positions,
  per channel (an orthogonal projection: 1-Lipschitz);
- `BatchLipNorm`: batch normalization with **one** variance shared by all
  channels (the largest one, as in deel-torchlip) and a gain capped at
  `lipschitz`, so the layer is `lipschitz`-Lipschitz at inference.

All three take the channel axis as `axis` (default -1, channels last), like
`keras.layers.BatchNormalization`, and work on inputs of any rank (the
batch axis is always 0). They are certified in inference mode: in training
the batch statistics couple the samples of a batch.

References: deel-torchlip 1.0.5 `deel.torchlip.modules.normalization`
(`LayerCentering`, `BatchCentering`, `BatchLipNorm`); orthogonium
`orthogonium.layers.normalization` (`LayerCentering2D`,
`BatchCentering2D`).
"""

import numbers

import keras
import numpy as np
from keras import ops

from keras_lipschitz.api_export import keras_lipschitz_export
from keras_lipschitz.layers import _validation


def _validate_axis(axis):
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise ValueError(
            "`axis` must be an integer, the channel axis (-1 for channels "
            f"last, 1 for channels first). Received: axis={axis!r}"
        )
    return int(axis)


def _validate_momentum(momentum):
    if (
        isinstance(momentum, bool)
        or not isinstance(momentum, numbers.Real)
        or not 0.0 <= momentum <= 1.0
    ):
        raise ValueError(
            "`momentum` must be a number in [0, 1] (the weight of the old "
            "running statistics). Received: "
            f"momentum={momentum!r}"
        )
    return float(momentum)


def _to_float32(x):
    """Half precision is promoted to float32; float32/float64 are kept.

    Statistics of float16 values overflow (squares above 256) and lose
    precision, so they are computed in float32 and the output cast back.
    """
    if keras.backend.standardize_dtype(x.dtype) in ("float16", "bfloat16"):
        return ops.cast(x, "float32")
    return x


class _ChannelLayer(keras.layers.Layer):
    """Channel-axis handling, shapes and config shared by the layers here.

    Subclasses call `_build_channels(input_shape)` in `build`; it resolves
    `axis` against the input rank, checks that it is not the batch axis and
    that the channel count is known, and sets `self.channels`,
    `self._axis` (non-negative) and `self._reduction_axes`.
    """

    def __init__(self, axis=-1, **kwargs):
        super().__init__(**kwargs)
        self.axis = _validate_axis(axis)
        self.channels = None
        self._axis = None
        self._reduction_axes = None

    def _resolve_axis(self, rank):
        if not -rank <= self.axis < rank or self.axis % rank == 0:
            raise ValueError(
                f"`axis` must be a channel axis of the {rank}D input, in "
                f"[1, {rank - 1}] or [{-rank + 1}, -1] (axis 0 is the batch). "
                f"Received: axis={self.axis}"
            )
        return self.axis % rank

    def _build_channels(self, input_shape, min_rank=2):
        rank = len(input_shape)
        if rank < min_rank:
            raise ValueError(
                f"{type(self).__name__} needs inputs of rank >= {min_rank} "
                f"(batch, ..., channels). Received: input_shape={input_shape}"
            )
        self._axis = self._resolve_axis(rank)
        self.channels = input_shape[self._axis]
        if self.channels is None:
            raise ValueError(
                f"{type(self).__name__} needs a known channel dimension "
                f"(axis={self.axis}). Received: input_shape={input_shape}"
            )
        self._reduction_axes = tuple(
            a for a in range(rank) if a != self._axis
        )
        self.input_spec = keras.layers.InputSpec(
            ndim=rank, axes={self._axis: self.channels}
        )

    def _broadcast(self, vector, rank):
        """A per-channel vector reshaped to broadcast along `axis`."""
        shape = [1] * rank
        shape[self._axis] = self.channels
        return ops.reshape(vector, shape)

    def compute_output_shape(self, input_shape):
        self._resolve_axis(len(input_shape))
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config["axis"] = self.axis
        return config


class _CenteringLayer(_ChannelLayer):
    """Centering with an optional learnable bias $\\beta$ (zero-initialised)."""

    def __init__(
        self,
        axis=-1,
        use_bias=True,
        bias_initializer="zeros",
        bias_regularizer=None,
        bias_constraint=None,
        **kwargs,
    ):
        super().__init__(axis=axis, **kwargs)
        self.use_bias = bool(use_bias)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.bias_constraint = keras.constraints.get(bias_constraint)
        self.bias = None

    def _add_bias(self):
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias",
                shape=(self.channels,),
                initializer=self.bias_initializer,
                regularizer=self.bias_regularizer,
                constraint=self.bias_constraint,
                autocast=False,
            )

    def _shift(self, x, mean):
        """`x - mean + bias` with per-channel `mean` and `bias`."""
        rank = len(x.shape)
        outputs = x - mean
        if self.bias is not None:
            bias = ops.cast(self.bias, x.dtype)
            # `+`, not `ops.add`: on TensorFlow `ops.add` turns a (1, C, 1, 1)
            # operand into `tf.nn.bias_add` on the *last* axis whenever that
            # axis also has size C (keras 3.15), adding the bias to the
            # wrong axis.
            outputs = outputs + self._broadcast(bias, rank)
        return outputs

    def lipschitz_upper_bound(self):
        """Guaranteed ℓ2 Lipschitz constant at inference: 1.0.

        Returns:
            A Python float.
        """
        return 1.0

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "use_bias": self.use_bias,
                "bias_initializer": keras.initializers.serialize(
                    self.bias_initializer
                ),
                "bias_regularizer": keras.regularizers.serialize(
                    self.bias_regularizer
                ),
                "bias_constraint": keras.constraints.serialize(
                    self.bias_constraint
                ),
            }
        )
        return config


@keras_lipschitz_export
class BatchCentering(_CenteringLayer):
    """Subtracts the per-channel batch mean (running mean at inference).

    With $\\mu_c$ the mean of channel $c$ over the batch and every other
    non-channel axis (the spatial positions):

    $$y = x - \\mu + \\beta.$$

    - **Training** (`training=True`): $\\mu$ is the mean of the current
      batch, with gradients, and the running mean is updated,
      $m \\leftarrow \\text{momentum}\\cdot m + (1-\\text{momentum})\\,\\mu$
      (Keras convention; gradients stopped). On the whole batch this is
      the orthogonal projection removing the per-channel batch mean:
      1-Lipschitz jointly, but each output depends on the other samples.
    - **Inference**: $\\mu$ is the running mean, a constant, so the layer is
      a translation: exactly 1-Lipschitz, every singular value of its
      Jacobian is 1 (gradient norm preserving). `lipschitz_upper_bound()`
      returns 1.0.

    As in Keras `BatchNormalization`, a layer with `trainable=False` uses
    (and does not update) the running mean even when `training=True`.

    Peers: deel-torchlip 1.0.5 `BatchCentering` (reduction over the batch
    and spatial axes, per channel; learnable bias; batch mean in training)
    keeps at inference the average of the batch means since the last
    evaluation instead of an exponential moving average. orthogonium
    `BatchCentering2D` uses an EMA (PyTorch momentum 0.1, i.e. 0.9 here)
    but subtracts the running mean in training too. Certify in inference
    mode only.

    Args:
        axis: int, the channel axis (-1: channels last; 1: channels first).
        momentum: float in [0, 1], the weight of the old running mean.
        use_bias: bool, add a learnable per-channel bias $\\beta$.
        bias_initializer: initializer of $\\beta$.
        bias_regularizer: regularizer of $\\beta$.
        bias_constraint: constraint of $\\beta$.
        moving_mean_initializer: initializer of the running mean.

    Input shape:
        Any rank >= 2, `(batch, ..., channels)` for `axis=-1`.

    Output shape:
        Same as the input.

    Example:

    >>> import numpy as np
    >>> layer = BatchCentering()
    >>> x = np.array([[1.0, 2.0], [3.0, 6.0]], "float32")
    >>> ops.convert_to_numpy(layer(x, training=True)).tolist()
    [[-1.0, -2.0], [1.0, 2.0]]
    >>> layer.lipschitz_upper_bound()
    1.0
    """

    def __init__(
        self,
        axis=-1,
        momentum=0.99,
        use_bias=True,
        bias_initializer="zeros",
        bias_regularizer=None,
        bias_constraint=None,
        moving_mean_initializer="zeros",
        **kwargs,
    ):
        super().__init__(
            axis=axis,
            use_bias=use_bias,
            bias_initializer=bias_initializer,
            bias_regularizer=bias_regularizer,
            bias_constraint=bias_constraint,
            **kwargs,
        )
        self.momentum = _validate_momentum(momentum)
        self.moving_mean_initializer = keras.initializers.get(
            moving_mean_initializer
        )
        self.moving_mean = None

    def build(self, input_shape):
        self._build_channels(input_shape)
        self._add_bias()
        self.moving_mean = self.add_weight(
            name="moving_mean",
            shape=(self.channels,),
            initializer=self.moving_mean_initializer,
            trainable=False,
            autocast=False,
        )

    def call(self, inputs, training=None):
        x = _to_float32(inputs)
        rank = len(x.shape)
        if training and self.trainable:
            mean = ops.mean(x, axis=self._reduction_axes)
            old = ops.cast(self.moving_mean, mean.dtype)
            self.moving_mean.assign(
                ops.cast(
                    old * self.momentum
                    + ops.stop_gradient(mean) * (1.0 - self.momentum),
                    self.moving_mean.dtype,
                )
            )
        else:
            mean = ops.cast(self.moving_mean, x.dtype)
        outputs = self._shift(x, self._broadcast(mean, rank))
        return ops.cast(outputs, self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "momentum": self.momentum,
                "moving_mean_initializer": keras.initializers.serialize(
                    self.moving_mean_initializer
                ),
            }
        )
        return config


@keras_lipschitz_export
class LayerCentering(_CenteringLayer):
    """Subtracts each sample's mean over the spatial positions, per channel.

    For a sample $x$ and channel $c$, with $P$ the set of the $n$ positions
    (every axis except the batch and the channel axis):

    $$y_{p,c} = x_{p,c} - \\frac{1}{n}\\sum_{q \\in P} x_{q,c} + \\beta_c.$$

    Per sample and channel the linear part is $I - \\frac{1}{n}\\mathbb{1}
    \\mathbb{1}^T$, an orthogonal projection: the layer is 1-Lipschitz in
    training and at inference alike (singular values 1, with multiplicity
    $n-1$ per channel, and 0; all 0 when $n = 1$). It has no batch
    statistics: each output depends on its own sample only.

    Peers: the spatial axes match orthogonium `LayerCentering2D` and
    deel-torchlip 1.0.5 `LayerCentering` (default `dim=(-2, -1)` on
    `(N, C, H, W)`); both add a zero-initialised learnable bias. On a rank-2
    `(batch, channels)` input deel-torchlip's default would average over the
    batch; there are no spatial positions, so this layer rejects rank 2.

    Args:
        axis: int, the channel axis (-1: channels last; 1: channels first).
        use_bias: bool, add a learnable per-channel bias $\\beta$.
        bias_initializer: initializer of $\\beta$.
        bias_regularizer: regularizer of $\\beta$.
        bias_constraint: constraint of $\\beta$.

    Input shape:
        Rank >= 3, `(batch, ..., channels)` for `axis=-1`.

    Output shape:
        Same as the input.

    Example:

    >>> import numpy as np
    >>> layer = LayerCentering()
    >>> x = np.array([1.0, 3.0, 5.0, 7.0], "float32").reshape(1, 2, 2, 1)
    >>> ops.convert_to_numpy(layer(x)).ravel().tolist()
    [-3.0, -1.0, 1.0, 3.0]
    """

    def build(self, input_shape):
        self._build_channels(input_shape, min_rank=3)
        self._spatial_axes = tuple(self._reduction_axes[1:])
        self._add_bias()

    def call(self, inputs):
        x = _to_float32(inputs)
        mean = ops.mean(x, axis=self._spatial_axes, keepdims=True)
        return ops.cast(self._shift(x, mean), self.compute_dtype)


@keras_lipschitz_export
class BatchLipNorm(_ChannelLayer):
    """Batch normalization with a shared variance and a capped gain.

    With per-channel mean $\\mu_c$ and (biased) variance $v_c$ over the
    batch and the spatial positions:

    $$y = (x - \\mu)\\odot s + \\beta,\\qquad
    g_c = \\frac{\\gamma_c}{\\sqrt{\\max_{c'} v_{c'} + \\varepsilon}},\\qquad
    s_c = g_c\\,\\frac{L}{\\max\\left(L, \\max_{c'} |g_{c'}|\\right)},$$

    where $L$ is `lipschitz`. The variance is **shared**: every channel is
    divided by the largest channel standard deviation (deel-torchlip's
    `BatchLipNorm`), so a channel with a tiny variance (e.g. a dead one) is
    not amplified, unlike in `BatchNormalization`, and the channels keep
    their relative magnitudes. The gain is then capped uniformly: if the
    largest $|g_c|$ exceeds $L$, all channels are scaled by the same
    factor, so $\\max_c |s_c| \\le L$ and the ratios $\\gamma_c/\\gamma_{c'}$
    are kept. $s$ is derived in `call` from the raw trainable $\\gamma$ (and
    finally clipped to $[-L, L]$ against float32 rounding); $\\gamma$ is
    never overwritten.

    - **Training**: batch statistics, with gradients (as in Keras and
      deel-torchlip); running statistics updated with `momentum`
      (gradients stopped). Not Lipschitz-bounded: the statistics depend on
      the batch.
    - **Inference**: running mean and variance, so the layer is the
      diagonal affine map $x \\mapsto (x - m)\\odot s + \\beta$, with ℓ2
      Lipschitz constant exactly $\\max_c |s_c| \\le L$.
      `lipschitz_upper_bound()` returns that value (float64 from the
      float32 scale the layer multiplies by; at most $L$ rounded to
      float32).

    As in Keras `BatchNormalization`, a layer with `trainable=False` uses
    (and does not update) the running statistics even when
    `training=True`.

    Differences from deel-torchlip 1.0.5 `BatchLipNorm`: it has no
    $\\gamma$ and no cap (one scalar $s = 1/\\sqrt{\\max_c \\mathrm{Var}_c}$,
    registered with a `SharedLipFactory` that multiplies the network's
    constant); it uses the unbiased variance and replaces a variance below
    `eps` by 1 instead of adding $\\varepsilon$; its running statistics are
    averages of the batch statistics since the last evaluation instead of
    an EMA; and `centering=False` (no mean subtraction) is not offered
    here. With `scale=False` and a large `lipschitz` this layer is the same
    map with Keras's moments. The maximum is taken of the running
    variances (not a running average of batch maxima).

    Args:
        axis: int, the channel axis (-1: channels last; 1: channels first).
        momentum: float in [0, 1], the weight of the old running statistics.
        epsilon: float > 0 added to the shared variance.
        lipschitz: float > 0, the cap $L$ on every channel's gain: the
            layer is `lipschitz`-Lipschitz at inference.
        center: bool, add the learnable offset $\\beta$ (Keras naming).
        scale: bool, multiply by the learnable per-channel $\\gamma$; if
            False, $\\gamma = 1$.
        beta_initializer, gamma_initializer: initializers of $\\beta$ and
            $\\gamma$.
        moving_mean_initializer, moving_variance_initializer: initializers
            of the running statistics.
        beta_regularizer, gamma_regularizer: regularizers.
        beta_constraint, gamma_constraint: constraints.

    Input shape:
        Any rank >= 2, `(batch, ..., channels)` for `axis=-1`.

    Output shape:
        Same as the input.

    Example:

    >>> import numpy as np
    >>> layer = BatchLipNorm(lipschitz=2.0, epsilon=1e-6)
    >>> x = np.array([[0.0, 0.0], [2.0, 0.5]], "float32")  # variances 1, 1/16
    >>> y = ops.convert_to_numpy(layer(x, training=True))
    >>> np.round(y, 4).tolist()  # both channels divided by std 1
    [[-1.0, -0.25], [1.0, 0.25]]
    >>> layer.lipschitz_upper_bound() <= 2.0  # inference: running stats
    True
    """

    def __init__(
        self,
        axis=-1,
        momentum=0.99,
        epsilon=1e-3,
        lipschitz=1.0,
        center=True,
        scale=True,
        beta_initializer="zeros",
        gamma_initializer="ones",
        moving_mean_initializer="zeros",
        moving_variance_initializer="ones",
        beta_regularizer=None,
        gamma_regularizer=None,
        beta_constraint=None,
        gamma_constraint=None,
        **kwargs,
    ):
        super().__init__(axis=axis, **kwargs)
        self.momentum = _validate_momentum(momentum)
        self.epsilon = _validation.validate_positive_number("epsilon", epsilon)
        self.lipschitz = _validation.validate_positive_number(
            "lipschitz", lipschitz
        )
        self.center = bool(center)
        self.scale = bool(scale)
        self.beta_initializer = keras.initializers.get(beta_initializer)
        self.gamma_initializer = keras.initializers.get(gamma_initializer)
        self.moving_mean_initializer = keras.initializers.get(
            moving_mean_initializer
        )
        self.moving_variance_initializer = keras.initializers.get(
            moving_variance_initializer
        )
        self.beta_regularizer = keras.regularizers.get(beta_regularizer)
        self.gamma_regularizer = keras.regularizers.get(gamma_regularizer)
        self.beta_constraint = keras.constraints.get(beta_constraint)
        self.gamma_constraint = keras.constraints.get(gamma_constraint)
        self.gamma = None
        self.beta = None
        self.moving_mean = None
        self.moving_variance = None

    def build(self, input_shape):
        self._build_channels(input_shape)
        shape = (self.channels,)
        if self.scale:
            self.gamma = self.add_weight(
                name="gamma",
                shape=shape,
                initializer=self.gamma_initializer,
                regularizer=self.gamma_regularizer,
                constraint=self.gamma_constraint,
                autocast=False,
            )
        if self.center:
            self.beta = self.add_weight(
                name="beta",
                shape=shape,
                initializer=self.beta_initializer,
                regularizer=self.beta_regularizer,
                constraint=self.beta_constraint,
                autocast=False,
            )
        self.moving_mean = self.add_weight(
            name="moving_mean",
            shape=shape,
            initializer=self.moving_mean_initializer,
            trainable=False,
            autocast=False,
        )
        self.moving_variance = self.add_weight(
            name="moving_variance",
            shape=shape,
            initializer=self.moving_variance_initializer,
            trainable=False,
            autocast=False,
        )

    def _scale(self, variance, dtype):
        """The per-channel gain $s$ from per-channel variances (see above)."""
        shared = ops.max(variance)
        inverse_std = ops.rsqrt(shared + ops.cast(self.epsilon, dtype))
        if self.gamma is not None:
            gain = ops.cast(self.gamma, dtype) * inverse_std
        else:
            gain = ops.ones((self.channels,), dtype) * inverse_std
        limit = ops.cast(self.lipschitz, dtype)
        # L / max(L, max|g|) = min(1, L / max|g|), without dividing by 0.
        cap = limit / ops.maximum(limit, ops.max(ops.abs(gain)))
        scale = gain * cap
        # The clip only removes float32 rounding above L; pass the gradient
        # through it unchanged (no halved gradient at the tie |s_c| = L).
        clipped = ops.clip(scale, -limit, limit)
        return scale + ops.stop_gradient(clipped - scale)

    def _update(self, variable, value):
        old = ops.cast(variable, value.dtype)
        new = old * self.momentum + ops.stop_gradient(value) * (
            1.0 - self.momentum
        )
        variable.assign(ops.cast(new, variable.dtype))

    def call(self, inputs, training=None):
        x = _to_float32(inputs)
        rank = len(x.shape)
        if training and self.trainable:
            mean = ops.mean(x, axis=self._reduction_axes)
            # Two-pass variance: no cancellation when |mean| >> std.
            centered = x - self._broadcast(mean, rank)
            variance = ops.mean(
                ops.square(centered), axis=self._reduction_axes
            )
            self._update(self.moving_mean, mean)
            self._update(self.moving_variance, variance)
        else:
            mean = ops.cast(self.moving_mean, x.dtype)
            variance = ops.cast(self.moving_variance, x.dtype)
            centered = x - self._broadcast(mean, rank)
        scale = self._scale(variance, x.dtype)
        outputs = centered * self._broadcast(scale, rank)
        if self.beta is not None:
            beta = ops.cast(self.beta, x.dtype)
            outputs = outputs + self._broadcast(beta, rank)
        return ops.cast(outputs, self.compute_dtype)

    def effective_scale(self):
        """The per-channel gain $s$ used at inference, as a NumPy array.

        Computed by the same code as `call` (in float32 unless the layer's
        variables are float64), from the running variance and $\\gamma$.

        Returns:
            A NumPy array of shape `(channels,)`.

        Raises:
            ValueError: if the layer is not built.
        """
        if not self.built:
            raise ValueError(
                f"BatchLipNorm '{self.name}' must be built (called on an "
                "input) before its scale exists."
            )
        # `call` computes in the variables' dtype (float32, also under mixed
        # precision, where half inputs are promoted).
        dtype = keras.backend.standardize_dtype(self.moving_variance.dtype)
        variance = ops.convert_to_tensor(self.moving_variance)
        return ops.convert_to_numpy(self._scale(variance, dtype))

    def lipschitz_upper_bound(self):
        """Guaranteed ℓ2 Lipschitz constant at inference: $\\max_c |s_c|$.

        At inference the layer is $x \\mapsto (x - m)\\odot s + \\beta$, a
        diagonal affine map whose constant is exactly $\\max_c |s_c|$, at
        most `lipschitz` (rounded to float32). Computed in float64 from the
        float32 scale that the layer multiplies by.

        Returns:
            A Python float.
        """
        scale = np.asarray(self.effective_scale(), dtype=np.float64)
        return float(np.max(np.abs(scale)))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "momentum": self.momentum,
                "epsilon": self.epsilon,
                "lipschitz": self.lipschitz,
                "center": self.center,
                "scale": self.scale,
            }
        )
        for kind, module in (
            ("initializer", keras.initializers),
            ("regularizer", keras.regularizers),
            ("constraint", keras.constraints),
        ):
            for weight in ("beta", "gamma"):
                name = f"{weight}_{kind}"
                config[name] = module.serialize(getattr(self, name))
        for name in ("moving_mean_initializer", "moving_variance_initializer"):
            config[name] = keras.initializers.serialize(getattr(self, name))
        return config
