"""Lipschitz-constrained convolutions (1-D, 2-D and 2-D transposed).

As for the dense layers, each layer keeps a raw, unconstrained trainable
`kernel` in the layout of the matching Keras layer and derives the
constrained kernel $\\bar K$ from it inside `call`: gradients flow through
the normalization and nothing is ever assigned to a trainable weight. Only
non-trainable state (the power-iteration vector `u`) is written, and only
when `training` is true.

Two constructions are provided, each as a 2-D, a 1-D and a transposed 2-D
layer sharing one implementation:

- `SpectralConv2D`, `SpectralConv1D`, `SpectralConv2DTranspose` normalize
  by the norm of the convolution *as an operator on the layer's real input
  size, padding, stride, dilation and groups*, estimated by power
  iteration (training) or Lanczos (inference) through `ops.conv` and its
  exact adjoint `ops.conv_transpose`. They are tight: the layer's Lipschitz
  constant is `lipschitz` (up to the estimation error).
- `BjorckConv2D`, `BjorckConv1D`, `BjorckConv2DTranspose` orthonormalize
  the reshaped kernel (RKO) and apply the worst-case correction factor.
  They are size-independent and sound, but not tight (most singular values
  of the operator are below 1).

**Options.** `groups` (each group normalized on its own; the operator is
block diagonal, so its norm is the largest group norm), `dilation_rate`
(the normalization runs on the inflated kernel, zeros between the taps),
and `padding="circular"` (the input is wrapped around the torus, then
convolved with "valid" padding; its operator is a circular convolution)
on the 1-D and 2-D layers, and `padding="causal"` on the 1-D layers.

Every layer reports a *guaranteed* bound with `lipschitz_upper_bound()`,
computed on the host in float64 from the inference-mode kernel
(`keras_lipschitz.bounds`).
"""

import math

import keras
import numpy as np
from keras import ops

from keras_lipschitz import bounds
from keras_lipschitz import normalizers
from keras_lipschitz.api_export import keras_lipschitz_export
from keras_lipschitz.layers import _kernel_arguments
from keras_lipschitz.layers import _validation

# Power iterations run at build so that the stored vector starts converged
# (Björck convs, on the reshaped kernel).
INITIAL_POWER_ITERATIONS = 100
# Lanczos cycles of `eval_power_iterations` steps run at build
# (Spectral convs, on the conv operator).
INITIAL_LANCZOS_CYCLES = 2

# Paddings that need an explicit pad before a "valid" convolution.
_EXPLICIT_PADDINGS = ("circular", "causal")
# Circular convolutions share their invariant subspaces (the Fourier modes)
# whatever the kernel, so a converged power-iteration vector would stay in
# the modes of the kernel it converged for. A fixed vector with components
# in every mode is mixed into the start vector with these weights (relative
# to the unit stored vector) in training and at inference.
_CIRCULAR_MIX_TRAINING = 1e-2
_CIRCULAR_MIX_INFERENCE = 1e-1


# ------------------------------------------------------------ tensor helpers
def _take(x, axis, start, stop):
    """`x[..., start:stop, ...]` on `axis` (a non-negative axis index)."""
    index = [slice(None)] * len(x.shape)
    index[axis] = slice(start, stop)
    return x[tuple(index)]


def _zero_pad_axis(x, axis, before, after):
    widths = [(0, 0)] * len(x.shape)
    widths[axis] = (before, after)
    return ops.pad(x, widths)


def _pad_spatial(x, axes, pads, circular):
    """Pads each of `axes` by its `(before, after)`, with zeros or wrapped.

    Circular padding copies the last `before` entries in front and the
    first `after` entries behind (each at most the axis length).
    """
    for axis, (before, after) in zip(axes, pads):
        if not before and not after:
            continue
        if not circular:
            x = _zero_pad_axis(x, axis, before, after)
            continue
        pieces = [x]
        if before:
            pieces.insert(0, _take(x, axis, -before, None))
        if after:
            pieces.append(_take(x, axis, 0, after))
        x = ops.concatenate(pieces, axis=axis)
    return x


def _pad_spatial_adjoint(z, axes, pads, sizes, circular):
    """The exact adjoint of `_pad_spatial` on inputs of spatial `sizes`.

    Zero padding: the crop. Circular padding: the crop plus the copies
    folded back onto the entries they were taken from.
    """
    for axis, (before, after), n in zip(axes, pads, sizes):
        if not before and not after:
            continue
        center = _take(z, axis, before, before + n)
        if circular and before:
            left = _take(z, axis, 0, before)
            center = center + _zero_pad_axis(left, axis, n - before, 0)
        if circular and after:
            right = _take(z, axis, before + n, before + n + after)
            center = center + _zero_pad_axis(right, axis, 0, n - after)
        z = center
    return z


def _inflate_kernel(kernel, dilation):
    """The dilated kernel as an ordinary one, zeros between the taps.

    `keras.ops` twin of `keras_lipschitz.bounds.dilate_kernel`
    (differentiable): a conv with dilation $d$ is the ordinary conv by the
    kernel of size $d(k - 1) + 1$ holding $K[a]$ at $d\\,a$.
    """
    for axis, d in enumerate(dilation):
        if d == 1:
            continue
        shape = list(kernel.shape)
        k = shape[axis]
        zeros = ops.zeros(
            shape[: axis + 1] + [d - 1] + shape[axis + 1 :], kernel.dtype
        )
        spread = ops.concatenate(
            [ops.expand_dims(kernel, axis + 1), zeros], axis=axis + 1
        )
        spread = ops.reshape(
            spread, shape[:axis] + [k * d] + shape[axis + 1 :]
        )
        kernel = _take(spread, axis, 0, d * (k - 1) + 1)
    return kernel


def _explicit_padding_matrix(size, before, after, circular):
    """The 0/1 float64 matrix `(before + size + after, size)` of a padding."""
    matrix = np.zeros((before + size + after, size))
    for row, i in enumerate(range(-before, size + after)):
        if 0 <= i < size:
            matrix[row, i] = 1.0
        elif circular:
            matrix[row, i % size] = 1.0
    return matrix


def _reshaped_kernel_bound(kernel, strides):
    """$\\sqrt{\\nu}\\,\\|R\\|_2$ (exact SVD): sound for any size (§5).

    With $R$ the `(k_h k_w c_in) x c_out` reshape and $\\nu$ the largest
    number of patches that contain one input pixel: zero padding of any
    size, and circular padding on sizes that are multiples of the strides.
    """
    k_h, k_w, c_in, c_out = kernel.shape
    matrix = kernel.reshape(k_h * k_w * c_in, c_out)
    factor = normalizers.rko_correction_factor((k_h, k_w), strides)
    return bounds.dense_spectral_norm(matrix) / factor


def _block_diagonal_kernel(kernel, groups):
    """The `(.., c_in, c_out)` kernel of a grouped `(.., c_in/g, c_out)` one."""
    if groups == 1:
        return kernel
    c_in, c_out = kernel.shape[-2] * groups, kernel.shape[-1]
    full = np.zeros(kernel.shape[:-2] + (c_in, c_out))
    size_in, size_out = kernel.shape[-2], c_out // groups
    for g in range(groups):
        full[
            ..., g * size_in : (g + 1) * size_in,
            g * size_out : (g + 1) * size_out,
        ] = kernel[..., g * size_out : (g + 1) * size_out]
    return full


