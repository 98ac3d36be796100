"""Gradient-norm-preserving activations: sorting and Householder reflections.

Every layer here acts on the channel axis (`axis`, default -1) and is
*locally a permutation or a reflection* of the channels: it is 1-Lipschitz
in the ℓ2 norm and its Jacobian is orthogonal almost everywhere (gradient
norm preserving, GNP). These are the activations that keep orthogonal
networks GNP (Anil, Lucas, Grosse, ICML 2019).

Channel pairing convention (fixed by this library; keep it when exporting
or porting weights): pairs and groups are made of **adjacent** channels,
`(x_0, x_1), (x_2, x_3), ...`, and sorted pairs are returned in the order
`(min, max)`. This is the deel-lip `GroupSort2` convention. The SOC code
(`MaxMin`) and the Householder layers of SOC and deel-lip pair the first
half of the channels with the second half instead, and SOC's `MaxMin`
returns `(max, min)`.
"""

import math
import numbers

import keras
import numpy as np
from keras import ops

from keras_lipschitz import _backend
from keras_lipschitz.api_export import keras_lipschitz_export
from keras_lipschitz.layers._base import OneLipschitzLayer
from keras_lipschitz.layers import _validation

HALF_PI = math.pi / 2.0


def _validate_axis(axis):
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise ValueError(
            f"`axis` must be an integer (the channel axis). Received: "
            f"axis={axis!r}"
        )
    return int(axis)


