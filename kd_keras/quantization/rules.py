"""The default int8 rules: what the QAT rewrite does with each kind of layer.

`layer_kind(layer)` sorts every layer into one kind, and `quantize_model`
acts on the kind:

* `"kernel"`: `Dense` / `Conv*D` / `DepthwiseConv2D` (see `_kernels`) get a
  weight quantizer and an output quantizer (`QuantizeWrapper`).
* `"output"`: layers that compute new values without a kernel (the
  `OUTPUT_QUANTIZED_LAYERS` table, the `INT8_ACTIVATIONS`, and the affine
  layers, `is_affine_layer`) get their output quantized.
* `"pass"`: layers in `PASS_THROUGH_LAYERS` only move values, so their output
  carries their input's int8 range.
* `"config"`: a layer annotated with a `QuantizeConfig` follows the config;
  so does a layer with a built-in one (`builtin_quantize_config`: `Embedding`).
* `"island"`: layers TFLite has no int8 kernel for (`FLOAT_ISLAND_LAYERS`,
  `LayerNormalization`) run in float on their dequantized input, and their
  output gets its own range: a float island between `DEQUANTIZE` and
  `QUANTIZE` in the `.tflite`, listed by `convert` (`float_islands`).
* `"unsupported"`: anything else; `quantize_model` names it and refuses.

Layers TFLite runs as several ops (`SeparableConv1D` / `SeparableConv2D`,
InceptionResNetV2's `CustomScaleLayer`, `MultiHeadAttention`) are first
rewritten into those ops' layers by `decompose.decompose_layers`, and then
follow the rules here.

A new layer kind is one table entry here (or one predicate, when the rule
depends on the layer's configuration) plus, where it needs a new graph
operation, one branch in `quantize_model`. TFMOT keeps the same information
in `default_8bit_quantize_registry.py`.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from kd_keras.quantization import _kernels
from kd_keras.quantization.decompose import is_masked_attention
from kd_keras.quantization.embedding_config import EmbeddingQuantizeConfig, embedding_problem
from kd_keras.quantization.quantize_annotate import quantize_config_of

#: Activations a kernel layer computes in its own TFLite op (fused).
FUSABLE_ACTIVATIONS = ("linear", "relu", "relu6")
#: Activations TFLite runs as int8 kernels (HARD_SWISH, LOGISTIC, TANH,
#: SOFTMAX, GELU, ELU, LEAKY_RELU, or int8 MUL / ADD / RELU6 for the ones Keras
#: writes as several ops); an `Activation` layer with one of them gets its
#: output quantized.
INT8_ACTIVATIONS = FUSABLE_ACTIVATIONS + (
    "hard_silu",
    "hard_swish",
    "hard_sigmoid",
    "sigmoid",
    "silu",
    "swish",
    "tanh",
    "softmax",
    "gelu",
    "elu",
    "leaky_relu",
)

_L = keras.layers
#: Layers that leave values unchanged or only move them: their output carries
#: the input's quantization range.
PASS_THROUGH_LAYERS = (
    _L.InputLayer,
    _L.MaxPooling1D,
    _L.MaxPooling2D,
    _L.MaxPooling3D,
    _L.GlobalMaxPooling1D,
    _L.GlobalMaxPooling2D,
    _L.GlobalMaxPooling3D,
    _L.Flatten,
    _L.Reshape,
    _L.Permute,
    _L.Dropout,
    _L.SpatialDropout1D,
    _L.SpatialDropout2D,
    _L.GaussianNoise,
    _L.GaussianDropout,
    _L.Identity,
    _L.ZeroPadding1D,
    _L.ZeroPadding2D,
    _L.Cropping1D,
    _L.Cropping2D,
    _L.UpSampling1D,
    _L.UpSampling2D,
    # TFLite's int8 AVERAGE_POOL_2D requires one scale in and out (the
    # converter refuses a pool whose output has a range of its own); the
    # int8 kernel rounds the mean onto its input's grid.
    _L.AveragePooling1D,
    _L.AveragePooling2D,
)
#: Layers that compute new values without a kernel: their output is quantized.
OUTPUT_QUANTIZED_LAYERS = (
    _L.Add,
    _L.Subtract,
    _L.Multiply,
    _L.Average,
    _L.Maximum,
    _L.Minimum,
    _L.Concatenate,
    _L.GlobalAveragePooling1D,
    _L.GlobalAveragePooling2D,
    _L.ReLU,
    _L.LeakyReLU,
    _L.Softmax,
)
#: Layers TFLite has no int8 kernel for. `LayerNormalization` converts into
#: MEAN, SQUARED_DIFFERENCE, RSQRT, NEG, MUL and ADD; int8 versions of most
#: exist, but the variance of a normalized row spans orders of magnitude that
#: one int8 range cannot hold (its RSQRT would see zeros), and the converter's
#: NEG has no int8 kernel: it stays float, as in the converter's own PTQ.
#: A masked `MultiHeadAttention` is one too (`decompose.is_masked_attention`).
FLOAT_ISLAND_LAYERS = (_L.LayerNormalization,)


def builtin_quantize_config(layer):
    """The `QuantizeConfig` kd_keras brings for `layer` (`Embedding`), else
    `None`."""
    if type(layer) is keras.layers.Embedding and embedding_problem(layer) is None:
        return EmbeddingQuantizeConfig()
    return None


def fusable_activation(layer) -> str | None:
    """`"relu"` / `"relu6"` when `layer` is an activation TFLite fuses into
    the kernel layer before it, else `None`."""
    if type(layer) is keras.layers.ReLU:
        plain = float(layer.negative_slope) == 0.0 and float(layer.threshold) == 0.0
        if plain and layer.max_value is None:
            return "relu"
        if plain and layer.max_value is not None and float(layer.max_value) == 6.0:
            return "relu6"
    if type(layer) is keras.layers.Activation:
        name = keras.activations.serialize(layer.activation)
        if name in ("relu", "relu6"):
            return name
    return None


def normalizes_last_axis(bn, ndim) -> bool:
    """True when the BatchNormalization `bn` (on `ndim`-D inputs) normalizes
    the channels-last axis, the only one that folds into a kernel or runs as
    a per-channel int8 MUL/ADD."""
    return bn.axis in (-1, ndim - 1) or list(np.atleast_1d(bn.axis)) in ([-1], [ndim - 1])


def layer_kind(layer) -> str:
    """"config", "kernel", "output", "pass", "island" or "unsupported" for the
    quantization pass."""
    if quantize_config_of(layer) is not None or builtin_quantize_config(layer) is not None:
        return "config"
    if type(layer) in FLOAT_ISLAND_LAYERS or is_masked_attention(layer):
        return "island"
    if _kernels.is_kernel_layer(layer):
        return "unsupported" if _kernels.kernel_layer_problem(layer) else "kernel"
    if type(layer) in PASS_THROUGH_LAYERS:
        return "pass"
    if type(layer) in OUTPUT_QUANTIZED_LAYERS or is_affine_layer(layer):
        return "output"
    if type(layer) is keras.layers.Activation and keras.activations.serialize(
        layer.activation
    ) in INT8_ACTIVATIONS:
        return "output"
    return "unsupported"


def is_affine_layer(layer) -> bool:
    """A layer that computes `x * scale + offset` in inference: `Rescaling`,
    a (non-inverting) `Normalization`, a channels-last `BatchNormalization`,
    ConvNeXt's `LayerScale` (`x * gamma`)."""
    if type(layer) is keras.layers.Rescaling or is_layer_scale(layer):
        return True
    if type(layer) is keras.layers.BatchNormalization:
        nodes = layer._inbound_nodes
        return bool(nodes) and normalizes_last_axis(layer, len(nodes[0].input_tensors[0].shape))
    return type(layer) is keras.layers.Normalization and not layer.invert and layer.built


