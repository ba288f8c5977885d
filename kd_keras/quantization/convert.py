"""The one place where a Keras model becomes TFLite bytes, and readers of the
result (tensor types, op list, predictions) used to verify it.

`convert` traces the model's inference call as `model.export` does (Keras's
input signature, free batch dimension), freezes its weights into constants and
hands that function to `tf.lite.TFLiteConverter.from_concrete_functions`: the
`FakeQuant*` ops of a QAT model stay visible to the converter, and the file
gets the same `serving_default` signature a SavedModel export gives, 3-4x
sooner than writing a SavedModel and reading it back with `from_saved_model`.
(`from_keras_model` does not accept Keras 3 models; an unfrozen concrete
function keeps the variables as resources and fails on the FakeQuant ops.) The
TensorFlow backend is required; models trained on JAX or torch are saved to
`.keras` and reloaded under `KERAS_BACKEND=tensorflow` for conversion.

Modes:

=========== ================================================================
`None`      float32 TFLite, no optimization.
`"dynamic"` dynamic-range: int8 weights, float activations (no data needed).
`"int8"`    full-integer post-training quantization, calibrated on
            `representative_data`; every op int8 (`int8_io` makes the model's
            input and output int8 too).
`"float16"` float16 weights, float32 compute on CPU.
`"qat"`     a `quantize_model` model: ranges come from training, no data;
            every quantized op int8 (`int8_io` as above).
=========== ================================================================
"""

from __future__ import annotations

import warnings
from typing import Any

import keras
import numpy as np

from kd_keras.quantization import decompose, tfmot_bridge
from kd_keras.quantization.ptq import representative_dataset
from kd_keras.quantization.qat import is_quantized, quantizer_layers
from kd_keras.quantization.quantize_layer import QuantizeLayer
from kd_keras.quantization.quantize_wrapper import QuantizeWrapper
from kd_keras.quantization.rules import layer_kind
from kd_keras.runtime import TFLiteRunner, litert_interpreter

MODES = (None, "dynamic", "int8", "float16", "qat")
DEFAULT_CALIBRATION_BATCHES = 100


def _require_tensorflow(caller):
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(
            f"{caller} needs the TensorFlow backend (TFLite converts TensorFlow graphs); "
            f"the current backend is {keras.backend.backend()!r}. Save the model with "
            f"model.save('m.keras') and convert it in a process started with "
            f"KERAS_BACKEND=tensorflow."
        )
    import tensorflow as tf

    return tf


def _check_mode(model, mode, representative_data, int8_io):
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    tf_keras = tfmot_bridge.is_tf_keras_model(model)
    qat = tfmot_bridge.is_tfmot_quantized(model) if tf_keras else is_quantized(model)
    if qat and mode is None:
        raise ValueError(
            f"{model.name!r} is a quantization-aware (QAT) model: converting it without "
            f"optimizations would leave its fake-quant ops in a float graph. Use "
            f"convert(model, mode='qat') for the int8 model it was trained for."
        )
    if qat and mode != "qat":
        raise ValueError(
            f"{model.name!r} is a QAT model: its int8 ranges come from training, so "
            f"mode={mode!r} does not apply. Use convert(model, mode='qat'), or convert "
            f"the float model it was made from."
        )
    if mode == "qat" and not qat:
        raise ValueError(
            f"mode='qat' converts models returned by quantize_model; {model.name!r} has "
            f"no fake-quant layers. Call quantize_model(model) and train it first, or use "
            f"mode='int8' with representative_data for post-training quantization."
        )
    if mode == "int8" and representative_data is None:
        raise ValueError(
            "mode='int8' calibrates activation ranges on representative_data: pass a few "
            "hundred training inputs, e.g. representative_data=x_train[:500]."
        )
    if mode != "int8" and representative_data is not None:
        raise ValueError(f"representative_data is only used by mode='int8', not mode={mode!r}.")
    if int8_io and mode not in ("int8", "qat"):
        raise ValueError(
            f"int8_io=True needs a fully integer model: mode='int8' or 'qat', not {mode!r}."
        )
    if qat and not tf_keras:
        untrained = [
            layer.name
            for layer in quantizer_layers(model)
            for v in layer.non_trainable_weights
            if v.path.endswith("_initialized") and float(keras.ops.convert_to_numpy(v)) == 0.0
        ]
        if untrained:
            raise ValueError(
                f"The QAT model {model.name!r} has activation ranges that never saw data "
                f"(layers {sorted(set(untrained))}): train it with fit (a few hundred steps "
                f"at least) before converting, or its int8 ranges are TFMOT's [-6, 6] default."
            )
    return qat


