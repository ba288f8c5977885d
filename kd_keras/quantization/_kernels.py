"""What QAT and clustering share about layers that own a kernel: which layers
they are, where their output channels lie, and their forward pass with a
replacement kernel (the fake-quantized or clustered one), written in
`keras.ops` so every backend runs it."""

from __future__ import annotations

import keras
from keras import ops

KERNEL_LAYERS = (
    keras.layers.Dense,
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv3D,
    keras.layers.DepthwiseConv2D,
)


def is_kernel_layer(layer) -> bool:
    """True for the layers whose kernel kd_keras quantizes and clusters."""
    return type(layer) in KERNEL_LAYERS


def kernel_layer_problem(layer) -> str | None:
    """Why `layer`'s forward pass cannot be rebuilt here, or `None`."""
    if isinstance(layer, keras.layers.Dense) and getattr(layer, "lora_enabled", False):
        return "has LoRA enabled (merge it into the kernel first)"
    if getattr(layer, "quantization_mode", None):
        return f"is already quantized by Keras ({layer.quantization_mode!r})"
    if isinstance(layer, keras.layers.DepthwiseConv2D) and layer.depth_multiplier != 1:
        return "is a DepthwiseConv2D with depth_multiplier != 1"
    if getattr(layer, "padding", None) == "causal":
        return "uses causal padding"
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        return "uses data_format='channels_first' (TFLite is channels_last)"
    return None


def channel_axis(layer) -> int:
    """Axis of the kernel that indexes output channels."""
    return -2 if isinstance(layer, keras.layers.DepthwiseConv2D) else -1


def weight_quantization_axis(layer) -> int | None:
    """Per-channel axis of the int8 weight scales, `None` for per-tensor.

    `Dense` is per-tensor, as in TFMOT: TFLite's `FULLY_CONNECTED` stores the
    kernel transposed and the converter cannot move per-channel scales
    across that transpose.
    """
    return None if isinstance(layer, keras.layers.Dense) else channel_axis(layer)


def kernel_call(layer, inputs, kernel, bias: bool = True):
    """`layer`'s output before its activation, computed with `kernel`; its
    bias is added unless `bias=False`."""
    if isinstance(layer, keras.layers.Dense):
        outputs = ops.matmul(inputs, kernel)
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
    if bias and layer.use_bias:
        outputs = ops.add(outputs, layer.bias)
    return outputs


def activation_name(layer) -> str:
    """The serialized name of a kernel layer's activation (`"linear"`, ...)."""
    activation = getattr(layer, "activation", None)
    if activation is None:
        return "linear"
    name = keras.activations.serialize(activation)
    return name if isinstance(name, str) else getattr(activation, "__name__", str(name))
