"""Edge cases of `kd_keras.quantization.fake_quantize` the main fake-quant tests
leave open: the default 8-bit, wide-range grid; the input's dtype kept; and,
on TensorFlow, `fake_quant` lowering to TensorFlow's own FakeQuant ops (the
ones the TFLite converter turns into int8 kernels), per tensor and per channel.
Values are checked against the NumPy transcription of TensorFlow's op."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from kd_keras.quantization import fake_quant, fake_quant_ops
from kd_keras.quantization.fake_quantize import nudged_range
from tests.test_quantization_fake_quant import np_fake_quant, np_nudge

BACKEND = keras.backend.backend()


def test_defaults_are_eight_bits_over_the_wide_range():
    # A grid of 2**8 levels with the zero point inside: every default shows
    # in the values (9 bits would halve the step, narrow_range move the grid).
    x = np.linspace(-1.3, 2.1, 101, dtype="float32")
    lo, hi = np.float32(-1.0), np.float32(1.5)
    expected, _ = np_fake_quant(x, lo, hi, num_bits=8, narrow_range=False)
    got = keras.ops.convert_to_numpy(fake_quant_ops(x, lo, hi))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)

    n_lo, n_hi, scale = (keras.ops.convert_to_numpy(v) for v in nudged_range(lo, hi))
    np.testing.assert_allclose((n_lo, n_hi, scale), np_nudge(lo, hi, 8, False), rtol=1e-6)
    # 255 steps from the nudged minimum to the nudged maximum (254 if narrow).
    assert round(float((n_hi - n_lo) / scale)) == 255


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_output_keeps_the_input_dtype(dtype):
    x = keras.ops.cast(np.linspace(-1.0, 1.0, 17, dtype="float32"), dtype)
    for fn in (fake_quant_ops, fake_quant):
        out = fn(x, -1.0, 1.0)
        assert keras.backend.standardize_dtype(out.dtype) == dtype
        expected, _ = np_fake_quant(
            keras.ops.convert_to_numpy(keras.ops.cast(x, "float32")), -1.0, 1.0
        )
        got = keras.ops.convert_to_numpy(keras.ops.cast(out, "float32"))
        # The 16-bit output holds the float32 grid value rounded once.
        np.testing.assert_allclose(got, expected, rtol=1e-2, atol=1e-2)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow's own op is TensorFlow-only")
@pytest.mark.parametrize(
    "axis, op",
    [
        (None, "FakeQuantWithMinMaxVars"),
        (3, "FakeQuantWithMinMaxVarsPerChannel"),
        (2, "FakeQuantWithMinMaxVarsPerChannel"),
    ],
)
def test_fake_quant_lowers_to_tensorflows_op(axis, op):
    import tensorflow as tf

    x = np.random.default_rng(0).normal(size=(2, 3, 4, 5)).astype("float32")
    size = x.shape[axis] if axis is not None else None
    lo = -np.ones(size, "float32") if size else -1.0
    hi = np.linspace(0.5, 1.5, size, dtype="float32") if size else 1.0

    graph = tf.function(lambda t: fake_quant(t, lo, hi, narrow_range=True, axis=axis))
    concrete = graph.get_concrete_function(tf.TensorSpec(x.shape, tf.float32))
    types = [o.type for o in concrete.graph.get_operations()]
    assert types.count(op) == 1, types
    expected, _ = np_fake_quant(x, lo, hi, narrow_range=True, axis=axis)
    np.testing.assert_allclose(concrete(tf.constant(x)).numpy(), expected, rtol=0, atol=1e-6)
