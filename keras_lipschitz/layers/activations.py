"""Gradient-norm-preserving activations: sorting and Householder reflections.

Every layer here acts on the channel axis (`axis`, default -1) and is
*locally a permutation or a reflection* of the channels (`MaxMin`: locally
a signed selection of the channels into twice as many): it is 1-Lipschitz
in the ℓ2 norm and its Jacobian has orthonormal columns almost everywhere
(gradient norm preserving, GNP). These are the activations that keep
orthogonal networks GNP (Anil, Lucas, Grosse, ICML 2019).

Channel pairing convention (keep it when exporting or porting weights):
pairs and groups are made of **adjacent** channels,
`(x_0, x_1), (x_2, x_3), ...`, and sorted pairs are returned in the order
`(min, max)`. This is the deel-lip `GroupSort2` convention. The SOC code's
sorting activation (which SOC calls `MaxMin`; it is a `GroupSort2` of the
two channel halves returning `(max, min)`, not our `MaxMin`) and the
Householder layers of SOC and deel-lip pair the first half of the channels
with the second half instead: `Householder(pairing="halves")` offers that
convention.

`MaxMin` is deel-lip's activation of that name, $[\\mathrm{ReLU}(x),
\\mathrm{ReLU}(-x)]$: it doubles the channels and is not a sorting
activation.
"""

import math
import numbers

import keras
import numpy as np
from keras import ops

from keras_lipschitz import _backend
from keras_lipschitz.api_export import keras_lipschitz_export
from keras_lipschitz.layers._base import ScaledOneLipschitzLayer
from keras_lipschitz.layers import _validation

HALF_PI = math.pi / 2.0
QUARTER_PI = math.pi / 4.0


def _validate_axis(axis):
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise ValueError(
            f"`axis` must be an integer (the channel axis). Received: "
            f"axis={axis!r}"
        )
    return int(axis)


