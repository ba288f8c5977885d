"""Fashion-MNIST quantization benchmark.

One float student (kd_keras.models.cnn_student, 9.2 k params) trained once,
then every compression path turned into a .tflite and measured the same way:
test accuracy through the LiteRT interpreter, .tflite size raw and gzipped,
and 1-thread latency (batch 1, warm-up then N timed runs, median) as a ratio
to the float .tflite measured in the same run.

Rows: float TFLite, dynamic range, full-int8 PTQ, float16 PTQ; then the
rows that train further (each --qat-epochs at lr 1e-4): the float model
fine-tuned the same epochs (the fair reference for them), QAT (labels), QAT +
distillation (kd_keras.Distiller on cached teacher logits; --qat-temperature
1 and --qat-alpha 0.2, chosen on a validation split by
`benchmarks/tune_distillation.py --qat`; earlier runs used T = 2,
alpha = 0.5), clustering (16 clusters), pruned 80 % + QAT int8 (labels, and
distilled in both stages; --prune-epochs with kd_keras.pruning's default
recipe), pruned 80 % + sparsity-preserving clustering + full-int8 PTQ (TFMOT's
"collaborative optimization", continuing the distilled chain; one row per
--pcq-clusters), and TFMOT QAT on
the same architecture rebuilt in tf_keras. "Δ vs ref" compares PTQ rows
with the float model they were made from and trained rows with the equally
trained float model. "payload gzip"
is gzip of the flatbuffer's weight buffers alone: the part that scales with
the model, without the graph's fixed few kilobytes.

    python -m benchmarks.quantization_fashion_mnist --epochs 4 --qat-epochs 2
    python -m benchmarks.quantization_fashion_mnist --phone-layout   # batch 1, no names
    python -m benchmarks.quantization_fashion_mnist --filters 32 64   # a wider student
"""

from __future__ import annotations

import argparse
import gzip
import time

import keras
import numpy as np

import kd_keras
from benchmarks import common
from benchmarks.common import copy_of
from kd_keras import pruning
from kd_keras.bench import evaluate_accuracy
from kd_keras.models import cnn_student
from kd_keras.quantization import (
    convert,
    quantize_model,
    quantize_post_training,
)
from kd_keras.quantization.clustering import (
    CentroidInitialization,
    cluster_weights,
    strip_clustering,
)

BATCH = 128


def sparsity(model) -> float:
    """Fraction of exact zeros over the kernels of a (stripped) model."""
    kernels = [keras.ops.convert_to_numpy(w) for w in model.weights if w.name == "kernel"]
    return float(sum((k == 0).sum() for k in kernels) / sum(k.size for k in kernels))


def compile_fit(model, x, y, epochs, lr, callbacks=()):
    model.compile(keras.optimizers.Adam(lr), common.CE, metrics=["accuracy"])
    model.fit(x, y, epochs=epochs, batch_size=BATCH, verbose=2, callbacks=list(callbacks))
    return model


