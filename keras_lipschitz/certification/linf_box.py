"""The ℓ∞ certificate by interval bounds through the distance layers.

The ℓ∞ papers certify their MNIST and CIFAR-10 numbers this way (Zhang et
al., ICML 2021 and ICLR 2022, official `certified_test`): the input box
$[x - \\varepsilon, x + \\varepsilon]$, clipped to the valid input range
when one is given (pixels in $[0, 1]$), is pushed through every layer with
interval arithmetic, and the point is certified when the lower bound of
$z_y$ exceeds the upper bound of every other $z_j$ (through an MLP head, the
head's interval bounds on the logit differences of `linf_ibp`).

For a distance layer at inference ($p = \\infty$, or SortNet's ordered
weighted sum), the range of each neuron over a box is exact: with
$b_i = \\max(l_i - w_i, w_i - u_i, 0)$ and
$a_i = \\max(|l_i - w_i|, |u_i - w_i|)$ the smallest and largest
$|x_i - w_i|$ over $[l_i, u_i]$, the ℓ∞ neuron ranges over
$[\\max_i b_i, \\max_i a_i]$ and the SortNet neuron over
$[\\sum_k \\nu_k b_{(k)}, \\sum_k \\nu_k a_{(k)}]$ (an ordered weighted sum
with non-negative weights is non-decreasing in every coordinate). The mean
shift, bias and sign are exact interval maps. By induction every neuron's
interval lies inside $h(x) \\pm \\varepsilon$ (each neuron is 1-Lipschitz
in ℓ∞), so without a range this certificate is never weaker than the
margin certificate $(z_y - \\max_{j\\ne y} z_j)/2$; clipping to the range
can only shrink the boxes.

Soundness in floating point: the input box is rounded outwards to float32,
each layer's intervals are computed in float32 with `keras.ops` and then
widened by $2^{-20}$ times the largest magnitude involved (at least 16
float32 units in the last place of every term), and the final comparison
is done in float64.
"""

import numpy as np
from keras import ops

from keras_lipschitz import _backend
from keras_lipschitz.certification import _common
from keras_lipschitz.certification import _linf
from keras_lipschitz.certification import linf_ibp
from keras_lipschitz.certification import linf_margin
from keras_lipschitz.layers.linf import DISTANCE_LAYERS
from keras_lipschitz.layers.linf import SortNetDense

NAME = "linf_box"
FORMULA = (
    "interval bounds through every layer on the (range-clipped) input box: "
    "lower(z_y) > upper(z_j)"
)

# Elements of one (batch, inputs, units) block of the interval kernel.
_BLOCK_ELEMENTS = 2**23
# Relative widening of each layer's float32 intervals.
_ROUNDING_SLACK = 2.0**-20
# Bisection steps of the radius search after the bracket.
_BISECTION_STEPS = 12


def validate_input_range(input_range):
    """`(low, high)` as floats with low < high, or `ValueError`."""
    low = high = None
    if isinstance(input_range, (tuple, list, np.ndarray)):
        try:
            low, high = (float(v) for v in input_range)
        except (TypeError, ValueError):
            low = high = None
    if low is None or not np.isfinite([low, high]).all() or not low < high:
        raise ValueError(
            "`input_range` must be None or a pair (low, high) of finite "
            f"numbers with low < high. Received: input_range={input_range!r}"
        )
    return low, high


def _outward_float32(lower, upper):
    """float64 bounds rounded outwards to float32."""
    low32 = lower.astype(np.float32)
    low32 = np.where(low32 > lower, np.nextafter(low32, np.float32(-np.inf)),
                     low32)
    up32 = upper.astype(np.float32)
    up32 = np.where(up32 < upper, np.nextafter(up32, np.float32(np.inf)),
                    up32)
    return low32, up32


# Compiled interval functions, one per layer configuration (JAX compiles
# each once; TensorFlow and torch run the ops eagerly).
_INTERVAL_FUNCTIONS = {}