def float_layer_names(model) -> list[str]:
    """The layers a QAT model runs in float: float islands (layers TFLite
    has no int8 kernel for, such as `LayerNormalization`) and skipped ones."""
    return [
        layer.name
        for layer in model.layers
        if not isinstance(layer, (QuantizeWrapper, QuantizeLayer)) and layer_kind(layer) != "pass"
    ]


def _configure(tf, converter, mode, calibration, int8_io):
    if mode is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if mode == "int8":
        converter.representative_dataset = calibration
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    # A QAT graph carries its own ranges; restricting supported_ops to INT8
    # would make the converter ask for a representative dataset. Whether every
    # op came out int8 is checked on the result instead.
    if int8_io:
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8


def _frozen_inference_function(tf, model, batch_size):
    """The model's inference call as a concrete function with its variables
    frozen into constants, traced as `model.export` traces it (one argument
    holding the model's input structure, named after its `keras.Input`s), so
    the file gets the same signature (`serving_default`, input and output
    names) as through a SavedModel.

    Converting this is 3-4x faster than exporting a SavedModel and
    reading it back with `from_saved_model` (a 430-layer QAT DenseNet121:
    15 s against 61 s), with the same ops: the round trip only lifts the
    variables out again. Unfrozen, the converter would lower the function
    to a SavedModel with its variables as resources, where a QAT model's
    FakeQuant ops fail. Freezing flattens the outputs, so the frozen call is
    wrapped to give them back their structure (a dict keeps its keys).
    Frozen weights live in one GraphDef, which protobuf caps at 2 GB: far
    above the models TFLite targets, but a larger model fails here.
    """
    # TF's own converter freezes Keras models with this function.
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    try:
        structure = model.input
    except AttributeError:  # a Sequential never called: only `inputs` is set
        structure = model.inputs[0] if len(model.inputs) == 1 else model.inputs

    def spec(tensor):
        batch = tensor.shape[0] if batch_size is None else batch_size
        return tf.TensorSpec((batch, *tensor.shape[1:]), tensor.dtype, name=tensor.name)

    signature = [keras.tree.map_structure(spec, structure)]
    traced = (
        keras.export.ExportArchive()
        .track_and_add_endpoint("serve", model, signature)
        .get_concrete_function()
    )
    frozen = convert_variables_to_constants_v2(traced)

    @tf.function(input_signature=signature, autograph=False)
    def serve(*inputs):
        outputs = frozen(*tf.nest.flatten(inputs))
        return tf.nest.pack_sequence_as(traced.structured_outputs, outputs)

    return serve.get_concrete_function()


