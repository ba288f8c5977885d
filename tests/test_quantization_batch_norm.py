"""BatchNormalization folded into the kernel layer before it, trained with batch
statistics (`FoldedBatchNormWrapper`, `quantize_model(freeze_bn_delay=...)`).

References: the unmodified float layers (`Conv2D` / `DepthwiseConv2D` /
`Dense` then Keras's own `BatchNormalization(training=True)`), the float BN
trained on the same batches, the NumPy inference fold
(`batch_norm_folding.folded_weights`) with NumPy fake quantization, and the
model that folds the moving statistics once (`freeze_bn_delay=0`)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from kd_keras.quantization import (
    FoldedBatchNormWrapper,
    PerChannelSymmetricQuantizer,
    QuantizeWrapper,
    quantize_model,
)
from kd_keras.quantization.batch_norm_folding import folded_weights
from tests.test_quantization import np_fake_quant

BACKEND = keras.backend.backend()


def to_np(x):
    return keras.ops.convert_to_numpy(x)


def kernel_then_bn(kind: str, seed: int = 0, use_bias: bool = True, momentum: float = 0.9):
    """`(inputs, kernel layer, BN)`, built, with stale moving statistics
    (far from the batch's), random gamma / beta and a random bias."""
    keras.utils.set_random_seed(seed)
    if kind == "dense":
        inputs = keras.Input((6,))
        layer = keras.layers.Dense(5, use_bias=use_bias, name="k")
    elif kind == "depthwise":
        inputs = keras.Input((6, 6, 3))
        layer = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=use_bias, name="k")
    else:
        inputs = keras.Input((6, 6, 3))
        layer = keras.layers.Conv2D(5, 3, padding="same", use_bias=use_bias, name="k")
    bn = keras.layers.BatchNormalization(momentum=momentum, epsilon=0.01, name="bn")
    bn(layer(inputs))
    rng = np.random.default_rng(seed)
    if use_bias:
        layer.bias.assign(rng.normal(size=layer.bias.shape).astype("float32"))
    bn.gamma.assign(rng.uniform(0.5, 2.0, bn.gamma.shape).astype("float32"))
    bn.beta.assign(rng.normal(size=bn.beta.shape).astype("float32"))
    bn.moving_mean.assign(rng.normal(size=bn.moving_mean.shape).astype("float32"))
    bn.moving_variance.assign(rng.uniform(0.2, 3.0, bn.moving_variance.shape).astype("float32"))
    return inputs, layer, bn


