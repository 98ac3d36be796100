"""Which certificate applies to which model.

`select_certificate` looks only at the model's structure (never at data)
and returns a `Certificate`: its name and the function `certify` runs. The
rules, in order:

| norm | model | certificate |
|---|---|---|
| `"linf"` | ℓ∞-distance body, no head | `linf_margin` |
| `"linf"` | ℓ∞-distance body + MLP head | `linf_ibp` |
| `"linf"`, with `input_range` | ℓ∞-distance body, with or without head | `linf_box` |
| `"l2"` | output made by a `CRCLipHead` | `curvature_head` |
| `"l2"` | one output score (`(N,)` or `(N, 1)`) | `binary` |
| `"l2"`, method `"product"` | ends in a linear layer | `lln` |
| `"l2"`, method `"product"` | anything else | `global_l2` |
| `"l2"`, method `"liplt"` | feed-forward, LipLT-supported | `liplt` |
| `"l2"`, method `"auto"` | as `"product"`, and also LipLT where it applies | `lln+liplt`, `global_l2+liplt`, `lln` or `global_l2` |

A combined name such as `lln+liplt` means each pair $(y, j)$ takes the
larger of the two radii, i.e. the smaller of two guaranteed constants.
"""

import collections
import functools

import numpy as np

from keras_lipschitz.certification import _common
from keras_lipschitz.certification import _linf
from keras_lipschitz.certification import binary
from keras_lipschitz.certification import curvature_head
from keras_lipschitz.certification import global_l2
from keras_lipschitz.certification import linf_box
from keras_lipschitz.certification import linf_ibp
from keras_lipschitz.certification import linf_margin
from keras_lipschitz.certification import liplt_pairwise
from keras_lipschitz.certification import lln

NORMS = ("l2", "linf")
METHODS = ("auto", "product", "liplt")

Certificate = collections.namedtuple("Certificate", ["name", "run"])
Certificate.__doc__ = """A certificate chosen for a model.

Attributes:
    name: e.g. `"lln"`, `"global_l2"`, `"lln+liplt"`, `"binary"`,
        `"curvature_head"`, `"linf_margin"`, `"linf_ibp"` or `"linf_box"`.
    run: `run(model, x, y, batch_size)` returns the float64 radii `(N,)`.
"""


def validate(norm, method, input_range=None):
    """Raises `ValueError` for an unknown `norm` or `method`, or an
    `input_range` that is not `(low, high)` or not used with ℓ∞."""
    if method not in METHODS:
        raise ValueError(
            "`method` must be 'auto', 'product' or 'liplt'. "
            f"Received: method={method!r}"
        )
    if norm not in NORMS:
        raise ValueError(
            "`norm` must be 'l2' or 'linf' for certify(). "
            f"Received: norm={norm!r}"
        )
    if input_range is not None:
        linf_box.validate_input_range(input_range)
        if norm != "linf":
            raise ValueError(
                "`input_range` is used by the ℓ∞ certificates only "
                "(norm='linf'); ℓ2 radii hold for every input. "
                f"Received: norm={norm!r}, input_range={input_range!r}"
            )


def _certify_by_pairs(ratio_modules, model, x, y, batch_size):
    """Radii from per-pair radii, the largest over `ratio_modules`."""
    logits, labels, gaps = _common.multiclass_logits(model, x, y, batch_size)
    ratios = ratio_modules[0].pair_ratios(model, gaps, labels)
    for module in ratio_modules[1:]:
        ratios = np.maximum(ratios, module.pair_ratios(model, gaps, labels))
    return _common.radii_from_ratios(ratios, labels, logits)


def _pairwise(ratio_modules):
    name = "+".join(module.NAME for module in ratio_modules)
    return Certificate(
        name, functools.partial(_certify_by_pairs, tuple(ratio_modules))
    )


def select_certificate(model, norm="l2", method="auto", input_range=None):
    """The certificate `certify(model, ..., norm, method)` uses.

    Args:
        model: a built single-input, single-output `keras.Model`.
        norm: `"l2"` or `"linf"`.
        method: `"auto"`, `"product"` or `"liplt"` (ℓ2 multiclass models;
            see `keras_lipschitz.certify`).
        input_range: None, or `(low, high)` with `norm="linf"`: the
            interval-bound certificate `linf_box` on inputs kept in that
            range.

    Returns:
        A `Certificate` `(name, run)`.

    Raises:
        ValueError: for a bad `norm` or `method`, a model no certificate
            applies to, or (with `method="liplt"`) a model LipLT does not
            support.
    """
    validate(norm, method, input_range)
    if norm == "linf":
        _, head = _linf.split_linf_model(model)
        if input_range is not None:
            return Certificate(
                linf_box.NAME,
                functools.partial(linf_box.certify, input_range=input_range),
            )
        module = linf_ibp if head else linf_margin
        return Certificate(module.NAME, module.certify)
    if curvature_head.applies(model):
        return Certificate(curvature_head.NAME, curvature_head.certify)
    output_shape = tuple(_common.single_tensor(model, "outputs").shape)
    if binary.applies(output_shape):
        return Certificate(binary.NAME, binary.certify)
    if len(output_shape) != 2:
        raise ValueError(
            "`model` must output logits of shape (N, C) with C >= 2, or "
            f"binary scores of shape (N,) or (N, 1). Received: {output_shape}"
        )
    product = lln if lln.applies(model) else global_l2
    if method == "product":
        return _pairwise([product])
    if method == "liplt":
        return _pairwise([liplt_pairwise])
    if liplt_pairwise.applies(model):
        return _pairwise([product, liplt_pairwise])
    return _pairwise([product])
