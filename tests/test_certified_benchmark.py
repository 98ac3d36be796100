"""`benchmarks/certified.py` trains for its budget and reports sound numbers;
PGD inside the certified radii of the recommended recipe's model fails.

The benchmark runs in subprocesses on the backend of this test run
(`KERAS_BACKEND` is passed through), on a synthetic MNIST-format `.npz` of
a few hundred images written to a temporary directory, so it needs neither
the shared MNIST file nor a network. Each run has a 5 s budget and
certifies 64 test images; the two recipes run at the same time (most of
each run is single-threaded compilation and bound computation). The
checks are about the JSON line the benchmark ends with: its keys and
types, a training time that reaches the budget and ends with the first
step to finish after it (the budget callback), and certified accuracies
that are fractions, at most the clean accuracy and non-increasing in ε.
Accuracy itself is meaningless on random images and is not checked.
"""

import json
import math
import os
import subprocess
import sys

import argparse

import keras
import numpy as np
import pytest

import keras_lipschitz
from keras_lipschitz import attacks

SCRIPT = os.path.join(
    os.path.dirname(__file__), "..", "benchmarks", "certified.py"
)
EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")
SHARED_MNIST = os.path.join(
    os.path.dirname(__file__), "..", "..", "shared", "data", "mnist.npz"
)
RECIPES = ("deel_tutorial", "recommended")
BUDGET_S = 5.0
TEST_SAMPLES = 64
TRAIN_SAMPLES = 300
BATCH_SIZE = 256  # both recipes
MNIST_L2_EPSILONS = {0.5, 1.0, 1.58}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """`{recipe: parsed JSON line}`, both benchmark runs started at once."""
    rng = np.random.default_rng(0)
    data = tmp_path_factory.mktemp("data") / "mnist.npz"
    np.savez(
        data,
        x_train=rng.integers(0, 256, (TRAIN_SAMPLES, 28, 28), dtype=np.uint8),
        y_train=rng.integers(0, 10, TRAIN_SAMPLES).astype(np.uint8),
        x_test=rng.integers(0, 256, (TEST_SAMPLES, 28, 28), dtype=np.uint8),
        y_test=rng.integers(0, 10, TEST_SAMPLES).astype(np.uint8),
    )
    env = dict(
        os.environ, KERAS_BACKEND=keras.config.backend(),
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    procs = {
        recipe: subprocess.Popen(
            [
                sys.executable, SCRIPT,
                "--task", "mnist_l2",
                "--recipe", recipe,
                "--budget-seconds", str(BUDGET_S),
                "--smoke",
                "--test-samples", str(TEST_SAMPLES),
                "--data", str(data),
                "--verbose", "0",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for recipe in RECIPES
    }
    results = {}
    for recipe, proc in procs.items():
        try:
            stdout, stderr = proc.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        if proc.returncode != 0:
            results[recipe] = (
                f"exit code {proc.returncode}\nstdout:\n{stdout[-3000:]}\n"
                f"stderr:\n{stderr[-3000:]}"
            )
        else:
            results[recipe] = json.loads(stdout.strip().splitlines()[-1])
    return results


def _result(runs, recipe):
    result = runs[recipe]
    assert isinstance(result, dict), result  # else the failure's output
    return result


@pytest.mark.parametrize("recipe", RECIPES)
def test_json_line_keys_and_types(recipe, runs):
    result = _result(runs, recipe)
    for key in ("task", "recipe", "backend", "budget_s", "train_s",
                "epochs", "clean", "certified"):
        assert key in result, result
    assert result["task"] == "mnist_l2"
    assert result["recipe"] == recipe
    assert result["backend"] == keras.config.backend()
    assert result["budget_s"] == BUDGET_S
    for key in ("train_s", "epochs", "clean"):
        assert isinstance(result[key], (int, float)), (key, result)
        assert not isinstance(result[key], bool)
    assert isinstance(result["certified"], dict)
    assert all(isinstance(k, str) for k in result["certified"])
    assert all(isinstance(v, float) for v in result["certified"].values())
    assert {float(k) for k in result["certified"]} == MNIST_L2_EPSILONS


@pytest.mark.parametrize("recipe", RECIPES)
def test_training_stops_at_the_budget(recipe, runs):
    result = _result(runs, recipe)
    # fit is given 10**6 epochs: only the budget stops it, at the end of
    # the first step that ends after it. So every step but the last ended
    # before the budget; the last one may even have begun after it when
    # setup alone spent the budget (model construction and the first
    # step's compilation take more than 5 s on JAX on a loaded 2-core
    # machine), and then it is the only step.
    assert result["steps"] >= 1
    assert BUDGET_S <= result["train_s"] <= BUDGET_S + 120.0, result
    if result["steps"] > 1:
        assert result["last_step_start_s"] < BUDGET_S, result
    assert result["last_step_start_s"] < result["train_s"]
    steps_per_epoch = math.ceil(TRAIN_SAMPLES / BATCH_SIZE)
    assert result["epochs"] == pytest.approx(
        result["steps"] / steps_per_epoch, abs=1e-4
    )


@pytest.mark.parametrize("recipe", RECIPES)
def test_certified_accuracy_is_sound_in_shape(recipe, runs):
    result = _result(runs, recipe)
    clean = result["clean"]
    assert 0.0 <= clean <= 1.0
    # Accuracies are fractions of the 64 test images.
    assert clean * TEST_SAMPLES == pytest.approx(round(clean * TEST_SAMPLES))
    by_eps = sorted(
        (float(k), v) for k, v in result["certified"].items()
    )
    for _, acc in by_eps:
        assert 0.0 <= acc <= clean
    values = [acc for _, acc in by_eps]
    assert all(a >= b for a, b in zip(values, values[1:])), by_eps


def _digits_or_blobs(n_train, n_test):
    """The first MNIST images when the shared file is present, else 28x28
    images of ten bright blobs in different places (learnable, so the
    trained model certifies some points)."""
    if os.path.isfile(SHARED_MNIST):
        with np.load(SHARED_MNIST) as f:
            x = np.concatenate([f["x_train"][:n_train], f["x_test"][:n_test]])
            y = np.concatenate([f["y_train"][:n_train], f["y_test"][:n_test]])
        x = (x.astype("float32") / 255.0)[..., None]
    else:
        rng = np.random.default_rng(0)
        y = rng.integers(0, 10, n_train + n_test)
        x = 0.1 * rng.random((len(y), 28, 28, 1)).astype("float32")
        for i, label in enumerate(y):
            r, c = 4 + 6 * (label // 4), 2 + 6 * (label % 4)
            x[i, r : r + 5, c : c + 5, 0] += 0.9
    y = y.astype("int64")
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def test_pgd_inside_certified_radii_of_the_recommended_recipe():
    """The recommended recipe's model, trained two epochs on 2,048 images:
    PGD at 0.999 of each certified radius flips no certified prediction,
    while a larger budget does flip some (so the attack can succeed)."""
    sys.path.insert(0, EXAMPLES)
    try:
        import recipes
    finally:
        sys.path.remove(EXAMPLES)
    keras.utils.set_random_seed(0)
    x, y, x_test, y_test = _digits_or_blobs(2048, 128)
    task = recipes.TASKS["mnist_l2"]
    recipe = recipes.get_recipe("mnist_l2", "recommended")(
        task, argparse.Namespace(seed=0, progress=None, overrides={})
    )
    model = recipe.model
    model.compile(**recipe.compile_kwargs)
    model.fit(x, y, epochs=2, verbose=0, **recipe.fit_kwargs)
    radius = keras_lipschitz.certify(model, x_test, y_test)
    certified = radius > 0
    assert certified.sum() >= 20, "too few certified points to test"
    plain = keras_lipschitz.vanilla_export(model)
    np.testing.assert_allclose(
        np.asarray(keras.ops.convert_to_numpy(plain(x_test[:8]))),
        np.asarray(keras.ops.convert_to_numpy(model(x_test[:8]))),
        atol=1e-4,
    )
    _, success = attacks.pgd_l2(
        plain, x_test[certified], y_test[certified],
        0.999 * radius[certified], steps=30, restarts=2,
    )
    assert not np.any(success), "an attack beat a certificate"
    _, success = attacks.pgd_l2(
        plain, x_test[certified], y_test[certified],
        4.0 * radius[certified] + 2.0, steps=30,
    )
    assert np.any(success), "the attack is too weak to test the certificate"
