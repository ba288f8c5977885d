"""FitNets hints (Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015)."""

from __future__ import annotations

import keras
from keras import ops

from kd_keras.losses.base import (
    DistillationLoss,
    check_same_positions,
    static_shape,
    to_float32,
    weighted_mean,
)

PROJECTIONS = ("auto", "always", "never")


def require_layer_names(loss_name: str, teacher_layer, student_layer) -> None:
    """Feature losses must be told which layers to compare."""
    for argument, value in (("teacher_layer", teacher_layer), ("student_layer", student_layer)):
        if not isinstance(value, str) or not value:
            raise ValueError(
                f"{loss_name} compares intermediate features, so {argument} "
                f"must name a layer (e.g. {argument}='block2', or "
                f"'backbone/block2' inside a nested model); got {value!r}."
            )


@keras.saving.register_keras_serializable(package="kd_keras")
class HintLoss(DistillationLoss):
    """FitNets hint loss: the student's intermediate features, passed through
    a learned regressor `r`, should match the teacher's:

    `mean_c (r(s)_c − t_c)²` per sample and position, then the weighted mean
    over samples (and positions: with `(batch, time, dim)` features a
    `(batch, time)` weight masks padded tokens).

    `r` is a `Dense` layer on the channel axis — a 1x1 convolution for conv
    features of shape `(batch, H, W, C)` — created in `build` when the
    channel widths differ (or always, with `projection="always"`). It is a
    weight of this term, trained with the student, and not part of the
    student. Spatial sizes must match.

    Args:
        teacher_layer: name (or `"outer/inner"` path) of the teacher layer.
        student_layer: name (or path) of the student layer.
        projection: `"auto"` (a regressor only when widths differ),
            `"always"`, or `"never"` (widths must then be equal).
        weight, name: see `DistillationLoss`.

    Example:

    ```python
    teacher = keras.Sequential([
        keras.Input((8,)), keras.layers.Dense(16, name="block2"), keras.layers.Dense(3)
    ])
    student = keras.Sequential([
        keras.Input((8,)), keras.layers.Dense(4, name="block2"), keras.layers.Dense(3)
    ])
    # A learned projection maps the student's 4 features onto the teacher's 16.
    hint = kd_keras.losses.HintLoss(teacher_layer="block2", student_layer="block2")
    distiller = kd_keras.Distiller(student, teacher, losses=[hint], alpha=0.1)
    ```
    """

    reads_logits = False

    def __init__(
        self,
        teacher_layer: str | None = None,
        student_layer: str | None = None,
        projection: str = "auto",
        weight: float = 1.0,
        name: str = "hint",
        **kwargs,
    ):
        require_layer_names(type(self).__name__, teacher_layer, student_layer)
        if projection not in PROJECTIONS:
            raise ValueError(
                f"HintLoss: projection must be one of {PROJECTIONS}, got "
                f"{projection!r}. 'auto' adds a learned 1x1 regressor only "
                "when the channel widths differ."
            )
        super().__init__(
            weight=weight,
            teacher_layer=teacher_layer,
            student_layer=student_layer,
            name=name,
            **kwargs,
        )
        self.projection = projection
        self.regressor = None

    def build(self, teacher_shape, student_shape):
        teacher_shape, student_shape = tuple(teacher_shape), tuple(student_shape)
        check_same_positions(type(self).__name__, teacher_shape, student_shape)
        teacher_width, student_width = teacher_shape[-1], student_shape[-1]
        if teacher_width is None or student_width is None:
            raise ValueError(
                f"HintLoss: the channel axis must be known, got teacher shape "
                f"{teacher_shape} and student shape {student_shape}."
            )
        if self.projection == "never" and teacher_width != student_width:
            raise ValueError(
                f"HintLoss: teacher width {teacher_width} != student width "
                f"{student_width} with projection='never'. Use "
                "projection='auto' to learn a regressor between them."
            )
        if self.projection == "always" or (
            self.projection == "auto" and teacher_width != student_width
        ):
            self.regressor = keras.layers.Dense(
                teacher_width, dtype="float32", name="regressor"
            )
            self.regressor.build(student_shape)
        super().build(teacher_shape, student_shape)

    def compute(self, teacher, student, labels=None, weights=None):
        check_same_positions(type(self).__name__, static_shape(teacher), static_shape(student))
        teacher, student = to_float32(teacher), to_float32(student)
        if self.regressor is not None:
            student = self.regressor(student)
        if static_shape(teacher)[-1] != static_shape(student)[-1]:
            raise ValueError(
                f"HintLoss: teacher features of shape {static_shape(teacher)} do "
                f"not match the projected student's {static_shape(student)}. "
                "With several teachers of different widths, use one HintLoss "
                "per teacher."
            )
        per_position = ops.mean(ops.square(student - teacher), axis=-1)
        return weighted_mean(per_position, weights)

    def get_config(self):
        config = super().get_config()
        config.update(projection=self.projection)
        return config
