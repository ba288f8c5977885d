"""QAT to a fully int8 .tflite across `keras.applications` families.

Each family is built with `weights=None` at the smallest input it accepts,
fine-tuned with QAT for 2 steps and converted with
`convert(mode="qat", int8_io=True)`; its predictions match the Keras QAT
model's to a few int8 steps, and every CONV_2D / DEPTHWISE_CONV_2D /
FULLY_CONNECTED / BATCH_MATMUL / TRANSPOSE_CONV op must read and write int8,
and any op left in float is listed in the failure message. MobileNetV3Small
(hard-swish, squeeze-excite, Rescaling) and EfficientNetB0 (swish,
Normalization) run in every CI run; the other twelve are marked `heavy` (about
10 minutes on 2 cores) and run with `KD_KERAS_HEAVY=1 bash .ci/test` or
`python -m pytest -m heavy`.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from kd_keras.quantization import convert, quantize_model, tflite_ops, tflite_predict
from kd_keras.runtime import litert_interpreter

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="TFLite conversion needs TensorFlow"
)

MAX_STEPS, MEAN_STEPS = 8, 3
COMPUTE_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL", "TRANSPOSE_CONV"}

# (constructor name, smallest input side, extra arguments); heavy ones last.
FAMILIES = [
    ("MobileNetV3Small", 32, {"include_preprocessing": True}),
    ("EfficientNetB0", 32, {}),
    pytest.param("MobileNetV2", 32, {"alpha": 0.35}, marks=pytest.mark.heavy),
    pytest.param("MobileNet", 32, {"alpha": 0.25}, marks=pytest.mark.heavy),
    pytest.param("MobileNetV3Large", 32, {"include_preprocessing": True}, marks=pytest.mark.heavy),
    pytest.param("EfficientNetV2B0", 32, {}, marks=pytest.mark.heavy),
    pytest.param("ResNet50", 32, {}, marks=pytest.mark.heavy),
    pytest.param("VGG16", 32, {}, marks=pytest.mark.heavy),
    pytest.param("ResNet50V2", 32, {}, marks=pytest.mark.heavy),
    # SeparableConv2D (lowered to depthwise + pointwise, BN folded).
    pytest.param("NASNetMobile", 32, {}, marks=pytest.mark.heavy),
    pytest.param("Xception", 71, {}, marks=pytest.mark.heavy),
    # Average pools and concatenations under TFLite's same-scale constraint.
    pytest.param("DenseNet121", 32, {}, marks=pytest.mark.heavy),
    pytest.param("InceptionV3", 75, {}, marks=pytest.mark.heavy),
    # CustomScaleLayer as int8 MUL + ADD.
    pytest.param("InceptionResNetV2", 75, {}, marks=pytest.mark.heavy),
]


def float_ops(model_bytes):
    """`[(op, inputs, outputs)]` of every op that reads or writes float32."""
    return [
        (op["op"], op["inputs"], op["outputs"])
        for op in tflite_ops(model_bytes)
        if "float32" in op["inputs"] + op["outputs"]
    ]


@pytest.mark.parametrize("name,size,kwargs", FAMILIES)
def test_family_reaches_a_fully_int8_tflite(name, size, kwargs):
    model = getattr(keras.applications, name)(
        weights=None, input_shape=(size, size, 3), classes=4, **kwargs
    )
    # The BNs are folded once with their moving statistics: after 2 steps of
    # the batch-statistics fold (the default) the moving statistics are still
    # near their initial values, so ranges learned on batch statistics do not
    # describe the inference fold and the parity below would measure that,
    # not the rewrite. test_quantization_batch_norm.py converts a whole
    # family with the default fold.
    qat = quantize_model(model, freeze_bn_delay=0)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, size=(4, size, size, 3)).astype("float32")
    y = rng.integers(0, 4, size=4)
    # Eagerly: tracing a graph of hundreds of layers costs more than 2 steps.
    qat.compile("adam", "sparse_categorical_crossentropy", run_eagerly=True)
    qat.fit(x, y, batch_size=2, epochs=1, verbose=0)  # 2 steps
    model_bytes = convert(qat, mode="qat", int8_io=True)
    assert not float_ops(model_bytes), f"{name}: float ops {float_ops(model_bytes)}"
    compute = [op for op in tflite_ops(model_bytes) if op["op"] in COMPUTE_OPS]
    assert compute
    for op in compute:
        assert op["inputs"][:2] == ["int8", "int8"] and op["outputs"] == ["int8"], (name, op)
    # The int8 file computes what the Keras QAT model computes (the softmax
    # output in units of its int8 scale; rounding inside TFLite's kernels
    # compounds over a deep network, so a few steps apart at most).
    output = litert_interpreter(model_bytes, xnnpack=False).get_output_details()[0]
    scale = output["quantization"][0]
    keras_out = keras.ops.convert_to_numpy(qat.predict(x, verbose=0))
    # Whole steps: 8 steps apart reads 8.000009 after the float division.
    steps = np.round(np.abs(keras_out - tflite_predict(model_bytes, x)) / scale, 3)
    assert steps.max() <= MAX_STEPS and steps.mean() <= MEAN_STEPS, (name, steps)
