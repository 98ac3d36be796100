"""deel-lip's `deel.lip.losses`, as `keras_lipschitz.losses`.

Same formulas, defaults and default names. deel-lip keeps hyper-parameters
in `keras.Variable`s (which a compiled JAX step never sees change); ours
are floats, changed during `fit` by
`lip.callbacks.LossParamScheduler`. `reduction="auto"` (Keras 2) is
`"sum_over_batch_size"`.

`multi_gpu=True` is not needed and is refused: our KR terms sum the class
counts across replicas (`docs/scaling.md`), so the plain labels give the
global-batch loss; drop `multi_gpu` and `process_labels_for_multi_gpu`.
"""

from keras_lipschitz import losses as _losses
from keras_lipschitz.compat.deel_lip._mapping import maps_to
from keras_lipschitz.compat.deel_lip._mapping import reduction as _reduction

_MULTI_GPU_NOTE = (
    "`multi_gpu=True` is refused (not needed: the class counts are summed "
    "across replicas)."
)


def _check_multi_gpu(multi_gpu):
    if multi_gpu:
        raise ValueError(
            "multi_gpu=True is not needed with keras_lipschitz: the KR terms "
            "sum the class counts across replicas, so the plain labels give "
            "the global-batch loss. Drop multi_gpu and "
            "process_labels_for_multi_gpu."
        )


@maps_to("losses", "`KR()`", _MULTI_GPU_NOTE)
def KR(multi_gpu=False, reduction="sum_over_batch_size", name="KR"):
    """deel-lip's `KR`: `keras_lipschitz.losses.KR` (to maximize)."""
    _check_multi_gpu(multi_gpu)
    return _losses.KR(reduction=_reduction(reduction), name=name)


@maps_to("losses", "`HKR(alpha, min_margin)`", _MULTI_GPU_NOTE)
def HKR(
    alpha,
    min_margin=1.0,
    multi_gpu=False,
    reduction="sum_over_batch_size",
    name="HKR",
):
    """deel-lip's `HKR`: `keras_lipschitz.losses.HKR`."""
    _check_multi_gpu(multi_gpu)
    return _losses.HKR(
        alpha=alpha,
        min_margin=min_margin,
        reduction=_reduction(reduction),
        name=name,
    )


@maps_to("losses", "`HingeMargin(min_margin)`", "")
def HingeMargin(
    min_margin=1.0, reduction="sum_over_batch_size", name="HingeMargin"
):
    """deel-lip's `HingeMargin`: `keras_lipschitz.losses.HingeMargin`."""
    return _losses.HingeMargin(
        min_margin=min_margin, reduction=_reduction(reduction), name=name
    )


@maps_to("losses", "`MulticlassKR()`", _MULTI_GPU_NOTE)
def MulticlassKR(
    multi_gpu=False, reduction="sum_over_batch_size", name="MulticlassKR"
):
    """deel-lip's `MulticlassKR`: `keras_lipschitz.losses.MulticlassKR`."""
    _check_multi_gpu(multi_gpu)
    return _losses.MulticlassKR(reduction=_reduction(reduction), name=name)


@maps_to("losses", "`MulticlassHinge(min_margin)`", "")
def MulticlassHinge(
    min_margin=1.0, reduction="sum_over_batch_size", name="MulticlassHinge"
):
    """deel-lip's `MulticlassHinge`: our `MulticlassHinge`."""
    return _losses.MulticlassHinge(
        min_margin=min_margin, reduction=_reduction(reduction), name=name
    )


@maps_to("losses", "`MulticlassHKR(alpha, min_margin)`", _MULTI_GPU_NOTE)
def MulticlassHKR(
    alpha=10.0,
    min_margin=1.0,
    multi_gpu=False,
    reduction="sum_over_batch_size",
    name="MulticlassHKR",
):
    """deel-lip's `MulticlassHKR`: `keras_lipschitz.losses.MulticlassHKR`."""
    _check_multi_gpu(multi_gpu)
    return _losses.MulticlassHKR(
        alpha=alpha,
        min_margin=min_margin,
        reduction=_reduction(reduction),
        name=name,
    )


@maps_to(
    "losses",
    "`MulticlassSoftHKR(alpha, min_margin, alpha_mean, temperature)`",
    "deel-lip 1.5 (absent from its `keras3` branch). Same running mean of "
    "$\\lvert f\\rvert$ and temperature. On JAX call `loss.attach(model)` "
    "before `fit` "
    "(the running mean must be model state there); it raises otherwise.",
    status="adapted",
)
def MulticlassSoftHKR(
    alpha=10.0,
    min_margin=1.0,
    alpha_mean=0.99,
    temperature=1.0,
    reduction="sum_over_batch_size",
    name="MulticlassSoftHKR",
):
    """deel-lip 1.5's `MulticlassSoftHKR`: our `MulticlassSoftHKR`."""
    return _losses.MulticlassSoftHKR(
        alpha=alpha,
        min_margin=min_margin,
        alpha_mean=alpha_mean,
        temperature=temperature,
        reduction=_reduction(reduction),
        name=name,
    )


@maps_to("losses", "`MultiMargin(min_margin)`", "")
def MultiMargin(
    min_margin=1.0, reduction="sum_over_batch_size", name="MultiMargin"
):
    """deel-lip's `MultiMargin`: `keras_lipschitz.losses.MultiMargin`."""
    return _losses.MultiMargin(
        min_margin=min_margin, reduction=_reduction(reduction), name=name
    )


@maps_to("losses", "`CategoricalHinge(min_margin)`", "")
def CategoricalHinge(
    min_margin, reduction="sum_over_batch_size", name="CategoricalHinge"
):
    """deel-lip's `CategoricalHinge`: our `CategoricalHinge`."""
    return _losses.CategoricalHinge(
        min_margin=min_margin, reduction=_reduction(reduction), name=name
    )


@maps_to(
    "losses",
    "`TauCategoricalCrossentropy(tau)`",
    "Also accepts integer labels.",
)
def TauCategoricalCrossentropy(
    tau, reduction="sum_over_batch_size", name="TauCategoricalCrossentropy"
):
    """deel-lip's `TauCategoricalCrossentropy`."""
    return _losses.TauCategoricalCrossentropy(
        tau=tau, reduction=_reduction(reduction), name=name
    )


@maps_to("losses", "`TauSparseCategoricalCrossentropy(tau)`", "")
def TauSparseCategoricalCrossentropy(
    tau,
    reduction="sum_over_batch_size",
    name="TauSparseCategoricalCrossentropy",
):
    """deel-lip's `TauSparseCategoricalCrossentropy`."""
    return _losses.TauSparseCategoricalCrossentropy(
        tau=tau, reduction=_reduction(reduction), name=name
    )


@maps_to("losses", "`TauBinaryCrossentropy(tau)`", "")
def TauBinaryCrossentropy(
    tau, reduction="sum_over_batch_size", name="TauBinaryCrossentropy"
):
    """deel-lip's `TauBinaryCrossentropy`."""
    return _losses.TauBinaryCrossentropy(
        tau=tau, reduction=_reduction(reduction), name=name
    )


__all__ = [
    "CategoricalHinge",
    "HKR",
    "HingeMargin",
    "KR",
    "MultiMargin",
    "MulticlassHKR",
    "MulticlassHinge",
    "MulticlassKR",
    "MulticlassSoftHKR",
    "TauBinaryCrossentropy",
    "TauCategoricalCrossentropy",
    "TauSparseCategoricalCrossentropy",
]
