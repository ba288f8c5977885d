"""Load an exported artifact (or a Keras model) and run it on NumPy batches.

One `Runner` per runtime, with the same call signature, so parity checks,
latency and accuracy measure every artifact the same way:

| artifact                  | runtime                                      |
|---------------------------|----------------------------------------------|
| `.tflite` path or bytes   | `ai_edge_litert.interpreter.Interpreter`     |
| `.onnx`                   | `onnxruntime.InferenceSession` (CPU)         |
| SavedModel folder         | `tf.saved_model.load(...).serve`             |
| `.keras` path / a model   | `keras.Model.predict_on_batch`               |

Only single-input models are supported; a model with several outputs is
compared on its first one.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

RUNTIMES = ("tflite", "onnx", "saved_model", "keras")


class Runner:
    """Callable `runner(x) -> np.ndarray` over a batch `x`.

    Attributes:
        runtime: one of `RUNTIMES`.
        threads: the thread count the runtime was configured with (`None`
            when the runtime does not expose one).
        xnnpack: for TFLite, whether the XNNPACK delegate is applied.
        init_seconds: time to load the artifact and prepare it for the
            first call (model parsing, session creation, tensor allocation).
        input_shape: the model's input shape, `None` for the batch dimension.
    """

    runtime = "?"
    threads: int | None = None
    xnnpack: bool | None = None
    init_seconds = 0.0
    input_shape: tuple = ()
    input_dtype: Any = np.float32

    def __call__(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Runs `x` in batches of `batch_size` and concatenates the outputs."""
        x = np.asarray(x)
        outputs = [self(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
        return np.concatenate(outputs, axis=0)

    def describe(self) -> str:
        parts = [self.runtime]
        if self.threads is not None:
            parts.append(f"threads={self.threads}")
        if self.xnnpack is not None:
            parts.append("xnnpack" if self.xnnpack else "no-xnnpack")
        return " ".join(parts)


class TFLiteRunner(Runner):
    """LiteRT interpreter. `xnnpack=False` selects the builtin kernels
    without default delegates (`OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES`),
    the Python equivalent of `benchmark_model --use_xnnpack=false`."""

    runtime = "tflite"

    def __init__(self, artifact, threads: int | None = None, xnnpack: bool = True):
        start = time.perf_counter()
        self.interpreter = litert_interpreter(artifact, threads=threads, xnnpack=xnnpack)
        self.init_seconds = time.perf_counter() - start
        self.threads, self.xnnpack = threads, xnnpack
        inputs = self.interpreter.get_input_details()
        if len(inputs) != 1:
            raise ValueError(
                f"kd_keras runs single-input models; this TFLite model has "
                f"{len(inputs)} inputs ({[d['name'] for d in inputs]})."
            )
        self._input = inputs[0]
        self._output = self.interpreter.get_output_details()[0]
        signature = self._input.get("shape_signature", self._input["shape"])
        self.input_shape = tuple(None if d < 0 else int(d) for d in signature)
        self.input_dtype = self._input["dtype"]
        self._dynamic_batch = len(signature) > 0 and signature[0] < 0
        self._shape = tuple(self._input["shape"])

    @property
    def quantized_io(self) -> bool:
        return np.issubdtype(self._input["dtype"], np.integer)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        fixed = self._shape[0] if self._shape else None
        if not self._dynamic_batch and x.shape[0] != fixed:
            # A fixed-batch graph: run it batch by batch, zero-padding the last.
            chunks = []
            for start in range(0, len(x), fixed):
                chunk = x[start : start + fixed]
                pad = np.zeros((fixed - len(chunk), *x.shape[1:]), x.dtype)
                chunks.append(self(np.concatenate([chunk, pad]))[: len(chunk)])
            return np.concatenate(chunks)
        self.set_input(x)
        self.interpreter.invoke()
        return self._dequantize(self.interpreter.get_tensor(self._output["index"]))

    def set_input(self, x: np.ndarray) -> None:
        """Everything a call does before `invoke()`: resize the input to `x`'s
        shape if needed, quantize a float `x` for an integer input, set it.
        Timing code calls this outside the timed `self.interpreter.invoke()`."""
        x = np.asarray(x)
        if tuple(x.shape) != self._shape:
            self.interpreter.resize_tensor_input(self._input["index"], list(x.shape))
            self.interpreter.allocate_tensors()
            self._shape = tuple(x.shape)
        self.interpreter.set_tensor(self._input["index"], self._quantize(x))

    def _quantize(self, x):
        dtype = self._input["dtype"]
        if not np.issubdtype(dtype, np.integer) or np.issubdtype(x.dtype, np.integer):
            return x.astype(dtype, copy=False)
        scale, zero_point = self._input["quantization"]
        info = np.iinfo(dtype)
        q = np.round(x / scale + zero_point)
        return np.clip(q, info.min, info.max).astype(dtype)

    def _dequantize(self, y):
        if not np.issubdtype(y.dtype, np.integer):
            return np.array(y)
        scale, zero_point = self._output["quantization"]
        return (y.astype(np.float32) - zero_point) * scale


def litert_interpreter(artifact, threads: int | None = None, xnnpack: bool = True):
    """A LiteRT interpreter over a `.tflite` (path or bytes), tensors allocated.

    `xnnpack=False` selects the builtin kernels without default delegates,
    which is also what inspecting a graph needs (XNNPACK would replace the
    ops being looked at). Falls back to `tf.lite` where `ai-edge-litert`
    (the maintained runtime) is not installed.

    Example:

    ```python
    interpreter = litert_interpreter("student_int8.tflite", threads=1)
    interpreter.get_input_details()[0]["dtype"]
    ```
    """
    if isinstance(artifact, (bytes, bytearray)):
        source = {"model_content": bytes(artifact)}
    elif isinstance(artifact, (str, os.PathLike)):
        source = {"model_path": str(artifact)}
    else:
        raise TypeError(
            f"Expected a .tflite path or its content as bytes, got {type(artifact).__name__}."
        )
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        from ai_edge_litert import interpreter as litert
    except ImportError:
        import tensorflow as tf

        litert = tf.lite
    resolvers = getattr(litert, "OpResolverType", None) or litert.experimental.OpResolverType
    resolver = resolvers.AUTO if xnnpack else resolvers.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interpreter = litert.Interpreter(
        num_threads=threads, experimental_op_resolver_type=resolver, **source
    )
    interpreter.allocate_tensors()
    return interpreter


class ONNXRunner(Runner):
    """onnxruntime on CPU with `intra_op_num_threads=threads` (one inter-op
    thread, full graph optimisation)."""

    runtime = "onnx"

    def __init__(self, path, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        start = time.perf_counter()
        self.session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.init_seconds = time.perf_counter() - start
        self.threads = threads
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ValueError(
                f"kd_keras runs single-input models; this ONNX model has "
                f"{len(inputs)} inputs ({[i.name for i in inputs]})."
            )
        self._name = inputs[0].name
        self.input_shape = tuple(d if isinstance(d, int) else None for d in inputs[0].shape)
        self.input_dtype = np.float32

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=self.input_dtype)
        return self.session.run(None, {self._name: x})[0]


class SavedModelRunner(Runner):
    """`tf.saved_model.load` and its `serve` endpoint (or `serving_default`).
    TensorFlow's thread pools are process-wide, so `threads` is not set."""

    runtime = "saved_model"

    def __init__(self, path):
        import tensorflow as tf

        start = time.perf_counter()
        self.module = tf.saved_model.load(str(path))
        self.init_seconds = time.perf_counter() - start
        self._fn = getattr(self.module, "serve", None)
        if self._fn is None:
            self._fn = self.module.signatures["serving_default"]
        spec = None
        if hasattr(self._fn, "input_signature") and self._fn.input_signature:
            spec = self._fn.input_signature[0]
        elif hasattr(self._fn, "structured_input_signature"):
            spec = list(self._fn.structured_input_signature[1].values())[0]
        if spec is not None:
            self.input_shape = tuple(spec.shape.as_list())
            self.input_dtype = spec.dtype.as_numpy_dtype

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = self._fn(np.asarray(x, dtype=self.input_dtype))
        if isinstance(out, dict):
            out = next(iter(out.values()))
        elif isinstance(out, (list, tuple)):
            out = out[0]
        return np.asarray(out)


class KerasRunner(Runner):
    """`model.predict_on_batch` (the compiled predict step of the backend)."""

    runtime = "keras"

    def __init__(self, model):
        import keras

        start = time.perf_counter()
        if not isinstance(model, keras.Model):
            model = keras.saving.load_model(str(model))
        self.model = model
        self.init_seconds = time.perf_counter() - start
        shape = model.inputs[0].shape if getattr(model, "inputs", None) else ()
        self.input_shape = tuple(shape)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = self.model.predict_on_batch(np.asarray(x, dtype=np.float32))
        if isinstance(out, dict):
            out = next(iter(out.values()))
        elif isinstance(out, (list, tuple)):
            out = out[0]
        return np.asarray(out)


def runtime_of(artifact) -> str:
    """The runtime that runs `artifact` (a path, TFLite bytes or a Keras model).

    Example:

    ```python
    runtime_of("student.tflite")  # "tflite"
    ```
    """
    if isinstance(artifact, (bytes, bytearray)):
        return "tflite"
    if not isinstance(artifact, (str, os.PathLike)):
        return "keras"
    path = Path(artifact)
    if path.is_dir():
        if (path / "saved_model.pb").exists():
            return "saved_model"
        raise ValueError(f"{path} is a folder without saved_model.pb: not a SavedModel.")
    suffix = path.suffix.lower()
    if suffix == ".tflite":
        return "tflite"
    if suffix == ".onnx":
        return "onnx"
    if suffix in (".keras", ".h5"):
        return "keras"
    raise ValueError(
        f"Cannot tell how to run {path}: expected a .tflite, .onnx or .keras "
        "file, or a SavedModel folder."
    )


def load_runner(artifact, threads: int | None = None, xnnpack: bool = True) -> Runner:
    """Loads `artifact` into the matching `Runner`.

    Args:
        artifact: a `.tflite` / `.onnx` / `.keras` path, a SavedModel folder,
            TFLite flatbuffer bytes, or a `keras.Model`.
        threads: intra-op threads for LiteRT and onnxruntime; ignored by
            TensorFlow and Keras, whose thread pools are process-wide.
        xnnpack: LiteRT only: apply the default XNNPACK delegate.

    Example:

    ```python
    runner = load_runner("student.tflite", threads=2)
    logits = runner.predict(x_test)
    ```
    """
    runtime = runtime_of(artifact)
    if runtime != "keras" and not isinstance(artifact, (bytes, bytearray)):
        if not Path(artifact).exists():
            raise FileNotFoundError(f"{artifact} does not exist.")
    if runtime == "tflite":
        return TFLiteRunner(artifact, threads=threads, xnnpack=xnnpack)
    if runtime == "onnx":
        return ONNXRunner(artifact, threads=threads)
    if runtime == "saved_model":
        return SavedModelRunner(artifact)
    return KerasRunner(artifact)
