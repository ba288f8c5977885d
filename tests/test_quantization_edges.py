"""Quantizers and BN folding at their edges. References: TensorFlow's own
FakeQuant ops (TensorFlow backend), NumPy, and the unfolded model itself:
bit widths other than 8, depthwise channel axes, all-zero tensors, the
moving-average range's first and later updates, BNs without scale / center,
layers without bias, and BNs that must not fold."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from kd_keras.quantization import (
    MovingAverageQuantizer,
    PerChannelSymmetricQuantizer,
    QuantizeLayer,
    fake_quant,
    fold_batch_norms,
)
from kd_keras.quantization.quantizers import Quantizer, deserialize_quantizer

ATOL = 1e-5
TF_ONLY = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="compares with TensorFlow's FakeQuant ops"
)


def to_np(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


# ---------------------------------------------------------------- quantizers


@TF_ONLY
@pytest.mark.parametrize("num_bits,narrow", [(8, False), (8, True), (4, False), (2, True)])
def test_fake_quant_equals_tensorflow_op(num_bits, narrow):
    import tensorflow as tf

    x = np.random.default_rng(num_bits).uniform(-2.0, 3.0, size=(64,)).astype("float32")
    got = to_np(fake_quant(x, -1.3, 2.1, num_bits=num_bits, narrow_range=narrow))
    want = tf.quantization.fake_quant_with_min_max_vars(
        x, -1.3, 2.1, num_bits=num_bits, narrow_range=narrow
    ).numpy()
    np.testing.assert_allclose(got, want, atol=ATOL)


@TF_ONLY
@pytest.mark.parametrize("axis,num_bits", [(-1, 8), (-2, 8), (2, 4), (0, 8)])
def test_per_channel_quantizer_equals_tensorflow_per_channel_op(axis, num_bits):
    import tensorflow as tf

    rng = np.random.default_rng(7)
    kernel = rng.normal(size=(3, 3, 4, 2)).astype("float32")
    channel = axis % 4
    index = [slice(None)] * 4
    index[channel] = 1
    kernel[tuple(index)] = 0.0  # an all-zero (pruned) channel: range [-1, 1]
    q = PerChannelSymmetricQuantizer(num_bits=num_bits, axis=axis)
    got = to_np(q(kernel))
    moved = np.moveaxis(kernel, channel, -1)
    max_abs = np.abs(moved).reshape(-1, moved.shape[-1]).max(0)
    max_abs = np.where(max_abs > 0, max_abs, 1.0).astype("float32")
    want = tf.quantization.fake_quant_with_min_max_vars_per_channel(
        moved, -max_abs, max_abs, num_bits=num_bits, narrow_range=True
    ).numpy()
    np.testing.assert_allclose(got, np.moveaxis(want, -1, channel), atol=ATOL)
    lo, hi = q.ranges(kernel)
    np.testing.assert_allclose(to_np(hi), max_abs, rtol=1e-6)
    np.testing.assert_allclose(to_np(lo), -max_abs, rtol=1e-6)


def test_per_tensor_range_of_an_all_zero_tensor_is_minus_1_to_1():
    q = PerChannelSymmetricQuantizer(axis=None)
    lo, hi = q.ranges(np.zeros((3, 2), "float32"))
    assert float(to_np(lo)) == -1.0 and float(to_np(hi)) == 1.0
    np.testing.assert_array_equal(to_np(q(np.zeros((3, 2), "float32"))), np.zeros((3, 2)))


@pytest.mark.parametrize("num_bits", [2, 8])
def test_bit_widths_2_to_8_are_accepted(num_bits):
    assert PerChannelSymmetricQuantizer(num_bits=num_bits).num_bits == num_bits
    assert MovingAverageQuantizer(num_bits=num_bits).num_bits == num_bits


@pytest.mark.parametrize("num_bits", [1, 9, 8.0, "8"])
def test_other_bit_widths_are_refused(num_bits):
    for cls in (PerChannelSymmetricQuantizer, MovingAverageQuantizer):
        with pytest.raises(ValueError) as info:
            cls(num_bits=num_bits)
        assert str(info.value) == (
            f"num_bits must be an int in [2, 8] (TFLite runs int8 kernels), got {num_bits!r}."
        )


@pytest.mark.parametrize("decay", [1.0, -0.1, 1.5])
def test_ema_decay_outside_0_1_is_refused(decay):
    with pytest.raises(ValueError, match=rf"^ema_decay must be in \[0, 1\), got {decay!r}\.$"):
        MovingAverageQuantizer(ema_decay=decay)


def test_ema_decay_0_follows_the_last_batch_and_configs_round_trip():
    q = MovingAverageQuantizer(ema_decay=0)
    assert q.ema_decay == 0.0 and isinstance(q.ema_decay, float)
    assert q.get_config() == {"num_bits": 8, "ema_decay": 0.0}
    assert MovingAverageQuantizer().get_config() == {"num_bits": 8, "ema_decay": 0.999}
    assert PerChannelSymmetricQuantizer().get_config() == {"num_bits": 8, "axis": -1}
    layer = QuantizeLayer(q)
    layer.build((None, 3))
    layer(np.array([[1.0, 2.0, -1.0]], "float32"), training=True)
    layer(np.array([[0.5, 0.25, 0.0]], "float32"), training=True)
    weights = {w.name: float(to_np(w)) for w in layer.weights}
    assert weights["range_min"] == 0.0 and weights["range_max"] == pytest.approx(0.5)


def test_moving_average_range_starts_at_tfmot_default_and_inference_uses_it():
    layer = QuantizeLayer(MovingAverageQuantizer())
    layer.build((None, 4))
    weights = {w.name: w for w in layer.weights}
    assert sorted(weights) == ["range_initialized", "range_max", "range_min"]
    assert [float(to_np(weights[k])) for k in sorted(weights)] == [0.0, 6.0, -6.0]
    assert all(not w.trainable for w in layer.weights)
    x = np.array([[-7.0, -1.0, 0.3, 5.0]], "float32")
    np.testing.assert_allclose(
        to_np(layer(x, training=False)), to_np(fake_quant(x, -6.0, 6.0)), atol=ATOL
    )
    assert float(to_np(weights["range_initialized"])) == 0.0


def test_moving_average_of_an_all_zero_batch_keeps_a_non_empty_range():
    layer = QuantizeLayer(MovingAverageQuantizer(ema_decay=0.5))
    layer.build((None, 2))
    out = to_np(layer(np.zeros((2, 2), "float32"), training=True))
    weights = {w.name: float(to_np(w)) for w in layer.weights}
    assert weights["range_min"] == 0.0
    assert weights["range_max"] == pytest.approx(1e-6, rel=1e-3)
    np.testing.assert_array_equal(out, np.zeros((2, 2)))
    # The second batch moves the range halfway (decay 0.5) towards [-2, 4].
    layer(np.array([[-2.0, 4.0]], "float32"), training=True)
    weights = {w.name: float(to_np(w)) for w in layer.weights}
    assert weights["range_min"] == pytest.approx(-1.0, abs=1e-6)
    assert weights["range_max"] == pytest.approx(0.5 * 1e-6 + 2.0, abs=1e-6)


def test_quantizer_base_and_deserialization():
    base = Quantizer()
    assert base.build((2,), "x", None) == {} and base.get_config() == {}
    with pytest.raises(NotImplementedError):
        base(np.zeros(2))
    assert Quantizer.from_config({}) == Quantizer()
    assert PerChannelSymmetricQuantizer(axis=-2) != PerChannelSymmetricQuantizer(axis=-1)
    assert PerChannelSymmetricQuantizer() != MovingAverageQuantizer()
    assert deserialize_quantizer(None) is None
    q = MovingAverageQuantizer(ema_decay=0.9)
    assert deserialize_quantizer(q) is q
    again = deserialize_quantizer(keras.saving.serialize_keras_object(q))
    assert again == q and again is not q


def np_fake_quant(x, lo, hi, num_bits=8):
    """TensorFlow's FakeQuantWithMinMaxVars (wide range) in float64: the
    range nudged so that 0 is on the grid, then round half up."""
    x = np.asarray(x, np.float64)
    q_max = 2**num_bits - 1
    scale = (hi - lo) / q_max
    zero_point = np.clip(np.floor(-lo / scale + 0.5), 0, q_max)
    nudged_lo, nudged_hi = -zero_point * scale, (q_max - zero_point) * scale
    steps = np.floor((np.clip(x, nudged_lo, nudged_hi) - nudged_lo) / scale + 0.5)
    return steps * scale + nudged_lo


def test_moving_average_quantizer_called_without_training_is_inference():
    """`training` defaults to False: the stored range quantizes, unchanged."""
    q, host = MovingAverageQuantizer(), keras.layers.Layer()
    weights = q.build((None, 4), "act", host)
    x = np.array([[-7.0, -1.0, 0.3, 5.0]], "float32")
    np.testing.assert_allclose(to_np(q(x, weights=weights)), np_fake_quant(x, -6.0, 6.0), atol=ATOL)
    assert [float(to_np(weights[k])) for k in ("min", "max", "initialized")] == [-6.0, 6.0, 0.0]


def test_moving_average_quantizer_with_4_bits_matches_numpy_in_training_and_inference():
    q, host = MovingAverageQuantizer(num_bits=4), keras.layers.Layer()
    weights = q.build((None, 32), "act", host)
    x = np.random.default_rng(3).uniform(0.0, 3.0, size=(2, 32)).astype("float32")
    x[0, 0], x[1, 0] = 0.0, 3.0  # the batch range is [0, 3]: 15 steps of 0.2
    want = np_fake_quant(x, 0.0, 3.0, num_bits=4)
    np.testing.assert_allclose(to_np(q(x, training=True, weights=weights)), want, atol=ATOL)
    np.testing.assert_allclose(to_np(q(x, training=False, weights=weights)), want, atol=ATOL)
    assert len(np.unique(np.round(want / 0.2))) > 8  # more than a few levels were checked


def test_moving_average_range_stays_float32_under_mixed_precision():
    """Under mixed_float16 the layer computes in float16, but the range
    variables are read and updated in float32 (no autocast): a 0.999 moving
    average moves them by less than float16 can resolve near 2.5."""
    batches = [[-2.5, 0.5, 3.75, 1.0], [-1.0, 0.5, 2.0, 1.0], [-3.0, 0.5, 1.0, 1.0]]
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        layer = QuantizeLayer(MovingAverageQuantizer())
        layer.build((None, 4))
        for batch in batches:
            layer(np.array([batch], "float32"), training=True)
        out = layer(np.array([batches[1]], "float32"), training=False)
    finally:
        keras.config.set_dtype_policy(previous)
    lo, hi = min(batches[0]), max(batches[0])
    for batch in batches[1:]:
        lo, hi = 0.999 * lo + 0.001 * min(batch), 0.999 * hi + 0.001 * max(batch)
    weights = {w.name: w for w in layer.weights}
    assert all(keras.backend.standardize_dtype(w.dtype) == "float32" for w in layer.weights)
    assert float(to_np(weights["range_min"])) == pytest.approx(lo, rel=1e-6)
    assert float(to_np(weights["range_max"])) == pytest.approx(hi, rel=1e-6)
    want = np_fake_quant([batches[1]], lo, hi)
    np.testing.assert_allclose(to_np(out).astype("float64"), want, atol=2e-3)


# ---------------------------------------------------------------- BN folding


def randomize_bn(model, seed=0):
    """BN statistics and affine parameters far from their initial values."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            for w in layer.weights:
                shape = tuple(w.shape)
                if "variance" in w.name:
                    w.assign(rng.uniform(0.5, 2.0, shape).astype("float32"))
                else:
                    w.assign(rng.normal(size=shape).astype("float32"))
    return model


