"""Losses for Lipschitz classifiers.

Every loss is a `keras.losses.Loss` whose `call` returns per-sample values
and delegates to a public function of the same name in snake_case (`HKR` →
`hkr`), so the maths can be used without the class.

**Labels.**

- Binary losses (`KR`, `HingeMargin`, `HKR`, `TauBinaryCrossentropy`) take
  a score `y_pred` of shape
  `(B,)` or `(B, 1)` and labels of shape `(B,)` or `(B, 1)` with values in
  $\\{0, 1\\}$ or $\\{-1, +1\\}$: the positive class is $y > 0$ and
  $\\operatorname{sign}(y) = +1$ if $y > 0$ else $-1$. A `(B, C)` score with
  `(B, C)` labels is read as $C$ independent binary problems (multi-label),
  averaged over the columns, as in deel-lip.
- Multiclass losses (`MulticlassKR`, `MulticlassHinge`, `MulticlassHKR`,
  `MulticlassSoftHKR`, `MultiMargin`, `CategoricalHinge`,
  `TauCategoricalCrossentropy`, `TauSparseCategoricalCrossentropy`, `CLL`,
  `EMMA`) take logits of shape
  `(B, C)` and one-hot labels `(B, C)` or integer class indices `(B,)` or
  `(B, 1)`. One-hot labels may also be in $\\{-1, +1\\}$ (deel-lip's
  convention: $+1$ for the true class, $-1$ elsewhere); they are read as
  the 0/1 one-hot, so every loss has the same value for both (see
  `multiclass_labels`).
- Label values and class indices are checked whenever they are concrete
  (NumPy arrays, eager tensors). Inside a compiled step (`tf.function`,
  `jax.jit`, `torch.compile`) they cannot be inspected: an out-of-range index
  then gives an all-zero one-hot row.

**Hyper-parameters** are plain Python floats stored in `get_config()` and
validated whenever they are set, also after construction. A float is a
constant of the compiled train step, which TF and JAX reuse from one `fit`
call to the next: to change one during `fit`, use
`keras_lipschitz.callbacks.LossParamScheduler`, which rebuilds the compiled
steps so the new value is used on every backend. After setting one by hand
between two `fit` calls, do the same: `model.make_train_function(force=True)`
and `model.test_function = None` (or compile again).

**deel-lip conventions.** `KR`, `HingeMargin`, `HKR` and their multiclass
versions follow deel-ai/deel-lip (TensorFlow) exactly:

- the hinge is $(m/2 - \\operatorname{sign}(y)f)_+$, so deel-lip's
  `min_margin` is **twice** the margin $m$ of the HKR paper;
- `alpha` weights the hinge and is unbounded ($\\alpha \\ge 0$, `inf` for
  hinge only). deel-torchlip instead uses a convex weight $a \\in [0, 1]$,
  $a\\cdot\\text{hinge} - (1-a)\\cdot\\text{KR}$: $a = \\alpha/(1+\\alpha)$,
  and the deel-lip loss is $(1+\\alpha)$ times the torchlip one.
"""

import math
import numbers

import keras
import numpy as np
from keras import ops

from keras_lipschitz import _backend
from keras_lipschitz.api_export import keras_lipschitz_export
from keras_lipschitz.layers import _validation
from keras_lipschitz.layers.dense import _LipschitzDense

# Added to the class counts of the KR estimate (as in deel-lip).
KR_EPSILON = 1e-7

# Floor of the squared distance between two rows of the last layer, so that
# the square root keeps a finite gradient.
_MIN_SQUARED_DISTANCE = 1e-12


# --------------------------------------------------------------------------
# Argument validation.
# --------------------------------------------------------------------------


def _is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _validate_nonnegative(name, value, allow_inf=False):
    if (
        not _is_real(value)
        or value != value
        or value < 0
        or (value == float("inf") and not allow_inf)
    ):
        extra = " (or inf)" if allow_inf else ""
        raise ValueError(
            f"`{name}` must be a finite number >= 0{extra}. "
            f"Received: {name}={value!r}"
        )
    return float(value)


def _validate_alpha(name, value):
    return _validate_nonnegative(name, value, allow_inf=True)


def _validate_open_unit(name, value):
    if not _is_real(value) or not 0.0 < value < 1.0:
        raise ValueError(
            f"`{name}` must be a number in the open interval (0, 1). "
            f"Received: {name}={value!r}"
        )
    return float(value)


_validate_positive = _validation.validate_positive_number


# --------------------------------------------------------------------------
# Labels.
# --------------------------------------------------------------------------


def _concrete_numpy(x):
    """`x` as a NumPy array when its value is known, else `None`.

    Inside a compiled step (a `tf.function` graph, a JAX tracer, a
    `torch.compile` graph or a symbolic build) values are unknown and nothing
    is checked.
    """
    if isinstance(x, (np.ndarray, np.generic, numbers.Number)):
        return np.asarray(x)
    if isinstance(x, keras.KerasTensor):
        return None
    backend = keras.config.backend()
    try:
        if backend == "jax":
            import jax

            if isinstance(x, jax.core.Tracer):
                return None
        elif backend == "tensorflow":
            import tensorflow as tf

            if not tf.executing_eagerly():
                return None
        elif backend == "torch":
            import torch

            if torch.compiler.is_compiling():
                return None
            if isinstance(x, torch.Tensor) and x.device.type == "meta":
                return None
        return np.asarray(ops.convert_to_numpy(x))
    except Exception:  # Anything not convertible is not checked.
        return None


def _float_tensor(x):
    x = ops.convert_to_tensor(x)
    if not keras.backend.is_float_dtype(x.dtype):
        x = ops.cast(x, "float32")
    return x


def _check_batch(y_true, y_pred):
    b_true, b_pred = y_true.shape[0], y_pred.shape[0]
    if b_true is not None and b_pred is not None and b_true != b_pred:
        raise ValueError(
            "`y_true` and `y_pred` must have the same batch size. Received: "
            f"y_true.shape={tuple(y_true.shape)}, "
            f"y_pred.shape={tuple(y_pred.shape)}"
        )


def _check_signed_one_hot(values):
    """Raises unless concrete labels with a negative entry are ±1 one-hot."""
    signed = np.isin(values, (-1.0, 1.0))
    positives = np.sum(values > 0, axis=-1)
    if not (np.all(signed) and np.all(positives == 1)):
        raise ValueError(
            "One-hot labels `y_true` with negative entries must be one-hot "
            "in {-1, +1}: every entry -1 or +1 and exactly one +1 per row "
            "(labels in {0, 1}, soft labels and class indices are "
            "non-negative). Received values: "
            f"{np.unique(values)[:10].tolist()}, rows with "
            f"{sorted(set(positives.reshape(-1).tolist()))[:10]} "
            "positive entries."
        )


def multiclass_labels(y_true, y_pred):
    """Standardizes multiclass labels to one-hot.

    One-hot labels in $\\{-1, +1\\}$ (each row has exactly one $+1$, at the
    true class, and $-1$ elsewhere; deel-lip accepts them) are mapped to
    $(y + 1)/2$, the 0/1 one-hot, so that every loss and metric gives the
    same value for both encodings. The map is applied to the rows that have
    a negative entry, inside compiled steps too; non-negative labels (0/1
    one-hot, soft labels) are returned unchanged.

    Args:
        y_true: one-hot labels `(B, C)` in $\\{0, 1\\}$ or $\\{-1, +1\\}$
            (or soft labels where the loss allows them), or class indices
            `(B,)` / `(B, 1)`.
        y_pred: logits `(B, C)`.

    Returns:
        `(one_hot, y_pred)`, both floating tensors of shape `(B, C)` and of
        `y_pred`'s dtype.

    Raises:
        ValueError: if the shapes disagree, if concrete class indices are
            not integers in `[0, C)`, or if concrete one-hot labels have a
            negative entry without being a one-hot in $\\{-1, +1\\}$.
    """
    y_pred = _float_tensor(y_pred)
    y_true = ops.convert_to_tensor(y_true)
    if len(y_pred.shape) != 2:
        raise ValueError(
            "`y_pred` must be logits of shape (batch, classes). Received: "
            f"y_pred.shape={tuple(y_pred.shape)}"
        )
    _check_batch(y_true, y_pred)
    classes = y_pred.shape[-1]
    rank = len(y_true.shape)
    if rank == 2 and y_true.shape[-1] == classes:
        values = _concrete_numpy(y_true)
        if values is not None and values.size and np.any(values < 0):
            _check_signed_one_hot(values)
        one_hot = ops.cast(y_true, y_pred.dtype)
        # Rows with a negative entry are ±1 one-hot (checked above when the
        # values are known): (y + 1) / 2 is their 0/1 one-hot.
        signed_rows = ops.any(ops.less(one_hot, 0), axis=-1, keepdims=True)
        one_hot = ops.where(
            signed_rows, ops.multiply(ops.add(one_hot, 1), 0.5), one_hot
        )
        return one_hot, y_pred
    if rank == 1 or (rank == 2 and y_true.shape[-1] == 1):
        if classes is None:
            raise ValueError(
                "Integer labels need logits with a known number of classes. "
                f"Received: y_pred.shape={tuple(y_pred.shape)}"
            )
        values = _concrete_numpy(y_true)
        if values is not None and values.size:
            if (
                not np.all(np.isfinite(values))
                or np.any(values != np.round(values))
                or values.min() < 0
                or values.max() >= classes
            ):
                raise ValueError(
                    "Integer labels `y_true` must be class indices in "
                    f"[0, {classes}) (the last dimension of `y_pred`). "
                    f"Received values between {values.min()} and "
                    f"{values.max()}."
                )
        indices = ops.cast(ops.reshape(y_true, (-1,)), "int32")
        return ops.one_hot(indices, classes, dtype=y_pred.dtype), y_pred
    raise ValueError(
        "`y_true` must be one-hot labels with the shape of `y_pred`, or "
        "integer labels of shape (batch,) or (batch, 1). Received: "
        f"y_true.shape={tuple(y_true.shape)}, "
        f"y_pred.shape={tuple(y_pred.shape)}"
    )


def binary_labels(y_true, y_pred):
    """Standardizes binary labels and scores to rank 2.

    Args:
        y_true: labels in {0, 1} or {-1, +1}, of shape `(B,)`, `(B, 1)` or
            the shape of `y_pred`.
        y_pred: scores `(B,)`, `(B, 1)` or `(B, C)` (multi-label).

    Returns:
        `(y_true, y_pred)`, floating tensors of shape `(B, C)` (`C = 1` for a
        single score) and of `y_pred`'s dtype.

    Raises:
        ValueError: if the shapes disagree, or if concrete labels are not in
            {-1, 0, 1}.
    """
    y_pred = _float_tensor(y_pred)
    y_true = ops.convert_to_tensor(y_true)
    if len(y_pred.shape) == 1:
        y_pred = ops.expand_dims(y_pred, -1)
    if len(y_true.shape) == 1:
        y_true = ops.expand_dims(y_true, -1)
    if (
        len(y_pred.shape) != 2
        or len(y_true.shape) != 2
        or (
            y_true.shape[-1] is not None
            and y_pred.shape[-1] is not None
            and y_true.shape[-1] != y_pred.shape[-1]
        )
    ):
        raise ValueError(
            "Binary losses need `y_true` and `y_pred` of shape (batch,), "
            "(batch, 1) or the same shape (batch, C). Received: "
            f"y_true.shape={tuple(y_true.shape)}, "
            f"y_pred.shape={tuple(y_pred.shape)}"
        )
    _check_batch(y_true, y_pred)
    values = _concrete_numpy(y_true)
    if values is not None and not np.all(np.isin(values, (-1.0, 0.0, 1.0))):
        raise ValueError(
            "Binary labels `y_true` must be in {0, 1} or {-1, +1}. "
            f"Received values: {np.unique(values)[:10].tolist()}"
        )
    return ops.cast(y_true, y_pred.dtype), y_pred


