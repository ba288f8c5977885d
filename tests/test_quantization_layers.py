"""QAT rules for sequence, upsampling and attention layers: Conv1D,
SeparableConv1D, Conv2DTranspose, UpSampling2D, GlobalAveragePooling1D,
Embedding, EinsumDense, MultiHeadAttention, LayerNormalization (a float
island) and ConvNeXt's LayerScale.

References: each layer's own Keras forward pass (for the rebuilt kernels and
the decomposed composite layers), the op list and tensor types of the
converted `.tflite`, and the QAT model's outputs against LiteRT's, measured
in output quantization steps.
"""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest
from keras import layers as L

from kd_keras.quantization import _kernels
from kd_keras.quantization.decompose import decompose_layers

TF = keras.backend.backend() == "tensorflow"
needs_tf = pytest.mark.skipif(not TF, reason="TFLite conversion needs TensorFlow")
COMPUTE_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL", "TRANSPOSE_CONV"}


def numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


# --------------------------------------------------------------------------
# Rebuilt forward passes against the layers' own call (every backend).


@pytest.mark.parametrize(
    "layer,shape",
    [
        (L.Conv1D(5, 3, strides=2, padding="same"), (2, 11, 3)),
        (L.Conv1D(5, 3, dilation_rate=2, padding="valid", use_bias=False), (2, 11, 3)),
        (L.DepthwiseConv1D(3, padding="same"), (2, 9, 4)),
        (L.Conv2DTranspose(4, 3, strides=2, padding="same"), (2, 5, 5, 3)),
        (L.Conv2DTranspose(4, 2, strides=2, padding="valid"), (2, 5, 5, 3)),
        (L.EinsumDense("abc,cd->abd", (7, 6), bias_axes="d"), (2, 7, 3)),
        (L.EinsumDense("abc,cde->abde", (7, 2, 4), bias_axes="de"), (2, 7, 3)),
        (L.EinsumDense("abcd,cde->abe", (7, 5), bias_axes="e"), (2, 7, 2, 4)),
        (L.EinsumDense("ab,bc->ac", 6), (2, 3)),
        (L.Dense(6), (2, 7, 3)),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, L.Layer) else str(v),
)
def test_kernel_call_matches_the_layer(layer, shape):
    x = np.random.default_rng(0).normal(size=shape).astype("float32")
    expected = numpy(layer(x))
    kernel = layer.kernel
    got = numpy(_kernels.kernel_call(layer, x, kernel))
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # The same result from the kernel in the shape the TFLite op reads it.
    got = numpy(_kernels.kernel_call(layer, x, _kernels.op_kernel(layer, kernel)))
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_separable_conv_1d_decomposes_into_depthwise_and_pointwise():
    inputs = keras.Input((12, 3))
    h = L.SeparableConv1D(6, 3, padding="same", activation="relu", name="sep")(inputs)
    model = keras.Model(inputs, L.SeparableConv1D(4, 3, depth_multiplier=2, name="sep2")(h))
    x = np.random.default_rng(1).normal(size=(3, 12, 3)).astype("float32")
    flat = decompose_layers(model)
    names = [layer.name for layer in flat.layers]
    assert names == ["input_layer", "sep_depthwise", "sep", "sep2_depthwise", "sep2"], names
    assert type(flat.get_layer("sep")) is L.Conv1D
    assert type(flat.get_layer("sep_depthwise")) is L.DepthwiseConv1D
    np.testing.assert_allclose(numpy(flat(x)), numpy(model(x)), atol=1e-5)


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_multi_head_attention_decomposes_into_the_same_function(dropout):
    query, value = keras.Input((6, 8)), keras.Input((5, 4))
    mha = L.MultiHeadAttention(2, 3, dropout=dropout, name="mha")
    model = keras.Model([query, value], mha(query, value))
    rng = np.random.default_rng(2)
    for w in mha.weights:  # non-zero biases, so the folded query scale shows
        w.assign(rng.normal(size=w.shape).astype("float32"))
    xq = rng.normal(size=(2, 6, 8)).astype("float32")
    xv = rng.normal(size=(2, 5, 4)).astype("float32")
    flat = decompose_layers(model)
    kinds = {layer.name: type(layer).__name__ for layer in flat.layers}
    assert kinds["mha"] == "EinsumDense" and kinds["mha_softmax"] == "Softmax"
    assert {"mha_query", "mha_key", "mha_value"} <= set(kinds)
    assert flat.outputs[0].shape == (None, 6, 8)
    np.testing.assert_allclose(numpy(flat([xq, xv])), numpy(model([xq, xv])), atol=1e-5)


