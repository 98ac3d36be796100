"""deel-lip's `deel.lip.constraints`, as `keras_lipschitz.constraints`.

Keras applies a constraint itself after every optimizer step. A plain layer
so constrained is certified from its actual weights by
`keras_lipschitz.lipschitz_bound` / `certify`.
"""

from keras_lipschitz import constraints as _constraints
from keras_lipschitz.compat.deel_lip._classes import deel_lip_class
from keras_lipschitz.compat.deel_lip._mapping import maps_to


@maps_to("constraints", "`WeightClipConstraint(clip_value=c)`", "")
@deel_lip_class(_constraints.WeightClipConstraint)
def WeightClipConstraint(c=2):
    """deel-lip's `WeightClipConstraint(c)`: clip to `[-c, c]`.

    Returns:
        A `keras_lipschitz.constraints.WeightClipConstraint`.
    """
    return _constraints.WeightClipConstraint(clip_value=c)


@maps_to(
    "constraints",
    "`AutoWeightClipConstraint(scale=1/scale)`",
    "deel-lip clips at $1/(\\text{scale}\\sqrt n)$; our `scale` is the "
    "guaranteed Frobenius bound $s$ (clip at $s/\\sqrt n$), so it is passed "
    "as `1/scale`: same clipping.",
)
@deel_lip_class(_constraints.AutoWeightClipConstraint)
def AutoWeightClipConstraint(scale=1):
    """deel-lip's `AutoWeightClipConstraint(scale)`: clip at `1/(scale √n)`.

    Returns:
        A `keras_lipschitz.constraints.AutoWeightClipConstraint` with
        `scale=1/scale` (the same clipping value).
    """
    return _constraints.AutoWeightClipConstraint(scale=1.0 / scale)


@maps_to("constraints", "`FrobeniusConstraint(epsilon=eps)`", "")
@deel_lip_class(_constraints.FrobeniusConstraint)
def FrobeniusConstraint(eps=1e-7):
    """deel-lip's `FrobeniusConstraint`: `W / (||W||_F + eps)`.

    Returns:
        A `keras_lipschitz.constraints.FrobeniusConstraint`.
    """
    return _constraints.FrobeniusConstraint(epsilon=eps)


@maps_to(
    "constraints",
    "`SpectralConstraint(lipschitz=k_coef_lip, bjorck_beta=beta_bjorck)`",
    "Divides by a guaranteed spectral bound (deel-lip: a power-iteration "
    "estimate from a random vector at every step, which can be low), then "
    "15 Björck steps (0 with `eps_bjorck=None`). `u` is not needed "
    "(stateless).",
    status="sound",
)
@deel_lip_class(_constraints.SpectralConstraint)
def SpectralConstraint(
    k_coef_lip=1.0,
    eps_spectral=1e-3,
    eps_bjorck=1e-3,
    beta_bjorck=0.5,
    u=None,
):
    """deel-lip's `SpectralConstraint`: our `SpectralConstraint`.

    Args:
        k_coef_lip: our `lipschitz`.
        eps_spectral, u: accepted (the spectral scale is a guaranteed
            bound, no vector is kept).
        eps_bjorck: None disables Björck; otherwise accepted.
        beta_bjorck: our `bjorck_beta`.

    Returns:
        A `keras_lipschitz.constraints.SpectralConstraint`.
    """
    off = eps_bjorck is None or beta_bjorck is None
    return _constraints.SpectralConstraint(
        lipschitz=k_coef_lip,
        bjorck_iterations=0 if off else 15,
        bjorck_beta=0.5 if beta_bjorck is None else beta_bjorck,
    )


__all__ = [
    "AutoWeightClipConstraint",
    "FrobeniusConstraint",
    "SpectralConstraint",
    "WeightClipConstraint",
]
