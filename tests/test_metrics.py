"""Certification metrics against NumPy, eagerly and in compiled evaluate."""

import math

import keras
import numpy as np
import pytest

from keras_lipschitz import metrics
from tests.helpers import to_numpy

SCALE = {"l2": math.sqrt(2.0), "linf": 2.0}


def np_margin(labels, z):
    z = np.asarray(z, np.float64)
    idx = np.arange(len(labels))
    others = z.copy()
    others[idx, labels] = -np.inf
    return z[idx, labels] - others.max(-1)


def np_radius(labels, z, norm, lipschitz):
    margin = np_margin(labels, z)
    ok = (margin > 0) & ~np.isnan(z).any(-1)
    return np.where(ok, margin / (SCALE[norm] * lipschitz), 0.0)


def np_certified(labels, z, epsilon, norm, lipschitz):
    margin = np_margin(labels, z)
    ok = (margin > SCALE[norm] * lipschitz * epsilon) & (margin > 0)
    return (ok & ~np.isnan(z).any(-1)).astype(float)


def data(n=12, classes=5, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, size=n)
    z = rng.normal(size=(n, classes)).astype("float32")
    # Make about half the samples correct with various margins.
    z[: n // 2][np.arange(n // 2), labels[: n // 2]] += rng.uniform(
        0.0, 3.0, size=n // 2
    )
    return labels, z


@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("label_kind", ["one_hot", "sparse", "sparse_b1"])
def test_functions_match_numpy(norm, label_kind):
    labels, z = data()
    y = {
        "one_hot": np.eye(5, dtype="float32")[labels],
        "sparse": labels,
        "sparse_b1": labels.reshape(-1, 1),
    }[label_kind]
    for lipschitz in (1.0, 1.7):
        np.testing.assert_allclose(
            to_numpy(metrics.certified_radius(y, z, norm, lipschitz)),
            np_radius(labels, z, norm, lipschitz),
            rtol=1e-5,
            atol=1e-6,
        )
        for epsilon in (0.0, 0.1, 0.5):
            expected = np_certified(labels, z, epsilon, norm, lipschitz)
            np.testing.assert_array_equal(
                to_numpy(
                    metrics.certified_accuracy(y, z, epsilon, norm, lipschitz)
                ),
                expected,
            )
    assert 0 < np_certified(labels, z, 0.1, norm, 1.0).sum() < len(labels)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_ties_are_not_certified(norm):
    lipschitz, epsilon = 1.3, 0.2
    threshold = np.float32(SCALE[norm] * lipschitz * epsilon)
    above = np.nextafter(threshold, np.float32(np.inf))
    z = np.array(
        [
            [threshold, 0.0, -1.0],  # margin == threshold
            [above, 0.0, -1.0],  # just above
            [1.0, 1.0, 0.0],  # tie between the top logits
            [0.0, 1.0, 0.0],  # misclassified
        ],
        "float32",
    )
    labels = np.array([0, 0, 0, 0])
    accuracy = to_numpy(
        metrics.certified_accuracy(labels, z, epsilon, norm, lipschitz)
    )
    np.testing.assert_array_equal(accuracy, [0.0, 1.0, 0.0, 0.0])
    # epsilon = 0: a tie is not a correct prediction either.
    np.testing.assert_array_equal(
        to_numpy(metrics.certified_accuracy(labels, z, 0.0, norm)),
        [1.0, 1.0, 0.0, 0.0],
    )
    radius = to_numpy(metrics.certified_radius(labels, z, norm, lipschitz))
    assert radius[2] == 0.0 and radius[3] == 0.0
    np.testing.assert_allclose(radius[0], epsilon, rtol=1e-6)


def test_nan_logits_are_not_certified():
    z = np.array(
        [[5.0, np.nan, 0.0], [np.nan, 0.0, 0.0], [5.0, 0.0, 0.0]], "float32"
    )
    labels = np.array([0, 0, 0])
    for norm in ("l2", "linf"):
        np.testing.assert_array_equal(
            to_numpy(metrics.certified_accuracy(labels, z, 0.1, norm)),
            [0.0, 0.0, 1.0],
        )
        radius = to_numpy(metrics.certified_radius(labels, z, norm))
        np.testing.assert_allclose(radius, [0.0, 0.0, 5.0 / SCALE[norm]])
    metric = metrics.MeanCertifiedRadius(norm="linf")
    metric.update_state(labels, z)
    assert np.isfinite(float(metric.result()))


