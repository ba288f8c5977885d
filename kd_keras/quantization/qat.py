"""Quantization-aware training (int8) for Keras 3 Sequential / Functional models.

`quantize_model(model)` returns a new Functional model that trains with
fake-quantized weights and activations and converts, through
`kd_keras.quantization.convert(model, mode="qat")`, into a fully int8
`.tflite` whose arithmetic is the one the Keras model simulated.

How the graph is rewritten (TFMOT's default 8-bit scheme, same TFLite graph):

* `Conv1D` / `Conv2D` / `Conv3D` / `DepthwiseConv2D` get a per-channel
  symmetric int8 weight quantizer (`Dense` a per-tensor one, as in TFMOT)
  and an activation quantizer on their output.
* A `BatchNormalization` that directly follows such a layer (and nothing
  else reads the layer's output) is **folded** into its kernel and bias with
  the BN's moving statistics when `quantize_model` is called, so the QAT
  model trains the folded kernel, exactly what TFLite executes. The BN layer
  is replaced by an `Identity` with the same name. (TFMOT instead keeps BN
  and folds at conversion; folding up front gives the same int8 graph, and
  Keras and TFLite then agree bit for bit on the weights. It also means QAT
  fine-tunes with BN frozen, the usual recipe.)
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
  in float.
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

import inspect
import warnings
from dataclasses import dataclass
from typing import Iterable, Sequence

import keras
import numpy as np
from keras import ops

from kd_keras.quantization import _kernels, graph, tfmot_bridge
from kd_keras.quantization.quantize_config import (
    QuantizeConfig,
    checked_weights_and_quantizers,
)
from kd_keras.quantization.quantizers import (
    MovingAverageQuantizer,
    PerChannelSymmetricQuantizer,
    deserialize_quantizer,
)

FUSABLE_ACTIVATIONS = ("linear", "relu", "relu6")
#: Activations TFLite runs as int8 kernels (HARD_SWISH, LOGISTIC, TANH,
#: SOFTMAX, GELU, ELU, LEAKY_RELU, or int8 MUL / ADD / RELU6 for the ones Keras
#: writes as several ops); an `Activation` layer with one of them gets its
#: output quantized.
INT8_ACTIVATIONS = FUSABLE_ACTIVATIONS + (
    "hard_silu",
    "hard_swish",
    "hard_sigmoid",
    "sigmoid",
    "silu",
    "swish",
    "tanh",
    "softmax",
    "gelu",
    "elu",
    "leaky_relu",
)

_L = keras.layers
#: Layers that leave values unchanged or only move them: their output carries
#: the input's quantization range.
PASS_THROUGH_LAYERS = (
    _L.InputLayer,
    _L.MaxPooling1D,
    _L.MaxPooling2D,
    _L.MaxPooling3D,
    _L.GlobalMaxPooling1D,
    _L.GlobalMaxPooling2D,
    _L.GlobalMaxPooling3D,
    _L.Flatten,
    _L.Reshape,
    _L.Permute,
    _L.Dropout,
    _L.SpatialDropout1D,
    _L.SpatialDropout2D,
    _L.GaussianNoise,
    _L.GaussianDropout,
    _L.Identity,
    _L.ZeroPadding1D,
    _L.ZeroPadding2D,
    _L.Cropping1D,
    _L.Cropping2D,
    _L.UpSampling1D,
    _L.UpSampling2D,
)
#: Layers that compute new values without a kernel: their output is quantized.
OUTPUT_QUANTIZED_LAYERS = (
    _L.Add,
    _L.Subtract,
    _L.Multiply,
    _L.Average,
    _L.Maximum,
    _L.Minimum,
    _L.Concatenate,
    _L.AveragePooling1D,
    _L.AveragePooling2D,
    _L.GlobalAveragePooling1D,
    _L.GlobalAveragePooling2D,
    _L.ReLU,
    _L.LeakyReLU,
)
# A BatchNormalization is only supported folded into the layer before it: on
# its own it becomes float MUL/ADD with unquantized constants in TFLite.
_QUANTIZE_ANNOTATION = "_kd_keras_quantize"
_QUANTIZE_CONFIG = "_kd_keras_quantize_config"


def quantize_annotate_layer(
    layer: keras.layers.Layer, quantize_config: QuantizeConfig | None = None
) -> keras.layers.Layer:
    """Mark `layer` for quantization (TFMOT's partial-quantization API), or
    tell `quantize_model` how to quantize a layer it has no rule for.

    Without `quantize_config`: when any layer of a model is annotated,
    `quantize_model` quantizes only the annotated layers and keeps every
    other layer in float. With a `QuantizeConfig`, the layer is quantized as
    the config says (its weights, activations and outputs) and the rest of
    the model as usual. Returns the layer itself so it can wrap a layer at
    construction.

    Example:

    ```python
    inputs = keras.Input((8, 8, 1))
    x = quantize_annotate_layer(keras.layers.Conv2D(8, 3))(inputs)
    x = keras.layers.Conv2D(8, 3)(x)          # stays float
    qat = quantize_model(keras.Model(inputs, x))
    ```
    """
    if not isinstance(layer, keras.layers.Layer):
        raise TypeError(
            f"quantize_annotate_layer expects a keras Layer, got {type(layer).__name__}."
        )
    if quantize_config is not None and not isinstance(quantize_config, QuantizeConfig):
        raise TypeError(
            f"quantize_annotate_layer: quantize_config for layer {layer.name!r} must be a "
            f"kd_keras.quantization.QuantizeConfig, got {type(quantize_config).__name__}."
        )
    setattr(layer, _QUANTIZE_ANNOTATION, True)
    setattr(layer, _QUANTIZE_CONFIG, quantize_config)
    return layer


def quantize_config_of(layer: keras.layers.Layer) -> QuantizeConfig | None:
    """The `QuantizeConfig` `layer` was annotated with, else `None`."""
    return getattr(layer, _QUANTIZE_CONFIG, None)


@keras.saving.register_keras_serializable(package="kd_keras")
class QuantizeLayer(keras.layers.Layer):
    """Fake-quantizes a float tensor entering the quantized part of a model.

    In the `.tflite` this is where the float input becomes int8 (or where an
    int8 input is consumed directly with `int8_io=True`).

    Example:

    ```python
    inputs = keras.Input((8, 8, 1))
    x = QuantizeLayer(name="quantize_image")(inputs)
    ```
    """

    def __init__(self, quantizer=None, **kwargs):
        super().__init__(**kwargs)
        self.quantizer = deserialize_quantizer(quantizer) or MovingAverageQuantizer()
        self.supports_masking = True

    def build(self, input_shape):
        self._quantizer_vars = self.quantizer.build(input_shape, "range", self)

    def call(self, inputs, training=None):
        return self.quantizer(inputs, training=bool(training), weights=self._quantizer_vars)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config["quantizer"] = keras.saving.serialize_keras_object(self.quantizer)
        return config


@keras.saving.register_keras_serializable(package="kd_keras")
class QuantizeWrapper(keras.layers.Wrapper):
    """Runs `layer` with fake-quantized weights and/or output.

    For kernel layers (`Dense`, `Conv*D`, `DepthwiseConv2D`) the wrapper
    computes the layer's forward pass with `weight_quantizer(kernel * mask)`,
    applies the layer's activation (fused when it is linear / relu / relu6;
    otherwise the pre-activation is quantized too, as TFLite needs), then
    `output_quantizer`. For any other layer it calls the layer and quantizes
    its output. With a `quantize_config` it follows the config instead: the
    weights, activations and outputs it names are quantized with its
    quantizers (see `QuantizeConfig`).

    Args:
        layer: the float layer (its variables are the trained ones).
        weight_quantizer: a `Quantizer` for the kernel, or `None`.
        output_quantizer: a `Quantizer` for the output, or `None`.
        preserve_sparsity: keep a non-trainable 0/1 mask of the kernel's
            non-zero entries and multiply the kernel by it, so pruned weights
            stay exactly zero while training.
        quantize_config: a `QuantizeConfig` that decides instead of the
            built-in rule (then the three arguments above stay unset).

    Example:

    ```python
    q = QuantizeWrapper(
        keras.layers.Dense(10),
        weight_quantizer=PerChannelSymmetricQuantizer(),
        output_quantizer=MovingAverageQuantizer(),
    )
    ```
    """

    def __init__(
        self,
        layer,
        weight_quantizer=None,
        output_quantizer=None,
        preserve_sparsity: bool = False,
        quantize_config: QuantizeConfig | dict | None = None,
        **kwargs,
    ):
        super().__init__(layer, **kwargs)
        self.weight_quantizer = deserialize_quantizer(weight_quantizer)
        self.output_quantizer = deserialize_quantizer(output_quantizer)
        self.preserve_sparsity = bool(preserve_sparsity)
        if isinstance(quantize_config, dict):
            quantize_config = keras.saving.deserialize_keras_object(quantize_config)
        self.quantize_config = quantize_config
        if quantize_config is not None:
            if not isinstance(quantize_config, QuantizeConfig):
                raise TypeError(
                    f"QuantizeWrapper: quantize_config for layer {layer.name!r} must be a "
                    f"QuantizeConfig, got {type(quantize_config).__name__}."
                )
            if weight_quantizer is not None or output_quantizer is not None or preserve_sparsity:
                raise ValueError(
                    f"QuantizeWrapper: layer {layer.name!r} has a quantize_config, which "
                    f"decides its quantizers; leave weight_quantizer, output_quantizer and "
                    f"preserve_sparsity unset."
                )
            self._quantize_kernel = False
            return
        is_kernel = _kernels.is_kernel_layer(layer)
        if (self.weight_quantizer is not None or self.preserve_sparsity) and not is_kernel:
            raise ValueError(
                f"QuantizeWrapper: layer {layer.name!r} ({type(layer).__name__}) has no "
                f"kernel to quantize; pass weight_quantizer=None, preserve_sparsity=False."
            )
        self._quantize_kernel = self.weight_quantizer is not None
        self._fused = _kernels.activation_name(layer) in FUSABLE_ACTIVATIONS if is_kernel else True

    @property
    def quantizes_output(self) -> bool:
        """True when every output leaves the wrapper with an int8 range."""
        if self.quantize_config is None:
            return self.output_quantizer is not None
        return bool(self._config_outputs)

    def _build_from_config(self):
        config, layer = self.quantize_config, self.layer
        self._config_weights = [
            (weight, quantizer, quantizer.build(tuple(weight.shape), weight.name, self))
            for weight, quantizer in checked_weights_and_quantizers(config, layer)
        ]
        self._config_activations = [
            (activation, quantizer, quantizer.build(None, f"activation_{i}", self))
            for i, (activation, quantizer) in enumerate(
                config.get_activations_and_quantizers(layer)
            )
        ]
        self._config_outputs = [
            (quantizer, quantizer.build(None, "output" if i == 0 else f"output_{i}", self))
            for i, quantizer in enumerate(config.get_output_quantizers(layer))
        ]

    def _call_with_config(self, inputs, training):
        config, layer = self.quantize_config, self.layer
        originals = [weight for weight, _, _ in self._config_weights]
        activations = [activation for activation, _, _ in self._config_activations]
        config.set_quantize_weights(
            layer,
            [q(w, training=training, weights=v) for w, q, v in self._config_weights],
        )
        config.set_quantize_activations(
            layer,
            [
                lambda x, a=a, q=q, v=v: q(a(x), training=training, weights=v)
                for a, q, v in self._config_activations
            ],
        )
        try:
            outputs = layer.call(inputs, **self._call_kwargs(training))
        finally:
            # The layer keeps its own variables between calls: saving, weight
            # copies and the next trace read them, not this call's tensors.
            config.set_quantize_weights(layer, originals)
            config.set_quantize_activations(layer, activations)
        flat = keras.tree.flatten(outputs)
        if self._config_outputs and len(self._config_outputs) != len(flat):
            raise ValueError(
                f"{type(config).__name__}.get_output_quantizers for layer {layer.name!r} "
                f"gave {len(self._config_outputs)} quantizers for {len(flat)} outputs."
            )
        if not self._config_outputs:
            return outputs
        quantized = [
            q(t, training=training, weights=v) for t, (q, v) in zip(flat, self._config_outputs)
        ]
        return keras.tree.pack_sequence_as(outputs, quantized)

    def _call_kwargs(self, training):
        params = inspect.signature(self.layer.call).parameters
        return {"training": training} if "training" in params else {}

    def build(self, input_shape):
        super().build(input_shape)
        if self.quantize_config is not None:
            self._build_from_config()
            return
        if self._quantize_kernel and self.preserve_sparsity:
            self.sparsity_mask = self.add_weight(
                name="sparsity_mask",
                shape=tuple(self.layer.kernel.shape),
                initializer="ones",
                trainable=False,
            )
        self._pre_activation_vars = None
        if self._quantize_kernel and not self._fused:
            self._pre_activation_quantizer = MovingAverageQuantizer()
            self._pre_activation_vars = self._pre_activation_quantizer.build(
                None, "pre_activation", self
            )
        self._output_vars = None
        if self.output_quantizer is not None:
            self._output_vars = self.output_quantizer.build(None, "output", self)

    def quantized_kernel(self, training=False):
        """The kernel as the int8 model sees it (masked, fake-quantized)."""
        kernel = self.layer.kernel
        if self.preserve_sparsity:
            kernel = ops.multiply(kernel, ops.cast(self.sparsity_mask, kernel.dtype))
        return self.weight_quantizer(kernel, training=training)

    def call(self, inputs, training=None):
        training = bool(training)
        if self.quantize_config is not None:
            return self._call_with_config(inputs, training)
        if self._quantize_kernel:
            outputs = _kernels.kernel_call(
                self.layer, inputs, self.quantized_kernel(training)
            )
            if self._pre_activation_vars is not None:
                outputs = self._pre_activation_quantizer(
                    outputs, training=training, weights=self._pre_activation_vars
                )
            outputs = self.layer.activation(outputs)
        else:
            outputs = self.layer(inputs, training=training)
        if self.output_quantizer is not None:
            outputs = self.output_quantizer(outputs, training=training, weights=self._output_vars)
        return outputs

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            weight_quantizer=keras.saving.serialize_keras_object(self.weight_quantizer),
            output_quantizer=keras.saving.serialize_keras_object(self.output_quantizer),
            preserve_sparsity=self.preserve_sparsity,
        )
        if self.quantize_config is not None:
            config["quantize_config"] = keras.saving.serialize_keras_object(
                self.quantize_config
            )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        # A user layer or QuantizeConfig that Keras cannot find fails deep in
        # deserialization; say which scope loads it.
        try:
            return super().from_config(config, custom_objects=custom_objects)
        except TypeError as error:
            if "quantize_config" not in config or "Could not locate" not in str(error):
                raise
            raise TypeError(
                f"Cannot load the quantized layer {config.get('name')!r}: {error} Load the "
                f"model inside kd_keras.quantization.quantize_scope(YourLayer, "
                f"YourQuantizeConfig), or register both classes with "
                f"keras.saving.register_keras_serializable()."
            ) from None


# --------------------------------------------------------------------------
# Graph analysis: which kernel layer absorbs which BN / ReLU.


@dataclass
class _Fusion:
    batch_norm: keras.layers.Layer | None = None
    activation: str | None = None  # "relu" / "relu6" fused into the kernel layer
    absorbed_activation: keras.layers.Layer | None = None


def _as_functional(model: keras.Model, caller: str) -> keras.Model:
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


def _fusable_activation(layer) -> str | None:
    if type(layer) is keras.layers.ReLU:
        plain = float(layer.negative_slope) == 0.0 and float(layer.threshold) == 0.0
        if plain and layer.max_value is None:
            return "relu"
        if plain and layer.max_value is not None and float(layer.max_value) == 6.0:
            return "relu6"
    if type(layer) is keras.layers.Activation:
        name = keras.activations.serialize(layer.activation)
        if name in ("relu", "relu6"):
            return name
    return None


def _folds_last_axis(bn, ndim) -> bool:
    return bn.axis in (-1, ndim - 1) or list(np.atleast_1d(bn.axis)) in ([-1], [ndim - 1])


def _folds_into(layer, bn) -> bool:
    if type(bn) is not keras.layers.BatchNormalization:
        return False
    return _folds_last_axis(bn, len(layer.output.shape))


def _plan_fusions(model, fold_batch_norm: bool, fuse_activation: bool, keep) -> dict:
    """`{kernel layer name: _Fusion}` for kernel layers with something to absorb."""
    consumers = _Graph(model)
    plan = {}
    for layer in model.layers:
        if not (_kernels.is_kernel_layer(layer) and keep(layer)):
            continue
        if _kernels.kernel_layer_problem(layer):
            continue
        if _kernels.activation_name(layer) != "linear":
            continue
        fusion, tail = _Fusion(), layer
        nxt = consumers.sole_consumer(tail)
        if fold_batch_norm and nxt is not None and keep(nxt) and _folds_into(layer, nxt):
            fusion.batch_norm, tail = nxt, nxt
            nxt = consumers.sole_consumer(tail)
        if fuse_activation and nxt is not None and keep(nxt) and _fusable_activation(nxt):
            fusion.activation = _fusable_activation(nxt)
            fusion.absorbed_activation = nxt
        if fusion.batch_norm is not None or fusion.activation is not None:
            plan[layer.name] = fusion
    return plan


def _absorbed_names(plan) -> set:
    names = set()
    for fusion in plan.values():
        if fusion.batch_norm is not None:
            names.add(fusion.batch_norm.name)
        if fusion.activation is not None:
            names.add(fusion.absorbed_activation.name)
    return names


def _folded_weights(layer, batch_norm):
    """Kernel and bias of `layer` with `batch_norm` (inference mode) folded in."""
    kernel = np.asarray(ops.convert_to_numpy(layer.kernel), dtype="float64")
    bias = (
        np.asarray(ops.convert_to_numpy(layer.bias), dtype="float64")
        if layer.use_bias
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


def _clone_kernel_layer(layer, fusion: _Fusion | None):
    config = layer.get_config()
    if fusion is not None and fusion.batch_norm is not None:
        config["use_bias"] = True
    if fusion is not None and fusion.activation is not None:
        config["activation"] = fusion.activation
    return type(layer).from_config(config)


def _clone_layer(layer):
    return type(layer).from_config(layer.get_config())


def _rewrite(model, plan, make_layer, call_layer):
    """Clone `model`, replacing absorbed layers by `Identity` and every other
    layer by `make_layer(layer)` (raw `keras.ops` nodes are re-created as
    they are); `call_layer(new, old, *args, **kwargs)` wires the new layers.
    Returns `(new_model, {id(old layer): new layer})`."""
    absorbed = _absorbed_names(plan)
    made, originals = {}, {}

    def clone_function(operation):
        if id(operation) not in made:
            if graph.is_raw_op(operation):
                new = _clone_layer(operation)
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
        if _kernels.is_kernel_layer(old):
            fusion = plan.get(old.name)
            kernel, bias = _folded_weights(old, fusion.batch_norm if fusion else None)
            target.kernel.assign(kernel.astype(target.kernel.dtype))
            if target.use_bias:
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
    model = graph.inline_nested_models(_as_functional(model, "fold_batch_norms"))
    plan = _plan_fusions(model, fold_batch_norm=True, fuse_activation=False, keep=lambda _: True)

    def make_layer(layer):
        if _kernels.is_kernel_layer(layer):
            return _clone_kernel_layer(layer, plan.get(layer.name))
        return _clone_layer(layer)

    new_model, _ = _rewrite(model, plan, make_layer, lambda new, old, *a, **k: new(*a, **k))
    return new_model


def _layer_kind(layer) -> str:
    """"config", "kernel", "output", "pass" or "unsupported" for the quantization pass."""
    if quantize_config_of(layer) is not None:
        return "config"
    if _kernels.is_kernel_layer(layer):
        return "unsupported" if _kernels.kernel_layer_problem(layer) else "kernel"
    if type(layer) in PASS_THROUGH_LAYERS:
        return "pass"
    if type(layer) in OUTPUT_QUANTIZED_LAYERS or is_affine_layer(layer):
        return "output"
    if type(layer) is keras.layers.Activation and keras.activations.serialize(
        layer.activation
    ) in INT8_ACTIVATIONS:
        return "output"
    return "unsupported"


def is_affine_layer(layer) -> bool:
    """A layer that computes `x * scale + offset` in inference: `Rescaling`,
    a (non-inverting) `Normalization`, a channels-last `BatchNormalization`."""
    if type(layer) is keras.layers.Rescaling:
        return True
    if type(layer) is keras.layers.BatchNormalization:
        nodes = layer._inbound_nodes
        return bool(nodes) and _folds_last_axis(layer, len(nodes[0].input_tensors[0].shape))
    return type(layer) is keras.layers.Normalization and not layer.invert and layer.built


def affine_constants(layer):
    """`(scale, offset)` NumPy arrays with `layer(x) == x * scale + offset`."""
    if type(layer) is keras.layers.Rescaling:
        return np.asarray(layer.scale, "float64"), np.asarray(layer.offset, "float64")
    if type(layer) is keras.layers.BatchNormalization:
        def value(variable, default):
            return np.asarray(ops.convert_to_numpy(variable), "float64") if variable is not None \
                else default
        mean = value(layer.moving_mean, 0.0)
        variance = value(layer.moving_variance, 1.0)
        gamma = value(layer.gamma, 1.0) if layer.scale else 1.0
        beta = value(layer.beta, 0.0) if layer.center else 0.0
        scale = gamma / np.sqrt(variance + layer.epsilon)
        return scale, beta - mean * scale
    mean = np.asarray(ops.convert_to_numpy(layer.mean), "float64")
    variance = np.asarray(ops.convert_to_numpy(layer.variance), "float64")
    # Normalization divides by max(sqrt(variance), epsilon).
    std = np.maximum(np.sqrt(variance), keras.backend.epsilon())
    return 1.0 / std, -mean / std


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
        getattr(layer, _QUANTIZE_ANNOTATION, False) and quantize_config_of(layer) is None
        for layer in model.layers
    )

    def skipped(layer):
        if layer.name in names or isinstance(layer, tuple(classes)):
            return True
        if annotated and _layer_kind(layer) != "pass":
            return not getattr(layer, _QUANTIZE_ANNOTATION, False)
        return False

    return skipped


def quantize_model(
    model: keras.Model,
    skip_layers: Iterable[str | type] | None = None,
    ema_decay: float = 0.999,
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
    if tfmot_bridge.is_tf_keras_model(model):
        if skip_layers:
            raise ValueError(
                "skip_layers is a kd_keras option; for a tf_keras model use TFMOT's "
                "quantize_annotate_layer / quantize_apply directly."
            )
        return tfmot_bridge.tfmot_quantize_model(model)
    model = _as_functional(model, "quantize_model")
    skipped = _skip_predicate(model, skip_layers)
    # A nested model named in skip_layers stays whole, in float; every other
    # nested model is inlined so its layers are folded and quantized too.
    model = graph.inline_nested_models(
        model, keep=frozenset(item for item in skip_layers or () if isinstance(item, str))
    )
    skipped = _skip_predicate(model, skip_layers)
    # A layer with a QuantizeConfig neither absorbs nor is absorbed.
    keep = lambda layer: not skipped(layer) and quantize_config_of(layer) is None  # noqa: E731
    plan = _plan_fusions(model, fold_batch_norm=True, fuse_activation=True, keep=keep)
    absorbed = _absorbed_names(plan)
    unsupported = [
        layer
        for layer in model.layers
        if not skipped(layer) and layer.name not in absorbed and _layer_kind(layer) == "unsupported"
    ]
    if unsupported:
        skipped_names = [layer.name for layer in model.layers if skipped(layer)]
        raise ValueError(_unsupported_message(unsupported, skipped_names))

    def make_layer(layer):
        kind = "skip" if skipped(layer) else _layer_kind(layer)
        if kind == "config":
            return QuantizeWrapper(
                _clone_layer(layer), quantize_config=quantize_config_of(layer), name=layer.name
            )
        if kind == "kernel":
            kernel = ops.convert_to_numpy(layer.kernel)
            return QuantizeWrapper(
                _clone_kernel_layer(layer, plan.get(layer.name)),
                weight_quantizer=PerChannelSymmetricQuantizer(
                    axis=_kernels.weight_quantization_axis(layer)
                ),
                output_quantizer=MovingAverageQuantizer(ema_decay=ema_decay),
                preserve_sparsity=bool(np.any(kernel == 0)),
                name=layer.name,
            )
        if kind == "output":
            return QuantizeWrapper(
                _clone_layer(layer),
                output_quantizer=MovingAverageQuantizer(ema_decay=ema_decay),
                name=layer.name,
            )
        return _clone_layer(layer)

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
            )(ops.multiply(x, scale))
        if np.any(offset != 0):
            x = QuantizeLayer(
                MovingAverageQuantizer(ema_decay=ema_decay),
                name=unique_name(f"{old.name}_offset_quantize"),
            )(ops.add(x, offset))
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
        if isinstance(new, QuantizeWrapper):
            args = keras.tree.map_structure(ensure_quantized, args)
            carries_range = True  # unless a QuantizeConfig leaves outputs float, below
        else:
            carries_range = (
                not skipped(old)
                and (_layer_kind(old) == "pass" or old.name in absorbed)
                and all(id(t) in quantized for t in flat_inputs)
            )
        outputs = new(*args, **kwargs)
        if isinstance(new, QuantizeWrapper):
            carries_range = new.quantizes_output  # known once built
        if carries_range:
            quantized.update(id(t) for t in keras.tree.flatten(outputs))
        return outputs

    new_model, _ = _rewrite(model, plan, make_layer, call_layer)
    return _in_float32(new_model)


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
