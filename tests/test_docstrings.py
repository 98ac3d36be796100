"""Runs the `>>>` examples of every public module's docstrings."""

import doctest
import importlib
import pkgutil

import pytest

import keras_lipschitz

MODULES = sorted(
    name
    for _, name, _ in pkgutil.walk_packages(
        keras_lipschitz.__path__, prefix="keras_lipschitz."
    )
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} failing example(s) in {name}"
