"""Sound ℓ∞ certification of ℓ∞-distance nets and SortNets.

Two certificates, both in float64 NumPy on the host:

- **Margin / 2.** When every layer of the model is 1-Lipschitz w.r.t.
  $\\ell_\\infty$ in inference mode (`LinfDistDense` and `SortNetDense`,
  which always use $p = \\infty$ at inference, plus reshaping and
  identity layers), each logit is 1-Lipschitz in $\\ell_\\infty$, so
  $z_y - z_j$ changes by at most $2\\|\\delta\\|_\\infty$ and the radius is
  $r = (z_y - \\max_{j\\ne y} z_j)/2$ (Zhang et al., ICML 2021).
- **Interval bound propagation through an MLP head** (SortNet + MLP,
  Zhang et al., NeurIPS 2022). When the ℓ∞ body is followed by plain
  `Dense` layers with ReLU (or linear) activations, the body's features
  $\\phi(x')$ lie in the box $[\\phi(x) - \\varepsilon, \\phi(x) +
  \\varepsilon]$ for $\\|x' - x\\|_\\infty \\le \\varepsilon$; the box is
  pushed through the head with interval arithmetic and the last layer is
  bounded on the logit *differences* $(w_y - w_j)^\\top h + b_y - b_j$
  (tighter than bounding each logit). The radius is the largest $\\varepsilon$
  found certified by bisection (the IBP bound is monotone in
  $\\varepsilon$), so it is certified but may be below the true IBP radius by
  the bisection tolerance.

Any other layer is refused with a `ValueError`.
"""

import keras
import numpy as np

from keras_lipschitz.layers.linf import DISTANCE_LAYERS

# Layers that are 1-Lipschitz w.r.t. ℓ∞ (permutations of coordinates or the
# identity) in inference mode.
_LINF_IDENTITY = (
    keras.layers.InputLayer,
    keras.layers.Flatten,
    keras.layers.Reshape,
    keras.layers.Permute,
    keras.layers.Identity,
    keras.layers.Dropout,
    keras.layers.GaussianNoise,
    keras.layers.GaussianDropout,
)

SUPPORTED = (
    "LinfDistDense, SortNetDense, InputLayer, Flatten, Reshape, Permute, "
    "Identity, Dropout (the ℓ∞ body), optionally followed by an MLP head of "
    "keras.layers.Dense with 'relu' or 'linear' activation and ReLU layers"
)

# Bisection steps of the IBP radius search (relative precision 2^-30).
_BISECTION_STEPS = 30


def _flat_layers(model):
    layers = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            layers.extend(_flat_layers(layer))
        else:
            layers.append(layer)
    return layers


def _activation_name(layer):
    return getattr(getattr(layer, "activation", None), "__name__", None)


def _is_head_layer(layer):
    if isinstance(layer, keras.layers.Dense):
        return (
            not getattr(layer, "lora_enabled", False)
            and _activation_name(layer) in ("relu", "linear")
        )
    if isinstance(layer, keras.layers.ReLU):
        return (
            float(layer.negative_slope) == 0.0
            and layer.max_value is None
            and float(layer.threshold) == 0.0
        )
    if isinstance(layer, keras.layers.Activation):
        return _activation_name(layer) in ("relu", "linear")
    return False


def split_linf_model(model):
    """Splits `model` into its ℓ∞ body and its MLP head.

    Args:
        model: a built Sequential or functional model (nested models are
            flattened) whose layers form a chain.

    Returns:
        `(body, head)`: two lists of layers, in order.

    Raises:
        ValueError: naming the first layer that is neither 1-Lipschitz in
            ℓ∞ nor part of a supported head.
    """
    layers = _flat_layers(model)
    body, head = [], []
    for layer in layers:
        if not head and isinstance(layer, DISTANCE_LAYERS + _LINF_IDENTITY):
            body.append(layer)
        elif _is_head_layer(layer):
            head.append(layer)
        else:
            raise ValueError(
                f"Cannot certify layer '{layer.name}' "
                f"({type(layer).__name__}) in ℓ∞: it is not known to be "
                f"1-Lipschitz w.r.t. ℓ∞ in inference mode. Supported: "
                f"{SUPPORTED}."
            )
    if not any(isinstance(layer, DISTANCE_LAYERS) for layer in body):
        raise ValueError(
            "An ℓ∞ certificate needs an ℓ∞-distance body (LinfDistDense or "
            f"SortNetDense layers). Supported: {SUPPORTED}."
        )
    if head and not isinstance(head[-1], keras.layers.Dense):
        raise ValueError(
            "The MLP head must end with a keras.layers.Dense layer giving "
            f"the logits. Received last layer '{head[-1].name}'."
        )
    if head and _activation_name(head[-1]) != "linear":
        raise ValueError(
            "The last Dense layer of the MLP head must be linear (its "
            f"outputs are the logits). Received '{head[-1].name}' with "
            f"activation {_activation_name(head[-1])!r}."
        )
    return body, head


