"""Shared pieces of the Fashion-MNIST benchmarks: data, the reference teacher
(trained once and kept in benchmarks/out/), epoch timing."""

from __future__ import annotations

import os
import time
from pathlib import Path

import keras
import numpy as np

from kd_keras.bench import evaluate_accuracy
from kd_keras.data import load_fashion_mnist
from kd_keras.models import cnn_student, cnn_teacher

OUT = Path(__file__).resolve().parent / "out"
TEACHER_PATH = OUT / "fmnist_teacher.keras"
CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def data():
    return load_fashion_mnist()


def teacher(epochs: int = 8, seed: int = 0, verbose: int = 2) -> keras.Model:
    """The reference teacher (about 1.23 M parameters), trained once with a fixed seed and
    cached at benchmarks/out/fmnist_teacher.keras for every benchmark."""
    if TEACHER_PATH.exists():
        return keras.saving.load_model(TEACHER_PATH, compile=False)
    (x, y), (xt, yt) = data()
    keras.utils.set_random_seed(seed)
    model = cnn_teacher()
    model.compile(keras.optimizers.Adam(1e-3), CE, metrics=["accuracy"])
    model.fit(x, y, epochs=epochs, batch_size=128, validation_data=(xt, yt), verbose=verbose)
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = TEACHER_PATH.with_suffix(".tmp.keras")
    model.save(tmp)
    os.replace(tmp, TEACHER_PATH)
    return model


def student(seed: int, filters=(8, 16)) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return cnn_student(filters=tuple(filters))


def copy_of(model: keras.Model) -> keras.Model:
    """A clone with the same weights, so rows that start from one model do not
    train each other's weights."""
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


class EpochTimer(keras.callbacks.Callback):
    """Wall time of each epoch; `median()` skips the first (tracing)."""

    def on_train_begin(self, logs=None):
        self.times = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self._start)

    def median(self) -> float:
        return float(np.median(self.times[1:] if len(self.times) > 1 else self.times))


def accuracy(model: keras.Model, x, y) -> float:
    """Top-1 accuracy of a Keras model: `kd_keras.bench.evaluate_accuracy`,
    1,024 images a call."""
    return evaluate_accuracy(model, x, y, batch_size=1024)


def mean_spread(values) -> str:
    values = np.asarray(values) * 100
    return f"{values.mean():.2f} ± {values.std():.2f}"


def latency_ms(model_bytes: bytes, sample=None, warmup: int = 50, runs: int = 500) -> float:
    """Median time of one `invoke()` of a `.tflite` on `sample` (float; quantized
    for an int8 input; default: zeros of the file's input shape), 1 thread,
    default XNNPACK delegate, in milliseconds: `kd_keras.bench.measure_latency`
    (the input set once, outside the timed runs, as `benchmark_model` does)."""
    from kd_keras.bench import measure_latency

    if sample is None:
        from kd_keras.runtime import TFLiteRunner

        shape = TFLiteRunner(model_bytes).interpreter.get_input_details()[0]["shape"]
        sample = np.zeros(shape, "float32")
    sample = np.asarray(sample)
    result = measure_latency(
        model_bytes, threads=1, runs=runs, warmup=warmup, batch_size=len(sample), inputs=sample
    )
    return float(result.p50_ms)
