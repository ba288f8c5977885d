"""The QAT rewrite on Functional graphs of any shape: raw `keras.ops` nodes
(`x + 3.0`, `x * (1 / 6)`, `ops.relu6`, `ops.sigmoid`, slicing), nested
Sequential / Functional models and a keras-hub backbone inside its task model,
residual skip lists and layers reading two float inputs (unique quantizer
names). Checked against the unmodified model (inlining and BN folding compute
the same function) and, on TensorFlow, against the converted int8 .tflite."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops

from kd_keras.quantization import (
    QuantizeLayer,
    QuantizeWrapper,
    fold_batch_norms,
    quantize_model,
)
from kd_keras.quantization.graph import inline_nested_models

BACKEND = keras.backend.backend()
COMPUTE_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL", "TRANSPOSE_CONV"}


def conv_block(name):
    return keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(6, 3, use_bias=False, name=f"{name}_conv"),
            keras.layers.BatchNormalization(name=f"{name}_bn"),
            keras.layers.ReLU(name=f"{name}_relu"),
        ],
        name=name,
    )


def hard_swish(x):
    # MobileNetV3's hard_swish, written with raw operators as keras.applications does.
    return x * ops.relu6(x + 3.0) * (1.0 / 6.0)


def raw_ops_model():
    """Raw keras.ops nodes, a nested Sequential and a nested Functional model."""
    inputs = keras.Input((8, 8, 3), name="image")
    x = conv_block("stem")(inputs)
    x = hard_swish(x)
    head_in = keras.Input((6, 6, 6))
    y = keras.layers.Conv2D(6, 1, name="head_conv")(head_in)
    y = keras.layers.BatchNormalization(name="head_bn")(y)
    head = keras.Model(head_in, ops.sigmoid(y) * y, name="head")
    x = keras.layers.Add(name="residual")([x, head(x)])
    x = x[:, 1:, :, :4]
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(3, name="logits")(x)
    return keras.Model(inputs, outputs, name="raw_ops")


def randomize_batch_norms(model):
    """Give every BN non-trivial statistics, so folding is really exercised."""
    rng = np.random.default_rng(3)
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, n),
                    rng.normal(0, 0.1, n),
                    rng.normal(0, 0.1, n),
                    rng.uniform(0.5, 2.0, n),
                ]
            )
    return model


def images(n=32, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, size=(n, 8, 8, 3)).astype("float32")


def test_inlining_and_folding_compute_the_unmodified_model():
    model = randomize_batch_norms(raw_ops_model())
    x = images()
    want = keras.ops.convert_to_numpy(model(x, training=False))
    inbound_before = [len(layer._inbound_nodes) for layer in model.get_layer("stem").layers]
    flat = inline_nested_models(model)
    assert not any(isinstance(layer, keras.Model) for layer in flat.layers)
    assert {"stem_conv", "head_conv", "logits"} <= {layer.name for layer in flat.layers}
    np.testing.assert_allclose(keras.ops.convert_to_numpy(flat(x)), want, atol=1e-5)
    folded = fold_batch_norms(model)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(folded(x)), want, atol=1e-4)
    # The user's model is left as it was (no extra nodes on its layers).
    after = [len(layer._inbound_nodes) for layer in model.get_layer("stem").layers]
    assert after == inbound_before


def test_raw_ops_and_nested_models_are_rewritten_and_train():
    model = randomize_batch_norms(raw_ops_model())
    qat = quantize_model(model)
    names = [layer.name for layer in qat.layers]
    assert len(names) == len(set(names))
    # The nested layers are quantized like outer ones: BN folded, ReLU fused.
    assert isinstance(qat.get_layer("stem_conv"), QuantizeWrapper)
    assert isinstance(qat.get_layer("head_conv"), QuantizeWrapper)
    assert type(qat.get_layer("stem_bn")) is keras.layers.Identity
    # Each value-changing raw op gets an output range; the slice keeps its input's.
    raw = [op for op in qat.operations if not isinstance(op, keras.layers.Layer)]
    for op in raw:
        consumers = [n.operation for n in op._outbound_nodes]
        if type(op).__name__ == "GetItem":
            assert not any(isinstance(c, QuantizeLayer) for c in consumers), op.name
        else:
            assert any(isinstance(c, QuantizeLayer) for c in consumers), op.name
    assert {type(op).__name__ for op in raw} >= {"Add", "Relu6", "Multiply", "Sigmoid", "GetItem"}
    x = images(64)
    y = np.random.default_rng(1).integers(0, 3, 64)
    qat.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = qat.fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    # Once its ranges have seen the data, a fresh QAT copy computes the float
    # model on an 8-bit grid: close to it, but not equal.
    # (Folded once with the moving statistics: with the default
    # batch-statistics fold a training call would normalize this batch with
    # its own statistics and set the ranges on those values, not on the
    # inference fold compared here; test_quantization_batch_norm.py covers it.)
    want = keras.ops.convert_to_numpy(model(x, training=False))
    fresh = quantize_model(model, freeze_bn_delay=0)
    fresh(x, training=True)  # sets every activation range from this batch
    got = keras.ops.convert_to_numpy(fresh(x, training=False))
    error = np.abs(got - want).max()
    assert 0 < error < 0.1 * np.abs(want).max(), error


def test_skip_list_on_a_residual_add_and_two_float_inputs_get_unique_quantizers():
    inputs = keras.Input((8, 8, 3))
    a = keras.layers.Conv2D(4, 3, padding="same", name="a")(inputs)
    b = keras.layers.Conv2D(4, 3, padding="same", name="b")(inputs)
    added = keras.layers.Add(name="add")([a, b])  # skipped residual Add
    both = keras.layers.Concatenate(name="cat")([a, b])  # reads two float tensors
    x = keras.layers.Concatenate(name="cat2")([added, both])
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(x))
    qat = quantize_model(model, skip_layers=["a", "b", "add"])
    names = [layer.name for layer in qat.layers]
    assert len(names) == len(set(names))
    quantizers = [layer for layer in qat.layers if isinstance(layer, QuantizeLayer)]
    # One quantizer per float tensor entering the int8 part: a, b and add,
    # even though a and b are each read by two consumers.
    sources = sorted(layer._inbound_nodes[0].input_tensors[0]._keras_history.operation.name
                     for layer in quantizers)
    assert sources == ["a", "add", "b"], names
    qat(images(2))


def test_nested_model_in_skip_layers_stays_whole_and_float():
    model = raw_ops_model()
    qat = quantize_model(model, skip_layers=["head"])
    head = qat.get_layer("head")
    assert isinstance(head, keras.Model)
    assert not any(
        isinstance(layer, (QuantizeWrapper, QuantizeLayer)) for layer in head.layers
    )
    assert isinstance(qat.get_layer("stem_conv"), QuantizeWrapper)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(head(np.ones((1, 6, 6, 6), "float32"))),
        keras.ops.convert_to_numpy(model.get_layer("head")(np.ones((1, 6, 6, 6), "float32"))),
        atol=1e-6,
    )


# ---------------------------------------------------------------- TFLite


def int8_report(model_bytes):
    from kd_keras.quantization import tflite_ops

    ops_ = tflite_ops(model_bytes)
    float_ops = [op["op"] for op in ops_ if "float32" in op["inputs"] + op["outputs"]]
    compute = [op for op in ops_ if op["op"] in COMPUTE_OPS]
    return ops_, float_ops, compute


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TFLite conversion needs TensorFlow")
@pytest.mark.parametrize("which", ["raw_ops", "keras_hub"])
def test_graph_converts_to_fully_int8_and_agrees_with_keras(which):
    from kd_keras.quantization import convert, tflite_predict

    if which == "raw_ops":
        model = randomize_batch_norms(raw_ops_model())
        x = images(64)
    else:
        keras_hub = pytest.importorskip("keras_hub")
        backbone = keras_hub.models.ResNetBackbone(
            input_conv_filters=[64],
            input_conv_kernel_sizes=[3],
            stackwise_num_filters=[64, 16],
            stackwise_num_blocks=[1, 1],
            stackwise_num_strides=[1, 2],
            block_type="basic_block",
            use_pre_activation=False,
            image_shape=(16, 16, 3),
        )
        model = keras_hub.models.ImageClassifier(backbone=backbone, num_classes=3)
        x = np.random.default_rng(0).uniform(0, 1, (64, 16, 16, 3)).astype("float32")
    # The BNs fold with their moving statistics from the start: in these
    # untrained models those are far from the batch statistics, so ranges
    # learned in four batch-statistics steps would not describe the inference
    # fold this parity check compares (tests/test_quantization_batch_norm.py
    # checks the batch-statistics fold converts to the same file).
    qat = quantize_model(model, freeze_bn_delay=0)
    qat.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qat.fit(x, np.random.default_rng(1).integers(0, 3, len(x)), batch_size=16, verbose=0)
    model_bytes = convert(qat, mode="qat", int8_io=True)
    ops_, float_ops, compute = int8_report(model_bytes)
    assert not float_ops, ops_
    assert compute and all(
        op["inputs"][:2] == ["int8", "int8"] and op["outputs"] == ["int8"] for op in compute
    )
    n_conv = sum(isinstance(layer, QuantizeWrapper) and "Conv" in type(layer.layer).__name__
                 for layer in qat.layers)
    assert sum(op["op"] == "CONV_2D" for op in compute) == n_conv
    keras_logits = keras.ops.convert_to_numpy(qat.predict(x, verbose=0))
    tflite_logits = tflite_predict(model_bytes, x)
    scale = np.abs(keras_logits).max()
    # int8 arithmetic vs the fake-quant simulation: a few output steps apart.
    assert np.abs(tflite_logits - keras_logits).max() < 0.1 * scale + 1e-3
