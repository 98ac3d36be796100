"""Curvature-based certificates for `CRCLipHead` (Singla & Feizi, 2022).

Everything runs on the host in NumPy float64, from the head's weights and
the backbone's features, so the numbers are the same on every backend.

For a model $x \\mapsto f(\\phi(x))$ with a backbone $\\phi$ whose ℓ2
Lipschitz constant is at most $L_\\phi$ (the guaranteed bound of
`keras_lipschitz.lipschitz_bound`) and a `CRCLipHead` $f$, a feature-space
radius $r$ (no $\\psi$ with $\\|\\psi - \\phi(x)\\| < r$ changes the class)
gives the input radius $r / L_\\phi$.

**Curvature bounds.** For $g = f_y - f_j$, $\\Delta = w_{2,y} - w_{2,j}$,

$$-m_{yj} I \\preceq \\nabla^2 g \\preceq M_{yj} I,\\qquad
M_{yj} = \\tfrac\\beta4\\lambda_{max}(W_1\\mathrm{diag}(\\Delta^+)W_1^T),
\\qquad m_{yj} = M_{jy},$$

because $\\nabla^2 g = W_1\\mathrm{diag}(\\Delta\\odot s'')W_1^T$ with
$0 < s'' \\le \\beta/4$. `curvature_bounds` computes every $M_{yj}$ with an
exact float64 `eigvalsh` (or the cheaper
$\\tfrac\\beta4\\max_k\\Delta_k^+\\,\\|W_1\\|_2^2$ with an exact SVD), never
with power iteration, whose Rayleigh quotients are *lower* bounds of
$\\lambda_{max}$ (the pitfall of the official code). Both are multiplied by
$1 + 10^{-8}$ to absorb float64 rounding.

**Fast certificate.** Along any segment,
$g(\\phi+\\delta) \\ge g(\\phi) - \\|\\nabla g\\|\\|\\delta\\| -
\\tfrac m2\\|\\delta\\|^2$, which stays positive for
$\\|\\delta\\| < r_c = (\\sqrt{\\|\\nabla g\\|^2 + 2mg} - \\|\\nabla g\\|)/m
= 2g/(\\|\\nabla g\\| + \\sqrt{\\|\\nabla g\\|^2 + 2mg})$
($g/\\|\\nabla g\\|$ if
$m = 0$). Since also $\\|\\nabla g\\| \\le \\|W_1\\|_2\\|\\Delta\\|$
everywhere, $r_L = g/(\\|W_1\\|_2\\|\\Delta\\|)$ is a radius too; each pair
gets $\\max(r_c, r_L)$ and the certificate is the minimum over **all**
$j \\ne y$ (the official code checks only the top 9 classes, which is
unsound with more classes).

**Verified CRC** (`certificate="crc"` on the head). The exact radius
$r^* = \\min\\{\\|\\delta\\|: g(\\phi+\\delta) \\le 0\\}$ satisfies, for
every $0 \\le \\eta < 1/m$ (weak duality, Singla & Feizi, ICML 2020),

$$r^{*2} \\ge h(\\eta) = \\min_\\delta F_\\eta(\\delta),\\qquad
F_\\eta(\\delta) = \\|\\delta\\|^2 + 2\\eta\\,g(\\phi+\\delta).$$

$F_\\eta$ is $\\mu$-strongly convex with $\\mu = 2(1 - \\eta m)$, so at
*any* point $\\hat\\delta$, $h(\\eta) \\ge F_\\eta(\\hat\\delta) -
\\|\\nabla F_\\eta(\\hat\\delta)\\|^2/(2\\mu)$. This lower bound is what is
returned: the bisection on $\\eta$ and the Newton/conjugate-gradient steps
that produce $\\hat\\delta$ (fixed counts) only make it tighter, they are
never trusted. Pairs keep $\\max(r_c, r_L, r_{crc})$. It refines, for
each example, the pair with the smallest radius until that pair has been
refined, so it usually runs on one or two pairs per example; each refined
pair costs a few hundred products with $W_1$ and $W_1^T$.
"""

import keras
import numpy as np

from keras_lipschitz.certification import _common
from keras_lipschitz.certification import composition

# Relative safety margin on float64 eigenvalues and norms (rounding).
ROUNDING_MARGIN = 1e-8

# Above this many floating-point operations `method="auto"` uses the
# max(Δ⁺)·‖W₁‖² bound instead of one eigvalsh per class pair.
EIGVALSH_MAX_FLOPS = 2e11

CURVATURE_METHODS = ("auto", "eigvalsh", "norm")
CERTIFICATES = ("fast", "crc")

# Fixed iteration counts of the verified CRC.
CRC_BISECTION_STEPS = 8
CRC_NEWTON_STEPS = 3
CRC_CG_STEPS = 12


