"""Temperature / alpha schedules at their edges, against their formulas:
epochs before 0 and after the end, one-epoch schedules, boundaries hit
exactly, identifiers `get` accepts, and the exact error messages."""

import math

import keras
import pytest

from kd_keras import schedules


def test_constant_is_a_float_at_every_epoch():
    s = schedules.ConstantSchedule(3)
    assert s(0) == 3.0 and s(-2) == 3.0 and s(10**6) == 3.0
    assert isinstance(s(0), float)
    assert s.get_config() == {"value": 3.0}


@pytest.mark.parametrize("cls", [schedules.LinearSchedule, schedules.CosineSchedule])
def test_progress_is_clamped_to_the_schedule(cls):
    s = cls(8.0, 2.0, epochs=4)
    assert s(-3) == pytest.approx(8.0, abs=1e-12)  # before the start: the start value
    assert s(0) == pytest.approx(8.0, abs=1e-12)
    assert s(4) == pytest.approx(2.0, abs=1e-12)
    assert s(400) == pytest.approx(2.0, abs=1e-12)


def test_linear_and_cosine_midpoints_against_formulas():
    linear = schedules.LinearSchedule(1.0, 3.0, epochs=4)
    cosine = schedules.CosineSchedule(1.0, 3.0, epochs=4)
    for e in range(6):
        p = min(max(e, 0), 4) / 4
        assert linear(e) == pytest.approx(1.0 + 2.0 * p, abs=1e-12)
        assert cosine(e) == pytest.approx(3.0 + (1.0 - 3.0) * 0.5 * (1 + math.cos(math.pi * p)))
    assert cosine(1) == pytest.approx(3.0 - 2.0 * 0.5 * (1 + math.cos(math.pi / 4)))


@pytest.mark.parametrize("cls", [schedules.LinearSchedule, schedules.CosineSchedule])
def test_one_epoch_schedule_is_allowed(cls):
    s = cls(4.0, 1.0, epochs=1)
    assert s(0) == pytest.approx(4.0) and s(1) == pytest.approx(1.0)
    assert s.get_config() == {"start": 4.0, "end": 1.0, "epochs": 1}


@pytest.mark.parametrize("epochs", [0, -3])
def test_non_positive_epochs_are_refused_with_the_value(epochs):
    with pytest.raises(ValueError, match=rf"^epochs must be >= 1, got {epochs}\.$"):
        schedules.CosineSchedule(1.0, 2.0, epochs=epochs)


def test_step_schedule_switches_on_each_boundary():
    s = schedules.StepSchedule(boundaries=[0, 3, 3, 7], values=[9, 8, 7, 6, 5])
    # Before the first boundary, and equal boundaries skip a value.
    assert [s(e) for e in (-1, 0, 2, 3, 6, 7, 100)] == [9.0, 8.0, 8.0, 6.0, 6.0, 5.0, 5.0]
    assert s.get_config() == {"boundaries": [0, 3, 3, 7], "values": [9.0, 8.0, 7.0, 6.0, 5.0]}


def test_step_schedule_errors_name_the_counts_and_boundaries():
    with pytest.raises(
        ValueError,
        match=r"^StepSchedule needs one more value than boundaries, got 3 values for 3 "
        r"boundaries\.$",
    ):
        schedules.StepSchedule([1, 2, 3], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"^boundaries must increase, got \[2, 1\]\.$"):
        schedules.StepSchedule([2, 1], [1.0, 2.0, 3.0])


def test_get_accepts_numbers_schedules_and_configs():
    constant = schedules.get(2)
    assert isinstance(constant, schedules.ConstantSchedule) and constant(5) == 2.0
    assert schedules.get(0.5)(0) == 0.5
    linear = schedules.LinearSchedule(4.0, 1.0, 3)
    assert schedules.get(linear) is linear
    restored = schedules.get(keras.saving.serialize_keras_object(linear))
    assert isinstance(restored, schedules.LinearSchedule)
    assert [restored(e) for e in range(5)] == [linear(e) for e in range(5)]


def test_get_refuses_anything_else():
    with pytest.raises(ValueError, match=r"^Cannot make a schedule from 'cosine'\.$"):
        schedules.get("cosine")


def test_base_schedule_is_abstract():
    with pytest.raises(NotImplementedError):
        schedules.Schedule()(0)
    with pytest.raises(NotImplementedError):
        schedules.Schedule().get_config()
