"""Quantization-aware training (int8) for Keras 3 Sequential / Functional models.

`quantize_model(model)` returns a new Functional model that trains with
fake-quantized weights and activations and converts, through
`kd_keras.quantization.convert(model, mode="qat")`, into a fully int8
`.tflite` whose arithmetic is the one the Keras model simulated.

How the graph is rewritten (TFMOT's default 8-bit scheme, same TFLite graph):

* `Conv1D` / `Conv2D` / `Conv3D` / `DepthwiseConv1D/2D` get a per-channel
  symmetric int8 weight quantizer (`Dense`, `EinsumDense` and
  `Conv2DTranspose` a per-tensor one, as in TFMOT) and an activation
  quantizer on their output; `Embedding` an int8 table (`rules`).
* A `BatchNormalization` that directly follows such a layer (and nothing
  else reads the layer's output) is **folded** into it: the layer becomes a
  `FoldedBatchNormWrapper` that, in training, normalizes with the batch
  statistics as the float BN does (the kernel quantized on the grid of the
  inference fold, output rescaled by sigma_B / sigma) and updates the BN's
  moving statistics, and after `freeze_bn_delay` training steps, and in
  inference, runs the inference fold `kernel * gamma / sigma`, bias
  `beta + (bias - mean) * gamma / sigma`: exactly what TFLite executes. The
  BN layer is replaced by an `Identity` with the same name. With
  `freeze_bn_delay=0` the BN is folded once, with its moving statistics,
  into a plain `QuantizeWrapper` when `quantize_model` is called. (TFMOT
  keeps BN and folds at conversion; the int8 graph is the same.)
* Any other channels-last `BatchNormalization` (pre-activation, after a pool
  or a concatenation), and `Rescaling` / `Normalization`, run as
  `x * scale + offset` from their inference constants: an int8 MUL then ADD,
  each with its own range (such a BN is frozen to its moving statistics).
* A `ReLU` / `ReLU(max_value=6)` / `Activation("relu"|"relu6")` that directly
  follows is **fused** into the layer (TFLite fuses it into the conv kernel)
  and replaced by an `Identity` with the same name, so `get_layer("block1")`
  still returns the block's (quantized) output.
* Pooling / add / concatenate / standalone activations (also hard_swish,
  sigmoid, swish, GELU, softmax, tanh: TFLite has int8 kernels) get an
  output quantizer; max pooling, flatten, reshape, dropout and padding pass their
  input's range through (TFLite requires that anyway).
* Nested Functional / Sequential models (a backbone inside a task model) are
  inlined first (`graph.inline_nested_models`), so their layers are folded
  and quantized like the outer ones; one named in `skip_layers` stays whole,
  in float. `SeparableConv1D` / `SeparableConv2D`, InceptionResNetV2's
  `CustomScaleLayer` and `MultiHeadAttention` are then split into the
  layers and ops TFLite runs them as (`decompose.decompose_layers`), and
  so is hard-swish (`split_hard_swish`): as `relu6(x + 3) * x / 6`, int8
  ops XNNPACK runs, where it does not run the int8 `HARD_SWISH`.
* `LayerNormalization` is a float island: it runs in float between its
  input's range and an output range of its own (`rules.FLOAT_ISLAND_LAYERS`).
* Raw `keras.ops` nodes (`x + 3.0`, `x * (1 / 6)`, `ops.relu6`, slicing)
  inside the quantized part run on int8 tensors: reshapes and slices carry
  their input's range, the others get their inputs and output quantized.
* Every tensor entering a quantized layer from a float one (the model inputs,
  a skipped layer) gets one `QuantizeLayer`, named after that tensor's
  producer and unique in the graph.
* A layer annotated with `quantize_annotate_layer(layer, quantize_config)`
  is wrapped in a `QuantizeWrapper` that quantizes the weights, activations
  and outputs its `QuantizeConfig` names (a user layer with no rule here).
* A kernel with exact zeros (a pruned model, after `strip_pruning`) gets a
  non-trainable mask so those weights stay zero through QAT; symmetric int8
  maps 0.0 to 0.0, so they stay zero in the `.tflite` too.
"""

from __future__ import annotations

import warnings
from typing import Iterable, Sequence

import keras
import numpy as np
from keras import ops