def batches(inputs, n: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    shape = tuple(inputs.shape[1:])
    # Offset and scaled so the batch statistics differ from the moving ones.
    return [(rng.normal(size=(8, *shape)) * 2.0 + 0.5).astype("float32") for _ in range(n)]


def wrapper_for(layer, bn, weight_quantizer=None, freeze_bn_delay=None, activation=None):
    config = layer.get_config()
    if activation is not None:
        config["activation"] = activation
    clone = type(layer).from_config(config)
    bn_clone = type(bn).from_config(bn.get_config())
    wrapper = FoldedBatchNormWrapper(
        clone, bn_clone, weight_quantizer=weight_quantizer, freeze_bn_delay=freeze_bn_delay
    )
    wrapper.build((None, *layer.input.shape[1:]))
    clone.set_weights(layer.get_weights())
    bn_clone.set_weights(bn.get_weights())
    return wrapper


@pytest.mark.parametrize("kind", ["conv", "depthwise", "dense"])
@pytest.mark.parametrize("use_bias", [True, False])
def test_training_output_and_moving_statistics_equal_the_float_batch_norm(kind, use_bias):
    inputs, layer, bn = kernel_then_bn(kind, use_bias=use_bias)
    wrapper = wrapper_for(layer, bn, activation="relu")
    for x in batches(inputs, 4):
        want = np.maximum(to_np(bn(layer(x), training=True)), 0.0)  # updates bn's statistics
        got = to_np(wrapper(x, training=True))
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    # Four batches later: the moving statistics of the float BN, to float rounding.
    for ours, keras_bn in (
        (wrapper.batch_norm.moving_mean, bn.moving_mean),
        (wrapper.batch_norm.moving_variance, bn.moving_variance),
    ):
        np.testing.assert_allclose(to_np(ours), to_np(keras_bn), atol=1e-6, rtol=1e-6)
    assert int(to_np(wrapper.bn_step)) == 4


def test_int8_weights_keep_the_batch_statistics_of_the_float_layer():
    """With the weight quantizer on, the moving statistics still come from the
    float layer's output, and the output stays within the int8 weight error
    of BN(training=True)."""
    inputs, layer, bn = kernel_then_bn("conv", seed=3)
    wrapper = wrapper_for(layer, bn, weight_quantizer=PerChannelSymmetricQuantizer(axis=-1))
    for x in batches(inputs, 3, seed=4):
        want = to_np(bn(layer(x), training=True))
        got = to_np(wrapper(x, training=True))
        assert np.abs(got - want).max() < 0.02 * np.abs(want).max()
    np.testing.assert_allclose(
        to_np(wrapper.batch_norm.moving_mean), to_np(bn.moving_mean), atol=1e-6, rtol=1e-6
    )
    np.testing.assert_allclose(
        to_np(wrapper.batch_norm.moving_variance),
        to_np(bn.moving_variance),
        atol=1e-6,
        rtol=1e-6,
    )


@pytest.mark.parametrize("kind", ["conv", "depthwise"])
def test_after_freeze_bn_delay_training_runs_the_inference_fold(kind):
    inputs, layer, bn = kernel_then_bn(kind, seed=5)
    axis = -2 if kind == "depthwise" else -1
    wrapper = wrapper_for(
        layer, bn, weight_quantizer=PerChannelSymmetricQuantizer(axis=axis), freeze_bn_delay=2
    )
    xs = batches(inputs, 4, seed=6)
    for x in xs[:2]:
        wrapper(x, training=True)
    frozen_mean = to_np(wrapper.batch_norm.moving_mean).copy()
    frozen_variance = to_np(wrapper.batch_norm.moving_variance).copy()
    assert not np.allclose(frozen_mean, to_np(bn.moving_mean))  # the two steps moved them

    # Reference: NumPy fold of the (updated) moving statistics, NumPy fake quant.
    kernel, bias = folded_weights(wrapper.layer, wrapper.batch_norm)
    kernel = kernel.astype("float32")
    moved = np.moveaxis(kernel, axis, -1)
    max_abs = np.abs(moved).reshape(-1, moved.shape[-1]).max(axis=0)
    quantized = np.empty_like(moved)
    for c, m in enumerate(max_abs):
        quantized[..., c] = np_fake_quant(moved[..., c], -m, m, narrow_range=True)
    quantized = np.moveaxis(quantized, -1, axis)
    for x in xs[2:]:
        if kind == "depthwise":
            want = to_np(keras.ops.depthwise_conv(x, quantized, padding="same"))
        else:
            want = to_np(keras.ops.conv(x, quantized, padding="same"))
        want = want + bias.astype("float32")
        np.testing.assert_allclose(to_np(wrapper(x, training=True)), want, atol=1e-4, rtol=1e-5)
        np.testing.assert_allclose(to_np(wrapper(x, training=False)), want, atol=1e-4, rtol=1e-5)
    # Frozen: the moving statistics no longer move.
    np.testing.assert_array_equal(to_np(wrapper.batch_norm.moving_mean), frozen_mean)
    np.testing.assert_array_equal(to_np(wrapper.batch_norm.moving_variance), frozen_variance)


def conv_bn_relu_model(seed=0, momentum=0.999):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3), name="image")
    h = keras.layers.Conv2D(6, 3, padding="same", use_bias=False, name="conv")(inputs)
    h = keras.layers.BatchNormalization(momentum=momentum, name="bn")(h)
    h = keras.layers.ReLU(name="relu")(h)
    h = keras.layers.GlobalAveragePooling2D(name="pool")(h)
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(h))


def test_quantize_model_trains_like_the_float_model_where_the_moving_fold_does_not():
    """A BN whose moving statistics lag (never trained, momentum 0.999):
    the QAT model in training mode stays within int8 error of the float
    model in training mode; folding the moving statistics does not."""
    model = conv_bn_relu_model()
    x = (np.random.default_rng(0).normal(size=(16, 8, 8, 3)) * 3 + 2).astype("float32")
    want = to_np(model(x, training=True))
    batch_stats = quantize_model(model)
    moving_fold = quantize_model(model, freeze_bn_delay=0)
    assert isinstance(batch_stats.get_layer("conv"), FoldedBatchNormWrapper)
    assert type(moving_fold.get_layer("conv")) is QuantizeWrapper
    assert type(batch_stats.get_layer("bn")) is keras.layers.Identity
    error = np.abs(to_np(batch_stats(x, training=True)) - want).max()
    stale = np.abs(to_np(moving_fold(x, training=True)) - want).max()
    scale = np.abs(want).max()
    assert error < 0.05 * scale, (error, scale)
    assert stale > 0.5 * scale, (stale, scale)


