"""Empirical Lipschitz estimates: LOWER bounds, never certificates."""

import numpy as np
from keras import ops

from keras_lipschitz import _backend
from keras_lipschitz.layers import _validation


def _outputs(model, x):
    out = ops.cast(model(x, training=False), "float32")
    return ops.reshape(out, (x.shape[0], -1))


def _unit_rows(v):
    flat = v.reshape(v.shape[0], -1)
    norms = np.maximum(np.linalg.norm(flat, axis=1), 1e-30)
    return (flat / norms[:, None]).reshape(v.shape)


def empirical_lipschitz(
    model,
    x,
    steps=20,
    step_size=1e-3,
    ascent_rate=0.05,
    rounding=1e-5,
    seed=0,
):
    """A LOWER bound on a model's ℓ2 Lipschitz constant, from pairs.

    **This is not a certificate.** It returns the largest ratio
    $\\|f(x) - f(x')\\|_2 / \\|x - x'\\|_2$ over concrete pairs of inputs
    that it evaluates, so the true Lipschitz constant is *at least* this
    value; the true constant can be much larger. (Sampling estimates of this
    kind, reported as "the" Lipschitz constant, have misled users: use
    `keras_lipschitz.lipschitz_bound` for a guaranteed upper bound.)

    The pairs are searched for, from each point of `x`:

    - the direction $u$ follows a power iteration on the local Jacobian
      $J$: $v \\propto f(x + hu) - f(x)$ (a finite-difference $Ju$) and
      $u \\propto J^Tv$ (an exact input gradient, via the library's backend
      dispatch);
    - the point $x$ climbs the ratio by normalized gradient ascent on
      $\\|f(x + hu) - f(x)\\|$ (step `ascent_rate` times $\\|x\\|$'s scale).

    Every reported ratio is computed from two forward passes at a pair
    $x, x' = x + hu$ with $\\|x - x'\\| = h$ = `step_size`, minus a rounding
    margin `rounding` $\\cdot(\\|f(x)\\| + \\|f(x')\\|)/h$ for the float32
    forward passes, so the result stays a lower bound of the real-valued
    network's constant as long as the outputs are accurate to that relative
    error.

    Args:
        model: a Keras model (any outputs, flattened per example).
        x: starting points `(N, ...)`, e.g. a few data points.
        steps: number of power/ascent steps.
        step_size: pair distance $h$ (absolute, in input units).
        ascent_rate: ascent step on $x$, relative to the RMS norm of `x`
            (0 keeps the points fixed).
        rounding: relative error allowed for the float32 outputs.
        seed: seed of the initial directions.

    Returns:
        A Python float, a lower bound on the Lipschitz constant.
    """
    _validation.validate_positive_int("steps", steps)
    _validation.validate_positive_number("step_size", step_size)
    if not ascent_rate >= 0:
        raise ValueError(
            f"`ascent_rate` must be >= 0. Received: ascent_rate={ascent_rate!r}"
        )
    if not rounding >= 0:
        raise ValueError(
            f"`rounding` must be >= 0. Received: rounding={rounding!r}"
        )
    x = np.array(x, np.float32)
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(
            "`x` must be a non-empty batch of inputs `(N, ...)`. "
            f"Received: shape {x.shape}"
        )
    n = x.shape[0]
    rng = np.random.default_rng(seed)
    u = _unit_rows(rng.normal(size=x.shape)).astype(np.float32)
    scale = float(np.sqrt(np.mean(np.square(x.reshape(n, -1)), axis=1)).mean())
    scale = scale if scale > 0 else 1.0
    h = float(step_size)
    best = 0.0

    def pair_ratio(points, directions):
        x0 = points
        x1 = points + h * directions
        f0 = np.asarray(ops.convert_to_numpy(_outputs(model, x0)), np.float64)
        f1 = np.asarray(ops.convert_to_numpy(_outputs(model, x1)), np.float64)
        # The pair actually evaluated, in float32 as fed to the model.
        dist = np.linalg.norm(
            (x1.astype(np.float64) - x0.astype(np.float64)).reshape(n, -1),
            axis=1,
        )
        diff = np.linalg.norm(f1 - f0, axis=1)
        margin = rounding * (
            np.linalg.norm(f0, axis=1) + np.linalg.norm(f1, axis=1)
        )
        ratio = np.where(dist > 0, (diff - margin) / np.maximum(dist, 1e-30), 0)
        return float(np.max(ratio)), f1 - f0

    for _ in range(steps):
        ratio, delta = pair_ratio(x, u)
        best = max(best, ratio)
        v = _unit_rows(delta).astype(np.float32)
        v_tensor = ops.convert_to_tensor(v)

        def projection(inputs, v_tensor=v_tensor):
            return ops.sum(_outputs(model, inputs) * v_tensor)

        _, grad = _backend.value_and_input_gradient(projection, x)
        grad = np.asarray(ops.convert_to_numpy(grad), np.float32)
        if np.all(np.isfinite(grad)) and np.any(grad != 0):
            u = _unit_rows(grad).astype(np.float32)
        ratio, _ = pair_ratio(x, u)
        best = max(best, ratio)
        if ascent_rate > 0:
            u_tensor = ops.convert_to_tensor(u)

            def local_gain(inputs, u_tensor=u_tensor):
                diff = _outputs(model, inputs + h * u_tensor) - _outputs(
                    model, inputs
                )
                return ops.sum(ops.sqrt(ops.sum(ops.square(diff), axis=1)
                                        + 1e-30))

            _, g = _backend.value_and_input_gradient(local_gain, x)
            g = np.asarray(ops.convert_to_numpy(g), np.float32)
            if np.all(np.isfinite(g)) and np.any(g != 0):
                x = x + (ascent_rate * scale) * _unit_rows(g).astype(
                    np.float32
                ) * np.sqrt(np.prod(x.shape[1:])).astype(np.float32)
    ratio, _ = pair_ratio(x, u)
    return max(best, ratio)