from kd_keras.quantization import _kernels, graph, tfmot_bridge
from kd_keras.quantization.batch_norm_folding import (
    absorbed_names,
    clone_kernel_layer,
    clone_layer,
    plan_fusions,
    rewrite,
)
from kd_keras.quantization.decompose import decompose_layers
from kd_keras.quantization.folded_batch_norm_wrapper import (
    FoldedBatchNormWrapper,
    check_freeze_bn_delay,
)
from kd_keras.quantization.quantize_annotate import (
    is_annotated,
    quantize_annotate_layer,
    quantize_config_of,
)
from kd_keras.quantization.quantize_layer import QuantizeLayer
from kd_keras.quantization.quantize_wrapper import QuantizeWrapper
from kd_keras.quantization.quantizers import (
    MovingAverageQuantizer,
    PerChannelSymmetricQuantizer,
)
from kd_keras.quantization.rules import (
    affine_constants,
    builtin_quantize_config,
    is_affine_layer,
    layer_kind,
)

#: Training steps with batch statistics before a folded BatchNormalization
#: freezes to its moving statistics. Freezing must wait until the moving
#: statistics describe the QAT weights: with the momentum keras.applications
#: use (0.999) they keep 0.999**5000 < 1 % of what they held when QAT started
#: after 5,000 steps (with Keras's default 0.99, after 500). A QAT run shorter
#: than that never freezes, and still converts with up-to-date statistics.
DEFAULT_FREEZE_BN_DELAY = 5000

__all__ = ["is_quantized", "quantize_annotate_layer", "quantize_model", "quantizer_layers"]


def _unsupported_message(layers, skip_hint) -> str:
    lines = []
    for layer in layers:
        why = _kernels.kernel_layer_problem(layer) if _kernels.is_kernel_layer(layer) else None
        reason = why or "has no int8 quantization rule"
        if type(layer) is keras.layers.BatchNormalization:
            reason = (
                "normalizes an axis other than the last (channels_first), so it can "
                "neither be folded nor run as an int8 MUL/ADD"
            )
        if "Prune" in type(layer).__name__:
            reason += "; call strip_pruning(model) before quantize_model"
        if isinstance(layer, keras.Model):
            reason += (
                "; it is a subclassed model, whose graph cannot be read: rebuild it "
                "with the Functional API to have it inlined and quantized"
            )
        lines.append(f"  - {layer.name!r} ({type(layer).__name__}) {reason}")
    names = sorted(set(skip_hint) | {layer.name for layer in layers})
    return (
        "quantize_model cannot quantize these layers:\n" + "\n".join(lines) +
        f"\nKeep them in float with quantize_model(model, skip_layers={names!r}) "
        "(TFLite then runs them in float between dequantize/quantize ops), or say how "
        "to quantize a layer of your own with quantize_annotate_layer(layer, "
        "quantize_config=YourQuantizeConfig())."
    )


def _skip_predicate(model, skip_layers) -> callable:
    names, classes = set(), []
    for item in skip_layers or ():
        if isinstance(item, str):
            names.add(item)
        elif isinstance(item, type) and issubclass(item, keras.layers.Layer):
            classes.append(item)
        else:
            raise TypeError(
                f"skip_layers takes layer names or Layer classes, got {item!r}."
            )
    known = [op.name for op in model.operations]
    unknown = names - set(known)
    if unknown:
        raise ValueError(
            f"skip_layers names layers that are not in {model.name!r}: {sorted(unknown)}. "
            f"Its layers and operations are: {known}."
        )
    # Only plain annotations ask for partial quantization: a QuantizeConfig
    # says how to quantize a layer, the rest of the model is quantized as usual.
    annotated = any(
        is_annotated(layer) and quantize_config_of(layer) is None
        for layer in model.layers
    )

    def skipped(layer):
        if layer.name in names or isinstance(layer, tuple(classes)):
            return True
        if annotated and layer_kind(layer) != "pass":
            return not is_annotated(layer)
        return False

    return skipped


