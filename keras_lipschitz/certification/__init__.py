"""Sound certification of Keras models.

Entry points: `certify`, `certified_accuracy` and `lipschitz_bound`
(`api`). `select_certificate` (`dispatch`) says which certificate a model
gets. One module per certificate: `global_l2`, `lln`, `liplt_pairwise`,
`curvature_head`, `binary`, `linf_margin`, `linf_ibp`, `linf_box`. Below them,
`composition` composes guaranteed layer bounds over a model's graph, and
`_common` / `_linf` hold the helpers they share. The maths lives in
`keras_lipschitz.bounds`, `keras_lipschitz.liplt` and
`keras_lipschitz.curvature`.

Import order (each module imports only those to its right):
`api` → `dispatch` → certificates → `composition` → `_linf`, `_common`.
"""

from keras_lipschitz.certification.api import certified_accuracy
from keras_lipschitz.certification.api import certify
from keras_lipschitz.certification.composition import SUPPORTED_LAYERS
from keras_lipschitz.certification.composition import layer_lipschitz_bound
from keras_lipschitz.certification.composition import lipschitz_bound
from keras_lipschitz.certification.dispatch import Certificate
from keras_lipschitz.certification.dispatch import select_certificate

__all__ = [
    "Certificate",
    "SUPPORTED_LAYERS",
    "certified_accuracy",
    "certify",
    "layer_lipschitz_bound",
    "lipschitz_bound",
    "select_certificate",
]
