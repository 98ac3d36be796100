"""Residual combiners with exact Lipschitz composition.

A residual block combines the block's input $x$ with a branch $f(x)$.
`certification.composition` bounds every combiner from the bounds $L_x$ and
$L_f$ of its inputs, as it does for `keras.layers.Add` ($L_x + L_f$):

| combiner | output | bound |
|---|---|---|
| `keras.layers.Add` | $x + f(x)$ | $L_x + L_f$ |
| `LipResidual` | $\\alpha x + (1-\\alpha) f(x)$, $\\alpha \\in (0, 1)$ learned | $\\alpha L_x + (1-\\alpha) L_f$ |
| `ConcatResidual` | $[x, f(x)]$ on the channel axis | $\\sqrt{L_x^2 + L_f^2}$ |

With a 1-Lipschitz branch, `LipResidual` stays 1-Lipschitz for every
$\\alpha$, where `Add` doubles the constant. Layers with several inputs
expose `merge_lipschitz_bound(input_bounds)`, which the composition calls.
"""

import math

import keras
import numpy as np
from keras import ops

from keras_lipschitz.api_export import keras_lipschitz_export
from keras_lipschitz.layers import _validation


def _check_two_inputs(layer, input_shape):
    if not isinstance(input_shape, (list, tuple)) or len(input_shape) != 2:
        raise ValueError(
            f"{type(layer).__name__} takes two inputs, [x, f(x)]. "
            f"Received: input_shape={input_shape}"
        )
    if not all(isinstance(shape, (list, tuple)) for shape in input_shape):
        raise ValueError(
            f"{type(layer).__name__} takes two inputs, [x, f(x)]. "
            f"Received: input_shape={input_shape}"
        )


@keras_lipschitz_export
class LipResidual(keras.layers.Layer):
    """Convex residual combination $y = \\alpha x + (1 - \\alpha) f(x)$.

    $\\alpha = \\mathrm{sigmoid}(a)$ with one trainable scalar $a$, so
    $\\alpha \\in (0, 1)$ for every value of the weight (the combination
    deel-torchlip calls `LipResidual`). For any inputs,
    $\\|y - y'\\| \\le \\alpha\\|x - x'\\| + (1-\\alpha)\\|f(x) - f(x')\\|$,
    so the block is $\\alpha L_x + (1-\\alpha) L_f$-Lipschitz: 1-Lipschitz
    when $x$ and $f$ are. `keras_lipschitz.lipschitz_bound` uses exactly
    that bound (`merge_lipschitz_bound`). The scalar is kept in float32
    under mixed precision.

    Args:
        initial_alpha: float in (0, 1), the initial $\\alpha$.
        **kwargs: base layer arguments.

    Example:

    >>> import keras
    >>> from keras_lipschitz.layers import LipResidual, SpectralDense
    >>> x = keras.Input((4,))
    >>> y = LipResidual()([x, SpectralDense(4)(x)])
    >>> model = keras.Model(x, y)
    >>> from keras_lipschitz import lipschitz_bound
    >>> lipschitz_bound(model) <= 1 + 1e-6
    True
    """

    def __init__(self, initial_alpha=0.5, **kwargs):
        super().__init__(**kwargs)
        value = _validation.validate_positive_number(
            "initial_alpha", initial_alpha
        )
        if not value < 1.0:
            raise ValueError(
                "`initial_alpha` must be a number in (0, 1). "
                f"Received: initial_alpha={initial_alpha!r}"
            )
        self.initial_alpha = value
        self.supports_masking = True

    def build(self, input_shape):
        _check_two_inputs(self, input_shape)
        first, second = (tuple(s) for s in input_shape)
        if len(first) != len(second) or any(
            a is not None and b is not None and a != b
            for a, b in zip(first[1:], second[1:])
        ):
            raise ValueError(
                "LipResidual's inputs [x, f(x)] must have the same shape. "
                f"Received: input_shape={input_shape}"
            )
        logit = math.log(self.initial_alpha / (1.0 - self.initial_alpha))
        self.alpha_logit = self.add_weight(
            name="alpha_logit",
            shape=(),
            initializer=keras.initializers.Constant(logit),
            autocast=False,
        )

    def _coefficients(self):
        alpha = ops.sigmoid(ops.cast(self.alpha_logit, "float32"))
        return alpha, 1.0 - alpha

    def call(self, inputs):
        x, branch = inputs
        alpha, beta = self._coefficients()
        return ops.cast(alpha, x.dtype) * x + ops.cast(beta, x.dtype) * branch

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])

    def alpha(self):
        """The current $\\alpha$, as a Python float."""
        return float(ops.convert_to_numpy(self._coefficients()[0]))

    def merge_lipschitz_bound(self, input_bounds):
        """$|\\alpha| L_x + |1-\\alpha| L_f$ with the coefficients `call` uses.

        Args:
            input_bounds: `[L_x, L_f]`, guaranteed bounds of the inputs.

        Returns:
            A Python float.
        """
        alpha, beta = (
            abs(float(ops.convert_to_numpy(c))) for c in self._coefficients()
        )
        return alpha * input_bounds[0] + beta * input_bounds[1]

    def get_config(self):
        config = super().get_config()
        config["initial_alpha"] = self.initial_alpha
        return config


@keras_lipschitz_export
class ConcatResidual(keras.layers.Layer):
    """Concatenation residual $y = [x, f(x)]$ along the channel axis.

    $\\|y - y'\\|^2 = \\|x - x'\\|^2 + \\|f(x) - f(x')\\|^2$, so the bound is
    $\\sqrt{L_x^2 + L_f^2}$ ($\\sqrt2$ for 1-Lipschitz inputs), the same as a
    `keras.layers.Concatenate`. Used by DenseNet-style Lipschitz blocks,
    which keep $x$ unchanged beside the new features.

    Args:
        axis: the concatenation axis (default -1, the channels in
            `channels_last`).
        **kwargs: base layer arguments.
    """

    def __init__(self, axis=-1, **kwargs):
        super().__init__(**kwargs)
        if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
            raise ValueError(
                f"`axis` must be an integer. Received: axis={axis!r}"
            )
        if axis == 0:
            raise ValueError(
                "`axis` must not be the batch axis 0. Received: axis=0"
            )
        self.axis = int(axis)

    def build(self, input_shape):
        _check_two_inputs(self, input_shape)
        first, second = (tuple(s) for s in input_shape)
        rank = len(first)
        if len(second) != rank or not -rank < self.axis < rank:
            raise ValueError(
                f"`axis`={self.axis} is not an axis of inputs of rank {rank}, "
                f"or the ranks differ. Received: input_shape={input_shape}"
            )
        axis = self.axis % rank
        for i, (a, b) in enumerate(zip(first, second)):
            if i not in (0, axis) and None not in (a, b) and a != b:
                raise ValueError(
                    "ConcatResidual's inputs must match except on `axis`. "
                    f"Received: input_shape={input_shape}, axis={self.axis}"
                )

    def call(self, inputs):
        return ops.concatenate(list(inputs), axis=self.axis)

    def compute_output_shape(self, input_shape):
        first, second = (list(s) for s in input_shape)
        axis = self.axis % len(first)
        if first[axis] is None or second[axis] is None:
            first[axis] = None
        else:
            first[axis] = first[axis] + second[axis]
        return tuple(first)

    def merge_lipschitz_bound(self, input_bounds):
        """$\\sqrt{\\sum_i L_i^2}$ over the inputs' bounds."""
        return math.sqrt(sum(b * b for b in input_bounds))

    def get_config(self):
        config = super().get_config()
        config["axis"] = self.axis
        return config
