"""The curvature certificate of models ending in a `CRCLipHead`.

$r(x) = r_\\phi / L_\\phi$, with $r_\\phi$ the head's feature-space radius
(from guaranteed curvature bounds, optionally refined by the verified CRC
of Singla & Feizi) and $L_\\phi$ the guaranteed bound of the body. The
maths is in `keras_lipschitz.curvature`; this module adapts it to the
dispatch.
"""

from keras_lipschitz import curvature

NAME = "curvature_head"
FORMULA = "r_φ / L_φ, r_φ from curvature bounds of the CRC-Lip head"


def applies(model):
    """Whether `model`'s output is produced by a `CRCLipHead`."""
    return curvature.ends_with_curvature_head(model)


def certify(model, x, y, batch_size):
    """Certified ℓ2 radii (see `keras_lipschitz.curvature.certify_curvature_head`)."""
    return curvature.certify_curvature_head(model, x, y, batch_size)
