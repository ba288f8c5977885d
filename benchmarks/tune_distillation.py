"""Chooses the temperature and alpha of the Fashion-MNIST distillation
benchmarks on a validation split carved from the *training* set (the test set
is never looked at), so the benchmarks' test figures are not tuned on.

    python -m benchmarks.tune_distillation --epochs 10

`--qat` tunes distillation-aware quantization instead: a float student is
trained `--float-epochs` with labels, then each row fine-tunes a copy of it
for `--epochs` at `--lr` (1e-4 by default, as in
`benchmarks/quantization_fashion_mnist.py`): the float model itself (the
reference), `quantize_model` with labels, and `quantize_model` inside the
Distiller for each temperature:alpha pair. Accuracy is the Keras QAT model's
(fake-quant) on the validation split, averaged over `--seeds`.

    python -m benchmarks.tune_distillation --qat --seeds 0 1 2 \
        --teacher benchmarks/out/fmnist_teacher_strong.keras

`--final` is for after the choice: the same rows trained on all 60,000
training images and scored on the test set, for the chosen pair only
(`--grid T:ALPHA`), to confirm it on held-out data over several seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import keras
import numpy as np

import kd_keras
from benchmarks import common
from kd_keras.quantization import quantize_model


def distill(student, x, y, logits, temperature, alpha, epochs, lr, batch_size):
    distiller = kd_keras.Distiller(
        student, None, losses=[kd_keras.losses.SoftTargetKD(temperature)], alpha=alpha
    )
    distiller.compile(keras.optimizers.Adam(lr))
    distiller.fit(
        x,
        {"labels": y, "teacher_logits": logits},
        epochs=epochs,
        batch_size=batch_size,
        verbose=0,
    )
    return student


def fit_labels(model, x, y, epochs, lr, batch_size):
    model.compile(keras.optimizers.Adam(lr), common.CE, metrics=["accuracy"])
    model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0)
    return model


def pairs(grid):
    return [tuple(map(float, pair.split(":"))) for pair in grid]


def tune_from_scratch(args, fit, val, logits):
    lr = args.lr or 1e-3
    scratch = fit_labels(common.student(0), *fit, args.epochs, lr, args.batch_size)
    rows = [("scratch", [common.accuracy(scratch, *val)])]
    print(rows[-1], flush=True)
    for temperature, alpha in pairs(args.grid):
        student = common.student(0)
        distill(student, *fit, logits, temperature, alpha, args.epochs, lr, args.batch_size)
        rows.append((f"T={temperature:g} alpha={alpha:g}", [common.accuracy(student, *val)]))
        print(rows[-1], flush=True)
    return rows


def tune_qat(args, fit, val, logits):
    lr = args.lr or 1e-4
    results = {}
    for seed in args.seeds:
        start = time.perf_counter()
        base = fit_labels(common.student(seed), *fit, args.float_epochs, 1e-3, args.batch_size)
        configs = [("float, fine-tuned (reference)", None), ("QAT, labels", None)]
        configs += [(f"QAT, T={t:g} alpha={a:g}", (t, a)) for t, a in pairs(args.grid)]
        for name, kd in configs:
            keras.utils.set_random_seed(seed)  # same shuffling for every row of a seed
            model = common.copy_of(base)
            if name.startswith("QAT"):
                model = quantize_model(model)
            if kd is None:
                fit_labels(model, *fit, args.epochs, lr, args.batch_size)
            else:
                distill(model, *fit, logits, *kd, args.epochs, lr, args.batch_size)
            results.setdefault(name, []).append(common.accuracy(model, *val))
        print(
            f"seed {seed} ({time.perf_counter() - start:.0f} s):",
            {k: round(v[-1] * 100, 2) for k, v in results.items()},
            flush=True,
        )
        if args.out:  # after every seed, so a long run keeps what it finished
            tmp = args.out.with_suffix(".tmp")
            record = {"seeds": args.seeds, "split": args.split, "results": results}
            tmp.write_text(json.dumps(record, indent=1))
            os.replace(tmp, args.out)
    return list(results.items())


def merged(paths):
    """The rows and split of several `--out` files (seeds run as separate processes)."""
    results, splits = {}, set()
    for path in paths:
        record = json.loads(Path(path).read_text())
        splits.add(record["split"])
        for name, accs in record["results"].items():
            results.setdefault(name, []).extend(accs)
    if len(splits) != 1:
        raise SystemExit(f"These files score different splits ({sorted(splits)}): report apart.")
    return list(results.items()), splits.pop()


def print_table(rows, first, split):
    seeds = max(len(accs) for _, accs in rows)
    mean_of = f" (mean of {seeds} seeds)" if seeds > 1 else ""
    print(f"\n| config | {split} accuracy %{mean_of} |\n|---|---|")
    for name, accs in rows:
        spread = f" ± {np.std(accs) * 100:.2f}" if len(accs) > 1 else ""
        print(f"| {name} | {np.mean(accs) * 100:.2f}{spread} |")
    best = max(rows[first:], key=lambda r: np.mean(r[1]))
    print(f"\nbest: {best[0]} ({np.mean(best[1]) * 100:.2f} %)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None, help="default: 10, or 2 with --qat")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=None, help="default: 1e-3, or 1e-4 with --qat")
    parser.add_argument(
        "--grid",
        nargs="+",
        default=None,
        help="temperature:alpha pairs (default: 1:0.5 2:0.5 4:0.5 4:0.1 8:0.1; with --qat "
        "1:0.5 2:0.5 4:0.5 2:0.2 2:0.8)",
    )
    parser.add_argument("--qat", action="store_true", help="tune distillation-aware QAT")
    parser.add_argument("--float-epochs", type=int, default=4, help="--qat: float epochs first")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="--qat: seeds")
    parser.add_argument("--teacher", help=".keras teacher (default: benchmarks/out cache)")
    parser.add_argument(
        "--final", action="store_true", help="train on all training images, score on the test set"
    )
    parser.add_argument("--out", type=Path, help="--qat: write the per-seed results (JSON)")
    parser.add_argument(
        "--report", type=Path, nargs="+", help="--qat: print the table of these --out files"
    )
    args = parser.parse_args(argv)
    if args.report:
        rows, split = merged(args.report)
        print_table(rows, first=2, split=split)
        return
    if args.epochs is None:
        args.epochs = 2 if args.qat else 10
    if args.grid is None:
        args.grid = (
            ["1:0.5", "2:0.5", "4:0.5", "2:0.2", "2:0.8"]
            if args.qat
            else ["1:0.5", "2:0.5", "4:0.5", "4:0.1", "8:0.1"]
        )

    (x, y), test = common.data()
    fit, val = ((x, y), test) if args.final else ((x[:50000], y[:50000]), (x[50000:], y[50000:]))
    teacher = (
        keras.saving.load_model(args.teacher, compile=False) if args.teacher else common.teacher()
    )
    logits = kd_keras.cache_teacher_outputs(teacher, fit[0], batch_size=1024, verbose=0)
    args.split = "test" if args.final else "validation"
    print(f"teacher {args.split} accuracy {common.accuracy(teacher, *val):.4f}", flush=True)

    rows = (tune_qat if args.qat else tune_from_scratch)(args, fit, val, logits)
    print_table(rows, first=2 if args.qat else 1, split=args.split)


if __name__ == "__main__":
    main()