def test_masked_attention_stays_whole():
    # Masked attention runs whole, in float (tests/test_quantization_masked_attention.py).
    inputs = keras.Input((6, 8))
    out = L.MultiHeadAttention(2, 4, name="causal")(inputs, inputs, use_causal_mask=True)
    model = keras.Model(inputs, out)
    assert decompose_layers(model) is model


def test_attention_returning_scores_is_refused_with_the_skip_fix():
    inputs = keras.Input((6, 8))
    out, _ = L.MultiHeadAttention(2, 4, name="scores")(
        inputs, inputs, return_attention_scores=True
    )
    model = keras.Model(inputs, out)
    with pytest.raises(ValueError, match=r"(?s)'scores'.*return_attention_scores.*skip_layers"):
        decompose_layers(model)
    assert decompose_layers(model, keep=frozenset({"scores"})) is model


# --------------------------------------------------------------------------
# QAT -> int8 .tflite (TensorFlow).


def qat_and_convert(model, x, steps=2):
    """QAT copy fitted `steps` batches on `model`'s own outputs, its int8
    `.tflite` (int8 I/O) and the `(max |LiteRT - Keras QAT|, output scale)`."""
    from kd_keras.quantization import convert, quantize_model, tflite_predict
    from kd_keras.runtime import litert_interpreter

    qat = quantize_model(model)
    y = numpy(model(x))
    qat.compile("adam", "mse")
    qat.fit(x, y, batch_size=max(1, len(x) // steps), epochs=1, verbose=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model_bytes = convert(qat, mode="qat", int8_io=True)
    got = tflite_predict(model_bytes, x)
    expected = numpy(qat.predict(x, verbose=0))
    scale = litert_interpreter(model_bytes).get_output_details()[0]["quantization"][0]
    return qat, model_bytes, float(np.abs(got - expected).max()), scale, caught


def assert_int8_compute(model_bytes, expected_ops):
    from kd_keras.quantization import tflite_ops

    compute = [op for op in tflite_ops(model_bytes) if op["op"] in COMPUTE_OPS]
    assert sorted({op["op"] for op in compute}) == sorted(expected_ops), compute
    for op in compute:
        assert "float32" not in op["inputs"] + op["outputs"], op
        assert op["outputs"] == ["int8"] and op["inputs"].count("int8") >= 2, op
    return compute


@needs_tf
def test_conv1d_converts_to_a_per_channel_int8_conv_2d():
    from kd_keras.runtime import litert_interpreter

    model = keras.Sequential(
        [keras.Input((16, 3)), L.Conv1D(6, 3, strides=2, activation="relu", name="c"),
         L.GlobalAveragePooling1D(), L.Dense(2)]
    )
    x = np.random.default_rng(3).normal(size=(8, 16, 3)).astype("float32")
    _, model_bytes, diff, scale, _ = qat_and_convert(model, x)
    assert_int8_compute(model_bytes, {"CONV_2D", "FULLY_CONNECTED"})
    details = litert_interpreter(model_bytes, xnnpack=False).get_tensor_details()
    conv_weights = [t for t in details if len(t["shape"]) == 4 and t["dtype"] == np.int8
                    and t["shape"][0] == 6]
    assert conv_weights and len(conv_weights[0]["quantization_parameters"]["scales"]) == 6
    assert diff <= 2 * scale, (diff, scale)


@needs_tf
def test_separable_conv1d_and_conv2d_transpose_and_upsampling_run_int8():
    inputs = keras.Input((8, 8, 3))
    h = L.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    h = L.Conv2DTranspose(4, 3, strides=2, padding="same", activation="relu")(h)
    h = L.UpSampling2D()(h)
    h = L.Reshape((32 * 32, 4))(h)
    h = L.SeparableConv1D(4, 3, strides=4, activation="relu")(h)
    out = L.Dense(2)(L.GlobalAveragePooling1D()(h))
    x = np.random.default_rng(4).normal(size=(8, 8, 8, 3)).astype("float32")
    _, model_bytes, diff, scale, _ = qat_and_convert(keras.Model(inputs, out), x)
    assert_int8_compute(
        model_bytes, {"CONV_2D", "TRANSPOSE_CONV", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"}
    )
    assert diff <= 2 * scale, (diff, scale)


@needs_tf
def test_embedding_is_an_int8_table_read_with_int32_ids():
    from kd_keras.quantization import tflite_ops
    from kd_keras.runtime import litert_interpreter

    inputs = keras.Input((10,), dtype="int32")
    h = L.Embedding(50, 8, name="emb")(inputs)
    out = L.Dense(3)(L.GlobalAveragePooling1D()(h))
    model = keras.Model(inputs, out)
    ids = np.random.default_rng(5).integers(0, 50, size=(8, 10)).astype("int32")
    qat, model_bytes, diff, scale, _ = qat_and_convert(model, ids)
    interpreter = litert_interpreter(model_bytes, xnnpack=False)
    assert interpreter.get_input_details()[0]["dtype"] == np.int32
    gathers = [op for op in tflite_ops(model_bytes) if op["op"] == "GATHER"]
    assert gathers and gathers[0]["inputs"] == ["int8", "int32"], gathers
    # The rows keep the table's scale: no run-time requantization of it.
    assert "QUANTIZE" not in [op["op"] for op in tflite_ops(model_bytes)]
    # Per tensor symmetric: the table the QAT model reads has <= 255 levels
    # on one grid.
    wrapper = qat.get_layer("emb")
    table = numpy(wrapper.layer.embeddings)
    step = np.abs(table).max() / 127
    levels = numpy(keras.ops.take(wrapper(ids[:1]), 0, axis=0)) / step
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-3)
    assert diff <= 2 * scale, (diff, scale)


@needs_tf
def test_attention_runs_int8_batch_matmul_and_softmax():
    from kd_keras.quantization import tflite_ops

    inputs = keras.Input((8, 6))
    h = L.MultiHeadAttention(2, 4, name="mha")(inputs, inputs)
    out = L.Dense(2)(L.GlobalAveragePooling1D()(L.Add()([inputs, h])))
    x = np.random.default_rng(6).normal(size=(8, 8, 6)).astype("float32")
    qat, model_bytes, diff, scale, _ = qat_and_convert(keras.Model(inputs, out), x)
    compute = assert_int8_compute(model_bytes, {"FULLY_CONNECTED", "BATCH_MATMUL"})
    assert sum(op["op"] == "BATCH_MATMUL" for op in compute) == 2
    assert sum(op["op"] == "FULLY_CONNECTED" for op in compute) == 5  # q, k, v, out, head
    softmax = [op for op in tflite_ops(model_bytes) if op["op"] == "SOFTMAX"]
    assert softmax and softmax[0]["inputs"] == ["int8"] == softmax[0]["outputs"]
    # TFLite's int8 SOFTMAX writes its fixed 1/256 scale, then requantizes
    # to the trained range: one rounding more than the Keras model.
    assert diff <= 4 * scale, (diff, scale)


@needs_tf
def test_layer_norm_is_a_float_island_listed_by_convert():
    from kd_keras.quantization import FloatIslandNotice, float_islands

    inputs = keras.Input((8, 6))
    h = L.Dense(6, name="d1")(inputs)
    h = L.LayerNormalization(name="ln")(L.Add()([inputs, h]))
    out = L.Dense(2)(L.GlobalAveragePooling1D()(h))
    x = np.random.default_rng(7).normal(size=(8, 8, 6)).astype("float32")
    qat, model_bytes, diff, scale, caught = qat_and_convert(keras.Model(inputs, out), x)
    assert_int8_compute(model_bytes, {"FULLY_CONNECTED"})
    islands = float_islands(model_bytes, qat)
    assert islands and {i["layer"] for i in islands} == {"ln"}, islands
    assert "RSQRT" in {i["op"] for i in islands}
    notices = [w for w in caught if issubclass(w.category, FloatIslandNotice)]
    assert notices and "ln: " in str(notices[0].message)
    assert diff <= 2 * scale, (diff, scale)


@needs_tf
def test_layer_scale_is_an_int8_mul():
    from keras.src.applications.convnext import LayerScale

    from kd_keras.quantization import tflite_ops

    inputs = keras.Input((4, 4, 8))
    h = L.Dense(8, name="pw")(inputs)
    h = LayerScale(0.5, 8, name="scale")(h)
    out = L.Dense(2)(L.GlobalAveragePooling2D()(L.Add()([inputs, h])))
    model = keras.Model(inputs, out)
    model.get_layer("scale").gamma.assign(np.linspace(0.1, 2.0, 8).astype("float32"))
    x = np.random.default_rng(8).normal(size=(8, 4, 4, 8)).astype("float32")
    _, model_bytes, diff, scale, _ = qat_and_convert(model, x)
    ops = tflite_ops(model_bytes)
    assert not [op for op in ops if "float32" in op["inputs"] + op["outputs"]], ops
    assert diff <= 2 * scale, (diff, scale)


@needs_tf
def test_qat_transformer_round_trips_through_keras_file(tmp_path):
    from kd_keras.quantization import quantize_model

    inputs = keras.Input((6,), dtype="int32")
    h = L.Embedding(20, 8)(inputs)
    h = L.LayerNormalization()(L.Add()([h, L.MultiHeadAttention(2, 4)(h, h)]))
    model = keras.Model(inputs, L.Dense(2)(L.GlobalAveragePooling1D()(h)))
    qat = quantize_model(model)
    ids = np.random.default_rng(9).integers(0, 20, size=(4, 6)).astype("int32")
    qat.compile("adam", "mse")
    qat.fit(ids, np.zeros((4, 2)), epochs=1, verbose=0)
    qat.save(tmp_path / "qat.keras")
    restored = keras.saving.load_model(tmp_path / "qat.keras")  # safe_mode on
    np.testing.assert_allclose(numpy(restored(ids)), numpy(qat(ids)), atol=1e-6)


@needs_tf
@pytest.mark.heavy
def test_convnext_tiny_is_int8_but_for_its_layer_norm_islands():
    from kd_keras.quantization import convert, float_islands, quantize_model, tflite_ops

    model = keras.applications.ConvNeXtTiny(weights=None, input_shape=(32, 32, 3), classes=4)
    qat = quantize_model(model)
    x = np.random.default_rng(10).uniform(0, 255, size=(4, 32, 32, 3)).astype("float32")
    # Eagerly: tracing a graph of hundreds of layers costs more than 2 steps.
    qat.compile("adam", "sparse_categorical_crossentropy", run_eagerly=True)
    qat.fit(x, np.arange(4) % 4, batch_size=2, epochs=1, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model_bytes = convert(qat, mode="qat", int8_io=True)
    compute = [op for op in tflite_ops(model_bytes) if op["op"] in COMPUTE_OPS]
    assert len(compute) > 50
    assert all("float32" not in op["inputs"] + op["outputs"] for op in compute)
    layers = {island["layer"] for island in float_islands(model_bytes, qat)}
    layer_norms = {
        layer.name for layer in qat.layers if isinstance(layer, L.LayerNormalization)
    }
    assert layers == layer_norms, layers ^ layer_norms
