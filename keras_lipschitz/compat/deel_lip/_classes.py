"""deel-lip's classes as class objects that build keras-lipschitz objects.

In deel-lip every layer, loss, metric, callback, constraint, initializer
and regularizer is a class, and user code treats it as one:
`issubclass(lip.layers.SpectralDense, LipschitzLayer)`,
`isinstance(layer, lip.layers.SpectralDense)`, `Cls.from_config(config)`,
or a `{Cls: ...}` dictionary. `deel_lip_class` turns a compat factory
function (deel-lip's signature, returning our object) into such a class:

- calling it calls the factory, so `lip.layers.SpectralDense(64)` is a
  `keras_lipschitz.layers.BjorckDense`, as before;
- `isinstance(obj, Cls)` is true for the keras-lipschitz classes the
  factory returns (`returns`), `issubclass(Cls, Cls)` is true;
- `issubclass(Cls, lip.layers.LipschitzLayer)` (and `Condensable`) follow
  deel-lip's class hierarchy (`lipschitz_layer`, `condensable`);
- `Cls.from_config(config)` rebuilds from the config of the object it
  returned (`returns[0].from_config`, or the object's own class when the
  config is Keras's serialized form);
- `inspect.signature(Cls)` and `help(Cls)` show deel-lip's arguments;
- a `ValueError` of our constructors is raised as a `DeelLipValueError`,
  which is both a `ValueError` and a `RuntimeError` (deel-lip raises
  either for bad arguments), so `except RuntimeError` works too.

Subclassing such a class does not subclass the returned object: subclass
the keras-lipschitz class instead.
"""

import inspect


class DeelLipValueError(ValueError, RuntimeError):
    """A bad argument: deel-lip raises `RuntimeError` or `ValueError`."""


class DeelLipAssertionError(ValueError, AssertionError):
    """A bad argument that deel-lip rejects with an `assert`."""


def reraise_as(error_type, error):
    """Raises `error` again as `error_type` (same message and traceback)."""
    if isinstance(error, error_type):
        raise error
    raise error_type(*error.args).with_traceback(error.__traceback__) from None


class DeelLipClass(type):
    """Metaclass of the compat classes: calling the class calls its factory."""

    def __call__(cls, *args, **kwargs):
        try:
            return cls._factory(*args, **kwargs)
        except (DeelLipValueError, DeelLipAssertionError):
            raise
        except ValueError as error:
            reraise_as(DeelLipValueError, error)

    def __instancecheck__(cls, instance):
        return isinstance(instance, cls._returns)

    def __subclasscheck__(cls, subclass):
        if subclass is cls:
            return True
        return isinstance(subclass, type) and issubclass(subclass, cls._returns)

    def from_config(cls, config, custom_objects=None):
        """Rebuilds the returned object from its `get_config()`."""
        target = cls._returns[0]
        if custom_objects is None:
            return target.from_config(config)
        return target.from_config(config, custom_objects=custom_objects)


def deel_lip_class(*returns, lipschitz_layer=False, condensable=False):
    """Decorator: a factory function becomes a class of the same name.

    Args:
        *returns: the keras-lipschitz (or Keras) classes the factory
            returns, the main one first; `isinstance` is checked against
            them.
        lipschitz_layer: whether deel-lip's class is a `LipschitzLayer`.
        condensable: whether deel-lip's class is `Condensable`.

    Returns:
        A decorator turning `factory` into a `DeelLipClass`.
    """
    if not returns:
        raise ValueError("deel_lip_class needs at least one returned class.")

    def wrap(factory):
        namespace = {
            "__module__": factory.__module__,
            "__qualname__": factory.__qualname__,
            "__doc__": factory.__doc__,
            "__signature__": inspect.signature(factory),
            "__wrapped__": factory,
            "_factory": staticmethod(factory),
            "_returns": tuple(returns),
            "_deel_lip_lipschitz_layer": lipschitz_layer,
            "_deel_lip_condensable": condensable,
        }
        return DeelLipClass(factory.__name__, (), namespace)

    return wrap
