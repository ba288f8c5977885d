"""Small BERT students that share the teacher's tokenizer, optionally
initialised from the teacher's layers (DistilBERT / TinyBERT style)."""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np

from kd_keras.text.teacher import keras_hub_module

#: Backbone layers copied from the teacher besides the transformer layers.
EMBEDDING_LAYERS = (
    "token_embedding",
    "position_embedding",
    "segment_embedding",
    "embeddings_layer_norm",
    "pooled_dense",
)


def backbone_of(model: keras.Model) -> keras.Model:
    """The `BertBackbone` of a task model, or the model itself."""
    backbone = getattr(model, "backbone", model)
    if not hasattr(backbone, "transformer_layers"):
        raise TypeError(
            f"'{model.name}' is neither a keras-hub BERT task nor a "
            "BertBackbone (no transformer_layers)."
        )
    return backbone


def uniform_layer_map(teacher_layers: int, student_layers: int) -> list[int]:
    """TinyBERT's uniform map: student layer `i` (0-based) learns from
    teacher layer `(i + 1) * k - 1`, `k = teacher_layers // student_layers`,
    so the last student layer meets the last teacher layer when `k` divides.

    Example: `uniform_layer_map(6, 2) == [2, 5]`.
    """
    if not 1 <= student_layers <= teacher_layers:
        raise ValueError(
            f"A student with {student_layers} layers cannot be mapped onto a "
            f"teacher with {teacher_layers}: need 1 <= student <= teacher."
        )
    k = teacher_layers // student_layers
    return [(i + 1) * k - 1 for i in range(student_layers)]


def check_layer_map(
    layer_map: Sequence[int], teacher_layers: int, student_layers: int
) -> list[int]:
    """Validates a user layer map (one teacher index per student layer)."""
    layer_map = [int(i) for i in layer_map]
    if len(layer_map) != student_layers or not all(0 <= i < teacher_layers for i in layer_map):
        raise ValueError(
            f"layer_map must give one teacher layer index in [0, "
            f"{teacher_layers}) for each of the {student_layers} student "
            f"layers, got {layer_map}."
        )
    return layer_map


def _copy_sliced(student_layer, teacher_layer) -> None:
    """Sets every weight of `student_layer` to the leading slice of the
    matching teacher weight (`w_t[:s_0, :s_1, ...]`)."""
    s_weights, t_weights = student_layer.weights, teacher_layer.weights
    if [w.name for w in s_weights] != [w.name for w in t_weights]:
        raise ValueError(
            f"Cannot initialise '{student_layer.name}' from '{teacher_layer.name}': "
            f"their weights differ ({[w.name for w in s_weights]} vs "
            f"{[w.name for w in t_weights]})."
        )
    for s, t in zip(s_weights, t_weights):
        s_shape, t_shape = tuple(s.shape), tuple(t.shape)
        if len(s_shape) != len(t_shape) or any(a > b for a, b in zip(s_shape, t_shape)):
            raise ValueError(
                f"Cannot truncate teacher weight {t.path} of shape {t_shape} "
                f"to the student's {s_shape}: every student size must be <= "
                "the teacher's. Pass init_from_teacher=False, or choose "
                "student sizes no larger than the teacher's."
            )
        value = keras.ops.convert_to_numpy(t.value)
        s.assign(value[tuple(slice(0, n) for n in s_shape)])


