"""The contract every distillation term follows.

A term is a `keras.layers.Layer` so that what it learns (a FitNets projection,
say) is tracked, trained with the student, and saved with the `Distiller`,
while the student itself stays free of it and saves alone.
"""

from __future__ import annotations

from typing import Sequence

import keras
from keras import ops

EPSILON = 1e-12


def weighted_mean(values, weights=None):
    """Mean of `values` where each entry counts with its weight.

    Entries with weight 0 (padding, unlabeled or masked samples) contribute
    exactly nothing, and an all-zero weight vector gives 0 rather than NaN.

    Args:
        values: per-sample or per-position losses, e.g. `(batch,)` or
            `(batch, time)`.
        weights: broadcastable to `values`, or `None` for a plain mean.
    """
    values = ops.cast(values, "float32")
    if weights is None:
        return ops.mean(values)
    weights = ops.cast(weights, "float32")
    weights = ops.broadcast_to(
        ops.reshape(weights, ops.shape(weights) + (1,) * (len(values.shape) - len(weights.shape))),
        ops.shape(values),
    )
    total = ops.sum(weights)
    return ops.divide(ops.sum(values * weights), ops.maximum(total, EPSILON))


@keras.saving.register_keras_serializable(package="kd_keras")
class DistillationLoss(keras.layers.Layer):
    """Base class of a distillation term.

    Subclasses implement `compute(teacher, student, labels=None,
    weights=None)` for one teacher and return a scalar. `call` sums that over
    teachers with the ensemble weights; soft-target losses override `call`
    because an ensemble of teachers is an average of distributions, not of
    losses.

    Args:
        weight: multiplier of this term inside the distillation part of the
            loss (the whole distillation part is then scaled by `1 - alpha`).
        teacher_layer: name (or `"outer/inner"` path into nested models) of
            the teacher layer whose output this term reads; `None` means the
            teacher's final outputs (logits).
        student_layer: the same for the student.
        name: the term's name; the progress bar shows `<name>_loss`.

    Example:

    ```python
    class L1Logits(kd_keras.losses.DistillationLoss):
        def compute(self, teacher, student, labels=None, weights=None):
            per_sample = keras.ops.mean(keras.ops.abs(teacher - student), -1)
            return kd_keras.losses.weighted_mean(per_sample, weights)
    ```
    """

    #: True when the term reads class logits; the Distiller then checks that
    #: neither model ends in softmax.
    reads_logits = True
    #: True when the term needs the true class (DKD); the Distiller passes
    #: the teacher's argmax for unlabeled samples.
    needs_labels = False

    def __init__(
        self,
        weight: float = 1.0,
        teacher_layer: str | None = None,
        student_layer: str | None = None,
        **kwargs,
    ):
        # Loss maths stays in float32 under mixed precision: softmax of
        # float16 logits divided by a temperature underflows.
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        weight = float(weight)
        if not weight >= 0.0:
            raise ValueError(
                f"{type(self).__name__}: weight must be >= 0, got {weight}. "
                "Use 0 to switch a term off."
            )
        self.weight = weight
        self.teacher_layer = teacher_layer
        self.student_layer = student_layer
        if teacher_layer is not None or student_layer is not None:
            self.reads_logits = False

    def build(self, teacher_shape=None, student_shape=None):
        """Creates weights that depend on feature shapes (projections)."""
        self.built = True

    def compute(self, teacher, student, labels=None, weights=None):
        raise NotImplementedError(
            f"{type(self).__name__} must implement compute(teacher, student, "
            "labels=None, weights=None) and return a scalar."
        )

    def call(
        self,
        teachers: Sequence,
        student,
        labels=None,
        weights=None,
        teacher_weights: Sequence[float] | None = None,
    ):
        teachers = list(teachers) if isinstance(teachers, (list, tuple)) else [teachers]
        teacher_weights = _normalized(teacher_weights, len(teachers))
        total = 0.0
        for teacher, share in zip(teachers, teacher_weights):
            total = total + share * self.compute(
                teacher, student, labels=labels, weights=weights
            )
        return total

    def get_config(self):
        config = super().get_config()
        config.update(
            weight=self.weight,
            teacher_layer=self.teacher_layer,
            student_layer=self.student_layer,
        )
        return config


def _normalized(teacher_weights, count):
    if teacher_weights is None:
        return [1.0 / count] * count
    teacher_weights = [float(w) for w in teacher_weights]
    if len(teacher_weights) != count or min(teacher_weights) < 0 or sum(teacher_weights) <= 0:
        raise ValueError(
            f"teacher_weights must be {count} non-negative numbers with a "
            f"positive sum, got {teacher_weights}."
        )
    total = sum(teacher_weights)
    return [w / total for w in teacher_weights]


def to_float32(x):
    return ops.cast(x, "float32")