# ------------------------------------------------------------------- base
class _LipschitzConv(keras.layers.Layer):
    """Shared machinery of the conv layers: weights, bias, shapes, config.

    One implementation serves 1-D and 2-D convolutions (`_rank`) and 2-D
    transposed convolutions (`_transpose`), with `groups`,
    `dilation_rate` and explicit (`"circular"`, `"causal"`) paddings where
    a subclass allows them (`_supports_groups`, `_supports_dilation`,
    `_paddings`).

    Subclasses implement `_build_state(input_shape)` (non-trainable state)
    and `_constrain(kernel, training)`, which maps the raw float32 kernel to
    the constrained one (before the `lipschitz` factor).

    **The operator of a transposed layer.** A transposed conv with kernel
    $K$ (Keras layout `(k_h, k_w, filters, c_in)`) is the adjoint $A^T$ of
    the conv $A$ by the same array read in the ordinary layout (`filters`
    input channels, `c_in` outputs) acting on the transposed layer's
    *output* size, and $\\|A^T\\| = \\|A\\|$. The normalizations and bounds
    of a transposed layer therefore run on $A$.
    """

    # Whether the operator norm, hence the normalization, depends on the
    # input size (then the spatial dimensions must be known at build).
    _needs_static_spatial_shape = False
    _rank = 2
    _transpose = False
    _supports_groups = False
    _supports_dilation = False
    _paddings = ("same", "valid")

    def __init__(
        self,
        filters,
        kernel_size,
        strides=1,
        padding="same",
        data_format=None,
        lipschitz=1.0,
        activation=None,
        use_bias=True,
        kernel_initializer="orthogonal",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        power_iterations=1,
        dilation_rate=1,
        groups=1,
        **kwargs,
    ):
        super().__init__(**kwargs)
        rank = self._rank
        name = type(self).__name__
        self.filters = _validation.validate_positive_int("filters", filters)
        self.kernel_size = _validation.validate_int_tuple(
            "kernel_size", kernel_size, length=rank
        )
        self.strides = _validation.validate_int_tuple(
            "strides", strides, length=rank
        )
        known = ("same", "valid") + _EXPLICIT_PADDINGS
        padding = _validation.validate_choice("padding", padding, set(known))
        if padding not in self._paddings:
            raise ValueError(
                f"`padding`={padding!r} is not supported by {name}. "
                f"Supported: {list(self._paddings)}."
            )
        self.padding = padding
        self.data_format = _validation.validate_data_format(data_format)
        self.dilation_rate = _validation.validate_int_tuple(
            "dilation_rate", dilation_rate, length=rank
        )
        if max(self.dilation_rate) > 1:
            if not self._supports_dilation:
                raise ValueError(
                    f"`dilation_rate` must be 1: {name} does not support "
                    f"dilation. Received: dilation_rate={dilation_rate!r}"
                )
            if max(self.strides) > 1:
                raise ValueError(
                    "`dilation_rate` > 1 cannot be combined with `strides` "
                    "> 1 (as in keras.layers.Conv). Received: "
                    f"dilation_rate={dilation_rate!r}, strides={strides!r}"
                )
        self.groups = _validation.validate_positive_int("groups", groups)
        if self.groups > 1 and not self._supports_groups:
            raise ValueError(
                f"`groups` must be 1: {name} does not support grouped "
                f"convolutions. Received: groups={groups!r}"
            )
        if self.filters % self.groups:
            raise ValueError(
                "`groups` must divide `filters`. "
                f"Received: groups={groups!r}, filters={filters!r}"
            )
        _kernel_arguments.set_kernel_arguments(
            self,
            lipschitz,
            activation,
            use_bias,
            kernel_initializer,
            bias_initializer,
            kernel_regularizer,
            bias_regularizer,
            kernel_constraint,
            bias_constraint,
        )
        self.power_iterations = _validation.validate_positive_int(
            "power_iterations", power_iterations
        )
        # Spatial size the layer was built for (None entries: unknown).
        self.built_spatial_shape = None
        self.input_spec = keras.layers.InputSpec(ndim=rank + 2)

    # ------------------------------------------------------------------ shapes
    @property
    def _channel_axis(self):
        return -1 if self.data_format == "channels_last" else 1

    @property
    def _spatial_axes(self):
        if self.data_format == "channels_last":
            return tuple(range(1, self._rank + 1))
        return tuple(range(2, self._rank + 2))

    def _spatial_shape(self, shape):
        return tuple(shape[a] for a in self._spatial_axes)

    @property
    def _effective_kernel_size(self):
        """$d(k - 1) + 1$ per axis: the size of the inflated kernel."""
        return tuple(
            d * (k - 1) + 1
            for k, d in zip(self.kernel_size, self.dilation_rate)
        )

    @property
    def _explicit_pads(self):
        """`(before, after)` per spatial axis, or None for "same"/"valid".

        Circular padding pads like Keras's "same" on sizes that are
        multiples of the strides ($k - s$ in all, the extra one after);
        causal padding pads $k - 1$ zeros in front.
        """
        k_eff = self._effective_kernel_size
        if self.padding == "circular":
            totals = [max(k - s, 0) for k, s in zip(k_eff, self.strides)]
            return tuple((t // 2, t - t // 2) for t in totals)
        if self.padding == "causal":
            return tuple((k - 1, 0) for k in k_eff)
        return None

    @property
    def _conv_padding(self):
        return "valid" if self.padding in _EXPLICIT_PADDINGS else self.padding

    def _output_spatial(self, spatial):
        """Output spatial sizes for input spatial sizes (None: unknown)."""
        out = []
        for n, k, s in zip(spatial, self._effective_kernel_size, self.strides):
            if n is None:
                out.append(None)
            elif self._transpose:
                # keras.layers.Conv2DTranspose with output_padding=None.
                extra = max(k - s, 0) if self.padding == "valid" else 0
                out.append(n * s + extra)
            else:
                mode = "valid" if self.padding == "valid" else "same"
                out.append(bounds.conv_output_size(n, k, s, mode))
        return tuple(out)

    def _operator_spatial(self, spatial):
        """Spatial size the normalized (forward) operator acts on."""
        if self._transpose:
            return self._output_spatial(spatial)
        return tuple(spatial)

    def _check_circular_size(self, spatial, input_shape):
        if self.padding != "circular":
            return
        for n, s, (before, after) in zip(
            spatial, self.strides, self._explicit_pads
        ):
            if n is None:
                continue
            if n % s:
                raise ValueError(
                    "With padding='circular' each spatial input size must "
                    "be a multiple of its stride (the operator is then a "
                    "strided circular convolution on the torus). Received: "
                    f"strides={self.strides}, input_shape={input_shape}"
                )
            if max(before, after) > n:
                raise ValueError(
                    "With padding='circular' the input must be at least as "
                    f"large as the padding {self._explicit_pads} (the wrap "
                    "is taken once). Received: "
                    f"input_shape={input_shape}"
                )

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        name = type(self).__name__
        channels = _validation.known_channels(
            self, input_shape, self._rank + 2, self._channel_axis
        )
        spatial = self._spatial_shape(input_shape)
        if self._needs_static_spatial_shape and any(d is None for d in spatial):
            raise ValueError(
                f"{name} needs known spatial dimensions at "
                "build: the operator norm of a zero-padded convolution "
                "depends on the input size (it grows with it), so the "
                "normalization is only valid up to the size it was computed "
                "for. Build the layer with the largest input size it will "
                f"see. Received: input_shape={input_shape}"
            )
        if channels % self.groups:
            raise ValueError(
                f"`groups`={self.groups} must divide the number of input "
                f"channels. Received: input_shape={input_shape}"
            )
        if self.padding == "valid" and not self._transpose:
            for n, k in zip(spatial, self._effective_kernel_size):
                if n is not None and n < k:
                    raise ValueError(
                        "With padding='valid' the spatial input size must be "
                        f">= kernel_size={self.kernel_size} (dilated: "
                        f"{self._effective_kernel_size}). "
                        f"Received: input_shape={input_shape}"
                    )
        self._check_circular_size(spatial, input_shape)
        self.built_spatial_shape = spatial
        if self._transpose:
            kernel_shape = self.kernel_size + (self.filters, channels)
        else:
            kernel_shape = self.kernel_size + (
                channels // self.groups,
                self.filters,
            )
        _kernel_arguments.add_kernel_and_bias(
            self, kernel_shape, bias_units=self.filters
        )
        self._build_state(input_shape)
        self.input_spec = keras.layers.InputSpec(
            ndim=self._rank + 2, axes={self._channel_axis: channels}
        )

    def _build_state(self, input_shape):
        """Creates the layer's non-trainable state, if any."""

    def compute_output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        spatial = self._output_spatial(self._spatial_shape(input_shape))
        if self.data_format == "channels_last":
            return (input_shape[0], *spatial, self.filters)
        return (input_shape[0], self.filters, *spatial)

    def _check_input_size(self, inputs):
        spatial = self._spatial_shape(tuple(inputs.shape))
        self._check_circular_size(spatial, tuple(inputs.shape))
        built = self.built_spatial_shape
        if built is None:
            return
        for n, b in zip(spatial, built):
            if n is None or b is None:
                continue
            if self.padding == "circular" and n != b:
                raise ValueError(
                    f"{type(self).__name__} was built for spatial size "
                    f"{built} with padding='circular': its operator is a "
                    "circular convolution on that torus, and its norm (and "
                    "`lipschitz_upper_bound`) differs on any other size. "
                    "Build the layer with the size it will see, or with "
                    "`None` spatial dimensions where the layer allows it. "
                    f"Received input spatial size {spatial}."
                )
            if n > b:
                raise ValueError(
                    f"{type(self).__name__} was built for spatial size "
                    f"{built} and its normalization (and "
                    "`lipschitz_upper_bound`) is only valid for inputs up to "
                    "that size: the norm of a zero-padded convolution grows "
                    "with the input size. Build the layer with the largest "
                    "input size it will see. Received input spatial size "
                    f"{spatial}."
                )

    # ------------------------------------------------------------- the maths
    def _constrain(self, kernel, training):
        raise NotImplementedError

    def _constrained_kernel(self, training):
        kernel = ops.cast(self.kernel, "float32")
        return _kernel_arguments.scale_by_lipschitz(
            self, self._constrain(kernel, training)
        )

    def _operator_kernel(self, kernel):
        """The kernel of the normalized operator: inflated when dilated."""
        return _inflate_kernel(kernel, self.dilation_rate)

    def _group_slices(self, kernel, u, channel_axis, slice_kernel=True):
        """`[(kernel_g, u_g)]`: each group's kernel and slice of `u`.

        With `slice_kernel=False`, `kernel` is a tensor of `u`'s shape,
        sliced like `u`.
        """
        if self.groups == 1:
            return [(kernel, u)]
        size_in = u.shape[channel_axis] // self.groups
        size_out = kernel.shape[-1] // self.groups
        pairs = []
        for g in range(self.groups):
            u_g = _take(u, channel_axis, g * size_in, (g + 1) * size_in)
            if slice_kernel:
                kernel_g = kernel[..., g * size_out : (g + 1) * size_out]
            else:
                kernel_g = _take(
                    kernel, channel_axis, g * size_in, (g + 1) * size_in
                )
            pairs.append((kernel_g, u_g))
        return pairs

    def _scale_groups(self, kernel, scales):
        """`kernel` with output block g multiplied by `scales[g]`."""
        if len(scales) == 1:
            return kernel * scales[0]
        size = kernel.shape[-1] // len(scales)
        factors = ops.concatenate(
            [ops.ones((size,), kernel.dtype) * s for s in scales]
        )
        return kernel * factors

    def call(self, inputs, training=None):
        self._check_input_size(inputs)
        kernel = ops.cast(self._constrained_kernel(training), inputs.dtype)
        if self._transpose:
            outputs = ops.conv_transpose(
                inputs,
                kernel,
                strides=self.strides,
                padding=self.padding,
                data_format=self.data_format,
            )
        else:
            x = inputs
            if self._explicit_pads is not None:
                x = _pad_spatial(
                    x,
                    self._spatial_axes,
                    self._explicit_pads,
                    self.padding == "circular",
                )
            outputs = ops.conv(
                x,
                kernel,
                strides=self.strides,
                padding=self._conv_padding,
                data_format=self.data_format,
                dilation_rate=self.dilation_rate,
            )
        if self.bias is not None:
            outputs = _kernel_arguments.add_channel_bias(
                outputs, self.bias, self.data_format
            )
        return self.activation(outputs)

    # ------------------------------------------------------ certification
    def effective_kernel(self):
        """The constrained kernel used in inference mode, as a NumPy array.

        In the layout of the matching Keras layer, whatever the
        `data_format`: `(k_h, k_w, c_in / groups, filters)` for a 2-D
        conv, `(k, c_in / groups, filters)` for a 1-D conv and
        `(k_h, k_w, filters, c_in)` for a transposed conv; including the
        `lipschitz` factor: this is what an export copies into a plain
        `keras.layers.Conv2D` (`Conv1D`, `Conv2DTranspose`).
        """
        return ops.convert_to_numpy(self._constrained_kernel(training=False))

    def _as_2d(self, kernel):
        """A 1-D kernel, strides and dilation as 2-D ones of height 1."""
        if self._rank == 1:
            return kernel[None], (1,) + self.strides, (1,) + self.dilation_rate
        return kernel, self.strides, self.dilation_rate

    def _bound_size(self, input_size):
        """The operator's 2-D spatial size for a layer input size, or None."""
        if input_size is None:
            input_size = self.built_spatial_shape
        if input_size is None:
            return None
        if isinstance(input_size, int):
            input_size = (input_size,)
        input_size = tuple(input_size)
        if len(input_size) != self._rank:
            raise ValueError(
                f"`input_size` must have {self._rank} entries. "
                f"Received: input_size={input_size!r}"
            )
        if any(n is None for n in input_size):
            return None
        size = self._operator_spatial(input_size)
        return (1,) + size if self._rank == 1 else size

    def _size_free_bound(self, part, strides, dilation):
        """A bound of one group's conv that holds for every input size.

        The reshaped-kernel bound $\\sqrt\\nu\\,\\|R\\|$ (zero padding, and
        circular padding on sizes that are multiples of the strides; with
        dilation the taps stay distinct and $\\nu = k_hk_w$ at stride 1),
        and for zero padding also the "Fantastic Four" bound of the
        inflated kernel.
        """
        bound = _reshaped_kernel_bound(part, strides)
        if self.padding != "circular":
            bound = min(
                bound,
                bounds.conv_reshaped_upper_bound(
                    bounds.dilate_kernel(part, dilation)
                ),
            )
        return bound

    def lipschitz_upper_bound(self, input_size=None):
        """Guaranteed upper bound on the layer's ℓ2 Lipschitz constant.

        Computed on the host in float64 from the inference-mode kernel
        (`effective_kernel()`), on the built input size, padding, stride,
        dilation (the inflated kernel) and groups (the largest bound of the
        group convolutions: the operator is block diagonal), times the
        activation's Lipschitz constant:

        - zero padding: `keras_lipschitz.bounds.conv_spectral_norm_upper_bound`
          (the exact operator norm for small inputs, the FFT bound of
          Sedghi et al. (ICLR 2019) on a padded grid otherwise);
        - circular padding: the exact norm of the circular convolution,
          `keras_lipschitz.bounds.circular_conv_spectral_norm`;
        - transposed layers: the bound of the conv they are the adjoint of,
          on their output size.

        It holds whatever the state of training or of the power iteration,
        for every input up to that size (of exactly that size with circular
        padding). It can be slightly above `lipschitz`.

        Args:
            input_size: optional spatial input size (`(h, w)`, or `(n,)` /
                `n` for a 1-D conv); defaults to the built spatial size.
                When neither is known (a Björck layer built with `None`
                spatial dimensions), the size-independent bound
                $\\min(\\sqrt{\\nu}\\,\\|R\\|,
                \\sqrt{k_hk_w}\\min_i\\|R_i\\|)$ is used (reshaped kernel and
                "Fantastic Four" bounds, valid for every input size; the
                first alone for circular padding).

        Returns:
            A Python float.
        """
        if not self.built:
            raise ValueError(
                f"{type(self).__name__} must be built before its bound can "
                "be computed."
            )
        kernel = np.asarray(self.effective_kernel(), dtype=np.float64)
        kernel, strides, dilation = self._as_2d(kernel)
        size = self._bound_size(input_size)
        norms = []
        for part in bounds.conv_kernel_parts(kernel, self.groups):
            if size is None:
                norms.append(self._size_free_bound(part, strides, dilation))
                continue
            inflated = bounds.dilate_kernel(part, dilation)
            if self.padding == "circular":
                norms.append(
                    bounds.circular_conv_spectral_norm(inflated, size, strides)
                )
            else:
                norms.append(
                    bounds.conv_spectral_norm_upper_bound(
                        inflated, size, strides, self.padding
                    )
                )
        return float(max(norms)) * self._activation_lipschitz

    def operator_matrix(self, input_size=None):
        """The explicit float64 matrix of the layer's linear part.

        Padding (zero, circular or causal), stride, dilation, groups and
        transposition included: it maps the flattened channels-last input
        of spatial size `input_size` to the flattened channels-last output
        (whatever the `data_format`; singular values do not depend on the
        order). Meant for small inputs (tests, `compute_layer_sv`).

        Args:
            input_size: optional spatial input size; defaults to the built
                one.

        Returns:
            A NumPy array `(output_dim, input_dim)`.
        """
        if input_size is None:
            input_size = self.built_spatial_shape
        if isinstance(input_size, int):
            input_size = (input_size,)
        if input_size is None or any(n is None for n in input_size):
            raise ValueError(
                "`operator_matrix` needs the spatial input size. "
                f"Received: input_size={input_size!r}"
            )
        input_size = tuple(input_size)
        kernel = np.asarray(self.effective_kernel(), dtype=np.float64)
        kernel, strides, dilation = self._as_2d(kernel)
        kernel = bounds.dilate_kernel(
            _block_diagonal_kernel(kernel, self.groups), dilation
        )
        size = ((1,) if self._rank == 1 else ()) + input_size
        if self._transpose:
            out = self._output_spatial(input_size)
            return bounds.conv_operator_matrix(
                kernel, out, strides, self.padding
            ).T
        pads = self._explicit_pads
        if pads is None:
            return bounds.conv_operator_matrix(
                kernel, size, strides, self.padding
            )
        pads = (((0, 0),) if self._rank == 1 else ()) + pads
        circular = self.padding == "circular"
        factors = [
            _explicit_padding_matrix(n, before, after, circular)
            for n, (before, after) in zip(size, pads)
        ]
        padded = tuple(f.shape[0] for f in factors)
        conv = bounds.conv_operator_matrix(kernel, padded, strides, "valid")
        pad = np.kron(
            np.kron(factors[0], factors[1]), np.eye(kernel.shape[2])
        )
        return conv @ pad

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "kernel_size": self.kernel_size,
                "strides": self.strides,
                "padding": self.padding,
                "data_format": self.data_format,
                "power_iterations": self.power_iterations,
            }
        )
        if self._supports_dilation:
            config["dilation_rate"] = self.dilation_rate
        if self._supports_groups:
            config["groups"] = self.groups
        config.update(_kernel_arguments.kernel_arguments_config(self))
        return config


