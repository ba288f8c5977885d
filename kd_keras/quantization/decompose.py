"""Composite layers rewritten as the layers TFLite runs them as, before QAT.

TFLite has no separable convolution, no "scale and add" op and no fused
attention: the converter turns a `SeparableConv1D` / `SeparableConv2D`
into `DEPTHWISE_CONV_2D` followed by a 1x1 `CONV_2D`, InceptionResNetV2's
`CustomScaleLayer` (`x[0] + x[1] * scale`) into `MUL` then `ADD`, and a
`MultiHeadAttention` into four `FULLY_CONNECTED` projections around two
`BATCH_MATMUL`s and a `SOFTMAX`. For a fully int8 file each of those ops
reads and writes int8 with its own range, which the one Keras layer does
not have. So `decompose_layers` first rewrites the float Functional graph
into the standard layers and `keras.ops` calls that compute each composite
layer (same weights, same function, up to float summation order; TFMOT's
`SeparableConvQuantize` transform does the same for `SeparableConv2D`), and
the QAT rewrite then quantizes every piece by its usual rule:

* `SeparableConv1D` / `SeparableConv2D` -> `DepthwiseConv1D` /
  `DepthwiseConv2D` (named `<name>_depthwise`, no bias, per-channel int8
  kernel, its own activation range) -> `Conv1D` / `Conv2D` with kernel size
  1 named `<name>` (the pointwise kernel per output channel, the bias, the
  activation), so a `BatchNormalization` after it folds into the pointwise
  kernel and a following ReLU fuses, as after any convolution.
* `CustomScaleLayer`-style layers (`[a, b] -> a + b * scale`) -> a
  `Rescaling(scale)` of `b` named `<name>_scale` (an int8 `MUL` by a
  constant, with its own range) -> `Add` named `<name>` (an int8 `ADD`).
* `Activation("hard_silu")` / `Activation("hard_swish")` (MobileNetV3),
  with `split_hard_swish` -> `Rescaling(1, offset=3)` named
  `<name>_shift` -> `ReLU(6)` (`<name>_gate`) -> `Multiply` with the
  input (`<name>_product`) -> `Rescaling(1/6)` named `<name>`:
  `relu6(x + 3) * x / 6`, the same function. TFLite's int8 `HARD_SWISH`
  is one op, but XNNPACK does not take it in int8 (ai-edge-litert 2.3):
  each one runs on LiteRT's own kernel, 30-40x slower than XNNPACK's
  int8 `ADD` (with the ReLU6 fused) and `MUL`s, and cuts the graph into
  partitions. The product comes before the 1/6 so that the converter does
  not match the pattern back into `HARD_SWISH`.
* `MultiHeadAttention` -> `EinsumDense` query / key / value projections
  (`<name>_query`, ...; `1 / sqrt(key_dim)` folded into the query
  projection), `ops.einsum` for the scores, `Softmax`, `Dropout`,
  `ops.einsum` for the weighted values and the output `EinsumDense` (named
  `<name>`, so `get_layer(name).output` is still the attention output).
  A masked attention (an `attention_mask`, `use_causal_mask`, masked
  inputs) stays whole and runs in float (`is_masked_attention`); gates,
  sliding windows and `return_attention_scores` are not decomposed: such a
  layer is refused by name.

A composite layer named in `skip_layers` (by name or class) or annotated
with a `QuantizeConfig` stays whole; the pieces of the others carry its
annotations (`quantize_annotate_layer`).
"""

from __future__ import annotations

import inspect
from typing import Iterable

import keras
import numpy as np
from keras import ops

from kd_keras.quantization.graph import copy_annotations
from kd_keras.quantization.quantize_annotate import quantize_config_of

try:  # keras.applications.InceptionResNetV2's residual scaling layer
    from keras.src.applications.inception_resnet_v2 import CustomScaleLayer