def test_metric_objects_accumulate_with_sample_weight():
    labels, z = data(n=16)
    weights = np.random.default_rng(1).uniform(0.0, 2.0, size=16)
    accuracy = metrics.CertifiedAccuracy(0.1, norm="l2", lipschitz=1.2)
    radius = metrics.MeanCertifiedRadius(norm="linf", lipschitz=0.8)
    for part in (slice(0, 7), slice(7, 16)):
        accuracy.update_state(
            labels[part], z[part], sample_weight=weights[part]
        )
        radius.update_state(labels[part], z[part], sample_weight=weights[part])
    ref_acc = np_certified(labels, z, 0.1, "l2", 1.2)
    ref_rad = np_radius(labels, z, "linf", 0.8)
    np.testing.assert_allclose(
        float(to_numpy(accuracy.result())),
        (weights * ref_acc).sum() / weights.sum(),
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        float(to_numpy(radius.result())),
        (weights * ref_rad).sum() / weights.sum(),
        rtol=1e-5,
    )
    accuracy.reset_state()
    assert float(to_numpy(accuracy.result())) == 0.0


@pytest.mark.parametrize(
    "metric",
    [
        metrics.CertifiedAccuracy(0.25, norm="linf", lipschitz=2.0, name="a"),
        metrics.MeanCertifiedRadius(norm="l2", lipschitz=0.5),
    ],
    ids=lambda m: type(m).__name__,
)
def test_config_round_trip(metric):
    config = metric.get_config()
    revived = type(metric).from_config(config)
    assert revived.get_config() == config
    serialized = keras.saving.serialize_keras_object(metric)
    assert serialized["registered_name"] == (
        f"keras_lipschitz>{type(metric).__name__}"
    )
    revived = keras.saving.deserialize_keras_object(serialized)
    assert revived.get_config() == config
    labels, z = data()
    metric.update_state(labels, z)
    revived.update_state(labels, z)
    assert float(to_numpy(metric.result())) == float(to_numpy(revived.result()))


def test_metrics_in_compiled_evaluate():
    """Inside the jitted test step (TF XLA, JAX jit, torch dynamo)."""
    labels, z = data(n=16)
    z[3, 1] = np.nan
    inputs = keras.Input((5,))
    model = keras.Model(inputs, keras.layers.Identity()(inputs))
    model.compile(
        loss="categorical_crossentropy",
        metrics=[
            metrics.CertifiedAccuracy(0.1, norm="l2", name="ca_l2"),
            metrics.CertifiedAccuracy(0.1, norm="linf", name="ca_linf"),
            metrics.MeanCertifiedRadius(norm="l2", lipschitz=2.0),
        ],
        jit_compile=True,
    )
    results = model.evaluate(
        z, np.eye(5)[labels], batch_size=16, verbose=0, return_dict=True
    )
    np.testing.assert_allclose(
        results["ca_l2"],
        np_certified(labels, z, 0.1, "l2", 1.0).mean(),
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        results["ca_linf"],
        np_certified(labels, z, 0.1, "linf", 1.0).mean(),
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        results["mean_certified_radius"],
        np_radius(labels, z, "l2", 2.0).mean(),
        rtol=1e-5,
    )


@pytest.mark.parametrize(
    "factory, match",
    [
        (lambda: metrics.CertifiedAccuracy(-0.1), "epsilon"),
        (lambda: metrics.CertifiedAccuracy(float("nan")), "epsilon"),
        (lambda: metrics.CertifiedAccuracy(0.1, norm="l1"), "norm"),
        (lambda: metrics.MeanCertifiedRadius(norm="l3"), "norm"),
        (lambda: metrics.MeanCertifiedRadius(lipschitz=0.0), "lipschitz"),
        (lambda: metrics.certified_radius([0], [[1.0, 0.0]], "x"), "norm"),
    ],
)
def test_bad_parameters(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()


def test_bad_labels():
    labels, z = data()
    metric = metrics.CertifiedAccuracy(0.1)
    with pytest.raises(ValueError, match="batch size"):
        metric.update_state(labels[:-1], z)
    with pytest.raises(ValueError, match="y_true"):
        metric.update_state(np.eye(6)[labels], z)
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        metric.update_state(np.full_like(labels, 5), z)
    with pytest.raises(ValueError, match="at least 2 classes"):
        metric.update_state(np.zeros(4), np.ones((4, 1)))