# The 2-D base under its historical name (AOL, LiResNet and others subclass
# it; 1-D and transposed layers are instances too).
_LipschitzConv2D = _LipschitzConv


# ------------------------------------------------------ spectral normalization
class _SpectralNormalizedConv(_LipschitzConv):
    """Division by the operator norm on the built size (see SpectralConv2D).

    One power iteration (training) or Lanczos run (inference) per group,
    each on that group's slice of `u` and kernel, through the group's conv
    $A_g$ (explicit padding, stride, inflated kernel) and its exact adjoint.
    """

    _needs_static_spatial_shape = True

    def __init__(
        self, filters, kernel_size, eval_power_iterations=50, **kwargs
    ):
        super().__init__(filters, kernel_size, **kwargs)
        self.eval_power_iterations = _validation.validate_positive_int(
            "eval_power_iterations", eval_power_iterations
        )
        self._output_padding = None
        self._norm_spatial = None
        self._mixing = None

    def _build_state(self, input_shape):
        self._norm_spatial = self._operator_spatial(self.built_spatial_shape)
        padded = self._norm_spatial
        if self._explicit_pads is not None:
            padded = tuple(
                n + before + after
                for n, (before, after) in zip(padded, self._explicit_pads)
            )
        self._output_padding = normalizers.conv_transpose_output_padding(
            padded,
            self._effective_kernel_size,
            self.strides,
            self._conv_padding,
        )
        # The operator's input channels: the layer's, or for a transposed
        # layer its filters.
        channels = (
            self.filters
            if self._transpose
            else input_shape[self._channel_axis]
        )
        if self.data_format == "channels_last":
            u_shape = (1, *self._norm_spatial, channels)
        else:
            u_shape = (1, channels, *self._norm_spatial)
        self.u = self.add_weight(
            name="u",
            shape=u_shape,
            initializer=keras.initializers.RandomNormal(seed=0),
            trainable=False,
            autocast=False,
        )
        if self.padding == "circular":
            # A fixed generic vector: nonzero in every Fourier mode and
            # channel direction (almost surely), the same on every backend
            # and in both data formats.
            mixing = np.random.default_rng(20250101).normal(
                size=(1, *self._norm_spatial, channels)
            )
            if self.data_format == "channels_first":
                mixing = np.moveaxis(mixing, -1, 1)
            self._mixing = mixing.astype("float32")
        # Start from a converged vector so the first training steps are
        # already normalized by a tight estimate: restarted Lanczos, each
        # cycle from the previous Ritz vector (much more accurate than
        # power iteration with as many operator applications).
        kernel = self._operator_kernel(ops.cast(self.kernel, "float32"))
        pieces = []
        for kernel_g, u_g in self._group_slices(
            kernel, ops.convert_to_tensor(self.u), self._u_channel_axis
        ):
            for _ in range(INITIAL_LANCZOS_CYCLES):
                u_g = self._lanczos(kernel_g, u_g, self.eval_power_iterations)
            pieces.append(u_g)
        self.u.assign(ops.cast(self._join_groups(pieces), self.u.dtype))

    @property
    def _u_channel_axis(self):
        return self._rank + 1 if self.data_format == "channels_last" else 1

    def _join_groups(self, pieces):
        if len(pieces) == 1:
            return pieces[0]
        return ops.concatenate(pieces, axis=self._u_channel_axis)

    def _forward(self, x, kernel):
        """$A_gx$: explicit padding, then the conv by the operator kernel."""
        if self._explicit_pads is not None:
            x = _pad_spatial(
                x,
                self._spatial_axes,
                self._explicit_pads,
                self.padding == "circular",
            )
        return ops.conv(
            x,
            kernel,
            strides=self.strides,
            padding=self._conv_padding,
            data_format=self.data_format,
        )

    def _adjoint(self, y, kernel):
        """$A_g^Ty$: the transposed conv, then the padding's adjoint."""
        z = ops.conv_transpose(
            y,
            kernel,
            strides=self.strides,
            padding=self._conv_padding,
            output_padding=self._output_padding,
            data_format=self.data_format,
        )
        if self._explicit_pads is not None:
            z = _pad_spatial_adjoint(
                z,
                self._spatial_axes,
                self._explicit_pads,
                self._norm_spatial,
                self.padding == "circular",
            )
        return z

    def _power_iteration(self, kernel, u, iterations):
        return normalizers._power_iteration(
            self._forward, self._adjoint, kernel, u, iterations
        )

    def _lanczos(self, kernel, u, steps):
        kernel = ops.stop_gradient(kernel)
        return normalizers.lanczos_top_vector(
            lambda x: self._adjoint(self._forward(x, kernel), kernel),
            ops.stop_gradient(u),
            steps,
        )

    def _mixed(self, u, weight):
        """`u` (per group, normalized) plus `weight` times the mixing vector.

        Only for circular padding (see `_CIRCULAR_MIX_TRAINING`); the
        result is a start vector, never stored as it is.
        """
        if self._mixing is None:
            return u
        mixing = ops.convert_to_tensor(self._mixing)
        pieces = []
        for (m_g, u_g) in self._group_slices(
            mixing, u, self._u_channel_axis, slice_kernel=False
        ):
            pieces.append(
                normalizers.l2_normalize(u_g)
                + weight * normalizers.l2_normalize(m_g)
            )
        return self._join_groups(pieces)

    def _constrain(self, kernel, training):
        operator = self._operator_kernel(kernel)
        u = ops.convert_to_tensor(self.u)
        u = self._mixed(
            u, _CIRCULAR_MIX_TRAINING if training else _CIRCULAR_MIX_INFERENCE
        )
        scales, pieces = [], []
        for kernel_g, u_g in self._group_slices(
            operator, u, self._u_channel_axis
        ):
            if training:
                u_g, sigma = self._power_iteration(
                    kernel_g, u_g, self.power_iterations
                )
                pieces.append(u_g)
            else:
                # Not written back: inference never mutates the layer.
                x = self._lanczos(kernel_g, u_g, self.eval_power_iterations)
                _, sigma = self._power_iteration(kernel_g, x, 0)
            # A multiply by the scalar 1/sigma has a cheaper gradient than
            # a kernel-sized division.
            scales.append(ops.reciprocal(sigma))
        if training:
            self.u.assign(ops.cast(self._join_groups(pieces), self.u.dtype))
        return self._scale_groups(kernel, scales)

    def get_config(self):
        config = super().get_config()
        config["eval_power_iterations"] = self.eval_power_iterations
        return config


