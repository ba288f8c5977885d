"""One training function for every stage: labels-only `fit`, or
distillation from a teacher inside `kd_keras.Distiller`; the pruning and QAT
fine-tunes train through it too.

Example:

```python
from kd_keras.pipeline.data_sources import load_data
from kd_keras.pipeline.model_files import build_model
from kd_keras.pipeline.training import train

(x, y), _ = load_data({"name": "digits", "max_train": 256})
teacher = build_model("cnn_teacher", x.shape[1:], 10)
train(teacher, x, y, epochs=1, verbose=0)
student = build_model("cnn_student", x.shape[1:], 10)
history = train(student, x, y, teacher=teacher, epochs=1, verbose=0)

# Offline distillation: the teacher runs once, before training.
logits = kd_keras.cache_teacher_outputs(teacher, x, verbose=0)
history = train(student, x, y, teacher=teacher, teacher_logits=logits, epochs=1, verbose=0)
```
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from kd_keras.defaults import DEFAULT_ALPHA, DEFAULT_TEMPERATURE
from kd_keras.distiller import Distiller
from kd_keras.losses import get_terms


def verbosity() -> int:
    """Keras `verbose`: progress bars on a terminal, one line per epoch in logs."""
    return 1 if sys.stderr.isatty() else 2


def _optimizer(learning_rate):
    return keras.optimizers.Adam(learning_rate)


def _labels_loss():
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
    teacher_logits: np.ndarray | None = None,
    validation_data: tuple | None = None,
    seed: int | None = None,
):
    """Fits `model` on labels, or distils into it from `teacher` (the terms
    `losses`, as `kd_keras.losses.get_terms` reads them, soft targets by
    default, at `temperature` unless a term sets its own; label weight
    `alpha`); returns the `History`.

    `teacher_logits` (from `kd_keras.cache_teacher_outputs(teacher, x)`)
    distils from the teacher's cached outputs: they travel with the labels,
    `fit` shuffles them together, and each step runs the student only.
    `validation_data` goes to `fit` as it is (with cached logits, its targets
    are `{"labels": y, "teacher_logits": logits}` too). `seed` is set right
    before `fit`, so runs that share it shuffle their batches alike.

    Every step below trains through this function, so "distil while
    pruning" and "distillation-aware QAT" are the same code as distillation.
    """
    if teacher_logits is not None:
        y = {"labels": y, "teacher_logits": teacher_logits}
    if teacher is None and teacher_logits is None:
        model.compile(
            optimizer=_optimizer(learning_rate), loss=_labels_loss(), metrics=["accuracy"]
        )
        target = model
    else:
        target = Distiller(
            student=model,
            teacher=teacher,
            losses=get_terms(list(losses), temperature=temperature),
            alpha=alpha,
        )
        target.compile(optimizer=_optimizer(learning_rate), metrics=["accuracy"])
        # Built before fit so BackupAndRestore can restore into its weights.
        target.build((None, *x.shape[1:]))
    if seed is not None:
        keras.utils.set_random_seed(seed)
    return target.fit(
        x,
        y,
        epochs=epochs,
        batch_size=batch_size,
        validation_data=validation_data,
        callbacks=list(callbacks),
        verbose=verbosity() if verbose is None else verbose,
    )


def distill_student(student, teacher, x: np.ndarray, y: np.ndarray, **train_kwargs: Any):
    """Distils `teacher` into `student` (Hinton soft targets; `train_kwargs`
    as for `train`); returns `(student, history)`."""
    return student, train(student, x, y, teacher=teacher, **train_kwargs)