def initialize_from_teacher(
    student: keras.Model,
    teacher: keras.Model,
    layer_map: Sequence[int] | None = None,
) -> list[int]:
    """Copies teacher weights into a smaller student BERT: embeddings, pooler
    and transformer layer `i` from teacher layer `layer_map[i]` (the
    uniform every-k-th map by default), each weight truncated to the leading
    slice the student's sizes allow (fewer heads keep the first heads).
    Returns the layer map used.

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

    student = build_student(teacher, num_layers=2, hidden_dim=8, num_heads=1)

    layer_map = initialize_from_teacher(student, teacher)
    assert layer_map == [1, 3]  # 4 -> 2 layers: every second one
    ```
    """
    s_backbone, t_backbone = backbone_of(student), backbone_of(teacher)
    s_layers, t_layers = s_backbone.transformer_layers, t_backbone.transformer_layers
    layer_map = (
        uniform_layer_map(len(t_layers), len(s_layers))
        if layer_map is None
        else check_layer_map(layer_map, len(t_layers), len(s_layers))
    )
    for name in EMBEDDING_LAYERS:
        _copy_sliced(s_backbone.get_layer(name), t_backbone.get_layer(name))
    for s_layer, t_index in zip(s_layers, layer_map):
        _copy_sliced(s_layer, t_layers[t_index])
    return layer_map


def project_embeddings(student: keras.Model, teacher: keras.Model) -> np.ndarray:
    """Initialises a narrower student's token, position and segment
    embeddings with the teacher's, projected onto the top `student_dim`
    principal components of the teacher's token-embedding table.

    Truncating a 384-wide table to its first 96 columns keeps arbitrary
    coordinates; the principal subspace keeps the directions along which
    tokens differ most, so neighbouring words stay neighbours. The student
    embeddings are `(E_tok - mean) @ P`, `E_pos @ P` and `E_seg @ P` with `P`
    the `(teacher_dim, student_dim)` basis, which is returned. Transformer
    layers are left as they are (their widths differ).

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

    student = build_student(teacher, num_layers=2, hidden_dim=8, num_heads=1)

    basis = project_embeddings(student, teacher)  # 16 -> 8 columns
    assert basis.shape == (16, 8)
    ```
    """
    s_backbone, t_backbone = backbone_of(student), backbone_of(teacher)
    s_dim, t_dim = int(s_backbone.hidden_dim), int(t_backbone.hidden_dim)
    if s_dim > t_dim:
        raise ValueError(
            f"The student is wider ({s_dim}) than the teacher ({t_dim}); a projection "
            "onto principal components needs student_dim <= teacher_dim."
        )
    (tokens,) = layer_weights(teacher, "token_embedding")
    mean = tokens.mean(axis=0)
    # Right singular vectors of the centred table = principal axes.
    _, _, vt = np.linalg.svd(tokens - mean, full_matrices=False)
    basis = vt[:s_dim].T
    for name, center in (
        ("token_embedding", mean),
        ("position_embedding", 0.0),
        ("segment_embedding", 0.0),
    ):
        (table,) = layer_weights(teacher, name)
        (target,) = s_backbone.get_layer(name).weights
        if target.shape[0] != table.shape[0]:
            raise ValueError(
                f"'{name}' has {target.shape[0]} rows in the student and {table.shape[0]} "
                "in the teacher: build the student with build_student(teacher, ...)."
            )
        target.assign((table - center) @ basis)
    return basis