def assert_folded_equals_model(model, x):
    folded = fold_batch_norms(model)
    np.testing.assert_allclose(
        to_np(folded(x, training=False)), to_np(model(x, training=False)), atol=1e-4, rtol=1e-4
    )
    return folded


@pytest.mark.parametrize("scale,center", [(False, True), (True, False), (False, False)])
def test_folding_a_bn_without_scale_or_center(scale, center):
    inputs = keras.Input((6,))
    h = keras.layers.Dense(5, use_bias=False, name="d")(inputs)
    h = keras.layers.BatchNormalization(scale=scale, center=center, epsilon=0.3, name="bn")(h)
    model = randomize_bn(keras.Model(inputs, h))
    x = np.random.default_rng(1).normal(size=(4, 6)).astype("float32")
    folded = assert_folded_equals_model(model, x)
    bn = model.get_layer("bn")
    gamma = to_np(bn.gamma) if scale else 1.0
    beta = to_np(bn.beta) if center else 0.0
    s = gamma / np.sqrt(to_np(bn.moving_variance) + 0.3)
    d = folded.get_layer("d")
    np.testing.assert_allclose(to_np(d.kernel), to_np(model.get_layer("d").kernel) * s, atol=1e-5)
    np.testing.assert_allclose(to_np(d.bias), beta - to_np(bn.moving_mean) * s, atol=1e-5)
    assert type(folded.get_layer("bn")) is keras.layers.Identity


