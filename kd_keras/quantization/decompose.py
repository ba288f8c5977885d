"""Composite layers rewritten as the layers TFLite runs them as.

TFLite has no fused separable convolution and no fused attention: a
`SeparableConv1D` runs as `DEPTHWISE_CONV_2D` then `CONV_2D`, a
`MultiHeadAttention` as four `FULLY_CONNECTED` projections around two
`BATCH_MATMUL`s and a `SOFTMAX`. Each of those ops reads and writes int8
with its own range, so QAT has to see the same pieces: `decompose_layers`
replaces each composite layer of a Functional model by the standard layers
and `keras.ops` calls that compute it (same weights, same function), and
the QAT rewrite then quantizes every piece by its own rule.

* `SeparableConv1D` -> `DepthwiseConv1D` (named `<name>_depthwise`, no
  bias) -> `Conv1D` with kernel size 1 (named `<name>`, the bias and the
  activation).
* `MultiHeadAttention` -> `EinsumDense` query / key / value projections
  (`<name>_query`, ...; `1 / sqrt(key_dim)` folded into the query
  projection), `ops.einsum` for the scores, `Softmax`, `Dropout`,
  `ops.einsum` for the weighted values and the output `EinsumDense` (named
  `<name>`, so `get_layer(name).output` is still the attention output).
  Masks (an `attention_mask`, `use_causal_mask`, masked inputs), gates and
  sliding windows are not decomposed: such a layer is refused by name.
"""

from __future__ import annotations

import inspect

import keras
import numpy as np
from keras import ops

_MHA = keras.layers.MultiHeadAttention


def _attention_problem(layer, bound) -> str | None:
    """Why this MultiHeadAttention call cannot be decomposed, or `None`."""
    if type(layer) is not _MHA:
        return "is a MultiHeadAttention subclass (its attention may differ)"
    if getattr(layer, "_use_gate", False):
        return "uses a gate (use_gate=True)"
    if getattr(layer, "_sliding_window", None) is not None:
        return "uses a sliding window"
    arguments = bound.arguments
    if arguments.get("attention_mask") is not None or arguments.get("use_causal_mask"):
        return "is called with an attention mask (attention_mask / use_causal_mask)"
    if arguments.get("return_attention_scores"):
        return "is called with return_attention_scores=True"
    for name in ("query", "value", "key"):
        tensor = arguments.get(name)
        if tensor is not None and getattr(tensor, "_keras_mask", None) is not None:
            return f"receives a masked {name} (Embedding(mask_zero=True) upstream)"
    return None


def decomposition_problem(layer) -> str | None:
    """Why `layer` (a composite layer in a Functional graph) cannot be
    decomposed, or `None` when it can (or is no composite layer)."""
    if isinstance(layer, _MHA):
        for node in layer._inbound_nodes:
            args, kwargs = node.arguments.args, node.arguments.kwargs
            bound = inspect.signature(_MHA.call).bind(None, *args, **kwargs)
            problem = _attention_problem(layer, bound)
            if problem:
                return problem
    return None


def is_composite(layer) -> bool:
    """True for the layers `decompose_layers` rewrites."""
    return isinstance(layer, (keras.layers.SeparableConv1D, _MHA))


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


def _separable_conv_1d(layer, unique, inputs):
    common = {
        "kernel_size": layer.kernel_size,
        "strides": layer.strides,
        "padding": layer.padding,
        "data_format": layer.data_format,
        "dilation_rate": layer.dilation_rate,
        "dtype": layer.dtype_policy,
    }
    depthwise = keras.layers.DepthwiseConv1D(
        depth_multiplier=layer.depth_multiplier,
        use_bias=False,
        name=unique(f"{layer.name}_depthwise"),
        **common,
    )
    pointwise = keras.layers.Conv1D(
        layer.filters,
        1,
        data_format=layer.data_format,
        activation=layer.activation,
        use_bias=layer.use_bias,
        dtype=layer.dtype_policy,
        name=layer.name,
    )
    x = depthwise(inputs)
    y = pointwise(x)
    depthwise.kernel.assign(layer.depthwise_kernel)
    pointwise.kernel.assign(layer.pointwise_kernel)
    if layer.use_bias:
        pointwise.bias.assign(layer.bias)
    return y


