"""`QuantizeWrapper`: runs a layer with fake-quantized weights and output."""

from __future__ import annotations

import inspect

import keras
from keras import ops

from kd_keras.quantization import _kernels
from kd_keras.quantization.quantize_config import (
    QuantizeConfig,
    checked_weights_and_quantizers,
)
from kd_keras.quantization.quantizers import MovingAverageQuantizer, deserialize_quantizer
from kd_keras.quantization.rules import FUSABLE_ACTIVATIONS


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
        # Keras masks (Embedding(mask_zero=True)) pass through as they do in
        # the float model, so a masked attention or pooling downstream sees them.
        self.supports_masking = bool(getattr(layer, "supports_masking", False))
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
        return self.weight_quantizer(_kernels.op_kernel(self.layer, kernel), training=training)

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

    def compute_mask(self, inputs, mask=None):
        return self.layer.compute_mask(inputs, mask)

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
