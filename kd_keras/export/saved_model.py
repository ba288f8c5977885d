"""`to_saved_model`: Keras model -> TensorFlow SavedModel folder (the input of
TF Serving and of `tf.lite.TFLiteConverter.from_saved_model`)."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

from kd_keras.export.base import publish
from kd_keras.export.parity import ParityReport


def to_saved_model(
    model,
    path: str | os.PathLike,
    overwrite: bool = False,
    sample_inputs=None,
    atol: float | None = None,
    strict: bool = True,
) -> ParityReport:
    """Exports `model` as a SavedModel folder with a `serve` endpoint,
    re-loads it with `tf.saved_model.load` and checks parity.

    Returns:
        The `ParityReport`, written beside the folder as `<path>.parity.json`.

    Example:

    ```python
    x_train = np.random.rand(64, 8).astype("float32")
    x_test = np.random.rand(16, 8).astype("float32")
    student = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)]
    )

    report = kd_keras.export.to_saved_model(student, "student_savedmodel")
    ```
    """

    def write(tmp: Path) -> None:
        with contextlib.redirect_stdout(io.StringIO()):
            model.export(str(tmp), format="tf_saved_model", verbose=False)

    return publish(
        model,
        path,
        write,
        sample_data=sample_inputs,
        atol=atol,
        strict=strict,
        overwrite=overwrite,
        directory=True,
    )
