"""QAT to a fully int8 .tflite across `keras.applications` families.

Each family is built with `weights=None` at the smallest input it accepts,
fine-tuned with QAT for 2 steps and converted with
`convert(mode="qat", int8_io=True)`; every CONV_2D / DEPTHWISE_CONV_2D /
FULLY_CONNECTED / BATCH_MATMUL / TRANSPOSE_CONV op must read and write int8,
and any op left in float is listed in the failure message. The families that
are cheap to build run in every CI run, the large ones are marked slow.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from kd_keras.quantization import convert, quantize_model, tflite_ops

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="TFLite conversion needs TensorFlow"
)

COMPUTE_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL", "TRANSPOSE_CONV"}

# (constructor name, smallest input side, extra arguments); slow ones last.
FAMILIES = [
    ("MobileNetV3Small", 32, {"include_preprocessing": True}),
    ("EfficientNetB0", 32, {}),
    pytest.param("MobileNetV2", 32, {"alpha": 0.35}, marks=pytest.mark.slow),
    pytest.param("MobileNet", 32, {"alpha": 0.25}, marks=pytest.mark.slow),
    pytest.param("MobileNetV3Large", 32, {"include_preprocessing": True}, marks=pytest.mark.slow),
    pytest.param("EfficientNetV2B0", 32, {}, marks=pytest.mark.slow),
    pytest.param("ResNet50", 32, {}, marks=pytest.mark.slow),
    pytest.param("VGG16", 32, {}, marks=pytest.mark.slow),
    pytest.param("ResNet50V2", 32, {}, marks=pytest.mark.slow),
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
    qat = quantize_model(model)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, size=(4, size, size, 3)).astype("float32")
    y = rng.integers(0, 4, size=4)
    qat.compile("adam", "sparse_categorical_crossentropy")
    qat.fit(x, y, batch_size=2, epochs=1, verbose=0)  # 2 steps
    model_bytes = convert(qat, mode="qat", int8_io=True)
    assert not float_ops(model_bytes), f"{name}: float ops {float_ops(model_bytes)}"
    compute = [op for op in tflite_ops(model_bytes) if op["op"] in COMPUTE_OPS]
    assert compute
    for op in compute:
        assert op["inputs"][:2] == ["int8", "int8"] and op["outputs"] == ["int8"], (name, op)