@keras_lipschitz_export
class SpectralConv2D(_SpectralNormalizedConv):
    """2-D convolution normalized by its operator norm on the input size.

    With $A_K$ the zero-padded, strided convolution by the raw kernel $K$
    acting on inputs of the layer's built size $H \\times W$,

    $$y = \\phi\\Big(\\mathrm{conv}\\big(x,\\, L\\,K/\\hat\\sigma(A_K)\\big)
      + b\\Big),$$

    where $L$ is `lipschitz` and $\\hat\\sigma(A_K)$ estimates
    $\\|A_K\\|_2$ by power iteration through the operator and its adjoint
    (Miyato et al., "Spectral Normalization for Generative Adversarial
    Networks", ICLR 2018, applied to the conv operator itself rather than to
    a reshaped kernel):

    $$v \\leftarrow A_Ku/\\|A_Ku\\|,\\quad
      u \\leftarrow A_K^Tv/\\|A_K^Tv\\|,\\quad \\hat\\sigma = \\|A_Ku\\|,$$

    with $A_K$ = `ops.conv` and $A_K^T$ = `ops.conv_transpose` (same kernel,
    strides and padding, with the `output_padding` that makes it the exact
    adjoint). The vector `u` has the input shape with batch size 1; it is a
    non-trainable float32 weight, warm-started across steps, written only
    when `training` is true, with its gradient stopped.

    - **Training**: `power_iterations` steps per call (differentiable
      through $\\hat\\sigma$ with `u` held constant, as in Miyato et al.);
      `u` is updated.
    - **Inference**: `eval_power_iterations` steps of Lanczos with full
      reorthogonalization on $A_K^TA_K$, started from the stored `u`, which
      is *not* written. The top Ritz vector $x$ gives
      $\\hat\\sigma = \\|A_Kx\\|$. The Krylov space contains the power
      iterates of `u`, so this is never worse than power iteration with as
      many operator applications, and it is much better on the clustered
      spectra of convolutions: from a stale `u` after large weight changes,
      power iteration (30 steps) left errors up to 1e-1 where Lanczos
      (50 steps) left 3e-4. It keeps `eval_power_iterations` vectors of the
      input size in memory.
    - **Build**: two Lanczos cycles from a random vector, so `u` starts
      converged.

    Because the norm is that of the real operator (padding, stride and
    size included), the layer's Lipschitz constant is `lipschitz`, not a
    loose upper bound of it. Any unit vector gives
    $\\|A_Kx\\| \\le \\|A_K\\|$, so the estimate can only *under*-estimate
    the norm and the constant can exceed `lipschitz` by the (small)
    remaining error; `lipschitz_upper_bound()` gives the guaranteed value,
    computed in float64 (the exact operator norm for small inputs, the FFT
    bound of Sedghi, Gupta, Long, "The Singular Values of Convolutional
    Layers", ICLR 2019, on a padded grid otherwise). Certify with that
    value, not with `lipschitz`.

    **Groups, dilation, circular padding.**

    - With `groups` $= g$, output block $i$ reads only input block $i$:
      the operator is block diagonal, and each group's kernel is divided
      by the estimate of *its own* norm (one power iteration per group, on
      that group's slice of `u`), so every group is `lipschitz`-Lipschitz
      and so is the layer (the norm of a block-diagonal operator is the
      largest block norm).
    - With `dilation_rate` $d$ the operator is the conv by the inflated
      kernel of size $d(k-1)+1$ (zeros between the taps), on which the
      iterations run; the layer itself calls `ops.conv` with the dilation.
    - With `padding="circular"` the input is wrapped around (Keras's
      "same" amounts, $k - s$ in all, the extra one after), then convolved
      with "valid" padding: a circular convolution on the torus of the
      input size, whose adjoint is `ops.conv_transpose` followed by folding
      the wrapped copies back. Spatial sizes must be multiples of the
      strides. The norm of a circular conv is not monotone in the size, so
      the layer refuses inputs of any other size than the built one. Its
      bound is the exact norm (DFT on the torus). Every circular conv
      leaves the same Fourier modes invariant, so a vector converged for
      one kernel would stay in its modes when the kernel changes: a fixed
      generic vector is added to the start vector (weight 0.01 in
      training, 0.1 at inference) so every mode is reached.

    The norm of a zero-padded convolution grows with the input size, so
    the layer needs static spatial dimensions at build and refuses larger
    inputs; smaller inputs are fine (their operator is a compression of the
    built one).

    Args:
        filters: positive int, number of output channels.
        kernel_size: int or tuple of 2 ints (odd or even).
        strides: int or tuple of 2 ints.
        padding: `"same"`, `"valid"` (zero padding, Keras convention) or
            `"circular"`.
        data_format: `"channels_last"`, `"channels_first"` or None (the
            global image data format). The kernel layout is always
            `(k_h, k_w, c_in / groups, c_out)`.
        lipschitz: positive float, the layer's Lipschitz constant (before
            the activation).
        activation: None or a Keras activation with a known Lipschitz
            constant (`relu`, `tanh`, ...).
        use_bias: bool.
        kernel_initializer: initializer of the raw kernel (default
            `"orthogonal"`).
        bias_initializer: initializer of the bias.
        kernel_regularizer, bias_regularizer: optional regularizers.
        kernel_constraint, bias_constraint: optional constraints.
        power_iterations: int >= 1, power-iteration steps per training call.
        eval_power_iterations: int >= 1, Lanczos steps (operator
            applications, from the stored `u`, without writing it) per
            inference call.
        dilation_rate: int or tuple of 2 ints (not with `strides` > 1).
        groups: positive int dividing `filters` and the input channels.

    Input shape:
        4-D tensor `(batch, H, W, c_in)` (channels_last) or
        `(batch, c_in, H, W)` (channels_first), with `H`, `W` at most the
        built size (exactly the built size with circular padding).

    Output shape:
        `(batch, H', W', filters)` or `(batch, filters, H', W')`, with
        `H' = ceil(H / s_h)` ("same", "circular") or
        `floor((H - d_h (k_h - 1) - 1) / s_h) + 1` ("valid").

    Example:

    >>> layer = SpectralConv2D(4, 3, use_bias=False)
    >>> y = layer(np.ones((2, 8, 8, 3), "float32"))
    >>> tuple(y.shape)
    (2, 8, 8, 4)
    >>> bool(layer.lipschitz_upper_bound() <= 1.0 + 1e-3)
    True
    """

    _supports_groups = True
    _supports_dilation = True
    _paddings = ("same", "valid", "circular")

    def __init__(
        self,
        filters,
        kernel_size,
        strides=(1, 1),
        padding="same",
        data_format=None,
        lipschitz=1.0,
        activation=None,
        use_bias=True,
        kernel_initializer="orthogonal",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        power_iterations=1,
        eval_power_iterations=50,
        dilation_rate=(1, 1),
        groups=1,
        **kwargs,
    ):
        super().__init__(
            filters,
            kernel_size,
            strides=strides,
            padding=padding,
            data_format=data_format,
            lipschitz=lipschitz,
            activation=activation,
            use_bias=use_bias,
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
            kernel_regularizer=kernel_regularizer,
            bias_regularizer=bias_regularizer,
            kernel_constraint=kernel_constraint,
            bias_constraint=bias_constraint,
            power_iterations=power_iterations,
            eval_power_iterations=eval_power_iterations,
            dilation_rate=dilation_rate,
            groups=groups,
            **kwargs,
        )


