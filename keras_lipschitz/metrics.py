"""Certification metrics for Lipschitz classifiers.

With logits $z$, true class $y$ and margin
$M = z_y - \\max_{j \\ne y} z_j$, a prediction is certified at radius
$\\varepsilon$ when it is correct and the margin cannot be closed by any
perturbation of norm $\\le \\varepsilon$:

- `norm="l2"`: the whole logit map is $L$-Lipschitz
  ($\\ell_2 \\to \\ell_2$). Certified radius $M / (\\sqrt{2}L)$; certified at
  $\\varepsilon$ iff $M > \\sqrt{2}L\\varepsilon$.
- `norm="linf"`: each logit is $L$-Lipschitz on its own w.r.t.
  $\\ell_\\infty$ (ℓ∞-distance nets, SortNet), or w.r.t. $\\ell_2$ (rows
  normalized separately). Certified radius $M / (2L)$; certified at
  $\\varepsilon$ iff $M > 2L\\varepsilon$.

Binary classifiers $\\operatorname{sign}(f)$ with a single $L$-Lipschitz
score have margin $M = s\\,f(x)$ ($s = \\pm1$ the label sign) and radius
$M/L$ (`binary_certified_radius`, `BinaryCertifiedAccuracy`,
`BinaryMeanCertifiedRadius`). With `negative_robustness=True` the radius
metrics return the signed radius, negative for misclassified samples
(deel-lip's option), instead of 0.

The comparison is **strict**: a margin equal to the threshold (in
particular a tie between the top logits) is not certified. A sample whose
logits contain a NaN is never certified (radius 0). Labels are one-hot
`(B, C)` or class indices `(B,)` / `(B, 1)`; indices are range-checked when
concrete, not inside a compiled step (see `keras_lipschitz.losses`).

All computations use one-hot arithmetic and `ops.where` (no boolean-mask
indexing), so the metrics run inside jitted `fit`/`evaluate` on every
backend. For reported certificates prefer a float64 NumPy evaluation of the
exported model with a guaranteed bound $L$.
"""

import math

import keras
from keras import ops

from keras_lipschitz.api_export import keras_lipschitz_export
from keras_lipschitz.layers import _validation
from keras_lipschitz.losses import _validate_nonnegative
from keras_lipschitz.losses import binary_labels
from keras_lipschitz.losses import multiclass_labels

NORMS = {"l2": math.sqrt(2.0), "linf": 2.0}


def _validate_norm(norm):
    return _validation.validate_choice("norm", norm, set(NORMS))


def _margin(y_true, y_pred):
    """`(M, valid)`: the margin and whether the sample's logits are finite."""
    one_hot, y_pred = multiclass_labels(y_true, y_pred)
    classes = y_pred.shape[-1]
    if classes is not None and classes < 2:
        raise ValueError(
            "Certification metrics need logits for at least 2 classes. "
            f"Received: y_pred.shape={tuple(y_pred.shape)}"
        )
    is_true = one_hot > 0
    z_true = ops.sum(ops.where(is_true, y_pred, 0.0), axis=-1)
    z_other = ops.amax(ops.where(is_true, float("-inf"), y_pred), axis=-1)
    not_nan = ops.logical_not(ops.any(ops.isnan(y_pred), axis=-1))
    return z_true - z_other, not_nan