def test_folding_into_a_depthwise_conv_scales_its_channel_axis():
    inputs = keras.Input((6, 6, 3))
    h = keras.layers.DepthwiseConv2D(3, depth_multiplier=1, name="dw")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    model = randomize_bn(keras.Model(inputs, h), seed=2)
    x = np.random.default_rng(3).normal(size=(2, 6, 6, 3)).astype("float32")
    folded = assert_folded_equals_model(model, x)
    assert type(folded.get_layer("bn")) is keras.layers.Identity


def test_bn_on_a_non_channel_axis_or_after_an_activation_is_kept():
    inputs = keras.Input((5, 4))
    h = keras.layers.Dense(3, name="d")(inputs)
    h = keras.layers.BatchNormalization(axis=1, name="bn_time")(h)  # normalizes time, not units
    model = randomize_bn(keras.Model(inputs, h), seed=4)
    x = np.random.default_rng(5).normal(size=(2, 5, 4)).astype("float32")
    folded = assert_folded_equals_model(model, x)
    assert type(folded.get_layer("bn_time")) is keras.layers.BatchNormalization

    inputs = keras.Input((5, 4))
    h = keras.layers.Dense(3, activation="relu", name="d")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    model = randomize_bn(keras.Model(inputs, h), seed=6)
    folded = assert_folded_equals_model(model, x)
    assert type(folded.get_layer("bn")) is keras.layers.BatchNormalization


