"""deel-lip's `deel.lip.losses`, as `keras_lipschitz.losses`.

Same formulas, defaults and default names. deel-lip keeps hyper-parameters
in `keras.Variable`s (which a compiled JAX step never sees change); ours
are floats, changed during `fit` by
`lip.callbacks.LossParamScheduler`. `reduction="auto"` (Keras 2) is
`"sum_over_batch_size"`.

`multi_gpu=True` is accepted, with deel-lip's meaning: the labels are
pre-processed by `lip.utils.process_labels_for_multi_gpu` on the global
batch (they carry the class weights $B/n_\\pm$), and the KR term is
$\\mathrm{mean}_c(f \\cdot y)$, so that the replicas' losses add up to the
global one. It is not needed here: our KR terms sum the class counts
across replicas (`docs/scaling.md`), so the plain labels (and
`multi_gpu=False`) give the global-batch loss under any distribution.

As in deel-lip, `HingeMargin`, `MulticlassHinge`, `MultiMargin`,
`CategoricalHinge` and `TauBinaryCrossentropy` read the labels as
`y_true > 0`: labels in {0, 1}, {-1, +1} and pre-processed labels all
work (our own losses check that the labels are {0, 1} or {-1, +1}).
"""

import keras
from keras import ops

from keras_lipschitz import losses as _losses
from keras_lipschitz.compat.deel_lip._classes import deel_lip_class
from keras_lipschitz.compat.deel_lip._mapping import maps_to
from keras_lipschitz.compat.deel_lip._mapping import reduction as _reduction

_MULTI_GPU_NOTE = (
    "`multi_gpu=True` takes labels from `process_labels_for_multi_gpu`, as "
    "in deel-lip (not needed: our class counts are summed across "
    "replicas, so plain labels work under any distribution)."
)


_LABELS_NOTE = (
    "A subclass that reads the labels as `y_true > 0`, as deel-lip: {0, 1}, "
    "{-1, +1} and `process_labels_for_multi_gpu` labels."
)


def _validate_alpha(alpha):
    # The same checks as our HKR losses (>= 0 or inf).
    return _losses._validate_alpha("alpha", alpha)


def _validate_min_margin(min_margin):
    return _losses._validate_positive("min_margin", min_margin)


