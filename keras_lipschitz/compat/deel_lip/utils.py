"""deel-lip's `deel.lip.utils`."""

from keras import ops

from keras_lipschitz.compat.deel_lip._mapping import maps_to
from keras_lipschitz.compat.deel_lip._mapping import not_provided
from keras_lipschitz.empirical import empirical_lipschitz


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


process_labels_for_multi_gpu = not_provided(
    "utils",
    "process_labels_for_multi_gpu",
    "not needed: the KR losses sum their class counts across replicas, so "
    "they take the plain labels under any distribution strategy.",
)


__all__ = [
    "evaluate_lip_const",
    "evaluate_lip_const_gen",
    "l2_normalize",
    "process_labels_for_multi_gpu",
]
