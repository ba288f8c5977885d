"""Post-training quantization: dynamic range, full integer, float16.

`quantize_post_training(model, mode=...)` is the user-facing entry; it checks
the calibration data and hands over to `convert`, the single converter path.
`representative_dataset` turns the user's data into the generator the TFLite
converter calibrates on, after checking it matches the model's inputs.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import keras
import numpy as np

from kd_keras.defaults import PTQ_MODES


def _input_specs(model):
    return [
        (t.name, tuple(t.shape[1:]), keras.backend.standardize_dtype(t.dtype))
        for t in model.inputs
    ]


def _as_batches(data, num_inputs) -> Iterator:
    """Yield lists of per-input arrays from the accepted data forms."""
    is_dataset = hasattr(data, "element_spec")
    if isinstance(data, np.ndarray) or (hasattr(data, "__array__") and not is_dataset):
        arrays = [np.asarray(data)]
    elif isinstance(data, (list, tuple)) and len(data) == num_inputs and num_inputs > 1 and all(
        hasattr(a, "shape") for a in data
    ):
        arrays = [np.asarray(a) for a in data]
    else:
        arrays = None
    if arrays is not None:
        # TFLite calibrates one sample at a time.
        for i in range(len(arrays[0])):
            yield [a[i : i + 1] for a in arrays]
        return
    if hasattr(data, "element_spec") or hasattr(data, "__iter__"):
        for element in data:
            if isinstance(element, (tuple, list)) and num_inputs == 1:
                element = element[0]  # (x, y) or (x, y, sample_weight)
            elif isinstance(element, (tuple, list)) and len(element) != num_inputs:
                element = element[0]
            if isinstance(element, dict):
                raise ValueError(
                    "representative_data yields dicts; yield the input arrays (in the "
                    "model's input order) instead."
                )
            element = list(element) if isinstance(element, (tuple, list)) else [element]
            yield [np.asarray(e) for e in element]
        return
    raise TypeError(
        f"representative_data must be a NumPy array of inputs, a tf.data.Dataset or an "
        f"iterable of batches; got {type(data).__name__}."
    )


def _check_batch(batch, specs):
    if len(batch) != len(specs):
        raise ValueError(
            f"representative_data gives {len(batch)} input array(s) per batch; the model "
            f"has {len(specs)} input(s) {[s[0] for s in specs]}."
        )
    checked = []
    for array, (name, shape, dtype) in zip(batch, specs):
        if array.ndim != len(shape) + 1 or any(
            want is not None and got != want for got, want in zip(array.shape[1:], shape)
        ):
            raise ValueError(
                f"representative_data for input {name!r} has shape {array.shape}; the model "
                f"expects (batch, {', '.join(str(s) for s in shape)}). Pass the same "
                f"preprocessed inputs the model was trained on (e.g. add the channel axis "
                f"with x[..., None])."
            )
        if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
            raise ValueError(
                f"representative_data for input {name!r} has dtype {array.dtype}; pass "
                f"numeric arrays ({dtype})."
            )
        if np.issubdtype(np.dtype(dtype), np.floating) and np.issubdtype(array.dtype, np.integer):
            raise ValueError(
                f"representative_data for input {name!r} is {array.dtype} but the model takes "
                f"{dtype}: pass the preprocessed float inputs (e.g. x.astype('float32') / 255)."
            )
        checked.append(array.astype(dtype))
    return checked


def representative_dataset(
    data: Any, model: keras.Model, num_batches: int = 100
) -> Callable[[], Iterator[list]]:
    """The converter's `representative_dataset` callable drawn from `data`.

    The first batch is checked now, against the model's input shapes and
    dtypes, so a mistake fails before conversion starts.

    Args:
        data: a NumPy array `(n, *input_shape)` (one sample per batch), a list
            of arrays for a multi-input model, a `tf.data.Dataset` or any
            iterable of batches (`x` or `(x, y)`).
        model: the model to be converted.
        num_batches: how many batches to calibrate on.

    Example:

    ```python
    import tensorflow as tf

    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    x_train = np.random.rand(64, 8).astype("float32")
    model.export("saved_model", verbose=False)

    converter = tf.lite.TFLiteConverter.from_saved_model("saved_model")
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset(x_train, model, 16)
    int8_flatbuffer = converter.convert()
    ```
    """
    if not isinstance(num_batches, int) or num_batches < 1:
        raise ValueError(f"num_calibration_batches must be a positive int, got {num_batches!r}.")
    specs = _input_specs(model)
    first = next(iter(_as_batches(data, len(specs))), None)
    if first is None:
        raise ValueError("representative_data is empty: pass a few hundred training inputs.")
    _check_batch(first, specs)

    def generator():
        for i, batch in enumerate(_as_batches(data, len(specs))):
            if i >= num_batches:
                break
            yield _check_batch(batch, specs)

    return generator


def quantize_post_training(
    model: keras.Model,
    mode: str = "dynamic",
    representative_data: Any = None,
    num_calibration_batches: int = 100,
    int8_io: bool = False,
    **layout,
) -> bytes:
    """Post-training quantization of a float Keras model to TFLite bytes.

    Args:
        model: a trained float model.
        mode: `"dynamic"` (int8 weights, float activations; TFLite leaves
            weight tensors with fewer than 1024 elements in float), `"int8"` (full
            integer, calibrated on `representative_data`) or `"float16"`.
        representative_data: inputs drawn from the training data, required
            for `"int8"` (see `representative_dataset`).
        num_calibration_batches: batches used for calibration.
        int8_io: int8 model input/output (`"int8"` only).
        **layout: `convert`'s file-layout options: `batch_size`,
            `strip_strings`, `per_channel_dense`.

    Example:

    ```python
    x_train = np.random.rand(64, 8).astype("float32")
    model = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)]
    )
    tflite_int8 = quantize_post_training(model, "int8", representative_data=x_train[:32])
    tflite_dyn = quantize_post_training(model, "dynamic")
    ```
    """
    if mode not in PTQ_MODES:
        raise ValueError(
            f"quantize_post_training mode must be one of {PTQ_MODES}, got {mode!r} "
            f"(QAT models convert with convert(model, mode='qat'))."
        )
    # Imported here: convert imports this module for representative_dataset.
    from kd_keras.quantization.convert import convert

    return convert(
        model,
        mode=mode,
        representative_data=representative_data,
        num_calibration_batches=num_calibration_batches,
        int8_io=int8_io,
        **layout,
    )
