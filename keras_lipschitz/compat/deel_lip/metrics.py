"""deel-lip's `deel.lip.metrics`, as `keras_lipschitz.metrics`.

deel-lip's metrics are `keras.Loss` objects; these are Keras metrics with
the same per-sample values, for `compile(metrics=[...])`. Called directly,
a Keras metric *accumulates* over calls (`metric.reset_state()` starts
again; the functions of `keras_lipschitz.metrics` are stateless).

They trust `lip_const`, as deel-lip does: a certificate that assumes the
network is `lip_const`-Lipschitz is only as sound as that assumption (it
fails with deel-lip's average RKO factor, for instance). Report numbers
with `keras_lipschitz.certify` / `certified_accuracy`, which compute a
guaranteed bound from the model itself.
"""

from keras_lipschitz import metrics as _metrics
from keras_lipschitz.compat.deel_lip._classes import deel_lip_class
from keras_lipschitz.compat.deel_lip._mapping import maps_to
from keras_lipschitz.compat.deel_lip._mapping import reduction as _reduction

_TRUST = (
    "Trusts `lip_const` (training-time view); report with "
    "`keras_lipschitz.certify`."
)


def _check_reduction(reduction):
    """Only deel-lip's default reduction has a meaning for a Keras metric.

    deel-lip's metrics are losses, and `reduction="none"` or `"sum"` gives
    per-sample values or a sum; a Keras metric always reports the running
    mean, so those reductions raise instead of being ignored.
    """
    if reduction is not None and _reduction(reduction) != (
        "sum_over_batch_size"
    ):
        raise ValueError(
            "`reduction` of a deel-lip metric may only be 'auto' or "
            "'sum_over_batch_size' here (a Keras metric reports the mean "
            "over samples); for per-sample values use the functions of "
            "`keras_lipschitz.metrics` (e.g. `certified_radius`). "
            f"Received: reduction={reduction!r}"
        )


def _norm(disjoint_neurons):
    # Disjoint neurons: each logit is lip_const-Lipschitz, margin / (2 L).
    return "linf" if disjoint_neurons else "l2"


@maps_to(
    "metrics",
    "`CertifiedAccuracy(epsilon, norm, lipschitz=lip_const)`",
    "`disjoint_neurons=True` (deel-lip's default) is `norm=\"linf\"` "
    "(margin $/2L$), `False` is `norm=\"l2\"` (margin $/\\sqrt2L$). " + _TRUST,
)
@deel_lip_class(_metrics.CertifiedAccuracy)
def CategoricalProvableRobustAccuracy(
    epsilon=36 / 255,
    lip_const=1.0,
    disjoint_neurons=True,
    reduction="sum_over_batch_size",
    name="CategoricalProvableRobustAccuracy",
):
    """deel-lip's `CategoricalProvableRobustAccuracy`: `CertifiedAccuracy`."""
    _check_reduction(reduction)
    return _metrics.CertifiedAccuracy(
        epsilon=epsilon,
        norm=_norm(disjoint_neurons),
        lipschitz=lip_const,
        name=name,
    )


@maps_to(
    "metrics",
    "`BinaryCertifiedAccuracy(epsilon, lipschitz=lip_const)`",
    _TRUST,
)
@deel_lip_class(_metrics.BinaryCertifiedAccuracy)
def BinaryProvableRobustAccuracy(
    epsilon=36 / 255,
    lip_const=1.0,
    reduction="sum_over_batch_size",
    name="BinaryProvableRobustAccuracy",
):
    """deel-lip's `BinaryProvableRobustAccuracy`: `BinaryCertifiedAccuracy`."""
    _check_reduction(reduction)
    return _metrics.BinaryCertifiedAccuracy(
        epsilon=epsilon, lipschitz=lip_const, name=name
    )


@maps_to(
    "metrics",
    "`MeanCertifiedRadius(norm, lipschitz=lip_const, negative_robustness)`",
    "`disjoint_neurons` as above. " + _TRUST,
)
@deel_lip_class(_metrics.MeanCertifiedRadius)
def CategoricalProvableAvgRobustness(
    lip_const=1.0,
    disjoint_neurons=True,
    negative_robustness=False,
    reduction="sum_over_batch_size",
    name="CategoricalProvableAvgRobustness",
):
    """deel-lip's `CategoricalProvableAvgRobustness`: `MeanCertifiedRadius`."""
    _check_reduction(reduction)
    return _metrics.MeanCertifiedRadius(
        norm=_norm(disjoint_neurons),
        lipschitz=lip_const,
        negative_robustness=negative_robustness,
        name=name,
    )


@maps_to(
    "metrics",
    "`BinaryMeanCertifiedRadius(lipschitz=lip_const, negative_robustness)`",
    _TRUST,
)
@deel_lip_class(_metrics.BinaryMeanCertifiedRadius)
def BinaryProvableAvgRobustness(
    lip_const=1.0,
    negative_robustness=False,
    reduction="sum_over_batch_size",
    name="BinaryProvableAvgRobustness",
):
    """deel-lip's `BinaryProvableAvgRobustness`: `BinaryMeanCertifiedRadius`."""
    _check_reduction(reduction)
    return _metrics.BinaryMeanCertifiedRadius(
        lipschitz=lip_const,
        negative_robustness=negative_robustness,
        name=name,
    )


__all__ = [
    "BinaryProvableAvgRobustness",
    "BinaryProvableRobustAccuracy",
    "CategoricalProvableAvgRobustness",
    "CategoricalProvableRobustAccuracy",
]