def build_student(
    teacher: keras.Model,
    num_layers: int = 2,
    hidden_dim: int | None = None,
    num_heads: int | None = None,
    intermediate_dim: int | None = None,
    num_classes: int | None = None,
    init_from_teacher: bool | str = False,
    layer_map: Sequence[int] | None = None,
    dropout: float = 0.1,
    name: str = "student",
) -> keras.Model:
    """A `BertTextClassifier` with a smaller `BertBackbone` that reads the
    same token ids as `teacher` (same vocabulary, segments and maximum
    length) and gets a preprocessor with the teacher's tokenizer.

    Args:
        teacher: a keras-hub `BertTextClassifier` (or its backbone, then
            `num_classes` is required and no preprocessor is attached).
        num_layers, hidden_dim, num_heads, intermediate_dim: student sizes;
            `None` keeps the teacher's (`intermediate_dim` keeps the
            teacher's ratio to `hidden_dim`).
        num_classes: classes; default the teacher's.
        init_from_teacher: `True` (or `"truncate"`) copies truncated teacher
            weights, see `initialize_from_teacher`; `"pca"` projects the
            teacher's embeddings onto their principal components and leaves
            the transformer layers random, see `project_embeddings` (better
            when the student is much narrower).
        layer_map: teacher layer index for each student layer.
        dropout: dropout of the backbone and the classifier head.

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

    student = build_student(
        teacher, num_layers=2, hidden_dim=8, num_heads=1, init_from_teacher="pca"
    )
    assert student.backbone.num_layers == 2 and student.num_classes == 2
    ```
    """
    if init_from_teacher not in (False, True, "truncate", "pca"):
        raise ValueError(
            "init_from_teacher must be False, True, 'truncate' or 'pca'; "
            f"got {init_from_teacher!r}."
        )
    hub = keras_hub_module()
    t_backbone = backbone_of(teacher)
    hidden_dim = int(hidden_dim or t_backbone.hidden_dim)
    num_heads = int(num_heads or t_backbone.num_heads)
    if hidden_dim % num_heads:
        raise ValueError(f"hidden_dim={hidden_dim} must be divisible by num_heads={num_heads}.")
    num_classes = num_classes or getattr(teacher, "num_classes", None)
    if num_classes is None:
        raise ValueError("Pass num_classes=... (the teacher is a bare backbone).")
    backbone = hub.models.BertBackbone(
        vocabulary_size=t_backbone.vocabulary_size,
        num_layers=int(num_layers),
        num_heads=num_heads,
        hidden_dim=hidden_dim,
        intermediate_dim=int(
            intermediate_dim or t_backbone.intermediate_dim * hidden_dim // t_backbone.hidden_dim
        ),
        dropout=dropout,
        max_sequence_length=t_backbone.max_sequence_length,
        num_segments=t_backbone.num_segments,
        name=f"{name}_backbone",
    )
    preprocessor = None
    t_pre = getattr(teacher, "preprocessor", None)
    if t_pre is not None:
        preprocessor = type(t_pre)(tokenizer=t_pre.tokenizer, sequence_length=t_pre.sequence_length)
    student = hub.models.BertTextClassifier(
        backbone,
        num_classes=int(num_classes),
        preprocessor=preprocessor,
        dropout=dropout,
        name=name,
    )
    if init_from_teacher == "pca":
        project_embeddings(student, t_backbone)
    elif init_from_teacher in (True, "truncate"):
        initialize_from_teacher(student, t_backbone, layer_map)
    return student


def build_token_classifier(
    backbone: keras.Model, num_classes: int, name: str | None = None
) -> keras.Model:
    """A token-level (NER-style) classifier: a `Dense(num_classes)` on the
    backbone's `sequence_output`, giving `(batch, time, num_classes)`
    logits for inputs `{"token_ids", "segment_ids", "padding_mask"}`.

    Example:

    ```python
    import keras_hub

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "good", "bad", "film", "plot"]

    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=len(vocab), num_layers=4, num_heads=2,
        hidden_dim=16, intermediate_dim=32, max_sequence_length=8,
    )

    tagger = build_token_classifier(backbone, num_classes=9)
    tokens = {
        "token_ids": np.array([[2, 5, 6, 8, 3, 0, 0, 0]]),
        "segment_ids": np.zeros((1, 8), "int32"),
        "padding_mask": np.array([[1, 1, 1, 1, 1, 0, 0, 0]]),
    }
    assert tagger(tokens).shape == (1, 8, 9)  # one row of logits per token
    ```
    """
    backbone = backbone_of(backbone)
    inputs = {
        key: keras.Input(shape=(None,), dtype="int32", name=key)
        for key in ("token_ids", "segment_ids", "padding_mask")
    }
    sequence = backbone(inputs)["sequence_output"]
    logits = keras.layers.Dense(int(num_classes), name="token_logits")(sequence)
    return keras.Model(inputs, logits, name=name or f"{backbone.name}_tagger")


def layer_weights(model: keras.Model, name: str) -> list[np.ndarray]:
    """NumPy copies of the weights of backbone layer `name`."""
    layer = backbone_of(model).get_layer(name)
    return [keras.ops.convert_to_numpy(w.value) for w in layer.weights]