def _softplus(a, beta):
    return np.logaddexp(0.0, beta * a) / beta


def _sigmoid(t):
    return 0.5 * (1.0 + np.tanh(0.5 * t))


def curvature_bounds(kernel1, kernel2, beta, method="auto"):
    """Guaranteed upper curvature bounds $M_{yj}$ for every class pair.

    Args:
        kernel1: $W_1$, shape `(d, h)` (Keras layout, hidden = φ W₁ + b₁).
        kernel2: $W_2$, shape `(h, C)`.
        beta: softplus $\\beta$.
        method: `"eigvalsh"` (exact $\\lambda_{max}$ per pair, float64),
            `"norm"` ($\\tfrac\\beta4\\max_k\\Delta_k^+\\|W_1\\|_2^2$) or
            `"auto"` (eigvalsh unless it would cost more than
            `EIGVALSH_MAX_FLOPS`).

    Returns:
        float64 array `(C, C)`: `M[y, j]` ≥ the largest eigenvalue of the
        Hessian of $f_y - f_j$ at every point; $m_{yj}$ = `M[j, y]`.
        The diagonal is 0.
    """
    if method not in CURVATURE_METHODS:
        raise ValueError(
            f"`method` must be one of {CURVATURE_METHODS}. "
            f"Received: method={method!r}"
        )
    kernel1 = np.asarray(kernel1, np.float64)
    kernel2 = np.asarray(kernel2, np.float64)
    d, h = kernel1.shape
    c = kernel2.shape[1]
    small, large = min(d, h), max(d, h)
    if method == "auto":
        flops = c * (c - 1) * (small**2 * large + small**3)
        method = "eigvalsh" if flops <= EIGVALSH_MAX_FLOPS else "norm"
    scale = 0.25 * beta * (1.0 + ROUNDING_MARGIN)
    columns = kernel2.T
    positive = np.maximum(columns[:, None, :] - columns[None, :, :], 0.0)
    if method == "norm":
        norm = np.linalg.norm(kernel1, ord=2) if kernel1.size else 0.0
        bound = scale * norm**2 * np.max(positive, axis=-1)
        np.fill_diagonal(bound, 0.0)
        return bound
    bound = np.zeros((c, c))
    gram = kernel1.T @ kernel1 if h < d else None
    for y in range(c):
        for j in range(c):
            weights = positive[y, j]
            keep = weights > 0
            if y == j or not np.any(keep):
                continue
            if gram is None:
                # W1 diag(Δ⁺) W1ᵀ (d × d), over the hidden units with Δ > 0.
                part = kernel1[:, keep]
                matrix = (part * weights[keep]) @ part.T
            else:
                # Same nonzero spectrum: diag(√Δ⁺) W1ᵀW1 diag(√Δ⁺) (h × h).
                root = np.sqrt(weights[keep])
                matrix = root[:, None] * gram[np.ix_(keep, keep)] * root
            top = np.linalg.eigvalsh(matrix)[-1]
            bound[y, j] = scale * max(top, 0.0)
    return bound


def _pair_quantities(params, features, labels):
    """Margins g, gradient norms and weight differences for all pairs."""
    kernel1, bias1, kernel2, bias2, beta = params
    pre = features @ kernel1 + bias1  # (N, h)
    logits = _softplus(pre, beta) @ kernel2 + bias2  # (N, C)
    n = features.shape[0]
    rows = np.arange(n)
    margins = logits[rows, labels][:, None] - logits  # g_j = z_y - z_j
    slopes = _sigmoid(beta * pre)  # softplus_β'
    # Δ_j = w2_y - w2_j per example: (N, h, C); ∇g_j = W1 (Δ_j ⊙ s).
    diff = kernel2[:, labels].T[:, :, None] - kernel2[None, :, :]
    grads = np.einsum("dh,nhc->ndc", kernel1, diff * slopes[:, :, None])
    grad_norms = np.linalg.norm(grads, axis=1)  # (N, C)
    diff_norms = np.linalg.norm(diff, axis=1)  # (N, C)
    return logits, margins, grad_norms, diff_norms


