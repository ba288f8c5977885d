"""Fashion-MNIST pruning benchmark: prune with labels vs distill while pruning.

The student (kd_keras.models.cnn_student, 9.2 k params) is trained dense
twice for --epochs: with labels, and with the Distiller (soft targets from
the cached reference teacher; T = 2, alpha = 0.5 as chosen by
benchmarks/tune_distillation.py on a training-set validation split). Then,
for 50 %, 80 %, 90 % (unstructured magnitude, PolynomialDecay reaching the
target after --ramp (1/2) of the pruning steps, then held) and 2:4 (m-by-n; conv1
has a single input channel, so it stays dense), each

  (a) "labels": the dense labels student, pruned while fine-tuning with labels;
  (b) "distilled while pruning": the dense distilled student, pruned inside
      kd_keras.Distiller in the same `fit` (distill -> prune, the order of
      the kd_keras pipeline).

Both run --prune-epochs at lr 1e-3 while the sparsity ramps up, then with
the rate decaying (cosine) to 1e-5 while the pruned network recovers.
Since the pruned rows train longer than the dense ones, the dense students
also get the same extra epochs with the same schedule, unpruned: these
"dense, same budget" rows are the fair references ("within 1 pt of the dense
distilled student" is checked against the distilled one). Each row: test
accuracy, zero fraction (all parameters / pruned layers), and the gzip size
of the stripped float .tflite. Teacher logits are computed once (offline KD).

    python -m benchmarks.pruning_fashion_mnist --epochs 5 --prune-epochs 8
    python -m benchmarks.pruning_fashion_mnist --targets 80 --seeds 1 2   # more seeds

With --augment the pruning (and same-budget) epochs see randomly shifted and
flipped images, and the distilled rows run the teacher online on the very
batch the student sees ("consistent teaching", Beyer et al. 2022): cached
logits of the unaugmented images would no longer match the student's input.
"""

from __future__ import annotations

import argparse
import gzip
import time
from pathlib import Path

import keras
import numpy as np

import kd_keras
from benchmarks import common
from benchmarks.common import copy_of
from kd_keras import pruning
from kd_keras.quantization import convert

BATCH = 128
TARGETS = [
    ("50 %", {"final": 0.5}),
    ("80 %", {"final": 0.8}),
    ("90 %", {"final": 0.9}),
    ("2:4", {"m_by_n": (2, 4)}),
]


