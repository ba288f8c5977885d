"""Pruning schedules: when to prune and to which sparsity, step by step.

Same parameters and the same step arithmetic as TFMOT's
`tensorflow_model_optimization/.../sparsity/keras/pruning_schedule.py`
(float32 throughout, so masks match TFMOT's bit for bit), written in
`keras.ops` so the schedule runs inside the compiled train step of every
backend.
"""

from __future__ import annotations

import abc

import keras
from keras import ops


def _check_int(value, name: str) -> int:
    if isinstance(value, bool) or not float(value).is_integer():
        raise ValueError(f"{name} must be an integer step count, got {value!r}.")
    return int(value)


@keras.saving.register_keras_serializable(package="kd_keras")
class PruningSchedule(abc.ABC):
    """Says, at each training step, whether to prune and to which sparsity.

    `schedule(step)` takes the pruning step (an integer tensor: 1 on the first
    training batch) and returns `(should_prune, sparsity)`: a boolean scalar
    and a float32 scalar tensor. Subclass it and implement `__call__` and
    `get_config` to write your own.

    Example:

    ```python
    schedule = kd_keras.pruning.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=1000)
    should_prune, sparsity = schedule(keras.ops.convert_to_tensor(500))
    ```
    """

    def _should_prune_in_step(self, step, begin_step: int, end_step: int, frequency: int):
        """True within [begin_step, end_step] (end -1: forever), every `frequency` steps."""
        step = ops.convert_to_tensor(step, dtype="int32")
        in_range = ops.greater_equal(step, begin_step)
        if end_step >= 0:
            in_range = ops.logical_and(in_range, ops.less_equal(step, end_step))
        # floormod, as TFMOT: steps before begin_step are excluded by in_range.
        is_turn = ops.equal(ops.mod(step - begin_step, frequency), 0)
        return ops.logical_and(in_range, is_turn)

    @staticmethod
    def _validate_step(begin_step, end_step, frequency, allow_negative_1: bool):
        begin_step = _check_int(begin_step, "begin_step")
        end_step = _check_int(end_step, "end_step")
        frequency = _check_int(frequency, "frequency")
        if begin_step < 0:
            raise ValueError(
                f"begin_step must be >= 0, got {begin_step}. It counts training "
                "batches from the start of pruning (the first batch is step 1)."
            )
        if end_step == -1 and not allow_negative_1:
            raise ValueError(
                "end_step=-1 (prune forever) is not allowed here: the sparsity "
                "decays towards final_sparsity at end_step. Pass the step at which "
                "the target must be reached, e.g. end_step=epochs * steps_per_epoch."
            )
        if end_step != -1 and end_step < begin_step:
            raise ValueError(
                f"end_step={end_step} is before begin_step={begin_step}: pruning would "
                "never run. Set end_step >= begin_step"
                + (" (or end_step=-1 to prune until training ends)." if allow_negative_1 else ".")
            )
        if frequency <= 0:
            raise ValueError(
                f"frequency must be > 0 (prune every `frequency` steps), got {frequency}."
            )
        return begin_step, end_step, frequency

    @staticmethod
    def _validate_sparsity(sparsity, name: str) -> float:
        sparsity = float(sparsity)
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(
                f"{name}={sparsity} is outside [0, 1). Sparsity is the fraction of "
                "weights set to zero (0.8 = 80 % zeros); 1.0 would remove every weight."
            )
        return sparsity

    @abc.abstractmethod
    def __call__(self, step):
        """Returns `(should_prune, sparsity)` for the integer tensor `step`."""

    @abc.abstractmethod
    def get_config(self) -> dict:
        """The arguments of `__init__`."""

    @classmethod
    def from_config(cls, config: dict) -> PruningSchedule:
        return cls(**config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


@keras.saving.register_keras_serializable(package="kd_keras")
class ConstantSparsity(PruningSchedule):
    """Prunes to `target_sparsity` every `frequency` steps in [begin_step, end_step].

    Args:
        target_sparsity: fraction of weights set to zero, in [0, 1).
        begin_step: first step at which pruning may happen.
        end_step: last step at which pruning may happen; -1 = until training ends.
        frequency: prune every `frequency` steps.

    Example:

    ```python
    schedule = kd_keras.pruning.ConstantSparsity(0.5, begin_step=0, frequency=100)
    ```
    """

    def __init__(
        self,
        target_sparsity: float,
        begin_step: int,
        end_step: int = -1,
        frequency: int = 100,
    ):
        self.target_sparsity = self._validate_sparsity(target_sparsity, "target_sparsity")
        self.begin_step, self.end_step, self.frequency = self._validate_step(
            begin_step, end_step, frequency, allow_negative_1=True
        )

    def __call__(self, step):
        should = self._should_prune_in_step(step, self.begin_step, self.end_step, self.frequency)
        return should, ops.convert_to_tensor(self.target_sparsity, dtype="float32")

    def get_config(self) -> dict:
        return {
            "target_sparsity": self.target_sparsity,
            "begin_step": self.begin_step,
            "end_step": self.end_step,
            "frequency": self.frequency,
        }


@keras.saving.register_keras_serializable(package="kd_keras")
class PolynomialDecay(PruningSchedule):
    """Sparsity rising from `initial_sparsity` to `final_sparsity` (Zhu & Gupta, 2017):

    `s(t) = s_f + (s_i - s_f) * (1 - p) ** power`,
    `p = clip((t - begin_step) / (end_step - begin_step), 0, 1)`,

    applied every `frequency` steps in [begin_step, end_step].

    Args:
        initial_sparsity: sparsity at `begin_step`, in [0, 1).
        final_sparsity: sparsity reached at `end_step`, in [0, 1).
        begin_step, end_step: the pruning window (end_step >= begin_step).
        power: exponent of the decay (3 prunes fast early, slowly at the end).
        frequency: prune every `frequency` steps.

    Example:

    ```python
    schedule = kd_keras.pruning.PolynomialDecay(
        initial_sparsity=0.0, final_sparsity=0.8, begin_step=0, end_step=2000
    )
    ```
    """

    def __init__(
        self,
        initial_sparsity: float,
        final_sparsity: float,
        begin_step: int,
        end_step: int,
        power: float = 3,
        frequency: int = 100,
    ):
        self.initial_sparsity = self._validate_sparsity(initial_sparsity, "initial_sparsity")
        self.final_sparsity = self._validate_sparsity(final_sparsity, "final_sparsity")
        self.power = power
        self.begin_step, self.end_step, self.frequency = self._validate_step(
            begin_step, end_step, frequency, allow_negative_1=False
        )
        if self.end_step == self.begin_step:
            # TFMOT divides by zero here and silently prunes with NaN sparsity.
            raise ValueError(
                f"PolynomialDecay needs end_step > begin_step (both are {self.end_step}): "
                "the sparsity rises between them. For one-shot pruning use "
                "ConstantSparsity(target_sparsity, begin_step, end_step=begin_step)."
            )

    def __call__(self, step):
        step = ops.convert_to_tensor(step, dtype="int32")
        # float32 everywhere, in TFMOT's order of operations, so the number of
        # weights kept (round(size * (1 - s))) is the same as TFMOT's.
        span = ops.convert_to_tensor(self.end_step - self.begin_step, dtype="float32")
        progress = ops.divide(ops.cast(step - self.begin_step, "float32"), span)
        progress = ops.minimum(1.0, ops.maximum(0.0, progress))
        delta = ops.convert_to_tensor(self.initial_sparsity - self.final_sparsity, "float32")
        power = ops.convert_to_tensor(self.power, dtype="float32")
        sparsity = ops.add(
            ops.multiply(delta, ops.power(1.0 - progress, power)),
            ops.convert_to_tensor(self.final_sparsity, "float32"),
        )
        should = self._should_prune_in_step(step, self.begin_step, self.end_step, self.frequency)
        return should, sparsity

    def get_config(self) -> dict:
        return {
            "initial_sparsity": self.initial_sparsity,
            "final_sparsity": self.final_sparsity,
            "begin_step": self.begin_step,
            "end_step": self.end_step,
            "power": self.power,
            "frequency": self.frequency,
        }


def as_pruning_schedule(schedule) -> PruningSchedule:
    """A wrapper's `pruning_schedule` argument as a schedule: `None` is
    TFMOT's default `ConstantSparsity(0.5, 0)`, a dict is a serialized
    schedule (as a `.keras` file stores it); anything else is refused."""
    if schedule is None:
        schedule = ConstantSparsity(0.5, 0)
    if isinstance(schedule, dict):
        schedule = keras.saving.deserialize_keras_object(schedule)
    if not isinstance(schedule, PruningSchedule):
        raise ValueError(
            "pruning_schedule must be a kd_keras.pruning.PruningSchedule "
            f"(ConstantSparsity, PolynomialDecay), got {type(schedule).__name__}."
        )
    return schedule


def ramp_schedule(
    final_sparsity: float, total_steps: int, ramp: float = 0.5, updates: int = 10
) -> PolynomialDecay:
    """`PolynomialDecay` from 0 to `final_sparsity` over the first `ramp`
    of `total_steps` in about `updates` mask updates, then held: the pruned
    network gets the rest of the steps to recover at its final sparsity
    (Zhu & Gupta's recipe; reaching the target only at the last step leaves
    no recovery, which costs accuracy at 80 %+).

    `end_step` is a multiple of the update frequency, so the last update
    lands on `final_sparsity` itself.

    Example:

    ```python
    from kd_keras import pruning
    steps_per_epoch = 100
    schedule = pruning.ramp_schedule(0.8, total_steps=8 * steps_per_epoch)
    ```
    """
    if not 0.0 < ramp <= 1.0:
        raise ValueError(f"ramp must be in (0, 1] (a fraction of the steps), got {ramp}.")
    total_steps = _check_int(total_steps, "total_steps")
    end = max(1, int(total_steps * ramp))
    frequency = max(1, end // max(1, int(updates)))
    return PolynomialDecay(
        0.0,
        final_sparsity,
        begin_step=0,
        end_step=max(frequency, frequency * (end // frequency)),
        frequency=frequency,
    )


def recovery_learning_rate(
    learning_rate: float, hold_steps: int, total_steps: int, final_fraction: float = 0.01
) -> keras.optimizers.schedules.LearningRateSchedule:
    """The learning rate to prune with: held at `learning_rate` for
    `hold_steps` (while the sparsity ramps up and the network re-routes),
    then cosine-decayed to `final_fraction * learning_rate` at `total_steps`
    (fine-tuning the final mask).

    Example:

    ```python
    from kd_keras import pruning
    steps = 800
    schedule = pruning.ramp_schedule(0.8, steps)
    lr = pruning.recovery_learning_rate(1e-3, schedule.end_step, steps)
    optimizer = keras.optimizers.Adam(lr)
    ```
    """
    hold_steps = _check_int(hold_steps, "hold_steps")
    total_steps = _check_int(total_steps, "total_steps")
    # CosineDecay's warm-up from learning_rate to learning_rate is the hold.
    return keras.optimizers.schedules.CosineDecay(
        learning_rate,
        max(1, total_steps - hold_steps),
        alpha=final_fraction,
        warmup_target=learning_rate,
        warmup_steps=hold_steps,
    )
