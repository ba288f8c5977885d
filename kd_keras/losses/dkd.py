"""Decoupled knowledge distillation (Zhao et al., "Decoupled Knowledge
Distillation", CVPR 2022), as in the official megvii-research/mdistiller code."""

from __future__ import annotations

import keras
from keras import ops

from kd_keras.defaults import KD_TEMPERATURE
from kd_keras.losses.base import DistillationLoss, static_shape, to_float32, weighted_mean
from kd_keras.losses.soft_target import TemperatureMixin

#: What mdistiller subtracts from the target logit (after dividing by T) so
#: that the softmax over the remaining classes ignores it.
TARGET_MASK = 1000.0


def class_indices(labels, logits):
    """Integer classes of shape `logits.shape[:-1]` from sparse labels
    (optionally with a trailing axis of 1) or one-hot / probability labels.

    Out-of-range indices (a padding label such as -100) are clipped into
    range: such positions must carry weight 0 and then count for nothing.
    """
    labels_shape, logits_shape = static_shape(labels), static_shape(logits)
    classes = logits_shape[-1]
    if len(labels_shape) == len(logits_shape) and labels_shape[-1] == classes and classes != 1:
        labels = ops.argmax(labels, axis=-1)
    elif len(labels_shape) == len(logits_shape) and labels_shape[-1] == 1:
        labels = ops.squeeze(labels, axis=-1)
    elif len(labels_shape) != len(logits_shape) - 1:
        raise ValueError(
            f"labels of shape {labels_shape} do not fit logits of shape "
            f"{logits_shape}: pass class indices of shape {logits_shape[:-1]} "
            f"(or one-hot labels of shape {logits_shape})."
        )
    return ops.clip(ops.cast(labels, "int32"), 0, classes - 1)


def _kl(log_target, log_prediction):
    """Σ_c p (log p − log q) over the last axis, from log-probabilities."""
    return ops.sum(ops.exp(log_target) * (log_target - log_prediction), axis=-1)


def _binary_log_probs(scaled_logits, target_mask):
    """log [p_target, 1 − p_target] of `softmax(scaled_logits)`, computed
    with log-sum-exps so a confident model does not produce log(0)."""
    log_total = ops.logsumexp(scaled_logits, axis=-1)
    log_target = ops.sum(scaled_logits * target_mask, axis=-1) - log_total
    others = ops.where(target_mask > 0, ops.full_like(scaled_logits, -1e30), scaled_logits)
    log_other = ops.logsumexp(others, axis=-1) - log_total
    return ops.stack([log_target, log_other], axis=-1)


@keras.saving.register_keras_serializable(package="kd_keras")
class DKD(TemperatureMixin, DistillationLoss):
    """Decoupled KD: the KL of soft-target KD split into a target-class part
    (TCKD) and a non-target part (NCKD), re-weighted:

    `T² · (α · KL(b_t ‖ b_s) + β · KL(p̂_t ‖ p̂_s))`, where
    `b = [p_y, 1 − p_y]` with `p = softmax(z / T)` and `y` the true class,
    and `p̂ = softmax(z / T − 1000 · onehot(y))` is the distribution over the
    non-target classes. Averaged (with weights) over samples / positions.

    The Distiller passes the teacher's argmax as the label of unlabeled
    samples. mdistiller also ramps the term in linearly over the first 20
    epochs; do that with a weight schedule if you need it.

    Args:
        alpha: weight of TCKD, >= 0 (1 in the paper).
        beta: weight of NCKD, >= 0 (8 on CIFAR-100 in the paper).
        temperature: softening temperature T > 0 (4 in the paper).
        weight, teacher_layer, student_layer, name: see `DistillationLoss`.

    Example:

    ```python
    teacher_logits = np.array([[4.0, 1.0, -2.0], [0.5, 2.5, 0.0]], "float32")
    student_logits = np.array([[2.0, 1.0, 0.0], [0.0, 1.0, 0.5]], "float32")
    y = np.array([0, 1])

    dkd = kd_keras.losses.DKD(alpha=1.0, beta=8.0, temperature=4.0)
    value = dkd([teacher_logits], student_logits, labels=y)
    ```
    """

    needs_labels = True

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 8.0,
        temperature: float = KD_TEMPERATURE,
        weight: float = 1.0,
        name: str = "dkd",
        **kwargs,
    ):
        super().__init__(weight=weight, name=name, **kwargs)
        self._init_temperature(temperature)
        self.alpha, self.beta = float(alpha), float(beta)
        if not (self.alpha >= 0 and self.beta >= 0):
            raise ValueError(
                f"DKD: alpha and beta must be >= 0, got alpha={alpha}, beta={beta}. "
                "The paper uses alpha=1 and beta between 1 and 8."
            )

    def compute(self, teacher, student, labels=None, weights=None):
        if labels is None:
            raise ValueError(
                "DKD needs the true class: call it with labels=... (the "
                "Distiller does this, using the teacher's argmax for unlabeled "
                "samples)."
            )
        t = self.temperature
        student = to_float32(student) / t
        teacher = to_float32(teacher) / t
        target_mask = ops.one_hot(
            class_indices(labels, student), static_shape(student)[-1], dtype="float32"
        )
        tckd = _kl(
            _binary_log_probs(teacher, target_mask),
            _binary_log_probs(student, target_mask),
        )
        nckd = _kl(
            ops.log_softmax(teacher - TARGET_MASK * target_mask, axis=-1),
            ops.log_softmax(student - TARGET_MASK * target_mask, axis=-1),
        )
        per_position = self.alpha * tckd + self.beta * nckd
        return ops.square(t) * weighted_mean(per_position, weights)

    def get_config(self):
        config = super().get_config()
        config.update(
            alpha=self.alpha, beta=self.beta, temperature=self._temperature_init
        )
        return config
