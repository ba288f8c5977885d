"""Channel dependency groups of a Functional model (the idea of DepGraph /
torch-pruning), found by walking the graph once.

Every channel of every tensor gets an integer id. A Conv/Dense layer creates
fresh ids for its output channels (it is a *producer*); a BatchNormalization
or a depthwise convolution keeps the ids of its input (a *follower*: its
per-channel weights are sliced with them); activations, pooling, padding,
dropout... keep them too (*pass-through*). Ids that must be removed together
are merged in a union-find: an `Add` / `Multiply` (layer or raw `keras.ops`
node such as `x + y`) merges channel i of each input, a `Concatenate` lays
its inputs' ids end to end (the offsets), a `Flatten` repeats them once per
spatial position (the row blocks of the next Dense kernel). A Conv/Dense
*consumer* slices its kernel's input axis with the ids of its input.

A union-find class is one channel that exists in several layers at once; a
*group* is the set of producers whose classes are merged (e.g. every block
output of a residual stage). Classes are *fixed* (never removed) when they
reach a model input or output, a layer named in `skip`, a broadcast
(size-1) operand, or a layer that mixes channels in a way slicing cannot
follow (softmax, layer normalization: a *barrier*, kept whole).

Anything else (custom layers, grouped or transposed convolutions, nested
models) is refused with the layer named, so surgery never silently breaks a
network.
"""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np
from keras import layers
from keras.src.models.functional import Functional

# Layers that act on each channel independently and keep the channel axis last.
PASS_THROUGH_LAYERS: tuple[type, ...] = (
    layers.ReLU,
    layers.LeakyReLU,
    layers.ELU,
    layers.Dropout,
    layers.SpatialDropout1D,
    layers.SpatialDropout2D,
    layers.SpatialDropout3D,
    layers.GaussianNoise,
    layers.GaussianDropout,
    layers.AlphaDropout,
    layers.ActivityRegularization,
    layers.Identity,
    layers.MaxPooling1D,
    layers.MaxPooling2D,
    layers.MaxPooling3D,
    layers.AveragePooling1D,
    layers.AveragePooling2D,
    layers.AveragePooling3D,
    layers.GlobalAveragePooling1D,
    layers.GlobalAveragePooling2D,
    layers.GlobalAveragePooling3D,
    layers.GlobalMaxPooling1D,
    layers.GlobalMaxPooling2D,
    layers.GlobalMaxPooling3D,
    layers.ZeroPadding1D,
    layers.ZeroPadding2D,
    layers.ZeroPadding3D,
    layers.Cropping1D,
    layers.Cropping2D,
    layers.Cropping3D,
    layers.UpSampling1D,
    layers.UpSampling2D,
    layers.UpSampling3D,
)

# Layers that mix channels (normalise or softmax across them): correct to
# keep, impossible to slice, so their channels are kept whole.
BARRIER_LAYERS: tuple[type, ...] = (
    layers.Softmax,
    layers.LayerNormalization,
    layers.GroupNormalization,
    layers.UnitNormalization,
    layers.Normalization,
)

MERGE_LAYERS: tuple[type, ...] = (
    layers.Add,
    layers.Subtract,
    layers.Multiply,
    layers.Average,
    layers.Maximum,
    layers.Minimum,
)

# Raw `keras.ops` nodes of a Functional graph (e.g. `x + 3.0` in
# MobileNetV3's hard-sigmoid), by class name: elementwise, so channel-wise.
ELEMENTWISE_BINARY_OPS = frozenset(
    {"Add", "Subtract", "Multiply", "Divide", "TrueDivide", "Maximum", "Minimum", "Power"}
)
ELEMENTWISE_UNARY_OPS = frozenset(
    {
        "Abs",
        "Negative",
        "Exp",
        "Log",
        "Log1p",
        "Expm1",
        "Sqrt",
        "Square",
        "Tanh",
        "Sigmoid",
        "Relu",
        "Relu6",
        "HardSigmoid",
        "HardSilu",
        "HardSwish",
        "Silu",
        "Swish",
        "Gelu",
        "Elu",
        "Selu",
        "Softplus",
        "Softsign",
        "LeakyRelu",
        "Clip",
        "Cast",
        "Round",
        "Floor",
        "Ceil",
        "Sign",
        "Reciprocal",
        "Sin",
        "Cos",
    }
)

