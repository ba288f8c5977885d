"""Pruning schedules and masks at their edges, against NumPy transcriptions
of TFMOT's rules: window boundaries, one-step windows, frequencies with an
offset, `ramp_schedule`'s step arithmetic, masks of tiny and rank-1 weights,
and the exact error messages."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops

from kd_keras import pruning


def np_(x):
    return np.asarray(ops.convert_to_numpy(x))


def should(schedule, step):
    return bool(np_(schedule(ops.convert_to_tensor(step, "int32"))[0]))


def sparsity(schedule, step):
    return float(np_(schedule(ops.convert_to_tensor(step, "int32"))[1]))


# ---------------------------------------------------------------- schedules


def test_one_shot_window_at_step_0_prunes_once():
    schedule = pruning.ConstantSparsity(0.5, begin_step=0, end_step=0, frequency=1)
    assert [should(schedule, s) for s in range(4)] == [True, False, False, False]


def test_window_is_inclusive_and_frequency_counts_from_begin_step():
    schedule = pruning.ConstantSparsity(0.25, begin_step=3, end_step=9, frequency=2)
    # TFMOT: begin <= step <= end and (step - begin) % frequency == 0
    expected = [3 <= s <= 9 and (s - 3) % 2 == 0 for s in range(13)]
    assert [should(schedule, s) for s in range(13)] == expected
    assert sparsity(schedule, 0) == 0.25


def test_polynomial_decay_clamps_and_uses_power_3_by_default():
    schedule = pruning.PolynomialDecay(0.2, 0.9, begin_step=4, end_step=14, frequency=1)
    assert schedule.power == 3
    for step in (0, 4, 6, 9, 14, 30):
        p = min(1.0, max(0.0, (step - 4) / 10))
        assert sparsity(schedule, step) == pytest.approx(0.9 + (0.2 - 0.9) * (1 - p) ** 3, abs=1e-6)
    assert [should(schedule, s) for s in (3, 4, 14, 15)] == [False, True, True, False]


def test_default_frequency_is_tfmots_100():
    assert pruning.PolynomialDecay(0.2, 0.9, begin_step=0, end_step=10).frequency == 100
    assert pruning.ConstantSparsity(0.5, begin_step=0).frequency == 100


def test_sparsity_is_float32_when_floatx_is_float64():
    # The mask code compares weights with float32 thresholds: the schedule's
    # sparsity stays float32 whatever the default float type.
    previous = keras.config.floatx()
    keras.config.set_floatx("float64")
    try:
        decay = pruning.PolynomialDecay(0.2, 0.9, begin_step=4, end_step=14, power=2, frequency=1)
        constant = pruning.ConstantSparsity(0.3, begin_step=0, frequency=1)
        for schedule, step, want in ((decay, 9, 0.9 - 0.7 * 0.25), (constant, 5, 0.3)):
            value = schedule(ops.convert_to_tensor(step, "int32"))[1]
            assert keras.backend.standardize_dtype(value.dtype) == "float32"
            assert float(np_(value)) == pytest.approx(want, abs=1e-6)
    finally:
        keras.config.set_floatx(previous)


def test_smallest_valid_arguments_are_accepted():
    pruning.ConstantSparsity(0.0, begin_step=0, end_step=0, frequency=1)
    pruning.PolynomialDecay(0.0, 0.0, begin_step=0, end_step=1, frequency=1)
    pruning.ConstantSparsity(0.5, begin_step=7, end_step=7)  # end == begin: one step


@pytest.mark.parametrize(
    "make,message",
    [
        (
            lambda: pruning.ConstantSparsity(0.5, begin_step=-1),
            r"^begin_step must be >= 0, got -1\. It counts training batches from the start of "
            r"pruning \(the first batch is step 1\)\.$",
        ),
        (
            lambda: pruning.PolynomialDecay(0.0, 0.5, 0, -1),
            r"^end_step=-1 \(prune forever\) is not allowed here: the sparsity decays towards "
            r"final_sparsity at end_step\. Pass the step at which the target must be reached, "
            r"e\.g\. end_step=epochs \* steps_per_epoch\.$",
        ),
        (
            lambda: pruning.ConstantSparsity(0.5, 100, 10),
            r"^end_step=10 is before begin_step=100: pruning would never run\. Set end_step >= "
            r"begin_step \(or end_step=-1 to prune until training ends\)\.$",
        ),
        (
            lambda: pruning.PolynomialDecay(0.0, 0.5, 100, 10),
            r"^end_step=10 is before begin_step=100: pruning would never run\. Set end_step >= "
            r"begin_step\.$",
        ),
        (
            lambda: pruning.ConstantSparsity(0.5, 0, frequency=-2),
            r"^frequency must be > 0 \(prune every `frequency` steps\), got -2\.$",
        ),
        (
            lambda: pruning.ConstantSparsity(1.0, 0),
            r"^target_sparsity=1\.0 is outside \[0, 1\)\. Sparsity is the fraction of weights set "
            r"to zero \(0\.8 = 80 % zeros\); 1\.0 would remove every weight\.$",
        ),
        (
            lambda: pruning.PolynomialDecay(-0.1, 0.5, 0, 10),
            r"^initial_sparsity=-0\.1 is outside \[0, 1\)",
        ),
        (
            lambda: pruning.PolynomialDecay(0.0, 0.5, 10, 10),
            r"^PolynomialDecay needs end_step > begin_step \(both are 10\): the sparsity rises "
            r"between them\. For one-shot pruning use ConstantSparsity\(target_sparsity, "
            r"begin_step, end_step=begin_step\)\.$",
        ),
        (
            lambda: pruning.ConstantSparsity(0.5, 2.5),
            r"^begin_step must be an integer step count, got 2\.5\.$",
        ),
        (lambda: pruning.ConstantSparsity(0.5, True), r"^begin_step must be an integer"),
        (lambda: pruning.ConstantSparsity(0.5, 0, end_step=3.5), r"^end_step must be an integer"),
        (lambda: pruning.ConstantSparsity(0.5, 0, frequency=1.5), r"^frequency must be an integer"),
        (
            lambda: pruning.ramp_schedule(0.8, 100, ramp=1.01),
            r"^ramp must be in \(0, 1\] \(a fraction of the steps\), got 1\.01\.$",
        ),
        (lambda: pruning.ramp_schedule(0.8, 10.5), r"^total_steps must be an integer"),
        (lambda: pruning.recovery_learning_rate(1e-3, 1.5, 10), r"^hold_steps must be an integer"),
        (lambda: pruning.recovery_learning_rate(1e-3, 1, 9.5), r"^total_steps must be an integer"),
    ],
)
def test_schedule_errors_say_what_is_wrong_and_how_to_fix(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_integral_floats_are_accepted_as_steps():
    schedule = pruning.ConstantSparsity(0.5, 2.0, end_step=8.0, frequency=3.0)
    assert schedule.get_config() == {
        "target_sparsity": 0.5, "begin_step": 2, "end_step": 8, "frequency": 3
    }
    assert isinstance(schedule.begin_step, int) and isinstance(schedule.frequency, int)


def np_ramp(final, total, ramp=0.5, updates=10):
    """ramp_schedule's step arithmetic, transcribed."""
    end = max(1, int(total * ramp))
    frequency = max(1, end // max(1, int(updates)))
    return max(frequency, frequency * (end // frequency)), frequency


@pytest.mark.parametrize(
    "total,ramp,updates",
    [(100, 0.5, 10), (103, 0.5, 4), (3, 0.1, 10), (50, 1.0, 0), (7, 0.5, 1), (1000, 0.25, 7)],
)
def test_ramp_schedule_step_arithmetic(total, ramp, updates):
    schedule = pruning.ramp_schedule(0.6, total, ramp=ramp, updates=updates)
    end, frequency = np_ramp(0.6, total, ramp, updates)
    assert (schedule.begin_step, schedule.end_step, schedule.frequency) == (0, end, frequency)
    assert schedule.initial_sparsity == 0.0 and schedule.final_sparsity == 0.6
    assert schedule.power == 3


def test_ramp_schedule_hand_values():
    # 103 steps, half of them ramping (51), four updates: every 12 steps to step 48.
    schedule = pruning.ramp_schedule(0.8, 103, ramp=0.5, updates=4)
    assert (schedule.end_step, schedule.frequency) == (48, 12)
    assert sparsity(schedule, 48) == pytest.approx(0.8)
    default = pruning.ramp_schedule(0.8, 200)
    assert (default.end_step, default.frequency) == (100, 10)


def test_recovery_learning_rate_when_everything_is_hold():
    lr = pruning.recovery_learning_rate(2e-3, hold_steps=10, total_steps=10, final_fraction=0.1)
    assert lr.get_config()["decay_steps"] == 1
    assert lr.get_config()["warmup_steps"] == 10
    assert lr.get_config()["alpha"] == pytest.approx(0.1)
    assert float(np_(lr(5))) == pytest.approx(2e-3, rel=1e-6)
    assert float(np_(lr(11))) == pytest.approx(2e-4, rel=1e-5)  # final_fraction * lr
    default = pruning.recovery_learning_rate(1e-3, hold_steps=0, total_steps=10)
    assert float(np_(default(10))) == pytest.approx(1e-5, rel=1e-4)


def test_repr_lists_the_arguments():
    assert repr(pruning.ConstantSparsity(0.5, 1, 9, 2)) == (
        "ConstantSparsity(target_sparsity=0.5, begin_step=1, end_step=9, frequency=2)"
    )
    schedule = pruning.PolynomialDecay(0.1, 0.7, 0, 10, power=2, frequency=5)
    assert pruning.PolynomialDecay.from_config(schedule.get_config()).get_config() == {
        "initial_sparsity": 0.1,
        "final_sparsity": 0.7,
        "begin_step": 0,
        "end_step": 10,
        "power": 2,
        "frequency": 5,
    }


def test_as_pruning_schedule_default_dict_and_refusal():
    from kd_keras.pruning.schedules import as_pruning_schedule

    # None is TFMOT's default: 50 % from step 0, every 100 steps, forever.
    default = as_pruning_schedule(None)
    assert type(default) is pruning.ConstantSparsity
    assert default.get_config() == {
        "target_sparsity": 0.5, "begin_step": 0, "end_step": -1, "frequency": 100
    }
    schedule = pruning.PolynomialDecay(0.1, 0.7, 2, 12, power=2, frequency=5)
    assert as_pruning_schedule(schedule) is schedule
    restored = as_pruning_schedule(keras.saving.serialize_keras_object(schedule))
    assert type(restored) is pruning.PolynomialDecay
    assert restored.get_config() == schedule.get_config()
    with pytest.raises(ValueError) as error:
        as_pruning_schedule(0.5)
    assert str(error.value) == (
        "pruning_schedule must be a kd_keras.pruning.PruningSchedule "
        "(ConstantSparsity, PolynomialDecay), got float."
    )


# ---------------------------------------------------------------- masks


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_magnitude_mask_dtype_and_threshold(dtype):
    w = np.array([[0.1, -2.0], [0.5, 1.0]], dtype)
    mask, threshold = pruning.magnitude_mask(ops.convert_to_tensor(w), 0.5)
    assert keras.backend.standardize_dtype(mask.dtype) == dtype
    assert keras.backend.standardize_dtype(threshold.dtype) == dtype
    np.testing.assert_array_equal(np_(mask), [[0, 1], [0, 1]])
    assert float(np_(threshold)) == 1.0


def test_magnitude_mask_keeps_at_least_one_weight_and_all_at_sparsity_0():
    w = np.array([3.0, -1.0, 2.0], "float32")
    mask, threshold = pruning.magnitude_mask(ops.convert_to_tensor(w), 0.9)
    np.testing.assert_array_equal(np_(mask), [1, 0, 0])
    assert float(np_(threshold)) == 3.0
    mask, threshold = pruning.magnitude_mask(ops.convert_to_tensor(w), 0.0)
    np.testing.assert_array_equal(np_(mask), [1, 1, 1])
    assert float(np_(threshold)) == 1.0
    # round half to even, as TFMOT: 6 * (1 - 0.25) = 4.5 -> keep 4
    w6 = np.array([6, 5, 4, 3, 2, 1], "float32")
    np.testing.assert_array_equal(np_(pruning.magnitude_mask(w6, 0.25)[0]), [1, 1, 1, 1, 0, 0])


def test_block_mask_defaults_to_average_pooling_and_returns_the_score_threshold():
    w = np.array([[4.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]], "float32")
    # Block scores: AVG [1.0, 1.0] tie -> both kept; MAX [4.0, 1.0] -> the first.
    mask, threshold = pruning.block_mask(ops.convert_to_tensor(w), 0.5, (2, 2))
    np.testing.assert_array_equal(np_(mask), np.ones((2, 4)))
    assert float(np_(threshold)) == 1.0
    mask, threshold = pruning.block_mask(ops.convert_to_tensor(w), 0.5, (2, 2), "MAX")
    np.testing.assert_array_equal(np_(mask), [[1, 1, 0, 0], [1, 1, 0, 0]])
    assert float(np_(threshold)) == 4.0


def test_block_mask_partial_block_is_averaged_over_real_entries():
    # 3 x 1 with blocks of 2 x 1: the last block holds one real entry (0.9)
    # and must score 0.9, not 0.45 (which would lose to the first block's 0.6).
    w = np.array([[0.6], [0.6], [0.9]], "float32")
    mask, threshold = pruning.block_mask(ops.convert_to_tensor(w), 0.5, (2, 1))
    np.testing.assert_array_equal(np_(mask), [[0], [0], [1]])
    assert float(np_(threshold)) == pytest.approx(0.9)


def test_block_and_m_by_n_errors_are_clear():
    with pytest.raises(
        ValueError,
        match=r"^block_size needs a weight of rank >= 2, got shape \(6,\)\. "
        r"Use block_size=\(1, 1\) for this layer\.$",
    ):
        pruning.block_mask(ops.ones((6,)), 0.5, (2, 2))
    with pytest.raises(
        ValueError, match=r"^block_pooling_type must be 'AVG' or 'MAX', got 'MEAN'\.$"
    ):
        pruning.block_mask(ops.ones((4, 4)), 0.5, (2, 2), "MEAN")
    # A length that is not a multiple of n is zero-padded, as TFMOT does: the
    # two padding zeros are the smallest of the last group, so its two real
    # weights stay; ties in the first group go to the lower index.
    mask = np_(pruning.m_by_n_mask(ops.ones((6, 4, 2)), (2, 4), axis=0))
    np.testing.assert_array_equal(mask, np.broadcast_to([1, 1, 0, 0, 1, 1], (2, 4, 6)).T)


def test_m_by_n_ties_go_to_the_lower_index():
    w = np.array([[1.0, 1.0, 1.0, 1.0], [0.0, 2.0, -2.0, 1.0]], "float32").T  # groups along axis 0
    mask = np_(pruning.m_by_n_mask(ops.convert_to_tensor(w), (2, 4), axis=0))
    np.testing.assert_array_equal(mask.T, [[1, 1, 0, 0], [0, 1, 1, 0]])


def test_block_and_m_by_n_masks_are_typed_like_float16_weights():
    rng = np.random.default_rng(11)
    w = rng.normal(size=(6, 4)).astype("float16")
    block, _ = pruning.block_mask(ops.convert_to_tensor(w), 0.5, (2, 2))
    assert keras.backend.standardize_dtype(block.dtype) == "float16"
    reference = pruning.block_mask(ops.convert_to_tensor(w.astype("float32")), 0.5, (2, 2))[0]
    np.testing.assert_array_equal(np_(block), np_(reference))
    m_by_n = pruning.m_by_n_mask(ops.convert_to_tensor(w), (2, 4), axis=1)
    assert keras.backend.standardize_dtype(m_by_n.dtype) == "float16"
    assert (np_(m_by_n).reshape(-1, 4).sum(-1) == 2).all()