@pytest.mark.parametrize("axis", [2, -1])
def test_bn_on_the_last_axis_folds_however_the_axis_is_written(axis):
    inputs = keras.Input((5, 4))
    h = keras.layers.Dense(3, name="d")(inputs)
    h = keras.layers.BatchNormalization(axis=axis, name="bn")(h)
    model = randomize_bn(keras.Model(inputs, h), seed=7)
    x = np.random.default_rng(8).normal(size=(2, 5, 4)).astype("float32")
    folded = assert_folded_equals_model(model, x)
    assert type(folded.get_layer("bn")) is keras.layers.Identity


def test_a_bn_subclass_is_not_folded():
    class MyBN(keras.layers.BatchNormalization):
        pass

    inputs = keras.Input((4,))
    h = keras.layers.Dense(3, name="d")(inputs)
    h = MyBN(name="bn")(h)
    model = randomize_bn(keras.Model(inputs, h), seed=9)
    folded = fold_batch_norms(model)
    assert type(folded.get_layer("bn")) is MyBN


def test_folding_keeps_the_kernel_layers_own_bias():
    """A conv with its own (non-zero) bias before the BN: the folded bias is
    `beta + (bias - mean) * gamma / sqrt(var + eps)`, in float64 NumPy."""
    inputs = keras.Input((6, 6, 2))
    h = keras.layers.Conv2D(3, 3, bias_initializer="random_normal", name="conv")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    model = randomize_bn(keras.Model(inputs, h), seed=10)
    x = np.random.default_rng(11).normal(size=(2, 6, 6, 2)).astype("float32")
    folded = assert_folded_equals_model(model, x)
    conv, bn = model.get_layer("conv"), model.get_layer("bn")
    gamma, beta, mean, var = (to_np(w).astype("float64") for w in bn.weights)
    bias = to_np(conv.bias).astype("float64")
    assert np.abs(bias).min() > 0
    want = beta + (bias - mean) * gamma / np.sqrt(var + bn.epsilon)
    np.testing.assert_allclose(to_np(folded.get_layer("conv").bias), want, rtol=1e-6)


