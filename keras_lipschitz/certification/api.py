"""The public entry points of certification.

`certify` asks `dispatch.select_certificate` which certificate applies to
the model and runs it; `certified_accuracy` counts the radii above given
$\\varepsilon$; `lipschitz_bound` is the bound composition of
`composition.lipschitz_bound`. Everything runs on the host in NumPy float64
from guaranteed bounds only.
"""

import numpy as np

from keras_lipschitz.certification import dispatch
from keras_lipschitz.certification import linf_box
from keras_lipschitz.certification.composition import lipschitz_bound

__all__ = ["certified_accuracy", "certify", "lipschitz_bound"]


def certify(
    model,
    x,
    y,
    norm="l2",
    batch_size=256,
    method="auto",
    return_method=False,
    input_range=None,
):
    """Per-example certified ℓ2 radii, 0 where the prediction is wrong.

    With logits $z$, label $y$ and a guaranteed bound $L$ on the model's
    Lipschitz constant, the radius is $\\min_{j\\ne y}(z_y-z_j)/\\sqrt2L$
    (Tsuzuku et al., NeurIPS 2018). When the model ends in a linear layer
    $z = W\\phi + b$, the tighter pairwise certificate is used
    (the "LLN" certificate of Singla et al., ICLR 2022):

    $$r = \\min_{j\\ne y}\\frac{z_y - z_j}{L_\\phi\\,\\|w_y - w_j\\|},$$

    with $L_\\phi$ the guaranteed bound of the body, over *all* classes $j$.
    Any input $x'$ with $\\|x'-x\\|_2 < r$ is classified as $y$. A point
    whose logits are not finite, or that is misclassified, gets radius 0.
    Logits are computed in inference mode and the certificate in float64.

    A model with a single output $f$ (shape `(N,)` or `(N, 1)`, as trained
    with `keras_lipschitz.losses.HKR`) is a binary classifier predicting
    the positive class iff $f(x) > 0$; its radius is
    $r = \\operatorname{sign}(y) f(x) / L$, i.e. $|f(x)|/L$ for a correct
    prediction, with $L$ = `lipschitz_bound(model)` (no $\\sqrt2$: a single
    score, not a difference of two logits). Labels are then in $\\{0, 1\\}$
    or $\\{-1, +1\\}$, positive iff $y > 0$ (as in the losses); $f(x) = 0$
    is not certified.

    A model whose output layer is a `keras_lipschitz.layers.CRCLipHead` is
    certified with that head's curvature certificate (see
    `keras_lipschitz.curvature.certify_curvature_head`).

    Which certificate applies is decided by
    `keras_lipschitz.certification.select_certificate` from the model's
    structure alone; pass `return_method=True` to get its name.

    Args:
        model: a built single-input, single-output `keras.Model`.
        x: inputs, array-like.
        y: integer labels `(N,)`/`(N, 1)` or one-hot `(N, C)`; binary labels
            `(N,)`/`(N, 1)` for a single-output model.
        norm: `"l2"`, or `"linf"` for ℓ∞ radii of ℓ∞-distance nets and
            SortNets (margin / 2, or interval bounds through an MLP head;
            see `keras_lipschitz.certification.linf_margin` and
            `keras_lipschitz.certification.linf_ibp`).
        batch_size: batch size of the forward passes.
        method: ℓ2 bounds of multiclass models. `"product"`: the layer-wise
            bound (pairwise through the last linear layer, as above);
            `"liplt"`: the pairwise LipLT constants $L_{yj}$ of Fazlyab et
            al. (NeurIPS 2023), $r = \\min_{j\\ne y}(z_y - z_j)/L_{yj}$,
            with exact product norms
            (`keras_lipschitz.liplt.liplt_pairwise_bounds`; feed-forward
            models only, else `ValueError`); `"auto"` (default): for each
            pair the smaller of the two bounds when LipLT applies to the
            model, else `"product"`. All are guaranteed.
        return_method: if true, also return the name of the certificate
            used (e.g. `"lln"`, `"global_l2"`, `"lln+liplt"`, `"binary"`,
            `"curvature_head"`, `"linf_margin"`, `"linf_ibp"`,
            `"linf_box"`).
        input_range: None, or `(low, high)` with `norm="linf"`: certify only
            against perturbed inputs that stay in that range (e.g. `(0, 1)`
            for images, the threat model of the ℓ∞ papers' MNIST and
            CIFAR-10 numbers), with interval bounds through every layer
            (`keras_lipschitz.certification.linf_box`: never smaller than
            the default radius; a radius search of about 15 interval
            passes over the data).

    Returns:
        NumPy float64 array of shape `(N,)`; with `return_method=True`, the
        tuple `(radii, name)`.
    """
    certificate = dispatch.select_certificate(
        model, norm=norm, method=method, input_range=input_range
    )
    radii = certificate.run(model, x, y, batch_size)
    if return_method:
        return radii, certificate.name
    return radii


def certified_accuracy(
    model, x, y, epsilons, norm="l2", batch_size=256, method="auto",
    input_range=None,
):
    """Fraction of examples certified at each radius in `epsilons`.

    A point counts at $\\varepsilon$ iff it is correctly classified and its
    certified radius (see `certify`) is strictly greater than
    $\\varepsilon$.

    With `input_range` (ℓ∞ only), each radius is checked by one interval
    pass (`keras_lipschitz.certification.linf_box.certified_at`, the closed
    ball of radius $\\varepsilon$) instead of a radius search.

    Args:
        model, x, y, norm, batch_size, method, input_range: as in
            `certify`.
        epsilons: a number or a sequence of numbers >= 0.

    Returns:
        NumPy array with one value per epsilon.
    """
    eps = np.atleast_1d(np.asarray(epsilons, np.float64))
    if np.any(eps < 0) or not np.all(np.isfinite(eps)):
        raise ValueError(
            f"`epsilons` must be finite and >= 0. Received: {epsilons!r}"
        )
    if input_range is not None:
        dispatch.validate(norm, method, input_range)
        return np.array([
            np.mean(linf_box.certified_at(
                model, x, y, e, input_range=input_range,
                batch_size=batch_size,
            ))
            for e in eps
        ])
    radius = certify(
        model, x, y, norm=norm, batch_size=batch_size, method=method
    )
    return np.array([np.mean(radius > e) for e in eps])
