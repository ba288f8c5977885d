"""Export parity, overwrite refusal and atomic writes (kd_keras.export)."""

import json
import os

import keras
import numpy as np
import pytest

from kd_keras import export
from kd_keras.data import load_digits
from kd_keras.export.base import publish
from kd_keras.export.onnx import onnx_export_available
from kd_keras.io import atomic_path
from kd_keras.models import cnn_student
from tiny import digits_student

TF_ONLY = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="TFLite / SavedModel export needs TensorFlow"
)
NEEDS_ONNX_EXPORT = pytest.mark.skipif(
    not onnx_export_available(),
    reason=f"Keras ONNX export is not installed for {keras.backend.backend()} (jax2onnx)",
)


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.fixture(scope="module")
def student(digits):
    (x_train, y_train), _ = digits
    # Trained enough that few test logits are near-ties, which int8 may flip.
    return digits_student(x_train, y_train, epochs=8, batch_size=32)


def _keras_logits(model, x):
    return np.asarray(model.predict(x, verbose=0))


@TF_ONLY
def test_tflite_float_parity(student, digits, tmp_path):
    _, (x_test, _) = digits
    path = tmp_path / "student.tflite"
    report = export.to_tflite(student, path, sample_inputs=x_test)
    # Independent check: the raw LiteRT interpreter, sample by sample.
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    got = []
    for x in x_test[:64]:
        interpreter.set_tensor(inp["index"], x[None])
        interpreter.invoke()
        got.append(interpreter.get_tensor(out["index"])[0])
    diff = np.abs(np.array(got) - _keras_logits(student, x_test[:64])).max()
    assert diff <= 1e-4
    assert report.passed and report.max_abs_diff <= 1e-4
    assert report.num_samples == 256 and report.criterion == "max_abs_diff"
    written = json.loads((tmp_path / "student.tflite.parity.json").read_text())
    assert written == report.to_dict()


@TF_ONLY
def test_litert_interpreter_reads_paths_and_bytes(student, digits, tmp_path):
    from kd_keras.runtime import litert_interpreter

    _, (x_test, _) = digits
    path = tmp_path / "student.tflite"
    export.to_tflite(student, path, sample_inputs=x_test)
    outputs = []
    for source, xnnpack in [(path, True), (str(path), False), (path.read_bytes(), True)]:
        interpreter = litert_interpreter(source, threads=1, xnnpack=xnnpack)
        inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
        interpreter.set_tensor(inp["index"], x_test[:1])
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(out["index"]))
    expected = _keras_logits(student, x_test[:1])
    for got in outputs:
        np.testing.assert_allclose(got, expected, atol=1e-4)
    with pytest.raises(TypeError, match="path or its content as bytes"):
        litert_interpreter(np.zeros(3))


@NEEDS_ONNX_EXPORT
def test_onnx_float_parity(student, digits, tmp_path):
    _, (x_test, _) = digits
    path = tmp_path / "student.onnx"
    report = export.to_onnx(student, path, sample_inputs=x_test)
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x_test[:64]})[0]
    assert np.abs(got - _keras_logits(student, x_test[:64])).max() <= 1e-4
    assert report.passed and report.max_abs_diff <= 1e-4
    assert export.load_report(path) == report


@TF_ONLY
def test_saved_model_parity(student, digits, tmp_path):
    _, (x_test, _) = digits
    report = export.to_saved_model(student, tmp_path / "sm", sample_inputs=x_test)
    assert (tmp_path / "sm" / "saved_model.pb").exists()
    assert report.passed and report.max_abs_diff <= 1e-4


@TF_ONLY
def test_int8_top1_agreement(student, digits, tmp_path):
    (x_train, _), (x_test, _) = digits
    report = export.to_tflite(
        student,
        tmp_path / "int8.tflite",
        quantization="int8",
        representative_data=x_train[:256],
        sample_inputs=x_test,
    )
    assert report.criterion == "top1_agreement"
    keras_top1 = np.argmax(_keras_logits(student, x_test[:256]), -1)
    tflite_top1 = np.argmax(export.load_runner(tmp_path / "int8.tflite").predict(x_test[:256]), -1)
    assert np.mean(keras_top1 == tflite_top1) >= 0.99
    assert report.top1_agreement >= 0.99


@NEEDS_ONNX_EXPORT
def test_refuses_to_overwrite(student, tmp_path):
    path = tmp_path / "student.onnx"
    path.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export.to_onnx(student, path)
    assert path.read_bytes() == b"precious"
    export.to_onnx(student, path, overwrite=True)
    assert path.read_bytes() != b"precious"
    assert export.runtime_of(path) == "onnx"


