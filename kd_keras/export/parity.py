"""Does the exported artifact compute what the Keras model computes?

Float artifacts are judged by the largest absolute difference of their
outputs; quantized ones (dynamic-range, float16, int8) by how often their
top-1 class agrees with the Keras model's, because quantization is allowed
to move logits but should not move decisions.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from kd_keras.io import parity_report_path, write_json
from kd_keras.runtime import KerasRunner, Runner, load_runner

DEFAULT_ATOL = 1e-4
DEFAULT_MIN_TOP1 = 0.99


class ParityError(AssertionError):
    """Raised when an artifact's outputs disagree with the Keras model's.

    `report` holds the figures.
    """

    def __init__(self, report: ParityReport):
        self.report = report
        super().__init__(report.summary())


@dataclasses.dataclass
class ParityReport:
    """Figures of one parity check.

    Attributes:
        artifact: path of the checked file (or folder).
        runtime: `"tflite"`, `"onnx"` or `"saved_model"`.
        quantization: `None` for float, else the quantization mode.
        num_samples: how many inputs were compared.
        max_abs_diff: max |keras - artifact| over all outputs.
        mean_abs_diff: mean |keras - artifact|.
        top1_agreement: fraction of samples whose argmax agrees.
        criterion: `"max_abs_diff"` or `"top1_agreement"`.
        threshold: the bound the criterion was held to; for float artifacts
            `atol * max(1, max|keras output|)`.
        passed: whether it held.
    """

    artifact: str
    runtime: str
    quantization: str | None
    num_samples: int
    max_abs_diff: float
    mean_abs_diff: float
    top1_agreement: float
    criterion: str
    threshold: float
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        bound = "<=" if self.criterion == "max_abs_diff" else ">="
        return (
            f"[{verdict}] {self.runtime} parity of {self.artifact} "
            f"({self.quantization or 'float32'}, {self.num_samples} samples): "
            f"max|diff|={self.max_abs_diff:.3g}, mean|diff|={self.mean_abs_diff:.3g}, "
            f"top-1 agreement={self.top1_agreement:.2%}; "
            f"required {self.criterion} {bound} {self.threshold:g}"
        )


def sample_inputs(model, sample_data=None, num_samples: int = 32, seed: int = 0):
    """The inputs a parity check runs: an array, or `{input name: array}` for
    a model with several inputs.

    `sample_data` (an array, a dict of named arrays, or an iterable of
    batches / `(x, y)` tuples such as a representative dataset) is used when
    given; otherwise uniform random values in [0, 1) of the model's input
    shapes. Real samples are better: quantized models are calibrated for
    them, not for noise; and integer inputs (token ids) need them, because
    which ids are valid is not known from the model.
    """
    if sample_data is not None:
        return _take(sample_data, num_samples)
    import keras

    rng = np.random.default_rng(seed)
    arrays = {}
    for tensor in model.inputs:
        shape = tuple(tensor.shape[1:])
        dtype = np.dtype(keras.backend.standardize_dtype(tensor.dtype))
        if any(d is None for d in shape):
            raise ValueError(
                f"The model's input {tensor.name!r} has shape {tensor.shape}, with unknown "
                "dimensions besides the batch; pass sample_inputs=<array or dict of arrays> "
                "to the export so the parity check has something to run."
            )
        if not np.issubdtype(dtype, np.floating):
            raise ValueError(
                f"The model's input {tensor.name!r} takes {dtype.name} values (token ids?), "
                "so random floats cannot stand in for it; pass sample_inputs=<real inputs> "
                "(a dict {input name: array} for several inputs) to the export."
            )
        arrays[tensor.name] = rng.random((num_samples,) + shape, dtype=np.float32).astype(dtype)
    return next(iter(arrays.values())) if len(arrays) == 1 else arrays


def compare(
    reference: np.ndarray,
    candidate: np.ndarray,
    quantization: str | None = None,
    atol: float | None = None,
    min_top1_agreement: float | None = None,
    artifact: str = "",
    runtime: str = "",
) -> ParityReport:
    """Compares two output arrays and applies the criterion for `quantization`.

    Example:

    ```python
    keras_logits = np.array([[2.0, -1.0, 0.5]], "float32")
    tflite_logits = keras_logits + 1e-6
    report = compare(keras_logits, tflite_logits)
    assert report.passed, report.summary()
    ```
    """
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64).reshape(reference.shape)
    diff = np.abs(reference - candidate)
    agreement = float(np.mean(np.argmax(reference, axis=-1) == np.argmax(candidate, axis=-1)))
    if quantization is None:
        criterion = "max_abs_diff"
        atol = DEFAULT_ATOL if atol is None else float(atol)
        if atol < 0:
            raise ValueError(f"atol must be >= 0, got {atol}.")
        # float32 rounding is relative: for outputs larger than 1 in magnitude
        # the bound grows with them (atol * max|reference|).
        threshold = atol * max(1.0, float(np.abs(reference).max()))
        passed = float(diff.max()) <= threshold
    else:
        criterion = "top1_agreement"
        threshold = DEFAULT_MIN_TOP1 if min_top1_agreement is None else min_top1_agreement
        passed = agreement >= threshold
    return ParityReport(
        artifact=str(artifact),
        runtime=runtime,
        quantization=quantization,
        num_samples=int(reference.shape[0]),
        max_abs_diff=float(diff.max()),
        mean_abs_diff=float(diff.mean()),
        top1_agreement=agreement,
        criterion=criterion,
        threshold=float(threshold),
        passed=bool(passed),
    )


def check_parity(
    model,
    artifact,
    inputs,
    quantization: str | None = None,
    atol: float | None = None,
    min_top1_agreement: float | None = None,
    name: str | None = None,
    reference: np.ndarray | None = None,
) -> ParityReport:
    """Runs `inputs` through `model` and the re-loaded `artifact` and compares.

    Args:
        model: the Keras model the artifact was exported from.
        artifact: its path (or a `Runner`).
        inputs: a batch of inputs: an array, or `{input name: array}`.
        quantization: `None` judges by `atol` on max |diff|; anything else by
            `min_top1_agreement`.
        name: what to call the artifact in the report (default: its path).
        reference: the model's outputs on `inputs`, when already computed.

    Example:

    ```python
    x = np.random.rand(64, 8).astype("float32")
    y = np.random.randint(0, 3, size=64)
    student = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)]
    )

    kd_keras.export.to_onnx(student, "student.onnx")
    report = check_parity(student, "student.onnx", x[:64])
    ```
    """
    runner = artifact if isinstance(artifact, Runner) else load_runner(artifact)
    if reference is None:
        reference = keras_outputs(model, inputs)
    candidate = runner.predict(inputs)
    return compare(
        reference,
        candidate,
        quantization=quantization,
        atol=atol,
        min_top1_agreement=min_top1_agreement,
        artifact=name if name is not None else str(artifact),
        runtime=runner.runtime,
    )


def verify_and_record(
    model,
    tmp_artifact: Path,
    final_path: Path,
    inputs,
    quantization: str | None,
    atol: float | None,
    min_top1_agreement: float | None,
    strict: bool,
    overwrite: bool,
    reference: np.ndarray | None = None,
) -> ParityReport:
    """Checks the not-yet-published `tmp_artifact`, writes the figures beside
    `final_path`, and raises `ParityError` when `strict` and the check failed
    (the caller then discards the temp file, so no wrong artifact appears)."""
    report = check_parity(
        model,
        tmp_artifact,
        inputs,
        quantization=quantization,
        atol=atol,
        min_top1_agreement=min_top1_agreement,
        name=str(final_path),
        reference=reference,
    )
    write_json(parity_report_path(final_path), report.to_dict(), overwrite=overwrite)
    if not report.passed:
        if strict:
            raise ParityError(report)
        warnings.warn(report.summary(), stacklevel=3)
    return report


def load_report(artifact: str | Path) -> ParityReport:
    """Reads the parity figures written beside `artifact`."""
    return ParityReport(**json.loads(parity_report_path(artifact).read_text()))


def keras_outputs(model, inputs) -> np.ndarray:
    """The model's (first) output on `inputs` (an array or named inputs), as
    NumPy, computed by the same `KerasRunner` that runs `.keras` files."""
    return KerasRunner(model).predict(inputs, batch_size=256)


def _take(data, num_samples: int):
    if isinstance(data, dict):
        return {name: np.asarray(array)[:num_samples] for name, array in data.items()}
    if isinstance(data, np.ndarray) or hasattr(data, "__array__") and not callable(data):
        return np.asarray(data)[:num_samples]
    if callable(data):  # a representative_dataset generator function
        data = data()
    batches, count = [], 0
    for batch in data:
        if isinstance(batch, (list, tuple)) and not isinstance(batch, dict):
            batch = batch[0]  # (x, y) or (x, y, sample_weight)
        batch = (
            {name: np.asarray(a) for name, a in batch.items()}
            if isinstance(batch, dict)
            else np.asarray(batch)
        )
        batches.append(batch)
        count += len(next(iter(batch.values()))) if isinstance(batch, dict) else len(batch)
        if count >= num_samples:
            break
    if not batches:
        raise ValueError("sample data yielded no batches to check parity on.")
    if isinstance(batches[0], dict):
        return {
            name: np.concatenate([b[name] for b in batches])[:num_samples] for name in batches[0]
        }
    return np.concatenate(batches)[:num_samples]