except ImportError:  # pragma: no cover - a Keras without that module
    CustomScaleLayer = None

_MHA = keras.layers.MultiHeadAttention
L = keras.layers
#: Separable convolution -> (its depthwise layer, its pointwise layer).
_SEPARABLE_PARTS = {
    L.SeparableConv1D: (L.DepthwiseConv1D, L.Conv1D),
    L.SeparableConv2D: (L.DepthwiseConv2D, L.Conv2D),
}


def _is_scale_sum(layer) -> bool:
    """True for a layer computing `inputs[0] + inputs[1] * layer.scale`
    (InceptionResNetV2's `CustomScaleLayer`)."""
    return CustomScaleLayer is not None and type(layer) is CustomScaleLayer


def _attention_problem(layer, bound) -> str | None:
    """Why this MultiHeadAttention call cannot be decomposed, or `None`."""
    if type(layer) is not _MHA:
        return "is a MultiHeadAttention subclass (its attention may differ)"
    if getattr(layer, "_use_gate", False):
        return "uses a gate (use_gate=True)"
    if getattr(layer, "_sliding_window", None) is not None:
        return "uses a sliding window"
    if bound.arguments.get("return_attention_scores"):
        return "is called with return_attention_scores=True"
    return None


def _bound_calls(layer):
    """The `MultiHeadAttention.call` arguments of each of `layer`'s calls."""
    for node in layer._inbound_nodes:
        args, kwargs = node.arguments.args, node.arguments.kwargs
        yield inspect.signature(_MHA.call).bind(None, *args, **kwargs)


def _is_masked_call(bound) -> bool:
    arguments = bound.arguments
    if arguments.get("attention_mask") is not None or arguments.get("use_causal_mask"):
        return True
    return any(
        getattr(arguments.get(name), "_keras_mask", None) is not None
        for name in ("query", "value", "key")
    )


def is_masked_attention(layer) -> bool:
    """True for a `MultiHeadAttention` called with a mask (`attention_mask`,
    `use_causal_mask`, or inputs masked upstream, e.g. by
    `Embedding(mask_zero=True)`). Keras masks the scores with
    `where(mask, scores, -1e9)`; TFLite's int8 `SELECT_V2` would clamp that
    constant to the scores' int8 range, leaving masked positions a real
    share of the attention, so such a layer stays whole and runs in float:
    a float island (`rules.layer_kind`)."""
    return type(layer) is _MHA and any(_is_masked_call(b) for b in _bound_calls(layer))


def _is_hard_swish(layer) -> bool:
    return type(layer) is L.Activation and keras.activations.serialize(
        layer.activation
    ) in ("hard_silu", "hard_swish")


def _hard_swish_parts(layer, unique) -> list:
    dtype = layer.dtype_policy.name
    return [
        L.Rescaling(1.0, offset=3.0, name=unique(f"{layer.name}_shift"), dtype=dtype),
        L.ReLU(6.0, name=unique(f"{layer.name}_gate"), dtype=dtype),
        L.Multiply(name=unique(f"{layer.name}_product"), dtype=dtype),
        L.Rescaling(1.0 / 6.0, name=layer.name, dtype=dtype),
    ]


def decomposition_problem(layer) -> str | None:
    """Why `layer` (a composite layer in a Functional graph) cannot be
    decomposed, or `None` when it can (or is no composite layer)."""
    if isinstance(layer, _MHA):
        for bound in _bound_calls(layer):
            problem = _attention_problem(layer, bound)
            if problem:
                return problem
    return None


def is_composite(layer, split_hard_swish: bool = False) -> bool:
    """True for the layers `decompose_layers` rewrites (unless kept whole);
    hard-swish activations only with `split_hard_swish`."""
    return (
        type(layer) in _SEPARABLE_PARTS
        or isinstance(layer, _MHA)
        or _is_scale_sum(layer)
        or (split_hard_swish and _is_hard_swish(layer))
    )


