"""The binary certificate, for models with a single output score.

A model with a single output $f$ (shape `(N,)` or `(N, 1)`, as trained with
`keras_lipschitz.losses.HKR`) predicts the positive class iff $f(x) > 0$.
With $L$ a guaranteed bound of the model, the radius is
$$r = \\operatorname{sign}(y)\\,f(x)/L,$$
i.e. $|f(x)|/L$ for a correct prediction (no $\\sqrt2$: one score, not a
difference of two logits). $f(x) = 0$ is not certified.
"""

import numpy as np

from keras_lipschitz.certification import composition

NAME = "binary"
FORMULA = "sign(y) f(x) / L"


def applies(output_shape):
    """Whether a static output shape is that of a single score."""
    return len(output_shape) == 1 or (
        len(output_shape) == 2 and output_shape[-1] == 1
    )


def certify(model, x, y, batch_size):
    """Radii `sign(y) f / L` of a single-output (binary) model.

    Args:
        model: a single-input model with one output score per example.
        x: inputs.
        y: binary labels `(N,)`/`(N, 1)` in {0, 1} or {-1, +1}, positive
            iff `y > 0`.
        batch_size: batch size of the forward pass.

    Returns:
        float64 `(N,)`, 0 where the prediction is wrong or not finite.
    """
    scores = np.asarray(
        model.predict(x, batch_size=batch_size, verbose=0), np.float64
    ).reshape(-1)
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or y.shape[0] != scores.shape[0]:
        raise ValueError(
            "For a model with a single output, `y` must be binary labels of "
            f"shape ({scores.shape[0]},) or ({scores.shape[0]}, 1). "
            f"Received: shape {y.shape}"
        )
    if not np.all(np.isin(y, (-1, 0, 1))):
        raise ValueError(
            "For a model with a single output, `y` must hold binary labels "
            f"in {{0, 1}} or {{-1, +1}}. Received values: "
            f"{np.unique(y)[:10].tolist()}"
        )
    sign = np.where(y > 0, 1.0, -1.0)
    radius = sign * scores / composition.lipschitz_bound(model)
    return np.where(np.isfinite(radius) & (radius > 0), radius, 0.0)
