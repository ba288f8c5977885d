"""`Distiller`: train a student from one or more frozen teachers with `fit`."""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np
from keras import ops

from kd_keras.callbacks import INVALID_BATCH_KEY, NaNGuard
from kd_keras.features import record_outputs
from kd_keras.losses.base import DistillationLoss, weighted_mean
from kd_keras.losses.soft_target import SoftTargetKD
from kd_keras.validation import (
    TARGET_KEYS,
    check_alpha,
    check_fit_data,
    check_student_loss,
    ends_in_softmax,
    is_one_hot,
    output_classes,
    select_output,
    single_sample_weight,
    teachers_output_probabilities,
    unpack_targets,
)

try:  # Keras divides the loss by the replica count under tf.distribute.
    from keras.src.losses.loss import scale_loss_for_distribution
except ImportError:  # pragma: no cover - older/newer private layout

    def scale_loss_for_distribution(value):
        return value


__all__ = [
    "TARGET_KEYS",
    "Distiller",
    "combine_weights",
    "share_tokenizer",
    "tokenizer_of",
    "unpack_targets",
]

_PROBABILITY_FLOOR = 1e-30
_CATEGORICAL_FROM_LOGITS = keras.losses.CategoricalCrossentropy(from_logits=True)
#: Codes summed into the per-batch invalid-data flag (see `NaNGuard`).
_BAD_INPUTS, _BAD_LABELS = 1.0, 2.0


class _StepState:
    """Tensors handed from `call`/`train_step` to `compute_loss` within one
    traced step. A plain object, so Keras does not track or save it."""

    def __init__(self):
        self.student_features = None
        self.teacher = None
        self.inputs_finite = None
        self.in_train_step = False


def _finite_inputs(x):
    """`(x with NaN/inf replaced by 0, whether all of x was finite)`.

    A NaN input makes every gradient NaN (even through a zeroed loss, as
    0 * NaN = NaN in the backward pass), which would ruin the weights in one
    step; zeros keep the bad batch harmless until the guard stops the run.
    """
    finite = None
    leaves = []
    for leaf in keras.tree.flatten(x):
        if "float" in str(getattr(leaf, "dtype", "")):
            ok = ops.isfinite(leaf)
            all_ok = ops.all(ok)
            finite = all_ok if finite is None else ops.logical_and(finite, all_ok)
            leaf = ops.where(ok, leaf, ops.zeros_like(leaf))
        leaves.append(leaf)
    return keras.tree.pack_sequence_as(x, leaves), finite


def _shaped_like(mask, labels):
    """A sample or position mask as booleans broadcastable to `labels`."""
    mask = ops.cast(mask, "bool")
    if len(mask.shape) > len(labels.shape):  # (batch, 1)
        mask = ops.reshape(mask, ops.shape(labels))
    for _ in range(len(labels.shape) - len(mask.shape)):
        mask = ops.expand_dims(mask, -1)
    return mask


def combine_weights(*weights):
    """Product of per-sample `(batch,)` and per-position `(batch, time)`
    weights, or None when all are None."""
    weights = [ops.cast(w, "float32") for w in weights if w is not None]
    if not weights:
        return None
    rank = max(len(w.shape) for w in weights)
    total = None
    for w in weights:
        w = ops.reshape(w, tuple(ops.shape(w)) + (1,) * (rank - len(w.shape)))
        total = w if total is None else total * w
    return total


def tokenizer_of(model):
    """The tokenizer of a keras-hub model's preprocessor, or None."""
    preprocessor = getattr(model, "preprocessor", None)
    return getattr(preprocessor, "tokenizer", None)


def share_tokenizer(student, teachers: Sequence) -> None:
    """Points the student's preprocessor at the first teacher's tokenizer."""
    tokenizers = [tokenizer_of(t) for t in teachers if tokenizer_of(t) is not None]
    preprocessor = getattr(student, "preprocessor", None)
    if not tokenizers or preprocessor is None:
        raise ValueError(
            "shared_tokenizer=True needs a student and a teacher that both have a "
            "keras-hub preprocessor with a tokenizer."
        )
    preprocessor.tokenizer = tokenizers[0]


