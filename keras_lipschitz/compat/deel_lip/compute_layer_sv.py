"""deel-lip's `deel.lip.compute_layer_sv`."""

from keras_lipschitz import utils as _utils
from keras_lipschitz.compat.deel_lip._mapping import maps_to


@maps_to(
    "compute_layer_sv",
    "`keras_lipschitz.utils.compute_layer_sv`",
    "Exact float64 SVDs of the inference-mode operator (deel-lip: of the "
    "vanilla-exported layer); large convolutions give `(None, bound)`.",
)
def compute_layer_sv(layer, supplementary_type2sv={}):  # noqa: B006
    """deel-lip's `compute_layer_sv`: `(min, max)` singular values."""
    return _utils.compute_layer_sv(layer, supplementary_type2sv or None)


@maps_to(
    "compute_layer_sv",
    "`keras_lipschitz.utils.compute_model_sv`",
    "Returns deel-lip's list of `(name, (min, max))` (ours: a dict).",
)
def compute_model_sv(model, supplementary_type2sv={}):  # noqa: B006
    """deel-lip's `compute_model_sv`: a list of `(name, (min, max))`."""
    result = _utils.compute_model_sv(model, supplementary_type2sv or None)
    return list(result.items())


__all__ = ["compute_layer_sv", "compute_model_sv"]