def certified_radius(
    y_true, y_pred, norm="l2", lipschitz=1.0, negative_robustness=False
):
    """Per-sample certified radius, 0 for misclassified samples.

    $$r = \\frac{M}{\\sqrt{2}\\,L}\\;(\\ell_2),\\qquad
    r = \\frac{M}{2L}\\;(\\ell_\\infty),\\qquad
    M = z_y - \\max_{j\\ne y} z_j,$$

    and $r = 0$ when $M \\le 0$ or a logit is NaN. With
    `negative_robustness=True` the radius is signed: $M \\le 0$ gives
    $r \\le 0$, minus the distance the prediction would have to move to
    become correct at this rate (deel-lip's `negative_robustness`); NaN
    logits still give 0.

    Args:
        y_true: one-hot `(B, C)` or class indices `(B,)` / `(B, 1)`.
        y_pred: logits `(B, C)`.
        norm: `"l2"` or `"linf"` (see the module docstring).
        lipschitz: float > 0, $L$.
        negative_robustness: bool, return the signed radius.

    Returns:
        Tensor of shape `(B,)`.

    Example:

    >>> import numpy as np
    >>> z = np.array([[2.0, 0.0], [0.0, 1.0]], "float32")
    >>> radius = certified_radius([0, 0], z, norm="linf")
    >>> keras.ops.convert_to_numpy(radius).astype(float).round(4).tolist()
    [1.0, 0.0]
    >>> signed = certified_radius([0, 0], z, norm="linf",
    ...                           negative_robustness=True)
    >>> keras.ops.convert_to_numpy(signed).astype(float).round(4).tolist()
    [1.0, -0.5]
    """
    norm = _validate_norm(norm)
    lipschitz = _validation.validate_positive_number("lipschitz", lipschitz)
    margin, valid = _margin(y_true, y_pred)
    scale = NORMS[norm] * lipschitz
    if negative_robustness:
        return ops.where(valid, margin / scale, 0.0)
    certified = ops.logical_and(valid, margin > 0)
    return ops.where(certified, margin / scale, 0.0)


def certified_accuracy(y_true, y_pred, epsilon, norm="l2", lipschitz=1.0):
    """Per-sample indicator (0/1) of a correct prediction certified at ε.

    $$\\mathbb{1}\\big[M > \\sqrt{2}L\\varepsilon\\big]\\;(\\ell_2),\\qquad
    \\mathbb{1}\\big[M > 2L\\varepsilon\\big]\\;(\\ell_\\infty),$$

    strict, so a margin equal to the threshold is not certified; with
    $\\varepsilon = 0$ this is the accuracy with ties counted as errors. NaN
    logits are never certified.

    Args:
        y_true: one-hot `(B, C)` or class indices `(B,)` / `(B, 1)`.
        y_pred: logits `(B, C)`.
        epsilon: float >= 0, the radius.
        norm: `"l2"` or `"linf"`.
        lipschitz: float > 0, $L$.

    Returns:
        Float tensor of shape `(B,)`.

    Example:

    >>> import numpy as np
    >>> z = np.array([[1.5, 0.0], [1.0, 0.5]], "float32")
    >>> ok = certified_accuracy([0, 0], z, 0.25, norm="linf")
    >>> keras.ops.convert_to_numpy(ok).tolist()
    [1.0, 0.0]
    """
    epsilon = _validate_nonnegative("epsilon", epsilon)
    norm = _validate_norm(norm)
    lipschitz = _validation.validate_positive_number("lipschitz", lipschitz)
    margin, valid = _margin(y_true, y_pred)
    threshold = NORMS[norm] * lipschitz * epsilon
    certified = ops.logical_and(
        valid, ops.logical_and(margin > 0, margin > threshold)
    )
    return ops.cast(certified, margin.dtype)


class _CertificateMetric(keras.metrics.MeanMetricWrapper):
    """The mean of a certificate function, with validated hyper-parameters.

    `hyperparameters` (already validated by the subclass) are passed to
    `fn` on every update, stored as attributes and returned by
    `get_config`. Larger is better for every certificate metric.
    """

    def __init__(self, fn, name, dtype, **hyperparameters):
        super().__init__(fn, name=name, dtype=dtype, **hyperparameters)
        for key, value in hyperparameters.items():
            setattr(self, key, value)
        self._hyperparameter_names = tuple(hyperparameters)
        self._direction = "up"

    def get_config(self):
        config = {"name": self.name, "dtype": self.dtype}
        for key in self._hyperparameter_names:
            config[key] = getattr(self, key)
        return config