def _interval_function(weights, negate, block):
    """`f(lower, upper, kernel, mean, bias) -> (low, high)` for one layer.

    `weights`: None for the ℓ∞ neuron, else SortNet's $\\nu$ (a tuple);
    `block`: units per `(batch, inputs, units)` block.
    """
    key = (weights, negate, block)
    if key in _INTERVAL_FUNCTIONS:
        return _INTERVAL_FUNCTIONS[key]

    def interval(lower, upper, kernel, mean, bias):
        units = kernel.shape[1]
        low3, up3 = lower[:, :, None], upper[:, :, None]
        lows, highs = [], []
        for start in range(0, units, block):
            w = kernel[None, :, start : start + block]
            below, above = low3 - w, up3 - w
            # Smallest |x - w| over [l, u]: 0 when w is inside it.
            least = ops.relu(ops.maximum(below, -above))
            most = ops.maximum(ops.abs(below), ops.abs(above))
            if weights is None:
                lows.append(ops.max(least, axis=1))
                highs.append(ops.max(most, axis=1))
            else:
                nu = ops.convert_to_tensor(np.asarray(weights, np.float32))
                k = len(weights)
                least = ops.top_k(ops.transpose(least, (0, 2, 1)), k)[0]
                most = ops.top_k(ops.transpose(most, (0, 2, 1)), k)[0]
                lows.append(ops.sum(least * nu, axis=-1))
                highs.append(ops.sum(most * nu, axis=-1))
        low = ops.concatenate(lows, axis=-1) - mean + bias
        high = ops.concatenate(highs, axis=-1) - mean + bias
        if negate:
            low, high = -high, -low
        # Every float32 term above is at most this large in magnitude.
        scale = (
            ops.maximum(ops.max(ops.abs(lower)), ops.max(ops.abs(upper)))
            + ops.max(ops.abs(kernel))
            + ops.max(ops.abs(mean))
            + ops.max(ops.abs(bias))
        )
        slack = _ROUNDING_SLACK * (scale + 1.0)
        return low - slack, high + slack

    compiled = _backend.compile_host_function(interval)
    _INTERVAL_FUNCTIONS[key] = compiled
    return compiled