@keras.saving.register_keras_serializable(
    package="keras_lipschitz", name="DeelLipMultiGPUKR"
)
class _MultiGPUKR(_losses._LipschitzLoss):
    """deel-lip's KR-based losses on labels from `process_labels_for_multi_gpu`.

    With $w$ the pre-processed labels ($B/n_+$ for a positive, $-B/n_-$ for
    a negative, counted on the global batch of size $B$), the KR term of a
    sample is $\\mathrm{mean}_c(f_c w_c)$, and the hinge uses
    $\\operatorname{sign}(w)$: $(m/2 - \\operatorname{sign}(w) f)_+$, the
    positive entries weighted by $C - 1$ in the multiclass hinge. The loss
    is $-\\mathrm{KR} + \\alpha\\,\\mathrm{hinge}$ (`alpha=None`: the KR term
    alone, to maximize; `alpha=inf`: the hinge alone).

    Args:
        alpha: None, float >= 0 or `inf`.
        min_margin: float > 0.
        multiclass: whether the hinge is deel-lip's multiclass hinge.
        reduction: Keras loss reduction.
        name: loss name.
        dtype: dtype of the loss computations.
    """

    def __init__(
        self,
        alpha=None,
        min_margin=1.0,
        multiclass=False,
        reduction="sum_over_batch_size",
        name="KR",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.alpha = None if alpha is None else _validate_alpha(alpha)
        self.min_margin = _validate_min_margin(min_margin)
        self.multiclass = bool(multiclass)

    def call(self, y_true, y_pred):
        y_pred = ops.convert_to_tensor(y_pred)
        if len(y_pred.shape) == 1:
            y_pred = ops.expand_dims(y_pred, -1)
        y_true = ops.reshape(
            ops.cast(y_true, y_pred.dtype), ops.shape(y_pred)
        )
        kr = ops.mean(y_pred * y_true, axis=-1)
        if self.alpha is None:
            return kr
        sign = ops.where(y_true > 0, 1.0, -1.0)
        sign = ops.cast(sign, y_pred.dtype)
        hinge = ops.relu(self.min_margin / 2.0 - sign * y_pred)
        if self.multiclass:
            factor = float(y_pred.shape[-1] - 1)
            hinge = ops.where(sign > 0, hinge * factor, hinge)
        hinge = ops.mean(hinge, axis=-1)
        if self.alpha == float("inf"):
            return hinge
        return self.alpha * hinge - kr

    def get_config(self):
        config = super().get_config()
        config.update(
            alpha=self.alpha,
            min_margin=self.min_margin,
            multiclass=self.multiclass,
        )
        return config


def _positive_labels(y_true, y_pred, multiclass):
    """deel-lip's label test `y_true > 0`, as 0/1 labels.

    Labels in {0, 1}, {-1, +1} and from `process_labels_for_multi_gpu` all
    become the 0/1 labels they stand for. Multiclass class indices (a
    shape other than `y_pred`'s) are returned unchanged.
    """
    y_true = ops.convert_to_tensor(y_true)
    if multiclass:
        pred_shape = tuple(ops.convert_to_tensor(y_pred).shape)
        if len(y_true.shape) != 2 or y_true.shape[-1] != pred_shape[-1]:
            return y_true
    return ops.cast(ops.greater(y_true, 0), "float32")


class _PositiveLabels:
    """Mixin: labels are read as deel-lip does, `y_true > 0`."""

    _multiclass = False

    def call(self, y_true, y_pred):
        y_true = _positive_labels(y_true, y_pred, self._multiclass)
        return super().call(y_true, y_pred)


def _register(name):
    return keras.saving.register_keras_serializable(
        package="keras_lipschitz", name=name
    )


@_register("DeelLipHingeMargin")
class _HingeMargin(_PositiveLabels, _losses.HingeMargin):
    """Our `HingeMargin`, labels read as `y_true > 0` (deel-lip)."""


@_register("DeelLipTauBinaryCrossentropy")
class _TauBinaryCrossentropy(_PositiveLabels, _losses.TauBinaryCrossentropy):
    """Our `TauBinaryCrossentropy`, labels read as `y_true > 0`."""


@_register("DeelLipMulticlassHinge")
class _MulticlassHinge(_PositiveLabels, _losses.MulticlassHinge):
    """Our `MulticlassHinge`, one-hot labels read as `y_true > 0`."""

    _multiclass = True


@_register("DeelLipMultiMargin")
class _MultiMargin(_PositiveLabels, _losses.MultiMargin):
    """Our `MultiMargin`, one-hot labels read as `y_true > 0`."""

    _multiclass = True


@_register("DeelLipCategoricalHinge")
class _CategoricalHinge(_PositiveLabels, _losses.CategoricalHinge):
    """Our `CategoricalHinge`, one-hot labels read as `y_true > 0`."""

    _multiclass = True


def _multi_gpu_loss(alpha, min_margin, multiclass, reduction, name):
    return _MultiGPUKR(
        alpha=alpha,
        min_margin=min_margin,
        multiclass=multiclass,
        reduction=_reduction(reduction),
        name=name,
    )


@maps_to("losses", "`KR()`", _MULTI_GPU_NOTE)
@deel_lip_class(_losses.KR, _MultiGPUKR)
def KR(multi_gpu=False, reduction="sum_over_batch_size", name="KR"):
    """deel-lip's `KR`: `keras_lipschitz.losses.KR` (to maximize).

    With `multi_gpu=True`, the labels must come from
    `lip.utils.process_labels_for_multi_gpu` (see the module).
    """
    if multi_gpu:
        return _multi_gpu_loss(None, 1.0, False, reduction, name)
    return _losses.KR(reduction=_reduction(reduction), name=name)


@maps_to("losses", "`HKR(alpha, min_margin)`", _MULTI_GPU_NOTE)
@deel_lip_class(_losses.HKR, _MultiGPUKR)
def HKR(
    alpha,
    min_margin=1.0,
    multi_gpu=False,
    reduction="sum_over_batch_size",
    name="HKR",
):
    """deel-lip's `HKR`: `keras_lipschitz.losses.HKR`.

    With `multi_gpu=True`, the labels must come from
    `lip.utils.process_labels_for_multi_gpu` (see the module).
    """
    if multi_gpu:
        return _multi_gpu_loss(alpha, min_margin, False, reduction, name)
    return _losses.HKR(
        alpha=alpha,
        min_margin=min_margin,
        reduction=_reduction(reduction),
        name=name,
    )


@maps_to("losses", "`HingeMargin(min_margin)`", _LABELS_NOTE)
@deel_lip_class(_losses.HingeMargin)
def HingeMargin(
    min_margin=1.0, reduction="sum_over_batch_size", name="HingeMargin"
):
    """deel-lip's `HingeMargin`: `keras_lipschitz.losses.HingeMargin`."""
    return _HingeMargin(
        min_margin=min_margin, reduction=_reduction(reduction), name=name
    )


@maps_to("losses", "`MulticlassKR()`", _MULTI_GPU_NOTE)
@deel_lip_class(_losses.MulticlassKR, _MultiGPUKR)
def MulticlassKR(
    multi_gpu=False, reduction="sum_over_batch_size", name="MulticlassKR"
):
    """deel-lip's `MulticlassKR`: `keras_lipschitz.losses.MulticlassKR`.

    With `multi_gpu=True`, the labels must come from
    `lip.utils.process_labels_for_multi_gpu` (see the module).
    """
    if multi_gpu:
        return _multi_gpu_loss(None, 1.0, True, reduction, name)
    return _losses.MulticlassKR(reduction=_reduction(reduction), name=name)


@maps_to("losses", "`MulticlassHinge(min_margin)`", _LABELS_NOTE)
@deel_lip_class(_losses.MulticlassHinge)
def MulticlassHinge(
    min_margin=1.0, reduction="sum_over_batch_size", name="MulticlassHinge"
):
    """deel-lip's `MulticlassHinge`: our `MulticlassHinge`."""
    return _MulticlassHinge(
        min_margin=min_margin, reduction=_reduction(reduction), name=name
    )


@maps_to("losses", "`MulticlassHKR(alpha, min_margin)`", _MULTI_GPU_NOTE)
@deel_lip_class(_losses.MulticlassHKR, _MultiGPUKR)
def MulticlassHKR(
    alpha=10.0,
    min_margin=1.0,
    multi_gpu=False,
    reduction="sum_over_batch_size",
    name="MulticlassHKR",
):
    """deel-lip's `MulticlassHKR`: `keras_lipschitz.losses.MulticlassHKR`.

    With `multi_gpu=True`, the labels must come from
    `lip.utils.process_labels_for_multi_gpu` (see the module).
    """
    if multi_gpu:
        return _multi_gpu_loss(alpha, min_margin, True, reduction, name)
    return _losses.MulticlassHKR(
        alpha=alpha,
        min_margin=min_margin,
        reduction=_reduction(reduction),
        name=name,
    )


@maps_to(
    "losses",
    "`MulticlassSoftHKR(alpha, min_margin, alpha_mean, temperature)`",
    "deel-lip 1.5.1 (absent from 1.5.0 and its `keras3` branch). Same "
    "running mean of "
    "$\\lvert f\\rvert$ and temperature. On JAX call `loss.attach(model)` "
    "before `fit` "
    "(the running mean must be model state there); it raises otherwise.",
    status="adapted",
)
@deel_lip_class(_losses.MulticlassSoftHKR)
def MulticlassSoftHKR(
    alpha=10.0,
    min_margin=1.0,
    alpha_mean=0.99,
    temperature=1.0,
    reduction="sum_over_batch_size",
    name="MulticlassSoftHKR",
):
    """deel-lip 1.5.1's `MulticlassSoftHKR`: our `MulticlassSoftHKR`."""
    return _losses.MulticlassSoftHKR(
        alpha=alpha,
        min_margin=min_margin,
        alpha_mean=alpha_mean,
        temperature=temperature,
        reduction=_reduction(reduction),
        name=name,
    )


@maps_to("losses", "`MultiMargin(min_margin)`", _LABELS_NOTE)
@deel_lip_class(_losses.MultiMargin)
def MultiMargin(
    min_margin=1.0, reduction="sum_over_batch_size", name="MultiMargin"
):
    """deel-lip's `MultiMargin`: `keras_lipschitz.losses.MultiMargin`."""
    return _MultiMargin(
        min_margin=min_margin, reduction=_reduction(reduction), name=name
    )


@maps_to("losses", "`CategoricalHinge(min_margin)`", _LABELS_NOTE)
@deel_lip_class(_losses.CategoricalHinge)
def CategoricalHinge(
    min_margin, reduction="sum_over_batch_size", name="CategoricalHinge"
):
    """deel-lip's `CategoricalHinge`: our `CategoricalHinge`."""
    return _CategoricalHinge(
        min_margin=min_margin, reduction=_reduction(reduction), name=name
    )


@maps_to(
    "losses",
    "`TauCategoricalCrossentropy(tau)`",
    "Also accepts integer labels.",
)
@deel_lip_class(_losses.TauCategoricalCrossentropy)
def TauCategoricalCrossentropy(
    tau, reduction="sum_over_batch_size", name="TauCategoricalCrossentropy"
):
    """deel-lip's `TauCategoricalCrossentropy`."""
    return _losses.TauCategoricalCrossentropy(
        tau=tau, reduction=_reduction(reduction), name=name
    )


@maps_to("losses", "`TauSparseCategoricalCrossentropy(tau)`", "")
@deel_lip_class(_losses.TauSparseCategoricalCrossentropy)
def TauSparseCategoricalCrossentropy(
    tau,
    reduction="sum_over_batch_size",
    name="TauSparseCategoricalCrossentropy",
):
    """deel-lip's `TauSparseCategoricalCrossentropy`."""
    return _losses.TauSparseCategoricalCrossentropy(
        tau=tau, reduction=_reduction(reduction), name=name
    )


@maps_to("losses", "`TauBinaryCrossentropy(tau)`", _LABELS_NOTE)
@deel_lip_class(_losses.TauBinaryCrossentropy)
def TauBinaryCrossentropy(
    tau, reduction="sum_over_batch_size", name="TauBinaryCrossentropy"
):
    """deel-lip's `TauBinaryCrossentropy`."""
    return _TauBinaryCrossentropy(
        tau=tau, reduction=_reduction(reduction), name=name
    )


@maps_to(
    "losses",
    "`keras_lipschitz.losses.hinge_margin`",
    "Per-sample values; labels read as `y_true > 0` (deel-lip). "
    "`min_margin` is required, as in deel-lip.",
)
def hinge_margin(y_true, y_pred, min_margin):
    """deel-lip's `hinge_margin`: per-sample $(m/2 - \\mathrm{sign}(y) f)_+$.

    Averaged over the last axis, as in deel-lip.

    Args:
        y_true: labels; `y_true > 0` is the positive class (so {0, 1},
            {-1, +1} and `process_labels_for_multi_gpu` labels all work).
        y_pred: scores, `(B, 1)` or `(B, C)` for multilabel outputs.
        min_margin: float > 0.

    Returns:
        Tensor of shape `(B,)`.
    """
    return _losses.hinge_margin(
        _positive_labels(y_true, y_pred, False), y_pred, min_margin
    )


@maps_to(
    "losses",
    "`keras_lipschitz.losses.multiclass_hinge`",
    "Per-sample values; one-hot labels read as `y_true > 0` (deel-lip). "
    "`min_margin` is required, as in deel-lip.",
)
def multiclass_hinge(y_true, y_pred, min_margin):
    """deel-lip's `multiclass_hinge`: the one-vs-all hinge per sample.

    The binary hinge of every output, the true class weighted by $C - 1$,
    averaged over the classes.

    Args:
        y_true: one-hot `(B, C)`; `y_true > 0` marks the true class.
        y_pred: logits `(B, C)`.
        min_margin: float > 0.

    Returns:
        Tensor of shape `(B,)`.
    """
    return _losses.multiclass_hinge(
        _positive_labels(y_true, y_pred, True), y_pred, min_margin
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
    "hinge_margin",
    "multiclass_hinge",
]
