"""Fake quantization (quantize to an integer grid and back) for every backend.

`fake_quant_ops` is TensorFlow's `FakeQuantWithMinMaxVars` and
`FakeQuantWithMinMaxVarsPerChannel` written in `keras.ops`: the same range
nudging (so 0.0 is exactly representable), the same rounding
(`floor(x / scale + 0.5)`), and the same straight-through gradient (the
upstream gradient passes where the input lies inside the nudged range, zero
outside). Unlike `keras.quantizers.fake_quant_with_min_max_vars` off
TensorFlow, it honours the per-channel `axis` for any axis, so a
`DepthwiseConv2D` kernel (channels on axis -2) quantizes per channel on JAX
and torch too.

`fake_quant` is what the quantizers call: on the TensorFlow backend it
lowers to TensorFlow's own op, because that op is what the TFLite converter
reads to make int8 kernels; on JAX and torch it runs `fake_quant_ops`. The
two agree in values and gradients (tested against TensorFlow's op), so QAT
trains the same on every backend and a model trained on JAX or torch
converts after a reload under TensorFlow.

The range is a constant here: no gradient flows into `min_vals` /
`max_vals` (kd_keras tracks activation ranges with moving averages and
weight ranges from the weights themselves, as TFMOT's default scheme does).
"""

from __future__ import annotations

import keras
from keras import ops


def _range_shape(ndim: int, axis: int | None):
    """Shape that broadcasts a per-channel range along `axis` of the input."""
    if axis is None:
        return ()
    shape = [1] * ndim
    shape[axis] = -1
    return tuple(shape)


def nudged_range(min_vals, max_vals, num_bits: int = 8, narrow_range: bool = False):
    """TensorFlow's `Nudge()`: `(nudged_min, nudged_max, scale)` in float32.

    The zero point `quant_min - min / scale` is clamped to the integer range
    and rounded half up (TensorFlow's `std::round` on a non-negative value),
    then the range is moved so that the rounded zero point maps to 0.0.

    Example:

    ```python
    lo, hi, scale = nudged_range(-0.7311, 1.9137)  # lo, hi shifted so 0.0 is on the grid
    ```
    """
    min_vals = ops.cast(min_vals, "float32")
    max_vals = ops.cast(max_vals, "float32")
    quant_min = 1.0 if narrow_range else 0.0
    quant_max = float(2**num_bits - 1)
    scale = (max_vals - min_vals) / (quant_max - quant_min)
    zero_point_from_min = quant_min - min_vals / scale
    zero_point = ops.floor(ops.clip(zero_point_from_min, quant_min, quant_max) + 0.5)
    return (quant_min - zero_point) * scale, (quant_max - zero_point) * scale, scale


def fake_quant_ops(
    x, min_vals, max_vals, num_bits: int = 8, narrow_range: bool = False, axis: int | None = None
):
    """Fake quantization in `keras.ops` (any backend, any per-channel axis).

    Args:
        x: float tensor.
        min_vals, max_vals: scalars (per tensor) or 1-D tensors of length
            `x.shape[axis]` (per channel).
        num_bits: bit width of the integer grid.
        narrow_range: use `[1, 2**num_bits - 1]` (int8 `[-127, 127]`).
        axis: channel axis of the per-channel range, `None` for per tensor.

    Returns:
        `x` on the nudged grid, same shape and dtype; its gradient with
        respect to `x` is the straight-through one of TensorFlow's op.

    Example:

    ```python
    # A DepthwiseConv2D kernel (3, 3, channels, 1), quantized per channel.
    kernel = np.random.randn(3, 3, 4, 1).astype("float32")
    m = np.abs(kernel).max(axis=(0, 1, 3))  # one symmetric range per channel
    kernel_q = fake_quant_ops(kernel, -m, m, narrow_range=True, axis=2)  # depthwise
    step = m / 127.0  # int8 [-127, 127]
    assert np.allclose(np.asarray(kernel_q), kernel, atol=float(step.max()))
    ```
    """
    x = ops.convert_to_tensor(x)
    dtype = x.dtype
    ndim = len(x.shape)
    if axis is not None:
        axis = axis % ndim
    shape = _range_shape(ndim, axis)
    min_vals = ops.reshape(ops.stop_gradient(ops.cast(min_vals, "float32")), shape)
    max_vals = ops.reshape(ops.stop_gradient(ops.cast(max_vals, "float32")), shape)
    nudged_min, nudged_max, scale = nudged_range(min_vals, max_vals, num_bits, narrow_range)
    x32 = ops.cast(x, "float32")
    clamped = ops.minimum(ops.maximum(ops.stop_gradient(x32), nudged_min), nudged_max)
    # TensorFlow multiplies by the reciprocal of the nudged scale.
    inv_scale = 1.0 / scale
    quantized = ops.floor((clamped - nudged_min) * inv_scale + 0.5) * scale + nudged_min
    # Straight-through estimator: the value is `quantized`, the gradient the
    # identity inside the nudged range (ends included) and zero outside.
    inside = ops.cast(
        ops.logical_and(ops.greater_equal(x32, nudged_min), ops.less_equal(x32, nudged_max)),
        "float32",
    )
    outputs = ops.stop_gradient(quantized) + (x32 - ops.stop_gradient(x32)) * inside
    return ops.cast(outputs, dtype)


def _fake_quant_tensorflow(x, min_vals, max_vals, num_bits, narrow_range, axis):
    import tensorflow as tf

    dtype = x.dtype
    x = tf.cast(x, "float32")
    min_vals = tf.stop_gradient(tf.cast(min_vals, "float32"))
    max_vals = tf.stop_gradient(tf.cast(max_vals, "float32"))
    if axis is None:
        outputs = tf.quantization.fake_quant_with_min_max_vars(
            x, tf.reshape(min_vals, ()), tf.reshape(max_vals, ()),
            num_bits=num_bits, narrow_range=narrow_range,
        )
        return tf.cast(outputs, dtype)
    # TensorFlow's per-channel op quantizes the last axis only.
    last = len(x.shape) - 1
    perm = list(range(last + 1))
    perm[axis], perm[last] = last, axis
    outputs = tf.quantization.fake_quant_with_min_max_vars_per_channel(
        tf.transpose(x, perm) if axis != last else x,
        tf.reshape(min_vals, (-1,)), tf.reshape(max_vals, (-1,)),
        num_bits=num_bits, narrow_range=narrow_range,
    )
    if axis != last:
        outputs = tf.transpose(outputs, perm)
    return tf.cast(outputs, dtype)


def fake_quant(
    x, min_vals, max_vals, num_bits: int = 8, narrow_range: bool = False, axis: int | None = None
):
    """Quantize `x` to `num_bits` integers in `[min_vals, max_vals]` and back.

    Per tensor (`axis=None`, scalar range) or per channel along `axis`. On
    TensorFlow this is TensorFlow's FakeQuant op (what the TFLite converter
    turns into int8 kernels); elsewhere `fake_quant_ops`, which computes the
    same values and straight-through gradients.

    Example:

    ```python
    fake_quant(np.array([0.1, 0.5]), -1.0, 1.0)  # 256 levels over [-1, 1]
    ```
    """
    x = ops.convert_to_tensor(x)
    if axis is not None:
        axis = axis % len(x.shape)
    if keras.backend.backend() == "tensorflow":
        return _fake_quant_tensorflow(x, min_vals, max_vals, int(num_bits), narrow_range, axis)
    return fake_quant_ops(x, min_vals, max_vals, int(num_bits), narrow_range, axis)
