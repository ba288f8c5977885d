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
    weights = squeeze_trailing_ones(ops.cast(weights, "float32"), len(values.shape))
    for _ in range(len(values.shape) - len(weights.shape)):
        weights = ops.expand_dims(weights, -1)
    weights = ops.broadcast_to(weights, ops.shape(values))
    # `where`, not a product: a padded position may hold inf/NaN garbage and
    # 0 * inf is NaN.
    values = ops.where(weights > 0, values, ops.zeros_like(values))
    total = ops.sum(weights)
    return ops.divide(ops.sum(values * weights), ops.maximum(total, EPSILON))


def squeeze_trailing_ones(x, rank: int):
    """Drops trailing size-1 axes beyond `rank`: Keras sample weights often
    arrive as `(batch, 1)`."""
    while len(x.shape) > rank and x.shape[-1] == 1:
        x = ops.squeeze(x, axis=-1)
    return x


def l2_normalize(x, axis: int = -1, epsilon: float = EPSILON):
    """`x / max(||x||, epsilon)` along `axis` (torch's `F.normalize`).

    Unlike `keras.ops.normalize`, the gradient of an all-zero vector is 0, not
    NaN (RKD's angle term normalizes the zero vector `e_i - e_i`).
    """
    square_sum = ops.sum(ops.square(x), axis=axis, keepdims=True)
    return x / ops.sqrt(ops.maximum(square_sum, epsilon * epsilon))


def static_shape(x) -> tuple:
    """The static shape of a tensor of any backend, `None` for unknown dims."""
    return tuple(None if d is None else int(d) for d in x.shape)


def check_same_positions(loss_name: str, teacher_shape, student_shape) -> None:
    """Raises unless teacher and student features cover the same positions.

    Feature losses compare maps position by position, so everything between
    the batch and the channel axis (height, width / time) must match; only
    the channel width may differ.
    """
    teacher_shape, student_shape = tuple(teacher_shape), tuple(student_shape)
    mismatch = len(teacher_shape) != len(student_shape) or any(
        t is not None and s is not None and t != s
        for t, s in zip(teacher_shape[1:-1], student_shape[1:-1])
    )
    if mismatch:
        raise ValueError(
            f"{loss_name}: teacher features of shape {teacher_shape} and "
            f"student features of shape {student_shape} do not cover the same "
            "positions (all axes between batch and channels must match; "
            "channels may differ). Pick teacher_layer / student_layer at the "
            "same spatial resolution, or resize one map (e.g. pooling) in the "
            "model before the layer you name."
        )


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

    def __call__(self, *args, **kwargs):
        # Keras would build from shapes named after `call`'s arguments
        # (`teachers_shape`); terms build from one teacher and the student.
        if not self.built:
            teachers = args[0] if args else kwargs["teachers"]
            student = args[1] if len(args) > 1 else kwargs["student"]
            if isinstance(teachers, (list, tuple)):
                teachers = teachers[0]
            self.build(static_shape(teachers), static_shape(student))
        return super().__call__(*args, **kwargs)

    def build(self, teacher_shape=None, student_shape=None):
        """Creates weights that depend on feature shapes (projections).

        Called once, before the first `call`, with the shape of the (first)
        teacher's and the student's tensors. Overrides call
        `super().build(teacher_shape, student_shape)` last.
        """
        # A tuple of tuples (Keras layers wrap a dict attribute in tracking);
        # the batch size is not part of what was built.
        self._kd_build_shapes = tuple(
            None if shape is None else (None,) + tuple(shape)[1:]
            for shape in (teacher_shape, student_shape)
        )
        self.built = True

    def get_build_config(self):
        shapes = getattr(self, "_kd_build_shapes", None)
        if shapes is None:
            return None
        return {
            "teacher_shape": None if shapes[0] is None else list(shapes[0]),
            "student_shape": None if shapes[1] is None else list(shapes[1]),
        }

    def build_from_config(self, config):
        if config:
            self.build(**config)

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
        teacher_weights = normalized_teacher_weights(teacher_weights, len(teachers))
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


def normalized_teacher_weights(
    teacher_weights: Sequence[float] | None, count: int
) -> list[float]:
    """Each teacher's share of an ensemble's term, summing to 1.

    `None` gives every one of the `count` teachers the same share; otherwise
    the weights are checked (`count` non-negative numbers with a positive sum)
    and divided by their sum.

    Example:
    >>> normalized_teacher_weights([1, 3], 2)
    [0.25, 0.75]
    >>> normalized_teacher_weights(None, 4)
    [0.25, 0.25, 0.25, 0.25]
    """
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
