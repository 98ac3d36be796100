"""Drop-in compatibility layers for other Lipschitz libraries.

`keras_lipschitz.compat.deel_lip` has deel-lip's module layout, names,
argument names and defaults; every name returns a keras-lipschitz object
configured to compute what deel-lip computes (or, where deel-lip is not
sound, the sound version, documented at the name). Switching is one line:

```python
from keras_lipschitz.compat import deel_lip as lip   # was: from deel import lip
```

Models built through it save and load as keras-lipschitz's own registered
classes, so loading needs only `import keras_lipschitz`.
"""

from keras_lipschitz.compat import deel_lip

__all__ = ["deel_lip"]
