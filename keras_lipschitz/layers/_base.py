"""Base class of the layers that are 1-Lipschitz by construction."""

import keras
from keras import ops

from keras_lipschitz.layers import _validation


class OneLipschitzLayer(keras.layers.Layer):
    """A layer that is 1-Lipschitz (ℓ2) for every value of its weights.

    Activations, pooling and reshaping layers whose constant does not depend
    on any estimate: their guaranteed bound is exactly 1.
    """

    def lipschitz_upper_bound(self):
        """Guaranteed ℓ2 Lipschitz constant of the layer: 1.0.

        Returns:
            A Python float.
        """
        return 1.0


class ScaledOneLipschitzLayer(OneLipschitzLayer):
    """A 1-Lipschitz map whose output is multiplied by `lipschitz`.

    The activations and pooling layers that take a `lipschitz` argument
    (deel-lip's `k_coef_lip`): the layer computes $L\\,g(x)$ with $g$
    1-Lipschitz, so it is $L$-Lipschitz, and gradient norm preserving up
    to the factor $L$ wherever $g$ is. At the default $L = 1$ no multiply
    is added.
    """

    def __init__(self, lipschitz=1.0, **kwargs):
        super().__init__(**kwargs)
        self.lipschitz = _validation.validate_positive_number(
            "lipschitz", lipschitz
        )

    def _scale(self, outputs):
        """`outputs * lipschitz` (no op at 1.0, a Python-level check)."""
        if self.lipschitz == 1.0:
            return outputs
        return ops.multiply(outputs, ops.cast(self.lipschitz, outputs.dtype))

    def lipschitz_upper_bound(self):
        """Guaranteed ℓ2 Lipschitz constant of the layer: `lipschitz`.

        Returns:
            A Python float.
        """
        return float(self.lipschitz)

    def get_config(self):
        config = super().get_config()
        config["lipschitz"] = self.lipschitz
        return config
