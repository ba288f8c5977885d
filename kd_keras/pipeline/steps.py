"""The compression steps as plain functions on models and arrays, shared by
the pipeline's stages (`kd_keras.pipeline.Pipeline`) and the single-step
sub-commands (`kd-keras distill / prune / quantize`): one namespace over the
modules that hold them (`data_sources`, `model_files`, `training`,
`prune_step`, `quantize_step`).

Each step takes a model (and a teacher when it distils) plus NumPy data,
trains with Keras `fit` (so progress bars and callbacks such as
`BackupAndRestore` work as usual) and returns the new model with its
`History`.

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

from kd_keras.defaults import (
    DEFAULT_ALPHA,
    DEFAULT_QAT_ALPHA,
    DEFAULT_QAT_TEMPERATURE,
    DEFAULT_TEMPERATURE,
    PTQ_MODES,
)
from kd_keras.pipeline.data_sources import (
    DATASETS,
    data_spec,
    load_data,
    num_classes,
    sample_count,
)
from kd_keras.pipeline.model_files import (
    BUILDERS,
    build_model,
    load_model,
    load_preset,
    preset_num_classes,
    save_model,
)
from kd_keras.pipeline.prune_step import LR_SCHEDULES, parse_m_by_n, prune_student
from kd_keras.pipeline.quantize_step import export_tflite, quantize_aware_train
from kd_keras.pipeline.training import distill_student, train, verbosity

__all__ = [
    "BUILDERS",
    "DATASETS",
    "DEFAULT_ALPHA",
    "DEFAULT_QAT_ALPHA",
    "DEFAULT_QAT_TEMPERATURE",
    "DEFAULT_TEMPERATURE",
    "LR_SCHEDULES",
    "PTQ_MODES",
    "build_model",
    "data_spec",
    "distill_student",
    "export_tflite",
    "load_data",
    "load_model",
    "load_preset",
    "num_classes",
    "parse_m_by_n",
    "preset_num_classes",
    "prune_student",
    "quantize_aware_train",
    "sample_count",
    "save_model",
    "train",
    "verbosity",
]
