"""What QAT and clustering share about layers that own a kernel: which layers
they are, where their output channels lie, and their forward pass with a
replacement kernel (the fake-quantized or clustered one), written in
`keras.ops` so every backend runs it."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

KERNEL_LAYERS = (
    keras.layers.Dense,
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv3D,
    keras.layers.DepthwiseConv2D,
    keras.layers.DepthwiseConv1D,
    keras.layers.Conv2DTranspose,
    keras.layers.EinsumDense,
)
#: One-dimensional convolutions: TFLite runs them as `CONV_2D` /
#: `DEPTHWISE_CONV_2D` on a height-1 image.
_ONE_D = (keras.layers.Conv1D, keras.layers.DepthwiseConv1D)
_DEPTHWISE = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)


def is_kernel_layer(layer) -> bool:
    """True for the layers whose kernel kd_keras quantizes and clusters."""
    return type(layer) in KERNEL_LAYERS


def kernel_layer_problem(layer) -> str | None:
    """Why `layer`'s forward pass cannot be rebuilt here, or `None`."""
    if isinstance(layer, keras.layers.Dense) and getattr(layer, "lora_enabled", False):
        return "has LoRA enabled (merge it into the kernel first)"
    if getattr(layer, "quantization_mode", None):
        return f"is already quantized by Keras ({layer.quantization_mode!r})"
    if isinstance(layer, _DEPTHWISE) and layer.depth_multiplier != 1:
        return f"is a {type(layer).__name__} with depth_multiplier != 1"
    if isinstance(layer, keras.layers.Conv2DTranspose) and layer.output_padding is not None:
        return "is a Conv2DTranspose with output_padding"
    if getattr(layer, "padding", None) == "causal":
        return "uses causal padding"
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        return "uses data_format='channels_first' (TFLite is channels_last)"
    return None


def channel_axis(layer) -> int:
    """Axis of the kernel that indexes output channels (`Conv2DTranspose`
    keeps them before its input channels)."""
    depthwise = isinstance(layer, _DEPTHWISE)
    return -2 if depthwise or isinstance(layer, keras.layers.Conv2DTranspose) else -1


def weight_quantization_axis(layer) -> int | None:
    """Per-channel axis of the int8 weight scales, `None` for per-tensor.

    `Dense` is per-tensor, as in TFMOT: TFLite's `FULLY_CONNECTED` stores the
    kernel transposed and the converter cannot move per-channel scales
    across that transpose. `Conv2DTranspose` likewise (TFMOT's default 8-bit
    registry quantizes it per tensor too): `TRANSPOSE_CONV` reads its kernel
    transposed from Keras' layout.
    """
    per_tensor = (keras.layers.Dense, keras.layers.EinsumDense, keras.layers.Conv2DTranspose)
    return None if isinstance(layer, per_tensor) else channel_axis(layer)


def op_kernel(layer, kernel):
    """`kernel` in the shape TFLite's op reads it: a 1-D convolution's
    `(width, in, out)` kernel becomes `(1, width, in, out)`.

    Weights are fake-quantized in this shape: quantized first and reshaped
    after, their per-channel axis would move under the converter's reshape
    and the conversion fails. Other kernels are returned as they are.
    """
    if isinstance(layer, _ONE_D) and len(kernel.shape) == 3:
        return ops.expand_dims(kernel, 0)
    return kernel


def _one_d_call(layer, inputs, kernel):
    """A 1-D convolution as the 2-D one TFLite runs (height 1)."""
    kernel = op_kernel(layer, kernel)
    x = ops.expand_dims(inputs, 1)
    common = {
        "strides": (1, int(layer.strides[0])),
        "padding": layer.padding,
        "dilation_rate": (1, int(layer.dilation_rate[0])),
    }
    if isinstance(layer, keras.layers.DepthwiseConv1D):
        x = ops.depthwise_conv(x, kernel, **common)
    else:
        x = ops.conv(x, kernel, **common)
    return ops.squeeze(x, 1)