def test_a_bn_after_einsum_dense_is_kept_and_relu_is_not_fused():
    """Only BNs are folded (a ReLU stays a ReLU layer), and never into an
    EinsumDense, whose bias covers only its `bias_axes`."""
    inputs = keras.Input((4,))
    h = keras.layers.EinsumDense("ab,bc->ac", output_shape=3, bias_axes="c", name="ed")(inputs)
    h = keras.layers.BatchNormalization(name="bn_ed")(h)
    h = keras.layers.Dense(5, name="d")(h)
    h = keras.layers.BatchNormalization(name="bn_d")(h)
    h = keras.layers.ReLU(name="relu")(h)
    model = randomize_bn(keras.Model(inputs, h), seed=12)
    x = np.random.default_rng(13).normal(size=(3, 4)).astype("float32")
    folded = assert_folded_equals_model(model, x)
    assert type(folded.get_layer("bn_ed")) is keras.layers.BatchNormalization
    assert type(folded.get_layer("bn_d")) is keras.layers.Identity
    assert type(folded.get_layer("relu")) is keras.layers.ReLU
    assert folded.get_layer("d").get_config()["activation"] == "linear"


def test_folding_keeps_the_call_arguments_of_other_layers():
    """`use_causal_mask=True` given to an Attention layer after the folded
    BN is still passed to its copy."""
    inputs = keras.Input((5, 4))
    h = keras.layers.Dense(4, name="d")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.Attention(name="attention")([h, h], use_causal_mask=True)
    model = randomize_bn(keras.Model(inputs, h), seed=14)
    x = np.random.default_rng(15).normal(size=(2, 5, 4)).astype("float32")
    assert_folded_equals_model(model, x)


def test_fold_batch_norms_names_itself_for_a_subclassed_model():
    class Subclassed(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError) as info:
        fold_batch_norms(Subclassed(name="sub"))
    assert str(info.value) == (
        "fold_batch_norms rewrites Sequential and Functional models; 'sub' is a subclassed "
        "model (Subclassed). Rebuild it with the Functional API (keras.Model(inputs, outputs))."
    )


def test_folding_into_a_conv_transpose_without_bias():
    """Conv2DTranspose keeps its output channels on the kernel's axis -2: the
    folded bias has one entry per output channel (5), not per input (3)."""
    inputs = keras.Input((4, 4, 3))
    h = keras.layers.Conv2DTranspose(5, 3, use_bias=False, name="deconv")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    model = randomize_bn(keras.Model(inputs, h), seed=16)
    x = np.random.default_rng(17).normal(size=(2, 4, 4, 3)).astype("float32")
    folded = assert_folded_equals_model(model, x)
    assert type(folded.get_layer("bn")) is keras.layers.Identity
    assert folded.get_layer("deconv").bias.shape == (5,)