class _ChannelActivation(OneLipschitzLayer):
    """Resolves the channel axis and checks the channel count at build."""

    def __init__(self, axis=-1, **kwargs):
        super().__init__(**kwargs)
        self.axis = _validate_axis(axis)
        self.supports_masking = True
        self.input_spec = keras.layers.InputSpec(min_ndim=2)
        # Set at build: the non-negative channel axis and its size.
        self._channel_axis = None
        self._channels = None

    def build(self, input_shape):
        rank = len(input_shape)
        if not -rank <= self.axis < rank or self.axis % rank == 0:
            raise ValueError(
                f"`axis` must index a non-batch axis of the {rank}D input, "
                f"i.e. be in [1, {rank - 1}] or [{-rank + 1}, -1]. "
                f"Received: axis={self.axis}, input_shape={input_shape}"
            )
        channel_axis = self.axis % rank
        channels = input_shape[channel_axis]
        if channels is None:
            raise ValueError(
                f"{type(self).__name__} needs a known channel dimension "
                f"(axis {self.axis}). Received: input_shape={input_shape}"
            )
        self._check_channels(int(channels))
        self._channel_axis = channel_axis
        self._channels = int(channels)
        self.input_spec = keras.layers.InputSpec(
            min_ndim=2, axes={self.axis: self._channels}
        )

    def _check_channels(self, channels):
        """Raises `ValueError` if the layer cannot act on `channels`."""

    def _split_groups(self, inputs, group_size):
        """Reshapes the channel axis `C` into `(C // group_size, group_size)`.

        The group axis is then `self._channel_axis + 1`. Returns the grouped
        tensor and the original shape (to reshape back).
        """
        shape = ops.shape(inputs)
        axis = self._channel_axis
        grouped_shape = (
            (-1,)
            + tuple(shape[1:axis])
            + (self._channels // group_size, group_size)
            + tuple(shape[axis + 1 :])
        )
        return ops.reshape(inputs, grouped_shape), shape

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config["axis"] = self.axis
        return config


@keras_lipschitz_export
class GroupSort(_ChannelActivation):
    """Sorts the channels in ascending order within contiguous groups.

    The channel axis of size $C$ is cut into $C/g$ groups of $g$ =
    `group_size` adjacent channels, $(x_{gk}, \\dots, x_{gk+g-1})$, and each
    group is sorted in ascending order:

    $$y_{gk:g(k+1)} = \\operatorname{sort}(x_{gk:g(k+1)}).$$

    Locally the map is a permutation of the coordinates, so it is
    1-Lipschitz in $\\ell_2$ and its Jacobian is orthogonal almost
    everywhere (gradient norm preserving). $g = 2$ is MaxMin, returned as
    `(min, max)` for each pair of adjacent channels (deel-lip convention;
    SOC returns `(max, min)` of the two channel halves); $g = C$ is
    `FullSort`.

    With $g = 2$, training calls on TensorFlow without a GPU or XLA run a
    fused C++ kernel that gives the same floats as the `keras.ops`
    formulation (see "Fused TensorFlow CPU kernels" in the backends
    guide).

    Reference: Anil, Lucas, Grosse, "Sorting out Lipschitz function
    approximation", ICML 2019.

    Args:
        group_size: int >= 2 that divides the channel count. Size 1 would be
            the identity and is rejected.
        axis: int, the channel axis (default -1; pass 1 for
            `channels_first` images). The batch axis 0 is not allowed.

    Input shape:
        Any tensor of rank >= 2 whose channel dimension is known and
        divisible by `group_size`.

    Output shape:
        Same as the input.

    Example:

    >>> import numpy as np
    >>> layer = GroupSort(group_size=2)
    >>> x = np.array([[3.0, 1.0, 2.0, 5.0]], "float32")
    >>> ops.convert_to_numpy(layer(x)).tolist()
    [[1.0, 3.0, 2.0, 5.0]]
    >>> layer.lipschitz_upper_bound()
    1.0
    """

    def __init__(self, group_size=2, axis=-1, **kwargs):
        super().__init__(axis=axis, **kwargs)
        self.group_size = _validation.validate_positive_int(
            "group_size", group_size, minimum=2
        )

    def _check_channels(self, channels):
        if channels % self.group_size:
            raise ValueError(
                f"`group_size` must divide the number of channels, "
                f"{channels} (axis {self.axis}). "
                f"Received: group_size={self.group_size}"
            )

    def build(self, input_shape):
        super().build(input_shape)
        if self.group_size == 2:
            # P (C x C/2) maps x to the pair differences x_{2i} - x_{2i+1}.
            pairs = np.arange(self._channels // 2)
            self._pair_difference = np.zeros(
                (self._channels, self._channels // 2), "float32"
            )
            self._pair_difference[2 * pairs, pairs] = 1.0
            self._pair_difference[2 * pairs + 1, pairs] = -1.0
            # -P^T, so that the output is an add (whose gradient is free)
            # rather than a subtract (whose gradient negates a full tensor).
            self._pair_spread = np.ascontiguousarray(-self._pair_difference.T)

    def call(self, inputs, training=None):
        if self.group_size == 2:
            kernels = _backend.fused_training_kernels(training, inputs)
            if (
                kernels is not None
                and self._channel_axis == len(inputs.shape) - 1
            ):
                # One pass each way on TensorFlow's CPU executor; the same
                # floats as `_sort_pairs`.
                return kernels.min_max_pairs(inputs)
            return self._sort_pairs(inputs)
        if self.group_size == self._channels:
            return ops.sort(inputs, axis=self._channel_axis)
        grouped, shape = self._split_groups(inputs, self.group_size)
        sorted_groups = ops.sort(grouped, axis=self._channel_axis + 1)
        return ops.reshape(sorted_groups, shape)

    def _sort_pairs(self, inputs):
        """MaxMin of adjacent pairs as `x + relu(x P) (-P^T)`.

        With d = a - b for the pair (a, b): (a - relu(d), b + relu(d)) is
        (min, max). Two small matmuls and a ReLU are the fastest
        `keras.ops` formulation measured on every backend: 1.0-1.25x a
        plain ReLU on torch and JAX, about 2x on TensorFlow's CPU graph
        executor (no op fusion there; its training steps use a fused
        kernel with the same arithmetic, `_backend.fused_training_kernels`),
        whereas reshaping channels into pairs and interleaving them back
        costs 2-6x more (benchmarks/README.md).
        The outputs are exact up to the float32 rounding of a - b: each is
        within 2 eps max(|a|, |b|) of the true min/max (so a pair such as
        (1e4, -1e-4) yields min 0, not -1e-4). This does not affect the
        Lipschitz constant.
        """
        last = self._channel_axis == len(inputs.shape) - 1
        x = inputs if last else ops.moveaxis(inputs, self._channel_axis, -1)
        shape = (-1,) + tuple(x.shape[1:])
        if None in shape[1:]:
            shape = ops.shape(x)
        # 2-D matmuls are 10-20 % faster than batched ones on every backend.
        flat = ops.reshape(x, (-1, self._channels))
        p = ops.convert_to_tensor(self._pair_difference, dtype=x.dtype)
        spread = ops.convert_to_tensor(self._pair_spread, dtype=x.dtype)
        flat = ops.add(flat, ops.matmul(ops.relu(ops.matmul(flat, p)), spread))
        y = ops.reshape(flat, shape)
        return y if last else ops.moveaxis(y, -1, self._channel_axis)

    def get_config(self):
        config = super().get_config()
        config["group_size"] = self.group_size
        return config


@keras_lipschitz_export
class GroupSort2(GroupSort):
    """MaxMin: `GroupSort` with groups of 2 adjacent channels.

    Each pair of adjacent channels $(x_{2i}, x_{2i+1})$ becomes
    $(\\min(x_{2i}, x_{2i+1}), \\max(x_{2i}, x_{2i+1}))$. It is 1-Lipschitz
    and gradient norm preserving. Not to be confused with deel-lip's
    `MaxMin`, which is $(\\mathrm{ReLU}(x), \\mathrm{ReLU}(-x))$ and doubles
    the channels.

    Reference: Anil, Lucas, Grosse, "Sorting out Lipschitz function
    approximation", ICML 2019.

    Args:
        axis: int, the channel axis (default -1).

    Input shape:
        Any tensor of rank >= 2 with an even, known channel dimension.

    Output shape:
        Same as the input.

    Example:

    >>> import numpy as np
    >>> x = np.array([[3.0, 1.0, -2.0, 5.0]], "float32")
    >>> ops.convert_to_numpy(GroupSort2()(x)).tolist()
    [[1.0, 3.0, -2.0, 5.0]]
    """

    def __init__(self, axis=-1, **kwargs):
        super().__init__(group_size=2, axis=axis, **kwargs)

    def get_config(self):
        config = super().get_config()
        del config["group_size"]
        return config


@keras_lipschitz_export
class FullSort(GroupSort):
    """Sorts all the channels in ascending order.

    $$y = \\operatorname{sort}(x)$$

    along the channel axis: `GroupSort` with a single group of all $C$
    channels. 1-Lipschitz and gradient norm preserving.

    Reference: Anil, Lucas, Grosse, "Sorting out Lipschitz function
    approximation", ICML 2019.

    Args:
        axis: int, the channel axis (default -1).

    Input shape:
        Any tensor of rank >= 2 with a known channel dimension.

    Output shape:
        Same as the input.

    Example:

    >>> import numpy as np
    >>> x = np.array([[3.0, 1.0, -2.0, 5.0]], "float32")
    >>> ops.convert_to_numpy(FullSort()(x)).tolist()
    [[-2.0, 1.0, 3.0, 5.0]]
    """

    def __init__(self, axis=-1, **kwargs):
        # The group size becomes the channel count at build.
        super().__init__(group_size=2, axis=axis, **kwargs)
        self.group_size = None

    def _check_channels(self, channels):
        self.group_size = channels

    def get_config(self):
        config = super().get_config()
        del config["group_size"]
        return config


@keras_lipschitz_export
class Householder(_ChannelActivation):
    """Learnable Householder activation of order 1 (HH1) on channel pairs.

    Each pair of adjacent channels $z = (x, y) = (x_{2i}, x_{2i+1})$ has its
    own angle $\\theta_i$ (a trainable float32 weight, shared over all the
    other axes). With $v = (\\sin\\frac{\\theta}{2}, -\\cos\\frac{\\theta}{2})$:

    $$f(z) = \\begin{cases} z & \\text{if } v^\\top z \\le 0,\\\\
    (I - 2vv^\\top)\\,z = (x\\cos\\theta + y\\sin\\theta,\\;
    x\\sin\\theta - y\\cos\\theta) & \\text{otherwise.} \\end{cases}$$

    The reflection $I - 2vv^\\top$ fixes the line $v^\\top z = 0$, so $f$ is
    continuous and piecewise orthogonal: 1-Lipschitz and gradient norm
    preserving. At the default $\\theta = \\pi/2$ it is exactly `GroupSort2`,
    $(\\min(x, y), \\max(x, y))$.

    Implementation: with $\\beta = \\theta - \\pi/2$ (exactly 0 at the
    default initialisation) the test is
    $\\cos\\frac{\\beta}{2}(x - y) + \\sin\\frac{\\beta}{2}(x + y) \\le 0$
    (the same sign as $\\sqrt2\\,v^\\top z$) and the reflection is
    $(y\\cos\\beta - x\\sin\\beta,\\; x\\cos\\beta + y\\sin\\beta)$. This is
    the same map, written so that at $\\theta = \\pi/2$ the float32
    computation reduces bit-for-bit to `GroupSort2`.

    Pairing convention: adjacent channels $(2i, 2i+1)$, as in `GroupSort2`.
    The Householder layers of the SOC code and of deel-lip pair channel
    $i$ with channel $i + C/2$ (the two halves) instead: permute the
    channels when porting their $\\theta$.

    Reference: Singla, Singla, Feizi, "Improved deterministic l2 robustness
    on CIFAR-10 and CIFAR-100", ICLR 2022.

    Args:
        axis: int, the channel axis (default -1; pass 1 for
            `channels_first` images).
        theta_initializer: initializer of the $C/2$ angles (default: the
            constant $\\pi/2$, i.e. MaxMin).

    Input shape:
        Any tensor of rank >= 2 with an even, known channel dimension $C$.

    Output shape:
        Same as the input.

    Example:

    >>> import numpy as np
    >>> layer = Householder()
    >>> x = np.array([[3.0, 1.0, -2.0, 5.0]], "float32")
    >>> ops.convert_to_numpy(layer(x)).tolist()
    [[1.0, 3.0, -2.0, 5.0]]
    >>> tuple(layer.theta.shape)
    (2,)
    """

    def __init__(self, axis=-1, theta_initializer=None, **kwargs):
        super().__init__(axis=axis, **kwargs)
        if theta_initializer is None:
            theta_initializer = keras.initializers.Constant(HALF_PI)
        self.theta_initializer = keras.initializers.get(theta_initializer)
        self.theta = None

    def _check_channels(self, channels):
        if channels % 2:
            raise ValueError(
                "Householder needs an even number of channels (it acts on "
                f"channel pairs) along `axis`={self.axis}. Received: "
                f"{channels} channels"
            )

    def build(self, input_shape):
        super().build(input_shape)
        # float32 even under a mixed policy (autocast=False): the angles are
        # small numbers whose trigonometry float16 would degrade.
        self.theta = self.add_weight(
            name="theta",
            shape=(self._channels // 2,),
            initializer=self.theta_initializer,
            dtype="float32",
            autocast=False,
        )

    def call(self, inputs):
        grouped, shape = self._split_groups(inputs, 2)
        pair_axis = self._channel_axis + 1
        x, y = ops.split(grouped, 2, axis=pair_axis)
        # beta has shape (C/2, 1, 1, ...) to broadcast against x and y.
        trailing = len(shape) - self._channel_axis
        beta = ops.subtract(
            ops.convert_to_tensor(self.theta),
            ops.convert_to_tensor(HALF_PI, dtype="float32"),
        )
        beta = ops.reshape(beta, (self._channels // 2,) + (1,) * trailing)
        half = ops.multiply(beta, 0.5)
        cos_half = ops.cast(ops.cos(half), inputs.dtype)
        sin_half = ops.cast(ops.sin(half), inputs.dtype)
        cos_beta = ops.cast(ops.cos(beta), inputs.dtype)
        sin_beta = ops.cast(ops.sin(beta), inputs.dtype)
        # Same sign as v^T z (times sqrt(2)); exactly x - y when beta = 0.
        side = ops.add(
            ops.multiply(cos_half, ops.subtract(x, y)),
            ops.multiply(sin_half, ops.add(x, y)),
        )
        keep = ops.less_equal(side, 0)
        reflected_x = ops.subtract(
            ops.multiply(cos_beta, y), ops.multiply(sin_beta, x)
        )
        reflected_y = ops.add(
            ops.multiply(cos_beta, x), ops.multiply(sin_beta, y)
        )
        out_x = ops.where(keep, x, reflected_x)
        out_y = ops.where(keep, y, reflected_y)
        outputs = ops.concatenate([out_x, out_y], axis=pair_axis)
        return ops.reshape(outputs, shape)

    def get_config(self):
        config = super().get_config()
        config["theta_initializer"] = keras.initializers.serialize(
            self.theta_initializer
        )
        return config
