"""A normal run prints nothing a user would have to investigate: no NumPy
FutureWarning from Keras's ONNX exporter, no "tf.function retracing" hint
when the benchmark runs several Keras models."""

from __future__ import annotations

import logging
import warnings

import keras
import numpy as np
import pytest

from kd_keras.bench import benchmark
from kd_keras.export import onnx_export_available, to_onnx
from kd_keras.models import cnn_student


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.mark.skipif(not onnx_export_available(), reason="no ONNX exporter for this backend")
def test_onnx_export_warns_nothing(tmp_path):
    model = cnn_student((8, 8, 1), num_classes=10)
    x = np.random.default_rng(0).random((4, 8, 8, 1), dtype=np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = to_onnx(model, tmp_path / "student.onnx", sample_inputs=x)
    assert report.passed
    assert [str(w.message) for w in caught if issubclass(w.category, FutureWarning)] == []


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="tf.function tracing is TensorFlow's"
)
def test_benchmark_of_several_keras_models_logs_no_retracing_hint():
    # Each Keras model traces its own predict step at batch 1 (latency) and
    # at the evaluation batches (accuracy): with three models that is six
    # traces of the same Python function, which TensorFlow reports as
    # "retracing" although nothing is rebuilt in a loop.
    rng = np.random.default_rng(0)
    x, y = rng.random((300, 8, 8, 1), dtype=np.float32), rng.integers(0, 10, 300)
    models = {f"m{k}": cnn_student((8, 8, 1), num_classes=10) for k in range(3)}
    records = Records()
    logger = logging.getLogger("tensorflow")
    logger.addHandler(records)
    try:
        report = benchmark(
            models, x, y, threads=(1,), xnnpack=(True,), runs=3, warmup=1, measure_peak=False
        )
    finally:
        logger.removeHandler(records)
    assert len(report.artifacts) == 3
    assert [m for m in records.messages if "retracing" in m] == []
    # The filter is scoped to the benchmark: TensorFlow's logger is as before.
    assert not logger.filters
