"""The global ℓ2 certificate: margin over $\\sqrt2 L$.

With logits $z$, label $y$ and a guaranteed bound $L$ on the model's ℓ2
Lipschitz constant, each difference $z_y - z_j$ is $\\sqrt2 L$-Lipschitz,
so the pair $(y, j)$ is safe within
$$r_{yj} = \\frac{z_y - z_j}{\\sqrt2\\,L}$$
(Tsuzuku et al., NeurIPS 2018). Used for multiclass models that do not end
in a linear layer.
"""

import math

from keras_lipschitz.certification import composition

NAME = "global_l2"
FORMULA = "min_{j≠y} (z_y − z_j) / (√2 L)"


def pair_ratios(model, gaps, labels):
    """Per-pair radii $(z_y - z_j)/(\\sqrt2 L)$.

    Args:
        model: the certified model.
        gaps: float64 `(N, C)`, $z_y - z_j$.
        labels: int `(N,)` (unused: the constant is the same for every pair).

    Returns:
        float64 `(N, C)`.
    """
    del labels
    bound = composition.lipschitz_bound(model)
    return gaps / (math.sqrt(2.0) * bound)