@keras_lipschitz_export
class CertifiedAccuracy(_CertificateMetric):
    """Fraction of samples correctly classified and certified at `epsilon`.

    The mean of `certified_accuracy`: a sample counts when its margin
    $M = z_y - \\max_{j\\ne y} z_j$ is **strictly** greater than
    $\\sqrt{2}L\\varepsilon$ (`norm="l2"`, the logit map is $L$-Lipschitz)
    or $2L\\varepsilon$ (`norm="linf"`, each logit is $L$-Lipschitz w.r.t.
    $\\ell_\\infty$). NaN logits are not counted as certified.

    Args:
        epsilon: float >= 0, the radius.
        norm: `"l2"` or `"linf"`.
        lipschitz: float > 0, $L$.
        name: metric name.
        dtype: metric dtype.

    Example:

    >>> import numpy as np
    >>> metric = CertifiedAccuracy(epsilon=0.25, norm="linf")
    >>> metric.update_state([0, 0], np.array([[1.5, 0.0], [1.0, 0.5]]))
    >>> float(metric.result())
    0.5
    """

    def __init__(
        self,
        epsilon,
        norm="l2",
        lipschitz=1.0,
        name="certified_accuracy",
        dtype=None,
    ):
        epsilon = _validate_nonnegative("epsilon", epsilon)
        norm = _validate_norm(norm)
        lipschitz = _validation.validate_positive_number("lipschitz", lipschitz)
        super().__init__(
            certified_accuracy,
            name=name,
            dtype=dtype,
            epsilon=epsilon,
            norm=norm,
            lipschitz=lipschitz,
        )


@keras_lipschitz_export
class MeanCertifiedRadius(_CertificateMetric):
    """Mean certified radius, counting 0 for misclassified samples.

    The mean of `certified_radius`: $M/(\\sqrt{2}L)$ (`norm="l2"`) or
    $M/(2L)$ (`norm="linf"`) for correct samples, 0 otherwise (and for NaN
    logits). With `negative_robustness=True`, misclassified samples count
    with their (negative) signed radius instead of 0.

    Args:
        norm: `"l2"` or `"linf"`.
        lipschitz: float > 0, $L$.
        negative_robustness: bool, average the signed radius.
        name: metric name.
        dtype: metric dtype.

    Example:

    >>> import numpy as np
    >>> metric = MeanCertifiedRadius(norm="linf")
    >>> metric.update_state([0, 0], np.array([[2.0, 0.0], [0.0, 1.0]]))
    >>> float(metric.result())
    0.5
    """

    def __init__(
        self,
        norm="l2",
        lipschitz=1.0,
        negative_robustness=False,
        name="mean_certified_radius",
        dtype=None,
    ):
        norm = _validate_norm(norm)
        lipschitz = _validation.validate_positive_number("lipschitz", lipschitz)
        negative_robustness = bool(negative_robustness)
        super().__init__(
            certified_radius,
            name=name,
            dtype=dtype,
            norm=norm,
            lipschitz=lipschitz,
            negative_robustness=negative_robustness,
        )


# --------------------------------------------------------------------------
# Binary classifiers: one score f, class sign(f).
# --------------------------------------------------------------------------


def _binary_margin(y_true, y_pred):
    """`(sign(y) f, valid)` per sample and column, shape `(B, C)`."""
    y_true, y_pred = binary_labels(y_true, y_pred)
    sign = ops.cast(ops.where(y_true > 0, 1.0, -1.0), y_pred.dtype)
    return sign * y_pred, ops.logical_not(ops.isnan(y_pred))


def binary_certified_radius(
    y_true, y_pred, lipschitz=1.0, negative_robustness=False
):
    """Per-sample certified radius of a binary classifier.

    With a score $f$ that is $L$-Lipschitz ($\\ell_2$) and label sign
    $s = \\pm1$, the prediction cannot change within

    $$r = \\frac{s\\,f(x)}{L}$$

    when $sf > 0$; otherwise $r = 0$, or the signed value with
    `negative_robustness=True` (deel-lip's `BinaryProvableAvgRobustness`).
    NaN scores give 0. Columns of a `(B, C)` multi-label score are averaged.

    Args:
        y_true: labels in {0, 1} or {-1, +1}, `(B,)`, `(B, 1)` or the shape
            of `y_pred`.
        y_pred: scores `(B,)`, `(B, 1)` or `(B, C)`.
        lipschitz: float > 0, $L$.
        negative_robustness: bool.

    Returns:
        Tensor of shape `(B,)`.

    Example:

    >>> import numpy as np
    >>> f = np.array([1.0, 0.5], "float32")
    >>> r = binary_certified_radius(np.array([1, 1]), f, lipschitz=2.0)
    >>> keras.ops.convert_to_numpy(r).tolist()
    [0.5, 0.25]
    """
    lipschitz = _validation.validate_positive_number("lipschitz", lipschitz)
    margin, valid = _binary_margin(y_true, y_pred)
    if negative_robustness:
        radius = ops.where(valid, margin / lipschitz, 0.0)
    else:
        certified = ops.logical_and(valid, margin > 0)
        radius = ops.where(certified, margin / lipschitz, 0.0)
    return ops.mean(radius, axis=-1)


