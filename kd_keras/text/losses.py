"""TinyBERT distillation terms (Jiao et al., "TinyBERT: Distilling BERT for
Natural Language Understanding", 2020): hidden states with a learned
projection, attention maps and the embedding layer, each masked so padded
tokens contribute nothing.

The Distiller hands a term the outputs of its `teacher_layer` /
`student_layer`; attention probabilities are not an output of keras-hub
layers, so these terms are *attached* to the two models
(`term.attach(teacher, student)`, done by `tinybert_losses` and by
`kd_keras.Distiller`, also for a Distiller loaded back), which installs
the hook of `kd_keras.text.attention` on the named layers. The same hook
gives the padding mask of the student's tokens, so the terms are masked even
when the Distiller passes only per-sample weights (sequence
classification).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Sequence

import keras
from keras import ops

from kd_keras.features import resolve_layer
from kd_keras.losses.base import DistillationLoss, weighted_mean
from kd_keras.losses.hint import HintLoss, require_layer_names
from kd_keras.text.attention import capture_attention, release_attention
from kd_keras.text.student import backbone_of, check_layer_map, uniform_layer_map

ATTENTION_MODES = ("kl", "mse")
_FLOOR = 1e-12


class _Hooks(Mapping):
    """`role -> (layer, capture)` of an attached term. A `Mapping` but not a
    `dict`: Keras's `.keras` saver walks every `dict` attribute of a layer, so
    a plain dict would save the hooked model layers a second time under the
    term, and a Distiller saved after `detach()` would no longer load."""

    def __init__(self, items=()):
        self._items = dict(items)

    def __getitem__(self, role):
        return self._items[role]

    def __iter__(self):
        return iter(self._items)

    def __len__(self):
        return len(self._items)


class _AttachedTerm:
    """Mixin: links a term to its teacher and student so it can read their
    attention (and the student's padding mask) through the hook."""

    #: Paths whose attention this term reads (teacher side, student side).
    reads_attention = False

    def attach(self, teacher: keras.Model, student: keras.Model) -> _AttachedTerm:
        """Installs the attention hook this term needs; returns the term.

        The padding mask comes from the student's first transformer layer.
        """
        self.detach()
        captures = []
        first = backbone_of(student).transformer_layers[0]
        captures.append(("mask", first, capture_attention(first)))
        if self.reads_attention:
            for role, model, path in (
                ("teacher", teacher, self.teacher_layer),
                ("student", student, self.student_layer),
            ):
                layer = resolve_layer(model, path, role=role)
                captures.append((role, layer, capture_attention(layer)))
        # A plain attribute Keras must not track (it holds model layers).
        object.__setattr__(self, "_captures", _Hooks((r, (lay, c)) for r, lay, c in captures))
        return self

    @property
    def attached(self) -> bool:
        """True once `attach` has installed this term's hooks."""
        return bool(self.__dict__.get("_captures"))

    def detach(self) -> None:
        """Removes this term's hooks."""
        for layer, _ in self.__dict__.get("_captures", {}).values():
            release_attention(layer)
        object.__setattr__(self, "_captures", _Hooks())

    def _capture(self, role: str):
        captures = self.__dict__.get("_captures") or {}
        if role not in captures:
            raise RuntimeError(
                f"{type(self).__name__} '{self.name}' is not attached to its "
                "models: call term.attach(teacher, student) (or build the "
                "terms with kd_keras.text.tinybert_losses(teacher, student)) "
                "before fit; a loaded Distiller needs this too."
            )
        return captures[role][1]

    def position_weights(self, weights, batch_time_shape):
        """`(batch, time)` weights: the Distiller's when it gives per-token
        weights (token-level tasks), else the student's padding mask times
        its per-sample weights."""
        if weights is not None and len(weights.shape) >= 2 and weights.shape[1] != 1:
            return ops.cast(weights, "float32")
        mask = self._capture("mask").key_mask()
        if mask is None:
            mask = ops.ones(batch_time_shape, dtype="float32")
        if weights is not None:
            mask = mask * ops.reshape(ops.cast(weights, "float32"), (-1, 1))
        return mask


@keras.saving.register_keras_serializable(package="kd_keras")
class HiddenStateMSE(_AttachedTerm, HintLoss):
    """TinyBERT's hidden-state loss `MSE(H_s W, H_t)` between the outputs of
    a student and a teacher transformer layer (or embedding layer), with a
    learned projection `W` when widths differ, averaged over real tokens
    only.

    Example:

    ```python
    import keras_hub

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "good", "bad", "film", "plot"]

    # A tiny BERT teacher built from config; a real one comes from a preset,
    # `load_teacher("bert_tiny_en_uncased", num_classes=2)`.
    teacher = keras_hub.models.BertTextClassifier(
        keras_hub.models.BertBackbone(
            vocabulary_size=len(vocab), num_layers=4, num_heads=2,
            hidden_dim=16, intermediate_dim=32, max_sequence_length=8,
        ),
        num_classes=2,
        preprocessor=keras_hub.models.BertTextClassifierPreprocessor(
            keras_hub.models.BertTokenizer(vocabulary=vocab), sequence_length=8
        ),
    )

    texts = ["a good film", "a bad film", "good plot", "bad plot"]
    labels = np.array([1, 0, 1, 0])

    student = build_student(teacher, num_layers=2, hidden_dim=8, num_heads=1)

    # Student layer 1 (width 8) learns teacher layer 3 (width 16) through a
    # learned projection.
    term = HiddenStateMSE("transformer_layer_3", "transformer_layer_1")
    term.attach(teacher, student)
    distiller = TextDistiller(student, teacher, losses=[term], alpha=0.0)
    distiller.compile(optimizer="adam")
    distiller.fit(tokenize(teacher, texts), epochs=1, batch_size=2, verbose=0)
    ```
    """

    def __init__(
        self,
        teacher_layer=None,
        student_layer=None,
        projection="auto",
        weight=1.0,
        name="hidden_mse",
        **kwargs,
    ):
        super().__init__(
            teacher_layer=teacher_layer,
            student_layer=student_layer,
            projection=projection,
            weight=weight,
            name=name,
            **kwargs,
        )

    def compute(self, teacher, student, labels=None, weights=None):
        weights = self.position_weights(weights, ops.shape(student)[:2])
        return super().compute(teacher, student, labels=labels, weights=weights)


@keras.saving.register_keras_serializable(package="kd_keras")
class EmbeddingMSE(HiddenStateMSE):
    """TinyBERT's embedding-layer loss: `HiddenStateMSE` on the output of
    the embedding layer norm of both backbones."""

    def __init__(
        self,
        teacher_layer="embeddings_layer_norm",
        student_layer="embeddings_layer_norm",
        name="embedding_mse",
        **kwargs,
    ):
        super().__init__(
            teacher_layer=teacher_layer, student_layer=student_layer, name=name, **kwargs
        )


@keras.saving.register_keras_serializable(package="kd_keras")
class AttentionMapLoss(_AttachedTerm, DistillationLoss):
    """Attention-map distillation between a teacher and a student
    transformer layer.

    With probabilities `P_t, P_s` of shape `(batch, heads, query, key)`
    (both averaged over heads when the head counts differ), key mask `k` and
    query weights `q` (padding mask times sample weights):

    - `mode="kl"`: `r = Σ_j k_j P_t log(P_t / P_s)` per query row;
    - `mode="mse"`: `r = Σ_j k_j (P_t − P_s)² / Σ_j k_j`;

    then the mean over heads and the `q`-weighted mean over rows. Padded
    keys and queries contribute nothing.

    Example:

    ```python
    import keras_hub

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "good", "bad", "film", "plot"]

    # A tiny BERT teacher built from config; a real one comes from a preset,
    # `load_teacher("bert_tiny_en_uncased", num_classes=2)`.
    teacher = keras_hub.models.BertTextClassifier(
        keras_hub.models.BertBackbone(
            vocabulary_size=len(vocab), num_layers=4, num_heads=2,
            hidden_dim=16, intermediate_dim=32, max_sequence_length=8,
        ),
        num_classes=2,
        preprocessor=keras_hub.models.BertTextClassifierPreprocessor(
            keras_hub.models.BertTokenizer(vocabulary=vocab), sequence_length=8
        ),
    )

    texts = ["a good film", "a bad film", "good plot", "bad plot"]
    labels = np.array([1, 0, 1, 0])

    student = build_student(teacher, num_layers=2, hidden_dim=8, num_heads=1)

    term = AttentionMapLoss("transformer_layer_3", "transformer_layer_1").attach(teacher, student)
    distiller = TextDistiller(student, teacher, losses=[term], alpha=0.0)
    distiller.compile(optimizer="adam")
    distiller.fit(tokenize(teacher, texts), epochs=1, batch_size=2, verbose=0)
    ```
    """

    reads_attention = True
    reads_logits = False

    def __init__(
        self,
        teacher_layer=None,
        student_layer=None,
        mode="kl",
        weight=1.0,
        name="attention",
        **kwargs,
    ):
        require_layer_names(type(self).__name__, teacher_layer, student_layer)
        if mode not in ATTENTION_MODES:
            raise ValueError(
                f"AttentionMapLoss: mode must be one of {ATTENTION_MODES}, got {mode!r}."
            )
        super().__init__(
            weight=weight,
            teacher_layer=teacher_layer,
            student_layer=student_layer,
            name=name,
            **kwargs,
        )
        self.mode = mode

    def compute(self, teacher, student, labels=None, weights=None):
        p_t = ops.stop_gradient(ops.cast(self._capture("teacher").require(), "float32"))
        p_s = ops.cast(self._capture("student").require(), "float32")
        query_weights = self.position_weights(weights, (ops.shape(p_s)[0], ops.shape(p_s)[2]))
        return attention_map_loss(p_t, p_s, self._key_mask(p_s), query_weights, self.mode)

    def _key_mask(self, p_s):
        mask = self._capture("student").key_mask()
        if mask is None:
            return ops.ones((ops.shape(p_s)[0], ops.shape(p_s)[-1]), dtype="float32")
        return mask

    def get_config(self):
        config = super().get_config()
        config.update(mode=self.mode)
        return config


def attention_map_loss(p_teacher, p_student, key_mask, query_weights, mode: str = "kl"):
    """The maths of `AttentionMapLoss` on tensors (see its docstring)."""
    p_teacher, p_student = ops.cast(p_teacher, "float32"), ops.cast(p_student, "float32")
    if p_teacher.shape[1] != p_student.shape[1]:
        p_teacher = ops.mean(p_teacher, axis=1, keepdims=True)
        p_student = ops.mean(p_student, axis=1, keepdims=True)
    keys = ops.cast(key_mask, "float32")[:, None, None, :]
    if mode == "kl":
        log_ratio = ops.log(ops.maximum(p_teacher, _FLOOR)) - ops.log(
            ops.maximum(p_student, _FLOOR)
        )
        terms = ops.where(keys > 0, p_teacher * log_ratio, ops.zeros_like(log_ratio))
        rows = ops.sum(terms, axis=-1)
    else:
        squared = ops.where(keys > 0, ops.square(p_teacher - p_student), ops.zeros_like(p_teacher))
        rows = ops.sum(squared, axis=-1) / ops.maximum(ops.sum(keys, axis=-1), 1.0)
    return weighted_mean(ops.mean(rows, axis=1), query_weights)


def tinybert_losses(
    teacher: keras.Model,
    student: keras.Model,
    layer_map: Sequence[int] | None = None,
    hidden: bool = True,
    attention: bool = True,
    embedding: bool = True,
    attention_mode: str = "kl",
    weight: float = 1.0,
) -> list[DistillationLoss]:
    """TinyBERT's intermediate-layer terms for `Distiller(losses=...)`, one
    per mapped layer pair, already attached to both models.

    Args:
        layer_map: teacher layer index for each student layer (default the
            uniform every-k-th map, `uniform_layer_map`).
        hidden, attention, embedding: which kinds of terms to make.
        attention_mode: `"kl"` or `"mse"`.
        weight: weight of every term.

    Example:

    ```python
    import keras_hub

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "good", "bad", "film", "plot"]

    # A tiny BERT teacher built from config; a real one comes from a preset,
    # `load_teacher("bert_tiny_en_uncased", num_classes=2)`.
    teacher = keras_hub.models.BertTextClassifier(
        keras_hub.models.BertBackbone(
            vocabulary_size=len(vocab), num_layers=4, num_heads=2,
            hidden_dim=16, intermediate_dim=32, max_sequence_length=8,
        ),
        num_classes=2,
        preprocessor=keras_hub.models.BertTextClassifierPreprocessor(
            keras_hub.models.BertTokenizer(vocabulary=vocab), sequence_length=8
        ),
    )

    texts = ["a good film", "a bad film", "good plot", "bad plot"]
    labels = np.array([1, 0, 1, 0])

    student = build_student(teacher, num_layers=2, hidden_dim=8, num_heads=1)

    terms = tinybert_losses(teacher, student)  # general distillation
    distiller = TextDistiller(student, teacher, losses=terms, alpha=0.0)
    distiller.compile(optimizer="adam")
    distiller.fit(tokenize(teacher, texts), epochs=1, batch_size=2, verbose=0)
    ```
    """
    t_layers = backbone_of(teacher).transformer_layers
    s_layers = backbone_of(student).transformer_layers
    layer_map = (
        uniform_layer_map(len(t_layers), len(s_layers))
        if layer_map is None
        else check_layer_map(layer_map, len(t_layers), len(s_layers))
    )
    terms: list = []
    if embedding:
        terms.append(EmbeddingMSE(weight=weight))
    for s_index, t_index in enumerate(layer_map):
        pair = (t_layers[t_index].name, s_layers[s_index].name)
        if hidden:
            terms.append(HiddenStateMSE(*pair, weight=weight, name=f"hidden_{s_index}"))
        if attention:
            terms.append(
                AttentionMapLoss(
                    *pair, mode=attention_mode, weight=weight, name=f"attention_{s_index}"
                )
            )
    return [term.attach(teacher, student) for term in terms]