_CHANNEL_MIXING_ACTIVATIONS = frozenset({"softmax", "log_softmax"})


class FilterPruningError(ValueError):
    """A model, layer or argument that filter pruning cannot handle (the message
    names the layer and the way out)."""


def _refuse(layer, why: str) -> FilterPruningError:
    name = getattr(layer, "name", type(layer).__name__)
    return FilterPruningError(
        f"Filter pruning cannot follow the channels through '{name}' "
        f"({type(layer).__name__}): {why} Add '{name}' to `skip` to keep its input "
        "and output channels whole, or prune a model without it."
    )


def is_producer(layer) -> bool:
    """Conv1D/2D/3D (not transposed, depthwise or separable) and Dense: the
    layers whose output channels filter pruning removes."""
    return isinstance(layer, (layers.Conv1D, layers.Conv2D, layers.Conv3D, layers.Dense))


@dataclasses.dataclass
class ChannelGroup:
    """Producers whose output channels are removed together.

    Attributes:
        producers: names of the Conv/Dense layers in the group.
        classes: the union-find roots (one per coupled channel), in the
            order of first appearance.
        fixed: one bool per class, True where the channel must be kept.
    """

    producers: list[str]
    classes: list[int]
    fixed: list[bool]

    @property
    def width(self) -> int:
        return len(self.classes)


