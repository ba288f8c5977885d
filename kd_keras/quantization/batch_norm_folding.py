"""Folding BatchNormalization (and fusing ReLU) into the kernel layer before it.

`plan_fusions` reads a Functional graph and decides, for each `Dense` /
`Conv*D` / `DepthwiseConv2D`, which `BatchNormalization` and ReLU it absorbs
(the one layer that reads its output, then the one after). `rewrite` clones
the graph with absorbed layers replaced by `Identity` layers of the same
name and copies the trained weights, folding each BN into its kernel and
bias with `folded_weights`, or, for a `FoldedBatchNormWrapper` (a BN that
QAT trains with batch statistics), handing the BN's variables to it.
`quantize_model` and `fold_batch_norms` are both this rewrite, with
different replacement layers.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import keras
import numpy as np
from keras import ops

from kd_keras.quantization import _kernels, graph
from kd_keras.quantization.folded_batch_norm_wrapper import FoldedBatchNormWrapper
from kd_keras.quantization.quantize_wrapper import QuantizeWrapper
from kd_keras.quantization.rules import fusable_activation, normalizes_last_axis


@dataclass
class Fusion:
    """What one kernel layer absorbs: a BatchNormalization, a ReLU."""

    batch_norm: keras.layers.Layer | None = None
    activation: str | None = None  # "relu" / "relu6" fused into the kernel layer
    absorbed_activation: keras.layers.Layer | None = None


class _Graph:
    """Consumers of each layer inside one Functional model."""

    def __init__(self, model):
        self.node_ids = {id(n) for nodes in model._nodes_by_depth.values() for n in nodes}
        self.output_ids = {id(t) for t in model.outputs}

    def nodes(self, layer):
        return [n for n in layer._inbound_nodes if id(n) in self.node_ids]

    def sole_consumer(self, layer):
        """The only layer reading `layer`'s (single) output, else `None`."""
        nodes = self.nodes(layer)
        if len(nodes) != 1 or any(id(t) in self.output_ids for t in nodes[0].outputs):
            return None
        consumers = [n for n in layer._outbound_nodes if id(n) in self.node_ids]
        if len(consumers) != 1 or len(self.nodes(consumers[0].operation)) != 1:
            return None
        return consumers[0].operation


def _folds_into(layer, bn) -> bool:
    if type(bn) is not keras.layers.BatchNormalization or not _kernels.folds_batch_norm(layer):
        return False
    return normalizes_last_axis(bn, len(layer.output.shape))


def plan_fusions(model, fold_batch_norm: bool, fuse_activation: bool, keep) -> dict:
    """`{kernel layer name: Fusion}` for kernel layers with something to absorb."""
    consumers = _Graph(model)
    plan = {}
    for layer in model.layers:
        if not (_kernels.is_kernel_layer(layer) and keep(layer)):
            continue
        if _kernels.kernel_layer_problem(layer):
            continue
        if _kernels.activation_name(layer) != "linear":
            continue
        fusion, tail = Fusion(), layer
        nxt = consumers.sole_consumer(tail)
        if fold_batch_norm and nxt is not None and keep(nxt) and _folds_into(layer, nxt):
            fusion.batch_norm, tail = nxt, nxt
            nxt = consumers.sole_consumer(tail)
        if fuse_activation and nxt is not None and keep(nxt) and fusable_activation(nxt):
            fusion.activation = fusable_activation(nxt)
            fusion.absorbed_activation = nxt
        if fusion.batch_norm is not None or fusion.activation is not None:
            plan[layer.name] = fusion
    return plan


def absorbed_names(plan) -> set:
    """Names of the BN / activation layers that `plan` folds or fuses away."""
    names = set()
    for fusion in plan.values():
        if fusion.batch_norm is not None:
            names.add(fusion.batch_norm.name)
        if fusion.activation is not None:
            names.add(fusion.absorbed_activation.name)
    return names


def folded_weights(layer, batch_norm):
    """Kernel and bias of `layer` with `batch_norm` (inference mode) folded in."""
    kernel = np.asarray(ops.convert_to_numpy(layer.kernel), dtype="float64")
    bias = (
        np.asarray(ops.convert_to_numpy(layer.bias), dtype="float64")
        if _kernels.has_bias(layer)
        else np.zeros(kernel.shape[_kernels.channel_axis(layer)])
    )
    if batch_norm is None:
        return kernel, bias
    variance = ops.convert_to_numpy(batch_norm.moving_variance).astype("float64")
    mean = ops.convert_to_numpy(batch_norm.moving_mean).astype("float64")
    gamma = ops.convert_to_numpy(batch_norm.gamma).astype("float64") if batch_norm.scale else 1.0
    beta = ops.convert_to_numpy(batch_norm.beta).astype("float64") if batch_norm.center else 0.0
    scale = gamma / np.sqrt(variance + batch_norm.epsilon)
    scale_shape = (-1, 1) if _kernels.channel_axis(layer) == -2 else (-1,)
    return kernel * scale.reshape(scale_shape), beta + (bias - mean) * scale


