"""The ℓ∞ certificate of an ℓ∞ body followed by an MLP head (IBP).

SortNet + MLP (Zhang et al., NeurIPS 2022). When the ℓ∞ body is followed
by plain `Dense` layers with ReLU (or linear) activations, the body's
features $\\phi(x')$ lie in the box $[\\phi(x) - \\varepsilon, \\phi(x) +
\\varepsilon]$ for $\\|x' - x\\|_\\infty \\le \\varepsilon$; the box is pushed
through the head with interval arithmetic and the last layer is bounded on
the logit *differences* $(w_y - w_j)^\\top h + b_y - b_j$ (tighter than
bounding each logit). The radius is the largest $\\varepsilon$ found
certified by bisection (the IBP bound is monotone in $\\varepsilon$), so it
is certified but may be below the true IBP radius by the bisection
tolerance.
"""

import keras
import numpy as np

from keras_lipschitz.certification import _common
from keras_lipschitz.certification import _linf

NAME = "linf_ibp"
FORMULA = "largest ε with IBP lower bounds of z_y − z_j > 0 on the feature box"

# Bisection steps of the IBP radius search (relative precision 2^-30).
_BISECTION_STEPS = 30


def _head_weights(head):
    """The head as a list of `(kernel, bias, relu_after)` in float64."""
    affine = []
    for layer in head:
        if isinstance(layer, keras.layers.Dense):
            kernel = _common.to_float64(layer.kernel)
            bias = np.zeros(kernel.shape[1])
            if layer.bias is not None:
                bias = _common.to_float64(layer.bias)
            affine.append([kernel, bias, _linf.activation_name(layer) == "relu"])
        elif _linf.activation_name(layer) != "linear":  # a ReLU layer
            affine[-1][2] = True
    return affine


def ibp_margin_lower_bounds(features, labels, affine, epsilon):
    """Lower bounds of $z_y - z_j$ over the feature box, for every j.

    Args:
        features: float64 `(N, F)`, the body's features $\\phi(x)$.
        labels: int `(N,)`.
        affine: the head, `[(kernel, bias, relu_after), ...]`.
        epsilon: float64 `(N,)`, half-widths of the feature boxes.

    Returns:
        float64 `(N, C)`, $+\\infty$ in the label's column.
    """
    eps = epsilon[:, None]
    return ibp_box_margin_lower_bounds(
        features - eps, features + eps, labels, affine
    )


def ibp_box_margin_lower_bounds(lower, upper, labels, affine):
    """Lower bounds of $z_y - z_j$ over the feature boxes `[lower, upper]`.

    Args:
        lower, upper: float64 `(N, F)`, the boxes of the body's features.
        labels: int `(N,)`.
        affine: the head, `[(kernel, bias, relu_after), ...]`.

    Returns:
        float64 `(N, C)`, $+\\infty$ in the label's column.
    """
    for kernel, bias, relu in affine[:-1]:
        center, radius = (upper + lower) / 2, (upper - lower) / 2
        center = center @ kernel + bias
        radius = radius @ np.abs(kernel)
        lower, upper = center - radius, center + radius
        if relu:
            lower, upper = np.maximum(lower, 0), np.maximum(upper, 0)
    kernel, bias, _ = affine[-1]
    center, radius = (upper + lower) / 2, (upper - lower) / 2
    # Rows: w_y - w_j for each example's label y and every class j.
    diff = kernel.T[labels][:, None, :] - kernel.T[None, :, :]  # (N, C, H)
    bias_diff = bias[labels][:, None] - bias[None, :]
    bound = (
        np.einsum("nch,nh->nc", diff, center)
        - np.einsum("nch,nh->nc", np.abs(diff), radius)
        + bias_diff
    )
    bound[np.arange(len(labels)), labels] = np.inf
    return bound


def certify(model, x, y, batch_size):
    """Per-example certified ℓ∞ radii of an ℓ∞ body with an MLP head.

    Args:
        model: a model for which `_linf.split_linf_model` returns a head.
        x: inputs, array-like.
        y: integer labels `(N,)`/`(N, 1)` or one-hot `(N, C)`.
        batch_size: batch size of the forward passes.

    Returns:
        float64 `(N,)`, 0 where the prediction is wrong or not finite.
    """
    body, head = _linf.split_linf_model(model)
    features = _linf.forward(body, np.asarray(x, np.float32), batch_size)
    affine = _head_weights(head)
    num_classes = affine[-1][0].shape[1]
    n = features.shape[0]
    labels = _common.labels_to_indices(y, num_classes)

    def certified(eps):
        bound = ibp_margin_lower_bounds(features, labels, affine, eps)
        return np.all(bound > 0, axis=1)

    ok = certified(np.zeros(n)) & np.all(np.isfinite(features), axis=1)
    low = _linf.search_radius(
        certified, ok, np.zeros(n), np.ones(n), _BISECTION_STEPS
    )
    return np.where(ok, low, 0.0)
