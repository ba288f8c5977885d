"""Checks that turn common distillation mistakes into errors before the
first training step, each saying how to fix it."""

from __future__ import annotations

import keras
import numpy as np

#: Keys a target dict may hold. `teacher_logits` makes the step skip the
#: teacher (offline KD); `label_mask` marks which samples have a label;
#: `padding_mask` marks real tokens of (batch, time, classes) outputs.
TARGET_KEYS = ("labels", "teacher_logits", "label_mask", "padding_mask")

# Dataset ops that reorder or sample elements.
_RANDOM_DATASET_OPS = ("Shuffle", "RandomDataset", "SamplingDataset", "DirectedInterleave")
# Tensor ops that draw random numbers (augmentation, dropout in a map fn).
_RANDOM_TENSOR_OPS = ("Random", "Multinomial", "TruncatedNormal", "RandomShuffle")
# Ops that run arbitrary Python (`tf.numpy_function`, `tf.py_function`,
# `Dataset.from_generator`): what they return cannot be read from the graph.
_PYTHON_OPS = ("PyFunc", "EagerPyFunc", "NumpyFunction")
# Dataset ops that apply a function to each element (an augmentation).
_MAP_DATASET_OPS = (
    "MapDataset",
    "ParallelMapDataset",
    "ParallelMapDatasetV2",
    "MapAndBatchDataset",
)


def unpack_targets(y):
    """`(labels, teacher_logits, label_mask, padding_mask)` from a Distiller
    target: plain labels, a dict with keys among `TARGET_KEYS`, or None."""
    if y is None:
        return None, None, None, None
    if isinstance(y, dict):
        unknown = sorted(set(y) - set(TARGET_KEYS))
        if unknown:
            raise ValueError(
                f"Unknown target keys {unknown}: a Distiller target is either "
                f"the labels or a dict with keys among {list(TARGET_KEYS)}."
            )
        return tuple(y.get(key) for key in TARGET_KEYS)
    return y, None, None, None


def single_sample_weight(sample_weight):
    """Keras copies a `sample_weight` array into a dict shaped like a dict
    `y` (one copy per target key); the Distiller weighs samples, so any copy
    is the weight."""
    if isinstance(sample_weight, dict):
        present = [w for w in sample_weight.values() if w is not None]
        return present[0] if present else None
    return sample_weight


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


def output_names(model: keras.layers.Layer, outputs) -> list:
    """Names of the outputs `model` returned: the keys of a dict, the
    model's `output_names` for a list (indices when it has none)."""
    if isinstance(outputs, dict):
        return list(outputs)
    names = list(getattr(model, "output_names", None) or [])
    return names if len(names) == len(outputs) else list(range(len(outputs)))


def select_output(model: keras.layers.Layer, outputs, choice: str | int | None = None):
    """The one output of `model` that distillation reads.

    A model with several outputs (a main and an auxiliary head, a keras-hub
    backbone's `sequence_output` and `pooled_output`) needs `choice`: an
    output name or a position. A single output is returned as is.

    Example:

    ```python
    logits = select_output(teacher, teacher(x), "main")
    ```
    """
    if not isinstance(outputs, (list, tuple, dict)):
        if choice not in (None, 0):
            raise ValueError(
                f"teacher_output={choice!r}, but '{model.name}' has a single output; "
                "leave teacher_output unset."
            )
        return outputs
    names = output_names(model, outputs)
    if choice is None:
        if len(outputs) == 1:
            return next(iter(outputs.values())) if isinstance(outputs, dict) else outputs[0]
        raise ValueError(
            f"'{model.name}' has {len(outputs)} outputs {names}: say which one holds "
            "the class logits with teacher_output=<name or index>, e.g. "
            f"teacher_output={names[0]!r}."
        )
    if isinstance(outputs, dict):
        keys = list(outputs)
        if isinstance(choice, int) and not isinstance(choice, bool) and 0 <= choice < len(keys):
            return outputs[keys[choice]]
        if choice in outputs:
            return outputs[choice]
    else:
        if isinstance(choice, int) and not isinstance(choice, bool) and 0 <= choice < len(outputs):
            return outputs[choice]
        if choice in names:
            return outputs[names.index(choice)]
    raise ValueError(
        f"teacher_output={choice!r} is not an output of '{model.name}'; its outputs "
        f"are {names} (pass a name or an index 0..{len(outputs) - 1})."
    )


