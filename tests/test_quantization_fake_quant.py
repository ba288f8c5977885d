"""One fake quantization for every backend: `fake_quant_ops` (keras.ops) equals
TensorFlow's FakeQuantWithMinMaxVars(PerChannel) in values and gradients on
TensorFlow, and a NumPy reference of that op on JAX and torch; a depthwise
QAT model trains per channel on every backend; a QAT model trained under JAX
reloads under TensorFlow and converts to a fully int8 .tflite."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from kd_keras.quantization import QuantizeWrapper, fake_quant, fake_quant_ops, quantize_model

BACKEND = keras.backend.backend()


# ---------------------------------------------------------------- reference


def np_nudge(lo, hi, num_bits=8, narrow_range=False):
    """TensorFlow's Nudge() (fake_quant_ops_functor.h) in float32."""
    lo, hi = np.float32(lo), np.float32(hi)
    quant_min = np.float32(1 if narrow_range else 0)
    quant_max = np.float32(2**num_bits - 1)
    scale = (hi - lo) / (quant_max - quant_min)
    zero_point = np.clip(quant_min - lo / scale, quant_min, quant_max)
    zero_point = np.floor(zero_point + np.float32(0.5))
    return (quant_min - zero_point) * scale, (quant_max - zero_point) * scale, scale


def np_fake_quant(x, lo, hi, num_bits=8, narrow_range=False, axis=None):
    """Values and d(sum(out * upstream))/dx of TensorFlow's FakeQuant, per channel."""
    x = np.asarray(x, "float32")
    if axis is None:
        lo, hi = np.reshape(lo, (1,)), np.reshape(hi, (1,))
        moved = x[..., None]
    else:
        moved = np.moveaxis(x, axis, -1)
    out, grad = np.empty_like(moved), np.empty_like(moved)
    for c in range(moved.shape[-1]):
        n_lo, n_hi, scale = np_nudge(lo[c], hi[c], num_bits, narrow_range)
        v = moved[..., c]
        clamped = np.clip(v, n_lo, n_hi)
        steps = np.floor((clamped - n_lo) * (np.float32(1) / scale) + np.float32(0.5))
        out[..., c] = steps * scale + n_lo
        grad[..., c] = ((v >= n_lo) & (v <= n_hi)).astype("float32")
    if axis is None:
        return out[..., 0], grad[..., 0]
    return np.moveaxis(out, -1, axis), np.moveaxis(grad, -1, axis)


