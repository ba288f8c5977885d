"""Fashion-MNIST pruning benchmark (issue 3): prune with labels vs distill while pruning.

The student (kd_keras.models.cnn_student, 9.2 k params) is first trained
dense with labels; that same dense student is then pruned to 50 %, 80 %,
90 % (unstructured magnitude, PolynomialDecay) and 2:4 (m-by-n; conv1 has a
single input channel, so it stays dense there), each

  (a) fine-tuned with labels only while pruning, and
  (b) distilled while pruning: kd_keras.Distiller in the same `fit`,
      soft targets (T and alpha as chosen by benchmarks/tune_distillation.py
      on a training-set validation split: T = 2, alpha = 0.5) from the
      reference teacher.

The dense distilled student (trained with the Distiller from scratch for the
dense epochs) is the reference for (b). Each row: test accuracy, zero
fraction (all parameters / pruned layers), and the gzip size of the stripped
float .tflite. Teacher logits are computed once (offline KD) to keep CPU time
down; the Distiller skips the teacher when given them.

    python -m benchmarks.pruning_fashion_mnist --epochs 5 --prune-epochs 4
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
from kd_keras.quantization import convert

BATCH = 128
TARGETS = [
    ("50 %", {"final": 0.5}),
    ("80 %", {"final": 0.8}),
    ("90 %", {"final": 0.9}),
    ("2:4", {"m_by_n": (2, 4)}),
]


def copy_of(model):
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def prune(dense, spec, steps_per_epoch, epochs):
    if "m_by_n" in spec:
        return pruning.prune_low_magnitude(
            copy_of(dense), sparsity_m_by_n=spec["m_by_n"], skip=["conv1"]
        )
    # Reach the target one epoch before the end, then recover at constant sparsity.
    end = max(steps_per_epoch * (epochs - 1), 1)
    schedule = pruning.PolynomialDecay(
        0.0, spec["final"], begin_step=0, end_step=end, frequency=max(end // 20, 1)
    )
    return pruning.prune_low_magnitude(copy_of(dense), pruning_schedule=schedule)


def fit_labels(model, x, y, epochs, lr=1e-3, callbacks=()):
    model.compile(keras.optimizers.Adam(lr), common.CE, metrics=["accuracy"])
    model.fit(
        x, y, epochs=epochs, batch_size=BATCH, verbose=0, shuffle=True, callbacks=list(callbacks)
    )
    return model


def fit_distilled(
    student, teacher, x, y, logits, epochs, lr=1e-3, callbacks=(), temperature=2.0, alpha=0.5
):
    distiller = kd_keras.Distiller(
        student, teacher, losses=[kd_keras.losses.SoftTargetKD(temperature)], alpha=alpha
    )
    distiller.compile(keras.optimizers.Adam(lr))
    distiller.fit(
        x,
        {"labels": y, "teacher_logits": logits},
        epochs=epochs,
        batch_size=BATCH,
        verbose=0,
        shuffle=True,
        callbacks=list(callbacks),
    )
    return distiller.student


def measure(name, model, xt, yt):
    final = (
        pruning.strip_pruning(model)
        if any(isinstance(layer, pruning.PruneLowMagnitude) for layer in model._flatten_layers())
        else model
    )
    report = pruning.sparsity_report(model)
    tflite = convert(final)
    return {
        "name": name,
        "accuracy": common.accuracy(final, xt, yt),
        "zeros_all": report.sparsity,
        "zeros_pruned": report.pruned_sparsity,
        "tflite_gzip": len(gzip.compress(tflite, 9)),
        "tflite": len(tflite),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=5, help="dense student epochs")
    parser.add_argument("--prune-epochs", type=int, default=4, help="epochs of pruning")
    parser.add_argument("--teacher", help=".keras teacher (default: benchmarks/out cache)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--limit", type=int, help="use only the first N training images (smoke)")
    args = parser.parse_args(argv)

    (x, y), (xt, yt) = common.data()
    x, y = x[: args.limit], y[: args.limit]
    teacher = (
        keras.saving.load_model(args.teacher, compile=False) if args.teacher else common.teacher()
    )
    start = time.perf_counter()
    logits = teacher.predict(x, batch_size=512, verbose=0)
    teacher_acc = common.accuracy(teacher, xt, yt)
    steps = int(np.ceil(len(x) / BATCH))

    rows = []
    dense = fit_labels(common.student(args.seed), x, y, args.epochs)
    rows.append(measure("dense, labels", dense, xt, yt) | {"mode": "labels"})
    kd = {"temperature": args.temperature, "alpha": args.alpha}
    dense_kd = fit_distilled(common.student(args.seed), teacher, x, y, logits, args.epochs, **kd)
    rows.append(measure("dense, distilled", dense_kd, xt, yt) | {"mode": "distilled"})
    for label, spec in TARGETS:
        keras.utils.set_random_seed(args.seed)
        pruned = fit_labels(
            prune(dense, spec, steps, args.prune_epochs),
            x,
            y,
            args.prune_epochs,
            callbacks=[pruning.UpdatePruningStep()],
        )
        rows.append(measure(f"{label}, labels", pruned, xt, yt) | {"mode": "labels"})
        keras.utils.set_random_seed(args.seed)
        pruned = fit_distilled(
            prune(dense, spec, steps, args.prune_epochs),
            teacher,
            x,
            y,
            logits,
            args.prune_epochs,
            callbacks=[pruning.UpdatePruningStep()],
            **kd,
        )
        rows.append(
            measure(f"{label}, distilled while pruning", pruned, xt, yt) | {"mode": "distilled"}
        )
        print(f"{label} done", flush=True)

    dense_gz = rows[0]["tflite_gzip"]
    print(
        f"\nteacher test accuracy {teacher_acc:.4f}; dense student {args.epochs} epochs, "
        f"then {args.prune_epochs} pruning epochs; backend {keras.backend.backend()}; "
        f"{time.perf_counter() - start:.0f} s\n"
    )
    print(
        "| student | test acc. | zeros (all params) | zeros (pruned layers) "
        "| .tflite gzip (bytes) | gzip vs dense |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['name']} | {r['accuracy'] * 100:.2f} % | {r['zeros_all'] * 100:.1f} % | "
            f"{r['zeros_pruned'] * 100:.1f} % | {r['tflite_gzip']} | "
            f"{r['tflite_gzip'] / dense_gz:.2f} |"
        )


if __name__ == "__main__":
    main()
