"""Float32 vs int8 latency of the Fashion-MNIST student, invoke-only.

The quantization benchmark's files (float32, dynamic range, full-int8 PTQ,
float16 PTQ, QAT int8 with int8 I/O) of `kd_keras.models.cnn_student`,
timed with `kd_keras.bench.measure_latency`: 1 thread, XNNPACK, the input
set once before the timed `invoke()` runs (as LiteRT's `benchmark_model`),
and the whole Python call (set + quantize + invoke + read + dequantize)
timed separately. All files are measured in turn, `--rounds` times
(interleaved, so load from other jobs falls on every file alike); each
figure is the median of the round medians, and ratios are to the float32
file of the same run. Latency does not depend on how well the weights are
trained, so the student trains one short epoch (QAT one more) on the first
`--limit` training images: enough for realistic calibration ranges.

    python -m benchmarks.latency_invoke_only
    python -m benchmarks.latency_invoke_only --filters 32 64
    python -m benchmarks.latency_invoke_only --phone-layout   # batch 1 fixed, names stripped
"""

from __future__ import annotations

import argparse
import platform

import keras
import numpy as np

from benchmarks import common
from kd_keras.bench import measure_latency
from kd_keras.models import cnn_student
from kd_keras.quantization import convert, quantize_model


def files(filters, limit: int, seed: int, **layout) -> dict[str, bytes]:
    (x, y), _ = common.data()
    x, y = x[:limit], y[:limit]
    keras.utils.set_random_seed(seed)
    student = cnn_student(filters=tuple(filters))
    student.compile(keras.optimizers.Adam(1e-3), common.CE)
    student.fit(x, y, epochs=1, batch_size=128, verbose=0)
    qat = quantize_model(student)
    qat.compile(keras.optimizers.Adam(1e-4), common.CE)
    qat.fit(x, y, epochs=1, batch_size=128, verbose=0)
    calibration = {"representative_data": x[:200], "num_calibration_batches": 200}
    return {
        "float32": convert(student, **layout),
        "dynamic range (PTQ)": convert(student, mode="dynamic", **layout),
        "full int8 (PTQ), int8 I/O": convert(
            student, mode="int8", int8_io=True, **calibration, **layout
        ),
        "float16 (PTQ)": convert(student, mode="float16", **layout),
        "QAT int8, int8 I/O": convert(qat, mode="qat", int8_io=True, **layout),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--filters", type=int, nargs=2, default=[8, 16])
    parser.add_argument("--limit", type=int, default=10000, help="training images used")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--phone-layout",
        action="store_true",
        help="the phone layout of the quantization benchmark: batch fixed at 1 "
        "(static shapes), tensor names stripped; batch 1 only",
    )
    args = parser.parse_args()

    layout = {"batch_size": 1, "strip_strings": True} if args.phone_layout else {}
    if args.phone_layout:
        args.batch_sizes = [1]
    models = files(args.filters, args.limit, args.seed, **layout)
    _, (xt, _) = common.data()
    names = list(models)
    for batch in args.batch_sizes:
        runs = args.runs if batch == 1 else max(args.runs // 10, 20)
        invoke = {n: [] for n in names}
        call = {n: [] for n in names}
        for r in range(args.rounds):
            for n in names[r % len(names) :] + names[: r % len(names)]:
                result = measure_latency(
                    models[n],
                    threads=1,
                    runs=runs,
                    warmup=args.warmup,
                    batch_size=batch,
                    inputs=xt[:batch],
                )
                invoke[n].append(result.p50_ms)
                call[n].append(result.call_p50_ms)
        med = {n: float(np.median(invoke[n])) for n in names}
        med_call = {n: float(np.median(call[n])) for n in names}
        print(
            f"\nbatch {batch}, 1 thread, XNNPACK; median of {args.rounds} rounds x "
            f"{runs} runs ({args.warmup} warm-up); student filters {tuple(args.filters)}"
            f"{'; phone layout' if args.phone_layout else ''}\n"
        )
        print(
            "| file | invoke p50 ms | time × float32 (invoke) | call p50 ms | "
            "time × float32 (call) | overhead ms | overhead % of invoke |"
        )
        print("|---|---|---|---|---|---|---|")
        for n in names:
            overhead = med_call[n] - med[n]
            print(
                f"| {n} | {med[n]:.4f} | {med[n] / med['float32']:.2f} | {med_call[n]:.4f} | "
                f"{med_call[n] / med_call['float32']:.2f} | {overhead:.4f} | "
                f"{100 * overhead / med[n]:.0f} % |"
            )
    print(
        f"\nMachine: {platform.machine()} {platform.processor()}; time × float32: the file's "
        "median over the float32 file's (below 1: faster than float32)."
    )


if __name__ == "__main__":
    main()