def is_kept_whole(layer, keep: Iterable[str | type] = ()) -> bool:
    """True for a layer `decompose_layers` leaves whole: named in `keep`
    (layer names or classes, as `quantize_model`'s `skip_layers`) or
    annotated with a `QuantizeConfig`, which says how to quantize it whole."""
    names = {item for item in keep if isinstance(item, str)}
    classes = tuple(item for item in keep if isinstance(item, type))
    return (
        layer.name in names
        or isinstance(layer, classes)
        or quantize_config_of(layer) is not None
    )


def _copy_einsum_dense(layer, name, input_shape):
    """A fresh `EinsumDense` like `layer`, with the output shape it was
    built with (MultiHeadAttention leaves the sequence length `None` in its
    sublayers' configs, which would lose it downstream)."""
    config = layer.get_config()
    config["name"] = name
    probe = ops.einsum(
        layer.equation, keras.KerasTensor(tuple(input_shape)), keras.KerasTensor(layer.kernel.shape)
    )
    full = tuple(probe.shape)[1:]
    if None not in full:
        config["output_shape"] = full
    return keras.layers.EinsumDense.from_config(config)


def _separable_parts(layer, name: str):
    """`(depthwise, pointwise)` float layers computing the separable
    convolution `layer` (1-D or 2-D) in sequence."""
    depthwise_class, pointwise_class = _SEPARABLE_PARTS[type(layer)]
    config = layer.get_config()
    common = {
        "data_format": config["data_format"],
        "trainable": config["trainable"],
        "dtype": config["dtype"],
    }
    depthwise = depthwise_class(
        kernel_size=config["kernel_size"],
        strides=config["strides"],
        padding=config["padding"],
        depth_multiplier=config["depth_multiplier"],
        dilation_rate=config["dilation_rate"],
        use_bias=False,
        depthwise_initializer=config["depthwise_initializer"],
        depthwise_regularizer=config["depthwise_regularizer"],
        depthwise_constraint=config["depthwise_constraint"],
        name=name,
        **common,
    )
    pointwise = pointwise_class(
        filters=config["filters"],
        kernel_size=1,
        activation=config["activation"],
        use_bias=config["use_bias"],
        kernel_initializer=config["pointwise_initializer"],
        bias_initializer=config["bias_initializer"],
        kernel_regularizer=config["pointwise_regularizer"],
        bias_regularizer=config["bias_regularizer"],
        activity_regularizer=config["activity_regularizer"],
        kernel_constraint=config["pointwise_constraint"],
        bias_constraint=config["bias_constraint"],
        name=layer.name,
        **common,
    )
    return depthwise, pointwise


def _copy_separable_weights(layer, depthwise, pointwise) -> None:
    depthwise.kernel.assign(layer.depthwise_kernel)
    pointwise.kernel.assign(layer.pointwise_kernel)
    if layer.use_bias:
        pointwise.bias.assign(layer.bias)


def _multi_head_attention(layer, unique, bound, training):
    arguments = bound.arguments
    query, value = arguments["query"], arguments["value"]
    key = arguments.get("key")
    key = value if key is None else key
    projections = {}
    for part, tensor in (("query", query), ("key", key), ("value", value)):
        dense = getattr(layer, f"_{part}_dense")
        clone = _copy_einsum_dense(dense, unique(f"{layer.name}_{part}"), tensor.shape)
        copy_annotations(layer, clone)
        projections[part] = clone(tensor)
        weights = [np.asarray(ops.convert_to_numpy(w)) for w in dense.weights]
        if part == "query":
            # (x @ W + b) / sqrt(d) == x @ (W / sqrt(d)) + b / sqrt(d): one
            # int8 MUL and its rounding fewer.
            weights = [w * layer._inverse_sqrt_key_dim for w in weights]
        clone.set_weights(weights)
    scores = ops.einsum(layer._dot_product_equation, projections["key"], projections["query"])
    softmax = keras.layers.Softmax(axis=layer._softmax.axis, name=unique(f"{layer.name}_softmax"))
    probabilities = copy_annotations(layer, softmax)(scores)
    if layer._dropout > 0.0:
        dropout = keras.layers.Dropout(layer._dropout, name=unique(f"{layer.name}_dropout"))
        probabilities = copy_annotations(layer, dropout)(probabilities, training=training)
    attended = ops.einsum(layer._combine_equation, probabilities, projections["value"])
    output = _copy_einsum_dense(layer._output_dense, layer.name, attended.shape)
    result = copy_annotations(layer, output)(attended)
    output.set_weights(layer._output_dense.get_weights())
    return result