@keras_lipschitz_export
class SpectralConv1D(_SpectralNormalizedConv):
    """1-D convolution normalized by its operator norm on the input length.

    The 1-D twin of `SpectralConv2D` (same maths and implementation, on
    inputs `(batch, n, c_in)`): with $A_K$ the convolution by the raw
    kernel $K$ (`(k, c_in / groups, filters)`) on the built length $n$,
    its padding, stride, dilation and groups,

    $$y = \\phi\\Big(\\mathrm{conv}\\big(x,\\, L\\,K/\\hat\\sigma(A_K)\\big)
      + b\\Big),$$

    with $\\hat\\sigma$ from power iteration through `ops.conv` and its
    exact adjoint `ops.conv_transpose` in training and Lanczos at inference
    (Miyato et al., ICLR 2018, on the operator itself), one per group.
    `padding` may also be `"causal"` ($d(k-1)$ zeros in front, as
    `keras.layers.Conv1D`) or `"circular"` (the sequence wrapped around;
    the length must be a multiple of the stride, and only the built length
    is accepted). `lipschitz_upper_bound()` is the guaranteed float64 bound
    of `SpectralConv2D`'s, for a kernel of height 1.

    Args:
        filters: positive int, number of output channels.
        kernel_size: int or tuple of 1 int.
        strides: int or tuple of 1 int.
        padding: `"same"`, `"valid"`, `"causal"` or `"circular"`.
        data_format: `"channels_last"` (`(batch, n, c)`),
            `"channels_first"` (`(batch, c, n)`) or None.
        lipschitz: positive float.
        power_iterations: int >= 1, power-iteration steps per training call.
        eval_power_iterations: int >= 1, Lanczos steps per inference call.
        dilation_rate: int or tuple of 1 int (not with `strides` > 1).
        groups: positive int dividing `filters` and the input channels.
        **kwargs: the other `SpectralConv2D` arguments (activation, bias,
            initializers, regularizers, constraints, layer kwargs).

    Input shape:
        3-D tensor `(batch, n, c_in)` or `(batch, c_in, n)`, `n` at most the
        built length.

    Output shape:
        `(batch, n', filters)` or `(batch, filters, n')`, as
        `keras.layers.Conv1D`.

    Example:

    >>> layer = SpectralConv1D(3, 3, padding="causal")
    >>> tuple(layer(np.ones((2, 8, 2), "float32")).shape)
    (2, 8, 3)
    >>> bool(layer.lipschitz_upper_bound() <= 1.0 + 1e-3)
    True
    """

    _rank = 1
    _supports_groups = True
    _supports_dilation = True
    _paddings = ("same", "valid", "causal", "circular")

    def __init__(
        self,
        filters,
        kernel_size,
        strides=1,
        padding="same",
        data_format=None,
        lipschitz=1.0,
        power_iterations=1,
        eval_power_iterations=50,
        dilation_rate=1,
        groups=1,
        **kwargs,
    ):
        super().__init__(
            filters,
            kernel_size,
            strides=strides,
            padding=padding,
            data_format=data_format,
            lipschitz=lipschitz,
            power_iterations=power_iterations,
            eval_power_iterations=eval_power_iterations,
            dilation_rate=dilation_rate,
            groups=groups,
            **kwargs,
        )


@keras_lipschitz_export
class SpectralConv2DTranspose(_SpectralNormalizedConv):
    """Transposed 2-D convolution normalized by its operator norm.

    The layer computes what `keras.layers.Conv2DTranspose` computes
    (`output_padding=None`), with its kernel $K$ (Keras layout
    `(k_h, k_w, filters, c_in)`) divided by the operator norm:

    $$y = \\phi\\big(A_{\\bar K}^Tx + b\\big),\\qquad
      \\bar K = L\\,K/\\hat\\sigma(A_K),$$

    where $A_K$ is the ordinary conv by the same array (`filters` input
    channels, `c_in` outputs, the layer's strides and padding) acting on
    the layer's *output* size: `ops.conv_transpose` is exactly its adjoint
    there, and $\\|A_K^T\\| = \\|A_K\\|$. $\\hat\\sigma$ is estimated as in
    `SpectralConv2D` (Miyato et al., ICLR 2018, on the operator): power
    iteration through $A_K$ and $A_K^T$ in training, from a persistent
    vector `u` of the output shape, and Lanczos at inference. The layer's
    constant is `lipschitz` up to the estimation error, and
    `lipschitz_upper_bound()` is the guaranteed float64 bound of $A_K$ on
    the built output size (exact for small sizes).

    deel-lip's `SpectralConv2DTranspose` is different: reshaped-kernel
    orthogonalization (our `BjorckConv2DTranspose`) with deel-lip's
    correction factor, and only `padding="same"`. Here `"same"` and
    `"valid"` are both exact adjoints; there is no dilation, no groups and
    no `output_padding` (its border convention would not be the adjoint of
    a conv on the output size).

    Args:
        filters: positive int, number of output channels.
        kernel_size: int or tuple of 2 ints.
        strides: int or tuple of 2 ints (the upsampling factors).
        padding: `"same"` (output `H s`) or `"valid"`
            (output `H s + max(k - s, 0)`).
        data_format: `"channels_last"`, `"channels_first"` or None.
        lipschitz: positive float.
        power_iterations: int >= 1, power-iteration steps per training call.
        eval_power_iterations: int >= 1, Lanczos steps per inference call.
        **kwargs: the other `SpectralConv2D` arguments (activation, bias,
            initializers, regularizers, constraints, layer kwargs).

    Input shape:
        `(batch, H, W, c_in)` or `(batch, c_in, H, W)`, at most the built
        size.

    Output shape:
        `(batch, H', W', filters)` or `(batch, filters, H', W')`, as
        `keras.layers.Conv2DTranspose`.

    Example:

    >>> layer = SpectralConv2DTranspose(2, 3, strides=2)
    >>> tuple(layer(np.ones((1, 4, 4, 3), "float32")).shape)
    (1, 8, 8, 2)
    >>> bool(layer.lipschitz_upper_bound() <= 1.0 + 1e-3)
    True
    """

    _transpose = True

    def __init__(
        self,
        filters,
        kernel_size,
        strides=(1, 1),
        padding="same",
        data_format=None,
        lipschitz=1.0,
        power_iterations=1,
        eval_power_iterations=50,
        **kwargs,
    ):
        super().__init__(
            filters,
            kernel_size,
            strides=strides,
            padding=padding,
            data_format=data_format,
            lipschitz=lipschitz,
            power_iterations=power_iterations,
            eval_power_iterations=eval_power_iterations,
            **kwargs,
        )


