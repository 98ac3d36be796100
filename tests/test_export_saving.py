"""`vanilla_export` and `.keras` saving, within and across backends."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_lipschitz
from keras_lipschitz import layers
from tests import helpers
from tests import model_zoo

BUILDERS = [model_zoo.functional_model, model_zoo.sequential_model]
STATELESS = (
    layers.GroupSort,
    layers.FullSort,
    layers.Householder,
    layers.ScaledL2NormPooling2D,
    layers.ScaledAveragePooling2D,
    layers.ScaledGlobalAveragePooling2D,
    layers.ScaledGlobalL2NormPooling2D,
    layers.InvertibleDownSampling,
)
PLAIN = (
    keras.layers.InputLayer,
    keras.layers.Dense,
    keras.layers.Conv2D,
    keras.layers.Add,
    keras.layers.Flatten,
)


def _outputs(model, x):
    return helpers.to_numpy(model(x, training=False))


@pytest.mark.parametrize("builder", BUILDERS)
def test_vanilla_export_matches_and_is_plain(builder):
    model = model_zoo.train_a_little(builder())
    exported = keras_lipschitz.vanilla_export(model)
    x = model_zoo.probe_inputs()
    np.testing.assert_allclose(
        _outputs(exported, x), _outputs(model, x), atol=1e-5, rtol=0
    )
    assert exported is not model
    for layer in exported.layers:
        assert isinstance(layer, PLAIN + STATELESS), type(layer).__name__
        assert not layer.non_trainable_weights, layer.name
    # Constrained layers became plain Dense / Conv2D.
    kinds = {type(layer).__name__ for layer in exported.layers}
    assert {"Dense", "Conv2D"} <= kinds


def test_vanilla_export_kernels_keep_the_guarantee():
    model = model_zoo.train_a_little(model_zoo.sequential_model())
    exported = keras_lipschitz.vanilla_export(model)
    originals = {layer.name: layer for layer in model.layers}
    for layer in exported.layers:
        if isinstance(layer, keras.layers.Dense):
            source = originals[layer.name]
            np.testing.assert_allclose(
                helpers.to_numpy(layer.kernel),
                source.effective_kernel(),
                atol=1e-7,
            )


def test_vanilla_export_requires_a_built_model():
    model = keras.Sequential([layers.SpectralDense(2)])
    with pytest.raises(ValueError, match="built"):
        keras_lipschitz.vanilla_export(model)
    with pytest.raises(ValueError, match="`model`"):
        keras_lipschitz.vanilla_export(layers.SpectralDense(2))


@pytest.mark.parametrize("builder", BUILDERS)
def test_keras_file_round_trip(builder, tmp_path):
    model = model_zoo.train_a_little(builder())
    x = model_zoo.probe_inputs()
    loaded = helpers.save_and_load(model, tmp_path)
    np.testing.assert_allclose(
        _outputs(loaded, x), _outputs(model, x), atol=1e-6, rtol=0
    )
    for old, new in zip(model.layers, loaded.layers):
        assert type(old) is type(new)
        for w_old, w_new in zip(old.weights, new.weights):
            np.testing.assert_array_equal(
                helpers.to_numpy(w_old), helpers.to_numpy(w_new)
            )
        if hasattr(old, "lipschitz_upper_bound"):
            assert new.lipschitz_upper_bound() == pytest.approx(
                old.lipschitz_upper_bound(), rel=1e-9
            )
    # Training continues from the restored state.
    model_zoo.train_a_little(loaded, steps=1)


def test_exported_model_round_trips(tmp_path):
    model = model_zoo.train_a_little(model_zoo.functional_model())
    exported = keras_lipschitz.vanilla_export(model)
    x = model_zoo.probe_inputs()
    loaded = helpers.save_and_load(exported, tmp_path)
    np.testing.assert_allclose(
        _outputs(loaded, x), _outputs(model, x), atol=1e-5, rtol=0
    )


OTHER_BACKEND = {"tensorflow": "jax", "jax": "torch", "torch": "tensorflow"}


def test_model_saved_under_another_backend_loads(tmp_path):
    other = OTHER_BACKEND[keras.config.backend()]
    try:
        __import__({"tensorflow": "tensorflow"}.get(other, other))
    except ImportError:
        pytest.skip(f"backend {other} is not installed")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, KERAS_BACKEND=other)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.save_model_for_other_backend",
            str(tmp_path),
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"saved with {other}" in result.stdout
    model = keras.saving.load_model(str(tmp_path / "model.keras"))
    x = np.load(tmp_path / "x.npy")
    np.testing.assert_allclose(
        _outputs(model, x), np.load(tmp_path / "y.npy"), atol=1e-5, rtol=0
    )
