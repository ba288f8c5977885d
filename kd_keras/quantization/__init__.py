"""Native Keras 3 quantization: QAT that converts to a fully int8 TFLite,
post-training quantization, weight clustering, and a TFMOT bridge for
tf_keras models.

```python
from kd_keras.quantization import convert, quantize_model

qat = quantize_model(student)                  # BN folded, ReLU fused, int8 fake-quant
qat.compile("adam", loss, metrics=["accuracy"])
qat.fit(x, y, epochs=2)                        # or as the student of kd_keras.Distiller
tflite_bytes = convert(qat, mode="qat", int8_io=True)   # fully int8 .tflite
```
"""

from kd_keras.quantization.batch_norm_folding import fold_batch_norms
from kd_keras.quantization.clustering import (
    CentroidInitialization,
    ClusterWeights,
    cluster_weights,
    strip_clustering,
)
from kd_keras.quantization.convert import (
    FloatIslandNotice,
    convert,
    float_islands,
    tflite_ops,
    tflite_predict,
    tflite_tensor_types,
)
from kd_keras.quantization.decompose import split_hard_swish
from kd_keras.quantization.fake_quantize import fake_quant, fake_quant_ops
from kd_keras.quantization.folded_batch_norm_wrapper import FoldedBatchNormWrapper
from kd_keras.quantization.ptq import quantize_post_training, representative_dataset
from kd_keras.quantization.qat import is_quantized, quantize_annotate_layer, quantize_model
from kd_keras.quantization.quantize_config import QuantizeConfig, quantize_scope
from kd_keras.quantization.quantize_layer import QuantizeLayer
from kd_keras.quantization.quantize_wrapper import QuantizeWrapper
from kd_keras.quantization.quantizers import (
    MovingAverageQuantizer,
    PerChannelSymmetricQuantizer,
    Quantizer,
)
from kd_keras.quantization.tfmot_bridge import TFMOTBridgeNotice

__all__ = [
    "CentroidInitialization",
    "ClusterWeights",
    "FoldedBatchNormWrapper",
    "TFMOTBridgeNotice",
    "cluster_weights",
    "strip_clustering",
    "MovingAverageQuantizer",
    "PerChannelSymmetricQuantizer",
    "QuantizeConfig",
    "QuantizeLayer",
    "QuantizeWrapper",
    "Quantizer",
    "FloatIslandNotice",
    "convert",
    "float_islands",
    "fake_quant",
    "fake_quant_ops",
    "fold_batch_norms",
    "is_quantized",
    "quantize_annotate_layer",
    "quantize_model",
    "quantize_post_training",
    "quantize_scope",
    "representative_dataset",
    "split_hard_swish",
    "tflite_ops",
    "tflite_predict",
    "tflite_tensor_types",
]
