"""Self-distillation: a frozen earlier snapshot of the student is its teacher
(born-again networks, Furlanello et al. 2018, with snapshots taken during one
`fit` instead of in separate generations)."""

from __future__ import annotations

import keras

from kd_keras.distiller import Distiller


class TeacherSnapshot(keras.callbacks.Callback):
    """Copies the student's weights into the frozen teacher every `every`
    epochs. Until the first copy the teacher is the untrained initial student,
    so the distiller trains on labels alone (alpha = 1) until then.

    Args:
        every: epochs between snapshots (the first one after `every` epochs).
    """

    def __init__(self, every: int = 1):
        super().__init__()
        if int(every) < 1:
            raise ValueError(f"every must be >= 1 epoch, got {every}.")
        self.every = int(every)
        self.snapshots = []

    def on_train_begin(self, logs=None):
        if not isinstance(self.model, Distiller) or self.model.teacher is None:
            raise TypeError(
                "TeacherSnapshot steps a Distiller made by kd_keras.self_distillation()."
            )
        self._alpha = float(keras.ops.convert_to_numpy(self.model.alpha))
        if not self.snapshots:
            self.model.alpha.assign(1.0)

    def on_epoch_begin(self, epoch, logs=None):
        if epoch > 0 and epoch % self.every == 0:
            for target, source in zip(self.model.teacher.weights, self.model.student.weights):
                # A host copy, not the array itself: on JAX two variables
                # sharing one buffer break the trainer's buffer donation.
                target.assign(keras.ops.convert_to_numpy(source))
            self.snapshots.append(epoch)
            self.model.alpha.assign(self._alpha)

    def on_train_end(self, logs=None):
        self.model.alpha.assign(self._alpha)


def self_distillation(student: keras.Model, every: int = 1, **distiller_kwargs):
    """A `Distiller` whose teacher is a frozen copy of `student`, and the
    `TeacherSnapshot` callback that refreshes that copy during `fit`.

    Example:

    ```python
    x = np.random.rand(64, 8).astype("float32")
    y = np.random.randint(0, 3, size=64)
    student = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
    distiller, snapshot = kd_keras.self_distillation(student, every=1, alpha=0.3)
    distiller.compile(optimizer="adam", metrics=["accuracy"])
    distiller.fit(x, y, epochs=2, callbacks=[snapshot], verbose=0)
    ```
    """
    teacher = keras.models.clone_model(student)
    teacher.set_weights(student.get_weights())
    teacher._name = f"{student.name}_snapshot"
    distiller = Distiller(student, teacher, **distiller_kwargs)
    return distiller, TeacherSnapshot(every)
