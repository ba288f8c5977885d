"""Fashion-MNIST distillation benchmark.

Teacher (1.23 M params) -> student (9.2 k params), same epochs and seeds:
scratch student, kd_keras (cached teacher logits), kd_keras (teacher online),
and keras.distillation.Distiller with its defaults. Then the few-labels
regime: 6,000 labelled images + all 60,000 as unlabeled transfer data vs the
student trained on the 6,000 alone with the same number of optimizer steps.

Prints Markdown tables; epoch times are ratios to the scratch student measured
in the same run.

    python -m benchmarks.distillation_fashion_mnist --epochs 10 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import time

import keras
import numpy as np

import kd_keras
from benchmarks import common
from kd_keras.data import few_labels_split


def fit_scratch(x, y, xt, yt, seed, epochs, batch_size, steps_per_execution=1):
    model = common.student(seed)
    model.compile(
        keras.optimizers.Adam(1e-3),
        common.CE,
        metrics=["accuracy"],
        steps_per_execution=steps_per_execution,
    )
    timer = common.EpochTimer()
    model.fit(
        x, y, epochs=epochs, batch_size=batch_size, callbacks=[timer], verbose=0, shuffle=True
    )
    return common.accuracy(model, xt, yt), timer.median()


def fit_kd(
    teacher,
    y_target,
    x,
    xt,
    yt,
    seed,
    epochs,
    batch_size,
    temperature,
    alpha,
    steps_per_execution=1,
):
    student = common.student(seed)
    distiller = kd_keras.Distiller(
        student, teacher, losses=[kd_keras.losses.SoftTargetKD(temperature)], alpha=alpha
    )
    distiller.compile(
        keras.optimizers.Adam(1e-3), metrics=["accuracy"], steps_per_execution=steps_per_execution
    )
    timer = common.EpochTimer()
    distiller.fit(
        x,
        y_target,
        epochs=epochs,
        batch_size=batch_size,
        callbacks=[timer],
        verbose=0,
        shuffle=True,
    )
    return common.accuracy(student, xt, yt), timer.median()


def fit_keras_distillation(teacher, x, y, xt, yt, seed, epochs, batch_size, steps_per_execution=1):
    student = common.student(seed)
    distiller = keras.distillation.Distiller(
        teacher=teacher,
        student=student,
        distillation_losses=keras.distillation.LogitsDistillation(),
    )
    # The defaults under test are LogitsDistillation()'s (temperature=3,
    # loss="kl_divergence") and student_loss_weight=0.5; the student loss is
    # given from_logits=True since the student outputs logits.
    distiller.compile(
        keras.optimizers.Adam(1e-3),
        loss=common.CE,
        metrics=["accuracy"],
        steps_per_execution=steps_per_execution,
    )
    timer = common.EpochTimer()
    distiller.fit(
        x, y, epochs=epochs, batch_size=batch_size, callbacks=[timer], verbose=0, shuffle=True
    )
    return common.accuracy(student, xt, yt), timer.median()


def main_table(args, x, y, xt, yt, teacher, logits, header):
    """Scratch vs kd_keras (cached / online) vs keras.distillation, per seed."""
    cached_target = {"labels": y, "teacher_logits": logits}
    rows = {k: [] for k in ("scratch", "kd_cached", "kd_online", "keras")}
    kd = {"temperature": args.temperature, "alpha": args.alpha}
    for seed in args.seeds:
        run = {
            "seed": seed,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "steps_per_execution": args.steps_per_execution,
        }
        rows["scratch"].append(fit_scratch(x, y, xt, yt, **run))
        rows["kd_cached"].append(fit_kd(None, cached_target, x, xt, yt, **kd, **run))
        rows["kd_online"].append(fit_kd(teacher, y, x, xt, yt, **kd, **run))
        rows["keras"].append(fit_keras_distillation(teacher, x, y, xt, yt, **run))
        print(
            f"seed {seed}: "
            + ", ".join(f"{k}={v[-1][0]:.4f} ({v[-1][1]:.2f}s/epoch)" for k, v in rows.items()),
            flush=True,
        )
    scratch_time = np.mean([t for _, t in rows["scratch"]])
    keras_time = np.mean([t for _, t in rows["keras"]])
    labels = {
        "scratch": "student from scratch (labels only)",
        "kd_cached": (
            f"kd_keras Distiller, SoftTargetKD T={args.temperature:g}, "
            f"alpha={args.alpha:g}, cached teacher logits"
        ),
        "kd_online": "kd_keras Distiller, same, teacher run every step",
        "keras": "keras.distillation.Distiller, LogitsDistillation() defaults",
    }
    lines = [
        header,
        "",
        "| model | test accuracy % (mean ± std) | Δ vs scratch (pt) "
        "| epoch time / scratch | epoch time / keras.distillation |",
        "|---|---|---|---|---|",
    ]
    scratch_mean = np.mean([a for a, _ in rows["scratch"]])
    for key, label in labels.items():
        accs = [a for a, _ in rows[key]]
        t = np.mean([s for _, s in rows[key]])
        lines.append(
            f"| {label} | {common.mean_spread(accs)} "
            f"| {(np.mean(accs) - scratch_mean) * 100:+.2f} | "
            f"{t / scratch_time:.2f} | {t / keras_time:.2f} |"
        )
    return lines, rows


def few_labels_table(args, x, y, xt, yt, logits):
    """`args.labelled` labels + all images as transfer data, vs those labels
    alone, with the same number of optimizer steps."""
    mask = few_labels_split(y, args.labelled, seed=0)
    steps_ratio = len(y) // args.labelled
    target = {
        "labels": np.where(mask, y, 0),
        "label_mask": mask.astype("float32"),
        "teacher_logits": logits,
    }
    few = {"scratch": [], "kd": []}
    for seed in args.seeds:
        scratch_epochs = args.epochs * steps_ratio
        few["scratch"].append(
            fit_scratch(x[mask], y[mask], xt, yt, seed, scratch_epochs, args.batch_size)[0]
        )
        few["kd"].append(
            fit_kd(
                None,
                target,
                x,
                xt,
                yt,
                seed,
                args.epochs,
                args.batch_size,
                args.temperature,
                args.alpha,
            )[0]
        )
        print(
            f"few-labels seed {seed}: scratch={few['scratch'][-1]:.4f} kd={few['kd'][-1]:.4f}",
            flush=True,
        )
    gain = (np.mean(few["kd"]) - np.mean(few["scratch"])) * 100
    lines = [
        f"Few labels: {args.labelled:,} labelled images (class-balanced, seed 0); the "
        f"distilled student (T={args.temperature:g}, alpha={args.alpha:g}, cached logits) "
        f"also sees all {len(y):,} images as transfer data (label_mask). Same optimizer "
        f"steps: scratch runs {args.epochs * steps_ratio} epochs on the {args.labelled:,}, "
        f"kd_keras {args.epochs} epochs on {len(y):,}. Seeds {args.seeds}.",
        "",
        "| model | test accuracy % (mean ± std) | Δ vs scratch (pt) |",
        "|---|---|---|",
        f"| student on {args.labelled:,} labels alone "
        f"| {common.mean_spread(few['scratch'])} | +0.00 |",
        f"| kd_keras: {args.labelled:,} labels + {len(y):,} transfer images "
        f"| {common.mean_spread(few['kd'])} | {gain:+.2f} |",
    ]
    return lines, few


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-size", type=int, default=128)
    # Chosen by benchmarks/tune_distillation.py on a validation split of the
    # training set (see RESULTS.md), never on the test set.
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--labelled", type=int, default=6000)
    parser.add_argument(
        "--steps-per-execution",
        type=int,
        default=1,
        help="Keras steps_per_execution for every model of the main table (amortizes the "
        "per-step dispatch overhead that dominates a 9 k-parameter student's step)",
    )
    parser.add_argument(
        "--part",
        choices=("all", "main", "few-labels"),
        default="all",
        help="run both tables, or one (e.g. in two processes)",
    )
    parser.add_argument(
        "--timing-only",
        action="store_true",
        help="main table, first seed only: epoch-time ratios on a quiet machine",
    )
    args = parser.parse_args(argv)
    if args.timing_only:
        args.seeds, args.part = args.seeds[:1], "main"
    stem = (
        f"distillation_timing_spe{args.steps_per_execution}"
        if args.timing_only
        else f"distillation_{args.part}"
    )

    (x, y), (xt, yt) = common.data()
    teacher = common.teacher()
    teacher_acc = common.accuracy(teacher, xt, yt)
    start = time.perf_counter()
    logits = kd_keras.cache_teacher_outputs(teacher, x, batch_size=1024, verbose=0)
    cache_seconds = time.perf_counter() - start
    header = (
        f"Fashion-MNIST 60k/10k, {args.epochs} epochs, batch {args.batch_size}, "
        f"steps_per_execution {args.steps_per_execution}, Adam 1e-3, "
        f"seeds {args.seeds}. Teacher test accuracy {teacher_acc * 100:.2f} %, "
        f"{teacher.count_params():,} params; student {common.student(0).count_params():,} "
        f"params. Caching the teacher's logits took {cache_seconds:.1f} s once."
    )
    lines, results = [], {"teacher_accuracy": teacher_acc, "cache_seconds": cache_seconds}
    if args.part in ("all", "main"):
        table, results["rows"] = main_table(args, x, y, xt, yt, teacher, logits, header)
        lines += table + [""]
    if args.part in ("all", "few-labels"):
        table, results["few_labels"] = few_labels_table(args, x, y, xt, yt, logits)
        lines += table
    table = "\n".join(lines)
    print(table)
    common.OUT.mkdir(parents=True, exist_ok=True)
    (common.OUT / f"{stem}.md").write_text(table + "\n")
    (common.OUT / f"{stem}.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
