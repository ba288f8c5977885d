"""Quantization of a student: quantization-aware training (fake-quant int8
fine-tune) and the parity-checked `.tflite` of a model at one quantization
mode (float32, a post-training mode, or a QAT model's full int8).

Example:

```python
from kd_keras.pipeline.quantize_step import export_tflite, quantize_aware_train

qat, history = quantize_aware_train(student, x, y, epochs=2)
export_tflite(qat, "student_int8.tflite", "qat", sample_inputs=x_test)
```
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from kd_keras.export import to_tflite
from kd_keras.pipeline.training import train
from kd_keras.quantization import quantize_model


def quantize_aware_train(
    student,
    x: np.ndarray,
    y: np.ndarray,
    *,
    teacher=None,
    epochs: int = 2,
    learning_rate: float = 1e-4,
    **train_kwargs: Any,
):
    """Quantization-aware training: `quantize_model(student)` (BN folded,
    int8 fake-quant) fine-tuned on labels or distilled from `teacher`
    (`train_kwargs` as for `train`); returns `(qat_model, history)`. Convert
    it with `export_tflite(qat_model, path, "qat")` for a fully int8 `.tflite`."""
    qat = quantize_model(student)
    history = train(
        qat, x, y, teacher=teacher, epochs=epochs, learning_rate=learning_rate, **train_kwargs
    )
    return qat, history


def export_tflite(
    model,
    path: str | os.PathLike,
    mode: str | None,
    *,
    calibration: np.ndarray | None = None,
    sample_inputs: np.ndarray | None = None,
    overwrite: bool = False,
    strict: bool = True,
    **layout,
):
    """`.tflite` of `model` with a parity check (`kd_keras.export.to_tflite`).

    `mode`: `None` (float32), a PTQ mode (`"dynamic"`, `"int8"` calibrated on
    `calibration`, `"float16"`) or `"qat"` for a `quantize_aware_train`
    model, converted fully int8 (int8 input and output too). `layout`:
    `convert`'s `batch_size` / `strip_strings`.
    """
    return to_tflite(
        model,
        path,
        quantization=mode,
        representative_data=calibration if mode == "int8" else None,
        sample_inputs=sample_inputs,
        overwrite=overwrite,
        strict=strict,
        **({"int8_io": True} if mode == "qat" else {}),
        **layout,
    )
