"""The registry of deel-lip names, read by `docs/gen_migration_table.py`.

Every public name of the compat package is declared with `maps_to`, which
records the deel-lip module, the keras-lipschitz object it returns and how
the arguments and semantics map. `docs/migration.md`'s tables are generated
from this registry, and a test fails when the file drifts from it.
"""

# (deel-lip module, deel-lip name) -> entry dict, in declaration order.
REGISTRY = {}

# deel-lip's default `reduction` is Keras 2's "auto"; Keras 3 calls it this.
_KERAS3_REDUCTIONS = {"auto": "sum_over_batch_size"}


def maps_to(module, target, notes="", name=None, status="exact"):
    """Registers a compat name; returns the decorated object unchanged.

    Args:
        module: deel-lip module (`"layers"`, `"losses"`, ...).
        target: the keras-lipschitz object returned, as text.
        notes: how arguments and behaviour map (Markdown).
        name: deel-lip name (default: the object's `__name__`).
        status: `"exact"` (same numbers), `"sound"` (deliberately
            different where deel-lip is unsound), `"adapted"` (same maths,
            documented differences) or `"missing"` (raises).
    """

    def register(obj):
        key = (module, name or obj.__name__)
        REGISTRY[key] = {
            "module": module,
            "name": key[1],
            "target": target,
            "notes": " ".join(notes.split()),
            "status": status,
        }
        return obj

    return register


def alias(module, name, obj):
    """Registers `obj` (already registered elsewhere) under another module."""
    for entry in list(REGISTRY.values()):
        if entry["name"] == getattr(obj, "__name__", name):
            REGISTRY[(module, name)] = dict(entry, module=module, name=name)
            return obj
    raise KeyError(name)


def reduction(value):
    """deel-lip's Keras 2 `"auto"` reduction, in Keras 3 terms."""
    return _KERAS3_REDUCTIONS.get(value, value)


def not_provided(module, name, reason):
    """A stub that imports but raises `NotImplementedError` when called."""

    @maps_to(module, "—", reason, name=name, status="missing")
    def stub(*args, **kwargs):
        raise NotImplementedError(
            f"deel-lip's {module}.{name} is not provided by "
            f"keras_lipschitz.compat.deel_lip: {reason}"
        )

    stub.__name__ = name
    stub.__qualname__ = name
    stub.__doc__ = f"Not provided: {reason}"
    return stub