# --------------------------------------------------------------------------
# Functional forms.
# --------------------------------------------------------------------------


def _kr_per_sample(positive, y_pred):
    """Per-sample terms whose batch mean is mean_c(E_pos f_c - E_neg f_c)."""
    pos = ops.cast(positive, y_pred.dtype)
    neg = 1.0 - pos
    # Counts over the global batch when it is split across replicas, so the
    # replicas' losses add up to the single-device one (docs/scaling.md).
    n_pos = _backend.cross_replica_sum(ops.sum(pos, axis=0))
    n_neg = _backend.cross_replica_sum(ops.sum(neg, axis=0))
    batch = n_pos + n_neg
    weights = batch * (pos / (n_pos + KR_EPSILON) - neg / (n_neg + KR_EPSILON))
    return ops.mean(y_pred * weights, axis=-1)


def kr(y_true, y_pred):
    """Per-sample Kantorovich–Rubinstein (Wasserstein-1 dual) terms.

    $$\\mathrm{KR} = \\mathbb{E}_{y>0}[f] - \\mathbb{E}_{y\\le 0}[f]$$

    is a batch quantity. Sample $i$ of a batch of size $B$ gets
    $B f_i\\,(\\mathbb{1}[y_i>0]/n_+ - \\mathbb{1}[y_i\\le 0]/n_-)$, whose
    batch mean is the estimate ($10^{-7}$ is added to the counts $n_\\pm$).
    Columns of a `(B, C)` input are averaged. Every batch needs both classes.

    This is the quantity to **maximize** (deel-lip's sign convention):
    monitor it, or minimize `hkr(..., alpha=0.0)` $= -\\mathrm{KR}$.

    Args:
        y_true: binary labels, see the module docstring.
        y_pred: scores.

    Returns:
        Tensor of shape `(B,)`.

    Example:

    >>> import keras
    >>> import numpy as np
    >>> y = np.array([1, 1, 0, 0])
    >>> f = np.array([2.0, 1.0, 0.0, -1.0], "float32")
    >>> terms = keras.ops.convert_to_numpy(kr(y, f))
    >>> round(float(terms.mean()), 4)  # (2 + 1) / 2 - (0 - 1) / 2
    2.0
    """
    y_true, y_pred = binary_labels(y_true, y_pred)
    return _kr_per_sample(y_true > 0, y_pred)


def _signed_hinge(y_true, y_pred, min_margin):
    sign = ops.where(y_true > 0, 1.0, -1.0)
    sign = ops.cast(sign, y_pred.dtype)
    return ops.relu(min_margin / 2.0 - sign * y_pred)


def hinge_margin(y_true, y_pred, min_margin=1.0):
    """Per-sample binary hinge loss (deel-lip convention).

    $$\\ell = \\big(\\tfrac{m}{2} - \\operatorname{sign}(y)\\,f\\big)_+,$$

    with $m$ = `min_margin` (averaged over the columns of a `(B, C)` input).
    A score with $|f| \\ge m/2$ on the right side costs nothing, so the
    enforced margin between the classes is `min_margin`, and a 1-Lipschitz
    $f$ certifies the radius $|f| \\ge m/2$.

    Args:
        y_true: binary labels in {0, 1} or {-1, +1}.
        y_pred: scores.
        min_margin: float > 0.

    Returns:
        Tensor of shape `(B,)`.

    Example:

    >>> import numpy as np
    >>> f = np.array([0.2, 0.6], "float32")
    >>> loss = hinge_margin(np.array([1, -1]), f, 1.0)
    >>> np.round(keras.ops.convert_to_numpy(loss).astype(float), 4).tolist()
    [0.3, 1.1]
    """
    min_margin = _validate_positive("min_margin", min_margin)
    y_true, y_pred = binary_labels(y_true, y_pred)
    return ops.mean(_signed_hinge(y_true, y_pred, min_margin), axis=-1)


def hkr(y_true, y_pred, alpha, min_margin=1.0):
    """Per-sample hinge-regularized KR loss (deel-lip convention).

    $$\\ell = -\\mathrm{KR} + \\alpha\\,
    \\big(\\tfrac{m}{2} - \\operatorname{sign}(y) f\\big)_+,$$

    the minimized objective of Serrurier et al., "Achieving robustness in
    classification using optimal transport with hinge regularization"
    (CVPR 2021), $\\mathbb{E}_{P_-}[f] - \\mathbb{E}_{P_+}[f] +
    \\alpha\\,\\mathbb{E}(m' - Yf)_+$, with the paper's margin
    $m' = m/2$: `min_margin` is twice the paper's margin.
    `alpha = inf` gives the hinge alone and `alpha = 0` gives $-$KR alone.

    Args:
        y_true: binary labels in {0, 1} or {-1, +1}.
        y_pred: scores.
        alpha: float >= 0 or `inf`, weight of the hinge.
        min_margin: float > 0.

    Returns:
        Tensor of shape `(B,)` whose batch mean is the loss.

    Example:

    >>> import numpy as np
    >>> y = np.array([1, 0])
    >>> f = np.array([0.75, -0.25], "float32")
    >>> # -KR = -(0.75 + 0.25) = -1; hinges: 0, 0.25 (mean 0.125).
    >>> terms = hkr(y, f, alpha=10.0, min_margin=1.0)
    >>> round(float(keras.ops.mean(terms)), 4)
    0.25
    """
    alpha = _validate_alpha("alpha", alpha)
    min_margin = _validate_positive("min_margin", min_margin)
    y_true, y_pred = binary_labels(y_true, y_pred)
    hinge = ops.mean(_signed_hinge(y_true, y_pred, min_margin), axis=-1)
    if alpha == float("inf"):
        return hinge
    return alpha * hinge - _kr_per_sample(y_true > 0, y_pred)


def multiclass_kr(y_true, y_pred):
    """Per-sample one-vs-all KR terms, averaged over the classes.

    $$\\mathrm{KR} = \\frac{1}{C}\\sum_c \\big(\\mathbb{E}_{y=c}[f_c] -
    \\mathbb{E}_{y\\ne c}[f_c]\\big),$$

    split over the samples as in `kr` (batch mean = estimate). A class
    absent from the batch contributes $-\\mathbb{E}[f_c]$. This is the
    quantity to maximize (deel-lip's sign convention).

    Args:
        y_true: one-hot `(B, C)` in {0, 1} or {-1, +1}, or class indices
            `(B,)` / `(B, 1)`.
        y_pred: logits `(B, C)`.

    Returns:
        Tensor of shape `(B,)`.

    Example:

    >>> import numpy as np
    >>> z = np.array([[1.0, -1.0], [-1.0, 1.0]], "float32")
    >>> round(float(keras.ops.mean(multiclass_kr(np.array([0, 1]), z))), 4)
    2.0
    """
    one_hot, y_pred = multiclass_labels(y_true, y_pred)
    return _kr_per_sample(one_hot > 0, y_pred)


def _multiclass_hinge(one_hot, y_pred, min_margin):
    classes = ops.cast(ops.shape(y_pred)[-1], y_pred.dtype)
    z_true = ops.sum(one_hot * y_pred, axis=-1, keepdims=True)
    pair = ops.relu(min_margin / 2.0 - z_true) + ops.relu(
        min_margin / 2.0 + y_pred
    )
    return ops.sum((1.0 - one_hot) * pair, axis=-1) / classes


def multiclass_hinge(y_true, y_pred, min_margin=1.0):
    """Per-sample one-vs-all hinge loss (deel-lip `MulticlassHinge`).

    $$\\ell = \\frac{1}{C}\\Big[(C-1)\\big(\\tfrac{m}{2} - f_y\\big)_+ +
    \\sum_{j\\ne y}\\big(\\tfrac{m}{2} + f_j\\big)_+\\Big],$$

    i.e. the binary hinge of every output with the true-class term weighted
    by $C-1$. `min_margin` $= m$ is twice the margin of each output.

    Args:
        y_true: one-hot `(B, C)` in {0, 1} or {-1, +1}, or class indices
            `(B,)` / `(B, 1)`.
        y_pred: logits `(B, C)`.
        min_margin: float > 0.

    Returns:
        Tensor of shape `(B,)`.

    Example:

    >>> import numpy as np
    >>> z = np.array([[0.25, -1.0, 0.0]], "float32")
    >>> # ((3 - 1) * 0.25 + 0 + 0.5) / 3
    >>> round(float(multiclass_hinge(np.array([0]), z, 1.0)[0]), 4)
    0.3333
    """
    min_margin = _validate_positive("min_margin", min_margin)
    one_hot, y_pred = multiclass_labels(y_true, y_pred)
    return _multiclass_hinge(one_hot, y_pred, min_margin)


def multiclass_hkr(y_true, y_pred, alpha=10.0, min_margin=1.0):
    """Per-sample multiclass hinge-regularized KR loss (deel-lip).

    $$\\ell = -\\mathrm{KR}_{\\text{multiclass}} + \\alpha\\,
    \\ell_{\\text{multiclass hinge}}$$

    (Serrurier et al., CVPR 2021, one-vs-all). `alpha = inf` gives the
    hinge alone.

    Args:
        y_true: one-hot `(B, C)` in {0, 1} or {-1, +1}, or class indices
            `(B,)` / `(B, 1)`.
        y_pred: logits `(B, C)`.
        alpha: float >= 0 or `inf`.
        min_margin: float > 0 (twice the paper's margin).

    Returns:
        Tensor of shape `(B,)`.

    Example:

    >>> import numpy as np
    >>> z = np.array([[1.0, -1.0], [-1.0, 1.0]], "float32")
    >>> # -KR = -2, hinges are 0.
    >>> terms = multiclass_hkr(np.array([0, 1]), z)
    >>> round(float(keras.ops.mean(terms)), 4)
    -2.0
    """
    alpha = _validate_alpha("alpha", alpha)
    min_margin = _validate_positive("min_margin", min_margin)
    one_hot, y_pred = multiclass_labels(y_true, y_pred)
    hinge = _multiclass_hinge(one_hot, y_pred, min_margin)
    if alpha == float("inf"):
        return hinge
    return alpha * hinge - _kr_per_sample(one_hot > 0, y_pred)


