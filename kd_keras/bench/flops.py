"""MACs counted from the graph, and how close a runtime gets to the CPU's peak.

A MAC is one multiply-accumulate; FLOPs = 2 x MACs. Only the layers that do
the arithmetic are counted — convolutions (incl. depthwise, separable,
transposed, grouped), dense layers — because they dominate; activations,
pooling, normalisation and bias adds are left out, as in the usual
"MACs/FLOPs of a CNN" tables. Counts are dense: a pruned kernel's zeros are
still multiplied by the runtimes kd_keras targets, so they count.

Per layer call:

- convolution: output positions x kernel size
  (`prod(out_spatial) * kh * kw * c_in/groups * c_out`),
- transposed convolution: input positions x kernel size,
- depthwise: output positions x `kh * kw * c_in * depth_multiplier`,
- separable: depthwise + pointwise (`prod(out_spatial) * c_in*dm * c_out`),
- dense: leading positions x `in * units`.

The CPU peak is measured once per process and thread count with float32
matrix products in NumPy (`2 n^3` FLOPs for `n x n` matrices; the best rate
over n = 256, 512, 1024 and several repeats), its BLAS threads limited with
`threadpoolctl` when installed. It is the best this machine's BLAS
achieves, a practical stand-in for the arithmetic peak (which NumPy cannot
exceed, but a runtime's hand-tuned kernels occasionally can).
"Fraction of peak" is achieved FLOP/s over that peak: how much of the
physical limit the runtime turns into useful arithmetic.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time

import numpy as np

from kd_keras.runtime import runtime_of


@dataclasses.dataclass
class LayerMACs:
    """MACs of one layer (summed over its calls)."""

    name: str
    type: str
    macs: int


def macs_by_layer(model) -> list[LayerMACs]:
    """MACs of every arithmetic layer of a built Keras model, one inference
    of one sample, recursing into nested models and wrappers.

    Example:

    ```python
    x = np.random.rand(64, 8).astype("float32")
    y = np.random.randint(0, 3, size=64)
    student = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)]
    )

    for row in macs_by_layer(student):
        print(row.name, row.type, row.macs)
    ```
    """
    rows: list[LayerMACs] = []
    _collect(model, rows, prefix="", repeat=1)
    return rows


def count_macs(model) -> int:
    """Total MACs for one sample (`FLOPs ~= 2 * count_macs(model)`).

    Example:

    ```python
    from kd_keras.models import cnn_student

    macs = count_macs(cnn_student((28, 28, 1)))
    ```
    """
    return int(sum(row.macs for row in macs_by_layer(model)))


def count_macs_tflite(path) -> int:
    """MACs for one sample read from a `.tflite` graph's op and tensor shapes
    (`CONV_2D`, `DEPTHWISE_CONV_2D`, `TRANSPOSE_CONV`, `CONV_3D`,
    `FULLY_CONNECTED`), at the graph's default batch of 1. Works for
    quantized graphs, whose weight tensors keep their float shapes.

    Example:

    ```python
    x = np.random.rand(64, 8).astype("float32")
    y = np.random.randint(0, 3, size=64)
    student = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)]
    )

    kd_keras.export.to_tflite(student, "student_int8.tflite", quantization="dynamic")
    count_macs_tflite("student_int8.tflite")  # 8·16 + 16·3
    ```
    """
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    shapes = {
        t["index"]: tuple(int(d) for d in t["shape"]) for t in interpreter.get_tensor_details()
    }
    total = 0
    for op in interpreter._get_ops_details():
        kind = op["op_name"]
        inputs, outputs = list(op["inputs"]), list(op["outputs"])
        if kind in ("CONV_2D", "DEPTHWISE_CONV_2D", "CONV_3D"):
            weights, out = shapes[inputs[1]], shapes[outputs[0]]
            total += math.prod(out[1:-1]) * math.prod(weights)
        elif kind == "TRANSPOSE_CONV":
            # inputs: output_shape, weights, data
            weights, data = shapes[inputs[1]], shapes[inputs[2]]
            total += math.prod(data[1:-1]) * math.prod(weights)
        elif kind == "FULLY_CONNECTED":
            weights, out = shapes[inputs[1]], shapes[outputs[0]]
            total += math.prod(out[:-1]) * math.prod(weights)
    return int(total)


def count_macs_onnx(path) -> int:
    """MACs for one sample read from an `.onnx` graph after ONNX shape
    inference (`Conv`, `ConvTranspose`, and `MatMul`/`Gemm` with a constant
    weight); symbolic dimensions (the batch) count as 1.

    Example:

    ```python
    x = np.random.rand(64, 8).astype("float32")
    y = np.random.randint(0, 3, size=64)
    student = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)]
    )

    kd_keras.export.to_onnx(student, "student.onnx")
    count_macs_onnx("student.onnx")  # 8·16 + 16·3
    ```
    """
    import onnx
    from onnx import shape_inference

    graph = shape_inference.infer_shapes(onnx.load(str(path))).graph
    weights = {t.name: tuple(t.dims) for t in graph.initializer}
    shapes = dict(weights)
    for value in list(graph.input) + list(graph.value_info) + list(graph.output):
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = tuple(d.dim_value if d.dim_value > 0 else 1 for d in dims)
    total = 0
    for node in graph.node:
        if node.op_type in ("Conv", "ConvTranspose") and node.input[1] in shapes:
            kernel = shapes[node.input[1]]
            # NCHW: positions are the spatial dims after N and C.
            data = shapes.get(node.input[0] if node.op_type == "ConvTranspose" else node.output[0])
            if data is not None:
                total += math.prod(data[2:]) * math.prod(kernel)
        elif node.op_type in ("MatMul", "Gemm") and node.input[1] in weights:
            out = shapes.get(node.output[0])
            if out is not None:
                total += math.prod(out[:-1]) * math.prod(weights[node.input[1]])
    return int(total)


def count_macs_artifact(artifact) -> int:
    """`count_macs` for a Keras model / `.keras`, `count_macs_tflite` for a
    `.tflite`, `count_macs_onnx` for an `.onnx`."""
    runtime = runtime_of(artifact)
    if runtime == "tflite":
        return count_macs_tflite(artifact)
    if runtime == "onnx":
        return count_macs_onnx(artifact)
    if runtime == "keras":
        if isinstance(artifact, (str, os.PathLike)):
            import keras

            artifact = keras.saving.load_model(str(artifact))
        return count_macs(artifact)
    raise ValueError(
        f"MACs are counted from Keras, TFLite and ONNX graphs, not {runtime}; "
        "pass macs=<count> for this artifact."
    )


@functools.cache
def cpu_peak_gflops(threads: int = 1, sizes: tuple = (256, 512, 1024), repeats: int = 10) -> float:
    """Peak float32 GFLOP/s of this CPU on `threads` threads (see module doc).

    The best of `repeats` products for each of `sizes`: small, cache-resident
    products reach the arithmetic peak, large ones can be memory-bound, and
    on a shared machine the best repeat is the one least disturbed.

    Example:

    ```python
    peak = cpu_peak_gflops(1)  # e.g. ~100 on one AVX-512 core
    ```
    """
    rng = np.random.default_rng(0)
    best_rate = 0.0
    with _blas_threads(threads):
        for size in sizes:
            a = rng.random((size, size), dtype=np.float32)
            b = rng.random((size, size), dtype=np.float32)
            a @ b  # page the operands in and spin the thread pool up
            best = math.inf
            for _ in range(repeats):
                start = time.perf_counter()
                a @ b
                best = min(best, time.perf_counter() - start)
            best_rate = max(best_rate, 2.0 * size**3 / best / 1e9)
    return best_rate


def fraction_of_peak(
    macs: int, latency_ms: float, peak_gflops: float, batch_size: int = 1
) -> float:
    """Achieved FLOP/s (`2 * macs * batch_size / latency`) over `peak_gflops`."""
    if latency_ms <= 0 or peak_gflops <= 0:
        raise ValueError("latency_ms and peak_gflops must be positive.")
    achieved = 2.0 * macs * batch_size / (latency_ms / 1e3) / 1e9
    return achieved / peak_gflops


def _collect(layer, rows, prefix: str, repeat: int) -> None:
    if isinstance(getattr(layer, "layers", None), list):  # a (nested) model
        for sub in layer.layers:
            if isinstance(getattr(sub, "layers", None), list):
                # A sub-model counts once per call in this graph.
                calls = max(1, _num_calls(sub))
                _collect(sub, rows, f"{prefix}{sub.name}/", repeat * calls)
            else:
                _collect(sub, rows, prefix, repeat)
        return
    inner = getattr(layer, "layer", None)
    # A wrapper (pruning, QAT, TimeDistributed) is counted as what it wraps,
    # on the wrapper's own call shapes.
    target = inner if inner is not None and hasattr(inner, "built") else layer
    if not isinstance(target, _arithmetic_types()):
        return
    macs = sum(_layer_macs(target, i, o) for i, o in _call_shapes(layer))
    if macs:
        rows.append(LayerMACs(prefix + layer.name, type(target).__name__, macs * repeat))


def _num_calls(layer) -> int:
    return len(getattr(layer, "_inbound_nodes", []))


def _call_shapes(layer):
    shapes = []
    for node in getattr(layer, "_inbound_nodes", []):
        if node.input_tensors and node.output_tensors:
            shapes.append((tuple(node.input_tensors[0].shape), tuple(node.output_tensors[0].shape)))
    if not shapes:
        raise ValueError(
            f"Layer {layer.name!r} has no recorded call shapes: MACs are counted "
            "from a functional or Sequential model built on a keras.Input. For a "
            "subclassed model, export it and use count_macs_tflite(path)."
        )
    return shapes


def _arithmetic_types() -> tuple:
    from keras import layers

    return (
        layers.Conv1D,
        layers.Conv2D,
        layers.Conv3D,
        layers.Conv1DTranspose,
        layers.Conv2DTranspose,
        layers.Conv3DTranspose,
        layers.DepthwiseConv1D,
        layers.DepthwiseConv2D,
        layers.SeparableConv1D,
        layers.SeparableConv2D,
        layers.Dense,
    )


def _layer_macs(layer, in_shape, out_shape) -> int:
    from keras import layers

    channels_first = getattr(layer, "data_format", "channels_last") == "channels_first"
    spatial_out = out_shape[2:] if channels_first else out_shape[1:-1]
    spatial_in = in_shape[2:] if channels_first else in_shape[1:-1]
    if isinstance(layer, layers.SeparableConv2D) or isinstance(layer, layers.SeparableConv1D):
        positions = _positions(layer, spatial_out)
        return positions * (_size(layer.depthwise_kernel) + _size(layer.pointwise_kernel))
    if isinstance(layer, (layers.DepthwiseConv1D, layers.DepthwiseConv2D)):
        return _positions(layer, spatial_out) * _size(layer.kernel)
    if isinstance(layer, (layers.Conv1DTranspose, layers.Conv2DTranspose, layers.Conv3DTranspose)):
        return _positions(layer, spatial_in) * _size(layer.kernel)
    if isinstance(layer, (layers.Conv1D, layers.Conv2D, layers.Conv3D)):
        return _positions(layer, spatial_out) * _size(layer.kernel)
    if isinstance(layer, layers.Dense):
        return _positions(layer, out_shape[1:-1]) * _size(layer.kernel)
    return 0


def _positions(layer, dims) -> int:
    if any(d is None for d in dims):
        raise ValueError(
            f"Layer {layer.name!r} has unknown spatial dimensions {dims}; build "
            "the model on a keras.Input with a fixed image size to count MACs."
        )
    return math.prod(int(d) for d in dims)


def _size(variable) -> int:
    return math.prod(int(d) for d in variable.shape)


class _blas_threads:
    def __init__(self, threads: int):
        self.threads, self.limiter = threads, None

    def __enter__(self):
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            return self
        self.limiter = threadpool_limits(limits=self.threads, user_api="blas")
        return self

    def __exit__(self, *exc):
        if self.limiter is not None:
            self.limiter.restore_original_limits()
        return False
