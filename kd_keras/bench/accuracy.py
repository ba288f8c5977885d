"""Top-1 accuracy of any artifact on an evaluation set, through the same
runners that parity and latency use, so every number in a report comes from
the file that ships."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from kd_keras.runtime import Runner, load_runner


def evaluate_accuracy(artifact, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> float:
    """Fraction of `x` whose argmax output equals the label.

    Args:
        artifact: path (`.tflite`, `.onnx`, `.keras`, SavedModel folder), a
            `keras.Model` or a `Runner`.
        x: inputs: one array, or named inputs `{name: array}` (e.g. a text
            model's int32 `token_ids` / `segment_ids` / `padding_mask`).
        y: integer labels `(n,)` or one-hot `(n, classes)`.
        batch_size: samples per call (LiteRT resizes its input once).

    Example:

    ```python
    x = np.random.rand(64, 8).astype("float32")
    y = np.random.randint(0, 3, size=64)
    student = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)]
    )

    kd_keras.export.to_tflite(student, "student_int8.tflite", quantization="dynamic")
    acc = evaluate_accuracy("student_int8.tflite", x, y)
    ```
    """
    y = np.asarray(y)
    if isinstance(x, Mapping):
        x = {name: np.asarray(value) for name, value in x.items()}
        counts = {len(value) for value in x.values()}
        if len(counts) != 1:
            raise ValueError(f"The named inputs have different sample counts: {sorted(counts)}.")
        count = counts.pop()
    else:
        x = np.asarray(x)
        count = len(x)
    if count != len(y):
        raise ValueError(f"x has {count} samples but y has {len(y)}.")
    if count == 0:
        raise ValueError("The evaluation set is empty.")
    labels = np.argmax(y, axis=-1) if y.ndim > 1 else y.astype(np.int64)
    runner = artifact if isinstance(artifact, Runner) else load_runner(artifact)
    outputs = runner.predict(x, batch_size=batch_size)
    return float(np.mean(np.argmax(outputs, axis=-1) == labels))
