"""`to_onnx`: Keras model -> `.onnx`, checked in onnxruntime."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

from kd_keras.export.base import publish
from kd_keras.export.parity import ParityReport

DEFAULT_OPSET = 17


def to_onnx(
    model,
    path: str | os.PathLike,
    opset: int = DEFAULT_OPSET,
    overwrite: bool = False,
    sample_inputs=None,
    atol: float | None = None,
    strict: bool = True,
) -> ParityReport:
    """Exports `model` with `model.export(format="onnx")` (tf2onnx on the
    TensorFlow and JAX backends, `torch.onnx` on torch), re-loads it in
    onnxruntime and checks max |keras - onnx| <= `atol` (default 1e-4,
    scaled by the largest |output| when that exceeds 1).

    Returns:
        The `ParityReport`, also written to `<path>.parity.json`.

    Example:

    ```python
    report = kd_keras.export.to_onnx(student, "student.onnx", opset=17)
    print(report.summary())
    ```
    """
    opset = int(opset)
    if opset < 9:
        raise ValueError(f"opset must be >= 9 (onnxruntime's oldest), got {opset}.")

    def write(tmp: Path) -> None:
        with contextlib.redirect_stdout(io.StringIO()):
            model.export(str(tmp), format="onnx", verbose=False, opset_version=opset)

    return publish(
        model,
        path,
        write,
        sample_data=sample_inputs,
        atol=atol,
        strict=strict,
        overwrite=overwrite,
    )
