"""Functional graphs of any shape for the QAT rewrite: nested models inlined,
raw `keras.ops` nodes classified.

A Functional model holds two kinds of nodes besides layers: nested models (a
keras-hub backbone inside its task model, a Sequential block inside a
Functional one) and raw operations (`x + 3.0`, `x * (1 / 6)`,
`ops.relu6(x)`, `x[:, 1:]`), which are `keras.Operation`s without weights
and are absent from `model.layers`. `inline_nested_models` turns the first
into one flat graph, so that every layer is rewritten (a nested model's
conv -> BN -> ReLU is folded like any other); `raw_op_carries_range` says which
raw operations only move values (their output keeps the input's int8
range, TFLite requires that for reshapes and slices) and which compute new
values (their output gets its own range).
"""

from __future__ import annotations

import keras

#: Raw operations that only select or move values: TFLite runs them on int8
#: tensors with the input's scale and zero point.
RANGE_PRESERVING_OPS = frozenset(
    {
        "Reshape",
        "Transpose",
        "Squeeze",
        "ExpandDims",
        "GetItem",
        "Slice",
        "MaxPool",
        "Identity",
        "Copy",
        "Flatten",
        "Ravel",
        "Tile",
        "BroadcastTo",
        "Repeat",
    }
)


def is_graph_model(operation) -> bool:
    """True for a nested Functional or Sequential model (one with a graph)."""
    return isinstance(operation, keras.Model) and (
        isinstance(operation, keras.Sequential) or hasattr(operation, "_nodes_by_depth")
    ) and bool(getattr(operation, "inputs", None))


def is_raw_op(operation) -> bool:
    """True for a `keras.ops` call recorded in a Functional graph (not a layer)."""
    return not isinstance(operation, keras.layers.Layer)


def raw_op_carries_range(operation) -> bool:
    """True when a raw op's output keeps its input's quantization range."""
    return type(operation).__name__ in RANGE_PRESERVING_OPS


def _functional_view(model):
    if isinstance(model, keras.Sequential):
        return keras.Model(model.inputs, model.outputs, name=model.name)
    return model


#: Attributes starting with this mark a layer for a kd_keras rewrite
#: (`quantize_annotate_layer`); inlining keeps them on the clones.
ANNOTATION_PREFIX = "_kd_keras_"


def _clone(operation, used_names: set, outer: bool):
    config = operation.get_config()
    # The outer model's names win: `get_layer(name)` on the result still
    # finds the outer layers; a nested layer that repeats a name is renamed.
    if not outer and config.get("name") in used_names:
        base, i = config["name"], 1
        while f"{base}_{i}" in used_names:
            i += 1
        config["name"] = f"{base}_{i}"
    used_names.add(config.get("name"))
    return copy_annotations(operation, type(operation).from_config(config))


def copy_annotations(source, target):
    """Carry `source`'s annotations (`quantize_annotate_layer` and its
    QuantizeConfig, attributes outside get_config) over to `target`, a layer
    that replaces it in a rewritten graph; returns `target`."""
    for name, value in vars(source).items():
        if name.startswith(ANNOTATION_PREFIX):
            setattr(target, name, value)
    return target


def inline_nested_models(model: keras.Model, keep: frozenset = frozenset()) -> keras.Model:
    """A flat Functional copy of `model` with nested graph models inlined.

    Every layer is cloned with its weights (the user's model is left
    untouched); a layer called at several places stays one shared clone; a
    nested layer whose name repeats an outer one gets a `_1` suffix. Nested
    models named in `keep` stay whole (they are kept in float as a block).
    A nested model's call arguments such as `training=False` do not survive
    inlining: its layers run in the outer model's mode.

    Returns `model` itself when it has no nested graph model.

    Example:

    ```python
    backbone = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3)])
    inputs = keras.Input((8, 8, 3))
    flat = inline_nested_models(keras.Model(inputs, backbone(inputs)))
    [layer.name for layer in flat.layers]  # the input and the conv, no Sequential
    ```
    """
    if not any(is_graph_model(op) and op.name not in keep for op in model.operations):
        return model
    outer_ids = {id(op) for op in model.operations}
    used_names = {op.name for op in model.operations}
    clones = {}
    fresh = []

    def run(graph, inputs):
        tensors = {id(x): y for x, y in zip(graph.inputs, inputs)}
        for depth in sorted(graph._nodes_by_depth, reverse=True):
            for node in graph._nodes_by_depth[depth]:
                if node.is_input or not node.operation:
                    continue
                args, kwargs = node.arguments.fill_in(tensors)
                op = node.operation
                if is_graph_model(op) and op.name not in keep:
                    flat_args = [
                        t for t in keras.tree.flatten(args) if isinstance(t, keras.KerasTensor)
                    ]
                    outputs = run(_functional_view(op), flat_args)
                else:
                    if id(op) not in clones:
                        clones[id(op)] = _clone(op, used_names, id(op) in outer_ids)
                        fresh.append((op, clones[id(op)]))
                    outputs = clones[id(op)](*args, **kwargs)
                for x, y in zip(node.outputs, keras.tree.flatten(outputs)):
                    tensors[id(x)] = y
        return [tensors[id(x)] for x in graph.outputs]

    inputs = [
        keras.Input(batch_shape=x.shape, dtype=x.dtype, name=x._keras_history.operation.name)
        for x in model.inputs
    ]
    outputs = run(model, inputs)
    for old, new in fresh:
        if isinstance(old, keras.layers.Layer) and old.weights:
            new.set_weights(old.get_weights())
    return keras.Model(
        keras.tree.pack_sequence_as(model._inputs_struct, inputs),
        keras.tree.pack_sequence_as(model._outputs_struct, outputs),
        name=model.name,
    )


def as_functional(model: keras.Model, caller: str) -> keras.Model:
    """`model` as a Functional model (a Sequential becomes one); a clear error
    for a subclassed or input-less model, naming `caller`."""
    if not isinstance(model, keras.Model):
        raise TypeError(f"{caller} expects a keras.Model, got {type(model).__name__}.")
    if isinstance(model, keras.Sequential):
        if not model.built or not model.inputs:
            raise ValueError(
                f"{caller}: the Sequential model {model.name!r} has no defined input; "
                f"start it with keras.Input(shape) or call model.build(input_shape) first."
            )
        return keras.Model(model.inputs, model.outputs, name=model.name)
    if not hasattr(model, "_nodes_by_depth") or not getattr(model, "inputs", None):
        raise ValueError(
            f"{caller} rewrites Sequential and Functional models; {model.name!r} is a "
            f"subclassed model ({type(model).__name__}). Rebuild it with the Functional "
            f"API (keras.Model(inputs, outputs))."
        )
    return model