def prune(dense, spec, steps_per_epoch, epochs, ramp, skip=()):
    if "m_by_n" in spec:
        return pruning.prune_low_magnitude(
            copy_of(dense), sparsity_m_by_n=spec["m_by_n"], skip=["conv1"]
        )
    # Reach the target after `ramp` of the steps, then recover at constant sparsity.
    end = max(int(steps_per_epoch * epochs * ramp), 1)
    schedule = pruning.PolynomialDecay(
        0.0, spec["final"], begin_step=0, end_step=end, frequency=max(end // 40, 1)
    )
    return pruning.prune_low_magnitude(
        copy_of(dense), pruning_schedule=schedule, skip=list(skip) or None
    )


def optimizer(lr, decay_steps=None):
    """Adam; with `decay_steps=(hold, decay)` the rate stays at `lr` while the
    sparsity ramps up, then decays (cosine) to lr / 100 while the pruned
    network recovers."""
    if decay_steps:
        hold, decay = decay_steps
        lr = keras.optimizers.schedules.CosineDecay(
            lr, max(decay, 1), alpha=0.01, warmup_target=lr, warmup_steps=hold
        )
    return keras.optimizers.Adam(lr)


def augmented_batches(x, y, seed):
    """tf.data batches of (image, label) with a random shift of up to 2 pixels
    (zero padding) and a horizontal flip with probability 1/2 per image: the
    recipe the strong teacher was trained with (gpu_teacher_fashion_mnist)."""
    import tensorflow as tf

    def augment(image, label):
        image = tf.image.random_flip_left_right(image)
        image = tf.pad(image, [[2, 2], [2, 2], [0, 0]])
        return tf.image.random_crop(image, tf.shape(x)[1:]), label

    return (
        tf.data.Dataset.from_tensor_slices((x, y))
        .shuffle(len(x), seed=seed)
        .map(augment, num_parallel_calls=tf.data.AUTOTUNE)
        .batch(BATCH)
        .prefetch(tf.data.AUTOTUNE)
    )


def fit_labels(model, x, y, epochs, lr=1e-3, callbacks=(), decay_steps=None, batches=None):
    """Fine-tune with labels on (x, y), or on `batches` (a dataset) if given."""
    model.compile(optimizer(lr, decay_steps), common.CE, metrics=["accuracy"])
    data = {"x": batches} if batches is not None else {"x": x, "y": y, "batch_size": BATCH}
    model.fit(**data, epochs=epochs, verbose=0, shuffle=True, callbacks=list(callbacks))
    return model


def fit_distilled(
    student,
    x,
    y,
    logits,
    epochs,
    lr=1e-3,
    callbacks=(),
    temperature=2.0,
    alpha=0.5,
    decay_steps=None,
    batches=None,
    teacher=None,
    attention=None,
):
    """Distil from cached `logits`, or, given `batches` (a dataset), from
    `teacher` run online on each batch; `attention` (β) adds attention
    transfer between the teacher's and the student's `block1` and `block2`
    feature maps (same resolutions: 28×28 and 14×14)."""
    losses = [kd_keras.losses.SoftTargetKD(temperature)]
    if attention:
        losses += [
            kd_keras.losses.AttentionTransfer(
                teacher_layer=block, student_layer=block, beta=attention, name=f"at_{block}"
            )
            for block in ("block1", "block2")
        ]
    distiller = kd_keras.Distiller(
        student, teacher if batches is not None else None, losses=losses, alpha=alpha
    )
    distiller.compile(optimizer(lr, decay_steps))
    if batches is not None:
        data = {"x": batches}
    else:
        data = {"x": x, "y": {"labels": y, "teacher_logits": logits}, "batch_size": BATCH}
    distiller.fit(**data, epochs=epochs, verbose=0, shuffle=True, callbacks=list(callbacks))
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


def run_seed(seed, targets, args, x, y, xt, yt, logits, teacher):
    """All rows of one seed: dense references, then each target twice."""
    steps = int(np.ceil(len(x) / BATCH))
    hold = int(steps * args.prune_epochs * args.ramp) if args.lr == "hold-cosine" else 0
    decay = (hold, steps * args.prune_epochs - hold)
    kd = {"temperature": args.temperature, "alpha": args.alpha}
    # The dense students train on plain images; only the later epochs augment.
    later = {"batches": augmented_batches(x, y, seed)} if args.augment else {}
    later_kd = dict(later, teacher=teacher)
    prune_kd = dict(later_kd, attention=args.prune_at)
    rows = []
    dense = fit_labels(common.student(seed, args.filters), x, y, args.epochs)
    rows.append(measure("dense, labels", dense, xt, yt))
    dense_kd = fit_distilled(common.student(seed, args.filters), x, y, logits, args.epochs, **kd)
    rows.append(measure("dense, distilled", dense_kd, xt, yt))
    if not args.no_same_budget:
        keras.utils.set_random_seed(seed)
        longer = fit_labels(copy_of(dense), x, y, args.prune_epochs, decay_steps=decay, **later)
        rows.append(measure("dense, labels, same budget", longer, xt, yt))
        keras.utils.set_random_seed(seed)
        longer = fit_distilled(
            copy_of(dense_kd), x, y, logits, args.prune_epochs, decay_steps=decay, **kd, **later_kd
        )
        rows.append(measure("dense, distilled, same budget", longer, xt, yt))
    label_starts = [("labels", dense)]
    if args.labels_from_distilled:
        label_starts.append(("labels, from the distilled dense", dense_kd))
    for label, spec in targets:
        for how, start in label_starts:
            keras.utils.set_random_seed(seed)
            pruned = fit_labels(
                prune(start, spec, steps, args.prune_epochs, args.ramp, args.skip),
                x,
                y,
                args.prune_epochs,
                callbacks=[pruning.UpdatePruningStep()],
                decay_steps=decay,
                **later,
            )
            rows.append(measure(f"{label}, {how}", pruned, xt, yt))
        for temperature, alpha in args.prune_kd or [(args.temperature, args.alpha)]:
            keras.utils.set_random_seed(seed)
            pruned = fit_distilled(
                prune(dense_kd, spec, steps, args.prune_epochs, args.ramp, args.skip),
                x,
                y,
                logits,
                args.prune_epochs,
                callbacks=[pruning.UpdatePruningStep()],
                decay_steps=decay,
                temperature=temperature,
                alpha=alpha,
                **prune_kd,
            )
            name = f"{label}, distilled while pruning"
            if args.prune_at:
                name += f" + attention transfer (β={args.prune_at:g})"
            if args.prune_kd:
                name += f" (T={temperature:g}, α={alpha:g})"
            rows.append(measure(name, pruned, xt, yt))
        print(f"seed {seed}: {label} done", flush=True)
    return rows


def _kd_pair(text: str) -> tuple[float, float]:
    temperature, alpha = (float(v) for v in text.split(":"))
    return temperature, alpha


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=5, help="dense student epochs")
    parser.add_argument("--prune-epochs", type=int, default=8, help="epochs of pruning")
    parser.add_argument("--teacher", help=".keras teacher (default: benchmarks/out cache)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--targets",
        nargs="+",
        default=[t[0].split()[0] for t in TARGETS],
        help="subset of 50 80 90 2:4",
    )
    parser.add_argument(
        "--ramp",
        type=float,
        default=0.5,
        help="fraction of pruning steps spent reaching the target",
    )
    parser.add_argument(
        "--lr",
        choices=["hold-cosine", "cosine"],
        default="hold-cosine",
        help="hold 1e-3 during the ramp then cosine to 1e-5, or cosine over all pruning steps",
    )
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument(
        "--prune-kd",
        type=_kd_pair,
        nargs="+",
        help="T:alpha pairs for the distilled pruning rows, one row each (default: the "
        "--temperature / --alpha of the dense student)",
    )
    parser.add_argument(
        "--skip",
        nargs="+",
        default=[],
        help="layers left dense by the unstructured targets (e.g. conv1: 72 weights)",
    )
    parser.add_argument(
        "--labels-from-distilled",
        action="store_true",
        help="also prune the distilled dense student with labels only",
    )
    parser.add_argument(
        "--augment",
        action="store_true",
        help="shift/flip the images in the pruning and same-budget epochs; distilled rows "
        "then run the teacher online on the augmented batch",
    )
    parser.add_argument(
        "--prune-at",
        type=float,
        help="β of attention transfer (block1 and block2 maps) added to the distilled "
        "pruning rows; needs --augment (the teacher runs online)",
    )
    parser.add_argument(
        "--filters", type=int, nargs=2, default=[8, 16], help="student widths (default 8 16)"
    )
    parser.add_argument(
        "--no-same-budget", action="store_true", help="skip the dense same-budget rows"
    )
    parser.add_argument("--limit", type=int, help="use only the first N training images (smoke)")
    parser.add_argument("--out", help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    if args.prune_at and not args.augment:
        parser.error("--prune-at reads the teacher's feature maps: add --augment (online teacher)")

    (x, y), (xt, yt) = common.data()
    x, y = x[: args.limit], y[: args.limit]
    teacher = (
        keras.saving.load_model(args.teacher, compile=False) if args.teacher else common.teacher()
    )
    start = time.perf_counter()
    logits = teacher.predict(x, batch_size=512, verbose=0)
    teacher_acc = common.accuracy(teacher, xt, yt)
    targets = [t for t in TARGETS if t[0].split()[0] in args.targets]
    per_seed = [run_seed(s, targets, args, x, y, xt, yt, logits, teacher) for s in args.seeds]

    dense_gz = per_seed[0][0]["tflite_gzip"]
    print(
        f"\nteacher test accuracy {teacher_acc:.4f}; student filters {tuple(args.filters)}; "
        f"dense students {args.epochs} epochs, "
        f"then {args.prune_epochs} pruning epochs (target reached at {args.ramp:.0%} of them; "
        f"lr {args.lr} 1e-3 -> 1e-5); augment {args.augment}; seeds {args.seeds}; "
        f"backend {keras.backend.backend()}; {time.perf_counter() - start:.0f} s\n"
    )
    per_seed_header = " | ".join(f"seed {s}" for s in args.seeds)
    print(
        f"| student | test acc. (mean ± std) | {per_seed_header} | zeros (all params) "
        "| zeros (pruned layers) | .tflite gzip (bytes) | gzip vs dense |"
    )
    print("|---" * (6 + len(args.seeds)) + "|")
    for i, r in enumerate(per_seed[0]):
        accs = [rows[i]["accuracy"] for rows in per_seed]
        cells = " | ".join(f"{a * 100:.2f}" for a in accs)
        print(
            f"| {r['name']} | {common.mean_spread(accs)} % | {cells} | "
            f"{r['zeros_all'] * 100:.1f} % | {r['zeros_pruned'] * 100:.1f} % | "
            f"{r['tflite_gzip']} | {r['tflite_gzip'] / dense_gz:.2f} |"
        )
    if args.out:
        import json

        Path(args.out).write_text(json.dumps({"args": vars(args), "rows": per_seed}, indent=1))


if __name__ == "__main__":
    main()
