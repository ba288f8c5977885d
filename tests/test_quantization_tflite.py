"""TFLite side of kd_keras.quantization (TensorFlow backend only): QAT ->
fully int8 .tflite with matching predictions, PTQ modes, bad input, the
TFMOT bridge on a tf_keras model, and distillation-aware QAT."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest

import kd_keras
from kd_keras.data import load_digits
from kd_keras.models import cnn_student
from kd_keras.quantization import (
    convert,
    quantize_model,
    quantize_post_training,
    tflite_ops,
    tflite_predict,
    tflite_tensor_types,
)
from kd_keras.quantization.tfmot_bridge import TFMOTBridgeNotice

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="TFLite conversion and TFMOT need the TensorFlow backend",
)

COMPUTE_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"}
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@pytest.fixture(scope="module")
def digits():
    (x, y), (xt, yt) = load_digits(test_fraction=0.25, seed=0)
    return x, y, xt, yt


@pytest.fixture(scope="module")
def trained(digits):
    """A tiny student trained on digits, and its QAT fine-tune."""
    x, y, _, _ = digits
    keras.utils.set_random_seed(0)
    student = cnn_student(input_shape=(8, 8, 1))
    student.compile(keras.optimizers.Adam(3e-3), LOSS, metrics=["accuracy"])
    student.fit(x, y, epochs=3, batch_size=32, verbose=0)
    qat = quantize_model(student)
    qat.compile(keras.optimizers.Adam(1e-3), LOSS, metrics=["accuracy"])
    qat.fit(x, y, epochs=2, batch_size=32, verbose=0)
    return student, qat


def compute_ops(model_bytes):
    return [op for op in tflite_ops(model_bytes) if op["op"] in COMPUTE_OPS]


def test_qat_converts_to_fully_int8_and_agrees_with_keras(trained, digits):
    _, qat = trained
    _, _, xt, _ = digits
    model_bytes = convert(qat, mode="qat", int8_io=True)
    ops = compute_ops(model_bytes)
    assert [op["op"] for op in ops] == ["CONV_2D", "CONV_2D", "FULLY_CONNECTED"]
    for op in ops:  # int8 activations and weights, int32 bias
        assert op["inputs"] == ["int8", "int8", "int32"], op
        assert op["outputs"] == ["int8"], op
    assert "float32" not in set(tflite_tensor_types(model_bytes).values())
    assert all(op["op"] not in ("QUANTIZE", "DEQUANTIZE") for op in tflite_ops(model_bytes))
    agreement = top1_agreement(qat, model_bytes, xt)
    assert agreement >= 0.99, agreement


def top1_agreement(model, model_bytes, x):
    keras_logits = keras.ops.convert_to_numpy(model.predict(x, verbose=0))
    return np.mean(keras_logits.argmax(1) == tflite_predict(model_bytes, x).argmax(1))


def test_mixed_precision_student_converts_to_a_fully_int8_tflite(digits):
    x, y, xt, _ = digits
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        keras.utils.set_random_seed(0)
        student = cnn_student(input_shape=(8, 8, 1))
        student.compile(keras.optimizers.Adam(3e-3), LOSS)
        student.fit(x, y, epochs=2, batch_size=32, verbose=0)
        with pytest.warns(UserWarning, match="computes in float32"):
            qat = quantize_model(student)
        qat.compile(keras.optimizers.Adam(1e-3), LOSS)
        qat.fit(x, y, epochs=1, batch_size=32, verbose=0)
        model_bytes = convert(qat, mode="qat", int8_io=True)
    finally:
        keras.config.set_dtype_policy(previous)
    assert set(tflite_tensor_types(model_bytes).values()) <= {"int8", "int32"}
    agreement = top1_agreement(qat, model_bytes, xt)
    assert agreement >= 0.99, agreement


def test_qat_with_float_io_keeps_int8_compute(trained):
    _, qat = trained
    model_bytes = convert(qat, mode="qat")
    names = [op["op"] for op in tflite_ops(model_bytes)]
    assert names[0] == "QUANTIZE" and names[-1] == "DEQUANTIZE"
    assert all(op["inputs"][:2] == ["int8", "int8"] for op in compute_ops(model_bytes))


def test_pruned_zeros_survive_into_the_tflite(digits):
    x, y, _, _ = digits
    student = cnn_student(input_shape=(8, 8, 1))
    rng = np.random.default_rng(0)
    kernel = keras.ops.convert_to_numpy(student.get_layer("conv2").kernel)
    kernel[rng.random(kernel.shape) < 0.8] = 0.0
    student.get_layer("conv2").kernel.assign(kernel)
    qat = quantize_model(student)
    qat.compile("adam", LOSS)
    qat.fit(x[:256], y[:256], epochs=1, batch_size=32, verbose=0)
    from kd_keras.runtime import litert_interpreter

    interpreter = litert_interpreter(convert(qat, mode="qat"), xnnpack=False)
    weights = [
        interpreter.get_tensor(t["index"])
        for t in interpreter.get_tensor_details()
        if t["dtype"] == np.int8 and t["shape"].tolist() == [16, 3, 3, 8]
    ]
    assert len(weights) == 1
    # TFLite stores (out, h, w, in); every pruned weight is an int8 zero
    # (a tiny surviving weight may round to zero as well).
    pruned = np.transpose(kernel, (3, 0, 1, 2)) == 0
    assert np.all(weights[0][pruned] == 0)
    assert np.mean(weights[0] == 0) < np.mean(pruned) + 0.02


def test_ptq_modes_give_the_expected_tensor_types(trained, digits):
    student, _ = trained
    x, _, xt, _ = digits
    float_bytes = convert(student)
    assert {op["inputs"][1] for op in compute_ops(float_bytes)} == {"float32"}

    dynamic = quantize_post_training(student, "dynamic")
    # int8 weights, float activations; TFLite keeps weight tensors under 1024
    # elements in float (conv1: 72, logits: 640), conv2 has 1152.
    conv1, conv2, logits = compute_ops(dynamic)
    assert conv2["inputs"][:2] == ["float32", "int8"] and conv2["outputs"] == ["float32"]
    assert conv1["inputs"][:2] == logits["inputs"][:2] == ["float32", "float32"]

    half = quantize_post_training(student, "float16")
    assert "float16" in set(tflite_tensor_types(half).values())

    full = quantize_post_training(
        student, "int8", representative_data=x, num_calibration_batches=50, int8_io=True
    )
    for op in compute_ops(full):
        assert op["inputs"] == ["int8", "int8", "int32"], op
    agreement = np.mean(
        tflite_predict(full, xt).argmax(1) == tflite_predict(float_bytes, xt).argmax(1)
    )
    assert agreement >= 0.95
    assert len(full) < len(float_bytes)


def test_bad_inputs_get_clear_errors(trained, digits):
    student, qat = trained
    x, _, _, _ = digits
    with pytest.raises(ValueError, match=r"shape \(1, 8, 8\).*x\[\.\.\., None\]"):
        quantize_post_training(student, "int8", representative_data=x[..., 0])
    with pytest.raises(ValueError, match="uint8 but the model takes float32"):
        quantize_post_training(student, "int8", representative_data=(x * 16).astype("uint8"))
    with pytest.raises(ValueError, match="representative_data"):
        quantize_post_training(student, "int8")
    with pytest.raises(ValueError, match="without optimizations.*mode='qat'"):
        convert(qat)
    with pytest.raises(ValueError, match="mode='qat'"):
        convert(qat, mode="dynamic")
    with pytest.raises(ValueError, match="quantize_model"):
        convert(student, mode="qat")
    with pytest.raises(ValueError, match="int8_io"):
        convert(student, mode="dynamic", int8_io=True)
    with pytest.raises(ValueError, match="mode must be one of"):
        convert(student, mode="int4")
    with pytest.raises(ValueError, match="never saw data"):
        convert(quantize_model(student), mode="qat")


def test_distillation_aware_qat_runs_inside_distiller_fit(trained, digits):
    student, _ = trained
    x, y, _, _ = digits
    # Any teacher will do: this checks that QAT trains inside Distiller.fit.
    teacher = cnn_student(input_shape=(8, 8, 1), filters=(16, 32), name="teacher")
    qat = quantize_model(student)
    distiller = kd_keras.Distiller(
        student=qat,
        teacher=teacher,
        losses=[kd_keras.losses.SoftTargetKD(temperature=4.0)],
        alpha=0.1,
    )
    distiller.compile(optimizer="adam", metrics=["accuracy"])
    history = distiller.fit(x[:256], y[:256], epochs=1, batch_size=32, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    model_bytes = convert(distiller.student, mode="qat")  # ranges were trained in fit
    assert all(op["inputs"][:2] == ["int8", "int8"] for op in compute_ops(model_bytes))


def _tf_keras_student():
    import tf_keras

    layers = tf_keras.layers
    inputs = tf_keras.Input((8, 8, 1))
    h = layers.Conv2D(8, 3, padding="same", use_bias=False)(inputs)
    h = layers.BatchNormalization()(h)
    h = layers.ReLU()(h)
    h = layers.MaxPooling2D()(h)
    h = layers.Flatten()(h)
    return tf_keras.Model(inputs, layers.Dense(10)(h))


def test_tfmot_bridge_quantizes_and_clusters_tf_keras_models(digits):
    from kd_keras.quantization import clustering

    x, y, _, _ = digits
    model = _tf_keras_student()
    with pytest.warns(TFMOTBridgeNotice, match="TFMOT's quantize_model"):
        qat = quantize_model(model)
    assert any(type(layer).__name__.startswith("QuantizeWrapper") for layer in qat.layers)
    qat.compile("adam", LOSS)
    qat.fit(x[:256], y[:256], epochs=1, batch_size=32, verbose=0)
    model_bytes = convert(qat, mode="qat")
    ops = compute_ops(model_bytes)
    assert ops and all(op["inputs"][:2] == ["int8", "int8"] for op in ops)

    with pytest.warns(TFMOTBridgeNotice, match="cluster_weights"):
        clustered = clustering.cluster_weights(model, number_of_clusters=4)
    clustered.compile("adam", LOSS)
    clustered.fit(x[:128], y[:128], epochs=1, batch_size=32, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TFMOTBridgeNotice)
        final = clustering.strip_clustering(clustered)
    dense = [layer for layer in final.layers if type(layer).__name__ == "Dense"][0]
    assert len(np.unique(dense.get_weights()[0])) <= 4

    # preserve_sparsity reaches TFMOT: a half-zero kernel keeps its zeros
    # (TFMOT's zero centroid may absorb small weights too, so not "only").
    kernel = dense.get_weights()[0].copy()
    kernel[: kernel.shape[0] // 2] = 0
    dense.set_weights([kernel, dense.get_weights()[1]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TFMOTBridgeNotice)
        pcq = clustering.cluster_weights(final, number_of_clusters=3, preserve_sparsity=True)
        pcq.compile("adam", LOSS)
        pcq.fit(x[:128], y[:128], epochs=1, batch_size=32, verbose=0)
        stripped = clustering.strip_clustering(pcq)
    kept = [layer for layer in stripped.layers if type(layer).__name__ == "Dense"][0]
    assert np.all(kept.get_weights()[0][kernel == 0] == 0)
    assert len(np.unique(kept.get_weights()[0])) <= 3


def test_branching_graph_converts_fully_int8():
    """Depthwise conv, ReLU6 / Activation fusion, Add, Concatenate, pooling."""
    layers = keras.layers
    inputs = keras.Input((8, 8, 3), name="image")
    a = layers.Conv2D(8, 3, padding="same", use_bias=False, name="c1")(inputs)
    a = layers.ReLU(6.0, name="r1")(layers.BatchNormalization(name="b1")(a))
    d = layers.DepthwiseConv2D(3, padding="same", name="dw")(a)
    d = layers.Activation("relu", name="r2")(layers.BatchNormalization(name="b2")(d))
    s = layers.Add(name="add")([a, d])
    c = layers.Concatenate(name="cat")([s, layers.Conv2D(4, 1, activation="relu", name="c2")(s)])
    g = layers.GlobalAveragePooling2D(name="gap")(layers.AveragePooling2D(2, name="avg")(c))
    model = keras.Model(inputs, layers.Dense(4, name="out")(g))
    qat = quantize_model(model)
    assert qat.get_layer("dw").weight_quantizer.axis == -2
    rng = np.random.default_rng(0)
    x = rng.random((64, 8, 8, 3)).astype("float32")
    qat.compile("adam", LOSS)
    qat.fit(x, rng.integers(0, 4, 64), epochs=1, batch_size=16, verbose=0)
    model_bytes = convert(qat, mode="qat", int8_io=True)
    names = [op["op"] for op in tflite_ops(model_bytes)]
    for op in ("CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "CONCATENATION", "AVERAGE_POOL_2D"):
        assert op in names
    assert "float32" not in set(tflite_tensor_types(model_bytes).values())
    assert top1_agreement(qat, model_bytes, x) >= 0.95


def test_skipped_layer_runs_in_float_between_int8_ops():
    from tests import tiny

    qat = quantize_model(tiny.conv(), skip_layers=["bn"])
    x, y = tiny.images(32)
    qat.compile("adam", LOSS)
    qat.fit(x, y, epochs=1, batch_size=16, verbose=0)
    ops = tflite_ops(convert(qat, mode="qat"))
    conv, dense = [op for op in ops if op["op"] in COMPUTE_OPS]
    assert conv["inputs"][:2] == dense["inputs"][:2] == ["int8", "int8"]
    assert any(op["op"] == "DEQUANTIZE" for op in ops[1:-1])  # into the float BN


def _constant(model_bytes, op_name):
    """(int values, scales) of the weight tensor of the first `op_name` op,
    read from the flatbuffer itself."""
    from tensorflow.lite.tools import flatbuffer_utils

    flat = flatbuffer_utils.read_model_from_bytearray(bytearray(model_bytes))
    graph = flat.subgraphs[0]
    codes = [flatbuffer_utils.opcode_to_name(flat, op.opcodeIndex) for op in graph.operators]
    op = graph.operators[codes.index(op_name)]
    tensor = graph.tensors[op.inputs[1]]
    values = np.frombuffer(bytes(flat.buffers[tensor.buffer].data), np.int8)
    return values, np.asarray(tensor.quantization.scale)


def test_fixed_batch_and_stripped_strings_keep_predictions(trained, digits):
    student, _ = trained
    _, _, xt, _ = digits
    free = convert(student)
    fixed = convert(student, batch_size=1, strip_strings=True)
    ops_free = [op["op"] for op in tflite_ops(free)]
    ops_fixed = [op["op"] for op in tflite_ops(fixed)]
    # Flatten on a free batch needs the batch size at run time; fixed, it is a constant.
    assert {"SHAPE", "STRIDED_SLICE", "PACK"} <= set(ops_free)
    assert not {"SHAPE", "STRIDED_SLICE", "PACK"} & set(ops_fixed)
    assert len(fixed) < len(free)
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=fixed)
    assert list(interpreter.get_input_details()[0]["shape"]) == [1, 8, 8, 1]
    assert all(not d["name"] for d in interpreter.get_tensor_details())
    assert interpreter.get_signature_list() == {}
    np.testing.assert_allclose(
        tflite_predict(fixed, xt[:16]), tflite_predict(free, xt[:16]), atol=1e-5
    )


def test_pruned_clustered_int8_keeps_zeros_and_palette(trained, digits):
    """Prune -> sparsity-preserving clustering -> full int8 with one scale per
    Dense kernel: the int8 kernel has the same zeros and <= k distinct values."""
    from kd_keras.quantization import clustering

    student, _ = trained
    x, y, xt, _ = digits
    model = keras.models.clone_model(student)
    model.set_weights(student.get_weights())
    kernel = keras.ops.convert_to_numpy(model.get_layer("logits").kernel).copy()
    kernel[np.abs(kernel) <= np.quantile(np.abs(kernel), 0.8)] = 0
    model.get_layer("logits").kernel.assign(kernel)
    clustered = clustering.cluster_weights(
        model, 8, preserve_sparsity=True, skip_layers=["conv1", "conv2"]
    )
    clustered.compile(keras.optimizers.Adam(1e-3), LOSS)
    clustered.fit(x, y, epochs=1, batch_size=32, verbose=0)
    final = clustering.strip_clustering(clustered)

    per_channel = convert(final, mode="int8", representative_data=x[:32])
    per_tensor = convert(final, mode="int8", representative_data=x[:32], per_channel_dense=False)
    values, scales = _constant(per_tensor, "FULLY_CONNECTED")
    assert len(scales) == 1
    # TFLite stores FC weights as (units, inputs): the transpose of Keras' kernel.
    np.testing.assert_array_equal(values.reshape(kernel.T.shape) == 0, kernel.T == 0)
    assert len(np.unique(values)) <= 8
    values, scales = _constant(per_channel, "FULLY_CONNECTED")
    assert len(scales) == 10 and len(np.unique(values)) > 8
    agree = np.mean(
        np.argmax(tflite_predict(per_tensor, xt), -1) == np.argmax(final.predict(xt, verbose=0), -1)
    )
    assert agree >= 0.95


def test_fixed_batch_calibrates_in_groups_and_rejects_bad_layouts(trained, digits):
    student, qat = trained
    x, _, xt, _ = digits
    model_bytes = convert(student, mode="int8", representative_data=x[:40], batch_size=4)
    from ai_edge_litert.interpreter import Interpreter

    assert list(Interpreter(model_content=model_bytes).get_input_details()[0]["shape"]) == [
        4,
        8,
        8,
        1,
    ]
    assert tflite_predict(model_bytes, xt[:8]).shape == (8, 10)
    # Calibration batches of 8 from a dataset are regrouped into the fixed 4.
    import tensorflow as tf

    batches = tf.data.Dataset.from_tensor_slices(x[:40]).batch(8)
    assert len(convert(student, mode="int8", representative_data=batches, batch_size=4)) > 0
    with pytest.raises(ValueError, match="whole batches of 4"):
        convert(student, mode="int8", representative_data=x[:3], batch_size=4)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        convert(student, batch_size=0)
    with pytest.raises(ValueError, match="per_channel_dense=False applies to mode='int8'"):
        convert(qat, mode="qat", per_channel_dense=False)


def test_fixed_batch_of_a_model_with_free_height_and_width_is_refused():
    # A free height / width stays -1 in the file; LiteRT would then fail inside
    # CONV_2D at load time ("input->dims->data[1] > 0 was not true").
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(4, 3)(inputs))
    with pytest.raises(ValueError, match=r"free shape \(None, None, None, 3\).*full input shape"):
        convert(model, batch_size=1)
    # Without a fixed batch the free shape is what the user asked for, and converts.
    assert len(convert(model)) > 0


def test_convert_gives_the_file_the_saved_model_route_gives(tmp_path):
    """`convert` converts the frozen inference function; TF's documented
    route (`model.export` to a SavedModel, `from_saved_model`) is the
    reference: same signature (input names, output keys), same ops, same
    outputs, for a model with named float and int32 inputs and dict outputs,
    with a free and with a fixed batch size."""
    import tensorflow as tf

    from kd_keras.runtime import litert_interpreter

    image = keras.Input((6, 6, 2), name="image")
    ids = keras.Input((4,), dtype="int32", name="ids")
    h = keras.layers.Flatten()(keras.layers.Conv2D(3, 3)(image))
    h = keras.layers.Concatenate()([h, keras.layers.Flatten()(keras.layers.Embedding(9, 2)(ids))])
    model = keras.Model(
        {"image": image, "ids": ids},
        {"logits": keras.layers.Dense(3)(h), "score": keras.layers.Dense(1)(h)},
    )
    rng = np.random.default_rng(0)
    x = {
        "image": rng.normal(size=(2, 6, 6, 2)).astype("float32"),
        "ids": rng.integers(0, 9, (2, 4)).astype("int32"),
    }

    def described(model_bytes, batch):
        interpreter = litert_interpreter(model_bytes)
        shapes = {d["name"]: tuple(d["shape_signature"]) for d in interpreter.get_input_details()}
        runner = interpreter.get_signature_runner()
        outputs = runner(**{k: v[:batch] if batch else v for k, v in x.items()})
        ops = [op["op"] for op in tflite_ops(model_bytes)]
        return interpreter.get_signature_list(), sorted(shapes.items()), ops, outputs

    for batch_size in (None, 1):
        signature = None
        if batch_size:
            signature = [{
                t.name: tf.TensorSpec((batch_size, *t.shape[1:]), t.dtype, name=t.name)
                for t in model.inputs
            }]
        folder = tmp_path / f"saved_{batch_size}"
        model.export(folder, format="tf_saved_model", verbose=False, input_signature=signature)
        reference = described(tf.lite.TFLiteConverter.from_saved_model(str(folder)).convert(),
                              batch_size)
        got = described(convert(model, batch_size=batch_size), batch_size)
        assert got[:3] == reference[:3]
        assert got[0]["serving_default"]["outputs"] == ["logits", "score"]
        for key in ("logits", "score"):
            np.testing.assert_array_equal(got[3][key], reference[3][key])