def decompose_layers(
    model: keras.Model, keep: Iterable[str | type] = (), split_hard_swish: bool = False
) -> keras.Model:
    """A float Functional copy of `model` with its composite layers
    rewritten into the layers TFLite runs them as (see the module
    docstring); `model` itself when there is nothing to rewrite. Layers
    named in `keep` (names or classes, as `quantize_model`'s `skip_layers`)
    or annotated with a `QuantizeConfig` stay whole. Every other layer is
    cloned with its weights (the user's model is left untouched; a shared
    layer stays shared). `split_hard_swish` also writes hard-swish
    activations as `relu6(x + 3) * x / 6` in four layers.

    Raises:
        ValueError: naming a composite layer whose call cannot be decomposed
            (a gate, a sliding window, `return_attention_scores`) with the
            `skip_layers` call that keeps it whole, in float.

    Example:

    ```python
    inputs = keras.Input((16, 8))
    outputs = keras.layers.MultiHeadAttention(2, 4, name="mha")(inputs, inputs)
    flat = decompose_layers(keras.Model(inputs, outputs))
    sorted(layer.name for layer in flat.layers)
    # ['input_layer', 'mha', 'mha_key', 'mha_query', 'mha_softmax', 'mha_value']

    inputs = keras.Input((16, 16, 3))
    x = keras.layers.SeparableConv2D(8, 3, name="sep")(inputs)
    flat = decompose_layers(keras.Model(inputs, x))
    [type(layer).__name__ for layer in flat.layers]
    # ['InputLayer', 'DepthwiseConv2D', 'Conv2D']
    ```
    """
    keep = tuple(keep)
    targets = [
        op
        for op in model.operations
        if is_composite(op, split_hard_swish)
        and not is_kept_whole(op, keep)
        and not is_masked_attention(op)
    ]
    if not targets:
        return model
    problems = [(op, decomposition_problem(op)) for op in targets]
    problems = [(op, why) for op, why in problems if why]
    if problems:
        lines = "\n".join(f"  - {op.name!r} ({type(op).__name__}) {why}" for op, why in problems)
        names = sorted(op.name for op, _ in problems)
        raise ValueError(
            "quantize_model cannot split these layers into the ops TFLite runs in int8:\n"
            f"{lines}\nKeep them whole, in float, with quantize_model(model, "
            f"skip_layers={names!r})."
        )
    return _rewrite(model, {id(op) for op in targets})


def split_hard_swish(model: keras.Model) -> keras.Model:
    """A float Functional copy of `model` with every hard-swish `Activation`
    written as `relu6(x + 3) * x / 6` in four layers (the same function),
    and nothing else rewritten; `model` itself when it has none. For
    post-training int8 conversion: XNNPACK runs the pieces in int8, not
    `HARD_SWISH` (see the module docstring).

    Example:

    ```python
    inputs = keras.Input((8, 8, 4))
    outputs = keras.layers.Activation("hard_silu", name="act")(inputs)
    model = keras.Model(inputs, outputs)
    split = split_hard_swish(model)
    [layer.name for layer in split.layers[1:]]
    # ['act_shift', 'act_gate', 'act_product', 'act']
    x = np.random.uniform(-5, 5, (2, 8, 8, 4)).astype("float32")
    float(keras.ops.max(keras.ops.abs(split(x) - model(x)))) < 1e-6
    # True
    ```
    """
    if not any(_is_hard_swish(layer) for layer in getattr(model, "layers", ())):
        return model
    if isinstance(model, keras.Sequential) and model.inputs:
        model = keras.Model(model.inputs, model.outputs, name=model.name)
    if not hasattr(model, "_nodes_by_depth"):
        return model  # a subclassed model has no graph to rewrite
    targets = {id(op) for op in model.operations if _is_hard_swish(op)}
    return _rewrite(model, targets)


