"""The pairwise last-linear-layer (LLN) certificate.

When the model ends in a linear layer, $z = W\\phi(x) + b$, each difference
$z_y - z_j = (w_y - w_j)^\\top\\phi(x) + b_y - b_j$ is
$L_\\phi\\|w_y - w_j\\|$-Lipschitz, with $L_\\phi$ the guaranteed bound of
the body $\\phi$, so the pair $(y, j)$ is safe within
$$r_{yj} = \\frac{z_y - z_j}{L_\\phi\\,\\|w_y - w_j\\|}$$
(Singla et al., ICLR 2022), over *all* classes $j$. Never looser than the
global certificate, since $\\|w_y - w_j\\| \\le \\sqrt2\\|W\\|$.
"""

import keras
import numpy as np

from keras_lipschitz.certification import _common
from keras_lipschitz.certification import composition

NAME = "lln"
FORMULA = "min_{j≠y} (z_y − z_j) / (L_φ ‖w_y − w_j‖)"


def last_linear_layer(model):
    """`(layer, body_tensor)` if `model` ends in a linear dense layer, else None.

    Linear means a plain `keras.layers.Dense`, or a layer of this library
    with `effective_kernel()` and `units`, without activation.
    """
    operation, inputs = _common.output_producer(model)
    if len(inputs) != 1:
        return None
    if hasattr(operation, "effective_kernel") and hasattr(operation, "units"):
        if getattr(operation, "_activation_lipschitz", None) is None:
            return None
    elif not isinstance(operation, keras.layers.Dense):
        return None
    if operation.activation is not keras.activations.linear:
        return None
    return operation, inputs[0]


def applies(model):
    """Whether `model` ends in a linear layer."""
    return last_linear_layer(model) is not None


def _kernel(layer):
    if hasattr(layer, "effective_kernel"):
        return np.asarray(layer.effective_kernel(), np.float64)
    return _common.to_float64(layer.kernel)


def pair_ratios(model, gaps, labels):
    """Per-pair radii $(z_y - z_j)/(L_\\phi\\|w_y - w_j\\|)$.

    Args:
        model: a model for which `applies(model)` is true.
        gaps: float64 `(N, C)`, $z_y - z_j$.
        labels: int `(N,)`.

    Returns:
        float64 `(N, C)`.
    """
    layer, body_tensor = last_linear_layer(model)
    kernel = _kernel(layer)
    body = composition.tensor_bound(body_tensor)
    # Column j of a Keras kernel is w_j; ||w_y - w_j|| for all pairs.
    diff = kernel.T[:, None, :] - kernel.T[None, :, :]
    pair = body * np.linalg.norm(diff, axis=-1)[labels]  # (N, C)
    return _common.pair_ratios(gaps, pair)