def quantize_model(
    model: keras.Model,
    skip_layers: Iterable[str | type] | None = None,
    ema_decay: float = 0.999,
    freeze_bn_delay: int | None = DEFAULT_FREEZE_BN_DELAY,
    split_hard_swish: bool = True,
) -> keras.Model:
    """Return a quantization-aware (int8) copy of a Sequential/Functional model.

    The copy starts from `model`'s trained weights (BNs folded, ReLUs fused,
    see the module docstring), trains with `compile` / `fit` like any model,
    also as the student of `kd_keras.Distiller` (distillation-aware QAT), saves
    to `.keras`, and converts with `convert(qat_model, mode="qat")` into a
    fully int8 `.tflite`.

    Args:
        model: a built Sequential or Functional model (strip pruning and
            clustering wrappers first).
        skip_layers: names or classes of layers to keep in float. When some
            layers are marked with `quantize_annotate_layer`, only those are
            quantized.
        ema_decay: decay of the moving-average activation ranges.
        freeze_bn_delay: training steps during which a folded
            BatchNormalization uses batch statistics (and updates its moving
            statistics) like the float model, before it freezes to its
            moving statistics, the fold TFLite runs. Default 5,000: enough
            for BN momenta up to 0.999 to forget the statistics of the model
            before QAT. `None` never freezes; `0` folds the moving statistics
            in once, when `quantize_model` is called.
        split_hard_swish: write each `Activation("hard_silu")` (MobileNetV3's
            hard-swish) as `relu6(x + 3) * x / 6`, int8 `ADD` / `MUL` / `MUL`
            ops, each with its own range. XNNPACK, LiteRT's CPU delegate, runs
            those in int8 but not the single int8 `HARD_SWISH` op, which then
            runs on LiteRT's slower builtin kernel between delegate
            partitions (an int8 MobileNetV3Small is 4x slower than float
            with it, at 224x224 on x86). `False` keeps `HARD_SWISH`, for
            runtimes that accelerate it.

    Returns:
        A new Functional model; layer names are kept.

    Raises:
        ValueError: naming every layer without an int8 rule, with the
            `skip_layers=[...]` call that keeps them in float.

    A tf_keras model is handed to TFMOT's own `quantize_model` (with a
    `TFMOTBridgeNotice` warning saying so); `skip_layers` does not apply there.

    Example:

    ```python
    x = np.random.rand(64, 8).astype("float32")
    y = np.random.randint(0, 3, size=64)
    student = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)]
    )

    qat = quantize_model(student)
    qat.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qat.fit(x, y, epochs=2, verbose=0)
    tflite_bytes = convert(qat, mode="qat", int8_io=True)
    ```
    """
    freeze_bn_delay = check_freeze_bn_delay(freeze_bn_delay)
    if tfmot_bridge.is_tf_keras_model(model):
        if skip_layers:
            raise ValueError(
                "skip_layers is a kd_keras option; for a tf_keras model use TFMOT's "
                "quantize_annotate_layer / quantize_apply directly."
            )
        return tfmot_bridge.tfmot_quantize_model(model)
    model = graph.as_functional(model, "quantize_model")
    skipped = _skip_predicate(model, skip_layers)
    # A nested model named in skip_layers stays whole, in float; every other
    # nested model is inlined so its layers are folded and quantized too.
    keep_whole = frozenset(item for item in skip_layers or () if isinstance(item, str))
    model = graph.inline_nested_models(model, keep=keep_whole)
    # Composite layers (separable convolutions, scale-and-add layers,
    # MultiHeadAttention) are split into the pieces TFLite runs, each
    # quantized by its own rule; skipped or QuantizeConfig layers stay whole.
    model = decompose_layers(model, keep=skip_layers or (), split_hard_swish=split_hard_swish)
    skipped = _skip_predicate(model, skip_layers)
    # A layer with a QuantizeConfig neither absorbs nor is absorbed.
    keep = lambda layer: not skipped(layer) and quantize_config_of(layer) is None  # noqa: E731
    plan = plan_fusions(model, fold_batch_norm=True, fuse_activation=True, keep=keep)
    absorbed = absorbed_names(plan)
    unsupported = [
        layer
        for layer in model.layers
        if not skipped(layer) and layer.name not in absorbed and layer_kind(layer) == "unsupported"
    ]
    if unsupported:
        skipped_names = [layer.name for layer in model.layers if skipped(layer)]
        raise ValueError(_unsupported_message(unsupported, skipped_names))

    def make_layer(layer):
        kind = "skip" if skipped(layer) else layer_kind(layer)
        if kind == "config":
            config = quantize_config_of(layer) or builtin_quantize_config(layer)
            return QuantizeWrapper(clone_layer(layer), quantize_config=config, name=layer.name)
        if kind == "kernel":
            kernel = ops.convert_to_numpy(layer.kernel)
            fusion = plan.get(layer.name)
            quantizers = {
                "weight_quantizer": PerChannelSymmetricQuantizer(
                    axis=_kernels.weight_quantization_axis(layer)
                ),
                "output_quantizer": MovingAverageQuantizer(ema_decay=ema_decay),
                "preserve_sparsity": bool(np.any(kernel == 0)),
                "name": layer.name,
            }
            batch_norm = fusion.batch_norm if fusion is not None else None
            if batch_norm is not None and _trains_batch_statistics(batch_norm, freeze_bn_delay):
                return FoldedBatchNormWrapper(
                    clone_kernel_layer(layer, fusion, fold_bias=False),
                    clone_layer(batch_norm),
                    freeze_bn_delay=freeze_bn_delay,
                    **quantizers,
                )
            return QuantizeWrapper(clone_kernel_layer(layer, fusion), **quantizers)
        if kind == "output":
            return QuantizeWrapper(
                clone_layer(layer),
                output_quantizer=MovingAverageQuantizer(ema_decay=ema_decay),
                name=layer.name,
            )
        return clone_layer(layer)

    quantized = set()  # ids of tensors that carry an int8 range
    input_quantizers = {}
    # Quantizer layers are named after the tensor they quantize, made unique
    # against every name in the graph (a tensor read by two consumers gets
    # one quantizer; one consumer of two float tensors gets two).
    used_names = {op.name for op in model.operations}

    def unique_name(base):
        name, i = base, 1
        while name in used_names:
            name, i = f"{base}_{i}", i + 1
        used_names.add(name)
        return name

    def producer_name(tensor):
        history = getattr(tensor, "_keras_history", None)
        return history.operation.name if history else "input"

    def is_float(tensor):
        return "float" in keras.backend.standardize_dtype(tensor.dtype)

    def ensure_quantized(tensor):
        if not isinstance(tensor, keras.KerasTensor) or id(tensor) in quantized:
            return tensor
        if not is_float(tensor):
            return tensor  # token ids, masks: not activations
        if id(tensor) not in input_quantizers:
            layer = QuantizeLayer(
                MovingAverageQuantizer(ema_decay=ema_decay),
                name=unique_name(f"{producer_name(tensor)}_quantize"),
            )
            input_quantizers[id(tensor)] = layer(tensor)
            quantized.add(id(input_quantizers[id(tensor)]))
        return input_quantizers[id(tensor)]

    def quantize_output(tensor, operation):
        if not isinstance(tensor, keras.KerasTensor) or not is_float(tensor):
            return tensor
        layer = QuantizeLayer(
            MovingAverageQuantizer(ema_decay=ema_decay),
            name=unique_name(f"{operation.name}_quantize_output"),
        )
        output = layer(tensor)
        quantized.add(id(output))
        return output

    def call_raw_op(new, old, flat_inputs, args, kwargs):
        """A raw `keras.ops` node inside the quantized part runs on int8
        tensors: range-preserving ops carry their input's range, the others
        get their inputs quantized and their own output range."""
        in_int8 = [t for t in flat_inputs if id(t) in quantized]
        if skipped(old) or not in_int8:
            return new(*args, **kwargs)  # a float region stays float
        if graph.raw_op_carries_range(old) and len(in_int8) == len(flat_inputs):
            outputs = new(*args, **kwargs)
            quantized.update(id(t) for t in keras.tree.flatten(outputs))
            return outputs
        args, kwargs = keras.tree.map_structure(ensure_quantized, (args, kwargs))
        outputs = new(*args, **kwargs)
        return keras.tree.map_structure(lambda t: quantize_output(t, old), outputs)

    def named_op(tensor, base):
        # A raw op is auto-named ("add", "multiply") from a per-session
        # counter, which can repeat a layer name of a model built in another
        # session (loaded from a .keras file): name it after its layer.
        tensor._keras_history.operation.name = unique_name(base)
        return tensor

    def call_affine(old, inputs):
        """`Rescaling` / `Normalization` / a BatchNormalization that folds into
        no kernel, as `x * scale + offset`: an int8 MUL then ADD, each with its
        own output range (one layer would leave the product between them in
        float). A BatchNormalization is frozen to its moving statistics."""
        dtype = keras.backend.standardize_dtype(inputs.dtype)
        scale, offset = affine_constants(old)
        scale, offset = scale.astype(dtype), offset.astype(dtype)
        x = ensure_quantized(inputs)
        if np.any(scale != 1):
            x = QuantizeLayer(
                MovingAverageQuantizer(ema_decay=ema_decay),
                name=unique_name(f"{old.name}_scale_quantize"),
            )(named_op(ops.multiply(x, scale), f"{old.name}_scale"))
        if np.any(offset != 0):
            x = QuantizeLayer(
                MovingAverageQuantizer(ema_decay=ema_decay),
                name=unique_name(f"{old.name}_offset_quantize"),
            )(named_op(ops.add(x, offset), f"{old.name}_offset"))
        quantized.add(id(x))
        return x

    def call_layer(new, old, *args, **kwargs):
        flat_inputs = [
            t for t in keras.tree.flatten((args, kwargs)) if isinstance(t, keras.KerasTensor)
        ]
        if graph.is_raw_op(old):
            return call_raw_op(new, old, flat_inputs, args, kwargs)
        if (
            is_affine_layer(old)
            and not skipped(old)
            and old.name not in absorbed
            and len(flat_inputs) == 1
        ):
            return call_affine(old, flat_inputs[0])
        if layer_kind(old) == "island" and not skipped(old):
            # Runs in float (TFLite dequantizes its int8 input); its output
            # re-enters the int8 part through its own range.
            return quantize_output(new(*args, **kwargs), old)
        if isinstance(new, QuantizeWrapper):
            args = keras.tree.map_structure(ensure_quantized, args)
            carries_range = True  # unless a QuantizeConfig leaves outputs float, below
        else:
            carries_range = (
                not skipped(old)
                and (layer_kind(old) == "pass" or old.name in absorbed)
                and all(id(t) in quantized for t in flat_inputs)
            )
        outputs = new(*args, **kwargs)
        if isinstance(new, QuantizeWrapper):
            # Known once built. An embedding lookup's rows keep the int8
            # table's range: a range of their own would make TFLite
            # requantize the whole table before each GATHER.
            carries_range = new.quantizes_output or getattr(
                new.quantize_config, "output_keeps_weight_range", False
            )
        if carries_range:
            quantized.update(id(t) for t in keras.tree.flatten(outputs))
        return outputs

    new_model, _ = rewrite(model, plan, make_layer, call_layer)
    return _in_float32(new_model)


