"""Reaching the outputs of intermediate layers, also inside nested models.

Keras's own `FeatureDistillation` rebuilds a functional extractor
(`keras.Model(model.inputs, layer.output)`), which fails for layers inside a
nested model and for subclassed models. Here the layer's `call` is wrapped for
the duration of one forward pass and its output recorded, so any layer that
runs during `model(x)` can be read, and the forward pass is shared with the
one that computes the logits (no second student pass).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Iterable

import keras


def iter_layer_paths(model: keras.layers.Layer, prefix: str = ""):
    """Yields `(path, layer)` for every layer reachable from `model`, where
    nested layers have paths like `"backbone/transformer_layer_0"`."""
    children = getattr(model, "layers", None)
    if children is None:
        children = list(model._flatten_layers(include_self=False, recursive=False))
    for layer in children:
        path = f"{prefix}{layer.name}"
        yield path, layer
        if isinstance(layer, keras.Model) or getattr(layer, "layers", None):
            yield from iter_layer_paths(layer, prefix=path + "/")


def resolve_layer(model: keras.layers.Layer, path: str, role: str = "model") -> keras.layers.Layer:
    """The layer at `path` (`"name"` or `"outer/inner"`), or a ValueError that
    lists the names that exist."""
    paths = dict(iter_layer_paths(model))
    if path in paths:
        return paths[path]
    # A bare name that is unique anywhere in the tree is accepted too.
    matches = [layer for p, layer in paths.items() if p.rsplit("/", 1)[-1] == path]
    if len(matches) == 1:
        return matches[0]
    hint = "it is ambiguous; use the full path" if matches else "no such layer"
    raise ValueError(
        f"Layer '{path}' not found in the {role} '{model.name}' ({hint}). "
        f"Layers that exist: {sorted(paths)}."
    )


def first_tensor(output):
    """Layers that return a tuple (a transformer block returning a cache, say)
    are distilled on their first output."""
    while isinstance(output, (list, tuple)):
        output = output[0]
    if isinstance(output, dict):
        output = next(iter(output.values()))
    return output


@contextlib.contextmanager
def record_outputs(model: keras.layers.Layer, paths: Iterable[str]):
    """Context manager: while active, calling `model` records the outputs of
    the layers at `paths` into the yielded dict (path -> tensor).

    Example:

    ```python
    model = keras.Sequential([
        keras.Input((8,)), keras.layers.Dense(4, name="block1"), keras.layers.Dense(3)
    ])
    x = np.ones((2, 8), "float32")
    with record_outputs(model, ["block1"]) as features:
        logits = model(x)
    features["block1"]  # the output of layer block1 in that same pass
    ```
    """
    recorded: dict = {}
    patched = []
    try:
        for path in dict.fromkeys(paths):
            layer = resolve_layer(model, path)
            original = layer.call

            @functools.wraps(original)
            def recording_call(*args, __original=original, __path=path, **kwargs):
                output = __original(*args, **kwargs)
                recorded[__path] = first_tensor(output)
                return output

            # object.__setattr__ skips Keras attribute tracking: the wrapper
            # is temporary and must never be saved.
            object.__setattr__(layer, "call", recording_call)
            patched.append(layer)
        yield recorded
    finally:
        for layer in patched:
            object.__delattr__(layer, "call")
