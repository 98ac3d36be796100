"""The ℓ∞ body shared by the two ℓ∞ certificates.

Both ℓ∞ certificates split a model into an ℓ∞-distance body (layers that
are 1-Lipschitz w.r.t. ℓ∞ in inference mode) and an optional MLP head of
plain `Dense` layers; this module does the split and the forward pass.
"""

import keras
import numpy as np

from keras_lipschitz.certification import _common
from keras_lipschitz.layers.linf import DISTANCE_LAYERS

# Layers that are 1-Lipschitz w.r.t. ℓ∞ (permutations of coordinates or the
# identity) in inference mode.
LINF_IDENTITY = (
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


def activation_name(layer):
    """The name of a layer's activation function, or None."""
    return getattr(getattr(layer, "activation", None), "__name__", None)


def _is_head_layer(layer):
    if isinstance(layer, keras.layers.Dense):
        return (
            not getattr(layer, "lora_enabled", False)
            and activation_name(layer) in ("relu", "linear")
        )
    if isinstance(layer, keras.layers.ReLU):
        return (
            float(layer.negative_slope) == 0.0
            and layer.max_value is None
            and float(layer.threshold) == 0.0
        )
    if isinstance(layer, keras.layers.Activation):
        return activation_name(layer) in ("relu", "linear")
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
    layers = _common.flat_layers(model)
    body, head = [], []
    for layer in layers:
        if not head and isinstance(layer, DISTANCE_LAYERS + LINF_IDENTITY):
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
    if head and activation_name(head[-1]) != "linear":
        raise ValueError(
            "The last Dense layer of the MLP head must be linear (its "
            f"outputs are the logits). Received '{head[-1].name}' with "
            f"activation {activation_name(head[-1])!r}."
        )
    return body, head


def forward(layers, x, batch_size):
    """Runs `layers` in inference mode on `x`, by batches; float64 output."""
    outputs = []
    for start in range(0, len(x), batch_size):
        h = keras.ops.convert_to_tensor(x[start : start + batch_size])
        for layer in layers:
            h = layer(h, training=False)
        outputs.append(np.asarray(keras.ops.convert_to_numpy(h), np.float64))
    return np.concatenate(outputs, axis=0)


def search_radius(certified, ok, low, high, bisection_steps):
    """The largest radius found certified, per example.

    Args:
        certified: `certified(eps)` -> boolean `(N,)`, monotone in `eps`
            (certified at a radius implies certified at every smaller one).
        ok: boolean `(N,)`, the examples to search (others keep `low`).
        low: float64 `(N,)`, radii known to be certified.
        high: float64 `(N,)`, first radii to try, above `low`.
        bisection_steps: bisection steps after the bracket.

    Returns:
        float64 `(N,)`: `high` is doubled while certified (at most 60
        times), then `[low, high]` is bisected; the result is certified.
    """
    for _ in range(60):
        still = ok & certified(high)
        if not np.any(still):
            break
        low = np.where(still, high, low)
        high = np.where(still, 2.0 * high, high)
    for _ in range(bisection_steps):
        mid = (low + high) / 2
        good = ok & certified(mid)
        low = np.where(good, mid, low)
        high = np.where(good, high, mid)
    return low
