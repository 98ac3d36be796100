"""The README's quick-start snippet runs as written (one backend only).

The snippet is taken from README.md (the Python block that compiles with
`CLL.for_model`) and executed with small random MNIST-shaped data bound to
`x_train, y_train, x_test, y_test`; it must train, and print certified
accuracies that are fractions, non-increasing in ε. Like the examples, it
is backend-neutral and runs on torch only (eager, the fastest start).
"""

import os
import re

import keras
import numpy as np
import pytest

README = os.path.join(os.path.dirname(__file__), "..", "README.md")

pytestmark = pytest.mark.skipif(
    keras.config.backend() != "torch",
    reason="the README snippet is run on the torch backend only",
)


def _quick_start_block():
    with open(README, encoding="utf-8") as f:
        text = f.read()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    matching = [b for b in blocks if "CLL.for_model" in b]
    assert len(matching) == 1, "expected one quick-start block with CLL"
    return matching[0]


def test_readme_quick_start_runs(monkeypatch, capsys):
    code = _quick_start_block()
    # The snippet picks a backend through the environment: keep ours (this
    # process's Keras is already imported) and restore it afterwards.
    monkeypatch.setenv("KERAS_BACKEND", keras.config.backend())
    rng = np.random.default_rng(0)
    namespace = {
        "x_train": rng.random((64, 28, 28, 1), dtype=np.float32),
        "y_train": rng.integers(0, 10, 64),
        "x_test": rng.random((32, 28, 28, 1), dtype=np.float32),
        "y_test": rng.integers(0, 10, 32),
    }
    exec(compile(code, "README.md", "exec"), namespace)
    model = namespace["model"]
    iterations = keras.ops.convert_to_numpy(model.optimizer.iterations)
    assert int(iterations) == 6
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    values = [float(v) for v in re.findall(r"\d+\.\d*(?:e-?\d+)?", printed)]
    assert len(values) >= 3, printed
    accuracies = values[-3:]
    assert all(0.0 <= a <= 1.0 for a in accuracies), printed
    assert all(a >= b for a, b in zip(accuracies, accuracies[1:])), printed
