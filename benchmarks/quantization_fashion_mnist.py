"""Fashion-MNIST quantization benchmark (issue 4).

One float student (kd_keras.models.cnn_student, 9.2 k params) trained once,
then every compression path turned into a .tflite and measured the same way:
test accuracy through the LiteRT interpreter, .tflite size raw and gzipped,
and 1-thread latency (batch 1, warm-up then N timed runs, median) as a ratio
to the float .tflite measured in the same run.

Rows: float TFLite, dynamic range, full-int8 PTQ, QAT (labels), QAT +
distillation (kd_keras.Distiller with the cached reference teacher),
clustering (16 clusters), pruned 80 % + QAT int8 (kd_keras.pruning), and
TFMOT QAT on the same architecture rebuilt in tf_keras.

    python -m benchmarks.quantization_fashion_mnist --epochs 4 --qat-epochs 2
"""

from __future__ import annotations

import argparse
import gzip
import time

import keras
import numpy as np

import kd_keras
from benchmarks import common
from kd_keras import pruning
from kd_keras.quantization import (
    convert,
    quantize_model,
    quantize_post_training,
    tflite_predict,
)
from kd_keras.quantization.clustering import (
    CentroidInitialization,
    cluster_weights,
    strip_clustering,
)
from kd_keras.quantization.convert import _interpreter

BATCH = 128


def sparsity(model) -> float:
    """Fraction of exact zeros over the kernels of a (stripped) model."""
    kernels = [keras.ops.convert_to_numpy(w) for w in model.weights if w.name == "kernel"]
    return float(sum((k == 0).sum() for k in kernels) / sum(k.size for k in kernels))


def latency_ms(model_bytes, sample, warmup=50, runs=500):
    interpreter = _interpreter(model_bytes, num_threads=1)
    inp = interpreter.get_input_details()[0]
    x = sample
    if inp["dtype"] != np.float32:
        scale, zero = inp["quantization"]
        x = np.clip(np.round(sample / scale + zero), -128, 127)
    x = x.astype(inp["dtype"])
    if tuple(inp["shape"]) != x.shape:
        interpreter.resize_tensor_input(inp["index"], x.shape)
        interpreter.allocate_tensors()
    times = []
    for i in range(warmup + runs):
        interpreter.set_tensor(inp["index"], x)
        start = time.perf_counter()
        interpreter.invoke()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def compile_fit(model, x, y, epochs, lr, callbacks=()):
    model.compile(keras.optimizers.Adam(lr), common.CE, metrics=["accuracy"])
    model.fit(x, y, epochs=epochs, batch_size=BATCH, verbose=2, callbacks=list(callbacks))
    return model