def check_student_loss(loss) -> None:
    """Refuses a probability-space loss on the student's logits: a Keras
    cross-entropy built with `from_logits=False` would read logits as
    probabilities and optimize the wrong quantity without any error."""
    config = loss.get_config() if hasattr(loss, "get_config") else {}
    if config.get("from_logits") is False:
        raise ValueError(
            f"student_loss={type(loss).__name__}(from_logits=False), but the "
            "student outputs logits. Pass from_logits=True, e.g. "
            f"keras.losses.{type(loss).__name__}(from_logits=True)."
        )
    name = getattr(loss, "__name__", "")
    if not isinstance(loss, keras.losses.Loss) and "crossentropy" in name:
        raise ValueError(
            f"student_loss={name} reads probabilities, but the student outputs "
            f"logits. Pass a Keras loss object with from_logits=True (e.g. "
            "keras.losses.SparseCategoricalCrossentropy(from_logits=True)), or the "
            "string 'sparse_categorical_crossentropy' / 'categorical_crossentropy'."
        )


def looks_like_probabilities(values: np.ndarray) -> bool:
    """Rows in [0, 1] that sum to 1: a softmax output, not logits."""
    values = np.asarray(values, dtype="float64")
    if values.size == 0 or values.min() < 0.0 or values.max() > 1.0:
        return False
    return bool(np.allclose(values.sum(axis=-1), 1.0, atol=1e-3))


def _dataset_graph(dataset):
    import tensorflow as tf

    graph = tf.compat.v1.GraphDef.FromString(dataset._as_serialized_graph().numpy())
    return graph, {f.signature.name: f for f in graph.library.function}


def random_ops_in_dataset(dataset, tensor_ops_only: bool = False) -> list[str]:
    """Names of the random operations in a `tf.data` pipeline's graph.

    Includes non-deterministic parallel maps/interleaves (`deterministic=False`),
    whose element order varies from run to run, and Python ops
    (`tf.numpy_function`, `from_generator`), which may return something else
    on every pass. With `tensor_ops_only`, only ops that change the elements
    themselves count (random augmentation, Python ops inside a `map`), not
    the ones that reorder them.

    Example:

    ```python
    import tensorflow as tf

    random_ops_in_dataset(tf.data.Dataset.range(4).shuffle(4))  # ['ShuffleDatasetV3']
    ```
    """
    graph, functions = _dataset_graph(dataset)
    nodes = list(graph.node)
    for function in functions.values():
        nodes.extend(function.node_def)
    found = []
    for node in nodes:
        op = node.op
        if any(key in op for key in _RANDOM_TENSOR_OPS):
            found.append(op)
        elif tensor_ops_only:
            continue
        elif any(key in op for key in _RANDOM_DATASET_OPS + _PYTHON_OPS):
            found.append(op)
        elif "deterministic" in node.attr and node.attr["deterministic"].s == b"false":
            found.append(f"{op}(deterministic=False)")
    if tensor_ops_only:
        # A Python op inside a map transforms elements (a
        # `tf.numpy_function` augmentation); one in a generator source
        # merely produces them.
        for node in graph.node:
            if node.op in _MAP_DATASET_OPS and "f" in node.attr:
                body = functions.get(node.attr["f"].func.name)
                for inner in body.node_def if body is not None else ():
                    if any(key in inner.op for key in _PYTHON_OPS):
                        found.append(f"{node.op}({inner.op})")
    return sorted(set(found))


class EmptyDataError(ValueError):
    """The training or validation data holds no sample."""


def _sample_batch(x, y, where: str):
    """A NumPy sample of `(x, y)` for checking, without consuming a one-shot
    iterator. Returns `(None, None)` when the data cannot be peeked; raises
    when it holds no sample."""
    empty = EmptyDataError(
        f"{where} is empty (0 samples): check the data loading, the split, or "
        "a filter that drops everything."
    )
    try:
        import tensorflow as tf

        if isinstance(x, tf.data.Dataset):
            batch = next(iter(x.take(1)), None)
            if batch is None:
                raise empty
            bx, by, _ = keras.utils.unpack_x_y_sample_weight(batch)
            bx = keras.tree.map_structure(np.asarray, bx)
            if len(keras.tree.flatten(bx)[0]) == 0:
                raise empty
            return bx, (None if by is None else keras.tree.map_structure(np.asarray, by))
    except ImportError:  # pragma: no cover - TF is optional on jax/torch
        pass
    if isinstance(x, keras.utils.PyDataset):
        if x.num_batches == 0:
            raise empty
        bx, by, _ = keras.utils.unpack_x_y_sample_weight(x[0])
        return bx, by
    if isinstance(x, (np.ndarray, dict, list, tuple)):
        leaves = keras.tree.flatten(x)
        if not leaves or len(leaves[0]) == 0:
            raise empty
        return x, y
    return None, None


def is_one_hot(labels_shape, output_rank: int, num_classes: int) -> bool:
    """Labels shaped like the outputs (`(batch, classes)` for `(batch,
    classes)` logits) are one-hot / soft labels; one axis fewer, sparse."""
    return (
        len(labels_shape) == output_rank
        and labels_shape[-1] == num_classes
        and num_classes > 1
    )


