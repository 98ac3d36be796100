"""deel-lip's `deel.lip.layers.base_layer`: `LipschitzLayer`, `Condensable`."""

import abc

import keras

from keras_lipschitz.compat.deel_lip._mapping import maps_to


class LipschitzLayer(abc.ABC):
    """deel-lip's `LipschitzLayer`, as an abstract class for `isinstance`.

    Any layer with a `lipschitz` factor and a `lipschitz_upper_bound()`
    (every constrained layer, activation and scaled pooling of
    keras-lipschitz) is an instance, and deel-lip's Lipschitz layer classes
    of this module (`SpectralDense`, the activations, the scaled pooling
    layers, ...) are subclasses. There is no `set_klip_factor`: set
    `layer.lipschitz` before the layer is built, or use
    `lip.model.Sequential(k_coef_lip=...)`.
    """

    @classmethod
    def __subclasshook__(cls, subclass):
        if cls is LipschitzLayer:
            if getattr(subclass, "_deel_lip_lipschitz_layer", False):
                return True  # deel-lip's Lipschitz layer classes.
            return issubclass(subclass, keras.layers.Layer) and hasattr(
                subclass, "lipschitz_upper_bound"
            )
        return NotImplemented


class Condensable(abc.ABC):
    """deel-lip's `Condensable`, as an abstract class for `isinstance`.

    Any layer with `effective_kernel()` is an instance: its constrained
    kernel is what `keras_lipschitz.vanilla_export` copies. deel-lip's
    condensable classes of this module (`SpectralDense`, `FrobeniusDense`,
    `SpectralConv2D`, `FrobeniusConv2D`, `PadConv2D`) are subclasses. There
    is no `condense()` (nothing is ever written back to the trainable
    kernel).
    """

    @classmethod
    def __subclasshook__(cls, subclass):
        if cls is Condensable:
            if getattr(subclass, "_deel_lip_condensable", False):
                return True  # deel-lip's Condensable layer classes.
            return hasattr(subclass, "effective_kernel")
        return NotImplemented


maps_to(
    "layers",
    "abstract class",
    "`issubclass` is true for deel-lip's Lipschitz layer classes, "
    "`isinstance` for every layer with `lipschitz_upper_bound()`; no "
    "`set_klip_factor` (set `lipschitz`, or use `Sequential(k_coef_lip)`).",
    status="adapted",
)(LipschitzLayer)
maps_to(
    "layers",
    "abstract class",
    "`issubclass` is true for deel-lip's condensable layer classes, "
    "`isinstance` for layers with `effective_kernel()`; no "
    "`condense()`: nothing to condense, kernels are derived in `call`.",
    status="adapted",
)(Condensable)


__all__ = ["Condensable", "LipschitzLayer"]