def tau_categorical_crossentropy(y_true, y_pred, tau):
    """Per-sample cross-entropy at temperature $1/\\tau$, rescaled.

    $$\\ell = \\frac{1}{\\tau}\\,\\mathrm{CE}\\big(\\operatorname{softmax}
    (\\tau z), y\\big).$$

    A large $\\tau$ tends to a zero-margin hinge on the top logit; a small
    $\\tau$ pushes for larger margins. Certify on the raw logits $z$, never
    on $\\tau z$.

    Args:
        y_true: one-hot (or soft) labels `(B, C)` or class indices `(B,)` /
            `(B, 1)`.
        y_pred: logits `(B, C)`.
        tau: float > 0.

    Returns:
        Tensor of shape `(B,)`.

    Example:

    >>> import numpy as np
    >>> z = np.array([[0.0, 0.0]], "float32")
    >>> round(float(tau_categorical_crossentropy([0], z, tau=2.0)[0]), 4)
    0.3466
    """
    tau = _validate_positive("tau", tau)
    one_hot, y_pred = multiclass_labels(y_true, y_pred)
    return (
        ops.categorical_crossentropy(one_hot, tau * y_pred, from_logits=True)
        / tau
    )


def tau_binary_crossentropy(y_true, y_pred, tau):
    """Per-sample binary cross-entropy at temperature $1/\\tau$, rescaled.

    $$\\ell = \\frac{1}{\\tau}\\log\\big(1 + e^{-\\tau\\,
    \\operatorname{sign}(y)\\,f}\\big),$$

    the logistic loss of the score $\\tau f$ divided by $\\tau$ (deel-lip's
    `TauBinaryCrossentropy`), averaged over the columns of a `(B, C)`
    input. As $\\tau \\to \\infty$ it tends to the zero-margin hinge
    $(-\\operatorname{sign}(y)f)_+$. `y_pred` is a score (logit), not a
    probability; certify on $f$, not on $\\tau f$.

    Args:
        y_true: binary labels in {0, 1} or {-1, +1}, `(B,)`, `(B, 1)` or the
            shape of `y_pred`.
        y_pred: scores.
        tau: float > 0.

    Returns:
        Tensor of shape `(B,)`.

    Example:

    >>> import numpy as np
    >>> f = np.array([0.0, 1.0], "float32")
    >>> loss = tau_binary_crossentropy(np.array([1, 0]), f, tau=1.0)
    >>> np.round(keras.ops.convert_to_numpy(loss).astype(float), 4).tolist()
    [0.6931, 1.3133]
    """
    tau = _validate_positive("tau", tau)
    y_true, y_pred = binary_labels(y_true, y_pred)
    positive = ops.cast(y_true > 0, y_pred.dtype)
    loss = ops.binary_crossentropy(positive, tau * y_pred, from_logits=True)
    return ops.mean(loss, axis=-1) / tau


def _true_logit(one_hot, y_pred):
    return ops.sum(one_hot * y_pred, axis=-1, keepdims=True)


def multi_margin(y_true, y_pred, min_margin=1.0):
    """Per-sample multiclass margin loss (PyTorch's `multi_margin_loss`).

    $$\\ell = \\frac{1}{C}\\sum_{j \\ne y}\\big(m - (f_y - f_j)\\big)_+,$$

    with $m$ = `min_margin`: every wrong class must be at least $m$ below
    the true one (deel-lip's `MultiMargin`, $p = 1$). The sum over the
    $C - 1$ wrong classes is divided by $C$, as in PyTorch and deel-lip.

    Args:
        y_true: one-hot `(B, C)` in {0, 1} or {-1, +1}, or class indices
            `(B,)` / `(B, 1)`.
        y_pred: logits `(B, C)`.
        min_margin: float > 0.

    Returns:
        Tensor of shape `(B,)`.

    Example:

    >>> import numpy as np
    >>> z = np.array([[0.8, 2.0, -2.0]], "float32")
    >>> # ((0.7 - 0.8 + 2.0)_+ + (0.7 - 0.8 - 2.0)_+) / 3
    >>> round(float(multi_margin(np.array([0]), z, 0.7)[0]), 4)
    0.6333
    """
    min_margin = _validate_positive("min_margin", min_margin)
    one_hot, y_pred = multiclass_labels(y_true, y_pred)
    margins = ops.relu(min_margin - _true_logit(one_hot, y_pred) + y_pred)
    return ops.mean((1.0 - one_hot) * margins, axis=-1)


def categorical_hinge(y_true, y_pred, min_margin=1.0):
    """Per-sample hinge on the top-2 margin, with a settable margin.

    $$\\ell = \\big(m - (f_y - \\max_{j\\ne y} f_j)\\big)_+,$$

    zero once the true logit leads every other by $m$ = `min_margin`
    (deel-lip's `CategoricalHinge`; Keras's has $m = 1$ and takes
    probabilities). With an $L$-Lipschitz logit map ($\\ell_2$) a zero loss
    certifies the radius $m/(\\sqrt2 L)$.

    Args:
        y_true: one-hot `(B, C)` in {0, 1} or {-1, +1}, or class indices
            `(B,)` / `(B, 1)`.
        y_pred: logits `(B, C)`, at least 2 classes.
        min_margin: float > 0.

    Returns:
        Tensor of shape `(B,)`.

    Example:

    >>> import numpy as np
    >>> z = np.array([[1.0, -1.2, 0.3]], "float32")
    >>> # 1.1 - (1.0 - 0.3)
    >>> round(float(categorical_hinge(np.array([0]), z, 1.1)[0]), 4)
    0.4
    """
    min_margin = _validate_positive("min_margin", min_margin)
    one_hot, y_pred = multiclass_labels(y_true, y_pred)
    z_true = ops.sum(one_hot * y_pred, axis=-1)
    z_other = ops.amax(ops.where(one_hot > 0, float("-inf"), y_pred), axis=-1)
    return ops.relu(min_margin - (z_true - z_other))


def pairwise_row_distances(kernel):
    """Distances $\\|w_i - w_j\\|_2$ between the outputs' weight vectors.

    Args:
        kernel: Keras-layout kernel `(d_in, C)`: output $j$ is
            $x^T w_j$ with $w_j$ the column `kernel[:, j]`.

    Returns:
        Tensor `(C, C)` of distances, with ones on the diagonal (the CLL
        placeholder). Computed from the Gram matrix, with the squared
        distance floored at 1e-12 so the gradient stays finite.
    """
    kernel = _float_tensor(kernel)
    gram = ops.matmul(ops.transpose(kernel), kernel)
    norms = ops.diagonal(gram)
    squared = norms[:, None] + norms[None, :] - 2.0 * gram
    eye = ops.eye(ops.shape(gram)[0], dtype=gram.dtype)
    squared = ops.where(
        eye > 0, 1.0, ops.maximum(squared, _MIN_SQUARED_DISTANCE)
    )
    return ops.sqrt(squared)


def cll(
    y_true,
    y_pred,
    epsilon=0.25,
    slack=0.05,
    lipschitz=1.0,
    reg=1e-3,
    kernel=None,
):
    """Per-sample Calibrated Lipschitz-Margin Loss (CLL).

    Losch, Stutz, Schiele, Fritz, "Certified Robust Models with Slack
    Control and Large Lipschitz Constants" (GCPR 2023), as in the official
    code (mlosch/CLL) with two-sided offsets and $K$ detached in the
    cross-entropy:

    $$K_{yj} = L\\,\\|w_y - w_j\\|_2 \\;(j \\ne y),\\quad K_{yy} = L,\\qquad
    d_j = \\frac{z_j - z_y}{K_{yj}},$$

    $$\\delta_j = +\\varepsilon\\;(j\\ne y),\\quad \\delta_y = -\\varepsilon,
    \\qquad \\sigma = \\frac{2\\varepsilon}{2\\ln\\frac{2-p}{p}},$$

    $$\\ell = \\mathrm{CE}\\Big(\\frac{d + \\delta}{\\sigma}, y\\Big) +
    \\lambda\\,\\big(\\max_{i, j} K_{y_i j}\\big)^2,$$

    where $w_j$ are the output weight vectors of the last linear layer
    (`kernel[:, j]`), $L$ is `lipschitz` (a bound for the network *before*
    that layer), $p$ is `slack` and $\\lambda$ is `reg`. $-d_j$ is the
    certified radius against class $j$. A logistic of scale $\\sigma$ puts
    mass $1-p$ on an interval of width $2\\varepsilon$. The penalty is a
    batch quantity added to every sample; $K$ is constant
    (`stop_gradient`) inside the cross-entropy but not in the penalty.

    With `kernel=None`, $K_{yj} = L$ for every pair: `lipschitz` is then a
    bound for each logit difference $z_y - z_j$ (for a whole logit map that
    is $L$-Lipschitz in $\\ell_2$, pass $\\sqrt{2}L$), and the penalty is
    the constant $\\lambda L^2$.

    Args:
        y_true: one-hot `(B, C)` or class indices `(B,)` / `(B, 1)`.
        y_pred: logits `(B, C)`.
        epsilon: float > 0, the target radius $\\varepsilon$.
        slack: float in (0, 1), the slack $p$.
        lipschitz: float > 0, $L$.
        reg: float >= 0, $\\lambda$.
        kernel: optional last-layer kernel `(d_in, C)` (Keras layout).

    Returns:
        Tensor of shape `(B,)`.

    Example:

    >>> import numpy as np
    >>> kernel = np.array([[1.0, 0.0], [0.0, 1.0]], "float32")
    >>> z = np.array([[1.0, 0.0]], "float32")
    >>> loss = cll([0], z, epsilon=0.25, slack=0.05, reg=0.0, kernel=kernel)
    >>> round(float(loss[0]), 4)
    0.047
    """
    epsilon = _validate_positive("epsilon", epsilon)
    slack = _validate_open_unit("slack", slack)
    lipschitz = _validate_positive("lipschitz", lipschitz)
    reg = _validate_nonnegative("reg", reg)
    one_hot, y_pred = multiclass_labels(y_true, y_pred)
    if kernel is None:
        pair_constant = ops.full_like(y_pred, lipschitz)
    else:
        kernel = ops.cast(_float_tensor(kernel), y_pred.dtype)
        if len(kernel.shape) != 2 or (
            kernel.shape[-1] is not None
            and y_pred.shape[-1] is not None
            and kernel.shape[-1] != y_pred.shape[-1]
        ):
            raise ValueError(
                "`kernel` must have shape (input_dim, classes) with classes "
                "equal to the last dimension of `y_pred`. Received: "
                f"kernel.shape={tuple(kernel.shape)}, "
                f"y_pred.shape={tuple(y_pred.shape)}"
            )
        distances = pairwise_row_distances(kernel)
        pair_constant = lipschitz * ops.matmul(one_hot, distances)
    z_true = ops.sum(one_hot * y_pred, axis=-1, keepdims=True)
    scaled = (y_pred - z_true) / ops.stop_gradient(pair_constant)
    offsets = epsilon * (1.0 - 2.0 * one_hot)
    sigma = epsilon / math.log((2.0 - slack) / slack)
    loss = ops.categorical_crossentropy(
        one_hot, (scaled + offsets) / sigma, from_logits=True
    )
    if reg > 0:
        loss = loss + reg * ops.square(ops.amax(pair_constant))
    return loss


# --------------------------------------------------------------------------
# Loss classes.
# --------------------------------------------------------------------------


class _LipschitzLoss(keras.losses.Loss):
    """Base class: hyper-parameters validated whenever they are set.

    Subclasses list their float hyper-parameters in `_HYPERPARAMETERS`
    (name → validator); they are stored as plain floats, also in the config.
    """

    _HYPERPARAMETERS = {}

    def __setattr__(self, name, value):
        validator = self._HYPERPARAMETERS.get(name)
        if validator is not None:
            value = validator(name, value)
        super().__setattr__(name, value)

    def get_config(self):
        config = super().get_config()
        config["dtype"] = self.dtype
        for name in self._HYPERPARAMETERS:
            config[name] = getattr(self, name)
        return config


