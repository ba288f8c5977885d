"""The built-in `QuantizeConfig` of `keras.layers.Embedding`.

TFLite looks up int8 embeddings with `GATHER`: the table is int8 with one
scale (per tensor, symmetric), the token ids stay int32 and are never
quantized, and the gathered rows carry the table's scale, so the layer's
output needs no range of its own. QAT therefore fake-quantizes the table
and nothing else; the ids reach the layer as they are (the QAT rewrite
quantizes float tensors only).
"""

from __future__ import annotations

import keras

from kd_keras.quantization.quantize_config import QuantizeConfig
from kd_keras.quantization.quantizers import PerChannelSymmetricQuantizer


@keras.saving.register_keras_serializable(package="kd_keras")
class EmbeddingQuantizeConfig(QuantizeConfig):
    """Per-tensor symmetric int8 embedding table, int32 ids, no output range.

    Example:

    ```python
    layer = keras.layers.Embedding(1000, 32)
    quantize_annotate_layer(layer, EmbeddingQuantizeConfig())  # what quantize_model does
    ```
    """

    #: The gathered rows are table entries, on the table's int8 grid: the
    #: QAT rewrite gives them no range of their own (`GATHER` keeps the
    #: table's scale; another range would requantize the table at run time).
    output_keeps_weight_range = True

    def get_weights_and_quantizers(self, layer):
        return [(layer.embeddings, PerChannelSymmetricQuantizer(axis=None))]

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        # `Embedding.embeddings` is a read-only property over `_embeddings`.
        object.__setattr__(layer, "_embeddings", quantize_weights[0])

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        return []

    def get_config(self):
        return {}


def embedding_problem(layer) -> str | None:
    """Why `EmbeddingQuantizeConfig` does not apply to `layer`, or `None`."""
    if getattr(layer, "lora_enabled", False):
        return "has LoRA enabled (merge it into the table first)"
    if getattr(layer, "quantization_mode", None):
        return f"is already quantized by Keras ({layer.quantization_mode!r})"
    return None
