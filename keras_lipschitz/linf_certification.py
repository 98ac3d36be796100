"""Sound ℓ∞ certification of ℓ∞-distance nets and SortNets.

The two ℓ∞ certificates live in `keras_lipschitz.certification`:

- `keras_lipschitz.certification.linf_margin`: $r = (z_y - \\max_{j\\ne y}
  z_j)/2$ when every layer is 1-Lipschitz w.r.t. ℓ∞ in inference mode
  (Zhang et al., ICML 2021);
- `keras_lipschitz.certification.linf_ibp`: interval bound propagation
  through an MLP head of plain `Dense` layers (SortNet + MLP, Zhang et al.,
  NeurIPS 2022).

This module keeps the names it has always exported; `certify_linf` is
`keras_lipschitz.certify(..., norm="linf")`.
"""

from keras_lipschitz.certification import api
from keras_lipschitz.certification._linf import SUPPORTED
from keras_lipschitz.certification._linf import split_linf_model
from keras_lipschitz.certification.linf_ibp import ibp_margin_lower_bounds

__all__ = [
    "SUPPORTED",
    "certify_linf",
    "ibp_margin_lower_bounds",
    "split_linf_model",
]


def certify_linf(model, x, y, batch_size=256):
    """Per-example certified ℓ∞ radii, 0 where the prediction is wrong.

    - Without a head: $r = (z_y - \\max_{j\\ne y}z_j)/2$ from the
      inference-mode logits, in float64.
    - With an MLP head: the largest $\\varepsilon$ for which interval bound
      propagation proves $z_y > z_j$ for all $j$ on the feature box, found
      by bisection.

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
    return api.certify(model, x, y, norm="linf", batch_size=batch_size)