def convert(
    model: keras.Model,
    mode: str | None = None,
    representative_data: Any = None,
    num_calibration_batches: int = DEFAULT_CALIBRATION_BATCHES,
    int8_io: bool = False,
    batch_size: int | None = None,
    strip_strings: bool = False,
    per_channel_dense: bool = True,
    sparse: bool = False,
    split_hard_swish: bool = True,
) -> bytes:
    """Convert a Keras model to TFLite flatbuffer bytes.

    This signature is stable: `kd_keras.export` calls it.

    Args:
        model: a Keras model with known input shapes (a `quantize_model`
            model for `mode="qat"`), or a tf_keras model (TFMOT bridge).
        mode: `None`, `"dynamic"`, `"int8"`, `"float16"` or `"qat"` (see the
            module docstring).
        representative_data: for `mode="int8"` only: a NumPy array of
            inputs (`(n, *input_shape)`), a list of such arrays for several
            inputs, a `tf.data.Dataset` or an iterable of batches (`x` or
            `(x, y)`). Checked against the model's input shape and dtype.
        num_calibration_batches: how many batches of `representative_data`
            calibrate the ranges (arrays are cut into batches of 1 sample).
        int8_io: make the model's input and output int8 (`mode="int8"` or
            `"qat"`); read the scale and zero point with
            `interpreter.get_input_details()`.
        batch_size: fix the batch dimension (e.g. 1, what a phone app
            runs). Every shape in the graph is then static: a `Flatten`
            becomes one `RESHAPE` instead of `SHAPE`, `STRIDED_SLICE`,
            `PACK`, `RESHAPE`, which saves bytes and time on small models
            and is what GPU / NPU delegates want. `None` keeps it free.
        strip_strings: drop tensor names and signature definitions
            (`tensorflow.lite.tools.flatbuffer_utils.strip_strings`): a few
            hundred bytes that matter only for tiny models. The file then
            has no signature runner; use `get_input_details()` /
            `get_output_details()` (as `kd_keras.export` does).
        per_channel_dense: for `mode="int8"`, quantize `Dense` kernels per
            output channel (the converter's default). `False` uses one
            scale per kernel, so a clustered kernel keeps its handful of
            distinct values in int8 too (per-channel scales would multiply
            them by the number of channels). QAT models carry their own
            choice (per-tensor for `Dense`).
        sparse: store weights that are mostly zeros (a pruned model's) in
            TFLite's sparse format (`tf.lite.Optimize.EXPERIMENTAL_SPARSITY`):
            a smaller file. LiteRT densifies them when the model loads, so
            inference runs at the dense speed (see README, "Sparse weights").
        split_hard_swish: for `mode="int8"`, write each hard-swish
            `Activation` (MobileNetV3) as int8 `ADD` / `MUL` / `MUL`, which
            XNNPACK runs, instead of one `HARD_SWISH`, which it does not
            (`quantize_model` has the same option for QAT models). `False`
            keeps `HARD_SWISH`.

    Returns:
        The `.tflite` model as `bytes`.

    Example:

    ```python
    x = np.random.rand(64, 8).astype("float32")
    y = np.random.randint(0, 3, size=64)
    student = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)]
    )

    from pathlib import Path

    qat = quantize_model(student)
    qat.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qat.fit(x, y, epochs=1, verbose=0)
    Path("student_int8.tflite").write_bytes(convert(qat, mode="qat", int8_io=True))
    ptq = convert(student, mode="int8", representative_data=x[:32])
    ```
    """
    tf = _require_tensorflow("convert")
    tf_keras = tfmot_bridge.is_tf_keras_model(model)
    if not (isinstance(model, keras.Model) or tf_keras):
        raise TypeError(f"convert expects a keras.Model, got {type(model).__name__}.")
    if not getattr(model, "inputs", None):
        raise ValueError(
            f"convert: {model.name!r} has no defined inputs; build it on keras.Input(...) "
            f"or call it once on data before converting."
        )
    _check_mode(model, mode, representative_data, int8_io)
    _check_layout(model, tf_keras, mode, batch_size, per_channel_dense)

    # Checked before anything is exported, so bad data fails fast.
    calibration = (
        representative_dataset(representative_data, model, num_calibration_batches)
        if mode == "int8"
        else None
    )
    if calibration is not None and batch_size not in (None, 1):
        calibration = _grouped(calibration, batch_size)
    if mode == "int8" and split_hard_swish and not tf_keras:
        model = decompose.split_hard_swish(model)
    if tf_keras:  # TFMOT's models convert the way TFMOT documents
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
    else:
        # The module makes the converter keep the function's signature.
        converter = tf.lite.TFLiteConverter.from_concrete_functions(
            [_frozen_inference_function(tf, model, batch_size)], tf.Module()
        )
    _configure(tf, converter, mode, calibration, int8_io)
    if sparse:
        converter.optimizations = [
            *converter.optimizations,
            tf.lite.Optimize.EXPERIMENTAL_SPARSITY,
        ]
    if not per_channel_dense:
        # The converter's switch for per-tensor Dense kernels (TF >= 2.14).
        converter._experimental_disable_per_channel_quantization_for_dense_layers = True
    try:
        result = bytes(converter.convert())
    except Exception as err:  # the converter's own messages are long MLIR dumps
        hint = (
            " Layers TFLite cannot run in int8 can be kept in float with "
            "quantize_model(model, skip_layers=[...])."
            if mode in ("int8", "qat")
            else ""
        )
        raise RuntimeError(
            f"TFLite conversion of {model.name!r} (mode={mode!r}) failed.{hint} "
            f"Converter error: {str(err)[:2000]}"
        ) from err
    if mode == "qat" and not tf_keras:
        _check_float_ops(result, model)
    if strip_strings:
        from tensorflow.lite.tools import flatbuffer_utils

        flat = flatbuffer_utils.read_model_from_bytearray(bytearray(result))
        flatbuffer_utils.strip_strings(flat)
        result = bytes(flatbuffer_utils.convert_object_to_bytearray(flat))
    return result


