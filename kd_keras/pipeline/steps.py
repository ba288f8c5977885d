"""The compression steps as plain functions on models and arrays, shared by
the pipeline's stages (`stages.Pipeline`) and the single-step sub-commands
(`kd-keras distill / prune / quantize`).

Each step takes a model (and a teacher when it distils) plus NumPy data,
trains with Keras `fit` (so progress bars and callbacks such as
`BackupAndRestore` work as usual) and returns the new model with its
`History`. Loading data, models and teachers lives here too, so a YAML
`data:` section and a `--data` argument mean the same thing.

Example:

```python
from kd_keras.pipeline import steps

(x, y), (xe, ye) = steps.load_data({"name": "digits"})
teacher = steps.load_model("teacher.keras")
student = steps.build_model("cnn_student", x.shape[1:], num_classes=10)
student, _ = steps.distill_student(student, teacher, x, y, epochs=10)
_, pruned, _ = steps.prune_student(student, x, y, m_by_n=(2, 4), teacher=teacher, epochs=2)
qat, _ = steps.quantize_aware_train(pruned, x, y, teacher=teacher, epochs=2)
steps.export_tflite(qat, "student_int8.tflite", "qat", sample_inputs=xe)
```
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

# Soft-target defaults (why these values: kd_keras/defaults.py), public here
# too as the defaults of the steps that distil.
from kd_keras.defaults import (  # noqa: F401
    DEFAULT_ALPHA,
    DEFAULT_QAT_ALPHA,
    DEFAULT_QAT_TEMPERATURE,
    DEFAULT_TEMPERATURE,
)

BUILDERS = ("cnn_teacher", "cnn_student")
DATASETS = ("digits", "fashion_mnist", "npz", "tfds", "image_folder")
PTQ_MODES = ("dynamic", "int8", "float16")



def verbosity() -> int:
    """Keras `verbose`: progress bars on a terminal, one line per epoch in logs."""
    return 1 if sys.stderr.isatty() else 2


# -- data ---------------------------------------------------------------------


def load_data(spec: dict[str, Any], seed: int = 0):
    """`(x_train, y_train), (x_test, y_test)` for a pipeline `data` section.

    `spec["name"]` is one of `DATASETS`; see `kd_keras.pipeline.config` for
    the keys of each source. Images come back float32, labels int.
    """
    from kd_keras import data

    name = spec["name"]
    fraction = spec.get("test_fraction", 0.25)
    if name == "digits":
        (xt, yt), (xe, ye) = data.load_digits(test_fraction=fraction, seed=seed)
    elif name == "fashion_mnist":
        (xt, yt), (xe, ye) = data.load_fashion_mnist(spec.get("path"))
    elif name == "tfds":
        from kd_keras.data.tfds_data import load_tfds

        (xt, yt), (xe, ye) = load_tfds(
            spec["tfds_name"],
            spec["data_dir"],
            manual_dir=spec.get("manual_dir"),
            train_split=spec.get("train_split") or "train",
            test_split=spec.get("test_split") or "test",
        )
    elif name == "image_folder":
        from kd_keras.data.image_folder import load_image_folder

        (xt, yt), (xe, ye) = load_image_folder(
            spec["path"],
            image_size=spec.get("image_size"),
            color_mode=spec.get("color_mode") or "grayscale",
            test_fraction=fraction,
            seed=seed,
        )
    elif name == "npz":
        (xt, yt), (xe, ye) = _load_npz(Path(spec["path"]))
    else:
        raise ValueError(f"data.name must be one of {list(DATASETS)}, got {name!r}.")
    if spec.get("max_train"):
        xt, yt = xt[: spec["max_train"]], yt[: spec["max_train"]]
    if spec.get("max_test"):
        xe, ye = xe[: spec["max_test"]], ye[: spec["max_test"]]
    return (xt.astype("float32"), yt), (xe.astype("float32"), ye)


def _load_npz(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"data.path {path} does not exist.")
    arrays = np.load(path)
    missing = {"x_train", "y_train", "x_test", "y_test"} - set(arrays.files)
    if missing:
        raise ValueError(f"{path} lacks arrays {sorted(missing)} (data.name: npz).")
    return tuple((arrays[f"x_{s}"], arrays[f"y_{s}"]) for s in ("train", "test"))


def data_spec(text: str) -> dict[str, Any]:
    """The `data` section meant by a command-line `--data` value: a built-in
    name, a `.npz` file or an image folder."""
    if text in ("digits", "fashion_mnist"):
        return {"name": text, "test_fraction": 0.25}
    if text.endswith(".npz"):
        if not Path(text).is_file():
            raise ValueError(f"--data {text}: no such .npz file.")
        return {"name": "npz", "path": text}
    if Path(text).is_dir():
        return {"name": "image_folder", "path": text, "test_fraction": 0.25}
    raise ValueError(
        f"--data {text!r} is not digits, fashion_mnist, an existing .npz file (x_train, "
        "y_train, x_test, y_test) or an image folder (<class>/<images>)."
    )


def num_classes(*labels: np.ndarray) -> int:
    return int(max(int(np.max(y)) for y in labels)) + 1


# -- models -------------------------------------------------------------------


def load_model(path: str | os.PathLike):
    """A `.keras` file (kd_keras objects load without custom scopes)."""
    import keras

    # A public name loads kd_keras's API, registering its Keras classes (pruning
    # and quantization wrappers, Distiller) with `keras.saving`.
    from kd_keras import Distiller  # noqa: F401

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (expected a .keras model file).")
    return keras.saving.load_model(path)


def build_model(builder: str, input_shape: Sequence[int], num_classes: int, **kwargs):
    """A reference model from `kd_keras.models` by name (`BUILDERS`)."""
    from kd_keras import models

    if builder not in BUILDERS:
        raise ValueError(f"builder must be one of {list(BUILDERS)}, got {builder!r}.")
    return getattr(models, builder)(tuple(input_shape), num_classes=num_classes, **kwargs)


def preset_num_classes(preset: str) -> int | None:
    """The class count of a local preset folder's saved classifier head
    (`task.json`), or `None` when it cannot be read without loading."""
    import json

    task = Path(preset) / "task.json"
    if not task.is_file():
        return None
    value = json.loads(task.read_text()).get("config", {}).get("num_classes")
    return int(value) if isinstance(value, int) else None


def load_preset(preset: str, num_classes: int):
    """A keras-hub image classifier from a preset name or a local preset
    folder: `ImageClassifier.from_preset(preset, num_classes=...)`.

    keras-hub then loads the pretrained backbone and starts a new
    `num_classes` head (fine-tune it). A local preset whose saved head
    already has `num_classes` classes is loaded whole, head included.

    A preset's preprocessor (resizing, rescaling) runs only inside
    `ImageClassifier.fit/predict`, not when the model is called, as the
    Distiller and the exporters do. So its image converter is moved into
    the graph: the returned Functional model maps raw images to logits.

    Example:

    ```python
    teacher = load_preset("resnet_18_imagenet", num_classes=10)  # needs the preset cached
    ```
    """
    try:
        import keras_hub
    except ImportError as err:
        raise ImportError("teacher.preset needs keras-hub: pip install keras-hub") from err
    import keras

    kwargs = {} if preset_num_classes(preset) == num_classes else {"num_classes": num_classes}
    classifier = keras_hub.models.ImageClassifier.from_preset(preset, **kwargs)
    converter = getattr(classifier.preprocessor, "image_converter", None)
    classifier.preprocessor = None
    if converter is None:
        return classifier
    inputs = keras.Input(classifier.inputs[0].shape[1:], name="image")
    # training=False, as Keras's fine-tuning guide calls a pretrained base:
    # its BatchNorm statistics stay the pretrained ones while fine-tuning,
    # and the exported graph is the inference graph.
    outputs = classifier(converter(inputs), training=False)
    return keras.Model(inputs, outputs, name=f"{classifier.name}_teacher")


# -- training -------------------------------------------------------------------


def _optimizer(learning_rate):
    import keras

    return keras.optimizers.Adam(learning_rate)


def _labels_loss():
    import keras

    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def train(
    model,
    x: np.ndarray,
    y: np.ndarray,
    *,
    teacher=None,
    epochs: int,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    temperature: float = DEFAULT_TEMPERATURE,
    alpha: float = DEFAULT_ALPHA,
    losses: Sequence[Any] = ("soft_target",),
    callbacks: Sequence[Any] = (),
    verbose: int | None = None,
):
    """Fits `model` on labels, or distils into it from `teacher` (the terms
    `losses`, as `kd_keras.losses.get_terms` reads them, soft targets by
    default, at `temperature` unless a term sets its own; label weight
    `alpha`); returns the `History`.

    Every step below trains through this function, so "distil while
    pruning" and "distillation-aware QAT" are the same code as distillation.
    """
    if teacher is None:
        model.compile(
            optimizer=_optimizer(learning_rate), loss=_labels_loss(), metrics=["accuracy"]
        )
        target = model
    else:
        from kd_keras import Distiller
        from kd_keras.losses import get_terms

        target = Distiller(
            student=model,
            teacher=teacher,
            losses=get_terms(list(losses), temperature=temperature),
            alpha=alpha,
        )
        target.compile(optimizer=_optimizer(learning_rate), metrics=["accuracy"])
        # Built before fit so BackupAndRestore can restore into its weights.
        target.build((None, *x.shape[1:]))
    return target.fit(
        x,
        y,
        epochs=epochs,
        batch_size=batch_size,
        callbacks=list(callbacks),
        verbose=verbosity() if verbose is None else verbose,
    )


def distill_student(student, teacher, x: np.ndarray, y: np.ndarray, **train_kwargs: Any):
    """Distils `teacher` into `student` (Hinton soft targets; `train_kwargs`
    as for `train`); returns `(student, history)`."""
    return student, train(student, x, y, teacher=teacher, **train_kwargs)


def parse_m_by_n(value) -> tuple[int, int]:
    """`"2:4"`, `[2, 4]` or `(2, 4)` -> `(2, 4)`: m zeros in every n weights."""
    parts = value.split(":") if isinstance(value, str) else value
    try:
        m, n = (int(p) for p in parts)
    except (TypeError, ValueError):
        m, n = 0, 0
    if not 1 <= m < n:
        raise ValueError(
            f"m_by_n must be 'M:N' with 1 <= M < N (M zeros in every N weights), "
            f"e.g. '2:4'; got {value!r}."
        )
    return m, n


def _m_by_n_layers(model, n: int) -> tuple[list[str], list[str]]:
    """(layers whose input axis splits into groups of n, prunable layers whose
    does not): the second are left dense rather than failing the run."""
    from kd_keras.pruning.wrapper import is_prunable, prunable_weights, reduced_axis

    fits, left = [], []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if not is_prunable(layer) or not layer.built:
            continue
        axis = reduced_axis(layer)
        ok = axis is not None and all(w.shape[axis] % n == 0 for w in prunable_weights(layer))
        (fits if ok else left).append(layer.name)
    return fits, left


#: Learning-rate schedules `prune_student` knows.
LR_SCHEDULES = ("hold-cosine", "constant")


def prune_student(
    student,
    x: np.ndarray,
    y: np.ndarray,
    *,
    final_sparsity: float | None = None,
    m_by_n=None,
    filters: float | None = None,
    epochs: int = 2,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    ramp: float = 0.5,
    lr_schedule: str = "hold-cosine",
    callbacks: Sequence[Any] = (),
    log=None,
    **train_kwargs: Any,
):
    """Magnitude-prunes `student` while fine-tuning it (on labels, or
    distilling from `teacher=`; `train_kwargs` as for `train`); returns
    `(pruned, stripped, history)`.

    `final_sparsity` ramps up with `PolynomialDecay` over the first `ramp`
    of the steps (`pruning.ramp_schedule`) and is then held while the network
    recovers; with `lr_schedule="hold-cosine"` the learning rate is held
    during the ramp and cosine-decayed to 1 % after it
    (`pruning.recovery_learning_rate`), `"constant"` keeps it. `m_by_n` (`(2, 4)` or
    `"2:4"`) sets structured m-zeros-in-n masks on every layer whose input
    dimension is a multiple of n (others stay dense and are named in `log`).
    `pruned` still has its `PruneLowMagnitude` wrappers (for
    `sparsity_report`), `stripped` is the plain model to save.
    `filters` (e.g. 0.5) removes that share of the filters at once
    (`pruning.prune_filters`, a physically smaller model) and then fine-tunes
    it; `pruned` and `stripped` are then the same model.
    """
    from kd_keras import pruning

    if sum(v is not None for v in (final_sparsity, m_by_n, filters)) != 1:
        raise ValueError(
            "Give exactly one of final_sparsity (e.g. 0.8), m_by_n (e.g. '2:4') or "
            "filters (e.g. 0.5)."
        )
    if filters is not None:
        smaller = pruning.prune_filters(student, filters)
        if log is not None:
            log(
                f"filters {filters}: {student.count_params()} -> {smaller.count_params()} "
                "parameters"
            )
        history = train(
            smaller,
            x,
            y,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            callbacks=list(callbacks),
            **train_kwargs,
        )
        return smaller, smaller, history
    if m_by_n is not None:
        m_by_n = parse_m_by_n(m_by_n)
        fits, left = _m_by_n_layers(student, m_by_n[1])
        if not fits:
            raise ValueError(
                f"m_by_n={m_by_n[0]}:{m_by_n[1]}: no layer of {student.name!r} has an input "
                f"dimension divisible by {m_by_n[1]} ({left}); use final_sparsity instead."
            )
        if left and log is not None:
            log(
                f"m_by_n {m_by_n[0]}:{m_by_n[1]}: keeping {left} dense (input size not a "
                f"multiple of {m_by_n[1]})"
            )
        pruned = pruning.prune_low_magnitude(student, sparsity_m_by_n=m_by_n, prunable=fits)
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {lr_schedule!r}.")
    steps = epochs * int(np.ceil(len(x) / batch_size))
    # m-by-n masks are fixed from the start: the whole run is recovery.
    hold = 0
    if final_sparsity is not None:
        schedule = pruning.ramp_schedule(final_sparsity, steps, ramp=ramp)
        pruned = pruning.prune_low_magnitude(student, pruning_schedule=schedule)
        hold = schedule.end_step
    if lr_schedule == "hold-cosine":
        learning_rate = pruning.recovery_learning_rate(learning_rate, hold, steps)
    history = train(
        pruned,
        x,
        y,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        callbacks=[pruning.UpdatePruningStep(), *callbacks],
        **train_kwargs,
    )
    return pruned, pruning.strip_pruning(pruned), history


def quantize_aware_train(
    student,
    x: np.ndarray,
    y: np.ndarray,
    *,
    teacher=None,
    epochs: int = 2,
    learning_rate: float = 1e-4,
    **train_kwargs: Any,
):
    """Quantization-aware training: `quantize_model(student)` (BN folded,
    int8 fake-quant) fine-tuned on labels or distilled from `teacher`
    (`train_kwargs` as for `train`); returns `(qat_model, history)`. Convert
    it with `export_tflite(qat_model, path, "qat")` for a fully int8 `.tflite`."""
    from kd_keras.quantization import quantize_model

    qat = quantize_model(student)
    history = train(
        qat, x, y, teacher=teacher, epochs=epochs, learning_rate=learning_rate, **train_kwargs
    )
    return qat, history


def export_tflite(
    model,
    path: str | os.PathLike,
    mode: str | None,
    *,
    calibration: np.ndarray | None = None,
    sample_inputs: np.ndarray | None = None,
    overwrite: bool = False,
    strict: bool = True,
    **layout,
):
    """`.tflite` of `model` with a parity check (`kd_keras.export.to_tflite`).

    `mode`: `None` (float32), a PTQ mode (`"dynamic"`, `"int8"` calibrated on
    `calibration`, `"float16"`) or `"qat"` for a `quantize_aware_train`
    model, converted fully int8 (int8 input and output too). `layout`:
    `convert`'s `batch_size` / `strip_strings`.
    """
    from kd_keras.export import to_tflite

    return to_tflite(
        model,
        path,
        quantization=mode,
        representative_data=calibration if mode == "int8" else None,
        sample_inputs=sample_inputs,
        overwrite=overwrite,
        strict=strict,
        **({"int8_io": True} if mode == "qat" else {}),
        **layout,
    )


def save_model(model, path: str | os.PathLike, overwrite: bool = False) -> str:
    """Saves a `.keras` file atomically (temp file + rename)."""
    from kd_keras.io import atomic_path

    with atomic_path(Path(path), overwrite=overwrite) as tmp:
        model.save(tmp)
    return str(path)
