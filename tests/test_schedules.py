"""Temperature / alpha schedules against their formulas, and the callback
that steps them inside fit."""

import math

import keras
import numpy as np
import pytest

import kd_keras
from kd_keras import schedules
from kd_keras.losses import SoftTargetKD
from tiny import data, mlp


def test_constant():
    assert [schedules.ConstantSchedule(3.5)(e) for e in range(4)] == [3.5] * 4


def test_linear_against_formula():
    s = schedules.LinearSchedule(8.0, 2.0, epochs=6)
    expected = [8.0 - 6.0 * min(e, 6) / 6 for e in range(10)]
    np.testing.assert_allclose([s(e) for e in range(10)], expected, atol=1e-12)
    assert s(3) == pytest.approx(5.0)


def test_cosine_against_formula():
    s = schedules.CosineSchedule(1.0, 0.2, epochs=8)
    expected = [0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * min(e, 8) / 8)) for e in range(12)]
    np.testing.assert_allclose([s(e) for e in range(12)], expected, atol=1e-12)
    assert s(0) == pytest.approx(1.0) and s(4) == pytest.approx(0.6) and s(8) == pytest.approx(0.2)


def test_step_against_formula():
    s = schedules.StepSchedule(boundaries=[2, 5], values=[8.0, 4.0, 1.0])
    assert [s(e) for e in range(7)] == [8.0, 8.0, 4.0, 4.0, 4.0, 1.0, 1.0]


def test_bad_schedules_are_refused():
    with pytest.raises(ValueError, match="one more value than boundaries"):
        schedules.StepSchedule([1, 2], [1.0])
    with pytest.raises(ValueError, match="boundaries must increase"):
        schedules.StepSchedule([3, 1], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        schedules.LinearSchedule(1.0, 2.0, epochs=0)


@pytest.mark.parametrize(
    "schedule",
    [
        schedules.ConstantSchedule(2.0),
        schedules.LinearSchedule(4.0, 1.0, 3),
        schedules.CosineSchedule(4.0, 1.0, 3),
        schedules.StepSchedule([1], [4.0, 2.0]),
    ],
)
def test_serialization_round_trip(schedule):
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert type(restored) is type(schedule)
    assert [restored(e) for e in range(5)] == [schedule(e) for e in range(5)]


def test_scheduler_sets_variables_each_epoch_and_logs_them():
    x, y = data(32)
    term = SoftTargetKD(4.0)
    distiller = kd_keras.Distiller(mlp(8, name="s"), mlp(16, name="t"), losses=[term], alpha=0.5)
    distiller.compile(optimizer="adam")
    temperature = schedules.LinearSchedule(6.0, 2.0, epochs=2)
    alpha = schedules.StepSchedule([1], [0.9, 0.2])
    seen = []

    class Spy(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if batch == 0:
                seen.append(
                    (
                        float(keras.ops.convert_to_numpy(term.temperature)),
                        float(keras.ops.convert_to_numpy(distiller.alpha)),
                    )
                )

    scheduler = kd_keras.DistillationScheduler(temperature=temperature, alpha=alpha)
    history = distiller.fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=[scheduler, Spy()])
    assert history.history["temperature"] == [6.0, 4.0, 2.0]
    assert history.history["alpha"] == [0.9, 0.2, 0.2]
    np.testing.assert_allclose(seen, [(6.0, 0.9), (4.0, 0.2), (2.0, 0.2)], atol=1e-6)


def test_scheduled_temperature_reaches_the_loss():
    """The traced step must read the variable, not a value frozen at trace time."""
    x, y = data(32)
    term = SoftTargetKD(1.0)
    distiller = kd_keras.Distiller(mlp(8, name="s"), mlp(16, name="t"), losses=[term], alpha=0.0)
    distiller.compile(optimizer=keras.optimizers.SGD(0.0))
    scheduler = kd_keras.DistillationScheduler(temperature=schedules.StepSchedule([1], [1.0, 5.0]))
    history = distiller.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[scheduler])
    from tiny import np_soft_target

    t = keras.ops.convert_to_numpy(distiller.teacher(x))
    s = keras.ops.convert_to_numpy(distiller.student(x))
    np.testing.assert_allclose(
        history.history["soft_target_loss"],
        [np_soft_target(t, s, 1.0), np_soft_target(t, s, 5.0)],
        rtol=1e-4,
    )


def test_scheduler_refuses_out_of_range_values():
    x, y = data(16)
    distiller = kd_keras.Distiller(mlp(8, name="s"), mlp(16, name="t"))
    distiller.compile(optimizer="adam")
    with pytest.raises(ValueError, match="it must stay in \\[0, 1\\]"):
        distiller.fit(
            x, y, epochs=1, verbose=0, callbacks=[kd_keras.DistillationScheduler(alpha=1.5)]
        )