def kernel_call(layer, inputs, kernel, bias: bool = True):
    """`layer`'s output before its activation, computed with `kernel` (in
    the layer's own shape or in `op_kernel`'s); its bias is added unless
    `bias=False`."""
    if isinstance(layer, keras.layers.Dense):
        if len(inputs.shape) > 2:
            return _flat_matmul(layer, inputs, kernel, 1, bias)
        outputs = ops.matmul(inputs, kernel)
    elif isinstance(layer, keras.layers.EinsumDense):
        return _einsum_dense_call(layer, inputs, kernel, bias)
    elif isinstance(layer, _ONE_D):
        outputs = _one_d_call(layer, inputs, kernel)
    elif isinstance(layer, keras.layers.Conv2DTranspose):
        outputs = ops.conv_transpose(
            inputs,
            kernel,
            strides=layer.strides,
            padding=layer.padding,
            dilation_rate=layer.dilation_rate,
            data_format=layer.data_format,
        )
    elif isinstance(layer, keras.layers.DepthwiseConv2D):
        outputs = ops.depthwise_conv(
            inputs,
            kernel,
            strides=layer.strides,
            padding=layer.padding,
            dilation_rate=layer.dilation_rate,
            data_format=layer.data_format,
        )
    else:
        outputs = ops.conv(
            inputs,
            kernel,
            strides=list(layer.strides),
            padding=layer.padding,
            dilation_rate=layer.dilation_rate,
            data_format=layer.data_format,
        )
    if bias and has_bias(layer):
        outputs = ops.add(outputs, layer.bias)
    return outputs


def _matmul_split(equation: str):
    """`(contracted, free)` axis counts when `equation` is a matmul over
    the input's trailing axes (`"abc,cde->abde"`, `"abcd,cde->abe"`), else
    `None`."""
    inputs, out = equation.replace(" ", "").split("->")
    lhs, rhs = inputs.split(",")
    for n in range(len(rhs), 0, -1):
        contracted = rhs[:n]
        if lhs.endswith(contracted) and out == lhs[: len(lhs) - n] + rhs[n:]:
            return n, len(rhs) - n
    return None


def _einsum_dense_call(layer, inputs, kernel, bias: bool = True):
    """`EinsumDense` as one matmul with its bias, then a reshape, when its
    equation allows (the projections of `MultiHeadAttention` do): TFLite
    then runs a `FULLY_CONNECTED` with the bias fused and an int8 output,
    where an einsum becomes a matmul, a reshape and a float bias `ADD`."""
    split = _matmul_split(layer.equation)
    if split is None:
        outputs = ops.einsum(layer.equation, inputs, kernel)
        return ops.add(outputs, layer.bias) if bias and has_bias(layer) else outputs
    return _flat_matmul(layer, inputs, kernel, split[0], bias)


def _flat_matmul(layer, inputs, kernel, contracted, bias: bool = True):
    """`inputs`' last `contracted` axes times `kernel`'s first ones (plus the
    bias) as one 2-D matmul, reshaped back: the converter fuses a 2-D matmul
    and its bias into one FULLY_CONNECTED with an int8 output, while a
    batched one keeps the bias as a float `ADD` after a reshape."""
    kernel_shape = tuple(kernel.shape)
    free_shape = kernel_shape[contracted:]
    rows = int(np.prod(kernel_shape[:contracted]))
    columns = int(np.prod(free_shape))
    batch_shape = tuple(inputs.shape[: len(inputs.shape) - contracted])
    if None in batch_shape[1:]:  # a free sequence length: no static reshape
        outputs = ops.tensordot(inputs, kernel, axes=contracted)
        return ops.add(outputs, layer.bias) if bias and has_bias(layer) else outputs
    outputs = ops.matmul(ops.reshape(inputs, (-1, rows)), ops.reshape(kernel, (rows, columns)))
    if bias and has_bias(layer):
        flat_bias = ops.reshape(ops.broadcast_to(layer.bias, free_shape), (columns,))
        outputs = ops.add(outputs, flat_bias)
    return ops.reshape(outputs, (-1, *batch_shape[1:], *free_shape))


def has_bias(layer) -> bool:
    """True when the kernel layer adds a bias (`EinsumDense` has one when
    its `bias_axes` name any)."""
    if isinstance(layer, keras.layers.EinsumDense):
        return layer.bias is not None
    return bool(layer.use_bias)


def folds_batch_norm(layer) -> bool:
    """True when a BatchNormalization after `layer` folds into its kernel
    and bias. Not for `EinsumDense`: its bias covers only `bias_axes`, and
    its output's last axis need not be its kernel's."""
    return not isinstance(layer, keras.layers.EinsumDense)


def activation_name(layer) -> str:
    """The serialized name of a kernel layer's activation (`"linear"`, ...)."""
    activation = getattr(layer, "activation", None)
    if activation is None:
        return "linear"
    name = keras.activations.serialize(activation)
    return name if isinstance(name, str) else getattr(activation, "__name__", str(name))