def _fast_pair_radii(margins, grad_norms, lower_curvature, lipschitz_pair):
    """max(r_c, r_L) per pair; 0 where the margin is not positive."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        root = np.sqrt(grad_norms**2 + 2.0 * lower_curvature * margins)
        curvature_radius = 2.0 * margins / (grad_norms + root)
        curvature_radius = np.where(
            grad_norms + root > 0, curvature_radius, np.inf
        )
        lipschitz_radius = np.where(
            lipschitz_pair > 0, margins / lipschitz_pair, np.inf
        )
    radius = np.maximum(curvature_radius, lipschitz_radius)
    return np.where(margins > 0, radius, 0.0)


def _crc_lower_bounds(params, phi, delta_w2, delta_b2, curvature):
    """Verified lower bounds on the exact radius for a batch of pairs.

    Args:
        params: head weights `(W1, b1, W2, b2, beta)`.
        phi: features `(B, d)`.
        delta_w2: $\\Delta$ per pair `(B, h)`.
        delta_b2: $b_{2,y} - b_{2,j}$ per pair `(B,)`.
        curvature: sound $m_{yj}$ per pair `(B,)`.

    Returns:
        `(B,)` radii (0 where nothing could be proven).
    """
    kernel1, bias1, _, _, beta = params

    def evaluate(delta):
        pre = (phi + delta) @ kernel1 + bias1
        g = np.sum(_softplus(pre, beta) * delta_w2, axis=1) + delta_b2
        sig = _sigmoid(beta * pre)
        grad = (delta_w2 * sig) @ kernel1.T
        second = delta_w2 * beta * sig * (1.0 - sig)
        return g, grad, second

    g0, grad0, _ = evaluate(np.zeros_like(phi))
    grad_norm0 = np.linalg.norm(grad0, axis=1)
    # The dual variable lies in [0, 1/m); with m = 0 the linear model's
    # optimum g/‖∇g‖² sets the scale.
    with np.errstate(divide="ignore", invalid="ignore"):
        eta_max = np.where(
            curvature > 0,
            1.0 / curvature,
            4.0 * g0 / np.maximum(grad_norm0, 1e-300) ** 2,
        )
    eta_max = np.where(np.isfinite(eta_max), eta_max, 0.0)
    eta_low, eta_high = np.zeros_like(g0), eta_max
    delta = np.zeros_like(phi)
    best = np.zeros_like(g0)
    for _ in range(CRC_BISECTION_STEPS):
        eta = 0.5 * (eta_low + eta_high)
        for _ in range(CRC_NEWTON_STEPS):
            _, grad, second = evaluate(delta)
            residual = delta + eta[:, None] * grad  # ∇F / 2
            coeff = eta[:, None] * second

            def apply(v, coeff=coeff):
                return v + ((v @ kernel1) * coeff) @ kernel1.T

            # Conjugate gradient on (I + η ∇²g) p = residual.
            step = np.zeros_like(delta)
            r = residual.copy()
            p = r.copy()
            rr = np.sum(r * r, axis=1)
            for _ in range(CRC_CG_STEPS):
                ap = apply(p)
                pap = np.sum(p * ap, axis=1)
                alpha = np.where(pap > 0, rr / np.where(pap > 0, pap, 1), 0)
                step = step + alpha[:, None] * p
                r = r - alpha[:, None] * ap
                rr_new = np.sum(r * r, axis=1)
                ratio = np.where(rr > 0, rr_new / np.where(rr > 0, rr, 1), 0)
                p = r + ratio[:, None] * p
                rr = rr_new
            delta = delta - step
            delta = np.where(np.isfinite(delta), delta, 0.0)
        g, grad, _ = evaluate(delta)
        value = np.sum(delta * delta, axis=1) + 2.0 * eta * g
        gradient = 2.0 * (delta + eta[:, None] * grad)
        mu = 2.0 * (1.0 - eta * curvature)
        with np.errstate(divide="ignore", invalid="ignore"):
            lower = value - np.sum(gradient**2, axis=1) / (2.0 * mu)
        lower = np.where((mu > 0) & np.isfinite(lower), lower, 0.0)
        best = np.maximum(best, lower)
        # h'(η) = 2 g(φ + δ*(η)): move η towards the dual optimum.
        increase = g > 0
        eta_low = np.where(increase, eta, eta_low)
        eta_high = np.where(increase, eta_high, eta)
    radius = np.sqrt(np.maximum(best, 0.0)) * (1.0 - ROUNDING_MARGIN)
    return np.where(g0 > 0, radius, 0.0)


def feature_radii(
    params, features, labels, curvature, certificate="fast", chunk=256
):
    """Feature-space certified radii of a CRC-Lip head.

    Args:
        params: `(W1, b1, W2, b2, beta)`, float64 arrays and a float.
        features: `(N, d)` features.
        labels: `(N,)` integer labels.
        curvature: `(C, C)` from `curvature_bounds`.
        certificate: `"fast"` or `"crc"` (see the module docstring).
        chunk: examples per vectorised block.

    Returns:
        `(radius, logits)`: `(N,)` float64 radii (0 where the float64
        prediction is not `labels` or a feature is not finite) and the
        float64 logits `(N, C)`.
    """
    if certificate not in CERTIFICATES:
        raise ValueError(
            f"`certificate` must be one of {CERTIFICATES}. "
            f"Received: certificate={certificate!r}"
        )
    kernel1, _, kernel2, bias2, _ = params
    features = np.asarray(features, np.float64)
    labels = np.asarray(labels, np.int64)
    n, num_classes = features.shape[0], kernel2.shape[1]
    norm1 = (
        np.linalg.norm(kernel1, ord=2) * (1.0 + ROUNDING_MARGIN)
        if kernel1.size
        else 0.0
    )
    finite = np.all(np.isfinite(features), axis=1)
    safe = np.where(finite[:, None], features, 0.0)
    radius = np.zeros(n)
    all_logits = np.zeros((n, num_classes))
    # Keep the (examples, hidden, classes) block below ~160 MB.
    chunk = max(1, min(chunk, int(2e7 // (kernel1.shape[1] * num_classes))))
    for start in range(0, n, chunk):
        part = slice(start, start + chunk)
        phi, y = safe[part], labels[part]
        rows = np.arange(phi.shape[0])
        logits, margins, grad_norms, diff_norms = _pair_quantities(
            params, phi, y
        )
        all_logits[part] = logits
        lower = curvature[:, y].T  # m_yj = M[j, y]
        pair = _fast_pair_radii(margins, grad_norms, lower, norm1 * diff_norms)
        pair[rows, y] = np.inf
        if certificate == "crc":
            refined = np.zeros_like(pair, bool)
            refined[rows, y] = True
            for _ in range(num_classes - 1):
                j = np.argmin(pair, axis=1)
                todo = ~refined[rows, j] & (pair[rows, j] > 0)
                if not np.any(todo):
                    break
                idx, jj = rows[todo], j[todo]
                crc = _crc_lower_bounds(
                    params,
                    phi[idx],
                    (kernel2[:, y[idx]] - kernel2[:, jj]).T,
                    bias2[y[idx]] - bias2[jj],
                    lower[idx, jj],
                )
                pair[idx, jj] = np.maximum(pair[idx, jj], crc)
                refined[idx, jj] = True
        radius[part] = np.min(pair, axis=1)
    radius = np.where(finite & np.isfinite(radius), radius, 0.0)
    return np.maximum(radius, 0.0), all_logits


def _head_of(model):
    """The `CRCLipHead` that produces `model`'s output, or None."""
    from keras_lipschitz.layers.heads import CRCLipHead

    try:
        operation, inputs = _common.output_producer(model)
    except ValueError:
        return None
    if not isinstance(operation, CRCLipHead):
        return None
    return operation, inputs[0]


