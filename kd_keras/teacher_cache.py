"""Offline distillation: run the teacher once, train the student many epochs.

With cached logits a distillation epoch costs about what a plain student
epoch costs, since the step never runs the teacher. The catch is pairing: the
cached logits must belong to the very image the student sees. NumPy inputs
are fine (Keras shuffles `x` and `y` together). A `tf.data` pipeline is
checked for random operations (shuffle, random augmentation, non-deterministic
parallel maps) and refused when it has any, since the teacher would have seen
other images (or another order) than the student will.
"""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np

from kd_keras.validation import ends_in_softmax

# Dataset ops that reorder or sample elements.
_RANDOM_DATASET_OPS = ("Shuffle", "RandomDataset", "SamplingDataset", "DirectedInterleave")
# Tensor ops that draw random numbers (augmentation, dropout in a map fn).
_RANDOM_TENSOR_OPS = ("Random", "Multinomial", "TruncatedNormal", "RandomShuffle")


def random_ops_in_dataset(dataset) -> list[str]:
    """Names of the random operations in a `tf.data` pipeline's graph.

    Includes non-deterministic parallel maps/interleaves (`deterministic=False`),
    whose element order varies from run to run.
    """
    import tensorflow as tf

    graph = tf.compat.v1.GraphDef.FromString(dataset._as_serialized_graph().numpy())
    nodes = list(graph.node)
    for function in graph.library.function:
        nodes.extend(function.node_def)
    found = []
    for node in nodes:
        op = node.op
        if any(key in op for key in _RANDOM_DATASET_OPS + _RANDOM_TENSOR_OPS):
            found.append(op)
        elif "deterministic" in node.attr and node.attr["deterministic"].s == b"false":
            found.append(f"{op}(deterministic=False)")
    return sorted(set(found))


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
):
    """Runs the teacher(s) once over `x` and returns their logits.

    Args:
        teacher: a model or a list of models (an ensemble: one array each).
        x: NumPy inputs (array or dict of arrays), or a *batched*
            `tf.data.Dataset` yielding `x` or `(x, y)` or `(x, y, w)`.
        batch_size: for NumPy inputs.
        teacher_outputs: `"auto"` detects a final softmax; probabilities are
            stored as log-probabilities, which soften exactly like logits.
        verbose: Keras progress bar setting.

    Returns:
        For NumPy inputs: an array `(n, classes)` (a list of arrays for
        several teachers), to pass as `y={"labels": y, "teacher_logits": t}`.
        For a dataset: a new dataset yielding
        `(x, {"labels": y, "teacher_logits": t})`; shuffle *after* this call.

    Example:

    ```python
    logits = kd_keras.cache_teacher_outputs(teacher, x_train)
    distiller = kd_keras.Distiller(student, teacher=None)
    distiller.compile(optimizer="adam", metrics=["accuracy"])
    distiller.fit(x_train, {"labels": y_train, "teacher_logits": logits},
                  epochs=10, shuffle=True)
    ```
    """
    teachers = _teacher_list(teacher)
    is_prob = [
        teacher_outputs == "probabilities" or (teacher_outputs == "auto" and ends_in_softmax(t))
        for t in teachers
    ]
    try:
        import tensorflow as tf

        is_dataset = isinstance(x, tf.data.Dataset)
    except ImportError:  # pragma: no cover
        is_dataset = False
    if not is_dataset:
        logits = [
            _to_logits(t.predict(x, batch_size=batch_size, verbose=verbose), p)
            for t, p in zip(teachers, is_prob)
        ]
        return logits if len(teachers) > 1 else logits[0]
    return _cache_dataset(teachers, is_prob, x, verbose)


def _cache_dataset(teachers, is_prob, dataset, verbose):
    import tensorflow as tf

    random_ops = random_ops_in_dataset(dataset)
    if random_ops:
        raise ValueError(
            f"The dataset has random operations {random_ops}: its images and "
            "order change from one pass to the next, so cached teacher logits "
            "would be paired with other images. Either cache on the "
            "deterministic part of the pipeline and shuffle/augment after "
            "(`ds = cache_teacher_outputs(teacher, ds_plain).shuffle(...)`), "
            "or train with the teacher online (kd_keras.Distiller(student, "
            "teacher) without cached logits), which recomputes every step."
        )
    x_only = dataset.map(
        lambda *e: keras.utils.unpack_x_y_sample_weight(e if len(e) > 1 else e[0])[0]
    )
    logits = [_to_logits(t.predict(x_only, verbose=verbose), p) for t, p in zip(teachers, is_prob)]
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
