"""Deep mutual learning (Zhang et al., CVPR 2018): students teach each other."""

from __future__ import annotations

from typing import Sequence

import keras
from keras import ops

from kd_keras.distiller import combine_weights
from kd_keras.losses.base import DistillationLoss, weighted_mean
from kd_keras.losses.soft_target import SoftTargetKD
from kd_keras.validation import check_alpha, unpack_targets


@keras.saving.register_keras_serializable(package="kd_keras")
class MutualDistiller(keras.Model):
    """Trains K ≥ 2 students together; each learns from the labels and from
    the others' (gradient-stopped) predictions:

        L_k = alpha · CE(y, s_k) + (1 − alpha) · 1/(K−1) · Σ_{l≠k} term(s_l → s_k)

    summed over k. With the default term (`SoftTargetKD(temperature=1)`) and
    alpha = 0.5 this is the DML objective up to a factor of 2.

    `predict` returns the list of the students' outputs; use
    `mutual.students[i]` alone after training. Per-student cross-entropy,
    distillation loss and accuracy are logged as `student_<i>_...`.

    Example:

    ```python
    x_train = np.random.rand(64, 8).astype("float32")
    y_train = np.random.randint(0, 3, size=64)
    student_a = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
    student_b = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)]
    )
    mutual = kd_keras.MutualDistiller([student_a, student_b])
    mutual.compile(optimizer="adam")
    mutual.fit(x_train, y_train, epochs=2, verbose=0)
    ```
    """

    def __init__(
        self,
        students: Sequence[keras.Model],
        loss: DistillationLoss | None = None,
        alpha: float = 0.5,
        name: str = "mutual_distiller",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        students = list(students)
        if len(students) < 2:
            raise ValueError(f"Mutual learning needs at least 2 students, got {len(students)}.")
        if len({id(s) for s in students}) != len(students):
            raise ValueError("The same model appears twice in students: pass distinct models.")
        self.students = students
        self.term = loss or SoftTargetKD(temperature=1.0, name="mutual")
        if not self.term.reads_logits:
            raise ValueError(
                "MutualDistiller exchanges predictions between students: use a "
                "logit term (SoftTargetKD, LogitsMSE, DKD), not a feature term."
            )
        self._alpha_init = check_alpha(alpha)
        self.alpha = keras.Variable(
            self._alpha_init, trainable=False, dtype="float32", name="alpha"
        )
        self.ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        self.trackers = []
        for i in range(len(students)):
            self.trackers.append(
                (
                    keras.metrics.Mean(name=f"student_{i}_ce"),
                    keras.metrics.Mean(name=f"student_{i}_{self.term.name}_loss"),
                    keras.metrics.SparseCategoricalAccuracy(name=f"student_{i}_accuracy"),
                )
            )

    def compile(self, optimizer="adam", **kwargs):
        if kwargs.get("loss") is not None or kwargs.get("metrics") is not None:
            raise ValueError(
                "MutualDistiller sets its own loss and logs each student's "
                "accuracy: call compile(optimizer=...) only."
            )
        super().compile(optimizer=optimizer, **kwargs)

    def compile_from_config(self, config):
        # Keras skips compile on load for models that override compile();
        # this compile takes the same arguments, so restore it.
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def build(self, input_shape=None):
        for student in self.students:
            if not student.built and input_shape is not None:
                student.build(input_shape)
        self.built = True

    def call(self, inputs, training=None):
        return [s(inputs, training=training) for s in self.students]

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        labels, _, label_mask, padding_mask = unpack_targets(y)
        weights = combine_weights(sample_weight, padding_mask)
        total = ops.zeros((), dtype="float32")
        peers = len(y_pred) - 1
        for k, (out, (ce_tracker, kd_tracker, _)) in enumerate(zip(y_pred, self.trackers)):
            kd = ops.zeros((), dtype="float32")
            for j, other in enumerate(y_pred):
                if j != k:
                    kd = (
                        kd
                        + self.term([ops.stop_gradient(other)], out, labels=labels, weights=weights)
                        / peers
                    )
            ce = ops.zeros((), dtype="float32")
            if labels is not None:
                ce = weighted_mean(self.ce.call(labels, out), combine_weights(weights, label_mask))
            ce_tracker.update_state(ce)
            kd_tracker.update_state(kd)
            total = total + self.alpha * ce + (1.0 - self.alpha) * self.term.weight * kd
        for extra in self.losses:
            total = total + self._aggregate_additional_loss(extra)
        return total

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        labels, _, label_mask, _ = unpack_targets(y)
        if labels is not None:
            weights = combine_weights(sample_weight, label_mask)
            for out, (_, _, accuracy) in zip(y_pred, self.trackers):
                accuracy.update_state(labels, out, sample_weight=weights)
        return self.get_metrics_result()

    def get_config(self):
        return {
            "name": self.name,
            "students": [keras.saving.serialize_keras_object(s) for s in self.students],
            "loss": keras.saving.serialize_keras_object(self.term),
            "alpha": self._alpha_init,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        deserialize = keras.saving.deserialize_keras_object
        config["students"] = [
            deserialize(s, custom_objects=custom_objects) for s in config["students"]
        ]
        config["loss"] = deserialize(config["loss"], custom_objects=custom_objects)
        return cls(**config)