def ends_with_curvature_head(model):
    """Whether `model`'s output is produced by a `CRCLipHead`."""
    return _head_of(model) is not None


def certify_curvature_head(model, x, y, batch_size=256, certificate=None):
    """Certified ℓ2 input radii of a model ending with a `CRCLipHead`.

    $r(x) = r_\\phi / L_\\phi$, with $r_\\phi$ the head's feature-space
    radius (module docstring) and $L_\\phi$ the guaranteed Lipschitz bound
    of the body (`keras_lipschitz.lipschitz_bound` on the subgraph that
    feeds the head). 0 where the prediction is wrong or not finite.

    Args:
        model: a built single-input model whose output layer is a
            `CRCLipHead`.
        x: inputs.
        y: integer labels `(N,)`/`(N, 1)` or one-hot `(N, C)`.
        batch_size: batch size of the feature extraction.
        certificate: `"fast"`, `"crc"` or None for the head's own
            `certificate` setting.

    Returns:
        float64 array `(N,)`.
    """
    found = _head_of(model)
    if found is None:
        raise ValueError(
            "`model` must end with a CRCLipHead. "
            f"Received: model {getattr(model, 'name', model)!r}"
        )
    head, feature_tensor = found
    certificate = certificate or head.certificate
    inputs = _common.single_tensor(model, "inputs")
    if feature_tensor is inputs:
        features = np.asarray(x, np.float64)
    else:
        feature_model = keras.Model(inputs, feature_tensor)
        features = np.asarray(
            feature_model.predict(x, batch_size=batch_size, verbose=0),
            np.float64,
        )
    features = features.reshape(features.shape[0], -1)
    labels = _common.labels_to_indices(y, head.num_classes)
    _common.check_same_length(features.shape[0], labels)
    body_bound = composition.tensor_bound(feature_tensor)
    kernel1, bias1, kernel2, bias2 = head.head_weights()
    params = (kernel1, bias1, kernel2, bias2, head.beta)
    curvature = curvature_bounds(kernel1, kernel2, head.beta)
    radius, _ = feature_radii(
        params, features, labels, curvature, certificate=certificate
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        radius = radius / body_bound
    # As in `certify`, a non-finite radius is reported as 0.
    return np.where(np.isfinite(radius), radius, 0.0)