@NEEDS_ONNX_EXPORT
def test_failed_parity_publishes_nothing(student, tmp_path):
    """A writer that produces the wrong model: strict parity refuses it, and
    neither the artifact nor a temp file is left behind."""
    keras.utils.set_random_seed(1)
    other = cnn_student((8, 8, 1), name="other")  # untrained: other logits
    wrong = tmp_path / "wrong.onnx"
    export.to_onnx(other, wrong)
    path = tmp_path / "student.onnx"
    with pytest.raises(export.ParityError) as info:
        publish(student, path, lambda tmp: tmp.write_bytes(wrong.read_bytes()))
    assert not info.value.report.passed
    assert info.value.report.max_abs_diff > 1e-4
    assert not path.exists()
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert leftovers == ["student.onnx.parity.json", "wrong.onnx", "wrong.onnx.parity.json"]
    # strict=False publishes with a warning.
    with pytest.warns(UserWarning, match="FAIL"):
        report = publish(
            student,
            path,
            lambda tmp: tmp.write_bytes(wrong.read_bytes()),
            strict=False,
            overwrite=True,
        )
    assert path.exists() and not report.passed


def _failing_write(path, directory=False):
    """Writes half an artifact through atomic_path, then fails."""
    with atomic_path(path, overwrite=True, directory=directory) as tmp:
        if directory:
            tmp.mkdir()
            (tmp / "keep").write_text("v2")
        else:
            tmp.write_bytes(b"half")
        # The temp file sits beside the target and keeps its suffix.
        assert tmp.parent == path.parent and tmp.name.endswith(path.suffix)
        assert tmp.exists()
        raise RuntimeError("boom")


def test_atomic_write_leaves_no_temp_file_on_failure(tmp_path):
    path = tmp_path / "model.tflite"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"):
        _failing_write(path)
    assert os.listdir(tmp_path) == ["model.tflite"]
    assert path.read_bytes() == b"old"
    # Folders too (SavedModel): the old folder survives a failed write.
    folder = tmp_path / "sm"
    folder.mkdir()
    (folder / "keep").write_text("v1")
    with pytest.raises(RuntimeError, match="boom"):
        _failing_write(folder, directory=True)
    assert sorted(os.listdir(tmp_path)) == ["model.tflite", "sm"]
    assert (folder / "keep").read_text() == "v1"
    with atomic_path(folder, overwrite=True, directory=True) as tmp:
        tmp.mkdir()
        (tmp / "keep").write_text("v2")
    assert (folder / "keep").read_text() == "v2"
    assert sorted(os.listdir(tmp_path)) == ["model.tflite", "sm"]


def test_compare_against_numpy():
    rng = np.random.default_rng(1)
    reference = rng.normal(size=(50, 10))
    candidate = reference + rng.normal(scale=1e-3, size=reference.shape)
    candidate[:3] = -reference[:3]  # flip three decisions
    report = export.compare(reference, candidate, quantization="int8", min_top1_agreement=0.95)
    assert report.max_abs_diff == pytest.approx(np.abs(reference - candidate).max())
    assert report.mean_abs_diff == pytest.approx(np.abs(reference - candidate).mean())
    expected = np.mean(reference.argmax(-1) == candidate.argmax(-1))
    assert report.top1_agreement == pytest.approx(expected)
    assert report.passed == (expected >= 0.95)
    float_report = export.compare(reference, candidate, atol=1e-4)
    assert float_report.criterion == "max_abs_diff" and not float_report.passed
    # The float bound scales with outputs larger than 1.
    big = export.compare(1e4 * reference, 1e4 * reference + 0.05, atol=1e-4)
    assert big.threshold == pytest.approx(1e-4 * np.abs(1e4 * reference).max())
    assert big.passed
    with pytest.raises(ValueError, match="atol must be >= 0"):
        export.compare(reference, reference, atol=-1)


@TF_ONLY
def test_tflite_rejects_bad_arguments(student, tmp_path):
    with pytest.raises(ValueError, match="quantization must be one of"):
        export.to_tflite(student, tmp_path / "a.tflite", quantization="int4")
    with pytest.raises(ValueError, match="representative_data"):
        export.to_tflite(student, tmp_path / "a.tflite", quantization="int8")
    assert not (tmp_path / "a.tflite").exists()


def test_runtime_of_explains_unknown_files(tmp_path):
    with pytest.raises(ValueError, match=r"\.tflite, \.onnx or \.keras"):
        export.runtime_of(tmp_path / "model.bin")
    with pytest.raises(ValueError, match="saved_model.pb"):
        export.runtime_of(tmp_path)
