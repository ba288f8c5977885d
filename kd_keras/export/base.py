"""The one path every export takes: write to a temp name, re-load it, check
parity, then publish it atomically with its figures beside it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from kd_keras.export.parity import (
    ParityReport,
    keras_outputs,
    sample_inputs,
    verify_and_record,
)
from kd_keras.io import atomic_path, check_output_path


def publish(
    model,
    path: str | os.PathLike,
    write: Callable[[Path], None],
    *,
    quantization: str | None = None,
    sample_data=None,
    num_samples: int = 256,
    atol: float | None = None,
    min_top1_agreement: float | None = None,
    strict: bool = True,
    overwrite: bool = False,
    directory: bool = False,
) -> ParityReport:
    """Runs `write(tmp_path)`, checks the result against `model`, publishes it.

    The existing-path check happens before any conversion work, so a refused
    overwrite costs nothing.
    """
    path = check_output_path(path, overwrite)
    inputs = sample_inputs(model, sample_data, num_samples=num_samples)
    # Before writing: exporters such as ONNX need a model that has been called.
    reference = keras_outputs(model, inputs)
    with atomic_path(path, overwrite=overwrite, directory=directory) as tmp:
        write(tmp)
        report = verify_and_record(
            model,
            tmp,
            path,
            inputs,
            quantization=quantization,
            atol=atol,
            min_top1_agreement=min_top1_agreement,
            strict=strict,
            overwrite=True,
            reference=reference,
        )
    return report


def require_tensorflow_backend(what: str) -> None:
    import keras

    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(
            f"{what} needs the TensorFlow backend; this process runs "
            f"KERAS_BACKEND={keras.backend.backend()}. Save the model "
            "(model.save('m.keras')) and export it from a process started with "
            "KERAS_BACKEND=tensorflow."
        )
