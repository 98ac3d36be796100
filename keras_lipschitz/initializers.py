"""Kernel initializers for Lipschitz networks."""

import keras
from keras import ops

from keras_lipschitz import normalizers
from keras_lipschitz.api_export import keras_lipschitz_export
from keras_lipschitz.layers import _validation

# Gram squarings of the spectral bound used before Björck.
GRAM_ITERATIONS = 8


@keras_lipschitz_export
class SpectralInitializer(keras.initializers.Initializer):
    """A kernel of spectral norm `lipschitz` with (near) equal singular values.

    Draws a kernel with `base_initializer`, reshapes it to
    $R \\in \\mathbb{R}^{(\\prod_{i<n}d_i)\\times d_n}$, divides it by a
    guaranteed upper bound of $\\sigma_{max}(R)$ (Gram iteration, Delattre
    et al., ICML 2023) and runs `bjorck_iterations` steps of Björck
    orthonormalization (Anil, Lucas, Grosse, ICML 2019), then multiplies by
    `lipschitz`. Every singular value of the result is at most `lipschitz`
    and, after enough Björck steps, equal to it. With
    `bjorck_iterations=0` only the spectral normalization is applied.

    deel-lip's `SpectralInitializer` (RKO of the base kernel) computes the
    same thing with a power-iteration estimate and tolerance-based stops.

    Args:
        base_initializer: initializer (or its name) of the raw kernel.
        lipschitz: float > 0.
        bjorck_iterations: int >= 0.
        bjorck_beta: float in (0, 0.5].

    Example:

    >>> import numpy as np
    >>> base = keras.initializers.Orthogonal(seed=1)
    >>> init = SpectralInitializer(base_initializer=base)
    >>> w = ops.convert_to_numpy(init((5, 4)))
    >>> np.round(np.linalg.svd(w, compute_uv=False), 4).tolist()
    [1.0, 1.0, 1.0, 1.0]
    """

    def __init__(
        self,
        base_initializer="orthogonal",
        lipschitz=1.0,
        bjorck_iterations=15,
        bjorck_beta=0.5,
    ):
        self.base_initializer = keras.initializers.get(base_initializer)
        self.lipschitz = _validation.validate_positive_number(
            "lipschitz", lipschitz
        )
        self.bjorck_iterations = _validation.validate_positive_int(
            "bjorck_iterations", bjorck_iterations, minimum=0
        )
        self.bjorck_beta = _validation.validate_bjorck_beta(bjorck_beta)

    def __call__(self, shape, dtype=None):
        shape = tuple(int(d) for d in shape)
        raw = ops.cast(self.base_initializer(shape, dtype="float32"), "float32")
        matrix = ops.reshape(raw, (-1, shape[-1]))
        matrix = matrix / normalizers.gram_spectral_norm_upper_bound(
            matrix, GRAM_ITERATIONS
        )
        if self.bjorck_iterations:
            matrix = normalizers.bjorck_orthonormalize(
                matrix, self.bjorck_iterations, self.bjorck_beta
            )
        kernel = ops.reshape(matrix * self.lipschitz, shape)
        return ops.cast(kernel, dtype or keras.config.floatx())

    def get_config(self):
        return {
            "base_initializer": keras.initializers.serialize(
                self.base_initializer
            ),
            "lipschitz": self.lipschitz,
            "bjorck_iterations": self.bjorck_iterations,
            "bjorck_beta": self.bjorck_beta,
        }
