"""kd_keras: knowledge distillation and model compression for Keras 3.

Example:

```python
import kd_keras

distiller = kd_keras.Distiller(student, teacher, alpha=0.1)
distiller.compile(optimizer="adam", metrics=["accuracy"])
distiller.fit(x_train, y_train, epochs=10)
```

`import kd_keras` loads the API, registering every kd_keras Keras class for
`keras.saving.load_model`, with TensorFlow's C++ start-up lines kept off the
terminal (`TF_CPP_MIN_LOG_LEVEL=0` shows them). Only the `kd-keras` command
defers that until a sub-command runs, so its `--help` answers at once.
"""

import os
import sys

from kd_keras.native_logs import filtered_native_logs, user_wants_native_logs

_SHOW_NATIVE_LOGS = user_wants_native_logs()

# TensorFlow's C++ chatter (CUDA probing, CPU-feature notices) buries the
# progress bars on CPU machines; set before Keras can import TensorFlow, and a
# user's own setting wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

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

# In the `kd-keras` command the API loads on first use of a public name (the
# command's bodies use them), so that `--help` imports no framework.
_loading = False


def _load_public_api() -> None:
    global _loading, bench, callbacks, export, losses, pruning, quantization, schedules
    global DistillationScheduler, NaNGuard, Distiller, record_outputs, resolve_layer
    global MutualDistiller, TeacherSnapshot, self_distillation
    global cache_teacher_outputs, random_ops_in_dataset
    _loading = True
    try:
        from kd_keras import bench, callbacks, export, losses, pruning, quantization, schedules
        from kd_keras.callbacks import DistillationScheduler, NaNGuard
        from kd_keras.distiller import Distiller
        from kd_keras.features import record_outputs, resolve_layer
        from kd_keras.mutual import MutualDistiller
        from kd_keras.self_distillation import TeacherSnapshot, self_distillation
        from kd_keras.teacher_cache import cache_teacher_outputs, random_ops_in_dataset
    finally:
        _loading = False


def __getattr__(name: str):
    # While loading, `from kd_keras import bench` must fall through to the
    # import system (an AttributeError here) instead of loading again.
    if name in __all__ and not _loading:
        _load_public_api()
        return globals()[name]
    raise AttributeError(f"module 'kd_keras' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def _started_as_command() -> bool:
    """True in the `kd-keras` console script and in `python -m kd_keras.cli`."""
    if sys.argv and os.path.basename(sys.argv[0]) in ("kd-keras", "kd-keras.exe"):
        return True
    argv = list(getattr(sys, "orig_argv", ()))
    return any(a == "-m" and b == "kd_keras.cli" for a, b in zip(argv, argv[1:]))


if not _started_as_command():
    if _SHOW_NATIVE_LOGS:
        _load_public_api()
    else:
        with filtered_native_logs():
            _load_public_api()
