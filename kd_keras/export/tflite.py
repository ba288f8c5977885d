"""`to_tflite`: Keras model -> `.tflite` flatbuffer, checked in LiteRT."""

from __future__ import annotations

import os
from pathlib import Path

from kd_keras.export.base import publish, require_tensorflow_backend
from kd_keras.export.parity import ParityReport
from kd_keras.quantization.convert import convert

QUANTIZATIONS = (None, "dynamic", "int8", "float16", "qat")


def to_tflite(
    model,
    path: str | os.PathLike,
    quantization: str | None = None,
    representative_data=None,
    overwrite: bool = False,
    sample_inputs=None,
    atol: float | None = None,
    min_top1_agreement: float | None = None,
    strict: bool = True,
    **convert_kwargs,
) -> ParityReport:
    """Converts `model` to TFLite, re-loads it in LiteRT and checks parity.

    Args:
        model: a Keras 3 model (TensorFlow backend).
        path: the `.tflite` file to write (atomically).
        quantization: `None` (float32), `"dynamic"` (int8 weights, float
            activations), `"int8"` (full integer, needs
            `representative_data`), `"float16"` (float16 weights) or
            `"qat"` (a `kd_keras.quantization.quantize_model` model, whose
            fake-quant ranges become int8 kernels).
        representative_data: calibration inputs for `"int8"`: an array, or an
            iterable / generator function of batches.
        overwrite: replace an existing `path`.
        sample_inputs: inputs for the parity check (default: the first
            samples of `representative_data`, else uniform noise).
        atol: float32 criterion, max |keras - tflite| <= atol (default
            1e-4), scaled by the largest |output| when that exceeds 1.
        min_top1_agreement: quantized criterion (default 0.99).
        strict: raise `ParityError` (and write nothing but the figures) when
            the check fails; `False` only warns.
        **convert_kwargs: passed to `kd_keras.quantization.convert` (e.g.
            `int8_io=True`, `num_calibration_batches=...`, `batch_size=1`,
            `strip_strings=True`, `sparse=True`; the parity check runs a
            fixed-batch file batch by batch).

    Returns:
        The `ParityReport`, also written to `<path>.parity.json`.

    Example:

    ```python
    x_train = np.random.rand(64, 8).astype("float32")
    x_test = np.random.rand(16, 8).astype("float32")
    student = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)]
    )

    report = kd_keras.export.to_tflite(student, "student.tflite")
    report = kd_keras.export.to_tflite(
        student, "student_int8.tflite", quantization="int8",
        representative_data=x_train[:32], sample_inputs=x_test)
    ```
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}.")
    if quantization == "int8" and representative_data is None:
        raise ValueError(
            'quantization="int8" calibrates activation ranges and needs '
            "representative_data=<a few hundred training inputs>."
        )
    require_tensorflow_backend("TFLite conversion")

    def write(tmp: Path) -> None:
        tmp.write_bytes(
            convert_to_flatbuffer(model, quantization, representative_data, **convert_kwargs)
        )

    return publish(
        model,
        path,
        write,
        quantization=quantization,
        sample_data=sample_inputs if sample_inputs is not None else representative_data,
        atol=atol,
        min_top1_agreement=min_top1_agreement,
        strict=strict,
        overwrite=overwrite,
    )


def convert_to_flatbuffer(
    model, quantization=None, representative_data=None, **convert_kwargs
) -> bytes:
    """The flatbuffer bytes of `model` under `quantization` (one of
    `QUANTIZATIONS`), from `kd_keras.quantization.convert`, the one converter."""
    return convert(
        model, mode=quantization, representative_data=representative_data, **convert_kwargs
    )
