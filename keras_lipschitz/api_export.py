"""The single registration decorator for every public keras-lipschitz object."""

import keras

# Fixed string, never derived from `__name__`: moving a class to another module
# must not change the name stored in `.keras` files.
PACKAGE = "keras_lipschitz"


def keras_lipschitz_export(cls):
    """Registers `cls` for Keras serialization under the package name."""
    return keras.saving.register_keras_serializable(package=PACKAGE)(cls)
