"""QAT, PTQ and distillation of MobileNetV2 (α 0.35) and MobileNetV3Small on
Fashion-MNIST at 32×32×3, with TFMOT's QAT on the same model as a reference.

Images are resized from 28×28 to 32×32 (bilinear; 32 is the smallest input
`keras.applications` accepts) and the grey channel repeated three times.
Students come from `keras.applications` with `weights=None`, 10 logits
(`classifier_activation=None`) and BatchNormalization momentum 0.9 (the
default 0.999 leaves the moving statistics far behind the weights in a short
run from scratch); MobileNetV3Small is built with `include_preprocessing=False`
so that both students read the same [0, 1] images. The teacher is
`kd_keras.models.cnn_teacher` on the same 32×32×3 images (about 1.6 M
parameters, BN momentum 0.9 too), trained once; its logits are cached with
`kd_keras.cache_teacher_outputs`, so distillation never runs it.

Per student, from one float model trained `--epochs` epochs on the labels
(Adam 1e-3), all measured in one run:

- float: the trained model (Keras, and its float32 `.tflite`);
- float, + `--qat-epochs` at 1e-4: the same extra training as the QAT rows,
  without quantization (what QAT's accuracy compares with fairly);
- PTQ int8: full int8 post-training quantization (int8 I/O), calibrated on
  500 training images;
- QAT int8: `kd_keras.quantization.quantize_model`, `--qat-epochs` at 1e-4
  on the labels, converted with int8 I/O;
- QAT int8 + distillation: the same, trained as the student of
  `kd_keras.Distiller` on the cached teacher logits (soft targets,
  `--temperature` 4 and `--alpha` 0.1 by default);
- TFMOT QAT: the same architecture built in tf_keras with the float model's
  weights, through kd_keras's TFMOT bridge (`quantize_model` on a tf_keras
  model), the same training; for MobileNetV3Small, TFMOT's error.

Accuracy of every `.tflite` is measured in LiteRT on the test images.

`--kd-seeds S ...` runs only the paired comparison of the last two rows:
from the one float model, for each seed, QAT int8 on the labels and QAT
int8 + distillation (`--alpha`, `--temperature`), both started with that
seed (same initial shuffles and quantizer state), so each seed gives a
paired difference "distillation - labels".
`--time-epoch` trains each network for one epoch on the training subset and
prints the wall time, to size the budget.

    python -m benchmarks.qat_fashion_mnist_32 --time-epoch
    python -m benchmarks.qat_fashion_mnist_32 --train 6000 --epochs 3 --teacher-epochs 3 \
        --students MobileNetV3Small   # one student per process: two run side by side
    python -m benchmarks.qat_fashion_mnist_32 --train 6000 --epochs 3 --teacher-epochs 8 \
        --students MobileNetV3Small --kd-seeds 0 1 2 --alpha 0.5
"""

from __future__ import annotations

import argparse
import time

import keras
import numpy as np

import kd_keras
from kd_keras.bench import evaluate_accuracy
from kd_keras.data import load_fashion_mnist
from kd_keras.models import cnn_teacher
from kd_keras.quantization import convert, quantize_model

CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
STUDENTS = {
    "MobileNetV2 α 0.35": "MobileNetV2",
    "MobileNetV3Small": "MobileNetV3Small",
}


def rgb32(x: np.ndarray, batch: int = 2048) -> np.ndarray:
    """28×28×1 images in [0, 1] as 32×32×3 (bilinear resize, grey repeated)."""
    parts = [
        keras.ops.convert_to_numpy(keras.ops.image.resize(x[i : i + batch], (32, 32)))
        for i in range(0, len(x), batch)
    ]
    return np.repeat(np.concatenate(parts), 3, axis=-1).astype("float32")