# ------------------------------------------------- reshaped kernel (Björck)
class _BjorckNormalizedConv(_LipschitzConv):
    """RKO per group, times the worst-case factor (see BjorckConv2D).

    Group $g$'s kernel (the output block $g$, and for a transposed layer
    the whole kernel) is reshaped to a matrix with one column per output
    channel of the operator, scaled by a power-iteration estimate
    (training) or a Gram-iteration upper bound (inference) of its norm and
    orthonormalized by Björck. `u` holds one row per group.
    """

    def __init__(
        self,
        filters,
        kernel_size,
        bjorck_iterations=15,
        bjorck_beta=0.5,
        eval_gram_iterations=8,
        **kwargs,
    ):
        super().__init__(filters, kernel_size, **kwargs)
        self.bjorck_iterations = _validation.validate_positive_int(
            "bjorck_iterations", bjorck_iterations
        )
        self.bjorck_beta = _validation.validate_bjorck_beta(bjorck_beta)
        self.eval_gram_iterations = _validation.validate_positive_int(
            "eval_gram_iterations", eval_gram_iterations
        )
        self.correction_factor = normalizers.rko_correction_factor(
            self.kernel_size, self.strides
        )

    def _group_kernels(self, kernel):
        if self.groups == 1:
            return [kernel]
        size = kernel.shape[-1] // self.groups
        return [
            kernel[..., g * size : (g + 1) * size] for g in range(self.groups)
        ]

    @staticmethod
    def _matrix(kernel):
        """The `(prod(other axes), last axis)` reshape of a kernel."""
        rows = int(math.prod(kernel.shape[:-1]))
        return ops.reshape(kernel, (rows, kernel.shape[-1]))

    def _build_state(self, input_shape):
        kernels = self._group_kernels(ops.cast(self.kernel, "float32"))
        self.u = self.add_weight(
            name="u",
            shape=(self.groups, kernels[0].shape[-1]),
            initializer=keras.initializers.RandomNormal(seed=0),
            trainable=False,
            autocast=False,
        )
        u = ops.convert_to_tensor(self.u)
        rows = []
        for g, kernel in enumerate(kernels):
            u_g, _ = normalizers.power_iteration_dense(
                self._matrix(kernel), u[g : g + 1], INITIAL_POWER_ITERATIONS
            )
            rows.append(u_g)
        u = rows[0] if len(rows) == 1 else ops.concatenate(rows, axis=0)
        self.u.assign(ops.cast(u, self.u.dtype))

    def _constrain(self, kernel, training):
        u = ops.convert_to_tensor(self.u)
        outputs, rows = [], []
        for g, kernel_g in enumerate(self._group_kernels(kernel)):
            matrix = self._matrix(kernel_g)
            if training:
                u_g, sigma = normalizers.power_iteration_dense(
                    matrix, u[g : g + 1], self.power_iterations
                )
                rows.append(u_g)
            else:
                # A guaranteed upper bound: singular values start in [0, 1].
                sigma = normalizers.gram_spectral_norm_upper_bound(
                    matrix, self.eval_gram_iterations
                )
            matrix = normalizers.bjorck_orthonormalize(
                matrix / sigma, self.bjorck_iterations, self.bjorck_beta
            )
            outputs.append(ops.reshape(matrix, kernel_g.shape))
        if training:
            u = rows[0] if len(rows) == 1 else ops.concatenate(rows, axis=0)
            self.u.assign(ops.cast(u, self.u.dtype))
        if len(outputs) > 1:
            kernel = ops.concatenate(outputs, axis=-1)
        else:
            kernel = outputs[0]
        return kernel * self.correction_factor

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "bjorck_iterations": self.bjorck_iterations,
                "bjorck_beta": self.bjorck_beta,
                "eval_gram_iterations": self.eval_gram_iterations,
            }
        )
        return config


@keras_lipschitz_export
class BjorckConv2D(_BjorckNormalizedConv):
    """2-D convolution with an orthonormalized reshaped kernel (RKO).

    Reshaped kernel orthogonalization, as in deel-lip's `SpectralConv2D`
    (after Anil, Lucas, Grosse, "Sorting out Lipschitz function
    approximation", ICML 2019). With $R \\in \\mathbb{R}^{(k_hk_wc_{in})
    \\times c_{out}}$ the reshaped raw kernel,

    $$\\bar R = \\mathrm{Bjorck}\\big(R/\\hat\\sigma(R)\\big),\\qquad
      \\bar K = L\\,c\\,\\mathrm{reshape}^{-1}(\\bar R),\\qquad
      c = \\frac{1}{\\sqrt{\\lceil k_h/s_h\\rceil\\lceil k_w/s_w\\rceil}},$$

    where Björck is `bjorck_iterations` steps of
    $W \\leftarrow (1+\\beta)W - \\beta WW^TW$ (β = `bjorck_beta`), which
    drives every singular value of $\\bar R$ to 1.

    - **Training**: $\\hat\\sigma(R)$ comes from `power_iterations` steps of
      power iteration with a persistent vector `u` (shape
      `(groups, c_out / groups)`, non-trainable float32, written only in
      training, gradient stopped).
    - **Inference**: $\\hat\\sigma(R)$ is the Gram-iteration upper bound
      (Delattre et al., ICML 2023) with `eval_gram_iterations` squarings,
      so every singular value of $R/\\hat\\sigma$ is at most 1 and Björck
      keeps it there: $\\|\\bar R\\|_2 \\le 1$ without relying on
      convergence.

    **Why the factor c.** Each output pixel is a patch vector times
    $\\bar R$, so $\\|\\mathrm{conv}(x)\\|^2 \\le \\|\\bar R\\|^2
    \\sum_{patches}\\|patch\\|^2 \\le \\nu\\|x\\|^2$, with
    $\\nu = \\lceil k_h/s_h\\rceil\\lceil k_w/s_w\\rceil$ the largest number
    of patches containing one input pixel (any zero padding, any input
    size). $c = 1/\\sqrt\\nu$ therefore *guarantees* the layer is
    `lipschitz`-Lipschitz. deel-lip uses, at stride 1, the factor
    $1/\\sqrt{\\text{average patches per pixel}}$ on the input size, which is
    larger: with it the all-$1/3$ 3×3 kernel (reachable by RKO) gives an
    operator of norm up to 1.02. We use the worst case.

    **Groups, dilation, circular padding.** With `groups` $= g$ each
    group's reshaped kernel $R_g$ (`(k_hk_wc_{in}/g) x (c_{out}/g)`) is
    orthonormalized on its own (one row of `u` each), and the
    block-diagonal operator has the largest group norm. With
    `dilation_rate` (stride 1) the taps of a patch stay distinct pixels, so
    $\\nu = k_hk_w$ and the same factor holds. With `padding="circular"`
    (sizes multiples of the strides) each pixel still lies in at most
    $\\nu$ patches of the torus, so the construction is
    `lipschitz`-Lipschitz for every such size.

    The result is 1-Lipschitz but not orthogonal: most singular values of
    the operator are below `lipschitz`, and gradient-norm preservation is
    lost. The construction does not depend on the input size, so the
    layer can be built with `None` spatial dimensions. When built with a
    static size it refuses larger inputs (other sizes with circular
    padding), because `lipschitz_upper_bound()` (the same float64 bound as
    `SpectralConv2D`) is computed for that size.

    Args:
        filters: positive int, number of output channels.
        kernel_size: int or tuple of 2 ints (odd or even).
        strides: int or tuple of 2 ints.
        padding: `"same"`, `"valid"` or `"circular"`.
        data_format: `"channels_last"`, `"channels_first"` or None.
        lipschitz: positive float.
        power_iterations: int >= 1, power-iteration steps per training call.
        bjorck_iterations: int >= 1, fixed number of Björck steps.
        bjorck_beta: float in (0, 0.5].
        eval_gram_iterations: int >= 1, Gram squarings at inference.
        dilation_rate: int or tuple of 2 ints (not with `strides` > 1).
        groups: positive int dividing `filters` and the input channels.
        **kwargs: the other `SpectralConv2D` arguments (activation, bias,
            initializers, regularizers, constraints, layer kwargs).

    Input shape:
        4-D tensor `(batch, H, W, c_in)` or `(batch, c_in, H, W)`.

    Output shape:
        `(batch, H', W', filters)` or `(batch, filters, H', W')`.

    Example:

    >>> layer = BjorckConv2D(4, 3)
    >>> y = layer(np.ones((1, 8, 8, 4), "float32"))
    >>> r = layer.effective_kernel().reshape(36, 4) * 3.0
    >>> s = np.linalg.svd(r, compute_uv=False)
    >>> bool(np.all(np.abs(s - 1.0) < 1e-2))
    True
    """

    _supports_groups = True
    _supports_dilation = True
    _paddings = ("same", "valid", "circular")

    def __init__(
        self,
        filters,
        kernel_size,
        strides=(1, 1),
        padding="same",
        data_format=None,
        lipschitz=1.0,
        power_iterations=1,
        bjorck_iterations=15,
        bjorck_beta=0.5,
        eval_gram_iterations=8,
        dilation_rate=(1, 1),
        groups=1,
        **kwargs,
    ):
        super().__init__(
            filters,
            kernel_size,
            strides=strides,
            padding=padding,
            data_format=data_format,
            lipschitz=lipschitz,
            power_iterations=power_iterations,
            bjorck_iterations=bjorck_iterations,
            bjorck_beta=bjorck_beta,
            eval_gram_iterations=eval_gram_iterations,
            dilation_rate=dilation_rate,
            groups=groups,
            **kwargs,
        )