def _check_labels(labels, label_mask, num_classes: int, output_rank: int, where: str):
    labels = np.asarray(labels)
    if labels.dtype.kind in "USO":
        raise ValueError(
            f"{where}: labels are strings ({labels.flat[0]!r}, ...); the student "
            "predicts class indices. Map them to integers 0..classes-1, e.g. "
            "classes, y = np.unique(labels, return_inverse=True), or "
            "keras.layers.StringLookup(num_oov_indices=0)."
        )
    if labels.size == 0:
        return
    if labels.dtype.kind not in "biuf":
        raise ValueError(
            f"{where}: labels of dtype {labels.dtype} are not class indices; pass "
            "integers 0..classes-1 (or one-hot floats)."
        )
    if labels.dtype.kind == "f" and not np.all(np.isfinite(labels)):
        raise ValueError(f"{where}: labels contain NaN or inf.")
    if is_one_hot(labels.shape, output_rank, num_classes):
        return  # one-hot / soft targets: categorical cross-entropy
    if label_mask is not None:
        labels = labels[np.asarray(label_mask).reshape(labels.shape[: np.ndim(label_mask)]) > 0]
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


def head_of(x, n: int = 8):
    """The first `n` samples of NumPy inputs (an array or a structure)."""
    return keras.tree.map_structure(lambda a: np.asarray(a)[:n], x)


def _check_student_outputs_logits(student, outputs):
    """Catches a softmax inside a subclassed student's `call`, which the
    layer inspection at construction cannot see."""
    if looks_like_probabilities(keras.ops.convert_to_numpy(outputs)):
        raise ValueError(
            f"The student '{student.name}' outputs probabilities (rows in [0, 1] "
            "summing to 1), but distillation needs logits. Remove the softmax "
            "from its last layer / call(); kd_keras applies softmax itself."
        )


def teachers_output_probabilities(teachers, sample_x, teacher_output=None) -> list[bool]:
    """For each teacher, whether its outputs on `sample_x` are probabilities
    (a softmax inside `call`, or `keras.ops.softmax` as the last op of a
    Functional model: neither is visible from the layers)."""
    flags = []
    for teacher in teachers:
        outputs = select_output(teacher, teacher(head_of(sample_x), training=False), teacher_output)
        flags.append(looks_like_probabilities(keras.ops.convert_to_numpy(outputs)))
    return flags


def _check_cached_pairing(x, where: str) -> None:
    """Cached logits belong to the un-augmented image: a random or Python
    map applied after caching would pair them with another image."""
    try:
        import tensorflow as tf
    except ImportError:  # pragma: no cover
        return
    if not isinstance(x, tf.data.Dataset):
        return
    changing = random_ops_in_dataset(x, tensor_ops_only=True)
    if changing:
        raise ValueError(
            f"{where}: the dataset carries cached teacher_logits but changes its "
            f"images after caching ({changing}): each image would be paired with the "
            "logits of its un-augmented original. Augment online instead "
            "(kd_keras.Distiller(student, teacher) without cached logits), or "
            "cache the teacher on the augmented images you will train on. "
            "Shuffling after caching is fine."
        )


def check_fit_data(distiller, x, y, validation_data=None):
    """Checks a sample of the training (and validation) data against the
    distiller: data not empty, labels numeric and in range, cached logits
    shaped like the student's outputs, not probabilities and not paired with
    augmented images, finite inputs.

    Returns a NumPy sample `(x, y)` of the training data (`(None, None)`
    when the data cannot be peeked), for checks that run the models on it.
    """
    pairs = [("training data", x, y)]
    if isinstance(validation_data, (tuple, list)) and len(validation_data) >= 2:
        pairs.append(("validation_data", validation_data[0], validation_data[1]))
    elif validation_data is not None:
        pairs.append(("validation_data", validation_data, None))
    training_sample = None, None
    for where, data_x, data_y in pairs:
        sample_x, sample_y = _sample_batch(data_x, data_y, where)
        if sample_x is None:
            continue
        _check_inputs_finite(sample_x, where)
        outputs = keras.tree.flatten(distiller.student(head_of(sample_x), training=False))[0]
        num_classes, output_rank = int(outputs.shape[-1]), len(outputs.shape)
        if where == "training data":
            training_sample = sample_x, sample_y
            if any(t.reads_logits for t in distiller.distillation_terms):
                _check_student_outputs_logits(distiller.student, outputs)
        labels, cached, label_mask, _ = unpack_targets(sample_y)
        if labels is not None:
            _check_labels(labels, label_mask, num_classes, output_rank, where)
        if cached is not None:
            _check_cached_pairing(data_x, where)
            for i, logits in enumerate(cached if isinstance(cached, (list, tuple)) else [cached]):
                logits = np.asarray(logits)
                if logits.shape[-1] != num_classes:
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
    return training_sample
