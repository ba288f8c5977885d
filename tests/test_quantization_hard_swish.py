"""Hard-swish written as `relu6(x + 3) * x / 6` for int8: the float rewrite
against NumPy's formula, each QAT piece against a NumPy fake-quant of the
float op, and the `.tflite` files (QAT and post-training int8) against
the op list XNNPACK runs whole and against the Keras model."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest

from kd_keras.quantization import (
    QuantizeLayer,
    QuantizeWrapper,
    quantize_model,
    split_hard_swish,
)
from tests.test_quantization_fake_quant import np_fake_quant

TENSORFLOW = keras.backend.backend() == "tensorflow"


def to_np(x):
    return keras.ops.convert_to_numpy(x)


def np_hard_swish(x):
    x = np.asarray(x, "float64")
    return x * np.clip(x + 3.0, 0.0, 6.0) / 6.0


def model_with_hard_swish(name="act"):
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(8, 3, padding="same", name="conv")(inputs)
    h = keras.layers.Activation("hard_silu", name=name)(h)
    h = keras.layers.GlobalAveragePooling2D(name="pool")(h)
    return keras.Model(inputs, keras.layers.Dense(4, name="out")(h))


def test_split_hard_swish_is_the_same_function():
    keras.utils.set_random_seed(0)
    model = model_with_hard_swish()
    split = split_hard_swish(model)
    names = [layer.name for layer in split.layers]
    assert names[2:6] == ["act_shift", "act_gate", "act_product", "act"]
    assert "Activation" not in {type(layer).__name__ for layer in split.layers}
    x = np.random.default_rng(0).uniform(-2, 2, (6, 8, 8, 3)).astype("float32")
    conv = to_np(model.get_layer("conv")(x))
    probe = keras.Model(split.input, split.get_layer("act").output)
    np.testing.assert_allclose(to_np(probe(x)), np_hard_swish(conv), atol=1e-5)
    np.testing.assert_allclose(to_np(split(x)), to_np(model(x)), atol=1e-5)
    # The user's model is untouched; a model without hard-swish is returned as is.
    assert model.get_layer("act").__class__ is keras.layers.Activation
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    assert split_hard_swish(plain) is plain
    sequential = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(4), keras.layers.Activation("hard_silu")]
    )
    rows = np.random.default_rng(1).uniform(-5, 5, (3, 4)).astype("float32")
    split = split_hard_swish(sequential)
    assert [layer.name for layer in split.layers][-4:][0].endswith("_shift")
    np.testing.assert_allclose(to_np(split(rows)), to_np(sequential(rows)), atol=1e-5)


def test_qat_pieces_are_fake_quantized_float_ops():
    keras.utils.set_random_seed(1)
    model = model_with_hard_swish()
    qat = quantize_model(model)
    assert not any(type(layer) is keras.layers.Activation for layer in qat.layers)
    x = np.random.default_rng(1).uniform(-2, 2, (32, 8, 8, 3)).astype("float32")
    for i in range(4):
        qat(x[i * 8 : (i + 1) * 8], training=True)

    def range_of(name):
        return [float(to_np(v)) for v in qat.get_layer(name).weights[:2]]

    shift = qat.get_layer("act_shift_offset_quantize")
    gate, product = qat.get_layer("act_gate"), qat.get_layer("act_product")
    scale = qat.get_layer("act_scale_quantize")
    assert isinstance(shift, QuantizeLayer) and isinstance(scale, QuantizeLayer)
    assert isinstance(gate, QuantizeWrapper) and isinstance(product, QuantizeWrapper)
    probe = keras.Model(qat.inputs[0], [qat.get_layer("conv").output, scale.output])
    conv, got = (to_np(t).astype("float64") for t in probe(x, training=False))
    # NumPy's chain: each float op on the fake-quantized values before it.
    s = np_fake_quant(conv + 3.0, *range_of("act_shift_offset_quantize"))[0]
    g = np_fake_quant(np.clip(s, 0.0, 6.0), *range_of("act_gate"))[0]
    p = np_fake_quant(g * conv, *range_of("act_product"))[0]
    want = np_fake_quant(p / 6.0, *range_of("act_scale_quantize"))[0]
    lo, hi = range_of("act_scale_quantize")
    step = (hi - lo) / 255
    # One step where a product lands on a rounding tie in float32 vs float64.
    assert np.abs(got - want).max() <= step * 1.01
    assert np.mean(np.abs(got - want) > 1e-5) < 0.01
    # And the whole is hard-swish up to a few output steps.
    assert np.abs(got - np_hard_swish(conv)).max() < 4 * step


def test_qat_keeps_the_single_op_when_asked():
    qat = quantize_model(model_with_hard_swish(), split_hard_swish=False)
    act = qat.get_layer("act")
    assert isinstance(act, QuantizeWrapper) and act.output_quantizer is not None
    assert "act_gate" not in {layer.name for layer in qat.layers}


def test_skipped_hard_swish_stays_whole_in_float():
    qat = quantize_model(model_with_hard_swish(), skip_layers=["act"])
    assert type(qat.get_layer("act")) is keras.layers.Activation


def test_qat_model_with_split_hard_swish_round_trips(tmp_path):
    qat = quantize_model(model_with_hard_swish())
    x = np.random.default_rng(2).uniform(-2, 2, (8, 8, 8, 3)).astype("float32")
    qat(x, training=True)
    path = tmp_path / "qat.keras"
    qat.save(path)
    loaded = keras.saving.load_model(path)  # safe_mode on
    np.testing.assert_allclose(to_np(loaded(x)), to_np(qat(x)), atol=1e-6)


def xnnpack_partitions(model_bytes):
    """DELEGATE nodes after LiteRT applies XNNPACK: 1 when it takes every op."""
    from kd_keras.runtime import litert_interpreter

    interpreter = litert_interpreter(model_bytes, threads=1)
    return sum(op["op_name"] == "DELEGATE" for op in interpreter._get_ops_details())


@pytest.mark.skipif(not TENSORFLOW, reason="TFLite conversion needs TensorFlow")
@pytest.mark.parametrize("mode", ["qat", "int8"])
def test_int8_file_runs_whole_in_xnnpack(mode):
    from kd_keras.quantization import convert, tflite_ops, tflite_predict

    keras.utils.set_random_seed(3)
    model = model_with_hard_swish()
    x = np.random.default_rng(3).uniform(-2, 2, (64, 8, 8, 3)).astype("float32")
    files = {}
    for split in (True, False):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if mode == "qat":
                subject = quantize_model(model, split_hard_swish=split)
                for i in range(8):
                    subject(x[i * 8 : (i + 1) * 8], training=True)
                files[split] = convert(subject, mode="qat", int8_io=True)
                expected = to_np(subject(x, training=False))
            else:
                files[split] = convert(
                    model, mode="int8", representative_data=x, int8_io=True,
                    split_hard_swish=split,
                )
                expected = to_np(model(x))
        got = tflite_predict(files[split], x)
        # Output steps of the int8 logits; PTQ also carries its calibration error.
        step = (expected.max() - expected.min()) / 255
        limit = 3 if mode == "qat" else 8
        assert np.abs(got - expected).max() <= limit * step, (split, np.abs(got - expected).max())
    split_ops = [op["op"] for op in tflite_ops(files[True])]
    single_ops = [op["op"] for op in tflite_ops(files[False])]
    assert "HARD_SWISH" not in split_ops and "HARD_SWISH" in single_ops
    assert split_ops.count("MUL") == single_ops.count("MUL") + 2
    assert all(
        "float32" not in op["inputs"] + op["outputs"]
        for op in tflite_ops(files[True])
        if op["op"] in ("ADD", "MUL", "CONV_2D")
    )
    assert xnnpack_partitions(files[True]) == 1
    assert xnnpack_partitions(files[False]) > 1
