"""Base class of the layers that are 1-Lipschitz by construction."""

import keras


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
