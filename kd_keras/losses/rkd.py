"""Relational knowledge distillation (Park et al., "Relational Knowledge
Distillation", CVPR 2019), as in the official lenscloth/RKD code."""

from __future__ import annotations

import keras
from keras import ops

from kd_keras.losses.base import (
    EPSILON,
    DistillationLoss,
    l2_normalize,
    squeeze_trailing_ones,
    to_float32,
    weighted_mean,
)

#: Smooth-L1 (Huber) threshold of the official code (`F.smooth_l1_loss`).
HUBER_DELTA = 1.0


def smooth_l1(x):
    """`0.5 x²` for `|x| < 1`, `|x| − 0.5` beyond (torch's smooth L1)."""
    magnitude = ops.abs(x)
    return ops.where(
        magnitude < HUBER_DELTA,
        0.5 * ops.square(x) / HUBER_DELTA,
        magnitude - 0.5 * HUBER_DELTA,
    )


def pairwise_distances(embeddings):
    """Euclidean distances `(batch, batch)`, 0 on the diagonal (official `pdist`)."""
    squared_norms = ops.sum(ops.square(embeddings), axis=-1)
    squared = (
        ops.expand_dims(squared_norms, 1)
        + ops.expand_dims(squared_norms, 0)
        - 2.0 * ops.matmul(embeddings, ops.transpose(embeddings))
    )
    distances = ops.sqrt(ops.maximum(squared, EPSILON))
    return distances * (1.0 - ops.eye(ops.shape(embeddings)[0], dtype="float32"))


def triplet_cosines(embeddings):
    """`cos ∠(e_j − e_i, e_k − e_i)` for all `(i, j, k)`, shape
    `(batch, batch, batch)`; 0 when `j` or `k` equals `i`."""
    differences = l2_normalize(
        ops.expand_dims(embeddings, 0) - ops.expand_dims(embeddings, 1), axis=-1
    )
    return ops.matmul(differences, ops.transpose(differences, (0, 2, 1)))


@keras.saving.register_keras_serializable(package="kd_keras")
class RKD(DistillationLoss):
    """Relational KD: the student should reproduce the geometry of the
    teacher's embeddings, not the embeddings themselves.

    Distance term: `ψ_D(i, j) = ‖e_i − e_j‖ / μ`, `μ` the mean distance over
    pairs `i ≠ j`; loss `mean_{i,j} huber(ψ_D^s − ψ_D^t)`.
    Angle term: `ψ_A(i, j, k) = cos ∠(e_j − e_i, e_k − e_i)`; loss
    `mean_{i,j,k} huber(ψ_A^s − ψ_A^t)`. Huber is smooth L1 with δ = 1.
    Total: `distance_weight · L_D + angle_weight · L_A`.

    Features are flattened to `(batch, −1)`, so teacher and student widths
    may differ. With `weights` (shape `(batch,)`) a pair counts with
    `w_i w_j` and a triplet with `w_i w_j w_k`, in the means and in `μ`, so
    zero-weight samples contribute nothing. The angle term costs
    `batch² · dim` memory.

    Args:
        distance_weight: weight of the distance term, >= 0 (25 in the paper).
        angle_weight: weight of the angle term, >= 0 (50 in the paper).
        teacher_layer, student_layer: embedding layers to compare; without
            them the term reads logits.
        weight, name: see `DistillationLoss`.

    Example:

    ```python
    teacher = keras.Sequential([
        keras.Input((8,)), keras.layers.Dense(16, name="embedding"), keras.layers.Dense(3)
    ])
    student = keras.Sequential([
        keras.Input((8,)), keras.layers.Dense(4, name="embedding"), keras.layers.Dense(3)
    ])
    rkd = kd_keras.losses.RKD(teacher_layer="embedding", student_layer="embedding")
    distiller = kd_keras.Distiller(student, teacher, losses=[rkd], alpha=0.5)
    ```
    """

    def __init__(
        self,
        distance_weight: float = 25.0,
        angle_weight: float = 50.0,
        teacher_layer: str | None = None,
        student_layer: str | None = None,
        weight: float = 1.0,
        name: str = "rkd",
        **kwargs,
    ):
        super().__init__(
            weight=weight,
            teacher_layer=teacher_layer,
            student_layer=student_layer,
            name=name,
            **kwargs,
        )
        self.distance_weight = float(distance_weight)
        self.angle_weight = float(angle_weight)
        if not (self.distance_weight >= 0 and self.angle_weight >= 0) or (
            self.distance_weight + self.angle_weight <= 0
        ):
            raise ValueError(
                "RKD: distance_weight and angle_weight must be >= 0 and not both "
                f"0, got distance_weight={distance_weight}, angle_weight="
                f"{angle_weight}. The paper uses 25 and 50."
            )

    def compute(self, teacher, student, labels=None, weights=None):
        batch = ops.shape(student)[0]
        teacher = ops.stop_gradient(ops.reshape(to_float32(teacher), (batch, -1)))
        student = ops.reshape(to_float32(student), (batch, -1))
        if weights is None:
            weights = ops.ones((batch,), dtype="float32")
        weights = squeeze_trailing_ones(to_float32(weights), 1)
        if len(weights.shape) != 1:
            raise ValueError(
                f"RKD relates whole samples, so weights must have shape (batch,), "
                f"got {tuple(weights.shape)}. Pool token features to one "
                "vector per sample first."
            )
        loss = 0.0
        if self.distance_weight > 0:
            pair_weights = ops.expand_dims(weights, 1) * ops.expand_dims(weights, 0)
            off_diagonal = pair_weights * (1.0 - ops.eye(batch, dtype="float32"))

            def normalized(embeddings):
                distances = pairwise_distances(embeddings)
                return distances / ops.maximum(
                    weighted_mean(distances, off_diagonal), EPSILON
                )

            loss = loss + self.distance_weight * weighted_mean(
                smooth_l1(normalized(student) - normalized(teacher)), pair_weights
            )
        if self.angle_weight > 0:
            triplet_weights = (
                ops.reshape(weights, (-1, 1, 1))
                * ops.reshape(weights, (1, -1, 1))
                * ops.reshape(weights, (1, 1, -1))
            )
            loss = loss + self.angle_weight * weighted_mean(
                smooth_l1(triplet_cosines(student) - triplet_cosines(teacher)),
                triplet_weights,
            )
        return loss

    def get_config(self):
        config = super().get_config()
        config.update(
            distance_weight=self.distance_weight, angle_weight=self.angle_weight
        )
        return config
