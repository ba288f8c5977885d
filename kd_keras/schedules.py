"""Schedules for the temperature and alpha of distillation, by epoch.

Like `keras.optimizers.schedules.LearningRateSchedule`: small serializable
callables. `kd_keras.callbacks.DistillationScheduler` evaluates them at the
start of every epoch and writes the value into the distiller's variables.
"""

from __future__ import annotations

import math
from typing import Sequence

import keras


@keras.saving.register_keras_serializable(package="kd_keras")
class Schedule:
    """A value as a function of the (0-based) epoch."""

    def __call__(self, epoch: int) -> float:
        raise NotImplementedError

    def get_config(self) -> dict:
        raise NotImplementedError

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="kd_keras")
class ConstantSchedule(Schedule):
    """`value` at every epoch.

    Example: `ConstantSchedule(4.0)(7) == 4.0`.
    """

    def __init__(self, value: float):
        self.value = float(value)

    def __call__(self, epoch: int) -> float:
        return self.value

    def get_config(self):
        return {"value": self.value}


def _check_epochs(epochs: int) -> int:
    epochs = int(epochs)
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}.")
    return epochs


@keras.saving.register_keras_serializable(package="kd_keras")
class LinearSchedule(Schedule):
    """From `start` at epoch 0 to `end` at epoch `epochs`, linearly; `end`
    afterwards: `start + (end - start) * min(epoch, epochs) / epochs`.

    Example: anneal the temperature from 8 to 2 over 10 epochs with
    `LinearSchedule(8.0, 2.0, epochs=10)`.
    """

    def __init__(self, start: float, end: float, epochs: int):
        self.start, self.end, self.epochs = float(start), float(end), _check_epochs(epochs)

    def __call__(self, epoch: int) -> float:
        progress = min(max(epoch, 0), self.epochs) / self.epochs
        return self.start + (self.end - self.start) * progress

    def get_config(self):
        return {"start": self.start, "end": self.end, "epochs": self.epochs}


@keras.saving.register_keras_serializable(package="kd_keras")
class CosineSchedule(Schedule):
    """Cosine from `start` to `end` over `epochs` (as SGDR / cosine decay):
    `end + (start - end) * (1 + cos(pi * min(epoch, epochs) / epochs)) / 2`.

    Example: `CosineSchedule(0.9, 0.1, epochs=20)` for alpha.
    """

    def __init__(self, start: float, end: float, epochs: int):
        self.start, self.end, self.epochs = float(start), float(end), _check_epochs(epochs)

    def __call__(self, epoch: int) -> float:
        progress = min(max(epoch, 0), self.epochs) / self.epochs
        return self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def get_config(self):
        return {"start": self.start, "end": self.end, "epochs": self.epochs}


@keras.saving.register_keras_serializable(package="kd_keras")
class StepSchedule(Schedule):
    """Piecewise constant: `values[i]` for `boundaries[i-1] <= epoch <
    boundaries[i]` (as `keras.optimizers.schedules.PiecewiseConstantDecay`).

    Example: `StepSchedule(boundaries=[5, 10], values=[8.0, 4.0, 2.0])`.
    """

    def __init__(self, boundaries: Sequence[int], values: Sequence[float]):
        boundaries, values = [int(b) for b in boundaries], [float(v) for v in values]
        if len(values) != len(boundaries) + 1:
            raise ValueError(
                f"StepSchedule needs one more value than boundaries, got "
                f"{len(values)} values for {len(boundaries)} boundaries."
            )
        if boundaries != sorted(boundaries):
            raise ValueError(f"boundaries must increase, got {boundaries}.")
        self.boundaries, self.values = boundaries, values

    def __call__(self, epoch: int) -> float:
        index = sum(epoch >= b for b in self.boundaries)
        return self.values[index]

    def get_config(self):
        return {"boundaries": self.boundaries, "values": self.values}


def get(identifier) -> Schedule:
    """A schedule from a number (constant), a Schedule, or a config dict."""
    if isinstance(identifier, Schedule):
        return identifier
    if isinstance(identifier, (int, float)):
        return ConstantSchedule(identifier)
    if isinstance(identifier, dict):
        return keras.saving.deserialize_keras_object(identifier)
    raise ValueError(f"Cannot make a schedule from {identifier!r}.")