def test_freeze_bn_delay_is_validated():
    model = conv_bn_relu_model()
    for bad in (-1, 1.5, "100", True):
        with pytest.raises(ValueError, match="freeze_bn_delay"):
            quantize_model(model, freeze_bn_delay=bad)


def test_non_trainable_batch_norm_is_folded_with_its_moving_statistics():
    model = conv_bn_relu_model()
    model.get_layer("bn").trainable = False  # Keras runs it with its moving statistics
    assert type(quantize_model(model).get_layer("conv")) is QuantizeWrapper


def test_fit_saves_and_loads_with_the_batch_norm_state(tmp_path):
    """A short QAT fit on the current backend (TensorFlow, JAX or torch): the
    moving statistics move, the step counter counts, the .keras file (safe
    mode) restores both, and the reloaded model computes the same outputs."""
    model = conv_bn_relu_model(momentum=0.9)
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(32, 8, 8, 3)) * 3 + 2).astype("float32")
    y = rng.integers(0, 3, size=32)
    qat = quantize_model(model, freeze_bn_delay=3)
    qat.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(True))
    history = qat.fit(x, y, batch_size=8, epochs=2, verbose=0)  # 8 steps: 3 batch, 5 frozen
    assert np.all(np.isfinite(history.history["loss"]))
    wrapper = qat.get_layer("conv")
    assert int(to_np(wrapper.bn_step)) == 8
    moved = to_np(wrapper.batch_norm.moving_mean)
    assert not np.allclose(moved, to_np(model.get_layer("bn").moving_mean))
    path = tmp_path / "qat.keras"
    qat.save(path)
    restored = keras.saving.load_model(path)
    again = restored.get_layer("conv")
    assert isinstance(again, FoldedBatchNormWrapper) and again.freeze_bn_delay == 3
    assert int(to_np(again.bn_step)) == 8
    np.testing.assert_array_equal(to_np(again.batch_norm.moving_mean), moved)
    np.testing.assert_allclose(
        to_np(restored(x, training=False)), to_np(qat(x, training=False)), atol=1e-6
    )


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TFLite conversion needs TensorFlow")
def test_converts_to_the_same_int8_file_as_the_moving_statistics_fold():
    """Before any batch update, the batch-statistics model and the one folded
    once with the moving statistics are the same int8 model: same ops, same
    tensor types, same outputs."""
    from kd_keras.quantization import convert, tflite_ops, tflite_predict, tflite_tensor_types

    model = conv_bn_relu_model()
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(rng.normal(size=6).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, 6).astype("float32"))
    x = (rng.normal(size=(16, 8, 8, 3)) + 1).astype("float32")
    files = []
    for delay in (0, None):
        qat = quantize_model(model, freeze_bn_delay=delay)
        # Activation ranges from an inference-fold pass: in training mode the
        # batch-statistics model would update its BN and see other values.
        for layer in qat.layers:
            for v in layer.non_trainable_weights:
                if v.name.endswith("_min"):
                    v.assign(-4.0)
                elif v.name.endswith("_max"):
                    v.assign(4.0)
                elif v.name.endswith("_initialized"):
                    v.assign(1.0)
        files.append(convert(qat, mode="qat", int8_io=True))
    moving, batch = files
    assert [op["op"] for op in tflite_ops(batch)] == [op["op"] for op in tflite_ops(moving)]
    assert "float32" not in set(tflite_tensor_types(batch).values())
    np.testing.assert_array_equal(tflite_predict(batch, x), tflite_predict(moving, x))


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="converts with TensorFlow")
def test_a_keras_applications_family_with_the_batch_statistics_fold_is_fully_int8():
    """The default fold on a whole network (52 folded Conv/BN pairs of
    MobileNetV2, depthwise included) converts to a file with no float op;
    the family sweep checks parity on the inference fold."""
    from kd_keras.quantization import FoldedBatchNormWrapper, convert
    from tests.test_quantization_families import float_ops

    model = keras.applications.MobileNetV2(
        weights=None, alpha=0.35, input_shape=(32, 32, 3), classes=4
    )
    qat = quantize_model(model)
    folded = [layer for layer in qat.layers if isinstance(layer, FoldedBatchNormWrapper)]
    assert len(folded) == 52
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, size=(4, 32, 32, 3)).astype("float32")
    qat.compile("adam", "sparse_categorical_crossentropy", run_eagerly=True)
    qat.fit(x, rng.integers(0, 4, size=4), batch_size=2, epochs=1, verbose=0)
    assert all(int(keras.ops.convert_to_numpy(w.bn_step)) == 2 for w in folded[:1])
    assert not float_ops(convert(qat, mode="qat", int8_io=True))