def _check_layout(model, tf_keras, mode, batch_size, per_channel_dense):
    if batch_size is not None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}.")
        if tf_keras:
            raise ValueError(
                "batch_size is for Keras 3 models; build the tf_keras model on "
                "tf_keras.Input(shape, batch_size=...) to fix its batch dimension."
            )
        # Fixing only the batch leaves a free height or width at -1 in the
        # file, and LiteRT then fails inside the first kernel at load time.
        for tensor in model.inputs:
            if any(dim is None for dim in tuple(tensor.shape)[1:]):
                raise ValueError(
                    f"convert(batch_size={batch_size}) makes every shape static, but input "
                    f"{tensor.name!r} has the free shape {tuple(tensor.shape)}. Build the "
                    "model with a full input shape (e.g. keras.applications models take "
                    "input_shape=(224, 224, 3); keras.Input((224, 224, 3))), or leave "
                    "batch_size=None."
                )
    if not per_channel_dense and mode != "int8":
        raise ValueError(
            f"per_channel_dense=False applies to mode='int8' (post-training calibration), "
            f"not mode={mode!r}; QAT models already quantize Dense kernels per tensor."
        )


def _grouped(calibration, batch_size):
    """The calibration data regrouped into batches of exactly `batch_size`
    samples, for a graph whose batch dimension is fixed (the user's data may
    come one sample or one batch at a time). Read here, before any export,
    so too little data fails fast; calibration sets are small."""
    pending, groups = [], []
    for batch in calibration():
        for i in range(len(batch[0])):
            pending.append([array[i : i + 1] for array in batch])
            if len(pending) == batch_size:
                groups.append([np.concatenate(parts) for parts in zip(*pending)])
                pending = []
    if not groups:
        raise ValueError(
            f"convert(batch_size={batch_size}) calibrates on whole batches of {batch_size} "
            f"samples; representative_data gave fewer. Pass more samples (or raise "
            f"num_calibration_batches)."
        )
    return lambda: iter(groups)


class FloatIslandNotice(UserWarning):
    """`convert` lists the ops a QAT model runs in float (its float islands)."""


def float_islands(model_bytes: bytes, model: keras.Model) -> list[dict]:
    """The float ops of a converted QAT model, each as `{"op": "RSQRT",
    "layer": "layer_normalization"}`: ops that read or write float32 other
    than the `QUANTIZE` / `DEQUANTIZE` at an island's edges. `layer` is the
    float layer of `model` (a float island or a skipped layer) the op comes
    from, or `None` when it comes from none: a quantized layer that lost its
    range, which `convert` refuses.

    Example:

    ```python
    inputs = keras.Input((8, 16))
    x = keras.layers.Dense(16)(inputs)
    x = keras.layers.LayerNormalization(name="norm")(x)
    model = keras.Model(inputs, keras.layers.Dense(4)(x))

    qat = quantize_model(model)  # LayerNormalization stays float
    qat(np.random.rand(4, 8, 16).astype("float32"), training=True)  # as fit would: ranges
    islands = float_islands(convert(qat, mode="qat"), qat)
    for island in islands:
        print(island["op"], island["layer"])  # NEG norm, SQUARED_DIFFERENCE norm, ...
    assert {island["layer"] for island in islands} == {"norm"}
    ```
    """
    import re

    names = float_layer_names(model)
    interpreter = litert_interpreter(model_bytes, xnnpack=False)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    islands = []
    for op in interpreter._get_ops_details():
        if op["op_name"] in ("QUANTIZE", "DEQUANTIZE"):
            continue
        used = [tensors[int(i)] for i in [*op["inputs"], *op["outputs"]] if int(i) >= 0]
        if not any(np.dtype(t["dtype"]) == np.float32 for t in used):
            continue
        # TensorFlow names an op after the layer's name scope, with `_1`,
        # `_2` suffixes where a name repeats: "model_1/layer_norm_1/Rsqrt".
        scopes = {
            part
            for i in op["outputs"]
            for name in tensors[int(i)]["name"].split(";")
            for part in name.split("/")
        }
        matches = [
            layer
            for layer in names
            if any(re.fullmatch(re.escape(layer) + r"(_\d+)*", scope) for scope in scopes)
        ]
        islands.append(
            {"op": op["op_name"], "layer": max(matches, key=len) if matches else None}
        )
    return islands