def _rewrite(model: keras.Model, targets: set) -> keras.Model:
    """`model` with the operations whose ids are in `targets` decomposed."""
    used = {op.name for op in model.operations}

    def unique(base):
        name, i = base, 1
        while name in used:
            name, i = f"{base}_{i}", i + 1
        used.add(name)
        return name

    # Inputs keep their names (int8_io and named inputs refer to them).
    inputs = [
        keras.Input(batch_shape=x.shape, dtype=x.dtype, name=x._keras_history.operation.name)
        for x in model.inputs
    ]
    tensors = {id(x): y for x, y in zip(model.inputs, inputs)}
    # id(original) -> (original, its replacement layers); a shared layer's
    # replacements are shared too.
    clones = {}
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            if node.is_input or not node.operation:
                continue
            args, kwargs = node.arguments.fill_in(tensors)
            op = node.operation
            if id(op) in targets and isinstance(op, _MHA):
                bound = inspect.signature(_MHA.call).bind(None, *args, **kwargs)
                outputs = _multi_head_attention(op, unique, bound, kwargs.get("training"))
            elif id(op) in targets and _is_scale_sum(op):
                if id(op) not in clones:
                    dtype = op.dtype_policy.name
                    scale = L.Rescaling(op.scale, name=unique(f"{op.name}_scale"), dtype=dtype)
                    add = L.Add(name=op.name, dtype=dtype)
                    clones[id(op)] = (op, [copy_annotations(op, scale), copy_annotations(op, add)])
                scale, add = clones[id(op)][1]
                first, second = args[0]
                outputs = add([first, scale(second)])
            elif id(op) in targets and _is_hard_swish(op):
                if id(op) not in clones:
                    parts = _hard_swish_parts(op, unique)
                    clones[id(op)] = (op, [copy_annotations(op, part) for part in parts])
                shift, gate, product, scale = clones[id(op)][1]
                outputs = scale(product([gate(shift(args[0])), args[0]]))
            elif id(op) in targets:  # a separable convolution
                if id(op) not in clones:
                    parts = _separable_parts(op, unique(f"{op.name}_depthwise"))
                    clones[id(op)] = (op, [copy_annotations(op, part) for part in parts])
                depthwise, pointwise = clones[id(op)][1]
                outputs = pointwise(depthwise(args[0]))
            else:
                if id(op) not in clones:
                    new = type(op).from_config(op.get_config())
                    clones[id(op)] = (op, [copy_annotations(op, new)])
                outputs = clones[id(op)][1][0](*args, **kwargs)
            for x, y in zip(node.outputs, keras.tree.flatten(outputs)):
                tensors[id(x)] = y
    # The replacements were built with fresh variables: copy the trained ones.
    for old, new in clones.values():
        if type(old) in _SEPARABLE_PARTS and id(old) in targets:
            _copy_separable_weights(old, *new)
        elif isinstance(old, keras.layers.Layer) and old.weights:
            new[0].set_weights(old.get_weights())
    return keras.Model(
        keras.tree.pack_sequence_as(model._inputs_struct, inputs),
        keras.tree.pack_sequence_as(
            model._outputs_struct, [tensors[id(x)] for x in model.outputs]
        ),
        name=model.name,
    )