@keras_lipschitz_export
class BjorckConv1D(_BjorckNormalizedConv):
    """1-D convolution with an orthonormalized reshaped kernel (RKO).

    The 1-D twin of `BjorckConv2D` (same maths and implementation): the
    reshaped kernel $R$ (`(k c_in / groups) x (filters / groups)` per
    group) is scaled by a power-iteration estimate (training) or a
    Gram-iteration upper bound (inference) of its norm, orthonormalized by
    Björck (Anil, Lucas, Grosse, ICML 2019) and multiplied by
    $c = 1/\\sqrt{\\lceil k/s\\rceil}$, the worst-case number of patches
    containing one input entry, so the layer is `lipschitz`-Lipschitz for
    every input length. `padding` may be `"same"`, `"valid"`, `"causal"`
    or `"circular"` (lengths multiples of the stride).

    Args:
        filters: positive int, number of output channels.
        kernel_size: int or tuple of 1 int.
        strides: int or tuple of 1 int.
        padding: `"same"`, `"valid"`, `"causal"` or `"circular"`.
        data_format: `"channels_last"`, `"channels_first"` or None.
        lipschitz: positive float.
        power_iterations: int >= 1.
        bjorck_iterations: int >= 1, fixed number of Björck steps.
        bjorck_beta: float in (0, 0.5].
        eval_gram_iterations: int >= 1, Gram squarings at inference.
        dilation_rate: int or tuple of 1 int (not with `strides` > 1).
        groups: positive int dividing `filters` and the input channels.
        **kwargs: the other `SpectralConv2D` arguments.

    Input shape:
        3-D tensor `(batch, n, c_in)` or `(batch, c_in, n)`.

    Output shape:
        `(batch, n', filters)` or `(batch, filters, n')`, as
        `keras.layers.Conv1D`.

    Example:

    >>> layer = BjorckConv1D(4, 2, strides=2)
    >>> tuple(layer(np.ones((1, 8, 2), "float32")).shape)
    (1, 4, 4)
    >>> s = np.linalg.svd(layer.effective_kernel().reshape(4, 4),
    ...                   compute_uv=False)
    >>> bool(np.all(np.abs(s - 1.0) < 1e-2))
    True
    """

    _rank = 1
    _supports_groups = True
    _supports_dilation = True
    _paddings = ("same", "valid", "causal", "circular")

    def __init__(
        self,
        filters,
        kernel_size,
        strides=1,
        padding="same",
        data_format=None,
        lipschitz=1.0,
        power_iterations=1,
        bjorck_iterations=15,
        bjorck_beta=0.5,
        eval_gram_iterations=8,
        dilation_rate=1,
        groups=1,
        **kwargs,
    ):
        super().__init__(
            filters,
            kernel_size,
            strides=strides,
            padding=padding,
            data_format=data_format,
            lipschitz=lipschitz,
            power_iterations=power_iterations,
            bjorck_iterations=bjorck_iterations,
            bjorck_beta=bjorck_beta,
            eval_gram_iterations=eval_gram_iterations,
            dilation_rate=dilation_rate,
            groups=groups,
            **kwargs,
        )


@keras_lipschitz_export
class BjorckConv2DTranspose(_BjorckNormalizedConv):
    """Transposed 2-D convolution with an orthonormalized reshaped kernel.

    The layer computes what `keras.layers.Conv2DTranspose` computes
    (`output_padding=None`) with the kernel $K$ (Keras layout
    `(k_h, k_w, filters, c_in)`) replaced by

    $$\\bar K = L\\,c\\,\\mathrm{reshape}^{-1}\\Big(\\mathrm{Bjorck}
      \\big(R/\\hat\\sigma(R)\\big)\\Big),\\qquad
      R \\in \\mathbb{R}^{(k_hk_w\\,\\mathrm{filters}) \\times c_{in}},\\qquad
      c = \\frac{1}{\\sqrt{\\lceil k_h/s_h\\rceil\\lceil k_w/s_w\\rceil}}.$$

    The transposed conv is the adjoint of the conv $A$ by the same array
    (`filters` inputs, `c_in` outputs) on its output size, and $R$ is the
    reshaped kernel of $A$, so `BjorckConv2D`'s argument gives
    $\\|A^T\\| = \\|A\\| \\le \\sqrt\\nu\\,\\|R\\|$ and the layer is
    `lipschitz`-Lipschitz for every input size (Anil, Lucas, Grosse,
    ICML 2019, for Björck; $\\hat\\sigma$ by power iteration in training
    and a Gram-iteration upper bound at inference, as in `BjorckConv2D`).
    With `kernel_size == strides` the patches do not overlap and, when $R$
    has orthonormal columns ($k_hk_w\\,\\mathrm{filters} \\ge c_{in}$), the
    layer is an isometry.

    deel-lip's `SpectralConv2DTranspose` (RKO, `padding="same"`)
    orthonormalizes the other reshape, `(k_h k_w c_in) x filters`, with
    its stride-dependent factor; that does not bound the transposed conv
    (with `kernel_size=strides=2`, one input channel and four filters its
    layer has norm 2). This layer is the sound counterpart.

    Args:
        filters: positive int, number of output channels.
        kernel_size: int or tuple of 2 ints.
        strides: int or tuple of 2 ints.
        padding: `"same"` or `"valid"`.
        data_format: `"channels_last"`, `"channels_first"` or None.
        lipschitz: positive float.
        power_iterations: int >= 1.
        bjorck_iterations: int >= 1, fixed number of Björck steps.
        bjorck_beta: float in (0, 0.5].
        eval_gram_iterations: int >= 1, Gram squarings at inference.
        **kwargs: the other `SpectralConv2D` arguments.

    Input shape:
        `(batch, H, W, c_in)` or `(batch, c_in, H, W)`.

    Output shape:
        As `keras.layers.Conv2DTranspose`.

    Example:

    >>> layer = BjorckConv2DTranspose(2, 2, strides=2)
    >>> tuple(layer(np.ones((1, 3, 3, 4), "float32")).shape)
    (1, 6, 6, 2)
    >>> bool(layer.lipschitz_upper_bound() <= 1.0 + 1e-6)
    True
    """

    _transpose = True

    def __init__(
        self,
        filters,
        kernel_size,
        strides=(1, 1),
        padding="same",
        data_format=None,
        lipschitz=1.0,
        power_iterations=1,
        bjorck_iterations=15,
        bjorck_beta=0.5,
        eval_gram_iterations=8,
        **kwargs,
    ):
        super().__init__(
            filters,
            kernel_size,
            strides=strides,
            padding=padding,
            data_format=data_format,
            lipschitz=lipschitz,
            power_iterations=power_iterations,
            bjorck_iterations=bjorck_iterations,
            bjorck_beta=bjorck_beta,
            eval_gram_iterations=eval_gram_iterations,
            **kwargs,
        )


@keras_lipschitz_export
class FrobeniusConv2D(_LipschitzConv2D):
    """2-D convolution normalized by the Frobenius norm of its kernel.

    $$\\bar K = \\frac{L\\,c\\,K}{\\|K\\|_F},\\qquad
      c = \\frac{1}{\\sqrt{\\lceil k_h/s_h\\rceil\\lceil k_w/s_w\\rceil}},$$

    with $L$ = `lipschitz`. With $R$ the reshaped kernel,
    $\\|\\mathrm{conv}_K\\| \\le \\sqrt\\nu\\,\\|R\\|_2 \\le
    \\sqrt\\nu\\,\\|K\\|_F$ ($\\nu = 1/c^2$ the largest number of patches
    containing one pixel, see `BjorckConv2D`), so the layer is
    $L$-Lipschitz for any input size, padding and stride. No iteration and
    no state: the normalization is exact. It is tight for a single output
    channel whose reshaped kernel is rank 1 (deel-lip's intended use: the
    last layer of a binary classifier); otherwise most of the norm budget
    is lost, and `BjorckConv2D` or `SpectralConv2D` are better.

    deel-lip's `FrobeniusConv2D` uses, at stride 1, the factor
    $1/\\sqrt{\\text{average patches per pixel}}$ (larger than $c$, and not
    a guarantee, see `BjorckConv2D`); weights ported from deel-lip give
    slightly smaller, sound, outputs here.

    Args:
        filters: positive int.
        kernel_size: int or tuple of 2 ints.
        strides: int or tuple of 2 ints.
        padding: `"same"` or `"valid"`.
        data_format: `"channels_last"`, `"channels_first"` or None.
        lipschitz: positive float.
        **kwargs: the other `SpectralConv2D` arguments (activation, bias,
            initializers, regularizers, constraints, layer kwargs).

    Example:

    >>> layer = FrobeniusConv2D(1, 3)
    >>> _ = layer(np.ones((1, 6, 6, 2), "float32"))
    >>> round(float(np.linalg.norm(layer.effective_kernel())), 4)  # 1/3
    0.3333
    >>> bool(layer.lipschitz_upper_bound() <= 1.0 + 1e-6)
    True
    """

    def __init__(
        self,
        filters,
        kernel_size,
        strides=(1, 1),
        padding="same",
        data_format=None,
        lipschitz=1.0,
        **kwargs,
    ):
        super().__init__(
            filters,
            kernel_size,
            strides=strides,
            padding=padding,
            data_format=data_format,
            lipschitz=lipschitz,
            **kwargs,
        )
        self.correction_factor = normalizers.rko_correction_factor(
            self.kernel_size, self.strides
        )

    def _constrain(self, kernel, training):
        norm = ops.sqrt(ops.sum(ops.square(kernel)))
        scale = self.correction_factor / ops.maximum(norm, normalizers.EPSILON)
        return kernel * scale

    def get_config(self):
        config = super().get_config()
        # No power iteration here.
        config.pop("power_iterations", None)
        return config


