"""deel-lip's `deel.lip.model`: `Sequential`, `Model`, `vanillaModel`."""

import math
import warnings

import keras

from keras_lipschitz.compat.deel_lip._mapping import maps_to
from keras_lipschitz.export import vanilla_export
from keras_lipschitz.layers import _validation

# Keras layers deel-lip's Sequential accepts without a warning (always).
_ONE_LIPSCHITZ_KERAS_LAYERS = (
    keras.layers.InputLayer,
    keras.layers.Flatten,
    keras.layers.Reshape,
    keras.layers.Softmax,
)
# Activations that are 1-Lipschitz (deel-lip's list).
_ONE_LIPSCHITZ_ACTIVATIONS = (
    keras.activations.linear,
    keras.activations.relu,
    keras.activations.sigmoid,
    keras.activations.tanh,
)


def _is_one_lipschitz_keras_layer(layer):
    """deel-lip's check of a plain Keras layer, with its parameters.

    Max pooling is 1-Lipschitz only without overlapping windows
    (`pool_size <= strides`; with overlap an input is in several windows),
    `ReLU` only with `threshold == 0` and `negative_slope <= 1`, and
    `Activation` only for linear, ReLU, sigmoid and tanh (GELU, for one,
    has a slope above 1).
    """
    if isinstance(layer, _ONE_LIPSCHITZ_KERAS_LAYERS):
        return True
    if isinstance(layer, keras.layers.MaxPooling2D):
        return all(
            p <= s for p, s in zip(layer.pool_size, layer.strides)
        )
    if isinstance(layer, keras.layers.ReLU):
        return float(layer.threshold) == 0.0 and (
            float(layer.negative_slope) <= 1.0
        )
    if isinstance(layer, keras.layers.Activation):
        return layer.activation in _ONE_LIPSCHITZ_ACTIVATIONS
    return False


def _is_lipschitz_layer(layer):
    """deel-lip's `LipschitzLayer`: a layer with a `lipschitz` factor."""
    return hasattr(layer, "lipschitz") and hasattr(
        layer, "lipschitz_upper_bound"
    )


def spread_lipschitz(layers, k_coef_lip):
    """Sets `lipschitz = k_coef_lip ** (1 / n)` on the n Lipschitz layers.

    deel-lip's constant repartition: each of the $n$ layers with a Lipschitz
    factor gets $k^{1/n}$, so their composition is $k$-Lipschitz. Layers
    built by `lip.layers.Householder` are counted but keep 1 (deel-lip's
    never applies its factor). Other layers are left alone, with a warning
    for the ones that are not 1-Lipschitz Keras layers. Call it before the
    layers are built: some layers fix their scale at build.

    Args:
        layers: list of layers.
        k_coef_lip: float > 0.

    Returns:
        The per-layer factor $k^{1/n}$ (or None without Lipschitz layers).
    """
    k_coef_lip = _validation.validate_positive_number("k_coef_lip", k_coef_lip)
    # `keras.Input(...)` in the list is a tensor, not a layer.
    layers = [
        layer for layer in layers if isinstance(layer, keras.layers.Layer)
    ]
    lipschitz_layers = [layer for layer in layers if _is_lipschitz_layer(layer)]
    for layer in layers:
        if not _is_lipschitz_layer(layer) and not (
            _is_one_lipschitz_keras_layer(layer)
        ):
            warnings.warn(
                "Sequential model contains a layer which is not a "
                f"1-Lipschitz layer: {layer.name}",
                stacklevel=3,
            )
    if not lipschitz_layers:
        return None
    share = math.pow(k_coef_lip, 1.0 / len(lipschitz_layers))
    for layer in lipschitz_layers:
        if not getattr(layer, "_deel_lip_ignores_k_coef_lip", False):
            layer.lipschitz = share
    return share


@maps_to(
    "model",
    "`keras.Sequential` subclass (registered as "
    "`keras_lipschitz>DeelLipSequential`)",
    "`k_coef_lip` is spread as $k^{1/n}$ over the $n$ layers with a "
    "`lipschitz` factor, as in deel-lip (set when the model is created). "
    "`vanilla_export()` is `keras_lipschitz.vanilla_export`; `condense()` "
    "does nothing.",
    name="Sequential",
)
@keras.saving.register_keras_serializable(
    package="keras_lipschitz", name="DeelLipSequential"
)
class Sequential(keras.Sequential):
    """deel-lip's `Sequential`: a `keras.Sequential` with a global constant.

    `k_coef_lip` is spread over the layers that have a `lipschitz` factor
    (`spread_lipschitz`): each of the $n$ gets $k^{1/n}$. Saved and loaded
    as `keras_lipschitz>DeelLipSequential` (registered when
    `keras_lipschitz` is imported); the layers keep their factors.

    Args:
        layers: list of layers.
        name: model name.
        k_coef_lip: float > 0, the model's Lipschitz constant.
        **kwargs: `keras.Sequential` keyword arguments.
    """

    def __init__(self, layers=None, name=None, k_coef_lip=1.0, **kwargs):
        self.k_coef_lip = float(k_coef_lip)
        if layers:
            spread_lipschitz(list(layers), k_coef_lip)
        super().__init__(layers=layers, name=name, **kwargs)

    def set_klip_factor(self, klip_factor):
        """Spreads a new constant (only reliable before the model is built)."""
        self.k_coef_lip = float(klip_factor)
        spread_lipschitz(self.layers, klip_factor)

    def condense(self):
        """Does nothing: constrained kernels are derived in every call."""

    def vanilla_export(self):
        """`keras_lipschitz.vanilla_export(self)`: plain Keras layers."""
        return vanilla_export(self)

    def get_config(self):
        config = super().get_config()
        config["k_coef_lip"] = self.k_coef_lip
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        k_coef_lip = config.pop("k_coef_lip", 1.0)
        # The layers already carry their share: nothing to spread again.
        model = super().from_config(config, custom_objects=custom_objects)
        model.k_coef_lip = float(k_coef_lip)
        return model


@maps_to(
    "model",
    "`keras.Model` subclass (registered as `keras_lipschitz>DeelLipModel`)",
    "Functional model with `vanilla_export()` and a no-op `condense()`.",
    name="Model",
)
@keras.saving.register_keras_serializable(
    package="keras_lipschitz", name="DeelLipModel"
)
class Model(keras.Model):
    """deel-lip's `Model`: a functional model with `vanilla_export()`."""

    def condense(self):
        """Does nothing: constrained kernels are derived in every call."""

    def vanilla_export(self):
        """`keras_lipschitz.vanilla_export(self)`: plain Keras layers."""
        return vanilla_export(self)


@maps_to(
    "model",
    "`keras_lipschitz.vanilla_export(model)`",
    "Constrained layers become plain `Dense` / `Conv2D` with the inference "
    "kernels.",
)
def vanillaModel(model):
    """deel-lip's `vanillaModel`: `keras_lipschitz.vanilla_export`."""
    return vanilla_export(model)


__all__ = ["Model", "Sequential", "spread_lipschitz", "vanillaModel"]
