"""QAT rules for the layers of MobileNetV3 / EfficientNet: `Rescaling` and
`Normalization` as an int8 MUL then ADD (constants checked against the
layers), and activations TFLite runs in int8 (hard_swish, sigmoid, swish,
GELU, softmax, tanh) with their own output range, checked against a NumPy
fake-quant of the float activation."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from kd_keras.quantization import QuantizeLayer, QuantizeWrapper, quantize_model
from kd_keras.quantization.rules import affine_constants
from tests.test_quantization_fake_quant import np_fake_quant


def to_np(x):
    return keras.ops.convert_to_numpy(x)


def test_affine_constants_reproduce_rescaling_and_normalization():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, size=(16, 4, 4, 3)).astype("float32")
    rescaling = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0)
    normalization = keras.layers.Normalization(axis=-1)
    normalization.adapt(x)
    for layer in (rescaling, normalization):
        scale, offset = affine_constants(layer)
        np.testing.assert_allclose(to_np(layer(x)), x * scale + offset, rtol=1e-5, atol=1e-5)


def preprocessing_model(x):
    inputs = keras.Input(x.shape[1:])
    h = keras.layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    norm = keras.layers.Normalization(axis=-1, name="norm")
    norm.adapt(x / 255.0)
    h = norm(h)
    h = keras.layers.Conv2D(4, 3, name="conv")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(2, name="out")(h))


def test_rescaling_and_normalization_become_quantized_mul_and_add():
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 255, size=(32, 6, 6, 3)).astype("float32")
    model = preprocessing_model(x)
    qat = quantize_model(model)
    names = [layer.name for layer in qat.layers]
    assert {"rescale", "norm"}.isdisjoint(names)
    # Rescaling without offset: one MUL; Normalization: a MUL and an ADD.
    assert [n for n in names if n.startswith(("rescale", "norm"))] == [
        "rescale_scale_quantize",
        "norm_scale_quantize",
        "norm_offset_quantize",
    ]
    qat(x, training=True)  # ranges from this batch
    want = to_np(model(x))
    got = to_np(qat(x, training=False))
    error = np.abs(got - want).max()
    assert 0 < error < 0.05 * np.abs(want).max() + 1e-3, error
    # The normalized tensor's range is the one of (x / 255 - mean) / std, up
    # to one int8 step of the rescaled input (1 / 255) divided by std.
    norm_q = qat.get_layer("norm_offset_quantize")
    lo, hi = (float(to_np(v)) for v in norm_q.weights[:2])
    normalized = to_np(model.get_layer("norm")(x / 255.0))
    step = (1.0 / 255.0) * float(np.max(affine_constants(model.get_layer("norm"))[0]))
    np.testing.assert_allclose([lo, hi], [normalized.min(), normalized.max()], atol=step)


@pytest.mark.parametrize(
    "activation", ["hard_silu", "hard_sigmoid", "sigmoid", "silu", "gelu", "tanh", "softmax"]
)
def test_activation_layer_gets_an_output_range(activation):
    inputs = keras.Input((12,))
    h = keras.layers.Dense(12, name="dense")(inputs)
    h = keras.layers.Activation(activation, name="act")(h)
    model = keras.Model(inputs, keras.layers.Dense(3, name="out")(h))
    # hard_silu as one layer (TFLite's HARD_SWISH op); its int8 ADD / MUL
    # split is tested in test_quantization_hard_swish.py.
    qat = quantize_model(model, split_hard_swish=False)
    act = qat.get_layer("act")
    assert isinstance(act, QuantizeWrapper) and act.output_quantizer is not None
    x = np.random.default_rng(2).normal(size=(64, 12)).astype("float32")
    qat(x, training=True)
    probe = keras.Model(qat.inputs[0], [qat.get_layer("dense").output, act.output])
    dense_out, act_out = (to_np(t) for t in probe(x, training=False))
    lo, hi = (float(to_np(v)) for v in act.weights[:2])
    float_act = to_np(keras.activations.get(activation)(dense_out))
    np.testing.assert_allclose(act_out, np_fake_quant(float_act, lo, hi)[0], atol=1e-5)
    assert not any(isinstance(layer, QuantizeLayer) for layer in qat.layers[2:])
