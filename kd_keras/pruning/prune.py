"""`prune_low_magnitude` and `strip_pruning` for layers and models.

Sequential and Functional models are cloned with each selected layer wrapped
in `PruneLowMagnitude` (the wrapped layers keep their weights and are shared
with the input model, as in TFMOT). Subclassed models have no config to
clone from, so their layers are wrapped in place and the same model is
returned. tf_keras (Keras 2) models go to TFMOT itself (`tfmot_bridge`).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import keras
from keras.src.models.functional import Functional

from kd_keras.pruning import tfmot_bridge
from kd_keras.pruning.callbacks import remask_weights
from kd_keras.pruning.schedules import PruningSchedule
from kd_keras.pruning.wrapper import (
    PRUNABLE_LAYER_TYPES,
    PruneLowMagnitude,
    is_prunable,
    unsupported_layer_message,
)
from kd_keras.uncompile import uncompile

LayerSelector = Iterable["str | type | keras.layers.Layer"]


def _is_graph_model(model) -> bool:
    """Sequential or Functional: a model `clone_model` can rebuild from its graph."""
    return isinstance(model, (keras.Sequential, Functional))


def _all_layers(model) -> list:
    return list(model._flatten_layers(include_self=False, recursive=True))


class _Selection:
    """Which layers of a model get pruned: `prunable` (default: every prunable
    layer) minus `skip`. Entries are layer names, layer classes or layers."""

    def __init__(self, model, prunable: LayerSelector | None, skip: LayerSelector | None):
        layers = _all_layers(model)
        self.by_name = {layer.name: layer for layer in layers}
        self.prunable = None if prunable is None else list(prunable)
        self.skip = list(skip or [])
        for entry in self.prunable or []:
            self._check(entry, explicit=True)
        for entry in self.skip:
            self._check(entry, explicit=False)

    def _check(self, entry, explicit: bool):
        if isinstance(entry, str):
            if entry not in self.by_name:
                raise ValueError(
                    f"No layer named '{entry}' in the model. Layer names: {sorted(self.by_name)}."
                )
            layer = self.by_name[entry]
            if explicit and not is_prunable(layer):
                raise ValueError(unsupported_layer_message(layer))
        elif isinstance(entry, type):
            if explicit and not (
                issubclass(entry, PRUNABLE_LAYER_TYPES) or hasattr(entry, "get_prunable_weights")
            ):
                names = ", ".join(cls.__name__ for cls in PRUNABLE_LAYER_TYPES)
                raise ValueError(
                    f"Layer type {entry.__name__} cannot be pruned. Prunable types: {names}, "
                    "or a layer class with a `get_prunable_weights()` method."
                )
        elif isinstance(entry, keras.layers.Layer):
            if explicit and not is_prunable(entry):
                raise ValueError(unsupported_layer_message(entry))
        else:
            raise ValueError(
                "Entries of `prunable` / `skip` must be layer names, layer classes or "
                f"layers, got {entry!r}."
            )

    @staticmethod
    def _matches(layer, entries) -> bool:
        for entry in entries:
            if isinstance(entry, str) and layer.name == entry:
                return True
            if isinstance(entry, type) and isinstance(layer, entry):
                return True
            if entry is layer:
                return True
        return False

    def __call__(self, layer) -> bool:
        if isinstance(layer, PruneLowMagnitude) or self._matches(layer, self.skip):
            return False
        if self.prunable is None:
            return is_prunable(layer)
        return self._matches(layer, self.prunable)


def _replace_in_place(obj, replace: Callable[[Any], Any], seen: set[int]) -> None:
    """Replace sub-layers of a subclassed model/layer where `replace` returns a
    new layer (attributes and lists), recursing into the others."""
    if id(obj) in seen:
        return
    seen.add(id(obj))
    tracker = getattr(obj, "_tracker", None)

    def swap(old):
        new = replace(old)
        if new is old:
            _replace_in_place(old, replace, seen)
            return old
        if tracker is not None and tracker.is_in_store("layers", old):
            tracker.replace_tracked_value("layers", old, new)
        return new

    attributes = dict(vars(obj))
    # On torch, Keras layers are torch Modules: sub-layers live in `_modules`.
    attributes.update(vars(obj).get("_modules") or {})
    for name, value in list(attributes.items()):
        if name.startswith("_"):  # Keras bookkeeping (e.g. `_layers`), kept by the tracker
            continue
        if isinstance(value, keras.layers.Layer):
            new = swap(value)
            if new is not value:
                setattr(obj, name, new)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, keras.layers.Layer):
                    value[i] = swap(item)


def _build_like(new_layer, old_layer):
    build_config = old_layer.get_build_config() if old_layer.built else None
    if build_config:
        new_layer.build_from_config(build_config)
    return new_layer


def prune_low_magnitude(
    to_prune,
    pruning_schedule: PruningSchedule | None = None,
    block_size: Sequence[int] = (1, 1),
    block_pooling_type: str = "AVG",
    sparsity_m_by_n: Sequence[int] | None = None,
    prunable: LayerSelector | None = None,
    skip: LayerSelector | None = None,
    **kwargs,
):
    """Wrap a layer, a list of layers or a model for magnitude pruning (TFMOT's API).

    Args:
        to_prune: a Keras 3 layer, list of layers, Sequential, Functional or
            subclassed model; or a tf_keras model/layer (pruned by TFMOT itself).
        pruning_schedule: a `PruningSchedule`; default `ConstantSparsity(0.5, 0)`.
        block_size: block sparsity `(height, width)`; (1, 1) = unstructured.
        block_pooling_type: "AVG" or "MAX" score of a block.
        sparsity_m_by_n: `(m, n)` structured sparsity, e.g. (2, 4).
        prunable: for models, the layers to prune (names, classes or layers).
            Default: every layer of a prunable type (Dense, Conv1D/2D/3D,
            DepthwiseConv2D, SeparableConv2D, Conv2DTranspose, EinsumDense,
            Embedding); other layers pass through untouched. Naming a layer
            that cannot be pruned is an error.
        skip: for models, layers to leave unpruned (names, classes or layers).
        **kwargs: passed to the `PruneLowMagnitude` of a single layer.

    Returns:
        The pruning-ready layer or model. Sequential and Functional models are
        cloned (sharing the original layers' weights, as TFMOT does);
        subclassed models are modified in place and returned. Compile the
        result before `fit`, and train with `UpdatePruningStep`.

    Example:

    ```python
    from kd_keras import pruning
    schedule = pruning.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=1000)
    pruned = pruning.prune_low_magnitude(model, pruning_schedule=schedule, skip=["logits"])
    pruned.compile("adam", "sparse_categorical_crossentropy")
    pruned.fit(x, y, epochs=2, callbacks=[pruning.UpdatePruningStep()])
    final = pruning.strip_pruning(pruned)
    ```
    """
    params = {
        "pruning_schedule": pruning_schedule,
        "block_size": block_size,
        "block_pooling_type": block_pooling_type,
        "sparsity_m_by_n": sparsity_m_by_n,
    }
    if tfmot_bridge.is_tf_keras(to_prune):
        return tfmot_bridge.prune_low_magnitude(to_prune, prunable=prunable, skip=skip, **params)
    if isinstance(to_prune, (list, tuple)):
        return [
            layer
            if isinstance(layer, (PruneLowMagnitude, keras.layers.InputLayer))
            else PruneLowMagnitude(layer, **params)
            for layer in to_prune
        ]
    if isinstance(to_prune, PruneLowMagnitude):
        return to_prune
    if isinstance(to_prune, keras.Model):
        pruned = _prune_model(to_prune, _Selection(to_prune, prunable, skip), params)
        _check_something_pruned(to_prune, pruned)
        return pruned
    if isinstance(to_prune, keras.layers.Layer):
        return PruneLowMagnitude(to_prune, **params, **kwargs)
    raise ValueError(
        "prune_low_magnitude takes a keras Layer, a list of layers or a keras Model "
        f"(Sequential, Functional or subclassed), got {type(to_prune).__name__}."
    )


def _prune_model(model, select: _Selection, params: dict):
    def wrap(layer):
        if isinstance(layer, keras.Model):
            return _prune_model(layer, select, params)
        if select(layer):
            wrapper = PruneLowMagnitude(layer, **params)
            if layer.built:
                wrapper.build(None)
                wrapper._build_shapes_dict = getattr(layer, "_build_shapes_dict", None)
            return wrapper
        return layer

    if _is_graph_model(model):
        return keras.models.clone_model(model, clone_function=wrap)
    _replace_in_place(model, wrap, set())
    return model


def _check_something_pruned(model, pruned):
    if not any(isinstance(layer, PruneLowMagnitude) for layer in _all_layers(pruned)):
        raise ValueError(
            f"Nothing to prune in model '{model.name}': no layer was selected (prunable "
            f"types: {', '.join(cls.__name__ for cls in PRUNABLE_LAYER_TYPES)}). Check "
            "`prunable` / `skip`; a subclassed model's layers must be attributes or lists "
            "of layers."
        )
    return pruned


def strip_pruning(model):
    """Remove the pruning wrappers, baking `weight * mask` into plain layers.

    Args:
        model: a pruned layer or model (Keras 3), or a tf_keras model pruned
            through the TFMOT bridge.

    Returns:
        For Sequential and Functional models, a new model with the original
        layer types, independent weights and the pruned zeros in its kernels.
        A pruned subclassed model is unwrapped in place and returned. Models
        come back uncompiled (`kd_keras.uncompile`): the pruning run's
        optimizer state is not part of the result, so the saved file is the
        size of the model; `compile` again to evaluate or fine-tune. A single
        `PruneLowMagnitude` gives a new plain layer.

    Example:

    ```python
    final = kd_keras.pruning.strip_pruning(pruned)
    final.save("student_sparse.keras")
    ```
    """
    if tfmot_bridge.is_tf_keras(model):
        return tfmot_bridge.strip_pruning(model)
    if isinstance(model, PruneLowMagnitude):
        return _stripped_copy(model)
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"strip_pruning takes a keras Model or a PruneLowMagnitude layer, got "
            f"{type(model).__name__}."
        )
    if _is_graph_model(model):
        return uncompile(keras.models.clone_model(model, clone_function=_stripped_copy))
    remask_weights(model)
    _replace_in_place(
        model,
        lambda layer: layer.layer if isinstance(layer, PruneLowMagnitude) else layer,
        set(),
    )
    return uncompile(model)


def _stripped_copy(layer):
    """An independent copy of `layer` with pruning wrappers removed."""
    if isinstance(layer, keras.Model):
        if _is_graph_model(layer):
            return strip_pruning(layer)
        raise ValueError(
            f"Cannot copy the subclassed model '{layer.name}' nested in a Functional "
            "model; call strip_pruning on the subclassed model itself first."
        )
    if isinstance(layer, PruneLowMagnitude):
        inner = layer.layer
        masked = {id(w): m for w, m in zip(layer.pruned_weights, layer.masked_weights())}
        values = [masked.get(id(w), w.value) for w in inner.weights]
    else:
        inner = layer
        values = [w.value for w in inner.weights]
    new = _build_like(inner.__class__.from_config(inner.get_config()), inner)
    if values:
        new.set_weights([keras.ops.convert_to_numpy(v) for v in values])
    return new
