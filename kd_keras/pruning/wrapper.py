"""`PruneLowMagnitude`: a layer wrapper holding pruning masks and the pruning step.

How it stays correct on every backend: the step counter, the masks and the
thresholds are non-trainable variables updated inside `call` (as
BatchNormalization updates its moving statistics), so the TensorFlow graph,
the stateless JAX train step and torch all carry the updates, with no
variable written from Python between batches. The wrapped layer computes
with `kernel * mask`, fed through a `StatelessScope`: the masked kernel gets
zero gradient, so pruned weights are exactly zero in every forward pass;
`UpdatePruningStep` also writes `kernel * mask` back into the variable at the
end of each epoch, and `strip_pruning` bakes it into a plain layer.
"""

from __future__ import annotations

import re
from typing import Sequence

import keras
from keras import layers, ops

from kd_keras.pruning import impl
from kd_keras.pruning.schedules import PruningSchedule, as_pruning_schedule

_CALLBACK_MISSING = (
    "Layer '{name}' is being trained with pruning but UpdatePruningStep has not "
    "started it: the pruning step would stay at -1 and nothing would be pruned. "
    "Add the callback: model.fit(..., callbacks=[kd_keras.pruning.UpdatePruningStep()]). "
    "In a custom training loop call `cb = UpdatePruningStep(); cb.set_model(model); "
    "cb.on_train_begin()` once before the first step."
)


def _einsum_reduced_axis(layer) -> int | None:
    """Kernel axis summed against the input in an EinsumDense equation."""
    inputs, rest = layer.equation.split(",")
    kernel, output = rest.split("->")
    reduced = [i for i, c in enumerate(kernel) if c in inputs and c not in output]
    return reduced[-1] if reduced else None


def _sublayer_axis(name: str):
    """Reduced axis of the EinsumDense sub-layer `name` (MultiHeadAttention's projections)."""
    return lambda layer: _einsum_reduced_axis(getattr(layer, name))


_RNN = (("cell.kernel", 0), ("cell.recurrent_kernel", 0))
_SEPARABLE = (("depthwise_kernel", None), ("pointwise_kernel", -2))

# Prunable built-in layers, matched on the exact class as in TFMOT (a
# subclass may use its weights differently: it says which with
# `get_prunable_weights()`). Each entry: (weight path, reduced axis). The
# reduced axis is the weight's input-feature axis (the dot-product axis)
# along which m-by-n groups run; None: m-by-n has no meaning for it (a
# depthwise kernel sums over no input channel), so it stays dense under m-by-n.
_REGISTRY: dict[type, tuple[tuple[str, object], ...]] = {
    layers.Dense: (("kernel", 0),),
    layers.Conv1D: (("kernel", -2),),
    layers.Conv2D: (("kernel", -2),),
    layers.Conv3D: (("kernel", -2),),
    # Transposed kernels are (..., filters, in): the input axis is last.
    layers.Conv1DTranspose: (("kernel", -1),),
    layers.Conv2DTranspose: (("kernel", -1),),
    layers.Conv3DTranspose: (("kernel", -1),),
    layers.DepthwiseConv1D: (("kernel", None),),
    layers.DepthwiseConv2D: (("kernel", None),),
    # TFMOT prunes only the pointwise kernel; kd_keras prunes the depthwise
    # one too, as it does a standalone DepthwiseConv2D.
    layers.SeparableConv1D: _SEPARABLE,
    layers.SeparableConv2D: _SEPARABLE,
    layers.EinsumDense: (("kernel", _einsum_reduced_axis),),
    layers.Embedding: (("embeddings", -1),),
    # As TFMOT: the input and recurrent kernels of the cell, not the bias.
    layers.LSTM: _RNN,
    layers.GRU: _RNN,
    layers.SimpleRNN: _RNN,
    # As TFMOT: the four projections; their biases and the softmax stay dense.
    layers.MultiHeadAttention: tuple(
        (f"{name}.kernel", _sublayer_axis(name))
        for name in ("_query_dense", "_key_dense", "_value_dense", "_output_dense")
    ),
}

if hasattr(layers, "ReversibleEmbedding"):  # Keras >= 3.12
    _REGISTRY[layers.ReversibleEmbedding] = (("embeddings", -1),)

PRUNABLE_LAYER_TYPES = tuple(_REGISTRY)