def is_layer_scale(layer) -> bool:
    """True for `keras.applications.ConvNeXt*`'s `LayerScale` (`x * gamma`
    per channel; Keras does not export the class)."""
    cls = type(layer)
    return cls.__name__ == "LayerScale" and cls.__module__.endswith("applications.convnext")


def affine_constants(layer):
    """`(scale, offset)` NumPy arrays with `layer(x) == x * scale + offset`."""
    if is_layer_scale(layer):
        return np.asarray(ops.convert_to_numpy(layer.gamma), "float64"), np.zeros(())
    if type(layer) is keras.layers.Rescaling:
        return np.asarray(layer.scale, "float64"), np.asarray(layer.offset, "float64")
    if type(layer) is keras.layers.BatchNormalization:
        def value(variable, default):
            return np.asarray(ops.convert_to_numpy(variable), "float64") if variable is not None \
                else default
        mean = value(layer.moving_mean, 0.0)
        variance = value(layer.moving_variance, 1.0)
        gamma = value(layer.gamma, 1.0) if layer.scale else 1.0
        beta = value(layer.beta, 0.0) if layer.center else 0.0
        scale = gamma / np.sqrt(variance + layer.epsilon)
        return scale, beta - mean * scale
    mean = np.asarray(ops.convert_to_numpy(layer.mean), "float64")
    variance = np.asarray(ops.convert_to_numpy(layer.variance), "float64")
    # Normalization divides by max(sqrt(variance), epsilon).
    std = np.maximum(np.sqrt(variance), keras.backend.epsilon())
    return 1.0 / std, -mean / std

