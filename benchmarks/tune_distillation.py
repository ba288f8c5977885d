"""Chooses the temperature and alpha of the Fashion-MNIST distillation
benchmark on a validation split carved from the *training* set (the test set
is never looked at), so the benchmark's test figures are not tuned on.

    python -m benchmarks.tune_distillation --epochs 10
"""

from __future__ import annotations

import argparse

import keras
import numpy as np

import kd_keras
from benchmarks import common


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--grid",
        nargs="+",
        default=["1:0.5", "2:0.5", "4:0.5", "4:0.1", "8:0.1"],
        help="temperature:alpha pairs",
    )
    args = parser.parse_args(argv)
    (x, y), _ = common.data()
    x_fit, y_fit, x_val, y_val = x[:50000], y[:50000], x[50000:], y[50000:]
    teacher = common.teacher()
    logits = kd_keras.cache_teacher_outputs(teacher, x_fit, batch_size=1024, verbose=0)
    print(f"teacher validation accuracy {common.accuracy(teacher, x_val, y_val):.4f}")

    scratch = common.student(0)
    scratch.compile(keras.optimizers.Adam(1e-3), common.CE, metrics=["accuracy"])
    scratch.fit(x_fit, y_fit, epochs=args.epochs, batch_size=args.batch_size, verbose=0)
    rows = [("scratch", common.accuracy(scratch, x_val, y_val))]
    print(rows[-1], flush=True)
    for pair in args.grid:
        temperature, alpha = map(float, pair.split(":"))
        student = common.student(0)
        distiller = kd_keras.Distiller(
            student, None, losses=[kd_keras.losses.SoftTargetKD(temperature)], alpha=alpha
        )
        distiller.compile(keras.optimizers.Adam(1e-3))
        distiller.fit(
            x_fit,
            {"labels": y_fit, "teacher_logits": logits},
            epochs=args.epochs,
            batch_size=args.batch_size,
            verbose=0,
        )
        rows.append((f"T={temperature:g} alpha={alpha:g}", common.accuracy(student, x_val, y_val)))
        print(rows[-1], flush=True)
    print("\n| config | validation accuracy % |\n|---|---|")
    for name, acc in rows:
        print(f"| {name} | {acc * 100:.2f} |")
    best = max(rows[1:], key=lambda r: r[1])
    print(f"\nbest: {best[0]} ({np.round(best[1] * 100, 2)} %)")


if __name__ == "__main__":
    main()
