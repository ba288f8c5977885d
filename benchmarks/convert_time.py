"""Time of `kd_keras.quantization.convert` against TF's SavedModel route.

`convert` traces the model's inference call, freezes its variables into
constants and converts that concrete function. The reference is the route
TensorFlow documents for Keras 3 models: `model.export(...,
format="tf_saved_model")` into a folder, then
`tf.lite.TFLiteConverter.from_saved_model`, with the same converter options.
For each model and mode both routes run `--rounds` times, alternating (load
from other jobs falls on both alike); the table has the median seconds of
each, their ratio, and whether the two files have the same op list and
signature.

Models (`keras.applications`, `weights=None`, 32x32x3, 4 classes): the
float model (`mode=None`) and its `quantize_model` copy after one eager
training step (`mode="qat"`, int8 input and output).

    python -m benchmarks.convert_time
    python -m benchmarks.convert_time --models MobileNetV2 --rounds 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import keras
import numpy as np

from benchmarks.int8_latency_layers import cpu_name
from kd_keras.quantization import convert, quantize_model, tflite_ops
from kd_keras.runtime import litert_interpreter

MODELS = {
    "MobileNetV2": {"alpha": 0.35},
    "ResNet50": {},
    "DenseNet121": {},
}


def saved_model_route(model, mode):
    """The reference: SavedModel export, read back by the converter."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as folder:
        model.export(folder, format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(folder)
        if mode == "qat":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
        return bytes(converter.convert())


def described(model_bytes):
    ops = [op["op"] for op in tflite_ops(model_bytes)]
    return ops, litert_interpreter(model_bytes).get_signature_list()


def build(name, mode):
    model = getattr(keras.applications, name)(
        weights=None, input_shape=(32, 32, 3), classes=4, **MODELS[name]
    )
    if mode != "qat":
        return model
    qat = quantize_model(model, freeze_bn_delay=0)
    rng = np.random.default_rng(0)
    qat.compile("adam", "sparse_categorical_crossentropy", run_eagerly=True)
    qat.fit(
        rng.uniform(0, 255, (2, 32, 32, 3)).astype("float32"),
        rng.integers(0, 4, 2),
        batch_size=2,
        verbose=0,
    )
    return qat


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--modes", nargs="+", default=["float", "qat"], choices=["float", "qat"])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"{cpu_name()}, {os.cpu_count()} cores, TensorFlow backend")
    print(
        "| model | mode | layers | SavedModel route s | convert s | speed-up "
        "| same ops and signature |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in args.models:
        for label in args.modes:
            mode = None if label == "float" else "qat"
            model = build(name, mode)
            times = {"saved": [], "frozen": []}
            files = {}
            for _ in range(args.rounds):
                for route in ("saved", "frozen"):
                    start = time.perf_counter()
                    if route == "saved":
                        files[route] = saved_model_route(model, mode)
                    else:
                        files[route] = convert(model, mode=mode, int8_io=mode == "qat")
                    times[route].append(time.perf_counter() - start)
            saved, frozen = (statistics.median(times[r]) for r in ("saved", "frozen"))
            same = described(files["saved"]) == described(files["frozen"])
            print(
                f"| {name} | {label} | {len(model.layers)} | {saved:.1f} | {frozen:.1f} "
                f"| {saved / frozen:.2f}x | {'yes' if same else 'no'} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