def _check_float_ops(model_bytes, model):
    """A QAT model computes in float only inside its float islands and
    skipped layers; those are listed in a `FloatIslandNotice`."""
    islands = float_islands(model_bytes, model)
    stray = [island["op"] for island in islands if island["layer"] is None]
    # Around a skipped layer or raw op the converter leaves float glue of
    # its own (casts, shapes); only a model whose float layers are all
    # islands must have none.
    skipped = any(
        layer_kind(model.get_layer(name)) != "island" for name in float_layer_names(model)
    )
    if stray and not skipped:
        raise RuntimeError(
            f"The QAT model {model.name!r} converted with float ops left: {stray}. A layer "
            f"output is missing its activation quantizer; keep that layer in float with "
            f"quantize_model(model, skip_layers=[...]) or report the layer pattern."
        )
    if islands:
        by_layer = {}
        for island in islands:
            by_layer.setdefault(island["layer"], []).append(island["op"])
        listing = "; ".join(f"{layer}: {', '.join(ops)}" for layer, ops in by_layer.items())
        warnings.warn(
            f"convert: {model.name!r} runs {len(islands)} ops in float, between "
            f"DEQUANTIZE and QUANTIZE (layers TFLite has no int8 kernel for, or "
            f"skipped ones): {listing}. float_islands(model_bytes, model) lists them.",
            FloatIslandNotice,
            stacklevel=3,
        )


# --------------------------------------------------------------------------
# Reading a .tflite back.


def tflite_tensor_types(model_bytes: bytes) -> dict[str, str]:
    """`{tensor name: dtype name}` for every tensor of a `.tflite` model.

    Example:

    ```python
    x = np.random.rand(64, 8).astype("float32")
    y = np.random.randint(0, 3, size=64)
    student = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)]
    )

    qat = quantize_model(student)
    qat.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qat.fit(x, y, epochs=1, verbose=0)  # QAT ranges come from training
    types = tflite_tensor_types(convert(qat, mode="qat", int8_io=True))
    assert "float32" not in set(types.values())
    ```
    """
    interpreter = litert_interpreter(model_bytes, xnnpack=False)
    return {t["name"]: np.dtype(t["dtype"]).name for t in interpreter.get_tensor_details()}


def tflite_ops(model_bytes: bytes) -> list[dict]:
    """The ops of a `.tflite` model in execution order, each as
    `{"op": "CONV_2D", "inputs": ["int8", "int8", "int32"], "outputs": ["int8"]}`
    (weights and biases are inputs too; an absent optional input is skipped).

    Example:

    ```python
    x = np.random.rand(64, 8).astype("float32")
    y = np.random.randint(0, 3, size=64)
    student = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)]
    )

    b = convert(student, mode="int8", representative_data=x)
    [op for op in tflite_ops(b) if op["op"] == "FULLY_CONNECTED"][0]["inputs"]
    ```
    """
    interpreter = litert_interpreter(model_bytes, xnnpack=False)
    dtypes = {t["index"]: np.dtype(t["dtype"]).name for t in interpreter.get_tensor_details()}
    ops = []
    for op in interpreter._get_ops_details():
        ops.append(
            {
                "op": op["op_name"],
                "inputs": [dtypes.get(int(i), "?") for i in op["inputs"] if int(i) >= 0],
                "outputs": [dtypes.get(int(i), "?") for i in op["outputs"] if int(i) >= 0],
            }
        )
    return ops


def tflite_predict(
    model_bytes: bytes, x, batch_size: int = 256, num_threads: int | None = 1
) -> np.ndarray:
    """Run a `.tflite` model on `x` (an array, or `{input name: array}` for
    several inputs) and return its first output.

    A float `x` for an int8 input is quantized and int8 outputs dequantized
    with the model's own scale and zero point, so the result compares with
    Keras' `predict`; integer inputs (token ids) are passed as they are. The
    one `kd_keras.export` runner does the work.

    Example:

    ```python
    x = np.random.rand(64, 8).astype("float32")
    y = np.random.randint(0, 3, size=64)
    student = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)]
    )

    qat = quantize_model(student)
    qat.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qat.fit(x, y, epochs=1, verbose=0)  # QAT ranges come from training
    logits = tflite_predict(convert(qat, mode="qat", int8_io=True), x)
    ```
    """
    runner = TFLiteRunner(model_bytes, threads=num_threads)
    return runner.predict(x, batch_size=batch_size).astype("float32", copy=False)