def application(family: str, module=keras.applications, momentum: float = 0.9):
    """`family` from `module` (keras.applications or tf_keras.applications),
    10 logits at 32×32×3, random weights, BN momentum `momentum`."""
    kwargs = {"input_shape": (32, 32, 3), "weights": None, "classes": 10}
    kwargs["classifier_activation"] = None
    if family == "MobileNetV2":
        model = module.MobileNetV2(alpha=0.35, **kwargs)
    else:
        model = module.MobileNetV3Small(include_preprocessing=False, **kwargs)
    for layer in model.layers:
        if "BatchNormalization" in type(layer).__name__:
            layer.momentum = momentum
    return model


def copy_of(model: keras.Model) -> keras.Model:
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def tfmot_row(family, float_model, x, y, xt, yt, epochs, batch):
    """TFMOT's QAT on the same network as a tf_keras model: (accuracy, note)."""
    import tf_keras

    tf_model = application(family, module=tf_keras.applications)
    tf_model.set_weights(float_model.get_weights())
    gap = float(
        np.max(
            np.abs(tf_model.predict(xt[:64], verbose=0) - float_model.predict(xt[:64], verbose=0))
        )
    )
    try:
        qat = quantize_model(tf_model)  # a tf_keras model goes to TFMOT
    except Exception as err:  # TFMOT's own refusal is the row's result
        return None, f"TFMOT quantize_model fails: {type(err).__name__}: {str(err)[:300]}"
    qat.compile(
        tf_keras.optimizers.Adam(1e-4),
        tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    qat.fit(x, y, epochs=epochs, batch_size=batch, verbose=2)
    model_bytes = convert(qat, mode="qat", int8_io=True)
    note = f"tf_keras copy matches the Keras 3 float model to {gap:.1e}"
    return (evaluate_accuracy(model_bytes, xt, yt), len(model_bytes)), note


def trained_float(family, x, y, args) -> keras.Model:
    """The float student, trained `args.epochs` on the labels from `args.seed`."""
    keras.utils.set_random_seed(args.seed)
    model = application(family)
    model.compile(keras.optimizers.Adam(1e-3), CE)
    model.fit(x, y, epochs=args.epochs, batch_size=args.batch, verbose=2)
    return model


def qat_on_labels(model, x, y, args) -> keras.Model:
    """A QAT copy of `model` trained `args.qat_epochs` at 1e-4 on the labels."""
    qat = quantize_model(copy_of(model))
    qat.compile(keras.optimizers.Adam(1e-4), CE)
    qat.fit(x, y, epochs=args.qat_epochs, batch_size=args.batch, shuffle=True, verbose=2)
    return qat


def qat_distilled(model, x, y, logits, args) -> keras.Model:
    """A QAT copy of `model` trained the same way as the student of
    `kd_keras.Distiller` on the cached teacher logits (`args.temperature`,
    `args.alpha`)."""
    distiller = kd_keras.Distiller(
        quantize_model(copy_of(model)),
        teacher=None,
        losses=[kd_keras.losses.SoftTargetKD(temperature=args.temperature)],
        alpha=args.alpha,
    )
    distiller.compile(optimizer=keras.optimizers.Adam(1e-4))
    distiller.fit(
        x,
        {"labels": y, "teacher_logits": logits},
        epochs=args.qat_epochs,
        batch_size=args.batch,
        shuffle=True,
        verbose=2,
    )
    return distiller.student


def student_rows(name, family, data, logits, args):
    x, y, xt, yt = data
    rows, times = {}, {}

    def timed(label, fn):
        start = time.perf_counter()
        out = fn()
        times[label] = time.perf_counter() - start
        return out

    model = timed("float", lambda: trained_float(family, x, y, args))
    float_bytes = convert(model)
    rows["float"] = (evaluate_accuracy(float_bytes, xt, yt), len(float_bytes))
    print(f"{name} float {rows['float']}", flush=True)

    ptq = timed(
        "PTQ int8",
        lambda: convert(
            model,
            mode="int8",
            representative_data=x[:500],
            num_calibration_batches=500,
            int8_io=True,
        ),
    )
    rows["PTQ int8"] = (evaluate_accuracy(ptq, xt, yt), len(ptq))

    more = copy_of(model)
    more.compile(keras.optimizers.Adam(1e-4), CE)
    timed(
        "float +", lambda: more.fit(x, y, epochs=args.qat_epochs, batch_size=args.batch, verbose=2)
    )
    more_bytes = convert(more)
    rows[f"float, +{args.qat_epochs} epoch at 1e-4"] = (
        evaluate_accuracy(more_bytes, xt, yt),
        len(more_bytes),
    )

    qat = timed("QAT int8", lambda: qat_on_labels(model, x, y, args))
    qat_bytes = convert(qat, mode="qat", int8_io=True)
    rows["QAT int8"] = (evaluate_accuracy(qat_bytes, xt, yt), len(qat_bytes))

    student = timed(
        "QAT int8 + distillation", lambda: qat_distilled(model, x, y, logits, args)
    )
    kd_bytes = convert(student, mode="qat", int8_io=True)
    rows["QAT int8 + distillation"] = (evaluate_accuracy(kd_bytes, xt, yt), len(kd_bytes))

    print(f"{name} so far {rows} {times}", flush=True)
    start = time.perf_counter()
    try:
        result, note = tfmot_row(family, model, x, y, xt, yt, args.qat_epochs, args.batch)
    except Exception as err:  # reported in the table, not lost with the other rows
        result, note = None, f"TFMOT QAT fails: {type(err).__name__}: {str(err)[:300]}"
    times["TFMOT QAT"] = time.perf_counter() - start
    rows["TFMOT QAT int8 (tf_keras)"] = result
    return rows, times, note


def paired_kd_rows(name, family, data, logits, args) -> list[tuple[int, float, float]]:
    """`[(seed, QAT on labels accuracy, QAT + distillation accuracy)]` from
    one float model, each pair started from the same seed."""
    x, y, xt, yt = data
    model = trained_float(family, x, y, args)
    print(f"{name} float {evaluate_accuracy(convert(model), xt, yt):.4f}", flush=True)
    pairs = []
    for seed in args.kd_seeds:
        keras.utils.set_random_seed(seed)
        qat = qat_on_labels(model, x, y, args)
        labels = evaluate_accuracy(convert(qat, mode="qat", int8_io=True), xt, yt)
        keras.utils.set_random_seed(seed)
        student = qat_distilled(model, x, y, logits, args)
        kd = evaluate_accuracy(convert(student, mode="qat", int8_io=True), xt, yt)
        pairs.append((seed, labels, kd))
        print(f"{name} seed {seed}: QAT labels {labels:.4f}, QAT + KD {kd:.4f}", flush=True)
    return pairs


def time_epoch(data, args):
    x, y, _, _ = data
    for label, make in [
        ("teacher", lambda: cnn_teacher(input_shape=(32, 32, 3))),
        *[(name, lambda f=family: application(f)) for name, family in STUDENTS.items()],
    ]:
        model = make()
        model.compile(keras.optimizers.Adam(1e-3), CE)
        model.fit(x[: args.batch], y[: args.batch], epochs=1, batch_size=args.batch, verbose=0)
        start = time.perf_counter()
        model.fit(x, y, epochs=1, batch_size=args.batch, verbose=0)
        print(
            f"{label}: one epoch on {len(x)} images {time.perf_counter() - start:.0f} s", flush=True
        )
    for name, family in STUDENTS.items():
        qat = quantize_model(application(family))
        qat.compile(keras.optimizers.Adam(1e-4), CE)
        qat.fit(x[: args.batch], y[: args.batch], epochs=1, batch_size=args.batch, verbose=0)
        start = time.perf_counter()
        qat.fit(x, y, epochs=1, batch_size=args.batch, verbose=0)
        print(f"{name} QAT: one epoch {time.perf_counter() - start:.0f} s", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=20000, help="training images used")
    parser.add_argument("--test", type=int, default=10000, help="test images used")
    parser.add_argument("--epochs", type=int, default=4, help="float training epochs")
    parser.add_argument("--teacher-epochs", type=int, default=4)
    parser.add_argument("--qat-epochs", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--students", nargs="+", default=list(STUDENTS), choices=list(STUDENTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-epoch", action="store_true")
    parser.add_argument(
        "--kd-seeds", type=int, nargs="+", help="only QAT labels vs QAT + distillation, per seed"
    )
    parser.add_argument("--alpha", type=float, default=0.1, help="weight of the labels' loss")
    parser.add_argument("--temperature", type=float, default=4.0)
    args = parser.parse_args(argv)

    (x, y), (xt, yt) = load_fashion_mnist()
    data = (rgb32(x[: args.train]), y[: args.train], rgb32(xt[: args.test]), yt[: args.test])
    if args.time_epoch:
        time_epoch(data, args)
        return
    x, y, xt, yt = data

    start = time.perf_counter()
    keras.utils.set_random_seed(args.seed)
    teacher = cnn_teacher(input_shape=(32, 32, 3))
    for layer in teacher.layers:  # as the students': a short run's moving statistics lag
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    teacher.compile(keras.optimizers.Adam(1e-3), CE)
    teacher.fit(x, y, epochs=args.teacher_epochs, batch_size=args.batch, verbose=2)
    logits = kd_keras.cache_teacher_outputs(teacher, x, verbose=0)
    teacher_s = time.perf_counter() - start
    teacher_accuracy = evaluate_accuracy(teacher, xt, yt)
    print(f"teacher {teacher_accuracy:.4f} in {teacher_s:.0f} s", flush=True)

    if args.kd_seeds:
        for name in args.students:
            pairs = paired_kd_rows(name, STUDENTS[name], (x, y, xt, yt), logits, args)
            print(
                f"\n{name}: teacher {100 * teacher_accuracy:.2f} % ({args.teacher_epochs} epochs), "
                f"T = {args.temperature:g}, alpha = {args.alpha:g}, {args.qat_epochs} QAT "
                f"epoch(s) at 1e-4 from one {args.epochs}-epoch float model\n"
            )
            print("| seed | QAT int8, labels | QAT int8 + distillation | KD − labels (pt) |")
            print("|---|---|---|---|")
            for seed, labels, kd in pairs:
                print(
                    f"| {seed} | {100 * labels:.2f} % | {100 * kd:.2f} % | "
                    f"{100 * (kd - labels):+.2f} |"
                )
            diffs = 100 * np.array([kd - labels for _, labels, kd in pairs])
            labels_mean = 100 * np.mean([p[1] for p in pairs])
            kd_mean = 100 * np.mean([p[2] for p in pairs])
            print(
                f"| mean | {labels_mean:.2f} % | {kd_mean:.2f} % | {diffs.mean():+.2f} "
                f"± {diffs.std(ddof=1) if len(diffs) > 1 else 0:.2f} |"
            )
        return

    results = {}
    for name in args.students:
        results[name] = student_rows(name, STUDENTS[name], (x, y, xt, yt), logits, args)
        print(results[name], flush=True)

    print(
        f"\nFashion-MNIST 32×32×3: {len(x)} training images, {len(xt)} test images; teacher "
        f"cnn_teacher ({teacher.count_params():,} params) {args.teacher_epochs} epochs, "
        f"{100 * teacher_accuracy:.2f} % ({teacher_s:.0f} s); students {args.epochs} float "
        f"epochs, then {args.qat_epochs} epoch(s) at 1e-4 per row; accuracy of each "
        ".tflite in LiteRT\n"
    )
    for name, (rows, times, note) in results.items():
        float_accuracy = rows["float"][0]
        print(
            f"\n{name} (train times: "
            + ", ".join(f"{k} {v:.0f} s" for k, v in times.items())
            + ")\n"
        )
        print("| row | test accuracy | Δ vs float (pt) | .tflite KB |")
        print("|---|---|---|---|")
        for row, value in rows.items():
            if value is None:
                print(f"| {row} | fails (see below) | | |")
                continue
            accuracy, size = value
            print(
                f"| {row} | {100 * accuracy:.2f} % | {100 * (accuracy - float_accuracy):+.2f} | "
                f"{size / 1024:.0f} |"
            )
        print(f"\nTFMOT: {note}")


if __name__ == "__main__":
    main()
