"""Where the batch-1 time of the Fashion-MNIST student goes, float32 vs int8.

LiteRT's op profiler is a C++ tool (`benchmark_model --enable_op_profiling`)
that the Python interpreter does not expose, so this script profiles by
construction: it cuts `kd_keras.models.cnn_student` into its stages (conv
block 1, pool 1, conv block 2, pool 2, flatten + logits), converts each
stage and the whole model to float32 and to full int8 (post-training, int8
input and output, so no QUANTIZE / DEQUANTIZE ops are added), with a fixed
batch of 1 (static shapes: one delegate partition per file), and times
`invoke()` alone, single-threaded, with the default XNNPACK delegate. All
files are timed in turn, `--repeats` times, and the median of each file's
per-repeat medians is reported, so load on the machine hits every file alike.
An empty graph (a single RESHAPE) gives the per-invoke floor.

Weights are left as initialized: dense kernels take the same time whatever
their values. Calibration uses training images.

    python -m benchmarks.int8_latency_layers
    python -m benchmarks.int8_latency_layers --filters 32 64

`--save DIR` keeps the files and `--load DIR` times them again without
converting, where only LiteRT (ai-edge-litert) and Keras are installed — on
another machine's CPU, say.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import keras
import numpy as np

from benchmarks import common
from kd_keras.models import cnn_student
from kd_keras.quantization import convert

STAGES = [
    ("conv block 1 (conv1 + BN + ReLU)", None, "block1"),
    ("max-pool 1", "block1", "pool1"),
    ("conv block 2 (conv2 + BN + ReLU)", "pool1", "block2"),
    ("max-pool 2", "block2", "pool2"),
    ("flatten + logits (Dense)", "pool2", "logits"),
    ("whole model", None, "logits"),
]


def stage_model(model, start, end):
    """The part of functional `model` from the output of layer `start`
    (the model input when None) to the output of layer `end`, on a fresh
    Input so it converts on its own."""
    source = model.input if start is None else model.get_layer(start).output
    inputs = keras.Input(tuple(source.shape[1:]))
    tensors = {id(source): inputs}
    x = inputs
    for layer in model.layers[1:]:
        node_input = layer.input
        if id(node_input) in tensors:
            x = layer(tensors[id(node_input)])
            tensors[id(layer.output)] = x
        if layer.name == end:
            break
    return keras.Model(inputs, x)


def build_files(filters) -> tuple[dict, bytes, int]:
    """`{stage: {"float32": bytes, "int8": bytes}}`, the per-invoke floor's file
    and the student's parameter count."""
    (x, _), _ = common.data()
    keras.utils.set_random_seed(0)
    model = cnn_student(filters=tuple(filters))
    files = {}
    for label, start, end in STAGES:
        part = stage_model(model, start, end)
        calibration = keras.Model(model.input, model.get_layer(start).output) if start else None
        data = x[:100] if calibration is None else calibration.predict(x[:100], verbose=0)
        files[label] = {
            "float32": convert(part, batch_size=1),
            "int8": convert(
                part, mode="int8", representative_data=data, int8_io=True, batch_size=1
            ),
        }
    inputs = keras.Input((28, 28, 1))
    floor = convert(keras.Model(inputs, keras.layers.Reshape((784,))(inputs)), batch_size=1)
    return files, floor, model.count_params()


def save_files(folder: Path, files: dict, floor: bytes, params: int, filters) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    names = {}
    for i, (label, pair) in enumerate(files.items()):
        for kind, model_bytes in pair.items():
            name = f"stage{i}.{kind}.tflite"
            (folder / name).write_bytes(model_bytes)
            names.setdefault(label, {})[kind] = name
    (folder / "floor.tflite").write_bytes(floor)
    manifest = {"filters": list(filters), "params": params, "files": names}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))


def load_files(folder: Path) -> tuple[dict, bytes, int, list]:
    manifest = json.loads((folder / "manifest.json").read_text())
    files = {
        label: {kind: (folder / name).read_bytes() for kind, name in pair.items()}
        for label, pair in manifest["files"].items()
    }
    floor = (folder / "floor.tflite").read_bytes()
    return files, floor, manifest["params"], manifest["filters"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--filters", type=int, nargs=2, default=[8, 16])
    parser.add_argument("--repeats", type=int, default=7, help="rounds over all files")
    parser.add_argument("--runs", type=int, default=2000, help="timed invokes per round")
    parser.add_argument("--save", type=Path, help="also write the .tflite files to this folder")
    parser.add_argument(
        "--load",
        type=Path,
        help="time the files a --save wrote (no conversion: runs where only LiteRT is installed)",
    )
    args = parser.parse_args(argv)

    if args.load:
        files, floor, params, filters = load_files(args.load)
    else:
        filters = args.filters
        files, floor, params = build_files(filters)
        if args.save:
            save_files(args.save, files, floor, params, filters)

    def invoke_us(model_bytes):
        return 1000 * common.latency_ms(model_bytes, warmup=100, runs=args.runs)

    rounds = {}
    for _ in range(args.repeats):
        rounds.setdefault("floor", []).append(invoke_us(floor))
        for label, pair in files.items():
            for kind, model_bytes in pair.items():
                rounds.setdefault((label, kind), []).append(invoke_us(model_bytes))
    median = {key: float(np.median(values)) for key, values in rounds.items()}

    print(
        f"\ncnn_student filters {tuple(filters)} ({params:,} params), {cpu_name()}, "
        f"batch 1, 1 thread, XNNPACK; invoke() only, median of {args.repeats} rounds of "
        f"{args.runs}; per-invoke floor (one RESHAPE) {median['floor']:.2f} µs\n"
    )
    print("| stage | float32 (µs) | int8 (µs) | int8 speed-up |")
    print("|---|---|---|---|")
    for label in files:
        f, q = median[(label, "float32")], median[(label, "int8")]
        print(f"| {label} | {f:.2f} | {q:.2f} | {f / q:.2f}× |")


def cpu_name() -> str:
    """The processor's model name (Linux), since int8 kernels differ by CPU."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
