"""The interval-bound ℓ∞ certificate (`certification.linf_box`): boxes
contain every sampled output, radii are never below the margin / head IBP
ones, clipping to the input range only helps, PGD inside the range and the
radius never flips a prediction, and bad input is refused."""

import keras
import numpy as np
import pytest

import keras_lipschitz as kl
from keras_lipschitz.attacks import pgd_linf
from keras_lipschitz.certification import _linf
from keras_lipschitz.certification import linf_box
from tests.helpers import to_numpy
from tests.test_linf import trained_net

CASES = [(None, "linf"), (None, "sortnet"), (8, "linf")]
IDS = ["linf", "sortnet", "linf+mlp_head"]
RANGE = (-1.0, 1.0)


def _data(head_units, neuron):
    model, x, y = trained_net(head_units, neuron)
    return model, np.clip(x, *RANGE), y


@pytest.mark.parametrize("head_units, neuron", CASES, ids=IDS)
def test_boxes_contain_every_sampled_output(head_units, neuron):
    model, x, _ = _data(head_units, neuron)
    body, _ = _linf.split_linf_model(model)
    rng = np.random.default_rng(0)
    for eps in (0.05, 0.3):
        lower = np.clip(x - eps, *RANGE).astype(np.float64)
        upper = np.clip(x + eps, *RANGE).astype(np.float64)
        low, high = linf_box.box_bounds(body, lower, upper)
        assert np.all(low <= high)
        for k in range(16):
            # Corners (where the extremes of |x - w| are) and interiors.
            t = rng.integers(0, 2, size=x.shape) if k % 2 else rng.uniform(
                size=x.shape
            )
            h = (lower + t * (upper - lower)).astype("float32")
            for layer in body:
                h = layer(h, training=False)
            h = to_numpy(h).astype(np.float64)
            assert np.all(h >= low) and np.all(h <= high)
        # The boxes are not vacuous: within 2 eps of the outputs' spread.
        assert np.max(high - low) <= 2 * eps + 1e-4


@pytest.mark.parametrize("head_units, neuron", CASES, ids=IDS)
def test_radii_dominate_the_default_certificate(head_units, neuron):
    model, x, y = _data(head_units, neuron)
    default = kl.certify(model, x, y, norm="linf")
    wide, name = kl.certify(
        model, x, y, norm="linf", input_range=(-100.0, 100.0),
        return_method=True,
    )
    assert name == "linf_box"
    clipped = kl.certify(model, x, y, norm="linf", input_range=RANGE)
    assert np.all(wide >= default)
    # Clipping to the range can only shrink the boxes (the radius search
    # is within 2^-12 of the interval radius).
    assert np.all(clipped >= wide * (1 - 2.0**-11))
    assert np.all((default > 0) == (wide > 0))
    # The interval bounds certify just inside every radius (open balls;
    # 1 % in, which dwarfs the float32 widening for radii above 0.05).
    sizable = np.isfinite(clipped) & (clipped > 0.05)
    assert sizable.sum() >= 16
    ok = linf_box.certified_at(
        model, x[sizable], y[sizable], 0.99 * clipped[sizable],
        input_range=RANGE,
    )
    assert np.all(ok)
    # ... and certified_accuracy with a range counts those passes.
    for eps in (0.05, 0.2):
        expected = np.mean(
            linf_box.certified_at(model, x, y, eps, input_range=RANGE)
        )
        got = kl.certified_accuracy(
            model, x, y, eps, norm="linf", input_range=RANGE
        )[0]
        assert got == pytest.approx(expected)
        assert got >= np.mean(clipped > eps) - 1e-12


@pytest.mark.parametrize("head_units, neuron", CASES, ids=IDS)
def test_pgd_in_the_range_never_beats_the_certificate(head_units, neuron):
    model, x, y = _data(head_units, neuron)
    radius = kl.certify(model, x, y, norm="linf", input_range=RANGE)
    certified = radius > 0
    assert certified.sum() >= 16
    eps = np.minimum(radius[certified], RANGE[1] - RANGE[0]) * 0.999
    x_adv, success = pgd_linf(
        model, x[certified], y[certified], eps, steps=8, restarts=2,
        input_range=RANGE,
    )
    assert not success.any()
    assert np.all((x_adv >= RANGE[0]) & (x_adv <= RANGE[1]))
    # The attack can flip points at a large radius inside the range.
    _, success = pgd_linf(
        model, x[certified], y[certified], 2.0, steps=8, restarts=3,
        input_range=RANGE,
    )
    assert success.mean() > 0.5


def test_bad_input_range():
    model, x, y = trained_net()
    for bad in ((1.0, 0.0), (0.0, np.inf), "01", (0.0,)):
        with pytest.raises(ValueError, match="`input_range`"):
            kl.certify(model, x, y, norm="linf", input_range=bad)
    with pytest.raises(ValueError, match="`input_range`"):
        kl.certify(model, x, y, norm="l2", input_range=(0.0, 1.0))
    with pytest.raises(ValueError, match="`epsilon`"):
        linf_box.certified_at(model, x, y, -0.1, input_range=(0.0, 1.0))
    # A model outside the ℓ∞ family is refused as by the other ℓ∞
    # certificates.
    plain = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="ℓ∞"):
        kl.certify(plain, x, y, norm="linf", input_range=(0.0, 1.0))
