"""The library's single backend dispatch point.

Only what `keras.ops` cannot express lives here: input gradients, used by
attacks and empirical Lipschitz estimates. Backends are imported lazily,
inside the functions.
"""

import keras


def value_and_input_gradient(fn, x):
    """Returns `(fn(x), d fn / d x)` for a scalar-valued `fn`.

    Args:
        fn: callable mapping a backend tensor to a scalar tensor.
        x: array-like input.

    Returns:
        A pair of backend tensors.
    """
    backend = keras.config.backend()
    x = keras.ops.convert_to_tensor(x, "float32")
    if backend == "jax":
        import jax

        return jax.value_and_grad(fn)(x)
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(x)
            value = fn(x)
        return value, tape.gradient(value, x)
    if backend == "torch":
        import torch

        x = x.detach().clone().requires_grad_(True)
        value = fn(x)
        (grad,) = torch.autograd.grad(value, x)
        return value.detach(), grad
    raise ValueError(
        f"Input gradients are not supported on backend {backend!r}; "
        "use tensorflow, jax or torch."
    )
