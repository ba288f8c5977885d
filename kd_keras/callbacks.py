"""Callbacks of distillation: schedules for T and alpha, a NaN guard that
names the term, and the teacher snapshot of self-distillation."""

from __future__ import annotations

import math
import warnings

import keras

import kd_keras.schedules as schedules_lib

#: Batch-log key of the Distiller's per-batch data check: 0 for a clean
#: batch, +1 when its inputs held NaN/inf, +2 when its labels were out of
#: range or not finite. `NaNGuard` reads it and removes it from the logs.
INVALID_BATCH_KEY = "invalid_batch"


def _find_distiller(model):
    # Duck-typed: importing the Distiller here would make the two modules
    # import each other.
    if not (hasattr(model, "distillation_terms") and hasattr(model, "alpha")):
        raise TypeError(
            f"{type(model).__name__} is not a kd_keras.Distiller: this callback "
            "steps a Distiller's temperature/alpha."
        )
    return model


def _temperature_variables(distiller):
    return [
        term.temperature for term in distiller.distillation_terms if hasattr(term, "temperature")
    ]


@keras.saving.register_keras_serializable(package="kd_keras")
class DistillationScheduler(keras.callbacks.Callback):
    """Sets the distiller's `alpha` and the temperature of every term that has
    one at the start of each epoch, and logs both into `history`.

    Args:
        temperature: a `kd_keras.schedules.Schedule`, a number, or None.
        alpha: the same for alpha (values must stay in [0, 1]).

    Example:

    ```python
    x = np.random.rand(64, 8).astype("float32")
    y = np.random.randint(0, 3, size=64)
    student = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)]
    )

    teacher = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
    distiller = kd_keras.Distiller(student, teacher)
    distiller.compile(optimizer="adam")
    history = distiller.fit(
        x, y, epochs=3, verbose=0,
        callbacks=[kd_keras.callbacks.DistillationScheduler(
            temperature=kd_keras.schedules.LinearSchedule(8.0, 2.0, epochs=3),
            alpha=kd_keras.schedules.CosineSchedule(0.5, 0.1, epochs=3),
        )],
    )
    history.history["temperature"]  # one value per epoch
    ```
    """

    def __init__(self, temperature=None, alpha=None):
        super().__init__()
        if temperature is None and alpha is None:
            raise ValueError("Give a temperature and/or an alpha schedule.")
        self.temperature = None if temperature is None else schedules_lib.get(temperature)
        self.alpha = None if alpha is None else schedules_lib.get(alpha)
        self._current = {}

    def on_train_begin(self, logs=None):
        distiller = _find_distiller(self.model)
        if self.temperature is not None and not _temperature_variables(distiller):
            raise ValueError(
                "A temperature schedule was given but no distillation term has a "
                "temperature (SoftTargetKD and DKD have one)."
            )

    def on_epoch_begin(self, epoch, logs=None):
        distiller = self.model
        self._current = {}
        if self.temperature is not None:
            value = self.temperature(epoch)
            if not value > 0:
                raise ValueError(
                    f"The temperature schedule gave {value} at epoch {epoch}; it must stay > 0."
                )
            for variable in _temperature_variables(distiller):
                variable.assign(value)
            self._current["temperature"] = value
        if self.alpha is not None:
            value = self.alpha(epoch)
            if not 0.0 <= value <= 1.0:
                raise ValueError(
                    f"The alpha schedule gave {value} at epoch {epoch}; it must stay in [0, 1]."
                )
            distiller.alpha.assign(value)
            self._current["alpha"] = value

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs.update(self._current)

    def get_config(self):
        return {
            "temperature": None
            if self.temperature is None
            else keras.saving.serialize_keras_object(self.temperature),
            "alpha": None
            if self.alpha is None
            else keras.saving.serialize_keras_object(self.alpha),
        }


class NaNGuard(keras.callbacks.Callback):
    """Stops training at the first batch whose loss is NaN or infinite, and
    says which distillation term (or the student loss) went bad first.

    It also raises at the first batch the Distiller's step flagged as
    invalid (NaN/inf inputs, labels out of range or not finite: data after
    the first batch, which `fit` checks before training). That batch taught
    nothing: its loss was zeroed.

    `Distiller.fit` adds one automatically. The NaN message is kept in
    `guard.message` and issued as a `RuntimeWarning`.
    """

    def __init__(self):
        super().__init__()
        self.message = None
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs.pop(INVALID_BATCH_KEY, None)
            logs.pop(f"val_{INVALID_BATCH_KEY}", None)

    def on_train_batch_end(self, batch, logs=None):
        if not logs:
            return
        invalid = int(float(logs.pop(INVALID_BATCH_KEY, 0.0)))
        if invalid:
            problems = []
            if invalid & 1:
                problems.append("inputs contain NaN or inf")
            if invalid & 2:
                problems.append(
                    "labels are out of range (valid: 0..classes-1) or not finite"
                )
            self.model.stop_training = True
            raise ValueError(
                f"Batch {batch} of epoch {self._epoch}: its {' and its '.join(problems)}. "
                "Training stopped (this batch was skipped). Clean the data "
                "(e.g. ds.filter(...) or a check in the loading code), or mark "
                "unlabeled samples with y['label_mask'] = 0."
            )
        bad = [
            key
            for key, value in logs.items()
            if key not in ("temperature", "alpha") and not math.isfinite(float(value))
        ]
        if not bad:
            return
        terms = [k for k in bad if k != "loss"] or ["loss"]
        self.message = (
            f"Training stopped at batch {batch}: {', '.join(terms)} became NaN/inf. "
            "Check the inputs for NaN/inf, lower the learning rate, or (for a "
            "feature term) normalize the features; a temperature near 0 also "
            "overflows."
        )
        warnings.warn(self.message, RuntimeWarning, stacklevel=2)
        self.model.stop_training = True