def _trains_batch_statistics(batch_norm, freeze_bn_delay) -> bool:
    """Whether a folded BN keeps training with batch statistics in QAT: not
    when it is frozen from the start (`freeze_bn_delay=0`, or a BN that is
    not trainable, which Keras runs with its moving statistics) nor with
    batch renormalization, whose corrections the fold does not model."""
    return freeze_bn_delay != 0 and batch_norm.trainable and not batch_norm.renorm


def _in_float32(model: keras.Model) -> keras.Model:
    """A mixed precision QAT copy is switched to float32 compute: bfloat16 and
    float16 cannot hold every int8 grid value times its scale, so pooling or
    a matmul in them would step off the grid the int8 file computes on."""
    layers = list(model._flatten_layers(include_self=True, recursive=True))
    mixed = [layer for layer in layers if layer.compute_dtype != layer.variable_dtype]
    if mixed:
        warnings.warn(
            f"quantize_model: {len(mixed)} layers use a mixed precision policy "
            f"({mixed[0].dtype_policy.name}); the QAT copy computes in float32 so that its "
            "fake quantization matches the int8 model exactly.",
            stacklevel=3,
        )
        for layer in mixed:
            layer.dtype_policy = "float32"
    return model


def is_quantized(model: keras.Model) -> bool:
    """True when `model` contains kd_keras fake-quantization layers."""
    return any(
        isinstance(layer, (QuantizeWrapper, QuantizeLayer))
        for layer in model._flatten_layers(include_self=False, recursive=True)
    )


def quantizer_layers(model: keras.Model) -> Sequence[keras.layers.Layer]:
    """The `QuantizeWrapper` / `QuantizeLayer` layers of `model`, in order."""
    return [
        layer
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, (QuantizeWrapper, QuantizeLayer))
    ]
