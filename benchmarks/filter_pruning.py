"""Filter pruning on Fashion-MNIST: smaller, faster students, recovered by
distillation or by labels only, side by side with unstructured sparsity.

For each student (the reference `cnn_student` on 28x28x1, and Keras's
MobileNetV2 alpha 0.35 on the images resized to 32x32 and repeated to 3
channels) and each seed:

  1. the dense student is trained on labels for --base-epochs ("dense"),
     then distilled for --epochs more ("dense, same budget, KD": the
     accuracy reference, trained as long as the pruned rows); with
     --one-dense it is trained once (first seed) and the seeds vary only
     the recovery runs below, which then all start from the same weights;
  2. for each fraction in --fractions, `kd_keras.pruning.prune_filters`
     removes that share of the filters (L1 importance, kept counts rounded to
     --round-to), and the smaller model is fine-tuned for --epochs twice from
     the same weights with the same seed: with the Distiller (cached teacher
     logits, T = 2, alpha = 0.5) and with labels only (the control);
  3. the dense student is pruned to 80 % zeros (unstructured magnitude,
     PolynomialDecay over half the steps) while distilling for --epochs, and
     its float .tflite is written with and without the sparse weight format.

Columns: test accuracy (mean ± std over seeds; the pair "KD - labels" is
per seed), parameters, MACs (`kd_keras.bench.count_macs`), float32 and int8
(post-training, 200 calibration images) .tflite bytes, and the median
invoke-only latency of each file in LiteRT, 1 thread, XNNPACK, with its
ratio to the dense float file: one set of files per architecture (seed 0),
all timed in this one run. The teacher (`cnn_teacher`) is trained on the
same training subset for --teacher-epochs. Every BatchNormalization uses
momentum 0.9, as these runs are a few hundred steps long.

    python -m benchmarks.filter_pruning --models cnn mobilenet --epochs 2 \
        --base-epochs 3 --train-size 6000 --seeds 0 1 2

Writes a Markdown table to stdout and the rows to --out (JSON, rewritten
after every seed, so a run stopped early keeps the seeds it finished).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import keras
import numpy as np

from benchmarks import common
from benchmarks.common import copy_of
from benchmarks.pruning_fashion_mnist import BATCH, fit_distilled, fit_labels
from kd_keras import pruning
from kd_keras.bench.flops import count_macs
from kd_keras.models import cnn_student, cnn_teacher
from kd_keras.quantization import convert


def short_run_batchnorm(model: keras.Model) -> keras.Model:
    """BatchNormalization momentum 0.9: with a few hundred steps the default
    0.99 (0.999 in MobileNetV2) leaves the moving statistics near their
    initial values, and inference accuracy near chance."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    return model


