"""kd_keras.runtime: one runner for every runtime, any input dtype,
several named inputs; compared with the Keras model's own predictions."""

import keras
import numpy as np
import pytest
from keras import layers

from kd_keras import bench, export
from kd_keras.export.onnx import onnx_export_available
from kd_keras.runtime import load_runner

TF_ONLY = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="TFLite / SavedModel export needs TensorFlow"
)
NEEDS_ONNX_EXPORT = pytest.mark.skipif(
    not onnx_export_available(),
    reason=f"Keras ONNX export is not installed for {keras.backend.backend()}",
)

VOCAB, LENGTH = 50, 12


@pytest.fixture(scope="module")
def token_ids():
    rng = np.random.default_rng(0)
    # Every id of the vocabulary, the last one included: an id cast to float
    # and "quantized" with a zero scale would index out of bounds.
    ids = rng.integers(0, VOCAB, (64, LENGTH)).astype("int32")
    ids[0, :] = VOCAB - 1
    return ids


@pytest.fixture(scope="module")
def token_model(token_ids):
    """Embedding -> pooling -> Dense on int32 token ids, trained a little so
    that its classes are not ties."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((LENGTH,), dtype="int32", name="token_ids")
    x = layers.Embedding(VOCAB, 16)(inputs)
    x = layers.GlobalAveragePooling1D()(x)
    model = keras.Model(inputs, layers.Dense(4)(x))
    labels = (token_ids[:, 0] % 4).astype("int32")
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(token_ids, labels, epochs=30, batch_size=16, verbose=0)
    return model


@pytest.fixture(scope="module")
def named_inputs():
    rng = np.random.default_rng(1)
    return {
        "token_ids": rng.integers(0, VOCAB, (40, LENGTH)).astype("int32"),
        "features": rng.random((40, 3), dtype=np.float32),
    }


@pytest.fixture(scope="module")
def two_input_model():
    """Two named inputs of different dtypes: int32 ids and float features."""
    keras.utils.set_random_seed(1)
    ids = keras.Input((LENGTH,), dtype="int32", name="token_ids")
    features = keras.Input((3,), name="features")
    pooled = layers.GlobalAveragePooling1D()(layers.Embedding(VOCAB, 8)(ids))
    outputs = layers.Dense(5)(layers.Concatenate()([pooled, features]))
    return keras.Model([ids, features], outputs)


def _keras(model, x):
    return np.asarray(model.predict(x, verbose=0))


@TF_ONLY
def test_token_model_tflite_parity_and_tflite_predict(token_model, token_ids, tmp_path):
    from kd_keras.quantization import convert, tflite_predict

    reference = _keras(token_model, token_ids)
    path = tmp_path / "tokens.tflite"
    report = export.to_tflite(token_model, path, sample_inputs=token_ids)
    assert report.passed and report.num_samples == len(token_ids)
    runner = load_runner(path)
    assert runner.inputs[0].name == "token_ids" and runner.inputs[0].dtype == np.int32
    assert runner.inputs[0].quantization is None
    np.testing.assert_allclose(runner.predict(token_ids), reference, atol=1e-5)
    # Fully int8 with int8 output: the ids stay int32, never "quantized".
    int8 = convert(token_model, mode="int8", representative_data=token_ids, int8_io=True)
    int8_runner = load_runner(int8)
    assert int8_runner.inputs[0].dtype == np.int32
    assert np.dtype(int8_runner.interpreter.get_output_details()[0]["dtype"]) == np.int8
    logits = tflite_predict(int8, token_ids)
    assert logits.dtype == np.float32 and logits.shape == reference.shape
    assert np.mean(logits.argmax(1) == reference.argmax(1)) >= 0.95
    # The output is dequantized: same scale as the float logits.
    assert np.abs(logits - reference).max() < 0.1 * np.abs(reference).max()
    # Float ids that are whole numbers are accepted (cast); others refused.
    np.testing.assert_allclose(
        tflite_predict(path.read_bytes(), token_ids.astype("float32")), reference, atol=1e-5
    )
    with pytest.raises(ValueError, match="whole numbers"):
        runner(token_ids[:2] + 0.5)
    # A single input may be passed by any name: runtimes name it differently.
    np.testing.assert_allclose(runner({"ids": token_ids[:4]}), reference[:4], atol=1e-5)


@NEEDS_ONNX_EXPORT
def test_token_model_onnx_parity(token_model, token_ids, tmp_path):
    path = tmp_path / "tokens.onnx"
    report = export.to_onnx(token_model, path, sample_inputs=token_ids)
    assert report.passed
    runner = load_runner(path)
    assert runner.inputs[0].dtype == np.int32
    np.testing.assert_allclose(runner.predict(token_ids), _keras(token_model, token_ids), atol=1e-5)


@TF_ONLY
@NEEDS_ONNX_EXPORT
def test_named_two_input_model_on_every_runtime(two_input_model, named_inputs, tmp_path):
    reference = _keras(two_input_model, named_inputs)
    export.to_tflite(two_input_model, tmp_path / "m.tflite", sample_inputs=named_inputs)
    export.to_onnx(two_input_model, tmp_path / "m.onnx", sample_inputs=named_inputs)
    export.to_saved_model(two_input_model, tmp_path / "sm", sample_inputs=named_inputs)
    for artifact in (tmp_path / "m.tflite", tmp_path / "m.onnx", tmp_path / "sm", two_input_model):
        runner = load_runner(artifact)
        assert sorted(runner.input_names) == ["features", "token_ids"], runner.runtime
        dtypes = {spec.name: np.dtype(spec.dtype) for spec in runner.inputs}
        assert dtypes == {"token_ids": np.int32, "features": np.float32}, runner.runtime
        # Batches of 16 exercise the resize between the full and the last batch.
        np.testing.assert_allclose(
            runner.predict(named_inputs, batch_size=16),
            reference,
            atol=1e-5,
            err_msg=runner.runtime,
        )
        with pytest.raises(ValueError, match=r"missing \['features'\]"):
            runner({"token_ids": named_inputs["token_ids"]})
        with pytest.raises(ValueError, match="takes 2 inputs"):
            runner(named_inputs["features"])
    # Invoke-only latency takes named inputs too.
    result = bench.measure_latency(
        tmp_path / "m.tflite", threads=1, runs=5, warmup=1, inputs=named_inputs
    )
    assert result.p50_ms > 0 and result.call_p50_ms > 0


@TF_ONLY
def test_int8_named_inputs_quantize_only_the_float_input(two_input_model, named_inputs):
    from kd_keras.quantization import convert, tflite_predict

    data = [named_inputs["token_ids"], named_inputs["features"]]
    model_bytes = convert(two_input_model, mode="int8", representative_data=data, int8_io=True)
    runner = load_runner(model_bytes)
    specs = {spec.name: spec for spec in runner.inputs}
    assert specs["token_ids"].dtype == np.int32 and specs["token_ids"].quantization is None
    assert specs["features"].dtype == np.int8 and specs["features"].quantization is not None
    # Independent: quantize by hand with the file's scale and run LiteRT directly.
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model_bytes)
    signature = interpreter.get_signature_runner()
    scale, zero_point = specs["features"].quantization
    quantized = np.clip(np.round(named_inputs["features"] / scale + zero_point), -128, 127)
    out = signature(token_ids=named_inputs["token_ids"], features=quantized.astype(np.int8))
    raw = next(iter(out.values()))
    out_scale, out_zero = interpreter.get_output_details()[0]["quantization"]
    expected = (raw.astype(np.float32) - out_zero) * out_scale
    np.testing.assert_allclose(tflite_predict(model_bytes, named_inputs), expected, atol=1e-6)
    reference = _keras(two_input_model, named_inputs)
    assert np.mean(expected.argmax(1) == reference.argmax(1)) >= 0.9


@TF_ONLY  # tf2onnx is what turns the statistics into inputs
@NEEDS_ONNX_EXPORT
def test_onnx_refuses_normalization_statistics_as_inputs(tmp_path):
    x = np.random.default_rng(0).random((32, 5), dtype=np.float32)
    normalization = layers.Normalization(name="pixel_norm")
    normalization.adapt(x)
    inputs = keras.Input((5,))
    model = keras.Model(inputs, layers.Dense(3)(normalization(inputs)))
    path = tmp_path / "norm.onnx"
    with pytest.raises(ValueError, match=r"Normalization layer\(s\) \['pixel_norm'\]") as error:
        export.to_onnx(model, path, sample_inputs=x)
    assert "layers.Rescaling(" in str(error.value) and not path.exists()
    # The fix the message gives computes the same function and exports.
    std = np.sqrt(x.var(0))
    rescaling = layers.Rescaling(scale=(1 / std).tolist(), offset=(-x.mean(0) / std).tolist())
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(rescaling(x)),
        keras.ops.convert_to_numpy(normalization(x)),
        atol=1e-5,
    )
    fixed = keras.Model(inputs, model.layers[-1](rescaling(inputs)))
    assert export.to_onnx(fixed, path, sample_inputs=x).passed


def test_keras_runner_three_steps_match_predict(two_input_model, named_inputs):
    runner = load_runner(two_input_model)
    runner.set_inputs(named_inputs)
    runner.invoke()
    (outputs,) = runner.get_outputs()
    np.testing.assert_allclose(outputs, _keras(two_input_model, named_inputs), atol=1e-5)
    # A list in the model's input order is the same as the dict.
    as_list = [named_inputs["token_ids"], named_inputs["features"]]
    np.testing.assert_allclose(runner(as_list), outputs, atol=1e-6)