@keras_lipschitz_export
class KR(_LipschitzLoss):
    """Kantorovich–Rubinstein estimate of the Wasserstein-1 distance.

    Returns per-sample terms (see `kr`) whose batch mean is
    $\\mathbb{E}_{y>0}[f] - \\mathbb{E}_{y\\le 0}[f]$: with a 1-Lipschitz
    $f$ this lower-bounds $W_1(P_+, P_-)$. Like deel-lip's `KR`, the value
    is the quantity to **maximize**; use it as a metric, or train with
    `HKR(alpha=0.0)` ($= -$KR). Every batch needs both classes; with
    `sample_weight` the per-sample terms are weighted, which is not a
    weighted KR estimate.

    Args:
        reduction: Keras loss reduction.
        name: loss name.
        dtype: dtype of the loss computations.

    Example:

    >>> import numpy as np
    >>> loss = KR()
    >>> y = np.array([[1], [1], [0], [0]])
    >>> f = np.array([[2.0], [1.0], [0.0], [-1.0]], "float32")
    >>> round(float(loss(y, f)), 4)
    2.0
    """

    def __init__(self, reduction="sum_over_batch_size", name="kr", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)

    def call(self, y_true, y_pred):
        return kr(y_true, y_pred)


@keras_lipschitz_export
class HingeMargin(_LipschitzLoss):
    """Binary hinge loss $(m/2 - \\operatorname{sign}(y) f)_+$ (deel-lip).

    See `hinge_margin`. `min_margin` $= m$ is twice the margin of the HKR
    paper.

    Args:
        min_margin: float > 0.
        reduction: Keras loss reduction.
        name: loss name.
        dtype: dtype of the loss computations.

    Example:

    >>> import numpy as np
    >>> loss = HingeMargin(min_margin=1.0)
    >>> f = np.array([0.2, 0.6], "float32")
    >>> round(float(loss(np.array([1, -1]), f)), 4)
    0.7
    """

    _HYPERPARAMETERS = {"min_margin": _validate_positive}

    def __init__(
        self,
        min_margin=1.0,
        reduction="sum_over_batch_size",
        name="hinge_margin",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.min_margin = min_margin

    def call(self, y_true, y_pred):
        return hinge_margin(y_true, y_pred, min_margin=self.min_margin)


@keras_lipschitz_export
class HKR(_LipschitzLoss):
    """Hinge-regularized Kantorovich–Rubinstein loss (binary).

    $$\\mathcal{L} = \\mathbb{E}_{y\\le 0}[f] - \\mathbb{E}_{y>0}[f] +
    \\alpha\\,\\mathbb{E}\\big(\\tfrac{m}{2} - \\operatorname{sign}(y)f
    \\big)_+$$

    Serrurier, Mamalet, González-Sanz, Boissin, Loubes, del Barrio,
    "Achieving robustness in classification using optimal transport with
    hinge regularization", CVPR 2021. Follows deel-lip: `min_margin` $= m$
    is **twice** the paper's margin (the hinge is on $m/2$); `alpha` is an
    unbounded weight ($\\alpha \\ge 0$; `inf` = hinge only). See `hkr`.

    Args:
        alpha: float >= 0 or `inf`, weight of the hinge.
        min_margin: float > 0.
        reduction: Keras loss reduction.
        name: loss name.
        dtype: dtype of the loss computations.

    Example:

    >>> import numpy as np
    >>> loss = HKR(alpha=10.0, min_margin=1.0)
    >>> y = np.array([1, 0])
    >>> round(float(loss(y, np.array([0.75, -0.25], "float32"))), 4)
    0.25
    """

    _HYPERPARAMETERS = {
        "alpha": _validate_alpha,
        "min_margin": _validate_positive,
    }

    def __init__(
        self,
        alpha,
        min_margin=1.0,
        reduction="sum_over_batch_size",
        name="hkr",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.alpha = alpha
        self.min_margin = min_margin

    def call(self, y_true, y_pred):
        return hkr(y_true, y_pred, alpha=self.alpha, min_margin=self.min_margin)


@keras_lipschitz_export
class MulticlassKR(_LipschitzLoss):
    """One-vs-all KR estimate, averaged over the classes (deel-lip).

    See `multiclass_kr`. The value is to be **maximized**; use it as a
    metric or train with `MulticlassHKR`. Labels: one-hot in {0, 1} or
    {-1, +1} (same value), or class indices.

    Args:
        reduction: Keras loss reduction.
        name: loss name.
        dtype: dtype of the loss computations.

    Example:

    >>> import numpy as np
    >>> z = np.array([[1.0, -1.0], [-1.0, 1.0]], "float32")
    >>> round(float(MulticlassKR()(np.array([0, 1]), z)), 4)
    2.0
    """

    def __init__(
        self,
        reduction="sum_over_batch_size",
        name="multiclass_kr",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)

    def call(self, y_true, y_pred):
        return multiclass_kr(y_true, y_pred)


@keras_lipschitz_export
class MulticlassHinge(_LipschitzLoss):
    """One-vs-all hinge loss (deel-lip `MulticlassHinge`).

    $$\\ell = \\frac{1}{C}\\Big[(C-1)\\big(\\tfrac{m}{2} - f_y\\big)_+ +
    \\sum_{j\\ne y}\\big(\\tfrac{m}{2} + f_j\\big)_+\\Big]$$

    See `multiclass_hinge`. Labels: one-hot in {0, 1} or {-1, +1} (same
    value), or class indices.

    Args:
        min_margin: float > 0, $m$.
        reduction: Keras loss reduction.
        name: loss name.
        dtype: dtype of the loss computations.

    Example:

    >>> import numpy as np
    >>> z = np.array([[0.25, -1.0, 0.0]], "float32")
    >>> round(float(MulticlassHinge()(np.array([0]), z)), 4)
    0.3333
    """

    _HYPERPARAMETERS = {"min_margin": _validate_positive}

    def __init__(
        self,
        min_margin=1.0,
        reduction="sum_over_batch_size",
        name="multiclass_hinge",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.min_margin = min_margin

    def call(self, y_true, y_pred):
        return multiclass_hinge(y_true, y_pred, min_margin=self.min_margin)


@keras_lipschitz_export
class MulticlassHKR(_LipschitzLoss):
    """Multiclass hinge-regularized KR loss (deel-lip `MulticlassHKR`).

    $$\\mathcal{L} = -\\mathrm{KR}_{\\text{multiclass}} + \\alpha\\,
    \\ell_{\\text{multiclass hinge}}$$

    Serrurier et al., CVPR 2021, in one-vs-all form. `min_margin` is twice
    the paper's margin. See `multiclass_hkr`. Labels: one-hot in {0, 1}
    or {-1, +1} (same value), or class indices.

    Args:
        alpha: float >= 0 or `inf`.
        min_margin: float > 0.
        reduction: Keras loss reduction.
        name: loss name.
        dtype: dtype of the loss computations.

    Example:

    >>> import numpy as np
    >>> z = np.array([[1.0, -1.0], [-1.0, 1.0]], "float32")
    >>> round(float(MulticlassHKR()(np.array([0, 1]), z)), 4)
    -2.0
    """

    _HYPERPARAMETERS = {
        "alpha": _validate_alpha,
        "min_margin": _validate_positive,
    }

    def __init__(
        self,
        alpha=10.0,
        min_margin=1.0,
        reduction="sum_over_batch_size",
        name="multiclass_hkr",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.alpha = alpha
        self.min_margin = min_margin

    def call(self, y_true, y_pred):
        return multiclass_hkr(
            y_true, y_pred, alpha=self.alpha, min_margin=self.min_margin
        )


@keras_lipschitz_export
class TauCategoricalCrossentropy(_LipschitzLoss):
    """Cross-entropy of $\\tau z$, divided by $\\tau$ (deel-lip).

    $$\\ell = \\mathrm{CE}(\\operatorname{softmax}(\\tau z), y) / \\tau$$

    See `tau_categorical_crossentropy`.

    Args:
        tau: float > 0, the inverse temperature.
        reduction: Keras loss reduction.
        name: loss name.
        dtype: dtype of the loss computations.

    Example:

    >>> import numpy as np
    >>> loss = TauCategoricalCrossentropy(tau=2.0)
    >>> round(float(loss(np.array([0]), np.zeros((1, 2), "float32"))), 4)
    0.3466
    """

    _HYPERPARAMETERS = {"tau": _validate_positive}

    def __init__(
        self,
        tau,
        reduction="sum_over_batch_size",
        name="tau_categorical_crossentropy",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.tau = tau

    def call(self, y_true, y_pred):
        return tau_categorical_crossentropy(y_true, y_pred, tau=self.tau)


@keras_lipschitz_export
class TauSparseCategoricalCrossentropy(TauCategoricalCrossentropy):
    """`TauCategoricalCrossentropy` under deel-lip's sparse-label name.

    $$\\ell = \\mathrm{CE}(\\operatorname{softmax}(\\tau z), y) / \\tau$$

    with integer class indices `(B,)` or `(B, 1)` (one-hot labels are
    accepted too: the maths is `tau_categorical_crossentropy`).

    Args:
        tau: float > 0, the inverse temperature.
        reduction: Keras loss reduction.
        name: loss name.
        dtype: dtype of the loss computations.

    Example:

    >>> import numpy as np
    >>> loss = TauSparseCategoricalCrossentropy(tau=2.0)
    >>> round(float(loss(np.array([0]), np.zeros((1, 2), "float32"))), 4)
    0.3466
    """

    def __init__(
        self,
        tau,
        reduction="sum_over_batch_size",
        name="tau_sparse_categorical_crossentropy",
        dtype=None,
    ):
        super().__init__(tau, reduction=reduction, name=name, dtype=dtype)


@keras_lipschitz_export
class TauBinaryCrossentropy(_LipschitzLoss):
    """Binary cross-entropy of $\\tau f$, divided by $\\tau$ (deel-lip).

    $$\\ell = \\frac{1}{\\tau}\\log\\big(1 + e^{-\\tau\\operatorname{sign}(y)
    f}\\big)$$

    on scores (logits), with labels in {0, 1} or {-1, +1}. See
    `tau_binary_crossentropy`.

    Args:
        tau: float > 0.
        reduction: Keras loss reduction.
        name: loss name.
        dtype: dtype of the loss computations.

    Example:

    >>> import numpy as np
    >>> loss = TauBinaryCrossentropy(tau=1.0)
    >>> round(float(loss(np.array([1]), np.zeros((1,), "float32"))), 4)
    0.6931
    """

    _HYPERPARAMETERS = {"tau": _validate_positive}

    def __init__(
        self,
        tau,
        reduction="sum_over_batch_size",
        name="tau_binary_crossentropy",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.tau = tau

    def call(self, y_true, y_pred):
        return tau_binary_crossentropy(y_true, y_pred, tau=self.tau)


class _MinMarginLoss(_LipschitzLoss):
    """A loss whose only hyper-parameter is `min_margin` (> 0).

    Subclasses set `_DEFAULT_NAME` and the static `_margin_loss(y_true,
    y_pred, min_margin)`.
    """

    _HYPERPARAMETERS = {"min_margin": _validate_positive}
    _DEFAULT_NAME = None

    def __init__(
        self,
        min_margin=1.0,
        reduction="sum_over_batch_size",
        name=None,
        dtype=None,
    ):
        super().__init__(
            name=name or self._DEFAULT_NAME, reduction=reduction, dtype=dtype
        )
        self.min_margin = min_margin

    def call(self, y_true, y_pred):
        return self._margin_loss(y_true, y_pred, min_margin=self.min_margin)


@keras_lipschitz_export
class MultiMargin(_MinMarginLoss):
    """Multiclass margin loss, $\\frac1C\\sum_{j\\ne y}(m - f_y + f_j)_+$.

    PyTorch's `multi_margin_loss` ($p = 1$) and deel-lip's `MultiMargin`.
    See `multi_margin`.

    Args:
        min_margin: float > 0, $m$.
        reduction: Keras loss reduction.
        name: loss name.
        dtype: dtype of the loss computations.

    Example:

    >>> import numpy as np
    >>> z = np.array([[0.8, 2.0, -2.0]], "float32")
    >>> round(float(MultiMargin(0.7)(np.array([0]), z)), 4)
    0.6333
    """

    _DEFAULT_NAME = "multi_margin"

    @staticmethod
    def _margin_loss(y_true, y_pred, min_margin):
        return multi_margin(y_true, y_pred, min_margin=min_margin)


@keras_lipschitz_export
class CategoricalHinge(_MinMarginLoss):
    """Hinge on the top-2 margin, $(m - f_y + \\max_{j\\ne y}f_j)_+$.

    deel-lip's `CategoricalHinge` (a settable margin, on logits). See
    `categorical_hinge`.

    Args:
        min_margin: float > 0, $m$.
        reduction: Keras loss reduction.
        name: loss name.
        dtype: dtype of the loss computations.

    Example:

    >>> import numpy as np
    >>> z = np.array([[1.0, -1.2, 0.3]], "float32")
    >>> round(float(CategoricalHinge(1.1)(np.array([0]), z)), 4)
    0.4
    """

    _DEFAULT_NAME = "categorical_hinge"

    @staticmethod
    def _margin_loss(y_true, y_pred, min_margin):
        return categorical_hinge(y_true, y_pred, min_margin=min_margin)


def _validate_positive_or_inf(name, value):
    if value == float("inf") and _is_real(value):
        return float(value)
    return _validate_positive(name, value)


def multiclass_soft_hkr(
    y_true, y_pred, temperature, alpha=10.0, min_margin=1.0
):
    """Per-sample softmax-weighted multiclass HKR (deel-lip 1.5).

    With $s_j = \\pm 1$ the sign of the label of class $j$ (+1 for the
    true class) and weights $F_y = 1$, $F_{j\\ne y} =
    \\operatorname{softmax}_{j\\ne y}(T f_j)$ (the wrong classes, weighted
    towards the most offending ones),

    $$\\ell = \\frac{1}{\\alpha}\\sum_j F_j\\,(-s_jf_j) +
    \\sum_j F_j\\,\\big(\\tfrac{m}{2} - s_jf_j\\big)_+ ,$$

    i.e. a hinge with coefficient 1 and a KR term with coefficient
    $1/\\alpha$. With `alpha = inf`, the mean over the classes of the
    weighted hinges $F_j(\\tfrac m2 - s_jf_j)_+$ (deel-lip returns them per
    class). The weights follow the logits (they are not gradient-stopped);
    `temperature` $T$ is a constant. `MulticlassSoftHKR` sets $T$ from a
    running mean of $|f|$.

    Args:
        y_true: one-hot `(B, C)` in {0, 1} or {-1, +1}, or class indices.
        y_pred: logits `(B, C)`, at least 2 classes.
        temperature: float or scalar tensor $T > 0$ (gradient-stopped).
        alpha: float > 0 or `inf`.
        min_margin: float > 0, $m$.

    Returns:
        Tensor of shape `(B,)`.
    """
    alpha = _validate_positive_or_inf("alpha", alpha)
    min_margin = _validate_positive("min_margin", min_margin)
    one_hot, y_pred = multiclass_labels(y_true, y_pred)
    temperature = ops.stop_gradient(ops.cast(temperature, y_pred.dtype))
    is_true = one_hot > 0
    others = ops.where(is_true, float("-inf"), temperature * y_pred)
    weights = ops.where(is_true, 1.0, ops.softmax(others, axis=-1))
    signed = y_pred * (2.0 * one_hot - 1.0)
    hinge = weights * ops.relu(min_margin / 2.0 - signed)
    if alpha == float("inf"):
        return ops.mean(hinge, axis=-1)
    kr_term = ops.sum(weights * -signed, axis=-1)
    return kr_term / alpha + ops.sum(hinge, axis=-1)


class _RunningMean(keras.metrics.Metric):
    """The running mean of `MulticlassSoftHKR`, held as a metric variable.

    A metric so that, once assigned to a model attribute
    (`MulticlassSoftHKR.attach`), its variable is part of the state every
    trainer threads through the compiled step, JAX's included. It reports
    the current mean and is never reset (the mean persists across epochs,
    as in deel-lip).
    """

    def __init__(self, initial, name="soft_hkr_running_mean"):
        super().__init__(name=name, dtype="float32")
        self.initial = float(initial)
        self.mean = self.add_variable(
            shape=(),
            initializer=keras.initializers.Constant(self.initial),
            name="mean",
        )

    def update_state(self, value):
        self.mean.assign(value)

    def result(self):
        return ops.convert_to_tensor(self.mean)

    def reset_state(self):
        """Does nothing: the running mean is the loss's state, not a score."""


def _update_dropped(variable):
    """Whether an `assign` to `variable` here would be silently dropped.

    True inside a Keras `StatelessScope` that maps the model's variables
    (the JAX trainer computes the loss in one) but not `variable`: the
    trainer would discard the update. Scopes that map nothing (shape
    inference when `fit` builds the model) discard every update anyway.
    """
    try:
        from keras.src.backend.common.stateless_scope import (
            get_stateless_scope,
        )
    except ImportError:  # pragma: no cover - other Keras layouts
        return False
    scope = get_stateless_scope()
    return (
        scope is not None
        and bool(getattr(scope, "state_mapping", None))
        and scope.get_current_value(variable) is None
    )


@keras_lipschitz_export
class MulticlassSoftHKR(_LipschitzLoss):
    """Multiclass HKR with softmax-weighted wrong classes (deel-lip 1.5).

    See `multiclass_soft_hkr` for the per-sample loss. The temperature
    follows the scale of the logits, as in deel-lip: at every call,

    $$\\mu \\leftarrow \\beta\\mu + (1 - \\beta)\\operatorname{mean}|f|,
    \\qquad T = \\operatorname{clip}\\Big(\\frac{t\\,m}
    {\\operatorname{clip}(\\mu, m, 20000)},\\ 0.005,\\ 250\\Big),$$

    with $\\beta$ = `alpha_mean`, $t$ = `temperature`, $m$ = `min_margin`
    and $\\mu$ starting at $m$. $\\mu$ is updated before $T$ is computed,
    so two calls on the same batch give different values (deel-lip's tests
    fix both).

    **State.** $\\mu$ is a float32 variable (`running_mean`). TensorFlow
    and PyTorch update it inside `fit`. The JAX trainer only threads the
    model's variables through its compiled step: call
    `loss.attach(model)` (or build the loss with `for_model`) before
    `fit`, which makes $\\mu$ a metric of the model (logged as
    `soft_hkr_running_mean`, never reset). Without it, the loss raises
    inside the JAX trainer rather than silently freezing $\\mu$. $\\mu$ is
    not saved with the model (nor in deel-lip).

    Args:
        alpha: float > 0 or `inf`; the KR term is weighted $1/\\alpha$.
        min_margin: float > 0, $m$ (twice the margin of each output, as in
            `MulticlassHKR`).
        alpha_mean: float in [0, 1), $\\beta$.
        temperature: float > 0, $t$.
        reduction: Keras loss reduction.
        name: loss name.
        dtype: dtype of the loss computations.

    Example:

    >>> import numpy as np
    >>> loss = MulticlassSoftHKR(alpha=5.0, min_margin=0.2)
    >>> z = np.array([[2.0, 0.2, -0.5], [-1.0, -1.2, 0.3]], "float32")
    >>> first = float(loss(np.array([0, 0]), z))
    >>> second = float(loss(np.array([0, 0]), z))  # the mean moved
    >>> first != second
    True
    """

    _HYPERPARAMETERS = {
        "alpha": _validate_positive_or_inf,
        "min_margin": _validate_positive,
        "temperature": _validate_positive,
    }

    def __init__(
        self,
        alpha=10.0,
        min_margin=1.0,
        alpha_mean=0.99,
        temperature=1.0,
        reduction="sum_over_batch_size",
        name="multiclass_soft_hkr",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.alpha = alpha
        self.min_margin = min_margin
        self.temperature = temperature
        if (
            not _is_real(alpha_mean)
            or alpha_mean != alpha_mean
            or not 0.0 <= alpha_mean < 1.0
        ):
            raise ValueError(
                "`alpha_mean` must be a number in [0, 1). "
                f"Received: alpha_mean={alpha_mean!r}"
            )
        self.alpha_mean = float(alpha_mean)
        self._state = _RunningMean(self.min_margin)
        self._attached = False

    @property
    def running_mean(self):
        """The variable holding $\\mu$."""
        return self._state.mean

    def attach(self, model):
        """Makes $\\mu$ part of `model`'s state (needed by JAX `fit`).

        Args:
            model: the `keras.Model` trained with this loss.

        Returns:
            The loss itself.
        """
        if not isinstance(model, keras.Model):
            raise ValueError(
                f"`model` must be a keras.Model. Received: {model!r}"
            )
        # A metric attribute is tracked by the model: its variable is then
        # in `model.metrics_variables`, which every trainer updates.
        model._keras_lipschitz_soft_hkr_state = self._state
        self._attached = True
        return self

    @classmethod
    def for_model(cls, model, **kwargs):
        """A new loss attached to `model` (see `attach`)."""
        return cls(**kwargs).attach(model)

    def _temperature(self, y_pred):
        variable = self.running_mean
        if _update_dropped(variable):
            raise ValueError(
                "MulticlassSoftHKR updates a running mean of |logits| at "
                "every call, and this trainer (JAX) would discard the "
                "update. Call `loss.attach(model)` (or build the loss with "
                "`MulticlassSoftHKR.for_model(model, ...)`) before compiling."
            )
        batch_mean = ops.mean(ops.abs(ops.cast(y_pred, "float32")))
        mean = self.alpha_mean * ops.convert_to_tensor(variable) + (
            1.0 - self.alpha_mean
        ) * ops.stop_gradient(batch_mean)
        variable.assign(mean)
        scale = ops.clip(mean, self.min_margin, 20000.0)
        return ops.clip(
            self.temperature * self.min_margin / scale, 0.005, 250.0
        )

    def call(self, y_true, y_pred):
        return multiclass_soft_hkr(
            y_true,
            y_pred,
            self._temperature(y_pred),
            alpha=self.alpha,
            min_margin=self.min_margin,
        )

    def get_config(self):
        config = super().get_config()
        config["alpha_mean"] = self.alpha_mean
        return config


def _is_linear_activation(layer):
    activation = getattr(layer, "activation", None)
    if activation is None:
        return True
    return getattr(activation, "__name__", None) == "linear"


def _read_kernel(layer):
    """The kernel `layer` uses, as a tensor read from its current state.

    keras-lipschitz dense layers give their inference-mode constrained
    kernel (times their `lipschitz`): it has no side effect (no
    power-iteration update) and is the kernel certificates use. Other layers
    give `layer.kernel`. Inside `fit` the variables are read through the
    trainer's state (on JAX the `StatelessScope` of the loss computation),
    so the value is the current one and gradients flow to it.
    """
    if isinstance(layer, _LipschitzDense):
        return layer._constrained_kernel(training=False)
    return ops.convert_to_tensor(layer.kernel)


class _LastLayerLoss(_LipschitzLoss):
    """A loss that reads the kernel of the model's last linear layer.

    Shared by `CLL` and `EMMA`: the layer is attached with `kernel_layer=`,
    `attach` or `for_model`, read inside `call` (`kernel()`), and stored in
    the config by name only.
    """

    def _set_kernel_layer(self, kernel_layer):
        self.kernel_layer = None
        self.kernel_layer_name = None
        if isinstance(kernel_layer, str):
            self.kernel_layer_name = kernel_layer
        elif kernel_layer is not None:
            self.attach(kernel_layer)

    def attach(self, layer):
        """Uses `layer`'s kernel for $K$; returns the loss itself.

        Args:
            layer: a `keras.layers.Dense`, a keras-lipschitz dense layer, or
                any layer with a rank-2 `kernel` `(d_in, C)`, without
                activation.

        Raises:
            ValueError: if `layer` is not such a layer.
        """
        if not isinstance(layer, keras.layers.Layer):
            raise ValueError(
                "`kernel_layer` must be a Keras dense layer. "
                f"Received: kernel_layer={layer!r}"
            )
        if not (
            isinstance(layer, (keras.layers.Dense, _LipschitzDense))
            or len(getattr(getattr(layer, "kernel", None), "shape", ())) == 2
        ):
            raise ValueError(
                "`kernel_layer` must be a dense layer with a kernel of shape "
                "(input_dim, classes) (keras.layers.Dense or a "
                "keras-lipschitz dense layer). Received: "
                f"kernel_layer={layer.name!r} ({type(layer).__name__})"
            )
        if not _is_linear_activation(layer):
            raise ValueError(
                "`kernel_layer` must have no activation (its outputs are the "
                f"logits). Received: kernel_layer={layer.name!r} with "
                f"activation={layer.activation.__name__!r}"
            )
        self.kernel_layer = layer
        self.kernel_layer_name = layer.name
        return self

    @classmethod
    def for_model(cls, model, **kwargs):
        """The loss attached to `model`'s last layer.

        Args:
            model: a Keras model whose last layer (`model.layers[-1]`) is
                the linear output layer.
            **kwargs: the loss's other arguments.

        Raises:
            ValueError: if the last layer is not a dense layer without
                activation.
        """
        if not model.layers:
            raise ValueError("`model` has no layers.")
        return cls(kernel_layer=model.layers[-1], **kwargs)

    def kernel(self):
        """The attached layer's current kernel `(d_in, C)`, or None."""
        if self.kernel_layer is None:
            if self.kernel_layer_name is not None:
                raise ValueError(
                    f"This {type(self).__name__} loss was configured with "
                    f"kernel_layer="
                    f"{self.kernel_layer_name!r} but no layer is attached "
                    "(a layer reference cannot be serialized). Call "
                    f"`loss.attach(model.get_layer("
                    f"{self.kernel_layer_name!r}))` before using it."
                )
            return None
        if not self.kernel_layer.built:
            raise ValueError(
                f"`kernel_layer` {self.kernel_layer.name!r} is not built: "
                "call the model once before computing the loss."
            )
        return _read_kernel(self.kernel_layer)

    def get_config(self):
        config = super().get_config()
        config["kernel_layer"] = self.kernel_layer_name
        return config


@keras_lipschitz_export
class CLL(_LastLayerLoss):
    """Calibrated Lipschitz-Margin Loss (Losch et al., GCPR 2023).

    $$\\ell = \\mathrm{CE}\\Big(\\frac{d + \\delta}{\\sigma}, y\\Big) +
    \\lambda\\,\\big(\\max K\\big)^2,\\quad
    d_j = \\frac{z_j - z_y}{K_{yj}},\\quad
    K_{yj} = L\\,\\|w_y - w_j\\|_2,\\quad
    \\sigma = \\frac{2\\varepsilon}{2\\ln\\frac{2-p}{p}},$$

    with two-sided offsets $\\delta_j = +\\varepsilon$ ($j \\ne y$),
    $\\delta_y = -\\varepsilon$, and $K$ detached inside the cross-entropy
    (see `cll` for the details). Losch, Stutz, Schiele, Fritz, "Certified
    Robust Models with Slack Control and Large Lipschitz Constants", GCPR
    2023; the defaults are those of the official code's SOC runs on CIFAR-10
    ($\\varepsilon = 0.25$, $p = 0.05$, $\\lambda = 10^{-3}$).

    **The last layer.** $w_j$ are the output weight vectors of the model's
    last linear layer. Attach that layer with `kernel_layer=...`,
    `loss.attach(layer)` or `CLL.for_model(model)`: the loss keeps a
    reference to the layer and reads its kernel *inside* `call`, through ops,
    so the value is the current one and the penalty's gradient reaches the
    kernel in compiled training on every backend (on JAX the trainer
    computes the loss in a scope that maps the model's variables to the
    traced state). The layer may be a `keras.layers.Dense` (its `kernel`) or
    a keras-lipschitz dense layer (its inference-mode constrained kernel,
    including its `lipschitz` factor, e.g. `FrobeniusDense` with
    `disjoint_neurons=True`, the LLN layer); it must have no activation.
    `lipschitz` is then a bound $L$ for the network *before* that layer.
    Without a layer $K_{yj} = L$ for every pair: `lipschitz` bounds each
    logit difference $z_y - z_j$.

    Attach the layer before the first `fit` (a compiled step that has
    already been traced keeps the old behaviour on TF and JAX until it is
    rebuilt, see the module docstring). The config stores the layer's *name*
    only: a loss rebuilt from a config (e.g. by `keras.saving.load_model`)
    raises an error until a layer is attached again with
    `loss.attach(model.get_layer(name))`.

    Args:
        epsilon: float > 0, target radius $\\varepsilon$ (also the offset).
        slack: float in (0, 1), the slack $p$.
        lipschitz: float > 0, $L$.
        reg: float >= 0, $\\lambda$.
        kernel_layer: None, a dense layer, or a layer name (from a config;
            the layer must then be attached before use).
        reduction: Keras loss reduction.
        name: loss name.
        dtype: dtype of the loss computations.

    Example:

    >>> import numpy as np
    >>> import keras
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4)])
    >>> loss = CLL.for_model(model, epsilon=0.25, slack=0.05)
    >>> loss.kernel_layer is model.layers[-1]
    True
    >>> value = loss(np.array([0, 3]), model(np.ones((2, 3), "float32")))
    >>> bool(value > 0)
    True
    """

    _HYPERPARAMETERS = {
        "epsilon": _validate_positive,
        "slack": _validate_open_unit,
        "lipschitz": _validate_positive,
        "reg": _validate_nonnegative,
    }

    def __init__(
        self,
        epsilon=0.25,
        slack=0.05,
        lipschitz=1.0,
        reg=1e-3,
        kernel_layer=None,
        reduction="sum_over_batch_size",
        name="cll",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.epsilon = epsilon
        self.slack = slack
        self.lipschitz = lipschitz
        self.reg = reg
        self._set_kernel_layer(kernel_layer)

    def call(self, y_true, y_pred):
        return cll(
            y_true,
            y_pred,
            epsilon=self.epsilon,
            slack=self.slack,
            lipschitz=self.lipschitz,
            reg=self.reg,
            kernel=self.kernel(),
        )


# --------------------------------------------------------------------------
# EMMA: efficient margin maximization (Hu et al., NeurIPS 2023).
# --------------------------------------------------------------------------

# Bounds of the ratio r_j = (current certified radius) / ε in the official
# code (hukkai/liresnet, `emma_loss`), and the floor of its denominator.
_EMMA_MIN_RATIO = 0.01
_EMMA_MAX_RATIO = 1.0
_EMMA_MIN_DENOMINATOR = 1e-8


def _check_kernel_shape(kernel, y_pred):
    if len(kernel.shape) != 2 or (
        kernel.shape[-1] is not None
        and y_pred.shape[-1] is not None
        and kernel.shape[-1] != y_pred.shape[-1]
    ):
        raise ValueError(
            "`kernel` must have shape (input_dim, classes) with classes "
            "equal to the last dimension of `y_pred`. Received: "
            f"kernel.shape={tuple(kernel.shape)}, "
            f"y_pred.shape={tuple(y_pred.shape)}"
        )


def emma(y_true, y_pred, epsilon, lipschitz=1.0, kernel=None):
    """Per-sample EMMA loss: cross-entropy with adaptive margin offsets.

    Hu, Zou, Wang, Leino, Fredrikson, "Unlocking Deterministic Robustness
    Certification on ImageNet" (NeurIPS 2023), as in the official code
    (hukkai/liresnet, `models/margin_layer.py`, `emma_loss`). With the
    logit gaps $d_j = z_j - z_y$ and the Lipschitz constants of the logit
    pairs

    $$K_{yj} = L\\,\\|w_y - w_j\\|_2 \\;(j \\ne y),$$

    each other class $j$ gets the offset ratio

    $$r_j = \\operatorname{sg}\\Big[\\operatorname{clip}\\Big(
    \\frac{-d_j}{\\max(\\varepsilon K_{yj},\\,10^{-8})},\\;0.01,\\;1\\Big)
    \\Big]$$

    ($\\operatorname{sg}$: stop-gradient) and

    $$\\ell = \\mathrm{CE}\\big(z', y\\big),\\qquad
    z'_j = d_j + r_j\\,\\varepsilon\\,K_{yj}\\;(j \\ne y),\\quad z'_y = 0.$$

    $-d_j/K_{yj}$ is the current certified radius against class $j$, so
    $r_j\\varepsilon$ is that radius clipped to
    $[0.01\\varepsilon, \\varepsilon]$: a class already certified beyond
    $\\varepsilon$ gets the full GloRo offset $\\varepsilon K_{yj}$, a class
    near or past the decision boundary only a small one, so hard classes
    are not pushed with a margin they cannot reach. Since $r$ is constant,
    the gradient with respect to the logits is
    $\\operatorname{softmax}(z') - e_y$, and $K$ keeps its gradient
    $\\varepsilon\\,r_j\\operatorname{softmax}(z')_j$: the loss also
    shrinks the pairwise constants.

    $w_j$ are the output weight vectors of the last linear layer
    (`kernel[:, j]`) and $L$ is `lipschitz`, a bound for the network
    *before* that layer. With `kernel=None`, $K_{yj} = L$ for every pair:
    `lipschitz` then bounds each logit difference $z_y - z_j$ (for a logit
    map that is $L$-Lipschitz in $\\ell_2$, pass $\\sqrt{2}L$).

    Computed in float32 (float64 if `y_pred` is float64) and returned in
    `y_pred`'s dtype.

    Args:
        y_true: one-hot `(B, C)` or class indices `(B,)` / `(B, 1)`.
        y_pred: logits `(B, C)`.
        epsilon: float > 0, the training radius $\\varepsilon$.
        lipschitz: float > 0, $L$.
        kernel: optional last-layer kernel `(d_in, C)` (Keras layout).

    Returns:
        Tensor of shape `(B,)`.

    Example:

    >>> import numpy as np
    >>> z = np.array([[1.0, 0.0, 0.9]], "float32")
    >>> # K = 1, d = (0, -1, -0.1), r = (1, 0.2), z' = (0, -0.5, 0).
    >>> loss = emma([0], z, epsilon=0.5)
    >>> round(float(loss[0]), 4)  # log(1 + exp(-0.5) + exp(0))
    0.958
    """
    epsilon = _validate_positive("epsilon", epsilon)
    lipschitz = _validate_positive("lipschitz", lipschitz)
    one_hot, y_pred = multiclass_labels(y_true, y_pred)
    compute_dtype = keras.backend.standardize_dtype(y_pred.dtype)
    if compute_dtype != "float64":
        # The 1e-8 floor and the ratio need more than float16's range.
        compute_dtype = "float32"
    logits = ops.cast(y_pred, compute_dtype)
    one_hot = ops.cast(one_hot, compute_dtype)
    if kernel is None:
        pair_constant = ops.full_like(logits, lipschitz)
    else:
        kernel = ops.cast(_float_tensor(kernel), compute_dtype)
        _check_kernel_shape(kernel, y_pred)
        distances = pairwise_row_distances(kernel)
        pair_constant = lipschitz * ops.matmul(one_hot, distances)
    gaps = logits - ops.sum(one_hot * logits, axis=-1, keepdims=True)
    scaled_constant = epsilon * pair_constant
    ratio = ops.clip(
        -gaps / ops.maximum(scaled_constant, _EMMA_MIN_DENOMINATOR),
        _EMMA_MIN_RATIO,
        _EMMA_MAX_RATIO,
    )
    # Only the ratio is constant: the offset keeps K's gradient.
    offsets = (1.0 - one_hot) * ops.stop_gradient(ratio) * scaled_constant
    loss = ops.categorical_crossentropy(
        one_hot, gaps + offsets, from_logits=True
    )
    return ops.cast(loss, y_pred.dtype)


@keras_lipschitz_export
class EMMA(_LastLayerLoss):
    """Efficient margin maximization loss (Hu et al., NeurIPS 2023).

    $$\\ell = \\mathrm{CE}(z', y),\\quad
    z'_j = d_j + r_j\\,\\varepsilon\\,K_{yj},\\quad
    r_j = \\operatorname{sg}\\Big[\\operatorname{clip}\\Big(
    \\frac{-d_j}{\\varepsilon K_{yj}}, 0.01, 1\\Big)\\Big],$$

    with $d_j = z_j - z_y$, $K_{yj} = L\\,\\|w_y - w_j\\|_2$ the
    Lipschitz constant of $z_y - z_j$, $z'_y = 0$ and
    $\\operatorname{sg}$ the stop-gradient (see `emma` for the details).
    Every other class is offset by its pairwise constant times its current
    certified radius, clipped to $[0.01\\varepsilon, \\varepsilon]$. Hu,
    Zou, Wang, Leino, Fredrikson, "Unlocking Deterministic Robustness
    Certification on ImageNet", NeurIPS 2023; official code
    hukkai/liresnet (`emma_loss`), the loss of its CIFAR-10/100,
    Tiny-ImageNet and ImageNet records.

    **The last layer** is attached as for `CLL`: `kernel_layer=...`,
    `loss.attach(layer)` or `EMMA.for_model(model, epsilon)`. The loss reads
    the layer's current kernel inside `call` (a `keras.layers.Dense`'s
    `kernel`, or a keras-lipschitz dense layer's inference-mode
    constrained kernel), so $K$ and its gradient follow the weights in
    compiled training on every backend. The official head is last-layer
    normalized (`FrobeniusDense(C)` with `disjoint_neurons=True`).
    `lipschitz` is a bound $L$ for the network *before* that layer (1 for a
    body of 1-Lipschitz layers). In the official code $L$ is a
    power-iteration estimate that also carries a gradient; here it is a
    constant. Without a layer, $K_{yj} = L$ for every pair. The config
    stores the layer's name only: after `keras.saving.load_model`, attach
    the layer again with `loss.attach(model.get_layer(name))`.

    **Training radius.** The official runs certify at
    $\\varepsilon_c = 36/255$ and train with the radius ramped over the
    first half of the $T$ epochs,
    $\\varepsilon_t = \\varepsilon_c\\,(0.1 + 2.9\\min(2t/T, 1))$ (up to
    $2\\varepsilon_c$ instead of $3\\varepsilon_c$ on ImageNet). `epsilon`
    is a plain float that `keras_lipschitz.callbacks.LossParamScheduler`
    changes during `fit` on every backend:

    ```python
    def radius(epoch, eps_c=36 / 255, epochs=800):
        return eps_c * (0.1 + 2.9 * min(2 * epoch / epochs, 1.0))

    loss = EMMA.for_model(model, epsilon=radius(0))
    model.compile("adam", loss=loss)
    model.fit(x, y, epochs=800,
              callbacks=[LossParamScheduler("epsilon", radius)])
    ```

    Certify at $\\varepsilon_c$ with guaranteed bounds
    (`keras_lipschitz.certify`), never with the training constants.

    Args:
        epsilon: float > 0, the training radius $\\varepsilon$.
        lipschitz: float > 0, $L$.
        kernel_layer: None, a dense layer, or a layer name (from a config;
            the layer must then be attached before use).
        reduction: Keras loss reduction.
        name: loss name.
        dtype: dtype of the loss computations.

    Example:

    >>> import numpy as np
    >>> import keras
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4)])
    >>> loss = EMMA.for_model(model, epsilon=0.25)
    >>> loss.kernel_layer is model.layers[-1]
    True
    >>> value = loss(np.array([0, 3]), model(np.ones((2, 3), "float32")))
    >>> bool(value > 0)
    True
    """

    _HYPERPARAMETERS = {
        "epsilon": _validate_positive,
        "lipschitz": _validate_positive,
    }

    def __init__(
        self,
        epsilon,
        lipschitz=1.0,
        kernel_layer=None,
        reduction="sum_over_batch_size",
        name="emma",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.epsilon = epsilon
        self.lipschitz = lipschitz
        self._set_kernel_layer(kernel_layer)

    @classmethod
    def for_model(cls, model, epsilon, **kwargs):
        """An `EMMA` attached to `model`'s last layer.

        Args:
            model: a Keras model whose last layer (`model.layers[-1]`) is
                the linear output layer.
            epsilon: float > 0, the training radius.
            **kwargs: the other `EMMA` arguments.

        Raises:
            ValueError: if the last layer is not a dense layer without
                activation.
        """
        return super().for_model(model, epsilon=epsilon, **kwargs)

    def call(self, y_true, y_pred):
        return emma(
            y_true,
            y_pred,
            epsilon=self.epsilon,
            lipschitz=self.lipschitz,
            kernel=self.kernel(),
        )


# --------------------------------------------------------------------------
# ℓ∞-distance nets.
# --------------------------------------------------------------------------


def linf_dist_hinge(y_true, y_pred, epsilon, ce_weight=0.05, scale=1.0):
    """Per-sample loss of ℓ∞-distance nets (Zhang et al., ICLR 2022).

    $$\\ell = \\max_{j\\ne y}\\operatorname{clip}\\Big(
    \\frac{z_j - z_y}{2\\varepsilon} + 1,\\,0,\\,1\\Big)
    + \\lambda\\,\\mathrm{CE}(s\\,z, y),$$

    the clipped hinge of the official code's `mixture` loss: it is 0 iff
    $z_y - z_j \\ge 2\\varepsilon$ for every $j \\ne y$ (certified at
    $\\varepsilon$ for a net whose logits are each 1-Lipschitz in
    $\\ell_\\infty$), and at most 1, so hopeless points stop pulling.
    **Sign convention**: `y_pred` are the logits $z$ that certification
    uses (larger is better); for the papers' nets built by
    `keras_lipschitz.models.linf_dist_net` they are $z = -y_{\\text{last}}$
    (the last layer has `negate=True`). $s$ (`scale`) only enters the
    cross-entropy, never the hinge or the certificate; the papers learn it
    (see `LinfDistHinge` and `keras_lipschitz.layers.LogitScale`).

    Args:
        y_true: one-hot `(B, C)` or class indices `(B,)` / `(B, 1)`.
        y_pred: logits `(B, C)`.
        epsilon: float > 0, $\\varepsilon_{\\text{train}}$.
        ce_weight: float >= 0, $\\lambda$.
        scale: float > 0, or a scalar tensor (a learned $s$, used as is).

    Returns:
        Tensor of shape `(B,)`.

    Example:

    >>> import numpy as np
    >>> z = np.array([[1.0, 0.0], [0.0, 0.1]], "float32")
    >>> loss = linf_dist_hinge([0, 0], z, epsilon=1.0, ce_weight=0.0)
    >>> keras.ops.convert_to_numpy(loss).round(4).tolist()
    [0.5, 1.0]
    """
    epsilon = _validate_positive("epsilon", epsilon)
    ce_weight = _validate_nonnegative("ce_weight", ce_weight)
    if _is_real(scale):
        scale = _validate_positive("scale", scale)
    elif not (ops.is_tensor(scale) or isinstance(scale, keras.Variable)):
        raise ValueError(
            "`scale` must be a finite number > 0 or a scalar tensor (a "
            f"learned scale). Received: scale={scale!r}"
        )
    one_hot, y_pred = multiclass_labels(y_true, y_pred)
    z_true = ops.sum(one_hot * y_pred, axis=-1)
    z_other = ops.max(ops.where(one_hot > 0, float("-inf"), y_pred), axis=-1)
    hinge = ops.clip((z_other - z_true) / (2.0 * epsilon) + 1.0, 0.0, 1.0)
    if ce_weight == 0.0:
        return hinge
    ce = ops.categorical_crossentropy(
        one_hot, scale * y_pred, from_logits=True
    )
    return hinge + ce_weight * ce


def _validate_linf_scale(name, value):
    """A float > 0, or a `LogitScale` layer (its learned scale)."""
    from keras_lipschitz.layers.linf import LogitScale

    if isinstance(value, LogitScale):
        return value
    if not _is_real(value):
        raise ValueError(
            f"`{name}` must be a finite number > 0 or a "
            "keras_lipschitz.layers.LogitScale layer. "
            f"Received: {name}={value!r}"
        )
    return _validate_positive(name, value)


@keras_lipschitz_export
class LinfDistHinge(_LipschitzLoss):
    """Clipped hinge + λ·cross-entropy of ℓ∞-distance nets (see
    `linf_dist_hinge`).

    $$\\ell = \\max_{j\\ne y}\\operatorname{clip}\\Big(
    \\frac{z_j - z_y}{2\\varepsilon} + 1, 0, 1\\Big)
    + \\lambda\\,\\mathrm{CE}(s\\,z, y)$$

    The official code decays $\\lambda$ log-linearly (MNIST:
    $0.05 \\to 2\\cdot10^{-4}$) along the $p$ schedule; here `ce_weight` is
    a plain float that `keras_lipschitz.callbacks.LossParamScheduler`
    changes during `fit` on every backend (per epoch is cheap: each change
    retraces the compiled step once).

    **Learned scale.** In the official code $s$ is a learned scalar
    (zbh2047/L_inf-dist-net-v2, `MLPModel(scalar=True)` in every command,
    Adam learning rate 0.006; zbh2047/SortNet likewise). Pass
    `scale=layer`, the `keras_lipschitz.layers.LogitScale` layer of the
    model (`linf_dist_net(..., learned_scale=True)` adds one, named
    `"logit_scale"`): the loss then reads the layer's trainable $s$ in each
    training step. The layer is an identity, so the model still outputs
    $z$, and the hinge, the predictions and the certificates (radius
    $M/2$ on $z$) never see $s$: certification stays sound whatever $s$
    becomes. A saved compile config records the value of $s$ at saving
    time as a float; after loading, pass the loaded model's layer again to
    keep learning it.

    Args:
        epsilon: float > 0, $\\varepsilon_{\\text{train}}$ (MNIST at
            $\\varepsilon = 0.3$: 0.45).
        ce_weight: float >= 0, $\\lambda$.
        scale: float > 0 (a fixed $s$), or a `LogitScale` layer (a learned
            $s$), the logit scale inside the cross-entropy.
        reduction: Keras loss reduction.
        name: loss name.
        dtype: dtype of the loss computations.

    Example:

    >>> import numpy as np
    >>> loss = LinfDistHinge(epsilon=1.0, ce_weight=0.0)
    >>> z = np.array([[1.0, 0.0], [0.0, 0.1]], "float32")
    >>> round(float(loss(np.array([0, 0]), z)), 4)
    0.75
    """

    _HYPERPARAMETERS = {
        "epsilon": _validate_positive,
        "ce_weight": _validate_nonnegative,
        "scale": _validate_linf_scale,
    }

    def __init__(
        self,
        epsilon,
        ce_weight=0.05,
        scale=1.0,
        reduction="sum_over_batch_size",
        name="linf_dist_hinge",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.epsilon = epsilon
        self.ce_weight = ce_weight
        self.scale = scale

    def call(self, y_true, y_pred):
        scale = self.scale
        if not _is_real(scale):
            scale = scale.scale  # the LogitScale layer's current s
        return linf_dist_hinge(
            y_true,
            y_pred,
            epsilon=self.epsilon,
            ce_weight=self.ce_weight,
            scale=scale,
        )

    def get_config(self):
        config = super().get_config()
        if not _is_real(self.scale):
            config["scale"] = float(
                ops.convert_to_numpy(self.scale.scale)
            )
        return config


# --------------------------------------------------------------------------
# CRM: certified radius maximization (Fazlyab et al., NeurIPS 2023).
# --------------------------------------------------------------------------

_CRM_FORMS = ("softmax", "max")


def _validate_crm_form(name, value):
    if value not in _CRM_FORMS:
        raise ValueError(
            f"`{name}` must be one of {_CRM_FORMS}. Received: {name}={value!r}"
        )
    return value


def crm(y_true, y_pred, pairwise, mu=50.0, t=3.0, max_radius=0.5, form="max"):
    """Per-sample CRM loss: cross-entropy plus a certified-radius penalty.

    With $\\hat y = \\arg\\max_j z_j$ and pairwise Lipschitz constants
    $L_{pq}$ of $z_p - z_q$, the radius against class $j$ is
    $r_j = (z_{\\hat y} - z_j)/L_{\\hat yj}$ and

    $$\\ell = \\mathrm{CE}(z, y) + \\mu\\,\\mathbb{1}[\\hat y = y,\\
    \\min_j r_j < R_{max}]\\;R(z),$$

    $R = \\frac1t\\log\\sum_{j\\ne\\hat y}e^{-t r_j}$ (`form="softmax"`, a
    soft minimum over all classes) or $R = \\frac1te^{-t\\min_j r_j}$
    (`form="max"`, the official code's default). Only correctly classified
    samples whose radius is below $R_{max}$ are penalized; the batch mean of
    $\\ell$ is the official loss (penalty summed over those samples and
    divided by the batch size). Gradients flow through the margins and
    through $L$.

    Args:
        y_true: one-hot `(B, C)` or class indices `(B,)` / `(B, 1)`.
        y_pred: logits `(B, C)`.
        pairwise: tensor `(C, C)` of pairwise constants (e.g.
            `keras_lipschitz.liplt.LipLTBound.pairwise()`); the diagonal is
            ignored.
        mu: float >= 0, weight $\\mu$ of the penalty.
        t: float > 0, sharpness $t$ of the (soft) minimum.
        max_radius: float >= 0, $R_{max}$.
        form: `"softmax"` or `"max"`.

    Returns:
        Per-sample losses `(B,)`.
    """
    _validate_crm_form("form", form)
    one_hot, y_pred = multiclass_labels(y_true, _float_tensor(y_pred))
    logits = ops.cast(y_pred, "float32")
    one_hot = ops.cast(one_hot, "float32")
    num_classes = logits.shape[-1]
    ce = keras.losses.categorical_crossentropy(
        one_hot, logits, from_logits=True
    )
    predicted = ops.stop_gradient(
        ops.one_hot(ops.argmax(logits, axis=-1), num_classes)
    )
    correct = ops.sum(predicted * one_hot, axis=-1) > 0.5
    top = ops.sum(predicted * logits, axis=-1, keepdims=True)
    gaps = top - logits
    pair_rows = ops.matmul(predicted, ops.cast(pairwise, "float32"))
    others = predicted < 0.5
    # The predicted class itself gets a large radius (excluded below).
    safe_rows = ops.where(others, ops.maximum(pair_rows, 1e-12), 1.0)
    radii = ops.where(others, gaps / safe_rows, 1e9)
    min_radius = ops.min(radii, axis=-1)
    active = ops.logical_and(correct, min_radius < max_radius)
    # Inactive samples (e.g. misclassified, r < 0) get a harmless radius
    # before the exponential, so no inf reaches the gradient of `where`.
    radii = ops.where(ops.expand_dims(active, -1), radii, max_radius)
    if form == "softmax":
        scaled = ops.where(others, -t * radii, -1e9)
        penalty = ops.logsumexp(scaled, axis=-1) / t
    else:
        penalty = ops.exp(-t * ops.min(radii, axis=-1)) / t
    penalty = ops.where(active, penalty, 0.0)
    return ops.cast(ce + mu * penalty, y_pred.dtype)


@keras_lipschitz_export
class CRM(_LipschitzLoss):
    """Certified Radius Maximization loss (Fazlyab et al., NeurIPS 2023).

    Cross-entropy plus $\\mu$ times a smooth penalty on small certified
    radii $r_j = (z_{\\hat y} - z_j)/L_{\\hat yj}$ of correctly classified
    samples (see `crm`), with the pairwise Lipschitz constants $L_{pq}$
    estimated *inside the train step* by
    `keras_lipschitz.liplt.LipLTBound`, differentiably in the weights: the
    loss enlarges margins and shrinks the LipLT bound together, on any
    feed-forward Keras model of Dense/Conv2D layers (no Lipschitz layers
    needed). Fazlyab, Entesari, Roy, Chellappa, "Certified Robustness via
    Dynamic Margin Maximization and Improved Lipschitz Regularization",
    NeurIPS 2023; official code o4lc/CRM-LipLT.

    **Defaults** are the official code's: $t = 3$, $\\mu = 50$,
    $R_{max} = 0.5$, `form="max"`. Its README runs use `form="softmax"`,
    $t = 5$, pairwise constants, Adam 1e-3, batch 512, the penalty from
    epoch 10 (`robustStartingEpoch`; here set `mu=0.0` first and raise it
    with `keras_lipschitz.callbacks.LossParamScheduler`), and:

    - MNIST (4C3F): $\\mu = 30$, $R_{max} = 2.2$, 10 power iterations;
    - CIFAR-10 (6C2F): $\\mu = 15$, $R_{max} = 0.2$, 5 power iterations.

    Build it with `CRM.for_model(model, iterations=...)` *before* the first
    `fit`; the `LipLTBound` attaches its power-iteration state to the model
    so that every backend carries it through the compiled step. The training
    estimate is not a certificate: certify with
    `keras_lipschitz.certify(model, x, y)`, which recomputes the LipLT
    constants with exact norms.

    Args:
        mu: float >= 0, $\\mu$.
        t: float > 0, $t$.
        max_radius: float >= 0, $R_{max}$.
        form: `"softmax"` or `"max"`.
        bound: a `keras_lipschitz.liplt.LipLTBound`, or None (attach one
            later with `attach`; a loss rebuilt from a config has none).
        update: advance the power-iteration vectors at every call (the
            training behaviour).
        reduction: Keras loss reduction.
        name: loss name.
        dtype: dtype of the loss computations.

    Example:

    >>> import numpy as np
    >>> import keras
    >>> model = keras.Sequential([keras.Input((4,)),
    ...     keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)])
    >>> loss = CRM.for_model(model, mu=15.0, t=5.0, max_radius=0.2,
    ...                      form="softmax")
    >>> value = loss(np.array([0, 2]), model(np.ones((2, 4), "float32")))
    >>> bool(value > 0)
    True
    """

    _HYPERPARAMETERS = {
        "mu": _validate_nonnegative,
        "t": _validate_positive,
        "max_radius": _validate_nonnegative,
        "form": _validate_crm_form,
    }

    def __init__(
        self,
        mu=50.0,
        t=3.0,
        max_radius=0.5,
        form="max",
        bound=None,
        update=True,
        reduction="sum_over_batch_size",
        name="crm",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.mu = mu
        self.t = t
        self.max_radius = max_radius
        self.form = form
        self.update = bool(update)
        self.bound = None
        if bound is not None:
            self.attach(bound)

    def attach(self, bound):
        """Uses `bound` (a `LipLTBound`) for $L$; returns the loss itself."""
        from keras_lipschitz.liplt import LipLTBound

        if not isinstance(bound, LipLTBound):
            raise ValueError(
                "`bound` must be a keras_lipschitz.liplt.LipLTBound. "
                f"Received: bound={bound!r}"
            )
        if bound.num_classes is None:
            raise ValueError(
                "`bound` must come from a model that outputs logits (N, C) "
                "through a linear last layer."
            )
        self.bound = bound
        return self

    @classmethod
    def for_model(cls, model, iterations=1, seed=0, **kwargs):
        """A `CRM` loss with a new `LipLTBound(model, iterations, seed)`."""
        from keras_lipschitz.liplt import LipLTBound

        return cls(bound=LipLTBound(model, iterations, seed=seed), **kwargs)

    def call(self, y_true, y_pred):
        if self.bound is None:
            raise ValueError(
                "This CRM loss has no LipLTBound (a bound cannot be "
                "serialized). Call `loss.attach(LipLTBound(model))` or build "
                "it with `CRM.for_model(model)`."
            )
        pairwise = self.bound.pairwise(update=self.update)
        return crm(
            y_true,
            y_pred,
            pairwise,
            mu=self.mu,
            t=self.t,
            max_radius=self.max_radius,
            form=self.form,
        )

    def get_config(self):
        config = super().get_config()
        config["update"] = self.update
        return config
