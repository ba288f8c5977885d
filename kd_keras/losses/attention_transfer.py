"""Attention transfer (Zagoruyko & Komodakis, "Paying More Attention to
Attention", ICLR 2017), as in the official code szagoruyko/attention-transfer."""

from __future__ import annotations

import keras
from keras import ops

from kd_keras.losses.base import (
    DistillationLoss,
    check_same_positions,
    l2_normalize,
    squeeze_trailing_ones,
    static_shape,
    to_float32,
    weighted_mean,
)


@keras.saving.register_keras_serializable(package="kd_keras")
class AttentionTransfer(DistillationLoss):
    """Matches the spatial attention maps of teacher and student features:

    `at(x) = normalize(flatten(mean_c |x_c|^p))` (L2 over positions), and
    `loss = β/2 · mean((at(s) − at(t))²)`, the mean over samples and
    positions (the official `at_loss` with `β = 1000`, `p = 2`).

    Features are channels-last, `(batch, H, W, C)` or `(batch, time, dim)`;
    the channel widths may differ, the positions must match. A
    `(batch, time)` weight masks padded positions out of the attention map
    before it is normalized, and the mean then runs over the unmasked
    positions (every token counts once); a `(batch,)` weight selects samples.

    Args:
        teacher_layer, student_layer: the layers to compare (see
            `DistillationLoss`); they should output feature maps.
        p: exponent of the channel statistic, > 0 (2 in the paper).
        beta: scale of the term (1000 in the paper), >= 0.
        weight, name: see `DistillationLoss`.

    Example:

    ```python
    def small_cnn(filters):
        return keras.Sequential([
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name="block2"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(3),
        ])

    teacher, student = small_cnn(16), small_cnn(4)

    at = kd_keras.losses.AttentionTransfer(teacher_layer="block2", student_layer="block2")
    distiller = kd_keras.Distiller(student, teacher, losses=[at], alpha=0.1)
    ```
    """

    reads_logits = False

    def __init__(
        self,
        teacher_layer: str | None = None,
        student_layer: str | None = None,
        p: float = 2.0,
        beta: float = 1000.0,
        weight: float = 1.0,
        name: str = "attention_transfer",
        **kwargs,
    ):
        super().__init__(
            weight=weight,
            teacher_layer=teacher_layer,
            student_layer=student_layer,
            name=name,
            **kwargs,
        )
        self.p = float(p)
        self.beta = float(beta)
        if not self.p > 0:
            raise ValueError(f"AttentionTransfer: p must be > 0 (the paper uses 2), got {p}.")
        if not self.beta >= 0:
            raise ValueError(
                f"AttentionTransfer: beta must be >= 0 (the paper uses 1000), got {beta}."
            )

    def build(self, teacher_shape, student_shape):
        self._check(teacher_shape, student_shape)
        super().build(teacher_shape, student_shape)

    def _check(self, teacher_shape, student_shape):
        if len(teacher_shape) < 3 or len(student_shape) < 3:
            raise ValueError(
                "AttentionTransfer needs feature maps of shape (batch, H, W, C) "
                f"or (batch, time, dim); got teacher {tuple(teacher_shape)} and "
                f"student {tuple(student_shape)}. Set teacher_layer and "
                "student_layer to convolutional layers."
            )
        check_same_positions(type(self).__name__, teacher_shape, student_shape)

    def attention(self, features, position_weights=None):
        """`normalize(flatten(mean_c |x|^p))`, shape `(batch, positions)`."""
        features = to_float32(features)
        amap = ops.mean(ops.power(ops.abs(features), self.p), axis=-1)
        if position_weights is not None:
            # Padded positions must not enter the normalization.
            amap = ops.where(position_weights > 0, amap, ops.zeros_like(amap))
        return l2_normalize(ops.reshape(amap, (ops.shape(amap)[0], -1)))

    def compute(self, teacher, student, labels=None, weights=None):
        self._check(static_shape(teacher), static_shape(student))
        position_weights = None
        if weights is not None:
            weights = squeeze_trailing_ones(to_float32(weights), 1)
            if len(weights.shape) > 1:
                position_weights = weights
        difference = self.attention(student, position_weights) - self.attention(
            teacher, position_weights
        )
        per_position = ops.square(difference)
        if weights is not None:
            weights = ops.reshape(weights, (ops.shape(weights)[0], -1))
        return (self.beta / 2.0) * weighted_mean(per_position, weights)

    def get_config(self):
        config = super().get_config()
        config.update(p=self.p, beta=self.beta)
        return config