def clone_kernel_layer(layer, fusion: Fusion | None, fold_bias: bool = True):
    """A fresh copy of the kernel layer `layer`, with the activation it
    absorbs and, when `fold_bias` and it absorbs a BN, a bias to fold into."""
    config = layer.get_config()
    if fold_bias and fusion is not None and fusion.batch_norm is not None:
        config["use_bias"] = True
    if fusion is not None and fusion.activation is not None:
        config["activation"] = fusion.activation
    return type(layer).from_config(config)


def clone_layer(layer):
    """A fresh, unbuilt copy of `layer` from its config."""
    return type(layer).from_config(layer.get_config())


def rewrite(model, plan, make_layer, call_layer):
    """Clone `model`, replacing absorbed layers by `Identity` and every other
    layer by `make_layer(layer)` (raw `keras.ops` nodes are re-created as
    they are); `call_layer(new, old, *args, **kwargs)` wires the new layers.
    Returns `(new_model, {id(old layer): new layer})`."""
    absorbed = absorbed_names(plan)
    made, originals = {}, {}

    def clone_function(operation):
        if id(operation) not in made:
            if graph.is_raw_op(operation):
                new = clone_layer(operation)
            elif operation.name in absorbed:
                new = keras.layers.Identity(name=operation.name)
            else:
                new = make_layer(operation)
            made[id(operation)] = new
            originals[id(new)] = operation
        return made[id(operation)]

    def call_function(new, *args, **kwargs):
        # Replacements (Identity, wrappers) may not take the original's `mask`.
        params = inspect.signature(new.call).parameters
        kwargs = {k: v for k, v in kwargs.items() if k in params or k == "training"}
        return call_layer(new, originals[id(new)], *args, **kwargs)

    new_model = keras.models.clone_model(
        model, clone_function=clone_function, call_function=call_function
    )
    # clone_model made fresh variables: copy the trained ones, folding BNs.
    for new_layer in made.values():
        old = originals[id(new_layer)]
        if graph.is_raw_op(old) or old.name in absorbed or not old.weights:
            continue
        target = new_layer.layer if isinstance(new_layer, QuantizeWrapper) else new_layer
        if not target.built:
            continue  # replaced by other operations (Rescaling / Normalization)
        if isinstance(new_layer, FoldedBatchNormWrapper):
            # Folded while it trains: the float kernel and the BN as they are.
            target.set_weights(old.get_weights())
            new_layer.batch_norm.set_weights(plan[old.name].batch_norm.get_weights())
            if new_layer.preserve_sparsity:
                kernel = ops.convert_to_numpy(old.kernel)
                new_layer.sparsity_mask.assign((kernel != 0).astype("float32"))
        elif _kernels.is_kernel_layer(old):
            fusion = plan.get(old.name)
            kernel, bias = folded_weights(old, fusion.batch_norm if fusion else None)
            target.kernel.assign(kernel.astype(target.kernel.dtype))
            if _kernels.has_bias(target):
                target.bias.assign(bias.astype(target.bias.dtype))
            if isinstance(new_layer, QuantizeWrapper) and new_layer.preserve_sparsity:
                new_layer.sparsity_mask.assign((kernel != 0).astype("float32"))
        else:
            target.set_weights(old.get_weights())
    return new_model, made


def fold_batch_norms(model: keras.Model) -> keras.Model:
    """A float copy of `model` with each BN folded into the layer before it.

    `conv -> BatchNormalization` becomes one conv with a bias whose kernel is
    `kernel * gamma / sqrt(var + eps)` and bias `beta + (bias - mean) * gamma
    / sqrt(var + eps)`; the BN is replaced by an `Identity` of the same name.
    In inference the result computes the same function as `model`.

    Example:

    ```python
    from kd_keras.models import cnn_student

    folded = fold_batch_norms(cnn_student())
    ```
    """
    model = graph.inline_nested_models(graph.as_functional(model, "fold_batch_norms"))
    plan = plan_fusions(model, fold_batch_norm=True, fuse_activation=False, keep=lambda _: True)

    def make_layer(layer):
        if _kernels.is_kernel_layer(layer):
            return clone_kernel_layer(layer, plan.get(layer.name))
        return clone_layer(layer)

    new_model, _ = rewrite(model, plan, make_layer, lambda new, old, *a, **k: new(*a, **k))
    return new_model

