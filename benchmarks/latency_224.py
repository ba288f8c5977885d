"""Float32 vs full-int8 latency of phone image models at 224×224, invoke-only.

MobileNetV2 (α 1.0), MobileNetV3Small and EfficientNetB0 from
`keras.applications`, built with `weights=None`: latency does not depend on
the weights' values, so random weights time the same kernels a trained
model runs. Their BatchNormalization moving statistics are set from one
training-mode pass over the calibration images (as a trained model's
statistics match its activations): with the initial ones (mean 0, variance
1) activations grow layer after layer, and the int8 file gets ranges no
trained model has (MobileNetV3Small's then had 18 XNNPACK partitions even
with hard-swish split, against 1). Each model is converted with
`kd_keras.quantization.convert`, batch fixed at 1 (static shapes, what a
phone app runs):

- float32;
- full int8 post-training quantization with int8 input and output, calibrated
  on `--calibration` random images in the range the model's first layer
  expects (MobileNetV2: [-1, 1]; V3 and EfficientNet rescale [0, 255]
  themselves). Hard-swish is written as int8 ADD / MUL / MUL, `convert`'s
  default, which XNNPACK runs;
- for models with hard-swish (MobileNetV3), the same int8 conversion with
  TFLite's single `HARD_SWISH` op kept (`split_hard_swish=False`), which
  XNNPACK does not run in int8;
- with `--qat`, also `kd_keras.quantization.quantize_model` (ranges from
  the calibration images in training mode, no training) converted with
  `mode="qat"`, with and without `split_hard_swish`;
- with `--filters F ...`, also the model with a fraction F of its filters
  removed by `kd_keras.pruning.prune_filters` (L1 importance, channel counts
  rounded to multiples of 8 for XNNPACK's SIMD kernels), in float32 and full
  int8, each timed against the dense float32 file of the same run.

All files are timed with `kd_keras.bench.measure_latency` — 1 thread, the
default XNNPACK delegate, `invoke()` alone with the input set once before
the timed runs (as LiteRT's `benchmark_model`) — in turn, `--rounds` times
(the order rotates each round, so load from other jobs falls on every file
alike). Each figure is the median of the round medians, and the speed-up is
float32 / int8 of the same run.

    python -m benchmarks.latency_224
    python -m benchmarks.latency_224 --models MobileNetV2 --rounds 3
    python -m benchmarks.latency_224 --models "MobileNetV3Small minimalistic"  # ReLU, no hard-swish
    python -m benchmarks.latency_224 --models MobileNetV3Small MobileNetV3Large
    python -m benchmarks.latency_224 --models MobileNetV2 --filters 0.3 0.5  # filter pruning
    python -m benchmarks.latency_224 --save DIR   # keep the .tflite files
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import keras
import numpy as np

from benchmarks.int8_latency_layers import cpu_name
from kd_keras.bench import measure_latency
from kd_keras.pruning import prune_filters
from kd_keras.quantization import convert, quantize_model, tflite_ops
from kd_keras.runtime import litert_interpreter

# Given explicitly: MobileNetV3's default input is (None, None, 3), which
# leaves the spatial size of a batch-1 file unknown until resized.
SHAPE = (224, 224, 3)
# Input range of the model's first layer with weights=None and default arguments.
MODELS = {
    "MobileNetV2": (
        lambda: keras.applications.MobileNetV2(SHAPE, alpha=1.0, weights=None),
        (-1, 1),
    ),
    "MobileNetV3Small": (
        lambda: keras.applications.MobileNetV3Small(SHAPE, weights=None),
        (0, 255),
    ),
    "MobileNetV3Large": (
        lambda: keras.applications.MobileNetV3Large(SHAPE, weights=None),
        (0, 255),
    ),
    "MobileNetV3Small minimalistic": (
        lambda: keras.applications.MobileNetV3Small(SHAPE, weights=None, minimalistic=True),
        (0, 255),
    ),
    "EfficientNetB0": (
        lambda: keras.applications.EfficientNetB0(weights=None, input_shape=SHAPE),
        (0, 255),
    ),
}


HARD_SWISH_KEPT = "int8, HARD_SWISH op"


def set_batch_norm_statistics(model: keras.Model, images: np.ndarray) -> None:
    """Moving statistics of every BatchNormalization = the batch statistics
    of one training-mode pass over `images` (momentum 0 for that pass)."""
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in norms]
    for layer in norms:
        layer.momentum = 0.0
    model(images, training=True)
    for layer, momentum in zip(norms, momenta):
        layer.momentum = momentum


def build(
    name: str, calibration: int, seed: int, qat: bool = False, filters: tuple[float, ...] = ()
) -> tuple[dict[str, bytes], np.ndarray, int]:
    """`{"float32": bytes, "int8": bytes}` (and `HARD_SWISH_KEPT` for a model
    with hard-swish, the QAT files with `qat`, and both of each filter-pruned
    copy), one input image, the parameter count."""
    make, (low, high) = MODELS[name]
    keras.utils.set_random_seed(seed)
    model = make()
    rng = np.random.default_rng(seed)
    images = rng.uniform(low, high, (calibration + 1, 224, 224, 3)).astype("float32")
    set_batch_norm_statistics(model, images[1:])
    int8 = {
        "mode": "int8",
        "representative_data": images[1:],
        "num_calibration_batches": calibration,
        "int8_io": True,
        "batch_size": 1,
    }
    files = {"float32": convert(model, batch_size=1), "int8": convert(model, **int8)}
    hard_swish = "HARD_SWISH" in {op["op"] for op in tflite_ops(files["float32"])}
    if hard_swish:
        files[HARD_SWISH_KEPT] = convert(model, split_hard_swish=False, **int8)
    for split in ((True, False) if hard_swish else (True,)) if qat else ():
        quantized = quantize_model(model, split_hard_swish=split)
        for batch in np.array_split(images[1:], max(1, len(images[1:]) // 4)):
            quantized(batch, training=True)  # activation ranges, no training
        label = "QAT int8" if split else "QAT int8, HARD_SWISH op"
        files[label] = convert(quantized, mode="qat", int8_io=True, batch_size=1)
    for fraction in filters:
        # The kept channels keep their moving statistics, so the pruned copy's
        # activations (and int8 ranges) are those of the dense model's.
        pruned = prune_filters(model, fraction, importance="l1", round_to=8)
        label = f"filters −{fraction:.0%}"
        dense_params = model.count_params()
        print(f"{name}, {label}: {pruned.count_params():,} parameters (dense {dense_params:,})")
        files[f"{label} float32"] = convert(pruned, batch_size=1)
        files[f"{label} int8"] = convert(pruned, **int8)
    return files, images[:1], model.count_params()


def float_ops(model_bytes: bytes) -> dict[str, int]:
    """Op counts of ops whose inputs or outputs are float32 (in an int8 file:
    what the converter left in float)."""
    counts: dict[str, int] = {}
    for op in tflite_ops(model_bytes):
        if "float32" in op["inputs"] + op["outputs"]:
            counts[op["op"]] = counts.get(op["op"], 0) + 1
    return counts


def xnnpack_partitions(model_bytes: bytes) -> int:
    """How many XNNPACK partitions LiteRT makes of the file: 1 when every op
    is delegated; each op XNNPACK does not take splits the graph further and
    runs on LiteRT's own kernel in between."""
    interpreter = litert_interpreter(model_bytes, threads=1)
    return sum(op["op_name"] == "DELEGATE" for op in interpreter._get_ops_details())


