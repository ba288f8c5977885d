"""TFLite export of a text student: int32 `token_ids`, `segment_ids` and
`padding_mask` inputs of a fixed sequence length, the tokenizer outside the
graph (saved beside the model as a keras-hub preprocessor preset), and the
parity check of `kd_keras.export` run in LiteRT before anything is written.

This module converts with `kd_keras.export`'s converter and publishes through
its one path (`kd_keras.export.base.publish`: temp file, parity check by its
one runner on the three named inputs, atomic rename).
"""

from __future__ import annotations

import os
from pathlib import Path

import keras
import numpy as np

from kd_keras.export import ParityReport
from kd_keras.export.base import publish, require_tensorflow_backend
from kd_keras.export.onnx import write_onnx
from kd_keras.export.tflite import convert_to_flatbuffer
from kd_keras.runtime import ONNXRunner, TFLiteRunner

TOKEN_INPUTS = ("token_ids", "segment_ids", "padding_mask")
QUANTIZATIONS = (None, "dynamic")


def fixed_length_model(model: keras.Model, sequence_length: int) -> keras.Model:
    """`model` behind three int32 inputs of shape `(batch, sequence_length)`,
    the signature a phone app fills from its own tokenizer."""
    inputs = {
        name: keras.Input(shape=(int(sequence_length),), dtype="int32", name=name)
        for name in TOKEN_INPUTS
    }
    return keras.Model(inputs, model(inputs), name=f"{model.name}_int32")


def run_tflite(flatbuffer: bytes, inputs: dict, num_threads: int = 1) -> np.ndarray:
    """Runs a text model's flatbuffer in LiteRT on the named int32 inputs
    (`kd_keras.export`'s one runner) and returns its outputs."""
    runner = TFLiteRunner(flatbuffer, threads=num_threads)
    _check_token_inputs(runner, "TFLite")
    return runner.predict({n: inputs[n] for n in TOKEN_INPUTS})


def _check_token_inputs(runner, what: str) -> None:
    missing = [n for n in TOKEN_INPUTS if n not in runner.input_names]
    if missing:
        raise ValueError(f"The {what} model has inputs {runner.input_names}, lacking {missing}.")


def export_text_tflite(
    model: keras.Model,
    folder: str | os.PathLike,
    sample_inputs: dict,
    quantization: str | None = None,
    overwrite: bool = False,
    atol: float | None = None,
    min_top1_agreement: float | None = None,
) -> ParityReport:
    """Writes `<folder>/model[_dynamic].tflite`, its parity report
    (`.parity.json`) and the model's preprocessor preset (tokenizer
    vocabulary and sequence length), after checking the LiteRT outputs on
    `sample_inputs` against Keras (float: max |diff| <= atol; dynamic-range
    int8: top-1 agreement).

    Args:
        model: a keras-hub text classifier (its preprocessor is saved).
        folder: output folder (created).
        sample_inputs: tokenized inputs (`kd_keras.text.tokenize`); their
            length fixes the model's sequence length.
        quantization: `None` (float32) or `"dynamic"` (int8 weights).

    Example:

    ```python
    tokens = kd_keras.text.tokenize(student, test_texts[:64])
    export_text_tflite(student, "out/student", tokens, quantization="dynamic")
    ```
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}.")
    sample = _token_sample(sample_inputs)
    require_tensorflow_backend("TFLite conversion")
    name = "model.tflite" if quantization is None else f"model_{quantization}.tflite"
    return _publish(
        model,
        Path(folder) / name,
        sample,
        lambda wrapped, tmp: tmp.write_bytes(convert_to_flatbuffer(wrapped, quantization)),
        quantization=quantization,
        overwrite=overwrite,
        atol=atol,
        min_top1_agreement=min_top1_agreement,
    )


def export_text_onnx(
    model: keras.Model,
    folder: str | os.PathLike,
    sample_inputs: dict,
    opset: int = 17,
    overwrite: bool = False,
    atol: float | None = None,
) -> ParityReport:
    """Writes `<folder>/model.onnx` (three int32 inputs named like the TFLite
    ones), its parity report against Keras in onnxruntime, and the
    preprocessor preset, as `export_text_tflite` does.

    Example:

    ```python
    export_text_onnx(student, "out/student", kd_keras.text.tokenize(student, texts[:64]))
    ```
    """
    return _publish(
        model,
        Path(folder) / "model.onnx",
        _token_sample(sample_inputs),
        lambda wrapped, tmp: write_onnx(wrapped, tmp, opset),
        overwrite=overwrite,
        atol=atol,
    )


def run_onnx(path: str | os.PathLike, inputs: dict, num_threads: int = 1) -> np.ndarray:
    """Runs a text model's `.onnx` in onnxruntime on the named int32 inputs
    (`kd_keras.export`'s one runner)."""
    runner = ONNXRunner(path, threads=num_threads)
    _check_token_inputs(runner, "ONNX")
    return runner.predict({n: inputs[n] for n in TOKEN_INPUTS})


def _token_sample(sample_inputs: dict) -> dict[str, np.ndarray]:
    """The three token arrays of `sample_inputs`, as int32."""
    missing = [n for n in TOKEN_INPUTS if n not in sample_inputs]
    if missing:
        raise ValueError(
            f"sample_inputs lacks {missing}: pass kd_keras.text.tokenize(model, texts)."
        )
    return {n: np.asarray(sample_inputs[n], dtype=np.int32) for n in TOKEN_INPUTS}


def _publish(
    model,
    path: Path,
    sample: dict[str, np.ndarray],
    write,
    quantization: str | None = None,
    overwrite: bool = False,
    atol: float | None = None,
    min_top1_agreement: float | None = None,
) -> ParityReport:
    """`kd_keras.export`'s one path (temp file, parity against Keras on
    `sample`, then publish) for `model` behind fixed-length int32 inputs,
    written by `write(wrapped_model, tmp)`; then the preprocessor preset
    beside it."""
    wrapped = fixed_length_model(model, sample["token_ids"].shape[1])
    report = publish(
        wrapped,
        path,
        lambda tmp: write(wrapped, tmp),
        quantization=quantization,
        sample_data=sample,
        num_samples=len(sample["token_ids"]),
        atol=atol,
        min_top1_agreement=min_top1_agreement,
        overwrite=overwrite,
    )
    folder = Path(path).parent
    preprocessor = getattr(model, "preprocessor", None)
    if preprocessor is not None and not (folder / "preprocessor.json").exists():
        preprocessor.save_to_preset(str(folder))
    return report


def load_text_preprocessor(folder: str | os.PathLike):
    """The preprocessor (tokenizer and sequence length) saved beside an
    exported text model, to turn strings into its int32 inputs.

    Example:

    ```python
    preprocessor = load_text_preprocessor("out/student")
    inputs = preprocessor(["a new sentence"])  # token_ids, segment_ids, padding_mask
    ```
    """
    import json

    config_file = Path(folder) / "preprocessor.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"No preprocessor.json in {folder}: export with export_text_tflite(model, ...) "
            "where model has a preprocessor."
        )
    preprocessor = keras.saving.deserialize_keras_object(json.loads(config_file.read_text()))
    preprocessor.load_preset_assets(str(folder))
    return preprocessor