def tf_keras_student():
    """kd_keras.models.cnn_student rebuilt layer for layer in tf_keras."""
    import tf_keras

    layers = tf_keras.layers
    inputs = tf_keras.Input((28, 28, 1), name="image")
    x = inputs
    for i, f in enumerate((8, 16), start=1):
        x = layers.Conv2D(f, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = layers.BatchNormalization(name=f"bn{i}")(x)
        x = layers.ReLU(name=f"block{i}")(x)
        x = layers.MaxPooling2D(name=f"pool{i}")(x)
    x = layers.Flatten(name="embedding")(x)
    return tf_keras.Model(inputs, layers.Dense(10, name="logits")(x), name="student_tf_keras")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=4, help="float training epochs")
    parser.add_argument("--qat-epochs", type=int, default=2, help="QAT / fine-tune epochs")
    parser.add_argument("--calibration-batches", type=int, default=200)
    parser.add_argument("--latency-runs", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="smoke test: first N images")
    args = parser.parse_args()

    (x, y), (xt, yt) = common.data()
    if args.limit:
        x, y, xt, yt = x[: args.limit], y[: args.limit], xt[: args.limit], yt[: args.limit]
    sample = xt[:1]
    rows = []

    def record(name, model_bytes, note=""):
        accuracy = float(np.mean(tflite_predict(model_bytes, xt).argmax(1) == yt))
        rows.append(
            {
                "name": name,
                "accuracy": accuracy,
                "raw": len(model_bytes),
                "gz": len(gzip.compress(model_bytes, 9)),
                "latency": latency_ms(model_bytes, sample, runs=args.latency_runs),
                "latency64": latency_ms(model_bytes, xt[:64], runs=max(args.latency_runs // 10, 5)),
                "note": note,
            }
        )
        print(f"{name}: acc {accuracy:.4f} size {len(model_bytes)}", flush=True)

    start = time.time()
    student = compile_fit(common.student(args.seed), x, y, args.epochs, 1e-3)
    float_bytes = convert(student)
    record("float32 TFLite", float_bytes)
    record("dynamic range (PTQ)", quantize_post_training(student, "dynamic"),
           "weights < 1024 elements stay float")
    record(
        "full int8 (PTQ)",
        quantize_post_training(
            student, "int8", representative_data=x[:args.calibration_batches],
            num_calibration_batches=args.calibration_batches, int8_io=True,
        ),
        f"{args.calibration_batches} calibration samples, int8 I/O",
    )
    record("float16 (PTQ)", quantize_post_training(student, "float16"))

    keras.utils.set_random_seed(args.seed)
    qat = compile_fit(quantize_model(student), x, y, args.qat_epochs, 1e-4)
    record("QAT int8 (labels)", convert(qat, mode="qat", int8_io=True),
           f"+{args.qat_epochs} QAT epochs")

    keras.utils.set_random_seed(args.seed)
    distiller = kd_keras.Distiller(
        student=quantize_model(student),
        teacher=common.teacher(),
        losses=[kd_keras.losses.SoftTargetKD(temperature=4.0)],
        alpha=0.1,
    )
    distiller.compile(optimizer=keras.optimizers.Adam(1e-4), metrics=["accuracy"])
    distiller.fit(x, y, epochs=args.qat_epochs, batch_size=BATCH, verbose=2)
    record("QAT int8 + distillation", convert(distiller.student, mode="qat", int8_io=True),
           "teacher 1.23 M params, T=4, alpha=0.1")

    keras.utils.set_random_seed(args.seed)
    clustered = compile_fit(
        cluster_weights(student, 16, CentroidInitialization.KMEANS_PLUS_PLUS),
        x, y, args.qat_epochs, 1e-4,
    )
    record("clustering, 16 clusters (float)", convert(strip_clustering(clustered)),
           "k-means++ init")

    keras.utils.set_random_seed(args.seed)
    pruned = pruning.prune_low_magnitude(
        student, pruning_schedule=pruning.ConstantSparsity(0.8, begin_step=0, frequency=100)
    )
    pruned = compile_fit(pruned, x, y, args.qat_epochs, 1e-3,
                         callbacks=[pruning.UpdatePruningStep()])
    stripped = pruning.strip_pruning(pruned)
    pruned_qat = compile_fit(quantize_model(stripped), x, y, args.qat_epochs, 1e-4)
    record("pruned 80 % + QAT int8", convert(pruned_qat, mode="qat", int8_io=True),
           f"+{args.qat_epochs} pruning + {args.qat_epochs} QAT epochs, kernel sparsity "
           f"{sparsity(stripped):.2f}")

    import tensorflow_model_optimization as tfmot
    import tf_keras

    keras.utils.set_random_seed(args.seed)
    tf_student = tf_keras_student()
    tf_student.compile(
        tf_keras.optimizers.Adam(1e-3),
        tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    tf_student.fit(x, y, epochs=args.epochs, batch_size=BATCH, verbose=2)
    record("TFMOT float32 (tf_keras)", convert(tf_student))
    tf_qat = tfmot.quantization.keras.quantize_model(tf_student)
    tf_qat.compile(
        tf_keras.optimizers.Adam(1e-4),
        tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    tf_qat.fit(x, y, epochs=args.qat_epochs, batch_size=BATCH, verbose=2)
    record("TFMOT QAT int8 (tf_keras)", convert(tf_qat, mode="qat", int8_io=True),
           "same arch, data, epochs")

    base = rows[0]
    print(f"\nFashion-MNIST test (10,000 images), seed {args.seed}, "
          f"{args.epochs} float epochs, {args.qat_epochs} QAT/fine-tune epochs, "
          f"total {time.time() - start:.0f} s\n")
    print("| model | accuracy | Δ vs float (pt) | .tflite bytes | gzip bytes | "
          "gzip × smaller | 1-thread latency × float (batch 1) | (batch 64) | note |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['name']} | {r['accuracy']:.4f} | "
            f"{100 * (r['accuracy'] - base['accuracy']):+.2f} | {r['raw']:,} | {r['gz']:,} | "
            f"{base['gz'] / r['gz']:.2f} | {r['latency'] / base['latency']:.2f} | "
            f"{r['latency64'] / base['latency64']:.2f} | {r['note']} |"
        )
    print(f"\nfloat32 latency: {base['latency']:.4f} ms at batch 1 (median of "
          f"{args.latency_runs}), {base['latency64']:.3f} ms at batch 64; 1 thread, "
          f"LiteRT interpreter with its default XNNPACK delegate")


if __name__ == "__main__":
    main()