# Rules for layers of libraries kd_keras does not import (keras-hub), matched
# on their registered name: an embedding table is pruned as Embedding's is.
# A ReversibleEmbedding's `reverse` projection reads the same (masked) table.
_NAMED_RULES: dict[str, tuple[tuple[str, object], ...]] = {
    "keras_hub>ReversibleEmbedding": (("embeddings", -1),),
    "keras_hub>PositionEmbedding": (("position_embeddings", -1),),
}


def _registry_entry(layer):
    entry = _REGISTRY.get(type(layer))
    if entry is None:
        entry = _NAMED_RULES.get(keras.saving.get_registered_name(type(layer)))
    return entry


def _attribute(obj, path: str):
    for name in path.split("."):
        obj = getattr(obj, name)
    return obj


def has_own_rule(layer) -> bool:
    """A layer pruned on its own: a registered type or `get_prunable_weights()`."""
    return hasattr(layer, "get_prunable_weights") or _registry_entry(layer) is not None


def nested_prunable_layers(layer) -> list:
    """The prunable layers nested in a composite layer (a TransformerEncoder's
    attention and feed-forward layers), in tracking order.

    Found through Keras's own sub-layer tracking (`_layers`), so sub-layers
    kept in private attributes are reached too. A prunable sub-layer is taken
    whole (MultiHeadAttention with its four projections) and not searched;
    a layer already wrapped for pruning is neither taken nor searched; a
    shared sub-layer is taken once. Nested models are not searched: they are
    pruned as models.

    Example:

    ```python
    encoder = keras_hub.layers.TransformerEncoder(intermediate_dim=16, num_heads=2)
    encoder.build((None, 8, 8))
    [layer.name for layer in nested_prunable_layers(encoder)]
    # ['self_attention_layer', 'feedforward_intermediate_dense', 'feedforward_output_dense']
    ```
    """
    found, seen = [], set()

    def walk(parent):
        for sub in parent._layers:
            if id(sub) in seen or isinstance(sub, (PruneLowMagnitude, keras.Model)):
                continue
            seen.add(id(sub))
            if has_own_rule(sub):
                found.append(sub)
            else:
                walk(sub)

    if not isinstance(layer, keras.Model):
        walk(layer)
    return found


def nested_dense_layers(layer) -> list:
    """Leaf layers with trainable weights nested in a composite layer that
    pruning does not reach (no rule for their type; normalization excluded);
    `prune_low_magnitude` names them in its `PrunedCoverageWarning`.

    Example: `nested_dense_layers(encoder) == []` for a keras-hub
    TransformerEncoder (its weights are kernels, biases and layer norms).
    """
    left, seen = [], set()

    def walk(parent):
        for sub in parent._layers:
            if id(sub) in seen or isinstance(sub, (PruneLowMagnitude, keras.Model)):
                continue
            seen.add(id(sub))
            if has_own_rule(sub) or isinstance(sub, NORMALIZATION_LAYERS):
                continue
            if sub._layers:
                walk(sub)
            elif sub._trainable_variables:
                left.append(sub)

    walk(layer)
    return left


def is_prunable(layer) -> bool:
    """True for the built-in prunable types (exact class, as TFMOT), for
    layers defining `get_prunable_weights()` (TFMOT's `PrunableLayer`
    protocol), and for composite layers holding prunable sub-layers
    (`nested_prunable_layers`: a keras-hub TransformerEncoder)."""
    return has_own_rule(layer) or bool(nested_prunable_layers(layer))


def _targets(layer) -> list:
    """The layers whose rules give `layer`'s pruned weights: itself, or its
    nested prunable layers when it is a composite."""
    return [layer] if has_own_rule(layer) else nested_prunable_layers(layer)


def _own_weights(layer) -> list:
    if hasattr(layer, "get_prunable_weights"):
        return list(layer.get_prunable_weights())
    return [_attribute(layer, path) for path, _ in _registry_entry(layer)]


def _own_axes(layer) -> list:
    if hasattr(layer, "get_prunable_weights"):
        axis = getattr(layer, "pruning_reduced_axis", 0)
        return [axis] * len(_own_weights(layer))
    return [axis(layer) if callable(axis) else axis for _, axis in _registry_entry(layer)]


def prunable_weights(layer) -> list:
    """The variables of `layer` that pruning masks (its kernels; a composite
    layer's: those of its nested prunable layers)."""
    return [w for target in _targets(layer) for w in _own_weights(target)]