def value_and_grad(fn, x, upstream):
    """`fn(x)` and the gradient of `sum(fn(x) * upstream)` on the current backend."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            y = fn(xt)
            loss = tf.reduce_sum(y * upstream)
        return y.numpy(), tape.gradient(loss, xt).numpy()
    if BACKEND == "jax":
        import jax

        y = np.asarray(fn(x))
        g = jax.grad(lambda v: (fn(v) * upstream).sum())(x)
        return y, np.asarray(g)
    if BACKEND == "torch":
        import torch

        xt = torch.tensor(x, requires_grad=True)
        y = fn(xt)
        (y * torch.tensor(upstream)).sum().backward()
        return y.detach().cpu().numpy(), xt.grad.cpu().numpy()
    pytest.skip(f"no gradient helper for backend {BACKEND}")


CASES = [
    # (shape, axis, num_bits, narrow_range)
    ((4, 50), None, 8, False),
    ((4, 50), None, 8, True),
    ((4, 50), None, 4, False),
    ((3, 3, 5, 6), -1, 8, True),  # Conv2D kernel
    ((3, 3, 6, 1), 2, 8, True),  # DepthwiseConv2D kernel: channels on axis -2
    ((7, 4, 3), 0, 8, False),  # asymmetric, leading axis
]


def ranges_for(shape, axis, rng):
    n = 1 if axis is None else shape[axis]
    # Ranges whose zero point is not an integer (TF nudges them), one that is
    # all-positive and one all-negative (the zero point clamps).
    lo = rng.uniform(-2.0, -0.1, size=n).astype("float32")
    hi = rng.uniform(0.1, 2.0, size=n).astype("float32")
    if n > 2:
        lo[0], hi[0] = 0.3, 1.7
        lo[1], hi[1] = -1.9, -0.4
    return (lo[0], hi[0]) if axis is None else (lo, hi)


def inputs_for(shape, lo, hi, rng):
    x = rng.uniform(-2.5, 2.5, size=shape).astype("float32")
    # Some values exactly on the range ends and on zero: the gradient mask
    # and the nudged zero point are decided there.
    flat = x.reshape(-1)
    flat[:3] = [np.min(lo), np.max(hi), 0.0]
    return x


@pytest.mark.parametrize("shape,axis,num_bits,narrow", CASES)
def test_fake_quant_matches_numpy_values_and_straight_through_gradient(
    shape, axis, num_bits, narrow
):
    rng = np.random.default_rng(sum(shape))
    lo, hi = ranges_for(shape, axis, rng)
    x = inputs_for(shape, lo, hi, rng)
    upstream = rng.normal(size=shape).astype("float32")
    want, want_mask = np_fake_quant(x, lo, hi, num_bits, narrow, axis)
    for fn in (fake_quant, fake_quant_ops):
        got, grad = value_and_grad(
            lambda v, fn=fn: fn(v, lo, hi, num_bits=num_bits, narrow_range=narrow, axis=axis),
            x,
            upstream,
        )
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
        np.testing.assert_allclose(grad, upstream * want_mask, rtol=0, atol=0)
    assert 0 < want_mask.mean() < 1  # both sides of the mask are exercised
    assert len(np.unique(want)) <= 2**num_bits * (1 if axis is None else shape[axis])


@pytest.mark.skipif(BACKEND != "tensorflow", reason="compares with TensorFlow's own op")
@pytest.mark.parametrize("shape,axis,num_bits,narrow", CASES)
def test_fake_quant_ops_equals_tensorflow_fake_quant_op(shape, axis, num_bits, narrow):
    import tensorflow as tf

    rng = np.random.default_rng(7 + sum(shape))
    lo, hi = ranges_for(shape, axis, rng)
    x = tf.constant(inputs_for(shape, lo, hi, rng))
    upstream = tf.constant(rng.normal(size=shape).astype("float32"))

    def tf_op(v):
        if axis is None:
            return tf.quantization.fake_quant_with_min_max_vars(
                v, lo, hi, num_bits=num_bits, narrow_range=narrow
            )
        moved = tf.experimental.numpy.moveaxis(v, axis, -1)
        out = tf.quantization.fake_quant_with_min_max_vars_per_channel(
            moved, lo, hi, num_bits=num_bits, narrow_range=narrow
        )
        return tf.experimental.numpy.moveaxis(out, -1, axis)

    def ours(v):
        return fake_quant_ops(v, lo, hi, num_bits=num_bits, narrow_range=narrow, axis=axis)

    results = []
    for fn in (tf_op, ours):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fn(x)
            loss = tf.reduce_sum(y * upstream)
        results.append((y.numpy(), tape.gradient(loss, x).numpy()))
    (tf_y, tf_g), (our_y, our_g) = results
    np.testing.assert_allclose(our_y, tf_y, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(our_g, tf_g)


def depthwise_model():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(6.0, name="relu")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="depthwise")(x)
    x = keras.layers.ReLU(name="relu_dw")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(3, name="logits")(x)
    return keras.Model(inputs, outputs)


def test_depthwise_qat_trains_per_channel_on_every_backend():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 3, size=16)
    qat = quantize_model(depthwise_model())
    qat.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = qat.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    wrapper = qat.get_layer("depthwise")
    assert isinstance(wrapper, QuantizeWrapper)
    kernel = keras.ops.convert_to_numpy(wrapper.layer.kernel)  # (3, 3, 4, 1)
    max_abs = np.abs(kernel).max(axis=(0, 1, 3))
    want, _ = np_fake_quant(kernel, -max_abs, max_abs, narrow_range=True, axis=2)
    got = keras.ops.convert_to_numpy(wrapper.quantized_kernel())
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    # Each channel has its own grid: at most 255 levels per channel, and the
    # channels' scales differ (a per-tensor scale would share one grid).
    scales = max_abs / 127.0
    assert len(set(np.round(scales, 8))) == 4
    for c in range(4):
        steps = got[:, :, c, 0] / scales[c]
        np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)


TRAIN_UNDER_JAX = textwrap.dedent(
    """
    import sys
    import keras
    import numpy as np
    from tests.test_quantization_fake_quant import depthwise_model
    from kd_keras.quantization import quantize_model

    assert keras.backend.backend() == "jax"
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 3, size=32)
    qat = quantize_model(depthwise_model())
    qat.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qat.fit(x, y, batch_size=8, epochs=2, verbose=0)
    qat.save(sys.argv[1])
    np.save(sys.argv[2], x[:8])
    np.save(sys.argv[3], keras.ops.convert_to_numpy(qat(x[:8], training=False)))
    """
)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="converts under TensorFlow")
def test_qat_model_trained_under_jax_reloads_and_converts_to_int8(tmp_path):
    pytest.importorskip("jax")
    from kd_keras.quantization import convert, tflite_ops, tflite_tensor_types

    path, x_path, y_path = tmp_path / "qat.keras", tmp_path / "x.npy", tmp_path / "y.npy"
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-c", TRAIN_UNDER_JAX, str(path), str(x_path), str(y_path)],
        env=env, cwd=root, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    qat = keras.saving.load_model(path)  # safe_mode on
    x, y_jax = np.load(x_path), np.load(y_path)
    y_tf = keras.ops.convert_to_numpy(qat(x, training=False))
    # Same weights, same ranges, same fake-quant formula: same outputs.
    np.testing.assert_allclose(y_tf, y_jax, atol=1e-4)
    tflite = convert(qat, mode="qat", int8_io=True)
    assert "float32" not in set(tflite_tensor_types(tflite).values())
    names = [op["op"] for op in tflite_ops(tflite)]
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"} <= set(names), names
    assert "DEQUANTIZE" not in names and "QUANTIZE" not in names, names