@keras.saving.register_keras_serializable(package="kd_keras")
class Distiller(keras.Model):
    """Knowledge distillation as a `keras.Model`: `compile` and `fit` it like
    any model; it trains `student` and leaves the teachers frozen.

    The loss of a batch is

        alpha · student_loss(labels, student(x))
        + (1 − alpha) · Σ_k weight_k · term_k(teacher(x), student(x))

    where the terms are `kd_keras.losses` layers (soft targets with T², DKD,
    FitNets hints, attention transfer, RKD, ...). Every term and the student
    loss appear in the progress bar and in `history` as `<name>_loss`.

    Targets can be plain labels, or a dict with keys
    - `labels`: the labels (omit for unlabeled transfer data);
    - `teacher_logits`: cached teacher outputs (see
      `kd_keras.cache_teacher_outputs`); the step then never runs the teacher;
    - `label_mask`: 1 where a sample has a label, 0 where it does not (those
      samples learn from the teacher alone);
    - `padding_mask`: `(batch, time)`, 1 on real tokens, for token-level KD.
    Passing no `y` at all distils on unlabeled data.

    Args:
        student: the model to train. Its outputs must be logits (no softmax).
        teacher: a trained model, a list of models (a weighted ensemble), or
            `None` when every batch carries cached `teacher_logits`.
        losses: distillation terms; default `[SoftTargetKD(temperature=4)]`.
        alpha: weight of the student's own loss on the labels, in [0, 1].
        teacher_weights: ensemble weights, one per teacher (default equal).
        student_loss: a Keras loss for the labels, on logits; the default is
            cross-entropy on logits, sparse for class indices and categorical
            for one-hot labels (labels shaped like the outputs).
        teacher_outputs: `"auto"` (detect a softmax: a final softmax layer, or
            outputs on the first batch that are rows in [0, 1] summing to 1),
            `"logits"` or `"probabilities"`; probabilities are turned into
            log-probabilities, which soften exactly like logits.
        teacher_output: for teachers with several outputs (a main and an
            auxiliary head, a list or a dict), the name or index of the one
            holding the class logits.
        shared_tokenizer: `None` (default) keeps the models as given; `True`
            gives the student's keras-hub preprocessor the teacher's tokenizer
            object. `get_config` records it when the two share one (as
            `kd_keras.text.build_student` makes them), because a `.keras` file
            stores that tokenizer's vocabulary once and two separate copies
            could not both be restored.

    Terms that read more than the models' outputs (the attention and
    hidden-state terms of `kd_keras.text`) have an `attach(teacher, student)`
    method and an `attached` property: the Distiller attaches them to its
    teacher and student when built, and again when loaded from a `.keras`
    file. Inputs may be any structure the models take, such as the dict of
    token ids, segment ids and padding mask of a keras-hub model; a
    `padding_mask` input then masks token-level terms.

    Example:

    ```python
    x_train = np.random.rand(64, 8).astype("float32")
    y_train = np.random.randint(0, 3, size=64)
    teacher = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)]
    )
    student = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])

    distiller = kd_keras.Distiller(
        student=student,
        teacher=teacher,
        losses=[kd_keras.losses.SoftTargetKD(temperature=4.0)],
        alpha=0.1,
    )
    distiller.compile(optimizer="adam", metrics=["accuracy"])
    distiller.fit(x_train, y_train, epochs=2, validation_split=0.1, verbose=0)
    distiller.student.save("student.keras")
    ```
    """

    def __init__(
        self,
        student: keras.Model,
        teacher: keras.Model | Sequence[keras.Model] | None = None,
        losses: Sequence[DistillationLoss] | None = None,
        alpha: float = 0.1,
        teacher_weights: Sequence[float] | None = None,
        student_loss="sparse_categorical_crossentropy",
        teacher_outputs: str = "auto",
        teacher_output: str | int | None = None,
        name: str = "distiller",
        shared_tokenizer: bool | None = None,
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        if not isinstance(student, keras.layers.Layer):
            raise TypeError(f"student must be a Keras model, got {type(student).__name__}.")
        teachers = (
            []
            if teacher is None
            else list(teacher)
            if isinstance(teacher, (list, tuple))
            else [teacher]
        )
        for t in teachers:
            if not isinstance(t, keras.layers.Layer):
                raise TypeError(f"teacher must be a Keras model, got {type(t).__name__}.")
            if t is student:
                raise ValueError(
                    "The teacher is the student itself. For self-distillation "
                    "use kd_keras.self_distillation(student), which freezes a "
                    "snapshot of it."
                )
        if teacher_outputs not in ("auto", "logits", "probabilities"):
            raise ValueError(
                "teacher_outputs must be 'auto', 'logits' or 'probabilities', "
                f"got {teacher_outputs!r}."
            )
        losses = [SoftTargetKD(temperature=4.0)] if losses is None else list(losses)
        if not losses:
            raise ValueError("losses is empty: give at least one distillation term.")
        for term in losses:
            if not isinstance(term, DistillationLoss):
                raise TypeError(
                    f"{term!r} is not a kd_keras.losses.DistillationLoss; wrap "
                    "custom maths in a DistillationLoss subclass."
                )
        if len({t.name for t in losses}) != len(losses):
            raise ValueError(
                f"Distillation terms need distinct names, got {[t.name for t in losses]}: "
                "pass name=... to tell them apart in the logs."
            )

        attachable = [t for t in losses if callable(getattr(t, "attach", None))]
        if attachable and len(teachers) != 1:
            raise ValueError(
                f"The terms {[t.name for t in attachable]} compare one teacher with "
                f"the student (they attach to both models); got {len(teachers)} "
                "teachers. Pass a single teacher model."
            )
        if shared_tokenizer:
            share_tokenizer(student, teachers)

        self.student = student
        self.teachers = teachers
        self.distillation_terms = losses
        self._alpha_init = check_alpha(alpha)
        self.alpha = keras.Variable(
            self._alpha_init, trainable=False, dtype="float32", name="alpha"
        )
        self._teacher_weights = (
            None if teacher_weights is None else [float(w) for w in teacher_weights]
        )
        if self._teacher_weights is not None and len(self._teacher_weights) != max(
            len(teachers), 1
        ):
            raise ValueError(
                f"{len(self._teacher_weights)} teacher_weights for {len(teachers)} teachers."
            )
        self._student_loss_config = student_loss
        self.student_loss_fn = self._make_student_loss(student_loss)
        self._teacher_output_mode = teacher_outputs
        self.teacher_output = teacher_output
        # Terms that read the teacher's final outputs (the others read
        # recorded features); a backbone teacher may have no logits at all.
        self._reads_teacher_outputs = any(
            t.teacher_layer is None or t.needs_labels for t in losses
        )
        for t in teachers:
            # Frozen: no gradients, and BatchNorm/Dropout run in inference mode.
            t.trainable = False

        self.student_loss_tracker = keras.metrics.Mean(name="student_loss")
        self.term_trackers = [keras.metrics.Mean(name=f"{t.name}_loss") for t in losses]
        # Per-batch data checks of the training step; `NaNGuard` reads the
        # value from the batch logs and stops the run at a bad batch.
        self.invalid_batch_tracker = keras.metrics.Sum(name=INVALID_BATCH_KEY)
        self._step = _StepState()
        self._student_paths = sorted({t.student_layer for t in losses if t.student_layer})
        self._teacher_paths = sorted({t.teacher_layer for t in losses if t.teacher_layer})
        self._teacher_is_probability = [
            teacher_outputs == "probabilities" or (teacher_outputs == "auto" and ends_in_softmax(t))
            for t in teachers
        ]
        if any(t.reads_logits for t in losses) and ends_in_softmax(student):
            raise ValueError(
                f"The student '{student.name}' ends in a softmax, but distillation "
                "needs its logits (softened distributions are computed from "
                "logits, and log(softmax) underflows). Remove the final "
                "activation (e.g. Dense(num_classes) with no activation); for "
                "inference, wrap the trained student: "
                "keras.Sequential([student, keras.layers.Softmax()])."
            )
        for term in attachable:
            # Terms built by `tinybert_losses` come attached; loaded ones not.
            if not term.attached:
                term.attach(teachers[0], student)
        if getattr(student, "inputs", None):
            self._build_terms(student.inputs)

    # -- construction ---------------------------------------------------

    @staticmethod
    def _make_student_loss(student_loss):
        if student_loss == "sparse_categorical_crossentropy":
            return keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        if student_loss == "categorical_crossentropy":
            return keras.losses.CategoricalCrossentropy(from_logits=True)
        loss = keras.losses.get(student_loss)
        if loss is None:
            raise ValueError(f"Unknown student_loss {student_loss!r}.")
        check_student_loss(loss)
        if not isinstance(loss, keras.losses.Loss):  # a plain function
            loss = keras.losses.LossFunctionWrapper(loss)
        return loss

    @property
    def teacher(self) -> keras.Model | None:
        """The first (usually the only) teacher."""
        return self.teachers[0] if self.teachers else None

    def _example_inputs(self, inputs):
        """A batch of 2 zero (float) / one (int) inputs shaped like `inputs`."""

        def example(spec):
            shape = tuple(
                2 if i == 0 else (8 if d is None else d) for i, d in enumerate(spec.shape)
            )
            dtype = getattr(spec, "dtype", "float32")
            if "int" in str(dtype):
                return np.ones(shape, dtype=str(dtype))
            return np.zeros(shape, dtype="float32")

        if isinstance(inputs, (list, tuple)) and len(inputs) == 1:
            inputs = inputs[0]  # a functional model's `inputs` list of one
        return keras.tree.map_structure(example, inputs)

    def _build_terms(self, inputs):
        """Runs one tiny forward pass of every model to learn the shapes the
        terms see, checks them, and builds the terms' own weights (hint
        projections) so a saved Distiller loads its weights back."""
        # Functional models with dict inputs (keras-hub tasks) list `inputs`
        # flat; the structure they are called with is the dict.
        structure = getattr(self.student, "_inputs_struct", None)
        if isinstance(structure, dict):
            inputs = structure
        x = self._example_inputs(inputs)
        with record_outputs(self.student, self._student_paths) as s_features:
            s_out = self.student(x, training=False)
        s_classes = output_classes(s_out)
        t_outs, t_features = [], []
        for t in self.teachers:
            with record_outputs(t, self._teacher_paths) as features:
                out = t(x, training=False)
            if self._reads_teacher_outputs:
                t_outs.append(select_output(t, out, self.teacher_output))
            t_features.append(features)
        for i, t_out in enumerate(t_outs):
            t_classes = output_classes(t_out)
            if (
                any(term.reads_logits for term in self.distillation_terms)
                and t_classes != s_classes
            ):
                raise ValueError(
                    f"Teacher '{self.teachers[i].name}' predicts {t_classes} classes "
                    f"but the student '{self.student.name}' predicts {s_classes}. "
                    "Logit distillation needs the same classes in the same order: "
                    "give the student a final Dense with as many units as the "
                    "teacher's outputs."
                )
        for term in self.distillation_terms:
            if term.built:
                continue
            t_shape = (
                tuple(t_features[0][term.teacher_layer].shape)
                if term.teacher_layer and t_features
                else tuple(t_outs[0].shape)
                if t_outs
                else tuple(keras.tree.flatten(s_out)[0].shape)
            )
            s_shape = tuple(
                keras.tree.flatten(
                    s_features[term.student_layer] if term.student_layer else s_out
                )[0].shape
            )
            term.build(t_shape, s_shape)
        self.built = True

    def build(self, input_shape=None):
        if not self.built and input_shape is not None:
            spec = keras.tree.map_shape_structure(lambda s: keras.KerasTensor(s), input_shape)
            self._build_terms(spec)
        self.built = True

    # -- forward passes -------------------------------------------------

    def call(self, inputs, training=None):
        if not self._student_paths:
            return self.student(inputs, training=training)
        with record_outputs(self.student, self._student_paths) as features:
            outputs = self.student(inputs, training=training)
        self._step.student_features = dict(features)
        return outputs

    def teacher_forward(self, x):
        """Per-teacher `(logits, features)` for `x`, gradient-free."""
        if not self.teachers:
            raise ValueError(
                "This Distiller has no teacher, so every batch must carry cached "
                "outputs: y={'labels': y, 'teacher_logits': logits} (see "
                "kd_keras.cache_teacher_outputs)."
            )
        logits, features = [], []
        for teacher, is_probability in zip(self.teachers, self._teacher_is_probability):
            with record_outputs(teacher, self._teacher_paths) as recorded:
                out = self._call_frozen(teacher, x)
            if self._reads_teacher_outputs:
                out = select_output(teacher, out, self.teacher_output)
                out = ops.stop_gradient(ops.cast(out, "float32"))
                if is_probability:
                    out = ops.log(ops.maximum(out, _PROBABILITY_FLOOR))
            else:  # only features are read: the outputs may be any structure
                out = None
            logits.append(out)
            features.append({k: ops.stop_gradient(v) for k, v in recorded.items()})
        return logits, features

    @staticmethod
    def _call_frozen(teacher, x):
        if keras.backend.backend() == "torch":
            import torch

            with torch.no_grad():
                return teacher(x, training=False)
        return teacher(x, training=False)

    def _teacher_outputs(self, x, cached):
        if cached is not None and not self._teacher_paths:
            cached = list(cached) if isinstance(cached, (list, tuple)) else [cached]
            return [ops.stop_gradient(ops.cast(c, "float32")) for c in cached], [{}] * len(cached)
        if cached is not None and not self.teachers:
            raise ValueError(
                "Feature terms (teacher_layer=...) need the teacher model: cached "
                "teacher_logits hold only the logits."
            )
        return self.teacher_forward(x)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """torch backend: Keras's torch `train_step` clears the previous
        step's gradients with `torch.nn.Module.zero_grad`, which reaches only
        registered torch parameters. Models that set their attributes through
        `object.__setattr__` while being built (keras-hub backbones) leave
        their variables out of the Distiller's `parameters()`, so their
        gradients would add up over the steps; every trainable variable's
        gradient is dropped instead."""
        for variable in self.trainable_variables:
            if getattr(variable.value, "grad", None) is not None:
                variable.value.grad = None

    def train_step(self, *args):
        # `(data,)` on TensorFlow and torch, `(state, data)` on JAX.
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(args[-1])
        x, self._step.inputs_finite = _finite_inputs(x)
        data = keras.utils.pack_x_y_sample_weight(x, y, sample_weight)
        if keras.backend.backend() == "tensorflow":
            # The teacher runs before the GradientTape opens, so the tape
            # never records it (TF's tape would otherwise keep its
            # activations alive for a backward pass that never comes).
            self._step.teacher = self._teacher_outputs(x, unpack_targets(y)[1])
        try:
            return super().train_step(*args[:-1], data)
        finally:
            self._step.inputs_finite = None

    # -- loss and metrics -----------------------------------------------

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        labels, cached, label_mask, padding_mask = unpack_targets(y)
        if (
            padding_mask is None
            and isinstance(x, dict)
            and "padding_mask" in x
            and not isinstance(y_pred, dict)
            and len(y_pred.shape) == 3
        ):
            padding_mask = x["padding_mask"]
        student_features, self._step.student_features = self._step.student_features or {}, None
        teacher_out, self._step.teacher = self._step.teacher, None
        t_logits, t_features = teacher_out or self._teacher_outputs(x, cached)
        sample_weight = single_sample_weight(sample_weight)
        inputs_finite = self._step.inputs_finite if training else None
        labels_valid = None
        if training and labels is not None:
            labels, labels_valid = self._checked_labels(labels, label_mask, padding_mask, y_pred)
        elif labels is not None:
            labels = self._unlabeled_as_class_0(labels, label_mask, padding_mask, y_pred)

        weights = combine_weights(sample_weight, padding_mask)
        alpha = self.alpha
        if labels is not None:
            per_sample = self._student_loss(labels, y_pred)
            student_loss = weighted_mean(per_sample, combine_weights(weights, label_mask))
        else:
            student_loss = ops.zeros((), dtype="float32")

        term_labels = self._labels_for_terms(labels, label_mask, t_logits)
        distillation = ops.zeros((), dtype="float32")
        for term, tracker in zip(self.distillation_terms, self.term_trackers):
            teachers = (
                [f[term.teacher_layer] for f in t_features] if term.teacher_layer else t_logits
            )
            student = student_features[term.student_layer] if term.student_layer else y_pred
            value = term(
                teachers,
                student,
                labels=term_labels,
                weights=weights,
                teacher_weights=self._teacher_weights,
            )
            tracker.update_state(value)
            distillation = distillation + term.weight * value

        total = alpha * student_loss + (1.0 - alpha) * distillation
        for extra in self.losses:  # regularizers and add_loss of the student
            total = total + self._aggregate_additional_loss(extra)
        self.student_loss_tracker.update_state(student_loss)
        if training:
            invalid = ops.zeros((), "float32")
            if inputs_finite is not None:
                invalid = invalid + _BAD_INPUTS * (1.0 - ops.cast(inputs_finite, "float32"))
            if labels_valid is not None:
                invalid = invalid + _BAD_LABELS * (1.0 - ops.cast(labels_valid, "float32"))
            self.invalid_batch_tracker.update_state(invalid)
            # A bad batch teaches nothing; the guard stops the run after it.
            total = ops.where(invalid > 0, ops.zeros_like(total), total)
        return scale_loss_for_distribution(total)

    def _one_hot_labels(self, labels, y_pred) -> bool:
        return is_one_hot(tuple(labels.shape), len(y_pred.shape), int(y_pred.shape[-1]))

    def _student_loss(self, labels, y_pred):
        """Per-sample loss on the labels; one-hot labels under the default
        (sparse) loss get the categorical cross-entropy they need."""
        loss_fn = self.student_loss_fn
        if self._student_loss_config == "sparse_categorical_crossentropy" and (
            self._one_hot_labels(labels, y_pred)
        ):
            loss_fn = _CATEGORICAL_FROM_LOGITS
        return loss_fn.call(labels, y_pred)

    def _checked_labels(self, labels, label_mask, padding_mask, y_pred):
        """`(labels safe to compute with, whether this batch's labels were
        valid)`: class indices in range and finite (the first-batch check
        in `fit` cannot see later batches of a stream). Unlabeled samples
        and padded positions may hold anything (a padding label of -100)."""
        if "float" in str(labels.dtype):
            finite = ops.all(ops.isfinite(labels))
            labels = ops.where(ops.isfinite(labels), labels, ops.zeros_like(labels))
        else:
            finite = None
        if self._one_hot_labels(labels, y_pred):
            return labels, finite
        classes = int(y_pred.shape[-1])
        in_range = ops.logical_and(labels >= 0, labels < classes)
        for mask in (label_mask, padding_mask):
            if mask is not None:
                in_range = ops.logical_or(in_range, ops.logical_not(_shaped_like(mask, labels)))
        valid = ops.all(in_range)
        if finite is not None:
            valid = ops.logical_and(valid, finite)
        return ops.clip(labels, 0, classes - 1), valid

    def _unlabeled_as_class_0(self, labels, label_mask, padding_mask, y_pred):
        """Evaluation's labels: as given, except those of unlabeled samples
        and padded positions, which may hold anything (a padding label of
        -100, which TensorFlow's sparse cross-entropy refuses). They weigh
        nothing in the loss, so class 0 stands in for them."""
        masks = [m for m in (label_mask, padding_mask) if m is not None]
        if not masks or self._one_hot_labels(labels, y_pred):
            return labels
        labeled = _shaped_like(masks[0], labels)
        for mask in masks[1:]:
            labeled = ops.logical_and(labeled, _shaped_like(mask, labels))
        return ops.where(labeled, labels, ops.zeros_like(labels))

    def _labels_for_terms(self, labels, label_mask, t_logits):
        if not any(term.needs_labels for term in self.distillation_terms):
            return None
        ensemble = sum(ops.softmax(t, axis=-1) for t in t_logits)
        teacher_top1 = ops.cast(ops.argmax(ensemble, axis=-1), "int32")
        if labels is None:
            return teacher_top1
        if self._one_hot_labels(labels, t_logits[0]):
            labels = ops.argmax(labels, axis=-1)
        labels = ops.cast(ops.reshape(labels, ops.shape(teacher_top1)), "int32")
        if label_mask is None:
            return labels
        has_label = ops.reshape(ops.cast(label_mask, "bool"), ops.shape(teacher_top1))
        return ops.where(has_label, labels, teacher_top1)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        labels, _, label_mask, padding_mask = unpack_targets(y)
        if labels is None:
            return self.get_metrics_result()
        weights = combine_weights(single_sample_weight(sample_weight), label_mask, padding_mask)
        return super().compute_metrics(x, labels, y_pred, sample_weight=weights)

    def get_metrics_result(self):
        # On unlabeled data the label metrics (accuracy) never see a batch:
        # they are left out rather than reported as 0.
        results = {}
        for metric in self.metrics:
            if metric is self._compile_metrics and not metric.built:
                continue
            if metric is self.invalid_batch_tracker and not self._step.in_train_step:
                continue  # the flag is for the training batches' guard only
            result = metric.result()
            results.update(result if isinstance(result, dict) else {metric.name: result})
        return results

    # -- fit with checks ------------------------------------------------

    def fit(self, x=None, y=None, *args, **kwargs):
        """`keras.Model.fit`, after checking a sample of the data (not empty,
        labels numeric and in range, cached logits shaped right, not
        probabilities and not paired with augmented images, no NaN) so a
        mistake fails before the first step, and with a `NaNGuard` that names
        the term that went NaN and stops at a later batch whose inputs or
        labels the step found invalid."""
        if not self.compiled:
            raise RuntimeError("Call distiller.compile(optimizer=...) before fit().")
        sample_x, sample_y = check_fit_data(self, x, y, kwargs.get("validation_data"))
        online = sample_x is not None and unpack_targets(sample_y)[1] is None
        if online and self.teachers and self._reads_teacher_outputs:
            self._detect_teacher_probabilities(sample_x)
        callbacks = list(kwargs.pop("callbacks", None) or [])
        if not any(isinstance(c, NaNGuard) for c in callbacks):
            # First, so the other callbacks never see the guard's flag.
            callbacks.insert(0, NaNGuard())
        # Set around the whole of `fit` rather than inside `train_step`: under
        # `tf.distribute` the replicas trace the step in turns, and a flag the
        # step itself cleared would leave the guard's key out of some
        # replicas' logs but not others'. `evaluate` (also inside `fit`, for
        # validation) clears it for its own steps.
        self._step.in_train_step = True
        try:
            return super().fit(x, y, *args, callbacks=callbacks, **kwargs)
        finally:
            self._step.in_train_step = False

    def evaluate(self, *args, **kwargs):
        """`keras.Model.evaluate`; its logs carry no training-batch guard flag."""
        in_fit, self._step.in_train_step = self._step.in_train_step, False
        try:
            return super().evaluate(*args, **kwargs)
        finally:
            self._step.in_train_step = in_fit

    def _detect_teacher_probabilities(self, sample_x) -> None:
        """A softmax inside a teacher's `call` (or `keras.ops.softmax` as the
        last op of a Functional model) is invisible in its layers: its
        outputs on the first batch tell."""
        found = teachers_output_probabilities(self.teachers, sample_x, self.teacher_output)
        if self._teacher_output_mode != "auto":
            return
        updated = [a or b for a, b in zip(self._teacher_is_probability, found)]
        if updated != self._teacher_is_probability:
            self._teacher_is_probability = updated
            # Steps traced with the old reading of the outputs are stale.
            self.train_function = self.test_function = None

    def compile(self, optimizer="rmsprop", loss=None, **kwargs):
        """`keras.Model.compile`, without `loss`: the Distiller's loss is set
        by its constructor (`student_loss`, `losses`, `alpha`)."""
        if loss is not None:
            raise ValueError(
                f"compile(loss={loss!r}) would be ignored: a Distiller's loss comes "
                "from its constructor. Pass the loss on the labels as "
                "Distiller(..., student_loss=...) and the distillation terms as "
                "losses=[...]; compile only takes the optimizer and metrics."
            )
        super().compile(optimizer=optimizer, **kwargs)

    def get_compile_config(self):
        """What `compile` was given (optimizer, metrics, step settings), as
        saved in a `.keras` file; `loss` is left out, as `compile` takes
        none."""
        config = dict(super().get_compile_config() or {})
        for key in ("loss", "loss_weights"):
            config.pop(key, None)
        return config

    def compile_from_config(self, config):
        """Recompiles a loaded Distiller with the optimizer and metrics it was
        saved with (the saved optimizer state is then restored into it)."""
        if not config:
            return
        config = dict(keras.saving.deserialize_keras_object(config))
        for key in ("loss", "loss_weights"):  # files saved before compile took none
            config.pop(key, None)
        self.compile(**config)
        if getattr(self, "optimizer", None) is not None and self.built:
            self.optimizer.build(self.trainable_variables)

    # -- serialization --------------------------------------------------

    def get_config(self):
        config = {
            "name": self.name,
            "student": keras.saving.serialize_keras_object(self.student),
            "teacher": [keras.saving.serialize_keras_object(t) for t in self.teachers] or None,
            "losses": [keras.saving.serialize_keras_object(t) for t in self.distillation_terms],
            "alpha": self._alpha_init,
            "teacher_weights": self._teacher_weights,
            "student_loss": keras.saving.serialize_keras_object(self._student_loss_config),
            "teacher_outputs": self._teacher_output_mode,
            "teacher_output": self.teacher_output,
        }
        student_tokenizer = tokenizer_of(self.student)
        if student_tokenizer is not None and any(
            tokenizer_of(t) is student_tokenizer for t in self.teachers
        ):
            config["shared_tokenizer"] = True
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        deserialize = keras.saving.deserialize_keras_object
        config["student"] = deserialize(config["student"], custom_objects=custom_objects)
        if config.get("teacher"):
            config["teacher"] = [
                deserialize(t, custom_objects=custom_objects) for t in config["teacher"]
            ]
        config["losses"] = [deserialize(t, custom_objects=custom_objects) for t in config["losses"]]
        config["student_loss"] = deserialize(config["student_loss"], custom_objects=custom_objects)
        return cls(**config)