def reduced_axes(layer) -> list:
    """For each of `prunable_weights(layer)`, the axis m-by-n groups run along
    (None: the weight stays dense under m-by-n). A custom layer sets
    `pruning_reduced_axis` (default 0, a Dense-like `(in, out)` kernel)."""
    return [axis for target in _targets(layer) for axis in _own_axes(target)]


def reduced_axis(layer):
    """The layer's m-by-n axis: that of its last weight that has one (None if none)."""
    axes = [axis for axis in reduced_axes(layer) if axis is not None]
    return axes[-1] if axes else None


# Layers whose weights are scales and offsets, not kernels: never pruned.
NORMALIZATION_LAYERS = (
    layers.BatchNormalization,
    layers.LayerNormalization,
    layers.GroupNormalization,
    layers.UnitNormalization,
    layers.Normalization,
)


def dense_reason(layer) -> str:
    """Why a layer with weights is left dense by whole-model pruning."""
    for cls in type(layer).__mro__[1:]:
        if cls in _REGISTRY:
            return (
                f"a subclass of {cls.__name__} without get_prunable_weights(): it may use "
                "its weights differently, so it is pruned only when it says which "
                "(subclass kd_keras.pruning.PrunableLayer)"
            )
    return (
        "no pruning rule for this layer type: give it get_prunable_weights() "
        "(kd_keras.pruning.PrunableLayer) to prune it"
    )


def unsupported_layer_message(layer) -> str:
    names = ", ".join(cls.__name__ for cls in PRUNABLE_LAYER_TYPES)
    return (
        f"Layer '{layer.name}' ({type(layer).__name__}) cannot be pruned. Prunable "
        f"types: {names}, or any layer with a `get_prunable_weights()` method "
        "(subclasses of those types too: see kd_keras.pruning.PrunableLayer). "
        "Remove it from `prunable`, or add it to `skip`."
    )


def _own_labels(layer) -> list[str]:
    entry = None if hasattr(layer, "get_prunable_weights") else _registry_entry(layer)
    if entry is None:
        return [w.name.split("/")[-1] for w in _own_weights(layer)]
    return [path.replace(".", "_").lstrip("_").replace("cell_", "") for path, _ in entry]


def _weight_labels(layer) -> list[str]:
    """Names for the masks: the weight's path in the registry (so the four
    `kernel`s of MultiHeadAttention get distinct masks), else its own name;
    in a composite layer, prefixed with the sub-layer's name."""
    if has_own_rule(layer):
        return _own_labels(layer)
    return [f"{target.name}_{label}" for target in _targets(layer) for label in _own_labels(target)]


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _check_pair(value, name: str) -> tuple[int, int]:
    try:
        pair = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        pair = ()
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"{name} must be a pair of positive integers, got {value!r}.")
    return pair


