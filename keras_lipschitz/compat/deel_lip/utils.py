"""deel-lip's `deel.lip.utils`."""

from keras import ops

from keras_lipschitz.compat.deel_lip._mapping import maps_to
from keras_lipschitz.empirical import empirical_lipschitz
from keras_lipschitz.layers.conv import _pad_axis


@maps_to(
    "utils",
    "`keras.ops`",
    "$x / \\max(\\|x\\|, \\sqrt{\\epsilon})$ along `axis`, as in deel-lip.",
)
def l2_normalize(x, axis=None, epsilon=1e-12):
    """deel-lip's `l2_normalize`."""
    x = ops.convert_to_tensor(x)
    square_sum = ops.sum(ops.square(x), axis=axis, keepdims=True)
    return x * ops.rsqrt(ops.maximum(square_sum, epsilon))


@maps_to(
    "utils",
    "`keras_lipschitz.empirical_lipschitz(model, x)`",
    "A **lower** bound from searched pairs of inputs, on every backend "
    "(deel-lip: the largest Jacobian norm at the points of `x`, TensorFlow "
    "only). `eps` is accepted (our pairs use their own step and rounding "
    "margin). Not a certificate: use `keras_lipschitz.lipschitz_bound`.",
    status="adapted",
)
def evaluate_lip_const(model, x, eps=1e-4, seed=None):
    """deel-lip's `evaluate_lip_const`: `keras_lipschitz.empirical_lipschitz`.

    Returns:
        A float, a lower bound of the model's Lipschitz constant.
    """
    return empirical_lipschitz(model, x, seed=0 if seed is None else seed)


@maps_to(
    "utils",
    "`keras_lipschitz.empirical_lipschitz`",
    "On the first batch of the generator, as in deel-lip.",
    status="adapted",
)
def evaluate_lip_const_gen(model, generator, eps=1e-4, seed=None):
    """deel-lip's `evaluate_lip_const_gen` (first batch of `generator`)."""
    x, _ = generator.send(None)
    return evaluate_lip_const(model, x, eps=eps, seed=seed)


def _padding_circular(x, circular_paddings):
    """deel-lip's private circular padding of a channels-last 4-D tensor.

    Kept because deel-lip's test helpers import it. `circular_paddings` is
    `(pad_h, pad_w)`; each spatial axis is wrapped around by that many rows
    or columns on both sides (None: no padding).
    """
    if circular_paddings is None:
        return x
    x = ops.convert_to_tensor(x)
    for axis, pad in zip((1, 2), circular_paddings):
        x = _pad_axis(x, axis, int(pad), "circular")
    return x


@maps_to(
    "utils",
    "deel-lip's formula, `keras.ops`",
    "For the `multi_gpu=True` losses: $B/n_+$ for a positive label, "
    "$-B/n_-$ for a negative one, counted per column on the batch given "
    "(the global batch, before it is split across replicas). Not needed "
    "with our losses, which sum the class counts across replicas.",
    status="adapted",
)
def process_labels_for_multi_gpu(labels):
    """deel-lip's `process_labels_for_multi_gpu`, for `multi_gpu=True` losses.

    Each label becomes its KR weight on the batch given: with $B$ the batch
    size and $n_+$, $n_-$ the counts of positive (`> 0`) and other labels
    of each column, a positive label becomes $B/(n_+ + 10^{-7})$ and any
    other $-B/(n_- + 10^{-7})$. Give it the labels of the *global* batch;
    the `multi_gpu=True` KR losses then add up across replicas.

    Args:
        labels: `(B, 1)` binary or `(B, C)` one-hot labels.

    Returns:
        Floating tensor of the shape of `labels`.
    """
    labels = ops.convert_to_tensor(labels)
    eps = 1e-7
    positive = ops.cast(labels > 0, labels.dtype)
    batch = ops.cast(ops.shape(labels)[0], labels.dtype)
    counts = ops.sum(positive, axis=0)
    return batch * (
        positive / (counts + eps) - (1 - positive) / (batch - counts + eps)
    )


__all__ = [
    "evaluate_lip_const",
    "evaluate_lip_const_gen",
    "l2_normalize",
    "process_labels_for_multi_gpu",
]
