"""Offline distillation: run the teacher once, train the student many epochs.

With cached logits a distillation epoch costs about what a plain student
epoch costs, since the step never runs the teacher. The catch is pairing: the
cached logits must belong to the very image the student sees. NumPy inputs
are fine (Keras shuffles `x` and `y` together). A `tf.data` pipeline is
checked for random operations (shuffle, random augmentation, non-deterministic
parallel maps, Python ops such as `tf.numpy_function` or `from_generator`,
whose output cannot be checked) and refused when it has any, since the
teacher would have seen other images (or another order) than the student
will. Shuffling *after* caching keeps the pairs; augmenting after caching does
not (the logits belong to the un-augmented image), and `Distiller.fit`
refuses it.
"""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np

from kd_keras.validation import (
    ends_in_softmax,
    looks_like_probabilities,
    random_ops_in_dataset,
    select_output,
)


def _teacher_list(teacher):
    return list(teacher) if isinstance(teacher, (list, tuple)) else [teacher]


def _to_logits(outputs: np.ndarray, is_probability: bool) -> np.ndarray:
    outputs = np.asarray(outputs, dtype="float32")
    return np.log(np.maximum(outputs, 1e-30)) if is_probability else outputs


def cache_teacher_outputs(
    teacher: keras.Model | Sequence[keras.Model],
    x,
    batch_size: int = 256,
    teacher_outputs: str = "auto",
    verbose: str | int = "auto",
    teacher_output: str | int | None = None,
    assume_deterministic: bool = False,
):
    """Runs the teacher(s) once over `x` and returns their logits.

    Args:
        teacher: a model or a list of models (an ensemble: one array each).
        x: NumPy inputs (array or dict of arrays), or a *batched*
            `tf.data.Dataset` yielding `x` or `(x, y)` or `(x, y, w)`.
        batch_size: for NumPy inputs.
        teacher_outputs: `"auto"` detects a softmax (a final softmax layer,
            or outputs that are rows in [0, 1] summing to 1); probabilities
            are stored as log-probabilities, which soften exactly like logits.
        verbose: Keras progress bar setting.
        teacher_output: for a teacher with several outputs, the name or
            index of the one holding the class logits.
        assume_deterministic: accept a dataset with Python ops
            (`tf.numpy_function`, `from_generator`) on your word that it
            yields the same elements in the same order on every pass.

    Returns:
        For NumPy inputs: an array `(n, classes)` (a list of arrays for
        several teachers), to pass as `y={"labels": y, "teacher_logits": t}`.
        For a dataset: a new dataset yielding
        `(x, {"labels": y, "teacher_logits": t})`; shuffle *after* this call.

    Example:

    ```python
    x_train = np.random.rand(64, 8).astype("float32")
    y_train = np.random.randint(0, 3, size=64)
    teacher = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)]
    )
    student = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])

    logits = kd_keras.cache_teacher_outputs(teacher, x_train)
    distiller = kd_keras.Distiller(student, teacher=None)
    distiller.compile(optimizer="adam", metrics=["accuracy"])
    distiller.fit(x_train, {"labels": y_train, "teacher_logits": logits},
                  epochs=2, shuffle=True, verbose=0)
    ```
    """
    if teacher_outputs not in ("auto", "logits", "probabilities"):
        raise ValueError(
            "teacher_outputs must be 'auto', 'logits' or 'probabilities', "
            f"got {teacher_outputs!r}."
        )
    teachers = _teacher_list(teacher)
    try:
        import tensorflow as tf

        is_dataset = isinstance(x, tf.data.Dataset)
    except ImportError:  # pragma: no cover
        is_dataset = False
    inputs = x
    if is_dataset:
        _check_deterministic(x, assume_deterministic)
        # Each element as a 1-tuple: `predict` reads a bare tuple element as
        # `(x, y)`, which would split a multi-input `x = (a, b)`.
        inputs = x.map(
            lambda *e: (keras.utils.unpack_x_y_sample_weight(e if len(e) > 1 else e[0])[0],)
        )
    logits = [
        _logits_of(
            t,
            t.predict(inputs, batch_size=None if is_dataset else batch_size, verbose=verbose),
            teacher_outputs,
            teacher_output,
        )
        for t in teachers
    ]
    if not is_dataset:
        return logits if len(teachers) > 1 else logits[0]
    return _attach_to_dataset(x, inputs, logits)


def _logits_of(teacher, outputs, teacher_outputs: str, teacher_output) -> np.ndarray:
    outputs = np.asarray(select_output(teacher, outputs, teacher_output), dtype="float32")
    is_probability = teacher_outputs == "probabilities" or (
        teacher_outputs == "auto"
        and (ends_in_softmax(teacher) or looks_like_probabilities(outputs[:256]))
    )
    return _to_logits(outputs, is_probability)


def _check_deterministic(dataset, assume_deterministic: bool) -> None:
    random_ops = random_ops_in_dataset(dataset)
    if assume_deterministic:
        random_ops = [op for op in random_ops if not any(k in op for k in ("PyFunc", "Numpy"))]
    if random_ops:
        raise ValueError(
            f"The dataset has random operations {random_ops} (or Python ops, whose "
            "output cannot be checked): its images and order may change from one "
            "pass to the next, so cached teacher logits would be paired with other "
            "images. Either cache on the "
            "deterministic part of the pipeline and only shuffle after "
            "(`ds = cache_teacher_outputs(teacher, ds_plain).shuffle(...)`; "
            "augmenting after caching would pair augmented images with the "
            "logits of un-augmented ones), or train with the teacher online "
            "(kd_keras.Distiller(student, teacher) without cached logits), which "
            "recomputes every step. A Python op (tf.numpy_function, "
            "from_generator) that yields the same elements every pass can be "
            "vouched for with assume_deterministic=True."
        )


def _attach_to_dataset(dataset, x_only, logits):
    """`dataset` with each batch's cached logits added to its target."""
    import tensorflow as tf

    sizes = [int(tf.shape(keras.tree.flatten(b)[0])[0]) for b in x_only]
    if len(set(sizes[:-1])) > 1 or (len(sizes) > 1 and sizes[-1] > sizes[0]):
        raise ValueError(
            f"The dataset's batches have uneven sizes {sorted(set(sizes))}; batch it "
            "with ds.batch(n) (the last batch may be smaller) before caching."
        )
    batch = sizes[0]
    cached = tf.data.Dataset.from_tensor_slices(
        tuple(logits) if len(logits) > 1 else logits[0]
    ).batch(batch)

    def attach(element, teacher_logits):
        bx, by, bw = keras.utils.unpack_x_y_sample_weight(element)
        # An ensemble's logits stay a tuple: tf.data stacks a list into one
        # (teachers, batch, classes) tensor, which the Distiller would read
        # as a single teacher.
        target = {"teacher_logits": teacher_logits}
        if isinstance(by, dict):
            target.update({k: v for k, v in by.items() if k != "teacher_logits"})
        elif by is not None:
            target["labels"] = by
        return (bx, target) if bw is None else (bx, target, bw)

    return tf.data.Dataset.zip((dataset, cached)).map(lambda e, t: attach(e, t))
