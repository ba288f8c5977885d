"""QAT rules for the layer patterns of Xception / NASNet (SeparableConv2D),
InceptionV3 / DenseNet (pools and concatenations under TFLite's same-scale
constraints) and InceptionResNetV2 (its `CustomScaleLayer`).

References: the unmodified float model (the lowering computes the same
function), the TFLite converter's own full-int8 post-training quantization
of the same float model (which compute ops the int8 file has), the Keras
QAT model's predictions (parity of the int8 file), and the scales stored in
the `.tflite` itself.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras.src.applications.inception_resnet_v2 import CustomScaleLayer

from kd_keras.quantization import convert, quantize_model, tflite_ops, tflite_predict
from kd_keras.quantization.decompose import decompose_layers as lower_composite_layers
from kd_keras.runtime import litert_interpreter

L = keras.layers
tf_only = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="TFLite conversion needs TensorFlow"
)
COMPUTE_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"}


def randomize_batch_norms(model, seed=0):
    """Moving statistics away from (0, 1), so folding them is visible."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            shape = layer.moving_mean.shape
            layer.moving_mean.assign(rng.normal(0, 0.5, shape))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, shape))
            layer.gamma.assign(rng.uniform(0.5, 1.5, shape))
            layer.beta.assign(rng.normal(0, 0.2, shape))
    return model


def separable_block():
    """Xception's middle flow: ReLU -> SeparableConv2D -> BN, a residual
    1x1 conv with BN, MaxPool, Add; NASNet's strided, dilated variants."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3), name="image")
    x = L.Conv2D(8, 3, strides=2, use_bias=False, name="stem")(inputs)
    x = L.Activation("relu", name="stem_relu")(L.BatchNormalization(name="stem_bn")(x))
    residual = L.BatchNormalization(name="res_bn")(
        L.Conv2D(16, 1, strides=2, padding="same", use_bias=False, name="res")(x)
    )
    y = L.SeparableConv2D(16, 3, padding="same", use_bias=False, name="sep1")(x)
    y = L.Activation("relu", name="sep1_relu")(L.BatchNormalization(name="sep1_bn")(y))
    y = L.SeparableConv2D(16, 3, padding="same", use_bias=False, name="sep2")(y)
    y = L.BatchNormalization(name="sep2_bn")(y)
    y = L.MaxPooling2D(3, strides=2, padding="same", name="pool")(y)
    x = L.Add(name="add")([y, residual])
    x = L.Activation("relu", name="pre_relu")(x)
    x = L.SeparableConv2D(12, 3, strides=2, padding="same", name="sep3")(x)  # biased, strided
    x = L.SeparableConv2D(12, 3, dilation_rate=2, padding="same", activation="relu", name="sep4")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inputs, L.Dense(4, name="logits")(x))
    return randomize_batch_norms(model)


def inception_dense_block():
    """InceptionV3's mixed block (a max pool fanning out to 1x1 / 3x3 convs
    and to a 3x3 average pool that feeds a conv, then a concatenation) and
    DenseNet's transition and dense layer (BN -> ReLU -> conv -> average
    pool, whose output feeds both a pre-activation BN and a concatenation)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3), name="image")
    x = L.Conv2D(8, 3, use_bias=False, name="stem")(inputs)
    x = L.Activation("relu", name="stem_relu")(L.BatchNormalization(name="stem_bn")(x))
    x = L.MaxPooling2D(3, strides=2, name="stem_pool")(x)
    b1 = L.Conv2D(4, 1, activation="relu", name="b1x1")(x)
    b3 = L.Conv2D(4, 3, padding="same", activation="relu", name="b3x3")(x)
    bp = L.AveragePooling2D(3, strides=1, padding="same", name="branch_pool")(x)
    bp = L.Conv2D(4, 1, activation="relu", name="bpool_conv")(bp)
    x = L.Concatenate(name="mixed0")([b1, b3, bp])
    x = L.Activation("relu", name="pool1_relu")(L.BatchNormalization(name="pool1_bn")(x))
    x = L.Conv2D(6, 1, use_bias=False, name="pool1_conv")(x)
    x = L.AveragePooling2D(2, strides=2, name="pool1_pool")(x)
    h = L.Activation("relu", name="conv2_relu")(L.BatchNormalization(name="conv2_bn")(x))
    h = L.Conv2D(4, 3, padding="same", use_bias=False, name="conv2_conv")(h)
    x = L.Concatenate(name="conv2_concat")([x, h])
    x = L.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inputs, L.Dense(4, name="logits")(x))
    return randomize_batch_norms(model)


