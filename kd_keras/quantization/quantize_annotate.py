"""Marking layers for quantization: TFMOT's `quantize_annotate_layer`.

An annotation is two attributes set on the float layer: whether it was
annotated, and the `QuantizeConfig` it was annotated with (if any).
`quantize_model` reads them back with `is_annotated` / `quantize_config_of`.
"""

from __future__ import annotations

import keras

from kd_keras.quantization.quantize_config import QuantizeConfig

_QUANTIZE_ANNOTATION = "_kd_keras_quantize"
_QUANTIZE_CONFIG = "_kd_keras_quantize_config"


def quantize_annotate_layer(
    layer: keras.layers.Layer, quantize_config: QuantizeConfig | None = None
) -> keras.layers.Layer:
    """Mark `layer` for quantization (TFMOT's partial-quantization API), or
    tell `quantize_model` how to quantize a layer it has no rule for.

    Without `quantize_config`: when any layer of a model is annotated,
    `quantize_model` quantizes only the annotated layers and keeps every
    other layer in float. With a `QuantizeConfig`, the layer is quantized as
    the config says (its weights, activations and outputs) and the rest of
    the model as usual. Returns the layer itself so it can wrap a layer at
    construction.

    Example:

    ```python
    inputs = keras.Input((8, 8, 1))
    x = quantize_annotate_layer(keras.layers.Conv2D(8, 3))(inputs)
    x = keras.layers.Conv2D(8, 3)(x)          # stays float
    qat = quantize_model(keras.Model(inputs, x))
    ```
    """
    if not isinstance(layer, keras.layers.Layer):
        raise TypeError(
            f"quantize_annotate_layer expects a keras Layer, got {type(layer).__name__}."
        )
    if quantize_config is not None and not isinstance(quantize_config, QuantizeConfig):
        raise TypeError(
            f"quantize_annotate_layer: quantize_config for layer {layer.name!r} must be a "
            f"kd_keras.quantization.QuantizeConfig, got {type(quantize_config).__name__}."
        )
    setattr(layer, _QUANTIZE_ANNOTATION, True)
    setattr(layer, _QUANTIZE_CONFIG, quantize_config)
    return layer


def quantize_config_of(layer: keras.layers.Layer) -> QuantizeConfig | None:
    """The `QuantizeConfig` `layer` was annotated with, else `None`."""
    return getattr(layer, _QUANTIZE_CONFIG, None)


def is_annotated(layer: keras.layers.Layer) -> bool:
    """True when `layer` went through `quantize_annotate_layer`."""
    return bool(getattr(layer, _QUANTIZE_ANNOTATION, False))
