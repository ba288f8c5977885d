"""Soft-target distillation (Hinton, Vinyals & Dean, 2015)."""

from __future__ import annotations

from typing import Sequence

import keras
from keras import ops

from kd_keras.defaults import KD_TEMPERATURE
from kd_keras.losses.base import (
    DistillationLoss,
    normalized_teacher_weights,
    to_float32,
    weighted_mean,
)


class TemperatureMixin:
    """A temperature held in a variable, so a schedule can change it mid-`fit`
    without retracing the train step."""

    def _init_temperature(self, temperature: float):
        temperature = float(temperature)
        if not temperature > 0.0:
            raise ValueError(
                f"{type(self).__name__}: temperature must be > 0, got "
                f"{temperature}. Typical values are 1 to 8; 1 means no "
                "softening."
            )
        self._temperature_init = temperature
        self.temperature = keras.Variable(
            temperature, trainable=False, dtype="float32", name="temperature"
        )


@keras.saving.register_keras_serializable(package="kd_keras")
class SoftTargetKD(TemperatureMixin, DistillationLoss):
    """KL divergence between temperature-softened teacher and student
    distributions, scaled by T² so its gradients keep their size as T grows:

    `T² · Σ_c p_t,c (log p_t,c − log p_s,c)`, `p = softmax(z / T)`,
    averaged over samples (and over unmasked positions for token outputs).

    With several teachers the target is the weighted average of their
    softened distributions (each teacher may have its own temperature).

    Args:
        temperature: softening temperature T > 0.
        teacher_temperatures: optional per-teacher temperatures; the student
            is always softened with `temperature`.
        weight, name: see `DistillationLoss`.

    Example:

    ```python
    teacher_logits = np.array([[4.0, 1.0, -2.0], [0.5, 2.5, 0.0]], "float32")
    student_logits = np.array([[2.0, 1.0, 0.0], [0.0, 1.0, 0.5]], "float32")
    y = np.array([0, 1])

    kd = kd_keras.losses.SoftTargetKD(4.0)
    value = kd([teacher_logits], student_logits)  # T² · KL(teacher ‖ student) at T = 4

    student = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
    teacher = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
    distiller = kd_keras.Distiller(
        student, teacher, losses=[kd_keras.losses.SoftTargetKD(4.0)], alpha=0.1
    )
    ```
    """

    def __init__(
        self,
        temperature: float = KD_TEMPERATURE,
        teacher_temperatures: Sequence[float] | None = None,
        weight: float = 1.0,
        name: str = "soft_target",
        **kwargs,
    ):
        super().__init__(weight=weight, name=name, **kwargs)
        self._init_temperature(temperature)
        if teacher_temperatures is not None:
            teacher_temperatures = [float(t) for t in teacher_temperatures]
            if min(teacher_temperatures) <= 0:
                raise ValueError(
                    f"teacher_temperatures must all be > 0, got {teacher_temperatures}."
                )
        self.teacher_temperatures = teacher_temperatures

    def teacher_distribution(self, teachers, teacher_weights=None):
        """The (ensemble) softened target distribution."""
        teachers = list(teachers) if isinstance(teachers, (list, tuple)) else [teachers]
        shares = normalized_teacher_weights(teacher_weights, len(teachers))
        temperatures = self.teacher_temperatures or [None] * len(teachers)
        if len(temperatures) != len(teachers):
            raise ValueError(
                f"{len(temperatures)} teacher_temperatures for {len(teachers)} teachers."
            )
        target = 0.0
        for logits, share, temperature in zip(teachers, shares, temperatures):
            t = self.temperature if temperature is None else temperature
            target = target + share * ops.softmax(to_float32(logits) / t, axis=-1)
        return target

    def call(self, teachers, student, labels=None, weights=None, teacher_weights=None):
        target = self.teacher_distribution(teachers, teacher_weights)
        t = self.temperature
        log_student = ops.log_softmax(to_float32(student) / t, axis=-1)
        log_target = ops.log(ops.maximum(target, 1e-30))
        per_sample = ops.sum(target * (log_target - log_student), axis=-1)
        return ops.square(t) * weighted_mean(per_sample, weights)

    def compute(self, teacher, student, labels=None, weights=None):
        return self.call([teacher], student, labels=labels, weights=weights)

    def get_config(self):
        config = super().get_config()
        config.update(
            temperature=self._temperature_init,
            teacher_temperatures=self.teacher_temperatures,
        )
        return config
