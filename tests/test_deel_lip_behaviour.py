"""deel-lip behaviour that keras_lipschitz reproduces exactly (issue 17).

- multiclass losses with one-hot labels in {-1, +1};
- `Householder(pairing="halves")`, deel-lip's channel pairing;
- `InvertibleDownSampling` / `InvertibleUpSampling` with
  `channel_order="pixel_unshuffle"`, deel-lip's channel order;
- `MaxMin`, deel-lip's [ReLU(x), ReLU(-x)].

The expected numbers are those of deel-lip's own test suite (deel-ai/deel-lip,
`keras3` branch, tests/test_losses.py, test_activations.py and
test_updownsampling.py); the checks are our own.
"""

import math

import keras
import numpy as np
import pytest

from keras_lipschitz import losses
from keras_lipschitz.layers.activations import GroupSort2
from keras_lipschitz.layers.activations import Householder
from keras_lipschitz.layers.activations import MaxMin
from keras_lipschitz.layers.pooling import InvertibleDownSampling
from keras_lipschitz.layers.pooling import InvertibleUpSampling
from tests import helpers

CL = "channels_last"
CF = "channels_first"
ORDERS = ("space_to_depth", "pixel_unshuffle")


def random_input(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def signed(one_hot):
    """The {-1, +1} encoding of a 0/1 one-hot (deel-lip's test does this)."""
    return np.where(one_hot == 1.0, 1.0, -1.0)


def finite_difference_jacobian(fn, x, step):
    """(f(x + step e_i) - f(x)) / step for every basis vector e_i of x.

    The layers here are piecewise linear: this is their exact Jacobian (up to
    float32 rounding, about eps |x| / step) when no piece boundary lies
    within `step` of x.
    """
    n = x.size
    basis = np.eye(n, dtype="float32").reshape((n,) + x.shape)
    shifted = (x[None] + step * basis).astype("float32")
    out = helpers.to_numpy(fn(shifted)).reshape(n, -1)
    base = helpers.to_numpy(fn(x[None])).reshape(1, -1)
    return ((out - base) / step).T


def pair_ratio(fn, input_shape, scale, seed, pairs=256):
    """Largest ||f(x) - f(y)|| / ||x - y|| over random pairs at `scale`.

    Both the points and their distances (from e^-6 to e times `scale`) are
    scaled, so that the float32 rounding of the outputs, about
    eps ||x|| / ||x - y|| <= 1e-7 e^6 = 5e-5, is the same at every scale
    and well below the tolerance.
    """
    rng = np.random.default_rng(seed)
    x = scale * rng.normal(size=(pairs,) + tuple(input_shape))
    radius = np.exp(rng.uniform(-6, 1, size=(pairs,) + (1,) * len(input_shape)))
    y = x + scale * radius * rng.normal(size=x.shape)
    x, y = x.astype("float32"), y.astype("float32")
    fx = helpers.to_numpy(fn(x)).reshape(pairs, -1)
    fy = helpers.to_numpy(fn(y)).reshape(pairs, -1)
    difference = (x.astype(np.float64) - y).reshape(pairs, -1)
    distance = np.linalg.norm(difference, axis=1)
    return float(np.max(np.linalg.norm(fx - fy, axis=1) / distance))


# ------------------------------------------------------------------ losses

# deel-lip tests/test_losses.py: y_true3 / y_pred3 and y_true2 / y_pred2.
Y_TRUE3 = np.eye(3)[[0, 0, 0, 1, 1, 1, 2, 2]]
Y_PRED3 = np.array(
    [
        [1.5, 0.2, -0.5],
        [1, -1.2, 0.3],
        [0.8, 2, -2],
        [0, 1, -0.5],
        [-0.8, 2, 0],
        [2.4, -0.4, -1.1],
        [-0.1, -1.7, 0.6],
        [1.2, 1.3, 2.5],
    ],
    "float32",
)
Y_TRUE2 = np.eye(3)[[0, 0, 0, 1, 1, 2]]
Y_PRED2 = np.array(
    [
        [2, 0.2, -0.5],
        [-1, -1.2, 0.3],
        [0.8, 2, 0],
        [0, 1, -0.5],
        [2.4, -0.4, -1.1],
        [-0.1, -1.7, 0.6],
    ],
    "float32",
)

# deel-lip's per-sample values ("reduction": "none") on y_true3 / y_pred3.
PER_SAMPLE_CASES = [
    (
        losses.MulticlassKR,
        {},
        np.float64([326, 314, 120, 250, 496, -258, 396, 450]) / 225,
    ),
    (
        losses.MulticlassHinge,
        {"min_margin": 2.0},
        np.float64([17, 13, 34, 15, 12, 62, 17, 45]) / 30,
    ),
    (
        losses.MulticlassHKR,
        {"alpha": 2.5, "min_margin": 1.0},
        np.float64([-779, -656, 1395, -625, -1609, 4557, -1284, 825]) / 900,
    ),
]

# deel-lip's reduced values: (loss, kwargs, y_true, y_pred, expected).
REDUCED_CASES = [
    (losses.MulticlassKR, {}, Y_TRUE2, Y_PRED2, 761.0 / 1800.0),
    (
        losses.MulticlassHKR,
        {"alpha": 5.0, "min_margin": 2.0},
        Y_TRUE2,
        Y_PRED2,
        1071.0 / 200.0,
    ),
    # "sum" reduction over the whole batch.
    (losses.MulticlassKR, {"reduction": "sum"}, Y_TRUE3, Y_PRED3, 698 / 75),
    (
        losses.MulticlassHinge,
        {"min_margin": 2.0, "reduction": "sum"},
        Y_TRUE3,
        Y_PRED3,
        43 / 6,
    ),
    (
        losses.MulticlassHKR,
        {"alpha": 2.5, "min_margin": 1.0, "reduction": "sum"},
        Y_TRUE3,
        Y_PRED3,
        152 / 75,
    ),
]

LABEL_ENCODINGS = {
    "zero_one": lambda y: y.astype("float32"),
    "zero_one_int32": lambda y: y.astype("int32"),
    "signed": lambda y: signed(y).astype("float32"),
    "signed_int32": lambda y: signed(y).astype("int32"),
}


def test_multiclass_losses_match_deel_lip_per_sample():
    for cls, kwargs, expected in PER_SAMPLE_CASES:
        loss = cls(reduction="none", **kwargs)
        for encoding, encode in LABEL_ENCODINGS.items():
            values = helpers.to_numpy(loss(encode(Y_TRUE3), Y_PRED3))
            # deel-lip's own tolerances for these numbers.
            np.testing.assert_allclose(
                values,
                expected,
                rtol=1e-7,
                atol=5e-6,
                err_msg=f"{cls.__name__}, {encoding} labels",
            )


def test_multiclass_losses_match_deel_lip_reduced():
    for cls, kwargs, y_true, y_pred, expected in REDUCED_CASES:
        loss = cls(**kwargs)
        for encoding in ["zero_one", "signed"]:
            value = float(loss(LABEL_ENCODINGS[encoding](y_true), y_pred))
            # float32 sums of a few terms: a few ulps.
            np.testing.assert_allclose(
                value,
                expected,
                rtol=1e-6,
                err_msg=f"{cls.__name__}({kwargs}), {encoding} labels",
            )


FUNCTIONAL_FORMS = [
    ("multiclass_kr", lambda y, z: losses.multiclass_kr(y, z)),
    ("multiclass_hinge", lambda y, z: losses.multiclass_hinge(y, z, 2.0)),
    (
        "multiclass_hkr",
        lambda y, z: losses.multiclass_hkr(y, z, alpha=5.0, min_margin=2.0),
    ),
    ("MulticlassKR", lambda y, z: losses.MulticlassKR()(y, z)),
    ("MulticlassHinge", lambda y, z: losses.MulticlassHinge(2.0)(y, z)),
    ("MulticlassHKR", lambda y, z: losses.MulticlassHKR(5.0, 2.0)(y, z)),
]


def test_signed_one_hot_gives_the_same_values_as_zero_one():
    # deel-lip's test_loss_generic_equal, on a smaller random batch.
    rng = np.random.default_rng(0)
    one_hot = np.eye(10, dtype="float32")[rng.integers(0, 10, 200)]
    logits = rng.normal(size=(200, 10)).astype("float32")
    for name, fn in FUNCTIONAL_FORMS:
        reference = helpers.to_numpy(fn(one_hot, logits))
        for y_true in [
            one_hot.astype("int32"),
            signed(one_hot).astype("float32"),
            signed(one_hot).astype("int32"),
        ]:
            np.testing.assert_array_equal(
                helpers.to_numpy(fn(y_true, logits)),
                reference,
                err_msg=f"{name}, labels {y_true.dtype}",
            )


def test_signed_one_hot_is_converted_inside_compiled_steps():
    """Inside `evaluate` (jit / tf.function) the labels cannot be inspected:
    the conversion must be part of the graph."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 5)).astype("float32")
    one_hot = np.eye(4, dtype="float32")[rng.integers(0, 4, 64)]
    for loss in [
        losses.MulticlassHinge(min_margin=2.0),
        losses.MulticlassHKR(alpha=5.0, min_margin=2.0),
        losses.MulticlassKR(),
    ]:
        model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4)])
        model.compile(loss=loss)
        zero_one = model.evaluate(x, one_hot, batch_size=64, verbose=0)
        signed_value = model.evaluate(
            x, signed(one_hot), batch_size=64, verbose=0
        )
        np.testing.assert_allclose(signed_value, zero_one, rtol=1e-6)
    # Without the conversion, the ±1 labels would give another hinge value.
    logits = helpers.to_numpy(model.predict(x, verbose=0))
    naive = losses._multiclass_hinge(
        keras.ops.convert_to_tensor(signed(one_hot), "float32"),
        keras.ops.convert_to_tensor(logits, "float32"),
        2.0,
    )
    proper = losses.multiclass_hinge(one_hot, logits, 2.0)
    assert abs(
        float(keras.ops.mean(naive)) - float(keras.ops.mean(proper))
    ) > 0.1


def test_non_negative_labels_are_unchanged():
    soft = np.array([[0.7, 0.2, 0.1], [0.0, 1.0, 0.0]], "float32")
    one_hot, _ = losses.multiclass_labels(soft, np.zeros((2, 3), "float32"))
    np.testing.assert_array_equal(helpers.to_numpy(one_hot), soft)
    signed_one_hot, _ = losses.multiclass_labels(
        np.array([[-1, 1, -1], [1, -1, -1]]), np.zeros((2, 3), "float32")
    )
    np.testing.assert_array_equal(
        helpers.to_numpy(signed_one_hot), [[0, 1, 0], [1, 0, 0]]
    )


BAD_SIGNED_LABELS = [
    [[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],  # -1 mixed with 0
    [[-1.0, 1.0, 1.0], [1.0, -1.0, -1.0]],  # two +1 in a row
    [[-1.0, -1.0, -1.0], [1.0, -1.0, -1.0]],  # no +1 in a row
    [[-0.5, 1.0, -1.0], [1.0, -1.0, -1.0]],  # not ±1
    [[-1.0, 2.0, -1.0], [1.0, -1.0, -1.0]],
]


def test_bad_signed_labels_are_refused():
    logits = np.zeros((2, 3), "float32")
    for y_true in BAD_SIGNED_LABELS:
        for fn in [
            losses.multiclass_kr,
            losses.multiclass_hinge,
            losses.multiclass_hkr,
            losses.MulticlassHKR(),
        ]:
            with pytest.raises(ValueError, match=r"y_true.*\{-1, \+1\}"):
                fn(np.array(y_true, "float32"), logits)


# ------------------------------------------------------------- Householder


def halves_input(shape, seed, first=None, second=None):
    """Concatenates two halves z1, z2 of `shape` on the last axis."""
    rng = np.random.default_rng(seed)
    z1 = rng.normal(size=shape) if first is None else first(rng, shape)
    z2 = rng.normal(size=shape) if second is None else second(rng, shape)
    return z1.astype("float32"), z2.astype("float32")


def positive(rng, shape):
    return rng.uniform(1e-3, 1.0, size=shape)


def negative(rng, shape):
    return -rng.uniform(1e-3, 1.0, size=shape)


HALF_SHAPES = [(37, 9), (5, 3, 4, 6)]  # dense (B, C/2) and (B, H, W, C/2)


@pytest.mark.parametrize("half_shape", HALF_SHAPES)
def test_householder_halves_matches_deel_lip_fixed_angles(half_shape):
    """deel-lip's test_HouseHolder_theta_zero / _theta_pi / _theta_90.

    deel-lip checks these with tolerances; here they hold exactly.
    """
    channels = 2 * half_shape[-1]

    def layer(theta):
        return Householder(
            pairing="halves",
            theta_initializer=keras.initializers.Constant(theta),
        )

    def check(hh, z1, z2, expected):
        x = np.concatenate([z1, z2], axis=-1)
        y = helpers.to_numpy(hh(x))
        assert y.shape[-1] == channels
        np.testing.assert_array_equal(y, np.concatenate(expected, axis=-1))

    zero, half_pi, pi = layer(0.0), layer(np.pi / 2), layer(np.pi)
    # theta = 0: identity if z2 >= 0, reflection across the z1 axis if not.
    z1, z2 = halves_input(half_shape, 0, second=positive)
    check(zero, z1, z2, [z1, z2])
    z1, z2 = halves_input(half_shape, 1, second=negative)
    check(zero, z1, z2, [z1, -z2])
    # theta = pi: identity if z1 <= 0, reflection across the z2 axis if not.
    z1, z2 = halves_input(half_shape, 2, first=negative)
    check(pi, z1, z2, [z1, z2])
    z1, z2 = halves_input(half_shape, 3, first=positive)
    check(pi, z1, z2, [-z1, z2])
    # theta = pi/2 (the default) is GroupSort2 of the halves: (min, max).
    z1, z2 = halves_input(half_shape, 4)
    check(half_pi, z1, z2, [np.minimum(z1, z2), np.maximum(z1, z2)])
    check(
        Householder(pairing="halves"),
        z1,
        z2,
        [np.minimum(z1, z2), np.maximum(z1, z2)],
    )


def test_householder_instantiation_matches_deel_lip():
    """deel-lip's test_HouseHolder_instantiation: theta shape and value."""
    hh = Householder(pairing="halves")
    hh.build((None, 28, 28, 10))
    assert tuple(hh.theta.shape) == (5,)
    np.testing.assert_array_equal(
        helpers.to_numpy(hh.theta), np.float32(np.pi / 2)
    )
    hh = Householder(pairing="halves", theta_initializer="ones")
    hh.build((None, 32, 32, 16))
    assert tuple(hh.theta.shape) == (8,)
    np.testing.assert_array_equal(helpers.to_numpy(hh.theta), 1.0)


def _random_theta_householder(channels, pairing, axis=-1, seed=0, shape=None):
    layer = Householder(pairing=pairing, axis=axis)
    if shape is None:
        shape = (1, channels) if axis == -1 else (1, channels, 2, 2)
    layer.build(shape)
    theta = np.random.default_rng(seed).uniform(-7.0, 7.0, channels // 2)
    layer.theta.assign(theta.astype("float32"))
    return layer


def test_householder_halves_is_idempotent():
    """deel-lip's test_HouseHolder_idempotence: hh(hh(x)) = hh(x)."""
    layer = _random_theta_householder(
        12, "halves", seed=5, shape=(1, 3, 3, 12)
    )
    x = random_input((64, 3, 3, 12), seed=6)
    y = helpers.to_numpy(layer(x))
    z = helpers.to_numpy(layer(y))
    np.testing.assert_allclose(z, y, rtol=1e-6, atol=1e-6)
    assert not np.allclose(y, x)


@pytest.mark.parametrize("axis", [-1, 1])
def test_householder_halves_is_adjacent_up_to_a_channel_permutation(axis):
    channels = 8
    halves = _random_theta_householder(channels, "halves", axis=axis, seed=7)
    adjacent = Householder(axis=axis)
    adjacent.build(
        (1, channels) if axis == -1 else (1, channels, 2, 2)
    )
    adjacent.theta.assign(halves.theta)
    # Adjacent position 2i holds channel i, position 2i + 1 channel i + C/2.
    interleave = np.stack(
        [np.arange(channels // 2), np.arange(channels // 2) + channels // 2],
        axis=-1,
    ).reshape(-1)
    shape = (16, channels) if axis == -1 else (4, channels, 2, 2)
    x = 3.0 * random_input(shape, seed=8)
    y_halves = helpers.to_numpy(halves(x))
    y_adjacent = helpers.to_numpy(adjacent(np.take(x, interleave, axis=axis)))
    inverse = np.argsort(interleave)
    np.testing.assert_array_equal(
        np.take(y_adjacent, inverse, axis=axis), y_halves
    )


def householder_points(layer, pairing, count, seed, margin=0.05):
    """Random inputs at least `margin` away from every pair's mirror line."""
    theta = helpers.to_numpy(layer.theta)
    channels = 2 * theta.size
    rng = np.random.default_rng(seed)
    points = []
    while len(points) < count:
        x = 2.0 * rng.normal(size=channels)
        if pairing == "halves":
            a, b = x[: channels // 2], x[channels // 2 :]
        else:
            a, b = x[0::2], x[1::2]
        side = np.sin(theta / 2) * a - np.cos(theta / 2) * b
        if np.min(np.abs(side)) > margin:
            points.append(x.astype("float32"))
    return points


@pytest.mark.parametrize("pairing", ["adjacent", "halves"])
def test_householder_is_1_lipschitz_and_gnp_in_both_pairings(pairing):
    layer = _random_theta_householder(10, pairing, seed=9)
    worst = 0.0
    for x in householder_points(layer, pairing, count=4, seed=10):
        jac = finite_difference_jacobian(layer, x, step=1e-2)
        sigma = helpers.singular_values(jac)
        worst = max(worst, float(np.max(np.abs(sigma - 1.0))))
    assert worst <= helpers.NORM_TOLERANCE
    for scale in [1e-2, 1.0, 1e2]:
        ratio = pair_ratio(layer, (10,), scale=scale, seed=11)
        assert ratio <= 1.0 + helpers.NORM_TOLERANCE, (scale, ratio)
    # Both sides of the mirror line occur: the check is not the identity.
    x = 3.0 * random_input((128, 10), seed=12)
    y = helpers.to_numpy(layer(x))
    assert not np.allclose(y, x)
    np.testing.assert_allclose(
        np.linalg.norm(y, axis=1), np.linalg.norm(x, axis=1), rtol=1e-5
    )
    assert layer.lipschitz_upper_bound() == 1.0


def test_householder_adjacent_is_still_exactly_group_sort2():
    x = random_input((32, 8), seed=13)
    x[0, :4] = [1.0, 1.0, -0.0, 0.0]
    y = helpers.to_numpy(Householder()(x))
    pairs = x.reshape(32, 4, 2)
    expected = np.stack([pairs.min(-1), pairs.max(-1)], -1).reshape(32, 8)
    np.testing.assert_array_equal(y, expected)
    # deel-lip's GroupSort2 is also (min, max) of adjacent channels.
    np.testing.assert_allclose(
        helpers.to_numpy(GroupSort2()(x)), expected, atol=1e-6
    )


def test_householder_pairing_config_and_validation(tmp_path):
    layer = Householder(pairing="halves", axis=-1, name="hh")
    config = layer.get_config()
    assert config["pairing"] == "halves"
    assert Householder().get_config()["pairing"] == "adjacent"
    revived = Householder.from_config(config)
    assert revived.get_config() == config
    assert set(dir(layer)) == set(dir(revived))
    for bad in ["first_half", "", None, 2, True]:
        with pytest.raises(ValueError, match="pairing"):
            Householder(pairing=bad)
    # Save / load with a trained-looking theta.
    inputs = keras.Input((3, 3, 6))
    hh = Householder(pairing="halves")
    model = keras.Model(inputs, hh(inputs))
    hh.theta.assign(np.array([0.3, 2.0, -1.0], "float32"))
    x = random_input((4, 3, 3, 6), seed=14)
    expected = helpers.to_numpy(model(x))
    loaded = helpers.save_and_load(model, tmp_path)
    np.testing.assert_array_equal(helpers.to_numpy(loaded(x)), expected)
    loaded_hh = [lyr for lyr in loaded.layers if isinstance(lyr, Householder)]
    assert loaded_hh[0].pairing == "halves"


def test_householder_halves_mixed_float16():
    x = random_input((4, 2, 2, 6), seed=15)
    expected = helpers.to_numpy(Householder(pairing="halves")(x))
    keras.config.set_dtype_policy("mixed_float16")
    layer = Householder(pairing="halves")
    y = layer(x)
    assert keras.backend.standardize_dtype(y.dtype) == "float16"
    assert keras.backend.standardize_dtype(layer.theta.dtype) == "float32"
    np.testing.assert_allclose(helpers.to_numpy(y), expected, atol=2e-3)


# ------------------------------------------------- invertible down/up sampling


def to_format(x_nchw, data_format):
    return x_nchw if data_format == CF else x_nchw.transpose(0, 2, 3, 1)


def to_nchw(x, data_format):
    return x if data_format == CF else x.transpose(0, 3, 1, 2)


def check_deel_lip_downsample(x_nchw, y_nchw, kernel_size):
    """deel-lip's check_downsample: output channels c k^2 + dx k + dy."""
    k = kernel_size
    index = 0
    for dx in range(k):
        for dy in range(k):
            np.testing.assert_array_equal(
                x_nchw[:, :, dx::k, dy::k], y_nchw[:, index :: k * k]
            )
            index += 1


@pytest.mark.parametrize("data_format", [CL, CF])
def test_down_sampling_pixel_unshuffle_matches_deel_lip(data_format):
    """deel-lip's test_invertible_downsample (smaller inputs)."""
    cases = [
        (np.arange(32, dtype="float32").reshape(1, 2, 4, 4), 2, (1, 8, 2, 2)),
        (random_input((3, 1, 16, 16)), 4, (3, 16, 4, 4)),
        (random_input((3, 4, 8, 8)), 2, (3, 16, 4, 4)),
    ]
    for x_nchw, k, expected_shape in cases:
        layer = InvertibleDownSampling(
            k, data_format=data_format, channel_order="pixel_unshuffle"
        )
        y = helpers.to_numpy(layer(to_format(x_nchw, data_format)))
        y_nchw = to_nchw(y, data_format)
        assert y_nchw.shape == expected_shape
        check_deel_lip_downsample(x_nchw, y_nchw, k)
    # The first case, written out (deel-lip's order on arange(32)).
    x = np.arange(32, dtype="float32").reshape(1, 2, 4, 4)
    layer = InvertibleDownSampling(
        2, data_format=data_format, channel_order="pixel_unshuffle"
    )
    y_nchw = to_nchw(
        helpers.to_numpy(layer(to_format(x, data_format))), data_format
    )
    np.testing.assert_array_equal(
        y_nchw[0, :, 0, 0], [0, 1, 4, 5, 16, 17, 20, 21]
    )


@pytest.mark.parametrize("data_format", [CL, CF])
def test_up_sampling_pixel_unshuffle_matches_deel_lip(data_format):
    """deel-lip's test_invertible_upsample (smaller inputs)."""
    x_nchw = random_input((3, 16, 4, 4), seed=1)
    for k, expected_shape in [(4, (3, 1, 16, 16)), (2, (3, 4, 8, 8))]:
        layer = InvertibleUpSampling(
            k, data_format=data_format, channel_order="pixel_unshuffle"
        )
        y = helpers.to_numpy(layer(to_format(x_nchw, data_format)))
        y_nchw = to_nchw(y, data_format)
        assert y_nchw.shape == expected_shape
        check_deel_lip_downsample(y_nchw, x_nchw, k)


def np_down_sampling(x_nchw, pool_size, channel_order):
    """Index formula of the docstring, one output entry at a time."""
    ph, pw = pool_size
    b, c, h, w = x_nchw.shape
    out = np.zeros((b, c * ph * pw, h // ph, w // pw), x_nchw.dtype)
    for a in range(ph):
        for col in range(pw):
            for ch in range(c):
                if channel_order == "space_to_depth":
                    depth = (a * pw + col) * c + ch
                else:
                    depth = ch * ph * pw + a * pw + col
                out[:, depth] = x_nchw[:, ch, a::ph, col::pw]
    return out


@pytest.mark.parametrize("channel_order", ORDERS)
@pytest.mark.parametrize("data_format", [CL, CF])
def test_down_and_up_sampling_are_inverse_permutations(
    data_format, channel_order
):
    for pool_size in [2, (2, 3)]:
        _check_inverse_permutations(pool_size, data_format, channel_order)


def _check_inverse_permutations(pool_size, data_format, channel_order):
    pool = (pool_size,) * 2 if isinstance(pool_size, int) else pool_size
    kwargs = {
        "pool_size": pool_size,
        "data_format": data_format,
        "channel_order": channel_order,
    }
    down = InvertibleDownSampling(**kwargs)
    up = InvertibleUpSampling(**kwargs)
    x_nchw = random_input((2, 3, 6, 6), seed=2)
    x = to_format(x_nchw, data_format)
    y = helpers.to_numpy(down(x))
    np.testing.assert_array_equal(
        to_nchw(y, data_format), np_down_sampling(x_nchw, pool, channel_order)
    )
    assert y.shape == down.compute_output_shape(x.shape)
    np.testing.assert_array_equal(helpers.to_numpy(up(y)), x)
    assert up.compute_output_shape(y.shape) == x.shape
    # And the other way round, from a random deep input.
    depth = 2 * pool[0] * pool[1]
    z = random_input(
        (2, 3, 2, depth) if data_format == CL else (2, depth, 3, 2), seed=3
    )
    up_z = helpers.to_numpy(InvertibleUpSampling(**kwargs)(z))
    down_up_z = InvertibleDownSampling(**kwargs)(up_z)
    np.testing.assert_array_equal(helpers.to_numpy(down_up_z), z)


def test_default_channel_order_is_unchanged():
    x_nchw = random_input((2, 3, 4, 6), seed=4)
    for data_format in [CL, CF]:
        y = helpers.to_numpy(
            InvertibleDownSampling((2, 3), data_format=data_format)(
                to_format(x_nchw, data_format)
            )
        )
        np.testing.assert_array_equal(
            to_nchw(y, data_format),
            np_down_sampling(x_nchw, (2, 3), "space_to_depth"),
        )
    assert InvertibleDownSampling(2).channel_order == "space_to_depth"
    assert InvertibleUpSampling(2).channel_order == "space_to_depth"


def test_down_and_up_sampling_jacobians_are_permutations():
    cases = []
    for data_format in [CL, CF]:
        for order in ORDERS:
            kwargs = {"data_format": data_format, "channel_order": order}
            cases += [
                (InvertibleDownSampling((2, 3), **kwargs), (4, 6, 2)),
                (InvertibleUpSampling((2, 3), **kwargs), (2, 1, 12)),
            ]
    for layer, shape in cases:
        data_format = layer.data_format
        if data_format == CF:
            shape = (shape[2], shape[0], shape[1])
        jac = helpers.linear_jacobian(layer, shape)
        n = int(np.prod(shape))
        assert jac.shape == (n, n)
        assert set(np.unique(jac)) == {0.0, 1.0}
        np.testing.assert_array_equal(jac.sum(axis=0), np.ones(n))
        np.testing.assert_array_equal(jac.sum(axis=1), np.ones(n))
        np.testing.assert_allclose(
            helpers.singular_values(jac), np.ones(n), rtol=0, atol=1e-12
        )
        assert layer.lipschitz_upper_bound() == 1.0


def test_up_sampling_config_registration_and_save_load(tmp_path):
    layer = InvertibleUpSampling(
        (2, 1), data_format=CF, channel_order="pixel_unshuffle", name="up"
    )
    config = layer.get_config()
    assert config["channel_order"] == "pixel_unshuffle"
    assert config["pool_size"] == (2, 1)
    revived = InvertibleUpSampling.from_config(config)
    assert revived.get_config() == config
    assert set(dir(layer)) == set(dir(revived))
    assert (
        keras.saving.get_registered_object(
            "keras_lipschitz>InvertibleUpSampling"
        )
        is InvertibleUpSampling
    )
    down_config = InvertibleDownSampling(
        2, channel_order="pixel_unshuffle"
    ).get_config()
    assert down_config["channel_order"] == "pixel_unshuffle"

    inputs = keras.Input((4, 6, 3))
    down = InvertibleDownSampling(
        2, data_format=CL, channel_order="pixel_unshuffle"
    )
    mixed = keras.layers.Dense(12, use_bias=False)(down(inputs))
    up = InvertibleUpSampling(
        2, data_format=CL, channel_order="pixel_unshuffle"
    )
    outputs = up(mixed)
    assert tuple(outputs.shape) == (None, 4, 6, 3)
    model = keras.Model(inputs, outputs)
    x = random_input((2, 4, 6, 3), seed=5)
    expected = helpers.to_numpy(model(x))
    loaded = helpers.save_and_load(model, tmp_path)
    np.testing.assert_array_equal(helpers.to_numpy(loaded(x)), expected)
    orders = {
        type(lyr).__name__: lyr.channel_order
        for lyr in loaded.layers
        if hasattr(lyr, "channel_order")
    }
    assert orders == {
        "InvertibleDownSampling": "pixel_unshuffle",
        "InvertibleUpSampling": "pixel_unshuffle",
    }


def test_down_and_up_sampling_reject_bad_arguments():
    for cls in [InvertibleDownSampling, InvertibleUpSampling]:
        for bad in ["deel_lip", "torch", None, 1]:
            with pytest.raises(ValueError, match="channel_order"):
                cls(2, channel_order=bad)
        with pytest.raises(ValueError, match="pool_size"):
            cls(0)
        with pytest.raises(ValueError, match="pool_size"):
            cls((2, 2, 2))
        with pytest.raises(ValueError, match="data_format"):
            cls(2, data_format="channels_middle")
    with pytest.raises(ValueError, match=r"pool_size.*channels=6"):
        InvertibleUpSampling(2, data_format=CL)(np.zeros((1, 2, 2, 6)))
    with pytest.raises(ValueError, match=r"pool_size.*channels=2"):
        InvertibleUpSampling((1, 3), data_format=CF)(np.zeros((1, 2, 2, 2)))
    with pytest.raises(ValueError, match=r"known H"):
        InvertibleUpSampling(2, data_format=CL)(keras.Input((None, 2, 4)))
    with pytest.raises(ValueError, match=r"known channel"):
        InvertibleUpSampling(2, data_format=CL)(keras.Input((2, 2, None)))


# ------------------------------------------------------------------ MaxMin


def np_max_min(x, axis):
    x = np.asarray(x, np.float64)
    return np.concatenate([np.maximum(x, 0), np.maximum(-x, 0)], axis=axis)


def test_max_min_matches_numpy():
    for shape, axis in [((5, 7), -1), ((3, 4, 4, 6), -1), ((3, 6, 4, 4), 1)]:
        x = random_input(shape, seed=20)
        layer = MaxMin(axis=axis)
        y = helpers.to_numpy(layer(x))
        np.testing.assert_array_equal(y, np_max_min(x, axis))
        expected_shape = list(shape)
        expected_shape[axis] *= 2
        assert y.shape == tuple(expected_shape)
        assert layer.compute_output_shape(shape) == tuple(expected_shape)
    # The positive parts first, then the negative parts (deel-lip's order).
    np.testing.assert_array_equal(
        helpers.to_numpy(MaxMin()(np.array([[3.0, -1.0, 0.5]], "float32"))),
        [[3.0, 0.0, 0.5, 0.0, 1.0, 0.0]],
    )


def test_max_min_is_1_lipschitz_and_gradient_norm_preserving():
    layer = MaxMin()
    rng = np.random.default_rng(21)
    worst = 0.0
    for _ in range(4):
        # Away from 0, where MaxMin is linear within the step.
        x = rng.normal(size=8)
        x = (np.sign(x) * (np.abs(x) + 0.1)).astype("float32")
        jac = finite_difference_jacobian(layer, x, step=1e-2)
        assert jac.shape == (16, 8)
        sigma = helpers.singular_values(jac)
        worst = max(worst, float(np.max(np.abs(sigma - 1.0))))
    assert worst <= helpers.NORM_TOLERANCE
    x = 3.0 * random_input((128, 8), seed=22)
    y = helpers.to_numpy(layer(x))
    np.testing.assert_allclose(
        np.linalg.norm(y, axis=1), np.linalg.norm(x, axis=1), rtol=1e-6
    )
    for scale in [1e-2, 1.0, 1e2]:
        ratio = pair_ratio(layer, (8,), scale=scale, seed=23)
        assert ratio <= 1.0 + helpers.NORM_TOLERANCE, (scale, ratio)
    # Not an isometry globally: pairs across 0 are contracted.
    a = np.array([[1.0, 0.0]], "float32")
    b = np.array([[-1.0, 0.0]], "float32")
    two_channels = MaxMin()
    distance = np.linalg.norm(
        helpers.to_numpy(two_channels(a)) - helpers.to_numpy(two_channels(b))
    )
    assert math.isclose(distance, math.sqrt(2.0), rel_tol=1e-6)
    assert layer.lipschitz_upper_bound() == 1.0


def test_max_min_unknown_channels_config_save_and_mixed_precision(tmp_path):
    inputs = keras.Input((None, None, None))
    outputs = MaxMin()(inputs)
    assert tuple(outputs.shape) == (None, None, None, None)
    layer = MaxMin(axis=1, name="mm")
    config = layer.get_config()
    assert config["axis"] == 1
    revived = MaxMin.from_config(config)
    assert revived.get_config() == config
    assert set(dir(layer)) == set(dir(revived))
    with pytest.raises(ValueError, match="axis"):
        MaxMin(axis="channels_last")
    with pytest.raises(ValueError, match="axis"):
        MaxMin(axis=0)(np.zeros((2, 3), "float32"))

    inputs = keras.Input((4, 4, 3))
    model = keras.Model(
        inputs, keras.layers.Dense(2)(MaxMin()(keras.layers.Dense(3)(inputs)))
    )
    assert tuple(model.output.shape) == (None, 4, 4, 2)
    x = random_input((2, 4, 4, 3), seed=24)
    expected = helpers.to_numpy(model(x))
    loaded = helpers.save_and_load(model, tmp_path)
    np.testing.assert_array_equal(helpers.to_numpy(loaded(x)), expected)
    assert any(isinstance(lyr, MaxMin) for lyr in loaded.layers)

    keras.config.set_dtype_policy("mixed_float16")
    y = MaxMin()(x)
    assert keras.backend.standardize_dtype(y.dtype) == "float16"
    np.testing.assert_allclose(
        helpers.to_numpy(y), np_max_min(x, -1), rtol=1e-3
    )