def scale_sum_block():
    """InceptionResNetV2's residual unit: `x + scale * up` with `up` a
    biased 1x1 conv, then ReLU."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3), name="image")
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="stem")(inputs)
    b0 = L.Conv2D(4, 1, activation="relu", name="branch0")(x)
    b1 = L.Conv2D(4, 3, padding="same", activation="relu", name="branch1")(x)
    mixed = L.Concatenate(name="block_mixed")([b0, b1])
    up = L.Conv2D(8, 1, name="block_conv")(mixed)
    x = CustomScaleLayer(0.17, name="block")([x, up])
    x = L.Activation("relu", name="block_ac")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, L.Dense(4, name="logits")(x))


def images(model, n=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, (n, *model.input_shape[1:])).astype("float32")


def test_lowering_computes_the_unmodified_models_function():
    for model in (separable_block(), scale_sum_block()):
        x = images(model, 4)
        lowered = lower_composite_layers(model)
        assert lowered is not model
        expected = keras.ops.convert_to_numpy(model(x))
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(lowered(x)), expected, rtol=1e-5, atol=1e-5
        )
    kinds = {layer.name: type(layer).__name__ for layer in lower_composite_layers(model).layers}
    assert kinds["block"] == "Add"
    lowered = lower_composite_layers(separable_block())
    kinds = {layer.name: type(layer).__name__ for layer in lowered.layers}
    for name in ("sep1", "sep2", "sep3", "sep4"):
        assert kinds[name] == "Conv2D" and kinds[f"{name}_depthwise"] == "DepthwiseConv2D"
    assert lowered.get_layer("sep4").activation.__name__ == "relu"
    assert not lowered.get_layer("sep1_depthwise").use_bias
    assert lowered.get_layer("sep4_depthwise").dilation_rate == (2, 2)
    assert lowered.get_layer("sep3_depthwise").strides == (2, 2)
    assert lowered.get_layer("sep3").strides == (1, 1)
    plain = keras.Model(lowered.inputs, lowered.outputs)
    assert lower_composite_layers(plain) is plain  # nothing left to lower


def test_skipped_separable_conv_stays_whole_and_float():
    model = separable_block()
    qat = quantize_model(model, skip_layers=["sep2"])
    names = {layer.name: type(layer).__name__ for layer in qat.layers}
    assert names["sep2"] == "SeparableConv2D" and "sep2_depthwise" not in names
    # The pointwise half absorbs the BN after it (trained with batch statistics).
    assert names["sep1_depthwise"] == "QuantizeWrapper"
    assert names["sep1"] == "FoldedBatchNormWrapper"
    qat = quantize_model(model, skip_layers=[L.SeparableConv2D])
    assert {type(qat.get_layer(f"sep{i}")).__name__ for i in range(1, 5)} == {"SeparableConv2D"}


def fit_and_convert(model, n=64):
    x = images(model, n)
    y = np.random.default_rng(1).integers(0, 4, n)
    # The BNs are folded once, with their moving statistics: after 4 steps of
    # the batch-statistics fold the moving statistics are still near their
    # initial values, so the ranges learned on batch statistics do not
    # describe the inference fold, and the parity thresholds below (set on
    # the inference fold) would measure that, not the rewrite. The
    # batch-statistics fold converts to the same ops
    # (test_quantization_batch_norm.py).
    qat = quantize_model(model, freeze_bn_delay=0)
    qat.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qat.fit(x, y, batch_size=16, epochs=1, verbose=0)
    return qat, x, convert(qat, mode="qat", int8_io=True)


def op_counts(model_bytes, names):
    counts = {}
    for op in tflite_ops(model_bytes):
        if op["op"] in names:
            counts[op["op"]] = counts.get(op["op"], 0) + 1
    return counts


def assert_parity(qat, model_bytes, x):
    """The int8 file computes the Keras QAT model: |Keras - TFLite| in units
    of the output's int8 scale is a few steps at most (integer rounding
    inside TFLite's kernels, compounded over the layers) and under one step
    on average, and both pick the same class."""
    interpreter = litert_interpreter(model_bytes, xnnpack=False)
    scale = interpreter.get_output_details()[0]["quantization"][0]
    keras_out = keras.ops.convert_to_numpy(qat.predict(x, verbose=0))
    tflite_out = tflite_predict(model_bytes, x)
    steps = np.abs(keras_out - tflite_out) / scale
    agreement = np.mean(keras_out.argmax(1) == tflite_out.argmax(1))
    print(f"parity: max {steps.max():.2f} mean {steps.mean():.3f} steps, top-1 {agreement:.3f}")
    assert steps.max() <= 8 and steps.mean() <= 1.0 and agreement >= 0.9, (steps, agreement)


def assert_fully_int8(model_bytes):
    float_ops = [op for op in tflite_ops(model_bytes) if "float32" in op["inputs"] + op["outputs"]]
    assert not float_ops, float_ops
    for op in tflite_ops(model_bytes):
        if op["op"] in COMPUTE_OPS:
            assert op["inputs"][:2] == ["int8", "int8"] and op["outputs"] == ["int8"], op


@tf_only
def test_separable_conv_converts_like_the_converters_own_int8_ptq():
    model = separable_block()
    qat, x, model_bytes = fit_and_convert(model)
    assert_fully_int8(model_bytes)
    ptq = convert(model, mode="int8", representative_data=x[:16], int8_io=True)
    # Same int8 kernels as the converter makes of the float model: every
    # SeparableConv2D is one DEPTHWISE_CONV_2D + one 1x1 CONV_2D, each BN
    # folded into a kernel (no MUL / ADD beyond the residual Add).
    assert op_counts(model_bytes, COMPUTE_OPS | {"MUL", "ADD"}) == op_counts(
        ptq, COMPUTE_OPS | {"MUL", "ADD"}
    ) == {"CONV_2D": 6, "DEPTHWISE_CONV_2D": 4, "FULLY_CONNECTED": 1, "ADD": 1}
    # Per-channel int8 weights on both kernels: one scale per output channel.
    interpreter = litert_interpreter(model_bytes, xnnpack=False)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    weights = [
        tensors[int(op["inputs"][1])]
        for op in interpreter._get_ops_details()
        if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D")
    ]
    for tensor in weights:
        scales = tensor["quantization_parameters"]["scales"]
        out_channels = tensor["shape"][0 if len(scales) != tensor["shape"][-1] else -1]
        assert len(scales) == out_channels > 1, tensor["name"]
    # The folded pointwise kernel is what the Keras QAT model trains.
    folded = qat.get_layer("sep2").quantized_kernel()
    assert folded.shape == (1, 1, 16, 16)
    assert_parity(qat, model_bytes, x)


@tf_only
def test_pools_and_concatenations_share_scales_as_tflite_requires():
    model = inception_dense_block()
    qat, x, model_bytes = fit_and_convert(model)
    assert_fully_int8(model_bytes)
    ptq = convert(model, mode="int8", representative_data=x[:16], int8_io=True)
    names = COMPUTE_OPS | {"AVERAGE_POOL_2D", "MAX_POOL_2D", "CONCATENATION"}
    assert op_counts(model_bytes, names) == op_counts(ptq, names)
    # Average pools read and write one scale and zero point (TFLite's int8
    # kernel requires it); the fan-out branches all stay int8 (above).
    interpreter = litert_interpreter(model_bytes, xnnpack=False)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    pools = [
        op for op in interpreter._get_ops_details()
        if op["op_name"] in ("AVERAGE_POOL_2D", "MAX_POOL_2D")
    ]
    assert len(pools) == 3
    for op in pools:
        (i,), (o,) = op["inputs"], op["outputs"]
        assert tensors[int(i)]["quantization"] == tensors[int(o)]["quantization"], op
    assert_parity(qat, model_bytes, x)


@tf_only
def test_scale_sum_layer_runs_as_int8_mul_and_add():
    model = scale_sum_block()
    qat, x, model_bytes = fit_and_convert(model)
    assert_fully_int8(model_bytes)
    counts = op_counts(model_bytes, {"MUL", "ADD"})
    assert counts == {"MUL": 1, "ADD": 1}, counts
    # The converter's PTQ has the same int8 ADD; it folds the constant
    # scale into the linear conv before it, where QAT keeps that conv's own
    # range and so an int8 MUL.
    ptq = convert(model, mode="int8", representative_data=x[:16], int8_io=True)
    assert op_counts(ptq, {"ADD"}) == {"ADD": 1}
    names = [layer.name for layer in qat.layers]
    assert len(names) == len(set(names))
    assert qat.get_layer("block") is not None
    assert_parity(qat, model_bytes, x)