def _forward(layers, x, batch_size):
    outputs = []
    for start in range(0, len(x), batch_size):
        h = keras.ops.convert_to_tensor(x[start : start + batch_size])
        for layer in layers:
            h = layer(h, training=False)
        outputs.append(np.asarray(keras.ops.convert_to_numpy(h), np.float64))
    return np.concatenate(outputs, axis=0)


def _head_weights(head):
    """The head as a list of `(kernel, bias, relu_after)` in float64."""
    affine = []
    for layer in head:
        if isinstance(layer, keras.layers.Dense):
            kernel = np.asarray(
                keras.ops.convert_to_numpy(layer.kernel), np.float64
            )
            bias = np.zeros(kernel.shape[1])
            if layer.bias is not None:
                bias = np.asarray(
                    keras.ops.convert_to_numpy(layer.bias), np.float64
                )
            affine.append([kernel, bias, _activation_name(layer) == "relu"])
        elif _activation_name(layer) != "linear":  # a ReLU layer
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
    lower, upper = features - eps, features + eps
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


def certify_linf(model, x, y, batch_size=256):
    """Per-example certified ℓ∞ radii, 0 where the prediction is wrong.

    - Without a head: $r = (z_y - \\max_{j\\ne y}z_j)/2$ from the
      inference-mode logits, in float64.
    - With an MLP head: the largest $\\varepsilon$ for which interval bound
      propagation proves $z_y > z_j$ for all $j$ on the feature box (see the
      module docstring), found by bisection.

    Any $x'$ with $\\|x' - x\\|_\\infty < r$ is classified as $y$. Inputs are
    not clipped to a data range.

    Args:
        model: a model accepted by `split_linf_model`.
        x: inputs, array-like.
        y: integer labels `(N,)`/`(N, 1)` or one-hot `(N, C)`.
        batch_size: batch size of the forward passes.

    Returns:
        NumPy float64 array of shape `(N,)`.
    """
    from keras_lipschitz.certification import _labels_to_indices

    body, head = split_linf_model(model)
    x = np.asarray(x, np.float32)
    if not head:
        logits = _forward(body, x, batch_size)
        if logits.ndim != 2 or logits.shape[1] < 2:
            raise ValueError(
                "`model` must output logits of shape (N, C) with C >= 2. "
                f"Received: {logits.shape}"
            )
        n = logits.shape[0]
        labels = _labels_to_indices(y, logits.shape[1])
        z_y = logits[np.arange(n), labels]
        others = logits.copy()
        others[np.arange(n), labels] = -np.inf
        radius = (z_y - np.max(others, axis=1)) / 2.0
        finite = np.all(np.isfinite(logits), axis=1)
        return np.where(finite & (radius > 0), radius, 0.0)
    features = _forward(body, x, batch_size)
    affine = _head_weights(head)
    num_classes = affine[-1][0].shape[1]
    n = features.shape[0]
    labels = _labels_to_indices(y, num_classes)

    def certified(eps):
        bound = ibp_margin_lower_bounds(features, labels, affine, eps)
        return np.all(bound > 0, axis=1)

    ok = certified(np.zeros(n)) & np.all(np.isfinite(features), axis=1)
    # Bracket: grow `high` until nothing is certified there.
    low = np.zeros(n)
    high = np.ones(n)
    for _ in range(60):
        still = ok & certified(high)
        if not np.any(still):
            break
        low = np.where(still, high, low)
        high = np.where(still, 2 * high, high)
    for _ in range(_BISECTION_STEPS):
        mid = (low + high) / 2
        good = certified(mid)
        low = np.where(good, mid, low)
        high = np.where(good, high, mid)
    return np.where(ok, low, 0.0)