def tf_keras_student(filters=(8, 16)):
    """kd_keras.models.cnn_student rebuilt layer for layer in tf_keras."""
    import tf_keras

    layers = tf_keras.layers
    inputs = tf_keras.Input((28, 28, 1), name="image")
    x = inputs
    for i, f in enumerate(filters, start=1):
        x = layers.Conv2D(f, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = layers.BatchNormalization(name=f"bn{i}")(x)
        x = layers.ReLU(name=f"block{i}")(x)
        x = layers.MaxPooling2D(name=f"pool{i}")(x)
    x = layers.Flatten(name="embedding")(x)
    return tf_keras.Model(inputs, layers.Dense(10, name="logits")(x), name="student_tf_keras")


def payload_bytes(model_bytes) -> bytes:
    """The flatbuffer's constant buffers (weights, biases, quantization
    constants) concatenated: what grows with the parameter count."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(model_bytes))
    return b"".join(bytes(b.data) for b in model.buffers if b.data is not None)


def distilled_fit(
    student, x, y, logits, epochs, lr, callbacks=(), temperature=2.0, alpha=0.5
):
    distiller = kd_keras.Distiller(
        student=student,
        teacher=None,
        losses=[kd_keras.losses.SoftTargetKD(temperature=temperature)],
        alpha=alpha,
    )
    distiller.compile(optimizer=keras.optimizers.Adam(lr), metrics=["accuracy"])
    distiller.fit(
        x,
        {"labels": y, "teacher_logits": logits},
        epochs=epochs,
        batch_size=BATCH,
        verbose=2,
        callbacks=list(callbacks),
    )
    return distiller.student


def prune_80(student, steps, epochs):
    """80 % magnitude pruning with kd_keras' default recipe (`steps.prune_student`):
    the target reached at half the steps, the learning rate held at 1e-3 until
    then and cosine-decayed after. Returns the model and that learning rate."""
    total = steps * epochs
    schedule = pruning.ramp_schedule(0.8, total)
    model = pruning.prune_low_magnitude(copy_of(student), pruning_schedule=schedule)
    return model, pruning.recovery_learning_rate(1e-3, schedule.end_step, total)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=4, help="float training epochs")
    parser.add_argument("--qat-epochs", type=int, default=2, help="QAT / fine-tune epochs")
    parser.add_argument("--filters", type=int, nargs=2, default=[8, 16], help="student widths")
    parser.add_argument("--prune-epochs", type=int, default=4, help="epochs of pruning to 80 %%")
    parser.add_argument(
        "--pcq-clusters",
        type=int,
        nargs="*",
        default=[16, 8],
        help="one 'pruned + clustered + int8' row per count (0 counted as a cluster)",
    )
    parser.add_argument(
        "--phone-layout",
        action="store_true",
        help="convert every row with batch_size=1 and strip_strings=True (static shapes, "
        "no tensor names); the batch-64 latency column is then not measured",
    )
    parser.add_argument("--teacher", help=".keras teacher (default: benchmarks/out cache)")
    # Chosen for the QAT fine-tune on a validation split (benchmarks/tune_distillation.py
    # --qat, RESULTS section 4); distillation while pruning keeps T = 2, alpha = 0.5.
    parser.add_argument("--qat-temperature", type=float, default=1.0)
    parser.add_argument("--qat-alpha", type=float, default=0.2)
    parser.add_argument("--calibration-batches", type=int, default=200)
    parser.add_argument("--latency-runs", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="smoke test: first N images")
    parser.add_argument("--skip-tfmot", action="store_true")
    parser.add_argument("--out", help="also write the rows as JSON here")
    args = parser.parse_args()

    (x, y), (xt, yt) = common.data()
    if args.limit:
        x, y, xt, yt = x[: args.limit], y[: args.limit], xt[: args.limit], yt[: args.limit]
    sample = xt[:1]
    rows = []
    layout = {"batch_size": 1, "strip_strings": True} if args.phone_layout else {}

    def record(name, model_bytes, ref, note=""):
        accuracy = evaluate_accuracy(model_bytes, xt, yt)
        rows.append(
            {
                "name": name,
                "ref": ref,
                "accuracy": accuracy,
                "raw": len(model_bytes),
                "gz": len(gzip.compress(model_bytes, 9)),
                "payload_gz": len(gzip.compress(payload_bytes(model_bytes), 9)),
                "latency": common.latency_ms(model_bytes, sample, runs=args.latency_runs),
                "latency64": None
                if args.phone_layout
                else common.latency_ms(model_bytes, xt[:64], runs=max(args.latency_runs // 10, 5)),
                "note": note,
            }
        )
        print(f"{name}: acc {accuracy:.4f} size {len(model_bytes)}", flush=True)

    def make_student():
        keras.utils.set_random_seed(args.seed)
        return cnn_student(filters=tuple(args.filters))

    start = time.time()
    student = compile_fit(make_student(), x, y, args.epochs, 1e-3)
    params = student.count_params()
    record("float32 TFLite", convert(student, **layout), "float")
    record(
        "dynamic range (PTQ)",
        quantize_post_training(student, "dynamic", **layout),
        "float",
        "weights < 1024 elements stay float",
    )
    record(
        "full int8 (PTQ)",
        quantize_post_training(
            student,
            "int8",
            representative_data=x[: args.calibration_batches],
            num_calibration_batches=args.calibration_batches,
            int8_io=True,
            **layout,
        ),
        "float",
        f"{args.calibration_batches} calibration samples, int8 I/O",
    )
    record("float16 (PTQ)", quantize_post_training(student, "float16", **layout), "float")

    tuned = f"+{args.qat_epochs} epochs at lr 1e-4"
    keras.utils.set_random_seed(args.seed)
    longer = compile_fit(copy_of(student), x, y, args.qat_epochs, 1e-4)
    record(f"float32, {tuned}", convert(longer, **layout), "float+", "reference of the rows below")

    keras.utils.set_random_seed(args.seed)
    qat = compile_fit(quantize_model(student), x, y, args.qat_epochs, 1e-4)
    record("QAT int8 (labels)", convert(qat, mode="qat", int8_io=True, **layout), "float+", tuned)

    teacher = (
        keras.saving.load_model(args.teacher, compile=False) if args.teacher else common.teacher()
    )
    logits = teacher.predict(x, batch_size=512, verbose=0)
    teacher_note = (
        f"teacher {teacher.count_params() / 1e6:.2f} M params, "
        f"{common.accuracy(teacher, xt, yt):.2%}"
    )
    qat_kd_args = {"temperature": args.qat_temperature, "alpha": args.qat_alpha}
    qat_kd_note = f"T={args.qat_temperature:g}, alpha={args.qat_alpha:g}"
    keras.utils.set_random_seed(args.seed)
    qat_kd = distilled_fit(
        quantize_model(student), x, y, logits, args.qat_epochs, 1e-4, **qat_kd_args
    )
    record(
        "QAT int8 + distillation",
        convert(qat_kd, mode="qat", int8_io=True, **layout),
        "float+",
        f"{tuned}; {teacher_note}, {qat_kd_note}",
    )

    keras.utils.set_random_seed(args.seed)
    clustered = compile_fit(
        cluster_weights(student, 16, CentroidInitialization.KMEANS_PLUS_PLUS),
        x,
        y,
        args.qat_epochs,
        1e-4,
    )
    record(
        "clustering, 16 clusters (float)",
        convert(strip_clustering(clustered), **layout),
        "float+",
        f"{tuned}, k-means++ init",
    )

    steps = int(np.ceil(len(x) / BATCH))
    prune_note = f"+{args.prune_epochs} pruning + {args.qat_epochs} QAT epochs"
    # The same prune -> strip -> QAT chain, fine-tuned on labels or with the teacher.
    variants = [
        ("", lambda m, epochs, lr, **kw: compile_fit(m, x, y, epochs, lr, **kw), None, {}),
        (
            ", distilled",
            lambda m, epochs, lr, **kw: distilled_fit(m, x, y, logits, epochs, lr, **kw),
            f"both with the teacher (pruning T=2, alpha=0.5; QAT {qat_kd_note})",
            qat_kd_args,
        ),
    ]
    stripped_by_variant = {}
    for suffix, fit, note, qat_kw in variants:
        keras.utils.set_random_seed(args.seed)
        to_prune, prune_lr = prune_80(student, steps, args.prune_epochs)
        pruned = fit(to_prune, args.prune_epochs, prune_lr, callbacks=[pruning.UpdatePruningStep()])
        stripped = pruning.strip_pruning(pruned)
        stripped_by_variant[suffix] = stripped
        pruned_qat = fit(quantize_model(stripped), args.qat_epochs, 1e-4, **qat_kw)
        record(
            f"pruned 80 % + QAT int8{suffix}",
            convert(pruned_qat, mode="qat", int8_io=True, **layout),
            "float",
            f"{prune_note}, {note or f'kernel sparsity {sparsity(stripped):.2f}'}",
        )
    # Prune -> cluster -> int8 continues the distilled chain, the teacher in
    # every training stage.
    _, distilled_fit_in, _, _ = variants[1]
    for clusters in args.pcq_clusters:
        # conv1 keeps 14 of its 72 weights at 80 %: fewer than the centroids.
        keras.utils.set_random_seed(args.seed)
        pcq = distilled_fit_in(
            cluster_weights(
                stripped_by_variant[", distilled"],
                clusters,
                preserve_sparsity=True,
                skip_layers=["conv1"],
            ),
            args.qat_epochs,
            1e-4,
        )
        record(
            f"pruned 80 % + {clusters} clusters + int8 (PTQ), distilled",
            quantize_post_training(
                strip_clustering(pcq),
                "int8",
                representative_data=x[: args.calibration_batches],
                num_calibration_batches=args.calibration_batches,
                int8_io=True,
                per_channel_dense=False,
                **layout,
            ),
            "float",
            f"+{args.prune_epochs} pruning + {args.qat_epochs} epochs of sparsity-preserving "
            f"clustering (conv1 not clustered), both with the teacher, then full-int8 PTQ, "
            f"one scale per Dense kernel",
        )

    if not args.skip_tfmot:
        # tf_keras models fix their batch size on their Input, not in convert.
        tfmot_rows(args, x, y, record, {k: v for k, v in layout.items() if k != "batch_size"})

    refs = {"float": rows[0], "float+": rows[4]}
    base = rows[0]
    print(
        f"\nFashion-MNIST test ({len(yt):,} images), student filters {tuple(args.filters)} "
        f"({params:,} params), seed {args.seed}, {args.epochs} float epochs, "
        f"{args.qat_epochs} QAT/fine-tune epochs, total {time.time() - start:.0f} s\n"
    )
    print(
        "| model | accuracy | Δ vs ref (pt) | .tflite bytes | gzip bytes | gzip × smaller | "
        "payload gzip × smaller | 1-thread latency × float (batch 1) | (batch 64) | note |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ref = refs[r["ref"]]
        print(
            f"| {r['name']} | {r['accuracy']:.4f} | "
            f"{100 * (r['accuracy'] - ref['accuracy']):+.2f} | {r['raw']:,} | {r['gz']:,} | "
            f"{base['gz'] / r['gz']:.2f} | {base['payload_gz'] / r['payload_gz']:.2f} | "
            f"{r['latency'] / base['latency']:.2f} | "
            f"{_ratio(r['latency64'], base['latency64'])} | {r['note']} |"
        )
    print(
        f"\nfloat32 latency: {base['latency']:.4f} ms at batch 1 (median of "
        f"{args.latency_runs}), {base['latency64'] or float('nan'):.3f} ms at batch 64; 1 thread, "
        f"LiteRT interpreter with its default XNNPACK delegate"
    )
    if args.out:
        import json

        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "params": params, "rows": rows}, f, indent=1)


def _ratio(value, base) -> str:
    return "–" if value is None or base is None else f"{value / base:.2f}"


def tfmot_rows(args, x, y, record, layout):
    """The same architecture in tf_keras, through real TFMOT QAT."""
    import tensorflow_model_optimization as tfmot
    import tf_keras

    keras.utils.set_random_seed(args.seed)
    tf_student = tf_keras_student(tuple(args.filters))
    ce = tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    tf_student.compile(tf_keras.optimizers.Adam(1e-3), ce, metrics=["accuracy"])
    tf_student.fit(x, y, epochs=args.epochs, batch_size=BATCH, verbose=2)
    record("TFMOT float32 (tf_keras)", convert(tf_student, **layout), "float")
    tf_qat = tfmot.quantization.keras.quantize_model(tf_student)
    tf_qat.compile(tf_keras.optimizers.Adam(1e-4), ce, metrics=["accuracy"])
    tf_qat.fit(x, y, epochs=args.qat_epochs, batch_size=BATCH, verbose=2)
    record(
        "TFMOT QAT int8 (tf_keras)",
        convert(tf_qat, mode="qat", int8_io=True, **layout),
        "float+",
        "same arch, data, epochs",
    )


if __name__ == "__main__":
    main()
