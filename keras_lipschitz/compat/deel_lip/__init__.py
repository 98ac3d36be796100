"""deel-lip's API on keras-lipschitz.

`from keras_lipschitz.compat import deel_lip as lip` replaces
`from deel import lip`.

Same module layout as deel-lip (`layers`, `activations`, `losses`,
`metrics`, `callbacks`, `constraints`, `regularizers`, `initializers`,
`normalizers`, `utils`, `model`, `compute_layer_sv`), names, argument
names, defaults and positional order of the released deel-lip 1.5.0
(`MulticlassSoftHKR` as in deel-lip 1.5.1; the `keras3` branch's
`lora_rank` and `groups` are keyword-only, since 1.5.0 has no such
positions). Every name returns a keras-lipschitz object configured to
compute what deel-lip computes; where deel-lip is not sound (its average
RKO factor, certificates that trust an assumed constant) the object stays
sound and its docstring says how it differs. The full mapping is the table
of `docs/migration.md`, generated from `_mapping.REGISTRY`.
"""

from keras_lipschitz.compat.deel_lip import activations
from keras_lipschitz.compat.deel_lip import callbacks
from keras_lipschitz.compat.deel_lip import compute_layer_sv
from keras_lipschitz.compat.deel_lip import constraints
from keras_lipschitz.compat.deel_lip import initializers
from keras_lipschitz.compat.deel_lip import layers
from keras_lipschitz.compat.deel_lip import losses
from keras_lipschitz.compat.deel_lip import metrics
from keras_lipschitz.compat.deel_lip import model
from keras_lipschitz.compat.deel_lip import normalizers
from keras_lipschitz.compat.deel_lip import regularizers
from keras_lipschitz.compat.deel_lip import utils
from keras_lipschitz.compat.deel_lip.model import Model
from keras_lipschitz.compat.deel_lip.model import Sequential
from keras_lipschitz.compat.deel_lip.model import vanillaModel

# The deel-lip version whose API this layer reproduces.
__version__ = "1.5.0"

__all__ = [
    "Model",
    "Sequential",
    "activations",
    "callbacks",
    "compute_layer_sv",
    "constraints",
    "initializers",
    "layers",
    "losses",
    "metrics",
    "model",
    "normalizers",
    "regularizers",
    "utils",
    "vanillaModel",
]
