"""Native Keras 3 quantization: QAT that converts to a fully int8 TFLite,
post-training quantization, weight clustering, and a TFMOT bridge for
tf_keras models."""

from kd_keras.quantization.convert import (
    convert,
    tflite_ops,
    tflite_predict,
    tflite_tensor_types,
)
from kd_keras.quantization.ptq import quantize_post_training, representative_dataset
from kd_keras.quantization.qat import (
    QuantizeLayer,
    QuantizeWrapper,
    fold_batch_norms,
    is_quantized,
    quantize_annotate_layer,
    quantize_model,
)
from kd_keras.quantization.quantizers import (
    MovingAverageQuantizer,
    PerChannelSymmetricQuantizer,
    Quantizer,
    fake_quant,
)

__all__ = [
    "MovingAverageQuantizer",
    "PerChannelSymmetricQuantizer",
    "QuantizeLayer",
    "QuantizeWrapper",
    "Quantizer",
    "convert",
    "fake_quant",
    "fold_batch_norms",
    "is_quantized",
    "quantize_annotate_layer",
    "quantize_model",
    "quantize_post_training",
    "representative_dataset",
    "tflite_ops",
    "tflite_predict",
    "tflite_tensor_types",
]