def build(name: str, seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    if name == "cnn":
        return short_run_batchnorm(cnn_student((28, 28, 1)))
    return short_run_batchnorm(
        keras.applications.MobileNetV2(
            alpha=0.35,
            weights=None,
            input_shape=(32, 32, 3),
            classes=10,
            classifier_activation=None,
        )
    )


def to_32x32x3(x: np.ndarray) -> np.ndarray:
    out = []
    for start in range(0, len(x), 2048):
        batch = keras.ops.image.resize(x[start : start + 2048], (32, 32))
        out.append(np.repeat(keras.ops.convert_to_numpy(batch), 3, axis=-1))
    return np.concatenate(out).astype("float32")


def files(model, calibration, runs: int) -> dict:
    """Sizes and 1-thread invoke latencies of the float32 and int8 .tflite."""
    sample = calibration[:1]
    float_bytes = convert(model)
    int8_bytes = convert(
        model, "int8", representative_data=calibration, num_calibration_batches=200
    )
    return {
        "params": int(model.count_params()),
        "macs": int(count_macs(model)),
        "tflite_f32": len(float_bytes),
        "tflite_int8": len(int8_bytes),
        "ms_f32": common.latency_ms(float_bytes, sample, runs=runs),
        "ms_int8": common.latency_ms(int8_bytes, sample, runs=runs),
    }


def run_model(name, args, x, y, xt, yt, logits, save=lambda rows: None):
    steps = int(np.ceil(len(x) / BATCH))
    rows: dict[str, dict] = {}

    def row(key):
        return rows.setdefault(key, {"model": name, "row": key, "acc": {}})

    dense = None
    for seed in args.seeds:
        started = time.time()
        if dense is None or not args.one_dense:
            dense = build(name, seed)
            fit_labels(dense, x, y, args.base_epochs)
            row("dense")["acc"][seed] = common.accuracy(dense, xt, yt)
            print(f"[{name}] dense: {time.time() - started:.0f} s", flush=True)
        if seed == args.seeds[0]:
            row("dense").update(files(dense, x[:200], args.runs))
        # The pruned rows train --epochs more: the dense student with the same
        # extra epochs (distilled) is the fair accuracy reference.
        keras.utils.set_random_seed(seed + 1000)
        longer = fit_distilled(copy_of(dense), x, y, logits, args.epochs)
        row("dense, same budget, KD")["acc"][seed] = common.accuracy(longer, xt, yt)
        for fraction in args.fractions:
            small = pruning.prune_filters(dense, fraction, round_to=args.round_to)
            key = f"filters -{int(round(fraction * 100))} %"
            for mode in ("KD", "labels"):
                keras.utils.set_random_seed(seed + 1000)
                model = copy_of(small)
                if mode == "KD":
                    model = fit_distilled(model, x, y, logits, args.epochs)
                else:
                    model = fit_labels(model, x, y, args.epochs)
                row(f"{key}, {mode}")["acc"][seed] = common.accuracy(model, xt, yt)
                if seed == args.seeds[0] and mode == "KD":
                    row(f"{key}, {mode}").update(files(model, x[:200], args.runs))
        save(list(rows.values()))
        if args.one_dense and seed != args.seeds[0]:
            print(f"[{name}] seed {seed}: {time.time() - started:.0f} s", flush=True)
            continue
        # Unstructured 80 % while distilling, for the sparse weight format.
        keras.utils.set_random_seed(seed + 1000)
        schedule = pruning.ramp_schedule(args.sparsity, steps * args.epochs, ramp=0.5)
        masked = pruning.prune_low_magnitude(copy_of(dense), pruning_schedule=schedule)
        masked = fit_distilled(
            masked, x, y, logits, args.epochs, callbacks=[pruning.UpdatePruningStep()]
        )
        sparse = pruning.strip_pruning(masked)
        key = f"unstructured {int(args.sparsity * 100)} %, KD"
        row(key)["acc"][seed] = common.accuracy(sparse, xt, yt)
        if seed == args.seeds[0]:
            entry = row(key)
            entry.update(files(sparse, x[:200], args.runs))
            sparse_bytes = convert(sparse, sparse=True)
            entry["tflite_f32_sparse"] = len(sparse_bytes)
            entry["ms_f32_sparse"] = common.latency_ms(sparse_bytes, x[:1], runs=args.runs)
        print(f"[{name}] seed {seed}: {time.time() - started:.0f} s", flush=True)
        save(list(rows.values()))
    return list(rows.values())


def table(rows) -> str:
    lines = [
        "| model | row | accuracy % (mean ± std) | KD − labels (pt, per seed) | params | MACs "
        "| .tflite f32 / int8 bytes | f32 ms | int8 ms | f32 / int8 speed-up vs dense f32 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    by_key = {(r["model"], r["row"]): r for r in rows}
    for r in rows:
        dense = by_key[(r["model"], "dense")]
        accs = list(r["acc"].values())
        paired = ""
        if r["row"].endswith(", KD"):
            labels = by_key.get((r["model"], r["row"].replace(", KD", ", labels")))
            if labels:
                diffs = [100 * (r["acc"][s] - labels["acc"][s]) for s in r["acc"]]
                paired = ", ".join(f"{d:+.2f}" for d in diffs)
        sizes = speed = ms = ""
        if "ms_f32" in r:
            sizes = f"{r['tflite_f32']:,} / {r['tflite_int8']:,}"
            if "tflite_f32_sparse" in r:
                sizes += f" (sparse f32: {r['tflite_f32_sparse']:,})"
            ms = f"{r['ms_f32']:.3f}"
            if "ms_f32_sparse" in r:
                ms += f" (sparse: {r['ms_f32_sparse']:.3f})"
            speed = f"{dense['ms_f32'] / r['ms_f32']:.2f}× / {dense['ms_f32'] / r['ms_int8']:.2f}×"
        lines.append(
            f"| {r['model']} | {r['row']} | {common.mean_spread(accs)} | {paired} "
            f"| {r.get('params', ''):,} | {r.get('macs', ''):,} | {sizes} | {ms} "
            f"| {r['ms_int8']:.3f} | {speed} |"
            if "ms_f32" in r
            else f"| {r['model']} | {r['row']} | {common.mean_spread(accs)} | {paired} "
            "| | | | | | |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=("cnn", "mobilenet"), default=["cnn"])
    parser.add_argument("--epochs", type=int, default=2, help="recovery epochs")
    parser.add_argument("--base-epochs", type=int, default=3, help="dense training epochs")
    parser.add_argument("--teacher-epochs", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=6000)
    parser.add_argument("--test-size", type=int, default=10000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument("--round-to", type=int, default=4)
    parser.add_argument("--sparsity", type=float, default=0.8)
    parser.add_argument("--runs", type=int, default=300, help="timed invokes per file")
    parser.add_argument(
        "--one-dense",
        action="store_true",
        help="train the dense student once (first seed); the seeds vary the recovery runs "
        "(and the unstructured row runs once)",
    )
    parser.add_argument("--out", default=str(common.OUT / "filter_pruning.json"))
    args = parser.parse_args(argv)

    (x, y), (xt, yt) = common.data()
    order = np.random.default_rng(0).permutation(len(x))[: args.train_size]
    x, y = x[order], y[order]
    xt, yt = xt[: args.test_size], yt[: args.test_size]
    keras.utils.set_random_seed(0)
    teacher = short_run_batchnorm(cnn_teacher())
    teacher.compile(keras.optimizers.Adam(1e-3), common.CE, metrics=["accuracy"])
    teacher.fit(x, y, epochs=args.teacher_epochs, batch_size=BATCH, verbose=0)
    logits = teacher.predict(x, batch_size=1024, verbose=0)
    teacher_acc = common.accuracy(teacher, xt, yt)
    print(f"teacher accuracy {100 * teacher_acc:.2f} %", flush=True)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save(rows):
        # After every seed, atomically: a long run that is stopped keeps its rows.
        tmp = out.with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                {"args": vars(args), "teacher_acc": teacher_acc, "rows": rows},
                indent=1,
                default=str,
            )
        )
        tmp.replace(out)

    rows = []
    for name in args.models:
        save_with_earlier = lambda new, done=tuple(rows): save([*done, *new])  # noqa: E731
        if name == "mobilenet":
            big = (to_32x32x3(x), y, to_32x32x3(xt), yt)
            rows += run_model(name, args, *big, logits, save=save_with_earlier)
        else:
            rows += run_model(name, args, x, y, xt, yt, logits, save=save_with_earlier)
        print(table(rows), flush=True)
    save(rows)


if __name__ == "__main__":
    main()
