"""Load an exported artifact (or a Keras model) and run it on NumPy batches.

One `Runner` per runtime, with the same interface, so parity checks,
latency, accuracy and the text models measure every artifact the same way:

| artifact                  | runtime                                      |
|---------------------------|----------------------------------------------|
| `.tflite` path or bytes   | `ai_edge_litert.interpreter.Interpreter`     |
| `.onnx`                   | `onnxruntime.InferenceSession` (CPU)         |
| SavedModel folder         | `tf.saved_model.load(...).serve`             |
| `.keras` path / a model   | `keras.Model.predict_on_batch`               |

A call is three steps, public so that timing code can separate them:
`set_inputs(x)` (check, resize, quantize a float input for an int8 model,
hand the arrays to the runtime), `invoke()` (the computation alone) and
`get_outputs()` (read and dequantize); `runner(x)` does all three.

`x` is one array for a single-input model, or the named inputs as a dict
`{name: array}` (a list in the model's input order also works). Each array
is given to the runtime in the dtype the model declares for that input:
int32 token ids stay integers and are never "quantized"; only a float array
fed to an int8/uint8 input with a quantization scale is quantized with the
model's own scale and zero point. A model with several outputs is returned
(and compared) on its first one; `get_outputs()` has them all.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

RUNTIMES = ("tflite", "onnx", "saved_model", "keras")

NORMALIZATION_FIX = (
    "Replace the Normalization layer by layers.Rescaling(scale=1 / np.sqrt(variance), "
    "offset=-mean / np.sqrt(variance)) (the same function, its constants inside the graph), "
    "or normalize the data before the model, then export again."
)


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """One model input as its runtime declares it.

    Attributes:
        name: the name `set_inputs` takes it by (the Keras input's name).
        shape: its shape, `None` for unknown dimensions (the batch first).
        dtype: the NumPy dtype the runtime takes.
        quantization: `(scale, zero_point)` of an integer input that holds
            quantized real values; `None` otherwise (e.g. int32 token ids).
    """

    name: str
    shape: tuple
    dtype: Any
    quantization: tuple[float, int] | None = None


class Runner:
    """Runs one model: `runner(x) -> np.ndarray`, or the three steps
    `set_inputs(x)`, `invoke()`, `get_outputs()`.

    Attributes:
        runtime: one of `RUNTIMES`.
        inputs: an `InputSpec` per model input, in the model's order.
        threads: the thread count the runtime was configured with (`None`
            when the runtime does not expose one).
        xnnpack: for TFLite, whether the XNNPACK delegate is applied.
        init_seconds: time to load the artifact and prepare it for the
            first call (model parsing, session creation, tensor allocation).
    """

    runtime = "?"
    threads: int | None = None
    xnnpack: bool | None = None
    init_seconds = 0.0
    inputs: list[InputSpec] = []

    # -- the three steps of a call -------------------------------------------

    def set_inputs(self, x) -> None:
        """Everything before the computation: match `x` to the inputs by
        name, convert each to its declared dtype (quantizing a float array
        for a quantized integer input), resize where the shape changed, and
        hand them to the runtime."""
        self._set(self.feed(x))

    def invoke(self) -> None:
        """Runs the model on the inputs last set; nothing else."""
        raise NotImplementedError

    def get_outputs(self) -> list[np.ndarray]:
        """Every output of the last `invoke()`, as float NumPy arrays where
        the model's output is quantized (dequantized with its scale and zero
        point)."""
        raise NotImplementedError

    def __call__(self, x) -> np.ndarray:
        self.set_inputs(x)
        self.invoke()
        return self.get_outputs()[0]

    def predict(self, x, batch_size: int = 256) -> np.ndarray:
        """Runs `x` (an array or named inputs) in batches of `batch_size` and
        concatenates the (first) outputs."""
        feed = self.feed(x)
        count = _batch_count(feed)
        outputs = [self(_slice(feed, i, i + batch_size)) for i in range(0, count, batch_size)]
        return np.concatenate(outputs, axis=0)

    # -- inputs --------------------------------------------------------------

    @property
    def input_names(self) -> list[str]:
        return [spec.name for spec in self.inputs]

    @property
    def input_shape(self) -> tuple:
        """The first input's shape (`None` for unknown dimensions)."""
        return self.inputs[0].shape if self.inputs else ()

    @property
    def input_dtype(self) -> Any:
        """The first input's dtype."""
        return self.inputs[0].dtype if self.inputs else np.float32

    def feed(self, x) -> dict[str, np.ndarray]:
        """`x` as `{input name: array in that input's dtype}`.

        Accepts one array (single-input models), a dict keyed by input name
        (any one key for a single-input model), or a list/tuple in input
        order. Raises `ValueError` naming the
        inputs when `x` does not match them.
        """
        names = self.input_names
        if isinstance(x, Mapping) and len(x) == 1 and len(names) == 1:
            # One input: its name may differ between runtimes; no ambiguity.
            x = next(iter(x.values()))
        if isinstance(x, Mapping):
            missing = [n for n in names if n not in x]
            extra = [k for k in x if k not in names]
            if missing or extra:
                raise ValueError(
                    f"This {self.runtime} model takes the inputs {names}; got {sorted(x)} "
                    f"(missing {missing}, unknown {extra}). Pass a dict with exactly these "
                    "names." + self._missing_hint(missing)
                )
            arrays = {n: x[n] for n in names}
        elif isinstance(x, (list, tuple)) and len(names) > 1:
            if len(x) != len(names):
                raise ValueError(
                    f"This {self.runtime} model takes {len(names)} inputs {names}; got a "
                    f"list of {len(x)} arrays. Pass a dict {{name: array}}."
                    + self._missing_hint(names[len(x) :])
                )
            arrays = dict(zip(names, x))
        else:
            if len(names) != 1:
                raise ValueError(
                    f"This {self.runtime} model takes {len(names)} inputs {names}; got one "
                    "array. Pass a dict {name: array}." + self._missing_hint(names[1:])
                )
            arrays = {names[0]: x}
        return {spec.name: _to_input(spec, arrays[spec.name]) for spec in self.inputs}

    def _missing_hint(self, missing: Sequence[str]) -> str:
        """Explains inputs that only exist because of how the model was exported."""
        internal = [n for n in missing if re.search(r"/.+:\d+$", n)]
        if not internal:
            return ""
        scopes = sorted({n.split("/")[-3] if n.count("/") >= 2 else n for n in internal})
        return (
            f" The inputs {internal} are internal tensors of the layer(s) {scopes}, which the "
            "export turned into inputs; tf2onnx does this to a Normalization layer's mean and "
            "variance. " + NORMALIZATION_FIX
        )

    def _set(self, feed: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        parts = [self.runtime]
        if self.threads is not None:
            parts.append(f"threads={self.threads}")
        if self.xnnpack is not None:
            parts.append("xnnpack" if self.xnnpack else "no-xnnpack")
        return " ".join(parts)


def _to_input(spec: InputSpec, x) -> np.ndarray:
    """`x` in `spec`'s dtype: a float array for a quantized integer input is
    quantized; token ids (integer inputs without a scale) are cast, and
    refused when given as non-integral floats."""
    x = np.asarray(x)
    dtype = np.dtype(spec.dtype)
    if x.dtype == dtype:
        return x
    if np.issubdtype(dtype, np.integer) and not np.issubdtype(x.dtype, np.integer):
        if spec.quantization is not None:
            scale, zero_point = spec.quantization
            info = np.iinfo(dtype)
            q = np.round(x / scale + zero_point)
            return np.clip(q, info.min, info.max).astype(dtype)
        if not np.all(np.isfinite(x)) or not np.array_equal(x, np.round(x)):
            raise ValueError(
                f"Input {spec.name!r} takes {dtype.name} values (e.g. token ids); got "
                f"{x.dtype} values that are not whole numbers. Pass the integer ids."
            )
    return x.astype(dtype)


def _batch_count(feed: Mapping[str, np.ndarray]) -> int:
    counts = {len(a) for a in feed.values()}
    if len(counts) != 1:
        shapes = {n: a.shape for n, a in feed.items()}
        raise ValueError(f"The inputs have different batch sizes: {shapes}.")
    return counts.pop()


def _slice(feed: Mapping[str, np.ndarray], start: int, stop: int) -> dict[str, np.ndarray]:
    return {n: a[start:stop] for n, a in feed.items()}


def _dequantize(y: np.ndarray, quantization) -> np.ndarray:
    y = np.array(y)  # a copy: LiteRT's buffer is overwritten by the next invoke
    scale, zero_point = quantization or (0.0, 0)
    if np.issubdtype(y.dtype, np.integer) and scale:
        return (y.astype(np.float32) - zero_point) * np.float32(scale)
    return y


def _quantization(details: dict) -> tuple[float, int] | None:
    scale, zero_point = details.get("quantization", (0.0, 0))
    return (float(scale), int(zero_point)) if scale else None


class TFLiteRunner(Runner):
    """LiteRT interpreter. `xnnpack=False` selects the builtin kernels
    without default delegates (`OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES`),
    the Python equivalent of `benchmark_model --use_xnnpack=false`.

    Inputs are named as in the model's serving signature (the Keras input
    names); a file without a signature uses its tensor names.
    """

    runtime = "tflite"

    def __init__(self, artifact, threads: int | None = None, xnnpack: bool = True):
        start = time.perf_counter()
        self.interpreter = litert_interpreter(artifact, threads=threads, xnnpack=xnnpack)
        self.init_seconds = time.perf_counter() - start
        self.threads, self.xnnpack = threads, xnnpack
        details = self.interpreter.get_input_details()
        names = _signature_input_names(self.interpreter)
        self._index = {}
        self._shape = {}
        self.inputs = []
        for d in details:
            name = names.get(d["index"], _tensor_name(d["name"]))
            signature = d.get("shape_signature", d["shape"])
            self.inputs.append(
                InputSpec(
                    name=name,
                    shape=tuple(None if s < 0 else int(s) for s in signature),
                    dtype=np.dtype(d["dtype"]),
                    quantization=_quantization(d)
                    if np.issubdtype(d["dtype"], np.integer)
                    else None,
                )
            )
            self._index[name] = d["index"]
            self._shape[name] = tuple(d["shape"])
        self._outputs = self.interpreter.get_output_details()
        first = details[0].get("shape_signature", details[0]["shape"]) if details else ()
        self._fixed_batch = None if len(first) == 0 or first[0] < 0 else int(first[0])

    @property
    def quantized_io(self) -> bool:
        """Whether an input takes quantized integers (int8 I/O)."""
        return any(spec.quantization is not None for spec in self.inputs)

    def __call__(self, x) -> np.ndarray:
        feed = self.feed(x)
        count = _batch_count(feed)
        fixed = self._fixed_batch
        if fixed is not None and count != fixed:
            # A fixed-batch graph: run it batch by batch, zero-padding the last.
            chunks = []
            for start in range(0, count, fixed):
                chunk = _slice(feed, start, start + fixed)
                n = _batch_count(chunk)
                padded = {
                    k: np.concatenate([a, np.zeros((fixed - n, *a.shape[1:]), a.dtype)])
                    for k, a in chunk.items()
                }
                chunks.append(self(padded)[:n])
            return np.concatenate(chunks)
        return super().__call__(feed)

    def _set(self, feed: dict[str, np.ndarray]) -> None:
        resized = False
        for name, x in feed.items():
            if tuple(x.shape) != self._shape[name]:
                self.interpreter.resize_tensor_input(self._index[name], list(x.shape))
                self._shape[name] = tuple(x.shape)
                resized = True
        if resized:
            self.interpreter.allocate_tensors()
        for name, x in feed.items():
            self.interpreter.set_tensor(self._index[name], x)

    def set_input(self, x) -> None:
        """`set_inputs` under its former name."""
        self.set_inputs(x)

    def invoke(self) -> None:
        self.interpreter.invoke()

    def get_outputs(self) -> list[np.ndarray]:
        return [
            _dequantize(self.interpreter.get_tensor(d["index"]), _quantization(d))
            for d in self._outputs
        ]


def _tensor_name(name: str) -> str:
    """`serving_default_token_ids:0` -> `token_ids` (the converter's naming)."""
    name = re.sub(r":\d+$", "", name)
    return name[len("serving_default_") :] if name.startswith("serving_default_") else name


def _signature_input_names(interpreter) -> dict[int, str]:
    """`{tensor index: input name}` from the first serving signature, if any."""
    try:
        signatures = interpreter.get_signature_list()
        if not signatures:
            return {}
        runner = interpreter.get_signature_runner(next(iter(signatures)))
        return {int(d["index"]): name for name, d in runner.get_input_details().items()}
    except (ValueError, KeyError, RuntimeError):
        return {}


def litert_interpreter(artifact, threads: int | None = None, xnnpack: bool = True):
    """A LiteRT interpreter over a `.tflite` (path or bytes), tensors allocated.

    `xnnpack=False` selects the builtin kernels without default delegates,
    which is also what inspecting a graph needs (XNNPACK would replace the
    ops being looked at). Falls back to `tf.lite` where `ai-edge-litert`
    (the maintained runtime) is not installed.

    Example:

    ```python
    x = np.random.rand(64, 8).astype("float32")
    y = np.random.randint(0, 3, size=64)
    student = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)]
    )

    int8 = kd_keras.quantization.convert(
        student, mode="int8", representative_data=x, int8_io=True
    )
    with open("student_int8.tflite", "wb") as f:
        f.write(int8)
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


# onnxruntime's type strings -> NumPy.
_ONNX_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}


class ONNXRunner(Runner):
    """onnxruntime on CPU with `intra_op_num_threads=threads` (one inter-op
    thread, full graph optimisation). Each input is fed by name in the dtype
    the graph declares. `invoke()` is `session.run`, which also copies the
    inputs into the session: onnxruntime's Python API has no separate step."""

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
        self.inputs = []
        for i in self.session.get_inputs():
            if i.type not in _ONNX_DTYPES:
                raise ValueError(
                    f"ONNX input {i.name!r} has type {i.type}, which kd_keras cannot feed."
                )
            self.inputs.append(
                InputSpec(
                    name=i.name,
                    shape=tuple(d if isinstance(d, int) else None for d in i.shape),
                    dtype=np.dtype(_ONNX_DTYPES[i.type]),
                )
            )
        self._feed: dict[str, np.ndarray] = {}
        self._results: list = []

    def _set(self, feed: dict[str, np.ndarray]) -> None:
        self._feed = feed

    def invoke(self) -> None:
        self._results = self.session.run(None, self._feed)

    def get_outputs(self) -> list[np.ndarray]:
        return [np.asarray(r) for r in self._results]


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
        if self._fn is not None and getattr(self._fn, "input_signature", None):
            # Positional structure (one tensor, a list or a dict per argument).
            self._structure, self._keyword = self._fn.input_signature, False
        else:
            self._fn = self._fn or self.module.signatures["serving_default"]
            self._structure, self._keyword = self._fn.structured_input_signature[1], True
        specs = tf.nest.flatten(self._structure)
        self.inputs = [
            InputSpec(
                name=_tensor_name(spec.name or f"input_{i}"),
                shape=tuple(spec.shape.as_list()),
                dtype=np.dtype(spec.dtype.as_numpy_dtype),
            )
            for i, spec in enumerate(specs)
        ]
        self._args: Any = None
        self._results: list = []

    def _set(self, feed: dict[str, np.ndarray]) -> None:
        import tensorflow as tf

        flat = [feed[spec.name] for spec in self.inputs]
        self._args = tf.nest.pack_sequence_as(self._structure, flat)

    def invoke(self) -> None:
        out = self._fn(**self._args) if self._keyword else self._fn(*self._args)
        self._results = _flatten_outputs(out)

    def get_outputs(self) -> list[np.ndarray]:
        return [np.asarray(r) for r in self._results]


class KerasRunner(Runner):
    """`model.predict_on_batch` (the compiled predict step of the backend).

    A model that was never called on symbolic inputs (a subclassed model)
    takes one float32 array."""

    runtime = "keras"

    def __init__(self, model):
        import keras

        start = time.perf_counter()
        if not isinstance(model, keras.Model):
            model = keras.saving.load_model(str(model))
        self.model = model
        self.init_seconds = time.perf_counter() - start
        symbolic = list(getattr(model, "inputs", None) or [])
        self.inputs = [
            InputSpec(
                name=t.name,
                shape=tuple(t.shape),
                dtype=np.dtype(keras.backend.standardize_dtype(t.dtype)),
            )
            for t in symbolic
        ] or [InputSpec(name="input", shape=(), dtype=np.dtype(np.float32))]
        self._single = len(self.inputs) == 1
        self._x: Any = None
        self._results: list = []

    def _set(self, feed: dict[str, np.ndarray]) -> None:
        self._x = next(iter(feed.values())) if self._single else feed

    def invoke(self) -> None:
        self._results = _flatten_outputs(self.model.predict_on_batch(self._x))

    def get_outputs(self) -> list[np.ndarray]:
        return [np.asarray(r) for r in self._results]


def _flatten_outputs(out) -> list:
    if isinstance(out, Mapping):
        return list(out.values())
    if isinstance(out, (list, tuple)):
        return list(out)
    return [out]


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
    x_train = np.random.rand(64, 8).astype("float32")
    x_test = np.random.rand(16, 8).astype("float32")
    student = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)]
    )

    kd_keras.export.to_tflite(student, "student.tflite")
    runner = load_runner("student.tflite", threads=2)
    logits = runner.predict(x_test)
    # Text models take named int inputs.
    ids = keras.Input((16,), dtype="int32", name="token_ids")
    mask = keras.Input((16,), dtype="int32", name="padding_mask")
    embedded = keras.layers.Embedding(100, 8)(ids)
    pooled = keras.layers.GlobalAveragePooling1D()(embedded, mask=mask)
    outputs = keras.layers.Dense(3)(pooled)
    text_model = keras.Model({"token_ids": ids, "padding_mask": mask}, outputs)
    tokens = {"token_ids": np.ones((2, 16), "int32"), "padding_mask": np.ones((2, 16), "int32")}
    kd_keras.export.to_onnx(text_model, "text.onnx", sample_inputs=tokens)
    text_logits = load_runner("text.onnx").predict(tokens)
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