_PAD_MODES = ("same", "valid", "constant", "reflect", "symmetric", "circular")


def _pad_axis(x, axis, pad, mode):
    """Pads one spatial axis by `pad` on both sides, by slicing (exact)."""
    if pad == 0:
        return x
    size = x.shape[axis]

    def take(start, stop):
        index = [slice(None)] * len(x.shape)
        index[axis] = slice(start, stop)
        return x[tuple(index)]

    if mode == "constant":
        widths = [(0, 0)] * len(x.shape)
        widths[axis] = (pad, pad)
        return ops.pad(x, widths)
    if mode == "circular":
        before, after = take(size - pad, size), take(0, pad)
    elif mode == "reflect":
        before = ops.flip(take(1, pad + 1), axis=axis)
        after = ops.flip(take(size - pad - 1, size - 1), axis=axis)
    else:  # symmetric
        before = ops.flip(take(0, pad), axis=axis)
        after = ops.flip(take(size - pad, size), axis=axis)
    return ops.concatenate([before, x, after], axis=axis)


def _padding_matrix(size, pad, mode):
    """The 0/1 matrix `(size + 2 pad, size)` of one axis's padding."""
    rows = []
    for i in range(-pad, size + pad):
        row = np.zeros(size)
        if 0 <= i < size:
            row[i] = 1.0
        elif mode == "circular":
            row[i % size] = 1.0
        elif mode == "reflect":
            row[-i if i < 0 else 2 * (size - 1) - i] = 1.0
        elif mode == "symmetric":
            row[-i - 1 if i < 0 else 2 * size - 1 - i] = 1.0
        rows.append(row)
    return np.stack(rows)


@keras_lipschitz_export
class PadConv2D(keras.layers.Layer):
    """Unconstrained 2-D convolution with reflect/symmetric/circular padding.

    The input is padded by $\\lfloor k/2\\rfloor$ on each side with `padding`
    (`"constant"` is zero padding, `"reflect"` mirrors without repeating
    the border, `"symmetric"` mirrors it, `"circular"` wraps around), then
    convolved with `padding="valid"`; `"same"` and `"valid"` are Keras's
    (deel-lip's `PadConv2D`, a building block, not a constrained layer).

    The kernel is **not** constrained. `lipschitz_upper_bound()` is
    guaranteed: the padding is $P = P_h \\otimes P_w \\otimes I$, where
    each $P_a$ selects one input row per padded row, so
    $\\|P\\|_2 = \\sqrt{m_hm_w}$ with $m_a$ the largest number of copies of
    one input row (1 for zero padding, up to 2 for the others); the bound
    is the exact norm of the padded convolution for small inputs, and
    $\\|P\\|_2$ times the bound of the valid convolution on the padded size
    otherwise (`keras_lipschitz.bounds`).

    Args:
        filters: positive int.
        kernel_size: int or tuple of 2 ints.
        strides: int or tuple of 2 ints.
        padding: one of `"same"`, `"valid"`, `"constant"`, `"reflect"`,
            `"symmetric"`, `"circular"`.
        data_format: `"channels_last"`, `"channels_first"` or None.
        activation: None or a Keras activation with a known constant.
        use_bias: bool.
        **kwargs: `kernel_initializer`, `bias_initializer`, the
            regularizers and constraints, as in `keras.layers.Conv2D`.

    Example:

    >>> layer = PadConv2D(2, 3, padding="circular")
    >>> tuple(layer(np.ones((1, 5, 5, 3), "float32")).shape)
    (1, 5, 5, 2)
    """

    def __init__(
        self,
        filters,
        kernel_size,
        strides=(1, 1),
        padding="same",
        data_format=None,
        activation=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = _validation.validate_positive_int("filters", filters)
        self.kernel_size = _validation.validate_int_tuple(
            "kernel_size", kernel_size
        )
        self.strides = _validation.validate_int_tuple("strides", strides)
        self.padding = _validation.validate_choice(
            "padding", padding, set(_PAD_MODES)
        )
        self.data_format = _validation.validate_data_format(data_format)
        _kernel_arguments.set_kernel_arguments(
            self,
            1.0,
            activation,
            use_bias,
            kernel_initializer,
            bias_initializer,
            kernel_regularizer,
            bias_regularizer,
            kernel_constraint,
            bias_constraint,
        )
        if self.padding in ("same", "valid"):
            self._pad_sizes = (0, 0)
            self._conv_padding = self.padding
        else:
            self._pad_sizes = tuple(k // 2 for k in self.kernel_size)
            self._conv_padding = "valid"
        self.built_spatial_shape = None
        self.input_spec = keras.layers.InputSpec(ndim=4)

    @property
    def _spatial_axes(self):
        return (1, 2) if self.data_format == "channels_last" else (2, 3)

    def _padded_size(self, spatial):
        return tuple(
            None if n is None else n + 2 * p
            for n, p in zip(spatial, self._pad_sizes)
        )

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        channel_axis = -1 if self.data_format == "channels_last" else 1
        channels = input_shape[channel_axis]
        if channels is None:
            raise ValueError(
                "PadConv2D needs a known channel dimension. "
                f"Received: input_shape={input_shape}"
            )
        spatial = tuple(input_shape[a] for a in self._spatial_axes)
        for n, p in zip(spatial, self._pad_sizes):
            if n is not None and (
                (self.padding == "reflect" and p >= n)
                or (self.padding in ("symmetric", "circular") and p > n)
            ):
                raise ValueError(
                    f"padding={self.padding!r} of {p} pixels needs a larger "
                    f"input. Received: input_shape={input_shape}"
                )
        self.built_spatial_shape = spatial
        _kernel_arguments.add_kernel_and_bias(
            self, self.kernel_size + (channels, self.filters)
        )
        self.input_spec = keras.layers.InputSpec(
            ndim=4, axes={channel_axis: channels}
        )

    def _pad(self, inputs):
        x = inputs
        for axis, pad in zip(self._spatial_axes, self._pad_sizes):
            x = _pad_axis(x, axis, pad, self.padding)
        return x

    def call(self, inputs):
        kernel = ops.cast(self.kernel, inputs.dtype)
        outputs = ops.conv(
            self._pad(inputs),
            kernel,
            strides=self.strides,
            padding=self._conv_padding,
            data_format=self.data_format,
        )
        if self.bias is not None:
            outputs = _kernel_arguments.add_channel_bias(
                outputs, self.bias, self.data_format
            )
        return self.activation(outputs)

    def compute_output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        spatial = self._padded_size(
            tuple(input_shape[a] for a in self._spatial_axes)
        )
        out = [
            None if n is None else bounds.conv_output_size(
                n, k, s, self._conv_padding
            )
            for n, k, s in zip(spatial, self.kernel_size, self.strides)
        ]
        if self.data_format == "channels_last":
            return (input_shape[0], *out, self.filters)
        return (input_shape[0], self.filters, *out)

    def _kernel_float64(self):
        # Not named `effective_kernel`: tools that find that method treat
        # the layer as a zero-padded convolution, which it is not.
        return np.asarray(ops.convert_to_numpy(self.kernel), np.float64)

    def _padding_factors(self, size):
        return [
            _padding_matrix(n, p, self.padding)
            for n, p in zip(size, self._pad_sizes)
        ]

    def operator_matrix(self, input_size):
        """The explicit float64 matrix of padding then convolution.

        It maps the flattened `(h, w, c_in)` input to the flattened
        `(h', w', c_out)` output (channels-last order, whatever the
        `data_format`; singular values do not depend on the order).

        Args:
            input_size: `(h, w)`.

        Returns:
            A NumPy array.
        """
        kernel = self._kernel_float64()
        size = tuple(input_size)
        factors = self._padding_factors(size)
        conv = bounds.conv_operator_matrix(
            kernel, self._padded_size(size), self.strides, self._conv_padding
        )
        pad = np.kron(np.kron(factors[0], factors[1]), np.eye(kernel.shape[2]))
        return conv @ pad

    def lipschitz_upper_bound(self, input_size=None):
        """Guaranteed upper bound on the layer's ℓ2 Lipschitz constant.

        Args:
            input_size: optional `(h, w)`; defaults to the built size.

        Returns:
            A Python float.
        """
        if not self.built:
            raise ValueError("PadConv2D must be built before its bound.")
        kernel = self._kernel_float64()
        size = tuple(input_size or self.built_spatial_shape)
        if any(n is None for n in size):
            raise ValueError(
                "PadConv2D's bound needs the spatial input size; pass "
                "`input_size=(h, w)`."
            )
        c_in = kernel.shape[2]
        if size[0] * size[1] * c_in <= bounds.EXPLICIT_OPERATOR_MAX_INPUT_DIM:
            operator = self.operator_matrix(size)
            norm = 0.0
            if operator.size:
                norm = float(np.linalg.norm(operator, ord=2))
            # Relative slack above the rounding of the float64 SVD.
            bound = norm * (1.0 + 1e-12)
        else:
            factors = self._padding_factors(size)
            pad_norm = math.sqrt(
                np.max(np.sum(factors[0], axis=0))
                * np.max(np.sum(factors[1], axis=0))
            )
            bound = pad_norm * bounds.conv_spectral_norm_upper_bound(
                kernel,
                self._padded_size(size),
                self.strides,
                self._conv_padding,
            )
        return bound * self._activation_lipschitz

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "kernel_size": self.kernel_size,
                "strides": self.strides,
                "padding": self.padding,
                "data_format": self.data_format,
            }
        )
        config.update(_kernel_arguments.kernel_arguments_config(self))
        config.pop("lipschitz")
        return config