def _multi_head_attention(layer, unique, bound, training):
    arguments = bound.arguments
    query, value = arguments["query"], arguments["value"]
    key = arguments.get("key")
    key = value if key is None else key
    projections = {}
    for part, tensor in (("query", query), ("key", key), ("value", value)):
        dense = getattr(layer, f"_{part}_dense")
        clone = _copy_einsum_dense(dense, unique(f"{layer.name}_{part}"), tensor.shape)
        projections[part] = clone(tensor)
        weights = [np.asarray(ops.convert_to_numpy(w)) for w in dense.weights]
        if part == "query":
            # (x @ W + b) / sqrt(d) == x @ (W / sqrt(d)) + b / sqrt(d): one
            # int8 MUL and its rounding fewer.
            weights = [w * layer._inverse_sqrt_key_dim for w in weights]
        clone.set_weights(weights)
    scores = ops.einsum(layer._dot_product_equation, projections["key"], projections["query"])
    softmax = keras.layers.Softmax(axis=layer._softmax.axis, name=unique(f"{layer.name}_softmax"))
    probabilities = softmax(scores)
    if layer._dropout > 0.0:
        dropout = keras.layers.Dropout(layer._dropout, name=unique(f"{layer.name}_dropout"))
        probabilities = dropout(probabilities, training=training)
    attended = ops.einsum(layer._combine_equation, probabilities, projections["value"])
    output = _copy_einsum_dense(layer._output_dense, layer.name, attended.shape)
    result = output(attended)
    output.set_weights(layer._output_dense.get_weights())
    return result


def decompose_layers(model: keras.Model, keep: frozenset = frozenset()) -> keras.Model:
    """A Functional copy of `model` with its composite layers decomposed
    (see the module docstring); `model` itself when it has none. Layers
    named in `keep` stay whole. Every other layer is cloned with its weights
    (the user's model is left untouched; a shared layer stays shared).

    Raises:
        ValueError: naming a composite layer whose call cannot be decomposed
            (masked attention, ...) with the `skip_layers` call that keeps it
            whole, in float.

    Example:

    ```python
    inputs = keras.Input((16, 8))
    outputs = keras.layers.MultiHeadAttention(2, 4, name="mha")(inputs, inputs)
    flat = decompose_layers(keras.Model(inputs, outputs))
    sorted(layer.name for layer in flat.layers)
    # ['input_layer', 'mha', 'mha_key', 'mha_query', 'mha_softmax', 'mha_value']
    ```
    """
    targets = [op for op in model.operations if is_composite(op) and op.name not in keep]
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
    used = {op.name for op in model.operations}

    def unique(base):
        name, i = base, 1
        while name in used:
            name, i = f"{base}_{i}", i + 1
        used.add(name)
        return name

    inputs = [
        keras.Input(batch_shape=x.shape, dtype=x.dtype, name=x._keras_history.operation.name)
        for x in model.inputs
    ]
    tensors = {id(x): y for x, y in zip(model.inputs, inputs)}
    clones = {}
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            if node.is_input or not node.operation:
                continue
            args, kwargs = node.arguments.fill_in(tensors)
            op = node.operation
            if is_composite(op) and op.name not in keep:
                if isinstance(op, _MHA):
                    bound = inspect.signature(_MHA.call).bind(None, *args, **kwargs)
                    outputs = _multi_head_attention(op, unique, bound, kwargs.get("training"))
                else:
                    outputs = _separable_conv_1d(op, unique, args[0])
            else:
                if id(op) not in clones:
                    clones[id(op)] = (op, _clone(op))
                outputs = clones[id(op)][1](*args, **kwargs)
            for x, y in zip(node.outputs, keras.tree.flatten(outputs)):
                tensors[id(x)] = y
    for old, new in clones.values():
        if isinstance(old, keras.layers.Layer) and old.weights:
            new.set_weights(old.get_weights())
    return keras.Model(
        keras.tree.pack_sequence_as(model._inputs_struct, inputs),
        keras.tree.pack_sequence_as(
            model._outputs_struct, [tensors[id(x)] for x in model.outputs]
        ),
        name=model.name,
    )


def _clone(operation):
    clone = type(operation).from_config(operation.get_config())
    # quantize_annotate_layer marks sit outside get_config: keep them.
    for name, value in vars(operation).items():
        if name.startswith("_kd_keras_"):
            setattr(clone, name, value)
    return clone
