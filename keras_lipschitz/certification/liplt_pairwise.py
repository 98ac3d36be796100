"""The LipLT pairwise certificate.

For feed-forward models of linear layers and monotone slope-restricted
activations, `keras_lipschitz.liplt.liplt_pairwise_bounds` gives a
guaranteed constant $L_{yj}$ of each logit difference $z_y - z_j$ (Fazlyab
et al., NeurIPS 2023, with exact norms of the layer products), and the pair
$(y, j)$ is safe within
$$r_{yj} = \\frac{z_y - z_j}{L_{yj}}.$$
"""

from keras_lipschitz import liplt
from keras_lipschitz.certification import _common

NAME = "liplt"
FORMULA = "min_{j≠y} (z_y − z_j) / L_yj (LipLT pair constants)"


def applies(model):
    """Whether the LipLT recursion supports `model`."""
    return liplt.liplt_supported(model)


def pair_ratios(model, gaps, labels):
    """Per-pair radii $(z_y - z_j)/L_{yj}$.

    Args:
        model: a model for which `applies(model)` is true (else the LipLT
            code raises `ValueError` naming the first unsupported layer).
        gaps: float64 `(N, C)`, $z_y - z_j$.
        labels: int `(N,)`.

    Returns:
        float64 `(N, C)`.
    """
    pair = liplt.liplt_pairwise_bounds(model)[labels]  # (N, C): L_{y j}
    return _common.pair_ratios(gaps, pair)