def binary_certified_accuracy(y_true, y_pred, epsilon, lipschitz=1.0):
    """Per-sample indicator of a binary prediction certified at ε.

    $$\\mathbb{1}\\big[s\\,f(x) > L\\varepsilon\\big],$$

    strict (a score exactly at the threshold is not certified), averaged
    over the columns of a multi-label score; NaN scores are never certified.

    Args:
        y_true: labels in {0, 1} or {-1, +1}.
        y_pred: scores `(B,)`, `(B, 1)` or `(B, C)`.
        epsilon: float >= 0.
        lipschitz: float > 0, $L$.

    Returns:
        Float tensor of shape `(B,)`.

    Example:

    >>> import numpy as np
    >>> f = np.array([1.0, 0.1, -1.0], "float32")
    >>> ok = binary_certified_accuracy(np.array([1, 1, 1]), f, 0.25)
    >>> keras.ops.convert_to_numpy(ok).tolist()
    [1.0, 0.0, 0.0]
    """
    epsilon = _validate_nonnegative("epsilon", epsilon)
    lipschitz = _validation.validate_positive_number("lipschitz", lipschitz)
    margin, valid = _binary_margin(y_true, y_pred)
    certified = ops.logical_and(
        valid, ops.logical_and(margin > 0, margin > lipschitz * epsilon)
    )
    return ops.mean(ops.cast(certified, margin.dtype), axis=-1)


@keras_lipschitz_export
class BinaryCertifiedAccuracy(_CertificateMetric):
    """Fraction of binary predictions correct and certified at `epsilon`.

    The mean of `binary_certified_accuracy`: a sample counts when
    $s\\,f(x) > L\\varepsilon$ for an $L$-Lipschitz score $f$ (deel-lip's
    `BinaryProvableRobustAccuracy`).

    Args:
        epsilon: float >= 0, the radius.
        lipschitz: float > 0, $L$.
        name: metric name.
        dtype: metric dtype.

    Example:

    >>> import numpy as np
    >>> metric = BinaryCertifiedAccuracy(epsilon=0.25)
    >>> metric.update_state(np.array([1, -1]), np.array([1.0, -0.1]))
    >>> float(metric.result())
    0.5
    """

    def __init__(
        self,
        epsilon,
        lipschitz=1.0,
        name="binary_certified_accuracy",
        dtype=None,
    ):
        epsilon = _validate_nonnegative("epsilon", epsilon)
        lipschitz = _validation.validate_positive_number("lipschitz", lipschitz)
        super().__init__(
            binary_certified_accuracy,
            name=name,
            dtype=dtype,
            epsilon=epsilon,
            lipschitz=lipschitz,
        )


@keras_lipschitz_export
class BinaryMeanCertifiedRadius(_CertificateMetric):
    """Mean certified radius $s\\,f/L$ of a binary classifier.

    The mean of `binary_certified_radius` (deel-lip's
    `BinaryProvableAvgRobustness`): misclassified samples count 0, or their
    negative signed radius with `negative_robustness=True`.

    Args:
        lipschitz: float > 0, $L$.
        negative_robustness: bool.
        name: metric name.
        dtype: metric dtype.

    Example:

    >>> import numpy as np
    >>> metric = BinaryMeanCertifiedRadius()
    >>> metric.update_state(np.array([1, 1]), np.array([1.0, -0.5]))
    >>> float(metric.result())
    0.5
    """

    def __init__(
        self,
        lipschitz=1.0,
        negative_robustness=False,
        name="binary_mean_certified_radius",
        dtype=None,
    ):
        lipschitz = _validation.validate_positive_number("lipschitz", lipschitz)
        negative_robustness = bool(negative_robustness)
        super().__init__(
            binary_certified_radius,
            name=name,
            dtype=dtype,
            lipschitz=lipschitz,
            negative_robustness=negative_robustness,
        )