@keras.saving.register_keras_serializable(package="kd_keras")
class PruneLowMagnitude(layers.Wrapper):
    """Magnitude pruning of a layer's weights during training (TFMOT's wrapper).

    Each pruned weight gets a same-shaped mask (1 = keep). At each training
    step the wrapper increments `pruning_step`; when the schedule says so it
    recomputes the masks from the current masked weights (unstructured,
    block, or m-by-n); the wrapped layer always runs on `weight * mask`.

    Prefer `kd_keras.pruning.prune_low_magnitude(layer_or_model, ...)`, which
    wraps each prunable layer of a model. Training needs the
    `UpdatePruningStep` callback.

    Args:
        layer: the layer to prune (see `PRUNABLE_LAYER_TYPES`, or a layer with
            `get_prunable_weights()`).
        pruning_schedule: a `PruningSchedule`; default `ConstantSparsity(0.5, 0)`.
        block_size: `(height, width)` of blocks pruned together (on the 2-D view
            of the weight, leading axes flattened); (1, 1) = unstructured.
        block_pooling_type: "AVG" or "MAX" score of a block.
        sparsity_m_by_n: `(m, n)`: m zeros in every n consecutive weights along
            the layer's input axis, e.g. (2, 4); set once, at the first step.

    Example:

    ```python
    dense = PruneLowMagnitude(
        keras.layers.Dense(8), pruning_schedule=ConstantSparsity(0.75, 0, frequency=1)
    )
    ```
    """

    def __init__(
        self,
        layer: keras.layers.Layer,
        pruning_schedule: PruningSchedule | dict | None = None,
        block_size: Sequence[int] = (1, 1),
        block_pooling_type: str = "AVG",
        sparsity_m_by_n: Sequence[int] | None = None,
        **kwargs,
    ):
        if not isinstance(layer, keras.layers.Layer):
            raise ValueError(f"PruneLowMagnitude wraps a keras Layer, got {type(layer).__name__}.")
        if not is_prunable(layer):
            raise ValueError(unsupported_layer_message(layer))
        pruning_schedule = as_pruning_schedule(pruning_schedule)
        block_size = _check_pair(block_size, "block_size")
        if block_pooling_type not in ("AVG", "MAX"):
            raise ValueError(
                f"block_pooling_type must be 'AVG' or 'MAX', got {block_pooling_type!r}."
            )
        if sparsity_m_by_n is not None:
            sparsity_m_by_n = _check_pair(sparsity_m_by_n, "sparsity_m_by_n")
            if sparsity_m_by_n[0] >= sparsity_m_by_n[1]:
                raise ValueError(
                    f"sparsity_m_by_n={sparsity_m_by_n}: m (zeros per group) must be "
                    "smaller than n (group length), e.g. (2, 4)."
                )
            if block_size != (1, 1):
                raise ValueError("Use either block_size or sparsity_m_by_n, not both.")
        kwargs.setdefault("name", f"{_snake(type(self).__name__)}_{layer.name}")
        # Under a mixed policy the wrapper must see its variables in float32:
        # masks are ranked on the float32 kernel (bfloat16 would tie
        # magnitudes), and on torch an assign inside an autocast scope writes
        # to a cast copy and is lost. autocast=False clears an enclosing
        # scope; a float32 policy keeps the wrapper from opening one itself
        # (Keras does, for mixed layers called outside any scope, as in JAX's
        # stateless training step). The wrapped layer keeps its own policy.
        kwargs["autocast"] = False
        kwargs["dtype"] = "float32"
        super().__init__(layer, **kwargs)
        self.pruning_schedule = pruning_schedule
        self.block_size = block_size
        self.block_pooling_type = block_pooling_type
        self.sparsity_m_by_n = sparsity_m_by_n
        # Set by UpdatePruningStep.on_train_begin; checked when a training
        # step is traced, so a forgotten callback fails before any training.
        self._step_callback_active = False
        self.supports_masking = getattr(layer, "supports_masking", False)

    def build(self, input_shape=None, **shapes):
        if shapes and not self.layer.built:
            # A layer built from several shapes (MultiHeadAttention's
            # query_shape / value_shape), as a loaded `.keras` file rebuilds it.
            self.layer.build(**shapes)
        super().build(input_shape)
        if input_shape is not None and not all(t.built for t in _targets(self.layer)):
            # A composite layer that creates its sub-layers' weights in its
            # first call (no build()), as a loaded `.keras` file rebuilds it:
            # one symbolic call creates them.
            self.layer(keras.KerasTensor(input_shape, dtype=self.layer.compute_dtype))
        self._validate_structure()
        self.masks, self.thresholds = [], []
        for weight, base in zip(prunable_weights(self.layer), _weight_labels(self.layer)):
            self.masks.append(
                self.add_weight(
                    name=f"{base}_mask",
                    shape=weight.shape,
                    dtype=weight.dtype,
                    initializer="ones",
                    trainable=False,
                )
            )
            self.thresholds.append(
                self.add_weight(
                    name=f"{base}_threshold",
                    shape=(),
                    dtype=weight.dtype,
                    initializer="zeros",
                    trainable=False,
                )
            )
        self.pruning_step = self.add_weight(
            name="pruning_step",
            shape=(),
            dtype="int32",
            initializer=keras.initializers.Constant(-1),
            trainable=False,
        )
        self.built = True

    def _validate_structure(self):
        weights = prunable_weights(self.layer)
        if self.block_size != (1, 1):
            for weight in weights:
                impl.as_matrix_shape(weight.shape)
        if self.sparsity_m_by_n is not None and all(a is None for a in reduced_axes(self.layer)):
            raise ValueError(
                f"sparsity_m_by_n is not defined for layer '{self.layer.name}' "
                f"({type(self.layer).__name__}): it has no input axis to group "
                "weights along. Skip this layer or use unstructured pruning."
            )
        # An input axis that is not a multiple of n is zero-padded, as in
        # TFMOT: a 3-channel first conv takes 2:4 (one zero per group of 3).

    @property
    def pruned_weights(self) -> list:
        """The wrapped layer's weights that are pruned, in mask order."""
        return prunable_weights(self.layer)

    def masked_weights(self) -> list:
        """`weight * mask` for each pruned weight (what the layer computes with)."""
        return [ops.multiply(w.value, m.value) for w, m in zip(self.pruned_weights, self.masks)]

    def _new_masks(self, step):
        """Masks and thresholds for this step, recomputed when the schedule says so."""
        old = [m.value for m in self.masks], [t.value for t in self.thresholds]
        if self.sparsity_m_by_n is not None:
            # As TFMOT: the m-by-n pattern is chosen once, at the first step.
            should, sparsity = ops.equal(step, 1), None
        else:
            should, sparsity = self.pruning_schedule(step)

        def update():
            masks, thresholds = [], []
            axes = reduced_axes(self.layer)
            for w, m, t, axis in zip(self.pruned_weights, *old, axes):
                # From the masked weights: pruned entries stay pruned as the
                # sparsity grows (TFMOT zeroes the variable itself each step).
                effective = ops.stop_gradient(ops.multiply(w.value, m))
                if self.sparsity_m_by_n is not None:
                    # A weight with no input axis (a separable conv's
                    # depthwise kernel) keeps its mask under m-by-n.
                    new_m = (
                        m
                        if axis is None
                        else impl.m_by_n_mask(effective, self.sparsity_m_by_n, axis)
                    )
                    new_t = t
                elif self.block_size != (1, 1):
                    new_m, new_t = impl.block_mask(
                        effective, sparsity, self.block_size, self.block_pooling_type
                    )
                else:
                    new_m, new_t = impl.magnitude_mask(effective, sparsity)
                masks.append(new_m)
                thresholds.append(new_t)
            return masks, thresholds

        return ops.cond(should, update, lambda: old)

    def call(self, inputs, *args, training=None, **kwargs):
        masks = [m.value for m in self.masks]
        if training:
            if not self._step_callback_active:
                raise RuntimeError(_CALLBACK_MISSING.format(name=self.name))
            # -1 (never started) counts as 0: the layer may be built inside
            # the first traced step, after UpdatePruningStep.on_train_begin.
            step = ops.add(ops.maximum(self.pruning_step.value, 0), 1)
            self.pruning_step.assign(step)
            masks, thresholds = self._new_masks(step)
            for var, value in zip(self.masks + self.thresholds, list(masks) + list(thresholds)):
                var.assign(value)
        pruned = {id(w): m for w, m in zip(self.pruned_weights, masks)}
        mapping = [
            (v, ops.multiply(v.value, pruned[id(v)]) if id(v) in pruned else v.value)
            for v in self.layer.variables
        ]
        if getattr(self.layer, "_call_has_training_arg", False):
            kwargs["training"] = training
        # The wrapped layer sees `weight * mask` in place of `weight`.
        with keras.StatelessScope(state_mapping=mapping, collect_losses=True) as scope:
            outputs = self.layer(inputs, *args, **kwargs)
        # State the wrapped layer updated inside the scope (dropout seeds,
        # moving statistics, masks of a wrapper nested in a composite layer)
        # would be lost with the scope: write it back.
        for v in self.layer.non_trainable_variables:
            if id(v) not in pruned:
                v.assign(scope.get_current_value(v))
        for loss in scope.losses:
            self.add_loss(loss)
        return outputs

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def compute_output_spec(self, *args, **kwargs):
        kwargs.pop("training", None)
        return self.layer.compute_output_spec(*args, **kwargs)

    def compute_mask(self, inputs, previous_mask=None):
        return self.layer.compute_mask(inputs, previous_mask)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "pruning_schedule": keras.saving.serialize_keras_object(self.pruning_schedule),
                "block_size": self.block_size,
                "block_pooling_type": self.block_pooling_type,
                "sparsity_m_by_n": self.sparsity_m_by_n,
            }
        )
        return config


def collect_pruned_layers(model) -> list[PruneLowMagnitude]:
    """Every `PruneLowMagnitude` inside `model` (nested models, Distiller students)."""
    if isinstance(model, PruneLowMagnitude):
        return [model]
    return [
        layer
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, PruneLowMagnitude)
    ]
