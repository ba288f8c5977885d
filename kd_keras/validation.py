"""Checks that turn common distillation mistakes into errors before the
first training step, each saying how to fix it."""

from __future__ import annotations

import keras
import numpy as np


def check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(
            f"alpha must be in [0, 1], got {alpha}. alpha weights the loss on "
            "the labels and (1 - alpha) the distillation terms; 0.1 to 0.5 is "
            "usual."
        )
    return alpha


def _is_softmax(fn) -> bool:
    return fn is keras.activations.softmax or getattr(fn, "__name__", "") == "softmax"


def ends_in_softmax(model: keras.layers.Layer) -> bool:
    """True when the last layer of a Sequential/Functional model applies a
    softmax (a `Softmax` layer, `Activation("softmax")`, or any layer built
    with `activation="softmax"`)."""
    layers = getattr(model, "layers", None)
    if not layers:
        return False
    last = layers[-1]
    if isinstance(last, keras.layers.Softmax):
        return True
    if isinstance(last, keras.Model):
        return ends_in_softmax(last)
    return _is_softmax(getattr(last, "activation", None))


def output_classes(output) -> int:
    output = keras.tree.flatten(output)[0]
    return int(output.shape[-1])


def looks_like_probabilities(values: np.ndarray) -> bool:
    """Rows in [0, 1] that sum to 1: a softmax output, not logits."""
    values = np.asarray(values, dtype="float64")
    if values.size == 0 or values.min() < 0.0 or values.max() > 1.0:
        return False
    return bool(np.allclose(values.sum(axis=-1), 1.0, atol=1e-3))


def _sample_batch(x, y):
    """A NumPy sample of `(x, y)` for checking, without consuming a one-shot
    iterator. Returns `(None, None)` when the data cannot be peeked."""
    try:
        import tensorflow as tf

        if isinstance(x, tf.data.Dataset):
            batch = next(iter(x.take(1)))
            bx, by, _ = keras.utils.unpack_x_y_sample_weight(batch)
            return keras.tree.map_structure(np.asarray, bx), (
                None if by is None else keras.tree.map_structure(np.asarray, by)
            )
    except ImportError:  # pragma: no cover - TF is optional on jax/torch
        pass
    if isinstance(x, keras.utils.PyDataset):
        bx, by, _ = keras.utils.unpack_x_y_sample_weight(x[0])
        return bx, by
    if isinstance(x, (np.ndarray, dict, list, tuple)):
        return x, y
    return None, None


def _check_labels(labels, label_mask, num_classes: int, where: str):
    labels = np.asarray(labels)
    if labels.size == 0:
        return
    if label_mask is not None:
        labels = labels[np.asarray(label_mask).reshape(labels.shape[: np.ndim(label_mask)]) > 0]
    if labels.ndim and labels.shape[-1:] == (num_classes,) and labels.dtype.kind == "f":
        return  # one-hot targets, for student_loss="categorical_crossentropy"
    if labels.dtype.kind == "f" and not np.all(np.isfinite(labels)):
        raise ValueError(f"{where}: labels contain NaN or inf.")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{where}: labels range over [{labels.min()}, {labels.max()}] but the "
            f"student predicts {num_classes} classes (valid labels 0..{num_classes - 1}). "
            "Remap the labels, or give the student and teacher as many outputs "
            "as there are classes. Unlabeled samples go in y['label_mask'] = 0."
        )


def _check_inputs_finite(x, where: str):
    for leaf in keras.tree.flatten(x):
        leaf = np.asarray(leaf)
        if leaf.dtype.kind == "f" and not np.all(np.isfinite(leaf)):
            bad = np.argwhere(~np.isfinite(leaf.reshape(len(leaf), -1)))[0][0]
            raise ValueError(
                f"{where}: the inputs contain NaN or inf (first at sample {bad}). "
                "Clean or impute them before training."
            )


def _check_student_outputs_logits(student, sample_x):
    """Catches a softmax inside a subclassed student's `call`, which the
    layer inspection at construction cannot see."""
    head = keras.tree.map_structure(lambda a: np.asarray(a)[:8], sample_x)
    outputs = keras.ops.convert_to_numpy(keras.tree.flatten(student(head, training=False))[0])
    if looks_like_probabilities(outputs):
        raise ValueError(
            f"The student '{student.name}' outputs probabilities (rows in [0, 1] "
            "summing to 1), but distillation needs logits. Remove the softmax "
            "from its last layer / call(); kd_keras applies softmax itself."
        )


def check_fit_data(distiller, x, y, validation_data=None) -> None:
    """Checks a sample of the training (and validation) data against the
    distiller: labels in range, cached logits shaped like the student's
    outputs and not probabilities, finite inputs."""
    from kd_keras.distiller import unpack_targets

    num_classes = (
        output_classes(distiller.student.outputs)
        if getattr(distiller.student, "outputs", None)
        else None
    )
    pairs = [("training data", x, y)]
    if isinstance(validation_data, (tuple, list)) and len(validation_data) >= 2:
        pairs.append(("validation_data", validation_data[0], validation_data[1]))
    elif validation_data is not None:
        pairs.append(("validation_data", validation_data, None))
    for where, data_x, data_y in pairs:
        sample_x, sample_y = _sample_batch(data_x, data_y)
        if sample_x is None:
            continue
        _check_inputs_finite(sample_x, where)
        if where == "training data" and any(t.reads_logits for t in distiller.distillation_terms):
            _check_student_outputs_logits(distiller.student, sample_x)
        labels, cached, label_mask, _ = unpack_targets(sample_y)
        if num_classes is not None and labels is not None:
            _check_labels(labels, label_mask, num_classes, where)
        if cached is not None:
            for i, logits in enumerate(cached if isinstance(cached, (list, tuple)) else [cached]):
                logits = np.asarray(logits)
                if num_classes is not None and logits.shape[-1] != num_classes:
                    raise ValueError(
                        f"{where}: cached teacher_logits[{i}] have {logits.shape[-1]} "
                        f"classes, the student predicts {num_classes}."
                    )
                if looks_like_probabilities(logits):
                    raise ValueError(
                        f"{where}: cached teacher_logits[{i}] look like probabilities "
                        "(rows in [0, 1] summing to 1). Cache logits, or pass "
                        "np.log(probabilities): kd_keras.cache_teacher_outputs does "
                        "this for teachers ending in softmax."
                    )
                if not np.all(np.isfinite(logits)):
                    raise ValueError(f"{where}: cached teacher_logits[{i}] contain NaN or inf.")
        elif not distiller.teachers:
            raise ValueError(
                f"{where}: this Distiller has no teacher, so y must be a dict with "
                "'teacher_logits' (see kd_keras.cache_teacher_outputs)."
            )
