"""Models of the pipeline on disk and by name: `.keras` files loaded and
saved atomically, reference builders (`kd_keras.models`) and keras-hub
image presets.

Example:

```python
from kd_keras.pipeline.model_files import build_model, save_model

student = build_model("cnn_student", (8, 8, 1), num_classes=10)
save_model(student, "student.keras", overwrite=True)
```
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import keras

# `Distiller`, a public name, loads kd_keras's API (deferred in the `kd-keras`
# command), registering its Keras classes (pruning and quantization wrappers,
# Distiller) with `keras.saving` for `load_model`.
from kd_keras import Distiller, models  # noqa: F401
from kd_keras.io import atomic_path

BUILDERS = ("cnn_teacher", "cnn_student")


def load_model(path: str | os.PathLike):
    """A `.keras` file (kd_keras objects load without custom scopes)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (expected a .keras model file).")
    return keras.saving.load_model(path)


def build_model(builder: str, input_shape: Sequence[int], num_classes: int, **kwargs):
    """A reference model from `kd_keras.models` by name (`BUILDERS`)."""
    if builder not in BUILDERS:
        raise ValueError(f"builder must be one of {list(BUILDERS)}, got {builder!r}.")
    return getattr(models, builder)(tuple(input_shape), num_classes=num_classes, **kwargs)


def preset_num_classes(preset: str) -> int | None:
    """The class count of a local preset folder's saved classifier head
    (`task.json`), or `None` when it cannot be read without loading."""
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


def save_model(model, path: str | os.PathLike, overwrite: bool = False) -> str:
    """Saves a `.keras` file atomically (temp file + rename)."""
    with atomic_path(Path(path), overwrite=overwrite) as tmp:
        model.save(tmp)
    return str(path)
