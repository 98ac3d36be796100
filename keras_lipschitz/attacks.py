"""Adversarial attacks used to check certificates empirically.

An attack gives an *upper* bound on the true robust radius (it finds
perturbations that work); a certificate gives a *lower* bound. A sound
certificate is never beaten by an attack inside its radius.
"""

import numpy as np
from keras import ops

from keras_lipschitz import _backend


def _margin_objective(model, labels_one_hot):
    """`x -> (summed margin objective, logits)`: one forward pass gives
    the gradient and the predictions at `x`."""

    def objective(x):
        logits = ops.cast(model(x, training=False), "float32")
        true = ops.sum(logits * labels_one_hot, axis=1)
        others = ops.where(labels_one_hot > 0, -np.inf, logits)
        # Sum of per-example (best other logit - true logit): maximized.
        return ops.sum(ops.max(others, axis=1) - true), logits

    return objective


def _projected_gradient_ascent(
    model, x, y, epsilon, steps, step_size, restarts, seed, start, ascend
):
    """The PGD loop shared by `pgd_l2` and `pgd_linf`.

    `start(rng, x, eps)` draws a random start `delta` inside the ball of
    per-example radii `eps` (shaped `(N, 1, ...)`); `ascend(delta, grad,
    alpha, eps)` takes one ascent step and projects back onto the ball.
    The first restart starts at `x`.
    """
    x = np.asarray(x, np.float32)
    y = np.asarray(y).reshape(-1).astype(np.int64)
    n = x.shape[0]
    eps = np.broadcast_to(np.asarray(epsilon, np.float32), (n,)).copy()
    shape = (n,) + (1,) * (x.ndim - 1)
    alpha = (2.5 * eps / steps if step_size is None else
             np.broadcast_to(np.asarray(step_size, np.float32), (n,)))
    alpha = alpha.reshape(shape)
    eps = eps.reshape(shape)
    num_classes = int(model.output_shape[-1])
    one_hot = np.eye(num_classes, dtype=np.float32)[y]
    logits_and_gradient = _backend.compiled_input_gradient(
        _margin_objective(model, ops.convert_to_tensor(one_hot))
    )
    rng = np.random.default_rng(seed)

    def predict(v):
        return np.argmax(ops.convert_to_numpy(model(v, training=False)), 1)

    best = x.copy()
    success = np.zeros(n, bool)

    def record(point, predictions):
        nonlocal success
        changed = predictions != y
        new = changed & ~success
        best[new] = point[new]
        success |= changed

    for restart in range(restarts):
        delta = np.zeros_like(x)
        if restart > 0:
            delta = start(rng, x, eps)
        for step in range(steps):
            point = x + delta
            logits, grad = logits_and_gradient(point)
            if step > 0:
                # The logits at the point the previous step reached.
                record(point, np.argmax(ops.convert_to_numpy(logits), 1))
            grad = np.asarray(ops.convert_to_numpy(grad), np.float32)
            delta = ascend(delta, grad, alpha, eps)
        if steps > 0:
            record(x + delta, predict(x + delta))
        best[~success] = (x + delta)[~success]
    return best, success


def _flat_norms(v):
    return np.linalg.norm(v.reshape(v.shape[0], -1), axis=1).reshape(
        (v.shape[0],) + (1,) * (v.ndim - 1)
    )


def _l2_start(rng, x, eps):
    delta = rng.normal(size=x.shape).astype(np.float32)
    radius = eps * rng.uniform(size=eps.shape)
    delta *= radius / _flat_norms(delta)
    return delta


def _l2_ascend(delta, grad, alpha, eps):
    step = grad / np.maximum(_flat_norms(grad), 1e-12)
    delta = delta + alpha * step
    factor = np.minimum(1.0, eps / np.maximum(_flat_norms(delta), 1e-12))
    return delta * factor.astype(np.float32)


def _linf_start(rng, x, eps):
    return (rng.uniform(-1, 1, size=x.shape) * eps).astype(np.float32)


def _linf_ascend(delta, grad, alpha, eps):
    return np.clip(delta + alpha * np.sign(grad), -eps, eps).astype(
        np.float32
    )


def pgd_l2(model, x, y, epsilon, steps=50, step_size=None, restarts=1, seed=0):
    """Projected gradient ascent on the margin inside ℓ2 balls.

    Maximizes $\\max_{j\\ne y} z_j - z_y$ over $\\|\\delta\\|_2 \\le
    \\varepsilon$ (Madry et al., ICLR 2018; margin objective of Carlini &
    Wagner, 2017), with normalized gradient steps and projection onto each
    example's ball.

    Args:
        model: a Keras model returning logits.
        x: inputs `(N, ...)`.
        y: integer labels `(N,)`.
        epsilon: a number or an array `(N,)` of per-example radii.
        steps: number of ascent steps.
        step_size: defaults to `2.5 * epsilon / steps`.
        restarts: random restarts (the first starts at `x`).
        seed: seed of the random starts.

    Returns:
        `(x_adv, success)`: the strongest perturbed inputs found, inside
        the balls, and a boolean array, True where the prediction changed.
    """
    return _projected_gradient_ascent(
        model, x, y, epsilon, steps, step_size, restarts, seed,
        _l2_start, _l2_ascend,
    )


def pgd_linf(
    model, x, y, epsilon, steps=50, step_size=None, restarts=1, seed=0,
    input_range=None,
):
    """Projected gradient ascent on the margin inside ℓ∞ balls.

    The ℓ∞ mirror of `pgd_l2`: maximizes $\\max_{j\\ne y} z_j - z_y$ over
    $\\|\\delta\\|_\\infty \\le \\varepsilon$ with signed-gradient steps
    (Madry et al., ICLR 2018) and clipping to each example's box. With
    `input_range=(low, high)` the perturbed inputs are also clipped to
    that range (the threat model of `certify(..., input_range=...)`);
    otherwise the ball is the whole box.

    Args:
        model: a Keras model returning logits.
        x: inputs `(N, ...)`.
        y: integer labels `(N,)`.
        epsilon: a number or an array `(N,)` of per-example radii.
        steps: number of ascent steps.
        step_size: defaults to `2.5 * epsilon / steps`.
        restarts: random restarts (the first starts at `x`, the others
            uniformly in the box).
        seed: seed of the random starts.
        input_range: None or `(low, high)`, the valid input range.

    Returns:
        `(x_adv, success)`: the strongest perturbed inputs found, inside
        the boxes, and a boolean array, True where the prediction changed.
    """
    if input_range is None:
        return _projected_gradient_ascent(
            model, x, y, epsilon, steps, step_size, restarts, seed,
            _linf_start, _linf_ascend,
        )
    low, high = (float(v) for v in input_range)
    x32 = np.asarray(x, np.float32)

    def inside(delta):
        # The perturbed input is clipped to the range, delta with it.
        return (np.clip(x32 + delta, low, high) - x32).astype(np.float32)

    def start(rng, x, eps):
        return inside(_linf_start(rng, x, eps))

    def ascend(delta, grad, alpha, eps):
        return inside(_linf_ascend(delta, grad, alpha, eps))

    return _projected_gradient_ascent(
        model, x32, y, epsilon, steps, step_size, restarts, seed,
        start, ascend,
    )
