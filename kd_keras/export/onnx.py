"""`to_onnx`: Keras model -> `.onnx`, checked in onnxruntime."""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path

from kd_keras.export.base import publish
from kd_keras.export.parity import ParityReport
from kd_keras.runtime import NORMALIZATION_FIX, ONNXRunner

DEFAULT_OPSET = 17
# What Keras's ONNX export needs on each backend.
_BACKEND_REQUIREMENT = {"tensorflow": "tf2onnx", "jax": "jax2onnx", "torch": "torch"}


def onnx_export_available() -> bool:
    """Whether `to_onnx` can run on the current Keras backend (TensorFlow
    needs tf2onnx, JAX jax2onnx, torch torch.onnx)."""
    import importlib.util

    import keras

    module = _BACKEND_REQUIREMENT.get(keras.backend.backend())
    return module is not None and importlib.util.find_spec(module) is not None


def write_onnx(model, path: str | os.PathLike, opset: int) -> None:
    """`model.export(path, format="onnx")`, quietly: Keras's exporter prints
    its progress on stdout, and its tf2onnx patch probes `np.object`, which
    NumPy answers with a FutureWarning that says nothing about the user's
    model. Other warnings pass through.

    Example:

    ```python
    write_onnx(student, "student.onnx", opset=17)
    ```
    """
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*`np.object`", category=FutureWarning)
        model.export(str(path), format="onnx", verbose=False, opset_version=int(opset))


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
    x_train = np.random.rand(64, 8).astype("float32")
    x_test = np.random.rand(16, 8).astype("float32")
    student = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)]
    )

    report = kd_keras.export.to_onnx(student, "student.onnx", opset=17)
    print(report.summary())
    ```
    """
    if not onnx_export_available():
        import keras

        backend = keras.backend.backend()
        raise ImportError(
            f"ONNX export on the {backend} backend needs "
            f"`pip install {_BACKEND_REQUIREMENT.get(backend, 'tf2onnx')}`; or save the model "
            "(model.save('m.keras')) and export it under KERAS_BACKEND=tensorflow."
        )
    opset = int(opset)
    if opset < 9:
        raise ValueError(f"opset must be >= 9 (onnxruntime's oldest), got {opset}.")

    def write(tmp: Path) -> None:
        write_onnx(model, tmp, opset)
        check_onnx_inputs(model, tmp)

    return publish(
        model,
        path,
        write,
        sample_data=sample_inputs,
        atol=atol,
        strict=strict,
        overwrite=overwrite,
    )


def check_onnx_inputs(model, path: str | os.PathLike) -> None:
    """Refuses an `.onnx` with more inputs than the Keras model: tf2onnx
    turns the mean and variance of a `Normalization` layer into required
    inputs, which no application would know to feed.

    Example:

    ```python
    check_onnx_inputs(model, "model.onnx")  # ValueError naming the layer
    ```
    """
    names = ONNXRunner(path).input_names
    expected = len(getattr(model, "inputs", None) or [None])
    if len(names) <= expected:
        return
    normalizations = [
        layer.name for layer in _all_layers(model) if type(layer).__name__ == "Normalization"
    ]
    culprit = (
        f"its Normalization layer(s) {normalizations}"
        if normalizations
        else "layers whose constants were exported as variables"
    )
    raise ValueError(
        f"The ONNX export of {model.name!r} takes {len(names)} inputs {names} where the model "
        f"takes {expected}: tf2onnx turned the statistics of {culprit} into inputs. "
        + NORMALIZATION_FIX
    )


def _all_layers(model):
    for layer in getattr(model, "layers", []):
        yield layer
        yield from _all_layers(layer)
