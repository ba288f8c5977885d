"""Composite layers written as the layers TFLite runs them with, before QAT.

TFLite has no separable convolution and no "scale and add" op: the converter
turns `SeparableConv2D` into `DEPTHWISE_CONV_2D` followed by a 1x1
`CONV_2D`, and InceptionResNetV2's `CustomScaleLayer` (`x[0] + x[1] *
scale`) into `MUL` then `ADD`. For a fully int8 file each of those ops needs
its own int8 ranges, which the one Keras layer does not have. So
`lower_composite_layers` rewrites the float graph into those parts first
(TFMOT's `SeparableConvQuantize` transform does the same for
`SeparableConv2D`), and the QAT rewrite then handles them with its usual
rules:

* `SeparableConv2D` -> `DepthwiseConv2D` (named `<name>_depthwise`, no bias,
  per-channel int8 kernel, its own activation range) -> 1x1 `Conv2D` named
  `<name>` (the pointwise kernel per output channel, the bias, the
  activation), so a `BatchNormalization` after it folds into the pointwise
  kernel and a following ReLU fuses, as after any `Conv2D`.
* `CustomScaleLayer`-style layers (`[a, b] -> a + b * scale`) -> a
  `Rescaling(scale)` of `b` named `<name>_scale` (an int8 `MUL` by a
  constant, with its own range) -> `Add` named `<name>` (an int8 `ADD`).

The result computes the same function as the input model (up to float
summation order).
"""

from __future__ import annotations

import keras

from kd_keras.quantization.graph import ANNOTATION_PREFIX

try:  # keras.applications.InceptionResNetV2's residual scaling layer
    from keras.src.applications.inception_resnet_v2 import CustomScaleLayer
except ImportError:  # pragma: no cover - a Keras without that module
    CustomScaleLayer = None


def is_scale_sum_layer(layer) -> bool:
    """True for a layer computing `inputs[0] + inputs[1] * layer.scale`
    (InceptionResNetV2's `CustomScaleLayer`)."""
    return CustomScaleLayer is not None and type(layer) is CustomScaleLayer


def is_composite_layer(layer) -> bool:
    """True for a layer that `lower_composite_layers` rewrites."""
    return type(layer) is keras.layers.SeparableConv2D or is_scale_sum_layer(layer)


def _separable_parts(layer, name: str):
    """`(depthwise, pointwise)` float layers computing `layer` in sequence."""
    config = layer.get_config()
    depthwise = keras.layers.DepthwiseConv2D(
        kernel_size=config["kernel_size"],
        strides=config["strides"],
        padding=config["padding"],
        depth_multiplier=config["depth_multiplier"],
        data_format=config["data_format"],
        dilation_rate=config["dilation_rate"],
        use_bias=False,
        depthwise_initializer=config["depthwise_initializer"],
        depthwise_regularizer=config["depthwise_regularizer"],
        depthwise_constraint=config["depthwise_constraint"],
        trainable=config["trainable"],
        dtype=config["dtype"],
        name=name,
    )
    pointwise = keras.layers.Conv2D(
        filters=config["filters"],
        kernel_size=1,
        data_format=config["data_format"],
        activation=config["activation"],
        use_bias=config["use_bias"],
        kernel_initializer=config["pointwise_initializer"],
        bias_initializer=config["bias_initializer"],
        kernel_regularizer=config["pointwise_regularizer"],
        bias_regularizer=config["bias_regularizer"],
        activity_regularizer=config["activity_regularizer"],
        kernel_constraint=config["pointwise_constraint"],
        bias_constraint=config["bias_constraint"],
        trainable=config["trainable"],
        dtype=config["dtype"],
        name=layer.name,
    )
    return depthwise, pointwise


def lower_composite_layers(model: keras.Model, keep=lambda layer: False) -> keras.Model:
    """A float copy of a Functional `model` with `SeparableConv2D` and
    `CustomScaleLayer`-style layers rewritten into the layers TFLite runs
    them as (see the module docstring); layers for which `keep(layer)` is
    true stay whole. Every layer is cloned with its weights; the user's
    model is left untouched. Returns `model` itself when there is nothing to
    rewrite.

    Example:

    ```python
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.SeparableConv2D(8, 3, name="sep")(inputs)
    lowered = lower_composite_layers(keras.Model(inputs, x))
    [type(layer).__name__ for layer in lowered.layers]
    # ['InputLayer', 'DepthwiseConv2D', 'Conv2D']
    ```
    """
    if not any(is_composite_layer(op) and not keep(op) for op in model.operations):
        return model
    used_names = {op.name for op in model.operations}
    parts, originals = {}, {}

    def unique(base):
        name, i = base, 1
        while name in used_names:
            name, i = f"{base}_{i}", i + 1
        used_names.add(name)
        return name

    def clone_function(operation):
        if type(operation) is keras.layers.SeparableConv2D and not keep(operation):
            depthwise, pointwise = _separable_parts(
                operation, unique(f"{operation.name}_depthwise")
            )
            parts[id(pointwise)] = depthwise
            new = pointwise
        elif is_scale_sum_layer(operation) and not keep(operation):
            new = keras.layers.Add(name=operation.name, dtype=operation.dtype_policy.name)
            parts[id(new)] = keras.layers.Rescaling(
                operation.scale,
                name=unique(f"{operation.name}_scale"),
                dtype=operation.dtype_policy.name,
            )
        else:
            new = type(operation).from_config(operation.get_config())
        # Annotations (`quantize_annotate_layer`) live outside get_config.
        for target in (new, parts.get(id(new))):
            if isinstance(target, keras.layers.Layer):
                for name, value in vars(operation).items():
                    if name.startswith(ANNOTATION_PREFIX):
                        setattr(target, name, value)
        originals[id(new)] = (operation, new)
        return new

    def call_function(new, *args, **kwargs):
        if id(new) not in parts:
            return new(*args, **kwargs)
        if isinstance(new, keras.layers.Add):
            first, second = args[0]
            return new([first, parts[id(new)](second)])
        return new(parts[id(new)](args[0]))

    # Inputs keep their names (int8_io and named inputs refer to them).
    inputs = [
        keras.Input(batch_shape=x.shape, dtype=x.dtype, name=x._keras_history.operation.name)
        for x in model.inputs
    ]
    lowered = keras.models.clone_model(
        model,
        input_tensors=keras.tree.pack_sequence_as(model._inputs_struct, inputs),
        clone_function=clone_function,
        call_function=call_function,
    )
    # clone_model made fresh variables: copy the trained ones.
    for new_id, (old, new) in originals.items():
        if type(old) is keras.layers.SeparableConv2D and not keep(old):
            parts[new_id].kernel.assign(old.depthwise_kernel)
            new.kernel.assign(old.pointwise_kernel)
            if old.use_bias:
                new.bias.assign(old.bias)
        elif getattr(old, "weights", None):
            new.set_weights(old.get_weights())
    return lowered