def single_op_models() -> dict[str, tuple[keras.Model, bool]]:
    """One op each, at the shape where MobileNetV3Small spends most on it:
    hard-swish on the stem's 112×112×16 output (as TFLite's `HARD_SWISH`,
    and as `convert` writes it by default: ADD / MUL / MUL), and the
    squeeze-excite multiply of a 28×28×96 map by its 1×1×96 hard-sigmoid
    gate; with `convert`'s `split_hard_swish` for each."""
    x = keras.Input((112, 112, 16))
    hard_swish = keras.Model(x, keras.layers.Activation("hard_silu")(x))
    x = keras.Input((28, 28, 96))
    gate = keras.layers.GlobalAveragePooling2D(keepdims=True)(x)
    gate = keras.layers.Activation("hard_sigmoid")(gate)
    excite = keras.Model(x, keras.layers.Multiply()([x, gate]))
    return {
        "HARD_SWISH 112×112×16": (hard_swish, False),
        "hard-swish as ADD, MUL, MUL 112×112×16": (hard_swish, True),
        "squeeze-excite MUL 28×28×96": (excite, True),
    }


def op_profile(rounds: int, runs: int, seed: int) -> None:
    """Float32 vs int8 time of single-op files (LiteRT's Python interpreter
    has no op profiler), with XNNPACK's partition count of each."""
    rng = np.random.default_rng(seed)
    rows = {}
    for label, (model, split) in single_op_models().items():
        shape = (64, *model.input_shape[1:])
        data = rng.uniform(-4, 4, shape).astype("float32")
        files = {
            "float32": convert(model, batch_size=1),
            "int8": convert(
                model,
                mode="int8",
                representative_data=data,
                num_calibration_batches=64,
                int8_io=True,
                batch_size=1,
                split_hard_swish=split,
            ),
        }
        times = {kind: [] for kind in files}
        for r in range(rounds):
            for kind in list(files) if r % 2 == 0 else list(files)[::-1]:
                result = measure_latency(files[kind], threads=1, runs=runs, inputs=data[:1])
                times[kind].append(result.p50_ms)
        rows[label] = {
            kind: (float(np.median(times[kind])), xnnpack_partitions(b))
            for kind, b in files.items()
        }
    print("\n| op | float32 p50 ms | int8 p50 ms | int8 speed-up | XNNPACK partitions f32 / int8 |")
    print("|---|---|---|---|---|")
    for label, row in rows.items():
        (f, pf), (q, pq) = row["float32"], row["int8"]
        print(f"| {label} | {f:.3f} | {q:.3f} | {f / q:.2f}× | {pf} / {pq} |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        nargs="+",
        default=["MobileNetV2", "MobileNetV3Small", "EfficientNetB0"],
        choices=list(MODELS),
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=30, help="timed invokes per round")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--calibration", type=int, default=16, help="random calibration images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", type=Path, help="also write the .tflite files to this folder")
    parser.add_argument("--qat", action="store_true", help="also time QAT (quantize_model) files")
    parser.add_argument(
        "--filters",
        nargs="+",
        type=float,
        default=[],
        metavar="F",
        help="also time copies with this fraction of filters removed (prune_filters)",
    )
    parser.add_argument(
        "--op-profile",
        action="store_true",
        help="only time single-op files (hard-swish, squeeze-excite MUL) float32 vs int8",
    )
    args = parser.parse_args(argv)
    if args.op_profile:
        op_profile(args.rounds, 200, args.seed)
        return

    files, inputs, params, convert_s, partitions = {}, {}, {}, {}, {}
    for name in args.models:
        start = time.perf_counter()
        pair, image, params[name] = build(
            name, args.calibration, args.seed, args.qat, tuple(args.filters)
        )
        convert_s[name] = time.perf_counter() - start
        for kind, model_bytes in pair.items():
            files[(name, kind)] = model_bytes
            inputs[(name, kind)] = image
            if args.save:
                args.save.mkdir(parents=True, exist_ok=True)
                (args.save / f"{name}.{kind}.tflite").write_bytes(model_bytes)
        left = float_ops(pair["int8"])
        parts = {kind: xnnpack_partitions(b) for kind, b in pair.items()}
        partitions.update({(name, kind): n for kind, n in parts.items()})
        print(f"{name}: XNNPACK partitions {parts}")
        print(
            f"{name}: converted in {convert_s[name]:.0f} s; "
            f"float ops in the int8 file: {left or 'none'}"
        )

    keys = list(files)
    rounds: dict = {key: [] for key in keys}
    start = time.perf_counter()
    for r in range(args.rounds):
        for key in keys[r % len(keys) :] + keys[: r % len(keys)]:
            result = measure_latency(
                files[key], threads=1, runs=args.runs, warmup=args.warmup, inputs=inputs[key]
            )
            rounds[key].append(result.p50_ms)
    timing_s = time.perf_counter() - start
    median = {key: float(np.median(values)) for key, values in rounds.items()}

    print(
        f"\n{cpu_name()}, batch 1, 224×224×3, 1 thread, XNNPACK; invoke() only, median of "
        f"{args.rounds} rounds × {args.runs} runs ({args.warmup} warm-up); timing took "
        f"{timing_s:.0f} s\n"
    )
    print(
        "| model | params | float32 KB | int8 KB | float32 p50 ms | int8 p50 ms | int8 speed-up "
        "| int8 with HARD_SWISH op: p50 ms, speed-up |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models:
        f, q = median[(name, "float32")], median[(name, "int8")]
        kept = median.get((name, HARD_SWISH_KEPT))
        kept_cell = f"{kept:.2f}, {f / kept:.2f}×" if kept else "no hard-swish"
        print(
            f"| {name} | {params[name]:,} | {len(files[(name, 'float32')]) / 1024:.0f} | "
            f"{len(files[(name, 'int8')]) / 1024:.0f} | {f:.2f} | {q:.2f} | {f / q:.2f}× "
            f"| {kept_cell} |"
        )
    if args.qat or args.filters:
        print("\n| model | file | KB | p50 ms | speed-up vs float32 | XNNPACK partitions |")
        print("|---|---|---|---|---|---|")
        for (name, kind), model_bytes in files.items():
            f = median[(name, "float32")]
            print(
                f"| {name} | {kind} | {len(model_bytes) / 1024:.0f} | {median[(name, kind)]:.2f} "
                f"| {f / median[(name, kind)]:.2f}× | {partitions[(name, kind)]} |"
            )


if __name__ == "__main__":
    main()
