"""kd_keras: knowledge distillation and model compression for Keras 3.

Example:

```python
import kd_keras

distiller = kd_keras.Distiller(student, teacher, alpha=0.1)
distiller.compile(optimizer="adam", metrics=["accuracy"])
distiller.fit(x_train, y_train, epochs=10)
```
"""

import os

# TensorFlow's C++ start-up chatter (CUDA probing, oneDNN notices) buries the
# progress bars on CPU machines; a user's own setting wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from kd_keras import bench, callbacks, export, losses, pruning, quantization, schedules
from kd_keras.callbacks import DistillationScheduler, NaNGuard
from kd_keras.distiller import Distiller
from kd_keras.features import record_outputs, resolve_layer
from kd_keras.mutual import MutualDistiller
from kd_keras.self_distillation import TeacherSnapshot, self_distillation
from kd_keras.teacher_cache import cache_teacher_outputs, random_ops_in_dataset

__version__ = "0.1.0"
__all__ = [
    "bench",
    "export",
    "pruning",
    "DistillationScheduler",
    "Distiller",
    "MutualDistiller",
    "NaNGuard",
    "TeacherSnapshot",
    "cache_teacher_outputs",
    "callbacks",
    "losses",
    "quantization",
    "random_ops_in_dataset",
    "record_outputs",
    "resolve_layer",
    "schedules",
    "self_distillation",
]
