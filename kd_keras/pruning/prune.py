"""`prune_low_magnitude` and `strip_pruning` for layers and models.

Sequential and Functional models are cloned with each selected layer wrapped
in `PruneLowMagnitude` (the wrapped layers keep their weights and are shared
with the input model, as in TFMOT). Subclassed models have no config to
clone from, so their layers are wrapped in place and the same model is
returned. tf_keras (Keras 2) models go to TFMOT itself (`tfmot_bridge`).
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Iterable, Sequence

import keras
from keras import tree
from keras.src.models.functional import Functional

from kd_keras.pruning import tfmot_bridge
from kd_keras.pruning.callbacks import remask_weights
from kd_keras.pruning.schedules import PruningSchedule
from kd_keras.pruning.wrapper import (
    NORMALIZATION_LAYERS,
    PRUNABLE_LAYER_TYPES,
    PruneLowMagnitude,
    collect_pruned_layers,
    dense_reason,
    has_own_rule,
    is_prunable,
    nested_dense_layers,
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
        layers = [] if model is None else _all_layers(model)
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
        return is_prunable(layer) and self._matches(layer, self.prunable)

    def left_dense(self, layer) -> bool:
        """A layer with weights that default whole-model pruning leaves dense
        (not a choice of the user's `prunable` / `skip`)."""
        return (
            self.prunable is None
            and isinstance(layer, keras.layers.Layer)
            and not isinstance(layer, (PruneLowMagnitude, keras.Model))
            and not is_prunable(layer)
            and not self._matches(layer, self.skip)
            # Normalization scales and offsets are not kernels: never pruned,
            # not worth a word (TFMOT passes them through too).
            and not isinstance(layer, NORMALIZATION_LAYERS)
            and bool(layer.trainable_weights)
        )


class PrunedCoverageWarning(UserWarning):
    """`prune_low_magnitude` left layers with weights dense (listed, with why)."""


_OUT_OF_REACH = (
    "prunable, but held where in-place pruning cannot replace it (a private "
    "attribute, a dict or tuple of a subclassed model): keep it in a public "
    "attribute or a list, or build the model as Functional"
)


def _warn_left_dense(layers: list) -> None:
    """One warning for the whole call: each layer left dense, grouped by reason."""
    groups: dict[str, list] = {}
    for layer in dict.fromkeys(layers):  # a shared layer once
        reason = _OUT_OF_REACH if is_prunable(layer) else dense_reason(layer)
        groups.setdefault(reason, []).append(layer)
    if not groups:
        return
    lines = []
    for reason, members in groups.items():
        names = ", ".join(f"'{m.name}' ({type(m).__name__})" for m in members[:6])
        more = f" and {len(members) - 6} more" if len(members) > 6 else ""
        lines.append(f"  - {names}{more}: {reason}.")
    warnings.warn(
        f"prune_low_magnitude left {sum(map(len, groups.values()))} layer(s) with "
        "weights dense:\n" + "\n".join(lines) + "\nTo silence this, name the layers "
        "to prune with `prunable=` or the ones to keep dense with `skip=`.",
        PrunedCoverageWarning,
        stacklevel=3,
    )


def clone_graph(model, clone_function: Callable):
    """`keras.models.clone_model` that keeps the input names (Keras names a
    cloned Functional model's inputs after its tensors, e.g. 'keras_tensor_7';
    the input names are the exported model's signature). Operations that are
    not layers (raw `keras.ops` calls such as `x + 3.0`) are kept as they are."""

    def clone(operation):
        if not isinstance(operation, keras.layers.Layer):
            return operation
        return clone_function(operation)

    input_tensors = None
    if isinstance(model, Functional) and not isinstance(model, keras.Sequential):

        def named_input(tensor):
            layer = tensor._keras_history.operation
            return keras.Input(
                batch_shape=tensor.shape,
                dtype=tensor.dtype,
                sparse=tensor.sparse,
                name=layer.name,
            )

        input_tensors = tree.map_structure(named_input, model.input)
    return keras.models.clone_model(model, input_tensors=input_tensors, clone_function=clone)


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
            Default: every layer of a prunable type (`PRUNABLE_LAYER_TYPES`:
            Dense, convolutions of every kind, EinsumDense, Embedding, LSTM,
            GRU, SimpleRNN, MultiHeadAttention; the class itself, a subclass
            needs `get_prunable_weights()`), every layer with
            `get_prunable_weights()`, and every composite layer holding such
            layers (a keras-hub TransformerEncoder: wrapped whole, the
            kernels of its nested layers masked; select or skip it by its
            own name); other layers pass through untouched,
            those with weights listed in one `PrunedCoverageWarning`. Naming
            a layer that cannot be pruned is an error.
        skip: for models, layers to leave unpruned (names, classes or layers).
        **kwargs: passed to the `PruneLowMagnitude` of a single layer.

    Returns:
        The pruning-ready layer or model; for a list, the list with each
        prunable layer wrapped (the others as they are, as in a model).
        Sequential and Functional models are cloned, raw `keras.ops` nodes
        and input names kept, nested models pruned recursively (sharing the
        original layers' weights, as TFMOT does);
        subclassed models are modified in place and returned. Compile the
        result before `fit`, and train with `UpdatePruningStep`.

    Example:

    ```python
    from kd_keras import pruning

    x = np.random.rand(64, 8).astype("float32")
    y = np.random.randint(0, 3, size=64)
    model = keras.Sequential([
        keras.Input((8,)),
        keras.layers.Dense(16, activation="relu"),
        keras.layers.Dense(3, name="logits"),
    ])

    schedule = pruning.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=1000)
    pruned = pruning.prune_low_magnitude(model, pruning_schedule=schedule, skip=["logits"])
    pruned.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned.fit(x, y, epochs=2, callbacks=[pruning.UpdatePruningStep()], verbose=0)
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
        # As inside a model: layers with nothing to prune pass through.
        select = _Selection(None, None, None)
        pruned = [
            PruneLowMagnitude(layer, **params)
            if isinstance(layer, keras.layers.Layer) and select(layer)
            else layer
            for layer in to_prune
        ]
        _warn_left_dense([layer for layer in to_prune if select.left_dense(layer)])
        return pruned
    if isinstance(to_prune, PruneLowMagnitude):
        return to_prune
    if isinstance(to_prune, keras.Model):
        left_dense = []
        pruned = _prune_model(to_prune, _Selection(to_prune, prunable, skip), params, left_dense)
        _check_something_pruned(to_prune, pruned)
        _warn_left_dense(left_dense)
        return pruned
    if isinstance(to_prune, keras.layers.Layer):
        return PruneLowMagnitude(to_prune, **params, **kwargs)
    raise ValueError(
        "prune_low_magnitude takes a keras Layer, a list of layers or a keras Model "
        f"(Sequential, Functional or subclassed), got {type(to_prune).__name__}."
    )


def _prune_model(model, select: _Selection, params: dict, left_dense: list):
    def wrap(layer, composites: bool = True):
        if isinstance(layer, keras.Model):
            return _prune_model(layer, select, params, left_dense)
        if select(layer) and (composites or has_own_rule(layer)):
            if select.prunable is None:
                # Weights inside a composite layer that no rule reaches.
                left_dense.extend(nested_dense_layers(layer))
            wrapper = PruneLowMagnitude(layer, **params)
            if layer.built:
                wrapper.build(None)
                wrapper._build_shapes_dict = getattr(layer, "_build_shapes_dict", None)
            return wrapper
        if select.left_dense(layer) and (_is_graph_model(model) or not layer._layers):
            # Graph nodes, or leaves of a subclassed model (its containers are
            # searched for layers to wrap instead).
            left_dense.append(layer)
        return layer

    if _is_graph_model(model):
        return clone_graph(model, wrap)
    # In place: first each prunable layer reachable through attributes, as
    # its own wrapper; then the composite layers still holding prunable
    # layers out of reach (in private attributes), each wrapped whole.
    _replace_in_place(model, lambda layer: wrap(layer, composites=False), set())
    # Wrappers made by the first pass are not searched again.
    _replace_in_place(model, wrap, {id(layer) for layer in collect_pruned_layers(model)})
    left_dense.extend(_out_of_reach(model, select))
    return model


def _out_of_reach(model, select: _Selection) -> list:
    """Selected layers of a subclassed model that in-place replacement did
    not reach (outermost only: an encoder, not also its projections)."""
    wrapped = {
        id(sub)
        for wrapper in collect_pruned_layers(model)
        for sub in wrapper._flatten_layers(include_self=True, recursive=True)
    }
    missed = [
        layer
        for layer in _all_layers(model)
        if id(layer) not in wrapped and not isinstance(layer, keras.Model) and select(layer)
    ]
    inner = {
        id(sub)
        for layer in missed
        for sub in layer._flatten_layers(include_self=False, recursive=True)
    }
    return [layer for layer in missed if id(layer) not in inner]


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
    x = np.random.rand(64, 8).astype("float32")
    y = np.random.randint(0, 3, size=64)
    model = keras.Sequential([
        keras.Input((8,)),
        keras.layers.Dense(16, activation="relu"),
        keras.layers.Dense(3, name="logits"),
    ])

    pruned = kd_keras.pruning.prune_low_magnitude(
        model, pruning_schedule=kd_keras.pruning.ConstantSparsity(0.5, begin_step=0)
    )
    pruned.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned.fit(x, y, epochs=1, callbacks=[kd_keras.pruning.UpdatePruningStep()], verbose=0)
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
        return uncompile(_stripped_graph(model))
    remask_weights(model)
    _replace_in_place(
        model,
        lambda layer: layer.layer if isinstance(layer, PruneLowMagnitude) else layer,
        set(),
    )
    return uncompile(model)


def _stripped_graph(model):
    """A copy of a Sequential / Functional model without wrappers. The weights
    are set once the copy is built: a layer that creates its sub-layers in
    its first call (no `build()`) has no weights before that."""
    copies = []

    def copy(layer):
        if isinstance(layer, keras.Model):
            if _is_graph_model(layer):
                return _stripped_graph(layer)
            raise ValueError(
                f"Cannot copy the subclassed model '{layer.name}' nested in a Functional "
                "model; call strip_pruning on the subclassed model itself first."
            )
        inner = layer.layer if isinstance(layer, PruneLowMagnitude) else layer
        new = inner.__class__.from_config(inner.get_config())
        copies.append((new, layer))
        return new

    stripped = clone_graph(model, copy)
    for new, old in copies:
        _copy_weights(new, old)
    return stripped


def _weight_values(layer) -> list:
    """The weights of `layer` (a wrapper: of its inner layer, with masks applied)."""
    if isinstance(layer, PruneLowMagnitude):
        if not layer.built:  # never built: no mask to apply yet
            return [w.value for w in layer.layer.weights]
        masked = {id(w): m for w, m in zip(layer.pruned_weights, layer.masked_weights())}
        return [masked.get(id(w), w.value) for w in layer.layer.weights]
    return [w.value for w in layer.weights]


def _copy_weights(new, old) -> None:
    values = _weight_values(old)
    if not values:
        return
    inner = old.layer if isinstance(old, PruneLowMagnitude) else old
    if len(new.weights) != len(values):
        _build_like(new, inner)
    if len(new.weights) != len(values):
        raise ValueError(
            f"strip_pruning could not rebuild layer '{inner.name}' "
            f"({type(inner).__name__}): the copy has {len(new.weights)} weights, the "
            f"original {len(values)}. Give the layer a build() that creates its "
            "weights (or its sub-layers' weights)."
        )
    new.set_weights([keras.ops.convert_to_numpy(v) for v in values])


def _stripped_copy(layer):
    """An independent plain copy of a single `PruneLowMagnitude` (or layer)."""
    inner = layer.layer if isinstance(layer, PruneLowMagnitude) else layer
    new = _build_like(inner.__class__.from_config(inner.get_config()), inner)
    _copy_weights(new, layer)
    return new
