"""Distil a CNN teacher into a ~2 k-parameter student on scikit-learn digits.

    python examples/digits_quickstart.py

Runs in about a minute on 2 CPU cores, on any Keras backend
(KERAS_BACKEND=tensorflow | jax | torch).
"""

import keras
import numpy as np

import kd_keras
from kd_keras.data import load_digits
from kd_keras.models import cnn_student, cnn_teacher

EPOCHS = 30
keras.utils.set_random_seed(0)
(x_train, y_train), (x_test, y_test) = load_digits()

# 1. A teacher trained as usual. Its last layer outputs logits (no softmax).
teacher = cnn_teacher((8, 8, 1), dense_units=128)
teacher.compile(
    optimizer="adam",
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    metrics=["accuracy"],
)
teacher.fit(x_train, y_train, epochs=EPOCHS, batch_size=32, verbose=0)

# 2. Run the teacher once over the training set: every distillation step then
#    costs a student step. `fit` shuffles images, labels and logits together.
teacher_logits = kd_keras.cache_teacher_outputs(teacher, x_train, verbose=0)

# 3. Distil: alpha * CE(labels) + (1 - alpha) * T^2 * KL(teacher_T || student_T).
student = cnn_student((8, 8, 1))
distiller = kd_keras.Distiller(
    student=student,
    teacher=teacher,
    losses=[kd_keras.losses.SoftTargetKD(temperature=4.0)],
    alpha=0.1,
)
distiller.compile(optimizer="adam", metrics=["accuracy"])
history = distiller.fit(
    x_train,
    {"labels": y_train, "teacher_logits": teacher_logits},
    epochs=EPOCHS,
    batch_size=32,
    verbose=0,
)
print("last epoch:", {k: round(v[-1], 4) for k, v in history.history.items()})


# 4. The trained student is a plain Keras model: no teacher inside.
def test_accuracy(model):
    predictions = model.predict(x_test, verbose=0)
    return float(np.mean(np.argmax(predictions, axis=-1) == y_test))


print(f"teacher:           {test_accuracy(teacher):.4f}  ({teacher.count_params():,} parameters)")
print(
    f"distilled student: {test_accuracy(distiller.student):.4f}  "
    f"({distiller.student.count_params():,} parameters)"
)