class ChannelGraph:
    """The channel ids of a Functional model's layers and their groups.

    Attributes (each keyed by layer name, values are integer id arrays):
        producer_ids: output channel ids of each Conv/Dense.
        consumer_ids: input feature ids of each Conv/Dense kernel.
        follower_ids: channel ids of each BatchNormalization / depthwise conv.
        reshape_ids: channel ids of each Reshape that keeps the channel axis.
        layers: the model's layers by name.

    Example:

    ```python
    graph = ChannelGraph(keras.applications.MobileNetV2(
        alpha=0.35, weights=None, input_shape=(32, 32, 3)))
    for group in graph.groups():
        print(group.producers, group.width)
    ```
    """

    def __init__(self, model, skip=()):
        if not isinstance(model, Functional):
            raise FilterPruningError(
                f"Filter pruning rebuilds a Functional or Sequential model from its graph; "
                f"'{model.name}' is a subclassed {type(model).__name__}. Build it with the "
                "Functional API (keras.Model(inputs, outputs))."
            )
        self.model = model
        self.layers = {layer.name: layer for layer in model.layers}
        self.skip = set(skip or ())
        unknown = self.skip - set(self.layers)
        if unknown:
            raise FilterPruningError(
                f"`skip` names {sorted(unknown)}, which are not layers of '{model.name}'. "
                f"Layer names: {sorted(self.layers)}."
            )
        self._parent: list[int] = []
        self._fixed: set[int] = set()
        self.producer_ids: dict[str, np.ndarray] = {}
        self.consumer_ids: dict[str, np.ndarray] = {}
        self.follower_ids: dict[str, np.ndarray] = {}
        self.reshape_ids: dict[str, np.ndarray] = {}
        self._tensor_ids: dict[int, np.ndarray] = {}
        self._walk()

    # ---- union-find over channel ids ------------------------------------
    def _fresh(self, n: int, fixed: bool = False) -> np.ndarray:
        start = len(self._parent)
        self._parent.extend(range(start, start + n))
        ids = np.arange(start, start + n)
        if fixed:
            self._fixed.update(ids.tolist())
        return ids

    @property
    def num_ids(self) -> int:
        """How many channel ids the graph has handed out."""
        return len(self._parent)

    def find(self, i: int) -> int:
        parent = self._parent
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:  # path compression
            parent[i], i = root, parent[i]
        return root

    def _union(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(a.tolist(), b.tolist()):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self._parent[ry] = rx

    def roots(self, ids: np.ndarray) -> np.ndarray:
        return np.array([self.find(int(i)) for i in ids], dtype=np.int64)

    def fixed_roots(self) -> set[int]:
        return {self.find(i) for i in self._fixed}

    # ---- the walk ---------------------------------------------------------
    def _ids(self, tensor) -> np.ndarray:
        return self._tensor_ids[id(tensor)]

    def _set(self, tensor, ids: np.ndarray) -> None:
        self._tensor_ids[id(tensor)] = ids

    def _walk(self) -> None:
        model = self.model
        for tensor in model.inputs:
            self._set(tensor, self._fresh(_channels(tensor, model), fixed=True))
        seen: set[str] = set()
        for depth in sorted(model._nodes_by_depth, reverse=True):
            for node in model._nodes_by_depth[depth]:
                op = node.operation
                if isinstance(op, layers.InputLayer):
                    continue
                if isinstance(op, keras.layers.Layer):
                    if op.name in seen and (is_producer(op) or op.weights):
                        raise _refuse(op, "the layer is called more than once (shared weights).")
                    seen.add(op.name)
                self._visit(node, op)
        for tensor in model.outputs:
            self._fixed.update(self._ids(tensor).tolist())

    def _barrier(self, node) -> None:
        for tensor in node.input_tensors:
            self._fixed.update(self._ids(tensor).tolist())
        for tensor in node.output_tensors:
            self._set(tensor, self._fresh(_channels(tensor, node.operation), fixed=True))

    def _visit(self, node, op) -> None:
        ins, outs = node.input_tensors, node.output_tensors
        if isinstance(op, keras.Model):
            raise _refuse(op, "nested models are not followed; build one flat Functional model.")
        if isinstance(op, keras.layers.Layer) and op.name in self.skip:
            if is_producer(op):
                self.consumer_ids[op.name] = self._ids(ins[0])
                self.producer_ids[op.name] = self._fresh(_channels(outs[0], op), fixed=True)
                self._set(outs[0], self.producer_ids[op.name])
            else:
                self._barrier(node)
            return
        if is_producer(op):
            if getattr(op, "data_format", "channels_last") != "channels_last":
                raise _refuse(op, "only channels_last convolutions are supported.")
            if getattr(op, "groups", 1) != 1:
                raise _refuse(op, f"grouped convolution (groups={op.groups}).")
            if getattr(op, "lora_enabled", False) or getattr(op, "quantization_mode", None):
                raise _refuse(op, "LoRA / quantized kernels are not sliced.")
            self.consumer_ids[op.name] = self._ids(ins[0])
            ids = self._fresh(_channels(outs[0], op))
            self.producer_ids[op.name] = ids
            self._set(outs[0], ids)
            return
        if isinstance(op, layers.BatchNormalization):
            rank = len(ins[0].shape)
            if op.axis % rank != rank - 1:
                raise _refuse(op, f"BatchNormalization over axis {op.axis}, not the channels.")
            self.follower_ids[op.name] = self._ids(ins[0])
            self._set(outs[0], self._ids(ins[0]))
            return
        if isinstance(op, (layers.DepthwiseConv1D, layers.DepthwiseConv2D)):
            if op.data_format != "channels_last":
                raise _refuse(op, "only channels_last convolutions are supported.")
            if op.depth_multiplier != 1:
                raise _refuse(op, f"depth_multiplier={op.depth_multiplier} (only 1 is followed).")
            self.follower_ids[op.name] = self._ids(ins[0])
            self._set(outs[0], self._ids(ins[0]))
            return
        if isinstance(op, BARRIER_LAYERS):
            self._barrier(node)
            return
        if isinstance(op, layers.Activation):
            if getattr(op.activation, "__name__", "") in _CHANNEL_MIXING_ACTIVATIONS:
                self._barrier(node)
            else:
                self._set(outs[0], self._ids(ins[0]))
            return
        if isinstance(op, layers.Rescaling):
            if np.size(op.scale) == 1 and np.size(op.offset) == 1:
                self._set(outs[0], self._ids(ins[0]))
            else:
                self._barrier(node)
            return
        if isinstance(op, PASS_THROUGH_LAYERS):
            if getattr(op, "data_format", "channels_last") != "channels_last":
                raise _refuse(op, "only channels_last layers are supported.")
            self._set(outs[0], self._ids(ins[0]))
            return
        if isinstance(op, layers.Flatten):
            shape = ins[0].shape
            if any(d is None for d in shape[1:]):
                raise _refuse(op, "the input's spatial size must be known.")
            positions = math.prod(shape[1:-1]) if len(shape) > 2 else 1
            # channels_last: the flattened index is position * C + channel.
            self._set(outs[0], np.tile(self._ids(ins[0]), positions))
            return
        if isinstance(op, layers.Reshape):
            if ins[0].shape[-1] == outs[0].shape[-1] and op.target_shape[-1] != -1:
                # Spatial reshape (e.g. squeeze-excite's (C,) -> (1, 1, C)):
                # the channel count in target_shape follows the pruning.
                self.reshape_ids[op.name] = self._ids(ins[0])
                self._set(outs[0], self._ids(ins[0]))
            else:
                self._barrier(node)
            return
        if isinstance(op, layers.Concatenate):
            rank = len(outs[0].shape)
            if op.axis % rank == rank - 1:
                self._set(outs[0], np.concatenate([self._ids(t) for t in ins]))
            else:
                self._merge(node)
            return
        if isinstance(op, MERGE_LAYERS):
            self._merge(node)
            return
        if not isinstance(op, keras.layers.Layer) and type(op).__module__.startswith("keras"):
            name = type(op).__name__
            if name in ELEMENTWISE_UNARY_OPS and len(ins) == 1:
                self._set(outs[0], self._ids(ins[0]))
                return
            if name in ELEMENTWISE_BINARY_OPS:
                constants = [a for a in node.arguments.args if not isinstance(a, keras.KerasTensor)]
                if any(np.size(c) != 1 for c in constants):
                    raise _refuse(op, "an elementwise op with a non-scalar constant operand.")
                if len(ins) == 1:
                    self._set(outs[0], self._ids(ins[0]))
                else:
                    self._merge(node)
                return
        raise _refuse(op, "this layer type is not supported by filter pruning.")

    def _merge(self, node) -> None:
        """Elementwise op of several tensors: channel i of each is one channel."""
        ins = node.input_tensors
        ids = [self._ids(t) for t in ins]
        width = max(len(i) for i in ids)
        full = [i for i in ids if len(i) == width]
        for other in ids:
            if len(other) == width:
                self._union(full[0], other)
            elif len(other) == 1:
                # Broadcast along channels: that operand's one channel stays.
                self._fixed.update(other.tolist())
            else:
                raise _refuse(node.operation, f"operands with {len(other)} and {width} channels.")
        self._set(node.output_tensors[0], full[0])

    # ---- groups -----------------------------------------------------------
    def groups(self) -> list[ChannelGroup]:
        """The channel groups, one per set of coupled producers, in graph order."""
        fixed = self.fixed_roots()
        owner: dict[int, int] = {}  # root -> group index
        groups: list[ChannelGroup] = []
        for name, ids in self.producer_ids.items():
            roots = self.roots(ids)
            hit = {owner[r] for r in roots.tolist() if r in owner}
            if not hit:
                groups.append(ChannelGroup([], [], []))
                target = len(groups) - 1
            else:
                target = min(hit)
                for other in sorted(hit - {target}, reverse=True):
                    # A producer bridging two groups joins them.
                    merged = groups[other]
                    groups[target].producers += merged.producers
                    for r in merged.classes:
                        owner[r] = target
                    groups[target].classes += merged.classes
                    groups[target].fixed += merged.fixed
                    groups[other] = None
            group = groups[target]
            group.producers.append(name)
            for r in roots.tolist():
                if r not in owner:
                    owner[r] = target
                    group.classes.append(r)
                    group.fixed.append(r in fixed)
        return [g for g in groups if g is not None]


def _channels(tensor, where) -> int:
    channels = tensor.shape[-1] if len(tensor.shape) else None
    if channels is None:
        raise FilterPruningError(
            f"The channel axis of the tensor at '{getattr(where, 'name', where)}' has "
            "an unknown size; build the model on a keras.Input with a known channel count."
        )
    return int(channels)
