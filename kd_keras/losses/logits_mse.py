"""Logit matching (Ba & Caruana, "Do Deep Nets Really Need to be Deep?", 2014)."""

from __future__ import annotations

import keras
from keras import ops

from kd_keras.losses.base import DistillationLoss, to_float32, weighted_mean


@keras.saving.register_keras_serializable(package="kd_keras")
class LogitsMSE(DistillationLoss):
    """Mean squared error between teacher and student logits:

    `mean_c (s_c − t_c)²` per sample (or per position of a
    `(batch, time, classes)` output), then the weighted mean over samples /
    positions, so padded or masked positions contribute nothing.

    With several teachers the term is the weighted sum of the per-teacher
    losses (`DistillationLoss.call`).

    Args:
        weight, teacher_layer, student_layer, name: see `DistillationLoss`.

    Example:

    ```python
    teacher_logits = np.array([[4.0, 1.0, -2.0], [0.5, 2.5, 0.0]], "float32")
    student_logits = np.array([[2.0, 1.0, 0.0], [0.0, 1.0, 0.5]], "float32")
    y = np.array([0, 1])

    loss = kd_keras.losses.LogitsMSE()
    value = loss([teacher_logits], student_logits)
    ```
    """

    def __init__(self, weight: float = 1.0, name: str = "logits_mse", **kwargs):
        super().__init__(weight=weight, name=name, **kwargs)

    def compute(self, teacher, student, labels=None, weights=None):
        per_position = ops.mean(
            ops.square(to_float32(student) - to_float32(teacher)), axis=-1
        )
        return weighted_mean(per_position, weights)