class _ChannelActivation(ScaledOneLipschitzLayer):
    """Resolves the channel axis and checks the channel count at build.

    Every activation takes `lipschitz` (deel-lip's `k_coef_lip`), a factor
    on its output.
    """

    def __init__(self, axis=-1, lipschitz=1.0, **kwargs):
        super().__init__(lipschitz=lipschitz, **kwargs)
        self.axis = _validate_axis(axis)
        self.supports_masking = True
        self.input_spec = keras.layers.InputSpec(min_ndim=2)
        # Set at build: the non-negative channel axis and its size.
        self._channel_axis = None
        self._channels = None

    # Whether `build` refuses an unknown channel dimension.
    _needs_known_channels = True

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
        if channels is None and not self._needs_known_channels:
            self._channel_axis = channel_axis
            return
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
    everywhere (gradient norm preserving). $g = 2$ is `GroupSort2` (the
    "MaxMin" of Anil et al., not the `MaxMin` layer), returned as
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
        lipschitz: positive float $L$, multiplies the output (deel-lip's
            `k_coef_lip`): the layer is then $L$-Lipschitz (default 1).

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

    def __init__(self, group_size=2, axis=-1, lipschitz=1.0, **kwargs):
        super().__init__(axis=axis, lipschitz=lipschitz, **kwargs)
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
        return self._scale(self._sort(inputs, training))

    def _sort(self, inputs, training):
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
    """`GroupSort` with groups of 2 adjacent channels ("MaxMin").

    Each pair of adjacent channels $(x_{2i}, x_{2i+1})$ becomes
    $(\\min(x_{2i}, x_{2i+1}), \\max(x_{2i}, x_{2i+1}))$. It is 1-Lipschitz
    and gradient norm preserving. Not to be confused with `MaxMin`
    (deel-lip's `MaxMin`), which is $(\\mathrm{ReLU}(x),
    \\mathrm{ReLU}(-x))$ and doubles the channels.

    Reference: Anil, Lucas, Grosse, "Sorting out Lipschitz function
    approximation", ICML 2019.

    Args:
        axis: int, the channel axis (default -1).
        lipschitz: positive float $L$, multiplies the output (deel-lip's
            `k_coef_lip`): the layer is then $L$-Lipschitz (default 1).

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

    def __init__(self, axis=-1, lipschitz=1.0, **kwargs):
        super().__init__(
            group_size=2, axis=axis, lipschitz=lipschitz, **kwargs
        )

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
        lipschitz: positive float $L$, multiplies the output (deel-lip's
            `k_coef_lip`): the layer is then $L$-Lipschitz (default 1).

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

    def __init__(self, axis=-1, lipschitz=1.0, **kwargs):
        # The group size becomes the channel count at build.
        super().__init__(
            group_size=2, axis=axis, lipschitz=lipschitz, **kwargs
        )
        self.group_size = None

    def _check_channels(self, channels):
        self.group_size = channels

    def get_config(self):
        config = super().get_config()
        del config["group_size"]
        return config


def _validate_pairing(pairing):
    return _validation.validate_choice(
        "pairing", pairing, {"adjacent", "halves"}
    )


def _householder_coefficients(theta):
    """Per-pair coefficients of HH1, exact at every multiple of $\\pi/2$.

    Returns `(p, q, cos_theta, sin_theta)`, float32 tensors of $\\theta$'s
    shape: the reflection is applied where $p\\,x + q\\,y > 0$, with
    $(p, q)$ a positive multiple of $v = (\\sin\\frac{\\theta}{2},
    -\\cos\\frac{\\theta}{2})$.

    Why not `sin(theta / 2)` and `cos(theta)` directly: float32 $\\pi/2$
    is not exactly $\\pi/2$, so $\\cos\\theta$ would be $-4.4\\cdot10^{-8}$
    instead of 0 at the default $\\theta = \\pi/2$, and
    $\\cos(\\theta/2)$ and $\\sin(\\theta/2)$ may differ in the last bit.
    Instead the half angle is split as $\\theta/2 = \\psi + \\delta$, with
    $\\psi = m\\pi/4$ the nearest multiple of $\\pi/4$ ($\\delta$ is exactly
    0 for the float32 values of $\\theta = 0, \\pi/2, \\pi$). The sines
    and cosines of $\\psi$ and of $2\\psi = m\\pi/2$ are taken as the exact
    integers $-1, 0, 1$ (those of $\\psi$ scaled by $\\sqrt2$ when $m$ is
    odd, which does not change the sign of the selector), and the angle
    sum formulas add $\\delta$ (and $2\\delta$) back. At $\\delta = 0$
    every coefficient is an exact 0 or $\\pm 1$: $\\theta = \\pi/2$
    computes exactly `GroupSort2`, $\\theta = 0$ exactly $(x, |y|)$ and
    $\\theta = \\pi$ exactly $(-|x|, y)$.
    """
    half = ops.multiply(theta, 0.5)
    quarter_pi = ops.convert_to_tensor(QUARTER_PI, dtype="float32")
    # m is piecewise constant: no gradient flows through it.
    m = ops.stop_gradient(ops.round(ops.divide(half, quarter_pi)))
    delta = ops.subtract(half, ops.multiply(m, quarter_pi))
    cos_d, sin_d = ops.cos(delta), ops.sin(delta)
    # sqrt(2) sin(psi), sqrt(2) cos(psi) rounded to {-1, 0, 1} (as are the
    # unscaled values at even m): 1.25 * {0, 0.71, 1} rounds to {0, 1, 1}.
    psi = ops.multiply(m, quarter_pi)
    sin_psi = ops.round(ops.multiply(ops.sin(psi), 1.25))
    cos_psi = ops.round(ops.multiply(ops.cos(psi), 1.25))
    p = ops.add(ops.multiply(cos_d, sin_psi), ops.multiply(sin_d, cos_psi))
    q = ops.subtract(
        ops.multiply(sin_d, sin_psi), ops.multiply(cos_d, cos_psi)
    )
    # theta = m pi / 2 + 2 delta.
    quarter_turns = ops.multiply(psi, 2.0)
    cos_m = ops.round(ops.cos(quarter_turns))
    sin_m = ops.round(ops.sin(quarter_turns))
    cos_e = ops.cos(ops.multiply(delta, 2.0))
    sin_e = ops.sin(ops.multiply(delta, 2.0))
    cos_theta = ops.subtract(
        ops.multiply(cos_m, cos_e), ops.multiply(sin_m, sin_e)
    )
    sin_theta = ops.add(ops.multiply(sin_m, cos_e), ops.multiply(cos_m, sin_e))
    return p, q, cos_theta, sin_theta


@keras_lipschitz_export
class Householder(_ChannelActivation):
    """Learnable Householder activation of order 1 (HH1) on channel pairs.

    Each pair of channels $z = (x, y)$ has its own angle $\\theta_i$ (a
    trainable float32 weight, shared over all the other axes). With
    $v = (\\sin\\frac{\\theta}{2}, -\\cos\\frac{\\theta}{2})$:

    $$f(z) = \\begin{cases} z & \\text{if } v^\\top z \\le 0,\\\\
    (I - 2vv^\\top)\\,z = (x\\cos\\theta + y\\sin\\theta,\\;
    x\\sin\\theta - y\\cos\\theta) & \\text{otherwise.} \\end{cases}$$

    The reflection $I - 2vv^\\top$ fixes the line $v^\\top z = 0$, so $f$ is
    continuous and piecewise orthogonal: 1-Lipschitz and gradient norm
    preserving. At the default $\\theta = \\pi/2$ it is exactly `GroupSort2`,
    $(\\min(x, y), \\max(x, y))$; $\\theta = 0$ gives $(x, |y|)$ and
    $\\theta = \\pi$ gives $(-|x|, y)$. The float32 computation is exact at
    these three angles (the angles are reduced to the nearest multiple of
    $\\pi/4$ first, so that no $10^{-8}$ residue of $\\cos(\\pi/2)$ is
    left).

    Pairing (`pairing`):

    - `"adjacent"` (default): $(x, y) = (x_{2i}, x_{2i+1})$, as in
      `GroupSort2`; the outputs stay in place.
    - `"halves"`: $(x, y) = (x_i, x_{i + C/2})$, the first half of the
      channels with the second half, as in the SOC code and in deel-lip's
      `Householder`: with this pairing, $\\theta$ ported from deel-lip
      gives deel-lip's outputs.

    Both pairings are 1-Lipschitz; they differ by a fixed permutation of the
    channels before and after the layer.

    Reference: Singla, Singla, Feizi, "Improved deterministic l2 robustness
    on CIFAR-10 and CIFAR-100", ICLR 2022.

    Args:
        axis: int, the channel axis (default -1; pass 1 for
            `channels_first` images).
        theta_initializer: initializer of the $C/2$ angles (default: the
            constant $\\pi/2$, i.e. `GroupSort2`).
        pairing: `"adjacent"` (default) or `"halves"` (deel-lip and SOC),
            see above.
        lipschitz: positive float $L$, multiplies the output (deel-lip's
            `k_coef_lip`): the layer is then $L$-Lipschitz (default 1).

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
    >>> halves = Householder(pairing="halves")  # pairs (3, -2) and (1, 5)
    >>> ops.convert_to_numpy(halves(x)).tolist()
    [[-2.0, 1.0, 3.0, 5.0]]
    """

    def __init__(
        self,
        axis=-1,
        theta_initializer=None,
        pairing="adjacent",
        lipschitz=1.0,
        **kwargs,
    ):
        super().__init__(axis=axis, lipschitz=lipschitz, **kwargs)
        self.pairing = _validate_pairing(pairing)
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
        if self.pairing == "adjacent":
            grouped, shape = self._split_groups(inputs, 2)
            pair_axis = self._channel_axis + 1
            x, y = ops.split(grouped, 2, axis=pair_axis)
        else:
            pair_axis = self._channel_axis
            x, y = ops.split(inputs, 2, axis=pair_axis)
        # The coefficients have shape (C/2, 1, 1, ...) to broadcast against
        # x and y, whose pair index is at `self._channel_axis`.
        trailing = len(x.shape) - self._channel_axis - 1
        coefficients = _householder_coefficients(
            ops.convert_to_tensor(self.theta)
        )
        p, q, cos_theta, sin_theta = (
            ops.cast(
                ops.reshape(c, (self._channels // 2,) + (1,) * trailing),
                inputs.dtype,
            )
            for c in coefficients
        )
        # A positive multiple of v^T z: exactly x - y at theta = pi/2.
        side = ops.add(ops.multiply(p, x), ops.multiply(q, y))
        keep = ops.less_equal(side, 0)
        reflected_x = ops.add(
            ops.multiply(cos_theta, x), ops.multiply(sin_theta, y)
        )
        reflected_y = ops.subtract(
            ops.multiply(sin_theta, x), ops.multiply(cos_theta, y)
        )
        out_x = ops.where(keep, x, reflected_x)
        out_y = ops.where(keep, y, reflected_y)
        outputs = ops.concatenate([out_x, out_y], axis=pair_axis)
        if self.pairing == "adjacent":
            outputs = ops.reshape(outputs, shape)
        return self._scale(outputs)

    def get_config(self):
        config = super().get_config()
        config["theta_initializer"] = keras.initializers.serialize(
            self.theta_initializer
        )
        config["pairing"] = self.pairing
        return config


@keras_lipschitz_export
class MaxMin(_ChannelActivation):
    """deel-lip's MaxMin: $[\\mathrm{ReLU}(x), \\mathrm{ReLU}(-x)]$.

    $$f(x) = \\big[\\max(x, 0),\\; \\max(-x, 0)\\big] = \\big[\\max(x, 0),\\;
    -\\min(x, 0)\\big],$$

    concatenated along the channel axis: $C$ channels become $2C$, the
    positive parts first. Also known as CReLU. Each coordinate $x_i$ lands
    in exactly one of its two outputs (the other is 0), so
    $\\lVert f(x)\\rVert = \\lVert x\\rVert$, the Jacobian has orthonormal
    columns wherever no $x_i$ is 0 (gradient norm preserving), and $f$ is
    1-Lipschitz: for $a > 0 > b$,
    $a^2 + b^2 \\le (a - b)^2$.

    This is **not** `GroupSort2` (which sorts channel pairs and keeps $C$
    channels), nor the `MaxMin` of the SOC code (a `GroupSort2` of the two
    channel halves).

    References: Blot, Cord, Thome, "Max-min convolutional neural networks
    for image classification", ICIP 2016; Shang, Sohn, Almeida, Lee,
    "Understanding and improving convolutional neural networks via
    concatenated rectified linear units", ICML 2016.

    Args:
        axis: int, the channel axis (default -1; pass 1 for
            `channels_first` images, deel-lip's
            `data_format="channels_first"`).
        lipschitz: positive float $L$, multiplies the output (deel-lip's
            `k_coef_lip`): the layer is then $L$-Lipschitz (default 1).

    Input shape:
        Any tensor of rank >= 2. The channel dimension may be unknown.

    Output shape:
        The input shape with the channel dimension doubled.

    Example:

    >>> import numpy as np
    >>> x = np.array([[3.0, -1.0, 0.5]], "float32")
    >>> ops.convert_to_numpy(MaxMin()(x)).tolist()
    [[3.0, 0.0, 0.5, 0.0, 1.0, 0.0]]
    """

    _needs_known_channels = False

    def call(self, inputs):
        return self._scale(
            ops.concatenate(
                [ops.relu(inputs), ops.relu(ops.negative(inputs))],
                axis=self._channel_axis,
            )
        )

    def compute_output_shape(self, input_shape):
        shape = list(input_shape)
        axis = self.axis % len(shape)
        if shape[axis] is not None:
            shape[axis] = 2 * shape[axis]
        return tuple(shape)
