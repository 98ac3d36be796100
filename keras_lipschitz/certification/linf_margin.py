"""The ℓ∞ margin certificate of ℓ∞-distance nets and SortNets.

When every layer of the model is 1-Lipschitz w.r.t. $\\ell_\\infty$ in
inference mode (`LinfDistDense` and `SortNetDense`, which always use
$p = \\infty$ at inference, plus reshaping and identity layers), each logit
is 1-Lipschitz in $\\ell_\\infty$, so $z_y - z_j$ changes by at most
$2\\|\\delta\\|_\\infty$ and the radius is
$$r = (z_y - \\max_{j\\ne y} z_j)/2$$
(Zhang et al., ICML 2021).
"""

import numpy as np

from keras_lipschitz.certification import _common
from keras_lipschitz.certification import _linf

NAME = "linf_margin"
FORMULA = "(z_y − max_{j≠y} z_j) / 2"


def certify(model, x, y, batch_size):
    """Per-example certified ℓ∞ radii of a model without an MLP head.

    Args:
        model: a model whose layers are all in the ℓ∞ body
            (`_linf.split_linf_model` returns no head).
        x: inputs, array-like.
        y: integer labels `(N,)`/`(N, 1)` or one-hot `(N, C)`.
        batch_size: batch size of the forward passes.

    Returns:
        float64 `(N,)`, 0 where the prediction is wrong or not finite.
    """
    body, _ = _linf.split_linf_model(model)
    logits = _linf.forward(body, np.asarray(x, np.float32), batch_size)
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(
            "`model` must output logits of shape (N, C) with C >= 2. "
            f"Received: {logits.shape}"
        )
    n = logits.shape[0]
    labels = _common.labels_to_indices(y, logits.shape[1])
    z_y = logits[np.arange(n), labels]
    others = logits.copy()
    others[np.arange(n), labels] = -np.inf
    radius = (z_y - np.max(others, axis=1)) / 2.0
    finite = np.all(np.isfinite(logits), axis=1)
    return np.where(finite & (radius > 0), radius, 0.0)
