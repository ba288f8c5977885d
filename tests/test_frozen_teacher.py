"""The teacher stays frozen inside `Distiller.fit`, on every backend: Dropout
off, BatchNorm moving statistics untouched, no weight changes. The teacher
outputs checked are the ones the Distiller's own (compiled) training step
computed, captured by a distillation term into a variable."""

import keras
import numpy as np
from keras import ops

import kd_keras
from kd_keras.losses import DistillationLoss, SoftTargetKD

BATCH, FEATURES, CLASSES = 8, 6, 4


class CaptureTeacher(DistillationLoss):
    """Contributes 0 to the loss and stores the teacher outputs the step saw."""

    def build(self, teacher_shape=None, student_shape=None):
        self.seen = self.add_weight(
            shape=(BATCH, CLASSES), initializer="zeros", trainable=False, name="seen"
        )
        super().build(teacher_shape, student_shape)

    def compute(self, teacher, student, labels=None, weights=None):
        self.seen.assign(ops.cast(teacher, "float32"))
        return ops.zeros((), "float32")


class RecordEachStep(keras.callbacks.Callback):
    def __init__(self, term):
        super().__init__()
        self.term, self.steps = term, []

    def on_train_batch_end(self, batch, logs=None):
        self.model  # noqa: B018 - on JAX, reading `model` syncs the step's state back
        self.steps.append(ops.convert_to_numpy(self.term.seen).copy())


def teacher_with_dropout_and_batchnorm():
    keras.utils.set_random_seed(1)
    inputs = keras.Input((FEATURES,))
    h = keras.layers.Dense(32, activation="relu")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.Dropout(0.5, name="dropout")(h)
    return keras.Model(inputs, keras.layers.Dense(CLASSES)(h), name="teacher")


def test_teacher_runs_in_inference_mode_and_never_changes_during_fit():
    teacher = teacher_with_dropout_and_batchnorm()
    rng = np.random.default_rng(0)
    # BatchNorm statistics far from their initial (0, 1), so that a teacher
    # run on batch statistics would give visibly different outputs.
    teacher.get_layer("bn").moving_mean.assign(rng.normal(size=32).astype("float32"))
    teacher.get_layer("bn").moving_variance.assign(rng.uniform(2, 3, 32).astype("float32"))
    batch = rng.normal(size=(BATCH, FEATURES)).astype("float32") * 3 + 1
    labels = rng.integers(0, CLASSES, BATCH).astype("int32")
    expected = ops.convert_to_numpy(teacher(batch, training=False))
    # A training-mode call (Dropout at 0.5 on 32 units) differs for sure.
    # It is made on a copy: on the original it would move the BN statistics.
    twin = keras.models.clone_model(teacher)
    twin.set_weights(teacher.get_weights())
    assert not np.allclose(ops.convert_to_numpy(twin(batch, training=True)), expected)
    before = [ops.convert_to_numpy(w).copy() for w in teacher.weights]

    keras.utils.set_random_seed(2)
    student = keras.Sequential(
        [keras.Input((FEATURES,)), keras.layers.Dense(CLASSES)], name="student"
    )
    student_before = ops.convert_to_numpy(student.weights[0]).copy()
    capture = CaptureTeacher(name="capture")
    distiller = kd_keras.Distiller(student, teacher, losses=[SoftTargetKD(2.0), capture], alpha=0.5)
    distiller.compile(optimizer=keras.optimizers.SGD(0.1))
    recorder = RecordEachStep(capture)
    steps = 4  # the same batch every step
    distiller.fit(
        np.tile(batch, (steps, 1)),
        np.tile(labels, steps),
        batch_size=BATCH,
        epochs=2,
        shuffle=False,
        verbose=0,
        callbacks=[recorder],
    )

    assert len(recorder.steps) == 2 * steps
    for seen in recorder.steps:
        np.testing.assert_allclose(seen, expected, rtol=1e-5, atol=1e-5)
    for old, new in zip(before, teacher.weights):  # BN moving stats included
        np.testing.assert_array_equal(old, ops.convert_to_numpy(new))
    # The student did train, so the step ran with real gradients.
    assert not np.allclose(student_before, ops.convert_to_numpy(student.weights[0]))