def _distance_interval(layer, lower, upper):
    """Bounds `(batch, units)` of a distance layer's inference outputs."""
    kernel = ops.cast(layer.kernel, "float32")
    dim, units = int(kernel.shape[0]), int(kernel.shape[1])
    batch = int(lower.shape[0])
    block = max(1, _BLOCK_ELEMENTS // max(1, batch * dim))
    weights = None
    if isinstance(layer, SortNetDense):
        weights = tuple(float(w) for w in layer.sorted_weights(dim))
    zeros = ops.zeros((units,), "float32")
    mean = ops.cast(layer.running_mean, "float32") if layer.mean_shift else (
        zeros
    )
    bias = ops.cast(layer.bias, "float32") if layer.bias is not None else (
        zeros
    )
    function = _interval_function(weights, bool(layer.negate), block)
    return function(lower, upper, kernel, mean, bias)


def box_bounds(body, lower, upper):
    """Float64 bounds of the body's outputs over the boxes `[lower, upper]`.

    Args:
        body: the ℓ∞ body's layers (`_linf.split_linf_model`).
        lower, upper: float64 arrays of the input boxes (same shape).

    Returns:
        `(low, high)`, float64 arrays `(N, F)`.
    """
    low32, up32 = _outward_float32(lower, upper)
    low, high = ops.convert_to_tensor(low32), ops.convert_to_tensor(up32)
    for layer in body:
        if isinstance(layer, DISTANCE_LAYERS):
            low, high = _distance_interval(layer, low, high)
        else:
            # Reshaping and identity layers move coordinates around.
            low = layer(low, training=False)
            high = layer(high, training=False)
    return (
        np.asarray(ops.convert_to_numpy(low), np.float64),
        np.asarray(ops.convert_to_numpy(high), np.float64),
    )


def _certified(body, affine, x, labels, epsilon, input_range, batch_size):
    """Boolean `(N,)`: certified at the per-example radii `epsilon`."""
    result = np.zeros(len(x), bool)
    for start in range(0, len(x), batch_size):
        stop = start + batch_size
        xb = np.asarray(x[start:stop], np.float64)
        eps = epsilon[start:stop].reshape((-1,) + (1,) * (xb.ndim - 1))
        lower, upper = xb - eps, xb + eps
        if input_range is not None:
            lower = np.clip(lower, *input_range)
            upper = np.clip(upper, *input_range)
        low, high = box_bounds(body, lower, upper)
        yb = labels[start:stop]
        if affine:
            bound = linf_ibp.ibp_box_margin_lower_bounds(low, high, yb, affine)
        else:
            bound = low[np.arange(len(yb)), yb][:, None] - high
            bound[np.arange(len(yb)), yb] = np.inf
        finite = np.all(np.isfinite(low), axis=1) & np.all(
            np.isfinite(high), axis=1
        )
        result[start:stop] = finite & np.all(bound > 0, axis=1)
    return result


def _prepare(model, x, y):
    body, head = _linf.split_linf_model(model)
    affine = linf_ibp._head_weights(head) if head else []
    x = np.asarray(x, np.float32)
    num_classes = int(_common.single_tensor(model, "outputs").shape[-1])
    labels = _common.labels_to_indices(y, num_classes)
    return body, affine, x, labels


def certified_at(model, x, y, epsilon, input_range=None, batch_size=256):
    """Whether each example is certified at radius `epsilon`.

    One interval pass over the data: the way to get certified accuracy at
    a few radii without the radius search of `certify`.

    Args:
        model: an ℓ∞-distance model (as `keras_lipschitz.certify` with
            `norm="linf"` accepts).
        x: inputs, array-like.
        y: integer labels `(N,)`/`(N, 1)` or one-hot `(N, C)`.
        epsilon: a number, or an array `(N,)` of radii >= 0.
        input_range: None, or `(low, high)`: only perturbed inputs inside
            that range are considered (e.g. `(0, 1)` for images).
        batch_size: batch size of the interval passes.

    Returns:
        Boolean NumPy array `(N,)`, True where the prediction is correct and
        every input of the (clipped) box keeps it.
    """
    if input_range is not None:
        input_range = validate_input_range(input_range)
    body, affine, x, labels = _prepare(model, x, y)
    eps = np.broadcast_to(np.asarray(epsilon, np.float64), (len(x),))
    if np.any(eps < 0) or not np.all(np.isfinite(eps)):
        raise ValueError(
            f"`epsilon` must be finite and >= 0. Received: {epsilon!r}"
        )
    return _certified(body, affine, x, labels, eps, input_range, batch_size)


def certify(model, x, y, batch_size, input_range=None):
    """Per-example certified ℓ∞ radii by interval bounds (radius search).

    The radius is the largest $\\varepsilon$ found certified: it starts
    from the margin (or head IBP) radius, which the interval bounds always
    certify, doubles until a radius fails, then bisects
    (`_BISECTION_STEPS` interval passes), so it is certified and within a
    relative $2^{-12}$ of the interval bound's own radius.

    Args:
        model: an ℓ∞-distance model.
        x: inputs, array-like.
        y: integer labels or one-hot labels.
        batch_size: batch size of the interval passes.
        input_range: None or `(low, high)`.

    Returns:
        float64 `(N,)`, 0 where the prediction is wrong or not finite, and
        `inf` where the whole input range is certified (every valid input
        keeps the class).
    """
    if input_range is not None:
        input_range = validate_input_range(input_range)
    body, affine, x, labels = _prepare(model, x, y)
    start = (linf_ibp if affine else linf_margin).certify(
        model, x, labels, batch_size
    )
    ok = start > 0

    def certified(eps):
        return _certified(body, affine, x, labels, eps, input_range,
                          batch_size)

    low = start.copy()
    high = np.where(ok, 2.0 * start, 0.0)
    everywhere = np.zeros(len(x), bool)
    if input_range is not None:
        # From the range's width on, every box is the whole range: a
        # point certified there keeps its class on every valid input.
        width = input_range[1] - input_range[0]
        everywhere = ok & certified(np.full(len(x), width))
        ok = ok & ~everywhere
        high = np.where(ok, np.minimum(high, width), high)
    low = _linf.search_radius(certified, ok, low, high, _BISECTION_STEPS)
    return np.where(everywhere, np.inf, np.where(ok, low, 0.0))
